"""Every log event name, in one place: the README's list of stable events is generated from here.

Names are ``<area>.<past tense>`` [STYLE.md]; the data goes in key/values. Code logs
``log.info(Event.LOCK_ACQUIRED, key=…)``; a StrEnum member is the string itself, so the
JSON line says ``"event": "lock.acquired"``.
"""

from __future__ import annotations

from enum import StrEnum


class Event(StrEnum):
    """A stable log event name."""

    CONFIG_WARNING = "config.warning"
    WAIT_RETRY_SCHEDULED = "wait.retry_scheduled"
    WAIT_IN_RECOVERY = "wait.in_recovery"
    DB_CONNECTED = "db.connected"
    LOCK_WAITING = "lock.waiting"
    LOCK_ACQUIRED = "lock.acquired"
    LOCK_RELEASED = "lock.released"
    LOCK_POOLING_DETECTED = "lock.pooling_detected"
    LOCK_LEASE_RENEWED = "lock.lease_renewed"
    LOCK_LEASE_LOST = "lock.lease_lost"
    PREFLIGHT_SESSIONS_FOUND = "preflight.sessions_found"
    SAFETY_FINDING = "safety.finding"
    SAFETY_SKIPPED = "safety.skipped"
    DRIFT_DETECTED = "drift.detected"
    DRIFT_RECORDED = "drift.recorded"
    FILES_WARNING = "files.warning"
    FILES_INVALID = "files.invalid"
    HISTORY_UPGRADED = "history.upgraded"
    PLAN_READY = "plan.ready"
    PLAN_WARNING = "plan.warning"
    PLAN_FUTURE_VERSIONS = "plan.future_versions"
    PLAN_INVALID = "plan.invalid"
    BACKUP_SKIPPED = "backup.skipped"
    BACKUP_STARTED = "backup.started"
    BACKUP_DUMP_FINISHED = "backup.dump_finished"
    BACKUP_PROGRESS = "backup.progress"
    BACKUP_UPLOADED = "backup.uploaded"
    BACKUP_VERIFIED = "backup.verified"
    BACKUP_COMPLETED = "backup.completed"
    BACKUP_DELETED = "backup.deleted"
    BACKUP_ORPHAN_DELETED = "backup.orphan_deleted"
    MIGRATION_APPLYING = "migration.applying"
    MIGRATION_BLOCKS_MERGED = "migration.blocks_merged"
    MIGRATION_ECHOED = "migration.echoed"
    MIGRATION_STARTED_ROW_WRITTEN = "migration.started_row_written"
    MIGRATION_RETRY_SCHEDULED = "migration.retry_scheduled"
    MIGRATION_PROGRESS = "migration.progress"
    MIGRATION_APPLIED = "migration.applied"
    MIGRATION_FAILED = "migration.failed"
    MIGRATION_CONNECTION_LOST = "migration.connection_lost"
    RUN_UP_TO_DATE = "run.up_to_date"
    FLEET_CANARY_WAITING = "fleet.canary_waiting"
    TARGET_FINISHED = "target.finished"
    FLEET_FINISHED = "fleet.finished"
    BASELINE_RECORDED = "baseline.recorded"
    RESOLVE_RECORDED = "resolve.recorded"
    RESTORE_SETTINGS_DROPPED = "restore.settings_dropped"
    RESTORE_COMPLETED = "restore.completed"
    LIBRARY_LOGGED = "library.logged"
    REPORT_TERMINATION_LOG_UNWRITABLE = "report.termination_log_unwritable"
    RUN_CRASHED = "run.crashed"
    RUN_FINISHED = "run.finished"


