"""The gate against a real PostgreSQL: one test per rule, each asserting exit code, event and database state."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest

from tests.support.cli import assert_no_secret, run_cli, write_migrations
from tests.support.databases import Database

pytestmark = pytest.mark.integration

USERS = "CREATE TABLE users (id bigserial PRIMARY KEY, email text NOT NULL, created_at timestamptz DEFAULT now());\n"


def test_applies_pending_in_order_then_a_rerun_is_a_no_op(db: Database, mdir: Path) -> None:
    """Exit 0, every migration recorded once; the second run applies nothing."""
    write_migrations(mdir, {"001_users.sql": USERS, "002_index.sql": "CREATE INDEX users_email ON users (email);\n"})
    first = run_cli("migrate", url=db.url, migrations=mdir)
    assert first.returncode == 0, first.stderr
    assert first.finished["applied"] == [1, 2]
    assert first.finished["outcome"] == "success"
    assert db.history() == [(1, "users", "applied"), (2, "index", "applied")]
    row = db.query(
        "SELECT applied_by, hostname, execution, duration_seconds >= 0, pgsluice_version"
        " FROM pgsluice_history WHERE version = 1"
    )[0]
    assert row[0] == "sluice_admin"
    assert row[2] == "transaction"
    assert row[3] is True
    assert row[4] == "0.1.0"
    second = run_cli(url=db.url, migrations=mdir)  # no sub-command: migrate
    assert second.returncode == 0, second.stderr
    assert second.finished["applied"] == []
    assert "run.up_to_date" in second.names()
    assert "backup.skipped" not in second.names()


def test_runtime_error_rolls_back_and_names_file_line_and_sqlstate(db: Database, mdir: Path, tmp_path: Path) -> None:
    """A failing statement: exit 7, rolled back, later files not run, reason in the termination log."""
    write_migrations(
        mdir,
        {
            "001_users.sql": USERS,
            "002_bad.sql": "CREATE TABLE audit (a int);\nINSERT INTO audit VALUES (1);\nINSERT INTO nope VALUES (2);\n",
            "003_later.sql": "CREATE TABLE later (a int);\n",
        },
    )
    term = tmp_path / "termination-log"
    result = run_cli("migrate", "--termination-log", str(term), url=db.url, migrations=mdir)
    assert result.returncode == 7
    finished = result.finished
    assert finished["reason"].startswith(
        'migration 002_bad.sql failed at line 3, column 13: relation "nope" does not exist (SQLSTATE 42P01)'
    )
    assert (finished["file"], finished["line"], finished["column"], finished["sqlstate"]) == (
        "002_bad.sql",
        3,
        13,
        "42P01",
    )
    assert finished["applied"] == [1]
    assert db.history() == [(1, "users", "applied")]
    assert db.scalar("SELECT to_regclass('audit') IS NULL") is True
    assert db.scalar("SELECT to_regclass('later') IS NULL") is True
    message = term.read_text()
    assert message.count("\n") == 1
    assert message.startswith("migration 002_bad.sql failed at line 3")


def test_syntax_error_is_reported_with_its_line(db: Database, mdir: Path) -> None:
    """The server's position maps back to the file's line and column."""
    write_migrations(mdir, {"001_typo.sql": "-- header\n\nCREATE TABLE a (x int);\nALTER TABLE a ADD COLUM y int;\n"})
    result = run_cli("migrate", url=db.url, migrations=mdir)
    assert result.returncode == 7
    assert result.finished["reason"].startswith(
        'migration 001_typo.sql failed at line 4, column 27: syntax error at or near "int" (SQLSTATE 42601)'
    )
    assert db.scalar("SELECT to_regclass('a') IS NULL") is True


def test_begin_commit_wrapped_file_runs_atomically(db: Database, mdir: Path) -> None:
    """The psql-era 004_add_new_column.sql style: the wrapper is honoured, not doubled, and a failure inside
    rolls back all of it."""
    write_migrations(
        mdir,
        {
            "001_users.sql": USERS + "INSERT INTO users (email, created_at) VALUES ('a@x', '2024-06-01');\n",
            "004_add_new_column.sql": (
                "-- Description: Add email_verified column to users table\n\nBEGIN;\n\n-- Add column\n"
                "ALTER TABLE users\nADD COLUMN email_verified BOOLEAN DEFAULT FALSE NOT NULL;\n\n"
                "UPDATE users SET email_verified = TRUE WHERE created_at < '2025-01-01';\n\nCOMMIT;\n\n"
                "-- Rollback script (separate file: 004_rollback.sql)\n"
                "-- ALTER TABLE users DROP COLUMN email_verified;\n"
            ),
        },
    )
    result = run_cli("migrate", url=db.url, migrations=mdir)
    assert result.returncode == 0, result.stderr
    assert db.scalar("SELECT email_verified FROM users") is True
    assert db.history()[-1] == (4, "add_new_column", "applied")

    write_migrations(mdir, {"005_half.sql": "BEGIN;\nCREATE TABLE half (a int);\nSELECT 1/0;\nCOMMIT;\n"})
    failed = run_cli("migrate", url=db.url, migrations=mdir)
    assert failed.returncode == 7
    assert failed.finished["line"] == 3
    assert db.scalar("SELECT to_regclass('half') IS NULL") is True


def test_other_transaction_control_stops_before_anything_runs(db: Database, mdir: Path) -> None:
    """A COMMIT in the middle of a file: exit 6 naming the line, nothing applied."""
    write_migrations(
        mdir,
        {
            "001_users.sql": USERS,
            "002_commit.sql": "CREATE TABLE a (x int);\nCOMMIT;\nCREATE TABLE b (x int);\n",
        },
    )
    result = run_cli("migrate", url=db.url, migrations=mdir)
    assert result.returncode == 6
    assert "002_commit.sql line 2: COMMIT without a BEGIN before it (unbalanced)" in result.finished["reason"]
    assert db.history() == []
    assert db.scalar("SELECT to_regclass('users') IS NULL") is True


def test_create_index_concurrently_without_directive_runs_as_psql_runs_it(db: Database, mdir: Path) -> None:
    """No directive: psql would run it, so pgsluice does, statement by statement, saying it is not atomic."""
    write_migrations(
        mdir,
        {
            "001_users.sql": USERS,
            "002_idx.sql": "CREATE INDEX CONCURRENTLY users_email ON users (email);\n",
        },
    )
    result = run_cli("migrate", url=db.url, migrations=mdir)
    assert result.returncode == 0, result.stderr
    warning = result.event("plan.warning")
    assert warning["problem"].startswith(
        "002_idx.sql line 1: CREATE INDEX CONCURRENTLY cannot run inside a transaction"
    )
    assert "-- pgsluice: no-transaction" in warning["hint"]
    assert db.scalar("SELECT indisvalid FROM pg_index WHERE indexrelid = 'users_email'::regclass") is True
    assert db.query("SELECT status, execution FROM pgsluice_history WHERE version = 2") == [
        ("applied", "no-transaction")
    ]


def test_create_index_concurrently_with_directive(db: Database, mdir: Path) -> None:
    """With the directive: statement by statement, a valid index, history applied."""
    write_migrations(
        mdir,
        {
            "001_users.sql": USERS,
            "002_idx.sql": "-- pgsluice: no-transaction\nCREATE INDEX CONCURRENTLY users_email ON users (email);\n",
        },
    )
    result = run_cli("migrate", url=db.url, migrations=mdir)
    assert result.returncode == 0, result.stderr
    assert db.scalar("SELECT indisvalid FROM pg_index WHERE indexrelid = 'users_email'::regclass") is True
    assert db.query("SELECT status, execution FROM pgsluice_history WHERE version = 2") == [
        ("applied", "no-transaction")
    ]


def test_failed_concurrent_index_leaves_started_names_the_invalid_index_and_resolve_clears_it(
    db: Database, mdir: Path
) -> None:
    """A unique CIC over duplicates fails: exit 7, row 'started', INVALID index named; then resolve."""
    write_migrations(
        mdir,
        {
            "001_users.sql": USERS + "INSERT INTO users (email) VALUES ('dup'), ('dup');\n",
            "002_uniq.sql": (
                "-- pgsluice: no-transaction\nCREATE UNIQUE INDEX CONCURRENTLY users_email_uq ON users (email);\n"
            ),
        },
    )
    with db.connect() as conn:  # an older INVALID index elsewhere must not be blamed on this migration
        conn.execute("CREATE TABLE other (a int); INSERT INTO other VALUES (1), (1)")
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute("CREATE UNIQUE INDEX CONCURRENTLY other_uq ON other (a)")
    result = run_cli("migrate", url=db.url, migrations=mdir)
    assert result.returncode == 7
    reason = result.finished["reason"]
    assert "history row 2 stays 'started'" in reason
    assert "INVALID index left behind: users_email_uq" in reason
    assert result.finished["invalid_indexes"] == ["users_email_uq"]
    assert db.history() == [(1, "users", "applied"), (2, "uniq", "started")]

    again = run_cli("migrate", url=db.url, migrations=mdir)
    assert again.returncode == 6
    assert "pgsluice resolve 2 --applied" in again.finished["reason"]

    status = run_cli("status", "--json", url=db.url, migrations=mdir)
    assert [m["state"] for m in json.loads(status.stdout)["migrations"]] == ["applied", "started"]

    with db.connect() as conn:
        conn.execute("DROP INDEX users_email_uq")
        conn.execute("DELETE FROM users WHERE id = (SELECT max(id) FROM users)")
    resolved = run_cli("resolve", "2", "--rolled-back", url=db.url, migrations=mdir)
    assert resolved.returncode == 0, resolved.stderr
    final = run_cli("migrate", url=db.url, migrations=mdir)
    assert final.returncode == 0, final.stderr
    assert db.history()[-1] == (2, "uniq", "applied")


def test_resolve_applied_and_refusals(db: Database, mdir: Path) -> None:
    """--applied marks a started row applied; resolving a row that is not started is a usage error."""
    write_migrations(mdir, {"001_users.sql": USERS})
    assert run_cli("migrate", url=db.url, migrations=mdir).returncode == 0
    refused = run_cli("resolve", "1", "--applied", url=db.url, migrations=mdir)
    assert refused.returncode == 2
    assert "version 1 is not half-applied (it is applied)" in refused.finished["reason"]
    with db.connect() as conn:
        conn.execute("UPDATE pgsluice_history SET status = 'started' WHERE version = 1")
    ok = run_cli("resolve", "1", "--applied", url=db.url, migrations=mdir)
    assert ok.returncode == 0, ok.stderr
    assert db.query("SELECT status, execution FROM pgsluice_history") == [("applied", "no-transaction, resolved")]


def test_search_path_and_role_do_not_leak_into_the_next_migration(db: Database, mdir: Path) -> None:
    """A migration that changes search_path and role: the history stays found, the next file starts clean."""
    with db.connect() as conn:
        conn.execute(f"CREATE ROLE app_owner_{db.name} NOLOGIN")
        conn.execute(f"GRANT CREATE ON SCHEMA public TO app_owner_{db.name}")
    write_migrations(
        mdir,
        {
            "001_schema.sql": (
                "CREATE SCHEMA app;\nSET search_path = app;\nCREATE TABLE things (a int);\n"
                f"SET ROLE app_owner_{db.name};\nCREATE TABLE public.owned (a int);\n"
            ),
            "002_where.sql": "CREATE TABLE where_am_i (a int);\n",
        },
    )
    result = run_cli("migrate", url=db.url, migrations=mdir)
    assert result.returncode == 0, result.stderr
    assert db.scalar("SELECT to_regclass('app.things') IS NOT NULL") is True
    assert db.scalar("SELECT to_regclass('public.where_am_i') IS NOT NULL") is True
    assert db.scalar("SELECT tableowner FROM pg_tables WHERE tablename = 'where_am_i'") == "sluice_admin"
    assert db.scalar("SELECT tableowner FROM pg_tables WHERE tablename = 'owned'") == f"app_owner_{db.name}"
    assert db.history() == [(1, "schema", "applied"), (2, "where", "applied")]


def test_custom_history_table_in_its_own_schema(db: Database, mdir: Path) -> None:
    """--history-table ops.schema_history creates the schema and uses it."""
    write_migrations(mdir, {"001_users.sql": USERS})
    result = run_cli("migrate", url=db.url, migrations=mdir, env={"PGSLUICE_HISTORY_TABLE": "ops.schema_history"})
    assert result.returncode == 0, result.stderr
    assert db.history("ops.schema_history") == [(1, "users", "applied")]
    assert db.scalar("SELECT to_regclass('public.pgsluice_history') IS NULL") is True


def test_inherited_low_statement_timeout_is_overridden(db: Database, mdir: Path) -> None:
    """A database-level statement_timeout of 100 ms does not kill a 0.5 s migration; the flag does."""
    with db.connect() as conn:
        conn.execute(f'ALTER DATABASE "{db.name}" SET statement_timeout = 100')
    write_migrations(mdir, {"001_slow.sql": "SELECT pg_sleep(0.5);\nCREATE TABLE slow (a int);\n"})
    result = run_cli("migrate", url=db.url, migrations=mdir)
    assert result.returncode == 0, result.stderr
    write_migrations(mdir, {"002_slower.sql": "SELECT pg_sleep(2);\n"})
    limited = run_cli("migrate", "--statement-timeout", "300ms", url=db.url, migrations=mdir)
    assert limited.returncode == 7
    assert limited.finished["sqlstate"] == "57014"


def test_lock_timeout_retries_then_fails_with_exit_7(db: Database, mdir: Path) -> None:
    """An ALTER TABLE behind a long transaction: lock_timeout, retried, then exit 7 — traffic never queues."""
    write_migrations(mdir, {"001_users.sql": USERS})
    assert run_cli("migrate", url=db.url, migrations=mdir).returncode == 0
    write_migrations(mdir, {"002_alter.sql": "ALTER TABLE users ADD COLUMN nick text;\n"})
    with db.connect() as blocker:
        blocker.execute("BEGIN")
        blocker.execute("SELECT * FROM users")  # holds ACCESS SHARE until the end of the test
        result = run_cli(
            "migrate",
            "--ddl-lock-timeout",
            "200ms",
            "--ddl-retries",
            "2",
            "--ddl-retry-delay",
            "50ms",
            url=db.url,
            migrations=mdir,
        )
        blocker.execute("ROLLBACK")
    assert result.returncode == 7
    retries = [e for e in result.events if e["event"] == "migration.retry_scheduled"]
    assert [e["retry_num"] for e in retries] == [1, 2]
    assert result.finished["sqlstate"] == "55P03"
    assert "after 3 attempt(s)" in result.finished["reason"]
    assert db.history() == [(1, "users", "applied")]
    assert run_cli("migrate", url=db.url, migrations=mdir).returncode == 0


def test_changed_missing_and_out_of_order_stop_the_run(db: Database, mdir: Path) -> None:
    """Each disagreement between files and history: exit 6 naming the version, nothing applied."""
    write_migrations(mdir, {"001_users.sql": USERS, "003_c.sql": "CREATE TABLE c (a int);\n"})
    assert run_cli("migrate", url=db.url, migrations=mdir).returncode == 0

    write_migrations(mdir, {"002_b.sql": "CREATE TABLE b (a int);\n"})
    late = run_cli("migrate", url=db.url, migrations=mdir)
    assert late.returncode == 6
    assert "002_b.sql is pending but version 3 is already applied (out of order)" in late.finished["reason"]
    allowed = run_cli("migrate", "--allow-out-of-order", url=db.url, migrations=mdir)
    assert allowed.returncode == 0, allowed.stderr
    assert allowed.finished["applied"] == [2]

    (mdir / "003_c.sql").write_text("-- reformatted\ncreate table C (\n  a INT\n);\n")
    assert run_cli("migrate", url=db.url, migrations=mdir).returncode == 0  # cosmetic: not a change

    (mdir / "003_c.sql").write_text("CREATE TABLE c (a bigint);\n")
    changed = run_cli("migrate", url=db.url, migrations=mdir)
    assert changed.returncode == 6
    assert "003_c.sql was changed after it was applied" in changed.finished["reason"]

    (mdir / "003_c.sql").write_text("CREATE TABLE c (a int);\n")
    (mdir / "002_b.sql").unlink()  # below the highest file: missing (the highest gone is a newer release's: future)
    missing = run_cli("migrate", url=db.url, migrations=mdir)
    assert missing.returncode == 6
    assert "migration 2 (b) is applied but its file is missing" in missing.finished["reason"]


def test_bad_file_names_stop_before_connecting(mdir: Path) -> None:
    """A malformed name or a duplicate version is exit 6 even with no database around."""
    write_migrations(mdir, {"004_add_new_column.sql": "SELECT 1;", "004_rollback.sql": "SELECT 1;"})
    result = run_cli("migrate", url="postgresql://nobody@127.0.0.1:1/none", migrations=mdir)
    assert result.returncode == 6
    assert "rename it 004_add_new_column.down.sql" in result.finished["reason"]
    assert "db.connected" not in result.names()


def test_baseline_adopts_a_hand_migrated_database(db: Database, mdir: Path) -> None:
    """001 and 003 were run with psql: baseline 3 records 1 and 3 without running them; 4 then applies."""
    write_migrations(
        mdir,
        {
            "001_expand_account_id_column.sql": "CREATE TABLE accounts (account_id varchar(20));\n",
            "003_fix_client_user_role.sql": "CREATE TABLE roles_fixed (a int);\n",
            "004_add_new_column.sql": "ALTER TABLE accounts ADD COLUMN note text;\n",
        },
    )
    with db.connect() as conn:  # what the team did by hand
        conn.execute("CREATE TABLE accounts (account_id varchar(20))")
    result = run_cli("baseline", "3", url=db.url, migrations=mdir)
    assert result.returncode == 0, result.stderr
    assert db.query("SELECT version, execution FROM pgsluice_history ORDER BY 1") == [(1, "baseline"), (3, "baseline")]
    assert db.scalar("SELECT to_regclass('roles_fixed') IS NULL") is True
    migrate = run_cli("migrate", url=db.url, migrations=mdir)
    assert migrate.returncode == 0, migrate.stderr
    assert migrate.finished["applied"] == [4]
    assert run_cli("baseline", "0", url=db.url, migrations=mdir).returncode == 2


def test_status_and_plan(db: Database, mdir: Path) -> None:
    """status --json lists every state; --exit-code is 9 while pending; plan changes nothing."""
    write_migrations(mdir, {"001_users.sql": USERS})
    assert run_cli("migrate", url=db.url, migrations=mdir).returncode == 0
    write_migrations(mdir, {"002_more.sql": "CREATE TABLE more (a int);\n"})

    status = run_cli("status", "--json", "--exit-code", url=db.url, migrations=mdir)
    assert status.returncode == 9
    doc = json.loads(status.stdout)
    assert (doc["current_version"], doc["pending"]) == (1, [2])
    first = doc["migrations"][0]
    assert (first["state"], first["applied_by"], first["execution"]) == ("applied", "sluice_admin", "transaction")
    assert first["applied_at"]
    assert first["duration_seconds"] is not None

    text = run_cli("status", url=db.url, migrations=mdir)
    assert text.returncode == 0
    assert "2        more   pending" in text.stdout

    plan = run_cli("plan", url=db.url, migrations=mdir)
    assert plan.returncode == 0
    assert "apply 002_more.sql (1 statement(s), one transaction)" in plan.stdout
    assert db.history() == [(1, "users", "applied")]

    assert run_cli("migrate", url=db.url, migrations=mdir).returncode == 0
    assert run_cli("status", "--exit-code", url=db.url, migrations=mdir).returncode == 0


def test_status_on_an_empty_database_creates_nothing(db: Database, mdir: Path) -> None:
    """status reads; it does not create the history table."""
    write_migrations(mdir, {"001_users.sql": USERS})
    status = run_cli("status", "--json", url=db.url, migrations=mdir)
    assert status.returncode == 0
    assert json.loads(status.stdout)["pending"] == [1]
    assert db.scalar("SELECT to_regclass('pgsluice_history') IS NULL") is True


def test_new_and_lint(mdir: Path) -> None:
    """new picks the next number at the folder's width; lint reports every problem offline."""
    write_migrations(mdir, {"0009_a.sql": "SELECT 1;\n"})
    created = run_cli("new", "Add-Users", migrations=mdir)
    assert created.returncode == 0, created.stderr
    assert created.stdout.strip().endswith("0010_add_users.sql")
    lint = run_cli("lint", migrations=mdir)
    assert lint.returncode == 6  # the new file has no statement yet
    assert "error: 0010_add_users.sql: has no SQL statement" in lint.stdout
    (mdir / "0010_add_users.sql").write_text("CREATE TABLE users (id int);\n")
    assert run_cli("lint", migrations=mdir).returncode == 0


