"""The only SQL that touches the history table.

Its shape is checked where it is read: a table of another shape, or one this role may not
use, is a clear error (exit 6 or 4) instead of a traceback. Versions are ``numeric``
(any number of digits); a table made by an earlier release has ``bigint``, which is
widened once, under the lock, when a version needs it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import psycopg
import structlog
from psycopg import sql

from pgsluice import __version__
from pgsluice.config import TableName
from pgsluice.errors import AuthenticationError, InconsistentError
from pgsluice.events import Event
from pgsluice.records import Execution, HistoryRow, RowStatus

log = structlog.get_logger("pgsluice.history")

BIGINT_MAX = 2**63 - 1
COLUMNS = (
    "version",
    "name",
    "checksum",
    "file_sha256",
    "status",
    "execution",
    "started_at",
    "applied_at",
    "duration_seconds",
    "applied_by",
    "hostname",
    "pgsluice_version",
)


def table_ident(table: TableName) -> sql.Composable:
    """The schema-qualified identifier, immune to a migration's ``SET search_path``."""
    return sql.Identifier(table.schema, table.name)


def _denied(table: TableName, exc: psycopg.Error, doing: str) -> AuthenticationError:
    return AuthenticationError(
        f"permission denied while {doing} the history table {table}: "
        f"{(exc.diag.message_primary or str(exc)).strip()} (SQLSTATE {exc.sqlstate})",
        hint=f"grant the migration role USAGE and CREATE on schema {table.schema} (or CREATE on the database to "
        f"create the schema), and its privileges on {table}; or choose another --history-table",
    )


def _other_shape(table: TableName, exc: psycopg.Error) -> InconsistentError:
    return InconsistentError(
        f"{table} exists but is not pgsluice's history table: "
        f"{(exc.diag.message_primary or str(exc)).strip()} (SQLSTATE {exc.sqlstate})",
        hint="pgsluice keeps its history in a table of its own: choose another name with --history-table, "
        "or rename that table",
    )


def ensure_table(conn: psycopg.Connection[Any], table: TableName) -> None:
    """Create the history table (and its schema) when missing; safe to run concurrently under the lock.

    Only what is missing is created: a role without CREATE on the database can use a schema that exists."""
    try:
        row = conn.execute(
            "SELECT to_regnamespace(%s) IS NOT NULL, to_regclass(%s) IS NOT NULL",
            (sql.Identifier(table.schema).as_string(conn), table_ident(table).as_string(conn)),
        ).fetchone()
        schema_exists, table_exists = bool(row and row[0]), bool(row and row[1])
        if table_exists:
            return
        statements: list[sql.Composed] = []
        if not schema_exists:
            statements.append(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(table.schema)))
        statements.append(
            sql.SQL(
                """
                CREATE TABLE IF NOT EXISTS {table} (
                    version numeric PRIMARY KEY CHECK (version >= 0 AND scale(version) = 0),
                    name text NOT NULL,
                    checksum text NOT NULL,
                    file_sha256 text,
                    status text NOT NULL CHECK (status IN ('applied', 'started')),
                    execution text NOT NULL,
                    started_at timestamptz NOT NULL DEFAULT clock_timestamp(),
                    applied_at timestamptz,
                    duration_seconds double precision,
                    applied_by text NOT NULL DEFAULT session_user,
                    hostname text,
                    pgsluice_version text
                )
                """
            ).format(table=table_ident(table))
        )
        for statement in statements:
            conn.execute(statement)
    except psycopg.errors.InsufficientPrivilege as exc:
        raise _denied(table, exc, "creating") from exc


def read_history(conn: psycopg.Connection[Any], table: TableName) -> list[HistoryRow] | None:
    """Every row in version order; None when the table does not exist yet (one round trip either way)."""
    query = sql.SQL("SELECT {} FROM {} ORDER BY version").format(
        sql.SQL(", ").join(sql.Identifier(c) for c in COLUMNS), table_ident(table)
    )
    try:
        rows = conn.execute(query).fetchall()
    except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName):
        return None
    except psycopg.errors.InsufficientPrivilege as exc:
        raise _denied(table, exc, "reading") from exc
    except (psycopg.errors.UndefinedColumn, psycopg.errors.DatatypeMismatch) as exc:
        raise _other_shape(table, exc) from exc
    try:
        return [
            HistoryRow(
                version=int(r[0]),
                name=r[1],
                checksum=r[2],
                file_sha256=r[3],
                status=RowStatus(r[4]),
                execution=r[5],
                started_at=r[6],
                applied_at=r[7],
                duration_seconds=r[8],
                applied_by=r[9],
                hostname=r[10],
                pgsluice_version=r[11],
            )
            for r in rows
        ]
    except (ValueError, TypeError) as exc:
        raise InconsistentError(
            f"{table} holds a row pgsluice cannot read ({exc})",
            hint="check the table: its status column must be 'applied' or 'started'",
        ) from exc


