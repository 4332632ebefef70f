"""apply_plan(): each migration in one transaction together with its history row.

Consecutive transactional migrations go to the server as one pipeline: for each, BEGIN,
its timeouts, each statement, the history INSERT, COMMIT (and the session reset when it
may have changed session state), with a single Sync at the end. The whole run costs one
round trip, and PostgreSQL's pipeline semantics give exactly what a gate needs: when a
statement fails, its transaction is aborted and everything after it up to the Sync is
skipped, so later files never run, while the migrations before it stay committed.
Each statement has its own cursor, so we know which one failed. A migration with inline
``COPY … FROM STDIN`` data is the same batch of one, sent without a pipeline (COPY
needs its own protocol exchange).

A ``no-transaction`` migration runs as psql runs it: each ``BEGIN … COMMIT`` block of
the file in one transaction, each statement outside blocks in autocommit, between a
committed ``started`` row and its ``applied`` update.

A migration that hit ``lock_timeout`` or a deadlock is rolled back and retried with
backoff (tenacity), so DDL never waits in the lock queue in front of traffic.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import psycopg
import structlog
from psycopg import errors as pgerrors
from psycopg.pq import TransactionStatus

from pgsluice import history, progress
from pgsluice.config import Config
from pgsluice.errors import (
    DatabaseUnreachableError,
    InconsistentError,
    Location,
    MigrationFailedError,
    ServerMessage,
)
from pgsluice.events import Event
from pgsluice.migrations import Migration
from pgsluice.report import Report
from pgsluice.sql import Command, Echo, location_in_source

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
RETRYABLE_SQLSTATES = ("55P03", "40P01")  # lock_not_available, deadlock_detected
CONNECTION_LOST_SQLSTATES = ("57P01", "57P02", "57P03")  # admin/crash shutdown, cannot connect now
MAX_RETRY_DELAY_SECONDS = 30.0
COPY_CHUNK = 1024 * 1024
FREEZE_AFTER_STATEMENTS = 50_000
STATEMENTS_PER_SYNC = 1000
"""A pipeline is synced every this many statements of one migration (inside its transaction): the cursors kept to
locate a failure stay bounded for a file of 400,000 INSERTs, at one more round trip per thousand statements."""


class Direction(StrEnum):
    """What applying a unit does to the history."""

    UP = "up"
    """A versioned migration: its row is inserted (with its down SQL, for a later rollback)."""
    DOWN = "down"
    """A down migration: the row of the migration it undoes is deleted."""
    REPEATABLE = "repeatable"
    """A repeatable migration: its row in the repeatable table is written anew."""


@dataclass(frozen=True)
class Unit:
    """One migration to apply, and what it records."""

    migration: Migration
    direction: Direction = Direction.UP
    down: Migration | None = None
    """For an up migration: its down migration, stored with its row."""

    @property
    def label(self) -> str:
        """How logs name it: its file."""
        return self.migration.filename


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
    """One statement setting both timeouts (for the transaction, or for the session), and for a fleet's schema
    target its search_path."""
    scope = "true" if local else "false"
    query = (
        f"SELECT set_config('lock_timeout', '{_ms(config.ddl_lock_timeout_seconds)}', {scope}),"
        f" set_config('statement_timeout', '{_ms(config.statement_timeout_seconds)}', {scope})"
    )
    if config.search_schema:
        quoted = '"' + config.search_schema.replace('"', '""') + '"'  # a checked plain name (fleet.parse_targets)
        query += f", set_config('search_path', '{quoted}', {scope})"
    return query


def _connection_lost(conn: psycopg.Connection[Any], exc: BaseException) -> bool:
    if not isinstance(exc, psycopg.OperationalError):
        return False
    sqlstate = exc.sqlstate or ""
    return conn.broken or conn.closed or sqlstate.startswith("08") or sqlstate in CONNECTION_LOST_SQLSTATES


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, MigrationFailedError) and exc.server.sqlstate in RETRYABLE_SQLSTATES


@dataclass(frozen=True)
class _Attempt:
    """Which attempt this is at the migration in front of the queue."""

    number: int
    last: bool


def _where(migration: Migration, command: Command | None, position: int | None) -> tuple[Location, str]:
    """The location of a failure, and how the message says it: ``at line 3, column 13`` or
    ``in the statement at line 7`` (``of lib/x.sql`` when it is in an included file)."""
    version = None if migration.repeatable else migration.version
    if command is None:
        return Location(file=migration.filename, version=version), ""
    piece = command.piece
    source = piece.origin.source
    data = migration.files.get(source, migration.content) if source != migration.filename else migration.content
    of = "" if source == migration.filename else f" of {source}"
    if position:
        offset = piece.source_offset(command.offset + position - 1)
        line, column = location_in_source(data, offset)
        return Location(migration.filename, version, line, column), f" at line {line}, column {column}{of}"
    start = len(command.sql) - len(command.sql.lstrip())
    line, _ = location_in_source(data, piece.source_offset(command.offset + start))
    return Location(migration.filename, version, line), f" in the statement at line {line}{of}"


def _hint_for(migration: Migration, sqlstate: str | None, server_hint: str | None) -> str:
    if sqlstate in RETRYABLE_SQLSTATES:
        return (
            "a long transaction holds a lock this migration needs; find it in pg_stat_activity, "
            "or raise --ddl-lock-timeout / --ddl-retries"
        )
    if sqlstate == "55P04" and not migration.no_transaction:
        return (
            "a new enum value cannot be used in the transaction that added it: put '-- pgsluice: no-transaction' "
            "on the first line so that each BEGIN … COMMIT block of the file commits on its own, or split the file"
        )
    if sqlstate == "25001" and not migration.no_transaction:
        return (
            "this statement cannot run inside a transaction block: put '-- pgsluice: no-transaction' on the "
            "file's first line"
        )
    return server_hint or "fix the migration and run again"


def _failure(
    conn: psycopg.Connection[Any],
    migration: Migration,
    exc: psycopg.Error,
    command: Command | None,
    attempt: _Attempt,
    *,
    stage: str = "",
    left_started: bool = False,
    invalid_indexes: tuple[str, ...] = (),
) -> MigrationFailedError | DatabaseUnreachableError:
    """The error a user can act on, classified and built once: file, line, column, SQLSTATE, the server's
    message, detail and hint; what was left behind; how many attempts it took."""
    diag = exc.diag
    primary = diag.message_primary or " ".join(str(exc).split())
    position = int(diag.statement_position) if diag.statement_position else None
    location, where = _where(migration, command, position)
    if _connection_lost(conn, exc):
        log.error(Event.MIGRATION_CONNECTION_LOST, version=migration.version, file=migration.filename)
        return DatabaseUnreachableError(
            f"lost the connection to the database while applying {migration.filename}: {primary}"
            + (
                f"; history row {migration.version} stays 'started'"
                if migration.no_transaction
                else "; the server rolled the migration back"
            ),
            hint="the database restarted or the network failed; run again once it is back",
            location=location,
        )
    step = f" {stage}" if stage else where
    message = f"migration {migration.filename} failed{step}: {primary} (SQLSTATE {diag.sqlstate})"
    extras = [
        f"detail: {diag.message_detail}" if diag.message_detail else "",
        f"context: {' '.join(diag.context.split())}" if diag.context else "",
    ]
    message += "".join(f"; {e}" for e in extras if e)
    if diag.sqlstate in RETRYABLE_SQLSTATES and attempt.last:
        message += f" after {attempt.number} attempt(s)"
    hint = _hint_for(migration, diag.sqlstate, diag.message_hint)
    if left_started:
        message += f"; the migration is half-applied: history row {migration.version} stays 'started'"
        if invalid_indexes:
            message += f"; INVALID index left behind: {', '.join(invalid_indexes)}"
            hint = (
                f"drop it (DROP INDEX CONCURRENTLY {invalid_indexes[0]}), fix the file, then run "
                f"'pgsluice resolve {migration.version} --rolled-back' and migrate again"
            )
        else:
            hint = (
                f"{hint}; undo or finish the statements that ran, then run "
                f"'pgsluice resolve {migration.version} --rolled-back' (or --applied)"
            )
    else:
        message += "; it was rolled back, nothing of it was applied"
    return MigrationFailedError(
        message,
        hint=hint,
        location=location,
        server=ServerMessage(diag.sqlstate, primary, diag.message_detail, diag.message_hint, diag.context),
        invalid_indexes=invalid_indexes,
        left_started=left_started,
        attempts=attempt.number,
    )


def _rollback(conn: psycopg.Connection[Any]) -> None:
    if conn.closed or conn.broken:
        return
    if conn.info.transaction_status in (TransactionStatus.INTRANS, TransactionStatus.INERROR):
        conn.execute("ROLLBACK")


def _down_sql(unit: Unit) -> tuple[str | None, str | None]:
    if unit.down is None:
        return None, None
    return unit.down.content.decode("utf-8"), unit.down.checksum


def _record_query(unit: Unit, config: Config) -> Any:
    """The history write of ``unit``, for its own transaction; it returns the duration as measured by the server."""
    migration, table = unit.migration, config.history_table
    if unit.direction == Direction.DOWN:
        return history.deleted_row_query(table, migration.version)
    if unit.direction == Direction.REPEATABLE:
        return history.repeatable_row_query(
            table,
            name=migration.name,
            checksum=migration.checksum,
            file_sha256=migration.file_sha256,
            hostname=config.hostname,
        )
    down_sql, down_checksum = _down_sql(unit)
    return history.applied_row_query(
        table,
        version=migration.version,
        name=migration.name,
        checksum=migration.checksum,
        file_sha256=migration.file_sha256,
        execution=migration.execution,
        hostname=config.hostname,
        down_sql=down_sql,
        down_checksum=down_checksum,
    )


def _echo(migration: Migration, step: Echo) -> None:
    log.info(Event.MIGRATION_ECHOED, file=migration.filename, line=step.origin.line, message=step.message)


def _copy_chunks(migration: Migration, command: Command) -> Iterator[memoryview]:
    data = command.copy_data
    assert data is not None  # noqa: S101 - only called for COPY … FROM STDIN
    source = migration.content if data.source == migration.filename else migration.files[data.source]
    view = memoryview(source)
    for start in range(data.start, data.end, COPY_CHUNK):
        yield view[start : min(start + COPY_CHUNK, data.end)]


def _run(cur: psycopg.Cursor[Any], migration: Migration, command: Command) -> None:
    """Send one statement (and its inline COPY data) on ``cur``."""
    if command.copy_data is None:
        cur.execute(command.sql)
        return
    with cur.copy(command.sql) as copy:
        for chunk in _copy_chunks(migration, command):
            copy.write(chunk)


@dataclass
class _SentMigration:
    """One migration's cursors inside a batch."""

    unit: Unit
    statements: list[tuple[Command, psycopg.Cursor[Any]]] = field(default_factory=list)
    record: psycopg.Cursor[Any] | None = None
    commit: psycopg.Cursor[Any] | None = None

    def committed(self) -> bool:
        return self.commit is not None and self.commit.pgresult is not None

    def duration(self) -> float:
        row = self.record.fetchone() if self.record is not None and self.record.pgresult is not None else None
        return float(row[0]) if row and row[0] is not None else 0.0

    def failed_at(self, table: str) -> tuple[Command | None, str]:
        """The statement that failed, or the stage when none did (recording it, or COMMIT)."""
        for command, cur in self.statements:
            if cur.pgresult is None:
                return command, ""
        if self.record is not None and self.record.pgresult is not None:
            return None, "at COMMIT"
        return None, f"while recording it in {table}"

    @property
    def migration(self) -> Migration:
        return self.unit.migration


