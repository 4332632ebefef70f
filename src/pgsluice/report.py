"""Report: what a run did, the one ``run.finished`` event, and the termination message."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import structlog

from pgsluice.errors import ExitCode
from pgsluice.events import Event
from pgsluice.redact import Redactor

log = structlog.get_logger("pgsluice.report")

TERMINATION_MESSAGE_MAX_BYTES = 4096  # what Kubernetes keeps of it


@dataclass(frozen=True)
class BackupSummary:
    """A backup taken (or restored) by this run, as ``run.finished`` and the termination message name it."""

    id: str
    object: str
    bytes: int
    sha256: str
    verified: bool | None = None


@dataclass
class Report:
    """Filled in by the steps as they go; emitted once at the end."""

    command: str
    started: float = field(default_factory=time.monotonic)
    applied: list[int] = field(default_factory=list)
    reverted: list[int] = field(default_factory=list)
    """Versions a down migration undid."""
    repeatables_applied: list[str] = field(default_factory=list)
    pending_before: list[int] = field(default_factory=list)
    current_version: int | None = None
    target_version: int | None = None
    step_seconds: dict[str, float] = field(default_factory=dict)
    lock_wait_seconds: float | None = None
    backup: BackupSummary | None = None
    reason: str | None = None
    """Why a run that raised nothing still exits non-zero (status --exit-code: what is pending)."""
    in_flight: str | None = None
    """The migration file being applied: on failure, ``run.finished`` names it as ``failed_migration``."""
    details: dict[str, Any] = field(default_factory=dict)
    connections: list[Any] = field(default_factory=list, repr=False)
    """The run's open connections, so that a fleet can cancel their statements on SIGTERM."""

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        """Time the block as step ``name`` (also when it fails)."""
        since = time.monotonic()
        try:
            yield
        finally:
            self.step_seconds[name] = round(time.monotonic() - since, 4)

    def record_reverted(self, version: int) -> None:
        """A down migration committed: ``version`` is no longer applied."""
        self.reverted.append(version)

    def record_applied(self, version: int) -> None:
        """A migration committed: it is applied, and the current version is at least it."""
        self.applied.append(version)
        if self.current_version is None or version > self.current_version:
            self.current_version = version


def outcome_of(code: int) -> str:
    """The word for an exit code in ``run.finished``."""
    if code == ExitCode.OK:
        return "success"
    if code == ExitCode.PENDING:
        return "pending"
    if code in (ExitCode.SIGINT, ExitCode.SIGTERM):
        return "interrupted"
    return "failure"


def termination_message(report: Report, reason: str) -> str:
    """One line: the reason, and the backup to roll back to when one was taken."""
    line = " ".join(reason.split())
    if report.backup is not None:
        line += f" [backup taken before applying: {report.backup.object}]"
    encoded = line.encode()[:TERMINATION_MESSAGE_MAX_BYTES]
    return encoded.decode(errors="ignore")


def finish(report: Report, code: int, reason: str | None, redactor: Redactor, termination_log: Path | None) -> None:
    """Log ``run.finished`` and, for every exit code but 0, write the termination message."""
    report.step_seconds["total"] = round(time.monotonic() - report.started, 4)
    reason = reason or report.reason
    safe_reason = redactor(reason) if reason else None
    event: dict[str, Any] = {
        "command": report.command,
        "outcome": outcome_of(code),
        "exit_code": int(code),
        "applied": report.applied,
        "pending_before": report.pending_before,
        "current_version": report.current_version,
        "target_version": report.target_version,
        "durations": report.step_seconds,
        "lock_wait_seconds": report.lock_wait_seconds,
        "backup": asdict(report.backup) if report.backup else None,
    }
    if report.reverted:
        event["reverted"] = report.reverted
    if report.repeatables_applied:
        event["repeatables_applied"] = report.repeatables_applied
    if code != ExitCode.OK and report.in_flight:
        event["failed_migration"] = report.in_flight
    if safe_reason:
        event["reason"] = safe_reason
    event.update(report.details)
    if code in (ExitCode.OK, ExitCode.PENDING):
        log.info(Event.RUN_FINISHED, **event)
    else:
        log.error(Event.RUN_FINISHED, **event)
    if code != ExitCode.OK and termination_log is not None:
        message = termination_message(report, safe_reason or f"{outcome_of(code)} (exit code {int(code)})")
        try:
            termination_log.write_text(message + "\n", encoding="utf-8")
        except OSError as exc:
            log.warning(Event.REPORT_TERMINATION_LOG_UNWRITABLE, path=str(termination_log), cause=exc.strerror)
