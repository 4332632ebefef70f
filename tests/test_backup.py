"""Backups against real servers on loopback: PostgreSQL, moto's S3 server, a local folder. No mocks."""

from __future__ import annotations

import http.client
import http.server
import json
import secrets
import signal
import socketserver
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import Result, assert_no_secret, finished, poll, run_cli, start, write_migrations
from tests.support.databases import Database, new_database
from tests.support.pgserver import free_port
from tests.support.s3server import SECRET_KEY

pytestmark = pytest.mark.integration

SCHEMA = {
    "001_users.sql": (
        "CREATE TABLE users (id bigserial PRIMARY KEY, email text NOT NULL UNIQUE, meta jsonb);\n"
        "INSERT INTO users (email, meta) SELECT 'u' || g || '@x', jsonb_build_object('n', g)"
        " FROM generate_series(1, 2000) g;\n"
        "CREATE VIEW active_users AS SELECT * FROM users WHERE id % 2 = 0;\n"
        "CREATE FUNCTION bump(i int) RETURNS int LANGUAGE sql AS $$ SELECT i + 1 $$;\n"
    ),
}


@dataclass
class Backend:
    """One backup target: its URL, the environment that reaches it, and how the test lists it."""

    name: str
    url: str
    env: dict[str, str]
    keys: Callable[[], list[str]]  # every object under the prefix, relative to it
    secret: str | None = None  # the credential in env, which must never be printed


