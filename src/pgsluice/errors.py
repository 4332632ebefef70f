"""Exit codes and the error hierarchy: every failure maps to one documented code.

This module is the one place for the exit codes, and for which of them are permanent
(retrying the Job cannot help) and which are transient: the Kubernetes manifests'
``podFailurePolicy`` and the chart are checked against ``PERMANENT`` and ``TRANSIENT``
by the tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any, ClassVar


class ExitCode(IntEnum):
    """The process exit codes; stable, documented in the README."""

    OK = 0
    INTERNAL = 1
    USAGE = 2
    UNREACHABLE = 3
    AUTH = 4
    LOCK_TIMEOUT = 5
    INCONSISTENT = 6
    MIGRATION_FAILED = 7
    BACKUP_FAILED = 8
    PENDING = 9
    UNSAFE = 10
    CANARY_FAILED = 11
    SIGINT = 130
    SIGTERM = 143


PERMANENT: tuple[ExitCode, ...] = (
    ExitCode.INTERNAL,
    ExitCode.USAGE,
    ExitCode.AUTH,
    ExitCode.INCONSISTENT,
    ExitCode.MIGRATION_FAILED,
    ExitCode.UNSAFE,
    ExitCode.CANARY_FAILED,
)
"""Failures a retry of the same Job cannot heal: fail the Job at once.

An internal error (1) is one of them: every failure that may heal by itself (the database,
the lock, the backup store) has its own code, so 1 is a bug, which the same input meets
again: a retry would only wait, lock and dump the database once more before failing the same
way. The traceback is in the failed pod's log.
"""

TRANSIENT: tuple[ExitCode, ...] = (ExitCode.UNREACHABLE, ExitCode.LOCK_TIMEOUT, ExitCode.BACKUP_FAILED)
"""Failures that may heal by themselves: the Job retries them, up to its backoffLimit."""


@dataclass(frozen=True)
class Location:
    """Where in the migrations something happened."""

    file: str | None = None
    version: int | None = None
    line: int | None = None
    column: int | None = None


@dataclass(frozen=True)
class ServerMessage:
    """What PostgreSQL said about a failed statement."""

    sqlstate: str | None
    message: str
    detail: str | None = None
    hint: str | None = None
    context: str | None = None


class PgsluiceError(Exception):
    """Base of every expected failure; carries its exit code and what to do about it."""

    exit_code: ClassVar[ExitCode] = ExitCode.INTERNAL

    def __init__(self, message: str, *, hint: str | None = None, location: Location | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.location = location or Location()

    def __str__(self) -> str:
        return f"{self.message}: {self.hint}" if self.hint else self.message

    def report_fields(self) -> dict[str, Any]:
        """What ``run.finished`` says about this failure beyond its reason."""
        loc = self.location
        fields = {"file": loc.file, "version": loc.version, "line": loc.line, "column": loc.column}
        return {k: v for k, v in fields.items() if v is not None}


class ConfigError(PgsluiceError):
    """Raised when a flag, an environment variable, a mounted secret or a tool is unusable."""

    exit_code = ExitCode.USAGE


class PoolingDetectedError(ConfigError):
    """Raised when the advisory lock strategy meets a transaction pooler; no lock was left behind."""


class DatabaseUnreachableError(PgsluiceError):
    """Raised when the database did not answer before the wait deadline, or the connection was lost."""

    exit_code = ExitCode.UNREACHABLE


class AuthenticationError(PgsluiceError):
    """Raised when the server refuses us for good: password, certificate, role, database or permission."""

    exit_code = ExitCode.AUTH


class LockTimeoutError(PgsluiceError):
    """Raised when another runner held the migration lock past the lock deadline."""

    exit_code = ExitCode.LOCK_TIMEOUT


class LockLostError(LockTimeoutError):
    """Raised when the lease lock could not be renewed: the running statement was cancelled and rolled back."""


class InconsistentError(PgsluiceError):
    """Raised when files and history disagree, a file is invalid, or the history table is unusable."""

    exit_code = ExitCode.INCONSISTENT


class MigrationFailedError(PgsluiceError):
    """Raised when a migration's SQL failed; a transactional migration was rolled back."""

    exit_code = ExitCode.MIGRATION_FAILED

    def __init__(
        self,
        message: str,
        *,
        hint: str | None,
        location: Location,
        server: ServerMessage,
        invalid_indexes: tuple[str, ...] = (),
        left_started: bool = False,
        attempts: int = 1,
    ) -> None:
        super().__init__(message, hint=hint, location=location)
        self.server = server
        self.invalid_indexes = invalid_indexes
        self.left_started = left_started
        self.attempts = attempts

    def report_fields(self) -> dict[str, Any]:
        """The location, the server's own words, and what was left behind."""
        fields = super().report_fields()
        fields.update(
            sqlstate=self.server.sqlstate,
            server_message=self.server.message,
            attempts=self.attempts,
        )
        if self.server.detail:
            fields["detail"] = self.server.detail
        if self.server.hint:
            fields["server_hint"] = self.server.hint
        if self.left_started:
            fields["left_started"] = True
            fields["invalid_indexes"] = list(self.invalid_indexes)
        return fields


class UnsafeMigrationError(PgsluiceError):
    """Raised when the safety gate (``--unsafe-ddl block``) refuses a pending migration; nothing was applied."""

    exit_code = ExitCode.UNSAFE


class CanaryFailedError(PgsluiceError):
    """Raised when a fleet's canary targets failed or did not become current in time; this shard applied nothing."""

    exit_code = ExitCode.CANARY_FAILED


class BackupError(PgsluiceError):
    """Raised when the backup before applying could not be taken or verified; nothing was applied."""

    exit_code = ExitCode.BACKUP_FAILED


class RestoreError(PgsluiceError):
    """Raised when a restore failed; it ran in one transaction, so nothing was restored."""

    exit_code = ExitCode.BACKUP_FAILED


class Interrupted(KeyboardInterrupt):
    """Raised from the SIGTERM/SIGINT handler; psycopg cancels the running query on it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def exit_code(self) -> ExitCode:
        """130 for SIGINT, 143 for SIGTERM."""
        import signal

        return ExitCode.SIGINT if self.signum == signal.SIGINT else ExitCode.SIGTERM

    def reason(self) -> str:
        """The one-line reason for run.finished and the termination message."""
        import signal

        name = signal.Signals(self.signum).name
        return f"interrupted by {name}: the running statement was cancelled and rolled back"