ABOUT: dict[Event, str] = {
    Event.CONFIG_WARNING: "a setting works but is risky (a password given as a flag)",
    Event.WAIT_RETRY_SCHEDULED: "the database did not answer yet: `retry_num`, `wait_seconds`, `cause`",
    Event.WAIT_IN_RECOVERY: "the server is a standby or in recovery (not ready for migrations): retried like "
    "an unreachable one",
    Event.DB_CONNECTED: "connected: host, port, database, user, server version (never the password)",
    Event.LOCK_WAITING: "another runner holds the lock: `holder_pid`, `holder_application_name`, "
    "`holder_client_addr`, `holder_since`",
    Event.LOCK_ACQUIRED: "the migration lock is ours: `wait_seconds`",
    Event.LOCK_RELEASED: "the lock was released (or went with the session)",
    Event.LOCK_POOLING_DETECTED: "a transaction pooler is between pgsluice and the server: `strategy` chosen",
    Event.LOCK_LEASE_RENEWED: "(debug) the lease lock's heartbeat renewed it: `expires_at`",
    Event.LOCK_LEASE_LOST: "the lease could not be renewed: the running statement is cancelled, the run stops",
    Event.PREFLIGHT_SESSIONS_FOUND: "sessions the migration's locks would queue behind: `sessions` (pid, "
    "application_name, state, age_seconds, locks, reasons, the query's first 200 characters)",
    Event.SAFETY_FINDING: "the safety gate's finding: `rule`, `severity`, `action` (block, warn, allowed; "
    "ignored at debug), `file`, `line`, `table`, `lock`, `message`, `safe_form`, `allowed_reason`",
    Event.SAFETY_SKIPPED: "the safety gate could not read the live facts in time (a lock, a timeout): `reason`; "
    "with `--unsafe-ddl warn` the run goes on, with `block` it stops (exit 5)",
    Event.DRIFT_DETECTED: "the schema changed outside pgsluice since its last run (a warning): `added`, `removed`, "
    "`changed` (object names), `recorded_at`; with `status --drift` also when it did not (`drifted`: false)",
    Event.DRIFT_RECORDED: "(debug) the schema's fingerprint after applying was recorded (a warning when it "
    "could not be)",
    Event.FILES_WARNING: "something about a file worth knowing; nothing stops",
    Event.FILES_INVALID: "a file stops the run before anything is applied: `file`, `line`, `problem`, `hint`",
    Event.HISTORY_UPGRADED: "pgsluice changed its own history table's shape, once, under the lock",
    Event.PLAN_READY: "what will be applied: `pending` (or `reverting` for down), `repeatables`, `deferred` "
    "(beyond --target), `current_version`, `target_version`",
    Event.PLAN_WARNING: "files and history disagree in a way that does not stop the run",
    Event.PLAN_FUTURE_VERSIONS: "applied versions newer than every file (a newer release's): `versions`; accepted "
    "unless `--strict-future`",
    Event.PLAN_INVALID: "files and history disagree: nothing is applied",
    Event.BACKUP_SKIPPED: "no backup target configured",
    Event.BACKUP_STARTED: "pg_dump started: `object`, `compression`, `part_size_bytes`",
    Event.BACKUP_DUMP_FINISHED: "(debug) pg_dump exited",
    Event.BACKUP_PROGRESS: "a long backup: `bytes_dumped`, `bytes_uploaded`, `rate_bytes_per_second`, "
    "`elapsed_seconds`, `percent_estimate` (of the database's size: the dump is compressed)",
    Event.BACKUP_UPLOADED: "the dump is stored: `object`, `bytes`, `sha256`",
    Event.BACKUP_VERIFIED: "the dump was read back through pg_restore --list",
    Event.BACKUP_COMPLETED: "the manifest is written: the backup is complete",
    Event.BACKUP_DELETED: "retention removed a backup",
    Event.BACKUP_ORPHAN_DELETED: "retention removed a dump without a manifest",
    Event.MIGRATION_APPLYING: "a migration (or a batch of them) is being sent",
    Event.MIGRATION_BLOCKS_MERGED: "a file's BEGIN … COMMIT blocks run as one transaction: `file`, `blocks` (lines)",
    Event.MIGRATION_ECHOED: "a migration's `\\echo`: `file`, `line`, `message`",
    Event.MIGRATION_STARTED_ROW_WRITTEN: "a no-transaction migration's `started` row is committed",
    Event.MIGRATION_RETRY_SCHEDULED: "a migration hit lock_timeout or a deadlock and will be retried",
    Event.MIGRATION_PROGRESS: "a long statement: `file`, `line`, `elapsed_seconds`, and from PostgreSQL's progress "
    "views `command`, `phase`, `percent`; or `waiting_for` the sessions it is queued behind",
    Event.MIGRATION_APPLIED: "a migration committed: `version`, `file`, `duration_seconds`, `execution`",
    Event.MIGRATION_FAILED: "a migration failed: `file`, `line`, `column`, `sqlstate`",
    Event.MIGRATION_CONNECTION_LOST: "the connection dropped during a migration",
    Event.RUN_UP_TO_DATE: "nothing to apply",
    Event.FLEET_CANARY_WAITING: "fleet: this shard waits for the canary targets to be current",
    Event.TARGET_FINISHED: "fleet: one target done: `target`, `outcome`, `exit_code`, `applied`, `durations`, "
    "and on failure `reason`",
    Event.FLEET_FINISHED: "fleet: this pod's targets done: `targets`, counts per `outcomes`, `failed` targets",
    Event.BASELINE_RECORDED: "baseline recorded versions as applied",
    Event.RESOLVE_RECORDED: "a half-applied migration was settled",
    Event.RESTORE_SETTINGS_DROPPED: "a newer pg_restore's session settings the server lacks were dropped",
    Event.RESTORE_COMPLETED: "a restore committed",
    Event.LIBRARY_LOGGED: "a library (psycopg) logged something, redacted",
    Event.REPORT_TERMINATION_LOG_UNWRITABLE: "the termination message could not be written",
    Event.RUN_CRASHED: "an internal error (a bug): the traceback",
    Event.RUN_FINISHED: "last, always: `outcome`, `exit_code`, `applied`, `current_version`, `durations`, "
    "`backup`, `safety` (findings per action), and on failure `reason`, `file`, `line`, `column`, `sqlstate`",
}


def readme_list() -> str:
    """The README's list of stable events, one bullet each."""
    return "\n".join(f"- `{event.value}`: {ABOUT[event]}" for event in Event)
