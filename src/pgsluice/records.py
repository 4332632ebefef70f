"""What the history table holds: its rows and the fixed words of its columns. Pure data."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum


class RowStatus(StrEnum):
    """The ``status`` column."""

    APPLIED = "applied"
    STARTED = "started"


class Execution(StrEnum):
    """The ``execution`` column: how a migration was applied."""

    TRANSACTION = "transaction"
    NO_TRANSACTION = "no-transaction"
    COMMENTS_ONLY = "comments only"
    """A file of comments only: a deliberate no-op, recorded so the numbering stays."""
    BASELINE = "baseline"
    RESOLVED = "no-transaction, resolved"
    REVERTING = "down, no-transaction"
    """A no-transaction down migration is running: the row is 'started' until it is deleted."""


@dataclass(frozen=True)
class HistoryRow:
    """One row of the history table."""

    version: int
    name: str
    checksum: str
    file_sha256: str | None
    status: RowStatus
    execution: str
    started_at: datetime | None
    applied_at: datetime | None
    duration_seconds: float | None
    applied_by: str | None
    hostname: str | None
    pgsluice_version: str | None
    down_sql: str | None = None
    """The migration's ``.down.sql`` as it was when the migration was applied (so an older release can undo it)."""
    down_checksum: str | None = None


@dataclass(frozen=True)
class RepeatableRow:
    """The last application of a repeatable migration (``R_<name>.sql``)."""

    name: str
    checksum: str
    file_sha256: str | None
    applied_at: datetime | None
    applied_by: str | None
    hostname: str | None
    duration_seconds: float | None