def test_wrong_password_fails_at_once_with_exit_4_and_no_secret(db: Database, mdir: Path) -> None:
    """Authentication errors are not retried, and the password is nowhere in the output."""
    write_migrations(mdir, {"001_users.sql": USERS})
    url = db.url.replace("s3cret-Pa55-7f1e", "Wr0ngPassw0rdXYZ")
    result = run_cli("migrate", "--wait-timeout", "30", url=url, migrations=mdir)
    assert result.returncode == 4
    assert "wait.retry_scheduled" not in result.names()
    assert "password authentication failed" in result.finished["reason"]
    assert "Wr0ngPassw0rdXYZ" not in result.stdout + result.stderr
    missing_db = run_cli("migrate", url=db.server.url("no_such_db"), migrations=mdir)
    assert missing_db.returncode == 4
    assert 'database "no_such_db" does not exist' in missing_db.finished["reason"]


def test_unreachable_database_retries_until_the_deadline_then_exit_3(mdir: Path) -> None:
    """Connection refused heals by waiting: retried with one event per retry, then exit 3."""
    write_migrations(mdir, {"001_users.sql": USERS})
    result = run_cli(
        "migrate",
        "--wait-timeout",
        "1.5s",
        url="postgresql://app:Sup3rS3cretZZ@127.0.0.1:9/app",
        migrations=mdir,
    )
    assert result.returncode == 3
    retries = [e for e in result.events if e["event"] == "wait.retry_scheduled"]
    assert len(retries) >= 2
    assert all(0 < e["wait_seconds"] <= 2.0 for e in retries)
    assert result.finished["reason"].startswith("database unreachable after")
    assert "Sup3rS3cretZZ" not in result.stdout + result.stderr