def _send(
    conn: psycopg.Connection[Any],
    sent: _SentMigration,
    config: Config,
    *,
    reset: bool,
    pipe: psycopg.Pipeline | None = None,
) -> None:
    """Send one migration's commands: BEGIN, timeouts, statements, history row, COMMIT. In a pipeline, every
    ``STATEMENTS_PER_SYNC`` statements are synced (raising the first error among them) and forgotten."""
    migration = sent.migration
    analysis = migration.analysis
    for query in (analysis.begin_sql or "BEGIN", _timeouts(config, local=True)):
        conn.execute(query)
    for step in analysis.steps:
        if isinstance(step, Echo):
            _echo(migration, step)
            continue
        cur = conn.cursor()
        sent.statements.append((step, cur))  # listed before it is sent: it may fail while it is sent
        _run(cur, migration, step)
        if pipe is not None and len(sent.statements) >= STATEMENTS_PER_SYNC:
            pipe.sync()  # these succeeded (or the first failure is raised, its cursor still listed)
            sent.statements.clear()
    if not analysis.session_neutral:
        # A migration may have SET ROLE to a role that cannot write the history.
        conn.execute("SET SESSION AUTHORIZATION DEFAULT")
    sent.record = conn.cursor()
    sent.record.execute(_record_query(sent.unit, config))
    sent.commit = conn.cursor()
    sent.commit.execute("COMMIT")
    if reset and not analysis.session_neutral:
        for query in SESSION_RESET:
            conn.execute(query)


