"""What the live database says about the objects the pending migrations touch, fetched in one round trip.

``touched_tables`` is pure: it walks the pending migrations' parse trees and names every
table, index and function they reference (as written: ``users`` or ``app.users``).
``fetch_facts`` resolves those names the way the migrations will (``to_regclass`` under
the session's ``search_path``) and reads, in ONE query returning one JSON document, the
server version, the session's ``TimeZone``, and for each table its estimated rows and
size, columns (type, typmod), constraints (validated or not) and indexes (valid or not,
columns); and the volatility of the functions used in column defaults. A run with
nothing pending never calls it.

``assumed_facts`` is the offline stand-in for ``lint``: an assumed server version and no
catalog at all, so the rules say which of their findings need the live database.

Row estimates are honest about statistics: ``reltuples`` is scaled to the table's current
size as the planner does (rows per page at the last ANALYZE times pages now); a table never
analysed (``reltuples = -1`` on PostgreSQL 14+, or no pages at the last ANALYZE while it
has pages now) has unknown rows, and its size in bytes decides alone. A partitioned
table counts its leaf partitions.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pgsluice.options import OLDEST_SUPPORTED_POSTGRES as OLDEST_SUPPORTED

if TYPE_CHECKING:
    import psycopg

    from pgsluice.migrations import Migration

_SERIAL_TYPES = frozenset({"serial", "serial4", "bigserial", "serial8", "smallserial", "serial2"})


@dataclass(frozen=True)
class RelName:
    """A name as a migration wrote it: ``schema`` is None when unqualified (the search path decides)."""

    schema: str | None
    name: str

    def __lt__(self, other: RelName) -> bool:
        """Sorted unqualified first, then by schema and name (None and text do not compare)."""
        return (self.schema is not None, self.schema or "", self.name) < (
            other.schema is not None,
            other.schema or "",
            other.name,
        )

    def __str__(self) -> str:
        return f"{self.schema}.{self.name}" if self.schema else self.name

    def matches(self, other: RelName) -> bool:
        """The same object, as far as the names tell: an unqualified name matches any schema."""
        return self.name == other.name and (self.schema is None or other.schema is None or self.schema == other.schema)

    @classmethod
    def of(cls, rangevar: Any) -> RelName:
        """From pglast's ``RangeVar``."""
        return cls(getattr(rangevar, "schemaname", None) or None, str(rangevar.relname))

    @classmethod
    def of_parts(cls, parts: Sequence[Any]) -> RelName:
        """From a list of pglast ``String`` nodes (``DROP INDEX s.i``, a function's name)."""
        names = [str(getattr(p, "sval", p)) for p in parts]
        return cls(names[-2] if len(names) > 1 else None, names[-1])


@dataclass(frozen=True)
class Column:
    """A column as the catalog holds it now."""

    name: str
    type_name: str
    """``pg_type.typname``: ``varchar``, ``numeric``, ``timestamptz``, ``int4`` …"""
    typmod: int
    """``atttypmod`` (-1: none): varchar(n) is n + 4, numeric(p, s) is (p << 16 | s) + 4, timestamp(p) is p."""
    not_null: bool


@dataclass(frozen=True)
class Constraint:
    """A table constraint (``pg_constraint``)."""

    name: str
    kind: str
    """``contype``: c (check), f (foreign key), p (primary key), u (unique), x (exclusion)."""
    validated: bool
    columns: tuple[str, ...]
    definition: str
    """``pg_get_constraintdef``: ``CHECK ((email IS NOT NULL))`` …"""


@dataclass(frozen=True)
class Index:
    """An index of the table (``pg_index``)."""

    name: str
    valid: bool
    unique: bool
    primary: bool
    columns: tuple[str | None, ...]
    """Key columns in order; None for an expression."""
    partial: bool


@dataclass(frozen=True)
class TableFacts:
    """One table as it is now."""

    schema: str
    name: str
    kind: str
    """``relkind``: r (table), p (partitioned table), m (materialized view), f (foreign table) …"""
    rows: float | None
    """Estimated rows now; None when the table was never analysed (then ``bytes`` decides)."""
    reltuples: float
    relpages: int
    bytes: int
    """``pg_table_size``: heap and TOAST."""
    heap_bytes: int
    columns: Mapping[str, Column] = field(default_factory=dict)
    constraints: tuple[Constraint, ...] = ()
    indexes: tuple[Index, ...] = ()

    @property
    def qualified(self) -> str:
        """``schema.name``."""
        return f"{self.schema}.{self.name}"

    @property
    def empty(self) -> bool:
        """No rows: no pages at all, or none estimated."""
        return self.heap_bytes == 0 or self.rows == 0

    def describe(self) -> str:
        """``~1.2M rows, 310.0 MiB``: what the messages say about its size."""
        rows = "rows unknown: never analysed" if self.rows is None else f"~{_count(self.rows)} rows"
        return f"{rows}, {_bytes(self.bytes)}"

    def constraint(self, name: str) -> Constraint | None:
        """The constraint called ``name``, or None."""
        return next((c for c in self.constraints if c.name == name), None)