def test_password_never_appears_in_any_output(db: Database, mdir: Path, tmp_path: Path) -> None:
    """Success, failure, status and crash paths: the server password is never printed."""
    write_migrations(mdir, {"001_users.sql": USERS, "002_bad.sql": "SELECT * FROM missing_table;\n"})
    term = tmp_path / "term"
    outputs = []
    for args in (("migrate", "--termination-log", str(term)), ("status",), ("status", "--json"), ("plan",)):
        result = run_cli(*args, url=db.url, migrations=mdir, env={"PGSLUICE_LOG_LEVEL": "debug"})
        outputs += [result.stdout, result.stderr]
    pw_file = tmp_path / "pw"
    pw_file.write_text("s3cret-Pa55-7f1e\n")
    no_pw_url = db.url.replace(":s3cret-Pa55-7f1e", "")
    via_file = run_cli("migrate", url=no_pw_url, migrations=mdir, env={"PGPASSWORD_FILE": str(pw_file)})
    assert via_file.returncode == 7  # connected with the file's password, then 002 failed
    outputs += [via_file.stdout, via_file.stderr, term.read_text()]
    assert_no_secret(*outputs)
    assert any("002_bad.sql" in o for o in outputs)


def test_sql_ascii_database_reads_history_as_text(db: Database, mdir: Path) -> None:
    """In a SQL_ASCII database (initdb without a locale), a second run still sees the history unchanged."""
    name = db.name + "_ascii"
    with db.server.admin() as conn:
        conn.execute(f"CREATE DATABASE {name} ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0")
    try:
        url = db.server.url(name)
        write_migrations(mdir, {"001_users.sql": USERS})
        assert run_cli("migrate", url=url, migrations=mdir).returncode == 0
        again = run_cli("migrate", url=url, migrations=mdir)
        assert again.returncode == 0, again.stderr
        assert again.finished["applied"] == []
    finally:
        with db.server.admin() as conn:
            conn.execute(f"DROP DATABASE {name} WITH (FORCE)")


