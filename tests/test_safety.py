"""The safety gate against a real PostgreSQL: every rule on a small and a large table, accepted and rewritten;
the live facts, the policy, the offline (lint) mode, and the preflight's view of other sessions."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import psycopg
import pytest

from pgsluice.errors import ExitCode
from pgsluice.migrations import discover
from pgsluice.safety import (
    RULES,
    Action,
    Facts,
    Finding,
    Kind,
    Policy,
    RelName,
    SafetyReport,
    Severity,
    assumed_facts,
    check_migrations,
    fetch_facts,
    rule_ids,
    touched_tables,
)
from pgsluice.safety.preflight import find_blocking_sessions
from tests.support.cli import poll
from tests.support.databases import CountingConnection, Database

pytestmark = pytest.mark.integration

POLICY = Policy(
    mode="block",
    threshold=Severity.LARGE,
    large_table_rows=1000,
    large_table_bytes=1 << 40,
    huge_table_rows=1_000_000,
    huge_table_bytes=1 << 50,
)
"""Thresholds lowered so that 2,000 real rows make a table large: the gate judges estimates, not row counts."""

SETUP = """
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE TABLE parent (id bigint PRIMARY KEY);
INSERT INTO parent SELECT generate_series(1, 10);
CREATE FUNCTION volatile_token() RETURNS text VOLATILE LANGUAGE sql AS $$ SELECT md5(random()::text) $$;
CREATE FUNCTION fixed_token() RETURNS text IMMUTABLE LANGUAGE sql AS $$ SELECT 'x' $$;
"""
TABLE = """
CREATE TABLE {t} (id bigint PRIMARY KEY, email varchar(50), amount numeric(10,2), created timestamp(3), net cidr,
                  ref_id bigint, note text, mood mood, flag int) WITH (autovacuum_enabled = false);
