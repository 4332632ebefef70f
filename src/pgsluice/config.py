"""Configuration: flags, environment and mounted secrets merged into one frozen Config.

Precedence: flag > ``PGSLUICE_*`` environment > standard environment
(``DATABASE_URL``, libpq's own ``PG*`` variables, cloud SDK variables) > default.
This is the only module that reads ``os.environ``; everything is validated here,
before the first network call.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pgsluice.errors import ConfigError
from pgsluice.redact import Redactor

DEFAULT_HISTORY_TABLE = "public.pgsluice_history"
DEFAULT_TERMINATION_LOG = Path("/dev/termination-log")
BACKUP_SCHEMES = ("s3://", "s3a://", "gs://", "az://", "azure://", "abfs://", "abfss://", "file://")
COMMANDS = ("migrate", "status", "plan", "baseline", "resolve", "new", "lint", "backup", "backups", "restore")
SECRET_ENV = (
    "PGPASSWORD",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_ACCESS_KEY",
    "AZURE_CLIENT_SECRET",
    "AZURE_STORAGE_SAS_KEY",
    "GOOGLE_SERVICE_ACCOUNT_KEY",
)

_DURATION = re.compile(r"^\s*(?P<num>\d+(?:\.\d+)?)\s*(?P<unit>ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_SIZE = re.compile(r"^\s*(?P<num>\d+)\s*(?P<unit>B|KiB|MiB|GiB|K|M|G)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"b": 1, "k": 1024, "kib": 1024, "m": 1024**2, "mib": 1024**2, "g": 1024**3, "gib": 1024**3, None: 1}
_IDENT = re.compile(r"^[a-z_][a-z0-9_$]{0,62}$")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def parse_duration(text: str) -> float:
    """Seconds from ``90``, ``90s``, ``500ms``, ``5m``, ``2h`` or ``7d``."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a duration (examples: 30, 30s, 500ms, 5m, 2h)")
    return float(match["num"]) * _DURATION_UNITS[match["unit"]]


def parse_size(text: str) -> int:
    """Bytes from ``1048576``, ``64MiB``, ``64M`` or ``1GiB``."""
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a size (examples: 64MiB, 1GiB, 1048576)")
    unit = match["unit"].lower() if match["unit"] else None
    return int(match["num"]) * _SIZE_UNITS[unit]


def parse_bool(text: str) -> bool:
    """A boolean from an environment variable's text."""
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{text!r} is not a boolean (use true or false)")


def parse_int(text: str) -> int:
    """A non-negative whole number."""
    value = int(text)
    if value < 0:
        raise ValueError(f"{text!r} must not be negative")
    return value


@dataclass(frozen=True)
class Option:
    """One setting: its flag, its environment variable, its default and its unit."""

    dest: str
    flag: str
    env: str | None
    default: Any
    parse: Callable[[str], Any] | None
    help: str
    unit: str = ""
    boolean: bool = False
    commands: tuple[str, ...] = COMMANDS
    standard_env: tuple[str, ...] = ()


_DB = ("migrate", "status", "plan", "baseline", "resolve", "backup", "backups", "restore")
_MIGRATE = ("migrate", "plan")
_BACKUP = ("migrate", "backup", "backups", "restore")

