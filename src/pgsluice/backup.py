"""Backups: pg_dump's stdout streamed into the object store, verified, manifest written last.

No verified backup, no migration. The dump never touches the local disk: pg_dump's
stdout is read in 1 MiB chunks, hashed, and uploaded as multipart parts of
``--backup-part-size``, ``--backup-concurrency`` at a time, so memory stays bounded
whatever the size of the database. The catalog (manifests, listing, retention) is
``catalog.py``.
"""

from __future__ import annotations

import contextlib
import hashlib
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any

import psycopg
import structlog

from pgsluice import __version__, progress, storage
from pgsluice.catalog import DUMP_SUFFIX, MANIFEST_SUFFIX, Manifest, apply_retention, stamp_of, write_manifest
from pgsluice.config import Config
from pgsluice.errors import BackupError, PgsluiceError
from pgsluice.events import Event
from pgsluice.pgtools import ClientTool, StderrTail, child_connection
from pgsluice.report import BackupSummary

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


def _widen_pipe(stream: IO[bytes]) -> None:
    """Let pg_dump run ahead of us by up to 1 MiB instead of the pipe's default 64 KiB (Linux)."""
    import fcntl

    set_pipe_size = getattr(fcntl, "F_SETPIPE_SZ", 1031)
    with contextlib.suppress(OSError):  # not Linux, or above pipe-max-size: the default pipe works too
        fcntl.fcntl(stream.fileno(), set_pipe_size, READ_CHUNK)


SIGNAL_CHECK_SECONDS = 0.1
"""How often a thread waiting for obstore runs Python, so that pending signal handlers run (as psycopg's waits do)."""


def interruptible(work: Callable[[], None], on_interrupt: Callable[[], None] = lambda: None) -> None:
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
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread, which raises it
            outcome.append(exc)
        finally:
            done.set()

    threading.Thread(target=run, name="pgsluice-store", daemon=True).start()
    try:
        # In short waits: a signal the kernel delivered to another thread (obstore's, say) is handled by this one
        # only when it runs Python again: SIGTERM, and the SIGALRM that starts progress reporting.
        while not done.wait(timeout=SIGNAL_CHECK_SECONDS):
            pass
    except BaseException:
        on_interrupt()
        done.wait(timeout=ABORT_GRACE_SECONDS)
        raise
    if outcome:
        raise outcome[0]


