"""The only SQL that touches the history table."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from pgsluice import __version__
from pgsluice.config import TableName
from pgsluice.plan import HistoryRow


def table_ident(table: TableName) -> sql.Composable:
    """The schema-qualified identifier, immune to a migration's ``SET search_path``."""
    return sql.Identifier(table.schema, table.name)


def ensure_table(conn: psycopg.Connection[Any], table: TableName) -> None:
    """Create the history table (and its schema) if missing; safe to run concurrently under the lock."""
    conn.execute(
        sql.SQL(
            """
            CREATE SCHEMA IF NOT EXISTS {schema};
            CREATE TABLE IF NOT EXISTS {table} (
                version bigint PRIMARY KEY,
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
        ).format(schema=sql.Identifier(table.schema), table=table_ident(table))
    )


def read_history(conn: psycopg.Connection[Any], table: TableName) -> list[HistoryRow] | None:
    """Every row in version order; None when the table does not exist yet (one round trip either way)."""
    try:
        rows = conn.execute(
            sql.SQL(
                "SELECT version, name, checksum, file_sha256, status, execution, started_at, applied_at,"
                " duration_seconds, applied_by, hostname, pgsluice_version FROM {} ORDER BY version"
            ).format(table_ident(table))
        ).fetchall()
    except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName):
        return None
    return [HistoryRow(*row) for row in rows]


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
        execution=sql.Literal(execution),
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
            " VALUES (%s, %s, %s, %s, 'started', 'no-transaction', %s, %s)"
        ).format(table_ident(table)),
        (version, name, checksum, file_sha256, hostname, __version__),
    )


def mark_applied(conn: psycopg.Connection[Any], table: TableName, version: int, execution: str | None = None) -> int:
    """Turn a ``started`` row into ``applied``; returns the rows changed."""
    cur = conn.execute(
        sql.SQL(
            "UPDATE {} SET status = 'applied', applied_at = clock_timestamp(),"
            " duration_seconds = extract(epoch FROM clock_timestamp() - started_at),"
            " execution = coalesce(%s, execution)"
            " WHERE version = %s AND status = 'started'"
        ).format(table_ident(table)),
        (execution, version),
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
    with conn.transaction():
        for version, name, checksum, file_sha256 in rows:
            conn.execute(
                sql.SQL(
                    "INSERT INTO {} (version, name, checksum, file_sha256, status, execution, applied_at,"
                    " duration_seconds, hostname, pgsluice_version)"
                    " VALUES (%s, %s, %s, %s, 'applied', 'baseline', clock_timestamp(), 0, %s, %s)"
                ).format(table_ident(table)),
                (version, name, checksum, file_sha256, hostname, __version__),
            )
