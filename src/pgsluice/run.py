"""Sequences the steps of each command: wait → lock → plan → backup → apply → report.

No SQL and no storage calls here: each step lives in its own module.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from typing import TYPE_CHECKING, Any

import psycopg
import structlog

from pgsluice import history, views
from pgsluice.config import Config
from pgsluice.db import connect, server_target
from pgsluice.errors import ConfigError, ExitCode, InconsistentError
from pgsluice.lock import advisory_lock
from pgsluice.migrations import Discovery, Migration, Problem, discover
from pgsluice.plan import STARTED, Plan, make_plan
from pgsluice.report import Report
from pgsluice.source import read_folder
from pgsluice.wait import wait_for_database

if TYPE_CHECKING:
    from pgsluice.pgtools import ClientTool

log = structlog.get_logger("pgsluice.run")


def _inconsistent(problems: tuple[Problem, ...] | list[Problem], what: str) -> InconsistentError:
    first = problems[0]
    more = f" (and {len(problems) - 1} more problem(s), all logged)" if len(problems) > 1 else ""
    return InconsistentError(f"{what}: {first.message}{more}", hint=first.hint, problems=[str(p) for p in problems])


def _log_problems(event: str, problems: tuple[Problem, ...] | list[Problem], warning: bool = False) -> None:
    for problem in problems:
        fields = {"file": problem.filename, "line": problem.line, "version": problem.version, "hint": problem.hint}
        if warning:
            log.warning(event, problem=problem.message, **fields)
        else:
            log.error(event, problem=problem.message, **fields)


def _discover(config: Config, report: Report) -> Discovery:
    started = time.monotonic()
    found = discover(read_folder(config.migrations_dir))
    report.timed("discover", started)
    _log_problems("files.warning", found.warnings, warning=True)
    if found.problems:
        _log_problems("files.invalid", found.problems)
        raise _inconsistent(found.problems, "the migrations folder is invalid, nothing was applied")
    return found


@contextmanager
def _session(config: Config, report: Report, *, locked: bool) -> Iterator[psycopg.Connection[Any]]:
    """Wait for the database; with ``locked``, hold the advisory lock on that connection for the block.

    Reading the history and recording baselines happen on it; migrations run on a connection
    of their own (a migration's session reset must not touch the lock).
    """
    started = time.monotonic()
    first, waited = wait_for_database(config, "lock" if locked else "read")
    report.timed("wait", started)
    with closing(first):
        log.info("db.connected", wait_seconds=round(waited, 3), **server_target(first))
        if not locked:
            yield first
            return
        started = time.monotonic()
        with advisory_lock(first, config.lock_key, config.lock_timeout_seconds, config.lock_poll_max_seconds) as w:
            report.lock_wait_seconds = round(w, 4)
            report.timed("lock", started)
            yield first


def _plan(
    config: Config,
    report: Report,
    conn: psycopg.Connection[Any],
    found: Discovery,
    check_sql: bool,
    *,
    create: bool = False,
) -> Plan:
    """Read the history (creating the table first when ``create``) and compare it with the files."""
    started = time.monotonic()
    rows = history.read_history(conn, config.history_table)
    if rows is None:
        if create:
            history.ensure_table(conn, config.history_table)
        rows = []
    plan = make_plan(found.migrations, rows, allow_out_of_order=config.allow_out_of_order, check_sql=check_sql)
    report.timed("plan", started)
    report.pending_before = [m.version for m in plan.pending]
    report.current_version = plan.current_version
    report.target_version = plan.target_version
    _log_problems("plan.warning", plan.warnings, warning=True)
    return plan


def run_migrate(config: Config, report: Report) -> ExitCode:
    """The gate: exit 0 only when every migration is applied and the history says so."""
    from pgsluice.apply import AppliedMigration, apply_plan

    found = _discover(config, report)
    with _pg_dump_ahead(config) as pg_dump, _session(config, report, locked=True) as conn:
        plan = _plan(config, report, conn, found, check_sql=True, create=True)
        log.info(
            "plan.ready",
            pending=report.pending_before,
            current_version=plan.current_version,
            target_version=plan.target_version,
        )
        if plan.problems:
            _log_problems("plan.invalid", plan.problems)
            raise _inconsistent(plan.problems, "the history does not match the files, nothing was applied")
        if not plan.pending:
            log.info("run.up_to_date", current_version=plan.current_version)
            return ExitCode.OK

        with closing(connect(config, "apply")) as work:
            work.prepare_threshold = None  # the session reset deallocates prepared statements
            backup_step(config, report, work, plan, pg_dump)

            started = time.monotonic()

            def running(migration: Migration | None) -> None:
                report.failed_migration = migration.filename if migration else None

            def applied(done: AppliedMigration) -> None:
                report.applied.append(done.version)

            try:
                apply_plan(work, plan.pending, config, on_applied=applied, on_running=running)
                report.failed_migration = None
            finally:
                report.timed("apply", started)

        # Trust, then verify: the history must now agree with the files.
        after = make_plan(
            found.migrations,
            history.read_history(conn, config.history_table) or [],
            check_sql=False,
            allow_out_of_order=config.allow_out_of_order,
        )
        if after.pending or after.problems:
            problems = list(after.problems) or [
                Problem(
                    f"versions {[m.version for m in after.pending]} are still pending after applying",
                    "report this as a bug",
                )
            ]
            raise _inconsistent(problems, "the schema is not current after applying")
        report.current_version = after.current_version
        return ExitCode.OK


@contextmanager
def _pg_dump_ahead(config: Config) -> Iterator[ClientTool | None]:
    """pg_dump found and asked its version before the wait (pgtools.ClientTool); None without a backup target."""
    if config.backup_url in (None, "none"):
        yield None
        return
    from pgsluice.pgtools import ClientTool

    with ClientTool(config.pg_dump) as pg_dump:
        yield pg_dump


def backup_step(
    config: Config, report: Report, conn: psycopg.Connection[Any], plan: Plan, pg_dump: ClientTool | None
) -> None:
    """The backup taken under the lock, after the plan, before the first migration."""
    if pg_dump is None:
        log.warning("backup.skipped", reason="no backup target configured (--backup-url)")
        return
    from pgsluice.backup import take_backup

    started = time.monotonic()
    report.backup = take_backup(config, conn, plan, pg_dump).as_report()
    report.timed("backup", started)


def run_status(config: Config, report: Report) -> ExitCode:
    """Every migration with its state; with --exit-code, 9 when anything is pending."""
    found = _discover(config, report)
    with _session(config, report, locked=False) as conn:
        plan = _plan(config, report, conn, found, check_sql=False)
    views.print_status(plan, as_json=config.json_output)
    if config.exit_code:
        if plan.problems:
            raise _inconsistent(plan.problems, "the history does not match the files")
        if plan.pending:
            return ExitCode.PENDING
    return ExitCode.OK


def run_plan(config: Config, report: Report) -> ExitCode:
    """What migrate would run, in order, with every check; changes nothing."""
    found = _discover(config, report)
    with _session(config, report, locked=False) as conn:
        plan = _plan(config, report, conn, found, check_sql=True)
    views.print_plan(plan, as_json=config.json_output)
    if plan.problems:
        _log_problems("plan.invalid", plan.problems)
        raise _inconsistent(plan.problems, "migrate would stop before applying anything")
    return ExitCode.OK


def run_baseline(config: Config, report: Report) -> ExitCode:
    """Record every file up to VERSION as applied without running it."""
    assert config.version is not None  # noqa: S101 - argparse requires it
    found = _discover(config, report)
    chosen = [m for m in found.migrations if m.version <= config.version]
    if not chosen:
        raise ConfigError(f"baseline {config.version}: no migration file has a version up to {config.version}")
    with _session(config, report, locked=True) as conn:
        history.ensure_table(conn, config.history_table)
        known = {row.version for row in history.read_history(conn, config.history_table) or []}
        rows = [(m.version, m.name, m.checksum, m.file_sha256) for m in chosen if m.version not in known]
        history.insert_baseline(conn, config.history_table, rows, config.hostname)
    report.applied = [r[0] for r in rows]
    log.info("baseline.recorded", versions=report.applied, already_recorded=sorted(known & {m.version for m in chosen}))
    return ExitCode.OK


def run_resolve(config: Config, report: Report) -> ExitCode:
    """Settle a half-applied no-transaction migration: mark it applied, or forget it."""
    assert config.version is not None  # noqa: S101 - argparse requires it
    with _session(config, report, locked=True) as conn:
        rows = {row.version: row for row in history.read_history(conn, config.history_table) or []}
        row = rows.get(config.version)
        if row is None or row.status != STARTED:
            state = row.status if row else "not in the history"
            raise ConfigError(
                f"resolve {config.version}: version {config.version} is not half-applied (it is {state})",
                hint="only a 'started' row needs resolving; see 'pgsluice status'",
            )
        if config.resolve_as == "applied":
            history.mark_applied(conn, config.history_table, config.version, execution="no-transaction, resolved")
        else:
            history.delete_started(conn, config.history_table, config.version)
    log.info("resolve.recorded", version=config.version, resolved_as=config.resolve_as)
    return ExitCode.OK


def run_lint(config: Config, report: Report) -> ExitCode:
    """Offline checks of the whole folder; no database."""
    found = discover(read_folder(config.migrations_dir))
    problems = list(found.problems)
    warnings = list(found.warnings)
    for migration in found.migrations:
        problems.extend(migration.sql_problems())
        warnings.extend(migration.warnings())
    views.print_lint(found, problems, warnings)
    if problems:
        raise _inconsistent(problems, "lint found problems")
    return ExitCode.OK


def run_new(config: Config, report: Report) -> ExitCode:
    """Create the next numbered migration file."""
    from pgsluice.scaffold import create_migration

    path = create_migration(config.migrations_dir, config.name or "")
    print(path)
    report.details["created"] = str(path)
    return ExitCode.OK


def run_backup(config: Config, report: Report) -> ExitCode:
    """Take a backup now, under the lock, the same way migrate does."""
    if config.backup_url in (None, "none"):
        raise ConfigError("backup: no backup target configured", hint="set --backup-url / PGSLUICE_BACKUP_URL")
    found = _discover(config, report)
    with _pg_dump_ahead(config) as pg_dump, _session(config, report, locked=True) as conn:
        backup_step(config, report, conn, _plan(config, report, conn, found, check_sql=False), pg_dump)
    return ExitCode.OK


def run_list(config: Config, report: Report) -> ExitCode:
    """List the complete backups under the target, newest first."""
    from pgsluice.backup import list_backups
    from pgsluice.storage import open_target

    if config.backup_url in (None, "none"):
        raise ConfigError("backups: no backup target configured", hint="set --backup-url / PGSLUICE_BACKUP_URL")
    views.print_backups(list_backups(open_target(config)), as_json=config.json_output)
    return ExitCode.OK


def run_restore(config: Config, report: Report) -> ExitCode:
    """Restore one backup into --target-database."""
    from pgsluice.backup import find_backup
    from pgsluice.restore import restore_backup
    from pgsluice.storage import open_target

    if config.backup_url in (None, "none"):
        raise ConfigError("restore: no backup target configured", hint="set --backup-url / PGSLUICE_BACKUP_URL")
    assert config.backup_id is not None and config.target_database_url is not None  # noqa: S101 - argparse
    target = open_target(config)
    info = find_backup(target, config.backup_id)
    started = time.monotonic()
    size = restore_backup(config, info, target, config.target_database_url, config.clean)
    report.timed("restore", started)
    report.backup = {"id": info.id, "object": info.object, "bytes": size, "sha256": info.sha256}
    log.info("restore.completed", id=info.id, bytes=size)
    return ExitCode.OK


COMMANDS: dict[str, Callable[[Config, Report], ExitCode]] = {
    "migrate": run_migrate,
    "status": run_status,
    "plan": run_plan,
    "baseline": run_baseline,
    "resolve": run_resolve,
    "lint": run_lint,
    "new": run_new,
    "backup": run_backup,
    "backups": run_list,
    "restore": run_restore,
}


def dispatch(config: Config, report: Report) -> ExitCode:
    """Run ``config.command``."""
    return COMMANDS[config.command](config, report)