INSERT INTO {t} SELECT g, 'u' || g || '@example.com', g, '2026-01-01', '10.0.0.0/8', 1 + g % 10, 'n', 'ok', g % 7
FROM generate_series(1, {n}) g;
ANALYZE {t};
"""
ALLOW_REASON = "reviewed: runs in the Sunday maintenance window"


@pytest.fixture
def tables(db: Database) -> Database:
    """``small_t`` (10 rows) and ``large_t`` (2,000 rows), analysed, with a ``mood`` enum, a ``parent`` table and
    two functions, one volatile and one immutable."""
    with db.connect() as conn:
        conn.execute(SETUP + TABLE.format(t="small_t", n=10) + TABLE.format(t="large_t", n=2000))
    return db


def migrations_of(*files: str) -> list[Any]:
    """In-memory migrations ``001_m.sql``, ``002_m.sql`` … holding ``files``."""
    found = discover([(f"{n:03d}_m.sql", text.encode()) for n, text in enumerate(files, start=1)])
    assert found.problems == ()
    return list(found.migrations)


def live_facts(db: Database, migrations: Sequence[Any], *, timezone: str | None = None) -> Facts:
    """The facts the run would fetch for ``migrations``."""
    with db.connect() as conn:
        if timezone is not None:
            conn.execute(f"SET TimeZone = '{timezone}'")
        return fetch_facts(conn, touched_tables(migrations))


def judge(db: Database, *files: str, version: int | None = None, policy: Policy = POLICY) -> SafetyReport:
    """Judge ``files`` against the live database (with an assumed server version when given)."""
    migrations = migrations_of(*files)
    facts = live_facts(db, migrations)
    if version is not None:
        facts = replace(facts, server_version_num=version)
    return check_migrations(migrations, facts, policy)


def of(report: SafetyReport, rule: str) -> list[Finding]:
    """The findings of one rule."""
    return [f for f in report.findings if f.rule == rule]


def leave_invalid_index(conn: psycopg.Connection[Any], table: str) -> None:
    """A failed CREATE UNIQUE INDEX CONCURRENTLY (flag repeats): PostgreSQL leaves an INVALID index behind."""
    with pytest.raises(psycopg.errors.UniqueViolation):
        conn.execute(f"CREATE UNIQUE INDEX CONCURRENTLY {table}_flag_key ON {table} (flag)")


@dataclass(frozen=True)
class Case:
    """One rule: the unsafe files, their safe rewrite, and what a small table gives (None: no finding)."""

    rule: str
    unsafe: tuple[str, ...]
    safe: tuple[str, ...]
    small: Severity | None = Severity.SMALL
    large: Severity = Severity.LARGE
    setup: str = ""
    prepare: Callable[[psycopg.Connection[Any], str], None] | None = None
    version: int | None = None
    safe_version: int | None = None

    def __str__(self) -> str:
        return self.rule


TWO_STEP_CHECK = (
    "ALTER TABLE {t} ADD CONSTRAINT {t}_flag_check CHECK (flag >= 0) NOT VALID;",
    "ALTER TABLE {t} VALIDATE CONSTRAINT {t}_flag_check;",
)
CASES = [
    Case(
        "index-not-concurrent",
        ("CREATE INDEX {t}_email_idx ON {t} (email);",),
        ("CREATE INDEX CONCURRENTLY {t}_email_idx ON {t} (email);",),
    ),
    Case("reindex-not-concurrent", ("REINDEX TABLE {t};",), ("REINDEX TABLE CONCURRENTLY {t};",)),
    Case(
        "drop-index-not-concurrent",
        ("DROP INDEX {t}_note_idx;",),
        ("DROP INDEX CONCURRENTLY IF EXISTS {t}_note_idx;",),
        setup="CREATE INDEX {t}_note_idx ON {t} (note);",
    ),
    Case(
        "index-corruption-pg14",
        ("CREATE INDEX CONCURRENTLY {t}_email_idx ON {t} (email);",),
        ("CREATE INDEX CONCURRENTLY {t}_email_idx ON {t} (email);",),
        small=Severity.ERROR,
        large=Severity.ERROR,
        version=140002,
        safe_version=140004,
    ),
    Case(
        "invalid-index-leftover",
        ("CREATE INDEX CONCURRENTLY IF NOT EXISTS {t}_flag_key ON {t} (flag);",),
        (
            (
                "-- pgsluice: no-transaction\nDROP INDEX CONCURRENTLY IF EXISTS {t}_flag_key;\n"
                "CREATE INDEX CONCURRENTLY IF NOT EXISTS {t}_flag_key ON {t} (flag);"
            ),
        ),
        small=Severity.ERROR,
        large=Severity.ERROR,
        prepare=leave_invalid_index,
    ),
    Case(
        "add-column-volatile-default",
        ("ALTER TABLE {t} ADD COLUMN token text DEFAULT volatile_token();",),
        ("ALTER TABLE {t} ADD COLUMN token text;\nALTER TABLE {t} ALTER COLUMN token SET DEFAULT volatile_token();",),
    ),
    Case(
        "add-column-default-before-pg11",
        ("ALTER TABLE {t} ADD COLUMN status text DEFAULT 'new';",),
        ("ALTER TABLE {t} ADD COLUMN status text;\nALTER TABLE {t} ALTER COLUMN status SET DEFAULT 'new';",),
        version=100023,
    ),
    Case(
        "add-column-generated-stored",
        ("ALTER TABLE {t} ADD COLUMN double_flag int GENERATED ALWAYS AS (flag * 2) STORED;",),
        ("ALTER TABLE {t} ADD COLUMN double_flag int;",),
    ),
    Case(
        "add-column-serial",
        ("ALTER TABLE {t} ADD COLUMN seq bigserial;",),
        (
            (
                "CREATE SEQUENCE {t}_seq;\nALTER TABLE {t} ADD COLUMN seq bigint;\n"
                "ALTER TABLE {t} ALTER COLUMN seq SET DEFAULT nextval('{t}_seq');"
            ),
        ),
    ),
    Case(
        "column-type-rewrite",
        ("ALTER TABLE {t} ALTER COLUMN flag TYPE bigint;",),
        ("ALTER TABLE {t} ALTER COLUMN email TYPE varchar(100);",),
    ),
    Case(
        "set-not-null-scan",
        ("ALTER TABLE {t} ALTER COLUMN note SET NOT NULL;",),
        (
            "ALTER TABLE {t} ADD CONSTRAINT {t}_note_nn CHECK (note IS NOT NULL) NOT VALID;",
            "ALTER TABLE {t} VALIDATE CONSTRAINT {t}_note_nn;",
            "ALTER TABLE {t} ALTER COLUMN note SET NOT NULL;\nALTER TABLE {t} DROP CONSTRAINT {t}_note_nn;",
        ),
    ),
    Case(
        "foreign-key-without-not-valid",
        ("ALTER TABLE {t} ADD CONSTRAINT {t}_ref_fk FOREIGN KEY (ref_id) REFERENCES parent (id);",),
        (
            "ALTER TABLE {t} ADD CONSTRAINT {t}_ref_fk FOREIGN KEY (ref_id) REFERENCES parent (id) NOT VALID;",
            "ALTER TABLE {t} VALIDATE CONSTRAINT {t}_ref_fk;",
        ),
    ),
    Case(
        "check-without-not-valid",
        ("ALTER TABLE {t} ADD CONSTRAINT {t}_flag_check CHECK (flag >= 0);",),
        TWO_STEP_CHECK,
    ),
    Case("validate-in-same-transaction", ("\n".join(TWO_STEP_CHECK),), TWO_STEP_CHECK),
    Case(
        "foreign-key-unindexed",
        ("ALTER TABLE {t} ADD CONSTRAINT {t}_ref_fk FOREIGN KEY (ref_id) REFERENCES parent (id) NOT VALID;",),
        (
            "-- pgsluice: no-transaction\nCREATE INDEX CONCURRENTLY {t}_ref_idx ON {t} (ref_id);",
            "ALTER TABLE {t} ADD CONSTRAINT {t}_ref_fk FOREIGN KEY (ref_id) REFERENCES parent (id) NOT VALID;",
        ),
    ),
    Case(
        "add-unique-not-using-index",
        ("ALTER TABLE {t} ADD CONSTRAINT {t}_email_key UNIQUE (email);",),
        (
            "CREATE UNIQUE INDEX CONCURRENTLY {t}_email_key ON {t} (email);",
            "ALTER TABLE {t} ADD CONSTRAINT {t}_email_key UNIQUE USING INDEX {t}_email_key;",
        ),
    ),
    Case(
        "add-exclusion-constraint",
        ("ALTER TABLE {t} ADD CONSTRAINT {t}_excl EXCLUDE USING btree (id WITH =);",),
        ("CREATE TABLE {t}_v2 (id bigint, EXCLUDE USING btree (id WITH =));",),
    ),
    Case(
        "enum-value-used-in-transaction",
        ("ALTER TYPE mood ADD VALUE 'ecstatic';\nUPDATE {t} SET mood = 'ecstatic' WHERE id = 1;",),
        ("ALTER TYPE mood ADD VALUE 'ecstatic';", "UPDATE {t} SET mood = 'ecstatic' WHERE id = 1;"),
        small=Severity.ERROR,
        large=Severity.ERROR,
    ),
    Case(
        "enum-add-value-in-transaction",
        ("ALTER TYPE mood ADD VALUE 'ecstatic';\nUPDATE {t} SET flag = 1 WHERE id = 1;",),
        ("-- pgsluice: no-transaction\nALTER TYPE mood ADD VALUE 'ecstatic';", "UPDATE {t} SET flag = 1 WHERE id = 1;"),
        small=Severity.ERROR,
        large=Severity.ERROR,
        version=110022,
    ),
    Case("vacuum-full", ("VACUUM FULL {t};",), ("VACUUM {t};",)),
    Case("cluster", ("CLUSTER {t} USING {t}_pkey;",), ("CREATE TABLE {t}_sorted AS SELECT * FROM {t} ORDER BY id;",)),
    Case("lock-access-exclusive", ("LOCK TABLE {t} IN ACCESS EXCLUSIVE MODE;",), ("LOCK TABLE {t} IN SHARE MODE;",)),
    Case(
        "truncate",
        ("TRUNCATE {t};",),
        ("DELETE FROM {t} WHERE id IN (SELECT id FROM {t} WHERE flag = 6 LIMIT 500);",),
    ),
    Case(
        "drop-table",
        ("DROP TABLE {t};",),
        ("DROP TABLE {t}_retired;",),
        setup="CREATE TABLE {t}_retired (id bigint);",
    ),
    Case("drop-column", ("ALTER TABLE {t} DROP COLUMN note;",), ("ALTER TABLE {t} ALTER COLUMN note DROP NOT NULL;",)),
    Case(
        "rename-table",
        ("ALTER TABLE {t} RENAME TO {t}_renamed;",),
        ("CREATE VIEW {t}_renamed AS SELECT * FROM {t};",),
    ),
    Case(
        "rename-column",
        ("ALTER TABLE {t} RENAME COLUMN email TO email_address;",),
        ("ALTER TABLE {t} ADD COLUMN email_address varchar(50);",),
    ),
    Case(
        "unbatched-write",
        ("UPDATE {t} SET flag = 0;",),
        ("UPDATE {t} SET flag = 0 WHERE id IN (SELECT id FROM {t} WHERE flag <> 0 LIMIT 500);",),
    ),
]


def _files(texts: Sequence[str], table: str, allow: str | None = None) -> list[str]:
    header = f"-- pgsluice: allow {allow} -- {ALLOW_REASON}\n" if allow else ""
    return [header + text.format(t=table) + "\n" for text in texts]


def test_every_rule_has_a_case() -> None:
    """The table below covers every registered rule, and rule ids are unique."""
    assert sorted(c.rule for c in CASES) == sorted(rule_ids())
    assert len(set(rule_ids())) == len(RULES)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_rule_on_small_and_large_tables_accepted_and_rewritten(tables: Database, case: Case) -> None:
    """A small table gives a lower (or no) finding, a large one the rule's; the allow directive accepts it; the
    safe rewrite gives none."""
    kind = next(r.kind for r in RULES if r.id == case.rule)
    with tables.connect() as conn:
        for table in ("small_t", "large_t"):
            if case.setup:
                conn.execute(case.setup.format(t=table))
            if case.prepare is not None:
                case.prepare(conn, table)

    small = of(judge(tables, *_files(case.unsafe, "small_t"), version=case.version), case.rule)
    large = of(judge(tables, *_files(case.unsafe, "large_t"), version=case.version), case.rule)
    allowed = of(judge(tables, *_files(case.unsafe, "large_t", case.rule), version=case.version), case.rule)
    safe = of(judge(tables, *_files(case.safe, "large_t"), version=case.safe_version or case.version), case.rule)

    assert [f.severity for f in small] == ([case.small] if case.small else [])
    expected_action = Action.WARN if kind == Kind.COMPAT else Action.BLOCK
    assert [(f.severity, f.action) for f in large] == [(case.large, expected_action)]
    finding = large[0]
    assert finding.file == "001_m.sql"
    assert finding.version == 1
    assert finding.line >= 1
    assert finding.lock
    assert finding.safe_form
    assert finding.message.startswith(f"001_m.sql line {finding.line}: ")
    if kind != Kind.ERROR:
        assert finding.table == "public.large_t"
        assert finding.needs_live_facts
        assert "~2.0k rows" in finding.message
    assert [(f.action, f.allowed) for f in allowed] == [(Action.ALLOWED, ALLOW_REASON)]
    assert safe == []


# --- the verdicts follow the live catalog --------------------------------------------------------------------------

TYPE_CHANGES = [
    ("varchar(50)", "varchar(100)", "UTC"),
    ("varchar(50)", "varchar(40)", "UTC"),
    ("varchar(50)", "text", "UTC"),
    ("varchar(20)", "varchar(20)", "UTC"),
    ("text", "varchar", "UTC"),
    ("text", "varchar(20)", "UTC"),
    ("numeric(10,2)", "numeric(12,2)", "UTC"),
    ("numeric(10,2)", "numeric(12,3)", "UTC"),
    ("numeric(10,2)", "numeric", "UTC"),
    ("numeric", "numeric(10,2)", "UTC"),
    ("cidr", "inet", "UTC"),
    ("timestamp(3)", "timestamp(6)", "UTC"),
    ("timestamp(3)", "timestamp", "UTC"),
    ("timestamp", "timestamp(3)", "UTC"),
    ("timestamp", "timestamptz", "UTC"),
    ("timestamp", "timestamptz", "Europe/Paris"),
    ("timestamptz", "timestamp", "Etc/UTC"),
    ("time(2)", "time(4)", "UTC"),
    ("int", "bigint", "UTC"),
    ("bigint", "int", "UTC"),
    ("int", "text", "UTC"),
]


def test_type_change_verdicts_match_postgresql_rewrites(db: Database) -> None:
    """For each type change, a finding exactly when PostgreSQL itself rewrites the table (its file node changes),
    judged from the column's current type and typmod and the session's TimeZone."""
    mismatches = []
    with db.connect() as conn:
        for current, target, timezone in TYPE_CHANGES:
            conn.execute(
                f"DROP TABLE IF EXISTS tc; CREATE TABLE tc (c {current}); "
                f"INSERT INTO tc SELECT NULL FROM generate_series(1, 5); ANALYZE tc"
            )
            conn.execute(f"SET TimeZone = '{timezone}'")
            migrations = migrations_of(f"ALTER TABLE tc ALTER COLUMN c TYPE {target};")
            facts = fetch_facts(conn, touched_tables(migrations))
            found = of(check_migrations(migrations, facts, replace(POLICY, large_table_rows=1)), "column-type-rewrite")
            with conn.transaction(force_rollback=True):
                before = conn.execute("SELECT pg_relation_filenode('tc')").fetchone()
                conn.execute(f"ALTER TABLE tc ALTER COLUMN c TYPE {target}")
                after = conn.execute("SELECT pg_relation_filenode('tc')").fetchone()
            if bool(found) != (before != after):
                mismatches.append((current, target, timezone, "rewrite" if before != after else "no rewrite"))
    assert mismatches == []


def test_volatility_is_read_from_the_live_catalog(tables: Database) -> None:
    """An immutable user function or now() as a default: no finding; a volatile one, an unknown one (assumed
    volatile) and nextval(): findings; a function created earlier in the run counts with its own volatility."""
    defaults = {
        "fixed_token()": False,
        "now()": False,
        "volatile_token()": True,
        "clock_timestamp()": True,
        "no_such_function()": True,
        "nextval('parent_id_seq')": True,
        "made_in_run()": False,
    }
    created = "CREATE FUNCTION made_in_run() RETURNS text IMMUTABLE LANGUAGE sql AS $$ SELECT 'y' $$;"
    for default, volatile in defaults.items():
        report = judge(tables, created, f"ALTER TABLE large_t ADD COLUMN extra text DEFAULT {default};")
        found = of(report, "add-column-volatile-default")
        assert bool(found) == volatile, default
    unknown = judge(tables, "ALTER TABLE large_t ADD COLUMN x text DEFAULT no_such_function();").findings
    assert "no_such_function() (unknown: assumed volatile)" in unknown[0].message


def test_size_classes_follow_rows_and_bytes_and_know_when_rows_are_unknown(tables: Database) -> None:
    """Huge by rows, large by bytes alone; a never-analysed table is judged by its size; an empty table, a table
    created in the run and one absent from the catalog give nothing; IF NOT EXISTS of an existing table does
    not make it new."""
    index = "CREATE INDEX ON {} (flag);"
    huge = replace(POLICY, huge_table_rows=1500)
    assert [f.severity for f in judge(tables, index.format("large_t"), policy=huge).findings] == [Severity.HUGE]
    by_bytes = replace(POLICY, large_table_bytes=8192)
    assert [f.severity for f in judge(tables, index.format("small_t"), policy=by_bytes).findings] == [Severity.LARGE]

    with tables.connect() as conn:
        conn.execute(
            "CREATE TABLE unanalysed (a int) WITH (autovacuum_enabled = false);"
            "INSERT INTO unanalysed SELECT generate_series(1, 3000);"
            "CREATE TABLE empty_t (a int)"
        )
    unknown = judge(tables, index.format("unanalysed"), policy=replace(POLICY, large_table_bytes=64 * 1024))
    assert [(f.severity, "rows unknown: never analysed" in f.message) for f in unknown.findings] == [
        (Severity.LARGE, True)
    ]
    assert judge(tables, index.format("empty_t")).findings == ()
    assert judge(tables, "CREATE TABLE fresh (a int);\n" + index.format("fresh")).findings == ()
    assert judge(tables, index.format("absent_t")).findings == ()
    again = judge(tables, "CREATE TABLE IF NOT EXISTS large_t (a int);\n" + index.format("large_t"))
    assert [f.rule for f in again.findings] == ["index-not-concurrent"]


def test_a_new_table_is_never_dangerous_even_through_a_rename(tables: Database) -> None:
    """Everything done to a table created earlier in the run (also after renaming it) gives no finding."""
    report = judge(
        tables,
        "CREATE TABLE staging (id bigint, v int);\nINSERT INTO staging SELECT id, flag FROM large_t;",
        "ALTER TABLE staging RENAME TO final;\nCREATE INDEX ON final (v);\nALTER TABLE final ALTER COLUMN v TYPE "
        "bigint;\nUPDATE final SET v = 0;\nALTER TABLE final ADD PRIMARY KEY (id);",
    )
    assert report.findings == ()


def test_a_renamed_existing_table_keeps_its_size(tables: Database) -> None:
    """An existing table renamed in the run is still judged by its rows under its new name."""
    report = judge(tables, "ALTER TABLE large_t RENAME TO big_t;\nCREATE INDEX ON big_t (flag);")
    assert [(f.rule, f.table, f.severity) for f in report.findings] == [
        ("rename-table", "public.large_t", Severity.LARGE),
        ("index-not-concurrent", "public.large_t", Severity.LARGE),
    ]


def test_set_not_null_uses_a_validated_check_already_in_the_catalog(tables: Database) -> None:
    """A validated CHECK (note IS NOT NULL AND …) in pg_constraint makes SET NOT NULL safe on 12+, not on 11;
    a NOT VALID one does not; an already NOT NULL column is a no-op."""
    with tables.connect() as conn:
        conn.execute(
            "ALTER TABLE large_t ADD CONSTRAINT note_nn CHECK (note IS NOT NULL AND flag >= 0);"
            "ALTER TABLE large_t ADD CONSTRAINT email_nn CHECK (email IS NOT NULL) NOT VALID;"
        )
    note = "ALTER TABLE large_t ALTER COLUMN note SET NOT NULL;"
    assert of(judge(tables, note), "set-not-null-scan") == []
    assert len(of(judge(tables, note, version=110000), "set-not-null-scan")) == 1
    assert len(of(judge(tables, "ALTER TABLE large_t ALTER COLUMN email SET NOT NULL;"), "set-not-null-scan")) == 1
    assert of(judge(tables, "ALTER TABLE large_t ALTER COLUMN id SET NOT NULL;"), "set-not-null-scan") == []


def test_transactions_follow_the_file_blocks(tables: Database) -> None:
    """In a no-transaction file, statements outside blocks are their own transactions; a BEGIN … COMMIT block
    is one."""
    separate = "-- pgsluice: no-transaction\n" + "\n".join(TWO_STEP_CHECK).format(t="large_t")
    block = "-- pgsluice: no-transaction\nBEGIN;\n" + "\n".join(TWO_STEP_CHECK).format(t="large_t") + "\nCOMMIT;"
    assert of(judge(tables, separate), "validate-in-same-transaction") == []
    assert [f.line for f in of(judge(tables, block), "validate-in-same-transaction")] == [4]
    enum = "-- pgsluice: no-transaction\nALTER TYPE mood ADD VALUE 'ecstatic';\nUPDATE large_t SET mood = 'ecstatic';"
    assert of(judge(tables, enum), "enum-value-used-in-transaction") == []


def test_unbatched_write_estimates_what_a_where_clause_can_select(tables: Database) -> None:
    """A unique key pinned to constants or a LIMIT-ed subquery bounds the rows; another WHERE may select them
    all."""
    few = [
        "DELETE FROM large_t WHERE id = 5;",
        "UPDATE large_t SET flag = 1 WHERE id IN (1, 2, 3);",
        "DELETE FROM large_t WHERE ctid = ANY (ARRAY(SELECT ctid FROM large_t WHERE flag = 3 LIMIT 100));",
    ]
    for sql in few:
        assert of(judge(tables, sql), "unbatched-write") == [], sql
    many = of(judge(tables, "UPDATE large_t SET flag = 1 WHERE flag > 3;"), "unbatched-write")
    assert [(f.severity, "up to ~2,000 rows" in f.message) for f in many] == [(Severity.LARGE, True)]


def test_a_partitioned_table_is_sized_by_its_partitions(db: Database) -> None:
    """CREATE INDEX on a partitioned parent counts the rows of its partitions, and its safe form says ON ONLY."""
    with db.connect() as conn:
        conn.execute(
            "CREATE TABLE events (id int, at date) PARTITION BY RANGE (at);"
            "CREATE TABLE events_a PARTITION OF events FOR VALUES FROM ('2026-01-01') TO ('2026-02-01');"
            "CREATE TABLE events_b PARTITION OF events FOR VALUES FROM ('2026-02-01') TO ('2026-03-01');"
            "INSERT INTO events SELECT g, date '2026-01-01' + g % 59 FROM generate_series(1, 1500) g;"
            "ANALYZE events_a, events_b"
        )
    [finding] = judge(db, "CREATE INDEX events_at ON events (at);").findings
    assert (finding.table, finding.severity) == ("public.events", Severity.LARGE)
    assert "ON ONLY public.events" in finding.safe_form


def test_reindex_and_drop_index_are_sized_by_the_index_table(tables: Database) -> None:
    """REINDEX INDEX and DROP INDEX find the index's table in the catalog; an index created in the run is new."""
    report = judge(tables, "REINDEX INDEX large_t_pkey;\nDROP INDEX small_t_pkey;")
    assert [(f.rule, f.table, f.severity) for f in report.findings] == [
        ("reindex-not-concurrent", "public.large_t", Severity.LARGE),
        ("drop-index-not-concurrent", "public.small_t", Severity.SMALL),
    ]
    fresh = judge(tables, "CREATE INDEX CONCURRENTLY fresh_idx ON large_t (flag);", "DROP INDEX fresh_idx;")
    assert fresh.findings == ()