OPTIONS: tuple[Option, ...] = (
    Option(
        "database_url",
        "--database-url",
        "PGSLUICE_DATABASE_URL",
        "",
        None,
        "libpq URL or conninfo of the database; unset: libpq's PG* variables",
        commands=_DB,
        standard_env=("DATABASE_URL",),
    ),
    Option(
        "migrations_dir",
        "--migrations-dir",
        "PGSLUICE_MIGRATIONS_DIR",
        "./migrations",
        None,
        "folder of NNN_name.sql files",
    ),
    Option(
        "history_table",
        "--history-table",
        "PGSLUICE_HISTORY_TABLE",
        DEFAULT_HISTORY_TABLE,
        None,
        "schema-qualified history table; also keys the advisory lock",
        commands=_DB,
    ),
    Option(
        "wait_timeout_seconds",
        "--wait-timeout",
        "PGSLUICE_WAIT_TIMEOUT",
        60.0,
        parse_duration,
        "deadline for the database to accept connections",
        "seconds",
        commands=_DB,
    ),
    Option(
        "connect_timeout_seconds",
        "--connect-timeout",
        "PGSLUICE_CONNECT_TIMEOUT",
        5.0,
        parse_duration,
        "timeout of one connection attempt",
        "seconds",
        commands=_DB,
    ),
    Option(
        "lock_timeout_seconds",
        "--lock-timeout",
        "PGSLUICE_LOCK_TIMEOUT",
        300.0,
        parse_duration,
        "deadline to acquire the advisory lock",
        "seconds",
        commands=_DB,
    ),
    Option(
        "ddl_lock_timeout_seconds",
        "--ddl-lock-timeout",
        "PGSLUICE_DDL_LOCK_TIMEOUT",
        5.0,
        parse_duration,
        "lock_timeout of each migration; 0 waits forever",
        "seconds",
        commands=_MIGRATE,
    ),
    Option(
        "statement_timeout_seconds",
        "--statement-timeout",
        "PGSLUICE_STATEMENT_TIMEOUT",
        0.0,
        parse_duration,
        "statement_timeout of each statement of a migration; 0 is off",
        "seconds",
        commands=_MIGRATE,
    ),
    Option(
        "ddl_retries",
        "--ddl-retries",
        "PGSLUICE_DDL_RETRIES",
        5,
        parse_int,
        "retries of a migration that hit lock_timeout (55P03) or a deadlock (40P01)",
        "count",
        commands=_MIGRATE,
    ),
    Option(
        "ddl_retry_delay_seconds",
        "--ddl-retry-delay",
        "PGSLUICE_DDL_RETRY_DELAY",
        1.0,
        parse_duration,
        "first backoff between those retries (doubles, with jitter, at most 30 s)",
        "seconds",
        commands=_MIGRATE,
    ),
    Option(
        "allow_out_of_order",
        "--allow-out-of-order",
        "PGSLUICE_ALLOW_OUT_OF_ORDER",
        False,
        parse_bool,
        "apply pending versions lower than the highest applied one",
        boolean=True,
        commands=_MIGRATE,
    ),
    Option(
        "log_format",
        "--log-format",
        "PGSLUICE_LOG_FORMAT",
        "auto",
        None,
        "auto (JSON unless stderr is a terminal), json or console",
    ),
    Option("log_level", "--log-level", "PGSLUICE_LOG_LEVEL", "info", None, "debug, info, warning or error"),
    Option(
        "termination_log",
        "--termination-log",
        "PGSLUICE_TERMINATION_LOG",
        None,
        None,
        "file for the one-line failure reason; default /dev/termination-log when it exists",
    ),
    Option(
        "backup_url",
        "--backup-url",
        "PGSLUICE_BACKUP_URL",
        None,
        None,
        "s3://bucket/prefix, gs://…, az://…, file:///path or none",
        commands=_BACKUP,
    ),
    Option(
        "require_backup",
        "--require-backup",
        "PGSLUICE_REQUIRE_BACKUP",
        False,
        parse_bool,
        "fail (exit 2) when no backup URL is set",
        boolean=True,
        commands=("migrate",),
    ),
    Option(
        "backup_verify",
        "--backup-verify",
        "PGSLUICE_BACKUP_VERIFY",
        True,
        parse_bool,
        "read the dump back (pg_restore --list, sha256, size) after upload",
        boolean=True,
        commands=("migrate", "backup"),
    ),
    Option(
        "backup_keep",
        "--backup-keep",
        "PGSLUICE_BACKUP_KEEP",
        None,
        parse_int,
        "keep at most this many complete backups",
        "count",
        commands=("migrate", "backup"),
    ),
    Option(
        "backup_max_age_seconds",
        "--backup-max-age",
        "PGSLUICE_BACKUP_MAX_AGE",
        None,
        parse_duration,
        "delete complete backups older than this (the newest is always kept)",
        "seconds",
        commands=("migrate", "backup"),
    ),
    Option(
        "backup_compression_level",
        "--backup-compression-level",
        "PGSLUICE_BACKUP_COMPRESSION_LEVEL",
        None,
        parse_int,
        "pg_dump compression level (zstd 1-19 when pg_dump >= 16, else gzip 0-9)",
        "level",
        commands=("migrate", "backup"),
    ),
    Option(
        "backup_part_size_bytes",
        "--backup-part-size",
        "PGSLUICE_BACKUP_PART_SIZE",
        None,
        parse_size,
        "multipart part size; unset: the database size / 8000, from 8MiB to 96MiB",
        "bytes",
        commands=("migrate", "backup"),
    ),
    Option(
        "backup_concurrency",
        "--backup-concurrency",
        "PGSLUICE_BACKUP_CONCURRENCY",
        None,
        parse_int,
        "parts uploaded at once; unset: as many as fit 128MiB, from 1 to 4",
        "count",
        commands=("migrate", "backup"),
    ),
    Option(
        "backup_endpoint",
        "--backup-endpoint",
        "PGSLUICE_BACKUP_ENDPOINT",
        None,
        None,
        "S3-compatible endpoint URL (MinIO, R2, Ceph); http:// allows plain HTTP",
        commands=_BACKUP,
        standard_env=("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"),
    ),
    Option(
        "backup_region",
        "--backup-region",
        "PGSLUICE_BACKUP_REGION",
        None,
        None,
        "S3 region",
        commands=_BACKUP,
        standard_env=("AWS_REGION", "AWS_DEFAULT_REGION"),
    ),
    Option(
        "backup_path_style",
        "--backup-path-style",
        "PGSLUICE_BACKUP_PATH_STYLE",
        None,
        parse_bool,
        "S3 path-style requests (endpoint/bucket/key), as MinIO and Ceph want",
        boolean=True,
        commands=_BACKUP,
    ),
    Option(
        "backup_retries",
        "--backup-retries",
        "PGSLUICE_BACKUP_RETRIES",
        5,
        parse_int,
        "retries of each object-store request (5xx, connection errors), with backoff",
        "count",
        commands=_BACKUP,
    ),
    Option(
        "pg_dump", "--pg-dump", "PGSLUICE_PG_DUMP", "pg_dump", None, "pg_dump program", commands=("migrate", "backup")
    ),
    Option(
        "pg_restore", "--pg-restore", "PGSLUICE_PG_RESTORE", "pg_restore", None, "pg_restore program", commands=_BACKUP
    ),
)
OPTIONS_BY_DEST = {opt.dest: opt for opt in OPTIONS}


