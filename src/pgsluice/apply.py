"""apply_migration(): one transaction per migration, together with its history row.

A transactional migration is sent as one pipeline — BEGIN, timeouts, each statement,
the history INSERT, COMMIT, and the session reset — so it costs one round trip, and
when a statement fails we still know which one. A ``no-transaction`` migration runs
statement by statement in autocommit, between a committed ``started`` row and its
``applied`` update.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any

import psycopg
import structlog
from psycopg import errors as pgerrors
from psycopg.pq import TransactionStatus

from pgsluice import history
from pgsluice.config import Config
from pgsluice.errors import DatabaseUnreachableError, MigrationFailedError
from pgsluice.migrations import Migration
from pgsluice.sql import Statement, line_col

log = structlog.get_logger("pgsluice.apply")

# What psql running each file in a fresh session would give: nothing a migration
# sets (search_path, role, temp tables, prepared statements, advisory locks)
# reaches the next one. The advisory lock of the run lives on another connection.
SESSION_RESET = (
    "CLOSE ALL",
    "SET SESSION AUTHORIZATION DEFAULT",
    "RESET ALL",
    "DEALLOCATE ALL",
    "UNLISTEN *",
    "SELECT pg_advisory_unlock_all()",
    "DISCARD PLANS",
    "DISCARD TEMP",
    "DISCARD SEQUENCES",
)
RETRYABLE = (pgerrors.LockNotAvailable, pgerrors.DeadlockDetected)
CONNECTION_LOST_SQLSTATES = ("57P01", "57P02", "57P03")  # admin/crash shutdown, cannot connect now


def _connection_lost(conn: psycopg.Connection[Any], exc: BaseException | None) -> bool:
    if not isinstance(exc, psycopg.OperationalError):
        return False
    sqlstate = exc.sqlstate or ""
    return conn.broken or conn.closed or sqlstate.startswith("08") or sqlstate in CONNECTION_LOST_SQLSTATES


MAX_RETRY_DELAY_SECONDS = 30.0


@dataclass(frozen=True)
class AppliedMigration:
    """What applying one migration took."""

    version: int
    filename: str
    duration_seconds: float
    attempts: int
    execution: str


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def _timeouts(config: Config, local: bool) -> str:
    """One statement setting both timeouts (for the transaction, or for the session)."""
    scope = "true" if local else "false"
    return (
        f"SELECT set_config('lock_timeout', '{_ms(config.ddl_lock_timeout_seconds)}', {scope}),"
        f" set_config('statement_timeout', '{_ms(config.statement_timeout_seconds)}', {scope})"
    )


def _failure(migration: Migration, exc: psycopg.Error, statement: Statement | None) -> MigrationFailedError:
    """The error a user can act on: file, line, column, SQLSTATE, server message, detail, hint."""
    diag = exc.diag
    primary = diag.message_primary or str(exc).strip()
    where = ""
    line: int | None = None
    column: int | None = None
    if statement is not None:
        pos = diag.statement_position
        if pos:
            line, column = line_col(migration.text, statement.start + int(pos) - 1)
            where = f" at line {line}, column {column}"
        else:
            line, _ = line_col(migration.text, statement.start + len(statement.text) - len(statement.text.lstrip()))
            where = f" in the statement at line {line}"
    message = f"migration {migration.filename} failed{where}: {primary} (SQLSTATE {diag.sqlstate})"
    extras = [
        f"detail: {diag.message_detail}" if diag.message_detail else "",
        f"context: {' '.join(diag.context.split())}" if diag.context else "",
    ]
    message += "".join(f"; {e}" for e in extras if e)
    hint = diag.message_hint or "fix the migration and run again"
    if not migration.no_transaction:
        message += "; it was rolled back, nothing of it was applied"
    error = MigrationFailedError(message, hint=hint)
    error.fields = {
        "file": migration.filename,
        "version": migration.version,
        "line": line,
        "column": column,
        "sqlstate": diag.sqlstate,
        "server_message": primary,
        "detail": diag.message_detail,
        "server_hint": diag.message_hint,
    }
    return error


def _rollback(conn: psycopg.Connection[Any]) -> None:
    if conn.closed or conn.broken:
        return
    if conn.info.transaction_status in (TransactionStatus.INTRANS, TransactionStatus.INERROR):
        conn.execute("ROLLBACK")


def _apply_in_transaction(conn: psycopg.Connection[Any], migration: Migration, config: Config) -> None:
    analysis = migration.analysis
    record = history.applied_row_query(
        config.history_table,
        version=migration.version,
        name=migration.name,
        checksum=migration.checksum,
        file_sha256=migration.file_sha256,
        execution="transaction",
        hostname=config.hostname,
    )
    begin = analysis.begin_text or "BEGIN"
    if analysis.parse_error is not None:
        # pglast could not parse it (newer syntax?): the server gets the file whole.
        try:
            for query in (begin, _timeouts(config, local=True)):
                conn.execute(query)
            conn.execute(migration.text)
            conn.execute(record)
            conn.execute("COMMIT")
        except psycopg.Error as exc:
            _rollback(conn)
            raise _failure(migration, exc, Statement(migration.text, 0, "unparsed")) from exc
        for query in SESSION_RESET:
            conn.execute(query)
        return

    cursors: list[tuple[Statement, psycopg.Cursor[Any]]] = []
    try:
        with conn.pipeline():
            for query in (begin, _timeouts(config, local=True)):
                conn.execute(query)
            for statement in analysis.statements:
                cur = conn.cursor()
                cursors.append((statement, cur))
                cur.execute(statement.text)
            if not analysis.session_neutral:
                # A migration may have SET ROLE to a role that cannot write the history.
                conn.execute("SET SESSION AUTHORIZATION DEFAULT")
            conn.execute(record)
            conn.execute("COMMIT")
            if not analysis.session_neutral:
                for query in SESSION_RESET:
                    conn.execute(query)
    except psycopg.Error as exc:
        failed = next((st for st, cur in cursors if cur.pgresult is None), None)
        _rollback(conn)
        error = _failure(migration, exc, failed)
        if failed is None:
            error.message = error.message.replace(" failed:", f" failed while recording it in {config.history_table}:")
        raise error from exc
    except BaseException:
        _rollback(conn)
        raise


def _invalid_indexes(conn: psycopg.Connection[Any]) -> list[str]:
    rows = conn.execute("SELECT indexrelid::regclass::text FROM pg_index WHERE NOT indisvalid ORDER BY 1").fetchall()
    return [str(r[0]) for r in rows]


def _apply_without_transaction(conn: psycopg.Connection[Any], migration: Migration, config: Config) -> None:
    table = config.history_table
    history.insert_started(
        conn,
        table,
        version=migration.version,
        name=migration.name,
        checksum=migration.checksum,
        file_sha256=migration.file_sha256,
        hostname=config.hostname,
    )
    log.info("migration.started_row_written", version=migration.version, file=migration.filename)
    conn.execute(_timeouts(config, local=False))
    for statement in migration.analysis.statements:
        try:
            conn.execute(statement.text)
        except psycopg.Error as exc:
            error = _failure(migration, exc, statement)
            invalid = [] if conn.closed or conn.broken else _invalid_indexes(conn)
            error.message += f"; the migration is half-applied: history row {migration.version} stays 'started'"
            if invalid:
                error.message += f"; INVALID index left behind: {', '.join(invalid)}"
                error.hint = (
                    f"drop it (DROP INDEX CONCURRENTLY {invalid[0]}), fix the file, then run "
                    f"'pgsluice resolve {migration.version} --rolled-back' and migrate again"
                )
            else:
                error.hint = (
                    f"{error.hint}; undo or finish the statements that ran, then run "
                    f"'pgsluice resolve {migration.version} --rolled-back' (or --applied)"
                )
            error.fields["invalid_indexes"] = invalid
            error.fields["left_started"] = True
            raise error from exc
    history.mark_applied(conn, table, migration.version)
    for query in SESSION_RESET:
        conn.execute(query)


def apply_migration(conn: psycopg.Connection[Any], migration: Migration, config: Config) -> AppliedMigration:
    """Apply one migration; retry it on lock_timeout or deadlock; raise MigrationFailedError otherwise."""
    execution = "no-transaction" if migration.no_transaction else "transaction"
    attempt = 0
    started = time.monotonic()
    log.info("migration.applying", version=migration.version, file=migration.filename, execution=execution)
    while True:
        attempt += 1
        try:
            if migration.no_transaction:
                _apply_without_transaction(conn, migration, config)
            else:
                _apply_in_transaction(conn, migration, config)
            break
        except MigrationFailedError as exc:
            cause = exc.__cause__
            if _connection_lost(conn, cause):
                log.error("migration.connection_lost", version=migration.version, file=migration.filename)
                lost = DatabaseUnreachableError(
                    f"lost the connection to the database while applying {migration.filename}: "
                    f"{' '.join(str(cause).split())}"
                    + (
                        f"; history row {migration.version} stays 'started'"
                        if migration.no_transaction
                        else "; the server rolled the migration back"
                    ),
                    hint="the database restarted or the network failed; run again once it is back",
                )
                lost.fields = exc.fields
                raise lost from cause
            if migration.no_transaction or not isinstance(cause, RETRYABLE) or attempt > config.ddl_retries:
                if isinstance(cause, RETRYABLE):
                    exc.message += f" after {attempt} attempt(s)"
                    exc.hint = (
                        "a long transaction holds a lock this migration needs; find it in pg_stat_activity, "
                        "or raise --ddl-lock-timeout / --ddl-retries"
                    )
                log.error(
                    "migration.failed",
                    version=migration.version,
                    file=migration.filename,
                    attempts=attempt,
                    **{k: v for k, v in exc.fields.items() if k not in ("version", "file")},
                )
                raise
            delay = min(MAX_RETRY_DELAY_SECONDS, config.ddl_retry_delay_seconds * 2 ** (attempt - 1))
            delay *= random.uniform(0.5, 1.5)  # noqa: S311 - jitter
            log.warning(
                "migration.retry_scheduled",
                version=migration.version,
                file=migration.filename,
                retry_num=attempt,
                wait_seconds=round(delay, 3),
                cause=f"{type(cause).__name__} (SQLSTATE {cause.sqlstate})",
            )
            time.sleep(delay)
    duration = time.monotonic() - started
    log.info(
        "migration.applied",
        version=migration.version,
        file=migration.filename,
        duration_seconds=round(duration, 4),
        attempts=attempt,
        execution=execution,
    )
    return AppliedMigration(migration.version, migration.filename, duration, attempt, execution)
