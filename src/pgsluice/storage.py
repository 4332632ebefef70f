"""Object-store URLs → obstore stores (s3://, gs://, az://, file://), and the few calls backups need.

Credentials come only from each cloud's standard chain, which obstore reads from the
environment (AWS static keys, web identity / IRSA, GCP and Azure workload identity);
pgsluice never logs them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlparse

import obstore
from obstore.store import LocalStore, from_url

from pgsluice.config import Config
from pgsluice.errors import ConfigError

_from_url: Any = from_url  # its overloads are per scheme; ours is chosen at run time


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


def open_store(config: Config, url: str | None = None) -> BackupStore:
    """The store for ``--backup-url``; ConfigError for an unusable URL."""
    url = url or config.backup_url or ""
    parsed = urlparse(url)
    retry = {
        "max_retries": config.backup_retries,
        "retry_timeout": timedelta(seconds=max(10, 20 * (config.backup_retries + 1))),
        "backoff": {"init_backoff": timedelta(milliseconds=200), "max_backoff": timedelta(seconds=15), "base": 2},
    }
    options: dict[str, Any] = {"connect_timeout": timedelta(seconds=10), "timeout": timedelta(minutes=10)}
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


def put_stream(store: BackupStore, key: str, chunks: Iterable[bytes], *, part_size: int, concurrency: int) -> None:
    """Upload ``chunks`` as one object: multipart parts of ``part_size``; atomic, all or nothing."""
    obstore.put(store.client, key, iter(chunks), chunk_size=part_size, max_concurrency=concurrency)


def put_bytes(store: BackupStore, key: str, data: bytes) -> None:
    """Upload a small object in one request."""
    obstore.put(store.client, key, data, use_multipart=False)


def read_stream(store: BackupStore, key: str, chunk_size: int = 1024 * 1024) -> Iterator[bytes]:
    """The object's bytes, streamed."""
    result = obstore.get(store.client, key)
    for chunk in result.stream(min_chunk_size=chunk_size):
        yield bytes(chunk)


def read_bytes(store: BackupStore, key: str) -> bytes:
    """A small object's bytes."""
    return bytes(obstore.get(store.client, key).bytes())


def list_objects(store: BackupStore, prefix: str) -> list[StoredObject]:
    """Every object whose key starts with ``prefix``."""
    return [
        StoredObject(str(meta["path"]), int(meta["size"]), meta["last_modified"])
        for batch in obstore.list(store.client, prefix=prefix or None)
        for meta in batch
    ]


def delete(store: BackupStore, key: str) -> None:
    """Delete one object."""
    obstore.delete(store.client, key)
