"""restore_backup(): a backup streamed from the store into a database, all or nothing.

The dump is a stream, so pg_restore runs single-job. Its sha256 is checked before the
last chunk is handed over, so a corrupt object restores nothing.

The image's pg_restore may be newer than the target server (the image carries one client
major; pg_dump may be newer than the server it dumps, but its archives are readable only
by a pg_restore as new). A newer pg_restore starts its script with session settings the
older server rejects (17's ``SET transaction_timeout = 0`` fails on 15) and PostgreSQL
leaves that to the operator. pgsluice then runs pg_restore as a script generator into
psql, dropping only ``SET`` lines for settings the server does not have — never inside
COPY data — and logs which; the script runs in one transaction that commits only when
pg_restore succeeded and the sha256 matched.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import threading
from collections.abc import Iterable, Iterator
from typing import IO, Any

import psycopg
import structlog

from pgsluice import storage
from pgsluice.catalog import BackupInfo
from pgsluice.config import Config
from pgsluice.db import classify_connect_error, describe_connect_error
from pgsluice.errors import ConfigError, DatabaseUnreachableError, RestoreError
from pgsluice.events import Event
from pgsluice.pgtools import ClientTool, StderrTail, child_connection, sibling_program

log = structlog.get_logger("pgsluice.restore")

_SET = re.compile(rb"SET ([A-Za-z_][A-Za-z0-9_.]*) = ")
_COPY_FROM_STDIN = re.compile(rb"COPY .* FROM stdin;\n?$")
_WRITE_BATCH = 1024 * 1024


def drop_unknown_settings(lines: Iterable[bytes], known: set[str], dropped: set[str]) -> Iterator[bytes]:
    """pg_restore's script without ``SET name = …;`` lines whose setting the server lacks (added to ``dropped``).

    COPY data (between ``COPY … FROM stdin;`` and ``\\.``) passes untouched, whatever it holds.
    """
    in_copy = False
    for line in lines:
        if in_copy:
            in_copy = line not in (b"\\.\n", b"\\.")
        elif _COPY_FROM_STDIN.match(line):
            in_copy = True
        elif (match := _SET.match(line)) and match.group(1).decode().lower() not in known:
            dropped.add(match.group(1).decode())
            continue
        yield line


def _nothing_restored(config: Config, program: str, code: int, stderr: StderrTail) -> RestoreError:
    return RestoreError(
        f"restore: {program} exited with code {code}: {config.redactor(stderr.text())}",
        hint="nothing was restored (single transaction)",
    )


def _connect_target(config: Config, target_url: str) -> psycopg.Connection[Any]:
    """The restore target, as pgsluice connects: a refusal is exit 4, an unreachable server exit 3."""
    kwargs: dict[str, Any] = {
        "autocommit": True,
        "connect_timeout": max(1, round(config.connect_timeout_seconds)),
        "application_name": "pgsluice restore",
    }
    try:
        return psycopg.connect(target_url, **kwargs)
    except psycopg.OperationalError as exc:
        permanent = classify_connect_error(exc, config)
        if permanent is not None:
            raise permanent from exc
        raise DatabaseUnreachableError(
            f"restore: the target database is unreachable: {describe_connect_error(exc, config)}",
            hint="check the target's host, port and network policy, then run again",
        ) from exc


def _target_facts(config: Config, target_url: str, clean: bool) -> tuple[int, set[str]]:
    """The target's major version and setting names; ConfigError when it is not empty and not ``clean``."""
    with _connect_target(config, target_url) as conn:
        objects = conn.execute(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%%'"
            " AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')"
        ).fetchone()
        if objects and objects[0] and not clean:
            raise ConfigError(
                f"restore: the target database {conn.info.dbname!r} is not empty ({objects[0]} relations)",
                hint="restore into a new database, or pass --clean to drop and recreate what the dump contains",
            )
        known = {str(row[0]).lower() for row in conn.execute("SELECT name FROM pg_settings")}
        return conn.info.server_version // 10000, known


def _feed(info: BackupInfo, store: storage.BackupStore, sink: IO[bytes]) -> None:
    """The object into ``sink``, the last chunk only once the sha256 matches the manifest."""
    sha = hashlib.sha256()
    held: bytes | None = None
    try:
        for chunk in storage.read_stream(store, info.dump_key):
            if held is not None:
                sink.write(held)
            sha.update(chunk)
            held = chunk
        if sha.hexdigest() != info.sha256:
            raise RestoreError(
                f"restore: {info.object_url} has sha256 {sha.hexdigest()}, its manifest says {info.sha256}",
                hint="the object is corrupt; nothing was restored; pick another backup",
            )
        if held is not None:
            sink.write(held)
        sink.close()
    except BrokenPipeError:
        pass  # pg_restore stopped reading: its exit code says why


