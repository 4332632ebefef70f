"""The only SQL that touches the history tables.

The history table holds one row per versioned migration; a second table, ``<name>_repeatable``
beside it, the last application of each repeatable one (kept apart so that an older pgsluice,
which knows nothing of repeatables, reads the history it knows). Shapes are checked where
they are read: a table of another shape, or one this role may not use, is a clear error
(exit 6 or 4) instead of a traceback. An older release's table is brought up to date once,
under the lock, and logged: ``down_sql``/``down_checksum`` added, and ``version`` widened
from ``bigint`` to ``numeric`` when a version needs it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
import structlog
from psycopg import sql

from pgsluice import __version__
from pgsluice.config import TableName
from pgsluice.errors import AuthenticationError, InconsistentError
from pgsluice.events import Event
from pgsluice.records import Execution, HistoryRow, RepeatableRow, RowStatus

log = structlog.get_logger("pgsluice.history")

BIGINT_MAX = 2**63 - 1
BASE_COLUMNS = (
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
"""The columns of every release's history table."""
ADDED_COLUMNS = {"down_sql": "text", "down_checksum": "text"}
"""Columns added since the first release, with their types."""


@dataclass(frozen=True)
class History:
    """What the history tables hold, and whether the history table needs this release's columns."""

    rows: list[HistoryRow]
    repeatables: list[RepeatableRow]
    outdated_shape: bool = False


def table_ident(table: TableName) -> sql.Composable:
    """The schema-qualified identifier, immune to a migration's ``SET search_path``."""
    return sql.Identifier(table.schema, table.name)


def repeatable_table(table: TableName) -> TableName:
    """Where repeatable migrations are recorded: ``<history>_repeatable`` in the same schema."""
    return TableName(table.schema, f"{table.name}_repeatable")


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


