"""The safety gate's cost: the drift fingerprint of a 2,000-table schema, and the safety pass over 100 pending
migrations touching 50 tables.

    python benchmarks/safety.py             # 15 runs each, medians
    python benchmarks/safety.py --runs 31

Starts its own throwaway PostgreSQL (tests/support/pgserver.py), builds the schemas in
two databases of its own, and prints a Markdown table of medians. In-process timings
(``time.perf_counter``) of exactly what a run calls; the interpreter's start is not counted.
Targets: the fingerprint of a 2,000-table schema under 100 ms.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

import psycopg  # noqa: E402
from tests.support.pgserver import PostgresServer  # noqa: E402

from pgsluice.config import TableName  # noqa: E402
from pgsluice.migrations import Migration, discover  # noqa: E402
from pgsluice.safety import Policy, check_migrations, fetch_facts, touched_tables  # noqa: E402
from pgsluice.safety.drift import check_drift, fetch_fingerprint, record_fingerprint  # noqa: E402
from pgsluice.safety.preflight import find_blocking_sessions  # noqa: E402

HISTORY = TableName("public", "pgsluice_history")
TABLES = 2000
SAFETY_TABLES = 50
PENDING = 100


def median_ms(samples: list[float]) -> float:
    """The median, in milliseconds."""
    return statistics.median(samples) * 1000


def timed(runs: int, fn: Callable[[], Any], before: Callable[[], Any] | None = None) -> list[float]:
    """``runs`` timings of ``fn`` (after one warm-up call); ``before`` runs untimed ahead of each."""
    fn()
    samples = []
    for _ in range(runs):
        if before is not None:
            before()
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return samples


def fresh(admin: psycopg.Connection[Any], server: PostgresServer, name: str) -> psycopg.Connection[Any]:
    """A new database ``name`` and an autocommit connection to it."""
    admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.execute(f'CREATE DATABASE "{name}"')
    return psycopg.connect(server.url(name), autocommit=True)


def build_schema(conn: psycopg.Connection[Any]) -> int:
    """2,000 tables (each: bigserial primary key, 4 more columns with defaults, a secondary index), 50 views, 50
    functions, 10 enums, and pgsluice's history table; returns the number of objects fingerprinted."""
    statements = ["CREATE TABLE pgsluice_history (version numeric PRIMARY KEY, name text)"]
    statements += [
        f"CREATE TABLE t{n} (id bigserial PRIMARY KEY, name text NOT NULL, n int DEFAULT 0,"
        f" created timestamptz DEFAULT now(), ref bigint); CREATE INDEX t{n}_name ON t{n} (name)"
        for n in range(TABLES)
    ]
    statements += [f"CREATE VIEW v{n} AS SELECT id, name FROM t{n} WHERE n > 0" for n in range(50)]
    statements += [
        f"CREATE FUNCTION f{n}(a int) RETURNS int IMMUTABLE LANGUAGE sql AS $$ SELECT a + {n} $$" for n in range(50)
    ]
    statements += [f"CREATE TYPE e{n} AS ENUM ('a', 'b', 'c')" for n in range(10)]
    with conn.transaction():
        for start in range(0, len(statements), 200):
            conn.execute(";".join(statements[start : start + 200]))
    return len(fetch_fingerprint(conn, HISTORY))


def drift_rows(conn: psycopg.Connection[Any], runs: int) -> list[tuple[str, float, str]]:
    """Record, check (no drift: nothing travels), check with drift, fetch to Python."""
    objects = build_schema(conn)
    # Each sample replaces the previous fingerprint, as a run does; the dead row of the one before is vacuumed
    # first (autovacuum's job between runs), so that the samples do not measure a table bloated by the benchmark.
    record = timed(
        runs,
        lambda: record_fingerprint(conn, HISTORY, migration_version=1, pgsluice_version="bench"),
        before=lambda: conn.execute("VACUUM public.pgsluice_history_schema"),
    )
    check = timed(runs, lambda: check_drift(conn, HISTORY))
    fetch = timed(runs, lambda: fetch_fingerprint(conn, HISTORY))
    conn.execute("ALTER TABLE t7 ADD COLUMN manual text")
    drifted = check_drift(conn, HISTORY)
    if drifted is None or drifted.added != ("column public.t7.manual",):
        raise RuntimeError(f"the manual change was not found: {drifted}")
    check_drift_found = timed(runs, lambda: check_drift(conn, HISTORY))
    label = f"{TABLES} tables, {objects} objects"
    return [
        (
            f"drift: record_fingerprint ({label}; md5 mapping and digest computed and stored server-side)",
            median_ms(record),
            "< 100 ms",
        ),
        (
            f"drift: check_drift, no drift ({label}; digests agree, the mappings are neither built nor sent)",
            median_ms(check),
            "< 100 ms",
        ),
        (
            f"drift: check_drift, 1 change ({label}; both fingerprints travel, compared in Python)",
            median_ms(check_drift_found),
            "",
        ),
        (f"drift: fetch_fingerprint to Python ({label})", median_ms(fetch), ""),
    ]


