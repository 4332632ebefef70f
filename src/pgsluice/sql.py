"""What a migration file will do, judged from psql's split of it and PostgreSQL's own parser. No I/O.

``script.split_script`` cuts the file the way psql does; here each statement is parsed
with pglast (when it can be: a file written for an older server may use words that
PostgreSQL 17's grammar reserves), transaction control and psql meta-commands are
judged, and the file becomes what the applier runs:

- ``steps``: for a transactional file, everything in order without its own
  ``BEGIN``/``COMMIT`` (one transaction with the history row: stricter than psql);
- ``blocks``: for a ``no-transaction`` file, psql's own transactions: each ``BEGIN …
  COMMIT`` block, and each statement outside blocks on its own.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pgsluice.script import DataPiece, MetaPiece, Origin, Piece, Script, SqlPiece, split_script

CHECKSUM_PREFIX = "t1:"  # hash of the token stream, algorithm version 1
RAW_CHECKSUM_PREFIX = "r1:"  # fallback when the scanner cannot tokenize the file

ALLOW_UNPARSED = "unparsed-syntax"
"""Accepts, per file, SQL pgsluice's parser cannot parse: ``-- pgsluice: allow unparsed-syntax -- <reason>``."""

# psql variables that only change what psql prints: pgsluice always stops at the first error.
DISPLAY_SETTINGS = frozenset(
    {
        "ON_ERROR_STOP",
        "ON_ERROR_ROLLBACK",
        "ECHO",
        "ECHO_HIDDEN",
        "QUIET",
        "VERBOSITY",
        "SHOW_CONTEXT",
        "SHOW_ALL_RESULTS",
        "HIDE_TABLEAM",
        "HIDE_TOAST_COMPRESSION",
        "FETCH_COUNT",
        "HISTSIZE",
        "HISTFILE",
        "HISTCONTROL",
        "PROMPT1",
        "PROMPT2",
        "PROMPT3",
        "COMP_KEYWORD_CASE",
    }
)
# psql variables that change what a script means; pgsluice cannot honour them.
SEMANTIC_SETTINGS = {
    "AUTOCOMMIT": "it changes how psql groups statements into transactions",
    "SINGLELINE": "it makes a newline end a statement",
    "SINGLESTEP": "it asks before each statement",
}
IGNORED_META = {
    "restrict": "pg_dump's guard against a malicious server; it has no meaning for pgsluice",
    "unrestrict": "pg_dump's guard against a malicious server; it has no meaning for pgsluice",
    "timing": "it only prints timings",
    "pset": "it only formats psql's output",
    "encoding": "pgsluice reads files as UTF-8 and talks UTF-8 to the server",
}
ECHO_META = ("echo", "qecho", "warn")
VARIABLE_META = ("set", "unset")
REFUSED_META = {
    "c": "it connects to another database; pgsluice runs each migration on the database it was given",
    "connect": "it connects to another database; pgsluice runs each migration on the database it was given",
    "copy": "it reads a file on the client; put the rows inline as COPY … FROM STDIN, or COPY from a server file",
    "g": "it runs the query buffer with psql's own options",
    "gx": "it runs the query buffer with psql's own options",
    "gset": "it stores query results in psql variables",
    "gexec": "it runs SQL built from query results",
    "gdesc": "it only describes a query",
    "if": "psql's conditionals need psql",
    "elif": "psql's conditionals need psql",
    "else": "psql's conditionals need psql",
    "endif": "psql's conditionals need psql",
    "!": "it runs a shell command",
    "o": "it redirects psql's output",
    "out": "it redirects psql's output",
    "cd": "it changes psql's working folder",
    "setenv": "it changes psql's environment",
    "prompt": "it asks a person at a terminal",
    "q": "it stops psql in the middle of the file",
    "quit": "it stops psql in the middle of the file",
    "lo_import": "it reads a file on the client",
    "lo_export": "it writes a file on the client",
    "bind": "it runs the next query with psql's own parameters",
}