def test_failure_inside_a_batch_keeps_earlier_commits_and_runs_nothing_after(db: Database, mdir: Path) -> None:
    """One pipeline for many files: 1-10 commit, 11 fails, 12-60 never run; the report says exactly that."""
    files = {f"{n:03d}_t{n}.sql": f"CREATE TABLE t{n} (a int);\n" for n in range(1, 61)}
    files["011_t11.sql"] = "CREATE TABLE t11 (a int);\nINSERT INTO t11 SELECT 1 / 0;\n"
    write_migrations(mdir, files)
    result = run_cli("migrate", url=db.url, migrations=mdir)
    assert result.returncode == 7, result.stderr
    assert result.finished["applied"] == list(range(1, 11))
    assert result.finished["failed_migration"] == "011_t11.sql"
    assert (result.finished["line"], result.finished["sqlstate"]) == (2, "22012")
    assert [v for v, _, _ in db.history()] == list(range(1, 11))
    assert db.scalar("SELECT count(*) FROM pg_tables WHERE tablename ~ '^t[0-9]+$'") == 10
    assert [e["version"] for e in result.events if e["event"] == "migration.applied"] == list(range(1, 11))
    assert "library.logged" not in result.names() or all(
        "s3cret" not in str(e) for e in result.events if e["event"] == "library.logged"
    )