# --- facts -----------------------------------------------------------------------------------------------------------


def test_touched_tables_names_every_table_index_and_function_without_a_database() -> None:
    """Tables (also referenced ones), indexes and default functions, as written."""
    migrations = migrations_of(
        "ALTER TABLE app.orders ADD COLUMN t uuid DEFAULT public.gen_random_uuid(), "
        "ADD CONSTRAINT fk FOREIGN KEY (u) REFERENCES users (id);\n"
        "DROP INDEX app.orders_old_idx;\nREINDEX INDEX users_pkey;\nTRUNCATE audit;\n"
        "UPDATE counters SET n = 0;\nVACUUM FULL big;\nLOCK TABLE locked;\nCREATE INDEX ON idx_t (a);",
    )
    touched = touched_tables(migrations)
    assert sorted(map(str, touched.tables)) == [
        "app.orders",
        "audit",
        "big",
        "counters",
        "idx_t",
        "locked",
        "users",
    ]
    assert sorted(map(str, touched.indexes)) == ["app.orders_old_idx", "users_pkey"]
    assert touched.functions == frozenset({RelName("public", "gen_random_uuid")})


def test_facts_come_in_one_round_trip_with_the_catalog(tables: Database) -> None:
    """One statement: version, TimeZone, rows, sizes, columns with typmods, constraints, indexes, volatility."""
    with tables.connect() as conn:
        conn.execute(
            "ALTER TABLE large_t ADD CONSTRAINT flag_check CHECK (flag >= 0) NOT VALID;"
            "CREATE INDEX large_t_expr ON large_t (lower(note)) WHERE flag > 0"
        )
    migrations = migrations_of(
        "ALTER TABLE large_t ADD COLUMN t text DEFAULT volatile_token();\nDROP INDEX public.large_t_expr;\n"
        "ALTER TABLE missing_t ADD COLUMN a int;"
    )
    with CountingConnection.connect(tables.url, autocommit=True) as conn:
        conn.execute("SET TimeZone = 'America/New_York'")
        conn.statements = 0
        facts = fetch_facts(conn, touched_tables(migrations))
        assert conn.statements == 1
        version = int(conn.info.server_version)
    assert (facts.live, facts.server_version_num, facts.timezone) == (True, version, "America/New_York")
    table = facts.table(RelName(None, "large_t"))
    assert table is not None
    assert facts.table(RelName(None, "missing_t")) is None
    assert facts.index_table(RelName("public", "large_t_expr")) == table
    assert (table.qualified, table.kind, round(table.rows or 0), table.bytes > 0) == ("public.large_t", "r", 2000, True)
    assert (table.columns["email"].type_name, table.columns["email"].typmod) == ("varchar", 54)
    assert (table.columns["amount"].typmod, table.columns["created"].typmod) == (((10 << 16) | 2) + 4, 3)
    check = table.constraint("flag_check")
    assert check is not None
    assert (check.kind, check.validated, check.columns) == ("c", False, ("flag",))
    indexes = {i.name: (i.valid, i.unique, i.primary, i.columns, i.partial) for i in table.indexes}
    assert indexes == {
        "large_t_pkey": (True, True, True, ("id",), False),
        "large_t_expr": (True, False, False, (None,), True),
    }
    assert facts.functions == {RelName(None, "volatile_token"): "v"}