# Statements that cannot change the session's state (settings, role, temp objects,
# prepared statements, cursors, LISTEN, advisory locks) short of calling a function
# that does. DO blocks, SELECT, CALL and SET are deliberately absent.
_SESSION_NEUTRAL = frozenset(
    {
        "CreateStmt",
        "IndexStmt",
        "AlterTableStmt",
        "DropStmt",
        "CommentStmt",
        "GrantStmt",
        "GrantRoleStmt",
        "CreateSeqStmt",
        "AlterSeqStmt",
        "ViewStmt",
        "CreateFunctionStmt",
        "CreateEnumStmt",
        "AlterEnumStmt",
        "CompositeTypeStmt",
        "CreateDomainStmt",
        "AlterDomainStmt",
        "RenameStmt",
        "CreateSchemaStmt",
        "CreateExtensionStmt",
        "CreateTrigStmt",
        "CreatePolicyStmt",
        "AlterPolicyStmt",
        "InsertStmt",
        "UpdateStmt",
        "DeleteStmt",
        "TruncateStmt",
        "AlterOwnerStmt",
        "AlterObjectSchemaStmt",
        "DefineStmt",
        "CreateTableAsStmt",
        "AlterFunctionStmt",
        "CreateCastStmt",
        "RuleStmt",
        "AlterDefaultPrivilegesStmt",
        "CreateRoleStmt",
        "AlterRoleStmt",
        "AlterRoleSetStmt",
        "AlterDatabaseSetStmt",
        "ReindexStmt",
        "ClusterStmt",
        "VacuumStmt",
    }
)
_REFUSED_CONTROL = {
    "rollback": "ROLLBACK would silently drop the block's work (psql goes on after it)",
    "rollback and chain": "ROLLBACK AND CHAIN would silently drop the block's work",
    "commit and chain": "COMMIT AND CHAIN",
    "prepare transaction": "PREPARE TRANSACTION (two-phase commit)",
    "commit prepared": "COMMIT PREPARED (two-phase commit)",
    "rollback prepared": "ROLLBACK PREPARED (two-phase commit)",
}
_TREE_NOT_KEPT = frozenset({"InsertStmt", "SelectStmt"})
_NON_TRANSACTIONAL_WORDS = (
    (re.compile(r"^create\s+(unique\s+)?index\s+concurrently\b", re.I), "CREATE INDEX CONCURRENTLY"),
    (re.compile(r"^drop\s+index\s+concurrently\b", re.I), "DROP INDEX CONCURRENTLY"),
    (re.compile(r"^reindex\b.*\bconcurrently\b", re.I | re.S), "REINDEX CONCURRENTLY"),
    (re.compile(r"^vacuum\b", re.I), "VACUUM"),
    (re.compile(r"^(create|drop)\s+database\b", re.I), "CREATE/DROP DATABASE"),
    (re.compile(r"^alter\s+system\b", re.I), "ALTER SYSTEM"),
)


@dataclass(frozen=True, slots=True)
class SqlIssue:
    """Something about one place in the file."""

    message: str
    hint: str
    origin: Origin


@dataclass(frozen=True, slots=True)
class Command:
    """One statement sent to the server."""

    sql: str
    piece: SqlPiece
    node: str
    """pglast's node name (``CreateStmt``…), or ``unparsed``."""
    tree: Any = None
    """pglast's parse tree of the statement, when it parsed and may matter later (not kept for INSERT and
    SELECT, which a bulk-data file holds by the hundred thousand)."""
    copy_data: DataPiece | None = None
    """For ``COPY … FROM STDIN``: the inline rows to send through the COPY protocol."""
    offset: int = 0
    """Where ``sql`` starts inside the piece's text (a piece split by ``\\;`` holds several)."""


