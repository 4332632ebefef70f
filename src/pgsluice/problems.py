"""Problem: something wrong with the files or the history, located as precisely as it can be. Pure."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """Something wrong that stops a run (or, as a warning, is worth saying), with where it is."""

    message: str
    hint: str
    filename: str | None = None
    line: int | None = None
    version: int | None = None

    def __str__(self) -> str:
        return f"{self.message}: {self.hint}" if self.hint else self.message