def pending_migrations() -> list[Migration]:
    """100 migrations over 50 tables: an ADD COLUMN with a default, an index, a constraint, an UPDATE."""
    files = []
    for n in range(1, PENDING + 1):
        t = f"s{n % SAFETY_TABLES}"
        sql = (
            f"ALTER TABLE {t} ADD COLUMN c{n} text DEFAULT 'x', ADD COLUMN d{n} uuid DEFAULT gen_random_uuid();\n"
            f"CREATE INDEX {t}_c{n} ON {t} (c{n});\n"
            f"ALTER TABLE {t} ADD CONSTRAINT {t}_chk{n} CHECK (n >= 0) NOT VALID;\n"
            f"ALTER TABLE {t} ALTER COLUMN name SET NOT NULL;\n"
            f"UPDATE {t} SET n = n + 1 WHERE id = {n};\n"
        )
        files.append((f"{n:03d}_m{n}.sql", sql.encode()))
    return list(discover(files).migrations)


def safety_rows(conn: psycopg.Connection[Any], runs: int) -> list[tuple[str, float, str]]:
    """Parsing (paid by every applying run anyway), then each step of the safety pass, and their sum."""
    with conn.transaction():
        for n in range(SAFETY_TABLES):
            conn.execute(
                f"CREATE TABLE s{n} (id bigint PRIMARY KEY, name text, n int);"
                f"INSERT INTO s{n} SELECT g, 'x', g FROM generate_series(1, 2000) g"
            )
    conn.execute("ANALYZE")
    policy = Policy(large_table_rows=1000)

    def parse() -> list[Migration]:
        migrations = pending_migrations()
        for migration in migrations:
            _ = migration.analysis
        return migrations

    migrations = parse()
    touched = touched_tables(migrations)
    facts = fetch_facts(conn, touched)
    report = check_migrations(migrations, facts, policy)
    parse_t = timed(runs, parse)
    touched_t = timed(runs, lambda: touched_tables(migrations))
    facts_t = timed(runs, lambda: fetch_facts(conn, touched))
    rules_t = timed(runs, lambda: check_migrations(migrations, facts, policy))
    preflight_t = timed(runs, lambda: find_blocking_sessions(conn, touched, long_transaction_seconds=60))

    def whole() -> None:
        found = touched_tables(migrations)
        check_migrations(migrations, fetch_facts(conn, found), policy)
        find_blocking_sessions(conn, found, long_transaction_seconds=60)

    whole_t = timed(runs, whole)
    label = f"{PENDING} migrations, {len(touched.tables)} tables, {len(report.findings)} findings"
    return [
        (f"safety: discover + parse with pglast ({label}; paid by every applying run anyway)", median_ms(parse_t), ""),
        (f"safety: touched_tables ({label}; pure)", median_ms(touched_t), ""),
        (f"safety: fetch_facts ({label}; one query)", median_ms(facts_t), ""),
        (f"safety: check_migrations ({label}; pure)", median_ms(rules_t), ""),
        (f"safety: find_blocking_sessions ({label}; one query)", median_ms(preflight_t), ""),
        (f"safety: the whole pass, parsing excluded ({label})", median_ms(whole_t), ""),
    ]


def main() -> int:
    """Start a server, measure, print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=15, help="samples per measurement (medians are quoted)")
    args = parser.parse_args()
    rows: list[tuple[str, float, str]] = []
    with PostgresServer() as server, psycopg.connect(server.url(), autocommit=True) as admin:
        print(f"PostgreSQL {server.version}, {os.cpu_count()} cores, {args.runs} runs, medians", file=sys.stderr)
        with fresh(admin, server, "drift") as conn:
            rows += drift_rows(conn, args.runs)
        with fresh(admin, server, "safety") as conn:
            rows += safety_rows(conn, args.runs)
    print("| measurement | median | target |")
    print("| --- | --- | --- |")
    for name, value, target in rows:
        print(f"| {name} | {value:.1f} ms | {target} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