@dataclass(frozen=True, slots=True)
class Echo:
    """A ``\\echo`` (or ``\\qecho``, ``\\warn``): a log event when the applier reaches it."""

    message: str
    origin: Origin


Step = Command | Echo


@dataclass(frozen=True)
class Block:
    """What psql runs as one transaction: a ``BEGIN … COMMIT`` block, or one statement outside blocks."""

    steps: tuple[Step, ...]
    explicit: bool
    begin_sql: str | None = None


@dataclass(frozen=True)
class Analysis:
    """What one migration file will do, and what is wrong with it."""

    steps: tuple[Step, ...]
    blocks: tuple[Block, ...]
    begin_sql: str | None
    """The file's first statement when it is a BEGIN with options (ISOLATION LEVEL …): the transaction's BEGIN."""
    merged_blocks: tuple[tuple[int, int], ...]
    """First and last line of each of the file's own BEGIN … COMMIT blocks (merged into one transaction)."""
    errors: tuple[SqlIssue, ...]
    parse_errors: tuple[SqlIssue, ...]
    non_transactional: tuple[SqlIssue, ...]
    ignored: tuple[SqlIssue, ...]
    """Meta-commands pgsluice ignores (\\restrict, \\set ON_ERROR_STOP …), for lint."""
    checksum: str
    session_neutral: bool
    comment_only: bool
    sources: tuple[str, ...]

    @property
    def commands(self) -> tuple[Command, ...]:
        """Every statement, in order."""
        return tuple(s for s in self.steps if isinstance(s, Command))

    @property
    def has_copy(self) -> bool:
        """True when a statement sends inline COPY data (the applier cannot pipeline it)."""
        return any(c.copy_data is not None for c in self.commands)


def line_col(text: str, offset: int) -> tuple[int, int]:
    """1-based line and column of character ``offset`` in ``text``."""
    offset = max(0, min(offset, len(text)))
    line = text.count("\n", 0, offset) + 1
    col = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return line, col


def location_in_source(source: bytes, byte_offset: int) -> tuple[int, int]:
    """1-based line and (character) column of ``byte_offset`` in a file's bytes."""
    byte_offset = max(0, min(byte_offset, len(source)))
    line = source.count(b"\n", 0, byte_offset) + 1
    line_start = source.rfind(b"\n", 0, byte_offset) + 1
    column = len(source[line_start:byte_offset].decode("utf-8", errors="replace")) + 1
    return line, column


def _node_name(node: Any) -> str:
    return type(node).__name__


def _defnames(options: Any) -> set[str]:
    return {getattr(opt, "defname", "") for opt in (options or ())}


def non_transactional_reason(node: Any) -> str | None:
    """The name of what ``node`` does when PostgreSQL refuses to run it in a transaction block."""
    name = _node_name(node)
    if name == "IndexStmt" and node.concurrent:
        return "CREATE INDEX CONCURRENTLY"
    if name == "DropStmt" and node.concurrent:
        return "DROP INDEX CONCURRENTLY"
    if name == "ReindexStmt":
        if "concurrently" in _defnames(node.params):
            return "REINDEX CONCURRENTLY"
        if node.kind.name in ("REINDEX_OBJECT_SYSTEM", "REINDEX_OBJECT_DATABASE"):
            return "REINDEX SYSTEM/DATABASE"
    if name == "VacuumStmt" and node.is_vacuumcmd:
        return "VACUUM"
    if name == "ClusterStmt" and node.relation is None:
        return "CLUSTER without a table"
    if name == "AlterTableStmt":
        for cmd in node.cmds or ():
            if cmd.subtype.name == "AT_DetachPartition" and getattr(cmd.def_, "concurrent", False):
                return "DETACH PARTITION CONCURRENTLY"
    if name == "AlterDatabaseStmt" and "tablespace" in _defnames(node.options):
        return "ALTER DATABASE SET TABLESPACE"
    fixed = {
        "AlterSystemStmt": "ALTER SYSTEM",
        "CreatedbStmt": "CREATE DATABASE",
        "DropdbStmt": "DROP DATABASE",
        "CreateTableSpaceStmt": "CREATE TABLESPACE",
        "DropTableSpaceStmt": "DROP TABLESPACE",
        "CreateSubscriptionStmt": "CREATE SUBSCRIPTION",
        "DropSubscriptionStmt": "DROP SUBSCRIPTION",
    }
    return fixed.get(name)


