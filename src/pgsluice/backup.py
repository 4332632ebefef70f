"""Backups: pg_dump's stdout streamed into the object store, verified, manifest written last.

No verified backup, no migration. The dump never touches the local disk: pg_dump's
stdout is read in 1 MiB chunks, hashed, and uploaded as multipart parts of
``--backup-part-size``, ``--backup-concurrency`` at a time, so memory stays bounded
whatever the size of the database.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import subprocess
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import IO, Any

import psycopg
import structlog
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pgsluice import __version__, storage
from pgsluice.config import Config
from pgsluice.errors import BackupError, ConfigError, PgsluiceError
from pgsluice.pgtools import ClientTool
from pgsluice.plan import Plan

log = structlog.get_logger("pgsluice.backup")

READ_CHUNK = 1024 * 1024
MiB = 1024 * 1024
MIN_PART, MAX_PART, MAX_PARTS = 8 * MiB, 96 * MiB, 8000  # S3 allows 10,000 parts; keep a margin
IN_FLIGHT_BUDGET = 128 * MiB
ABORT_GRACE_SECONDS = 2.0  # after SIGTERM, for obstore to abort the multipart upload


def upload_shape(database_bytes: int, part_size: int | None, concurrency: int | None) -> tuple[int, int]:
    """Part size and concurrency: memory stays near part size x concurrency (at most 128 MiB by
    default) while the dump may reach 8000 parts - 750 GiB at the largest part. A compressed
    custom-format dump is smaller than the database, so its size bounds the part count."""
    if part_size is None:
        part_size = min(MAX_PART, max(MIN_PART, -(-database_bytes // MAX_PARTS)))
        part_size = -(-part_size // MiB) * MiB
    if concurrency is None:
        concurrency = max(1, min(4, IN_FLIGHT_BUDGET // part_size))
    return part_size, concurrency


MANIFEST_SUFFIX = ".manifest.json"
DUMP_SUFFIX = ".dump"
ORPHAN_GRACE = timedelta(hours=1)
_STAMP = re.compile(r"^(?P<stamp>\d{8}T\d{9}Z)_")


@dataclass
class BackupResult:
    """A complete, verified backup."""

    id: str
    object: str
    manifest: str
    size: int
    sha256: str
    verified: bool

    def as_report(self) -> dict[str, Any]:
        """What ``run.finished`` and the termination message say about it."""
        return {
            "id": self.id,
            "object": self.object,
            "bytes": self.size,
            "sha256": self.sha256,
            "verified": self.verified,
        }


class StderrTail:
    """Drains a child's stderr in a thread (so it never blocks) and keeps the last lines."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.lines: deque[str] = deque(maxlen=20)
        self._thread = threading.Thread(target=self._drain, args=(stream,), daemon=True)
        self._thread.start()

    def _drain(self, stream: IO[bytes]) -> None:
        for raw in stream:
            self.lines.append(raw.decode(errors="replace").rstrip())

    def text(self) -> str:
        self._thread.join(timeout=5)
        return " | ".join(line for line in self.lines if line)


def _widen_pipe(stream: IO[bytes]) -> None:
    """Let pg_dump run ahead of us by up to 1 MiB instead of the pipe's default 64 KiB (Linux)."""
    import fcntl

    set_pipe_size = getattr(fcntl, "F_SETPIPE_SZ", 1031)
    with contextlib.suppress(OSError):  # not Linux, or above pipe-max-size: the default pipe works too
        fcntl.fcntl(stream.fileno(), set_pipe_size, READ_CHUNK)


