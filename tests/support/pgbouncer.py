"""A throwaway PgBouncer in front of a test PostgreSQL server.

Debian's ``pgbouncer`` binary, in the foreground, on a free 127.0.0.1 port, with
its configuration, auth file, pid file and log in a temporary folder. PgBouncer
refuses to run as root, so as root it runs as the ``postgres`` user, like
``pgserver.PostgresServer``: through ``Popen(user=…)`` rather than ``runuser``,
because ``runuser`` answers SIGTERM by sleeping 2 s, SIGKILLing its child and
leaving it unreaped, where a direct child stops at once and is reaped by ``wait``.

Every database name is forwarded to the same PostgreSQL server (``* = host=…``).
Clients authenticate with SCRAM against a plain-text auth file, which lets
PgBouncer also answer the server's SCRAM challenge. ``ignore_startup_parameters``
keeps PgBouncer's default on purpose: pgsluice must cope with a PgBouncer that
refuses startup parameters such as ``options``.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

import psycopg
from psycopg.rows import dict_row

from tests.support.pgserver import PASSWORD, SUPERUSER, free_port

PoolMode = Literal["session", "transaction", "statement"]

_SHOW_WORD = re.compile(r"[A-Za-z_]+")


class PgBouncerUnavailableError(RuntimeError):
    """Raised when no ``pgbouncer`` binary is installed: fixtures skip with this message."""


def find_pgbouncer() -> Path:
    """The ``pgbouncer`` executable (``PATH``, then Debian's ``/usr/sbin``); PgBouncerUnavailableError if none."""
    found = shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise PgBouncerUnavailableError(
            "no pgbouncer binary found: install Debian's pgbouncer (apt-get install pgbouncer)"
        )
    return Path(found)


class PgBouncer:
    """One PgBouncer on 127.0.0.1:<free port> forwarding every database to ``server_host``:``server_port``."""

    def __init__(
        self,
        server_port: int,
        *,
        server_host: str = "127.0.0.1",
        pool_mode: PoolMode = "transaction",
        default_pool_size: int = 5,
        max_client_conn: int = 200,
        settings: dict[str, str] | None = None,
    ) -> None:
        self.binary = find_pgbouncer()
        self._as_user: dict[str, Any] = {}
        if os.geteuid() == 0:
            pwd.getpwnam("postgres")  # raises KeyError with a clear name when absent
            self._as_user = {"user": "postgres", "group": "postgres", "extra_groups": []}
        self.server_host = server_host
        self.server_port = server_port
        self.pool_mode = pool_mode
        self.default_pool_size = default_pool_size
        self.max_client_conn = max_client_conn
        self.settings = settings or {}
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="pgsluice-pgbouncer-"))
        self.config_file = self.root / "pgbouncer.ini"
        self.auth_file = self.root / "userlist.txt"
        self.logfile = self.root / "pgbouncer.log"
        self.pidfile = self.root / "pgbouncer.pid"
        self.proc: subprocess.Popen[bytes] | None = None
        if self._as_user:
            shutil.chown(self.root, "postgres", "postgres")

    def url(self, dbname: str = "postgres", user: str = SUPERUSER, password: str = PASSWORD) -> str:
        """A libpq URL for ``dbname`` through this PgBouncer."""
        return f"postgresql://{user}:{password}@127.0.0.1:{self.port}/{dbname}"

    def admin_url(self) -> str:
        """A libpq URL for PgBouncer's admin console (the virtual database ``pgbouncer``)."""
        return self.url("pgbouncer")

    def _write_files(self) -> None:
        # pgbouncer's auth file: "user" "password" per line; a plain-text password
        # is what lets it do SCRAM both with the client and with the server.
        self.auth_file.write_text(f'"{SUPERUSER}" "{PASSWORD}"\n')
        self.auth_file.chmod(0o600)
        conf = {
            "listen_addr": "127.0.0.1",
            "listen_port": str(self.port),
            "unix_socket_dir": "",  # TCP only, like the test PostgreSQL server
            "auth_type": "scram-sha-256",
            "auth_file": str(self.auth_file),
            "admin_users": SUPERUSER,
            "pool_mode": self.pool_mode,
            "max_client_conn": str(self.max_client_conn),
            "default_pool_size": str(self.default_pool_size),
            "pidfile": str(self.pidfile),
            **self.settings,
        }
        lines = [
            "[databases]",
            f"* = host={self.server_host} port={self.server_port}",
            "",
            "[pgbouncer]",
            *(f"{key} = {value}" for key, value in conf.items()),
        ]
        self.config_file.write_text("\n".join(lines) + "\n")
        if self._as_user:
            for path in (self.auth_file, self.config_file):
                shutil.chown(path, "postgres", "postgres")

    def log_tail(self, lines: int = 20) -> str:
        """The last ``lines`` lines of PgBouncer's log (empty when there is none yet)."""
        try:
            text = self.logfile.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def start(self, seconds: float = 30) -> None:
        """Start PgBouncer and return once it accepts connections; RuntimeError with its log tail if not."""
        self._write_files()
        # Foreground (no -d): this Popen is PgBouncer itself, stopped and reaped by stop().
        # Its log goes to stderr, into our logfile: configuration errors come
        # before PgBouncer would open a ``logfile`` of its own.
        with self.logfile.open("ab") as log:
            self.proc = subprocess.Popen(
                [str(self.binary), str(self.config_file)],
                stdout=log,
                stderr=log,
                cwd=self.root,
                **self._as_user,
            )
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            code = self.proc.poll()
            if code is not None:
                self.proc = None
                raise RuntimeError(f"pgbouncer exited with code {code} at start; its log ends:\n{self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)  # polling the port, not waiting for an event
        self.stop()
        raise RuntimeError(
            f"pgbouncer did not listen on 127.0.0.1:{self.port} within {seconds:.0f} s;"
            f" its log ends:\n{self.log_tail()}"
        )

    def stop(self) -> None:
        """SIGTERM (immediate shutdown: client connections are closed), SIGKILL after 10 s."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def cleanup(self) -> None:
        """Stop PgBouncer if it runs and remove its folder."""
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def admin_show(self, what: str) -> list[dict[str, Any]]:
        """The rows of ``SHOW <what>`` (POOLS, SERVERS, CLIENTS, …) from the admin console, as dicts."""
        if not _SHOW_WORD.fullmatch(what):
            raise ValueError(f"not a SHOW subject: {what!r}")
        # The admin console speaks only the simple query protocol ("extended query
        # protocol not supported by admin console", 08P01). psycopg's plain cursor
        # uses it too when there are no parameters, but not when binary or prepared;
        # a ClientCursor always sends one PQsendQuery.
        with (
            psycopg.connect(self.admin_url(), autocommit=True) as conn,
            psycopg.ClientCursor(conn, row_factory=dict_row) as cur,
        ):
            cur.execute(f"SHOW {what}")
            return cur.fetchall()

    def __enter__(self) -> PgBouncer:
        try:
            self.start()
        except BaseException:
            self.cleanup()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
