"""Poolers, proxies and TLS (issue 13): a real PgBouncer on loopback in transaction and session mode in front
of the test PostgreSQL, and a TLS server with certificates made by the test's own CA."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from pgsluice.config import TableName
from pgsluice.lock import LeaseLock
from tests.support.cli import finished, poll, run_cli, start, write_migrations
from tests.support.databases import LONG, Database, Server, advisory_locks, sleeping_pid
from tests.support.pgbouncer import PgBouncer, PgBouncerUnavailableError, PoolMode
from tests.support.pgserver import PostgresServer
from tests.support.tls import TlsFiles, ssl_settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FAST_LEASE = {"PGSLUICE_LEASE_DURATION": "3s", "PGSLUICE_LEASE_HEARTBEAT": "0.5s"}


@pytest.fixture(scope="module")
def cluster(pg_server: Server) -> PostgresServer:
    """The session's throwaway cluster (PgBouncer and TLS need its files, not only a DSN)."""
    if pg_server.handle is None:
        pytest.skip("needs the throwaway server the test setup starts, not PGSLUICE_TEST_DSN")
    return pg_server.handle


def _bouncer(cluster: PostgresServer, mode: PoolMode) -> Iterator[PgBouncer]:
    try:
        bouncer = PgBouncer(cluster.port, pool_mode=mode)
    except PgBouncerUnavailableError as exc:
        pytest.skip(str(exc))
    with bouncer:
        yield bouncer


@pytest.fixture(scope="module")
def transaction_pool(cluster: PostgresServer) -> Iterator[PgBouncer]:
    """PgBouncer in transaction mode (5 server connections per pool), in front of the test server."""
    yield from _bouncer(cluster, "transaction")


@pytest.fixture(scope="module")
def session_pool(cluster: PostgresServer) -> Iterator[PgBouncer]:
    """PgBouncer in session mode, in front of the test server."""
    yield from _bouncer(cluster, "session")


def migrations_of(count: int) -> dict[str, str]:
    """``count`` migrations, each recording the backend that ran it."""
    files = {"000_runs.sql": "CREATE TABLE runs (version int, pid int);\n"}
    for n in range(1, count + 1):
        files[f"{n:03d}_m{n}.sql"] = f"CREATE TABLE m{n} (a int);\nINSERT INTO runs VALUES ({n}, pg_backend_pid());\n"
    return files


def test_a_refused_startup_parameter_is_a_usage_error_at_once(
    db: Database, mdir: Path, transaction_pool: PgBouncer
) -> None:
    """PgBouncer refuses options=…: exit 2 naming the parameter, never retried to the deadline."""
    write_migrations(mdir, {"001_a.sql": "CREATE TABLE a (x int);\n"})
    url = transaction_pool.url(db.name) + "?options=-c%20statement_timeout%3D5000"
    result = run_cli("migrate", "--wait-timeout", "60s", url=url, migrations=mdir)
    assert result.returncode == 2, result.stderr
    assert "the server refused the startup parameter 'options'" in result.finished["reason"]
    assert "wait.retry_scheduled" not in result.names()


def test_session_pooling_keeps_the_advisory_lock(db: Database, mdir: Path, session_pool: PgBouncer) -> None:
    """Through a session-mode pooler nothing is detected: the advisory path works as on a direct connection."""
    write_migrations(mdir, migrations_of(20))
    result = run_cli("migrate", url=session_pool.url(db.name), migrations=mdir)
    assert result.returncode == 0, result.stderr
    assert "lock.pooling_detected" not in result.names()
    assert db.scalar("SELECT count(*) FROM runs") == 20
    assert advisory_locks(db) == 0


def test_advisory_through_transaction_pooling_exits_2_and_leaves_no_lock(
    db: Database, mdir: Path, transaction_pool: PgBouncer, tmp_path: Path
) -> None:
    """8 racers with the advisory lock through a transaction pooler: each exits 2 at once with the two ways out,
    and no server connection is left holding an advisory lock (pg_locks read directly)."""
    write_migrations(mdir, migrations_of(5))
    url = transaction_pool.url(db.name)
    logs = [tmp_path / f"r{i}.log" for i in range(8)]
    procs = [start(url, mdir, "migrate", log=log) for log in logs]
    results = [finished(p, log, timeout=120) for p, log in zip(procs, logs, strict=True)]
    assert [r.returncode for r in results] == [2] * 8, [r.stderr[-800:] for r in results]
    reason = results[0].finished["reason"]
    assert "a transaction pooler is between pgsluice and the database" in reason
    assert "--lock-strategy lease" in reason and "session-mode pooler" in reason
    assert advisory_locks(db) == 0
    assert db.scalar("SELECT to_regclass('runs') IS NULL") is True


