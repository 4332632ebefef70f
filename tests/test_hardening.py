"""Regression tests for the defects an adversarial review and a newcomer's first hour found (issue 8).

One test per numbered item (h01 … h16), each against a real PostgreSQL and the real CLI in its
own process, each asserting exit code, message and database state.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from pgsluice.redact import Redactor
from tests.support.cli import ROOT, Result, assert_no_secret, run_cli, write_migrations
from tests.support.databases import Database
from tests.support.pgserver import PASSWORD, SUPERUSER

pytestmark = pytest.mark.integration

USERS = "CREATE TABLE users (id bigserial PRIMARY KEY, email text NOT NULL);\n"
HALF = "CREATE TABLE half_before (system_user int);\nCOMMIT;\nCREATE TABLE half_after (x int);\nSELECT 1/0;\n"


def no_password(url: str) -> str:
    """The test server's URL without its password."""
    return url.replace(f":{PASSWORD}@", "@")


def recording_pg_dump(folder: Path) -> tuple[Path, Path]:
    """A pg_dump that writes its argv and environment to a file, then runs the real one."""
    real = shutil.which("pg_dump")
    assert real is not None
    record = folder / "pg_dump.calls"
    wrapper = folder / "pg_dump"
    wrapper.write_text(
        f'#!/bin/sh\n{{ echo "--- argv"; printf "%s\\n" "$@"; echo "--- env"; env; }} >> "{record}"\n'
        f'exec "{real}" "$@"\n'
    )
    wrapper.chmod(0o755)
    return wrapper, record


def argv_of_calls(record: Path) -> str:
    """Only the argv parts of every recorded call."""
    text = record.read_text()
    return "\n".join(part.split("--- env")[0] for part in text.split("--- argv"))


def make_role(db: Database, *, create_on_public: bool = False) -> str:
    """A login role of this test without CREATE on the database; its URL."""
    role = f"r_{db.name}"
    with db.connect() as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'rolepw-{db.name}'")
        if create_on_public:
            conn.execute(f"GRANT CREATE ON SCHEMA public TO {role}")
    return db.url.replace(f"{SUPERUSER}:{PASSWORD}", f"{role}:rolepw-{db.name}")


# --- Data and correctness ------------------------------------------------------------------------


def test_h01_unparseable_file_with_transaction_control_stops_before_anything_runs(db: Database, mdir: Path) -> None:
    """A file pglast cannot parse with a COMMIT inside: exit 6 naming the line, nothing half-applied; lint errs."""
    write_migrations(mdir, {"001_users.sql": USERS, "002_half.sql": HALF})
    result = run_cli("migrate", url=db.url, migrations=mdir)
    assert result.returncode == 6, result.stderr
    assert "002_half.sql line 2: COMMIT without a BEGIN" in result.finished["reason"]
    assert db.scalar("SELECT to_regclass('half_before') IS NULL") is True
    assert db.scalar("SELECT to_regclass('users') IS NULL") is True
    lint = run_cli("lint", migrations=mdir)
    assert lint.returncode == 6
    assert "error: 002_half.sql line 2: COMMIT without a BEGIN" in lint.stdout
    assert "error: 002_half.sql line 1: pgsluice's parser cannot parse it" in lint.stdout

    (mdir / "002_half.sql").write_text(
        "BEGIN;\nCREATE TABLE a (system_user int);\nCREATE TABLE b (x int);\nSELECT 1/0;\nCOMMIT;\n"
    )
    atomic = run_cli("migrate", url=db.url, migrations=mdir)
    assert atomic.returncode == 7, atomic.stderr
    assert atomic.finished["reason"].startswith("migration 002_half.sql failed in the statement at line 4")
    assert db.scalar("SELECT to_regclass('a') IS NULL AND to_regclass('b') IS NULL") is True
    assert db.history() == [(1, "users", "applied")]


