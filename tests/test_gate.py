"""The safety gate, drift and progress in a real run (issues 12 and 15): the real CLI in OS processes against a
real PostgreSQL, with real rows, a real open transaction holding a lock, and a real manual ALTER TABLE.

The rules themselves are proven one by one in test_safety.py, the fingerprint in test_drift.py and the progress
watcher in test_progress.py; here, what a user of ``migrate``, ``plan``, ``lint`` and ``status --drift`` sees."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.support.cli import finished, poll, run_cli, start, write_migrations
from tests.support.databases import Database

pytestmark = pytest.mark.integration

SMALL_LARGE = {"PGSLUICE_LARGE_TABLE_ROWS": "1000", "PGSLUICE_HUGE_TABLE_ROWS": "1000000"}
"""5,000 real rows make a table large for these runs; the defaults' reasoning is in the README."""

INDEX = "-- an index the application needs\nCREATE INDEX big_a ON big (a);\n"


@pytest.fixture
def big(db: Database) -> Database:
    """A table of 5,000 real rows, analysed: reltuples says so, nothing writes the catalog."""
    with db.connect() as conn:
        conn.execute("CREATE TABLE big (id int PRIMARY KEY, a int)")
        conn.execute("INSERT INTO big SELECT g, g % 97 FROM generate_series(1, 5000) g")
        conn.execute("ANALYZE big")
    return db


HOLDS = {
    "AccessShareLock": "SELECT count(*) FROM big",
    "AccessExclusiveLock": "LOCK TABLE big IN ACCESS EXCLUSIVE MODE",
}


@pytest.fixture(params=["AccessShareLock"])
def holder(big: Database, request: pytest.FixtureRequest) -> Iterator[psycopg.Connection[Any]]:
    """Another application's session, idle in a transaction that read ``big`` (ACCESS SHARE held) or locked it."""
    conn = psycopg.connect(big.url, application_name="report-job", autocommit=True)
    conn.execute("BEGIN")
    conn.execute(HOLDS[request.param])
    try:
        yield conn
    finally:
        conn.close()


def applied(db: Database) -> list[int]:
    if db.scalar("SELECT to_regclass('public.pgsluice_history') IS NULL"):
        return []
    return [r[0] for r in db.query("SELECT version FROM pgsluice_history ORDER BY version")]


def test_block_refuses_before_anything_is_applied_with_exit_10(big: Database, tmp_path: Path) -> None:
    """With --unsafe-ddl block, a CREATE INDEX without CONCURRENTLY on a large table stops the run before the
    backup and before the first file: exit 10, the termination message names file and line, nothing applied."""
    files = write_migrations(tmp_path / "m", {"001_safe.sql": "CREATE TABLE fresh (id int);\n", "002_index.sql": INDEX})
    termination = tmp_path / "termination"
    env = {**SMALL_LARGE, "PGSLUICE_UNSAFE_DDL": "block", "PGSLUICE_TERMINATION_LOG": str(termination)}
    result = run_cli("migrate", url=big.url, migrations=files, env=env)
    assert result.returncode == 10, result.stderr
    finding = result.event("safety.finding")
    assert (finding["rule"], finding["action"], finding["file"], finding["line"]) == (
        "index-not-concurrent",
        "block",
        "002_index.sql",
        2,
    )
    assert finding["table"] == "public.big" and "CONCURRENTLY" in finding["safe_form"]
    assert result.finished["safety"] == {"block": 1}
    message = termination.read_text()
    assert "safety gate" in message and "002_index.sql" in message, message
    assert applied(big) == [] and big.scalar("SELECT to_regclass('public.fresh')") is None
    assert "backup.started" not in result.names() and "migration.applying" not in result.names()


def test_warn_logs_and_applies_and_an_accepted_finding_says_why(big: Database, tmp_path: Path) -> None:
    """The default (warn): the finding is a warning and the run goes on. A file that accepts the rule with a
    reason is applied under block too, and the reason is logged."""
    files = write_migrations(tmp_path / "m", {"001_index.sql": INDEX})
    result = run_cli("migrate", url=big.url, migrations=files, env=SMALL_LARGE)
    assert result.returncode == 0, result.stderr
    assert result.event("safety.finding")["action"] == "warn"
    assert result.finished["safety"] == {"warn": 1}
    assert applied(big) == [1]

    accepted = "-- pgsluice: allow index-not-concurrent -- the table is written at night only\n"
    files = write_migrations(tmp_path / "m", {"002_index.sql": accepted + "CREATE INDEX big_id_a ON big (id, a);\n"})
    result = run_cli("migrate", url=big.url, migrations=files, env={**SMALL_LARGE, "PGSLUICE_UNSAFE_DDL": "block"})
    assert result.returncode == 0, result.stderr
    finding = result.event("safety.finding")
    assert finding["action"] == "allowed"
    assert finding["allowed_reason"] == "the table is written at night only"
    assert applied(big) == [1, 2]