def test_offline_findings_say_they_need_the_live_database() -> None:
    """Offline (lint) with an assumed version: size-dependent findings are rated large and need live facts;
    a file-only error does not; minor-version rules need the minor."""
    migrations = migrations_of(
        "CREATE INDEX CONCURRENTLY users_email ON users (email);",
        "ALTER TABLE users ADD COLUMN token uuid DEFAULT gen_random_uuid(), ADD COLUMN at timestamptz DEFAULT now();\n"
        "ALTER TYPE mood ADD VALUE 'x';\nUPDATE users SET mood = 'x' WHERE id = 1;\n"
        "CREATE TABLE fresh (a int);\nCREATE INDEX ON fresh (a);",
    )
    report = check_migrations(migrations, assumed_facts("14"), POLICY)
    assert (report.live, report.server_version) == (False, "14")
    assert [(f.rule, f.severity, f.needs_live_facts, f.table) for f in report.findings] == [
        ("add-column-volatile-default", Severity.LARGE, True, "users"),
        ("enum-value-used-in-transaction", Severity.ERROR, False, None),
        ("unbatched-write", Severity.LARGE, True, "users"),
    ]
    early = check_migrations(migrations, assumed_facts("14.2"), POLICY)
    assert [f.rule for f in early.findings][:1] == ["index-corruption-pg14"]
    assert assumed_facts("9.6.3").version_text == "9.6.3"
    assert assumed_facts(150004).version_text == "15.4"
    with pytest.raises(ValueError, match="not a PostgreSQL version"):
        assumed_facts("fifteen")