def test_h02_child_tools_connect_as_pgsluice_did(db: Database, mdir: Path, tmp_path: Path) -> None:
    """PGPASSWORD, PGPASSFILE and PGSERVICE reach pg_dump and pg_restore; no password in their argv."""
    wrapper, record = recording_pg_dump(tmp_path)
    backups = tmp_path / "bk"
    url = no_password(db.url)
    port = url.split(":")[2].split("/")[0]
    passfile = tmp_path / "pgpass"
    passfile.write_text(f"127.0.0.1:{port}:*:{SUPERUSER}:{PASSWORD}\n")
    passfile.chmod(0o600)
    services = tmp_path / "services.conf"
    services.write_text(
        f"[app]\nhost=127.0.0.1\nport={port}\ndbname={db.name}\nuser={SUPERUSER}\npassword={PASSWORD}\n"
    )
    ways = [
        ("PGPASSWORD", url, {"PGPASSWORD": PASSWORD}),
        ("PGPASSFILE", url, {"PGPASSFILE": str(passfile)}),
        ("PGSERVICE", None, {"PGSERVICEFILE": str(services), "PGSERVICE": "app"}),
    ]
    for number, (way, given, env) in enumerate(ways, start=1):
        write_migrations(mdir, {f"{number:03d}_t{number}.sql": f"CREATE TABLE t{number} (a int);\n"})
        args = ("migrate", "--backup-url", f"file://{backups}", "--pg-dump", str(wrapper), "--require-backup")
        result = run_cli(*args, url=given, migrations=mdir, env=env)
        assert result.returncode == 0, (way, result.stderr)
        assert result.finished["backup"]["bytes"] > 0, way
    argv = argv_of_calls(record)
    assert argv.count("--format=custom") == 3
    assert_no_secret(argv)

    backup_id = result.finished["backup"]["id"]
    target = f"{db.name}_restored"
    with db.server.admin() as conn:
        conn.execute(f'CREATE DATABASE "{target}"')
    try:
        restored = run_cli(
            "restore",
            backup_id,
            "--backup-url",
            f"file://{backups}",
            env={"PGPASSWORD": PASSWORD, "PGSLUICE_RESTORE_DATABASE_URL": no_password(db.server.url(target))},
        )
        assert restored.returncode == 0, restored.stderr
        with psycopg.connect(db.server.url(target)) as conn:
            # the backup shows the database just before 003 was applied
            assert conn.execute("SELECT to_regclass('t2') IS NOT NULL, to_regclass('t3') IS NULL").fetchone() == (
                True,
                True,
            )
    finally:
        with db.server.admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{target}" WITH (FORCE)')


def test_h03_a_migration_that_drops_the_history_table_gets_a_code_and_the_way_back(db: Database, mdir: Path) -> None:
    """Static DROP of the history: exit 6 before anything runs; a dynamic one in a no-transaction file: exit 6
    naming what happened and 'pgsluice baseline', which then recovers."""
    write_migrations(mdir, {"001_users.sql": USERS, "002_drop.sql": "DROP TABLE pgsluice_history;\n"})
    static = run_cli("migrate", url=db.url, migrations=mdir)
    assert static.returncode == 6
    assert "002_drop.sql line 1: drops pgsluice's history table public.pgsluice_history" in static.finished["reason"]
    assert db.scalar("SELECT to_regclass('users') IS NULL") is True

    (mdir / "002_drop.sql").write_text(
        "-- pgsluice: no-transaction\nDO $$ BEGIN EXECUTE 'DROP TABLE public.pgsluice_history'; END $$;\n"
    )
    dynamic = run_cli("migrate", url=db.url, migrations=mdir)
    assert dynamic.returncode == 6, dynamic.stderr
    assert (
        "pgsluice's history table public.pgsluice_history is gone or changed after it ran 002_drop.sql"
        in (dynamic.finished["reason"])
    )
    assert "pgsluice baseline 2" in dynamic.finished["reason"]
    assert "Traceback" not in dynamic.stderr
    assert run_cli("baseline", "2", url=db.url, migrations=mdir).returncode == 0
    assert db.history() == [(1, "users", "applied"), (2, "drop", "applied")]
    assert run_cli("migrate", url=db.url, migrations=mdir).returncode == 0


