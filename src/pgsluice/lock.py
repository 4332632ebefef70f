"""acquire_advisory_lock(): a session advisory lock, tried with pg_try_advisory_lock to a deadline.

Never a blocking ``pg_advisory_lock``: a session waiting in it counts as a running
transaction, and ``CREATE INDEX CONCURRENTLY`` run by the holder waits for it forever.
Waiters LISTEN on a channel named after the key and the holder NOTIFYs it right after
unlocking, so the next runner starts at once; between notifications they still try
every ``poll_max_seconds`` (a SIGKILLed holder sends no notification).
"""

from __future__ import annotations

import random
import time
from typing import Any

import psycopg
import structlog
from psycopg import sql

from pgsluice.errors import LockTimeoutError
from pgsluice.events import Event

log = structlog.get_logger("pgsluice.lock")

HOLDER_LOG_INTERVAL_SECONDS = 10.0

_HOLDER_SQL = """
SELECT a.pid, a.application_name, host(a.client_addr) AS client_addr, a.client_port,
       a.backend_start, a.state, a.usename
FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND l.classid::bigint = %(hi)s AND l.objid::bigint = %(lo)s AND l.objsubid = 1
"""


def channel_name(key: int) -> str:
    """The LISTEN/NOTIFY channel of lock ``key``."""
    return f"pgsluice_lock_{key & 0xFFFFFFFFFFFFFFFF:016x}"


def _key_parts(key: int) -> dict[str, int]:
    unsigned = key & 0xFFFFFFFFFFFFFFFF
    return {"hi": unsigned >> 32, "lo": unsigned & 0xFFFFFFFF}


def describe_holder(conn: psycopg.Connection[Any], key: int) -> dict[str, Any]:
    """Who holds the lock: pid, application_name, client address, since (their session start)."""
    row = conn.execute(_HOLDER_SQL, _key_parts(key)).fetchone()
    if row is None:
        return {}
    pid, app, addr, port, since, state, user = row
    return {
        "holder_pid": pid,
        "holder_application_name": app,
        "holder_client_addr": addr,
        "holder_since": since.isoformat() if since else None,
        "holder_state": state,
        "holder_user": user,
        "holder_connection": _connection_kind(addr, port),
    }


def _connection_kind(addr: str | None, port: int | None) -> str:
    """How the holder is connected, as far as this role may see (pg_stat_activity hides other roles' sessions)."""
    if addr:
        return f"from {addr}"
    if port == -1:
        return "over a local socket"
    return "from an address hidden from this role (grant it pg_read_all_stats to see it)"


def acquire_advisory_lock(
    conn: psycopg.Connection[Any], key: int, timeout_seconds: float, poll_max_seconds: float
) -> float:
    """Take the session lock ``key`` on ``conn``; returns the seconds waited.

    Raises LockTimeoutError naming the holder when the deadline passes. If this process
    dies, the server releases the lock with the session.
    """
    started = time.monotonic()
    deadline = started + timeout_seconds
    delay = 0.01
    last_logged: float | None = None
    channel = sql.Identifier(channel_name(key))
    listening = False
    while True:
        row = conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
        if row and row[0]:
            break
        now = time.monotonic()
        if now >= deadline:
            holder = describe_holder(conn, key)
            raise LockTimeoutError(
                f"advisory lock {key} still held after {timeout_seconds:.0f}s by pid "
                f"{holder.get('holder_pid', '?')} ({holder.get('holder_application_name', '?')}, "
                f"{holder.get('holder_connection', 'connection unknown')})",
                hint="another migration is running; wait for it, or raise --lock-timeout",
            )
        if last_logged is None or now - last_logged >= HOLDER_LOG_INTERVAL_SECONDS:
            log.info(Event.LOCK_WAITING, key=key, waited_seconds=round(now - started, 3), **describe_holder(conn, key))
            last_logged = now
        if not listening:
            conn.execute(sql.SQL("LISTEN {}").format(channel))
            listening = True
            continue  # the holder may have released it before we listened
        wait = min(delay * random.uniform(0.8, 1.2), max(0.0, deadline - now))  # noqa: S311 - jitter
        for _ in conn.notifies(timeout=wait, stop_after=1):
            pass
        delay = min(delay * 2, poll_max_seconds)
    if listening:
        conn.execute(sql.SQL("UNLISTEN {}").format(channel))
    waited = time.monotonic() - started
    log.info(Event.LOCK_ACQUIRED, key=key, wait_seconds=round(waited, 3))
    return waited


def release_advisory_lock(conn: psycopg.Connection[Any], key: int) -> None:
    """Release lock ``key`` and wake the next runner; a session that is gone took the lock with it."""
    try:
        if not conn.closed:
            conn.execute("SELECT pg_advisory_unlock(%s)", (key,))
            conn.execute(sql.SQL("NOTIFY {}").format(sql.Identifier(channel_name(key))))  # after the unlock
            log.info(Event.LOCK_RELEASED, key=key)
            return
    except psycopg.Error:
        pass
    log.info(Event.LOCK_RELEASED, key=key, by="session end")
