"""Progress of long work against a real PostgreSQL: migration.progress from the progress views and lock waits,
nothing at all for short statements, backup.progress, and the console line on a real terminal (pty)."""

from __future__ import annotations

import functools
import os
import select
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, MutableMapping, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
import structlog

from pgsluice import progress
from pgsluice.progress import BackupProgress, BackupSample, backup_fields, watch_statements
from tests.support.cli import poll
from tests.support.databases import Database

pytestmark = pytest.mark.integration


def _progress(logs: Sequence[MutableMapping[str, Any]], name: str = "migration.progress") -> list[dict[str, Any]]:
    """The events called ``name``, as plain dicts."""
    return [dict(e) for e in logs if e["event"] == name]


class Worker:
    """``work`` in a thread of its own, as a migration of a --parallel fleet runs; ``join`` re-raises its error."""

    def __init__(self, work: Callable[[], object]) -> None:
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(work,), name="test-worker")
        self.thread.start()

    def _run(self, work: Callable[[], object]) -> None:
        try:
            work()
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread by join()
            self.error = exc

    @property
    def done(self) -> bool:
        """Whether the work has ended."""
        return not self.thread.is_alive()

    def join(self) -> BaseException | None:
        """Wait for the work; what it raised, if anything."""
        self.thread.join(timeout=60)
        assert not self.thread.is_alive()
        return self.error


def _activity(db: Database, pid: int) -> tuple[Any, ...]:
    """``(query, state_change)`` of backend ``pid``: changes whenever it runs anything."""
    return tuple(db.query("SELECT query, state_change FROM pg_stat_activity WHERE pid = %s", (pid,))[0])


def _cancel_when_running(db: Database, work: psycopg.Connection[Any]) -> None:
    """Cancel ``work``'s statement once the server runs it (a cancel sent before would be lost)."""
    pid = work.info.backend_pid
    poll(
        lambda: db.scalar("SELECT state = 'active' FROM pg_stat_activity WHERE pid = %s", (pid,)),
        "the statement to run",
    )
    work.cancel()


@contextmanager
def _connections(db: Database, count: int) -> Iterator[list[psycopg.Connection[Any]]]:
    conns = [db.connect() for _ in range(count)]
    try:
        yield conns
    finally:
        for conn in conns:
            conn.close()


def test_a_long_create_index_reports_its_phase_and_a_rising_percentage(db: Database) -> None:
    """A CREATE INDEX sent from a worker thread gets migration.progress events with the command, the phase and a
    percentage that rises within the phase, located by the callback."""
    with db.connect() as setup:
        # Each row costs the build ~1 ms (an index expression that sleeps): seconds whatever the machine, and
        # wide rows make enough blocks for a smooth percentage.
        setup.execute("CREATE TABLE big AS SELECT g AS a, repeat('x', 400) AS pad FROM generate_series(1, 1200) g")
        setup.execute(
            "CREATE FUNCTION slow(int) RETURNS int LANGUAGE plpgsql IMMUTABLE"
            " AS $$ BEGIN PERFORM pg_sleep(0.001); RETURN $1; END $$"
        )
    statement = "CREATE INDEX big_slow ON big (slow(a))"
    located: list[str | None] = []

    def locate(query: str | None) -> tuple[str | None, int | None]:
        located.append(query)
        return ("003_index.sql", 4) if query == statement else ("003_index.sql", None)

    with _connections(db, 2) as (observer, work), structlog.testing.capture_logs() as logs:
        pid = work.info.backend_pid

        def build() -> None:
            with watch_statements(observer, pid, after_seconds=0.3, interval_seconds=0.3, locate=locate):
                work.execute(statement)

        worker = Worker(build)
        assert worker.join() is None
    events = _progress(logs)
    scanning = [e for e in events if e.get("phase") == "building index: scanning table"]
    assert len(scanning) >= 2, events
    assert {(e["file"], e["line"], e["command"], e["relation"], e["pid"]) for e in events} == {
        ("003_index.sql", 4, "CREATE INDEX", "big", pid)
    }
    percents = [e["percent"] for e in scanning]
    assert percents == sorted(percents)
    assert max(percents) > 0
    assert all(e["blocks_total"] > 0 and 0 <= e["blocks_done"] <= e["blocks_total"] for e in scanning)
    assert statement in located