def test_h04_fifo_and_escaping_symlink_are_refused_and_a_configmap_layout_works(
    db: Database, mdir: Path, tmp_path: Path
) -> None:
    """A FIFO named like a migration does not hang the run; a symlink out of the folder is refused; links that
    stay inside (a Kubernetes ConfigMap volume) are followed."""
    write_migrations(mdir, {"001_users.sql": USERS})
    os.mkfifo(mdir / "002_pipe.sql")
    fifo = run_cli("migrate", url=db.url, migrations=mdir, timeout=60)
    assert fifo.returncode == 6
    assert "002_pipe.sql: is a FIFO (named pipe), not a regular file" in fifo.finished["reason"]
    (mdir / "002_pipe.sql").unlink()

    outside = tmp_path / "outside.sql"
    outside.write_text("CREATE TABLE evil (a int);\n")
    (mdir / "002_link.sql").symlink_to(outside)
    escaped = run_cli("migrate", url=db.url, migrations=mdir)
    assert escaped.returncode == 6
    assert f"002_link.sql: a symbolic link to {outside}, outside the migrations folder" in escaped.finished["reason"]
    assert db.scalar("SELECT to_regclass('evil') IS NULL AND to_regclass('users') IS NULL") is True

    mounted = tmp_path / "configmap"
    data = mounted / "..2026_12_01_10_00_00.1"
    write_migrations(data, {"001_users.sql": USERS})
    (mounted / "..data").symlink_to(data.name)
    (mounted / "001_users.sql").symlink_to("..data/001_users.sql")
    ok = run_cli("migrate", url=db.url, migrations=mounted)
    assert ok.returncode == 0, ok.stderr
    assert db.history() == [(1, "users", "applied")]


def test_h05_a_file_over_the_size_limit_fails_cleanly(db: Database, mdir: Path) -> None:
    """A file larger than --max-file-size: exit 6 naming it and its size, nothing applied, nothing read whole."""
    write_migrations(mdir, {"001_users.sql": USERS, "002_big.sql": "-- " + "x" * (2 * 1024 * 1024) + "\nSELECT 1;\n"})
    result = run_cli("migrate", "--max-file-size", "1MiB", url=db.url, migrations=mdir)
    assert result.returncode == 6
    assert "002_big.sql: is 2.0 MiB, over the limit of 1.0 MiB (--max-file-size)" in result.finished["reason"]
    assert db.scalar("SELECT to_regclass('users') IS NULL") is True
    inserts = "CREATE TABLE rows (a int);\n" + "".join(f"INSERT INTO rows VALUES ({n});\n" for n in range(2000))
    write_migrations(mdir, {"002_big.sql": inserts})
    many = run_cli("migrate", "--max-statements", "1000", url=db.url, migrations=mdir)
    assert many.returncode == 6
    assert "002_big.sql line 1001: more than 1000 statements in the file (--max-statements)" in many.finished["reason"]
    assert "COPY … FROM STDIN" in many.finished["reason"]
    assert db.scalar("SELECT to_regclass('users') IS NULL AND to_regclass('rows') IS NULL") is True


def test_h06_long_versions_apply_and_are_shown_as_written(db: Database, mdir: Path) -> None:
    """25- and 20-digit versions, transactional and not, apply; status shows them exactly."""
    big, bigger = 20191100000001000000, 1234567890123456789012345
    write_migrations(
        mdir,
        {
            f"{big}_identities.sql": "CREATE TABLE identities (a int);\n",
            f"{bigger}_idx.sql": "-- pgsluice: no-transaction\nCREATE INDEX CONCURRENTLY ix ON identities (a);\n",
        },
    )
    assert run_cli("lint", migrations=mdir).returncode == 0
    result = run_cli("migrate", url=db.url, migrations=mdir)
    assert result.returncode == 0, result.stderr
    assert result.finished["applied"] == [big, bigger]
    status = json.loads(run_cli("status", "--json", url=db.url, migrations=mdir).stdout)
    assert [m["version"] for m in status["migrations"]] == [big, bigger]
    assert db.query("SELECT version::text FROM pgsluice_history ORDER BY pgsluice_history.version") == [
        (str(big),),
        (str(bigger),),
    ]


# --- Secrets -------------------------------------------------------------------------------------


