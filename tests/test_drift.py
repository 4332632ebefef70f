"""Schema drift against a real PostgreSQL: a fingerprint recorded after pgsluice's changes, compared before the
next run; manual changes are named, pgsluice's own tables and extensions' objects are not."""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

import psycopg
import pytest

from pgsluice.config import TableName
from pgsluice.safety.drift import (
    Drift,
    check_drift,
    compare_fingerprints,
    drift_table,
    fetch_fingerprint,
    record_fingerprint,
)
from tests.support.databases import CountingConnection, Database, Server, new_database

pytestmark = pytest.mark.integration

HISTORY = TableName("public", "pgsluice_history")
SCHEMA = """
CREATE TYPE mood AS ENUM ('sad', 'happy');
CREATE DOMAIN positive AS int CHECK (VALUE > 0);
CREATE SEQUENCE counter_seq;
CREATE TABLE users (id bigserial PRIMARY KEY, email varchar(100) NOT NULL, mood mood, score positive);
CREATE INDEX users_mood_idx ON users (mood);
CREATE VIEW active_users AS SELECT id, email FROM users WHERE mood = 'happy';
CREATE FUNCTION slug(t text) RETURNS text IMMUTABLE LANGUAGE sql AS $$ SELECT lower(t) $$;
CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;
INSERT INTO users (email, mood, score) VALUES ('a@example.com', 'happy', 1);
ALTER TABLE users ADD CONSTRAINT id_positive CHECK (id > 0) NOT VALID;
"""


def record(conn: psycopg.Connection[Any], history: TableName = HISTORY) -> None:
    """What pgsluice does after a run that applied something."""
    record_fingerprint(conn, history, migration_version=7, pgsluice_version="0.1.0")


def check(conn: psycopg.Connection[Any], history: TableName = HISTORY) -> Drift:
    """The drift since the last record (which must exist)."""
    found = check_drift(conn, history)
    assert found is not None
    return found


def test_compare_fingerprints_names_added_removed_and_changed_objects() -> None:
    """Pure: keys only in the new one are added, only in the old one removed, with another hash changed."""
    stored = {"table public.a": "1", "column public.a.x": "2", "index public.a_x": "3"}
    current = {"table public.a": "1", "column public.a.x": "9", "column public.a.y": "4"}
    found = compare_fingerprints(stored, current)
    assert (found.added, found.removed, found.changed) == (
        ("column public.a.y",),
        ("index public.a_x",),
        ("column public.a.x",),
    )
    assert bool(found)
    assert not compare_fingerprints(stored, dict(stored))
    assert found.summary() == "1 added (column public.a.y); 1 removed (index public.a_x); 1 changed (column public.a.x)"


def test_nothing_recorded_yet_is_no_baseline(db: Database) -> None:
    """Before the first record (no table, or the history schema missing), the check says so with None."""
    with db.connect() as conn:
        assert check_drift(conn, HISTORY) is None
        assert check_drift(conn, TableName("no_such_schema", "history")) is None


def test_a_manual_alter_table_is_drift_and_a_recorded_change_is_not(db: Database) -> None:
    """Recorded: no drift. A manual ALTER TABLE: named. The same change recorded as pgsluice's: no drift."""
    with db.connect() as conn:
        conn.execute(SCHEMA)
        record(conn)
        assert check(conn) == Drift((), (), (), *_recorded(conn))

        conn.execute("ALTER TABLE users ADD COLUMN nickname text")
        found = check(conn)
        assert (found.added, found.removed, found.changed) == (("column public.users.nickname",), (), ())
        assert (found.recorded_by, found.migration_version) == ("0.1.0", 7)
        fields = found.log_fields()
        assert fields["added"] == ["column public.users.nickname"]
        assert fields["counts"] == {"added": 1, "removed": 0, "changed": 0}

        record(conn)  # the run that applied this change records it
        assert not check(conn)


def _recorded(conn: psycopg.Connection[Any]) -> tuple[Any, ...]:
    row = conn.execute(
        "SELECT recorded_at, pgsluice_version, migration_version::int FROM public.pgsluice_history_schema"
    ).fetchone()
    assert row is not None
    return tuple(row)


CHANGES = [
    ("ALTER TABLE users ALTER COLUMN score TYPE int", (), (), ("column public.users.score",)),
    ("CREATE INDEX users_email_idx ON users (email)", ("index public.users_email_idx",), (), ()),
    ("DROP VIEW active_users", (), ("view public.active_users",), ()),
    (
        "CREATE OR REPLACE FUNCTION slug(t text) RETURNS text IMMUTABLE LANGUAGE sql AS $$ SELECT upper(t) $$",
        (),
        (),
        ("function public.slug(t text)",),
    ),
    ("ALTER TYPE mood ADD VALUE 'angry'", (), (), ("type public.mood",)),
    ("ALTER DOMAIN positive ADD CONSTRAINT small CHECK (VALUE < 100)", (), (), ("type public.positive",)),
    ("ALTER SEQUENCE counter_seq INCREMENT BY 5", (), (), ("sequence public.counter_seq",)),
    ("SELECT nextval('counter_seq'); INSERT INTO users (email) VALUES ('b@example.com'); ANALYZE users", (), (), ()),
    (
        "ALTER TABLE users ADD CONSTRAINT email_at CHECK (email LIKE '%@%') NOT VALID",
        ("constraint public.users.email_at",),
        (),
        (),
    ),
    (
        "ALTER TABLE users VALIDATE CONSTRAINT id_positive",
        (),
        (),
        ("constraint public.users.id_positive",),  # its definition loses NOT VALID
    ),
    (
        "CREATE TRIGGER users_touch BEFORE UPDATE ON users FOR EACH ROW EXECUTE FUNCTION touch()",
        ("trigger public.users.users_touch",),
        (),
        (),
    ),
    ("CREATE SCHEMA reporting", ("schema reporting",), (), ()),
    (
        "ALTER TABLE users RENAME COLUMN mood TO feeling",
        ("column public.users.feeling",),
        ("column public.users.mood",),
        ("index public.users_mood_idx", "view public.active_users"),  # their printed definitions name it
    ),
]