def test_a_statement_queued_behind_a_lock_names_who_holds_it_until_lock_timeout(db: Database) -> None:
    """While a SELECT waits for a table another session locked, each event names that session (pid,
    application_name, state, transaction age) and how long the wait has lasted; lock_timeout then ends it."""
    with db.connect() as setup:
        setup.execute("CREATE TABLE t (a int)")
    holder = psycopg.connect(db.url, application_name="the-long-transaction")
    holder_pid = holder.info.backend_pid
    try:
        holder.execute("LOCK TABLE t IN ACCESS EXCLUSIVE MODE")  # and the transaction stays open
        with _connections(db, 2) as (observer, work), structlog.testing.capture_logs() as logs:
            work.execute("SET lock_timeout = '2s'")
            with (
                pytest.raises(psycopg.errors.LockNotAvailable),
                watch_statements(
                    observer,
                    work.info.backend_pid,
                    after_seconds=0.2,
                    interval_seconds=0.3,
                    locate=lambda _q: ("002_read.sql", 1),
                ),
            ):
                work.execute("SELECT * FROM t")
    finally:
        holder.close()
    events = _progress(logs)
    assert events
    for event in events:
        assert (event["wait_event_type"], event["wait_event"]) == ("Lock", "relation")
        [blocker] = event["waiting_for"]
        assert (blocker["pid"], blocker["application_name"], blocker["state"]) == (
            holder_pid,
            "the-long-transaction",
            "idle in transaction",
        )
        assert blocker["xact_age_seconds"] >= event["lock_waiting_seconds"] >= 0
        assert blocker["query"] == "LOCK TABLE t IN ACCESS EXCLUSIVE MODE"
    waits = [e["lock_waiting_seconds"] for e in events]
    assert waits == sorted(waits)


def test_inline_copy_data_reports_the_rows_and_bytes_the_server_has_read(db: Database) -> None:
    """While a migration's inline COPY data streams in, events show COPY FROM with the rows and bytes so far (there
    is no total to make a percentage of)."""
    with db.connect() as setup:
        setup.execute("CREATE TABLE imported (a int, b text)")
    rows = "".join(f"{i}\tsome text of row {i}\n" for i in range(50_000)).encode()
    with (
        _connections(db, 2) as (observer, work),
        structlog.testing.capture_logs() as logs,
        watch_statements(
            observer,
            work.info.backend_pid,
            after_seconds=0.0,
            interval_seconds=0.05,
            locate=lambda _q: ("006_seed.sql", 2),
        ),
        work.cursor().copy("COPY imported FROM STDIN") as copy,
    ):
        copy.write(rows)  # more than psycopg buffers: the server is reading it
        poll(lambda: any(e.get("tuples_done") for e in _progress(logs)), "an event counting rows")
    copying = next(e for e in _progress(logs) if e.get("tuples_done"))
    assert (copying["file"], copying["line"], copying["command"], copying["relation"]) == (
        "006_seed.sql",
        2,
        "COPY FROM",
        "imported",
    )
    assert 0 < copying["tuples_done"] <= 50_000
    assert 0 < copying["bytes_done"] <= len(rows)
    assert "percent" in copying and copying["percent"] is None


def test_a_short_statement_runs_no_query_starts_no_thread_of_its_own_and_says_nothing(db: Database) -> None:
    """A 50 ms statement in a watched block: no event, no query on the observer (its pg_stat_activity entry is
    untouched), and no thread but the process's one ticker (started at most once, by the first block ever)."""
    with _connections(db, 2) as (observer, work), structlog.testing.capture_logs() as logs:
        observer.execute("SELECT 'the observer before the block'")
        before = _activity(db, observer.info.backend_pid)
        threads = set(threading.enumerate())
        for _ in range(2):
            with watch_statements(
                observer, work.info.backend_pid, after_seconds=5.0, interval_seconds=5.0, locate=lambda _q: (None, 1)
            ):
                work.execute("SELECT pg_sleep(0.05)")
            new = set(threading.enumerate()) - threads
            assert {t.name for t in new} <= {"pgsluice-progress"}
            threads |= new
        assert set(threading.enumerate()) == threads  # the second block started nothing
        assert _activity(db, observer.info.backend_pid) == before
    assert logs == []