def test_h07_an_unencoded_at_in_a_password_is_refused_at_once_and_never_shown(tmp_path: Path) -> None:
    """The URL is exit 2 at once, with the hint to percent-encode; no fragment of the password anywhere."""
    term = tmp_path / "term"
    url = "postgresql://u:Sup3r@cretPw!42@127.0.0.1/db"
    result = run_cli("migrate", "--termination-log", str(term), url=url, migrations=tmp_path)
    assert result.returncode == 2
    assert "%40" in result.finished["reason"]
    assert "wait.retry_scheduled" not in result.names()
    for text in (result.output, term.read_text()):
        assert "cretPw" not in text
        assert "Sup3r" not in text
    assert Redactor()(f"failed to connect to {url}") == "failed to connect to postgresql://u:***@127.0.0.1/db"


def test_h08_restore_target_from_the_environment_or_a_file_and_a_warning_for_a_flag(
    db: Database, mdir: Path, tmp_path: Path
) -> None:
    """PGSLUICE_RESTORE_DATABASE_URL and its _FILE variant work; a password on the command line is warned about."""
    write_migrations(mdir, {"001_users.sql": USERS})
    backups = f"file://{tmp_path}/bk"
    taken = run_cli("migrate", "--backup-url", backups, url=db.url, migrations=mdir)
    assert taken.returncode == 0, taken.stderr
    backup_id = taken.finished["backup"]["id"]
    target = f"{db.name}_r"
    with db.server.admin() as conn:
        conn.execute(f'CREATE DATABASE "{target}"')
    try:
        target_url = db.server.url(target)
        via_env = run_cli(
            "restore", backup_id, "--backup-url", backups, env={"PGSLUICE_RESTORE_DATABASE_URL": target_url}
        )
        assert via_env.returncode == 0, via_env.stderr
        url_file = tmp_path / "target-url"
        url_file.write_text(target_url + "\n")
        via_file = run_cli(
            "restore",
            backup_id,
            "--clean",
            "--backup-url",
            backups,
            env={"PGSLUICE_RESTORE_DATABASE_URL_FILE": str(url_file)},
        )
        assert via_file.returncode == 0, via_file.stderr
        via_flag = run_cli("restore", backup_id, "--clean", "--backup-url", backups, "--target-database", target_url)
        assert via_flag.returncode == 0, via_flag.stderr
        warning = via_flag.event("config.warning")["warning"]
        assert warning.startswith("--target-database carries a password")
        assert "PGSLUICE_RESTORE_DATABASE_URL_FILE" in warning
        assert_no_secret(via_env.output, via_file.output, via_flag.output)
        none = run_cli("restore", backup_id, "--backup-url", backups)
        assert none.returncode == 2
        assert "PGSLUICE_RESTORE_DATABASE_URL" in none.finished["reason"]
    finally:
        with db.server.admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{target}" WITH (FORCE)')


def test_h09_credential_parameters_never_reach_a_child_argv(db: Database, mdir: Path, tmp_path: Path) -> None:
    """sslpassword (and the password) in the URL: pg_dump gets them from its environment or a service file."""
    wrapper, record = recording_pg_dump(tmp_path)
    write_migrations(mdir, {"001_users.sql": USERS})
    url = f"{db.url}?sslpassword=Xy9sslPwd77&application_name=probe"
    result = run_cli(
        "migrate", "--backup-url", f"file://{tmp_path}/bk", "--pg-dump", str(wrapper), url=url, migrations=mdir
    )
    assert result.returncode == 0, result.stderr
    argv = argv_of_calls(record)
    assert "--format=custom" in argv
    assert "Xy9sslPwd77" not in argv
    assert_no_secret(argv, result.output)
    assert "Xy9sslPwd77" not in result.output
    assert "PGSERVICEFILE=" in record.read_text()  # the credential travelled in a private service file
    assert not list(Path(os.environ.get("TMPDIR", "/tmp")).glob("pgsluice-*/pg_service.conf"))  # and it is gone