def _session_neutral(node: Any) -> bool:
    name = _node_name(node)
    if name not in _SESSION_NEUTRAL:
        return False
    relation = getattr(node, "relation", None) or getattr(getattr(node, "into", None), "rel", None)
    if relation is None and name == "ViewStmt":
        relation = node.view
    return getattr(relation, "relpersistence", "p") != "t"


def transaction_control(piece: SqlPiece, tree: Any) -> str | None:
    """``begin``, ``commit``, ``savepoint`` (also RELEASE and ROLLBACK TO) or a refused kind; None otherwise.

    Judged from the first words when pglast could not parse the statement, so transaction
    control is found in every file."""
    if tree is not None:
        if _node_name(tree) != "TransactionStmt":
            return None
        kind = str(tree.kind.name).removeprefix("TRANS_STMT_").lower()
        if kind in ("commit", "rollback") and tree.chain:
            return f"{kind} and chain"
        return {
            "begin": "begin",
            "start": "begin",
            "commit": "commit",
            "savepoint": "savepoint",
            "release": "savepoint",
            "rollback_to": "savepoint",
            "prepare": "prepare transaction",
        }.get(kind, kind.replace("_", " "))
    words = [*piece.keywords, "", "", ""]
    first, second = words[0], words[1]
    if first in ("begin",) or (first == "start" and second == "transaction"):
        return "begin"
    if first in ("commit", "end", "rollback", "abort"):
        if second == "prepared":
            return f"{first} prepared"
        if second == "to" or (first == "rollback" and second in ("transaction", "work") and words[2] == "to"):
            return "savepoint"
        chained = "chain" in words[1:4] and "no" not in words[1:4]
        kind = "commit" if first in ("commit", "end") else "rollback"
        return f"{kind} and chain" if chained else kind
    if first in ("savepoint", "release"):
        return "savepoint"
    if first == "prepare" and second == "transaction":
        return "prepare transaction"
    return None


def _names(rangevar: Any) -> tuple[str | None, str]:
    return getattr(rangevar, "schemaname", None), getattr(rangevar, "relname", "")


def harm_to_table(tree: Any, schema: str, name: str) -> str | None:
    """What ``tree`` does to the table ``schema.name`` (drops, renames, truncates, alters, moves, deletes from,
    updates), or to its schema; None when it leaves it alone. An unqualified name counts as a match."""

    def same(rangevar: Any) -> bool:
        their_schema, relname = _names(rangevar)
        return relname == name and their_schema in (None, schema)

    kind = _node_name(tree)
    if kind == "DropStmt":
        remove = str(tree.removeType.name)
        for obj in tree.objects or ():
            parts = [getattr(p, "sval", None) for p in (obj if isinstance(obj, tuple | list) else (obj,))]
            if remove == "OBJECT_TABLE" and parts[-1] == name and (len(parts) == 1 or parts[-2] == schema):
                return "drops"
            if remove == "OBJECT_SCHEMA" and parts == [schema]:
                return "drops the schema of"
        return None
    if kind == "TruncateStmt":
        return "truncates" if any(same(r) for r in tree.relations or ()) else None
    if kind == "RenameStmt":
        if str(tree.renameType.name) == "OBJECT_SCHEMA" and tree.subname == schema:
            return "renames the schema of"
        return "renames" if tree.relation is not None and same(tree.relation) else None
    if kind in ("AlterTableStmt", "AlterObjectSchemaStmt"):
        relation = getattr(tree, "relation", None)
        return ("alters" if kind == "AlterTableStmt" else "moves") if relation is not None and same(relation) else None
    if kind in ("DeleteStmt", "UpdateStmt"):
        verb = "deletes from" if kind == "DeleteStmt" else "updates"
        return verb if same(tree.relation) else None
    return None