# --- policy ----------------------------------------------------------------------------------------------------------


def test_policy_acts_by_mode_threshold_and_kind() -> None:
    """block blocks lock findings at or above the threshold, compat findings only warn, errors block in warn
    mode too, allowed findings never block, off ignores all."""
    cases = {
        ("block", Kind.LOCK, Severity.LARGE, None): Action.BLOCK,
        ("block", Kind.LOCK, Severity.SMALL, None): Action.IGNORED,
        ("block", Kind.COMPAT, Severity.HUGE, None): Action.WARN,
        ("block", Kind.LOCK, Severity.HUGE, "why"): Action.ALLOWED,
        ("warn", Kind.LOCK, Severity.HUGE, None): Action.WARN,
        ("warn", Kind.ERROR, Severity.ERROR, None): Action.BLOCK,
        ("warn", Kind.ERROR, Severity.ERROR, "why"): Action.ALLOWED,
        ("off", Kind.ERROR, Severity.ERROR, None): Action.IGNORED,
    }
    actual = {key: Policy(mode=key[0]).action(key[1], key[2], key[3]) for key in cases}
    assert actual == cases
    assert Policy(threshold=Severity.SMALL).action(Kind.LOCK, Severity.SMALL, None) == Action.WARN
    assert Policy(mode="warn", errors_block=False).action(Kind.ERROR, Severity.ERROR, None) == Action.WARN