def widen_versions(conn: psycopg.Connection[Any], table: TableName, versions: Iterable[int]) -> None:
    """A version beyond bigint needs the ``numeric`` column of this release: widen an older table once.

    Runs under the lock; rewrites the (small) table in one transaction."""
    if max(versions, default=0) <= BIGINT_MAX:
        return
    row = conn.execute(
        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = to_regclass(%s)"
        " AND attname = 'version'",
        (table_ident(table).as_string(conn),),
    ).fetchone()
    if row is None or row[0] == "numeric":
        return
    try:
        with conn.transaction():
            conn.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN version TYPE numeric").format(table_ident(table)))
    except psycopg.errors.InsufficientPrivilege as exc:
        raise _denied(table, exc, "widening the version column of") from exc
    log.info(Event.HISTORY_UPGRADED, table=str(table), change=f"version: {row[0]} -> numeric")


def applied_row_query(
    table: TableName, *, version: int, name: str, checksum: str, file_sha256: str, execution: str, hostname: str
) -> sql.Composed:
    """INSERT of an ``applied`` row, meant for the migration's own transaction.

    ``now()`` is the transaction's start, so the duration is measured by the server.
    """
    return sql.SQL(
        "INSERT INTO {table} (version, name, checksum, file_sha256, status, execution, started_at, applied_at,"
        " duration_seconds, applied_by, hostname, pgsluice_version)"
        " VALUES ({version}, {name}, {checksum}, {sha}, 'applied', {execution}, now(), clock_timestamp(),"
        " extract(epoch FROM clock_timestamp() - now()), session_user, {hostname}, {pv})"
        " RETURNING duration_seconds"
    ).format(
        table=table_ident(table),
        version=sql.Literal(version),
        name=sql.Literal(name),
        checksum=sql.Literal(checksum),
        sha=sql.Literal(file_sha256),
        execution=sql.Literal(str(execution)),
        hostname=sql.Literal(hostname),
        pv=sql.Literal(__version__),
    )


def insert_started(
    conn: psycopg.Connection[Any],
    table: TableName,
    *,
    version: int,
    name: str,
    checksum: str,
    file_sha256: str,
    hostname: str,
) -> None:
    """Record that a non-transactional migration began; committed at once."""
    conn.execute(
        sql.SQL(
            "INSERT INTO {} (version, name, checksum, file_sha256, status, execution, hostname, pgsluice_version)"
            " VALUES (%s, %s, %s, %s, 'started', %s, %s, %s)"
        ).format(table_ident(table)),
        (version, name, checksum, file_sha256, str(Execution.NO_TRANSACTION), hostname, __version__),
    )


def mark_applied(
    conn: psycopg.Connection[Any], table: TableName, version: int, execution: Execution | None = None
) -> int:
    """Turn a ``started`` row into ``applied``; returns the rows changed."""
    cur = conn.execute(
        sql.SQL(
            "UPDATE {} SET status = 'applied', applied_at = clock_timestamp(),"
            " duration_seconds = extract(epoch FROM clock_timestamp() - started_at),"
            " execution = coalesce(%s, execution)"
            " WHERE version = %s AND status = 'started'"
        ).format(table_ident(table)),
        (str(execution) if execution else None, version),
    )
    return cur.rowcount


def delete_started(conn: psycopg.Connection[Any], table: TableName, version: int) -> int:
    """Forget a ``started`` row (its migration was rolled back by hand); returns the rows deleted."""
    cur = conn.execute(
        sql.SQL("DELETE FROM {} WHERE version = %s AND status = 'started'").format(table_ident(table)), (version,)
    )
    return cur.rowcount


def insert_baseline(
    conn: psycopg.Connection[Any], table: TableName, rows: list[tuple[int, str, str, str]], hostname: str
) -> None:
    """Record migrations applied by hand, as ``applied`` with execution ``baseline``, in one transaction."""
    try:
        with conn.transaction():
            for version, name, checksum, file_sha256 in rows:
                conn.execute(
                    sql.SQL(
                        "INSERT INTO {} (version, name, checksum, file_sha256, status, execution, applied_at,"
                        " duration_seconds, hostname, pgsluice_version)"
                        " VALUES (%s, %s, %s, %s, 'applied', %s, clock_timestamp(), 0, %s, %s)"
                    ).format(table_ident(table)),
                    (version, name, checksum, file_sha256, str(Execution.BASELINE), hostname, __version__),
                )
    except psycopg.errors.InsufficientPrivilege as exc:
        raise _denied(table, exc, "writing") from exc