def _pipelined(unit: Unit) -> bool:
    return not unit.migration.no_transaction and not unit.migration.analysis.has_copy


def _next_batch(queue: list[Unit]) -> list[Unit]:
    """The unit in front, and the transactional ones after it that can share its pipeline."""
    head = queue[0]
    if not _pipelined(head):
        return [head]
    batch = [head]
    for candidate in queue[1:]:
        if not _pipelined(candidate):
            break
        batch.append(candidate)
    return batch


class _Applier:
    """Applies a queue of migrations, reporting each one as it commits."""

    def __init__(
        self,
        conn: psycopg.Connection[Any],
        config: Config,
        report: Report,
        on_applied: Callable[[AppliedMigration], None],
        *,
        guard: Callable[[], None],
        pooled: bool,
        observer: psycopg.Connection[Any] | None,
    ) -> None:
        self.conn = conn
        self.config = config
        self.report = report
        self.on_applied = on_applied
        self.guard = guard
        self.pooled = pooled
        self.observer = observer
        self.console = progress.progress_console(config.log_format)
        self.backend_pid: int | None = None
        if observer is not None and not pooled:
            # The server's own pid: through a session pooler, libpq's BackendKeyData names the pooler's.
            with contextlib.suppress(psycopg.Error):  # a lost connection fails the first migration, with its name
                row = conn.execute("SELECT pg_backend_pid()").fetchone()
                self.backend_pid = int(row[0]) if row else None

    def watch(self, batch: list[Unit]) -> contextlib.AbstractContextManager[object]:
        """migration.progress while ``batch`` runs long (see progress.watch_statements); nothing without an
        observer connection. Through a transaction pooler the server backend is unknown: file and time only."""
        if self.observer is None:
            return contextlib.nullcontext()
        return progress.watch_statements(
            self.observer,
            self.backend_pid,
            after_seconds=self.config.progress_after_seconds,
            interval_seconds=self.config.progress_interval_seconds,
            locate=_locator(batch),
            console=self.console,
        )

    def applied(self, unit: Unit, duration: float, attempts: int) -> None:
        migration = unit.migration
        fields: dict[str, Any] = {"file": migration.filename}
        if unit.direction != Direction.REPEATABLE:
            fields["version"] = migration.version
        log.info(
            Event.MIGRATION_APPLIED,
            **fields,
            direction=str(unit.direction),
            duration_seconds=round(duration, 4),
            attempts=attempts,
            execution=str(migration.execution),
        )
        if unit.direction == Direction.UP:
            self.report.record_applied(migration.version)
        elif unit.direction == Direction.DOWN:
            self.report.record_reverted(migration.version)
        else:
            self.report.repeatables_applied.append(migration.name)
        self.on_applied(
            AppliedMigration(migration.version, migration.filename, duration, attempts, migration.execution)
        )

    def announce(self, batch: list[Unit]) -> None:
        if len(batch) == 1:
            unit = batch[0]
            log.info(
                Event.MIGRATION_APPLYING,
                file=unit.label,
                direction=str(unit.direction),
                execution=str(unit.migration.execution),
            )
        else:
            log.info(
                Event.MIGRATION_APPLYING,
                files=[u.label for u in batch],
                direction=str(batch[0].direction),
                execution="transaction",
            )
        for migration in (u.migration for u in batch):
            analysis = migration.analysis
            if not migration.no_transaction and analysis.merged_blocks and not _wrapped(migration):
                log.info(
                    Event.MIGRATION_BLOCKS_MERGED,
                    file=migration.filename,
                    blocks=[f"lines {a}-{b}" for a, b in analysis.merged_blocks],
                    reason="every statement of a transactional migration runs in one transaction with its history row",
                )

    def next(self, queue: list[Unit], attempt: _Attempt) -> None:
        """Apply from the front of ``queue``, removing each unit as it commits; raise on a failure."""
        self.guard()
        batch = _next_batch(queue)
        self.report.in_flight = batch[0].label
        self.announce(batch)
        if batch[0].migration.no_transaction:
            self.without_transaction(batch[0], attempt)
            queue.pop(0)
            return
        sent: list[_SentMigration] = []
        failure: BaseException | None = None
        try:
            pipelined = self.conn.pipeline() if _pipelined(batch[0]) else contextlib.nullcontext()
            with self.watch(batch), pipelined as pipe:
                for unit in batch:
                    sent.append(_SentMigration(unit))  # listed before it is sent: an earlier error surfaces
                    _send(self.conn, sent[-1], self.config, reset=not self.pooled, pipe=pipe)
        except BaseException as exc:  # noqa: BLE001 - a psycopg error, or Interrupted: re-raised below, once the commits are counted
            failure = exc
        for done in sent:
            if not done.committed():
                break
            queue.pop(0)
            self.applied(done.unit, done.duration(), attempt.number if done is sent[0] else 1)
        if failure is None:
            self.report.in_flight = None
            return
        _rollback(self.conn)
        failed = next((s for s in sent if not s.committed()), None)
        self.report.in_flight = failed.migration.filename if failed else None
        if not isinstance(failure, psycopg.Error) or failed is None:
            raise failure  # Interrupted; or an error after the last COMMIT (the session reset)
        self.guard()  # a lost lease cancelled the statement: say that, not "canceling statement"
        command, stage = failed.failed_at(str(self.config.history_table))
        raise _failure(self.conn, failed.migration, failure, command, attempt, stage=stage) from failure

    def without_transaction(self, unit: Unit, attempt: _Attempt) -> None:
        """psql's way: each block of the file in its own transaction, other statements in autocommit; the
        history says 'started' meanwhile (an up's new row, a down's existing one)."""
        conn, config, migration = self.conn, self.config, unit.migration
        _history_write(migration, config, "before running it", lambda: _before_without_transaction(conn, unit, config))
        if unit.direction != Direction.REPEATABLE:
            log.info(Event.MIGRATION_STARTED_ROW_WRITTEN, version=migration.version, file=migration.filename)
        if not self.pooled:
            # Through a transaction pooler a session SET would land on some pooled server connection and stay
            # there for other clients: the statements run with the role's or database's own timeouts.
            conn.execute(_timeouts(config, local=False))
        with self.watch([unit]):
            self.blocks(unit, attempt)
        _history_write(migration, config, "after it ran", lambda: _after_without_transaction(conn, unit, config))
        if not self.pooled:
            for query in SESSION_RESET:
                conn.execute(query)
        self.applied(unit, 0.0, attempt.number)

    def blocks(self, unit: Unit, attempt: _Attempt) -> None:
        """A migration without a transaction, block by block; raise MigrationFailedError on a failure."""
        conn, migration = self.conn, unit.migration
        for block in migration.analysis.blocks:
            command: Command | None = None
            try:
                if block.explicit:
                    conn.execute(block.begin_sql or "BEGIN")
                for step in block.steps:
                    if isinstance(step, Echo):
                        _echo(migration, step)
                        continue
                    command = step
                    _run(conn.cursor(), migration, step)
                if block.explicit:
                    conn.execute("COMMIT")
            except psycopg.Error as exc:
                _rollback(conn)
                self.guard()
                lost = _connection_lost(conn, exc)
                invalid = () if lost else _invalid_indexes(conn, command)
                raise _failure(
                    conn,
                    migration,
                    exc,
                    command,
                    attempt,
                    left_started=unit.direction != Direction.REPEATABLE,
                    invalid_indexes=invalid,
                ) from exc


