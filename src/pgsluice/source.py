"""read_folder(): the one place that reads the migrations folder from disk.

Only regular files are read, and only inside the folder: a FIFO named like a migration
would block the run forever, and a symlink pointing elsewhere would run SQL nobody put
in the folder. Symlinks that stay inside (a Kubernetes ConfigMap volume is made of them:
``001_a.sql -> ..data/001_a.sql``) are followed. Files included with ``\\i``/``\\ir``
are read too, so that the pure core (``migrations.discover``) has everything it needs.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pgsluice.errors import ConfigError
from pgsluice.problems import Problem
from pgsluice.script import include_targets

_KINDS = {
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFDIR: "a folder",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}


@dataclass(frozen=True)
class FolderContent:
    """What the migrations folder holds: the bytes of every ``.sql`` file read, and what could not be read."""

    files: dict[str, bytes]
    """By path relative to the folder (POSIX separators): top-level ``.sql`` files and included files."""
    names: tuple[str, ...]
    """The top-level ``.sql`` file names, sorted: the candidates for migrations."""
    problems: tuple[Problem, ...]

    @classmethod
    def of(cls, files: Iterable[tuple[str, bytes]]) -> FolderContent:
        """A folder's content from ``(name, bytes)`` pairs, as tests and tools build it in memory."""
        content = dict(files)
        names = tuple(sorted(name for name in content if name.endswith(".sql") and "/" not in name))
        return cls(content, names, ())


def _size(n: int) -> str:
    return f"{n / 1024**2:.1f} MiB" if n >= 1024**2 else f"{n} bytes"


def _read(path: Path, relative: str, root: Path, max_bytes: int, *, may_escape: bool = True) -> bytes | Problem:
    """The file's bytes, or the Problem that says why it is not read; ``may_escape=False`` for a plain
    (not symlinked) entry of the folder itself, which needs no resolving."""
    try:
        target = path.resolve() if may_escape else root
        if not target.is_relative_to(root):
            return Problem(
                f"{relative}: a symbolic link to {target}, outside the migrations folder",
                "copy the file into the folder, or link to a file inside it",
                filename=relative,
            )
        info = os.stat(path)
    except OSError as exc:
        return Problem(f"{relative}: cannot read it: {exc.strerror}", "check the file", filename=relative)
    kind = stat.S_IFMT(info.st_mode)
    if kind != stat.S_IFREG:
        what = _KINDS.get(kind, "not a regular file")
        return Problem(
            f"{relative}: is {what}, not a regular file",
            "a migration must be a regular file; remove it or rename it so that it does not end in .sql",
            filename=relative,
        )
    if info.st_size > max_bytes:
        return Problem(
            f"{relative}: is {_size(info.st_size)}, over the limit of {_size(max_bytes)} (--max-file-size)",
            "raise --max-file-size if the machine has the memory for it, or split the file",
            filename=relative,
        )
    try:
        # O_NONBLOCK: should the file have been swapped for a FIFO since stat, open does not block.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        with os.fdopen(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                return Problem(f"{relative}: is not a regular file", "remove it", filename=relative)
            return fh.read(max_bytes + 1)
    except OSError as exc:
        return Problem(f"{relative}: cannot read it: {exc.strerror}", "check the file's permissions", filename=relative)


def read_folder(folder: Path, *, max_file_bytes: int = 256 * 1024**2) -> FolderContent:
    """Every ``.sql`` file of ``folder`` (not its subfolders) and every file they include."""
    if not folder.is_dir():
        raise ConfigError(
            f"migrations folder {folder} does not exist or is not a folder",
            hint="set --migrations-dir / PGSLUICE_MIGRATIONS_DIR, or mount the migrations there",
        )
    root = folder.resolve()
    files: dict[str, bytes] = {}
    problems: list[Problem] = []
    linked: dict[str, bool] = {}
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.endswith(".sql"):
                linked[entry.name] = entry.is_symlink()
    names = sorted(linked)
    queue: list[str] = []
    for name in names:
        content = _read(folder / name, name, root, max_file_bytes, may_escape=linked[name])
        if isinstance(content, Problem):
            problems.append(content)
            continue
        files[name] = content
        queue.append(name)
    while queue:  # included files, and what they include
        current = queue.pop()
        for target in include_targets(current, files[current]):
            if target in files or target.startswith("..") or os.path.isabs(target):
                continue  # already read; an escape is reported by the script's own check
            path = folder / target
            if not path.exists() and not path.is_symlink():
                continue  # reported where the include is, with its line
            content = _read(path, target, root, max_file_bytes)
            if isinstance(content, Problem):
                problems.append(content)
                continue
            files[target] = content
            queue.append(target)
    return FolderContent(files, tuple(n for n in names if n in files), tuple(problems))
