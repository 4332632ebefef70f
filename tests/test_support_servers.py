"""The test-support servers work: PgBouncer in both pool modes, TLS certificates, a hot standby."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from tests.support.databases import Database, Server
from tests.support.pgbouncer import PgBouncer, PgBouncerUnavailableError, PoolMode
from tests.support.pgserver import PostgresServer
from tests.support.standby import Standby
from tests.support.tls import TlsFiles, ssl_settings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster(pg_server: Server) -> PostgresServer:
    """The session's throwaway cluster; these helpers need its files and binaries, not only a DSN."""
    if pg_server.handle is None:
        pytest.skip("needs the throwaway server the test setup starts, not PGSLUICE_TEST_DSN")
    return pg_server.handle


def make_bouncer(cluster: PostgresServer, pool_mode: PoolMode) -> PgBouncer:
    """A PgBouncer in front of ``cluster``, not started; skips when pgbouncer is not installed."""
    try:
        return PgBouncer(cluster.port, pool_mode=pool_mode)
    except PgBouncerUnavailableError as exc:
        pytest.skip(str(exc))


def connect(url: str, **kwargs: Any) -> psycopg.Connection[Any]:
    """A connection through PgBouncer: no server-side prepared statements, which 1.18 cannot pool."""
    return psycopg.connect(url, prepare_threshold=None, **kwargs)


def backend_pid(conn: psycopg.Connection[Any]) -> int:
    """The pid of the server backend that runs ``conn``'s current transaction."""
    return int(conn.execute("SELECT pg_backend_pid()").fetchall()[0][0])


def test_transaction_pooling_moves_a_client_to_another_backend(cluster: PostgresServer) -> None:
    """In transaction mode, a client's next transaction runs on another backend while its last one is busy."""
    with make_bouncer(cluster, "transaction") as bouncer, connect(bouncer.url()) as a, connect(bouncer.url()) as b:
        first = backend_pid(a)
        a.commit()  # the server connection goes back to the pool
        held = backend_pid(b)  # b's open transaction now holds that same server connection
        second = backend_pid(a)
        a.commit()
        b.commit()
        servers = bouncer.admin_show("SERVERS")
    assert held == first
    assert second != first
    assert {first, second} == {row["remote_pid"] for row in servers}


def test_session_pooling_keeps_a_client_on_its_backend(cluster: PostgresServer) -> None:
    """In session mode, a client keeps its backend across transactions while another client is busy."""
    with make_bouncer(cluster, "session") as bouncer, connect(bouncer.url()) as a, connect(bouncer.url()) as b:
        first = backend_pid(a)
        a.commit()
        other = backend_pid(b)
        second = backend_pid(a)
        a.commit()
        b.commit()
        pools = [row for row in bouncer.admin_show("POOLS") if row["database"] == "postgres"]
    assert first == second
    assert other != first
    assert [row["pool_mode"] for row in pools] == ["session"]


def test_pgbouncer_refuses_the_options_startup_parameter(cluster: PostgresServer) -> None:
    """PgBouncer with its default ignore_startup_parameters refuses a connection that sends ``options``."""
    with (
        make_bouncer(cluster, "transaction") as bouncer,
        pytest.raises(psycopg.OperationalError, match="unsupported startup parameter: options"),
    ):
        psycopg.connect(bouncer.url(), options="-c statement_timeout=5000")


@pytest.fixture(scope="module")
def tls_server(cluster: PostgresServer, tls_files: TlsFiles) -> Iterator[PostgresServer]:  # noqa: ARG001 - skips without a local cluster
    """A second cluster with TLS on, its certificate naming localhost and 127.0.0.1."""
    with PostgresServer(settings=ssl_settings(tls_files.server_cert, tls_files.server_key)) as server:
        yield server


@pytest.fixture(scope="module")
def wrong_name_server(cluster: PostgresServer, tls_files: TlsFiles) -> Iterator[PostgresServer]:  # noqa: ARG001 - skips without a local cluster
    """A third cluster with TLS on, its certificate naming only db.example.invalid."""
    with PostgresServer(settings=ssl_settings(tls_files.wrong_name_cert, tls_files.wrong_name_key)) as server:
        yield server


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_verify_full_with_the_test_ca_connects(tls_server: PostgresServer, tls_files: TlsFiles, host: str) -> None:
    """sslmode=verify-full with the test CA connects over TLS to 127.0.0.1 (IP SAN) and localhost (DNS SAN)."""
    with psycopg.connect(
        tls_server.url(), host=host, sslmode="verify-full", sslrootcert=str(tls_files.ca_cert), autocommit=True
    ) as conn:
        row = conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchall()
    assert row == [(True,)]


def test_verify_full_with_an_unrelated_ca_fails(tls_server: PostgresServer, tls_files: TlsFiles) -> None:
    """sslmode=verify-full with a CA that did not sign the server's certificate fails certificate verification."""
    # libpq's TLS failures carry no SQLSTATE: its message is all there is to match.
    with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
        psycopg.connect(tls_server.url(), sslmode="verify-full", sslrootcert=str(tls_files.other_ca_cert))


def test_verify_full_with_a_wrong_host_name_fails(wrong_name_server: PostgresServer, tls_files: TlsFiles) -> None:
    """sslmode=verify-full rejects a certificate from the trusted CA that names another host."""
    with pytest.raises(
        psycopg.OperationalError,
        match=r'server certificate for "db\.example\.invalid".* does not match host name "127\.0\.0\.1"',
    ):
        psycopg.connect(wrong_name_server.url(), sslmode="verify-full", sslrootcert=str(tls_files.ca_cert))


@pytest.fixture(scope="module")
def standby(cluster: PostgresServer) -> Iterator[Standby]:
    """A hot standby of the session's cluster, streaming its WAL."""
    with Standby(cluster) as replica:
        yield replica


def test_standby_is_a_read_only_replica(standby: Standby) -> None:
    """The standby is in recovery, streaming, read-only, and refuses a write with SQLSTATE 25006."""
    with psycopg.connect(standby.url(), autocommit=True) as conn:
        state = conn.execute(
            "SELECT pg_is_in_recovery(), current_setting('transaction_read_only'),"
            " (SELECT status FROM pg_stat_wal_receiver)"
        ).fetchall()
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction) as refused:
            conn.execute("CREATE TABLE must_fail (a int)")
    assert state == [(True, "on", "streaming")]
    assert refused.value.sqlstate == "25006"


def test_standby_replays_the_primarys_writes(standby: Standby, db: Database) -> None:
    """A row committed on the primary is readable on the standby once it has caught up."""
    with db.connect() as conn:
        conn.execute("CREATE TABLE replicated (a int)")
        conn.execute("INSERT INTO replicated VALUES (42)")
    standby.wait_for_catch_up()
    with psycopg.connect(standby.url(db.name)) as conn:
        rows = conn.execute("SELECT a FROM replicated").fetchall()
    assert rows == [(42,)]


def test_promoted_standby_accepts_writes(cluster: PostgresServer) -> None:
    """After promote() the former standby leaves recovery and accepts a write."""
    with Standby(cluster) as replica:
        replica.promote()
        with psycopg.connect(replica.url(), autocommit=True) as conn:
            conn.execute("CREATE TABLE promoted (a int)")
            state = conn.execute("SELECT pg_is_in_recovery(), to_regclass('promoted') IS NOT NULL").fetchall()
    assert state == [(False, True)]
