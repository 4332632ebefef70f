"""A throwaway PostgreSQL server for tests, benchmarks and the demo.

``initdb`` into a temporary folder, ``pg_ctl start`` on a free loopback port,
password (SCRAM) authentication over TCP only. As root, the server runs as the
``postgres`` user (``initdb`` refuses root), as Debian's package creates it.

Used as a library by ``tests/conftest.py`` and as a command::

    python tests/support/pgserver.py run -- pgsluice migrate

which starts a server, runs the command with ``DATABASE_URL`` set, stops the
server and exits with the command's exit code; ``start --dir FOLDER`` / ``stop --dir
FOLDER`` keep one running in between (``scripts/dev-db``).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SUPERUSER = "sluice_admin"
PASSWORD = "s3cret-Pa55-7f1e"


def find_bindir() -> Path:
    """Return the folder of the newest installed PostgreSQL server binaries."""
    override = os.environ.get("PGSLUICE_TEST_PG_BINDIR")
    if override:
        return Path(override)
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parent.parent.name),
    )
    if candidates:
        return Path(candidates[-1]).parent
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    raise RuntimeError(
        "no PostgreSQL server binaries found: install Debian's 'postgresql' package or set PGSLUICE_TEST_PG_BINDIR"
    )


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, what: str, seconds: float = 30) -> None:
    """Return once something accepts connections on 127.0.0.1:``port``; RuntimeError naming ``what`` if not."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not start on 127.0.0.1:{port} within {seconds:.0f} s")


def start_server(argv: list[str], port: int, what: str, **popen: Any) -> subprocess.Popen[bytes]:
    """Start a loopback server (moto, Azurite) and return once it listens on ``port``; stopped if it never does."""
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **popen)
    try:
        wait_for_port(port, what)
    except RuntimeError:
        stop_server(proc)
        raise
    return proc


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 10 s."""
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class PostgresServer:
    """One PostgreSQL cluster in a temporary folder, listening on 127.0.0.1."""

    def __init__(
        self, port: int | None = None, settings: dict[str, str] | None = None, root: Path | None = None
    ) -> None:
        self.bindir = find_bindir()
        self.port = port or free_port()
        self.settings = settings or {}
        if root is not None:
            root.mkdir(parents=True)
            self.root = root.resolve()
        else:
            self.root = Path(tempfile.mkdtemp(prefix="pgsluice-pg-"))
        self.datadir = self.root / "data"
        self.logfile = self.root / "server.log"
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            pwd.getpwnam("postgres")  # raises KeyError with a clear name when absent
            self._as_user = ["runuser", "-u", "postgres", "--"]
            shutil.chown(self.root, "postgres", "postgres")

    @property
    def version(self) -> int:
        """The server's major version."""
        out = subprocess.run(
            [str(self.bindir / "postgres"), "--version"], check=True, capture_output=True, text=True
        ).stdout
        return int(out.split()[-1].split(".")[0])

    def url(self, dbname: str = "postgres", user: str = SUPERUSER, password: str = PASSWORD) -> str:
        """A libpq URL for ``dbname`` on this server."""
        return f"postgresql://{user}:{password}@127.0.0.1:{self.port}/{dbname}"

    def _run(self, *args: str) -> None:
        subprocess.run([*self._as_user, *args], check=True, capture_output=True, cwd=self.root)

    def init(self) -> None:
        """Create the cluster with a password-protected superuser."""
        pwfile = self.root / "pw"
        pwfile.write_text(PASSWORD)
        if self._as_user:
            shutil.chown(pwfile, "postgres", "postgres")
        self._run(
            str(self.bindir / "initdb"),
            "-D",
            str(self.datadir),
            "-U",
            SUPERUSER,
            "--pwfile",
            str(pwfile),
            "--auth=scram-sha-256",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        )
        pwfile.unlink()
        conf = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.root}'",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "200",
            "log_min_messages": "warning",
            **self.settings,
        }
        with (self.datadir / "postgresql.conf").open("a") as fh:
            for key, value in conf.items():
                fh.write(f"{key} = {value}\n")

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.datadir),
            "-l",
            str(self.logfile),
            "-w",
            "-t",
            "60",
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast`` terminates sessions, ``immediate`` crashes it)."""
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", mode, "-w", "stop")

    def restart(self) -> None:
        """Stop and start again: every session is terminated."""
        self.stop()
        self.start()

    def cleanup(self) -> None:
        """Stop the server if it runs and remove its folder."""
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        self.init()
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


def _keep(folder: Path) -> int:
    """``start --dir FOLDER``: a server that keeps running (for trying pgsluice by hand); prints its URL."""
    if (folder / "url").exists():
        print(f"export DATABASE_URL='{(folder / 'url').read_text().strip()}'")
        print(f"pgserver: already running in {folder}", file=sys.stderr)
        return 0
    server = PostgresServer(root=folder)
    server.init()
    server.start()
    url = server.url()
    (folder / "url").write_text(url + "\n")
    (folder / "port").write_text(f"{server.port}\n")
    print(f"export DATABASE_URL='{url}'")
    print(f"pgserver: PostgreSQL {server.version} on 127.0.0.1:{server.port}, data in {folder}", file=sys.stderr)
    print("pgserver: stop it with scripts/dev-db stop", file=sys.stderr)
    return 0


def _drop(folder: Path) -> int:
    """``stop --dir FOLDER``: stop that server and remove its folder."""
    if not (folder / "port").exists():
        print(f"pgserver: nothing runs in {folder}", file=sys.stderr)
        return 0
    server = PostgresServer.__new__(PostgresServer)
    server.bindir = find_bindir()
    server.root = folder.resolve()
    server.datadir = server.root / "data"
    server._as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    server.cleanup()
    print(f"pgserver: stopped and removed {folder}", file=sys.stderr)
    return 0


def _main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] in ("start", "stop") and argv[1] == "--dir":
        return _keep(Path(argv[2])) if argv[0] == "start" else _drop(Path(argv[2]))
    if len(argv) < 3 or argv[0] != "run" or argv[1] != "--":
        print("usage: pgserver.py run -- COMMAND [ARG...] | start --dir FOLDER | stop --dir FOLDER", file=sys.stderr)
        return 2
    with PostgresServer() as server:
        env = {**os.environ, "DATABASE_URL": server.url()}
        print(f"pgserver: throwaway PostgreSQL {server.version} on 127.0.0.1:{server.port}", file=sys.stderr)
        started = time.monotonic()
        code = subprocess.run(argv[2:], env=env, check=False).returncode
        print(f"pgserver: command exited {code} after {time.monotonic() - started:.2f}s; stopping", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
