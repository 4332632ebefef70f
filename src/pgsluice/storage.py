"""Object-store URLs → obstore stores (s3://, gs://, az://, file://), and the few calls backups need.

Credentials come only from each cloud's standard chain, which obstore reads from the
environment (AWS static keys, web identity / IRSA, GCP and Azure workload identity);
pgsluice never logs them. obstore is imported where it is used: the start-time check of a
file:// target (``check_writable``) does without it.
"""

from __future__ import annotations

import errno
import os
import secrets
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlparse

from pgsluice.config import Config
from pgsluice.errors import ConfigError

CHECK_PREFIX = ".pgsluice-write-check-"
"""The zero-byte marker ``check_writable`` writes under the prefix and removes at once."""
CHECK_TIMEOUT_SECONDS = 10.0
# A folder that refuses a new file for one of these reasons will refuse the dump too: no retry helps.
_FOLDER_REFUSALS = frozenset(
    {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EEXIST, errno.EISDIR, errno.ELOOP, errno.ENAMETOOLONG}
)
_checked: set[tuple[object, ...]] = set()  # targets found writable by this process (a fleet checks each once)


@dataclass(frozen=True)
class StoredObject:
    """One object under the store's prefix."""

    key: str
    size: int
    last_modified: datetime


@dataclass(frozen=True)
class BackupStore:
    """An object store and the prefix inside it that pgsluice owns (from ``--backup-url``)."""

    client: Any
    """obstore's store object."""
    prefix: str
    url: str

    def key(self, *parts: str) -> str:
        """A key under the prefix."""
        return "/".join(p.strip("/") for p in (self.prefix, *parts) if p.strip("/"))

    def display(self, key: str) -> str:
        """The object's URL, for logs and the termination message."""
        base = self.url.rstrip("/")
        rel = key[len(self.prefix) :].lstrip("/") if self.prefix and key.startswith(self.prefix) else key
        return f"{base}/{rel}"


def open_store(config: Config, url: str | None = None, *, check: bool = False) -> BackupStore:
    """The store for ``--backup-url``; ConfigError for an unusable URL.

    ``check``: for ``check_writable``'s two small requests, no retries and a 10 s timeout."""
    from obstore.store import LocalStore, from_url

    _from_url: Any = from_url  # its overloads are per scheme; ours is chosen at run time
    url = url or config.backup_url or ""
    parsed = urlparse(url)
    retries = 0 if check else config.backup_retries
    retry = {
        "max_retries": retries,
        "retry_timeout": timedelta(seconds=max(10, 20 * (retries + 1))),
        "backoff": {"init_backoff": timedelta(milliseconds=200), "max_backoff": timedelta(seconds=15), "base": 2},
    }
    timeout = timedelta(seconds=CHECK_TIMEOUT_SECONDS) if check else timedelta(minutes=10)
    options: dict[str, Any] = {"connect_timeout": timedelta(seconds=10), "timeout": timeout}
    if parsed.scheme == "file":  # its shape was checked with the configuration (config.py)
        try:
            store = LocalStore(parsed.path, mkdir=True)
        except Exception as exc:
            raise ConfigError(f"--backup-url: cannot use {parsed.path}: {exc}") from exc
        return BackupStore(store, "", url)
    prefix = parsed.path.strip("/")
    bucket_url = f"{parsed.scheme}://{parsed.netloc}"
    kwargs: dict[str, Any] = {}
    if parsed.scheme in ("s3", "s3a"):
        if config.backup_endpoint:
            kwargs["endpoint"] = config.backup_endpoint
            if config.backup_endpoint.startswith("http://"):
                options["allow_http"] = True
        if config.backup_region:
            kwargs["region"] = config.backup_region
        if config.backup_path_style is not None:
            kwargs["virtual_hosted_style_request"] = not config.backup_path_style
    try:
        store = _from_url(bucket_url, client_options=options, retry_config=retry, **kwargs)
    except Exception as exc:
        raise ConfigError(f"--backup-url: cannot use {bucket_url}/{prefix}: {type(exc).__name__}: {exc}") from exc
    return BackupStore(store, prefix, url)


def check_writable(config: Config) -> str | None:
    """Write a zero-byte marker under the backup prefix and remove it: run before pgsluice waits for the database.

    ConfigError (exit 2) for what no retry fixes - a folder that cannot be created or written
    (read-only, not ours, a file where the folder should be), a bucket or container that does
    not exist, a store that refuses the credentials - instead of exit 8 (transient, retried)
    after the wait and the lock. Anything else (the store unreachable, a 5xx, a timeout) is
    returned as a warning and the run goes on: the backup itself retries, and fails with exit
    8 if it must. Each target is checked once per process (a fleet's runs share it)."""
    url = config.backup_url
    if url is None:
        return None
    target = (url, config.backup_endpoint, config.backup_region, config.backup_path_style)
    if target in _checked:
        return None
    parsed = urlparse(url)
    warning = _check_folder(parsed.path, url) if parsed.scheme == "file" else _check_bucket(config, url)
    if warning is None:
        _checked.add(target)
    return warning