def test_h10_query_strings_in_the_backup_url_are_refused_and_never_shown(tmp_path: Path) -> None:
    """Presigned S3 signatures and Azure SAS tokens: exit 2 at once, the signature nowhere in the output."""
    for url, secret in (
        ("s3://bucket/p?X-Amz-Signature=abcd1234sigvalue&X-Amz-Credential=AKIAEXAMPLE", "abcd1234sigvalue"),
        ("az://container/p?sv=2024-01-01&sig=SASsecretValue99", "SASsecretValue99"),
    ):
        result = run_cli("migrate", "--backup-url", url, url="postgresql://u@127.0.0.1:1/db", migrations=tmp_path)
        assert result.returncode == 2
        assert "query string" in result.finished["reason"]
        assert secret not in result.output
    redact = Redactor()
    assert redact("GET https://b.s3/x?X-Amz-Signature=abc123&X-Amz-Date=1") == (
        "GET https://b.s3/x?X-Amz-Signature=***&X-Amz-Date=1"
    )
    assert redact("https://a.blob/c?sv=1&sig=ZZZ%2Fabc") == "https://a.blob/c?sv=1&sig=***"
    assert (
        redact("host=db sslpassword=k3y oauth_client_secret=s3c") == "host=db sslpassword=*** oauth_client_secret=***"
    )


# --- Exit codes and messages ---------------------------------------------------------------------


def test_h11_every_failure_writes_the_termination_message(db: Database, mdir: Path, tmp_path: Path) -> None:
    """A bad setting, an unknown flag and pending migrations (status --exit-code) all write it."""
    term = tmp_path / "term"
    bad = run_cli("migrate", "--wait-timeout", "soon", "--termination-log", str(term), migrations=mdir)
    assert bad.returncode == 2
    assert term.read_text().startswith("PGSLUICE_WAIT_TIMEOUT") or term.read_text().startswith("--wait-timeout")
    term.unlink()
    unknown = run_cli("migrate", "--no-such-flag", env={"PGSLUICE_TERMINATION_LOG": str(term)})
    assert unknown.returncode == 2
    assert "unrecognized arguments: --no-such-flag" in term.read_text()
    term.unlink()
    write_migrations(mdir, {"001_users.sql": USERS})
    pending = run_cli("status", "--exit-code", "--termination-log", str(term), url=db.url, migrations=mdir)
    assert pending.returncode == 9
    assert term.read_text() == "1 migration(s) pending: versions [1]\n"


def test_h12a_permission_problems_on_the_history_schema_are_exit_4(db: Database, mdir: Path) -> None:
    """A role that may not create the history's schema: exit 4 with the GRANT to give, not a traceback."""
    url = make_role(db)
    write_migrations(mdir, {"001_users.sql": USERS})
    result = run_cli("migrate", url=url, migrations=mdir, env={"PGSLUICE_HISTORY_TABLE": "ops.history"})
    assert result.returncode == 4, result.stderr
    assert "permission denied while creating the history table ops.history" in result.finished["reason"]
    assert "grant the migration role USAGE and CREATE on schema ops" in result.finished["reason"]


def test_h12b_a_history_table_of_another_shape_is_exit_6(db: Database, mdir: Path) -> None:
    """A table with the history's name but not its columns: exit 6 saying so and what to do."""
    with db.connect() as conn:
        conn.execute("CREATE TABLE pgsluice_history (id int)")
    write_migrations(mdir, {"001_users.sql": USERS})
    result = run_cli("migrate", url=db.url, migrations=mdir)
    assert result.returncode == 6
    assert result.finished["reason"].startswith("public.pgsluice_history exists but is not pgsluice's history table")
    assert "--history-table" in result.finished["reason"]


def test_h12c_restore_target_refused_or_unreachable_has_codes_4_and_3(db: Database, mdir: Path, tmp_path: Path) -> None:
    """Wrong password and missing database: 4; nothing listening: 3 — never a traceback."""
    write_migrations(mdir, {"001_users.sql": USERS})
    backups = f"file://{tmp_path}/bk"
    taken = run_cli("migrate", "--backup-url", backups, url=db.url, migrations=mdir)
    backup_id = taken.finished["backup"]["id"]
    cases = [
        (db.server.url("postgres").replace(PASSWORD, "Wr0ngPw99"), 4),
        (db.server.url("no_such_database"), 4),
        ("postgresql://u:x@127.0.0.1:9/db", 3),
    ]
    for target, code in cases:
        result = run_cli("restore", backup_id, "--backup-url", backups, env={"PGSLUICE_RESTORE_DATABASE_URL": target})
        assert result.returncode == code, (target, result.stderr)
        assert "Traceback" not in result.stderr
        assert "Wr0ngPw99" not in result.output