def _before_without_transaction(conn: psycopg.Connection[Any], unit: Unit, config: Config) -> None:
    migration, table = unit.migration, config.history_table
    if unit.direction == Direction.UP:
        down_sql, down_checksum = _down_sql(unit)
        history.insert_started(
            conn,
            table,
            version=migration.version,
            name=migration.name,
            checksum=migration.checksum,
            file_sha256=migration.file_sha256,
            hostname=config.hostname,
            down_sql=down_sql,
            down_checksum=down_checksum,
        )
    elif unit.direction == Direction.DOWN:
        history.mark_reverting(conn, table, migration.version)


def _after_without_transaction(conn: psycopg.Connection[Any], unit: Unit, config: Config) -> None:
    migration, table = unit.migration, config.history_table
    if unit.direction == Direction.UP:
        history.mark_applied(conn, table, migration.version)
    elif unit.direction == Direction.DOWN:
        history.delete_row(conn, table, migration.version)
    else:
        conn.execute(_record_query(unit, config))


def _history_write(migration: Migration, config: Config, when: str, write: Callable[[], Any]) -> Any:
    """A history write outside the migration's own transaction (no-transaction files); a history table a
    migration dropped is a clear error with the way back, not a traceback."""
    try:
        return write()
    except (pgerrors.UndefinedTable, pgerrors.InvalidSchemaName, pgerrors.UndefinedColumn) as exc:
        raise InconsistentError(
            f"pgsluice's history table {config.history_table} is gone or changed {when} {migration.filename} "
            f"({(exc.diag.message_primary or str(exc)).strip()}): a migration dropped, renamed or altered it, so "
            "nothing can be recorded",
            hint=f"recreate the history with 'pgsluice baseline {migration.version}' (it records every file up to "
            f"{migration.version} as applied, which they are), then run migrate again; or restore the table from "
            "the backup",
            location=Location(migration.filename, migration.version),
        ) from exc


