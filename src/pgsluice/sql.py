"""Statement splitting and inspection with pglast, PostgreSQL's own parser; no database.

pglast reports locations as character offsets into the text, so every offset here
indexes the ``str`` of the file directly.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

CHECKSUM_PREFIX = "t1:"  # hash of the token stream, algorithm version 1
RAW_CHECKSUM_PREFIX = "r1:"  # fallback when the scanner cannot tokenize the file

_META_COMMAND = re.compile(r"^[ \t]*\\([a-zA-Z!?]+)", re.MULTILINE)


@dataclass(frozen=True)
class Statement:
    """One statement: its exact source text and where it starts in the file."""

    text: str
    start: int
    node: str


@dataclass(frozen=True)
class SqlIssue:
    """Something about one statement, located by character offset in the file."""

    message: str
    offset: int


@dataclass(frozen=True)
class Analysis:
    """What the parser found in one migration file."""

    statements: tuple[Statement, ...]
    """The statements to run, without a whole-file ``BEGIN; … COMMIT;`` wrapper."""
    wrapped: bool
    begin_text: str | None
    parse_error: SqlIssue | None
    forbidden_transaction_control: tuple[SqlIssue, ...]
    non_transactional: tuple[SqlIssue, ...]
    unsupported: tuple[SqlIssue, ...]
    checksum: str
    session_neutral: bool = False
    """Only statements that leave no session state behind (no SET, no temp objects…):
    the session reset after this migration can be skipped."""


def line_col(text: str, offset: int) -> tuple[int, int]:
    """1-based line and column of character ``offset`` in ``text``."""
    offset = max(0, min(offset, len(text)))
    line = text.count("\n", 0, offset) + 1
    col = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return line, col


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


def _session_neutral(node: Any) -> bool:
    name = _node_name(node)
    if name not in _SESSION_NEUTRAL:
        return False
    relation = getattr(node, "relation", None) or getattr(getattr(node, "into", None), "rel", None)
    if relation is None and name == "ViewStmt":
        relation = node.view
    return getattr(relation, "relpersistence", "p") != "t"


def _transaction_kind(node: Any) -> str | None:
    if _node_name(node) != "TransactionStmt":
        return None
    return str(node.kind.name).removeprefix("TRANS_STMT_")


def token_checksum(text: str, skip: tuple[tuple[int, int], ...] = (), extra: str = "") -> str:
    """Hash of the SQL token stream: comments, whitespace and keyword case do not count.

    ``skip`` lists character ranges left out (a whole-file BEGIN/COMMIT wrapper), so
    adding or removing the wrapper does not change the checksum either.
    """
    from pglast import parser

    try:
        tokens = parser.scan(text)
    except parser.ParseError:
        normalized = " ".join(text.split())
        return RAW_CHECKSUM_PREFIX + hashlib.sha256((normalized + extra).encode()).hexdigest()
    parts: list[str] = []
    for tok in tokens:
        if tok.name in ("SQL_COMMENT", "C_COMMENT"):
            continue
        if any(lo <= tok.start < hi for lo, hi in skip):
            continue
        value = text[tok.start : tok.end + 1]
        if tok.kind != "NO_KEYWORD" or (tok.name == "IDENT" and not value.startswith('"')):
            value = value.lower()
        if value == ";" and (not parts or parts[-1] == ";"):
            continue
        parts.append(value)
    while parts and parts[-1] == ";":
        parts.pop()
    payload = "\x1f".join(parts) + "\x1e" + extra
    return CHECKSUM_PREFIX + hashlib.sha256(payload.encode()).hexdigest()


def _parse_error_issue(exc: Exception, text: str) -> SqlIssue:
    message, offset = ((*exc.args, 0))[:2] if exc.args else ("cannot parse", 0)
    return SqlIssue(str(message), int(offset) if isinstance(offset, int) else 0)


def analyze(text: str, *, no_transaction: bool = False) -> Analysis:
    """Split and inspect ``text``; pure, never raises for bad SQL (problems are reported)."""
    import pglast
    from pglast import parser

    extra = "no-transaction" if no_transaction else ""
    unsupported = tuple(
        SqlIssue(f"psql meta-command \\{m.group(1)} is not SQL; pgsluice sends SQL to the server", m.start())
        for m in _META_COMMAND.finditer(text)
    )
    try:
        raw = pglast.parse_sql(text)
    except parser.ParseError as exc:
        return Analysis(
            statements=(Statement(text, 0, "unparsed"),),
            wrapped=False,
            begin_text=None,
            parse_error=_parse_error_issue(exc, text),
            forbidden_transaction_control=(),
            non_transactional=(),
            unsupported=unsupported,
            checksum=token_checksum(text, extra=extra),
        )

    stmts: list[tuple[Statement, Any]] = []
    for item in raw:
        start = item.stmt_location or 0
        length = item.stmt_len or (len(text) - start)
        stmts.append((Statement(text[start : start + length], start, _node_name(item.stmt)), item.stmt))

    wrapped = False
    begin_text: str | None = None
    skip: tuple[tuple[int, int], ...] = ()
    if len(stmts) >= 2:
        first_kind = _transaction_kind(stmts[0][1])
        last_kind = _transaction_kind(stmts[-1][1])
        if first_kind in ("BEGIN", "START") and last_kind == "COMMIT" and not stmts[-1][1].chain:
            wrapped = True
            begin_text = stmts[0][0].text
            first, last = stmts[0][0], stmts[-1][0]
            skip = ((first.start, first.start + len(first.text)), (last.start, last.start + len(last.text)))
            stmts = stmts[1:-1]

    forbidden: list[SqlIssue] = []
    non_tx: list[SqlIssue] = []
    for stmt, node in stmts:
        kind = _transaction_kind(node)
        if kind is not None and kind not in ("SAVEPOINT", "RELEASE", "ROLLBACK_TO"):
            forbidden.append(SqlIssue(f"{stmt.text.strip().split()[0].upper()} ({kind.lower()})", stmt.start))
        if _node_name(node) == "CopyStmt" and node.is_from and node.filename is None and not node.is_program:
            unsupported = (*unsupported, SqlIssue("COPY … FROM STDIN needs psql's inline data", stmt.start))
        reason = non_transactional_reason(node)
        if reason:
            non_tx.append(SqlIssue(reason, stmt.start))

    return Analysis(
        statements=tuple(stmt for stmt, _ in stmts),
        wrapped=wrapped,
        begin_text=begin_text,
        parse_error=None,
        forbidden_transaction_control=tuple(forbidden),
        non_transactional=tuple(non_tx),
        unsupported=unsupported,
        checksum=token_checksum(text, skip, extra),
        session_neutral=all(_session_neutral(node) for _, node in stmts),
    )
