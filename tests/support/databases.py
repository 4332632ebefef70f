"""The server under test and a database of its own per test, each dropped afterwards."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg

from tests.support.pgserver import PostgresServer


@dataclass
class Server:
    """The server under test: a URL builder and, when the test setup started it, its handle."""

    base_url: str
    handle: PostgresServer | None

    def url(self, dbname: str) -> str:
        """A URL for ``dbname`` on this server, as the superuser."""
        return self.base_url.rsplit("/", 1)[0] + f"/{dbname}"

    def admin(self) -> psycopg.Connection[Any]:
        """An autocommit connection to the ``postgres`` database."""
        return psycopg.connect(self.url("postgres"), autocommit=True)


@dataclass
class Database:
    """A database of its own for one test."""

    server: Server
    name: str
    url: str

    def connect(self) -> psycopg.Connection[Any]:
        """An autocommit connection as the superuser."""
        return psycopg.connect(self.url, autocommit=True)

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Every row of ``sql``."""
        with self.connect() as conn:
            return conn.execute(sql, params or None).fetchall()

    def scalar(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        """The first column of the first row of ``sql``, or None."""
        rows = self.query(sql, params)
        return rows[0][0] if rows else None

    def history(self, table: str = "public.pgsluice_history") -> list[tuple[int, str, str]]:
        """``(version, name, status)`` of every history row."""
        return [(int(r[0]), r[1], r[2]) for r in self.query(f"SELECT version, name, status FROM {table} ORDER BY 1")]


@contextmanager
def new_database(server: Server, prefix: str = "t") -> Iterator[Database]:
    """CREATE DATABASE <prefix>_<random>, dropped WITH (FORCE) when the block ends."""
    name = f"{prefix}_{secrets.token_hex(6)}"
    with server.admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield Database(server, name, server.url(name))
    finally:
        with server.admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# A migration that sleeps for a minute on the first run; once a test has created
# public.rerun_marker, it does not. Tests use it to act while a migration runs.
LONG = (
    "CREATE TABLE long_table (a int);\n"
    "SELECT pg_sleep(CASE WHEN to_regclass('public.rerun_marker') IS NULL THEN 60 ELSE 0 END);\n"
)


def sleeping_pid(db: Database) -> int | None:
    """The backend running LONG's pg_sleep, or None."""
    pid = db.scalar(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND query LIKE '%pg_sleep(CASE%'"
        " AND state = 'active' AND pid <> pg_backend_pid()"
    )
    return int(pid) if pid is not None else None


def advisory_locks(db: Database) -> int:
    """How many advisory locks are granted in the whole cluster."""
    return int(db.scalar("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted") or 0)


class CountingConnection(psycopg.Connection[tuple[Any, ...]]):
    """A real connection that counts the statements sent through ``execute``."""

    statements = 0

    def execute(
        self, query: Any, params: Any = None, *, prepare: bool | None = None, binary: bool = False
    ) -> psycopg.Cursor[tuple[Any, ...]]:
        self.statements += 1
        return super().execute(query, params, prepare=prepare, binary=binary)