def test_eight_racers_through_transaction_pooling_with_the_lease_apply_each_once(
    db: Database, mdir: Path, transaction_pool: PgBouncer, tmp_path: Path
) -> None:
    """--lock-strategy auto picks the lease through the pooler: 8 OS processes, 200 migrations, each once."""
    write_migrations(mdir, migrations_of(200))
    url = transaction_pool.url(db.name)
    logs = [tmp_path / f"r{i}.log" for i in range(8)]
    env = {"PGSLUICE_LOCK_STRATEGY": "auto"}
    procs = [start(url, mdir, "migrate", log=log, env=env) for log in logs]
    results = [finished(p, log, timeout=300) for p, log in zip(procs, logs, strict=True)]
    assert [r.returncode for r in results] == [0] * 8, [r.stderr[-1500:] for r in results if r.returncode]
    assert sorted(v for r in results for v in r.finished["applied"]) == list(range(201))
    assert all(r.event("lock.pooling_detected")["strategy"] == "lease" for r in results)
    assert db.scalar("SELECT count(*) FROM runs") == 200
    assert db.scalar("SELECT count(DISTINCT version) FROM runs") == 200
    assert advisory_locks(db) == 0
    assert db.scalar("SELECT count(*) FROM pgsluice_history_lock") == 0  # every lease given back


def _create(lock: LeaseLock, start_line: threading.Barrier, errors: list[BaseException]) -> None:
    start_line.wait()
    try:
        lock._ensure_table()  # the race itself, without the lock's polling around it
    except BaseException as exc:  # noqa: BLE001 - collected and asserted by the test
        errors.append(exc)


def test_runners_creating_the_lease_table_at_once_never_fail(db: Database) -> None:
    """Eight sessions create a fresh lease table (and its schema) at the same instant, 15 times: IF NOT EXISTS
    loses the race on pg_type or pg_namespace now and then, and the loser must retry, not crash with exit 1."""
    racers = 8
    conns = [psycopg.connect(db.url, autocommit=True) for _ in range(racers)]
    try:
        for round_ in range(15):
            table = TableName(f"race{round_}", "pgsluice_history")  # the lease table is <history>_lock
            locks = [
                LeaseLock(c, table, 1, timeout_seconds=1, lease_seconds=30, heartbeat_seconds=10, holder="t")
                for c in conns
            ]
            start_line = threading.Barrier(racers)
            errors: list[BaseException] = []
            threads = [threading.Thread(target=_create, args=(lock, start_line, errors)) for lock in locks]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert errors == [], f"round {round_}: {errors}"
            assert db.scalar("SELECT to_regclass(%s) IS NOT NULL", (f"race{round_}.pgsluice_history_lock",))
    finally:
        for conn in conns:
            conn.close()


def test_a_killed_lease_holder_expires_and_a_rerun_completes(
    db: Database, mdir: Path, transaction_pool: PgBouncer, tmp_path: Path
) -> None:
    """SIGKILL mid-migration through the pooler: the migration rolls back, the lease expires, a rerun applies."""
    write_migrations(mdir, {"001_first.sql": "CREATE TABLE first (a int);\n", "002_long.sql": LONG})
    url = transaction_pool.url(db.name)
    env = {"PGSLUICE_LOCK_STRATEGY": "lease", **FAST_LEASE}
    proc = start(url, mdir, "migrate", log=tmp_path / "killed.log", env=env)
    poll(lambda: sleeping_pid(db), "the long migration to run")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    poll(lambda: sleeping_pid(db) is None, "the killed migration's backend to be gone", timeout=30)
    assert db.scalar("SELECT to_regclass('long_table') IS NULL") is True
    assert db.history() == [(1, "first", "applied")]
    status = run_cli("status", url=url, migrations=mdir, env=env)
    assert "lease: held by" in status.stdout or "lease: expired" in status.stdout
    with db.connect() as conn:
        conn.execute("CREATE TABLE rerun_marker ()")
    rerun = run_cli("migrate", url=url, migrations=mdir, env=env)
    assert rerun.returncode == 0, rerun.stderr
    assert rerun.finished["applied"] == [2]