def test_a_failure_deep_in_a_long_file_is_located_and_nothing_of_it_stays(db: Database, mdir: Path) -> None:
    """3,000 INSERTs with a duplicate key at the 2,500th (the pipeline is synced every 1,000 statements, inside the
    one transaction): exit 7 naming that line, no row of the file left, the migration before it committed."""
    rows = [f"INSERT INTO seed VALUES ({n});" for n in range(1, 3001)]
    rows[2499] = "INSERT INTO seed VALUES (1);"  # line 2502 of the file: two lines come before the rows
    write_migrations(
        mdir,
        {
            "001_table.sql": "CREATE TABLE seed (id int PRIMARY KEY);\n",
            "002_rows.sql": "-- seed data\n\n" + "\n".join(rows) + "\n",
        },
    )
    result = run_cli("migrate", url=db.url, migrations=mdir)
    assert result.returncode == 7, result.stderr
    assert (result.finished["file"], result.finished["line"], result.finished["sqlstate"]) == (
        "002_rows.sql",
        2502,
        "23505",
    )
    assert db.scalar("SELECT count(*) FROM seed") == 0
    assert db.history() == [(1, "table", "applied")]
    write_migrations(
        mdir,
        {
            "002_rows.sql": "-- seed data\n\n"
            + "\n".join(f"INSERT INTO seed VALUES ({n});" for n in range(1, 3001))
            + "\n"
        },
    )
    again = run_cli("migrate", url=db.url, migrations=mdir)
    assert again.returncode == 0, again.stderr
    assert db.scalar("SELECT count(*) FROM seed") == 3000