_UNKEPT_FIRST_WORDS = frozenset({("insert",), ("select",), ("values",), ("with",)})
"""First words of statements that may be in _TREE_NOT_KEPT (WITH may also lead an UPDATE: the parse decides)."""
_TOP_NODE = re.compile(r'"stmts":\[\{"stmt":\{"(\w+)":')


def _unkept_node(piece: SqlPiece) -> str | None:
    """The node of ``piece`` when it parses (PostgreSQL's grammar, through pglast's JSON output: no Python tree)
    as exactly one statement whose tree is never kept; else None, and the full parse decides (and reports an
    error where it is)."""
    from pglast import parser

    try:
        raw = parser.parse_sql_json(piece.text)
    except parser.ParseError:
        return None
    found = _TOP_NODE.search(raw, 0, 64)
    if found is None or found[1] not in _TREE_NOT_KEPT or raw.count('{"stmt":') != 1:
        return None
    return found[1]


def _non_transactional_words(sql: str) -> str | None:
    for pattern, what in _NON_TRANSACTIONAL_WORDS:
        if pattern.search(sql.lstrip()):
            return what
    return None


class _Builder:
    def __init__(self, script: Script, sources: Mapping[str, bytes], no_transaction: bool) -> None:
        self.script = script
        self.sources = sources
        self.block_sql: str | None = None
        self.no_transaction = no_transaction
        self.steps: list[Step] = []
        self.blocks: list[Block] = []
        self.block_steps: list[Step] | None = None
        self.block_begin: SqlPiece | None = None
        self.merged: list[tuple[int, int]] = []
        self.errors: list[SqlIssue] = []
        self.parse_errors: list[SqlIssue] = []
        self.non_transactional: list[SqlIssue] = []
        self.ignored: list[SqlIssue] = []
        self.neutral = True
        self.begin_sql: str | None = None
        self.first_statement = True

    def add(self, step: Step) -> None:
        self.steps.append(step)
        if self.block_steps is not None:
            self.block_steps.append(step)
        else:
            self.blocks.append(Block((step,), explicit=False))

    def build(self) -> None:
        pieces = self.script.pieces
        index = 0
        while index < len(pieces):
            piece = pieces[index]
            data = pieces[index + 1] if index + 1 < len(pieces) else None
            if isinstance(piece, SqlPiece):
                copy = data if piece.copy_from_stdin and isinstance(data, DataPiece) else None
                self.sql(piece, copy)
                index += 2 if copy is not None else 1
                continue
            if isinstance(piece, MetaPiece):
                self.meta(piece)
            index += 1
        if self.block_begin is not None:
            self.errors.append(
                SqlIssue(
                    "BEGIN is never committed: psql would roll the block back at the end of the file",
                    "end the block with COMMIT;",
                    self.block_begin.origin,
                )
            )

    def meta(self, meta: MetaPiece) -> None:
        name = meta.name
        if name in ECHO_META:
            self.add(Echo(" ".join(meta.args), meta.origin))
            return
        if name in VARIABLE_META:
            variable = meta.args[0] if meta.args else ""
            if variable in SEMANTIC_SETTINGS:
                self.errors.append(
                    SqlIssue(
                        f"\\{name} {variable}: pgsluice cannot honour it: {SEMANTIC_SETTINGS[variable]}",
                        "remove it",
                        meta.origin,
                    )
                )
            elif variable in DISPLAY_SETTINGS:
                self.ignored.append(
                    SqlIssue(f"\\{name} {variable} is ignored", "pgsluice always stops at the first error", meta.origin)
                )
            return
        if name in IGNORED_META:
            self.ignored.append(SqlIssue(f"\\{name} is ignored", IGNORED_META[name], meta.origin))
            return
        why = REFUSED_META.get(name, "it needs psql itself")
        self.errors.append(
            SqlIssue(f"psql meta-command \\{name} is not supported: {why}", "rewrite it as SQL", meta.origin)
        )

    def sql(self, piece: SqlPiece, copy: DataPiece | None) -> None:
        from pglast import parse_sql, parser

        unkept = _unkept_node(piece) if piece.keywords[:1] in _UNKEPT_FIRST_WORDS else None
        if unkept is not None:
            # Seed data and pg_dump --inserts: 400,000 INSERTs in a file. Parsed by PostgreSQL's grammar all the
            # same, but no Python tree is built for a statement whose tree is never kept (10x faster).
            self.command(piece, piece.text.strip(), None, 0, copy, parsed_as=unkept)
            self.first_statement = False
            return
        try:
            raw = parse_sql(piece.text)
        except parser.ParseError as exc:
            position = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], int) else 0
            offset = piece.source_offset(position)
            line, _ = location_in_source(self.sources[piece.origin.source], offset)
            self.parse_errors.append(
                SqlIssue(
                    f"pgsluice's parser cannot parse it ({exc.args[0] if exc.args else exc})",
                    "if the server accepts it (syntax newer or older than PostgreSQL 17's grammar), accept it in this "
                    f"file with '-- pgsluice: allow {ALLOW_UNPARSED} -- <reason>'",
                    Origin(piece.origin.source, offset, line),
                )
            )
            self.statement(piece, piece.text, None, 0, copy)
            return
        if not raw:
            return  # only comments: psql sends an empty query
        for item in raw:
            start = item.stmt_location or 0
            length = item.stmt_len or (len(piece.text) - start)
            self.statement(piece, piece.text[start : start + length].strip(), item.stmt, start, copy)

    def statement(self, piece: SqlPiece, sql: str, tree: Any, offset: int, copy: DataPiece | None) -> None:
        first = self.first_statement
        self.first_statement = False
        control = transaction_control(piece, tree)
        if control == "begin":
            self.begin(piece, sql, tree, first=first)
        elif control == "commit":
            self.commit(piece)
        elif control not in (None, "savepoint"):
            self.refused_control(piece, control)
        else:
            self.command(piece, sql, tree, offset, copy)

    def begin(self, piece: SqlPiece, sql: str, tree: Any, *, first: bool) -> None:
        if self.block_begin is not None:
            self.error(
                "BEGIN inside a block that is already open (psql would only warn and go on)",
                "remove the inner BEGIN, or COMMIT the first block before it",
                piece,
            )
            return
        options = (tree is not None and bool(tree.options)) or (tree is None and len(piece.keywords) > 1)
        if options and first:
            self.begin_sql = sql
        elif options and not self.no_transaction:
            self.error(
                "BEGIN with transaction options (isolation level, read only) after the file's first "
                "statement: the whole file runs as one transaction",
                "move the options to a BEGIN on the file's first statement, or use "
                "'-- pgsluice: no-transaction' to run each block as its own transaction",
                piece,
            )
        self.block_begin = piece
        self.block_steps = []
        self.block_sql = sql

    def commit(self, piece: SqlPiece) -> None:
        if self.block_begin is None:
            self.error(
                "COMMIT without a BEGIN before it (unbalanced)",
                "pgsluice runs each migration in its own transaction: remove this COMMIT, or add the "
                "BEGIN that opens its block",
                piece,
            )
            return
        self.merged.append((self.block_begin.origin.line, piece.origin.line))
        if self.block_steps:
            self.blocks.append(Block(tuple(self.block_steps), explicit=True, begin_sql=self.block_sql))
        self.block_begin = None
        self.block_steps = None

    def refused_control(self, piece: SqlPiece, control: str) -> None:
        if control.startswith("rollback") or control == "prepare transaction":
            self.block_begin, self.block_steps = None, None  # the block ends here (reported once)
        self.error(
            f"transaction control is not allowed here: {_REFUSED_CONTROL.get(control, control.upper())}",
            "pgsluice runs each migration in its own transaction; remove it, or split the file",
            piece,
        )

    def error(self, message: str, hint: str, piece: SqlPiece) -> None:
        self.errors.append(SqlIssue(message, hint, piece.origin))

    def command(
        self,
        piece: SqlPiece,
        sql: str,
        tree: Any,
        offset: int,
        copy: DataPiece | None,
        *,
        parsed_as: str | None = None,
    ) -> None:
        if parsed_as is not None:  # parsed, its node known, no tree built (see sql())
            reason, node = None, parsed_as  # an INSERT or SELECT: nothing of them refuses a transaction
            self.neutral = self.neutral and parsed_as in _SESSION_NEUTRAL
        elif tree is not None:
            reason = non_transactional_reason(tree)
            self.neutral = self.neutral and _session_neutral(tree)
            node = _node_name(tree)
        else:
            reason = _non_transactional_words(sql)
            self.neutral = False
            node = "unparsed"
        if reason:
            self.non_transactional.append(SqlIssue(reason, "", piece.origin))
            if self.block_begin is not None:
                self.error(
                    f"{reason} cannot run inside a transaction block (BEGIN at line {self.block_begin.origin.line})",
                    "move it out of the BEGIN … COMMIT block",
                    piece,
                )
        self.copy_checks(piece, tree if node == "CopyStmt" else None, copy)
        kept = None if node in _TREE_NOT_KEPT else tree
        self.add(Command(sql, piece, node, kept, copy, offset))

    def copy_checks(self, piece: SqlPiece, copy_tree: Any, copy: DataPiece | None) -> None:
        if piece.copy_from_stdin and copy is None:
            self.error("COPY … FROM STDIN without its data", "put the rows after it", piece)
        if copy_tree is None or copy is not None:
            return
        if not copy_tree.is_from:
            target = "STDOUT" if copy_tree.filename is None else "a file"
            self.error(
                f"COPY … TO {target} writes output nobody reads in a migration",
                "remove it; to export data, run it outside the migrations",
                piece,
            )
        elif copy_tree.filename is not None or copy_tree.is_program:
            self.error(
                "COPY … FROM a file or program reads the database server's own file system",
                "put the rows inline after COPY … FROM STDIN;, ending with a \\. line",
                piece,
            )