@dataclass(frozen=True)
class Facts:
    """What the rules may know about the database; ``live`` is False for ``lint``'s assumed facts."""

    server_version_num: int
    live: bool
    version_exact: bool = True
    """False when only the major version is assumed (``--pg-version 14``): minor-version rules stay silent."""
    timezone: str | None = None
    tables: Mapping[RelName, TableFacts] = field(default_factory=dict)
    index_tables: Mapping[RelName, TableFacts] = field(default_factory=dict)
    """The table of each index named by DROP INDEX / REINDEX INDEX."""
    functions: Mapping[RelName, str] = field(default_factory=dict)
    """``provolatile`` (i, s, v) of each function used in a column default; the most volatile overload."""

    def table(self, ref: RelName) -> TableFacts | None:
        """The table as written in a migration; None when it does not exist (or offline)."""
        return self.tables.get(ref)

    def index_table(self, ref: RelName) -> TableFacts | None:
        """The table of the index as written; None when the index does not exist (or offline)."""
        return self.index_tables.get(ref)

    @property
    def version_text(self) -> str:
        """``15.4``, or ``14`` when only the major version is known."""
        number = self.server_version_num
        if number < 100000:
            text = f"{number // 10000}.{number // 100 % 100}"
            return f"{text}.{number % 100}" if self.version_exact else text
        major, minor = divmod(number, 10000)
        return f"{major}.{minor}" if self.version_exact else str(major)


@dataclass(frozen=True)
class Touched:
    """Every table, index and function the pending migrations reference, as written."""

    tables: frozenset[RelName] = frozenset()
    indexes: frozenset[RelName] = frozenset()
    functions: frozenset[RelName] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.tables or self.indexes or self.functions)