def test_a_blocking_report_becomes_exit_10_naming_the_first_finding(tables: Database) -> None:
    """The error names file, line and version of the first blocking finding and shows its safe form."""
    report = judge(tables, "SELECT 1;\nCREATE INDEX i ON large_t (flag);\nTRUNCATE large_t;", "VACUUM FULL large_t;")
    error = report.error()
    assert error is not None
    assert error.exit_code == ExitCode.UNSAFE
    assert (error.location.file, error.location.line, error.location.version) == ("001_m.sql", 2, 1)
    assert error.message.startswith("the safety gate refused the run, nothing was applied: 001_m.sql line 2: ")
    assert "(and 1 more: see the safety.finding events)" in error.message
    assert error.hint is not None
    assert error.hint.startswith("CREATE INDEX CONCURRENTLY i ON large_t (flag)")
    assert "-- pgsluice: allow index-not-concurrent -- <reason>" in error.hint
    assert report.counts() == {"block": 2, "warn": 1}
    assert judge(tables, "TRUNCATE large_t;").error() is None  # compat findings only warn
    fields = report.findings[0].log_fields()
    assert {k: fields[k] for k in ("rule", "severity", "action", "file", "line", "table", "lock")} == {
        "rule": "index-not-concurrent",
        "severity": "large",
        "action": "block",
        "file": "001_m.sql",
        "line": 2,
        "table": "public.large_t",
        "lock": "SHARE",
    }