@dataclass(frozen=True)
class TableName:
    """A schema-qualified table name."""

    schema: str
    name: str

    def __str__(self) -> str:
        return f"{self.schema}.{self.name}"


@dataclass(frozen=True)
class Config:
    """Everything a run needs, validated; defaults live in ``OPTIONS``."""

    command: str = "migrate"
    database_url: str = ""
    password: str | None = None
    pg_options: str = ""
    migrations_dir: Path = Path("./migrations")
    history_table: TableName = TableName("public", "pgsluice_history")
    wait_timeout_seconds: float = 60.0
    wait_max_interval_seconds: float = 2.0
    connect_timeout_seconds: float = 5.0
    lock_timeout_seconds: float = 300.0
    lock_poll_max_seconds: float = 0.25
    ddl_lock_timeout_seconds: float = 5.0
    statement_timeout_seconds: float = 0.0
    ddl_retries: int = 5
    ddl_retry_delay_seconds: float = 1.0
    allow_out_of_order: bool = False
    log_format: str = "auto"
    log_level: str = "info"
    termination_log: Path | None = None
    hostname: str = "localhost"
    backup_url: str | None = None
    require_backup: bool = False
    backup_verify: bool = True
    backup_keep: int | None = None
    backup_max_age_seconds: float | None = None
    backup_compression_level: int | None = None
    backup_endpoint: str | None = None
    backup_region: str | None = None
    backup_path_style: bool | None = None
    backup_retries: int = 5
    backup_part_size_bytes: int | None = None
    backup_concurrency: int | None = None
    pg_dump: str = "pg_dump"
    pg_restore: str = "pg_restore"
    # Command arguments.
    json_output: bool = False
    exit_code: bool = False
    version: int | None = None
    resolve_as: str | None = None
    name: str | None = None
    backup_id: str | None = None
    target_database_url: str | None = None
    clean: bool = False
    redactor: Redactor = field(default_factory=Redactor, compare=False, repr=False)

    @property
    def lock_key(self) -> int:
        """The advisory lock key: a signed 64-bit hash of the history table's name."""
        import hashlib

        digest = hashlib.sha256(f"pgsluice:{self.history_table}".encode()).digest()
        return int.from_bytes(digest[:8], "big", signed=True)