class _TokenHash:
    """The checksum's hash, fed token by token.

    Earlier releases joined the token values with \\x1f, collapsing runs of ';' and dropping
    leading and trailing ones, then added \\x1e and the extra; this streams the same bytes."""

    def __init__(self) -> None:
        self.hasher = hashlib.sha256()
        self.pending_semicolon = False
        self.started = False

    def _part(self, value: str) -> None:
        if self.started:
            self.hasher.update(b"\x1f")
        self.hasher.update(value.encode())
        self.started = True

    def add(self, value: str) -> None:
        if value == ";":
            self.pending_semicolon = self.started
            return
        if self.pending_semicolon:
            self._part(";")
            self.pending_semicolon = False
        self._part(value)

    def hexdigest(self, extra: str) -> str:
        self.hasher.update(b"\x1e" + extra.encode())
        return self.hasher.hexdigest()


def _statement_tokens(text: str) -> list[str]:
    """The statement's token values: comments out, keywords and unquoted names lowercased. ParseError when
    the scanner cannot tokenize it."""
    from pglast import parser

    values: list[str] = []
    for tok in parser.scan(text):
        if tok.name in ("SQL_COMMENT", "C_COMMENT"):
            continue
        value = text[tok.start : tok.end + 1]
        if tok.kind != "NO_KEYWORD" or (tok.name == "IDENT" and not value.startswith('"')):
            value = value.lower()
        values.append(value)
    return values


