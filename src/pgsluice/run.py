"""Sequences the steps of each command: wait → lock → plan → backup → apply → report.

No SQL and no storage calls here: each step lives in its own module.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psycopg
import structlog

from pgsluice import gate, history, views
from pgsluice.config import Config
from pgsluice.db import connect, detect_transaction_pooling, server_facts
from pgsluice.errors import (
    ConfigError,
    ExitCode,
    InconsistentError,
    Location,
    MigrationFailedError,
    PgsluiceError,
    PoolingDetectedError,
)
from pgsluice.events import Event
from pgsluice.history import History
from pgsluice.lock import AdvisoryLock, LeaseLock, Lock, read_lease
from pgsluice.migrations import Discovery, discover
from pgsluice.plan import DownPlan, Plan, make_down_plan, make_plan
from pgsluice.problems import Problem
from pgsluice.records import Execution, RowStatus
from pgsluice.report import Report
from pgsluice.source import read_folder
from pgsluice.wait import wait_for_database

if TYPE_CHECKING:
    from pgsluice.backup import BackupPurpose
    from pgsluice.pgtools import ClientTool

log = structlog.get_logger("pgsluice.run")


def _inconsistent(problems: Sequence[Problem], what: str) -> InconsistentError:
    first = problems[0]
    more = f" (and {len(problems) - 1} more problem(s), all logged)" if len(problems) > 1 else ""
    return InconsistentError(
        f"{what}: {first.message}{more}",
        hint=first.hint,
        location=Location(file=first.filename, version=first.version, line=first.line),
    )


def _log_problems(event: Event, problems: Sequence[Problem], *, warning: bool = False) -> None:
    for problem in problems:
        fields = {"file": problem.filename, "line": problem.line, "version": problem.version, "hint": problem.hint}
        if warning:
            log.warning(event, problem=problem.message, **fields)
        else:
            log.error(event, problem=problem.message, **fields)


_FLEET_DISCOVERY: dict[tuple[Any, ...], Discovery] = {}
"""A fleet reads and analyses its folder once for all its targets (they share one set of files)."""


def _discover(config: Config, report: Report) -> Discovery:
    key = (config.migrations_dir, config.variables, config.max_file_size_bytes, config.max_statements)
    with report.step("discover"):
        found = _FLEET_DISCOVERY.get(key) if config.target is not None else None
        if found is None:
            folder = read_folder(config.migrations_dir, max_file_bytes=config.max_file_size_bytes)
            found = discover(folder, dict(config.variables), max_statements=config.max_statements)
            if config.target is not None:
                _FLEET_DISCOVERY[key] = found
    _log_problems(Event.FILES_WARNING, found.warnings, warning=True)
    if found.problems:
        _log_problems(Event.FILES_INVALID, found.problems)
        raise _inconsistent(found.problems, "the migrations folder is invalid, nothing was applied")
    return found


@dataclass
class Session:
    """The first connection of a run, the migration lock held on it, and what it learnt of the way there."""

    conn: psycopg.Connection[Any]
    lock: Lock | None = None
    pooled: bool = False
    """A transaction pooler sits in between: no session state is set or relied upon."""


def _choose_lock(config: Config, session: Session) -> Lock:
    """The advisory lock, or the lease when asked for (or, with auto, when a transaction pooler is in the way);
    with advisory through a transaction pooler, a usage error before any lock is taken."""
    evidence = detect_transaction_pooling(session.conn, config)
    session.pooled = evidence is not None
    strategy = config.lock_strategy
    if evidence is not None:
        chosen = "lease" if strategy in ("lease", "auto") else "none (refused)"
        log.warning(Event.LOCK_POOLING_DETECTED, evidence=evidence, strategy=chosen)
        if strategy == "advisory":
            raise PoolingDetectedError(
                f"a transaction pooler is between pgsluice and the database ({evidence}): a session advisory lock "
                "would be taken on one server connection and released (or not) on another",
                hint="connect directly or through a session-mode pooler (a second URL for migrations), or use "
                "--lock-strategy lease (or auto), which works through transaction pooling",
            )
    if strategy == "lease" or (strategy == "auto" and (evidence is not None or _proxied(session.conn))):
        return LeaseLock(
            session.conn,
            config.history_table,
            config.lock_key,
            timeout_seconds=config.lock_timeout_seconds,
            lease_seconds=config.lease_seconds,
            heartbeat_seconds=config.lease_heartbeat_seconds,
            holder=f"{config.hostname} (pgsluice {config.command})",
        )
    return AdvisoryLock(session.conn, config.lock_key, config.lock_timeout_seconds, config.lock_poll_max_seconds)


def _proxied(conn: psycopg.Connection[Any]) -> bool:
    """Whether the server sees another client port than this connection's own: a proxy or pooler is in between
    (with ``auto`` its mode does not matter: the lease works in every mode)."""
    import socket

    try:
        with socket.socket(fileno=os.dup(conn.pgconn.socket)) as sock:
            local = sock.getsockname()
    except OSError:
        return False
    if not isinstance(local, tuple):
        return False  # a Unix socket: no proxy
    row = conn.execute("SELECT inet_client_port()").fetchone()
    return bool(row and row[0] is not None and int(row[0]) != int(local[1]))


@contextmanager
def _session(config: Config, report: Report, *, locked: bool) -> Iterator[Session]:
    """Wait for the database; with ``locked``, hold the migration lock for the block.

    Reading the history and recording baselines happen on this connection; migrations run on a
    connection of their own (a migration's session reset must not touch the lock).
    """
    with report.step("wait"):
        first, waited = wait_for_database(config, "lock" if locked else "read")
    with closing(first):
        report.connections.append(first)
        log.info(Event.DB_CONNECTED, wait_seconds=round(waited, 3), **server_facts(first))
        session = Session(first)
        if not locked:
            yield session
            return
        with report.step("lock"):
            session.lock = _choose_lock(config, session)
            report.lock_wait_seconds = round(session.lock.acquire(), 4)
        try:
            yield session
        finally:
            session.lock.release()


def _read_history(config: Config, conn: psycopg.Connection[Any], found: Discovery, *, create: bool = False) -> History:
    """The history (and repeatable) rows; with ``create``, the tables are made when missing."""
    repeatables = bool(found.repeatables)
    read = history.read_history(conn, config.history_table, repeatables=repeatables)
    if read is None:
        if create:
            history.ensure_table(conn, config.history_table, repeatables=repeatables)
        return History([], [])
    return read


def _plan(
    config: Config,
    report: Report,
    conn: psycopg.Connection[Any],
    found: Discovery,
    *,
    check_sql: bool,
    create: bool = False,
) -> tuple[Plan, History]:
    """Read the history (creating the table first when ``create``) and compare it with the files."""
    with report.step("plan"):
        read = _read_history(config, conn, found, create=create)
        plan = _compare(config, found, read, check_sql=check_sql)
    report.pending_before = [m.version for m in plan.pending]
    report.current_version = plan.current_version
    report.target_version = plan.target_version
    _log_problems(Event.PLAN_WARNING, plan.warnings, warning=True)
    if plan.future:
        log.warning(
            Event.PLAN_FUTURE_VERSIONS,
            versions=list(plan.future),
            hint="a newer release applied them (a rollback, or a rolling update): accepted; --strict-future refuses",
        )
    if plan.deferred:
        report.details["deferred"] = [m.version for m in plan.deferred]
    return plan, read


def _compare(config: Config, found: Discovery, read: History, *, check_sql: bool) -> Plan:
    return make_plan(
        found.migrations,
        read.rows,
        allow_out_of_order=config.allow_out_of_order,
        check_sql=check_sql,
        history_table=(config.history_table.schema, config.history_table.name),
        strict_future=config.strict_future,
        target=config.target_version if config.command in ("migrate", "plan") else None,
        repeatables=found.repeatables,
        repeatable_rows=read.repeatables,
    )


def run_migrate(config: Config, report: Report) -> ExitCode:
    """The gate: exit 0 only when every migration is applied and the history says so."""
    found = _discover(config, report)
    with _pg_dump_ahead(config) as pg_dump, _session(config, report, locked=True) as session:
        conn = session.conn
        plan, _ = _plan(config, report, conn, found, check_sql=True, create=True)
        log.info(
            Event.PLAN_READY,
            pending=report.pending_before,
            repeatables=[m.name for m in plan.outdated],
            deferred=[m.version for m in plan.deferred],
            current_version=plan.current_version,
            target_version=plan.target_version,
        )
        if plan.problems:
            _log_problems(Event.PLAN_INVALID, plan.problems)
            raise _inconsistent(plan.problems, "the history does not match the files, nothing was applied")
        if not plan.pending and not plan.outdated:
            log.info(Event.RUN_UP_TO_DATE, current_version=plan.current_version)
            return ExitCode.OK
        # Imported only with work to do: the backup brings the object-storage client, a no-op run stays light.
        from pgsluice.apply import Direction, Unit
        from pgsluice.backup import BackupPurpose

        history.upgrade_table(conn, config.history_table, (m.version for m in plan.pending))
        if plan.outdated:
            history.ensure_table(conn, config.history_table, repeatables=True)
        units = [Unit(m, Direction.UP, down=found.down_file(m)) for m in plan.pending]
        units += [Unit(m, Direction.REPEATABLE) for m in plan.outdated]
        purpose = BackupPurpose(plan.current_version, plan.target_version, tuple(u.migration.filename for u in units))
        pending = [u.migration for u in units]
        _apply(
            config,
            report,
            session,
            units=units,
            purpose=purpose,
            pg_dump=pg_dump,
            before=lambda work: gate.before_applying(config, work, pending, report),
        )

        # Trust, then verify: the history must now agree with the files.
        after = _compare(config, found, _read_history(config, conn, found), check_sql=False)
        if after.pending or after.problems or after.outdated:
            problems = list(after.problems) or [
                Problem(
                    f"versions {[m.version for m in after.pending]} and repeatables "
                    f"{[m.name for m in after.outdated]} are still pending after applying",
                    "report this as a bug",
                )
            ]
            raise _inconsistent(problems, "the schema is not current after applying")
        report.current_version = after.current_version
        return ExitCode.OK


def _apply(
    config: Config,
    report: Report,
    session: Session,
    *,
    units: list[Any],
    purpose: BackupPurpose,
    pg_dump: ClientTool | None,
    before: Callable[[psycopg.Connection[Any]], None],
) -> None:
    """On a connection of its own: the safety gate (``before``), the backup, then the units; a lost lease cancels
    the running statement."""
    from pgsluice.apply import apply_plan

    lock = session.lock
    assert lock is not None  # noqa: S101 - applied only under the lock
    with closing(connect(config, "apply")) as work:
        report.connections.append(work)
        lock.on_lost(work.cancel)
        with report.step("safety"):
            before(work)  # on the connection the migrations use: their search_path, TimeZone and role
        backup_step(config, report, work, purpose, pg_dump)
        lock.check()
        with report.step("apply"):
            try:
                apply_plan(work, units, config, report, guard=lock.check, pooled=session.pooled, observer=session.conn)
            except MigrationFailedError:
                # What committed before the failure, and what a no-transaction file left, is the schema now:
                # the next run's drift check must not report it as a change made outside pgsluice.
                gate.record(config, work, report.current_version)
                raise
        gate.record(config, work, purpose.to_version)  # on work: the lock connection may be the lease's heartbeat


def run_down(config: Config, report: Report) -> ExitCode:
    """Undo applied migrations, newest first, each in one transaction with the deletion of its row."""
    from pgsluice.apply import Direction, Unit
    from pgsluice.backup import BackupPurpose

    args = config.args
    found = _discover(config, report)
    with _pg_dump_ahead(config) as pg_dump, _session(config, report, locked=True) as session:
        conn = session.conn
        plan, read = _plan(config, report, conn, found, check_sql=False)
        down: DownPlan = make_down_plan(
            found, read.rows, to=args.down_to, steps=args.down_steps, variables=config.variables
        )
        reverting = [step.version for step in down.steps]
        log.info(
            Event.PLAN_READY,
            reverting=reverting,
            sources={str(step.version): step.source for step in down.steps},
            current_version=plan.current_version,
        )
        _log_problems(Event.PLAN_WARNING, down.warnings, warning=True)
        if down.problems:
            _log_problems(Event.PLAN_INVALID, down.problems)
            raise _inconsistent(down.problems, "down would not undo everything it was asked to, nothing was undone")
        if not down.steps:
            log.info(Event.RUN_UP_TO_DATE, current_version=plan.current_version, reason="nothing to undo")
            return ExitCode.OK
        history.upgrade_table(conn, config.history_table, ())
        remaining = [r.version for r in read.rows if r.version not in set(reverting)]
        purpose = BackupPurpose(
            plan.current_version, max(remaining, default=0), tuple(s.migration.filename for s in down.steps)
        )
        units = [Unit(s.migration, Direction.DOWN) for s in down.steps]
        # No safety gate and no drift refusal on the way back: a rollback is the last resort, and the gate must
        # never be what blocks it. Who the down SQL would queue behind is still worth a warning.
        reverted = [u.migration for u in units]
        _apply(
            config,
            report,
            session,
            units=units,
            purpose=purpose,
            pg_dump=pg_dump,
            before=lambda work: gate.preflight(config, work, reverted),
        )
        left = {r.version for r in _read_history(config, conn, found).rows} & set(reverting)
        if left:
            raise InconsistentError(
                f"versions {sorted(left)} are still in the history after their down migrations ran",
                hint="report this as a bug",
            )
        report.current_version = max(remaining, default=None)
        return ExitCode.OK


@contextmanager
def _pg_dump_ahead(config: Config) -> Iterator[ClientTool | None]:
    """pg_dump found and asked its version, and the backup target written to, before the wait; None without a
    backup target."""
    if config.backup_url is None:
        yield None
        return
    from pgsluice.pgtools import ClientTool

    with ClientTool(config.pg_dump) as pg_dump:
        _check_backup_target(config)  # while `pg_dump --version` runs
        pg_dump.check_compression_level(config.backup_compression_level)
        yield pg_dump


def _check_backup_target(config: Config) -> None:
    """A backup target that cannot take a backup is exit 2 now, not exit 8 (retried) after the wait and the lock;
    one the check could not reach is a warning: the backup tries again."""
    from pgsluice.storage import check_writable

    warning = check_writable(config)
    if warning is not None:
        log.warning(Event.CONFIG_WARNING, warning=warning)


def backup_step(
    config: Config, report: Report, conn: psycopg.Connection[Any], purpose: BackupPurpose, pg_dump: ClientTool | None
) -> None:
    """The backup taken under the lock, after the plan, before the first migration."""
    if pg_dump is None:
        log.warning(Event.BACKUP_SKIPPED, reason="no backup target configured (--backup-url)")
        return
    from pgsluice.backup import take_backup

    with report.step("backup"):
        report.backup = take_backup(config, conn, purpose, pg_dump)


def run_status(config: Config, report: Report) -> ExitCode:
    """Every migration with its state; with --exit-code, 9 when anything is pending."""
    found = _discover(config, report)
    with _session(config, report, locked=False) as session:
        conn = session.conn
        plan, _ = _plan(config, report, conn, found, check_sql=False)
        lease = read_lease(conn, config.history_table, config.lock_key)
        drifted = config.args.check_drift and gate.check_drift(config, conn, on_demand=True)
    views.print_status(plan, as_json=config.args.json_output, lease=lease)
    if config.args.state_as_exit_code:
        if plan.problems:
            raise _inconsistent(plan.problems, "the history does not match the files")
        if drifted:
            raise InconsistentError(
                "the schema changed outside pgsluice since its last run (see drift.detected)",
                hint="fold the change into a migration; the next run that applies something records the schema",
            )
        if plan.pending:
            versions = [m.version for m in plan.pending]
            report.reason = f"{len(versions)} migration(s) pending: versions {versions}"
            return ExitCode.PENDING
    return ExitCode.OK


def run_plan(config: Config, report: Report) -> ExitCode:
    """What migrate would run, in order, with every check; changes nothing."""
    found = _discover(config, report)
    with _session(config, report, locked=False) as session:
        conn = session.conn
        plan, _ = _plan(config, report, conn, found, check_sql=True)
        safety = None if plan.problems else gate.judge(config, conn, [*plan.pending, *plan.outdated])
    views.print_plan(plan, as_json=config.args.json_output, safety=safety)
    if plan.problems:
        _log_problems(Event.PLAN_INVALID, plan.problems)
        raise _inconsistent(plan.problems, "migrate would stop before applying anything")
    refusal = safety.error() if safety is not None else None
    if refusal is not None:
        raise refusal
    return ExitCode.OK


def run_baseline(config: Config, report: Report) -> ExitCode:
    """Record every file up to VERSION as applied without running it."""
    version = config.args.version
    assert version is not None  # noqa: S101 - argparse requires it
    found = _discover(config, report)
    chosen = [m for m in found.migrations if m.version <= version]
    if not chosen:
        raise ConfigError(f"baseline {version}: no migration file has a version up to {version}")
    with _session(config, report, locked=True) as session:
        conn = session.conn
        history.ensure_table(conn, config.history_table)
        history.upgrade_table(conn, config.history_table, (m.version for m in chosen))
        known = {row.version for row in _read_history(config, conn, found).rows}
        rows = [(m.version, m.name, m.checksum, m.file_sha256) for m in chosen if m.version not in known]
        history.insert_baseline(conn, config.history_table, rows, config.hostname)
        with closing(connect(config, "apply")) as work:  # not the lock connection: the lease's heartbeat uses it
            gate.record(config, work, version)  # the schema as it is is what the baseline adopts
    report.applied = [r[0] for r in rows]
    log.info(
        Event.BASELINE_RECORDED,
        versions=report.applied,
        already_recorded=sorted(known & {m.version for m in chosen}),
    )
    return ExitCode.OK


def run_resolve(config: Config, report: Report) -> ExitCode:
    """Settle a half-applied no-transaction migration: mark it applied, or forget it."""
    version = config.args.version
    assert version is not None  # noqa: S101 - argparse requires it
    with _session(config, report, locked=True) as session:
        conn = session.conn
        read = history.read_history(conn, config.history_table)
        rows = {row.version: row for row in (read.rows if read else [])}
        row = rows.get(version)
        if row is None or row.status != RowStatus.STARTED:
            state = row.status if row else "not in the history"
            raise ConfigError(
                f"resolve {version}: version {version} is not half-applied (it is {state})",
                hint="only a 'started' row needs resolving; see 'pgsluice status'",
            )
        if config.args.resolve_as == "applied":
            history.mark_applied(conn, config.history_table, version, execution=Execution.RESOLVED)
        else:
            history.delete_started(conn, config.history_table, version)
    log.info(Event.RESOLVE_RECORDED, version=version, resolved_as=config.args.resolve_as)
    return ExitCode.OK


def run_lint(config: Config, report: Report) -> ExitCode:
    """Offline checks of the whole folder; no database. Stricter than migrate: SQL pgsluice's parser cannot
    parse is an error unless the file accepts it."""
    with report.step("discover"):
        folder = read_folder(config.migrations_dir, max_file_bytes=config.max_file_size_bytes)
        found = discover(folder, dict(config.variables), max_statements=config.max_statements)
    problems = list(found.problems)
    warnings = list(found.warnings)
    notes: list[Problem] = []
    for migration in (*found.migrations, *found.repeatables):
        problems.extend(migration.sql_problems(strict_syntax=True))
        warnings.extend(migration.warnings(strict_syntax=True))
        notes.extend(migration.lint_notes())
        problems.extend(found.down_problems(migration))
        down = found.down_file(migration)
        if down is not None:
            problems.extend(down.sql_problems(strict_syntax=True))
            warnings.extend(down.warnings(strict_syntax=True))
    warnings.extend(gate.unknown_rules([*found.migrations, *found.repeatables]))
    safety = None if config.unsafe_ddl == "off" else gate.judge_offline(config, [*found.migrations, *found.repeatables])
    views.print_lint(found, problems, warnings, notes, safety=safety)
    if problems:
        raise _inconsistent(problems, "lint found problems")
    refusal = safety.error() if safety is not None else None
    if refusal is not None:
        raise refusal
    return ExitCode.OK


def run_new(config: Config, report: Report) -> ExitCode:
    """Create the next numbered migration file."""
    from pgsluice.scaffold import create_migration

    path = create_migration(config.migrations_dir, config.args.name or "")
    views.print_line(str(path))
    report.details["created"] = str(path)
    return ExitCode.OK


def _require_store(config: Config) -> None:
    if config.backup_url is None:
        raise ConfigError(
            f"{config.command}: no backup target configured", hint="set --backup-url / PGSLUICE_BACKUP_URL"
        )


def run_backup(config: Config, report: Report) -> ExitCode:
    """Take a backup now, under the lock, the same way migrate does."""
    _require_store(config)
    found = _discover(config, report)
    from pgsluice.backup import BackupPurpose

    with _pg_dump_ahead(config) as pg_dump, _session(config, report, locked=True) as session:
        conn = session.conn
        plan, _ = _plan(config, report, conn, found, check_sql=False)
        backup_step(config, report, conn, BackupPurpose(plan.current_version, plan.current_version, ()), pg_dump)
    return ExitCode.OK


def run_backups(config: Config, report: Report) -> ExitCode:  # noqa: ARG001 - every runner has one signature
    """List the complete backups in the store, newest first."""
    from pgsluice.catalog import list_backups
    from pgsluice.storage import open_store

    _require_store(config)
    views.print_backups(list_backups(open_store(config)), as_json=config.args.json_output)
    return ExitCode.OK


def run_restore(config: Config, report: Report) -> ExitCode:
    """Restore one backup into the target database."""
    from pgsluice.catalog import find_backup
    from pgsluice.report import BackupSummary
    from pgsluice.restore import restore_backup
    from pgsluice.storage import open_store

    _require_store(config)
    backup_id, target = config.args.backup_id, config.restore_database_url
    assert backup_id is not None and target is not None  # noqa: S101 - argparse and load_config
    store = open_store(config)
    info = find_backup(store, backup_id)
    with report.step("restore"):
        size = restore_backup(config, info, store, target, config.args.clean)
    report.backup = BackupSummary(info.id, info.object_url, size, info.sha256)
    log.info(Event.RESTORE_COMPLETED, id=info.id, bytes=size)
    return ExitCode.OK


RUNNERS: dict[str, Callable[[Config, Report], ExitCode]] = {
    "migrate": run_migrate,
    "status": run_status,
    "plan": run_plan,
    "baseline": run_baseline,
    "resolve": run_resolve,
    "down": run_down,
    "lint": run_lint,
    "new": run_new,
    "backup": run_backup,
    "backups": run_backups,
    "restore": run_restore,
}


def dispatch(config: Config, report: Report) -> ExitCode:
    """Run ``config.command`` (over a fleet's targets with --targets or --targets-query)."""
    if config.targets_file is not None or config.targets_query is not None:
        return run_fleet(config, report)
    return RUNNERS[config.command](config, report)


def _base_rows(config: Config, query: str) -> list[tuple[Any, ...]]:
    """``--targets-query`` on the base database."""
    with closing(wait_for_database(config, "targets")[0]) as conn:
        return conn.execute(query).fetchall()


def _canary_state(config: Config, found: Discovery, fingerprint: str) -> Callable[[Any], str | None]:
    """For the waiting shards: None when a canary target is current, else why not ('failed: …' when it failed)."""
    from pgsluice import fleet

    def state(target: fleet.Target) -> str | None:
        own = fleet.target_config(config, target)
        with closing(wait_for_database(own, "canary")[0]) as conn:
            failed = history.read_canary(conn, own.history_table, fingerprint)
            if failed:
                return f"failed: {failed}"
            read = _read_history(own, conn, found)
            plan = _compare(own, found, read, check_sql=False)
            return None if not plan.pending and not plan.problems and not plan.outdated else "pending"

    return state


def _record_canaries(config: Config, outcomes: Sequence[Any], fingerprint: str) -> None:
    from pgsluice import fleet

    for outcome in outcomes:
        own = fleet.target_config(config, outcome.target)
        reason = None if outcome.code == ExitCode.OK else f"exit {int(outcome.code)}: {outcome.reason}"
        with closing(wait_for_database(own, "canary")[0]) as conn:
            history.record_canary(conn, own.history_table, fingerprint, reason)


def run_fleet(config: Config, report: Report) -> ExitCode:
    """This pod's share of a fleet's targets, each run as a single run; target.finished each, fleet.finished last."""
    from pgsluice import fleet

    targets = fleet.read_targets(config, lambda query: _base_rows(config, query))
    canaries, mine = fleet.shard_of(targets, config.shard_index, config.shard_count, config.canary)
    if config.command == "status":
        return _fleet_status(config, report, [*canaries, *mine])
    found = _discover(config, report)
    fingerprint = found.fingerprint()
    runs = fleet.Fleet(config, RUNNERS[config.command])
    outcomes = runs.run_all(canaries)
    if canaries:
        _record_canaries(config, outcomes, fingerprint)
    if any(o.code != ExitCode.OK for o in outcomes):
        mine = []  # a failed canary stops its own shard too
    elif config.canary and config.shard_index != 0:
        fleet.wait_for_canaries(config, targets[: config.canary], _canary_state(config, found, fingerprint))
    outcomes += runs.run_all(mine)
    code = fleet.summarize(outcomes, len(canaries) + len(mine))
    failed = [str(o.target) for o in outcomes if o.code != ExitCode.OK]
    if failed:
        report.reason = f"{len(failed)} of {len(outcomes)} target(s) failed: {', '.join(failed[:20])}"
    report.details["targets"] = len(canaries) + len(mine)
    return code


def _fleet_status(config: Config, report: Report, targets: Sequence[Any]) -> ExitCode:
    """One line per target: current version, pending, problems; --exit-code over the fleet."""
    from pgsluice import fleet

    found = _discover(config, report)
    rows: list[dict[str, Any]] = []
    for target in targets:
        own = fleet.target_config(config, target)
        try:
            with _session(own, Report(command="status"), locked=False) as session:
                plan, _ = _plan(own, Report(command="status"), session.conn, found, check_sql=False)
            rows.append(views.target_status(str(target), plan))
        except PgsluiceError as exc:
            rows.append({"target": str(target), "error": own.redactor(str(exc)), "exit_code": int(exc.exit_code)})
    views.print_fleet_status(rows, as_json=config.args.json_output)
    if not config.args.state_as_exit_code:
        return ExitCode.OK
    codes = [ExitCode.INCONSISTENT if r.get("problems") else r.get("exit_code", 0) for r in rows]
    pending = [r["target"] for r in rows if r.get("pending")]
    worst = fleet.pod_exit_code(codes)
    if worst != ExitCode.OK:
        report.reason = f"targets with problems: {[r['target'] for r in rows if r.get('problems') or r.get('error')]}"
        return worst
    if pending:
        report.reason = f"{len(pending)} target(s) with pending migrations: {pending[:20]}"
        return ExitCode.PENDING
    return ExitCode.OK
