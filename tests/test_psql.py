"""What psql runs, pgsluice runs: transaction blocks, meta-commands, variables, includes, COPY data,
comment-only files and long versions, against a real PostgreSQL (issue 10)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.cli import ROOT, cli_env, parse_events, pgsluice_cmd, run_cli, write_migrations
from tests.support.databases import Database

pytestmark = pytest.mark.integration

BLOCKS = (
    "CREATE TABLE a (x int);\n"
    "BEGIN;\nINSERT INTO a VALUES (1);\nCOMMIT;\n"
    "CREATE TABLE b (x int);\n"
    "START TRANSACTION;\nINSERT INTO b VALUES (2);\nEND;\n"
    "CREATE TABLE c (x int);\n"
)


def test_blocks_anywhere_in_a_file_run_as_one_transaction_with_the_history_row(db: Database, mdir: Path) -> None:
    """Statements, blocks, statements between them: all or nothing; the merge is logged with its lines."""
    write_migrations(mdir, {"001_blocks.sql": BLOCKS + "SELECT 1/0;\n"})
    failed = run_cli("migrate", url=db.url, migrations=mdir)
    assert failed.returncode == 7
    assert failed.finished["line"] == 10
    assert db.scalar("SELECT to_regclass('a') IS NULL AND to_regclass('b') IS NULL") is True  # the first blocks too
    (mdir / "001_blocks.sql").write_text(BLOCKS)
    ok = run_cli("migrate", url=db.url, migrations=mdir)
    assert ok.returncode == 0, ok.stderr
    merged = ok.event("migration.blocks_merged")
    assert (merged["file"], merged["blocks"]) == ("001_blocks.sql", ["lines 2-4", "lines 6-8"])
    assert db.query("SELECT (SELECT x FROM a), (SELECT x FROM b), to_regclass('c') IS NOT NULL") == [(1, 2, True)]


def test_a_new_enum_value_used_in_a_later_block_needs_the_directive(db: Database, mdir: Path) -> None:
    """ALTER TYPE … ADD VALUE then its use: 55P04 in one transaction, with a hint; with no-transaction, as psql."""
    body = (
        "CREATE TYPE mood AS ENUM ('sad');\nCREATE TABLE people (m mood);\n"
        "BEGIN;\nALTER TYPE mood ADD VALUE 'happy';\nCOMMIT;\n"
        "BEGIN;\nINSERT INTO people VALUES ('happy');\nCOMMIT;\n"
    )
    write_migrations(mdir, {"001_mood.sql": body})
    failed = run_cli("migrate", url=db.url, migrations=mdir)
    assert failed.returncode == 7
    assert failed.finished["sqlstate"] == "55P04"
    assert "'-- pgsluice: no-transaction'" in failed.finished["reason"]
    assert db.scalar("SELECT to_regtype('mood') IS NULL") is True
    (mdir / "001_mood.sql").write_text("-- pgsluice: no-transaction\n" + body)
    ok = run_cli("migrate", url=db.url, migrations=mdir)
    assert ok.returncode == 0, ok.stderr
    assert db.scalar("SELECT m::text FROM people") == "happy"
    assert db.query("SELECT status, execution FROM pgsluice_history") == [("applied", "no-transaction")]


def test_no_transaction_blocks_commit_one_by_one_and_a_failure_leaves_started(db: Database, mdir: Path) -> None:
    """With the directive a file's blocks are honoured as psql does: the first block stays committed."""
    write_migrations(
        mdir,
        {
            "001_steps.sql": (
                "-- pgsluice: no-transaction\nCREATE TABLE s (x int);\nBEGIN;\nINSERT INTO s VALUES (1);\nCOMMIT;\n"
                "BEGIN;\nINSERT INTO s VALUES (2);\nINSERT INTO nowhere VALUES (3);\nCOMMIT;\n"
            )
        },
    )
    result = run_cli("migrate", url=db.url, migrations=mdir)
    assert result.returncode == 7
    assert result.finished["line"] == 8
    assert "history row 1 stays 'started'" in result.finished["reason"]
    assert db.query("SELECT x FROM s") == [(1,)]
    assert db.history() == [(1, "steps", "started")]


