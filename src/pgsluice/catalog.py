"""The catalog of backups in a store: manifests written and read, backups listed, found and retired.

A backup is a dump and, written last as its completion marker, a manifest beside it. A
dump without a manifest is not a backup: listing and retention ignore it, and retention
removes such leftovers after an hour.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from pgsluice import storage
from pgsluice.errors import ConfigError
from pgsluice.events import Event

log = structlog.get_logger("pgsluice.catalog")

MANIFEST_FORMAT = "pgsluice-backup/1"
MANIFEST_SUFFIX = ".manifest.json"
DUMP_SUFFIX = ".dump"
ORPHAN_GRACE = timedelta(hours=1)
_STAMP = re.compile(r"^(?P<stamp>\d{8}T\d{9}Z)_")


def stamp_of(moment: datetime) -> str:
    """``20261201T224220123Z``: the sortable UTC time that starts every backup's name."""
    return moment.strftime("%Y%m%dT%H%M%S") + f"{moment.microsecond // 1000:03d}Z"


def _time_of(stamp: str) -> datetime:
    return datetime.strptime(stamp[:15], "%Y%m%dT%H%M%S").replace(tzinfo=UTC)


@dataclass(frozen=True)
class Manifest:
    """What a complete backup is: written last, read to list, verify and restore it."""

    id: str
    object: str
    """The dump's key in the store."""
    sha256: str
    size: int
    compression: str
    verified: bool
    pg_dump_version: str
    server_version: str
    database: str
    from_version: int | None
    to_version: int | None
    planned: list[str]
    started_at: str
    finished_at: str
    host: str
    pgsluice_version: str
    format: str = MANIFEST_FORMAT

    def to_json(self) -> bytes:
        """The manifest object's body."""
        return json.dumps(asdict(self), indent=2).encode()

    @classmethod
    def from_json(cls, body: bytes) -> Manifest:
        """Read a manifest; fields added by later releases are ignored."""
        doc: dict[str, Any] = json.loads(body)
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in doc.items() if k in names})


@dataclass(frozen=True)
class BackupInfo:
    """A complete backup: its manifest exists and names its dump."""

    id: str
    database: str
    stamp: str
    finished_at: str
    size: int
    from_version: int | None
    to_version: int | None
    object_url: str
    manifest_key: str
    dump_key: str
    sha256: str

    def as_json(self) -> dict[str, Any]:
        """What ``pgsluice backups --json`` prints for it."""
        return {
            "id": self.id,
            "database": self.database,
            "finished_at": self.finished_at,
            "size": self.size,
            "from_version": self.from_version,
            "to_version": self.to_version,
            "object": self.object_url,
            "sha256": self.sha256,
        }


def write_manifest(store: storage.BackupStore, key: str, manifest: Manifest) -> None:
    """Store the manifest: from now on the dump is a backup."""
    storage.put_bytes(store, key, manifest.to_json())


def list_backups(store: storage.BackupStore, database: str | None = None) -> list[BackupInfo]:
    """Complete backups, newest first; dumps without a manifest are not backups."""
    prefix = store.key(database) if database else store.prefix
    objects = storage.list_objects(store, prefix)
    keys = {o.key for o in objects}
    found: list[BackupInfo] = []
    for obj in objects:
        if not obj.key.endswith(MANIFEST_SUFFIX):
            continue
        dump_key = obj.key.removesuffix(MANIFEST_SUFFIX) + DUMP_SUFFIX
        match = _STAMP.match(obj.key.rsplit("/", 1)[-1])
        if dump_key not in keys or not match:
            continue
        manifest = Manifest.from_json(storage.read_bytes(store, obj.key))
        found.append(
            BackupInfo(
                id=manifest.id,
                database=manifest.database,
                stamp=match["stamp"],
                finished_at=manifest.finished_at,
                size=manifest.size,
                from_version=manifest.from_version,
                to_version=manifest.to_version,
                object_url=store.display(dump_key),
                manifest_key=obj.key,
                dump_key=dump_key,
                sha256=manifest.sha256,
            )
        )
    return sorted(found, key=lambda b: b.stamp, reverse=True)


def apply_retention(
    store: storage.BackupStore,
    database: str,
    *,
    keep: int | None,
    max_age_seconds: float | None,
    keep_key: str,
) -> list[str]:
    """Delete backups beyond ``keep`` or older than ``max_age_seconds``; never the newest complete one."""
    deleted: list[str] = []
    if keep is None and max_age_seconds is None:
        return deleted
    backups = list_backups(store, database)
    now = datetime.now(UTC)
    for index, info in enumerate(backups):
        if index == 0 or info.dump_key == keep_key:
            continue  # the newest complete backup always stays
        too_many = keep is not None and index >= keep
        too_old = max_age_seconds is not None and now - _time_of(info.stamp) > timedelta(seconds=max_age_seconds)
        if too_many or too_old:
            storage.delete(store, info.manifest_key)  # first: without it the dump is no backup
            storage.delete(store, info.dump_key)
            deleted.append(info.id)
            log.info(Event.BACKUP_DELETED, id=info.id, reason="keep" if too_many else "max_age")
    complete = {b.dump_key for b in backups}
    for obj in storage.list_objects(store, store.key(database)):
        if (
            obj.key.endswith(DUMP_SUFFIX)
            and obj.key not in complete
            and obj.key != keep_key
            and now - obj.last_modified > ORPHAN_GRACE
        ):
            storage.delete(store, obj.key)
            log.info(Event.BACKUP_ORPHAN_DELETED, object=store.display(obj.key))
    return deleted


def find_backup(store: storage.BackupStore, backup_id: str) -> BackupInfo:
    """The backup with this id (``database/stamp_from-to-to``, or its last part alone)."""
    for info in list_backups(store):
        if backup_id in (info.id, info.id.rsplit("/", 1)[-1]):
            return info
    raise ConfigError(f"restore: no complete backup {backup_id!r} in {store.url}", hint="see 'pgsluice backups'")