def ensure_table(conn: psycopg.Connection[Any], table: TableName, *, repeatables: bool = False) -> None:
    """Create the history table (and its schema, and with ``repeatables`` the repeatable table) when missing.

    Only what is missing is created: a role without CREATE on the database can use a schema that
    exists. Safe to run concurrently under the lock."""
    try:
        row = conn.execute(
            "SELECT to_regnamespace(%s) IS NOT NULL, to_regclass(%s) IS NOT NULL, to_regclass(%s) IS NOT NULL",
            (
                sql.Identifier(table.schema).as_string(conn),
                table_ident(table).as_string(conn),
                table_ident(repeatable_table(table)).as_string(conn),
            ),
        ).fetchone()
        schema_exists, table_exists, repeatable_exists = (bool(v) for v in row or (False, False, False))
        statements: list[sql.Composed] = []
        if not schema_exists:
            statements.append(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(table.schema)))
        if not table_exists:
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
                        pgsluice_version text,
                        down_sql text,
                        down_checksum text
                    )
                    """
                ).format(table=table_ident(table))
            )
        if repeatables and not repeatable_exists:
            statements.append(
                sql.SQL(
                    """
                    CREATE TABLE IF NOT EXISTS {table} (
                        name text PRIMARY KEY,
                        checksum text NOT NULL,
                        file_sha256 text,
                        applied_at timestamptz NOT NULL DEFAULT clock_timestamp(),
                        applied_by text NOT NULL DEFAULT session_user,
                        hostname text,
                        duration_seconds double precision,
                        pgsluice_version text
                    )
                    """
                ).format(table=table_ident(repeatable_table(table)))
            )
        for statement in statements:
            conn.execute(statement)
    except psycopg.errors.InsufficientPrivilege as exc:
        raise _denied(table, exc, "creating") from exc


def _select(table: TableName, columns: Sequence[str]) -> sql.Composed:
    return sql.SQL("SELECT {} FROM {} ORDER BY version").format(
        sql.SQL(", ").join(sql.Identifier(c) for c in columns), table_ident(table)
    )


def _row(r: Sequence[Any]) -> HistoryRow:
    down = r[12:14] if len(r) > 12 else (None, None)
    return HistoryRow(
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
        down_sql=down[0],
        down_checksum=down[1],
    )


def read_history(conn: psycopg.Connection[Any], table: TableName, *, repeatables: bool = False) -> History | None:
    """Every row in version order (and with ``repeatables`` the repeatable rows); None when the history table
    does not exist yet. One round trip when its shape is current."""
    rows: list[Sequence[Any]]
    outdated = False
    try:
        try:
            rows = conn.execute(_select(table, (*BASE_COLUMNS, *ADDED_COLUMNS))).fetchall()
        except psycopg.errors.UndefinedColumn:
            rows = conn.execute(_select(table, BASE_COLUMNS)).fetchall()  # an earlier release's table
            outdated = True
    except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName):
        return None
    except psycopg.errors.InsufficientPrivilege as exc:
        raise _denied(table, exc, "reading") from exc
    except (psycopg.errors.UndefinedColumn, psycopg.errors.DatatypeMismatch) as exc:
        raise _other_shape(table, exc) from exc
    try:
        history = [_row(r) for r in rows]
    except (ValueError, TypeError) as exc:
        raise InconsistentError(
            f"{table} holds a row pgsluice cannot read ({exc})",
            hint="check the table: its status column must be 'applied' or 'started'",
        ) from exc
    return History(history, read_repeatables(conn, table) if repeatables else [], outdated)


def read_repeatables(conn: psycopg.Connection[Any], table: TableName) -> list[RepeatableRow]:
    """The last application of every repeatable migration; empty when none was ever applied."""
    try:
        rows = conn.execute(
            sql.SQL(
                "SELECT name, checksum, file_sha256, applied_at, applied_by, hostname, duration_seconds"
                " FROM {} ORDER BY name"
            ).format(table_ident(repeatable_table(table)))
        ).fetchall()
    except psycopg.errors.UndefinedTable:
        return []
    except psycopg.errors.InsufficientPrivilege as exc:
        raise _denied(repeatable_table(table), exc, "reading") from exc
    return [RepeatableRow(*r) for r in rows]


def upgrade_table(conn: psycopg.Connection[Any], table: TableName, versions: Iterable[int]) -> None:
    """Bring an earlier release's history table to this release's shape, once, under the lock: add the
    columns it lacks, and widen ``version`` to ``numeric`` when a version beyond bigint needs it."""
    widest = max(versions, default=0)
    row = conn.execute(
        "SELECT array_agg(attname::text), max(format_type(atttypid, atttypmod)) FILTER (WHERE attname = 'version')"
        " FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped",
        (table_ident(table).as_string(conn),),
    ).fetchone()
    if row is None or row[0] is None:
        return
    present, version_type = set(row[0]), row[1]
    changes: list[str] = [f"{name} {kind}" for name, kind in ADDED_COLUMNS.items() if name not in present]
    statements = [
        sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {}").format(
            table_ident(table), sql.Identifier(name), sql.SQL(ADDED_COLUMNS[name])
        )
        for name in ADDED_COLUMNS
        if name not in present
    ]
    if widest > BIGINT_MAX and version_type != "numeric":
        statements.append(sql.SQL("ALTER TABLE {} ALTER COLUMN version TYPE numeric").format(table_ident(table)))
        changes.append(f"version: {version_type} -> numeric")
    if not statements:
        return
    try:
        with conn.transaction():
            for statement in statements:
                conn.execute(statement)
    except psycopg.errors.InsufficientPrivilege as exc:
        raise _denied(table, exc, "upgrading") from exc
    for change in changes:
        log.info(Event.HISTORY_UPGRADED, table=str(table), change=change)


def applied_row_query(
    table: TableName,
    *,
    version: int,
    name: str,
    checksum: str,
    file_sha256: str,
    execution: str,
    hostname: str,
    down_sql: str | None = None,
    down_checksum: str | None = None,
) -> sql.Composed:
    """INSERT of an ``applied`` row, meant for the migration's own transaction.

    ``now()`` is the transaction's start, so the duration is measured by the server.
    """
    return sql.SQL(
        "INSERT INTO {table} (version, name, checksum, file_sha256, status, execution, started_at, applied_at,"
        " duration_seconds, applied_by, hostname, pgsluice_version, down_sql, down_checksum)"
        " VALUES ({version}, {name}, {checksum}, {sha}, 'applied', {execution}, now(), clock_timestamp(),"
        " extract(epoch FROM clock_timestamp() - now()), session_user, {hostname}, {pv}, {down}, {down_checksum})"
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
        down=sql.Literal(down_sql),
        down_checksum=sql.Literal(down_checksum),
    )


def deleted_row_query(table: TableName, version: int) -> sql.Composed:
    """DELETE of a migration's row, meant for its down migration's own transaction (``RETURNING`` a duration)."""
    return sql.SQL("DELETE FROM {} WHERE version = {} RETURNING extract(epoch FROM clock_timestamp() - now())").format(
        table_ident(table), sql.Literal(version)
    )


def repeatable_row_query(
    table: TableName, *, name: str, checksum: str, file_sha256: str, hostname: str
) -> sql.Composed:
    """Upsert of a repeatable migration's row, meant for its own transaction."""
    return sql.SQL(
        "INSERT INTO {table} (name, checksum, file_sha256, applied_at, applied_by, hostname, duration_seconds,"
        " pgsluice_version) VALUES ({name}, {checksum}, {sha}, clock_timestamp(), session_user, {hostname},"
        " extract(epoch FROM clock_timestamp() - now()), {pv})"
        " ON CONFLICT (name) DO UPDATE SET checksum = excluded.checksum, file_sha256 = excluded.file_sha256,"
        " applied_at = excluded.applied_at, applied_by = excluded.applied_by, hostname = excluded.hostname,"
        " duration_seconds = excluded.duration_seconds, pgsluice_version = excluded.pgsluice_version"
        " RETURNING duration_seconds"
    ).format(
        table=table_ident(repeatable_table(table)),
        name=sql.Literal(name),
        checksum=sql.Literal(checksum),
        sha=sql.Literal(file_sha256),
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
    down_sql: str | None = None,
    down_checksum: str | None = None,
) -> None:
    """Record that a non-transactional migration began; committed at once."""
    conn.execute(
        sql.SQL(
            "INSERT INTO {} (version, name, checksum, file_sha256, status, execution, hostname, pgsluice_version,"
            " down_sql, down_checksum) VALUES (%s, %s, %s, %s, 'started', %s, %s, %s, %s, %s)"
        ).format(table_ident(table)),
        (
            version,
            name,
            checksum,
            file_sha256,
            str(Execution.NO_TRANSACTION),
            hostname,
            __version__,
            down_sql,
            down_checksum,
        ),
    )