def _database_bytes(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
    return int(row[0]) if row else 0


def _compression(config: Config, dump_major: int) -> tuple[str, str]:
    level = config.backup_compression_level
    if dump_major >= 16:
        return "zstd", f"zstd:{level if level is not None else 3}"
    return "gzip", str(level if level is not None else 6)  # pg_dump < 16 takes a bare gzip level


def _check_dump_exit(code: int, size: int, stderr: str) -> None:
    """BackupError when pg_dump did not exit 0, with how it ended and its last words."""
    if code != 0:
        how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
        raise BackupError(
            f"pg_dump {how} after {size} bytes: {stderr}",
            hint="no migration was applied; fix the cause (see pg_dump's message) and run again",
        )


def _one_line(text: object, config: Config, limit: int = 600) -> str:
    return config.redactor(" ".join(str(text).split()))[:limit]


@dataclass(frozen=True)
class BackupPurpose:
    """What the backup is taken before: the versions it goes from and to, and the files to run."""

    from_version: int | None
    to_version: int | None
    planned: tuple[str, ...]


def take_backup(
    config: Config, conn: psycopg.Connection[Any], purpose: BackupPurpose, pg_dump: ClientTool
) -> BackupSummary:
    """Dump the database into the backup store, verify it, write the manifest; BackupError on any failure."""
    dump_major, server_version = pg_dump.check_can_dump(conn)
    dump_version = pg_dump.version()
    database = conn.info.dbname
    label = f"{database}/{config.search_schema}" if config.search_schema else database  # a fleet's schema target
    started_at = datetime.now(UTC)
    from_version = purpose.from_version or 0
    to_version = purpose.to_version if purpose.to_version is not None else from_version
    backup_id = f"{label}/{stamp_of(started_at)}_{from_version}-to-{to_version}"
    method, compress = _compression(config, dump_major)

    sha = hashlib.sha256()
    size = 0
    meter = progress.BackupProgress(
        0,  # the database's size, measured below while pg_dump connects
        after_seconds=config.progress_after_seconds,
        interval_seconds=config.progress_interval_seconds,
        console=progress.progress_console(config.log_format),
    )
    failure: list[BaseException] = []
    # The temporary service file (when a credential needs one) lives as long as pg_dump does.
    connection = contextlib.ExitStack()
    conninfo, env = connection.enter_context(child_connection(config.database_url, config.password, "backup"))
    command = [pg_dump.program, "--format=custom", f"--compress={compress}", "--no-password", "--dbname", conninfo]
    if config.search_schema:
        command.append(f"--schema={config.search_schema}")
    try:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    except BaseException:
        connection.close()
        raise
    assert proc.stdout is not None and proc.stderr is not None  # noqa: S101 - both are PIPE
    stderr = StderrTail(proc.stderr)
    _widen_pipe(proc.stdout)
    stdout = proc.stdout

    def chunks() -> Iterator[bytes]:
        nonlocal size
        try:
            while chunk := stdout.read(READ_CHUNK):
                sha.update(chunk)
                size += len(chunk)
                meter.update(size)
                yield chunk
            code = proc.wait()
            log.debug(Event.BACKUP_DUMP_FINISHED, bytes=size, exit_code=code)
            _check_dump_exit(code, size, config.redactor(stderr.text()))
        except BaseException as exc:
            failure.append(exc)
            raise

    where = str(config.backup_url)
    try:
        # While pg_dump connects and reads the catalog: the store, and the size that shapes the upload.
        store = storage.open_store(config)
        key = store.key(backup_id + DUMP_SUFFIX)
        manifest_key = store.key(backup_id + MANIFEST_SUFFIX)
        where = store.display(key)
        database_bytes = _database_bytes(conn)
        part_size, concurrency = upload_shape(database_bytes, config.backup_part_size_bytes, config.backup_concurrency)
        meter.expected_bytes = database_bytes
        log.info(
            Event.BACKUP_STARTED,
            object=where,
            pg_dump=dump_version,
            compression=compress,
            part_size_bytes=part_size,
            concurrency=concurrency,
        )
        with meter:  # backup.progress while it runs long, also while pg_dump is stalled
            interruptible(
                lambda: storage.put_stream(store, key, chunks(), part_size=part_size, concurrency=concurrency),
                on_interrupt=proc.kill,  # its end of stream makes obstore abort the multipart upload
            )
    except Exception as exc:  # a signal (143/130) is not an Exception: it wins over what it caused
        if failure:
            raise failure[0] from exc
        if isinstance(exc, psycopg.Error | PgsluiceError):
            raise  # the database connection (exit 3), the configuration (2): not the upload's doing
        raise BackupError(
            f"upload of {where} failed: {_one_line(exc, config)}",
            hint="no migration was applied; check the backup target, its credentials and network, then run again",
        ) from exc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        stdout.close()
        connection.close()
    digest = sha.hexdigest()
    log.info(Event.BACKUP_UPLOADED, object=where, bytes=size, sha256=digest)

    verified = False
    if config.backup_verify:
        verify_object(config, store, key, size, digest)
        verified = True

    finished_at = datetime.now(UTC)
    manifest = Manifest(
        id=backup_id,
        object=key,
        sha256=digest,
        size=size,
        compression=method,
        verified=verified,
        pg_dump_version=dump_version,
        server_version=server_version,
        database=database,
        from_version=purpose.from_version,
        to_version=purpose.to_version,
        planned=list(purpose.planned),
        started_at=started_at.isoformat(),
        finished_at=finished_at.isoformat(),
        host=config.hostname,
        pgsluice_version=__version__,
    )
    try:
        interruptible(lambda: write_manifest(store, manifest_key, manifest))
    except Exception as exc:
        raise BackupError(
            f"writing the manifest {store.display(manifest_key)} failed: {_one_line(exc, config)}",
            hint="no migration was applied; the dump without a manifest is not a backup and will be cleaned up",
        ) from exc
    log.info(
        Event.BACKUP_COMPLETED,
        object=where,
        manifest=store.display(manifest_key),
        bytes=size,
        verified=verified,
        seconds=round((finished_at - started_at).total_seconds(), 3),
    )
    apply_retention(store, label, keep=config.backup_keep, max_age_seconds=config.backup_max_age_seconds, keep_key=key)
    return BackupSummary(backup_id, where, size, digest, verified)


def verify_object(config: Config, store: storage.BackupStore, key: str, size: int, digest: str) -> None:
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
    sink: IO[bytes] | None = proc.stdin
    try:
        for chunk in storage.read_stream(store, key):
            sha.update(chunk)
            seen += len(chunk)
            if sink is not None:
                try:
                    sink.write(chunk)
                except BrokenPipeError:  # pg_restore --list stops after the table of contents
                    sink = None
        if sink is not None:
            sink.close()
    except Exception as exc:
        proc.kill()
        raise BackupError(
            f"reading back {store.display(key)} failed: {_one_line(exc, config)}",
            hint="no migration was applied",
        ) from exc
    code = proc.wait()
    counter.join(timeout=5)
    if code != 0:
        raise BackupError(
            f"pg_restore --list rejected {store.display(key)}: {config.redactor(stderr.text())}",
            hint="no migration was applied; the dump is unreadable",
        )
    if (seen, sha.hexdigest()) != (size, digest):
        raise BackupError(
            f"{store.display(key)} read back as {seen} bytes sha256 {sha.hexdigest()}, sent {size} bytes {digest}",
            hint="no migration was applied; the store returned something else than was written",
        )
    log.info(Event.BACKUP_VERIFIED, object=store.display(key), bytes=seen, toc_entries=toc[0])
