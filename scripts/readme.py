"""Regenerate the README's generated blocks from the code: the options table, the log events, the safety rules.

python scripts/readme.py          # rewrite README.md in place
python scripts/readme.py --check  # exit 1 when README.md is out of date (tests/test_docs.py does the same)
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from pgsluice.config import OPTIONS
from pgsluice.events import readme_list
from pgsluice.options import readme_table
from pgsluice.safety import readme_table as safety_rules_table

README = Path(__file__).resolve().parent.parent / "README.md"


def blocks() -> dict[str, str]:
    """Each generated block's name and its content."""
    return {"options-table": readme_table(OPTIONS), "events": readme_list(), "safety-rules": safety_rules_table()}


def render(text: str) -> str:
    """``text`` with every ``<!-- NAME:start --> … <!-- NAME:end -->`` block regenerated."""
    for name, content in blocks().items():
        pattern = re.compile(rf"(<!-- {name}:start -->\n).*?(\n<!-- {name}:end -->)", re.S)
        if not pattern.search(text):
            raise SystemExit(f"README.md has no <!-- {name}:start --> … <!-- {name}:end --> block")
        text = pattern.sub(lambda m: f"{m.group(1)}{content}{m.group(2)}", text)  # noqa: B023 - used at once
    return text


def main(argv: list[str]) -> int:
    """Rewrite the README, or with --check say whether it is current."""
    current = README.read_text(encoding="utf-8")
    wanted = render(current)
    if "--check" in argv:
        if wanted != current:
            print("README.md is out of date: run python scripts/readme.py", file=sys.stderr)
            return 1
        return 0
    README.write_text(wanted, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
