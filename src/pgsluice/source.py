"""read_folder(): the one place that reads the migrations folder from disk."""

from __future__ import annotations

from pathlib import Path

from pgsluice.errors import ConfigError, InconsistentError


def read_folder(folder: Path) -> list[tuple[str, bytes]]:
    """``(file name, content)`` of every ``.sql`` file in ``folder``; other files are listed empty."""
    if not folder.is_dir():
        raise ConfigError(
            f"migrations folder {folder} does not exist or is not a folder",
            hint="set --migrations-dir / PGSLUICE_MIGRATIONS_DIR, or mount the migrations there",
        )
    files: list[tuple[str, bytes]] = []
    for path in folder.iterdir():
        if not path.name.endswith(".sql"):
            continue
        try:
            files.append((path.name, path.read_bytes()))
        except OSError as exc:
            raise InconsistentError(f"cannot read {path}: {exc.strerror}", hint="check the file's permissions") from exc
    return files
