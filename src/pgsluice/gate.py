"""The safety gate's steps in a run: preflight, drift and findings before applying; the fingerprint after.

The judging is pure and lives in ``safety``; this module fetches what it needs (one catalog
query for the facts, one for the preflight, one for the drift check), logs what it found and
raises what refuses the run. Only a run with something pending calls it: a no-op run pays
nothing.

Every query here runs in a transaction of its own with a short ``lock_timeout`` and a
``statement_timeout`` of its own (an inherited one cannot cut it short): a catalog function
that takes ACCESS SHARE (a view's definition, a partition tree, a table's size) never
queues the gate behind another session's lock. What cannot be read in time is said in a
warning and the run goes on, except the facts under ``--unsafe-ddl block``: a gate that
cannot judge does not let the migration through (exit 5, transient: the next attempt may
find the lock gone).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import psycopg
import structlog

from pgsluice import __version__
from pgsluice.errors import InconsistentError, LockTimeoutError
from pgsluice.events import Event

if TYPE_CHECKING:
    from pgsluice.config import Config
    from pgsluice.migrations import Migration
    from pgsluice.problems import Problem
    from pgsluice.report import Report
    from pgsluice.safety import SafetyReport

log = structlog.get_logger("pgsluice.gate")

LOCK_TIMEOUT_MS = 2000
"""How long a gate query may wait for a lock on a catalog object before giving up."""
STATEMENT_TIMEOUT_MS = 60_000
"""How long a gate query may run (the fingerprint of 2,000 tables takes ~0.1 s)."""


@contextmanager
def bounded(conn: psycopg.Connection[Any]) -> Iterator[None]:
    """A transaction of its own with the gate's lock and statement timeouts (``SET LOCAL``: through a
    transaction pooler too)."""
    with conn.transaction():
        conn.execute(f"SET LOCAL lock_timeout = {LOCK_TIMEOUT_MS}")
        conn.execute(f"SET LOCAL statement_timeout = {STATEMENT_TIMEOUT_MS}")
        yield


def _recorded(conn: psycopg.Connection[Any], config: Config) -> bool:
    """Whether the fingerprint's table exists with pgsluice's shape (asked first: an error would abort the gate's
    transaction; a table of another shape under that name is not ours to read or clear)."""
    from psycopg import sql

    from pgsluice.safety.drift import drift_table

    table = drift_table(config.history_table)
    name = sql.Identifier(table.schema, table.name).as_string(conn)
    row = conn.execute(
        "SELECT count(*) = 2 FROM pg_attribute WHERE attrelid = to_regclass(%s) AND NOT attisdropped"
        " AND attname IN ('fingerprint', 'digest')",
        (name,),
    ).fetchone()
    return bool(row and row[0])


def _reason(exc: psycopg.Error, config: Config) -> str:
    return config.redactor(" ".join(str(exc).split()))[:300]


def log_findings(safety: SafetyReport) -> None:
    """One ``safety.finding`` per finding: a warning when it blocks or warns, info when the file accepted it."""
    from pgsluice.safety import Action

    for finding in safety.findings:
        if finding.action == Action.IGNORED:
            log.debug(Event.SAFETY_FINDING, **finding.log_fields())
        elif finding.action == Action.ALLOWED:
            log.info(Event.SAFETY_FINDING, **finding.log_fields())
        else:
            log.warning(Event.SAFETY_FINDING, **finding.log_fields())


def unknown_rules(migrations: Sequence[Migration]) -> list[Problem]:
    """A ``-- pgsluice: allow <rule>`` naming no rule (a typo) accepts nothing: one Problem each, for a warning."""
    from pgsluice.problems import Problem
    from pgsluice.safety import rule_ids

    known = set(rule_ids())
    return [
        Problem(
            f"{migration.filename}: '-- pgsluice: allow {rule}' names no safety rule, so it accepts nothing",
            "use a rule id from the README's Safety gate table",
            filename=migration.filename,
            version=None if migration.repeatable else migration.version,
        )
        for migration in migrations
        for rule in sorted({rule for rule, _ in migration.directives.allows} - known)
    ]


def judge(config: Config, conn: psycopg.Connection[Any], pending: Sequence[Migration]) -> SafetyReport | None:
    """The pending migrations judged against the live database (one catalog query); None with --unsafe-ddl off.

    psycopg.Error (a lock or a timeout among them) when the facts cannot be read."""
    if config.unsafe_ddl == "off" or not pending:
        return None
    from pgsluice.safety import Policy, check_migrations, fetch_facts, touched_tables

    with bounded(conn):
        facts = fetch_facts(conn, touched_tables(pending))
    return check_migrations(pending, facts, Policy.from_config(config))


def judge_offline(config: Config, migrations: Sequence[Migration]) -> SafetyReport:
    """``lint``: each migration judged alone against an assumed server version (``--pg-version``), no sizes."""
    from pgsluice.safety import Policy, assumed_facts, check_migrations

    return check_migrations(migrations, assumed_facts(config.pg_version), Policy.from_config(config), isolated=True)


def before_applying(
    config: Config, conn: psycopg.Connection[Any], pending: Sequence[Migration], report: Report
) -> None:
    """Under the lock, before the backup, on the connection the migrations will use: who they would queue
    behind, drift, then the safety findings (exit 10 when one blocks). Nothing is changed."""
    preflight(config, conn, pending)
    check_drift(config, conn)
    for problem in unknown_rules(pending):
        log.warning(Event.FILES_WARNING, file=problem.filename, problem=problem.message, hint=problem.hint)
    try:
        safety = judge(config, conn, pending)
    except psycopg.Error as exc:
        reason = _reason(exc, config)
        if config.unsafe_ddl == "block":
            raise LockTimeoutError(
                f"the safety gate could not read the live facts of the tables the migrations touch: {reason}",
                hint="a session holds a lock on them (see preflight.sessions_found); nothing was applied, run again "
                "once it is gone",
            ) from exc
        log.warning(Event.SAFETY_SKIPPED, reason=reason)
        return
    if safety is None:
        return
    log_findings(safety)
    if safety.findings:
        report.details["safety"] = safety.counts()
    refusal = safety.error()
    if refusal is not None:
        raise refusal


def preflight(config: Config, conn: psycopg.Connection[Any], pending: Sequence[Migration]) -> None:
    """A warning naming the sessions that hold or wait for locks on the touched tables (and their partitions),
    or whose transaction has been open longer than --long-transaction: the migrations' DDL would queue behind
    them. A preflight that cannot run is a warning too: it only informs."""
    from pgsluice.safety import touched_tables
    from pgsluice.safety.preflight import find_blocking_sessions

    try:
        with bounded(conn):
            sessions = find_blocking_sessions(
                conn, touched_tables(pending), long_transaction_seconds=config.long_transaction_seconds
            )
    except psycopg.Error as exc:
        log.warning(Event.PREFLIGHT_SESSIONS_FOUND, count=None, reason=_reason(exc, config))
        return
    if sessions:
        log.warning(Event.PREFLIGHT_SESSIONS_FOUND, count=len(sessions), sessions=[s.log_fields() for s in sessions])


def check_drift(config: Config, conn: psycopg.Connection[Any], *, on_demand: bool = False) -> bool:
    """Compare the live schema with the fingerprint of pgsluice's last run: ``drift.detected`` (a warning) when it
    changed, InconsistentError (6) with ``--on-drift fail``. True when it drifted. Nothing recorded yet (a first
    run, or a history from before pgsluice recorded fingerprints), or a check that could not run in time: no
    judgement, False."""
    from pgsluice.safety.drift import check_drift as compare

    try:
        with bounded(conn):
            recorded = _recorded(conn, config)
            # A fleet's schema target compares its own schema only.
            drift = compare(conn, config.history_table, schema=config.search_schema) if recorded else None
    except psycopg.Error as exc:
        log.warning(Event.DRIFT_DETECTED, drifted=None, reason=f"not checked: {_reason(exc, config)}")
        return False
    if drift is None:
        if on_demand:
            log.info(
                Event.DRIFT_DETECTED,
                drifted=None,
                reason="no fingerprint recorded yet: a run that applies something records one",
            )
        return False
    if not drift:
        if on_demand:
            log.info(Event.DRIFT_DETECTED, drifted=False, **drift.log_fields())
        return False
    log.warning(Event.DRIFT_DETECTED, drifted=True, **drift.log_fields())
    if config.on_drift == "fail" and not on_demand:
        raise InconsistentError(
            f"the schema changed outside pgsluice since its last run: {drift.summary()}",
            hint="find who changed it (the objects are named in drift.detected); fold the change into a migration, "
            "or accept it by running with --on-drift warn once (the fingerprint is recorded after the run)",
        )
    return True


def record(config: Config, conn: psycopg.Connection[Any], version: int | None) -> None:
    """After a run that changed the schema (also one that failed part way: what it committed, or what a
    no-transaction file left, is pgsluice's doing): its fingerprint, for the next run's drift check. A failure
    here is a warning, not the run's failure; the stale fingerprint is then cleared, so that the next run finds
    no fingerprint rather than false drift."""
    from pgsluice.safety.drift import clear_fingerprint, record_fingerprint

    try:
        with bounded(conn):
            record_fingerprint(
                conn,
                config.history_table,
                migration_version=version,
                pgsluice_version=__version__,
                schema=config.search_schema,
            )
    except psycopg.Error as exc:
        cleared = True
        try:
            with bounded(conn):
                if _recorded(conn, config):
                    clear_fingerprint(conn, config.history_table)
        except psycopg.Error:
            cleared = False
        log.warning(Event.DRIFT_RECORDED, recorded=False, cleared=cleared, error=_reason(exc, config))
        return
    log.debug(Event.DRIFT_RECORDED, recorded=True, migration_version=version)
