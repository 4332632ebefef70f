"""The real image, built from the Dockerfile, run against a real PostgreSQL over host networking."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import assert_no_secret, parse_events, poll, write_migrations
from tests.support.databases import LONG, Database, sleeping_pid
from tests.support.pgserver import free_port
from tests.support.s3server import SECRET_KEY

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


def run(docker_client: Any, image: str, db_url: str, mdir: Path | None, *args: str, **kwargs: Any) -> Any:
    volumes = {str(mdir): {"bind": "/migrations", "mode": "ro"}} if mdir else {}
    volumes.update(kwargs.pop("volumes", {}))
    return docker_client.containers.run(
        image,
        list(args) or None,
        network_mode="host",
        read_only=True,
        tmpfs={"/tmp": ""},
        environment={"DATABASE_URL": db_url, **kwargs.pop("environment", {})},
        volumes=volumes,
        detach=True,
        **kwargs,
    )


def finish(container: Any, timeout: int = 120) -> tuple[int, str]:
    code = container.wait(timeout=timeout)["StatusCode"]
    logs = container.logs(stdout=True, stderr=True).decode()
    container.remove(force=True)
    return code, logs


def test_image_applies_migrations_as_non_root_with_read_only_root(
    docker_client: Any, pgsluice_image: str, db: Database
) -> None:
    """The baked-in migrations apply and exit 0; uid and gid 10001, both named; the root filesystem is read-only."""
    code, logs = finish(run(docker_client, pgsluice_image, db.url, None))
    assert code == 0, logs
    assert parse_events(logs)[-1]["applied"] == [1, 2, 3, 4, 5]
    assert db.history()[-1] == (5, "index_users_created_at", "applied")
    script = (
        "id -u; id -un; id -g; id -gn; getent group 10001;"
        " touch /probe 2>/dev/null && echo writable || echo read-only; touch /tmp/ok && echo tmp-ok"
    )
    out = (
        docker_client.containers.run(
            pgsluice_image,
            ["-c", script],
            entrypoint="sh",
            read_only=True,
            tmpfs={"/tmp": ""},
            network_mode="host",
            remove=True,
        )
        .decode()
        .split()
    )
    # The group has a name (useradd --user-group would have named GID 999 and left 10001 nameless).
    assert out == ["10001", "pgsluice", "10001", "pgsluice", "pgsluice:x:10001:", "read-only", "tmp-ok"]


def test_image_pg_dump_is_at_least_the_server_major(docker_client: Any, pgsluice_image: str, db: Database) -> None:
    """pg_dump in the image can dump the server under test; tini is PID 1."""
    out = docker_client.containers.run(pgsluice_image, ["--version"], entrypoint="pg_dump", remove=True).decode()
    dump_major = int(out.split(")")[1].split(".")[0])
    assert dump_major >= int(db.scalar("SHOW server_version_num")) // 10000
    inspect = docker_client.api.inspect_image(pgsluice_image)
    assert inspect["Config"]["Entrypoint"][:3] == ["/usr/bin/tini", "-g", "--"]
    assert inspect["Config"]["User"] == "10001:10001"
    assert inspect["Config"]["Labels"]["org.opencontainers.image.title"] == "pgsluice"
    tools = docker_client.containers.run(
        pgsluice_image,
        ["-c", "for t in gcc cc make strip pip pip3; do command -v $t; done; python -m pip --version 2>&1 | head -1"],
        entrypoint="sh",
        remove=True,
    ).decode()
    assert tools.strip() == "/opt/venv/bin/python: No module named pip"  # no compiler, no pip


def test_broken_migration_exits_7_with_the_reason_in_the_termination_message(
    docker_client: Any, pgsluice_image: str, db: Database, mdir: Path, tmp_path: Path
) -> None:
    """A failing migration: container exit 7, and the termination message says which file, line and why."""
    write_migrations(mdir, {"001_ok.sql": "CREATE TABLE ok (a int);\n", "002_bad.sql": "SELECT * FROM nowhere;\n"})
    term = tmp_path / "term"
    term.mkdir()
    term.chmod(0o777)
    code, logs = finish(
        run(
            docker_client,
            pgsluice_image,
            db.url,
            mdir,
            environment={"PGSLUICE_TERMINATION_LOG": "/term/message"},
            volumes={str(term): {"bind": "/term", "mode": "rw"}},
        )
    )
    assert code == 7, logs
    message = (term / "message").read_text()
    assert message.startswith('migration 002_bad.sql failed at line 1, column 15: relation "nowhere" does not exist')
    assert "s3cret" not in logs + message
    assert db.history() == [(1, "ok", "applied")]


def test_sigterm_during_a_long_migration_exits_143_and_rolls_back(
    docker_client: Any, pgsluice_image: str, db: Database, mdir: Path
) -> None:
    """docker stop (SIGTERM to tini, forwarded to the group): exit 143, nothing half-applied, lock free."""
    write_migrations(mdir, {"001_long.sql": LONG})
    container = run(docker_client, pgsluice_image, db.url, mdir)
    poll(lambda: sleeping_pid(db), "the long migration to run in the container", timeout=60)
    container.kill(signal="SIGTERM")
    code, logs = finish(container, timeout=30)  # a bound on the wait, not a timed assertion
    assert code == 143, logs
    assert parse_events(logs)[-1]["outcome"] == "interrupted"
    assert db.scalar("SELECT to_regclass('long_table') IS NULL") is True
    assert db.scalar("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") == 0


def _image_backup(
    docker_client: Any, image: str, db: Database, s3_server: Any, tmp_path: Path, *, first: str
) -> tuple[dict[str, str], str, str, str]:
    """Migrate to 001 (``first``), then 002 with the image taking its backup to S3 first.

    Returns the environment, the bucket, the backup's id and migrate's logs."""
    bucket = f"img-{secrets.token_hex(4)}"
    s3_server.client().create_bucket(Bucket=bucket)
    env = {**s3_server.env(), "PGSLUICE_BACKUP_URL": f"s3://{bucket}/pgsluice", "PGSLUICE_REQUIRE_BACKUP": "true"}
    mdir = write_migrations(tmp_path / "m", {"001_t.sql": first})
    assert finish(run(docker_client, image, db.url, mdir, environment=env))[0] == 0
    write_migrations(mdir, {"002_u.sql": "ALTER TABLE t ADD COLUMN u text;\n"})
    code, logs = finish(run(docker_client, image, db.url, mdir, environment=env))
    assert code == 0, logs
    finished = parse_events(logs)[-1]
    assert finished["applied"] == [2]
    assert finished["backup"]["verified"] is True
    return env, bucket, str(finished["backup"]["id"]), logs


def _image_restore(docker_client: Any, image: str, db: Database, backup_id: str, env: dict[str, str]) -> Any:
    """Restore ``backup_id`` with the image into a new database; returns (exit code, logs, that database's URL)."""
    target = f"restored_{secrets.token_hex(3)}"
    with db.server.admin() as conn:
        conn.execute(f'CREATE DATABASE "{target}"')
    args = ("restore", backup_id, "--target-database", db.server.url(target))
    code, logs = finish(run(docker_client, image, db.url, None, *args, environment=env))
    return code, logs, db.server.url(target)


def test_image_backs_up_to_s3_and_restores_what_it_took(
    docker_client: Any, pgsluice_image: str, db: Database, s3_server: Any, tmp_path: Path
) -> None:
    """The image's own pg_dump, pg_restore and obstore: a verified backup to S3 before migrating, then a restore,
    as uid 10001 on a read-only root, credentials from the standard AWS variables and never printed."""
    first = "CREATE TABLE t (id int PRIMARY KEY);\nINSERT INTO t VALUES (1), (2);\n"
    env, _, backup_id, logs = _image_backup(docker_client, pgsluice_image, db, s3_server, tmp_path, first=first)
    code, restore_logs, target_url = _image_restore(docker_client, pgsluice_image, db, backup_id, env)
    assert code == 0, restore_logs
    if db.scalar("SELECT current_setting('server_version_num')::int") < 170000:  # the image's pg_restore is 17
        dropped = [e for e in parse_events(restore_logs) if e["event"] == "restore.settings_dropped"]
        assert dropped and "transaction_timeout" in dropped[0]["settings"]
    import psycopg

    with psycopg.connect(target_url) as conn:  # the state before 002: two rows, no column u
        assert conn.execute("SELECT array_agg(id ORDER BY id) FROM t").fetchone() == ([1, 2],)
        columns = conn.execute("SELECT count(*) FROM information_schema.columns WHERE column_name = 'u'")
        assert columns.fetchone() == (0,)
    assert_no_secret(logs, restore_logs)
    assert SECRET_KEY not in logs + restore_logs


def test_image_restore_of_a_corrupt_object_commits_nothing(
    docker_client: Any, pgsluice_image: str, db: Database, s3_server: Any, tmp_path: Path
) -> None:
    """A byte flipped near the end of a 3 MB dump: pg_restore has already fed psql most of the script when the
    sha256 mismatch shows; the transaction is rolled back (exit 8) and the target stays empty."""
    first = (
        "CREATE TABLE t (id int PRIMARY KEY);\nINSERT INTO t VALUES (1), (2);\n"
        "CREATE TABLE noise AS SELECT decode(md5(random()::text) || md5(random()::text), 'hex') AS b"
        " FROM generate_series(1, 100000);\n"
    )
    env, bucket, backup_id, _ = _image_backup(docker_client, pgsluice_image, db, s3_server, tmp_path, first=first)
    client = s3_server.client()
    key = f"pgsluice/{backup_id}.dump"
    data = bytearray(client.get_object(Bucket=bucket, Key=key)["Body"].read())
    assert len(data) > 3 * 1024**2  # several 1 MiB chunks reach pg_restore before the last one is held back
    data[-100] ^= 0xFF
    client.put_object(Bucket=bucket, Key=key, Body=bytes(data))
    code, logs, target_url = _image_restore(docker_client, pgsluice_image, db, backup_id, env)
    assert code == 8, logs
    assert "its manifest says" in parse_events(logs)[-1]["reason"]
    import psycopg

    with psycopg.connect(target_url) as conn:
        assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone() == (0,)


def test_backup_folder_on_the_read_only_root_is_exit_2_before_waiting(docker_client: Any, pgsluice_image: str) -> None:
    """A file:// target with no volume mounted there is on the read-only root: exit 2 at start (the Job fails at
    once), before the 60 s wait for a database nobody runs, with the reason in the logs."""
    nobody = f"postgresql://u:pw@127.0.0.1:{free_port()}/app"
    env = {"PGSLUICE_BACKUP_URL": "file:///backups", "PGSLUICE_WAIT_TIMEOUT": "60"}
    code, logs = finish(run(docker_client, pgsluice_image, nobody, None, environment=env), timeout=30)
    assert code == 2, logs
    finished = parse_events(logs)[-1]
    assert finished["reason"].startswith("--backup-url file:///backups: cannot write a backup into /backups: ")
    assert "Read-only file system" in finished["reason"]
    assert not {"wait.retry_scheduled", "db.connected"} & {e["event"] for e in parse_events(logs)}
