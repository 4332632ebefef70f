"""Fixtures: a real PostgreSQL server started for the session, a fresh database per test,
and a runner for the real CLI in its own OS process."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.support.pgserver import PASSWORD, PostgresServer

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Server:
    """The server under test: an URL builder and, when we started it, its handle."""

    base_url: str
    handle: PostgresServer | None

    def url(self, dbname: str) -> str:
        return self.base_url.rsplit("/", 1)[0] + f"/{dbname}"

    def admin(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.url("postgres"), autocommit=True)


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


@dataclass
class Database:
    """A database of its own for one test."""

    server: Server
    name: str
    url: str

    def connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.url, autocommit=True)

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self.connect() as conn:
            return conn.execute(sql, params or None).fetchall()

    def scalar(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        rows = self.query(sql, params)
        return rows[0][0] if rows else None

    def history(self, table: str = "public.pgsluice_history") -> list[tuple[int, str, str]]:
        return [(r[0], r[1], r[2]) for r in self.query(f"SELECT version, name, status FROM {table} ORDER BY 1")]


@pytest.fixture
def db(pg_server: Server) -> Iterator[Database]:
    """CREATE DATABASE t_<random>, dropped WITH (FORCE) afterwards."""
    name = f"t_{secrets.token_hex(6)}"
    with pg_server.admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield Database(pg_server, name, pg_server.url(name))
    with pg_server.admin() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass
class Result:
    """A finished pgsluice process."""

    returncode: int
    stdout: str
    stderr: str
    events: list[dict[str, Any]] = field(default_factory=list)

    def event(self, name: str) -> dict[str, Any]:
        found = [e for e in self.events if e.get("event") == name]
        assert found, f"no {name} event in:\n{self.stderr}"
        return found[-1]

    def names(self) -> list[str]:
        return [str(e.get("event")) for e in self.events]

    @property
    def finished(self) -> dict[str, Any]:
        return self.event("run.finished")


def parse_events(stderr: str) -> list[dict[str, Any]]:
    events = []
    for raw in stderr.splitlines():
        line = raw.strip()
        if line.startswith("{"):
            events.append(json.loads(line))
    return events


def cli_env(url: str | None, migrations: Path | None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "PGSLUICE_", "DATABASE_URL"))}
    env.update({"PGSLUICE_LOG_FORMAT": "json", "PGCONNECT_TIMEOUT": "3"})
    if url:
        env["DATABASE_URL"] = url
    if migrations is not None:
        env["PGSLUICE_MIGRATIONS_DIR"] = str(migrations)
    env.update(extra)
    return env


def pgsluice_cmd() -> list[str]:
    return [sys.executable, "-m", "pgsluice"]


def run_cli(
    *args: str, url: str | None = None, migrations: Path | None = None, timeout: float = 120, **env: str
) -> Result:
    """Run the real CLI in its own process and parse its JSON log lines."""
    proc = subprocess.run(
        [*pgsluice_cmd(), *args],
        env=cli_env(url, migrations, **env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=ROOT,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr, parse_events(proc.stderr))


def write_migrations(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


@pytest.fixture
def mdir(tmp_path: Path) -> Path:
    folder = tmp_path / "migrations"
    folder.mkdir()
    return folder


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        assert PASSWORD not in text


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