def test_includes_run_in_place_and_an_escape_is_refused(db: Database, mdir: Path) -> None:
    """\\i from the folder and \\ir from the including file run where they are; ../ out of the folder is exit 6."""
    write_migrations(
        mdir,
        {
            "001_main.sql": "CREATE TABLE log (step text);\n\\i lib/first.sql\nINSERT INTO log VALUES ('main');\n",
            "lib/first.sql": "INSERT INTO log VALUES ('first');\n\\ir nested/second.sql\n",
            "lib/nested/second.sql": "INSERT INTO log VALUES ('second');\n",
        },
    )
    ok = run_cli("migrate", url=db.url, migrations=mdir)
    assert ok.returncode == 0, ok.stderr
    assert db.query("SELECT step FROM log") == [("first",), ("second",), ("main",)]
    (mdir / "lib/nested/second.sql").write_text("INSERT INTO log VALUES ('SECOND');\n")
    changed = run_cli("migrate", url=db.url, migrations=mdir)
    assert changed.returncode == 6
    assert "001_main.sql was changed after it was applied" in changed.finished["reason"]

    (mdir / "lib/nested/second.sql").write_text("INSERT INTO log VALUES ('second');\n")
    write_migrations(mdir, {"002_escape.sql": "\\i ../../etc/passwd\n"})
    escaped = run_cli("migrate", url=db.url, migrations=mdir)
    assert escaped.returncode == 6
    assert (
        "002_escape.sql line 1: \\i ../../etc/passwd: the file is outside the migrations folder"
        in (escaped.finished["reason"])
    )


def test_variables_from_flags_environment_and_set(db: Database, mdir: Path) -> None:
    """:name, :'name' and :"name" from --var, PGSLUICE_VAR_ and \\set; an undefined one stops the run; another
    value later is not a change."""
    write_migrations(
        mdir,
        {
            "001_vars.sql": (
                "\\set greeting 'hello world'\n"
                "CREATE TABLE :\"table_name\" (id int, note text DEFAULT :'greeting');\n"
                'INSERT INTO :"table_name" (id) VALUES (:start);\n'
            )
        },
    )
    missing = run_cli("migrate", url=db.url, migrations=mdir, env={"PGSLUICE_VAR_table_name": "Notes"})
    assert missing.returncode == 6
    assert "001_vars.sql line 3: variable :start is not defined" in missing.finished["reason"]
    ok = run_cli("migrate", "--var", "start=41", url=db.url, migrations=mdir, env={"PGSLUICE_VAR_table_name": "Notes"})
    assert ok.returncode == 0, ok.stderr
    assert db.query('SELECT id, note FROM "Notes"') == [(41, "hello world")]
    other = run_cli("migrate", "--var", "start=1", url=db.url, migrations=mdir, env={"PGSLUICE_VAR_table_name": "X"})
    assert other.returncode == 0, other.stderr  # per-environment values are not changes
    assert other.finished["applied"] == []


def test_meta_commands_echo_ignore_or_refuse(db: Database, mdir: Path) -> None:
    """\\echo is a log event, \\restrict and \\set ON_ERROR_STOP are ignored, \\gexec stops the run naming why."""
    write_migrations(
        mdir,
        {
            "001_meta.sql": (
                "\\restrict k3y\n\\set ON_ERROR_STOP on\n\\echo creating the table\nCREATE TABLE m (a int);\n"
                "\\unrestrict k3y\n"
            )
        },
    )
    ok = run_cli("migrate", url=db.url, migrations=mdir)
    assert ok.returncode == 0, ok.stderr
    echoed = ok.event("migration.echoed")
    assert (echoed["file"], echoed["line"], echoed["message"]) == ("001_meta.sql", 3, "creating the table")
    lint = run_cli("lint", migrations=mdir)
    assert "note: 001_meta.sql line 1: \\restrict is ignored" in lint.stdout
    write_migrations(mdir, {"002_gexec.sql": "SELECT 'CREATE TABLE g (a int)'\n\\gexec\n"})
    refused = run_cli("migrate", url=db.url, migrations=mdir)
    assert refused.returncode == 6
    assert (
        "002_gexec.sql line 2: psql meta-command \\gexec is not supported: it runs SQL built from query results"
        in (refused.finished["reason"])
    )


def test_copy_from_stdin_data_is_loaded_and_copy_to_stdout_refused(db: Database, mdir: Path) -> None:
    """pg_dump's data format: COPY … FROM stdin; rows; \\. — through COPY, in the migration's transaction."""
    write_migrations(
        mdir,
        {
            "001_data.sql": (
                "CREATE TABLE t (a int, b text);\nCOPY public.t (a, b) FROM stdin;\n1\tone; two\n2\t\\N\n\\.\n"
                'COPY t FROM STDIN WITH (FORMAT csv);\n3,"three, with a comma"\n'
            )
        },
    )
    ok = run_cli("migrate", url=db.url, migrations=mdir)
    assert ok.returncode == 0, ok.stderr
    assert db.query("SELECT a, b FROM t ORDER BY a") == [(1, "one; two"), (2, None), (3, "three, with a comma")]
    write_migrations(mdir, {"002_out.sql": "COPY t TO STDOUT;\n"})
    refused = run_cli("migrate", url=db.url, migrations=mdir)
    assert refused.returncode == 6
    assert "COPY … TO STDOUT writes output nobody reads in a migration" in refused.finished["reason"]


