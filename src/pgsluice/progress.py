"""Progress of long work: ``migration.progress`` while a statement runs long, ``backup.progress`` while a dump streams.

A 20-minute index build must not look like a hung pod. Two context managers:

- ``watch_statements(observer, backend_pid, …)`` around sending a migration (or a batch):
  once the block has run ``after_seconds``, every ``interval_seconds`` one query on the
  *observer* (pgsluice's idle lock connection) reads the migration backend's activity,
  the row of whichever ``pg_stat_progress_*`` view applies, and, when it waits on a
  lock, who it is queued behind (``pg_blocking_pids``): one ``migration.progress`` event.
- ``BackupProgress(expected_bytes, …)`` around a dump: the backup's chunk loop calls
  ``update(dumped_bytes)``; one ``backup.progress`` event every interval, also while
  pg_dump is stalled and sends nothing.

What it costs. Something has to notice that a block outlived its threshold while the
thread that entered it is blocked inside libpq. A block entered on the main thread arms a
one-shot ``SIGALRM`` for its threshold (Python runs the handler within psycopg's 0.1 s
waits, and backup.interruptible waits in steps for the same reason: the kernel may deliver
the signal to another thread); only when it fires does the one daemon ticker thread of the process
start, shared by every later block and thread. A block that ends before
``after_seconds`` costs a few uncontended locks and two ``setitimer`` calls: no thread,
no query, nothing to join. A block entered on another thread (a fleet's worker, where
signals cannot be handled) starts the ticker at once. The observer's
query runs only when the block is long, only when the observer is idle (never inside
another user's transaction, never waiting for its lock: a busy observer means no
details on that tick), in an implicit transaction of its own with ``statement_timeout``
and ``lock_timeout`` set locally. Leaving a block waits only for a tick of its own that
is in flight (one catalog query); after that, nothing of it touches the observer or is
printed.

On a terminal (``--log-format console`` or ``auto`` on a TTY) progress is one line
redrawn in place (carriage return) and cleared at the end; with JSON logs, plain events.
Imports are the standard library, psycopg and structlog (~0.6 ms from bytecode).
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple, TextIO

import psycopg
import structlog
from psycopg import pq, sql

from pgsluice.events import Event

log = structlog.get_logger("pgsluice.progress")

Locator = Callable[[str | None], tuple[str | None, int | None]]
"""Maps the backend's current query text (None when unknown) to ``(file, line)``."""

OBSERVER_STATEMENT_TIMEOUT_MS = 2000
OBSERVER_LOCK_TIMEOUT_MS = 500
BLOCKER_QUERY_CHARS = 200
SOCKET_CHECK_SECONDS = 0.5
EXIT_WAIT_SECONDS = OBSERVER_STATEMENT_TIMEOUT_MS / 1000 + 1.0
"""How long leaving a block may wait for a tick of it in flight (normally one catalog query: milliseconds)."""
PERCENT_CAP = 99.0
"""A backup's percentage is an estimate: it never claims to be done before it is."""
DATABASE_SIZE_BASIS = "database size before the dump: the dump is compressed, so it is usually smaller"


# --- the ticker: one daemon thread per process, started by the first watched block -------------------------


class _Job:
    """Something the ticker runs every ``interval_seconds`` from ``due`` on."""

    event: Event
    due: float
    interval_seconds: float

    def tick(self) -> None:
        raise NotImplementedError