@pytest.fixture(params=["file", "s3", "az"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """The shared contract runs on a local folder, moto's S3 server and Azurite's blob service."""
    name = f"b-{secrets.token_hex(4)}"  # a bucket or container of its own
    if request.param == "file":
        root = tmp_path / "backups"
        yield Backend(
            "file",
            f"file://{root}",
            {},
            lambda: sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()),
        )
    elif request.param == "s3":
        s3 = request.getfixturevalue("s3_server")
        s3.client().create_bucket(Bucket=name)

        def s3_keys() -> list[str]:
            listing = s3.client().list_objects_v2(Bucket=name)
            return sorted(o["Key"].removeprefix("pgsluice/") for o in listing.get("Contents", []))

        yield Backend("s3", f"s3://{name}/pgsluice", s3.env(), s3_keys, SECRET_KEY)
    else:
        az = request.getfixturevalue("az_server")
        az.client().create_container(name)

        def az_keys() -> list[str]:
            blobs = az.client().get_container_client(name).list_blobs()
            return sorted(b.name.removeprefix("pgsluice/") for b in blobs)

        yield Backend("az", f"az://{name}/pgsluice", az.env(), az_keys, az.env()["AZURE_STORAGE_ACCOUNT_KEY"])


def fingerprint(db_url: str) -> tuple[str, dict[str, Any]]:
    """The schema as pg_dump prints it, and a checksum of every table's rows."""
    schema = subprocess.run(
        ["pg_dump", "--schema-only", "--no-owner", "--exclude-table=pgsluice_history", db_url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    schema = "\n".join(
        line for line in schema.splitlines() if not line.startswith(("--", "\\restrict", "\\unrestrict"))
    )
    import psycopg

    rows: dict[str, Any] = {}
    with psycopg.connect(db_url, autocommit=True) as conn:
        tables = conn.execute(
            "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables"
            " WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1"
        ).fetchall()
        for (table,) in tables:
            rows[table] = conn.execute(
                f"SELECT count(*), md5(coalesce(string_agg(t::text, ',' ORDER BY t::text), '')) FROM {table} t"
            ).fetchone()
    return schema, rows


def test_contract_backup_list_restore_round_trip(db: Database, mdir: Path, backend: Backend) -> None:
    """migrate takes a verified backup with its manifest; backups lists it; restore rebuilds an equal database."""
    write_migrations(mdir, SCHEMA)
    assert run_cli("migrate", url=db.url, migrations=mdir).returncode == 0
    write_migrations(mdir, {"002_more.sql": "ALTER TABLE users ADD COLUMN nick text;\n"})
    before = fingerprint(db.url)

    result = run_cli("migrate", "--backup-url", backend.url, url=db.url, migrations=mdir, env=backend.env)
    assert result.returncode == 0, result.stderr
    backup = result.finished["backup"]
    assert backup["verified"] is True
    assert backup["id"].startswith(f"{db.name}/") and backup["id"].endswith("_1-to-2")
    assert result.names().index("backup.completed") < result.names().index("migration.applying")

    stem = backup["id"]
    assert backend.keys() == [f"{stem}.dump", f"{stem}.manifest.json"]
    listed = run_cli("backups", "--json", "--backup-url", backend.url, url=db.url, env=backend.env)
    assert listed.returncode == 0, listed.stderr
    (entry,) = json.loads(listed.stdout)
    assert (entry["id"], entry["from_version"], entry["to_version"], entry["size"]) == (stem, 1, 2, backup["bytes"])
    table = run_cli("backups", "--backup-url", backend.url, url=db.url, env=backend.env)
    assert table.returncode == 0, table.stderr
    assert f"{stem} " in table.stdout and " 1 -> 2" in table.stdout

    with new_database(db.server, "r") as target:

        def restore(backup_id: str, *extra: str) -> Result:
            return run_cli(
                "restore",
                backup_id,
                *extra,
                "--target-database",
                target.url,
                "--backup-url",
                backend.url,
                url=db.url,
                env=backend.env,
            )

        restored = restore(stem)
        assert restored.returncode == 0, restored.stderr
        assert fingerprint(target.url) == before

        refused = restore(stem)
        assert refused.returncode == 2
        assert "is not empty" in refused.finished["reason"]
        again = restore(stem.rsplit("/", 1)[-1], "--clean")
        assert again.returncode == 0, again.stderr
        assert fingerprint(target.url) == before

    printed = [r.stdout + r.stderr for r in (result, listed, restored, refused, again)]
    assert_no_secret(*printed)
    assert backend.secret is None or not any(backend.secret in text for text in printed)


def test_nothing_pending_takes_no_backup(db: Database, mdir: Path, tmp_path: Path) -> None:
    """A pod restart with a current schema must not dump the database."""
    write_migrations(mdir, SCHEMA)
    url = f"file://{tmp_path}/bk"
    assert run_cli("migrate", "--backup-url", url, url=db.url, migrations=mdir).returncode == 0
    again = run_cli("migrate", "--backup-url", url, url=db.url, migrations=mdir)
    assert again.returncode == 0
    assert "backup.started" not in again.names()
    assert again.finished["backup"] is None
    assert len(list((tmp_path / "bk").rglob("*.dump"))) == 1


def test_pg_dump_killed_mid_run_exits_8_and_applies_nothing(db: Database, mdir: Path, tmp_path: Path) -> None:
    """pg_dump's connection terminated: exit 8 with pg_dump's message, no manifest, nothing applied, lock free."""
    write_migrations(mdir, {**SCHEMA, "002_more.sql": "ALTER TABLE users ADD COLUMN nick text;\n"})
    with db.connect() as conn:
        conn.execute("CREATE TABLE users (id bigserial PRIMARY KEY, email text NOT NULL UNIQUE, meta jsonb)")
    assert run_cli("baseline", "1", url=db.url, migrations=mdir).returncode == 0

    blocker = db.connect()
    blocker.execute("BEGIN")
    blocker.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")  # pg_dump waits for its ACCESS SHARE lock
    log = tmp_path / "dump.log"
    proc = start(db.url, mdir, "migrate", "--backup-url", f"file://{tmp_path}/bk", log=log)
    pid = poll(
        lambda: db.scalar(
            "SELECT pid FROM pg_stat_activity"
            " WHERE application_name LIKE 'pgsluice%%backup' AND wait_event_type = 'Lock'"
        ),
        "pg_dump to wait for its lock",
    )
    with db.connect() as conn:
        conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
    result = finished(proc, log)
    blocker.execute("ROLLBACK")
    blocker.close()
    assert result.returncode == 8, result.stderr
    assert result.finished["reason"].startswith("pg_dump exited with code 1")
    assert "terminat" in result.finished["reason"]
    assert list((tmp_path / "bk").rglob("*.manifest.json")) == []
    assert db.scalar("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") == 0
    assert db.history() == [(1, "users", "applied")]
    assert db.scalar("SELECT count(*) FROM information_schema.columns WHERE column_name = 'nick'") == 0


class _Always500(http.server.BaseHTTPRequestHandler):
    def _fail(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self.send_response(500)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _fail  # noqa: N815 - http.server's method names

    def log_message(self, *args: Any) -> None:  # noqa: ARG002 - http.server's signature
        return


class _HoldingProxy:
    """A loopback HTTP proxy in front of the S3 server that holds UploadPart number ``part`` until released.

    It makes "mid-stream" exact: when the held part arrives, earlier parts are stored and
    pg_dump is still writing (one upload at a time, so pgsluice stops reading and the pipe fills).
    """

    def __init__(self, upstream_port: int, part: int) -> None:
        self.arrived = threading.Event()
        self.release = threading.Event()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                if self.command == "PUT" and f"partNumber={part}&" in self.path + "&":
                    proxy.arrived.set()
                    proxy.release.wait(timeout=60)
                upstream = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=60)
                upstream.request(self.command, self.path, body=body, headers=dict(self.headers.items()))
                answer = upstream.getresponse()
                data = answer.read()
                self.send_response(answer.status)
                for name, value in answer.getheaders():
                    if name.lower() not in ("content-length", "transfer-encoding", "connection"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                upstream.close()

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward  # noqa: N815 - http.server's names

            def log_message(self, *args: Any) -> None:  # noqa: ARG002 - http.server's signature
                return

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def _start_backup_held_mid_stream(
    db: Database, mdir: Path, tmp_path: Path, s3_server: Any
) -> tuple[subprocess.Popen[bytes], Path, _HoldingProxy, str]:
    """migrate with a backup that is provably mid-stream: part 2 held by the proxy, part 1 stored, pg_dump writing."""
    write_migrations(mdir, {**SCHEMA, "002_more.sql": "ALTER TABLE users ADD COLUMN nick text;\n"})
    assert run_cli("migrate", url=db.url, migrations=mdir).returncode == 0
    (mdir / "003_noise.sql").write_text("CREATE TABLE noise (b bytea);\n")
    with db.connect() as conn:  # ~32 MB of random bytes: a dump of 6+ parts of 5 MiB that does not compress
        conn.execute(
            "CREATE TABLE noise_seed AS SELECT decode(md5(random()::text) || md5(random()::text), 'hex') AS b"
            " FROM generate_series(1, 1000000)"
        )
    bucket = f"b-{secrets.token_hex(4)}"
    s3_server.client().create_bucket(Bucket=bucket)
    proxy = _HoldingProxy(s3_server.port, part=2)
    log = tmp_path / "dump.log"
    env = {**s3_server.env(), "AWS_ENDPOINT_URL": proxy.endpoint}
    args = ("--backup-url", f"s3://{bucket}/p", "--backup-part-size", "5MiB", "--backup-concurrency", "1")
    proc = start(db.url, mdir, "migrate", *args, log=log, env=env)
    if not proxy.arrived.wait(timeout=60):
        proxy.close()
        proc.kill()
        pytest.fail("the second part never reached the store")
    return proc, log, proxy, bucket


def _assert_nothing_left(db: Database, s3_server: Any, bucket: str, result: Result) -> None:
    client = s3_server.client()
    assert client.list_objects_v2(Bucket=bucket).get("Contents", []) == []
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []  # aborted, not left to bill
    assert db.scalar("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") == 0
    assert [row[0] for row in db.history()] == [1, 2]
    assert db.scalar("SELECT to_regclass('noise') IS NULL") is True
    assert_no_secret(result.stderr)
    assert SECRET_KEY not in result.stderr


def test_pg_dump_killed_mid_stream_aborts_the_upload(db: Database, mdir: Path, tmp_path: Path, s3_server: Any) -> None:
    """Parts already stored when pg_dump dies: exit 8, the multipart upload aborted, no object, nothing applied."""
    proc, log, proxy, bucket = _start_backup_held_mid_stream(db, mdir, tmp_path, s3_server)
    try:
        with db.connect() as conn:
            assert conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name LIKE 'pgsluice%%backup'"
            ).fetchall() == [(True,)]
        proxy.release.set()
        result = finished(proc, log)
    finally:
        proxy.close()
    assert result.returncode == 8, result.stderr
    reason = result.finished["reason"]
    assert reason.startswith("pg_dump exited with code 1 after ")
    assert "terminat" in reason
    assert int(reason.split(" after ")[1].split()[0]) >= 10 * 1024**2  # two parts had been streamed
    _assert_nothing_left(db, s3_server, bucket, result)


def test_sigterm_mid_upload_exits_143_at_once_and_aborts_the_upload(
    db: Database, mdir: Path, tmp_path: Path, s3_server: Any
) -> None:
    """SIGTERM while obstore waits on the store is handled then, not when the request ends (Kubernetes' grace
    period is short): pg_dump is killed, the upload aborted, exit 143, nothing applied."""
    proc, log, proxy, bucket = _start_backup_held_mid_stream(db, mdir, tmp_path, s3_server)
    try:
        proc.send_signal(signal.SIGTERM)
        proxy.release.set()  # the store answers again: obstore sees pg_dump's end and aborts the upload
        result = finished(proc, log, timeout=30)
    finally:
        proxy.close()
    assert result.returncode == 143, result.stderr
    assert result.finished["outcome"] == "interrupted"
    assert result.finished["backup"] is None
    _assert_nothing_left(db, s3_server, bucket, result)


def test_store_unreachable_or_failing_exits_8_after_bounded_retries(db: Database, mdir: Path, s3_server: Any) -> None:
    """Connection refused, then HTTP 500 on every request: bounded retries, exit 8, nothing applied, no secret."""
    write_migrations(mdir, SCHEMA)
    env = {**s3_server.env(), "PGSLUICE_BACKUP_RETRIES": "2"}
    refused = run_cli(
        "migrate",
        "--backup-url",
        "s3://nowhere/p",
        "--backup-endpoint",
        "http://127.0.0.1:9",
        url=db.url,
        migrations=mdir,
        env=env,
    )
    assert refused.returncode == 8, refused.stderr
    assert refused.finished["reason"].startswith("upload of s3://nowhere/p/")

    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Always500) as failing:
        threading.Thread(target=failing.serve_forever, daemon=True).start()
        broken = run_cli(  # bounded: run_cli's timeout fails the test if the retries never end
            "migrate",
            "--backup-url",
            "s3://broken/p",
            "--backup-endpoint",
            f"http://127.0.0.1:{failing.server_address[1]}",
            url=db.url,
            migrations=mdir,
            timeout=90,
            env=env,
        )
        failing.shutdown()
    assert broken.returncode == 8, broken.stderr
    assert "500" in broken.finished["reason"]
    assert db.scalar("SELECT to_regclass('users') IS NULL") is True
    assert_no_secret(refused.stderr, broken.stderr)
    assert SECRET_KEY not in refused.stderr + broken.stderr


def test_retention_keeps_exactly_what_it_promises(db: Database, mdir: Path, tmp_path: Path) -> None:
    """--backup-keep 2 after four backups: the two newest complete ones remain; an old orphan dump is removed."""
    write_migrations(mdir, SCHEMA)
    assert run_cli("migrate", url=db.url, migrations=mdir).returncode == 0
    url = f"file://{tmp_path}/bk"
    ids = []
    for _ in range(4):
        result = run_cli("backup", "--backup-url", url, "--backup-keep", "2", url=db.url, migrations=mdir)
        assert result.returncode == 0, result.stderr
        ids.append(result.finished["backup"]["id"])
    listed = run_cli("backups", "--json", "--backup-url", url, url=db.url)
    assert [b["id"] for b in json.loads(listed.stdout)] == [ids[3], ids[2]]
    remaining = sorted(p.name for p in (tmp_path / "bk" / db.name).iterdir())
    assert remaining == sorted(f"{i.rsplit('/', 1)[1]}{s}" for i in ids[2:] for s in (".dump", ".manifest.json"))

    orphan = tmp_path / "bk" / db.name / "20200101T000000000Z_0-to-1.dump"
    orphan.write_bytes(b"partial")
    import os

    os.utime(orphan, (time.time() - 7200, time.time() - 7200))
    aged = run_cli("backup", "--backup-url", url, "--backup-max-age", "0s", url=db.url, migrations=mdir)
    assert aged.returncode == 0, aged.stderr
    listed = json.loads(run_cli("backups", "--json", "--backup-url", url, url=db.url).stdout)
    assert [b["id"] for b in listed] == [aged.finished["backup"]["id"]]
    assert not orphan.exists()


def test_corrupt_object_is_refused_on_restore(db: Database, mdir: Path, tmp_path: Path) -> None:
    """A dump whose bytes no longer match its manifest restores nothing: exit 8, target still empty."""
    write_migrations(mdir, SCHEMA)
    url = f"file://{tmp_path}/bk"
    assert run_cli("migrate", url=db.url, migrations=mdir).returncode == 0
    taken = run_cli("backup", "--backup-url", url, url=db.url, migrations=mdir)
    dump = next((tmp_path / "bk").rglob("*.dump"))
    data = bytearray(dump.read_bytes())
    data[-10] ^= 0xFF
    dump.write_bytes(bytes(data))
    with new_database(db.server, "r") as target:
        result = run_cli(
            "restore",
            taken.finished["backup"]["id"],
            "--target-database",
            target.url,
            "--backup-url",
            url,
            url=db.url,
        )
        assert result.returncode == 8
        assert "its manifest says" in result.finished["reason"]
        import psycopg

        with psycopg.connect(target.url) as conn:
            assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone() == (0,)


def test_old_pg_dump_is_refused_with_both_versions(db: Database, mdir: Path, tmp_path: Path) -> None:
    """pg_dump older than the server: exit 2 naming both majors and the image to use."""
    write_migrations(mdir, SCHEMA)
    old = tmp_path / "pg_dump"
    old.write_text("#!/bin/sh\necho 'pg_dump (PostgreSQL) 9.6.24'\n")  # what an old client answers
    old.chmod(0o755)
    result = run_cli(
        "migrate", "--backup-url", f"file://{tmp_path}/bk", "--pg-dump", str(old), url=db.url, migrations=mdir
    )
    assert result.returncode == 2
    assert result.finished["reason"].startswith("pg_dump 9 cannot dump PostgreSQL ")
    assert "postgresql-client-" in result.finished["reason"]
    assert db.scalar("SELECT to_regclass('users') IS NULL") is True


@pytest.mark.parametrize(
    ("option", "value", "reason"),
    [
        ("--backup-url", "file://relative/path", "--backup-url: 'file://relative/path' must be an absolute"),
        ("--backup-url", "s3:///no-bucket", "--backup-url: 's3:///no-bucket' names no bucket"),
        ("--pg-dump", "/nonexistent/pg_dump", "/nonexistent/pg_dump not found"),
    ],
)
def test_unusable_backup_setup_fails_before_waiting_for_the_database(
    mdir: Path, tmp_path: Path, option: str, value: str, reason: str
) -> None:
    """A backup that cannot work is a configuration error (exit 2) found before the wait, not after it."""
    write_migrations(mdir, SCHEMA)
    nobody = f"postgresql://u:pw@127.0.0.1:{free_port()}/app"  # nothing listens: the wait would take 60 s
    args = ["--backup-url", f"file://{tmp_path}/bk"] if option == "--pg-dump" else []
    result = run_cli("migrate", *args, option, value, "--wait-timeout", "60", url=nobody, migrations=mdir, timeout=30)
    assert result.returncode == 2, result.stderr
    assert result.finished["reason"].startswith(reason), result.finished["reason"]
    assert not {"wait.retry_scheduled", "db.connected"} & set(result.names())  # it never tried the database


def test_unset_backup_warns_and_require_backup_refuses(db: Database, mdir: Path) -> None:
    """No target: a warning event; with --require-backup: exit 2 before connecting."""
    write_migrations(mdir, SCHEMA)
    required = run_cli("migrate", "--require-backup", url=db.url, migrations=mdir)
    assert required.returncode == 2
    assert "db.connected" not in required.names()
    plain = run_cli("migrate", url=db.url, migrations=mdir)
    assert plain.returncode == 0
    assert plain.event("backup.skipped")["level"] == "warning"


def test_failure_after_a_backup_names_the_backup_in_the_termination_message(
    db: Database, mdir: Path, tmp_path: Path
) -> None:
    """The operator who must roll back learns which object to restore: run.finished and the termination log."""
    write_migrations(mdir, {**SCHEMA, "002_bad.sql": "ALTER TABLE users ADD COLUMN email text;\n"})
    with db.connect() as conn:
        conn.execute("CREATE TABLE users (id bigserial PRIMARY KEY, email text NOT NULL UNIQUE, meta jsonb)")
    assert run_cli("baseline", "1", url=db.url, migrations=mdir).returncode == 0
    term = tmp_path / "term"
    result = run_cli(
        "migrate", "--backup-url", f"file://{tmp_path}/bk", "--termination-log", str(term), url=db.url, migrations=mdir
    )
    assert result.returncode == 7
    backup = result.finished["backup"]
    assert backup["object"].startswith(f"file://{tmp_path}/bk/{db.name}/")
    message = term.read_text()
    assert message.startswith("migration 002_bad.sql failed")
    assert message.rstrip().endswith(f"[backup taken before applying: {backup['object']}]")


# The backup target is checked when the run starts: written to, before the wait for the database.


@pytest.fixture
def read_only_folder(tmp_path: Path) -> Iterator[Path]:
    """A folder nobody can write into: mode 555 for a user; for root, whom modes do not stop, a read-only tmpfs."""
    import os

    folder = tmp_path / "read-only"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "pgsluice-test", str(folder)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"running as root, where mode 555 does not stop writes, and mount failed: {mounted.stderr}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


NOBODY_PASSWORD = "nobody-Pa55-q7Zk"


def _migrate_without_a_database(mdir: Path, *args: str, env: dict[str, str] | None = None) -> Result:
    """migrate with pending work against a port where nothing listens: the wait would take 60 s."""
    write_migrations(mdir, SCHEMA)
    nobody = f"postgresql://u:{NOBODY_PASSWORD}@127.0.0.1:{free_port()}/app"
    return run_cli("migrate", *args, "--wait-timeout", "60", url=nobody, migrations=mdir, env=env, timeout=30)


def _assert_folder_refused_before_waiting(result: Result, folder: Path) -> None:
    assert result.returncode == 2, result.stderr
    assert result.finished["reason"].startswith(f"--backup-url file://{folder}: cannot write a backup into {folder}: ")
    assert not {"wait.retry_scheduled", "db.connected"} & set(result.names())  # it never tried the database
    assert_no_secret(result.output, secrets=(NOBODY_PASSWORD,))


@pytest.mark.parametrize("below", [False, True], ids=["the folder", "a folder below it"])
def test_read_only_backup_folder_is_exit_2_before_waiting(mdir: Path, read_only_folder: Path, below: bool) -> None:
    """A file:// folder that refuses new files is a configuration error (exit 2, permanent), found before the
    database is tried, not exit 8 (transient, retried by the Job) after the wait and the lock."""
    with pytest.raises(OSError, match=r"Read-only file system|Permission denied"):  # the folder is real, also to root
        (read_only_folder / "probe").write_bytes(b"")
    folder = read_only_folder / "backups" if below else read_only_folder
    _assert_folder_refused_before_waiting(_migrate_without_a_database(mdir, "--backup-url", f"file://{folder}"), folder)
    assert list(read_only_folder.iterdir()) == []


@pytest.mark.parametrize("below", [False, True], ids=["a file", "a folder below a file"])
def test_file_where_the_backup_folder_should_be_is_exit_2_before_waiting(
    mdir: Path, tmp_path: Path, below: bool
) -> None:
    """A file where the folder should be (also for root): exit 2 before the wait, the file untouched."""
    a_file = tmp_path / "not-a-folder"
    a_file.write_text("keep")
    folder = a_file / "backups" if below else a_file
    _assert_folder_refused_before_waiting(_migrate_without_a_database(mdir, "--backup-url", f"file://{folder}"), folder)
    assert a_file.read_text() == "keep"


def test_writable_backup_folder_is_checked_and_left_as_it_was(db: Database, mdir: Path, tmp_path: Path) -> None:
    """The check leaves no marker: after a backup the folder holds the dump and its manifest, nothing else."""
    write_migrations(mdir, SCHEMA)
    result = run_cli("migrate", "--backup-url", f"file://{tmp_path}/bk", url=db.url, migrations=mdir)
    assert result.returncode == 0, result.stderr
    assert "config.warning" not in result.names()
    files = sorted(p.name.rsplit("_", 1)[1] for p in (tmp_path / "bk").rglob("*") if p.is_file())
    assert files == ["0-to-1.dump", "0-to-1.manifest.json"]


@pytest.mark.parametrize("store", ["s3", "az"])
def test_missing_bucket_or_container_is_exit_2_before_waiting(
    request: pytest.FixtureRequest, mdir: Path, store: str
) -> None:
    """A bucket (moto's S3) or container (Azurite) that does not exist: exit 2 before the wait, no secret printed."""
    server = request.getfixturevalue(f"{store}_server")
    env = server.env()
    url = f"{store}://missing-{secrets.token_hex(4)}/pgsluice"
    result = _migrate_without_a_database(mdir, "--backup-url", url, env=env)
    assert result.returncode == 2, result.stderr
    assert result.finished["reason"].startswith(f"--backup-url {url}: the bucket or container does not exist ("), (
        result.finished["reason"]
    )
    assert not {"wait.retry_scheduled", "db.connected"} & set(result.names())
    secret = env.get("AWS_SECRET_ACCESS_KEY") or env["AZURE_STORAGE_ACCOUNT_KEY"]
    assert secret not in result.output


def test_bucket_check_leaves_no_marker(db: Database, mdir: Path, s3_server: Any) -> None:
    """On a writable bucket the marker is written and removed: the bucket holds the backup, nothing else."""
    bucket = f"b-{secrets.token_hex(4)}"
    s3_server.client().create_bucket(Bucket=bucket)
    write_migrations(mdir, SCHEMA)
    url = f"s3://{bucket}/p"
    result = run_cli("migrate", "--backup-url", url, url=db.url, migrations=mdir, env=s3_server.env())
    assert result.returncode == 0, result.stderr
    assert "config.warning" not in result.names()
    keys = [o["Key"] for o in s3_server.client().list_objects_v2(Bucket=bucket)["Contents"]]
    assert [k.rsplit("_", 1)[1] for k in sorted(keys)] == ["0-to-1.dump", "0-to-1.manifest.json"]


def _answering(status: int) -> type[http.server.BaseHTTPRequestHandler]:
    """A handler that answers every request with ``status`` and S3's error body for it."""
    code = {403: "AccessDenied", 503: "SlowDown"}[status]
    body = f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>{code}</Message></Error>'

    class Handler(_Always500):
        def _fail(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            self.send_response(status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body.encode())

        do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _fail  # noqa: N815 - http.server's method names

    return Handler


def test_store_refusing_the_credentials_is_exit_2_before_waiting(mdir: Path, s3_server: Any) -> None:
    """An S3 endpoint that answers 403 AccessDenied to the check's PUT: exit 2 before the wait."""
    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), _answering(403)) as denying:
        threading.Thread(target=denying.serve_forever, daemon=True).start()
        endpoint = f"http://127.0.0.1:{denying.server_address[1]}"
        result = _migrate_without_a_database(
            mdir, "--backup-url", "s3://locked/p", "--backup-endpoint", endpoint, env=s3_server.env()
        )
        denying.shutdown()
    assert result.returncode == 2, result.stderr
    assert result.finished["reason"].startswith("--backup-url s3://locked/p: the store refused to write s3://locked/p/")
    assert not {"wait.retry_scheduled", "db.connected"} & set(result.names())
    assert SECRET_KEY not in result.output


def test_store_failing_at_start_is_a_warning_and_the_backup_decides(db: Database, mdir: Path, s3_server: Any) -> None:
    """503 to the check is no reason to stop: a warning, the wait and the plan, then the backup fails (exit 8)."""
    write_migrations(mdir, SCHEMA)
    env = {**s3_server.env(), "PGSLUICE_BACKUP_RETRIES": "0"}
    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), _answering(503)) as busy:
        threading.Thread(target=busy.serve_forever, daemon=True).start()
        endpoint = f"http://127.0.0.1:{busy.server_address[1]}"
        args = ("--backup-url", "s3://busy/p", "--backup-endpoint", endpoint)
        result = run_cli("migrate", *args, url=db.url, migrations=mdir, env=env, timeout=90)
        busy.shutdown()
    assert result.returncode == 8, result.stderr
    warning = result.event("config.warning")["warning"]
    assert warning.startswith("backup target s3://busy/p not checked at start: "), warning
    names = result.names()
    assert names.index("config.warning") < names.index("db.connected") < names.index("backup.started")
    assert db.scalar("SELECT to_regclass('users') IS NULL") is True
    assert SECRET_KEY not in result.output
