"""The process boundary: exit codes and output survive the fast exit; profilers still get their data."""

from __future__ import annotations

import pstats
import subprocess
import sys
from pathlib import Path

from tests.support.cli import ROOT, cli_env, parse_events, write_migrations


def _python(*args: str, migrations: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], env=cli_env(None, migrations), capture_output=True, text=True, check=False, cwd=ROOT
    )


def test_fast_exit_keeps_the_exit_code_and_flushes_every_line(tmp_path: Path) -> None:
    """os._exit skips teardown, not output: a failing lint exits 6 and its last JSON line is complete."""
    mdir = write_migrations(tmp_path / "m", {"001_a.sql": "SELECT 1;\n", "001_b.sql": "SELECT 2;\n"})
    proc = _python("-m", "pgsluice", "lint", migrations=mdir)
    assert proc.returncode == 6, proc.stderr
    assert proc.stdout.strip(), "lint's report on stdout was lost"
    finished = parse_events(proc.stderr)[-1]
    assert (finished["event"], finished["exit_code"]) == ("run.finished", 6)


def test_profiler_gets_its_data_despite_the_fast_exit(tmp_path: Path) -> None:
    """Under cProfile (or coverage, or a debugger) pgsluice exits normally, so the profile is written."""
    out = tmp_path / "profile.out"
    proc = _python("-m", "cProfile", "-o", str(out), "-m", "pgsluice", "--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("pgsluice ")
    assert pstats.Stats(str(out)).total_calls > 0  # type: ignore[attr-defined]  # set by Stats, not in typeshed