def parse_table_name(text: str) -> TableName:
    """``schema.table`` (``table`` alone means ``public.table``), plain lowercase identifiers."""
    parts = text.strip().split(".")
    if len(parts) == 1:
        parts = ["public", parts[0]]
    if len(parts) != 2 or not all(_IDENT.match(p) for p in parts):
        raise ValueError(
            f"{text!r} is not a table name: use schema.table with lowercase letters, digits and underscores"
        )
    return TableName(parts[0], parts[1])


def _read_secret_file(env_name: str, path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(
            f"{env_name}: cannot read {path}: {exc.strerror}",
            hint="mount the secret file or unset the variable",
        ) from exc


def _lookup(opt: Option, args: Mapping[str, Any], env: Mapping[str, str]) -> tuple[Any, str]:
    """The raw value of ``opt`` and where it came from, by precedence."""
    given = args.get(opt.dest)
    if given is not None:
        return given, opt.flag
    for name in (opt.env, *opt.standard_env):
        if name and name in env:
            return env[name], name
    return opt.default, "default"


def _check_backup_url(url: str) -> None:
    """The shape of --backup-url, checked before anything runs (the store itself is opened later)."""
    hint = "use s3://bucket/prefix, gs://bucket/prefix, az://container/prefix, file:///path or none"
    shown = Redactor()(url)
    if not url.startswith(BACKUP_SCHEMES):
        raise ConfigError(f"--backup-url: {shown!r} is not a supported backup target", hint=hint)
    parsed = urlparse(url)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost") or not parsed.path.startswith("/"):
            # file://backups/x names a host "backups", not the folder ./backups/x
            raise ConfigError(f"--backup-url: {shown!r} must be an absolute file:///path", hint=hint)
    elif not parsed.netloc:
        raise ConfigError(f"--backup-url: {shown!r} names no bucket or container", hint=hint)


def load_config(args: Mapping[str, Any], env: Mapping[str, str] | None = None) -> Config:
    """Merge parsed flags with the environment; raises ConfigError naming the bad setting."""
    env = os.environ if env is None else env
    redactor = Redactor(env[name] for name in SECRET_ENV if env.get(name))
    values: dict[str, Any] = {}
    for opt in OPTIONS:
        raw, source = _lookup(opt, args, env)
        if isinstance(raw, str) and opt.parse is not None:
            try:
                raw = opt.parse(raw)
            except ValueError as exc:
                raise ConfigError(f"{source}: {exc}") from exc
        values[opt.dest] = raw

    # Mounted secrets: *_FILE variants, unless the value itself was given.
    if not args.get("database_url") and "PGSLUICE_DATABASE_URL" not in env:
        for name in ("PGSLUICE_DATABASE_URL_FILE", "DATABASE_URL_FILE"):
            if env.get(name):
                values["database_url"] = _read_secret_file(name, env[name])
                break
    password = None
    if env.get("PGPASSWORD_FILE"):
        password = _read_secret_file("PGPASSWORD_FILE", env["PGPASSWORD_FILE"])
        redactor.add(password)

    database_url = str(values["database_url"] or "")
    url_params = _conninfo_params(database_url) if database_url else {}
    redactor.add(url_params.get("password"))
    if args.get("target_database_url"):
        redactor.add(_password_of(str(args["target_database_url"])))
    # libpq ignores PGOPTIONS when the URL has options; we add ours to whichever applies.
    pg_options = str(url_params.get("options") or env.get("PGOPTIONS") or "")

    try:
        history_table = parse_table_name(str(values["history_table"]))
    except ValueError as exc:
        raise ConfigError(f"--history-table: {exc}") from exc

    log_format = str(values["log_format"]).lower()
    if log_format not in ("auto", "json", "console"):
        raise ConfigError(f"--log-format: {log_format!r} is not one of auto, json, console")
    log_level = str(values["log_level"]).lower()
    if log_level not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"--log-level: {log_level!r} is not one of debug, info, warning, error")

    termination_log = values["termination_log"]
    if termination_log is None and DEFAULT_TERMINATION_LOG.exists():
        termination_log = DEFAULT_TERMINATION_LOG

    for dest in ("wait_timeout_seconds", "lock_timeout_seconds", "connect_timeout_seconds"):
        if values[dest] <= 0:
            raise ConfigError(f"{OPTIONS_BY_DEST[dest].flag}: must be greater than 0")
    if values["backup_part_size_bytes"] is not None and values["backup_part_size_bytes"] < 5 * 1024**2:
        raise ConfigError("--backup-part-size: must be at least 5MiB (the S3 minimum part size)")
    if values["backup_concurrency"] is not None and values["backup_concurrency"] < 1:
        raise ConfigError("--backup-concurrency: must be at least 1")
    backup_url = values["backup_url"]
    if isinstance(backup_url, str) and backup_url.strip().lower() in ("", "none"):
        backup_url = "none"
    elif isinstance(backup_url, str):
        _check_backup_url(backup_url)

    command = str(args.get("command") or "migrate")
    if command == "migrate" and values["require_backup"] and backup_url in (None, "none"):
        raise ConfigError(
            "--require-backup is set but no backup target is configured",
            hint="set --backup-url / PGSLUICE_BACKUP_URL to s3://, gs://, az:// or file:// URL",
        )

    return Config(
        command=command,
        database_url=database_url,
        password=password,
        pg_options=pg_options,
        migrations_dir=Path(str(values["migrations_dir"])),
        history_table=history_table,
        wait_timeout_seconds=float(values["wait_timeout_seconds"]),
        connect_timeout_seconds=float(values["connect_timeout_seconds"]),
        lock_timeout_seconds=float(values["lock_timeout_seconds"]),
        ddl_lock_timeout_seconds=float(values["ddl_lock_timeout_seconds"]),
        statement_timeout_seconds=float(values["statement_timeout_seconds"]),
        ddl_retries=int(values["ddl_retries"]),
        ddl_retry_delay_seconds=float(values["ddl_retry_delay_seconds"]),
        allow_out_of_order=bool(values["allow_out_of_order"]),
        log_format=log_format,
        log_level=log_level,
        termination_log=Path(termination_log) if termination_log else None,
        hostname=env.get("HOSTNAME") or socket.gethostname(),
        backup_url=backup_url,
        require_backup=bool(values["require_backup"]),
        backup_verify=bool(values["backup_verify"]),
        backup_keep=values["backup_keep"],
        backup_max_age_seconds=values["backup_max_age_seconds"],
        backup_compression_level=values["backup_compression_level"],
        backup_endpoint=values["backup_endpoint"],
        backup_region=values["backup_region"],
        backup_path_style=values["backup_path_style"],
        backup_retries=int(values["backup_retries"]),
        backup_part_size_bytes=values["backup_part_size_bytes"],
        backup_concurrency=values["backup_concurrency"],
        pg_dump=str(values["pg_dump"]),
        pg_restore=str(values["pg_restore"]),
        json_output=bool(args.get("json_output")),
        exit_code=bool(args.get("exit_code")),
        version=args.get("version"),
        resolve_as=args.get("resolve_as"),
        name=args.get("name"),
        backup_id=args.get("backup_id"),
        target_database_url=args.get("target_database_url"),
        clean=bool(args.get("clean")),
        redactor=redactor,
    )


def _conninfo_params(conninfo: str) -> dict[str, Any]:
    """The parameters of a libpq URL or conninfo string; ConfigError if it does not parse."""
    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict

    try:
        params = conninfo_to_dict(conninfo)
    except ProgrammingError as exc:
        raise ConfigError(
            "the database URL is not a valid libpq URL or conninfo string",
            hint="use postgresql://user@host:5432/dbname (password via PGPASSWORD_FILE or the URL) "
            "or 'host=… dbname=…'",
        ) from exc
    return dict(params)


def _password_of(conninfo: str) -> str | None:
    value = _conninfo_params(conninfo).get("password")
    return str(value) if value is not None else None