class _Ticker:
    """One daemon thread for the whole process, serving every active job (blocks of any thread).

    The thread starts only when a job is due: a block entered on the main thread arms a one-shot
    ``SIGALRM`` for its threshold instead (Python runs the handler on the main thread while it waits in libpq,
    as it runs SIGTERM's), and a block that ends first disarms it, so a 50 ms migration starts no thread and
    runs no query. A block entered on another thread (a fleet's worker) starts the thread at once."""

    def __init__(self) -> None:
        self._wake = threading.Condition(threading.Lock())
        self._jobs: list[_Job] = []
        self._thread: threading.Thread | None = None
        self._alarm_installed = False

    def add(self, job: _Job) -> None:
        with self._wake:
            self._jobs.append(job)
            idle = self._thread is None or not self._thread.is_alive()
            if idle and not self._arm(job.due - time.monotonic()):  # off the main thread: the thread at once
                self._start()
            self._wake.notify()

    def remove(self, job: _Job) -> None:
        # No notify: a ticker waiting for this job's time wakes then, finds nothing due and waits again.
        with self._wake:
            if job in self._jobs:
                self._jobs.remove(job)
            if not self._jobs and self._alarm_installed:
                signal.setitimer(signal.ITIMER_REAL, 0)  # nothing left to watch: no thread will be needed

    def _start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="pgsluice-progress", daemon=True)
        self._thread.start()

    def _arm(self, delay: float) -> bool:
        """Arm the alarm that starts the thread in ``delay`` seconds (or sooner, if armed for sooner); False
        when this is not the main thread (or the platform has no SIGALRM): then the caller starts the thread."""
        if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
            return False
        if not self._alarm_installed:
            signal.signal(signal.SIGALRM, self._alarm)
            self._alarm_installed = True
        pending, _ = signal.getitimer(signal.ITIMER_REAL)
        delay = max(delay, 0.001)
        if pending == 0 or delay < pending:
            signal.setitimer(signal.ITIMER_REAL, delay)
        return True

    def _alarm(self, _signum: int, _frame: object) -> None:
        """SIGALRM, on the main thread: a job is due, start the thread (it does the rest)."""
        if not self._wake.acquire(blocking=False):  # the main thread was inside add/remove: try again shortly
            signal.setitimer(signal.ITIMER_REAL, 0.01)
            return
        try:
            if self._jobs and (self._thread is None or not self._thread.is_alive()):
                self._start()
                self._wake.notify()
        finally:
            self._wake.release()

    def _due(self) -> list[_Job]:
        with self._wake:
            while True:
                now = time.monotonic()
                due = [job for job in self._jobs if job.due <= now]
                if due:
                    for job in due:
                        job.due = now + job.interval_seconds
                    return due
                soonest = min((job.due for job in self._jobs), default=None)
                self._wake.wait(None if soonest is None else soonest - now)

    def _run(self) -> None:
        while True:
            for job in self._due():
                try:
                    job.tick()
                except Exception as exc:  # noqa: BLE001 - a failed report must not end the run or the other jobs
                    log.warning(job.event, progress_error=f"{type(exc).__name__}: {exc}"[:300])

    def _after_fork(self) -> None:
        self._wake = threading.Condition(threading.Lock())
        self._jobs = []
        self._thread = None


_TICKER = _Ticker()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_TICKER._after_fork)


# --- the console line -----------------------------------------------------------------------------------------


class ConsoleLine:
    """One terminal line redrawn in place with a carriage return, and cleared when the work ends."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._lock = threading.Lock()
        self._shown = False

    def draw(self, text: str) -> None:
        """Replace the line with ``text``, cut to the terminal's width."""
        try:
            width = os.get_terminal_size(self.stream.fileno()).columns or 80  # a new pty says 0
        except (OSError, ValueError):
            width = 80
        with self._lock:
            self.stream.write("\r" + text[: max(20, width - 1)] + "\x1b[K")
            self.stream.flush()
            self._shown = True
        with _SHOWN_LOCK:
            _SHOWN.add(self)

    def clear(self) -> None:
        """Erase the line if it is shown (the cursor goes back to its start)."""
        with self._lock:
            if not self._shown:
                return
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._shown = False
        with _SHOWN_LOCK:
            _SHOWN.discard(self)


_SHOWN: set[ConsoleLine] = set()
_SHOWN_LOCK = threading.Lock()
_CONSOLES: dict[int, ConsoleLine] = {}