def test_a_small_table_and_a_table_new_in_the_run_are_not_findings(db: Database, tmp_path: Path) -> None:
    """The gate knows the live database: the same statement on a 10-row table is a small finding, below the
    threshold (counted, logged at debug only); on a table the run creates, no finding at all."""
    with db.connect() as conn:
        conn.execute("CREATE TABLE tiny (a int); INSERT INTO tiny SELECT generate_series(1, 10); ANALYZE tiny")
    files = write_migrations(
        tmp_path / "m",
        {
            "001_tiny.sql": "CREATE INDEX tiny_a ON tiny (a);\n",
            "002_new.sql": "CREATE TABLE fresh (a int);\nCREATE INDEX fresh_a ON fresh (a);\n",
        },
    )
    result = run_cli("migrate", url=db.url, migrations=files, env={**SMALL_LARGE, "PGSLUICE_UNSAFE_DDL": "block"})
    assert result.returncode == 0, result.stderr
    assert result.all("safety.finding") == []
    assert result.finished["safety"] == {"ignored": 1}


def test_plan_shows_each_finding_beside_its_migration(big: Database, tmp_path: Path) -> None:
    """plan (text and --json) lists the finding under its file, with the table's size; with block, plan exits 10
    as migrate would, and changes nothing."""
    files = write_migrations(tmp_path / "m", {"001_index.sql": INDEX, "002_other.sql": "SELECT 1;\n"})
    text = run_cli("plan", url=big.url, migrations=files, env=SMALL_LARGE)
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    at = next(i for i, line in enumerate(lines) if "apply 001_index.sql" in line)
    assert "index-not-concurrent" in lines[at + 1] and "rows" in lines[at + 1], text.stdout
    assert "apply 002_other.sql" in lines[at + 2]

    doc = json.loads(run_cli("plan", "--json", url=big.url, migrations=files, env=SMALL_LARGE).stdout)
    first, second = doc["pending"]
    assert [f["rule"] for f in first["findings"]] == ["index-not-concurrent"] and second["findings"] == []
    assert doc["server_version"]
    blocked = run_cli("plan", url=big.url, migrations=files, env={**SMALL_LARGE, "PGSLUICE_UNSAFE_DDL": "block"})
    assert blocked.returncode == 10
    assert applied(big) == []


def test_lint_judges_offline_against_the_assumed_version(tmp_path: Path) -> None:
    """lint has no database: it assumes --pg-version (default 14) and says which findings the live database
    decides. An error-level rule (CONCURRENTLY on 14.0-14.3) shows with --pg-version 14.2 only, and refuses
    (exit 10) with --unsafe-ddl block."""
    files = write_migrations(
        tmp_path / "m",
        {
            "001_t.sql": "CREATE TABLE t (a int);\n",
            "002_index.sql": "-- pgsluice: no-transaction\nCREATE INDEX CONCURRENTLY t_a ON t (a);\n",
            "003_type.sql": "ALTER TABLE t ALTER COLUMN a TYPE bigint;\n",
        },
    )
    result = run_cli("lint", migrations=files)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "column-type-rewrite" in result.stdout and "the live database decides" in result.stdout
    assert "index-corruption-pg14" not in result.stdout
    assert "assuming PostgreSQL 14" in result.stdout
    old = run_cli("lint", "--pg-version", "14.2", migrations=files)
    assert "warn error index-corruption-pg14" in old.stdout and old.returncode == 0, old.stdout
    blocked = run_cli("lint", "--pg-version", "14.2", "--unsafe-ddl", "block", migrations=files)
    assert blocked.returncode == 10 and "block error index-corruption-pg14" in blocked.stdout, blocked.stdout
    bad = run_cli("lint", "--pg-version", "fourteen", migrations=files)
    assert bad.returncode == 2 and "PostgreSQL version" in bad.stderr


