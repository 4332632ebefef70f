"""Fixtures: a real PostgreSQL server started for the session, a fresh database per test, a
migrations folder, and the S3 and Azure servers of the backup tests. Helpers live in tests/support."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.databases import Database, Server, new_database
from tests.support.pgserver import PostgresServer
from tests.support.tls import TlsFiles, write_tls_files


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Server]:
    """PGSLUICE_TEST_DSN when set, else a throwaway server from the installed PostgreSQL binaries."""
    external = os.environ.get("PGSLUICE_TEST_DSN")
    if external:
        yield Server(external, None)
        return
    try:
        server = PostgresServer()
    except (RuntimeError, KeyError) as exc:
        pytest.skip(f"no PostgreSQL server available ({exc}); install 'postgresql' or set PGSLUICE_TEST_DSN")
    with server:
        yield Server(server.url(), server)


@pytest.fixture
def db(pg_server: Server) -> Iterator[Database]:
    """CREATE DATABASE t_<random>, dropped WITH (FORCE) afterwards."""
    with new_database(pg_server) as database:
        yield database


@pytest.fixture
def mdir(tmp_path: Path) -> Path:
    folder = tmp_path / "migrations"
    folder.mkdir()
    return folder


@pytest.fixture(scope="session")
def az_server() -> Iterator[Any]:
    """Azurite's blob service on loopback for the whole session (skips when Node.js/npm are missing)."""
    from tests.support.azserver import AzuriteServer, AzuriteUnavailableError

    try:
        server = AzuriteServer()
    except AzuriteUnavailableError as exc:
        pytest.skip(str(exc))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[Any]:
    """moto's S3 server on loopback for the whole session."""
    from tests.support.s3server import S3Server

    server = S3Server()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def tls_files() -> Iterator[TlsFiles]:
    """The test CAs and certificates (right and wrong names, an unrelated CA), in a folder the postgres user can
    reach (pytest's tmp_path is root's only)."""
    folder = Path(tempfile.mkdtemp(prefix="pgsluice-tls-"))
    try:
        yield write_tls_files(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