def _piece_tokens(piece: Piece, sources: Mapping[str, bytes], skip_begin_commit: bool) -> list[str]:
    """What one piece adds to the checksum (nothing for meta-commands that change nothing)."""
    if isinstance(piece, MetaPiece):
        settles_display = piece.name in VARIABLE_META and bool(piece.args) and piece.args[0] in DISPLAY_SETTINGS
        if piece.name in IGNORED_META or piece.name in ECHO_META or settles_display:
            return []
        return ["\\" + piece.name + " " + " ".join(piece.args), ";"]
    if isinstance(piece, DataPiece):
        data = memoryview(sources[piece.source])[piece.start : piece.end]
        return ["copy-data:" + hashlib.sha256(data).hexdigest(), ";"]
    if skip_begin_commit and transaction_control(piece, None) in ("begin", "commit"):
        return [";"]
    return _statement_tokens(sources[piece.origin.source][piece.origin.offset : piece.end].decode("utf-8", "replace"))


def _checksum(script: Script, sources: Mapping[str, bytes], skip_begin_commit: bool, extra: str) -> str:
    """Hash of the token stream of what runs: comments, whitespace and keyword case do not count; nor do
    the file's own BEGIN/COMMIT in a transactional file, nor meta-commands that change nothing. Inline COPY
    data counts by its bytes. For a plain SQL file this equals the whole-file hash of earlier releases."""
    from pglast import parser

    digest = _TokenHash()
    for piece in script.pieces:
        try:
            tokens = _piece_tokens(piece, sources, skip_begin_commit)
        except parser.ParseError:
            source = sources[script.sources[0]].decode("utf-8", errors="replace")
            normalized = " ".join(source.split())
            return RAW_CHECKSUM_PREFIX + hashlib.sha256((normalized + extra).encode()).hexdigest()
        for value in tokens:
            digest.add(value)
    return CHECKSUM_PREFIX + digest.hexdigest(extra)


