"""A streaming replica of a running ``pgserver.PostgresServer``, for tests against a hot standby.

``pg_basebackup -R -X stream`` into a temporary folder, then ``pg_ctl start`` on
a free loopback port. As root, both run as the ``postgres`` user, like the
primary. The password reaches ``pg_basebackup`` through ``PGPASSWORD`` in its
environment, never through its argv (which ``ps`` shows to everyone); ``-R``
writes it into the standby's own ``postgresql.auto.conf``, inside its 0700 data
folder, for the WAL receiver.

The primary's ``pg_hba.conf`` from ``initdb`` already allows replication
connections from 127.0.0.1 with SCRAM, so the primary needs no change.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from tests.support.pgserver import PASSWORD, SUPERUSER, PostgresServer, free_port


class Standby:
    """A hot standby of ``primary`` on 127.0.0.1:<free port>, streaming its WAL."""

    def __init__(self, primary: PostgresServer, port: int | None = None) -> None:
        self.primary = primary
        self.bindir = primary.bindir
        self.port = port or free_port()
        self.root = Path(tempfile.mkdtemp(prefix="pgsluice-standby-"))
        self.datadir = self.root / "data"
        self.logfile = self.root / "server.log"
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            self._as_user = ["runuser", "-u", "postgres", "--"]
            shutil.chown(self.root, "postgres", "postgres")

    def url(self, dbname: str = "postgres", user: str = SUPERUSER, password: str = PASSWORD) -> str:
        """A libpq URL for ``dbname`` on this standby."""
        return f"postgresql://{user}:{password}@127.0.0.1:{self.port}/{dbname}"

    def _run(self, *args: str, env: dict[str, str] | None = None) -> None:
        """Run a PostgreSQL tool (as postgres when root); RuntimeError with its stderr and our log tail on failure."""
        done = subprocess.run(
            [*self._as_user, *args], capture_output=True, text=True, cwd=self.root, env=env, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"{Path(args[0]).name} failed with exit code {done.returncode}: {done.stderr.strip()}"
                f"\nstandby log ends:\n{self.log_tail()}"
            )

    def log_tail(self, lines: int = 20) -> str:
        """The last ``lines`` lines of the standby's server log (empty before it starts)."""
        try:
            text = self.logfile.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _query(self, sql: str) -> Any:
        with psycopg.connect(self.url(), autocommit=True, connect_timeout=5) as conn:
            row = conn.execute(sql).fetchone()
            return row[0] if row else None

    def create(self) -> None:
        """Copy the primary with ``pg_basebackup -R -X stream`` and point the copy at its own port and socket folder."""
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("PG")},
            "PGPASSWORD": PASSWORD,
        }
        self._run(
            str(self.bindir / "pg_basebackup"),
            "--host=127.0.0.1",
            f"--port={self.primary.port}",
            f"--username={SUPERUSER}",
            f"--pgdata={self.datadir}",
            "--write-recovery-conf",  # -R: standby.signal and primary_conninfo
            "--wal-method=stream",  # -X stream
            "--checkpoint=fast",  # the default, spread, waits for the primary's next checkpoint
            "--no-sync",
            "--no-password",
            env=env,
        )
        # The copied postgresql.conf carries the primary's port and socket folder;
        # later lines win, so these make the standby listen on its own.
        with (self.datadir / "postgresql.conf").open("a") as fh:
            fh.write(f"port = {self.port}\n")
            fh.write(f"unix_socket_directories = '{self.root}'\n")
            fh.write("hot_standby = on\n")

    def start(self, seconds: float = 60) -> None:
        """Start the standby and return once it accepts connections and is in recovery."""
        self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.datadir),
            "-l",
            str(self.logfile),
            "-w",
            "-t",
            str(round(seconds)),
            "start",
        )
        self._wait_for(lambda: self._query("SELECT pg_is_in_recovery()") is True, "be in recovery", seconds)

    def wait_for_catch_up(self, seconds: float = 30) -> None:
        """Return once the standby has replayed everything the primary had written when called."""
        # The insert position, not pg_current_wal_lsn() (the write position): the test
        # primary runs with synchronous_commit = off, so a commit may not be written yet.
        with psycopg.connect(self.primary.url(), autocommit=True) as conn:
            target = str(conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchall()[0][0])
        self._wait_for(
            lambda: self._query(f"SELECT pg_last_wal_replay_lsn() >= '{target}'::pg_lsn") is True,
            f"replay the primary's WAL up to {target}",
            seconds,
        )

    def promote(self, seconds: float = 60) -> None:
        """Promote the standby to a primary and return once it accepts writes."""
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-w", "-t", str(round(seconds)), "promote")
        self._wait_for(lambda: self._query("SELECT pg_is_in_recovery()") is False, "leave recovery", seconds)

    def _wait_for(self, done: Callable[[], bool], what: str, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                if done():
                    return
            except psycopg.OperationalError as exc:  # not accepting connections yet
                last = exc
            time.sleep(0.05)  # polling the standby's state, not waiting for an event
        raise RuntimeError(
            f"the standby on 127.0.0.1:{self.port} did not {what} within {seconds:.0f} s"
            f" (last error: {last}); its log ends:\n{self.log_tail()}"
        )

    def stop(self, mode: str = "fast") -> None:
        """Stop the standby (``fast`` terminates sessions, ``immediate`` crashes it)."""
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", mode, "-w", "stop")

    def cleanup(self) -> None:
        """Stop the standby if it runs and remove its folder."""
        if (self.datadir / "postmaster.pid").exists():
            with contextlib.suppress(RuntimeError):
                self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Standby:
        try:
            self.create()
            self.start()
        except BaseException:
            self.cleanup()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