def _count(value: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= size:
            return f"{value / size:.1f}{unit}"
    return f"{value:.0f}"


def _bytes(value: int) -> str:
    for unit, size in (("GiB", 1024**3), ("MiB", 1024**2), ("kiB", 1024)):
        if value >= size:
            return f"{value / size:.1f} {unit}"
    return f"{value} B"


def assumed_facts(pg_version: str | int = OLDEST_SUPPORTED) -> Facts:
    """Offline facts for ``lint``: ``14`` (a major: minor-version rules stay silent), ``14.2`` or ``140002``.

    Raises ValueError for a version it cannot read."""
    text = str(pg_version).strip()
    if text.isdigit() and int(text) >= 10000:
        return Facts(int(text), live=False)
    match = re.fullmatch(r"(\d+)(?:\.(\d+))?(?:\.(\d+))?", text)
    if match is None:
        raise ValueError(f"not a PostgreSQL version: {pg_version!r} (expected e.g. 14, 15.4 or 150004)")
    major, minor, patch = (int(g) if g is not None else None for g in match.groups())
    assert major is not None  # noqa: S101 - the pattern requires it
    if major >= 10:
        return Facts(major * 10000 + (minor or 0), live=False, version_exact=minor is not None)
    return Facts(major * 10000 + (minor or 0) * 100 + (patch or 0), live=False, version_exact=patch is not None)


# --- what the migrations reference (pure) -------------------------------------------------------------------


def walk(node: Any) -> Iterator[Any]:
    """Every pglast node under ``node`` (itself included), depth first."""
    stack = [node]
    while stack:
        current = stack.pop()
        if isinstance(current, tuple | list):
            stack.extend(reversed(current))
            continue
        if not hasattr(current, "__slots__") or isinstance(current, str | int | float | bool):
            continue
        yield current
        for slot in type(current).__slots__:
            value = getattr(current, slot, None)
            if value is not None and not isinstance(value, str | int | float | bool):
                stack.append(value)


def default_functions(column_def: Any) -> list[RelName]:
    """The functions a column definition's DEFAULT calls (``now``, ``public.gen_random_uuid`` …)."""
    found: list[RelName] = []
    for constraint in getattr(column_def, "constraints", None) or ():
        if constraint.contype.name == "CONSTR_DEFAULT" and constraint.raw_expr is not None:
            found += [RelName.of_parts(n.funcname) for n in walk(constraint.raw_expr) if type(n).__name__ == "FuncCall"]
    return found


def is_serial(column_def: Any) -> bool:
    """``serial``, ``bigserial``, ``smallserial`` (and their aliases)."""
    names: Sequence[Any] = getattr(getattr(column_def, "typeName", None), "names", None) or ()
    return len(names) == 1 and str(names[0].sval) in _SERIAL_TYPES


def _alter_table_refs(tree: Any) -> Iterator[tuple[str, RelName]]:
    yield "table", RelName.of(tree.relation)
    for cmd in tree.cmds or ():
        definition = cmd.def_
        kind = type(definition).__name__
        if kind == "Constraint" and definition.pktable is not None:
            yield "table", RelName.of(definition.pktable)
        if kind == "ColumnDef":
            for constraint in definition.constraints or ():
                if constraint.pktable is not None:
                    yield "table", RelName.of(constraint.pktable)
            for function in default_functions(definition):
                yield "function", function


def _drop_refs(tree: Any) -> Iterator[tuple[str, RelName]]:
    remove = tree.removeType.name
    kind = {"OBJECT_TABLE": "table", "OBJECT_INDEX": "index"}.get(remove)
    if kind is None:
        return
    for obj in tree.objects or ():
        yield kind, RelName.of_parts(obj if isinstance(obj, tuple | list) else (obj,))


def _reindex_refs(tree: Any) -> Iterator[tuple[str, RelName]]:
    if tree.relation is None:
        return
    kind = "index" if tree.kind.name == "REINDEX_OBJECT_INDEX" else "table"
    yield kind, RelName.of(tree.relation)


def references(tree: Any) -> Iterator[tuple[str, RelName]]:
    """``(kind, name)`` of what one statement touches: kind is ``table``, ``index`` or ``function``."""
    kind = type(tree).__name__
    if kind == "AlterTableStmt" and tree.objtype.name in ("OBJECT_TABLE", "OBJECT_MATVIEW", "OBJECT_FOREIGN_TABLE"):
        yield from _alter_table_refs(tree)
    elif kind == "DropStmt":
        yield from _drop_refs(tree)
    elif kind == "ReindexStmt":
        yield from _reindex_refs(tree)
    elif (kind in ("IndexStmt", "ClusterStmt", "UpdateStmt", "DeleteStmt", "CreateStmt") and tree.relation) or (
        kind == "RenameStmt" and tree.relation is not None and tree.renameType.name in ("OBJECT_TABLE", "OBJECT_COLUMN")
    ):
        yield "table", RelName.of(tree.relation)
    elif kind in ("TruncateStmt", "LockStmt"):
        for relation in tree.relations or ():
            yield "table", RelName.of(relation)
    elif kind == "VacuumStmt":
        for item in tree.rels or ():
            yield "table", RelName.of(item.relation)


def touched_tables(migrations: Iterable[Migration]) -> Touched:
    """Every table, index and function the migrations reference, as written; pure (parses, never connects)."""
    found: dict[str, set[RelName]] = {"table": set(), "index": set(), "function": set()}
    for migration in migrations:
        for command in migration.analysis.commands:
            if command.tree is not None:
                for kind, name in references(command.tree):
                    found[kind].add(name)
    return Touched(frozenset(found["table"]), frozenset(found["index"]), frozenset(found["function"]))


# --- the one catalog round trip -------------------------------------------------------------------------------

RELATIONS_CTE = """
wanted AS (
    SELECT w.ord, w.kind,
           to_regclass(CASE WHEN w.schema IS NULL THEN quote_ident(w.name)
                            ELSE quote_ident(w.schema) || '.' || quote_ident(w.name) END)::oid AS oid
    FROM unnest(%(kinds)s::text[], %(schemas)s::text[], %(names)s::text[]) WITH ORDINALITY AS w(kind, schema, name, ord)
),
resolved AS (
    SELECT w.ord, CASE WHEN w.kind = 'index' THEN i.indrelid ELSE w.oid END AS oid
    FROM wanted w LEFT JOIN pg_index i ON w.kind = 'index' AND i.indexrelid = w.oid
    WHERE w.oid IS NOT NULL AND (w.kind <> 'index' OR i.indrelid IS NOT NULL)
)"""
"""Resolves ``(kind, schema, name)`` triples (kind ``table`` or ``index``) to table oids: ``resolved(ord, oid)``.
Shared with the preflight, so that both find the tables as the migrations will."""

_FACTS_SQL = f"""
WITH RECURSIVE {RELATIONS_CTE},
rels AS (SELECT DISTINCT oid FROM resolved),
tree AS (  -- every partition, from pg_inherits: pg_partition_tree would lock each one (ACCESS SHARE)
    SELECT r.oid AS root, r.oid AS oid FROM rels r
    UNION ALL
    SELECT t.root, i.inhrelid FROM tree t JOIN pg_inherits i ON i.inhparent = t.oid
    JOIN pg_class p ON p.oid = t.oid WHERE p.relkind = 'p'
),
leaves AS (
    SELECT t.root, t.oid AS leaf FROM tree t JOIN pg_class c ON c.oid = t.oid WHERE c.relkind <> 'p'
),
per_leaf AS (
    -- pg_relation_size and pg_table_size take ACCESS SHARE on the table: behind a session holding (or queued
    -- for) ACCESS EXCLUSIVE they would wait, and the gate with them. Such a table is sized from pg_class
    -- instead (its pages at the last VACUUM or ANALYZE), and the preflight names the session.
    SELECT l.root, c.reltuples, c.relpages,
           CASE WHEN x.locked THEN greatest(c.relpages, 1)::numeric * current_setting('block_size')::numeric
                ELSE pg_relation_size(c.oid) END AS heap,  -- locked: never "empty", at worst rows unknown
           CASE WHEN x.locked THEN (c.relpages + coalesce(t.relpages, 0))::numeric
                                   * current_setting('block_size')::numeric
                ELSE pg_table_size(c.oid) END AS total
    FROM leaves l JOIN pg_class c ON c.oid = l.leaf
    LEFT JOIN pg_class t ON t.oid = c.reltoastrelid
    CROSS JOIN LATERAL (
        SELECT EXISTS (
            SELECT 1 FROM pg_locks k
            WHERE k.locktype = 'relation' AND k.relation = c.oid AND k.mode = 'AccessExclusiveLock'
              AND k.database = (SELECT oid FROM pg_database WHERE datname = current_database())
        )
    ) x(locked)
),
sizes AS (
    SELECT root,
           sum(greatest(reltuples, 0)) AS reltuples, sum(relpages) AS relpages,
           sum(heap) AS heap, sum(total) AS total,
           CASE WHEN bool_or(NOT (heap = 0 OR (reltuples >= 0 AND relpages > 0))) THEN NULL
                ELSE sum(CASE WHEN heap = 0 THEN 0
                              ELSE reltuples / nullif(relpages, 0)
                                   * (heap / current_setting('block_size')::numeric) END)
           END AS rows
    FROM per_leaf GROUP BY root
),
docs AS (
    SELECT c.oid, jsonb_build_object(
        'schema', n.nspname, 'name', c.relname, 'kind', c.relkind,
        'rows', s.rows, 'reltuples', s.reltuples, 'relpages', s.relpages, 'bytes', s.total, 'heap_bytes', s.heap,
        'columns', (
            SELECT coalesce(jsonb_agg(jsonb_build_array(a.attname, t.typname, a.atttypmod, a.attnotnull)
                                      ORDER BY a.attnum), '[]')
            FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
            WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped),
        'constraints', (
            SELECT coalesce(jsonb_agg(jsonb_build_array(
                       k.conname, k.contype, k.convalidated,
                       (SELECT coalesce(jsonb_agg(a.attname ORDER BY u.n), '[]')
                        FROM unnest(k.conkey) WITH ORDINALITY u(attnum, n)
                        JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = u.attnum),
                       pg_get_constraintdef(k.oid))), '[]')
            FROM pg_constraint k WHERE k.conrelid = c.oid),
        'indexes', (
            SELECT coalesce(jsonb_agg(jsonb_build_array(
                       x.relname, i.indisvalid, i.indisunique, i.indisprimary,
                       (SELECT coalesce(jsonb_agg(a.attname ORDER BY u.n), '[]')
                        FROM unnest((i.indkey::int2[])[0:i.indnkeyatts - 1]) WITH ORDINALITY u(attnum, n)
                        LEFT JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = u.attnum),
                       i.indpred IS NOT NULL)), '[]')
            FROM pg_index i JOIN pg_class x ON x.oid = i.indexrelid WHERE i.indrelid = c.oid)
    ) AS doc
    FROM rels r JOIN pg_class c ON c.oid = r.oid JOIN pg_namespace n ON n.oid = c.relnamespace
    JOIN sizes s ON s.root = c.oid
),
functions AS (
    SELECT f.ord, (
        SELECT max(p.provolatile::text) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE p.proname = f.name
          AND CASE WHEN f.schema IS NULL THEN n.nspname = ANY (current_schemas(true)) ELSE n.nspname = f.schema END
    ) AS volatility
    FROM unnest(%(fschemas)s::text[], %(fnames)s::text[]) WITH ORDINALITY AS f(schema, name, ord)
)
SELECT jsonb_build_object(
    'version', current_setting('server_version_num')::int,
    'timezone', current_setting('TimeZone'),
    'relations', (SELECT coalesce(jsonb_agg(jsonb_build_array(r.ord, d.doc)), '[]')
                  FROM resolved r JOIN docs d ON d.oid = r.oid),
    'functions', (SELECT coalesce(jsonb_agg(jsonb_build_array(f.ord, f.volatility)), '[]')
                  FROM functions f WHERE f.volatility IS NOT NULL)
)
"""


def relation_parameters(touched: Touched) -> tuple[list[tuple[str, RelName]], dict[str, list[str | None]]]:
    """The ordered ``(kind, name)`` list of tables and indexes, and the query parameters that carry it."""
    wanted = [("table", name) for name in sorted(touched.tables)] + [
        ("index", name) for name in sorted(touched.indexes)
    ]
    params: dict[str, list[str | None]] = {
        "kinds": [kind for kind, _ in wanted],
        "schemas": [name.schema for _, name in wanted],
        "names": [name.name for _, name in wanted],
    }
    return wanted, params


def _table(doc: Mapping[str, Any]) -> TableFacts:
    rows = doc["rows"]
    return TableFacts(
        schema=doc["schema"],
        name=doc["name"],
        kind=doc["kind"],
        rows=float(rows) if rows is not None else None,
        reltuples=float(doc["reltuples"]),
        relpages=int(doc["relpages"]),
        bytes=int(doc["bytes"]),
        heap_bytes=int(doc["heap_bytes"]),
        columns={c[0]: Column(c[0], c[1], int(c[2]), bool(c[3])) for c in doc["columns"]},
        constraints=tuple(Constraint(k[0], k[1], bool(k[2]), tuple(k[3]), k[4]) for k in doc["constraints"]),
        indexes=tuple(Index(i[0], bool(i[1]), bool(i[2]), bool(i[3]), tuple(i[4]), bool(i[5])) for i in doc["indexes"]),
    )


def facts_from_document(document: Mapping[str, Any], touched: Touched) -> Facts:
    """Facts from the query's JSON document (``fetch_facts`` without the connection); pure."""
    wanted, _ = relation_parameters(touched)
    functions = sorted(touched.functions)
    tables: dict[RelName, TableFacts] = {}
    index_tables: dict[RelName, TableFacts] = {}
    parsed: dict[tuple[str, str], TableFacts] = {}
    for ordinal, doc in document["relations"]:
        kind, name = wanted[int(ordinal) - 1]
        table = parsed.setdefault((doc["schema"], doc["name"]), _table(doc))
        (tables if kind == "table" else index_tables)[name] = table
    return Facts(
        server_version_num=int(document["version"]),
        live=True,
        timezone=document["timezone"],
        tables=tables,
        index_tables=index_tables,
        functions={functions[int(ordinal) - 1]: str(vol) for ordinal, vol in document["functions"]},
    )


def fetch_facts(conn: psycopg.Connection[Any], touched: Touched) -> Facts:
    """One query: the server version, TimeZone, every touched table's size and catalog, the functions' volatility.

    Run it on the connection the migrations will use (its ``search_path`` and ``TimeZone`` are theirs), under
    the migration lock, only when something is pending."""
    _, params = relation_parameters(touched)
    functions = sorted(touched.functions)
    row = conn.execute(
        _FACTS_SQL,
        {**params, "fschemas": [f.schema for f in functions], "fnames": [f.name for f in functions]},
    ).fetchone()
    assert row is not None  # noqa: S101 - a SELECT without FROM returns one row
    return facts_from_document(row[0], touched)
