"""wait_for_database(): connect + SELECT 1, retried with backoff until the deadline."""

from __future__ import annotations

import time
from typing import Any

import psycopg
import structlog
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_delay,
    wait_exponential_jitter,
)

from pgsluice.config import Config
from pgsluice.db import connect, describe_connect_error
from pgsluice.errors import DatabaseUnreachableError

log = structlog.get_logger("pgsluice.wait")


def _transient(exc: BaseException) -> bool:
    # AuthenticationError is not an OperationalError: connect() already sorted it out.
    return isinstance(exc, psycopg.OperationalError)


def wait_for_database(config: Config, purpose: str = "lock") -> tuple[psycopg.Connection[Any], float]:
    """Return an open connection and the seconds it took; retry only what can heal.

    Raises AuthenticationError at once for credentials, a missing role or database;
    DatabaseUnreachableError when the deadline passes.
    """
    started = time.monotonic()

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.warning(
            "wait.retry_scheduled",
            retry_num=state.attempt_number,
            wait_seconds=round(state.upcoming_sleep, 3),
            elapsed_seconds=round(time.monotonic() - started, 3),
            cause=describe_connect_error(exc, config) if exc else None,
        )

    def attempt() -> psycopg.Connection[Any]:
        conn = connect(config, purpose)
        try:
            conn.execute("SELECT 1")
        except BaseException:
            conn.close()
            raise
        return conn

    retrying = Retrying(
        stop=stop_after_delay(config.wait_timeout_seconds),
        wait=wait_exponential_jitter(initial=0.1, max=config.wait_max_interval_seconds, jitter=0.2),
        retry=retry_if_exception(_transient),
        before_sleep=before_sleep,
        reraise=True,
    )
    try:
        conn = retrying(attempt)
    except psycopg.OperationalError as exc:
        raise DatabaseUnreachableError(
            f"database unreachable after {time.monotonic() - started:.1f}s: {describe_connect_error(exc, config)}",
            hint="check the host, port and network policy, or raise --wait-timeout",
        ) from None
    return conn, time.monotonic() - started