_THREADS_PROBE = """
import signal, sys, threading, psycopg, structlog
from pgsluice.progress import watch_statements
observer = psycopg.connect(sys.argv[1], autocommit=True)
work = psycopg.connect(sys.argv[1], autocommit=True)
with structlog.testing.capture_logs() as logs:
    for _ in range(3):
        with watch_statements(observer, work.info.backend_pid, after_seconds=2.0, interval_seconds=2.0,
                              locate=lambda _q: (None, 1)):
            work.execute("SELECT pg_sleep(0.05)")
    short = (threading.active_count(), signal.getitimer(signal.ITIMER_REAL)[0], len(logs))
    with watch_statements(observer, work.info.backend_pid, after_seconds=0.2, interval_seconds=0.2,
                          locate=lambda _q: (None, 1)):
        work.execute("SELECT pg_sleep(1)")
    long = (threading.active_count(), len([e for e in logs if e["event"] == "migration.progress"]))
print(*short, *long)
"""


def test_a_50_ms_block_on_the_main_thread_starts_no_thread_and_a_long_one_does(db: Database) -> None:
    """In a fresh process: three 50 ms blocks on the main thread leave one thread (the main one), no alarm armed
    and no event; a 1 s block past a 0.2 s threshold then starts the ticker (from its SIGALRM) and reports."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, ["src", os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(
        [sys.executable, "-c", _THREADS_PROBE, db.url], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    threads_after_short, alarm, short_events, threads_after_long, long_events = done.stdout.split()
    assert (threads_after_short, float(alarm), short_events) == ("1", 0.0, "0")
    assert threads_after_long == "2" and int(long_events) >= 1


def test_a_busy_observer_is_never_waited_for_nor_queried_inside_its_transaction(db: Database) -> None:
    """With the observer inside a transaction of its own (the lease heartbeat's, say), ticks say ``busy`` and run
    nothing on it; the events still carry the file and the time."""
    with _connections(db, 2) as (observer, work), structlog.testing.capture_logs() as logs:
        observer.execute("BEGIN")
        observer.execute("SELECT 'the heartbeat'")
        before = _activity(db, observer.info.backend_pid)
        with watch_statements(
            observer,
            work.info.backend_pid,
            after_seconds=0.0,
            interval_seconds=0.1,
            locate=lambda q: ("001_slow.sql", None if q is None else 1),
        ):
            worker = Worker(lambda: work.execute("SELECT pg_sleep(30)"))
            poll(lambda: len(_progress(logs)) >= 2, "two progress events")
            _cancel_when_running(db, work)
            assert isinstance(worker.join(), psycopg.errors.QueryCanceled)
        assert _activity(db, observer.info.backend_pid) == before
        observer.execute("ROLLBACK")
    event = _progress(logs)[0]
    assert (event["file"], event["line"], event["observer"]) == ("001_slow.sql", None, "busy")
    assert "command" not in event


def test_without_a_backend_pid_events_say_the_file_and_the_time(db: Database) -> None:
    """Through a transaction pooler the server backend is unknown: events name the file and the time, and the
    observer is not queried."""
    with _connections(db, 2) as (observer, work), structlog.testing.capture_logs() as logs:
        observer.execute("SELECT 'idle observer'")
        before = _activity(db, observer.info.backend_pid)
        with watch_statements(
            observer, None, after_seconds=0.0, interval_seconds=0.1, locate=lambda _q: ("004_pooled.sql", None)
        ):
            worker = Worker(lambda: work.execute("SELECT pg_sleep(30)"))
            poll(lambda: _progress(logs), "a progress event")
            _cancel_when_running(db, work)
            worker.join()
        assert _activity(db, observer.info.backend_pid) == before
    assert set(_progress(logs)[0]) == {"event", "log_level", "file", "line", "elapsed_seconds"}


def test_the_observer_query_is_valid_for_every_server_version_pgsluice_may_meet(db: Database) -> None:
    """The statement built for servers with fewer progress views (9.6 to 14) runs, and says ``idle`` of itself."""
    with db.connect() as conn:
        for version in (90600, 120000, 130000, 140000, 150000, 170000):
            query = progress.observe_query(version, conn.info.backend_pid).as_bytes(conn)
            observed = progress.query_when_idle(conn, query)
            assert observed["state"] == "active"  # itself, running this very query
            assert observed["command"] is None


def test_phase_percent_uses_the_counter_under_way() -> None:
    """Blocks while the table is scanned, tuples while they load (blocks then stay complete), none while sorting."""
    assert progress.phase_percent({"blocks_done": 25, "blocks_total": 100, "tuples_total": 0}) == 25.0
    assert progress.phase_percent({"blocks_done": 100, "blocks_total": 100, "tuples_done": 1, "tuples_total": 3}) == (
        33.3
    )
    assert progress.phase_percent({"blocks_done": 100, "blocks_total": 100, "tuples_total": 0}) is None
    assert progress.phase_percent({"bytes_done": 512, "bytes_total": None, "tuples_done": 7}) is None
    assert progress.phase_percent({"lockers_done": 1, "lockers_total": 4}) == 25.0


def test_the_statement_locator_matches_whole_and_cut_query_texts() -> None:
    """The exact text, a text pg_stat_activity cut at track_activity_query_size, and anything else."""
    long_sql = "UPDATE accounts SET balance = balance * 1.01 WHERE " + " OR ".join(f"id = {i}" for i in range(300))
    locate = progress.statement_locator(
        [("CREATE INDEX i ON t (a)", "001_a.sql", 3), (long_sql, "002_b.sql", 7)], default_file="001_a.sql"
    )
    assert locate("CREATE INDEX i ON t (a)") == ("001_a.sql", 3)
    assert locate(long_sql[:1023]) == ("002_b.sql", 7)
    assert locate(long_sql[:100] + "\ufffd") == ("002_b.sql", 7)
    assert locate("COMMIT") == ("001_a.sql", None)
    assert locate(None) == ("001_a.sql", None)


def test_backup_figures_estimate_against_the_expected_size_and_never_claim_done() -> None:
    """Rate over the last interval, percentage and time left from the average rate, capped below 100, and a
    stall named."""
    start = BackupSample(100.0, 0, None, 100.0)
    ten = BackupSample(110.0, 40 * 2**20, 30 * 2**20, 110.0)
    assert backup_fields(100 * 2**20, "database size", 100.0, start, ten) == {
        "bytes_dumped": 40 * 2**20,
        "bytes_uploaded": 30 * 2**20,
        "elapsed_seconds": 10.0,
        "rate_bytes_per_second": 4 * 2**20,
        "percent_estimate": 40.0,
        "estimated_remaining_seconds": 15,
        "estimate_basis": "database size",
    }
    stalled = BackupSample(130.0, 40 * 2**20, None, 110.0)
    quiet = backup_fields(100 * 2**20, "database size", 100.0, ten, stalled)
    assert (quiet["rate_bytes_per_second"], quiet["stalled_seconds"]) == (0, 20.0)
    beyond = backup_fields(2**20, "database size", 100.0, start, ten)
    assert (beyond["percent_estimate"], beyond["estimated_remaining_seconds"]) == (99.0, None)
    unknown = backup_fields(0, "database size", 100.0, start, ten)
    assert (unknown["percent_estimate"], unknown["estimated_remaining_seconds"]) == (None, None)


def test_backup_progress_is_throttled_to_the_interval_and_goes_on_while_pg_dump_is_silent() -> None:
    """Thousands of updates give at most one event per interval, and a producer that stops sending still gets
    events, saying it stalled."""
    with structlog.testing.capture_logs() as logs:
        with BackupProgress(10**9, after_seconds=0.0, interval_seconds=0.2) as backup:
            for dumped in range(0, 50_000 * 1024, 1024):
                backup.update(dumped)
            fed = backup.sample()
            poll(lambda: any(e.get("stalled_seconds") for e in _progress(logs, "backup.progress")), "a stall")
        elapsed = backup.sample().at - backup.started
    events = _progress(logs, "backup.progress")
    assert len(events) <= elapsed / 0.2 + 1
    stalled = next(e for e in events if e.get("stalled_seconds"))
    assert (stalled["bytes_dumped"], stalled["rate_bytes_per_second"]) == (fed.dumped_bytes, 0)


def _reported(logs: Sequence[MutableMapping[str, Any]], dumped: int) -> bool:
    """Whether a backup.progress event reported exactly ``dumped`` bytes."""
    return any(e["bytes_dumped"] == dumped for e in _progress(logs, "backup.progress"))


def test_backup_progress_follows_a_real_pg_dump(db: Database) -> None:
    """pg_dump's stdout fed chunk by chunk: an event reports the bytes dumped so far and their share of the
    database's size, labelled as an estimate."""
    with db.connect() as setup:
        setup.execute("CREATE TABLE rows AS SELECT g, md5(g::text) AS h FROM generate_series(1, 100000) g")
        size = int(setup.execute("SELECT pg_database_size(current_database())").fetchone()[0])  # type: ignore[index]
    with (
        subprocess.Popen(["pg_dump", "--format=custom", "--dbname", db.url], stdout=subprocess.PIPE) as dump,
        structlog.testing.capture_logs() as logs,
    ):
        assert dump.stdout is not None
        with BackupProgress(size, after_seconds=0.0, interval_seconds=0.05) as backup:
            dumped, waited = 0, False
            while chunk := dump.stdout.read(64 * 1024):
                dumped += len(chunk)
                backup.update(dumped)
                if dumped >= 128 * 1024 and not waited:
                    # a slow consumer, once: it waits here until the ticker has reported these very bytes
                    poll(functools.partial(_reported, logs, dumped), "an event with the bytes fed so far")
                    waited = True
    assert dump.returncode == 0
    assert waited
    seen = next(e for e in _progress(logs, "backup.progress") if e["bytes_dumped"] >= 128 * 1024)
    assert seen["percent_estimate"] == round(100 * seen["bytes_dumped"] / size, 1)
    assert seen["estimate_basis"] == progress.DATABASE_SIZE_BASIS


def _read_until(fd: int, wanted: Callable[[bytes], bool]) -> bytes:
    """Read the terminal's output until ``wanted`` holds for it."""
    data = b""

    def more() -> bool:
        nonlocal data
        ready, _, _ = select.select([fd], [], [], 0.05)
        if ready:
            data += os.read(fd, 65536)
        return wanted(data)

    poll(more, "the terminal's output")
    return data


def test_on_a_terminal_progress_is_one_line_redrawn_and_cleared() -> None:
    """With console logs on a TTY (a real pty), progress redraws one line with carriage returns, clears it at the
    end, and logs no events; JSON logs or a pipe get no line."""
    master, slave = os.openpty()
    with open(slave, "w", encoding="utf-8") as tty:
        console = progress.progress_console("console", tty)
        assert console is not None
        assert progress.progress_console("auto", tty) is console
        assert progress.progress_console("json", tty) is None
        read_end, write_end = os.pipe()
        with open(write_end, "w") as pipe:
            assert progress.progress_console("console", pipe) is None
        os.close(read_end)
        with structlog.testing.capture_logs() as logs:
            with BackupProgress(10 * 2**20, after_seconds=0.0, interval_seconds=0.05, console=console) as backup:
                backup.update(2**20)
                shown = _read_until(master, lambda d: d.count(b"\rbackup 1.0 MiB dumped") >= 2)
            cleared = _read_until(master, lambda d: d.endswith(b"\r\x1b[K"))
    os.close(master)
    assert logs == []
    assert b"\n" not in shown
    assert b"~10% (estimate)" in shown
    assert cleared.endswith(b"\r\x1b[K")


def test_the_console_line_of_a_lock_wait_names_the_blocker() -> None:
    """What a terminal shows for a statement queued behind a lock."""
    fields = progress.statement_fields(
        {
            "state": "active",
            "elapsed_seconds": 75.0,
            "wait_event_type": "Lock",
            "wait_event": "relation",
            "waiting_for": [
                {"pid": 42, "application_name": "psql", "state": "idle in transaction", "xact_age_seconds": 600}
            ],
            "lock_waiting_seconds": 74.0,
        },
        ("005_alter.sql", 2),
        80.0,
    )
    assert progress.statement_line(fields) == (
        "005_alter.sql:2 running 1m15s | waiting for a relation lock held by pid 42 'psql' idle in transaction,"
        " transaction open 10m00s"
    )
