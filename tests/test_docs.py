"""The README documents what the code does: every option, every exit code."""

from __future__ import annotations

import re
import runpy

from pgsluice.errors import ExitCode
from tests.support.cli import ROOT


def test_readme_options_table_matches_the_code() -> None:
    """Regenerate with: python scripts/options_table.py (between the options-table markers)."""
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- options-table:start -->\n(.*?)\n<!-- options-table:end -->", readme, re.S)
    assert block is not None
    table = runpy.run_path(str(ROOT / "scripts" / "options_table.py"))["options_table"]()
    assert block.group(1) == table


def test_every_exit_code_is_documented() -> None:
    """Each ExitCode value has a row in the README's exit-code table."""
    readme = (ROOT / "README.md").read_text()
    for code in ExitCode:
        if code in (ExitCode.SIGINT, ExitCode.SIGTERM):
            assert "| 130 / 143 |" in readme
        else:
            assert f"\n| {int(code)} |" in readme, code
