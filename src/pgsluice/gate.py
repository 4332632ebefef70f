"""The safety gate's steps in a run: drift, findings and preflight before applying; the fingerprint after.

The judging is pure and lives in ``safety``; this module fetches what it needs (one catalog
query for the facts, one for the preflight, one for the drift check), logs what it found and
raises what refuses the run. Only a run with something pending calls it: a no-op run pays
nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import psycopg
import structlog

from pgsluice import __version__
from pgsluice.errors import InconsistentError
from pgsluice.events import Event

if TYPE_CHECKING:
    from pgsluice.config import Config
    from pgsluice.migrations import Migration
    from pgsluice.report import Report
    from pgsluice.safety import SafetyReport

log = structlog.get_logger("pgsluice.gate")


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


def judge(config: Config, conn: psycopg.Connection[Any], pending: Sequence[Migration]) -> SafetyReport | None:
    """The pending migrations judged against the live database (one catalog query); None with --unsafe-ddl off."""
    if config.unsafe_ddl == "off" or not pending:
        return None
    from pgsluice.safety import Policy, check_migrations, fetch_facts, touched_tables

    facts = fetch_facts(conn, touched_tables(pending))
    return check_migrations(pending, facts, Policy.from_config(config))


def judge_offline(config: Config, migrations: Sequence[Migration]) -> SafetyReport:
    """``lint``: each migration judged alone against an assumed server version (``--pg-version``), no sizes."""
    from pgsluice.safety import Policy, assumed_facts, check_migrations

    return check_migrations(migrations, assumed_facts(config.pg_version), Policy.from_config(config), isolated=True)


def before_applying(
    config: Config, conn: psycopg.Connection[Any], pending: Sequence[Migration], report: Report
) -> None:
    """Under the lock, before the backup: drift, the safety findings (exit 10 when one blocks), and who the
    migrations would queue behind. Nothing is changed."""
    check_drift(config, conn)
    safety = judge(config, conn, pending)
    if safety is not None:
        log_findings(safety)
        if safety.findings:
            report.details["safety"] = safety.counts()
        refusal = safety.error()
        if refusal is not None:
            raise refusal
    preflight(config, conn, pending)


def preflight(config: Config, conn: psycopg.Connection[Any], pending: Sequence[Migration]) -> None:
    """A warning naming the sessions that hold or wait for locks on the touched tables, or whose transaction has
    been open longer than --long-transaction: the migrations' DDL would queue behind them."""
    from pgsluice.safety import touched_tables
    from pgsluice.safety.preflight import find_blocking_sessions

    sessions = find_blocking_sessions(
        conn, touched_tables(pending), long_transaction_seconds=config.long_transaction_seconds
    )
    if sessions:
        log.warning(Event.PREFLIGHT_SESSIONS_FOUND, count=len(sessions), sessions=[s.log_fields() for s in sessions])


def check_drift(config: Config, conn: psycopg.Connection[Any], *, on_demand: bool = False) -> bool:
    """Compare the live schema with the fingerprint of pgsluice's last run: ``drift.detected`` (a warning) when it
    changed, InconsistentError (6) with ``--on-drift fail``. True when it drifted. Nothing recorded yet (a first
    run, or a history from before pgsluice recorded fingerprints): no judgement, False."""
    from pgsluice.safety.drift import check_drift as compare

    drift = compare(conn, config.history_table, schema=config.search_schema)  # a fleet's schema target: its own
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
    """After a run that changed the schema: its fingerprint, for the next run's drift check. A failure here is a
    warning, not the run's failure: the migrations are applied and recorded."""
    from pgsluice.safety.drift import record_fingerprint

    try:
        record_fingerprint(
            conn,
            config.history_table,
            migration_version=version,
            pgsluice_version=__version__,
            schema=config.search_schema,
        )
    except psycopg.Error as exc:
        log.warning(Event.DRIFT_RECORDED, recorded=False, error=config.redactor(" ".join(str(exc).split())))
        return
    log.debug(Event.DRIFT_RECORDED, recorded=True, migration_version=version)
