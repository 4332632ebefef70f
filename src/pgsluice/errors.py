"""Exit codes and the error hierarchy: every failure maps to one documented code."""

from __future__ import annotations

from enum import IntEnum
from typing import Any


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
    SIGINT = 130
    SIGTERM = 143


class PgsluiceError(Exception):
    """Base of every expected failure; carries its exit code and what to do about it."""

    exit_code: ExitCode = ExitCode.INTERNAL

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.fields: dict[str, Any] = {}

    def __str__(self) -> str:
        return f"{self.message}: {self.hint}" if self.hint else self.message


class ConfigError(PgsluiceError):
    """Raised when a flag, an environment variable or a mounted secret is invalid."""

    exit_code = ExitCode.USAGE


class DatabaseUnreachableError(PgsluiceError):
    """Raised when the database did not answer before the wait deadline."""

    exit_code = ExitCode.UNREACHABLE


class AuthenticationError(PgsluiceError):
    """Raised when the server refuses us for good: password, role, database or permission."""

    exit_code = ExitCode.AUTH


class LockTimeoutError(PgsluiceError):
    """Raised when another runner held the advisory lock past the lock deadline."""

    exit_code = ExitCode.LOCK_TIMEOUT


class InconsistentError(PgsluiceError):
    """Raised when files and history disagree, or a file is invalid; nothing was applied."""

    exit_code = ExitCode.INCONSISTENT

    def __init__(self, message: str, *, hint: str | None = None, problems: list[str] | None = None) -> None:
        super().__init__(message, hint=hint)
        self.problems = problems or [str(self)]


class MigrationFailedError(PgsluiceError):
    """Raised when a migration's SQL failed; its transaction was rolled back."""

    exit_code = ExitCode.MIGRATION_FAILED


class BackupError(PgsluiceError):
    """Raised when the backup before applying could not be taken or verified."""

    exit_code = ExitCode.BACKUP_FAILED


class InterruptedRunError(PgsluiceError):
    """Raised when SIGTERM or SIGINT stopped the run; the running migration was rolled back."""

    def __init__(self, signum: int) -> None:
        import signal

        name = signal.Signals(signum).name
        super().__init__(f"interrupted by {name}: the running statement was cancelled and rolled back")
        self.signum = signum
        self.exit_code = ExitCode.SIGINT if signum == signal.SIGINT else ExitCode.SIGTERM


class Interrupted(KeyboardInterrupt):
    """Raised from the SIGTERM/SIGINT handler; psycopg cancels the running query on it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