@pytest.mark.parametrize("holder", list(HOLDS), indirect=True)
def test_preflight_names_the_open_transaction_the_ddl_would_queue_behind(
    big: Database, holder: psycopg.Connection[Any], tmp_path: Path
) -> None:
    """A real session idle in a transaction that read (or locked) the table: before the backup, a warning names
    its pid, application_name, state and lock, without the gate itself queueing behind an ACCESS EXCLUSIVE
    lock; the ALTER then times out on its lock (exit 7) with nothing applied."""
    files = write_migrations(tmp_path / "m", {"001_alter.sql": "ALTER TABLE big ADD COLUMN note text;\n"})
    env = {"PGSLUICE_DDL_LOCK_TIMEOUT": "300ms", "PGSLUICE_DDL_RETRIES": "0"}
    result = run_cli("migrate", url=big.url, migrations=files, env=env, timeout=60)
    sessions = result.event("preflight.sessions_found")["sessions"]
    named = next(s for s in sessions if s["pid"] == holder.info.backend_pid)
    assert named["application_name"] == "report-job"
    assert named["state"] == "idle in transaction"
    mode = next(m for m, q in HOLDS.items() if q == named["query"])
    assert any(f"{mode} on public.big" in lock for lock in named["locks"])
    assert result.names().index("preflight.sessions_found") < result.names().index("migration.failed")
    assert result.returncode == 7 and applied(big) == []


def test_a_manual_change_is_drift_and_a_migration_is_not(db: Database, tmp_path: Path) -> None:
    """After a pgsluice run, status --drift finds nothing; a manual ALTER TABLE is named by the next run
    (a warning by default, exit 6 and nothing applied with --on-drift fail) and by status --drift --exit-code."""
    base = {"001_t.sql": "CREATE TABLE t (id int PRIMARY KEY);\n"}
    assert run_cli("migrate", url=db.url, migrations=write_migrations(tmp_path / "m", base)).returncode == 0
    clean = run_cli("status", "--drift", "--exit-code", url=db.url, migrations=tmp_path / "m")
    assert clean.returncode == 0 and clean.event("drift.detected")["drifted"] is False

    with db.connect() as conn:
        conn.execute("ALTER TABLE t ADD COLUMN added_by_hand text")
    status = run_cli("status", "--drift", "--exit-code", url=db.url, migrations=tmp_path / "m")
    assert status.returncode == 6
    assert status.event("drift.detected")["added"] == ["column public.t.added_by_hand"]

    folder = write_migrations(tmp_path / "m", {"002_u.sql": "CREATE TABLE u (id int);\n"})
    refused = run_cli("migrate", url=db.url, migrations=folder, env={"PGSLUICE_ON_DRIFT": "fail"})
    assert refused.returncode == 6 and "changed outside pgsluice" in refused.finished["reason"]
    assert applied(db) == [1]
    warned = run_cli("migrate", url=db.url, migrations=folder)
    assert warned.returncode == 0 and warned.event("drift.detected")["added"] == ["column public.t.added_by_hand"]
    assert applied(db) == [1, 2]
    # The run recorded the schema as it is now: the manual column is accepted, the migration's table is no drift.
    after = run_cli("status", "--drift", "--exit-code", url=db.url, migrations=folder)
    assert after.returncode == 0 and after.event("drift.detected")["drifted"] is False


def test_a_statement_waiting_on_a_lock_reports_progress_with_file_line_and_blocker(
    big: Database, holder: psycopg.Connection[Any], tmp_path: Path
) -> None:
    """A migration queued behind a real open transaction is not a hung pod: migration.progress names the file,
    the line, and the session it waits for; once that session commits, the run finishes (exit 0)."""
    files = write_migrations(tmp_path / "m", {"001_alter.sql": "SELECT 1;\n\nALTER TABLE big ADD COLUMN note text;\n"})
    env = {"PGSLUICE_PROGRESS_AFTER": "300ms", "PGSLUICE_PROGRESS_INTERVAL": "300ms", "PGSLUICE_DDL_LOCK_TIMEOUT": "0"}
    log = tmp_path / "run.log"
    proc = start(big.url, files, "migrate", log=log, env=env)
    try:
        poll(lambda: '"waiting_for"' in log.read_text(), "a migration.progress event naming the blocker")
    finally:
        holder.execute("COMMIT")
    result = finished(proc, log)
    assert result.returncode == 0, result.stderr
    event = next(e for e in result.all("migration.progress") if e.get("waiting_for"))
    assert (event["file"], event["line"]) == ("001_alter.sql", 3)
    assert event["waiting_for"][0]["pid"] == holder.info.backend_pid
    assert event["waiting_for"][0]["application_name"] == "report-job"
    assert result.event("migration.applied")["file"] == "001_alter.sql"


def test_a_short_run_has_no_progress_events(db: Database, tmp_path: Path) -> None:
    """The default threshold (10 s): a quick run says nothing about progress."""
    files = write_migrations(tmp_path / "m", {"001_t.sql": "CREATE TABLE t (a int);\n"})
    result = run_cli("migrate", url=db.url, migrations=files)
    assert result.returncode == 0 and result.all("migration.progress") == []