def _interruptible(work: Callable[[], None], on_interrupt: Callable[[], None] = lambda: None) -> None:
    """Run ``work`` (a blocking obstore call) in a thread while this one waits for it.

    obstore blocks in Rust until its request ends, so a SIGTERM arriving meanwhile would be
    handled only then - up to the client timeout with a stalled store, long after Kubernetes'
    grace period. Waiting on a thread lets the handler run at once: ``on_interrupt`` runs
    and the thread gets ABORT_GRACE_SECONDS to abort its upload before the signal goes on.
    """
    outcome: list[BaseException] = []
    done = threading.Event()  # not Thread.join: an interrupted join marks the thread stopped (CPython < 3.13)

    def run() -> None:
        try:
            work()
        except BaseException as exc:  # handed to the waiting thread as is
            outcome.append(exc)
        finally:
            done.set()

    threading.Thread(target=run, name="pgsluice-store", daemon=True).start()
    try:
        done.wait()
    except BaseException:
        on_interrupt()
        done.wait(timeout=ABORT_GRACE_SECONDS)
        raise
    if outcome:
        raise outcome[0]


def _database_bytes(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
    return int(row[0]) if row else 0


def libpq_env(params: dict[str, Any], application_name: str) -> tuple[str, dict[str, str]]:
    """A conninfo without the password for argv, and the password in the child's environment."""
    import os

    password = params.pop("password", None)
    params["application_name"] = application_name
    env = {k: v for k, v in os.environ.items() if k not in ("PGPASSWORD",)}
    if password:
        env["PGPASSWORD"] = str(password)
    return make_conninfo(**{k: v for k, v in params.items() if v is not None}), env


def _compression(config: Config, dump_major: int) -> tuple[str, str]:
    level = config.backup_compression_level
    if dump_major >= 16:
        return "zstd", f"zstd:{level if level is not None else 3}"
    return "gzip", str(level if level is not None else 6)  # pg_dump < 16 takes a bare gzip level


def _stamp(now: datetime) -> str:
    return now.strftime("%Y%m%dT%H%M%S") + f"{now.microsecond // 1000:03d}Z"


def take_backup(config: Config, conn: psycopg.Connection[Any], plan: Plan, pg_dump: ClientTool) -> BackupResult:
    """Dump the database into the backup target, verify it, write the manifest; BackupError on any failure."""
    dump_major, server_version = pg_dump.check_can_dump(conn)
    dump_version = pg_dump.version()
    database = conn.info.dbname
    started_at = datetime.now(UTC)
    from_version = plan.current_version or 0
    to_version = plan.target_version or from_version
    backup_id = f"{database}/{_stamp(started_at)}_{from_version}-to-{to_version}"
    method, compress = _compression(config, dump_major)

    # What the user configured (the child inherits libpq's PG* variables too); not the
    # connection's full parameter list, which names options an older libpq rejects.
    params: dict[str, Any] = dict(conninfo_to_dict(config.database_url)) if config.database_url else {}
    if config.password is not None:
        params["password"] = config.password
    conninfo, env = libpq_env(params, f"pgsluice {__version__} backup")
    command = [pg_dump.program, "--format=custom", f"--compress={compress}", "--no-password", f"--dbname={conninfo}"]

    sha = hashlib.sha256()
    size = 0
    failure: list[BaseException] = []
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert proc.stdout is not None and proc.stderr is not None  # noqa: S101 - both are PIPE
    stderr = StderrTail(proc.stderr)
    _widen_pipe(proc.stdout)

    def chunks() -> Iterator[bytes]:
        nonlocal size
        try:
            while True:
                chunk = proc.stdout.read(READ_CHUNK)  # type: ignore[union-attr]
                if not chunk:
                    break
                sha.update(chunk)
                size += len(chunk)
                yield chunk
            code = proc.wait()
            log.debug("backup.dump_finished", bytes=size, exit_code=code)
            if code != 0:
                how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
                said = config.redactor(stderr.text()) or "nothing on stderr"
                raise BackupError(
                    f"pg_dump {how} after {size} bytes: {said}",
                    hint="no migration was applied; fix the cause (see pg_dump's message) and run again",
                )
        except BaseException as exc:
            failure.append(exc)
            raise

    where = str(config.backup_url)
    try:
        # While pg_dump connects and reads the catalog: the store, and the size that shapes the upload.
        target = storage.open_target(config)
        key = target.key(backup_id + DUMP_SUFFIX)
        manifest_key = target.key(backup_id + MANIFEST_SUFFIX)
        where = target.display(key)
        part_size, concurrency = upload_shape(
            _database_bytes(conn), config.backup_part_size_bytes, config.backup_concurrency
        )
        log.info(
            "backup.started",
            object=target.display(key),
            pg_dump=dump_version,
            compression=compress,
            part_size_bytes=part_size,
            concurrency=concurrency,
        )
        _interruptible(
            lambda: storage.put_stream(target, key, chunks(), part_size=part_size, concurrency=concurrency),
            on_interrupt=proc.kill,  # its end of stream makes obstore abort the multipart upload
        )
    except BaseException as exc:
        if not isinstance(exc, Exception):
            raise  # a signal (143/130) wins over the pg_dump failure it caused
        if failure:
            raise failure[0] from None
        if isinstance(exc, psycopg.Error | PgsluiceError):
            raise  # the database connection (exit 3), the configuration (2): not the upload's doing
        raise BackupError(
            f"upload of {where} failed: {config.redactor(' '.join(str(exc).split()))[:600]}",
            hint="no migration was applied; check the backup target, its credentials and network, then run again",
        ) from None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    digest = sha.hexdigest()
    log.info("backup.uploaded", object=target.display(key), bytes=size, sha256=digest)

    verified = False
    if config.backup_verify:
        verify_object(config, target, key, size, digest)
        verified = True

    finished_at = datetime.now(UTC)
    manifest = {
        "format": "pgsluice-backup/1",
        "id": backup_id,
        "object": key,
        "sha256": digest,
        "size": size,
        "compression": method,
        "verified": verified,
        "pg_dump_version": dump_version,
        "server_version": server_version,
        "database": database,
        "from_version": plan.current_version,
        "to_version": plan.target_version,
        "planned": [m.filename for m in plan.pending],
        "started_at": started_at.isoformat(),
        "finished_at": finished_at.isoformat(),
        "host": config.hostname,
        "pgsluice_version": __version__,
    }
    try:
        body = json.dumps(manifest, indent=2).encode()
        _interruptible(lambda: storage.put_bytes(target, manifest_key, body))
    except Exception as exc:
        raise BackupError(
            f"writing the manifest {target.display(manifest_key)} failed: {' '.join(str(exc).split())[:600]}",
            hint="no migration was applied; the dump without a manifest is not a backup and will be cleaned up",
        ) from None
    log.info(
        "backup.completed",
        object=target.display(key),
        manifest=target.display(manifest_key),
        bytes=size,
        verified=verified,
        seconds=round((finished_at - started_at).total_seconds(), 3),
    )
    result = BackupResult(backup_id, target.display(key), target.display(manifest_key), size, digest, verified)
    apply_retention(config, target, database, keep_key=key)
    return result


def verify_object(config: Config, target: storage.Target, key: str, size: int, digest: str) -> None:
    """Read the object back through ``pg_restore --list``; its sha256 and size must match what was sent."""
    proc = subprocess.Popen(
        [config.pg_restore, "--list"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None  # noqa: S101
    stderr = StderrTail(proc.stderr)
    toc: list[int] = [0]

    def count_toc(stream: IO[bytes]) -> None:
        toc[0] = sum(1 for line in stream if line[:1].isdigit())

    counter = threading.Thread(target=count_toc, args=(proc.stdout,), daemon=True)
    counter.start()
    sha = hashlib.sha256()
    seen = 0
    try:
        for chunk in storage.read_stream(target, key):
            sha.update(chunk)
            seen += len(chunk)
            if proc.stdin is not None:
                try:
                    proc.stdin.write(chunk)
                except BrokenPipeError:  # pg_restore --list stops after the table of contents
                    proc.stdin = None
        if proc.stdin is not None:
            proc.stdin.close()
    except Exception as exc:
        proc.kill()
        raise BackupError(
            f"reading back {target.display(key)} failed: {' '.join(str(exc).split())[:600]}",
            hint="no migration was applied",
        ) from None
    code = proc.wait()
    counter.join(timeout=5)
    if code != 0:
        raise BackupError(
            f"pg_restore --list rejected {target.display(key)}: {stderr.text()}",
            hint="no migration was applied; the dump is unreadable",
        )
    if (seen, sha.hexdigest()) != (size, digest):
        raise BackupError(
            f"{target.display(key)} read back as {seen} bytes sha256 {sha.hexdigest()}, sent {size} bytes {digest}",
            hint="no migration was applied; the store returned something else than was written",
        )
    log.info("backup.verified", object=target.display(key), bytes=seen, toc_entries=toc[0])


@dataclass(frozen=True)
class BackupInfo:
    """A complete backup: its manifest exists and names its dump."""

    id: str
    database: str
    stamp: str
    time: str
    size: int
    from_version: int | None
    to_version: int | None
    object: str
    manifest_key: str
    dump_key: str
    sha256: str


def list_backups(target: storage.Target, database: str | None = None) -> list[BackupInfo]:
    """Complete backups, newest first; dumps without a manifest are not backups."""
    prefix = target.key(database) if database else target.prefix
    objects = storage.list_objects(target, prefix)
    keys = {o.key for o in objects}
    found: list[BackupInfo] = []
    for obj in objects:
        if not obj.key.endswith(MANIFEST_SUFFIX):
            continue
        dump_key = obj.key.removesuffix(MANIFEST_SUFFIX) + DUMP_SUFFIX
        name = obj.key.rsplit("/", 1)[-1]
        match = _STAMP.match(name)
        if dump_key not in keys or not match:
            continue
        body = json.loads(storage.read_bytes(target, obj.key))
        found.append(
            BackupInfo(
                id=str(body["id"]),
                database=str(body["database"]),
                stamp=match["stamp"],
                time=str(body["finished_at"]),
                size=int(body["size"]),
                from_version=body.get("from_version"),
                to_version=body.get("to_version"),
                object=target.display(dump_key),
                manifest_key=obj.key,
                dump_key=dump_key,
                sha256=str(body["sha256"]),
            )
        )
    return sorted(found, key=lambda b: b.stamp, reverse=True)


def _stamp_time(stamp: str) -> datetime:
    return datetime.strptime(stamp[:15], "%Y%m%dT%H%M%S").replace(tzinfo=UTC)


def apply_retention(config: Config, target: storage.Target, database: str, keep_key: str) -> list[str]:
    """Delete backups beyond --backup-keep or older than --backup-max-age; never the newest complete one."""
    deleted: list[str] = []
    if config.backup_keep is None and config.backup_max_age_seconds is None:
        return deleted
    backups = list_backups(target, database)
    now = datetime.now(UTC)
    for index, info in enumerate(backups):
        if index == 0 or info.dump_key == keep_key:
            continue  # the newest complete backup always stays
        too_many = config.backup_keep is not None and index >= config.backup_keep
        too_old = config.backup_max_age_seconds is not None and now - _stamp_time(info.stamp) > timedelta(
            seconds=config.backup_max_age_seconds
        )
        if too_many or too_old:
            storage.delete(target, info.manifest_key)  # first: without it the dump is no backup
            storage.delete(target, info.dump_key)
            deleted.append(info.id)
            log.info("backup.deleted", id=info.id, reason="keep" if too_many else "max_age")
    complete = {b.dump_key for b in backups}
    for obj in storage.list_objects(target, target.key(database)):
        if (
            obj.key.endswith(DUMP_SUFFIX)
            and obj.key not in complete
            and obj.key != keep_key
            and now - obj.last_modified > ORPHAN_GRACE
        ):
            storage.delete(target, obj.key)
            log.info("backup.orphan_deleted", object=target.display(obj.key))
    return deleted


def find_backup(target: storage.Target, backup_id: str) -> BackupInfo:
    """The backup with this id (``database/stamp_from-to-to``, or its last part alone)."""
    for info in list_backups(target):
        if backup_id in (info.id, info.id.rsplit("/", 1)[-1]):
            return info
    raise ConfigError(f"restore: no complete backup {backup_id!r} in {target.url}", hint="see 'pgsluice backups'")
