"""Running the real CLI in OS processes, and reading what it logged.

Every helper here starts ``python -m pgsluice`` as its own process with an environment
built from scratch (no PG* or PGSLUICE_* variable of the caller leaks in), and parses its
JSON log lines. Waiting helpers poll real state to a deadline; none sleeps and hopes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from tests.support.pgserver import PASSWORD

ROOT = Path(__file__).resolve().parent.parent.parent
T = TypeVar("T")


@dataclass
class Result:
    """A finished pgsluice process."""

    returncode: int
    stdout: str
    stderr: str
    events: list[dict[str, Any]] = field(default_factory=list)

    def event(self, name: str) -> dict[str, Any]:
        """The last event called ``name``; fails the test when there is none."""
        found = [e for e in self.events if e.get("event") == name]
        assert found, f"no {name} event in:\n{self.stderr}"
        return found[-1]

    def all(self, name: str) -> list[dict[str, Any]]:
        """Every event called ``name``, in order."""
        return [e for e in self.events if e.get("event") == name]

    def names(self) -> list[str]:
        """The event names, in order."""
        return [str(e.get("event")) for e in self.events]

    @property
    def finished(self) -> dict[str, Any]:
        """The ``run.finished`` event."""
        return self.event("run.finished")

    @property
    def output(self) -> str:
        """stdout and stderr together, for checks that a secret is nowhere."""
        return self.stdout + self.stderr


def parse_events(stderr: str) -> list[dict[str, Any]]:
    """The JSON log lines of a run, in order."""
    events = []
    for raw in stderr.splitlines():
        line = raw.strip()
        if line.startswith("{"):
            events.append(json.loads(line))
    return events


def cli_env(url: str | None, migrations: Path | None, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The child's environment: this one without PG*/PGSLUICE_*/DATABASE_URL*, JSON logs, then ``env``."""
    child = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "PGSLUICE_", "DATABASE_URL"))}
    child.update({"PGSLUICE_LOG_FORMAT": "json", "PGCONNECT_TIMEOUT": "3"})
    if url:
        child["DATABASE_URL"] = url
    if migrations is not None:
        child["PGSLUICE_MIGRATIONS_DIR"] = str(migrations)
    child.update(env or {})
    return child


def pgsluice_cmd() -> list[str]:
    """How to start pgsluice: this interpreter, ``-m pgsluice``."""
    return [sys.executable, "-m", "pgsluice"]


def run_cli(
    *args: str,
    url: str | None = None,
    migrations: Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 120,
) -> Result:
    """Run the real CLI in its own process and parse its JSON log lines."""
    proc = subprocess.run(
        [*pgsluice_cmd(), *args],
        env=cli_env(url, migrations, env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=ROOT,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr, parse_events(proc.stderr))


def start(
    url: str | None,
    migrations: Path | None,
    *args: str,
    log: Path,
    env: Mapping[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start pgsluice in the background, its stderr to ``log``."""
    with log.open("wb") as sink:  # the child keeps its own descriptor
        return subprocess.Popen(
            [*pgsluice_cmd(), *args],
            env=cli_env(url, migrations, env),
            stdout=subprocess.DEVNULL,
            stderr=sink,
            cwd=ROOT,
        )


def finished(proc: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> Result:
    """Wait for a process from ``start`` and read its log."""
    code = proc.wait(timeout=timeout)
    text = log.read_text()
    return Result(code, "", text, parse_events(text))


def poll(check: Callable[[], T], what: str, timeout: float = 30) -> T:
    """Poll ``check`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def write_migrations(folder: Path, files: Mapping[str, str]) -> Path:
    """Write ``files`` (name -> SQL) into ``folder``, creating it."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text, encoding="utf-8")
    return folder


def assert_no_secret(*texts: str, secrets: tuple[str, ...] = (PASSWORD,)) -> None:
    """None of ``secrets`` (by default the test server's password) appears in any of ``texts``."""
    for text in texts:
        for secret in secrets:
            assert secret not in text, f"a secret leaked into: {text[:500]}"
