"""create_migration(): the next numbered file, for ``pgsluice new``."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

from pgsluice.errors import ConfigError
from pgsluice.migrations import FILE_NAME, TEMPLATE_MARK

_NAME = re.compile(r"^[a-z0-9_]+$")

TEMPLATE = """\
-- {filename}
-- Created {date} {mark}
-- Runs in one transaction together with its history row. For CREATE INDEX
-- CONCURRENTLY and other statements that cannot, put this on the first line:
--   -- pgsluice: no-transaction

"""


def create_migration(folder: Path, name: str) -> Path:
    """Write ``NNN_name.sql`` one above the highest version, as wide as the existing ones (3 at least)."""
    name = name.strip().lower().replace("-", "_").replace(" ", "_")
    if not _NAME.match(name):
        raise ConfigError(
            f"new: {name!r} is not a migration name", hint="use lowercase letters, digits and underscores"
        )
    if not folder.is_dir():
        raise ConfigError(f"new: migrations folder {folder} does not exist", hint="create it or set --migrations-dir")
    versions: list[tuple[int, int]] = []
    for path in folder.iterdir():
        match = FILE_NAME.match(path.name)
        if match:
            versions.append((int(match["version"]), len(match["version"])))
    top = max((v for v, _ in versions), default=0)
    width = max([3, *(w for _, w in versions)])
    filename = f"{top + 1:0{width}d}_{name}.sql"
    path = folder / filename
    with path.open("x", encoding="utf-8") as fh:
        fh.write(TEMPLATE.format(filename=filename, date=datetime.now(UTC).date().isoformat(), mark=TEMPLATE_MARK))
    return path
