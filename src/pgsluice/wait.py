"""wait_for_database(): connect (with its session-settings statement), retried with backoff until the deadline."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import psycopg
import structlog

from pgsluice.config import Config
from pgsluice.db import connect, describe_connect_error
from pgsluice.errors import DatabaseUnreachableError
from pgsluice.events import Event

if TYPE_CHECKING:
    from tenacity import RetryCallState

log = structlog.get_logger("pgsluice.wait")

FIRST_RETRY_SECONDS = 0.1
WRITING_PURPOSES = ("lock",)
"""Connections for commands that write: a server in recovery is not ready for them."""


class InRecoveryError(psycopg.OperationalError):
    """The server is a standby, or a primary still in recovery: not ready for migrations, retried like an
    unreachable one."""


def _ready(config: Config, purpose: str) -> psycopg.Connection[Any]:
    conn = connect(config, purpose)
    if purpose not in WRITING_PURPOSES:
        return conn
    try:
        row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
    except BaseException:
        conn.close()
        raise
    if row and row[0]:
        conn.close()
        raise InRecoveryError(
            "the server is in recovery (a standby, or a primary during a failover): it takes no writes yet"
        )
    return conn


def wait_for_database(config: Config, purpose: str = "lock") -> tuple[psycopg.Connection[Any], float]:
    """Return an open connection and the seconds it took; retry only what can heal.

    Raises AuthenticationError at once for credentials, a missing role or database;
    ConfigError for a startup parameter a pooler refuses; DatabaseUnreachableError when
    the deadline passes. The first attempt runs without tenacity, so a healthy database
    costs no import of it.
    """
    started = time.monotonic()
    try:
        return _ready(config, purpose), time.monotonic() - started
    except psycopg.OperationalError as exc:
        first = exc  # the permanent ones are not OperationalError: connect() sorted them out

    from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_exponential_jitter

    def scheduled(retry_num: int, wait_seconds: float, cause: BaseException | None) -> None:
        log.warning(
            Event.WAIT_IN_RECOVERY if isinstance(cause, InRecoveryError) else Event.WAIT_RETRY_SCHEDULED,
            retry_num=retry_num,
            wait_seconds=round(wait_seconds, 3),
            elapsed_seconds=round(time.monotonic() - started, 3),
            cause=describe_connect_error(cause, config) if cause else None,
        )

    def before_sleep(state: RetryCallState) -> None:
        scheduled(state.attempt_number + 1, state.upcoming_sleep, state.outcome.exception() if state.outcome else None)

    scheduled(1, FIRST_RETRY_SECONDS, first)
    time.sleep(FIRST_RETRY_SECONDS)
    retrying = Retrying(
        stop=stop_after_delay(max(0.0, config.wait_timeout_seconds - (time.monotonic() - started))),
        wait=wait_exponential_jitter(initial=FIRST_RETRY_SECONDS * 2, max=config.wait_max_interval_seconds, jitter=0.2),
        retry=retry_if_exception_type(psycopg.OperationalError),
        before_sleep=before_sleep,
        reraise=True,
    )
    try:
        conn = retrying(_ready, config, purpose)
    except psycopg.OperationalError as exc:
        hint = (
            "point pgsluice at the primary (a read-write URL; libpq's target_session_attrs=read-write picks it from "
            "a list of hosts), or raise --wait-timeout to outlast a failover"
            if isinstance(exc, InRecoveryError)
            else "check the host, port and network policy, or raise --wait-timeout"
        )
        what = "not ready" if isinstance(exc, InRecoveryError) else "unreachable"
        raise DatabaseUnreachableError(
            f"database {what} after {time.monotonic() - started:.1f}s: {describe_connect_error(exc, config)}",
            hint=hint,
        ) from exc
    return conn, time.monotonic() - started
