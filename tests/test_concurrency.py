"""Races and crashes, for real: several OS processes, SIGKILL, SIGTERM, a database restart.

Every wait here polls database state (pg_stat_activity, pg_locks) to a deadline; none sleeps and hopes.
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import psycopg
import pytest

from pgsluice.config import load_config
from tests.support.cli import ROOT, cli_env, finished, pgsluice_cmd, poll, run_cli, start, write_migrations
from tests.support.databases import LONG, Database, advisory_locks, sleeping_pid

pytestmark = [pytest.mark.integration, pytest.mark.slow]


# Sleeps for a minute on the first run; once the test has created rerun_marker, it does not.
def test_eight_processes_apply_200_migrations_exactly_once(db: Database, mdir: Path, tmp_path: Path) -> None:
    """8 runners started together: all exit 0, each migration ran once, in order."""
    files = {"000_runs.sql": "CREATE TABLE runs (version int, pid int, at timestamptz DEFAULT clock_timestamp());\n"}
    for n in range(1, 201):
        files[f"{n:03d}_m{n}.sql"] = (
            f"CREATE TABLE m{n} (a int);\nINSERT INTO runs (version, pid) VALUES ({n}, pg_backend_pid());\n"
        )
    write_migrations(mdir, files)
    logs = [tmp_path / f"runner{i}.log" for i in range(8)]
    procs = [start(db.url, mdir, "migrate", log=log) for log in logs]
    results = [finished(p, log, timeout=180) for p, log in zip(procs, logs, strict=True)]
    assert [r.returncode for r in results] == [0] * 8, [r.stderr[-2000:] for r in results if r.returncode]
    applied = sorted(v for r in results for v in r.finished["applied"])
    assert applied == list(range(201))
    assert db.scalar("SELECT count(*) FROM runs") == 200
    assert db.scalar("SELECT count(DISTINCT version) FROM runs") == 200
    assert db.scalar(
        "SELECT bool_and(ok) FROM (SELECT at >= lag(at) OVER (ORDER BY version) IS NOT FALSE AS ok FROM runs) s"
    )
    assert db.scalar("SELECT count(*) FROM pgsluice_history WHERE status = 'applied'") == 201
    assert advisory_locks(db) == 0


def test_waiters_log_who_holds_the_lock_and_give_up_with_exit_5(db: Database, mdir: Path) -> None:
    """Another session holds the lock: lock.waiting names its pid; past --lock-timeout, exit 5."""
    write_migrations(mdir, {"001_a.sql": "CREATE TABLE a (x int);\n"})
    key = load_config({}, {}).lock_key
    with psycopg.connect(db.url, autocommit=True, application_name="someone-else") as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (key,))
        holder_pid = holder.info.backend_pid
        result = run_cli("migrate", "--lock-timeout", "1s", url=db.url, migrations=mdir)
    assert result.returncode == 5
    waiting = result.event("lock.waiting")
    assert (waiting["holder_pid"], waiting["holder_application_name"]) == (holder_pid, "someone-else")
    assert waiting["holder_client_addr"] == "127.0.0.1"
    assert f"by pid {holder_pid} (someone-else" in result.finished["reason"]
    assert db.scalar("SELECT to_regclass('a') IS NULL") is True


def test_sigkill_of_the_holder_mid_migration_rolls_back_and_frees_the_lock(
    db: Database, mdir: Path, tmp_path: Path
) -> None:
    """SIGKILL during a long migration: the server rolls it back and drops the lock; a rerun completes."""
    write_migrations(mdir, {"001_first.sql": "CREATE TABLE first (a int);\n", "002_long.sql": LONG})
    proc = start(db.url, mdir, "migrate", log=tmp_path / "killed.log")
    backend = poll(lambda: sleeping_pid(db), "the long migration to run")
    assert advisory_locks(db) == 1
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=10) == -signal.SIGKILL
    poll(lambda: advisory_locks(db) == 0, "the server to release the killed runner's lock", timeout=15)
    poll(
        lambda: db.scalar("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (backend,)) == 0,
        "the orphaned migration's backend to end",
        timeout=15,
    )
    assert db.scalar("SELECT to_regclass('long_table') IS NULL") is True
    assert db.history() == [(1, "first", "applied")]
    with db.connect() as conn:
        conn.execute("CREATE TABLE rerun_marker ()")
    rerun = run_cli("migrate", url=db.url, migrations=mdir)
    assert rerun.returncode == 0, rerun.stderr
    assert rerun.finished["applied"] == [2]


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_cancels_rolls_back_and_exits_143_or_130(
    db: Database, mdir: Path, tmp_path: Path, signum: int, code: int
) -> None:
    """SIGTERM (Kubernetes stopping the pod) or SIGINT: cancel, roll back, release the lock, exit 143/130."""
    write_migrations(mdir, {"001_long.sql": LONG, "002_after.sql": "CREATE TABLE after_long (a int);\n"})
    term = tmp_path / "termination-log"
    log = tmp_path / "term.log"
    proc = start(db.url, mdir, "migrate", "--termination-log", str(term), log=log)
    poll(lambda: sleeping_pid(db), "the long migration to run")
    proc.send_signal(signum)
    result = finished(proc, log, timeout=20)  # a bound on the wait, not a timed assertion
    assert result.returncode == code
    assert result.finished["outcome"] == "interrupted"
    assert result.finished["failed_migration"] == "001_long.sql"
    assert term.read_text().startswith(f"interrupted by {signal.Signals(signum).name}")
    assert advisory_locks(db) == 0
    assert sleeping_pid(db) is None
    assert db.scalar("SELECT to_regclass('long_table') IS NULL") is True
    assert db.scalar("SELECT to_regclass('pgsluice_history') IS NOT NULL") is True
    assert db.history() == []


def test_database_restart_mid_run_fails_non_zero_then_a_rerun_completes(
    db: Database, mdir: Path, tmp_path: Path
) -> None:
    """The server restarts during a migration: exit 3 (transient), nothing half-applied, the rerun finishes."""
    if db.server.handle is None:
        pytest.skip("needs the server started by the test setup (PGSLUICE_TEST_DSN is external)")
    write_migrations(mdir, {"001_first.sql": "CREATE TABLE first (a int);\n", "002_long.sql": LONG})
    log = tmp_path / "restart.log"
    proc = start(db.url, mdir, "migrate", log=log)
    poll(lambda: sleeping_pid(db), "the long migration to run")
    db.server.handle.restart()
    result = finished(proc, log, timeout=30)
    assert result.returncode == 3, result.stderr
    assert "lost the connection to the database while applying 002_long.sql" in result.finished["reason"]
    assert db.scalar("SELECT to_regclass('long_table') IS NULL") is True
    assert db.history() == [(1, "first", "applied")]
    with db.connect() as conn:
        conn.execute("CREATE TABLE rerun_marker ()")
    rerun = run_cli("migrate", url=db.url, migrations=mdir)
    assert rerun.returncode == 0, rerun.stderr
    assert db.history() == [(1, "first", "applied"), (2, "long", "applied")]


def test_waits_for_a_database_that_starts_late(mdir: Path, tmp_path: Path) -> None:
    """Started before its database: retries with backoff, one event per retry, then applies and exits 0."""
    from tests.support.pgserver import PostgresServer

    write_migrations(mdir, {"001_a.sql": "CREATE TABLE a (x int);\n"})
    server = PostgresServer()
    try:
        server.init()
        log = tmp_path / "late.log"
        with log.open("wb") as sink:
            proc = subprocess.Popen(
                [*pgsluice_cmd(), "migrate", "--wait-timeout", "60s"],
                env=cli_env(server.url(), mdir),
                stdout=subprocess.DEVNULL,
                stderr=sink,
                cwd=ROOT,
            )
        poll(lambda: log.read_text().count("wait.retry_scheduled") >= 2, "two retries before the server starts")
        server.start()
        result = finished(proc, log)
    finally:
        server.cleanup()
    assert result.returncode == 0, result.stderr
    retries = [e for e in result.events if e["event"] == "wait.retry_scheduled"]
    assert [e["retry_num"] for e in retries] == list(range(1, len(retries) + 1))
    assert all(e["wait_seconds"] <= 2.0 for e in retries)
    assert "Connection refused" in retries[0]["cause"]
    assert result.finished["applied"] == [1]


def test_deadlock_victim_migration_is_retried_and_succeeds(db: Database, mdir: Path, tmp_path: Path) -> None:
    """A real deadlock with another session (40P01): the migration is rolled back, retried, and applied."""
    write_migrations(mdir, {"001_tables.sql": "CREATE TABLE a (x int);\nCREATE TABLE b (x int);\n"})
    assert run_cli("migrate", url=db.url, migrations=mdir).returncode == 0
    write_migrations(
        mdir,
        {
            "002_both.sql": (
                "SET LOCAL deadlock_timeout = '100ms';\n"  # this side detects the cycle first: it is the victim
                "LOCK TABLE a IN ACCESS EXCLUSIVE MODE;\nLOCK TABLE b IN ACCESS EXCLUSIVE MODE;\n"
                "ALTER TABLE b ADD COLUMN y int;\n"
            )
        },
    )
    other = db.connect()
    other.execute("BEGIN")
    other.execute("SET LOCAL deadlock_timeout = '10s'")
    other.execute("LOCK TABLE b IN ACCESS EXCLUSIVE MODE")
    log = tmp_path / "deadlock.log"
    proc = start(db.url, mdir, "migrate", "--ddl-retry-delay", "50ms", log=log)
    poll(
        lambda: db.scalar(
            "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation"
            " WHERE c.relname = 'b' AND NOT l.granted"
        ),
        "the migration to wait for table b",
    )
    other.execute("LOCK TABLE a IN ACCESS EXCLUSIVE MODE")  # closes the cycle; returns once the migration gave way
    other.execute("ROLLBACK")
    other.close()
    result = finished(proc, log)
    assert result.returncode == 0, result.stderr
    retry = result.event("migration.retry_scheduled")
    assert (retry["version"], retry["retry_num"]) == (2, 1)
    assert "40P01" in retry["cause"]
    assert (
        db.scalar("SELECT count(*) FROM information_schema.columns WHERE table_name = 'b' AND column_name = 'y'") == 1
    )
    assert db.history()[-1] == (2, "both", "applied")