def _invalid_indexes(conn: psycopg.Connection[Any], command: Command | None) -> tuple[str, ...]:
    """INVALID indexes the failed statement names: an older INVALID index elsewhere is not ours to report."""
    if command is None or conn.closed or conn.broken:
        return ()
    rows = conn.execute("SELECT indexrelid::regclass::text FROM pg_index WHERE NOT indisvalid ORDER BY 1").fetchall()
    return tuple(str(r[0]) for r in rows if str(r[0]).rsplit(".", 1)[-1].strip('"') in command.sql)


def _locator(batch: list[Unit]) -> progress.Locator:
    """Where the backend's current statement is, for migration.progress: the statements of ``batch`` with their
    file and line, listed only when a block ran long enough to be reported on (on the ticker thread)."""
    listed: list[progress.Locator] = []

    def statements() -> Iterator[tuple[str, str, int | None]]:
        for unit in batch:
            migration = unit.migration
            for command in migration.analysis.commands:
                where, _ = _where(migration, command, None)
                yield command.sql, unit.label, where.line

    def locate(query: str | None) -> tuple[str | None, int | None]:
        if not listed:
            listed.append(progress.statement_locator(statements(), batch[0].label if len(batch) == 1 else None))
        return listed[0](query)

    return locate


def _cause(exc: BaseException | None) -> str:
    if isinstance(exc, MigrationFailedError):
        return f"{type(exc.__cause__).__name__} (SQLSTATE {exc.server.sqlstate})"
    return type(exc).__name__


