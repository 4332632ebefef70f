"""Roll back and roll forward without blocking the rollout (issue 11): future versions, --target, down with
stored down SQL, repeatable migrations — against a real PostgreSQL, the real CLI in OS processes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.support.cli import finished, run_cli, start, write_migrations
from tests.support.databases import Database

pytestmark = pytest.mark.integration

NEW = {
    "001_accounts.sql": "CREATE TABLE accounts (id int PRIMARY KEY);\n",
    "002_users.sql": "CREATE TABLE users (id int PRIMARY KEY, account int REFERENCES accounts);\n",
    "002_users.down.sql": "DROP TABLE users;\n",
    "003_orders.sql": "CREATE TABLE orders (id int PRIMARY KEY);\n",
    "003_orders.down.sql": "DROP TABLE orders;\n",
    "004_items.sql": "CREATE TABLE items (id int PRIMARY KEY);\n",
    "004_items.down.sql": "DROP TABLE items;\n",
}


def folder(base: Path, name: str, files: dict[str, str], upto: int) -> Path:
    """A migrations folder holding the files of versions up to ``upto`` (an older release's)."""
    chosen = {k: v for k, v in files.items() if int(k.split("_", 1)[0]) <= upto}
    return write_migrations(base / name, chosen)


def tables(db: Database) -> list[str]:
    """The application's tables, sorted."""
    return [
        r[0]
        for r in db.query(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename NOT LIKE 'pgsluice%' ORDER BY 1"
        )
    ]


def test_an_older_folder_after_newer_migrations_is_accepted_and_strict_future_refuses(
    db: Database, tmp_path: Path
) -> None:
    """helm rollback brings back 001-002 after 003 was applied: exit 0 with plan.future_versions; status says
    future; --strict-future restores the refusal (exit 6); a file missing below the highest stays an error."""
    assert run_cli("migrate", url=db.url, migrations=folder(tmp_path, "new", NEW, 3)).returncode == 0
    old = folder(tmp_path, "old", NEW, 2)
    result = run_cli("migrate", url=db.url, migrations=old)
    assert result.returncode == 0, result.stderr
    assert result.event("plan.future_versions")["versions"] == [3]
    status = json.loads(run_cli("status", "--json", url=db.url, migrations=old).stdout)
    assert [(m["version"], m["state"]) for m in status["migrations"]] == [
        (1, "applied"),
        (2, "applied"),
        (3, "future"),
    ]
    assert run_cli("status", "--exit-code", url=db.url, migrations=old).returncode == 0
    strict = run_cli("migrate", "--strict-future", url=db.url, migrations=old)
    assert strict.returncode == 6
    assert "migration 3 (orders) is applied but newer than every file" in strict.finished["reason"]
    (old / "001_accounts.sql").unlink()
    missing = run_cli("migrate", url=db.url, migrations=old)
    assert missing.returncode == 6
    assert "migration 1 (accounts) is applied but its file is missing" in missing.finished["reason"]


def test_a_rolling_update_with_both_releases_racing(db: Database, tmp_path: Path) -> None:
    """Pods of the old (001-002) and the new release (001-004) start together: all exit 0, each migration once."""
    old = folder(tmp_path, "old", NEW, 2)
    new = folder(tmp_path, "new", NEW, 4)
    runs = [(old if i % 2 else new, tmp_path / f"pod{i}.log") for i in range(6)]
    procs = [(start(db.url, mdir, "migrate", log=log), log) for mdir, log in runs]
    results = [finished(proc, log, timeout=120) for proc, log in procs]
    assert [r.returncode for r in results] == [0] * 6, [r.stderr[-1500:] for r in results if r.returncode]
    applied = sorted(v for r in results for v in r.finished["applied"])
    assert applied == [1, 2, 3, 4]
    assert [v for v, _, _ in db.history()] == [1, 2, 3, 4]


def test_target_applies_up_to_a_version_and_reports_the_rest(db: Database, tmp_path: Path) -> None:
    """--target 2 applies 1 and 2, reports 3 and 4 as deferred, exits 0; a later run applies the rest."""
    mdir = folder(tmp_path, "m", NEW, 4)
    result = run_cli("migrate", "--target", "2", url=db.url, migrations=mdir)
    assert result.returncode == 0, result.stderr
    assert (result.finished["applied"], result.finished["deferred"]) == ([1, 2], [3, 4])
    assert result.event("plan.ready")["deferred"] == [3, 4]
    assert tables(db) == ["accounts", "users"]
    plan = run_cli("plan", "--target", "3", url=db.url, migrations=mdir)
    assert "apply 003_orders.sql" in plan.stdout and "later (beyond --target): 004_items.sql" in plan.stdout
    assert run_cli("migrate", url=db.url, migrations=mdir).finished["applied"] == [3, 4]


def test_down_uses_the_folder_or_the_stored_sql_and_deletes_each_row_with_its_undo(
    db: Database, tmp_path: Path
) -> None:
    """down --to 1 over 4, 3, 2: 4's .down.sql is not in the older folder, its stored copy is used; each undo
    commits with the deletion of its row; status says where each down comes from."""
    assert run_cli("migrate", url=db.url, migrations=folder(tmp_path, "new", NEW, 4)).returncode == 0
    old = folder(tmp_path, "old", NEW, 3)
    status = json.loads(run_cli("status", "--json", url=db.url, migrations=old).stdout)
    assert [(m["version"], m["down"]) for m in status["migrations"]] == [
        (1, None),
        (2, "folder+history"),
        (3, "folder+history"),
        (4, "history"),
    ]
    result = run_cli("down", "--to", "1", url=db.url, migrations=old)
    assert result.returncode == 0, result.stderr
    assert result.finished["reverted"] == [4, 3, 2]
    assert result.event("plan.ready")["sources"] == {"4": "history", "3": "folder", "2": "folder"}
    assert db.history() == [(1, "accounts", "applied")]
    assert tables(db) == ["accounts"]
    again = run_cli("migrate", url=db.url, migrations=old)
    assert again.finished["applied"] == [2, 3]


def test_down_refuses_before_anything_runs_when_a_migration_has_no_down_sql(db: Database, tmp_path: Path) -> None:
    """A version without a .down.sql file or stored SQL: exit 6 listing it, nothing undone."""
    files = {**NEW}
    del files["003_orders.down.sql"]
    mdir = folder(tmp_path, "m", files, 4)
    assert run_cli("migrate", url=db.url, migrations=mdir).returncode == 0
    result = run_cli("down", "--steps", "2", url=db.url, migrations=mdir)
    assert result.returncode == 6
    assert "no down SQL for 3 (orders)" in result.finished["reason"]
    assert tables(db) == ["accounts", "items", "orders", "users"]
    assert len(db.history()) == 4


def test_a_failing_down_is_rolled_back_with_its_history_row(db: Database, tmp_path: Path) -> None:
    """The down SQL fails: exit 7, the table and the history row are both still there."""
    files = {**NEW, "004_items.down.sql": "DROP TABLE items;\nSELECT 1/0;\n"}
    mdir = folder(tmp_path, "m", files, 4)
    assert run_cli("migrate", url=db.url, migrations=mdir).returncode == 0
    result = run_cli("down", "--steps", "1", url=db.url, migrations=mdir)
    assert result.returncode == 7
    assert result.finished["reason"].startswith("migration 004_items.down.sql failed in the statement at line 2")
    assert "items" in tables(db)
    assert db.history()[-1] == (4, "items", "applied")


def test_a_no_transaction_down_leaves_started_and_resolve_settles_it(db: Database, tmp_path: Path) -> None:
    """A down that cannot run in a transaction follows the started/resolve path of an up."""
    files = {
        "001_t.sql": "CREATE TABLE t (a int);\n",
        "002_idx.sql": "-- pgsluice: no-transaction\nCREATE INDEX CONCURRENTLY t_a ON t (a);\n",
        "002_idx.down.sql": "-- pgsluice: no-transaction\nDROP INDEX CONCURRENTLY t_a;\nSELECT 1/0;\n",
    }
    mdir = write_migrations(tmp_path / "m", files)
    assert run_cli("migrate", url=db.url, migrations=mdir).returncode == 0
    failed = run_cli("down", "--to", "1", url=db.url, migrations=mdir)
    assert failed.returncode == 7
    assert "history row 2 stays 'started'" in failed.finished["reason"]
    assert db.query("SELECT status, execution FROM pgsluice_history WHERE version = 2") == [
        ("started", "down, no-transaction")
    ]
    assert run_cli("resolve", "2", "--rolled-back", url=db.url, migrations=mdir).returncode == 0
    assert db.history() == [(1, "t", "applied")]


def test_down_future_is_what_the_rollback_hook_runs_with_the_old_image(db: Database, tmp_path: Path) -> None:
    """The old release's folder lacks 003 and 004 entirely: down --future undoes them with their stored SQL."""
    assert run_cli("migrate", url=db.url, migrations=folder(tmp_path, "new", NEW, 4)).returncode == 0
    old = folder(tmp_path, "old", NEW, 2)
    result = run_cli("down", "--future", "--backup-url", f"file://{tmp_path}/bk", url=db.url, migrations=old)
    assert result.returncode == 0, result.stderr
    assert result.finished["reverted"] == [4, 3]
    assert result.finished["backup"]["id"].endswith("_4-to-2")
    assert tables(db) == ["accounts", "users"]
    assert run_cli("migrate", "--strict-future", url=db.url, migrations=old).returncode == 0


def test_repeatable_migrations_run_after_the_versioned_ones_when_they_change(db: Database, tmp_path: Path) -> None:
    """R_ files: applied after the versioned ones, skipped when unchanged, re-applied after an edit; a failing one
    fails the run like any migration and is not recorded."""
    mdir = write_migrations(
        tmp_path / "m",
        {
            "001_users.sql": "CREATE TABLE users (id int, email text);\n",
            "R_views.sql": "CREATE OR REPLACE VIEW user_emails AS SELECT email FROM users;\n",
            "R_grants.sql": "-- nothing to grant yet\n",
        },
    )
    first = run_cli("migrate", url=db.url, migrations=mdir)
    assert first.returncode == 0, first.stderr
    assert (first.finished["applied"], first.finished["repeatables_applied"]) == ([1], ["grants", "views"])
    assert [e.get("file") for e in first.all("migration.applied")] == ["001_users.sql", "R_grants.sql", "R_views.sql"]
    again = run_cli("migrate", url=db.url, migrations=mdir)
    assert "repeatables_applied" not in again.finished
    status = json.loads(run_cli("status", "--json", url=db.url, migrations=mdir).stdout)
    assert [(r["name"], r["state"]) for r in status["repeatables"]] == [("grants", "current"), ("views", "current")]

    (mdir / "R_views.sql").write_text("CREATE OR REPLACE VIEW user_emails AS SELECT email, id FROM users;\n")
    plan = run_cli("plan", url=db.url, migrations=mdir)
    assert "apply R_views.sql" in plan.stdout
    edited = run_cli("migrate", url=db.url, migrations=mdir)
    assert edited.finished["repeatables_applied"] == ["views"]
    assert db.scalar("SELECT count(*) FROM information_schema.columns WHERE table_name = 'user_emails'") == 2

    (mdir / "R_views.sql").write_text("CREATE OR REPLACE VIEW user_emails AS SELECT nope FROM users;\n")
    failing = run_cli("migrate", url=db.url, migrations=mdir)
    assert failing.returncode == 7
    assert failing.finished["failed_migration"] == "R_views.sql"
    status = json.loads(run_cli("status", "--json", url=db.url, migrations=mdir).stdout)
    assert [(r["name"], r["state"]) for r in status["repeatables"]] == [("grants", "current"), ("views", "outdated")]
    shutil.rmtree(mdir)