def restore_backup(config: Config, info: BackupInfo, store: storage.BackupStore, target_url: str, clean: bool) -> int:
    """Restore ``info`` into ``target_url`` in one transaction; RestoreError (nothing restored) on any failure."""
    server_major, known = _target_facts(config, target_url, clean)
    with ClientTool(config.pg_restore) as pg_restore:
        restore_major, restore_version = pg_restore.major(), pg_restore.version()
    with child_connection(target_url, None, "restore") as (conninfo, env):
        return _restore(config, info, store, conninfo, env, clean, known, server_major, restore_major, restore_version)


def _restore(  # noqa: PLR0917 - the facts gathered before the restore, passed on as they are
    config: Config,
    info: BackupInfo,
    store: storage.BackupStore,
    conninfo: str,
    env: dict[str, str],
    clean: bool,
    known: set[str],
    server_major: int,
    restore_major: int,
    restore_version: str,
) -> int:
    clean_args = ["--clean", "--if-exists"] if clean else []
    if restore_major <= server_major:
        command = [config.pg_restore, "--single-transaction", "--exit-on-error", "--no-password", *clean_args]
        proc = subprocess.Popen(
            [*command, f"--dbname={conninfo}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
        )
        assert proc.stdin is not None and proc.stderr is not None  # noqa: S101 - both are PIPE
        stderr = StderrTail(proc.stderr)
        try:
            _feed(info, store, proc.stdin)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        code = proc.wait()
        if code != 0:
            raise _nothing_restored(config, "pg_restore", code, stderr)
        return info.size
    return _restore_via_script(
        config,
        info,
        store,
        conninfo=conninfo,
        env=env,
        clean_args=clean_args,
        known=known,
        server_major=server_major,
        restore_version=restore_version,
    )


def _restore_via_script(
    config: Config,
    info: BackupInfo,
    store: storage.BackupStore,
    *,
    conninfo: str,
    env: dict[str, str],
    clean_args: list[str],
    known: set[str],
    server_major: int,
    restore_version: str,
) -> int:
    """pg_restore --file=- | drop_unknown_settings | psql --single-transaction, committed only if all went well."""
    psql = sibling_program(config.pg_restore, "psql")
    producer = subprocess.Popen(
        [config.pg_restore, "--file=-", "--exit-on-error", *clean_args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    consumer = subprocess.Popen(
        [psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "--single-transaction", "--no-password", f"--dbname={conninfo}"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert producer.stdin and producer.stdout and producer.stderr  # noqa: S101 - all PIPE
    assert consumer.stdin and consumer.stderr  # noqa: S101
    producer_err, consumer_err = StderrTail(producer.stderr), StderrTail(consumer.stderr)
    dropped: set[str] = set()
    pump_failed: list[BaseException] = []

    def pump(source: IO[bytes], sink: IO[bytes]) -> None:
        """Copy the filtered script; never close psql's input here: EOF would commit a partial restore."""
        batch = bytearray()
        try:
            for line in drop_unknown_settings(source, known, dropped):
                batch += line
                if len(batch) >= _WRITE_BATCH:
                    sink.write(batch)
                    batch.clear()
            sink.write(batch)
            sink.flush()
        except BaseException as exc:  # noqa: BLE001 - psql gone (it failed): its exit code says why
            pump_failed.append(exc)
            producer.kill()  # nobody reads it any more

    pumping = threading.Thread(target=pump, args=(producer.stdout, consumer.stdin), daemon=True)
    pumping.start()
    try:
        _feed(info, store, producer.stdin)
        produced = producer.wait()
        pumping.join()
    except BaseException:
        producer.kill()
        consumer.kill()  # its session ends without COMMIT: the server rolls the transaction back
        producer.wait()
        consumer.wait()
        raise
    if pump_failed or produced != 0:
        consumer.kill()  # without COMMIT: the server rolls the transaction back
        code = consumer.wait()
        if pump_failed:
            raise _nothing_restored(config, "psql", code, consumer_err)
        raise _nothing_restored(config, "pg_restore", produced, producer_err)
    if dropped:
        log.warning(
            Event.RESTORE_SETTINGS_DROPPED,
            settings=sorted(dropped),
            pg_restore=restore_version,
            server_major=server_major,
            reason="pg_restore is newer than the server; these session settings do not exist there",
        )
    consumer.stdin.close()  # now psql may COMMIT
    code = consumer.wait()
    if code != 0:
        raise _nothing_restored(config, "psql", code, consumer_err)
    return info.size
