"""apply_plan(): each migration in one transaction together with its history row.

Consecutive transactional migrations go to the server as one pipeline: for each, BEGIN,
its timeouts, each statement, the history INSERT, COMMIT (and the session reset when it
may have changed session state), with a single Sync at the end. The whole run costs one
round trip, and PostgreSQL's pipeline semantics give exactly what a gate needs: when a
statement fails, its transaction is aborted and everything after it up to the Sync is
skipped, so later files never run, while the migrations before it stay committed.
Each statement has its own cursor, so we know which one failed.

A ``no-transaction`` migration runs statement by statement in autocommit, between a
committed ``started`` row and its ``applied`` update. A file pglast cannot parse is
sent whole, in its own transaction.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
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


def _record_query(migration: Migration, config: Config) -> Any:
    return history.applied_row_query(
        config.history_table,
        version=migration.version,
        name=migration.name,
        checksum=migration.checksum,
        file_sha256=migration.file_sha256,
        execution="transaction",
        hostname=config.hostname,
    )


def _apply_unparsed(conn: psycopg.Connection[Any], migration: Migration, config: Config) -> float:
    """pglast could not parse it (newer syntax?): the server gets the file whole, in one transaction."""
    started = time.monotonic()
    try:
        for query in (migration.analysis.begin_text or "BEGIN", _timeouts(config, local=True)):
            conn.execute(query)
        conn.execute(migration.text)
        conn.execute("SET SESSION AUTHORIZATION DEFAULT")
        conn.execute(_record_query(migration, config))
        conn.execute("COMMIT")
    except psycopg.Error as exc:
        _rollback(conn)
        raise _failure(migration, exc, Statement(migration.text, 0, "unparsed")) from exc
    except BaseException:
        _rollback(conn)
        raise
    for query in SESSION_RESET:
        conn.execute(query)
    return time.monotonic() - started


@dataclass
class _Queued:
    """One migration's cursors inside a batch pipeline."""

    migration: Migration
    statements: list[tuple[Statement, psycopg.Cursor[Any]]]
    record: psycopg.Cursor[Any] | None = None
    commit: psycopg.Cursor[Any] | None = None

    def committed(self) -> bool:
        return self.commit is not None and self.commit.pgresult is not None

    def duration(self) -> float:
        row = self.record.fetchone() if self.record is not None and self.record.pgresult is not None else None
        return float(row[0]) if row and row[0] is not None else 0.0


def _queue(conn: psycopg.Connection[Any], queued: _Queued, config: Config) -> None:
    """Send one migration's commands into the open pipeline, a cursor per statement."""
    migration = queued.migration
    analysis = migration.analysis
    for query in (analysis.begin_text or "BEGIN", _timeouts(config, local=True)):
        conn.execute(query)
    for statement in analysis.statements:
        cur = conn.cursor()
        queued.statements.append((statement, cur))
        cur.execute(statement.text)
    if not analysis.session_neutral:
        # A migration may have SET ROLE to a role that cannot write the history.
        conn.execute("SET SESSION AUTHORIZATION DEFAULT")
    queued.record = conn.cursor()
    queued.record.execute(_record_query(migration, config))
    queued.commit = conn.cursor()
    queued.commit.execute("COMMIT")
    if not analysis.session_neutral:
        for query in SESSION_RESET:
            conn.execute(query)


def _apply_batch(
    conn: psycopg.Connection[Any], batch: list[Migration], config: Config
) -> tuple[list[tuple[Migration, float]], BaseException | None]:
    """Send ``batch`` as one pipeline; return the committed migrations (with their server-side
    durations) and the failure that stopped the rest, if any."""
    queued: list[_Queued] = []
    failure: BaseException | None = None
    try:
        with conn.pipeline():
            for migration in batch:
                # Listed before it is sent: an earlier error can surface while we send it.
                queued.append(_Queued(migration, []))
                _queue(conn, queued[-1], config)
    except BaseException as exc:  # a psycopg error, or Interrupted (psycopg cancelled the query)
        failure = exc
    done = [(q.migration, q.duration()) for q in queued if q.committed()]
    if failure is None:
        return done, None
    _rollback(conn)
    if not isinstance(failure, psycopg.Error):
        return done, failure
    failed = next((q for q in queued if not q.committed()), None)
    if failed is None:  # the error came after the last COMMIT (the session reset)
        raise failure
    statement = next((st for st, cur in failed.statements if cur.pgresult is None), None)
    error = _failure(failed.migration, failure, statement)
    if statement is None:
        step = (
            "at COMMIT"
            if failed.record is not None and failed.record.pgresult is not None
            else (f"while recording it in {config.history_table}")
        )
        error.message = error.message.replace(" failed:", f" failed {step}:", 1)
    error.__cause__ = failure
    return done, error


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
            # Only those this statement names: an older INVALID index elsewhere is not ours to report.
            invalid = [name for name in invalid if name.rsplit(".", 1)[-1].strip('"') in statement.text]
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