def _wrapped(migration: Migration) -> bool:
    """One BEGIN … COMMIT block around the whole file: nothing to say about merging."""
    analysis = migration.analysis
    if len(analysis.merged_blocks) != 1:
        return False
    first, last = analysis.merged_blocks[0]
    return all(
        first < c.piece.origin.line < last for c in analysis.commands if c.piece.origin.source == migration.filename
    )


def apply_plan(
    conn: psycopg.Connection[Any],
    units: list[Unit],
    config: Config,
    report: Report,
    on_applied: Callable[[AppliedMigration], None] = lambda _m: None,
    *,
    guard: Callable[[], None] = lambda: None,
    pooled: bool = False,
    observer: psycopg.Connection[Any] | None = None,
) -> None:
    """Apply ``units`` in order; each committed one is recorded in ``report`` as it is known.

    A migration that hit lock_timeout or a deadlock is retried (``--ddl-retries``, backoff from
    ``--ddl-retry-delay``); raises MigrationFailedError (7), DatabaseUnreachableError (3) or
    InconsistentError (6). ``guard`` raises when the migration lock was lost (it is called before each
    batch and when a statement fails: a lost lease cancels the running statement). ``pooled``: a
    transaction pooler is in the way, so no session state is set (see _Applier). ``observer``: an idle connection
    of pgsluice's own (the lock's) that migration.progress reads pg_stat_activity and the progress views on."""
    from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

    if sum(len(u.migration.analysis.steps) for u in units) > FREEZE_AFTER_STATEMENTS:
        # Hundreds of thousands of parsed statements are alive until the end: the collector's full passes would
        # walk them again and again while the apply allocates a cursor per statement (20 MB of INSERTs: apply
        # 13.3 s -> 7.3 s). They are never garbage before the run ends; freezing keeps them out of those passes.
        gc.freeze()
    applier = _Applier(conn, config, report, on_applied, guard=guard, pooled=pooled, observer=observer)
    queue = list(units)
    while queue:
        head = queue[0]

        def same_head(exc: BaseException, head: Unit = head) -> bool:
            return _retryable(exc) and bool(queue) and queue[0] is head

        def scheduled(state: Any, head: Unit = head) -> None:
            cause = state.outcome.exception() if state.outcome else None
            log.warning(
                Event.MIGRATION_RETRY_SCHEDULED,
                version=head.migration.version,
                file=head.label,
                retry_num=state.attempt_number,
                wait_seconds=round(state.upcoming_sleep, 3),
                cause=_cause(cause),
            )

        retrying = Retrying(
            stop=stop_after_attempt(config.ddl_retries + 1),
            wait=wait_exponential_jitter(
                initial=config.ddl_retry_delay_seconds,
                max=MAX_RETRY_DELAY_SECONDS,
                jitter=config.ddl_retry_delay_seconds,
            ),
            retry=retry_if_exception(same_head),
            before_sleep=scheduled,
            reraise=True,
        )
        try:
            for attempt in retrying:
                with attempt:
                    number = attempt.retry_state.attempt_number
                    applier.next(queue, _Attempt(number, last=number > config.ddl_retries))
        except MigrationFailedError as exc:
            if _retryable(exc) and queue and queue[0] is not head:
                continue  # later migrations committed before this one failed: it gets retries of its own
            # An expected failure: the event carries its location; a traceback would only repeat it.
            log.error(Event.MIGRATION_FAILED, **exc.report_fields())  # noqa: TRY400
            raise