def test_the_gate_never_queues_behind_a_lock_on_a_partition_or_a_view(db: Database, tmp_path: Path) -> None:
    """A session holds ACCESS EXCLUSIVE on one partition and on a view: the facts (sizes), the preflight and the
    drift check must not wait behind it. The preflight names the partition's holder; the drift check says it
    could not look; the ALTER itself then times out on its lock (exit 7), promptly, nothing applied."""
    with db.connect() as conn:
        conn.execute(
            "CREATE TABLE ev (at int, v int) PARTITION BY RANGE (at);"
            "CREATE TABLE ev_a PARTITION OF ev FOR VALUES FROM (0) TO (100);"
            "CREATE TABLE ev_b PARTITION OF ev FOR VALUES FROM (100) TO (200);"
            "INSERT INTO ev SELECT g % 200, g FROM generate_series(1, 5000) g; ANALYZE ev;"
            "CREATE VIEW ev_view AS SELECT at FROM ev_a"
        )
    first = write_migrations(tmp_path / "m", {"001_t.sql": "CREATE TABLE t (a int);\n"})
    assert run_cli("migrate", url=db.url, migrations=first).returncode == 0  # a fingerprint is recorded
    write_migrations(tmp_path / "m", {"002_ev.sql": "ALTER TABLE ev ADD COLUMN z int;\n"})
    holder = psycopg.connect(db.url, application_name="partition-holder", autocommit=True)
    try:
        holder.execute("BEGIN")
        holder.execute("LOCK TABLE ev_b, ev_view IN ACCESS EXCLUSIVE MODE")
        env = {**SMALL_LARGE, "PGSLUICE_DDL_LOCK_TIMEOUT": "300ms", "PGSLUICE_DDL_RETRIES": "0"}
        result = run_cli("migrate", url=db.url, migrations=first, env=env, timeout=60)
    finally:
        holder.close()
    named = result.event("preflight.sessions_found")["sessions"]
    assert any(s["application_name"] == "partition-holder" for s in named), named
    assert result.event("drift.detected")["drifted"] is None
    assert "not checked" in result.event("drift.detected")["reason"]
    assert result.returncode == 7, result.stderr
    assert result.finished["durations"]["safety"] < 30
    assert applied(db) == [1]


def test_a_failed_no_transaction_migration_is_not_drift(db: Database, tmp_path: Path) -> None:
    """What a no-transaction file created before it failed is pgsluice's doing: status --drift finds no drift,
    and after resolve the next run is not refused with --on-drift fail."""
    folder = write_migrations(
        tmp_path / "m",
        {
            "001_t.sql": "CREATE TABLE t (a int);\n",
            "002_d.sql": "-- pgsluice: no-transaction\nCREATE TABLE d (id int);\n"
            "CREATE INDEX CONCURRENTLY d_i ON d (id);\nSELECT 1/0;\n",
        },
    )
    assert run_cli("migrate", url=db.url, migrations=folder).returncode == 7
    status = run_cli("status", "--drift", "--exit-code", url=db.url, migrations=folder)
    assert status.event("drift.detected")["drifted"] is False
    assert run_cli("resolve", "2", "--applied", url=db.url, migrations=folder).returncode == 0
    write_migrations(folder, {"003_e.sql": "CREATE TABLE e (id int);\n"})
    again = run_cli("migrate", url=db.url, migrations=folder, env={"PGSLUICE_ON_DRIFT": "fail"})
    assert again.returncode == 0, again.stderr


def test_drift_sees_triggers_disabled_row_security_and_policies(db: Database, tmp_path: Path) -> None:
    """Changes that alter behaviour without a new column are drift too: a trigger disabled, row level security
    enabled, a policy created."""
    folder = write_migrations(
        tmp_path / "m",
        {
            "001_t.sql": "CREATE TABLE t (a int);\nCREATE FUNCTION noop() RETURNS trigger LANGUAGE plpgsql AS "
            "$$BEGIN RETURN NEW; END$$;\n"
            "CREATE TRIGGER audit BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION noop();\n"
        },
    )
    assert run_cli("migrate", url=db.url, migrations=folder).returncode == 0
    for change, key in (
        ("ALTER TABLE t DISABLE TRIGGER audit", "trigger public.t.audit"),
        ("ALTER TABLE t ENABLE ROW LEVEL SECURITY", "table public.t"),
        ("CREATE POLICY mine ON t USING (a > 0)", "policy public.t.mine"),
    ):
        with db.connect() as conn:
            conn.execute(change)
        status = run_cli("status", "--drift", "--exit-code", url=db.url, migrations=folder)
        drift = status.event("drift.detected")
        assert status.returncode == 6 and key in drift["added"] + drift["changed"], (change, drift)


