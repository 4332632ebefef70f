"""Report: what a run did, the one ``run.finished`` event, and the termination message."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from pgsluice.errors import ExitCode
from pgsluice.redact import Redactor

log = structlog.get_logger("pgsluice.report")

TERMINATION_MESSAGE_MAX_BYTES = 4096  # what Kubernetes keeps of it


@dataclass
class Report:
    """Filled in by the steps as they go; emitted once at the end."""

    command: str
    started: float = field(default_factory=time.monotonic)
    applied: list[int] = field(default_factory=list)
    pending_before: list[int] = field(default_factory=list)
    current_version: int | None = None
    target_version: int | None = None
    step_seconds: dict[str, float] = field(default_factory=dict)
    lock_wait_seconds: float | None = None
    backup: dict[str, Any] | None = None
    failed_migration: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def timed(self, step: str, since: float) -> None:
        """Record how long ``step`` took since the monotonic time ``since``."""
        self.step_seconds[step] = round(time.monotonic() - since, 4)


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
    if report.backup and report.backup.get("object"):
        line += f" [backup taken before applying: {report.backup['object']}]"
    encoded = line.encode()[:TERMINATION_MESSAGE_MAX_BYTES]
    return encoded.decode(errors="ignore")


def finish(report: Report, code: int, reason: str | None, redactor: Redactor, termination_log: Path | None) -> None:
    """Log ``run.finished`` and, on failure, write the termination message."""
    report.step_seconds["total"] = round(time.monotonic() - report.started, 4)
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
        "backup": report.backup,
    }
    if report.failed_migration:
        event["failed_migration"] = report.failed_migration
    if safe_reason:
        event["reason"] = safe_reason
    event.update(report.details)
    if code in (ExitCode.OK, ExitCode.PENDING):
        log.info("run.finished", **event)
    else:
        log.error("run.finished", **event)
    if code != ExitCode.OK and termination_log is not None and safe_reason:
        try:
            termination_log.write_text(termination_message(report, safe_reason) + "\n", encoding="utf-8")
        except OSError as exc:
            log.warning("report.termination_log_unwritable", path=str(termination_log), cause=exc.strerror)