@pytest.mark.parametrize(("sql", "added", "removed", "changed"), CHANGES, ids=[c[0][:40] for c in CHANGES])
def test_each_kind_of_object_is_fingerprinted(
    db: Database, sql: str, added: tuple[str, ...], removed: tuple[str, ...], changed: tuple[str, ...]
) -> None:
    """Columns, indexes, views, functions, enums, domains, sequences (not their values), constraints (and their
    validation), triggers and schemas: each manual change is named, and data changes are not."""
    with db.connect() as conn:
        conn.execute(SCHEMA)
        record(conn)
        conn.execute(sql)
        found = check(conn)
    assert (found.added, found.removed, found.changed) == (added, removed, changed)


def test_pgsluice_tables_and_extension_objects_are_left_out(db: Database) -> None:
    """Changes to the history, repeatable, lease and drift tables are not drift, whatever the history's schema;
    an extension counts as one object, its functions and types do not."""
    history = TableName("ops", "migrations")
    with db.connect() as conn:
        conn.execute(
            "CREATE SCHEMA ops; CREATE TABLE ops.migrations (version numeric PRIMARY KEY);"
            "CREATE TABLE ops.migrations_repeatable (name text PRIMARY KEY);"
            "CREATE TABLE ops.migrations_lock (key bigint PRIMARY KEY)"
        )
        record(conn, history)
        conn.execute(
            "INSERT INTO ops.migrations VALUES (8); ALTER TABLE ops.migrations ADD COLUMN down_sql text;"
            "CREATE INDEX ON ops.migrations_repeatable (name, name); ALTER TABLE ops.migrations_lock ADD COLUMN t text;"
            "ALTER TABLE ops.migrations_schema ADD COLUMN note text"
        )
        assert not check(conn, history)
        keys = fetch_fingerprint(conn, history)
        assert [k for k in keys if "migrations" in k] == []
        available = conn.execute("SELECT count(*) FROM pg_available_extensions WHERE name = 'pg_trgm'").fetchone()
        if available is None or available[0] == 0:
            pytest.skip("the pg_trgm extension is not installed on this server (PostgreSQL's contrib package)")
        conn.execute("CREATE EXTENSION pg_trgm")
        found = check(conn, history)
    assert (found.added, found.removed, found.changed) == (("extension pg_trgm",), (), ())


def test_check_is_one_query_and_records_where_the_history_lives(db: Database) -> None:
    """The check sends one statement; the fingerprint lives beside the history table, one row."""
    with db.connect() as conn:
        conn.execute(SCHEMA)
        record(conn)
        record(conn)
        assert drift_table(HISTORY) == TableName("public", "pgsluice_history_schema")
        count = conn.execute("SELECT count(*) FROM public.pgsluice_history_schema").fetchone()
        assert count == (1,)
    with CountingConnection.connect(db.url, autocommit=True) as counting:
        assert not check(counting)
        assert counting.statements == 1


def test_a_restored_copy_has_the_same_fingerprint(db: Database, pg_server: Server) -> None:
    """pg_dump | psql into another database (new OIDs everywhere): the same fingerprint, so no drift."""
    if shutil.which("pg_dump") is None or shutil.which("psql") is None:
        pytest.skip("pg_dump and psql are needed (PostgreSQL's client package)")
    with db.connect() as conn:
        conn.execute(SCHEMA)
        conn.execute(
            "CREATE TABLE orders (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, total numeric(10,2) DEFAULT 0,"
            " twice numeric GENERATED ALWAYS AS (total * 2) STORED, user_id bigint REFERENCES users (id),"
            " CONSTRAINT total_positive CHECK (total >= 0)) PARTITION BY RANGE (id);"
            "CREATE TABLE orders_1 PARTITION OF orders FOR VALUES FROM (1) TO (1000);"
            "CREATE UNIQUE INDEX users_email_lower ON users (lower(email)) WHERE score > 0;"
            "CREATE TRIGGER users_touch BEFORE UPDATE ON users FOR EACH ROW EXECUTE FUNCTION touch()"
        )
        original = fetch_fingerprint(conn, HISTORY)
    dump = subprocess.run(["pg_dump", "--schema-only", db.url], check=True, capture_output=True, text=True).stdout
    with new_database(pg_server, "copy") as copy:
        subprocess.run(
            ["psql", "-q", "-v", "ON_ERROR_STOP=1", copy.url], input=dump, check=True, capture_output=True, text=True
        )
        with copy.connect() as conn:
            restored = fetch_fingerprint(conn, HISTORY)
    assert compare_fingerprints(original, restored) == Drift((), (), ())
    assert len(original) > 30
