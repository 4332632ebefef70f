"""Who the pending migrations would queue behind: sessions holding or waiting for locks on the tables they touch,
and transactions open longer than a threshold. One query, under the migration lock, before the backup.

A migration's ``ALTER TABLE`` waits behind any session holding a lock on the table (even
``ACCESS SHARE`` from an idle-in-transaction ``SELECT``) and, while it waits, blocks every
later query on the table; ``CREATE INDEX CONCURRENTLY`` waits for every older transaction
of the database. Naming those sessions before applying turns a mysterious lock timeout
into a log line that says whom to ask. Only what ``pg_stat_activity`` shows is read: the
first 200 characters of the query text (never bind parameters), the application name,
the state and ages; another role's query reads ``<insufficient privilege>`` unless the
migration role has ``pg_read_all_stats``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pgsluice.safety.facts import RELATIONS_CTE, Touched, relation_parameters

if TYPE_CHECKING:
    import psycopg

QUERY_CHARS = 200

_PREFLIGHT_SQL = f"""
WITH RECURSIVE {RELATIONS_CTE},
tree AS (  -- the tables and their partitions (a lock on one partition queues DDL on the parent)
    SELECT oid FROM resolved
    UNION
    SELECT i.inhrelid FROM tree t JOIN pg_inherits i ON i.inhparent = t.oid
),
targets AS (SELECT DISTINCT oid FROM tree),
lockers AS (
    SELECT l.pid,
           array_agg(DISTINCT l.mode || ' on ' || n.nspname || '.' || c.relname
                     || CASE WHEN l.granted THEN '' ELSE ' (waiting)' END) AS locks
    FROM pg_locks l
    JOIN targets t ON t.oid = l.relation
    JOIN pg_class c ON c.oid = l.relation
    JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE l.locktype = 'relation' AND l.pid IS NOT NULL
    GROUP BY l.pid
)
SELECT a.pid, a.application_name, a.state, a.backend_type,
       extract(epoch FROM clock_timestamp() - a.xact_start)::float8 AS transaction_seconds,
       extract(epoch FROM clock_timestamp() - a.query_start)::float8 AS query_seconds,
       left(a.query, {QUERY_CHARS}) AS query,
       a.wait_event_type, a.wait_event,
       coalesce(k.locks, '{{}}') AS locks,
       a.xact_start IS NOT NULL AND a.backend_type = 'client backend'
           AND clock_timestamp() - a.xact_start >= %(threshold)s * interval '1 second' AS long_open
FROM pg_stat_activity a
LEFT JOIN lockers k ON k.pid = a.pid
WHERE a.pid <> pg_backend_pid()
  AND a.pid <> ALL (%(exclude)s::int[])
  AND a.datname = current_database()
  AND (k.pid IS NOT NULL
       OR (a.xact_start IS NOT NULL AND a.backend_type = 'client backend'
           AND clock_timestamp() - a.xact_start >= %(threshold)s * interval '1 second'))
ORDER BY a.xact_start NULLS LAST, a.pid
"""


@dataclass(frozen=True)
class BlockingSession:
    """A session the migrations may queue behind, and why it was named."""

    pid: int
    application_name: str
    state: str | None
    backend_type: str | None
    transaction_seconds: float | None
    """How long its transaction has been open; None outside a transaction."""
    query_seconds: float | None
    query: str
    """The first 200 characters of its current (or last) query; no parameters."""
    wait_event: str | None
    locks: tuple[str, ...]
    """``AccessShareLock on public.users`` (``(waiting)`` when not granted yet) on the touched tables."""
    long_transaction: bool
    """Its transaction has been open at least the threshold."""

    @property
    def reasons(self) -> list[str]:
        """Why it is named, in words."""
        found = [
            f"waits for {lock.removesuffix(' (waiting)')}" if lock.endswith("(waiting)") else f"holds {lock}"
            for lock in self.locks
        ]
        if self.long_transaction and self.transaction_seconds is not None:
            found.append(f"transaction open {self.transaction_seconds:.0f}s")
        return found

    def log_fields(self) -> dict[str, Any]:
        """One entry of the ``preflight.sessions_found`` event's ``sessions``."""
        return {
            "pid": self.pid,
            "application_name": self.application_name,
            "state": self.state,
            "age_seconds": round(self.transaction_seconds, 1) if self.transaction_seconds is not None else None,
            "query_seconds": round(self.query_seconds, 1) if self.query_seconds is not None else None,
            "wait_event": self.wait_event,
            "locks": list(self.locks),
            "reasons": self.reasons,
            "query": self.query,
        }


def find_blocking_sessions(
    conn: psycopg.Connection[Any],
    touched: Touched,
    *,
    long_transaction_seconds: float,
    exclude_pids: Iterable[int] = (),
) -> list[BlockingSession]:
    """Sessions of this database holding or waiting for a lock on a touched table, or whose transaction has been
    open at least ``long_transaction_seconds``; oldest transaction first. One query.

    ``exclude_pids``: pgsluice's own other sessions (the lock connection); this connection is always left out."""
    _, params = relation_parameters(touched)
    rows = conn.execute(
        _PREFLIGHT_SQL,
        {**params, "threshold": long_transaction_seconds, "exclude": list(exclude_pids)},
    ).fetchall()
    return [
        BlockingSession(
            pid=int(r[0]),
            application_name=r[1] or "",
            state=r[2],
            backend_type=r[3],
            transaction_seconds=r[4],
            query_seconds=r[5],
            query=r[6] or "",
            wait_event=f"{r[7]}:{r[8]}" if r[7] else None,
            locks=tuple(sorted(r[9] or ())),
            long_transaction=bool(r[10]),
        )
        for r in rows
    ]
