"""pg_dump and pg_restore: finding them, and pg_dump's version asked ahead and checked against the server."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import psycopg

from pgsluice.errors import ConfigError


def require_tool(program: str) -> None:
    """ConfigError (exit 2) when ``program`` (pg_dump, pg_restore) is not installed."""
    if shutil.which(program) is None:
        raise ConfigError(
            f"{program} not found",
            hint="install postgresql-client (the pgsluice image has it) or set --pg-dump / --pg-restore",
        )


def companion(program: str, name: str) -> str:
    """``name`` (psql) beside ``program`` (pg_restore) when it is there, so both are one client version."""
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
            raise ConfigError(f"cannot run {program}: {exc.strerror}", hint="check --pg-dump / --pg-restore") from None
        self._version: str | None = None

    def version(self) -> str:
        """``pg_dump (PostgreSQL) 17.2 (Debian …)``."""
        if self._version is None:
            self._version = (self._proc.communicate()[0] or "").strip()
        return self._version

    def major(self) -> int:
        """The major version, 17 for 17.2; ConfigError when the output has none."""
        return _major(self.version())

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