def test_bad_copy_data_rolls_the_whole_migration_back(db: Database, mdir: Path) -> None:
    """A row the server rejects: exit 7, the table and the rows before it are gone."""
    write_migrations(mdir, {"001_data.sql": "CREATE TABLE t (a int);\nCOPY t FROM stdin;\n1\nnot a number\n\\.\n"})
    result = run_cli("migrate", url=db.url, migrations=mdir)
    assert result.returncode == 7
    assert result.finished["sqlstate"] == "22P02"
    assert db.scalar("SELECT to_regclass('t') IS NULL") is True


def test_a_50_mib_copy_file_streams_with_bounded_memory(db: Database, mdir: Path) -> None:
    """550,000 rows inline: applied in one transaction; pgsluice's peak RSS is printed for the record and stays
    well below what holding the file several times would take."""
    path = mdir / "001_big.sql"
    rows = 550_000
    with path.open("w") as fh:
        fh.write("CREATE TABLE big (id int, payload text);\nCOPY big (id, payload) FROM stdin;\n")
        filler = "x" * 90
        for n in range(rows):
            fh.write(f"{n}\t{filler}\n")
        fh.write("\\.\n")
    size = path.stat().st_size
    assert size > 50 * 1024**2
    probe = (
        "import resource, subprocess, sys;"
        "code = subprocess.run(sys.argv[1:]).returncode;"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, code)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe, *pgsluice_cmd(), "migrate"],
        env=cli_env(db.url, mdir),
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        timeout=600,
    )
    peak_kib, code = (int(x) for x in proc.stdout.split())
    events = parse_events(proc.stderr)
    assert code == 0, proc.stderr[-2000:]
    assert db.scalar("SELECT count(*) FROM big") == rows
    print(f"\n50 MiB COPY file: {size / 1024**2:.1f} MiB, pgsluice peak RSS {peak_kib / 1024:.1f} MiB")
    assert peak_kib * 1024 < 2.5 * size  # the file once, plus the interpreter: never held twice over
    assert events[-1]["applied"] == [1]


def test_comment_only_files_are_recorded_as_deliberate_no_ops(db: Database, mdir: Path) -> None:
    """A file of comments only is applied as nothing, recorded as such, and status says so."""
    write_migrations(
        mdir, {"001_users.sql": "CREATE TABLE users (id int);\n", "002_noop.sql": "-- index already exists\n"}
    )
    result = run_cli("migrate", url=db.url, migrations=mdir)
    assert result.returncode == 0, result.stderr
    assert db.query("SELECT version, execution FROM pgsluice_history ORDER BY version") == [
        (1, "transaction"),
        (2, "comments only"),
    ]
    status = json.loads(run_cli("status", "--json", url=db.url, migrations=mdir).stdout)
    assert status["migrations"][1]["execution"] == "comments only"
    text = run_cli("status", url=db.url, migrations=mdir).stdout
    assert "comments only" in text


def test_long_versions_and_a_history_table_of_the_previous_release(db: Database, mdir: Path) -> None:
    """The previous release's history is upgraded in place, once: new columns at the first write, and version
    widened from bigint when a 38-digit version comes."""
    with db.connect() as conn:  # the previous release's table, with one row
        conn.execute(
            "CREATE TABLE public.pgsluice_history (version bigint PRIMARY KEY, name text NOT NULL,"
            " checksum text NOT NULL, file_sha256 text, status text NOT NULL CHECK (status IN ('applied', 'started')),"
            " execution text NOT NULL, started_at timestamptz NOT NULL DEFAULT clock_timestamp(),"
            " applied_at timestamptz, duration_seconds double precision,"
            " applied_by text NOT NULL DEFAULT session_user, hostname text, pgsluice_version text)"
        )
    write_migrations(mdir, {"001_users.sql": "CREATE TABLE users (id int);\n"})
    first = run_cli("migrate", url=db.url, migrations=mdir)
    assert first.returncode == 0, first.stderr
    assert [e["change"] for e in first.all("history.upgraded")] == ["down_sql text", "down_checksum text"]
    huge = 12345678901234567890123456789012345678
    write_migrations(mdir, {f"{huge}_later.sql": "CREATE TABLE later (id int);\n"})
    second = run_cli("migrate", url=db.url, migrations=mdir)
    assert second.returncode == 0, second.stderr
    assert [e["change"] for e in second.all("history.upgraded")] == ["version: bigint -> numeric"]
    assert db.query("SELECT version::text FROM pgsluice_history ORDER BY pgsluice_history.version") == [
        ("1",),
        (str(huge),),
    ]
    status = json.loads(run_cli("status", "--json", url=db.url, migrations=mdir).stdout)
    assert status["current_version"] == huge
    assert run_cli("migrate", url=db.url, migrations=mdir).finished["applied"] == []