# --- preflight -------------------------------------------------------------------------------------------------------

TOUCHED = touched_tables(migrations_of("CREATE INDEX CONCURRENTLY ON large_t (flag);"))


@pytest.fixture
def other(tables: Database) -> Iterator[psycopg.Connection[Any]]:
    """A second session, as the application would hold one."""
    with psycopg.connect(tables.url, autocommit=False, application_name="shop-api") as conn:
        yield conn


def test_preflight_names_an_open_transaction_holding_a_lock(tables: Database, other: psycopg.Connection[Any]) -> None:
    """An idle-in-transaction session that read the table is named with its pid, lock, state and query."""
    other.execute("SELECT count(*) FROM large_t WHERE flag = 3")
    pid = other.info.backend_pid
    with tables.connect() as conn:
        sessions = find_blocking_sessions(conn, TOUCHED, long_transaction_seconds=3600)
    assert [(s.pid, s.application_name, s.state, s.locks, s.long_transaction) for s in sessions] == [
        (pid, "shop-api", "idle in transaction", ("AccessShareLock on public.large_t",), False)
    ]
    fields = sessions[0].log_fields()
    assert fields["query"] == "SELECT count(*) FROM large_t WHERE flag = 3"
    assert fields["reasons"] == ["holds AccessShareLock on public.large_t"]
    assert fields["age_seconds"] is not None