def test_safe_forms_pass_block(db: Database, tmp_path: Path) -> None:
    """Under block, what the gate's own advice recommends is not refused: an index ON ONLY a partitioned parent,
    CREATE INDEX IF NOT EXISTS of an index already there, an UPDATE batched by a key range."""
    with db.connect() as conn:
        conn.execute(
            "CREATE TABLE ev (at int) PARTITION BY RANGE (at);"
            "CREATE TABLE ev_a PARTITION OF ev FOR VALUES FROM (0) TO (10000);"
            "INSERT INTO ev SELECT generate_series(0, 4999);"
            "CREATE TABLE big (id int PRIMARY KEY, n int); INSERT INTO big SELECT g, 0 FROM generate_series(1, 5000) g;"
            "CREATE INDEX big_n ON big (n); ANALYZE ev; ANALYZE big"
        )
    folder = write_migrations(
        tmp_path / "m",
        {
            "001_only.sql": "CREATE INDEX ev_at ON ONLY ev (at);\n",
            "002_exists.sql": "CREATE INDEX IF NOT EXISTS big_n ON big (n);\n",
            "003_batch.sql": "UPDATE big SET n = 1 WHERE id BETWEEN 1 AND 500;\n",
        },
    )
    result = run_cli("migrate", url=db.url, migrations=folder, env={**SMALL_LARGE, "PGSLUICE_UNSAFE_DDL": "block"})
    assert result.returncode == 0, result.stderr
    assert [f["rule"] for f in result.all("safety.finding")] == []


def test_an_allow_naming_no_rule_is_a_warning(tmp_path: Path, db: Database) -> None:
    """A typo in '-- pgsluice: allow' accepts nothing: migrate and lint say so."""
    folder = write_migrations(
        tmp_path / "m",
        {"001_t.sql": "-- pgsluice: allow index-not-concurent -- typo\nCREATE TABLE t (a int);\n"},
    )
    lint = run_cli("lint", migrations=folder)
    assert "names no safety rule" in lint.stdout, lint.stdout
    result = run_cli("migrate", url=db.url, migrations=folder)
    assert result.returncode == 0
    assert "index-not-concurent" in result.event("files.warning")["problem"]


@pytest.mark.parametrize("version", ["0", "3", "8.4", "14.2.1", "fourteen"])
def test_lint_refuses_a_version_postgresql_never_had(tmp_path: Path, version: str) -> None:
    """--pg-version takes 14, 15.4, 9.6.3 or 150004; anything else is a usage error (exit 2)."""
    folder = write_migrations(tmp_path / "m", {"001_t.sql": "CREATE TABLE t (a int);\n"})
    result = run_cli("lint", "--pg-version", version, migrations=folder)
    assert result.returncode == 2 and "PostgreSQL version" in result.stderr


@pytest.mark.slow
def test_a_backup_of_a_hundred_megabytes_reports_rising_bytes(db: Database, tmp_path: Path) -> None:
    """pgsluice's own backup path (pg_dump streamed to the store): backup.progress events while it runs, their
    bytes rising, an estimate against the database's size that never claims 100 %."""
    with db.connect() as conn:
        conn.execute(
            "CREATE TABLE noise AS SELECT g, md5(random()::text) || md5(random()::text) || md5(random()::text) AS t"
            " FROM generate_series(1, 800000) g"
        )
    assert db.scalar("SELECT pg_database_size(current_database())") > 100 * 1024**2
    folder = write_migrations(tmp_path / "m", {"001_t.sql": "CREATE TABLE t (a int);\n"})
    env = {"PGSLUICE_PROGRESS_AFTER": "0", "PGSLUICE_PROGRESS_INTERVAL": "100ms"}
    result = run_cli("backup", "--backup-url", f"file://{tmp_path}/bk", url=db.url, migrations=folder, env=env)
    assert result.returncode == 0, result.stderr
    events = result.all("backup.progress")
    dumped = [e["bytes_dumped"] for e in events]
    assert len(dumped) >= 2 and dumped == sorted(dumped) and dumped[-1] > dumped[0], dumped
    assert all(e["percent_estimate"] is None or e["percent_estimate"] < 100 for e in events)
    assert dumped[-1] <= result.event("backup.uploaded")["bytes"]
