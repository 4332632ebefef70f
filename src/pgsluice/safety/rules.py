"""The safety rules: what each pending statement does to a live table, judged before it runs. Pure: no I/O.

Each rule is one small function, registered with a stable id, the lock it takes, why it
hurts and the safe form (squawk's one-rule-per-file; strong_migrations' messages that show
the safe code). A rule sees one statement (pglast's parse tree), the live facts fetched
once for the run (``facts.fetch_facts``), and what the run did before it (tables created,
constraints added ``NOT VALID`` in the same transaction, enum values added …). It yields
hits; the engine (``check_migrations``) turns them into findings with a severity — from
the rule and the size of its table — and an action from the policy.

Three kinds of rule:

- ``lock``: a strong lock held while the table is scanned or rewritten. Severity is the
  table's size class (small / large / huge); empty tables and tables created earlier in
  the run give no finding. ``--unsafe-ddl block`` blocks them at or above the threshold.
- ``compat``: the running application still uses what the statement drops, renames or
  empties (expand/contract). Sized like ``lock`` rules, but only ever warned about: the
  contract step of expand/contract is exactly such a statement, and only its author knows
  the application has stopped using the object.
- ``error``: fails or corrupts whatever the size (an enum value used in the transaction
  that added it; ``CONCURRENTLY`` on PostgreSQL 14.0 to 14.3; a leftover INVALID index).
  They block in both ``warn`` and ``block`` mode, unless the file allows them.

Offline (``lint``, ``facts.assumed_facts``) the rules run with an assumed server version
and no catalog: a finding that depends on a table's size or on the catalog is rated
``large`` and says ``needs_live_facts``; the live run may lower it or drop it.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from pgsluice.safety.facts import Facts, RelName, TableFacts, default_functions, is_serial, walk

if TYPE_CHECKING:
    from pgsluice.config import Config
    from pgsluice.errors import UnsafeMigrationError
    from pgsluice.migrations import Migration
    from pgsluice.problems import Problem
    from pgsluice.sql import Command


class Severity(StrEnum):
    """How bad a finding is: the size class of its table, or ``error`` whatever the size."""

    SMALL = "small"
    LARGE = "large"
    HUGE = "huge"
    ERROR = "error"

    @property
    def rank(self) -> int:
        """Order: small < large < huge < error."""
        return _RANKS[self]


_RANKS = {Severity.SMALL: 0, Severity.LARGE: 1, Severity.HUGE: 2, Severity.ERROR: 3}


class Kind(StrEnum):
    """What kind of harm a rule is about (see the module's docstring)."""

    LOCK = "lock"
    COMPAT = "compat"
    ERROR = "error"


class Action(StrEnum):
    """What the policy does with a finding."""

    BLOCK = "block"
    """Refuse the run before anything is applied (exit 10)."""
    WARN = "warn"
    """Log it (``safety.finding`` at warning level) and go on."""
    ALLOWED = "allowed"
    """The file accepts it (``-- pgsluice: allow <rule> -- <reason>``): logged with the reason, never blocks."""
    IGNORED = "ignored"
    """Below the threshold, or the gate is off: shown by ``plan``/``lint``, not acted on."""


@dataclass(frozen=True)
class Policy:
    """The safety gate's settings: mode, the least severity it acts on, and the size classes."""

    mode: str = "warn"
    """``block``, ``warn`` or ``off``."""
    threshold: Severity = Severity.LARGE
    large_table_rows: int = 100_000
    large_table_bytes: int = 100 * 1024**2
    huge_table_rows: int = 10_000_000
    huge_table_bytes: int = 10 * 1024**3
    errors_block: bool = True
    """``error`` findings block whatever the threshold. The settings turn it on with ``block`` only: in ``warn``
    mode pgsluice runs what psql runs, and the server's own error (with its hint) stops the migration."""

    @classmethod
    def from_config(cls, config: Config) -> Policy:
        """The policy the settings ask for (``--unsafe-ddl``, ``--unsafe-ddl-threshold``, the table sizes)."""
        return cls(
            mode=config.unsafe_ddl,
            threshold=Severity(config.unsafe_ddl_threshold),
            large_table_rows=config.large_table_rows,
            large_table_bytes=config.large_table_bytes,
            huge_table_rows=config.huge_table_rows,
            huge_table_bytes=config.huge_table_bytes,
            errors_block=config.unsafe_ddl == "block",
        )

    def size_class(self, rows: float | None, size_bytes: int | None) -> Severity:
        """small, large or huge: by rows (estimated) or bytes, whichever is larger."""
        rows_, size = rows or 0, size_bytes or 0
        if rows_ >= self.huge_table_rows or size >= self.huge_table_bytes:
            return Severity.HUGE
        if rows_ >= self.large_table_rows or size >= self.large_table_bytes:
            return Severity.LARGE
        return Severity.SMALL

    def table_class(self, table: TableFacts) -> Severity | None:
        """The table's size class; None when it is empty (nothing to scan or rewrite)."""
        return None if table.empty else self.size_class(table.rows, table.bytes)

    def action(self, kind: Kind, severity: Severity, allowed: str | None) -> Action:
        """What the gate does with a finding of this kind and severity."""
        if allowed is not None:
            return Action.ALLOWED
        if self.mode == "off" or severity.rank < self.threshold.rank:
            return Action.IGNORED
        if severity == Severity.ERROR and self.errors_block:
            return Action.BLOCK
        if self.mode == "block" and kind != Kind.COMPAT:
            return Action.BLOCK
        return Action.WARN


@dataclass(frozen=True)
class Finding:
    """One statement judged unsafe: where, what it locks, why it hurts, the safe form, and the policy's action."""

    rule: str
    severity: Severity
    action: Action
    file: str
    line: int
    version: int
    table: str | None
    """``schema.name`` (as written when the live database was not asked)."""
    lock: str
    message: str
    """``001_x.sql line 3: CREATE INDEX … on public.users without CONCURRENTLY (~2.1M rows, 1.2 GiB): <why>``."""
    why: str
    """Why it hurts (the rule's words; also the end of ``message``)."""
    safe_form: str
    needs_live_facts: bool
    """Its existence or severity depends on the live database (sizes, catalog, server version)."""
    allowed: str | None = None
    """The reason the file gives for accepting it."""

    @property
    def hint(self) -> str:
        """The safe form, and how to accept the finding instead."""
        if self.allowed is not None:
            return f"accepted by the file: {self.allowed}"
        return f"{self.safe_form}; or accept it in the file: -- pgsluice: allow {self.rule} -- <reason>"

    def log_fields(self) -> dict[str, Any]:
        """The ``safety.finding`` event's key/values."""
        fields: dict[str, Any] = {
            "rule": self.rule,
            "severity": str(self.severity),
            "action": str(self.action),
            "file": self.file,
            "line": self.line,
            "version": self.version,
            "table": self.table,
            "lock": self.lock,
            "message": self.message,
            "why": self.why,
            "safe_form": self.safe_form,
            "needs_live_facts": self.needs_live_facts,
        }
        if self.allowed is not None:
            fields["allowed_reason"] = self.allowed
        return fields

    def problem(self) -> Problem:
        """As a Problem (for ``lint``/``plan`` output)."""
        from pgsluice.problems import Problem

        return Problem(self.message, self.hint, filename=self.file, line=self.line, version=self.version)


@dataclass(frozen=True)
class SafetyReport:
    """Every finding of the pending migrations, in order, with the facts they were judged by."""

    findings: tuple[Finding, ...]
    server_version: str
    live: bool

    def with_action(self, action: Action) -> tuple[Finding, ...]:
        """The findings the policy gave ``action``."""
        return tuple(f for f in self.findings if f.action == action)

    def counts(self) -> dict[str, int]:
        """How many findings got each action (``{"block": 1, "warn": 3}``), for ``run.finished``'s details."""
        found: dict[str, int] = {}
        for finding in self.findings:
            found[str(finding.action)] = found.get(str(finding.action), 0) + 1
        return found

    @property
    def blocking(self) -> tuple[Finding, ...]:
        """The findings that refuse the run."""
        return self.with_action(Action.BLOCK)

    def error(self) -> UnsafeMigrationError | None:
        """The error that refuses the run (exit 10), naming the first blocking finding; None when nothing blocks."""
        from pgsluice.errors import Location, UnsafeMigrationError

        blocking = self.blocking
        if not blocking:
            return None
        first = blocking[0]
        more = f" (and {len(blocking) - 1} more: see the safety.finding events)" if len(blocking) > 1 else ""
        return UnsafeMigrationError(
            f"the safety gate refused the run, nothing was applied: {first.message}{more}",
            hint=first.hint,
            location=Location(file=first.file, version=first.version, line=first.line),
        )


# --- what a rule sees ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hit:
    """What a rule found in one statement; the engine sizes it and makes it a Finding."""

    what: str
    """``CREATE INDEX users_email_idx on users without CONCURRENTLY``."""
    table: RelName | None = None
    """The table whose size rates the finding (via an index name when ``via_index``)."""
    via_index: bool = False
    severity: Severity | None = None
    """A fixed severity; None: the table's size class (or ``rows``')."""
    rows: float | None = None
    """Rate by this many rows instead of the table's size (an UPDATE's estimate)."""
    needs_live: bool = False
    """The verdict came from the catalog (a type, a constraint, a function's volatility), not only sizes."""
    lock: str | None = None
    safe_form: str | None = None


@dataclass
class RunState:
    """What the run did before the statement being judged: read by rules, updated by the engine only."""

    created_tables: list[RelName] = field(default_factory=list)
    created_indexes: list[RelName] = field(default_factory=list)
    dropped_indexes: list[RelName] = field(default_factory=list)
    created_functions: dict[RelName, str] = field(default_factory=dict)
    renamed: dict[RelName, TableFacts] = field(default_factory=dict)
    run_indexes: list[tuple[RelName, tuple[str | None, ...]]] = field(default_factory=list)
    """Every index (and UNIQUE/PRIMARY KEY) the whole run creates: its table and key columns."""
    validated_not_null: list[tuple[RelName, str]] = field(default_factory=list)
    """Columns a validated ``CHECK (col IS NOT NULL)`` added earlier in the run covers."""
    pending_checks: dict[tuple[RelName, str], tuple[str, ...]] = field(default_factory=dict)
    """``NOT VALID`` checks added in the run, by (table, name): the columns they prove NOT NULL once validated."""
    tx_not_valid: dict[tuple[RelName, str], tuple[int, str]] = field(default_factory=dict)
    """Constraints added ``NOT VALID`` in the current transaction: (table, name) → (line, lock taken)."""
    tx_enum_values: dict[str, tuple[str, int]] = field(default_factory=dict)
    """Enum values added in the current transaction: label → (type, line)."""

    def begin_transaction(self) -> None:
        """A new transaction: what only lasts for one is forgotten."""
        self.tx_not_valid.clear()
        self.tx_enum_values.clear()


@dataclass(frozen=True)
class Context:
    """One statement as a rule sees it."""

    command: Command
    tree: Any
    migration: Migration
    line: int
    facts: Facts
    state: RunState
    in_transaction: bool
    """It shares its transaction with other statements (a transactional file, or a BEGIN … COMMIT block)."""

    @property
    def version(self) -> int:
        """``server_version_num`` (assumed offline)."""
        return self.facts.server_version_num

    def is_new(self, ref: RelName) -> bool:
        """Created earlier in this run: nothing about it is dangerous (no rows, nobody uses it yet)."""
        return any(ref.matches(created) for created in self.state.created_tables)

    def table(self, ref: RelName) -> TableFacts | None:
        """The table as it is before the run (following renames made in the run); None offline or when absent."""
        renamed = next((t for name, t in self.state.renamed.items() if ref.matches(name)), None)
        return renamed or self.facts.table(ref)

    def judgeable(self, ref: RelName) -> bool:
        """Worth judging: not created in the run, and (live) existing before it."""
        return not self.is_new(ref) and (not self.facts.live or self.table(ref) is not None)

    def show(self, ref: RelName) -> str:
        """``schema.name`` when the catalog knows it, else as written."""
        table = self.table(ref)
        return table.qualified if table is not None else str(ref)

    def volatility(self, function: RelName) -> tuple[str, bool]:
        """``(provolatile, known)``: created in the run, from the catalog, or (offline) a built-in's; unknown
        functions are assumed volatile."""
        for name, volatility in self.state.created_functions.items():
            if function.matches(name):
                return volatility, True
        if self.facts.live:
            found = self.facts.functions.get(function)
            return (found, True) if found is not None else ("v", False)
        if function.schema in (None, "pg_catalog"):
            if function.name in _VOLATILE_BUILTINS:
                return "v", True
            if function.name in _STABLE_BUILTINS:
                return "s", True
        return "v", False


@dataclass(frozen=True)
class Rule:
    """A registered rule: its id, what it is about, and the function that finds it."""

    id: str
    title: str
    kind: Kind
    lock: str
    why: str
    safe_form: str
    when: str
    """When it matters (for the README's table)."""
    nodes: frozenset[str] | None
    """The statements it looks at (pglast node names); None: every statement, parsed or not."""
    check: Callable[[Context], Iterable[Hit]]


RULES: list[Rule] = []
"""Every rule, in the order they are checked (and documented)."""


def rule(
    rule_id: str,
    *,
    title: str,
    kind: Kind,
    lock: str,
    why: str,
    safe_form: str,
    when: str,
    nodes: Iterable[str] | None,
) -> Callable[[Callable[[Context], Iterable[Hit]]], Callable[[Context], Iterable[Hit]]]:
    """Register a rule function under a stable id."""

    def register(check: Callable[[Context], Iterable[Hit]]) -> Callable[[Context], Iterable[Hit]]:
        chosen = frozenset(nodes) if nodes is not None else None
        RULES.append(Rule(rule_id, title, kind, lock, why, safe_form, when, chosen, check))
        return check

    return register


def rule_ids() -> list[str]:
    """Every rule's id, in order (what ``-- pgsluice: allow <rule-id>`` accepts)."""
    return [r.id for r in RULES]


# --- helpers on pglast trees --------------------------------------------------------------------------------------


def _alter_cmds(tree: Any, *subtypes: str) -> Iterator[Any]:
    if tree.objtype.name != "OBJECT_TABLE":
        return
    for cmd in tree.cmds or ():
        if cmd.subtype.name in subtypes:
            yield cmd


def _constraints_of(column_def: Any, *kinds: str) -> list[Any]:
    return [c for c in getattr(column_def, "constraints", None) or () if c.contype.name in kinds]


def _added_constraints(tree: Any, *kinds: str) -> Iterator[tuple[Any, Any]]:
    """``(constraint, column name or None)`` for ADD CONSTRAINT and for constraints inline in ADD COLUMN."""
    for cmd in _alter_cmds(tree, "AT_AddConstraint", "AT_AddColumn"):
        if cmd.subtype.name == "AT_AddConstraint" and cmd.def_.contype.name in kinds:
            yield cmd.def_, None
        elif cmd.subtype.name == "AT_AddColumn":
            for constraint in _constraints_of(cmd.def_, *kinds):
                yield constraint, cmd.def_.colname


def _deparse(node: Any) -> str:
    from pglast.stream import RawStream

    return str(RawStream()(node))


def _ident(name: str) -> str:
    return name if re.fullmatch(r"[a-z_][a-z0-9_$]*", name) else '"' + name.replace('"', '""') + '"'


def _column_of(node: Any) -> str | None:
    if type(node).__name__ == "ColumnRef" and node.fields and hasattr(node.fields[-1], "sval"):
        return str(node.fields[-1].sval)
    return None


def _conjuncts(expr: Any) -> Iterator[Any]:
    if type(expr).__name__ == "BoolExpr" and expr.boolop.name == "AND_EXPR":
        for arg in expr.args:
            yield from _conjuncts(arg)
    elif expr is not None:
        yield expr


def not_null_columns(expr: Any) -> tuple[str, ...]:
    """The columns a CHECK expression proves NOT NULL: its top-level ``col IS NOT NULL`` conjuncts."""
    found = []
    for part in _conjuncts(expr):
        if type(part).__name__ == "NullTest" and part.nulltesttype.name == "IS_NOT_NULL":
            column = _column_of(part.arg)
            if column is not None:
                found.append(column)
    return tuple(found)


@functools.lru_cache(maxsize=1024)
def _check_definition_not_null(definition: str) -> tuple[str, ...]:
    """``not_null_columns`` of a catalog CHECK definition (``CHECK ((a IS NOT NULL))``)."""
    from pglast import parse_sql, parser

    try:
        tree: Any = parse_sql(f"ALTER TABLE x ADD {definition.removesuffix(' NOT VALID')}")[0].stmt
    except parser.ParseError:
        return ()
    return not_null_columns(tree.cmds[0].def_.raw_expr)


def _has_default(column_def: Any) -> bool:
    for constraint in _constraints_of(column_def, "CONSTR_DEFAULT"):
        expr = constraint.raw_expr
        if not (type(expr).__name__ == "A_Const" and expr.isnull):
            return True
    return False


def _is_identity(column_def: Any) -> bool:
    return bool(_constraints_of(column_def, "CONSTR_IDENTITY"))


def _is_stored_generated(column_def: Any) -> bool:
    generated = _constraints_of(column_def, "CONSTR_GENERATED")
    return any(getattr(g, "generated_kind", "s") != "v" for g in generated)


_VOLATILE_BUILTINS = frozenset(
    {
        "random",
        "random_normal",
        "gen_random_uuid",
        "uuidv4",
        "uuidv7",
        "uuid_generate_v1",
        "uuid_generate_v1mc",
        "uuid_generate_v4",
        "clock_timestamp",
        "timeofday",
        "nextval",
        "currval",
        "lastval",
        "setval",
        "txid_current",
        "pg_current_xact_id",
        "gen_random_bytes",
    }
)
_STABLE_BUILTINS = frozenset(
    {
        "now",
        "statement_timestamp",
        "transaction_timestamp",
        "current_setting",
        "current_database",
        "current_schema",
        "to_timestamp",
        "to_char",
        "to_date",
        "lower",
        "upper",
        "md5",
        "concat",
        "jsonb_build_object",
        "json_build_object",
        "jsonb_build_array",
        "json_build_array",
        "to_jsonb",
        "to_json",
        "make_interval",
        "array_fill",
        "timezone",
        "date_trunc",
    }
)
_UTC_ZONES = frozenset(
    z.lower()
    for z in (
        "UTC",
        "Etc/UTC",
        "UCT",
        "Etc/UCT",
        "Universal",
        "Etc/Universal",
        "Zulu",
        "Etc/Zulu",
        "GMT",
        "Etc/GMT",
        "GMT0",
        "Etc/GMT0",
        "GMT+0",
        "Etc/GMT+0",
        "GMT-0",
        "Etc/GMT-0",
        "Greenwich",
        "Etc/Greenwich",
    )
)
_TIME_TYPES = frozenset({"timestamp", "timestamptz", "time", "timetz"})
_LENGTH_TYPES = frozenset({"varchar", "bpchar"})
_MAX_TIME_PRECISION = 6
_VARHDRSZ = 4


# --- CREATE INDEX, REINDEX, DROP INDEX ---------------------------------------------------------------------------


@rule(
    "index-not-concurrent",
    title="CREATE INDEX without CONCURRENTLY",
    kind=Kind.LOCK,
    lock="SHARE",
    why="it holds a SHARE lock for the whole build, so every INSERT, UPDATE and DELETE on the table waits",
    safe_form="CREATE INDEX CONCURRENTLY (pgsluice runs a file holding it statement by statement: keep it in a "
    "file of its own, with '-- pgsluice: no-transaction')",
    when="the table exists before the run and holds rows",
    nodes=["IndexStmt"],
)
def index_not_concurrent(ctx: Context) -> Iterator[Hit]:
    """``CREATE INDEX`` without ``CONCURRENTLY`` takes SHARE on the table for the build: writes wait.

    Safe form: ``CREATE INDEX CONCURRENTLY``, alone in a no-transaction file; on a partitioned table, an index
    ``ON ONLY`` the parent, ``CONCURRENTLY`` on each partition, then ``ALTER INDEX … ATTACH PARTITION``."""
    tree = ctx.tree
    if tree.concurrent:
        return
    ref = RelName.of(tree.relation)
    table = ctx.table(ref)
    if table is not None and table.kind == "p" and not tree.relation.inh:
        return  # ON ONLY a partitioned table: an invalid index on the parent alone, nothing is built
    if table is not None and tree.if_not_exists and any(i.name == tree.idxname and i.valid for i in table.indexes):
        return  # IF NOT EXISTS with a valid index of that name there already: nothing is built
    if table is not None and table.kind == "p":
        safe = (
            f"a partitioned table cannot be indexed CONCURRENTLY: CREATE INDEX {tree.idxname or '<name>'} ON ONLY "
            f"{table.qualified} (…); then CREATE INDEX CONCURRENTLY on each partition and ALTER INDEX … ATTACH "
            "PARTITION each of them (each in a no-transaction file)"
        )
    else:
        safe = _CREATE_INDEX.sub(r"\1 CONCURRENTLY", ctx.command.sql, count=1)
        safe += " (alone in a file with '-- pgsluice: no-transaction')"
    yield Hit(f"CREATE INDEX {tree.idxname or ''} on {ctx.show(ref)} without CONCURRENTLY", ref, safe_form=safe)


_CREATE_INDEX = re.compile(r"^(CREATE\s+(?:UNIQUE\s+)?INDEX)\b", re.IGNORECASE)


def _reindex_concurrently(tree: Any) -> bool:
    return any(getattr(p, "defname", "") == "concurrently" for p in tree.params or ())


@rule(
    "reindex-not-concurrent",
    title="REINDEX without CONCURRENTLY",
    kind=Kind.LOCK,
    lock="SHARE on the table, ACCESS EXCLUSIVE on each index",
    why="writes wait for the rebuild, and every query that would use the index waits too",
    safe_form="REINDEX … CONCURRENTLY (PostgreSQL 12+), alone in a no-transaction file",
    when="the table exists before the run and holds rows",
    nodes=["ReindexStmt"],
)
def reindex_not_concurrent(ctx: Context) -> Iterator[Hit]:
    """``REINDEX`` without ``CONCURRENTLY``: SHARE on the table, ACCESS EXCLUSIVE on the index.

    Safe form: ``REINDEX INDEX CONCURRENTLY``/``REINDEX TABLE CONCURRENTLY``."""
    tree = ctx.tree
    if _reindex_concurrently(tree):
        return
    kind = tree.kind.name.removeprefix("REINDEX_OBJECT_")
    if tree.relation is None:
        yield Hit(f"REINDEX {kind} {tree.name or ''} without CONCURRENTLY", severity=Severity.LARGE, needs_live=True)
        return
    ref = RelName.of(tree.relation)
    via_index = kind == "INDEX"
    safe = f"REINDEX {kind} CONCURRENTLY {ref} (alone in a file with '-- pgsluice: no-transaction')"
    yield Hit(f"REINDEX {kind} {ref} without CONCURRENTLY", ref, via_index=via_index, safe_form=safe)


@rule(
    "drop-index-not-concurrent",
    title="DROP INDEX without CONCURRENTLY",
    kind=Kind.LOCK,
    lock="ACCESS EXCLUSIVE",
    why="it waits for every query on the table to finish and blocks reads and writes while it waits",
    safe_form="DROP INDEX CONCURRENTLY IF EXISTS <index>, one index per statement, in a no-transaction file",
    when="the index's table exists before the run and holds rows",
    nodes=["DropStmt"],
)
def drop_index_not_concurrent(ctx: Context) -> Iterator[Hit]:
    """``DROP INDEX`` without ``CONCURRENTLY`` takes ACCESS EXCLUSIVE on the index's table.

    Safe form: ``DROP INDEX CONCURRENTLY IF EXISTS``, one index per statement, outside a transaction."""
    tree = ctx.tree
    if tree.removeType.name != "OBJECT_INDEX" or tree.concurrent:
        return
    for obj in tree.objects or ():
        ref = RelName.of_parts(obj if isinstance(obj, tuple | list) else (obj,))
        if any(ref.matches(created) for created in ctx.state.created_indexes):
            continue
        safe = f"DROP INDEX CONCURRENTLY IF EXISTS {ref} (alone in a file with '-- pgsluice: no-transaction')"
        yield Hit(f"DROP INDEX {ref} without CONCURRENTLY", ref, via_index=True, safe_form=safe)


@rule(
    "index-corruption-pg14",
    title="CONCURRENTLY on PostgreSQL 14.0 to 14.3",
    kind=Kind.ERROR,
    lock="SHARE UPDATE EXCLUSIVE",
    why="CREATE INDEX CONCURRENTLY and REINDEX CONCURRENTLY on 14.0 to 14.3 can build an index that silently "
    "misses rows written during the build (fixed in 14.4)",
    safe_form="upgrade the server to 14.4 or later first (then check existing indexes with amcheck's "
    "bt_index_check(index, true))",
    when="the live server is 14.0 to 14.3 (lint only knows it with --pg-version 14.N)",
    nodes=["IndexStmt", "ReindexStmt"],
)
def index_corruption_pg14(ctx: Context) -> Iterator[Hit]:
    """``CONCURRENTLY`` index builds on PostgreSQL 14.0 to 14.3 can corrupt the index (fixed in 14.4).

    Safe form: upgrade to 14.4+ first."""
    facts = ctx.facts
    if not (facts.version_exact and 140000 <= facts.server_version_num < 140004):
        return
    tree = ctx.tree
    if type(tree).__name__ == "IndexStmt":
        if not tree.concurrent or ctx.is_new(RelName.of(tree.relation)):
            return
        what = "CREATE INDEX CONCURRENTLY"
    elif _reindex_concurrently(tree):
        what = "REINDEX CONCURRENTLY"
    else:
        return
    yield Hit(f"{what} on PostgreSQL {facts.version_text}", severity=Severity.ERROR, needs_live=True)


@rule(
    "invalid-index-leftover",
    title="an INVALID index of the same name is left over",
    kind=Kind.ERROR,
    lock="none (the statement fails, or IF NOT EXISTS keeps the broken index)",
    why="a failed CREATE INDEX CONCURRENTLY left it behind: without IF NOT EXISTS the statement fails "
    "(42P07); with it, the invalid index stays, is never used and enforces no uniqueness",
    safe_form="DROP INDEX CONCURRENTLY IF EXISTS <index>; in the file before it (or REINDEX INDEX CONCURRENTLY "
    "<index> to finish it)",
    when="the live catalog holds an index of that name with indisvalid = false",
    nodes=["IndexStmt"],
)
def invalid_index_leftover(ctx: Context) -> Iterator[Hit]:
    """``CREATE INDEX name`` where ``name`` exists and is INVALID (a failed concurrent build).

    Safe form: ``DROP INDEX CONCURRENTLY IF EXISTS name`` first."""
    tree = ctx.tree
    ref = RelName.of(tree.relation)
    table = ctx.table(ref)
    if not tree.idxname or table is None or ctx.is_new(ref):
        return
    if any(dropped.name == tree.idxname for dropped in ctx.state.dropped_indexes):
        return  # dropped earlier in the run: the safe form
    for index in table.indexes:
        if index.name == tree.idxname and not index.valid:
            qualified = f"{table.schema}.{index.name}"
            yield Hit(
                f"CREATE INDEX {tree.idxname} on {table.qualified}: an INVALID index {qualified} already exists",
                severity=Severity.ERROR,
                needs_live=True,
                safe_form=f"DROP INDEX CONCURRENTLY IF EXISTS {qualified}; in a no-transaction file before it",
            )


# --- ADD COLUMN -------------------------------------------------------------------------------------------------


def _add_column_plain(tree: Any) -> Iterator[Any]:
    """ADD COLUMN definitions that are not serial, identity or generated (those have rules of their own)."""
    for cmd in _alter_cmds(tree, "AT_AddColumn"):
        column = cmd.def_
        if not (is_serial(column) or _is_identity(column) or _is_stored_generated(column)):
            yield column


def _volatile_default(ctx: Context, column: Any) -> str | None:
    """The first volatile function the default calls (unknown ones are assumed volatile), or None."""
    for function in default_functions(column):
        volatility, known = ctx.volatility(function)
        if volatility == "v":
            return f"{function}()" + ("" if known else " (unknown: assumed volatile)")
    return None


@rule(
    "add-column-volatile-default",
    title="ADD COLUMN with a volatile DEFAULT",
    kind=Kind.LOCK,
    lock="ACCESS EXCLUSIVE",
    why="a volatile default (random(), clock_timestamp(), gen_random_uuid(), nextval() …) is computed for every "
    "existing row: the whole table is rewritten while reads and writes wait",
    safe_form="ADD COLUMN without the default; then ALTER COLUMN … SET DEFAULT (new rows only); backfill existing "
    "rows in batches in a no-transaction file",
    when="the table holds rows; volatility is read from pg_proc.provolatile",
    nodes=["AlterTableStmt"],
)
def add_column_volatile_default(ctx: Context) -> Iterator[Hit]:
    """``ADD COLUMN … DEFAULT f()`` with ``f`` volatile rewrites the table under ACCESS EXCLUSIVE.

    Safe form: add the column without a default, ``SET DEFAULT`` separately, backfill in batches."""
    ref = RelName.of(ctx.tree.relation)
    for column in _add_column_plain(ctx.tree):
        volatile = _volatile_default(ctx, column)
        if volatile is None:
            continue
        name = _ident(column.colname)
        yield Hit(
            f"ADD COLUMN {name} on {ctx.show(ref)} with the volatile default {volatile}",
            ref,
            needs_live=True,
            safe_form=f"ALTER TABLE {ref} ADD COLUMN {name} {_deparse(column.typeName)}; then ALTER TABLE {ref} "
            f"ALTER COLUMN {name} SET DEFAULT …; then backfill in batches (UPDATE … WHERE id BETWEEN …, one "
            "transaction each, in a no-transaction file)",
        )


@rule(
    "add-column-default-before-pg11",
    title="ADD COLUMN with a DEFAULT before PostgreSQL 11",
    kind=Kind.LOCK,
    lock="ACCESS EXCLUSIVE",
    why="before PostgreSQL 11, any non-null default is written into every existing row: the table is rewritten "
    "while reads and writes wait",
    safe_form="ADD COLUMN without the default; then ALTER COLUMN … SET DEFAULT; backfill in batches",
    when="the server is older than 11 and the table holds rows",
    nodes=["AlterTableStmt"],
)
def add_column_default_before_pg11(ctx: Context) -> Iterator[Hit]:
    """``ADD COLUMN … DEFAULT x`` on PostgreSQL < 11 rewrites the table under ACCESS EXCLUSIVE.

    Safe form: add the column without a default, ``SET DEFAULT`` separately, backfill in batches."""
    if ctx.version >= 110000:
        return
    ref = RelName.of(ctx.tree.relation)
    for column in _add_column_plain(ctx.tree):
        if _has_default(column) and _volatile_default(ctx, column) is None:
            yield Hit(f"ADD COLUMN {_ident(column.colname)} with a default on PostgreSQL {ctx.facts.version_text}", ref)


@rule(
    "add-column-generated-stored",
    title="ADD COLUMN … GENERATED ALWAYS AS (…) STORED",
    kind=Kind.LOCK,
    lock="ACCESS EXCLUSIVE",
    why="the value is computed and stored for every existing row: the whole table is rewritten while reads and "
    "writes wait",
    safe_form="add a plain column, fill it with a trigger for new rows and a batched backfill for old ones (or a "
    "view/expression index computing it)",
    when="the table holds rows",
    nodes=["AlterTableStmt"],
)
def add_column_generated_stored(ctx: Context) -> Iterator[Hit]:
    """``ADD COLUMN … GENERATED ALWAYS AS (…) STORED`` rewrites the table under ACCESS EXCLUSIVE.

    Safe form: a plain column kept by a trigger, backfilled in batches."""
    ref = RelName.of(ctx.tree.relation)
    for cmd in _alter_cmds(ctx.tree, "AT_AddColumn"):
        if _is_stored_generated(cmd.def_):
            yield Hit(f"ADD COLUMN {_ident(cmd.def_.colname)} GENERATED … STORED on {ctx.show(ref)}", ref)


@rule(
    "add-column-serial",
    title="ADD COLUMN serial / bigserial / GENERATED … AS IDENTITY",
    kind=Kind.LOCK,
    lock="ACCESS EXCLUSIVE",
    why="every existing row gets a value from the sequence (a volatile default): the whole table is rewritten "
    "while reads and writes wait",
    safe_form="add a plain bigint column, create the sequence, SET DEFAULT nextval(…) for new rows, backfill old "
    "rows in batches, then (optionally) ADD GENERATED … AS IDENTITY on the filled column",
    when="the table holds rows",
    nodes=["AlterTableStmt"],
)
def add_column_serial(ctx: Context) -> Iterator[Hit]:
    """``ADD COLUMN id serial`` (or bigserial, smallserial, ``GENERATED … AS IDENTITY``) rewrites the table.

    Safe form: plain column + sequence default for new rows + batched backfill."""
    ref = RelName.of(ctx.tree.relation)
    for cmd in _alter_cmds(ctx.tree, "AT_AddColumn"):
        column = cmd.def_
        if is_serial(column) or _is_identity(column):
            kind = "identity" if _is_identity(column) else str(column.typeName.names[-1].sval)
            yield Hit(f"ADD COLUMN {_ident(column.colname)} {kind} on {ctx.show(ref)}", ref)


# --- ALTER COLUMN TYPE --------------------------------------------------------------------------------------------


def _target_type(type_name: Any) -> tuple[str, int | None]:
    """``(typname, typmod)`` of a parsed type; typmod None when it cannot be computed (interval fields …)."""
    name = str(type_name.names[-1].sval)
    values = []
    for mod in type_name.typmods or ():
        value = getattr(getattr(mod, "val", None), "ival", None)
        if value is None:
            return name, None
        values.append(int(value))
    if not values:
        return name, -1
    if name in _LENGTH_TYPES:
        return name, values[0] + _VARHDRSZ
    if name == "numeric":
        precision, scale = values[0], values[1] if len(values) > 1 else 0
        return name, ((precision << 16) | (scale & 0x7FF)) + _VARHDRSZ
    if name in _TIME_TYPES or name in ("varbit", "bit"):
        return name, values[0]
    return name, None


def _typmod_widens(type_name: str, old: int, new: int) -> bool:
    """Whether changing the typmod of ``type_name`` from ``old`` to ``new`` needs no rewrite."""
    if new in (old, -1):
        return True
    if old == -1:
        return type_name in _TIME_TYPES and new >= _MAX_TIME_PRECISION
    if type_name in ("varchar", "varbit"):
        return new >= old
    if type_name == "numeric":
        (old_p, old_s), (new_p, new_s) = divmod(old - _VARHDRSZ, 1 << 16), divmod(new - _VARHDRSZ, 1 << 16)
        return new_s == old_s and new_p >= old_p
    if type_name in _TIME_TYPES:
        return new >= old or new >= _MAX_TIME_PRECISION
    return False


def binary_coercible(
    current_type: str, current_typmod: int, target: Any, *, timezone: str | None, version: int
) -> bool:
    """Whether ``ALTER COLUMN … TYPE target`` needs neither a rewrite nor a scan, given the column's current
    ``typname`` and ``atttypmod`` (varchar(n) → varchar(m ≥ n) or text; numeric precision up at the same scale;
    cidr → inet; time/timestamp precision up; timestamp ↔ timestamptz only with a UTC session on 12+)."""
    name, typmod = _target_type(target)
    if typmod is None:
        return False
    if name == current_type:
        return _typmod_widens(name, current_typmod, typmod)
    if (current_type, name) in (("varchar", "text"), ("cidr", "inet")):
        return True
    if (current_type, name) == ("text", "varchar"):
        return typmod == -1
    if {current_type, name} == {"timestamp", "timestamptz"}:
        utc = timezone is not None and timezone.lower() in _UTC_ZONES
        return utc and version >= 120000 and _typmod_widens(name, current_typmod, typmod)
    return False


def _plain_using(cmd: Any) -> bool:
    """No USING, or ``USING col`` / ``USING col::<the new type>``: the conversion is the type's own cast."""
    using = cmd.def_.raw_default
    if using is None:
        return True
    if type(using).__name__ == "TypeCast":
        same = _deparse(using.typeName) == _deparse(cmd.def_.typeName)
        return bool(same and _column_of(using.arg) == cmd.name)
    return bool(_column_of(using) == cmd.name)


@rule(
    "column-type-rewrite",
    title="ALTER COLUMN … TYPE that rewrites the table",
    kind=Kind.LOCK,
    lock="ACCESS EXCLUSIVE",
    why="the new type is not binary-coercible from the column's current one: every row is rewritten and every "
    "index rebuilt while reads and writes wait",
    safe_form="expand/contract: add a column of the new type, write both (trigger), backfill in batches, switch "
    "reads, then drop the old column",
    when="the table holds rows, unless the change is binary-coercible given the current type and typmod",
    nodes=["AlterTableStmt"],
)
def column_type_rewrite(ctx: Context) -> Iterator[Hit]:
    """``ALTER COLUMN … TYPE`` unless binary-coercible from the live column: ACCESS EXCLUSIVE and a rewrite.

    Safe form: a new column of the new type, dual writes, batched backfill, switch, drop the old one."""
    ref = RelName.of(ctx.tree.relation)
    table = ctx.table(ref)
    for cmd in _alter_cmds(ctx.tree, "AT_AlterColumnType"):
        column = table.columns.get(cmd.name) if table is not None else None
        target = cmd.def_.typeName
        if column is not None and _plain_using(cmd):
            coercible = binary_coercible(
                column.type_name, column.typmod, target, timezone=ctx.facts.timezone, version=ctx.version
            )
            if coercible:
                continue
        now = f" from {column.type_name}" if column is not None else ""
        yield Hit(
            f"ALTER COLUMN {_ident(cmd.name)} TYPE {_deparse(target)}{now} on {ctx.show(ref)}", ref, needs_live=True
        )


# --- SET NOT NULL, constraints ------------------------------------------------------------------------------------


def _proven_not_null(ctx: Context, ref: RelName, table: TableFacts | None, column: str) -> bool:
    if any(ref.matches(t) and c == column for t, c in ctx.state.validated_not_null):
        return True
    if table is None:
        return False
    checks = (c for c in table.constraints if c.kind == "c" and c.validated)
    return any(column in _check_definition_not_null(c.definition) for c in checks)


@rule(
    "set-not-null-scan",
    title="SET NOT NULL without a validated CHECK (col IS NOT NULL)",
    kind=Kind.LOCK,
    lock="ACCESS EXCLUSIVE",
    why="every row is read to prove the column has no NULL while reads and writes wait",
    safe_form="ADD CONSTRAINT <c> CHECK (col IS NOT NULL) NOT VALID; VALIDATE CONSTRAINT <c> in a later "
    "transaction; then SET NOT NULL (PostgreSQL 12+ uses the constraint and skips the scan); then DROP CONSTRAINT <c>",
    when="the table holds rows and no validated CHECK (col IS NOT NULL) exists (in the catalog or earlier in the "
    "run); before 12 the scan always happens",
    nodes=["AlterTableStmt"],
)
def set_not_null_scan(ctx: Context) -> Iterator[Hit]:
    """``ALTER COLUMN … SET NOT NULL`` scans the table under ACCESS EXCLUSIVE unless a validated CHECK proves it.

    Safe form: ``CHECK (col IS NOT NULL) NOT VALID``, ``VALIDATE`` later, then ``SET NOT NULL``."""
    ref = RelName.of(ctx.tree.relation)
    table = ctx.table(ref)
    for cmd in _alter_cmds(ctx.tree, "AT_SetNotNull"):
        column = table.columns.get(cmd.name) if table is not None else None
        if column is not None and column.not_null:
            continue  # already NOT NULL: nothing to check
        if ctx.version >= 120000 and _proven_not_null(ctx, ref, table, cmd.name):
            continue
        name = _ident(cmd.name)
        check = f"{ref.name}_{cmd.name}_not_null"
        yield Hit(
            f"ALTER COLUMN {name} SET NOT NULL on {ctx.show(ref)}",
            ref,
            needs_live=True,
            safe_form=f"ALTER TABLE {ref} ADD CONSTRAINT {check} CHECK ({name} IS NOT NULL) NOT VALID; in a later "
            f"migration ALTER TABLE {ref} VALIDATE CONSTRAINT {check}; then SET NOT NULL (12+ skips the scan) and "
            f"DROP CONSTRAINT {check}",
        )


@rule(
    "foreign-key-without-not-valid",
    title="ADD FOREIGN KEY without NOT VALID",
    kind=Kind.LOCK,
    lock="SHARE ROW EXCLUSIVE on both tables",
    why="every existing row is checked against the referenced table while writes to both tables wait",
    safe_form="ADD CONSTRAINT … FOREIGN KEY … NOT VALID; then VALIDATE CONSTRAINT in a later transaction (it "
    "takes only SHARE UPDATE EXCLUSIVE)",
    when="the referencing table holds rows",
    nodes=["AlterTableStmt"],
)
def foreign_key_without_not_valid(ctx: Context) -> Iterator[Hit]:
    """``ADD FOREIGN KEY`` (or ``ADD COLUMN … REFERENCES``) validates every row under SHARE ROW EXCLUSIVE.

    Safe form: ``ADD CONSTRAINT … NOT VALID``, then ``VALIDATE CONSTRAINT`` in another transaction."""
    ref = RelName.of(ctx.tree.relation)
    for constraint, column in _added_constraints(ctx.tree, "CONSTR_FOREIGN"):
        if constraint.skip_validation:
            continue
        parent = RelName.of(constraint.pktable)
        columns = ", ".join(_ident(str(a.sval)) for a in constraint.fk_attrs or ()) or _ident(column or "")
        name = constraint.conname or f"{ref.name}_{(column or 'fk')}_fkey"
        yield Hit(
            f"FOREIGN KEY ({columns}) REFERENCES {ctx.show(parent)} added to {ctx.show(ref)} without NOT VALID",
            ref,
            lock=f"SHARE ROW EXCLUSIVE on {ctx.show(ref)} and {ctx.show(parent)}",
            safe_form=f"ALTER TABLE {ref} ADD CONSTRAINT {name} FOREIGN KEY ({columns}) REFERENCES {parent} (…) "
            f"NOT VALID; then, in a later migration, ALTER TABLE {ref} VALIDATE CONSTRAINT {name}"
            + (" (add the column first, without REFERENCES)" if column else ""),
        )


@rule(
    "check-without-not-valid",
    title="ADD CHECK without NOT VALID",
    kind=Kind.LOCK,
    lock="ACCESS EXCLUSIVE",
    why="every existing row is checked while reads and writes wait",
    safe_form="ADD CONSTRAINT … CHECK (…) NOT VALID; then VALIDATE CONSTRAINT in a later transaction (it takes "
    "only SHARE UPDATE EXCLUSIVE)",
    when="the table holds rows",
    nodes=["AlterTableStmt"],
)
def check_without_not_valid(ctx: Context) -> Iterator[Hit]:
    """``ADD CHECK`` (or a CHECK inline in ADD COLUMN) validates every row under ACCESS EXCLUSIVE.

    Safe form: ``ADD CONSTRAINT … CHECK (…) NOT VALID``, then ``VALIDATE CONSTRAINT`` in another transaction."""
    ref = RelName.of(ctx.tree.relation)
    for constraint, column in _added_constraints(ctx.tree, "CONSTR_CHECK"):
        if constraint.skip_validation:
            continue
        expr = _deparse(constraint.raw_expr)
        name = constraint.conname or f"{ref.name}_{column or 'check'}_check"
        yield Hit(
            f"CHECK ({expr}) added to {ctx.show(ref)} without NOT VALID",
            ref,
            safe_form=f"ALTER TABLE {ref} ADD CONSTRAINT {name} CHECK ({expr}) NOT VALID; then, in a later "
            f"migration, ALTER TABLE {ref} VALIDATE CONSTRAINT {name}",
        )


@rule(
    "validate-in-same-transaction",
    title="VALIDATE CONSTRAINT in the transaction that added it NOT VALID",
    kind=Kind.LOCK,
    lock="the ADD's lock (ACCESS EXCLUSIVE for CHECK, SHARE ROW EXCLUSIVE for FOREIGN KEY), still held",
    why="NOT VALID buys nothing when the validation runs in the same transaction: the scan happens under the "
    "strong lock the ADD took, which is held until commit",
    safe_form="VALIDATE CONSTRAINT in a later migration (or a later BEGIN … COMMIT block of a no-transaction file)",
    when="the table holds rows",
    nodes=["AlterTableStmt"],
)
def validate_in_same_transaction(ctx: Context) -> Iterator[Hit]:
    """``VALIDATE CONSTRAINT`` after ``ADD … NOT VALID`` in one transaction scans under the ADD's strong lock.

    Safe form: validate in a later transaction."""
    ref = RelName.of(ctx.tree.relation)
    for cmd in _alter_cmds(ctx.tree, "AT_ValidateConstraint"):
        added = next((v for (t, n), v in ctx.state.tx_not_valid.items() if n == cmd.name and ref.matches(t)), None)
        if added is None:
            continue
        line, lock = added
        yield Hit(
            f"VALIDATE CONSTRAINT {_ident(cmd.name)} on {ctx.show(ref)} in the transaction that added it NOT VALID "
            f"at line {line}",
            ref,
            lock=f"{lock} (taken by the ADD at line {line}, held until commit)",
        )


def _covered(columns: Sequence[str], indexes: Iterable[tuple[str | None, ...]]) -> bool:
    """An index whose leading key columns are exactly ``columns`` (in any order)."""
    wanted = set(columns)
    return any(len(index) >= len(wanted) and set(index[: len(wanted)]) == wanted for index in indexes)


@rule(
    "foreign-key-unindexed",
    title="FOREIGN KEY whose referencing columns have no index",
    kind=Kind.LOCK,
    lock="none while adding it; afterwards each DELETE or key UPDATE on the referenced table scans this one",
    why="without an index on the referencing columns, every DELETE (or key UPDATE) on the referenced table "
    "reads this whole table, under the row locks of the referenced table",
    safe_form="CREATE INDEX CONCURRENTLY ON <table> (<referencing columns>) (in a no-transaction file)",
    when="the referencing table holds rows and no valid index (existing or created in the run) starts with "
    "those columns",
    nodes=["AlterTableStmt"],
)
def foreign_key_unindexed(ctx: Context) -> Iterator[Hit]:
    """A foreign key without an index on its referencing columns: parent deletes scan the child.

    Safe form: ``CREATE INDEX CONCURRENTLY`` on the referencing columns."""
    foreign_keys = list(_added_constraints(ctx.tree, "CONSTR_FOREIGN"))
    if not foreign_keys:
        return
    ref = RelName.of(ctx.tree.relation)
    table = ctx.table(ref)
    existing = [i.columns for i in table.indexes if i.valid and not i.partial] if table is not None else []
    created = [columns for name, columns in ctx.state.run_indexes if ref.matches(name)]
    for constraint, column in foreign_keys:
        columns = [str(a.sval) for a in constraint.fk_attrs or ()] or [column or ""]
        if _covered(columns, [*existing, *created]):
            continue
        listed = ", ".join(_ident(c) for c in columns)
        yield Hit(
            f"FOREIGN KEY ({listed}) on {ctx.show(ref)} has no index on ({listed})",
            ref,
            needs_live=True,
            safe_form=f"CREATE INDEX CONCURRENTLY ON {ref} ({listed}) (in a no-transaction file)",
        )


@rule(
    "add-unique-not-using-index",
    title="ADD UNIQUE / PRIMARY KEY not USING INDEX",
    kind=Kind.LOCK,
    lock="ACCESS EXCLUSIVE",
    why="the unique index is built while the table is locked against reads and writes",
    safe_form="CREATE UNIQUE INDEX CONCURRENTLY <index> ON <table> (…); then ADD CONSTRAINT <c> UNIQUE USING INDEX "
    "<index> (or PRIMARY KEY USING INDEX, once the columns are NOT NULL)",
    when="the table holds rows",
    nodes=["AlterTableStmt"],
)
def add_unique_not_using_index(ctx: Context) -> Iterator[Hit]:
    """``ADD UNIQUE``/``ADD PRIMARY KEY`` builds its index under ACCESS EXCLUSIVE.

    Safe form: ``CREATE UNIQUE INDEX CONCURRENTLY``, then ``ADD CONSTRAINT … USING INDEX``."""
    ref = RelName.of(ctx.tree.relation)
    for constraint, column in _added_constraints(ctx.tree, "CONSTR_UNIQUE", "CONSTR_PRIMARY"):
        if constraint.indexname:
            continue
        kind = "PRIMARY KEY" if constraint.contype.name == "CONSTR_PRIMARY" else "UNIQUE"
        keys = ", ".join(_ident(str(k.sval)) for k in constraint.keys or ()) or _ident(column or "")
        index = constraint.conname or f"{ref.name}_{'pkey' if kind == 'PRIMARY KEY' else 'key'}"
        yield Hit(
            f"ADD {kind} ({keys}) on {ctx.show(ref)} builds its index under the lock",
            ref,
            safe_form=f"CREATE UNIQUE INDEX CONCURRENTLY {index} ON {ref} ({keys}) (no-transaction file); then ALTER "
            f"TABLE {ref} ADD CONSTRAINT {index} {kind} USING INDEX {index}",
        )


@rule(
    "add-exclusion-constraint",
    title="ADD EXCLUDE",
    kind=Kind.LOCK,
    lock="ACCESS EXCLUSIVE",
    why="the exclusion index is built and every row checked while the table is locked against reads and "
    "writes; there is no NOT VALID or USING INDEX form",
    safe_form="no online form: add it when the table is created, or in a maintenance window (then accept it "
    "with the allow directive)",
    when="the table holds rows",
    nodes=["AlterTableStmt"],
)
def add_exclusion_constraint(ctx: Context) -> Iterator[Hit]:
    """``ADD EXCLUDE`` builds its index and checks every row under ACCESS EXCLUSIVE.

    Safe form: none online; at table creation or in a maintenance window."""
    ref = RelName.of(ctx.tree.relation)
    for constraint, _ in _added_constraints(ctx.tree, "CONSTR_EXCLUSION"):
        yield Hit(f"ADD EXCLUDE {constraint.conname or ''} on {ctx.show(ref)}", ref)


# --- enums ----------------------------------------------------------------------------------------------------------


def _string_constants(sql: str) -> set[str]:
    """The string literals of a statement, unquoted (scanned, so INSERTs need no parse tree)."""
    from pglast import parser

    try:
        tokens = parser.scan(sql)
    except parser.ParseError:
        return set()
    found = set()
    for token in tokens:
        if token.name == "SCONST":
            text = sql[token.start : token.end + 1]
            match = re.fullmatch(r"(?:[eE])?'(.*)'", text, re.S)
            if match is not None:
                found.add(match[1].replace("''", "'"))
            elif text.startswith("$"):
                found.add(re.sub(r"^\$[^$]*\$|\$[^$]*\$$", "", text))
    return found


@rule(
    "enum-value-used-in-transaction",
    title="ALTER TYPE … ADD VALUE, then the new value used in the same transaction",
    kind=Kind.ERROR,
    lock="none (the statement fails)",
    why="PostgreSQL 12+ refuses to use an enum value before the transaction that added it commits (SQLSTATE "
    "55P04, unsafe use of new value)",
    safe_form="put ALTER TYPE … ADD VALUE in a migration of its own (or its own BEGIN … COMMIT block of a "
    "no-transaction file), before the one that uses the value",
    when="always (PostgreSQL 12+)",
    nodes=None,
)
def enum_value_used_in_transaction(ctx: Context) -> Iterator[Hit]:
    """A value added by ``ALTER TYPE … ADD VALUE`` used later in the same transaction: fails with 55P04.

    Safe form: add the value in an earlier migration."""
    added = ctx.state.tx_enum_values
    if not added or type(ctx.tree).__name__ == "AlterEnumStmt":
        return
    for label in sorted(_string_constants(ctx.command.sql) & added.keys()):
        type_name, line = added[label]
        yield Hit(
            f"uses {label!r}, added to type {type_name} at line {line} in the same transaction",
            severity=Severity.ERROR,
        )


@rule(
    "enum-add-value-in-transaction",
    title="ALTER TYPE … ADD VALUE in a transaction before PostgreSQL 12",
    kind=Kind.ERROR,
    lock="none (the statement fails)",
    why="before PostgreSQL 12, ALTER TYPE … ADD VALUE cannot run inside a transaction block (SQLSTATE 25001)",
    safe_form="put it alone in a file with '-- pgsluice: no-transaction'",
    when="the server is older than 12",
    nodes=["AlterEnumStmt"],
)
def enum_add_value_in_transaction(ctx: Context) -> Iterator[Hit]:
    """``ALTER TYPE … ADD VALUE`` inside a transaction on PostgreSQL < 12 fails.

    Safe form: a no-transaction file."""
    if ctx.version < 120000 and ctx.in_transaction and ctx.tree.newVal:
        name = ".".join(str(n.sval) for n in ctx.tree.typeName)
        yield Hit(f"ALTER TYPE {name} ADD VALUE inside a transaction", severity=Severity.ERROR)


# --- whole-table operations ----------------------------------------------------------------------------------------


@rule(
    "vacuum-full",
    title="VACUUM FULL",
    kind=Kind.LOCK,
    lock="ACCESS EXCLUSIVE",
    why="the table is rewritten into new files while reads and writes wait, and needs free disk space for a full copy",
    safe_form="plain VACUUM (no lock against reads and writes), or pg_repack / pg_squeeze to compact online",
    when="the table holds rows",
    nodes=["VacuumStmt"],
)
def vacuum_full(ctx: Context) -> Iterator[Hit]:
    """``VACUUM FULL`` rewrites the table under ACCESS EXCLUSIVE.

    Safe form: plain VACUUM, or pg_repack."""
    tree = ctx.tree
    if not tree.is_vacuumcmd or not any(getattr(o, "defname", "") == "full" for o in tree.options or ()):
        return
    if not tree.rels:
        yield Hit("VACUUM FULL of every table in the database", severity=Severity.LARGE, needs_live=True)
    for item in tree.rels or ():
        ref = RelName.of(item.relation)
        yield Hit(f"VACUUM FULL {ctx.show(ref)}", ref)


@rule(
    "cluster",
    title="CLUSTER",
    kind=Kind.LOCK,
    lock="ACCESS EXCLUSIVE",
    why="the table is rewritten in index order while reads and writes wait",
    safe_form="pg_repack --order-by (online), or accept it in a maintenance window",
    when="the table holds rows",
    nodes=["ClusterStmt"],
)
def cluster(ctx: Context) -> Iterator[Hit]:
    """``CLUSTER`` rewrites the table under ACCESS EXCLUSIVE.

    Safe form: pg_repack --order-by."""
    if ctx.tree.relation is None:
        yield Hit("CLUSTER of every clustered table", severity=Severity.LARGE, needs_live=True)
        return
    ref = RelName.of(ctx.tree.relation)
    yield Hit(f"CLUSTER {ctx.show(ref)}", ref)


_ACCESS_EXCLUSIVE_MODE = 8


@rule(
    "lock-access-exclusive",
    title="LOCK TABLE … IN ACCESS EXCLUSIVE MODE",
    kind=Kind.LOCK,
    lock="ACCESS EXCLUSIVE",
    why="even SELECTs on the table wait until the migration commits",
    safe_form="take the weakest mode that protects what the migration does (SHARE ROW EXCLUSIVE blocks writes "
    "but not reads), or none: each statement takes the lock it needs",
    when="the table holds rows",
    nodes=["LockStmt"],
)
def lock_access_exclusive(ctx: Context) -> Iterator[Hit]:
    """``LOCK TABLE`` (default mode) takes ACCESS EXCLUSIVE until commit: every read waits.

    Safe form: a weaker mode, or none."""
    if ctx.tree.mode != _ACCESS_EXCLUSIVE_MODE:
        return
    for relation in ctx.tree.relations or ():
        ref = RelName.of(relation)
        yield Hit(f"LOCK TABLE {ctx.show(ref)} IN ACCESS EXCLUSIVE MODE", ref)


# --- what the running application still uses (expand/contract) ---------------------------------------------------

_EXPAND_CONTRACT = (
    "expand/contract: ship application code that no longer uses it first, then drop it in a later release"
)


@rule(
    "truncate",
    title="TRUNCATE of a table that holds rows",
    kind=Kind.COMPAT,
    lock="ACCESS EXCLUSIVE",
    why="its rows are gone at once and for good (no WHERE, no undo after commit), and the running application "
    "may still read them",
    safe_form="DELETE in batches if only some rows must go; if the table is obsolete, " + _EXPAND_CONTRACT,
    when="the table holds rows",
    nodes=["TruncateStmt"],
)
def truncate(ctx: Context) -> Iterator[Hit]:
    """``TRUNCATE`` takes ACCESS EXCLUSIVE and removes every row.

    Safe form: batched DELETE, or expand/contract."""
    for relation in ctx.tree.relations or ():
        ref = RelName.of(relation)
        yield Hit(f"TRUNCATE {ctx.show(ref)}", ref)


@rule(
    "drop-table",
    title="DROP TABLE of a table that holds rows",
    kind=Kind.COMPAT,
    lock="ACCESS EXCLUSIVE",
    why="the running application (the release before this one) still queries it until it is replaced, and "
    "its rows are gone",
    safe_form=_EXPAND_CONTRACT,
    when="the table holds rows",
    nodes=["DropStmt"],
)
def drop_table(ctx: Context) -> Iterator[Hit]:
    """``DROP TABLE`` on a table with rows: the running application breaks, the data is gone.

    Safe form: expand/contract (stop using it in a release, drop it in the next)."""
    if ctx.tree.removeType.name != "OBJECT_TABLE":
        return
    for obj in ctx.tree.objects or ():
        ref = RelName.of_parts(obj if isinstance(obj, tuple | list) else (obj,))
        yield Hit(f"DROP TABLE {ctx.show(ref)}", ref)


@rule(
    "drop-column",
    title="DROP COLUMN of a table that holds rows",
    kind=Kind.COMPAT,
    lock="ACCESS EXCLUSIVE (brief: no rewrite)",
    why="the running application still reads and writes the column until it is replaced: its queries fail "
    "(and ORMs that list columns fail on every query of the table)",
    safe_form=_EXPAND_CONTRACT,
    when="the table holds rows",
    nodes=["AlterTableStmt"],
)
def drop_column(ctx: Context) -> Iterator[Hit]:
    """``DROP COLUMN``: brief ACCESS EXCLUSIVE, but the running application still uses the column.

    Safe form: expand/contract (ignore the column in the application first)."""
    ref = RelName.of(ctx.tree.relation)
    for cmd in _alter_cmds(ctx.tree, "AT_DropColumn"):
        yield Hit(f"DROP COLUMN {_ident(cmd.name)} on {ctx.show(ref)}", ref)


@rule(
    "rename-table",
    title="RENAME of a table that holds rows",
    kind=Kind.COMPAT,
    lock="ACCESS EXCLUSIVE (brief)",
    why="the running application still uses the old name: its queries fail from the commit on",
    safe_form="expand/contract: create the new table (or a view under the new name), write to both, backfill, "
    "switch reads, then drop the old one in a later release",
    when="the table holds rows",
    nodes=["RenameStmt"],
)
def rename_table(ctx: Context) -> Iterator[Hit]:
    """``ALTER TABLE … RENAME TO``: the running application still uses the old name.

    Safe form: expand/contract, or a view under the other name during the switch."""
    tree = ctx.tree
    if tree.renameType.name != "OBJECT_TABLE":
        return
    ref = RelName.of(tree.relation)
    yield Hit(f"RENAME {ctx.show(ref)} TO {_ident(tree.newname)}", ref)


@rule(
    "rename-column",
    title="RENAME COLUMN of a table that holds rows",
    kind=Kind.COMPAT,
    lock="ACCESS EXCLUSIVE (brief)",
    why="the running application still uses the old column name: its queries fail from the commit on",
    safe_form="expand/contract: add the new column, write to both, backfill in batches, switch reads, then drop "
    "the old column in a later release",
    when="the table holds rows",
    nodes=["RenameStmt"],
)
def rename_column(ctx: Context) -> Iterator[Hit]:
    """``ALTER TABLE … RENAME COLUMN``: the running application still uses the old name.

    Safe form: expand/contract."""
    tree = ctx.tree
    if tree.renameType.name != "OBJECT_COLUMN" or tree.relationType.name != "OBJECT_TABLE":
        return
    ref = RelName.of(tree.relation)
    yield Hit(f"RENAME COLUMN {_ident(tree.subname)} TO {_ident(tree.newname)} on {ctx.show(ref)}", ref)


# --- data changes ---------------------------------------------------------------------------------------------------


def _limit_bound(where: Any) -> int | None:
    """The smallest constant LIMIT of a subquery among the WHERE's conjuncts (a batch: ``id IN (SELECT … LIMIT n)``)."""
    limits = []
    for part in _conjuncts(where):
        for node in walk(part):
            if type(node).__name__ == "SelectStmt" and node.limitCount is not None:
                value = getattr(getattr(node.limitCount, "val", None), "ival", None)
                if value is not None:
                    limits.append(int(value))
    return min(limits) if limits else None


def _equality_columns(where: Any) -> dict[str, int]:
    """Columns the WHERE pins to constants: ``col = const`` (1 value), ``col IN (…)`` (n values) or an integer
    ``col BETWEEN a AND b`` (at most b - a + 1 values)."""
    found: dict[str, int] = {}
    for part in _conjuncts(where):
        if type(part).__name__ != "A_Expr":
            continue
        column = _column_of(part.lexpr)
        operator = str(part.name[-1].sval) if part.name else ""
        if column is None:
            continue
        if part.kind.name == "AEXPR_OP" and operator == "=" and _column_of(part.rexpr) is None:
            found[column] = 1
        elif part.kind.name == "AEXPR_IN" and operator == "=" and isinstance(part.rexpr, tuple | list):
            found[column] = len(part.rexpr)
        elif part.kind.name == "AEXPR_BETWEEN" and isinstance(part.rexpr, tuple | list) and len(part.rexpr) == 2:
            low, high = (getattr(getattr(b, "val", None), "ival", None) for b in part.rexpr)
            if isinstance(low, int) and isinstance(high, int):  # an integer key's batch: id BETWEEN 1 AND 5000
                found[column] = max(0, high - low + 1)
    return found


def _rows_bound(where: Any, table: TableFacts | None) -> float | None:
    """At most how many rows the WHERE selects: a subquery's LIMIT, or a unique key pinned to constants;
    otherwise the table's estimate (None when unknown)."""
    bounds: list[float] = []
    limit = _limit_bound(where)
    if limit is not None:
        bounds.append(limit)
    pinned = _equality_columns(where)
    for index in table.indexes if table is not None else ():
        columns = index.columns
        if index.unique and index.valid and not index.partial and columns and all(c in pinned for c in columns):
            product = 1
            for column in columns:
                product *= pinned[str(column)]
            bounds.append(product)
    if table is not None and table.rows is not None:
        bounds.append(table.rows)
    return min(bounds) if bounds else None


@rule(
    "unbatched-write",
    title="UPDATE / DELETE of many rows in one statement",
    kind=Kind.LOCK,
    lock="ROW EXCLUSIVE, and a row lock on every row it touches until commit",
    why="one statement touching many rows holds their row locks until the migration commits (writers of those "
    "rows wait), writes a new version of each row at once (WAL, replica lag, bloat) and cannot be resumed",
    safe_form="batch it in a no-transaction file: UPDATE … WHERE id IN (SELECT id … WHERE <not done yet> LIMIT "
    "5000), repeated (or a DO block/procedure that COMMITs per batch), or backfill from the application",
    when="no WHERE and the table holds rows; or the WHERE may select at least large-table-rows rows (estimated "
    "from the table, a unique key pinned to constants, or a subquery's LIMIT)",
    nodes=["UpdateStmt", "DeleteStmt"],
)
def unbatched_write(ctx: Context) -> Iterator[Hit]:
    """``UPDATE``/``DELETE`` without WHERE, or that may touch many rows: row locks on all of them until commit.

    Safe form: batches keyed by primary key, each committed (a no-transaction file)."""
    tree = ctx.tree
    verb = "UPDATE" if type(tree).__name__ == "UpdateStmt" else "DELETE"
    ref = RelName.of(tree.relation)
    if not ctx.judgeable(ref):
        return
    table = ctx.table(ref)
    if tree.whereClause is None:
        yield Hit(f"{verb} of {ctx.show(ref)} without WHERE touches every row", ref)
        return
    bound = _rows_bound(tree.whereClause, table)
    if bound is None:
        yield Hit(f"{verb} of {ctx.show(ref)} may touch most of its rows", ref, needs_live=True)
        return
    yield Hit(
        f"{verb} of {ctx.show(ref)} may touch up to ~{bound:,.0f} rows (the WHERE is not estimated: pgsluice does "
        "not run the planner)",
        ref,
        rows=bound,
        needs_live=True,
    )


# --- the engine ------------------------------------------------------------------------------------------------------


def _applicable(node: str, cache: dict[str, list[Rule]]) -> list[Rule]:
    """The rules that look at ``node`` statements, in registry order."""
    found = cache.get(node)
    if found is None:
        found = cache[node] = [r for r in RULES if r.nodes is None or node in r.nodes]
    return found


def _transactions(migration: Migration) -> list[tuple[tuple[Command, ...], bool]]:
    """The migration's statements grouped by transaction, and whether each group shares one."""
    from pgsluice.sql import Command

    analysis = migration.analysis
    if not migration.no_transaction:
        return [(analysis.commands, True)]
    groups = []
    for block in analysis.blocks:
        commands = tuple(s for s in block.steps if isinstance(s, Command))
        if commands:
            groups.append((commands, block.explicit))
    return groups


def _run_indexes(migrations: Sequence[Migration]) -> list[tuple[RelName, tuple[str | None, ...]]]:
    """Every index (and UNIQUE / PRIMARY KEY constraint) the run creates: its table and key columns."""
    found: list[tuple[RelName, tuple[str | None, ...]]] = []
    for migration in migrations:
        for command in migration.analysis.commands:
            tree = command.tree
            kind = type(tree).__name__
            if kind == "IndexStmt" and tree.whereClause is None:
                columns = tuple(p.name if p.name else None for p in tree.indexParams or ())
                found.append((RelName.of(tree.relation), columns))
            elif kind == "AlterTableStmt":
                for constraint, column in _added_constraints(tree, "CONSTR_UNIQUE", "CONSTR_PRIMARY"):
                    keys = tuple(str(k.sval) for k in constraint.keys or ()) or (column,)
                    found.append((RelName.of(tree.relation), keys))
    return found


def _volatility_option(tree: Any) -> str:
    for option in tree.options or ():
        if getattr(option, "defname", "") == "volatility":
            return str(option.arg.sval)[0]
    return "v"


def _track_alter(ctx: Context, state: RunState) -> None:
    ref = RelName.of(ctx.tree.relation)
    for constraint, _ in _added_constraints(ctx.tree, "CONSTR_CHECK", "CONSTR_FOREIGN"):
        lock = "ACCESS EXCLUSIVE" if constraint.contype.name == "CONSTR_CHECK" else "SHARE ROW EXCLUSIVE"
        columns = not_null_columns(constraint.raw_expr) if constraint.contype.name == "CONSTR_CHECK" else ()
        if constraint.skip_validation and constraint.conname:
            state.tx_not_valid[(ref, constraint.conname)] = (ctx.line, lock)
            state.pending_checks[(ref, constraint.conname)] = columns
        elif not constraint.skip_validation:
            state.validated_not_null += [(ref, c) for c in columns]
    table = ctx.table(ref)
    for cmd in _alter_cmds(ctx.tree, "AT_ValidateConstraint"):
        columns = next((cols for (t, n), cols in state.pending_checks.items() if n == cmd.name and ref.matches(t)), ())
        existing = table.constraint(cmd.name) if table is not None else None
        if existing is not None and existing.kind == "c":
            columns = (*columns, *_check_definition_not_null(existing.definition))
        state.validated_not_null += [(ref, c) for c in columns]


def _track_create(ctx: Context, state: RunState) -> None:
    tree = ctx.tree
    relation = tree.relation if type(tree).__name__ == "CreateStmt" else tree.into.rel
    ref = RelName.of(relation)
    if not (tree.if_not_exists and ctx.table(ref) is not None):
        state.created_tables.append(ref)


def _track_rename(ctx: Context, state: RunState) -> None:
    tree = ctx.tree
    if tree.renameType.name != "OBJECT_TABLE":
        return
    ref = RelName.of(tree.relation)
    new = RelName(ref.schema, str(tree.newname))
    if ctx.is_new(ref):
        state.created_tables.append(new)
        return
    table = ctx.table(ref)
    if table is not None:
        state.renamed[new] = table


def _track(ctx: Context, state: RunState) -> None:
    """What the statement changes for the statements after it."""
    tree = ctx.tree
    kind = type(tree).__name__
    if kind in ("CreateStmt", "CreateTableAsStmt"):
        _track_create(ctx, state)
    elif kind == "IndexStmt" and tree.idxname:
        state.created_indexes.append(RelName(tree.relation.schemaname or None, str(tree.idxname)))
    elif kind == "CreateFunctionStmt":
        state.created_functions[RelName.of_parts(tree.funcname)] = _volatility_option(tree)
    elif kind == "RenameStmt":
        _track_rename(ctx, state)
    elif kind == "DropStmt" and tree.removeType.name == "OBJECT_INDEX":
        state.dropped_indexes += [RelName.of_parts(o if isinstance(o, tuple | list) else (o,)) for o in tree.objects]
    elif kind == "AlterTableStmt" and tree.objtype.name == "OBJECT_TABLE":
        _track_alter(ctx, state)
    elif kind == "AlterEnumStmt" and tree.newVal and ctx.in_transaction:
        state.tx_enum_values[str(tree.newVal)] = (".".join(str(n.sval) for n in tree.typeName), ctx.line)


def _severity(hit: Hit, ctx: Context, policy: Policy) -> tuple[Severity, bool, TableFacts | None] | None:
    """The hit's severity, whether it needed live facts, and its table; None when it is no finding at all
    (a table created in the run, absent or empty; a WHERE that selects few rows)."""
    if hit.table is None:
        return (hit.severity or Severity.LARGE), hit.needs_live, None
    if hit.via_index:
        if any(hit.table.matches(i) for i in ctx.state.created_indexes):
            return None
        table = ctx.facts.index_table(hit.table)
        if table is not None and ctx.is_new(RelName(table.schema, table.name)):
            return None
    else:
        if ctx.is_new(hit.table):
            return None
        table = ctx.table(hit.table)
    if hit.severity is not None:
        return hit.severity, hit.needs_live, table
    if hit.rows is not None:
        by_rows = policy.size_class(hit.rows, None)
        return None if by_rows == Severity.SMALL else (by_rows, True, table)
    if not ctx.facts.live:
        return Severity.LARGE, True, None
    size = policy.table_class(table) if table is not None else None
    return (size, True, table) if size is not None else None


def _finding(registered: Rule, hit: Hit, ctx: Context, policy: Policy) -> Finding | None:
    judged = _severity(hit, ctx, policy)
    if judged is None:
        return None
    severity, needs_live, table = judged
    migration = ctx.migration
    source = ctx.command.piece.origin.source
    where = migration.filename if source == migration.filename else f"{migration.filename} (in {source})"
    size = f" ({table.describe()})" if table is not None else ""
    allowed = migration.directives.allowed(registered.id)
    return Finding(
        rule=registered.id,
        severity=severity,
        action=policy.action(registered.kind, severity, allowed),
        file=migration.filename,
        line=ctx.line,
        version=migration.version,
        table=table.qualified if table is not None else (str(hit.table) if hit.table is not None else None),
        lock=hit.lock or registered.lock,
        message=f"{where} line {ctx.line}: {hit.what}{size}: {registered.why}",
        why=registered.why,
        safe_form=hit.safe_form or registered.safe_form,
        needs_live_facts=needs_live,
        allowed=allowed,
    )


def check_migrations(
    migrations: Sequence[Migration], facts: Facts, policy: Policy | None = None, *, isolated: bool = False
) -> SafetyReport:
    """Judge every statement of ``migrations`` (in the order they will run) against ``facts``; pure.

    Live facts come from ``facts.fetch_facts``; offline (``lint``), from ``facts.assumed_facts``. With
    ``isolated`` (``lint`` of a whole folder), each migration is judged as if it were the only pending one:
    tables created by earlier files are taken to exist."""
    policy = policy or Policy()
    cache: dict[str, list[Rule]] = {}
    run_indexes = _run_indexes(migrations)
    state = RunState(run_indexes=run_indexes)
    findings: list[Finding] = []
    for migration in migrations:
        if isolated:
            state = RunState(run_indexes=run_indexes)
        for commands, shared in _transactions(migration):
            state.begin_transaction()
            for command in commands:
                piece = command.piece
                line = piece.origin.line + piece.text.count("\n", 0, command.offset)
                ctx = Context(command, command.tree, migration, line, facts, state, shared)
                for registered in _applicable(command.node if command.tree is not None else "", cache):
                    for hit in registered.check(ctx):
                        found = _finding(registered, hit, ctx, policy)
                        if found is not None:
                            findings.append(found)
                if command.tree is not None:
                    _track(ctx, state)
    return SafetyReport(tuple(findings), facts.version_text, facts.live)


def readme_table() -> str:
    """The README's table of rules: id, what, lock, when it matters, safe form."""
    lines = ["| id | what | lock | when it matters | safe form |", "| --- | --- | --- | --- | --- |"]
    for registered in RULES:
        kind = {Kind.COMPAT: " (warns only)", Kind.ERROR: " (error: blocks)"}.get(registered.kind, "")
        cells = (
            f"`{registered.id}`",
            registered.title + kind,
            registered.lock,
            registered.when,
            registered.safe_form,
        )
        escaped = (c.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;") for c in cells)
        lines.append("| " + " | ".join(escaped) + " |")
    return "\n".join(lines)