def _check_folder(path: str, url: str) -> str | None:
    """A new file in ``path`` (created when missing), removed at once; through the OS, whose errno says why not."""
    try:
        os.makedirs(path, exist_ok=True)
        handle, marker = tempfile.mkstemp(prefix=CHECK_PREFIX, dir=path)
        os.close(handle)
        os.unlink(marker)
    except OSError as exc:
        why = f"{exc.strerror or exc} ({exc.filename})" if exc.filename else (exc.strerror or str(exc))
        if exc.errno in _FOLDER_REFUSALS:
            raise ConfigError(
                f"--backup-url {url}: cannot write a backup into {path}: {why}",
                hint="mount a folder there that pgsluice's user can write (in Kubernetes: a writable volume, "
                "fsGroup), or set another --backup-url",
            ) from exc
        return f"backup target {url} not checked at start: {why}; the backup will try it again"
    return None


def _check_bucket(config: Config, url: str) -> str | None:
    """PUT a zero-byte marker and DELETE it: a 404 on a PUT means the bucket or container does not exist."""
    import obstore
    from obstore.exceptions import NotFoundError, PermissionDeniedError, UnauthenticatedError

    store = open_store(config, check=True)
    key = store.key(f"{CHECK_PREFIX}{secrets.token_hex(8)}")
    try:
        obstore.put(store.client, key, b"", use_multipart=False)
    except (FileNotFoundError, NotFoundError) as exc:
        raise ConfigError(
            f"--backup-url {url}: the bucket or container does not exist ({_first_line(exc)})",
            hint="create it, or correct --backup-url (and --backup-endpoint)",
        ) from exc
    except (PermissionError, PermissionDeniedError, UnauthenticatedError) as exc:
        raise ConfigError(
            f"--backup-url {url}: the store refused to write {store.display(key)} ({_first_line(exc)})",
            hint="give pgsluice's credentials or workload identity write access to the prefix (on S3: "
            "s3:PutObject, s3:DeleteObject, s3:AbortMultipartUpload)",
        ) from exc
    except Exception as exc:  # noqa: BLE001 - unreachable, 5xx, timeout: the backup retries, and decides
        return f"backup target {url} not checked at start: {type(exc).__name__}: {_first_line(exc)}"
    try:
        obstore.delete(store.client, key)
    except Exception as exc:  # noqa: BLE001 - written, so the backup can work: say what is left behind
        return (
            f"the write check of backup target {url} left {store.display(key)} behind: {type(exc).__name__}: "
            f"{_first_line(exc)}; retention (--backup-keep, --backup-max-age) needs delete permission too"
        )
    return None


def _first_line(exc: BaseException, limit: int = 300) -> str:
    """obstore's message on one line, without its debug dump; of the store's XML answer, only its error code."""
    import re

    text = " ".join(str(exc).split("Debug source:")[0].split())
    text, _, answer = text.partition(" <?xml")
    code = re.search(r"<Code>([^<]+)</Code>", answer)
    return (f"{text} {code.group(1)}" if code else text)[:limit]


def put_stream(store: BackupStore, key: str, chunks: Iterable[bytes], *, part_size: int, concurrency: int) -> None:
    """Upload ``chunks`` as one object: multipart parts of ``part_size``; atomic, all or nothing."""
    import obstore

    obstore.put(store.client, key, iter(chunks), chunk_size=part_size, max_concurrency=concurrency)


def put_bytes(store: BackupStore, key: str, data: bytes) -> None:
    """Upload a small object in one request."""
    import obstore

    obstore.put(store.client, key, data, use_multipart=False)


def read_stream(store: BackupStore, key: str, chunk_size: int = 1024 * 1024) -> Iterator[bytes]:
    """The object's bytes, streamed."""
    import obstore

    result = obstore.get(store.client, key)
    for chunk in result.stream(min_chunk_size=chunk_size):
        yield bytes(chunk)


def read_bytes(store: BackupStore, key: str) -> bytes:
    """A small object's bytes."""
    import obstore

    return bytes(obstore.get(store.client, key).bytes())


def list_objects(store: BackupStore, prefix: str) -> list[StoredObject]:
    """Every object whose key starts with ``prefix``."""
    import obstore

    return [
        StoredObject(str(meta["path"]), int(meta["size"]), meta["last_modified"])
        for batch in obstore.list(store.client, prefix=prefix or None)
        for meta in batch
    ]


def delete(store: BackupStore, key: str) -> None:
    """Delete one object."""
    import obstore

    obstore.delete(store.client, key)