def _log_applied(migration: Migration, duration: float, attempts: int) -> AppliedMigration:
    execution = "no-transaction" if migration.no_transaction else "transaction"
    log.info(
        "migration.applied",
        version=migration.version,
        file=migration.filename,
        duration_seconds=round(duration, 4),
        attempts=attempts,
        execution=execution,
    )
    return AppliedMigration(migration.version, migration.filename, duration, attempts, execution)


def _connection_lost_error(
    migration: Migration, cause: BaseException, fields: dict[str, Any]
) -> DatabaseUnreachableError:
    log.error("migration.connection_lost", version=migration.version, file=migration.filename)
    lost = DatabaseUnreachableError(
        f"lost the connection to the database while applying {migration.filename}: {' '.join(str(cause).split())}"
        + (
            f"; history row {migration.version} stays 'started'"
            if migration.no_transaction
            else "; the server rolled the migration back"
        ),
        hint="the database restarted or the network failed; run again once it is back",
    )
    lost.fields = fields
    return lost


def apply_plan(
    conn: psycopg.Connection[Any],
    pending: Sequence[Migration],
    config: Config,
    on_applied: Callable[[AppliedMigration], None],
    on_running: Callable[[Migration | None], None] = lambda _m: None,
) -> None:
    """Apply ``pending`` in order. ``on_applied`` hears of each committed migration as it is known;
    ``on_running`` of the migration in flight (None when a batch is). Retries a migration that
    hit lock_timeout or a deadlock; raises MigrationFailedError (7) or DatabaseUnreachableError (3)."""
    index = 0
    attempts = {m.version: 0 for m in pending}
    while index < len(pending):
        migration = pending[index]
        attempts[migration.version] += 1
        try:
            if migration.no_transaction or migration.analysis.parse_error is not None:
                on_running(migration)
                log.info(
                    "migration.applying",
                    version=migration.version,
                    file=migration.filename,
                    execution="no-transaction" if migration.no_transaction else "transaction",
                )
                started = time.monotonic()
                if migration.no_transaction:
                    _apply_without_transaction(conn, migration, config)
                    duration = time.monotonic() - started
                else:
                    duration = _apply_unparsed(conn, migration, config)
                on_applied(_log_applied(migration, duration, attempts[migration.version]))
                index += 1
                continue
            batch: list[Migration] = []
            for candidate in pending[index:]:
                if candidate.no_transaction or candidate.analysis.parse_error is not None:
                    break
                batch.append(candidate)
            on_running(batch[0] if len(batch) == 1 else None)
            log.info(
                "migration.applying", versions=[m.version for m in batch], files=len(batch), execution="transaction"
            )
            done, failure = _apply_batch(conn, batch, config)
            for applied, duration in done:
                attempts[applied.version] = max(attempts[applied.version], 1)
                on_applied(_log_applied(applied, duration, attempts[applied.version]))
            index += len(done)
            if failure is not None:
                on_running(pending[index])
                raise failure
        except MigrationFailedError as exc:
            failed = pending[index]
            attempts[failed.version] = max(attempts[failed.version], 1)
            cause = exc.__cause__
            if _connection_lost(conn, cause):
                raise _connection_lost_error(failed, cause, exc.fields) from cause  # type: ignore[arg-type]
            attempt = attempts[failed.version]
            if failed.no_transaction or not isinstance(cause, RETRYABLE) or attempt > config.ddl_retries:
                if isinstance(cause, RETRYABLE):
                    exc.message += f" after {attempt} attempt(s)"
                    exc.hint = (
                        "a long transaction holds a lock this migration needs; find it in pg_stat_activity, "
                        "or raise --ddl-lock-timeout / --ddl-retries"
                    )
                log.error(
                    "migration.failed",
                    version=failed.version,
                    file=failed.filename,
                    attempts=attempt,
                    **{k: v for k, v in exc.fields.items() if k not in ("version", "file")},
                )
                raise
            delay = min(MAX_RETRY_DELAY_SECONDS, config.ddl_retry_delay_seconds * 2 ** (attempt - 1))
            delay *= random.uniform(0.5, 1.5)  # noqa: S311 - jitter
            log.warning(
                "migration.retry_scheduled",
                version=failed.version,
                file=failed.filename,
                retry_num=attempt,
                wait_seconds=round(delay, 3),
                cause=f"{type(cause).__name__} (SQLSTATE {getattr(cause, 'sqlstate', None)})",
            )
            time.sleep(delay)
