"""The migration lock: a session advisory lock, tried with pg_try_advisory_lock to a deadline.

Never a blocking ``pg_advisory_lock``: a session waiting in it counts as a running
transaction, and ``CREATE INDEX CONCURRENTLY`` run by the holder waits for it forever.
Waiters LISTEN on a channel named after the key and the holder NOTIFYs it right after
unlocking, so the next runner starts at once; between notifications they still try
every ``poll_max_seconds`` (a SIGKILLed holder sends no notification).
"""

from __future__ import annotations

import os
import random
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import psycopg
import structlog
from psycopg import sql

from pgsluice.config import TableName
from pgsluice.errors import LockLostError, LockTimeoutError, PoolingDetectedError
from pgsluice.events import Event

log = structlog.get_logger("pgsluice.lock")

HOLDER_LOG_INTERVAL_SECONDS = 10.0


class Lock(Protocol):
    """What a run needs of its migration lock, whichever the strategy."""

    def acquire(self) -> float:
        """Take it (waiting to the deadline); the seconds waited."""

    def release(self) -> None:
        """Give it back."""

    def check(self) -> None:
        """Raise when the lock was lost meanwhile."""

    def on_lost(self, cancel: Callable[[], None]) -> None:
        """Call ``cancel`` (the running statement's) if the lock is lost."""


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