def test_h12d_baseline_by_a_role_without_create_on_the_database(db: Database, mdir: Path) -> None:
    """The history's schema exists: a role that may create tables in it, but not schemas, can baseline."""
    url = make_role(db, create_on_public=True)
    write_migrations(mdir, {"001_users.sql": USERS})
    result = run_cli("baseline", "1", url=url, migrations=mdir)
    assert result.returncode == 0, result.stderr
    assert db.history() == [(1, "users", "applied")]


def test_h12e_usage_errors_found_before_anything_connects(tmp_path: Path, mdir: Path) -> None:
    """A 500-character name, a non-UTF-8 secret file, an empty URL file, a bad port, a compression level of 50:
    exit 2 each, at start, naming what is wrong."""
    long_name = run_cli("new", "x" * 500, migrations=mdir)
    assert long_name.returncode == 2
    assert "a file name must stay under 255 bytes" in long_name.finished["reason"]
    binary = tmp_path / "pw"
    binary.write_bytes(b"\xff\xfe\x00secret")
    not_utf8 = run_cli("status", url="postgresql://u@127.0.0.1:1/db", env={"PGPASSWORD_FILE": str(binary)})
    assert not_utf8.returncode == 2
    assert "is not UTF-8 text" in not_utf8.finished["reason"]
    empty = tmp_path / "url"
    empty.write_text("\n")
    empty_file = run_cli("status", env={"DATABASE_URL_FILE": str(empty)}, migrations=mdir)
    assert empty_file.returncode == 2
    assert "DATABASE_URL_FILE" in empty_file.finished["reason"] and "is empty" in empty_file.finished["reason"]
    for url in ("postgresql://u:pw@127.0.0.1:99999/db", "postgresql://u:pw@127.0.0.1:http/db"):
        bad_port = run_cli("migrate", url=url, migrations=mdir)
        assert bad_port.returncode == 2, url
        assert "the port is not a number from 1 to 65535" in bad_port.finished["reason"]
        assert "wait.retry_scheduled" not in bad_port.names()
    pgport = run_cli("status", env={"PGPORT": "abc", "PGHOST": "127.0.0.1"}, migrations=mdir)
    assert pgport.returncode == 2
    assert pgport.finished["reason"].startswith("PGPORT: the port is not a number")
    level = run_cli(
        "migrate", "--backup-url", f"file://{tmp_path}/bk", "--backup-compression-level", "50", migrations=mdir
    )
    assert level.returncode == 2
    assert "--backup-compression-level" in level.finished["reason"]
    assert "db.connected" not in level.names()


def test_h12f_malformed_urls_say_what_is_wrong_without_the_value(mdir: Path) -> None:
    """Scheme, bracket, percent-encoding, port: each named, the password never echoed."""
    cases = {
        "mysql://app:pw1xyz@db/app": "is not postgresql:// or postgres://",
        "postgresql://app:pw1xyz@[::1/app": "opens '[' without the closing ']'",
        "postgresql://app:p%zzw1xyz@db/app": "a '%' that does not start a %XX escape",
        "postgresql://app:pw1xyz@db:port/app": "the port is not a number",
        "host=db password=pw1xyz bogus": "libpq cannot parse this conninfo string",
    }
    for url, words in cases.items():
        result = run_cli("status", url=url, migrations=mdir)
        assert result.returncode == 2, url
        assert words in result.finished["reason"], (url, result.finished["reason"])
        assert "pw1xyz" not in result.output


def test_h13_the_report_says_the_version_reached_and_people_never_read_none(db: Database, mdir: Path) -> None:
    """1 to 6 applied and 7 failed: run.finished says 6; status on an empty database says 'none', not None."""
    empty = run_cli("status", url=db.url, migrations=mdir)
    assert "current version: none;" in empty.stdout
    assert "None" not in empty.stdout
    files = {f"{n:03d}_t{n}.sql": f"CREATE TABLE t{n} (a int);\n" for n in range(1, 7)}
    files["007_bad.sql"] = "SELECT 1/0;\n"
    write_migrations(mdir, files)
    result = run_cli("migrate", url=db.url, migrations=mdir)
    assert result.returncode == 7
    assert (result.finished["applied"], result.finished["current_version"]) == ([1, 2, 3, 4, 5, 6], 6)