def mark_reverting(conn: psycopg.Connection[Any], table: TableName, version: int) -> int:
    """A non-transactional down migration begins: its row is 'started' until the down completes."""
    cur = conn.execute(
        sql.SQL(
            "UPDATE {} SET status = 'started', execution = %s, started_at = clock_timestamp()"
            " WHERE version = %s AND status = 'applied'"
        ).format(table_ident(table)),
        (str(Execution.REVERTING), version),
    )
    return cur.rowcount


def delete_row(conn: psycopg.Connection[Any], table: TableName, version: int) -> int:
    """Forget a migration (its non-transactional down migration completed); returns the rows deleted."""
    cur = conn.execute(sql.SQL("DELETE FROM {} WHERE version = %s").format(table_ident(table)), (version,))
    return cur.rowcount


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


def _canary_table(table: TableName) -> sql.Composable:
    return sql.Identifier(table.schema, f"{table.name}_canary")


def record_canary(conn: psycopg.Connection[Any], table: TableName, fingerprint: str, failure: str | None) -> None:
    """A fleet's canary target is done for this folder (``fingerprint``): how it went, for the waiting shards."""
    conn.execute(
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} (fingerprint text PRIMARY KEY, failure text,"
            " finished_at timestamptz NOT NULL DEFAULT clock_timestamp())"
        ).format(_canary_table(table))
    )
    conn.execute(
        sql.SQL(
            "INSERT INTO {} (fingerprint, failure) VALUES (%s, %s) ON CONFLICT (fingerprint) DO UPDATE"
            " SET failure = excluded.failure, finished_at = excluded.finished_at"
        ).format(_canary_table(table)),
        (fingerprint, failure),
    )


def read_canary(conn: psycopg.Connection[Any], table: TableName, fingerprint: str) -> str | None:
    """Why the canary target failed for this folder, or None (it did not fail, or did not finish yet)."""
    try:
        row = conn.execute(
            sql.SQL("SELECT failure FROM {} WHERE fingerprint = %s").format(_canary_table(table)), (fingerprint,)
        ).fetchone()
    except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName):
        return None
    return str(row[0]) if row and row[0] else None


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