class AdvisoryLock:
    """The session advisory lock, tried with pg_try_advisory_lock to a deadline (direct connections and
    session-mode poolers).

    A transaction pooler (undetected by the probe before it) would leave the lock on a pooled
    server connection: so the backend that took the lock is noted, and the lock is checked
    from the next transaction. When that transaction ran elsewhere, the lock is released on the
    backend that holds it (pgsluice's transactions land on it again within moments, or, if it
    idles in the pool, it is ended), and the run stops with a usage error: no lock is left behind.
    """

    def __init__(
        self, conn: psycopg.Connection[Any], key: int, timeout_seconds: float, poll_max_seconds: float
    ) -> None:
        self.conn, self.key = conn, key
        self.timeout_seconds, self.poll_max_seconds = timeout_seconds, poll_max_seconds
        self.backend: int | None = None

    def acquire(self) -> float:
        """Take it; the seconds waited. LockTimeoutError naming the holder when the deadline passes."""
        conn, key = self.conn, self.key
        started = time.monotonic()
        deadline = started + self.timeout_seconds
        delay = 0.01
        last_logged: float | None = None
        channel = sql.Identifier(channel_name(key))
        listening = False
        while True:
            row = conn.execute("SELECT pg_try_advisory_lock(%s), pg_backend_pid()", (key,)).fetchone()
            if row and row[0]:
                self.backend = int(row[1])
                break
            now = time.monotonic()
            if now >= deadline:
                holder = describe_holder(conn, key)
                raise LockTimeoutError(
                    f"advisory lock {key} still held after {self.timeout_seconds:.0f}s by pid "
                    f"{holder.get('holder_pid', '?')} ({holder.get('holder_application_name', '?')}, "
                    f"{holder.get('holder_connection', 'connection unknown')})",
                    hint="another migration is running; wait for it, or raise --lock-timeout",
                )
            if last_logged is None or now - last_logged >= HOLDER_LOG_INTERVAL_SECONDS:
                log.info(
                    Event.LOCK_WAITING, key=key, waited_seconds=round(now - started, 3), **describe_holder(conn, key)
                )
                last_logged = now
            if not listening:
                conn.execute(sql.SQL("LISTEN {}").format(channel))
                listening = True
                continue  # the holder may have released it before we listened
            wait = min(delay * random.uniform(0.8, 1.2), max(0.0, deadline - now))  # noqa: S311 - jitter
            for _ in conn.notifies(timeout=wait, stop_after=1):
                pass
            delay = min(delay * 2, self.poll_max_seconds)
        if listening:
            conn.execute(sql.SQL("UNLISTEN {}").format(channel))
        self._verify()
        waited = time.monotonic() - started
        log.info(Event.LOCK_ACQUIRED, key=key, wait_seconds=round(waited, 3))
        return waited

    def _verify(self) -> None:
        """The lock must be held by the backend of this connection's next transaction."""
        row = self.conn.execute("SELECT pg_backend_pid() = %s", (self.backend,)).fetchone()
        if row and row[0]:
            return
        self._release_on_its_backend()
        raise PoolingDetectedError(
            "a transaction pooler is between pgsluice and the database (the advisory lock was taken on server "
            f"backend {self.backend}, and the next transaction ran on another): a session advisory lock would "
            "guard nothing there; it was released",
            hint="connect directly or through a session-mode pooler (a second URL for migrations), or use "
            "--lock-strategy lease (or auto), which works through transaction pooling",
        )

    def _release_on_its_backend(self, seconds: float = 5.0) -> bool:
        """Unlock on the pooled backend that holds the lock: pgsluice's transactions are handed that backend
        again within moments; one that idles in the pool meanwhile is ended instead (its pooler reconnects)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            row = self.conn.execute(
                "SELECT CASE WHEN pg_backend_pid() = %s THEN pg_advisory_unlock(%s) END", (self.backend, self.key)
            ).fetchone()
            if row and row[0]:
                return True
            time.sleep(0.01)
        ended = self.conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = %s AND state = 'idle'"
            " AND application_name LIKE 'pgsluice%%'",
            (self.backend,),
        ).fetchone()
        return bool(ended and ended[0])

    def release(self) -> None:
        """Let it go and wake the next runner; a session that is gone took the lock with it."""
        try:
            if not self.conn.closed:
                row = self.conn.execute("SELECT pg_advisory_unlock(%s)", (self.key,)).fetchone()
                if not (row and row[0]) and self.backend is not None:
                    self._release_on_its_backend()
                self.conn.execute(sql.SQL("NOTIFY {}").format(sql.Identifier(channel_name(self.key))))
                log.info(Event.LOCK_RELEASED, key=self.key)
                return
        except psycopg.Error:
            pass
        log.info(Event.LOCK_RELEASED, key=self.key, by="session end")

    def check(self) -> None:
        """A session lock cannot be lost while the session lives."""

    def on_lost(self, cancel: Callable[[], None]) -> None:
        """Nothing to cancel: the lock goes only with the session (and the migration with it)."""


class LeaseLock:
    """A lease: a row in ``<history>_lock`` keyed like the advisory lock, renewed by a heartbeat.

    Works through a transaction pooler: each statement is a transaction of its own. It is taken
    with one statement only when free or expired; the holder renews it every
    ``heartbeat_seconds`` in a short transaction; a killed holder's lease expires after
    ``lease_seconds``. When the lease cannot be renewed in time, the holder stops applying before
    another runner may take it: the running statement is cancelled and the run fails (exit 5).
    Learned from goose's lease lock, whose failed heartbeat is only logged."""

    def __init__(
        self,
        conn: psycopg.Connection[Any],
        table: TableName,
        key: int,
        *,
        timeout_seconds: float,
        lease_seconds: float,
        heartbeat_seconds: float,
        holder: str,
    ) -> None:
        self.conn, self.table, self.key = conn, table, key
        self.timeout_seconds, self.lease_seconds = timeout_seconds, lease_seconds
        self.heartbeat_seconds = min(heartbeat_seconds, lease_seconds / 3)
        self.holder = holder
        self.token = secrets.token_hex(16)
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._renewed_at = 0.0
        self._cancel: Callable[[], None] | None = None
        self._thread: threading.Thread | None = None

    @property
    def _ident(self) -> sql.Composable:
        return sql.Identifier(self.table.schema, f"{self.table.name}_lock")

    def _ensure_table(self) -> None:
        statement = sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} (key bigint PRIMARY KEY, token text NOT NULL, holder text,"
            " holder_pid int, acquired_at timestamptz NOT NULL, renewed_at timestamptz NOT NULL,"
            " expires_at timestamptz NOT NULL)"
        ).format(self._ident)
        schema = sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self.table.schema))
        # Runners creating it at once: IF NOT EXISTS is checked before the catalog insert, so one may lose the race
        # on pg_namespace or pg_type (a unique violation, or "already exists"); the next try sees it.
        lost_race = (psycopg.errors.UniqueViolation, psycopg.errors.DuplicateObject, psycopg.errors.DuplicateTable)
        for attempt in (1, 2, 3):
            try:
                self.conn.execute(schema)
                self.conn.execute(statement)
            except (*lost_race, psycopg.errors.DuplicateSchema):
                if attempt == 3:
                    raise
            else:
                return

    def _try(self) -> bool:
        row = self.conn.execute(
            sql.SQL(
                "INSERT INTO {t} AS l (key, token, holder, holder_pid, acquired_at, renewed_at, expires_at)"
                " VALUES (%(key)s, %(token)s, %(holder)s, %(pid)s, clock_timestamp(), clock_timestamp(),"
                " clock_timestamp() + %(lease)s * interval '1 second')"
                " ON CONFLICT (key) DO UPDATE SET token = excluded.token, holder = excluded.holder,"
                " holder_pid = excluded.holder_pid, acquired_at = excluded.acquired_at,"
                " renewed_at = excluded.renewed_at, expires_at = excluded.expires_at"
                " WHERE l.expires_at < clock_timestamp() RETURNING token"
            ).format(t=self._ident),
            {
                "key": self.key,
                "token": self.token,
                "holder": self.holder,
                "pid": os.getpid(),
                "lease": self.lease_seconds,
            },
        ).fetchone()
        return row is not None

    def holder_of(self) -> dict[str, Any]:
        """Who holds the lease: host and process, since when, until when (and whether it expired)."""
        row = self.conn.execute(
            sql.SQL(
                "SELECT holder, holder_pid, acquired_at, expires_at, expires_at < clock_timestamp() FROM {}"
                " WHERE key = %s"
            ).format(self._ident),
            (self.key,),
        ).fetchone()
        if row is None:
            return {}
        holder, pid, since, until, expired = row
        return {
            "holder": holder,
            "holder_pid": pid,
            "holder_since": since.isoformat() if since else None,
            "expires_at": until.isoformat() if until else None,
            "expired": bool(expired),
        }

    def acquire(self) -> float:
        """Take the lease, polling with backoff to the deadline; the seconds waited. LockTimeoutError naming
        the holder when the deadline passes."""
        started = time.monotonic()
        self._ensure_table()
        delay, last_logged = 0.05, None
        while True:
            attempt = time.monotonic()
            if self._try():
                self._renewed_at = attempt
                break
            now = time.monotonic()
            timed_out = now - started >= self.timeout_seconds
            must_log = last_logged is None or now - last_logged >= HOLDER_LOG_INTERVAL_SECONDS
            holder = self.holder_of() if timed_out or must_log else {}  # asked only when it is said
            if timed_out:
                raise LockTimeoutError(
                    f"lease lock {self.key} still held after {self.timeout_seconds:.0f}s by {holder.get('holder')} "
                    f"(process {holder.get('holder_pid')}, since {holder.get('holder_since')}, "
                    f"until {holder.get('expires_at')})",
                    hint="another migration is running; wait for it, or raise --lock-timeout",
                )
            if must_log:
                log.info(Event.LOCK_WAITING, key=key_text(self.key), waited_seconds=round(now - started, 3), **holder)
                last_logged = now
            remaining = max(0.0, started + self.timeout_seconds - now)
            time.sleep(min(delay * random.uniform(0.8, 1.2), remaining))  # noqa: S311 - jitter
            delay = min(delay * 2, 1.0)
        waited = time.monotonic() - started
        log.info(Event.LOCK_ACQUIRED, key=key_text(self.key), wait_seconds=round(waited, 3), strategy="lease")
        self._thread = threading.Thread(target=self._heartbeat, name="pgsluice-lease", daemon=True)
        self._thread.start()
        return waited

    def _renew(self) -> bool:
        with self.conn.transaction():
            self.conn.execute(
                "SELECT set_config('statement_timeout', %s, true)", (str(round(self.heartbeat_seconds * 1000)),)
            )
            row = self.conn.execute(
                sql.SQL(
                    "UPDATE {} SET renewed_at = clock_timestamp(),"
                    " expires_at = clock_timestamp() + %s * interval '1 second'"
                    " WHERE key = %s AND token = %s RETURNING expires_at"
                ).format(self._ident),
                (self.lease_seconds, self.key, self.token),
            ).fetchone()
        return row is not None

    def _heartbeat(self) -> None:
        # Stop applying while the lease is still ours: a heartbeat's worth of time before it expires.
        margin = self.heartbeat_seconds
        while not self._stop.wait(self.heartbeat_seconds):
            attempt = time.monotonic()
            try:
                renewed = self._renew()
            except psycopg.Error as exc:
                renewed = False
                log.warning(Event.LOCK_LEASE_RENEWED, renewed=False, cause=" ".join(str(exc).split())[:300])
            if renewed:
                self._renewed_at = attempt
                log.debug(Event.LOCK_LEASE_RENEWED, key=key_text(self.key))
                continue
            if time.monotonic() >= self._renewed_at + self.lease_seconds - margin:
                self._lose()
                return

    def _lose(self) -> None:
        self.lost.set()
        log.error(
            Event.LOCK_LEASE_LOST,
            key=key_text(self.key),
            reason="the lease could not be renewed in time: stopping before another runner may take it",
        )
        if self._cancel is not None:
            self._cancel()

    def on_lost(self, cancel: Callable[[], None]) -> None:
        """What to call when the lease is lost: cancel the running migration's statement."""
        self._cancel = cancel

    def check(self) -> None:
        """LockLostError (exit 5) once the lease was lost."""
        if self.lost.is_set():
            raise LockLostError(
                f"the lease lock {self.key} could not be renewed within {self.lease_seconds:.0f}s: the running "
                "statement was cancelled and rolled back before another runner could take the lease",
                hint="the database did not answer the heartbeat (overloaded, or the lock table locked); run again",
            )

    def release(self) -> None:
        """Stop the heartbeat and give the lease back (if it is still ours)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.heartbeat_seconds + 5)
        try:
            with self.conn.transaction():  # bounded: a blocked lock table must not hold the exit up
                self.conn.execute(
                    "SELECT set_config('statement_timeout', %s, true)", (str(round(self.heartbeat_seconds * 1000)),)
                )
                self.conn.execute(
                    sql.SQL("DELETE FROM {} WHERE key = %s AND token = %s").format(self._ident), (self.key, self.token)
                )
            log.info(Event.LOCK_RELEASED, key=key_text(self.key), strategy="lease")
        except psycopg.Error:
            log.info(Event.LOCK_RELEASED, key=key_text(self.key), by="lease expiry")


def read_lease(conn: psycopg.Connection[Any], table: TableName, key: int) -> dict[str, Any]:
    """The lease of ``key`` as ``status`` shows it (held or expired, by whom, until when); empty without one."""
    lease = LeaseLock(conn, table, key, timeout_seconds=0, lease_seconds=1, heartbeat_seconds=1, holder="")
    try:
        return lease.holder_of()
    except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName):
        return {}


def key_text(key: int) -> str:
    """The lock key as logs show it."""
    return str(key)
