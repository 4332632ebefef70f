"""The README documents what the code does: every option, every exit code, every log event."""

from __future__ import annotations

import runpy

from pgsluice.errors import ExitCode
from pgsluice.options import COMMANDS
from pgsluice.run import RUNNERS
from tests.support.cli import ROOT


def test_readme_generated_blocks_match_the_code() -> None:
    """The options table and the event list: regenerate with python scripts/readme.py."""
    readme = (ROOT / "README.md").read_text()
    render = runpy.run_path(str(ROOT / "scripts" / "readme.py"))["render"]
    assert render(readme) == readme


def test_every_exit_code_is_documented() -> None:
    """Each ExitCode value has a row in the README's exit-code table."""
    readme = (ROOT / "README.md").read_text()
    for code in ExitCode:
        if code in (ExitCode.SIGINT, ExitCode.SIGTERM):
            assert "| 130 / 143 |" in readme
        else:
            assert f"\n| {int(code)} |" in readme, code


def test_every_command_has_a_runner_and_a_readme_row() -> None:
    """The commands --help lists are the ones run.py runs, and each is in the README's table."""
    assert set(COMMANDS) == set(RUNNERS)
    readme = (ROOT / "README.md").read_text()
    for command in COMMANDS:
        assert f"| `pgsluice {command}" in readme, command


def test_log_events_come_from_the_event_list() -> None:
    """No event name is written as a bare string, and every listed event is logged somewhere."""
    import re

    from pgsluice.events import Event

    source = "\n".join(p.read_text() for p in (ROOT / "src" / "pgsluice").glob("*.py") if p.name != "events.py")
    bare = re.findall(r"log\.(?:info|warning|error|debug|exception)\(\s*\"", source)
    assert bare == []
    unused = [e.name for e in Event if f"Event.{e.name}" not in source]
    assert unused == []