def test_a_blocked_heartbeat_stops_the_holder_before_a_second_runner_applies(
    db: Database, mdir: Path, transaction_pool: PgBouncer, tmp_path: Path
) -> None:
    """The lock table locked by the test: the holder cannot renew, cancels its statement and exits 5 while its
    lease is still valid; the second runner applies only after that, and the migration runs once."""
    write_migrations(mdir, {"001_first.sql": "CREATE TABLE first (a int);\n", "002_long.sql": LONG})
    url = transaction_pool.url(db.name)
    env = {"PGSLUICE_LOCK_STRATEGY": "lease", **FAST_LEASE}
    holder_log, second_log = tmp_path / "holder.log", tmp_path / "second.log"
    holder = start(url, mdir, "migrate", log=holder_log, env=env)
    poll(lambda: sleeping_pid(db), "the long migration to run")
    with db.connect() as blocker:
        blocker.execute("BEGIN")
        blocker.execute("LOCK TABLE pgsluice_history_lock IN ACCESS EXCLUSIVE MODE")
        second = start(url, mdir, "migrate", log=second_log, env=env)
        stopped = finished(holder, holder_log, timeout=60)
        assert stopped.returncode == 5, stopped.stderr
        assert "lock.lease_lost" in stopped.names()
        assert "could not be renewed" in stopped.finished["reason"]
        assert db.scalar("SELECT to_regclass('long_table') IS NULL") is True
        assert second.poll() is None  # still waiting for the lock table
        blocker.execute("CREATE TABLE rerun_marker ()")
        blocker.execute("COMMIT")
    result = finished(second, second_log, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.finished["applied"] == [2]
    assert db.history() == [(1, "first", "applied"), (2, "long", "applied")]


@pytest.mark.usefixtures("cluster")  # skips without the session's own cluster
def test_verify_full_tls_works_and_a_wrong_ca_or_name_is_exit_4(tls_files: TlsFiles, tmp_path: Path) -> None:
    """sslmode=verify-full with the test CA (in the URL, or PGSSLROOTCERT from a mounted file) connects; an
    unrelated CA or a certificate for another name fails at once with exit 4 naming the certificate problem."""
    write_migrations(tmp_path / "m", {"001_a.sql": "CREATE TABLE a (x int);\n"})
    mdir = tmp_path / "m"
    with PostgresServer(settings=ssl_settings(tls_files.server_cert, tls_files.server_key)) as tls:
        base = tls.url().replace("127.0.0.1", "localhost")
        ok = run_cli("migrate", url=f"{base}?sslmode=verify-full&sslrootcert={tls_files.ca_cert}", migrations=mdir)
        assert ok.returncode == 0, ok.stderr
        mounted = run_cli(
            "status", url=f"{base}?sslmode=verify-full", migrations=mdir, env={"PGSSLROOTCERT": str(tls_files.ca_cert)}
        )
        assert mounted.returncode == 0, mounted.stderr
        wrong_ca = run_cli(
            "migrate",
            "--wait-timeout",
            "60s",
            url=f"{base}?sslmode=verify-full&sslrootcert={tls_files.other_ca_cert}",
            migrations=mdir,
        )
        assert wrong_ca.returncode == 4
        assert "certificate verify failed" in wrong_ca.finished["reason"]
        assert "certificate" in wrong_ca.finished["reason"].split(": ", 1)[1]
        assert "password" not in wrong_ca.finished["reason"]
        assert "wait.retry_scheduled" not in wrong_ca.names()
    with PostgresServer(settings=ssl_settings(tls_files.wrong_name_cert, tls_files.wrong_name_key)) as misnamed:
        url = f"{misnamed.url()}?sslmode=verify-full&sslrootcert={tls_files.ca_cert}"
        wrong_name = run_cli("migrate", "--wait-timeout", "60s", url=url, migrations=mdir)
        assert wrong_name.returncode == 4
        assert "does not match host name" in wrong_name.finished["reason"]
        assert "wait.retry_scheduled" not in wrong_name.names()


def test_the_pooled_connection_gets_no_session_state(db: Database, mdir: Path, transaction_pool: PgBouncer) -> None:
    """Through the transaction pooler a no-transaction migration runs without session SETs that would stay on a
    pooled server connection for other clients: no server connection is left with pgsluice's lock_timeout."""
    write_migrations(
        mdir,
        {
            "001_t.sql": "CREATE TABLE t (a int);\n",
            "002_idx.sql": "-- pgsluice: no-transaction\nCREATE INDEX CONCURRENTLY t_a ON t (a);\n",
        },
    )
    url = transaction_pool.url(db.name)
    result = run_cli("migrate", url=url, migrations=mdir, env={"PGSLUICE_LOCK_STRATEGY": "auto"})
    assert result.returncode == 0, result.stderr
    with psycopg.connect(url, prepare_threshold=None, autocommit=True) as conn:
        for _ in range(6):  # every server connection of the pool, as clients get them
            assert conn.execute("SHOW lock_timeout").fetchone() == ("0",)


def test_a_standby_is_not_ready_and_is_retried_to_the_deadline(cluster: PostgresServer, tmp_path: Path) -> None:
    """A real streaming replica (pg_basebackup) is in recovery: migrate retries it with wait.in_recovery events
    until --wait-timeout, then exits 3; status still reads it."""
    from tests.support.standby import Standby

    write_migrations(tmp_path / "m", {"001_a.sql": "CREATE TABLE a (x int);\n"})
    with Standby(cluster) as standby:
        result = run_cli("migrate", "--wait-timeout", "2s", url=standby.url(), migrations=tmp_path / "m")
        assert result.returncode == 3, result.stderr
        assert len(result.all("wait.in_recovery")) >= 2
        assert result.finished["reason"].startswith("database not ready after")
        assert "target_session_attrs=read-write" in result.finished["reason"]
        status = run_cli("status", url=standby.url(), migrations=tmp_path / "m")
        assert status.returncode == 0, status.stderr
