"""Print the README's options table from pgsluice.config.OPTIONS (tests/test_docs.py keeps them in sync)."""

from __future__ import annotations

from pgsluice.config import OPTIONS
from pgsluice.options import readme_table


def options_table() -> str:
    """Markdown: flag, environment, default, unit, meaning."""
    return readme_table(OPTIONS)


if __name__ == "__main__":
    print(options_table())