def test_h13_lock_holder_hidden_from_this_role_is_not_called_a_local_socket(db: Database, mdir: Path) -> None:
    """A role without pg_read_all_stats cannot see the holder's address: the message says so."""
    url = make_role(db, create_on_public=True)
    write_migrations(mdir, {"001_users.sql": USERS})
    from pgsluice.config import load_config

    with psycopg.connect(db.url, autocommit=True, application_name="holder") as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (load_config({}, {}).lock_key,))
        result = run_cli("migrate", "--lock-timeout", "1s", url=url, migrations=mdir)
    assert result.returncode == 5
    assert result.event("lock.waiting")["holder_client_addr"] is None
    assert "hidden from this role" in result.finished["reason"]
    assert "local socket" not in result.finished["reason"]


# --- The newcomer's first hour -------------------------------------------------------------------


def test_h14_the_suite_without_a_docker_engine_skips_cleanly(tmp_path: Path) -> None:
    """With no daemon, a test needing Docker skips and pytest exits 0 (no leaked socket under -W error)."""
    probe = tmp_path / "test_probe.py"
    probe.write_text("from typing import Any\n\n\ndef test_probe(docker_client: Any) -> None:\n    pass\n")
    env = {**os.environ, "DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock"}
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error"),
            *("-p", "tests.e2e.conftest", "--rootdir", str(tmp_path), "-c", os.devnull, str(probe)),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 skipped" in proc.stdout


def test_h15_dev_db_gives_a_database_to_try_and_the_examples_look_like_a_project() -> None:
    """scripts/dev-db start prints a DATABASE_URL that works; stop removes the server; examples have no
    headers copied from a document."""
    started = subprocess.run(
        ["bash", "scripts/dev-db", "start"], cwd=ROOT, capture_output=True, text=True, check=False, timeout=120
    )
    try:
        assert started.returncode == 0, started.stderr
        line = next(x for x in started.stdout.splitlines() if x.startswith("export DATABASE_URL="))
        url = line.split("=", 1)[1].strip("'\"")
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        status = run_cli("status", url=url, migrations=ROOT / "migrations")
        assert status.returncode == 0, status.stderr
    finally:
        stopped = subprocess.run(
            ["bash", "scripts/dev-db", "stop"], cwd=ROOT, capture_output=True, text=True, check=False, timeout=120
        )
    assert stopped.returncode == 0, stopped.stderr
    for path in (ROOT / "migrations").glob("*.sql"):
        text = path.read_text()
        assert "Author:" not in text and "File: database/" not in text, path.name
    readme = (ROOT / "README.md").read_text()
    assert "scripts/dev-db" in readme
    assert 'PATH="$PWD/.venv/bin:$PATH"' in readme


def test_h16_lint_reports_a_syntax_error_as_an_error_unless_the_file_accepts_it(mdir: Path) -> None:
    """SQL the parser refuses is an error in lint, with the directive that accepts newer syntax named."""
    write_migrations(mdir, {"001_typo.sql": "CREATE TABLE a (x int);\nSELEC 1;\n"})
    lint: Result = run_cli("lint", migrations=mdir)
    assert lint.returncode == 6
    assert "error: 001_typo.sql line 2: pgsluice's parser cannot parse it" in lint.stdout
    assert "-- pgsluice: allow unparsed-syntax -- <reason>" in lint.stdout
    (mdir / "001_typo.sql").write_text(
        "-- pgsluice: allow unparsed-syntax -- PostgreSQL 15 still takes system_user as a name\n"
        "CREATE TABLE a (system_user int);\n"
    )
    accepted = run_cli("lint", migrations=mdir)
    assert accepted.returncode == 0, accepted.stdout
    assert "warning: 001_typo.sql line 2: pgsluice's parser cannot parse it" in accepted.stdout
