"""Fleets (issue 14): one migration set over hundreds of databases or schemas, spread over OS processes the way
a Kubernetes Indexed Job spreads pods (JOB_COMPLETION_INDEX), against a real PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cli import Result, assert_no_secret, finished, run_cli, start, write_migrations
from tests.support.databases import Database, Server

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FILES = {
    "001_accounts.sql": "CREATE TABLE accounts (id int PRIMARY KEY, name text);\n",
    "002_users.sql": "CREATE TABLE users (id int PRIMARY KEY, account int REFERENCES accounts);\n",
    "003_seed.sql": "INSERT INTO accounts VALUES (1, current_schema());\n",
}


@pytest.fixture
def fleet_databases(pg_server: Server, db: Database) -> Iterator[list[str]]:
    """200 databases of their own (named after this test's database), dropped afterwards."""
    names = [f"{db.name}_{n:03d}" for n in range(200)]
    with pg_server.admin() as conn:
        for name in names:
            conn.execute(f'CREATE DATABASE "{name}"')
    yield names
    with pg_server.admin() as conn:
        for name in names:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def run_shards(
    url: str, mdir: Path, targets: Path, tmp_path: Path, *extra: str, shards: int = 8, env: dict[str, str] | None = None
) -> list[Result]:
    """``shards`` OS processes, each with its JOB_COMPLETION_INDEX, started together."""
    logs = [tmp_path / f"shard{i}.log" for i in range(shards)]
    procs = [
        start(
            url,
            mdir,
            "migrate",
            "--targets",
            str(targets),
            "--shard-count",
            str(shards),
            *extra,
            log=log,
            env={"JOB_COMPLETION_INDEX": str(i), **(env or {})},
        )
        for i, log in enumerate(logs)
    ]
    return [finished(p, log, timeout=600) for p, log in zip(procs, logs, strict=True)]


def test_two_hundred_databases_over_eight_shards_each_migrated_once(
    db: Database, fleet_databases: list[str], mdir: Path, tmp_path: Path
) -> None:
    """8 processes (JOB_COMPLETION_INDEX 0..7) with --parallel 4 over 200 databases: every one current, each
    migration applied once, a target.finished per target, no password anywhere."""
    write_migrations(mdir, FILES)
    targets = tmp_path / "targets.txt"
    targets.write_text("# tenants\n" + "\n".join(fleet_databases) + "\n")
    results = run_shards(db.url, mdir, targets, tmp_path, "--parallel", "4")
    assert [r.returncode for r in results] == [0] * 8, [r.stderr[-1500:] for r in results if r.returncode]
    done = [e for r in results for e in r.all("target.finished")]
    assert sorted(e["target"] for e in done) == sorted(fleet_databases)
    assert all(e["applied"] == [1, 2, 3] for e in done)
    assert sum(r.event("fleet.finished")["done"] for r in results) == 200
    for name in (fleet_databases[0], fleet_databases[137], fleet_databases[-1]):
        other = Database(db.server, name, db.server.url(name))
        assert other.history() == [(1, "accounts", "applied"), (2, "users", "applied"), (3, "seed", "applied")]
        assert other.scalar("SELECT count(*) FROM accounts") == 1
    assert_no_secret(*(r.stderr for r in results), targets.read_text())


def test_two_hundred_schemas_in_one_database_progress_independently(db: Database, mdir: Path, tmp_path: Path) -> None:
    """Schema targets: search_path set to the schema, a history table of its own there, a lock of its own."""
    write_migrations(mdir, FILES)
    schemas = [f"tenant_{n:03d}" for n in range(200)]
    targets = tmp_path / "targets.txt"
    targets.write_text("\n".join(f"{db.name}:{s}" for s in schemas) + "\n")
    results = run_shards(db.url, mdir, targets, tmp_path, "--parallel", "4")
    assert [r.returncode for r in results] == [0] * 8, [r.stderr[-1500:] for r in results if r.returncode]
    assert db.scalar("SELECT count(*) FROM pg_tables WHERE tablename = 'accounts'") == 200
    assert db.scalar("SELECT count(*) FROM pg_tables WHERE tablename = 'pgsluice_history'") == 200
    assert db.scalar("SELECT name FROM tenant_042.accounts") == "tenant_042"
    assert db.history("tenant_199.pgsluice_history") == [
        (1, "accounts", "applied"),
        (2, "users", "applied"),
        (3, "seed", "applied"),
    ]
    assert db.scalar("SELECT to_regclass('public.accounts') IS NULL") is True
    write_migrations(mdir, {"004_more.sql": "ALTER TABLE accounts ADD COLUMN plan text;\n"})
    (tmp_path / "one").mkdir()
    single = run_shards(db.url, mdir, targets, tmp_path / "one", shards=1)
    assert single[0].returncode == 0, single[0].stderr[-2000:]
    assert single[0].event("fleet.finished")["done"] == 200


def test_a_failing_target_fails_only_its_shard_and_a_rerun_completes_it(
    db: Database, mdir: Path, tmp_path: Path
) -> None:
    """One tenant's migration fails: only its shard exits 7, every other tenant is current, fleet.finished names
    it; once fixed, a rerun completes it and is a no-op for the others."""
    write_migrations(mdir, FILES)
    schemas = [f"tenant_{n:02d}" for n in range(16)]
    with db.connect() as conn:  # tenant_05 already has a users table: 002 fails there
        conn.execute("CREATE SCHEMA tenant_05; CREATE TABLE tenant_05.users (id int)")
    targets = tmp_path / "targets.txt"
    targets.write_text("\n".join(f"{db.name}:{s}" for s in schemas) + "\n")
    results = run_shards(db.url, mdir, targets, tmp_path, shards=4)
    assert [r.returncode for r in results] == [0, 7, 0, 0]  # tenant_05 is position 5: shard 1
    fleet = results[1].event("fleet.finished")
    assert fleet["failed"] == [f"{db.name}:tenant_05"]
    assert fleet["outcomes"] == {"success": 3, "exit 7": 1}
    failed = [e for e in results[1].all("target.finished") if e["exit_code"] == 7]
    assert 'relation "users" already exists' in failed[0]["reason"]
    assert db.scalar("SELECT count(*) FROM pg_tables WHERE tablename = 'accounts'") == 16
    with db.connect() as conn:
        conn.execute("DROP TABLE tenant_05.users")
    (tmp_path / "rerun").mkdir()
    rerun = run_shards(db.url, mdir, targets, tmp_path / "rerun", shards=4)
    assert [r.returncode for r in rerun] == [0, 0, 0, 0]
    applied = {e["target"]: e["applied"] for r in rerun for e in r.all("target.finished")}
    assert applied[f"{db.name}:tenant_05"] == [2, 3]
    assert all(v == [] for k, v in applied.items() if not k.endswith("tenant_05"))


def test_a_failed_canary_stops_the_other_shards_before_they_apply_anything(
    db: Database, mdir: Path, tmp_path: Path
) -> None:
    """--canary 2: shard 0 migrates the first two targets first; one fails, so every other shard exits 11 and no
    other target is touched."""
    write_migrations(mdir, FILES)
    schemas = [f"tenant_{n:02d}" for n in range(12)]
    with db.connect() as conn:
        conn.execute("CREATE SCHEMA tenant_01; CREATE TABLE tenant_01.users (id int)")
    targets = tmp_path / "targets.txt"
    targets.write_text("\n".join(f"{db.name}:{s}" for s in schemas) + "\n")
    results = run_shards(db.url, mdir, targets, tmp_path, "--canary", "2", shards=3)
    assert [r.returncode for r in results] == [7, 11, 11], [r.stderr[-800:] for r in results]
    assert f"canary target {db.name}:tenant_01 failed" in results[1].finished["reason"]
    assert results[1].all("target.finished") == []
    untouched = (
        "SELECT count(*) FROM pg_tables"
        " WHERE schemaname LIKE 'tenant_%' AND schemaname NOT IN ('tenant_00', 'tenant_01')"
    )
    assert db.scalar(untouched) == 0


def test_status_over_the_fleet_and_bad_target_lines(db: Database, mdir: Path, tmp_path: Path) -> None:
    """status --targets prints one line per target with --json and --exit-code; a bad line is exit 2 naming it
    (a credential in a line is never echoed)."""
    write_migrations(mdir, FILES)
    targets = tmp_path / "targets.txt"
    targets.write_text(f"{db.name}:alpha\n{db.name}:beta\n")
    assert (
        run_cli("migrate", "--targets", str(targets), "--shard-count", "1", url=db.url, migrations=mdir).returncode == 0
    )
    write_migrations(mdir, {"004_more.sql": "ALTER TABLE accounts ADD COLUMN plan text;\n"})
    status = run_cli("status", "--targets", str(targets), "--json", "--exit-code", url=db.url, migrations=mdir)
    assert status.returncode == 9
    rows = json.loads(status.stdout)
    assert [(r["target"], r["current_version"], r["pending"]) for r in rows] == [
        (f"{db.name}:alpha", 3, [4]),
        (f"{db.name}:beta", 3, [4]),
    ]
    text = run_cli("status", "--targets", str(targets), url=db.url, migrations=mdir)
    assert f"{db.name}:beta" in text.stdout and "TARGET" in text.stdout

    targets.write_text("good_db\napp:s3cretPassword@otherhost\n")
    bad = run_cli("migrate", "--targets", str(targets), url=db.url, migrations=mdir)
    assert bad.returncode == 2
    assert "targets.txt line 2: looks like a connection string" in bad.finished["reason"]
    assert "s3cretPassword" not in bad.output
    targets.write_text("good_db\ngood_db:Bad-Schema\n")
    wrong = run_cli("migrate", "--targets", str(targets), url=db.url, migrations=mdir)
    assert wrong.returncode == 2
    assert "targets.txt line 2: 'Bad-Schema' is not a schema name" in wrong.finished["reason"]


def test_each_schema_target_has_its_own_drift_fingerprint(db: Database, mdir: Path, tmp_path: Path) -> None:
    """Schema targets: a manual change in one tenant's schema is drift there only (--on-drift fail refuses that
    target, exit 6), and a tenant's fingerprint covers its own schema, not the whole database."""
    write_migrations(mdir, FILES)
    targets = tmp_path / "targets.txt"
    targets.write_text(f"{db.name}:tenant_a\n{db.name}:tenant_b\n")
    with db.connect() as conn:
        conn.execute("CREATE SCHEMA tenant_a; CREATE SCHEMA tenant_b")
    first = run_cli("migrate", "--targets", str(targets), url=db.url, migrations=mdir)
    assert first.returncode == 0, first.stderr
    keys = [r[0] for r in db.query("SELECT json_object_keys(fingerprint) FROM tenant_a.pgsluice_history_schema")]
    assert keys and all("tenant_b" not in key for key in keys), keys

    with db.connect() as conn:
        conn.execute("ALTER TABLE tenant_b.accounts ADD COLUMN by_hand text")
    write_migrations(mdir, {"004_more.sql": "CREATE TABLE more (id int);\n"})
    second = run_cli(
        "migrate", "--targets", str(targets), url=db.url, migrations=mdir, env={"PGSLUICE_ON_DRIFT": "fail"}
    )
    outcomes = {e["target"]: e["exit_code"] for e in second.all("target.finished")}
    assert outcomes == {f"{db.name}:tenant_a": 0, f"{db.name}:tenant_b": 6}, second.stderr[-2000:]
    assert second.returncode == 6
    assert db.scalar("SELECT to_regclass('tenant_a.more') IS NOT NULL")
    assert db.scalar("SELECT to_regclass('tenant_b.more') IS NULL")