def analyze(
    source: str,
    sources: Mapping[str, bytes],
    *,
    variables: Mapping[str, str] | None = None,
    no_transaction: bool = False,
    max_statements: int | None = None,
) -> Analysis:
    """Split and judge ``sources[source]``; pure, never raises for bad SQL (problems are reported)."""
    script = split_script(source, sources, variables, max_statements)
    builder = _Builder(script, sources, no_transaction)
    builder.build()
    for problem in script.problems:
        builder.errors.append(SqlIssue(problem.message, problem.hint, problem.origin))
    has_sql = any(isinstance(s, Command) for s in builder.steps)
    checksum = _checksum(script, sources, not no_transaction, "no-transaction" if no_transaction else "")
    return Analysis(
        steps=tuple(builder.steps),
        blocks=tuple(builder.blocks),
        begin_sql=builder.begin_sql,
        merged_blocks=tuple(builder.merged),
        errors=tuple(builder.errors),
        parse_errors=tuple(builder.parse_errors),
        non_transactional=tuple(builder.non_transactional),
        ignored=tuple(builder.ignored),
        checksum=checksum,
        session_neutral=builder.neutral,
        comment_only=not has_sql and not builder.errors,
        sources=script.sources,
    )


def analyze_text(text: str, *, variables: Mapping[str, str] | None = None, no_transaction: bool = False) -> Analysis:
    """``analyze`` of one SQL text that includes nothing (for tests and tools)."""
    return analyze("text.sql", {"text.sql": text.encode()}, variables=variables, no_transaction=no_transaction)


def token_checksum(text: str, *, no_transaction: bool = False) -> str:
    """The checksum of one SQL text."""
    return analyze_text(text, no_transaction=no_transaction).checksum