def test_preflight_names_waiters_and_long_transactions_but_not_itself(
    tables: Database, other: psycopg.Connection[Any]
) -> None:
    """A session waiting for the table's lock is named as waiting; a long transaction elsewhere is named once it
    passes the threshold; the caller's session and excluded pids never are; untouched tables are not looked at."""
    other.execute("LOCK TABLE large_t IN ACCESS EXCLUSIVE MODE")
    holder = other.info.backend_pid
    with psycopg.connect(tables.url, autocommit=False) as idle:
        idle.execute("SELECT 1 FROM small_t LIMIT 1")
        with psycopg.connect(tables.url, autocommit=True) as waiter, tables.connect() as conn:
            idle_pid, waiter_pid = idle.info.backend_pid, waiter.info.backend_pid
            thread = threading.Thread(target=lambda: waiter.execute("SELECT count(*) FROM large_t"))
            thread.start()
            try:
                poll(lambda: tables.scalar("SELECT count(*) FROM pg_locks WHERE NOT granted"), "the waiter to queue")
                short = find_blocking_sessions(conn, TOUCHED, long_transaction_seconds=3600)
                everything = find_blocking_sessions(conn, TOUCHED, long_transaction_seconds=0)
                excluded = find_blocking_sessions(conn, TOUCHED, long_transaction_seconds=0, exclude_pids=[idle_pid])
            finally:
                other.commit()
                thread.join(timeout=30)
    assert [(s.pid, s.locks) for s in short] == [
        (holder, ("AccessExclusiveLock on public.large_t",)),
        (waiter_pid, ("AccessShareLock on public.large_t (waiting)",)),
    ]
    assert short[1].reasons == ["waits for AccessShareLock on public.large_t"]
    assert {s.pid for s in everything} == {holder, waiter_pid, idle_pid}
    named_idle = next(s for s in everything if s.pid == idle_pid)
    assert (named_idle.locks, named_idle.long_transaction) == ((), True)
    assert named_idle.reasons[0].startswith("transaction open ")
    assert idle_pid not in {s.pid for s in excluded}


def test_lint_judges_each_file_alone_when_isolated() -> None:
    """Isolated (lint of a folder), a table created by an earlier file is taken to exist; in a run it is new."""
    migrations = migrations_of("CREATE TABLE orders (id bigint, total int);", "CREATE INDEX ON orders (total);")
    assert check_migrations(migrations, assumed_facts(), POLICY).findings == ()
    [finding] = check_migrations(migrations, assumed_facts(), POLICY, isolated=True).findings
    assert (finding.rule, finding.file, finding.needs_live_facts) == ("index-not-concurrent", "002_m.sql", True)