def progress_console(log_format: str, stream: TextIO | None = None) -> ConsoleLine | None:
    """The line to draw progress on: with console logs (``console``, or ``auto``) on a terminal; else None (events).

    One line per stream, shared by every caller."""
    stream = stream or sys.stderr
    if log_format == "json" or not stream.isatty():
        return None
    with _SHOWN_LOCK:
        return _CONSOLES.setdefault(id(stream), ConsoleLine(stream))


def clear_console_lines(_logger: Any, _name: str, event_dict: Any) -> Any:
    """A structlog processor for the console renderer: erase a progress line before another event is printed."""
    with _SHOWN_LOCK:
        shown = list(_SHOWN)
    for line in shown:
        line.clear()
    return event_dict


# --- formatting (pure) --------------------------------------------------------------------------------------


def human_seconds(seconds: float) -> str:
    """``42s``, ``3m07s``, ``2h05m``."""
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def human_bytes(count: float) -> str:
    """``512 B``, ``3.4 MiB``, ``1.2 GiB``."""
    if count < 1024:
        return f"{count:.0f} B"
    value = count / 1024
    for unit in ("KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


# --- migration.progress ----------------------------------------------------------------------------------------

_COUNTERS = (("blocks_done", "blocks_total"), ("tuples_done", "tuples_total"), ("bytes_done", "bytes_total"))
_LOCKERS = ("lockers_done", "lockers_total")

# Each pg_stat_progress_* view in one shape: (server version it appeared in, view, expressions for command, phase,
# relid, blocks done/total, tuples done/total, bytes done/total, lockers done/total, the pid a build waits for).
_SHAPE = (
    ("command", "text"), ("phase", "text"), ("relid", "oid"), ("blocks_done", "bigint"), ("blocks_total", "bigint"),
    ("tuples_done", "bigint"), ("tuples_total", "bigint"), ("bytes_done", "bigint"), ("bytes_total", "bigint"),
    ("lockers_done", "bigint"), ("lockers_total", "bigint"), ("locker", "integer"),
)  # fmt: skip
_PROGRESS_VIEWS: tuple[tuple[int, str, tuple[str, ...]], ...] = (
    (
        120000,
        "pg_stat_progress_create_index",
        ("command", "phase", "relid", "blocks_done", "blocks_total", "tuples_done", "tuples_total",
         "NULL", "NULL", "lockers_done", "lockers_total", "nullif(current_locker_pid, 0)"),
    ),
    (
        120000,
        "pg_stat_progress_cluster",
        ("command", "phase", "relid", "heap_blks_scanned", "heap_blks_total", "heap_tuples_scanned", "NULL",
         "NULL", "NULL", "NULL", "NULL", "NULL"),
    ),
    (
        140000,
        "pg_stat_progress_copy",
        ("command", "NULL", "relid", "NULL", "NULL", "tuples_processed", "NULL", "bytes_processed",
         "nullif(bytes_total, 0)", "NULL", "NULL", "NULL"),
    ),
    (
        90600,
        "pg_stat_progress_vacuum",
        ("'VACUUM'", "phase", "relid",
         "CASE WHEN phase = 'vacuuming heap' THEN heap_blks_vacuumed ELSE heap_blks_scanned END",
         "heap_blks_total", "NULL", "NULL", "NULL", "NULL", "NULL", "NULL", "NULL"),
    ),
    (
        130000,
        "pg_stat_progress_analyze",
        ("'ANALYZE'", "phase", "relid", "sample_blks_scanned", "sample_blks_total", "NULL", "NULL", "NULL", "NULL",
         "NULL", "NULL", "NULL"),
    ),
)  # fmt: skip

_OBSERVE_SQL = """SET LOCAL statement_timeout = {statement_timeout}; SET LOCAL lock_timeout = {lock_timeout};
SELECT json_build_object(
  'state', a.state, 'wait_event_type', a.wait_event_type, 'wait_event', a.wait_event,
  'elapsed_seconds', round(extract(epoch FROM clock_timestamp() - a.query_start)::numeric, 1),
  'query', a.query,
  'command', p.command, 'phase', p.phase, 'relation', nullif(p.relid, 0)::regclass::text,
  'blocks_done', p.blocks_done, 'blocks_total', p.blocks_total,
  'tuples_done', p.tuples_done, 'tuples_total', p.tuples_total,
  'bytes_done', p.bytes_done, 'bytes_total', p.bytes_total,
  'lockers_done', p.lockers_done, 'lockers_total', p.lockers_total,
  'lock_waiting_seconds', CASE WHEN a.wait_event_type = 'Lock' THEN ({waitstart}) END,
  'waiting_for', CASE WHEN a.wait_event_type = 'Lock' THEN (
    SELECT json_agg(json_build_object(
      'pid', b.pid, 'application_name', b.application_name, 'user', b.usename, 'state', b.state,
      'xact_age_seconds', round(extract(epoch FROM clock_timestamp() - b.xact_start)::numeric, 1),
      'query', left(regexp_replace(b.query, '\\s+', ' ', 'g'), {query_chars})) ORDER BY b.pid)
    FROM (SELECT pg_blocking_pids(a.pid) AS pids) blocking
    JOIN pg_stat_activity b ON b.pid = ANY (blocking.pids) OR b.pid = p.locker) END)
FROM pg_stat_activity a
LEFT JOIN LATERAL ({views} LIMIT 1) p ON true
WHERE a.pid = {pid}"""

_WAITSTART_SQL = (
    "SELECT round(extract(epoch FROM clock_timestamp() - min(l.waitstart))::numeric, 1)"
    " FROM pg_locks l WHERE l.pid = a.pid AND NOT l.granted"
)


def observe_query(server_version: int, backend_pid: int) -> sql.Composed:
    """The one statement of a tick: ``backend_pid``'s activity, progress view row and blockers, as one JSON value.

    Only the progress views ``server_version`` has are read; ``pg_blocking_pids`` and ``pg_locks`` (which
    briefly lock the lock manager; the former is called once) only while the backend waits on a lock."""
    views = " UNION ALL ".join(
        "(SELECT "
        + ", ".join(f"({expr})::{kind} AS {name}" for expr, (name, kind) in zip(columns, _SHAPE, strict=True))
        + f" FROM {view} WHERE pid = a.pid)"
        for since, view, columns in _PROGRESS_VIEWS
        if server_version >= since
    )
    return sql.SQL(_OBSERVE_SQL).format(
        statement_timeout=sql.Literal(OBSERVER_STATEMENT_TIMEOUT_MS),  # integers only: composing touches no libpq
        lock_timeout=sql.Literal(OBSERVER_LOCK_TIMEOUT_MS),
        waitstart=sql.SQL(_WAITSTART_SQL if server_version >= 140000 else "SELECT NULL::numeric"),
        query_chars=sql.Literal(BLOCKER_QUERY_CHARS),
        views=sql.SQL(views),
        pid=sql.Literal(int(backend_pid)),
    )


def phase_percent(row: Mapping[str, Any]) -> float | None:
    """How far the current phase is, from the first of blocks, tuples, bytes (or, for CREATE INDEX CONCURRENTLY's
    waits, lockers) that is under way (``0 <= done < total``); None when no counter is (sorting, a phase with
    no counter, or counters left over from the previous phase)."""
    for done_key, total_key in (*_COUNTERS, _LOCKERS):
        done, total = row.get(done_key), row.get(total_key)
        if done is None or not total:
            continue
        if 0 <= done < total:
            return round(100.0 * float(done) / float(total), 1)
    return None


def _view_fields(observed: Mapping[str, Any]) -> dict[str, Any]:
    if observed.get("command") is None:
        return {}
    fields: dict[str, Any] = {
        "command": observed["command"],
        "phase": observed.get("phase"),
        "relation": observed.get("relation"),
        "percent": phase_percent(observed),
    }
    for done_key, total_key in (*_COUNTERS, _LOCKERS):
        done, total = observed.get(done_key), observed.get(total_key)
        if done or total:  # a COPY from STDIN counts rows and bytes with no total; zeros are other phases' counters
            fields[done_key] = done
            if total:
                fields[total_key] = total
    return fields


def statement_fields(
    observed: Mapping[str, Any] | None, where: tuple[str | None, int | None], watched_seconds: float
) -> dict[str, Any]:
    """The ``migration.progress`` event's fields from one observation (None: none was made on this tick).

    ``elapsed_seconds`` is the statement's own (the server's ``query_start``) while it is active, else how long
    the block has been watched."""
    file, line = where
    fields: dict[str, Any] = {"file": file, "line": line, "elapsed_seconds": round(watched_seconds, 1)}
    if not observed:
        return fields
    state = observed.get("state")
    if state == "active" and observed.get("elapsed_seconds") is not None:
        fields["elapsed_seconds"] = float(observed["elapsed_seconds"])
    if state != "active":
        fields["state"] = state
    if observed.get("wait_event") is not None:
        fields["wait_event_type"] = observed.get("wait_event_type")
        fields["wait_event"] = observed["wait_event"]
    fields.update(_view_fields(observed))
    if observed.get("waiting_for"):
        fields["waiting_for"] = list(observed["waiting_for"])
        if observed.get("lock_waiting_seconds") is not None:
            fields["lock_waiting_seconds"] = float(observed["lock_waiting_seconds"])
    return fields


def statement_line(fields: Mapping[str, Any]) -> str:
    """The console line of a ``migration.progress`` event."""
    where = str(fields.get("file") or "migration")
    if fields.get("line") is not None:
        where += f":{fields['line']}"
    parts = [f"{where} running {human_seconds(float(fields.get('elapsed_seconds') or 0))}"]
    if fields.get("command"):
        doing = " ".join(str(fields[k]) for k in ("command", "phase") if fields.get(k))
        if fields.get("percent") is not None:
            doing += f" {fields['percent']:.1f}%"
        parts.append(doing)
    blockers = fields.get("waiting_for") or []
    if blockers:
        first = blockers[0]
        more = f" (+{len(blockers) - 1} more)" if len(blockers) > 1 else ""
        age = first.get("xact_age_seconds")
        parts.append(
            f"waiting for a {fields.get('wait_event') or ''} lock held by pid {first.get('pid')}"
            f" {first.get('application_name') or '?'!r} {first.get('state') or ''}"
            + (f", transaction open {human_seconds(float(age))}" if age is not None else "")
            + more
        )
    elif fields.get("wait_event"):
        parts.append(f"waiting on {fields.get('wait_event_type')}:{fields['wait_event']}")
    return " | ".join(parts)


class _Busy:
    """The observer was in use: this tick makes no observation rather than wait."""


BUSY = _Busy()


def _wait_socket(conn: psycopg.Connection[Any], *, write: bool) -> None:
    """Wait until the socket is ready; OperationalError if the connection is closed meanwhile (a closed socket
    would never become ready)."""
    import selectors

    events = selectors.EVENT_READ | (selectors.EVENT_WRITE if write else 0)
    with selectors.DefaultSelector() as selector:
        selector.register(conn.pgconn.socket, events)
        while not selector.select(timeout=SOCKET_CHECK_SECONDS):
            if conn.closed:
                raise psycopg.OperationalError("the observer connection was closed during the progress query")


def _exchange(conn: psycopg.Connection[Any], query: bytes) -> list[pq.abc.PGresult]:
    """Send ``query`` with the simple query protocol and read every result (libpq's non-blocking way)."""
    pgconn = conn.pgconn
    pgconn.send_query(query)
    while pgconn.flush():
        _wait_socket(conn, write=True)
        pgconn.consume_input()
    results: list[pq.abc.PGresult] = []
    while True:
        pgconn.consume_input()
        while pgconn.is_busy():
            _wait_socket(conn, write=False)
            pgconn.consume_input()
        result = pgconn.get_result()
        if result is None:
            return results
        results.append(result)


def query_when_idle(conn: psycopg.Connection[Any], query: bytes) -> Any:
    """The one JSON value ``query`` returns, run on ``conn`` only if nobody is using it; else ``BUSY``.

    The connection's own lock is taken without waiting and held for the exchange, and the connection must be
    idle (not in a transaction: the lease heartbeat's, say): the query never runs inside another user's
    transaction and never waits behind it. psycopg.Error when the query fails."""
    if not conn.lock.acquire(blocking=False):
        return BUSY
    try:
        pgconn = conn.pgconn
        if conn.closed or conn.broken or pgconn.transaction_status != pq.TransactionStatus.IDLE:
            return BUSY
        results = _exchange(conn, query)
    finally:
        conn.lock.release()
    value: Any = None
    for result in results:
        if result.status == pq.ExecStatus.FATAL_ERROR:
            message = (result.error_message or b"").decode("utf-8", "replace")
            raise psycopg.DatabaseError(" ".join(message.split()))
        if result.status == pq.ExecStatus.TUPLES_OK and result.ntuples:
            raw = result.get_value(0, 0)
            value = None if raw is None else json.loads(raw.decode(conn.info.encoding))
    return value


class StatementWatch(_Job):
    """A block of statements watched for progress; see ``watch_statements``."""

    event = Event.MIGRATION_PROGRESS

    def __init__(
        self,
        observer: psycopg.Connection[Any],
        backend_pid: int | None,
        *,
        after_seconds: float,
        interval_seconds: float,
        locate: Locator,
        console: ConsoleLine | None,
    ) -> None:
        self.observer = observer
        self.backend_pid = backend_pid
        self.after_seconds = after_seconds
        self.interval_seconds = interval_seconds
        self.locate = locate
        self.console = console
        self.started = 0.0
        self.due = math.inf
        self._query: bytes | None = None
        self._ticking = threading.Lock()
        self._active = False

    def __enter__(self) -> StatementWatch:
        if not math.isfinite(self.after_seconds):
            return self  # progress off
        self.started = time.monotonic()
        self.due = self.started + self.after_seconds
        self._active = True
        _TICKER.add(self)
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._active:
            return
        # Nothing more is printed from here on; a tick in flight finishes its query first (bounded), so that once
        # the block is left nothing of it uses the observer (the caller may close it).
        self._active = False
        if self._ticking.acquire(timeout=EXIT_WAIT_SECONDS):
            self._ticking.release()
        _TICKER.remove(self)
        if self.console is not None:
            self.console.clear()

    def _observe(self) -> tuple[Mapping[str, Any] | None, dict[str, Any]]:
        """The observation of this tick and what to say about the observer (busy, failed)."""
        if self.backend_pid is None or self.observer.closed:
            return None, {}
        if self._query is None:
            query = observe_query(self.observer.info.server_version, self.backend_pid)
            self._query = query.as_bytes(self.observer)
        try:
            observed = query_when_idle(self.observer, self._query)
        except psycopg.Error as exc:
            return None, {"observer_error": " ".join(str(exc).split())[:300]}
        if observed is BUSY:
            return None, {"observer": "busy"}
        return (observed if isinstance(observed, dict) else {}), {}

    def tick(self) -> None:
        """On the ticker thread: observe the backend once (if the observer is free) and report it."""
        with self._ticking:
            if not self._active:
                return
            observed, notes = self._observe()
            if observed and observed.get("state") == "idle":
                return  # between two statements, or the last one has just ended: nothing runs to report on
            where = self.locate(observed.get("query") if observed else None)
            fields = statement_fields(observed, where, time.monotonic() - self.started)
            if observed is not None:
                fields["pid"] = self.backend_pid
            fields.update(notes)
            if not self._active:
                return  # the block ended while we looked
            if self.console is not None:
                self.console.draw(statement_line(fields))
            else:
                log.info(Event.MIGRATION_PROGRESS, **fields)


def watch_statements(
    observer: psycopg.Connection[Any],
    backend_pid: int | None,
    *,
    after_seconds: float,
    interval_seconds: float,
    locate: Locator,
    console: ConsoleLine | None = None,
) -> StatementWatch:
    """A context manager around sending statements on the backend ``backend_pid``: once the block has run
    ``after_seconds``, one ``migration.progress`` event (or console line) every ``interval_seconds`` until it ends.

    ``observer`` is an idle autocommit connection of pgsluice's own (the lock connection); a tick that finds it
    in use makes no observation rather than wait. ``backend_pid`` None (a transaction pooler: the server
    backend is unknown) gives events with the file and the time only. ``locate`` is called on the ticker
    thread with the backend's current query text (``pg_stat_activity.query``: cut at track_activity_query_size)
    or None. ``after_seconds`` infinite turns progress off."""
    if interval_seconds <= 0:
        raise ValueError(f"interval_seconds must be positive, not {interval_seconds}")
    return StatementWatch(
        observer,
        backend_pid,
        after_seconds=after_seconds,
        interval_seconds=interval_seconds,
        locate=locate,
        console=console,
    )


def statement_locator(statements: Iterable[tuple[str, str, int | None]], default_file: str | None) -> Locator:
    """A ``locate`` for ``watch_statements`` from ``(sql, file, line)`` of each statement sent in the block.

    The query text in pg_stat_activity is the statement as sent, cut at track_activity_query_size - 1 bytes
    (possibly inside a character): an exact match first, else the first statement it begins; else
    ``(default_file, None)``."""
    exact: dict[str, tuple[str, int | None]] = {}
    ordered: list[tuple[str, tuple[str, int | None]]] = []
    for text, file, line in statements:
        exact.setdefault(text, (file, line))
        ordered.append((text, (file, line)))

    def locate(query: str | None) -> tuple[str | None, int | None]:
        if query is None:
            return default_file, None
        found = exact.get(query)
        if found is not None:
            return found
        prefix = query.rstrip("\ufffd")
        if len(prefix) >= 64:  # only a cut text is a prefix; a short unknown one is not ours (BEGIN, the history row)
            for text, where in ordered:
                if text.startswith(prefix):
                    return where
        return default_file, None

    return locate


# --- backup.progress -------------------------------------------------------------------------------------------


class BackupSample(NamedTuple):
    """The backup's counters at one moment (monotonic seconds)."""

    at: float
    dumped_bytes: int
    uploaded_bytes: int | None
    last_chunk_at: float


def backup_fields(
    expected_bytes: int, basis: str, started: float, previous: BackupSample, current: BackupSample
) -> dict[str, Any]:
    """The ``backup.progress`` event's fields: bytes, the rate since the previous event, and an estimate of the
    percentage and time left against ``expected_bytes`` (never 100% before the end)."""
    elapsed = max(0.0, current.at - started)
    window = current.at - previous.at
    rate = (current.dumped_bytes - previous.dumped_bytes) / window if window > 0 else 0.0
    fields: dict[str, Any] = {
        "bytes_dumped": current.dumped_bytes,
        "elapsed_seconds": round(elapsed, 1),
        "rate_bytes_per_second": round(max(0.0, rate)),
    }
    if current.uploaded_bytes is not None:
        fields["bytes_uploaded"] = current.uploaded_bytes
    percent = None
    remaining = None
    if expected_bytes > 0:
        percent = min(PERCENT_CAP, round(100.0 * current.dumped_bytes / expected_bytes, 1))
        average = current.dumped_bytes / elapsed if elapsed > 0 else 0.0
        left = expected_bytes - current.dumped_bytes
        if average > 0 and left > 0:
            remaining = round(left / average)
    fields["percent_estimate"] = percent
    fields["estimated_remaining_seconds"] = remaining
    fields["estimate_basis"] = basis
    quiet = current.at - current.last_chunk_at
    if quiet >= window > 0:
        fields["stalled_seconds"] = round(quiet, 1)
    return fields


def backup_line(fields: Mapping[str, Any]) -> str:
    """The console line of a ``backup.progress`` event."""
    text = f"backup {human_bytes(fields['bytes_dumped'])} dumped"
    if fields.get("bytes_uploaded") is not None:
        text += f", {human_bytes(fields['bytes_uploaded'])} uploaded"
    text += f", {human_bytes(fields['rate_bytes_per_second'])}/s, {human_seconds(fields['elapsed_seconds'])}"
    if fields.get("percent_estimate") is not None:
        text += f" | ~{fields['percent_estimate']:.0f}% (estimate)"
    if fields.get("estimated_remaining_seconds") is not None:
        text += f", ~{human_seconds(fields['estimated_remaining_seconds'])} left"
    if fields.get("stalled_seconds") is not None:
        text += f" | nothing from pg_dump for {human_seconds(fields['stalled_seconds'])}"
    return text


class BackupProgress(_Job):
    """``backup.progress`` every ``interval_seconds`` once the backup has run ``after_seconds``, until the block
    ends; also while pg_dump sends nothing (a stalled dump shows a zero rate and ``stalled_seconds``).

    ``expected_bytes`` is what the percentage and time left are estimated against: the database's size measured
    before the dump (the dump is compressed: the estimate runs slow) or, better, the previous dump's size, with
    ``basis`` saying which. ``update`` is cheap (a lock and two stores) and may be called from any thread."""

    event = Event.BACKUP_PROGRESS

    def __init__(
        self,
        expected_bytes: int,
        *,
        after_seconds: float,
        interval_seconds: float,
        console: ConsoleLine | None = None,
        basis: str = DATABASE_SIZE_BASIS,
    ) -> None:
        if interval_seconds <= 0:
            raise ValueError(f"interval_seconds must be positive, not {interval_seconds}")
        self.expected_bytes = expected_bytes
        self.after_seconds = after_seconds
        self.interval_seconds = interval_seconds
        self.console = console
        self.basis = basis
        self.started = time.monotonic()
        self.due = math.inf
        self._lock = threading.Lock()  # the counters: update() never waits for a log line being written
        self._emit = threading.Lock()
        self._dumped = 0
        self._uploaded: int | None = None
        self._last_chunk_at = self.started
        self._previous = BackupSample(self.started, 0, None, self.started)
        self._active = False

    def __enter__(self) -> BackupProgress:
        self.started = time.monotonic()
        self._last_chunk_at = self.started
        self._previous = BackupSample(self.started, 0, None, self.started)
        if math.isfinite(self.after_seconds):
            self.due = self.started + self.after_seconds
            self._active = True
            _TICKER.add(self)
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._active:
            return
        with self._emit:
            self._active = False
        _TICKER.remove(self)
        if self.console is not None:
            self.console.clear()

    def update(self, dumped_bytes: int, uploaded_bytes: int | None = None) -> None:
        """The bytes pg_dump has written so far (and those the store has acknowledged, when known)."""
        now = time.monotonic()
        with self._lock:
            if dumped_bytes != self._dumped:
                self._last_chunk_at = now
            self._dumped = dumped_bytes
            if uploaded_bytes is not None:
                self._uploaded = uploaded_bytes

    def sample(self) -> BackupSample:
        """The counters now."""
        with self._lock:
            return BackupSample(time.monotonic(), self._dumped, self._uploaded, self._last_chunk_at)

    def tick(self) -> None:
        """On the ticker thread: report the counters, the rate since the last report and the estimate."""
        current = self.sample()
        fields = backup_fields(self.expected_bytes, self.basis, self.started, self._previous, current)
        self._previous = current
        with self._emit:
            if not self._active:
                return
            if self.console is not None:
                self.console.draw(backup_line(fields))
            else:
                log.info(Event.BACKUP_PROGRESS, **fields)
