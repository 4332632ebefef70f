"""PostgreSQL's client programs (pg_dump, pg_restore, psql): found, versioned, connected as pgsluice is.

A child program connects exactly as pgsluice did: it inherits libpq's environment
(PGPASSWORD, PGPASSFILE, PGSERVICE, PGSSLROOTCERT…), gets the configured URL's
parameters, and receives every credential through its environment or a private
temporary service file, never through its argv (which every user of the machine can
read in the process list).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import threading
from collections import deque
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import psycopg

from pgsluice import __version__, dsn
from pgsluice.errors import ConfigError

CHILD_SERVICE = "pgsluice_child"


def require_tool(program: str) -> None:
    """ConfigError (exit 2) when ``program`` (pg_dump, pg_restore) is not installed."""
    if shutil.which(program) is None:
        raise ConfigError(
            f"{program} not found",
            hint="install postgresql-client (the pgsluice image has it) or set --pg-dump / --pg-restore",
        )


def sibling_program(program: str, name: str) -> str:
    """``name`` (psql) in the folder of ``program`` (pg_restore) when it is there, so both are one client version."""
    found = shutil.which(program)
    if found:
        beside = Path(found).resolve().with_name(name)
        if beside.exists():
            return str(beside)
    require_tool(name)
    return name


def _major(version_output: str) -> int:
    match = re.search(r"\(PostgreSQL\)\s+(\d+)", version_output)  # "pg_dump (PostgreSQL) 17.2 (Debian …)"
    if not match:
        raise ConfigError(f"cannot read a version from {version_output.strip()!r}")
    return int(match.group(1))


class ClientTool:
    """A PostgreSQL client program (pg_dump, pg_restore), found and asked its version as soon as it is made.

    pgsluice makes pg_dump's before it waits for the database: a missing pg_dump is exit 2 at
    once instead of after the wait and the lock, and ``pg_dump --version`` (~20 ms: the dynamic
    linker's work) has run by the time the plan shows pending work. A context manager: the
    version process is always reaped.
    """

    def __init__(self, program: str) -> None:
        require_tool(program)
        self.program = program
        try:
            self._proc = subprocess.Popen(
                [program, "--version"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
            )
        except OSError as exc:
            raise ConfigError(f"cannot run {program}: {exc.strerror}", hint="check --pg-dump / --pg-restore") from exc
        self._version: str | None = None

    def version(self) -> str:
        """``pg_dump (PostgreSQL) 17.2 (Debian …)``."""
        if self._version is None:
            self._version = (self._proc.communicate()[0] or "").strip()
        return self._version

    def major(self) -> int:
        """The major version, 17 for 17.2; ConfigError when the output has none."""
        return _major(self.version())

    def check_compression_level(self, level: int | None) -> None:
        """pg_dump >= 16 compresses with zstd (levels 1-19), older ones with gzip (0-9); ConfigError otherwise."""
        if level is None:
            return
        low, high, method = (1, 19, "zstd") if self.major() >= 16 else (0, 9, "gzip")
        if not low <= level <= high:
            raise ConfigError(
                f"--backup-compression-level {level}: {self.program} {self.major()} compresses with {method}, "
                f"whose levels are {low} to {high}",
                hint=f"choose a level from {low} to {high}",
            )

    def check_can_dump(self, conn: psycopg.Connection[Any]) -> tuple[int, str]:
        """pg_dump must be at least the server's major version; ConfigError (exit 2) naming both.

        Returns pg_dump's major version and the server's version string."""
        dump_version = self.version()
        dump_major = self.major()
        server_major = conn.info.server_version // 10000
        server_version = conn.info.parameter_status("server_version") or str(conn.info.server_version)
        if dump_major < server_major:
            raise ConfigError(
                f"pg_dump {dump_major} cannot dump PostgreSQL {server_major} ({dump_version}; server {server_version})",
                hint=f"use an image with postgresql-client-{server_major} or newer (build arg PG_MAJOR={server_major})",
            )
        return dump_major, server_version

    def __enter__(self) -> ClientTool:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._version is None:  # never asked: nothing was pending, or the run failed first
            self._proc.kill()
            self._proc.communicate()


class StderrTail:
    """Drains a child's stderr in a thread (so it never blocks) and keeps the last lines."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.lines: deque[str] = deque(maxlen=20)
        self._thread = threading.Thread(target=self._drain, args=(stream,), daemon=True)
        self._thread.start()

    def _drain(self, stream: IO[bytes]) -> None:
        for raw in stream:
            self.lines.append(raw.decode(errors="replace").rstrip())

    def text(self) -> str:
        """The last lines, joined on one line ("nothing on stderr" when there were none)."""
        self._thread.join(timeout=5)
        return " | ".join(line for line in self.lines if line) or "nothing on stderr"


def _service_file_of(env: Mapping[str, str]) -> list[Path]:
    """Where libpq looks for a connection service file, in its order."""
    found: list[Path] = []
    if env.get("PGSERVICEFILE"):
        found.append(Path(env["PGSERVICEFILE"]))
    else:
        found.append(Path(env.get("HOME", "~")).expanduser() / ".pg_service.conf")
    if env.get("PGSYSCONFDIR"):
        found.append(Path(env["PGSYSCONFDIR"]) / "pg_service.conf")
    return found


def _service_lines(name: str, env: Mapping[str, str]) -> list[str]:
    """The ``key=value`` lines of service ``name``, as libpq would find them."""
    for path in _service_file_of(env):
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError:
            continue
        section: str | None = None
        found: list[str] = []
        for line in lines:
            stripped = line.strip()
            if stripped.startswith("[") and stripped.endswith("]"):
                section = stripped[1:-1]
            elif section == name and "=" in stripped and not stripped.startswith("#"):
                found.append(stripped)
        if found:
            return found
    return []


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\")


@contextmanager
def child_connection(url: str, password: str | None, purpose: str) -> Iterator[tuple[str, dict[str, str]]]:
    """``(conninfo for --dbname, environment)`` for a client program to connect as pgsluice does.

    ``url`` is the configured URL or conninfo (empty: libpq's PG* variables alone) and
    ``password`` the one from PGPASSWORD_FILE. The password goes in PGPASSWORD; other
    credentials (sslpassword, …) in a temporary service file readable by this user only,
    removed when the block ends. Nothing secret is in the conninfo."""
    params = dsn.parse_conninfo(url) if url else {}
    if password is not None:
        params["password"] = password
    env = dict(os.environ)
    secrets = {key: params.pop(key) for key in [k for k in params if dsn.is_secret_param(k)]}
    if "password" in secrets:
        env["PGPASSWORD"] = secrets.pop("password")
    folder: str | None = None
    try:
        if secrets:
            folder = tempfile.mkdtemp(prefix="pgsluice-")
            service = params.pop("service", None) or env.get("PGSERVICE")
            base = _service_lines(service, env) if service else []
            keys = {line.split("=", 1)[0].strip() for line in base}
            lines = [f"[{CHILD_SERVICE}]", *base, *(f"{k}={_quote(v)}" for k, v in secrets.items() if k not in keys)]
            lines += [f"{k}={_quote(v)}" for k, v in secrets.items() if k in keys]  # ours win over theirs
            path = Path(folder) / "pg_service.conf"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write("\n".join(lines) + "\n")
            env["PGSERVICEFILE"] = str(path)
            params["service"] = CHILD_SERVICE
        from psycopg.conninfo import make_conninfo

        params["application_name"] = f"pgsluice {__version__} {purpose}"
        yield make_conninfo(**params), env
    finally:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
