"""Configuration: flags, environment and mounted secrets merged into one frozen Config.

Every setting is declared once, as a field of ``Settings`` (``options.option``): its
default, flag, environment variable, unit and help. Precedence: flag > ``PGSLUICE_*``
environment (or its ``_FILE`` variant) > standard environment (``DATABASE_URL``,
libpq's own ``PG*`` variables, cloud SDK variables) > default. This is the only module
that reads ``os.environ``; everything is validated here, before the first network call.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pgsluice import dsn
from pgsluice.errors import ConfigError
from pgsluice.options import (
    CONNECTING_COMMANDS,
    DUMPING_COMMANDS,
    OLDEST_SUPPORTED_POSTGRES,
    PLANNING_COMMANDS,
    READING_MIGRATIONS,
    STORE_COMMANDS,
    Option,
    OptionError,
    lookup,
    option,
    options_of,
    parse_bool,
    parse_count,
    parse_duration,
    parse_duration_or_off,
    parse_pg_version,
    parse_size,
    positive,
    read_secret_file,
    resolve,
)
from pgsluice.redact import Redactor

DEFAULT_TERMINATION_LOG = Path("/dev/termination-log")
BACKUP_SCHEMES = ("s3://", "s3a://", "gs://", "az://", "azure://", "abfs://", "abfss://", "file://")
SECRET_ENV = (
    "PGPASSWORD",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_ACCESS_KEY",
    "AZURE_CLIENT_SECRET",
    "AZURE_STORAGE_SAS_KEY",
    "AZURE_STORAGE_TOKEN",
    "GOOGLE_SERVICE_ACCOUNT_KEY",
)
MAX_NAME_BYTES = 200  # a file name is at most 255 bytes; leave room for the version and '.down.sql'
_IDENT = re.compile(r"^[a-z_][a-z0-9_$]{0,62}$")
_VARIABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class TableName:
    """A schema-qualified table name."""

    schema: str
    name: str

    def __str__(self) -> str:
        return f"{self.schema}.{self.name}"


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


def _one_of(*choices: str) -> Any:
    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in choices:
            raise ValueError(f"{text!r} is not one of {', '.join(choices)}")
        return value

    return parse


def parse_backup_url(text: str) -> str | None:
    """The shape of --backup-url, checked before anything runs (the store itself is opened later); ``none`` is None.

    Query strings are refused: pgsluice takes credentials only from each cloud's standard
    environment, and a presigned signature or SAS token in the URL would end up in logs."""
    url = text.strip()
    if url.lower() in ("", "none"):
        return None
    hint = "use s3://bucket/prefix, gs://bucket/prefix, az://container/prefix, file:///path or none"
    if not url.startswith(BACKUP_SCHEMES):
        scheme = url.split("://", 1)[0] + "://" if "://" in url else "no scheme"
        raise ValueError(f"{scheme!r} is not a supported backup target; {hint}")
    parsed = urlparse(url)
    if parsed.query or parsed.fragment or parsed.params:
        raise ValueError(
            "a query string (?…) in the backup URL is not supported: credentials, signatures and SAS tokens "
            "come from the standard environment (AWS_*, AZURE_*, GOOGLE_APPLICATION_CREDENTIALS), never the URL"
        )
    if parsed.username or parsed.password:
        raise ValueError("the backup URL must not carry credentials (user:password@): use the standard environment")
    shown = f"{parsed.scheme}://{parsed.netloc}{parsed.path}"
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost") or not parsed.path.startswith("/"):
            # file://backups/x names a host "backups", not the folder ./backups/x
            raise ValueError(f"{shown!r} must be an absolute file:///path; {hint}")
    elif not parsed.netloc:
        raise ValueError(f"{shown!r} names no bucket or container; {hint}")
    return url


def parse_variable(text: str) -> tuple[str, str]:
    """``name=value`` of a psql variable (``--var``)."""
    name, sep, value = text.partition("=")
    if not sep or not _VARIABLE.match(name):
        raise ValueError(f"{text.split('=', 1)[0]!r} is not NAME=VALUE with a name of letters, digits and underscores")
    return name, value


def _part_size(value: int | None) -> None:
    if value is not None and value < 5 * 1024**2:
        raise ValueError("must be at least 5MiB (the S3 minimum part size)")


def _at_least_one(value: int | None) -> None:
    if value is not None and value < 1:
        raise ValueError("must be at least 1")


def _level(value: int | None) -> None:
    if value is not None and not 0 <= value <= 19:
        raise ValueError(f"{value} is out of range: zstd takes 1 to 19 (pg_dump >= 16), gzip 0 to 9")


@dataclass(frozen=True, eq=False, repr=False)  # no repr: it would print secrets; compared by identity
class Settings:
    """Every option, declared once: the dataclass field is the default, the flag and the variable."""

    database_url: str = option(
        "",
        "libpq URL or conninfo of the database; unset: libpq's PG* variables",
        commands=CONNECTING_COMMANDS,
        standard_env=("DATABASE_URL",),
        file_variant=True,
        secret_bearing=True,
        default_text="unset: libpq's `PG*`",
    )
    migrations_dir: Path = option(
        Path("migrations"), "folder of NNN_name.sql files", parse=Path, default_text="./migrations"
    )
    history_table: TableName = option(
        TableName("public", "pgsluice_history"),
        "schema-qualified history table; also keys the advisory lock",
        parse=parse_table_name,
        commands=CONNECTING_COMMANDS,
    )
    wait_timeout_seconds: float = option(
        60.0,
        "deadline for the database to accept connections",
        parse=parse_duration,
        check=positive,
        unit="seconds",
        commands=CONNECTING_COMMANDS,
    )
    connect_timeout_seconds: float = option(
        5.0,
        "timeout of one connection attempt",
        parse=parse_duration,
        check=positive,
        unit="seconds",
        commands=CONNECTING_COMMANDS,
    )
    lock_timeout_seconds: float = option(
        300.0,
        "deadline to acquire the advisory lock",
        parse=parse_duration,
        check=positive,
        unit="seconds",
        commands=CONNECTING_COMMANDS,
    )
    ddl_lock_timeout_seconds: float = option(
        5.0,
        "lock_timeout of each migration; 0 waits forever",
        parse=parse_duration,
        unit="seconds",
        commands=PLANNING_COMMANDS,
    )
    statement_timeout_seconds: float = option(
        0.0,
        "statement_timeout of each statement of a migration; 0 is off",
        parse=parse_duration,
        unit="seconds",
        commands=PLANNING_COMMANDS,
    )
    ddl_retries: int = option(
        5,
        "retries of a migration that hit lock_timeout (55P03) or a deadlock (40P01)",
        parse=parse_count,
        unit="count",
        commands=PLANNING_COMMANDS,
    )
    ddl_retry_delay_seconds: float = option(
        1.0,
        "first backoff between those retries (doubles, with jitter, at most 30 s)",
        parse=parse_duration,
        unit="seconds",
        commands=PLANNING_COMMANDS,
    )
    lock_strategy: str = option(
        "advisory",
        "advisory (a session lock: direct or session-pooled connections), lease (a row with a heartbeat: works "
        "through transaction pooling) or auto (lease when transaction pooling is detected)",
        parse=_one_of("advisory", "lease", "auto"),
        commands=CONNECTING_COMMANDS,
    )
    lease_seconds: float = option(
        30.0,
        "lease lock: how long a lease lasts without a heartbeat (a killed holder's lease expires after it)",
        flag="--lease-duration",
        env="PGSLUICE_LEASE_DURATION",
        parse=parse_duration,
        check=positive,
        unit="seconds",
        commands=CONNECTING_COMMANDS,
    )
    lease_heartbeat_seconds: float = option(
        5.0,
        "lease lock: how often the holder renews its lease",
        flag="--lease-heartbeat",
        env="PGSLUICE_LEASE_HEARTBEAT",
        parse=parse_duration,
        check=positive,
        unit="seconds",
        commands=CONNECTING_COMMANDS,
    )
    unsafe_ddl: str = option(
        "warn",
        "the safety gate: block (refuse the run before anything is applied, exit 10), warn (log each finding) or off",
        parse=_one_of("block", "warn", "off"),
        commands=("migrate", "plan", "lint"),
    )
    unsafe_ddl_threshold: str = option(
        "large",
        "the least severity the safety gate acts on: small, large or huge (a finding's severity comes from its "
        "rule and the size of its table)",
        parse=_one_of("small", "large", "huge"),
        commands=("migrate", "plan", "lint"),
    )
    large_table_rows: int = option(
        100_000,
        "a table with at least this many rows (estimated) is large: a scan or rewrite of it takes seconds",
        parse=parse_count,
        unit="rows",
        commands=("migrate", "plan"),
    )
    large_table_bytes: int = option(
        100 * 1024**2,
        "a table of at least this size is large",
        flag="--large-table-bytes",
        parse=parse_size,
        unit="bytes",
        commands=("migrate", "plan"),
    )
    huge_table_rows: int = option(
        10_000_000,
        "a table with at least this many rows (estimated) is huge: a scan or rewrite of it takes minutes",
        parse=parse_count,
        unit="rows",
        commands=("migrate", "plan"),
    )
    huge_table_bytes: int = option(
        10 * 1024**3,
        "a table of at least this size is huge",
        flag="--huge-table-bytes",
        parse=parse_size,
        unit="bytes",
        commands=("migrate", "plan"),
    )
    long_transaction_seconds: float = option(
        60.0,
        "preflight: a transaction open longer than this is named (the migration's DDL would queue behind it)",
        parse=parse_duration,
        unit="seconds",
        commands=("migrate",),
    )
    pg_version: str = option(
        OLDEST_SUPPORTED_POSTGRES,
        "lint: the PostgreSQL version the safety rules assume offline (14, 15.4); migrate and plan ask the server",
        parse=parse_pg_version,
        commands=("lint",),
    )
    on_drift: str = option(
        "warn",
        "when the schema changed outside pgsluice since its last run: warn (log drift.detected) or fail (exit 6)",
        parse=_one_of("warn", "fail"),
        commands=("migrate", "status"),
    )
    progress_after_seconds: float = option(
        10.0,
        "a statement (or a backup) running longer than this gets progress events (off: never)",
        parse=parse_duration_or_off,
        unit="seconds",
        commands=("migrate", "down", "backup"),
    )
    progress_interval_seconds: float = option(
        15.0,
        "seconds between progress events",
        parse=parse_duration,
        check=positive,
        unit="seconds",
        commands=("migrate", "down", "backup"),
    )
    allow_out_of_order: bool = option(
        False,
        "apply pending versions lower than the highest applied one",
        parse=parse_bool,
        commands=PLANNING_COMMANDS,
    )
    strict_future: bool = option(
        False,
        "refuse applied versions newer than every file (a newer release's) instead of accepting them",
        parse=parse_bool,
        commands=("migrate", "status", "plan", "down"),
    )
    target_version: int | None = option(
        None,
        "apply pending migrations up to and including this version, and stop",
        flag="--target",
        env="PGSLUICE_TARGET_VERSION",
        parse=parse_count,
        unit="version",
        commands=("migrate", "plan"),
    )
    max_file_size_bytes: int = option(
        256 * 1024**2,
        "largest migration file read; a larger one stops the run before anything is applied",
        parse=parse_size,
        check=positive,
        unit="bytes",
        commands=READING_MIGRATIONS,
    )
    max_statements: int = option(
        100_000,
        "most statements read from one file (about 1 KiB of memory each); more stops the run before anything "
        "is applied: bulk data belongs in COPY … FROM STDIN",
        parse=parse_count,
        check=positive,
        unit="count",
        commands=READING_MIGRATIONS,
    )
    variables: tuple[tuple[str, str], ...] = option(
        (),
        "a psql variable for the migrations, NAME=VALUE: :NAME, :'NAME' and :\"NAME\" are substituted",
        flag="--var",
        env=None,
        env_prefix="PGSLUICE_VAR_",
        unit="NAME=VALUE",
        repeatable=True,
        parse=parse_variable,
        commands=READING_MIGRATIONS,
    )
    log_format: str = option(
        "auto",
        "auto (JSON unless stderr is a terminal), json or console",
        parse=_one_of("auto", "json", "console"),
    )
    log_level: str = option("info", "debug, info, warning or error", parse=_one_of("debug", "info", "warning", "error"))
    termination_log: Path | None = option(
        None,
        "file for the one-line failure reason; default /dev/termination-log when it exists",
        parse=Path,
    )
    backup_url: str | None = option(
        None,
        "s3://bucket/prefix, gs://…, az://…, file:///path or none",
        parse=parse_backup_url,
        commands=STORE_COMMANDS,
    )
    require_backup: bool = option(
        False, "fail (exit 2) when no backup URL is set", parse=parse_bool, commands=("migrate",)
    )
    backup_verify: bool = option(
        True,
        "read the dump back (pg_restore --list, sha256, size) after upload",
        parse=parse_bool,
        commands=DUMPING_COMMANDS,
    )
    backup_keep: int | None = option(
        None,
        "keep at most this many complete backups",
        parse=parse_count,
        unit="count",
        commands=DUMPING_COMMANDS,
    )
    backup_max_age_seconds: float | None = option(
        None,
        "delete complete backups older than this (the newest is always kept)",
        parse=parse_duration,
        unit="seconds",
        commands=DUMPING_COMMANDS,
    )
    backup_compression_level: int | None = option(
        None,
        "pg_dump compression level (zstd 1-19 when pg_dump >= 16, else gzip 0-9)",
        parse=parse_count,
        check=_level,
        unit="level",
        commands=DUMPING_COMMANDS,
    )
    backup_part_size_bytes: int | None = option(
        None,
        "multipart part size; unset: the database size / 8000, from 8MiB to 96MiB",
        parse=parse_size,
        check=_part_size,
        unit="bytes",
        commands=DUMPING_COMMANDS,
    )
    backup_concurrency: int | None = option(
        None,
        "parts uploaded at once; unset: as many as fit 128MiB, from 1 to 4",
        parse=parse_count,
        check=_at_least_one,
        unit="count",
        commands=DUMPING_COMMANDS,
    )
    backup_endpoint: str | None = option(
        None,
        "S3-compatible endpoint URL (MinIO, R2, Ceph); http:// allows plain HTTP",
        commands=STORE_COMMANDS,
        standard_env=("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"),
    )
    backup_region: str | None = option(
        None, "S3 region", commands=STORE_COMMANDS, standard_env=("AWS_REGION", "AWS_DEFAULT_REGION")
    )
    backup_path_style: bool | None = option(
        None,
        "S3 path-style requests (endpoint/bucket/key), as MinIO and Ceph want",
        parse=parse_bool,
        commands=STORE_COMMANDS,
    )
    backup_retries: int = option(
        5,
        "retries of each object-store request (5xx, connection errors), with backoff",
        parse=parse_count,
        unit="count",
        commands=STORE_COMMANDS,
    )
    pg_dump: str = option("pg_dump", "pg_dump program", commands=DUMPING_COMMANDS)
    pg_restore: str = option("pg_restore", "pg_restore program", commands=STORE_COMMANDS)
    targets_file: Path | None = option(
        None,
        "fleet: a file of targets, one per line: a database name, or database:schema (no credentials: each "
        "target is the database URL with its database, and schema, replaced)",
        flag="--targets",
        env="PGSLUICE_TARGETS_FILE",
        parse=Path,
        commands=("migrate", "status"),
    )
    targets_query: str | None = option(
        None,
        "fleet: a query run on the database that returns the targets (a column of 'db' or 'db:schema', or two "
        "columns: database, schema)",
        commands=("migrate", "status"),
    )
    shard_index: int = option(
        0,
        "fleet: this pod's shard; it takes the targets whose position modulo --shard-count is this",
        parse=parse_count,
        standard_env=("JOB_COMPLETION_INDEX",),
        commands=("migrate", "status"),
    )
    shard_count: int = option(
        1,
        "fleet: how many shards the targets are spread over (an Indexed Job's completions)",
        parse=parse_count,
        check=positive,
        unit="count",
        commands=("migrate", "status"),
    )
    parallel: int = option(
        1,
        "fleet: targets migrated at once by this pod (one connection each, each under its own lock)",
        parse=parse_count,
        check=positive,
        unit="count",
        commands=("migrate", "status"),
    )
    fail_fast: bool = option(
        False,
        "fleet: stop this pod's remaining targets at the first failure (default: go on, and report)",
        parse=parse_bool,
        commands=("migrate",),
    )
    canary: int = option(
        0,
        "fleet: migrate the first N targets of the whole list first (shard 0 alone); the other shards wait until "
        "they are current, and stop (exit 11) if one failed",
        parse=parse_count,
        unit="count",
        commands=("migrate",),
    )
    canary_timeout_seconds: float = option(
        1800.0,
        "fleet: how long the other shards wait for the canaries",
        parse=parse_duration,
        check=positive,
        unit="seconds",
        commands=("migrate",),
    )
    restore_database_url: str | None = option(
        None,
        "restore: the database to restore into (a libpq URL or conninfo)",
        flag="--target-database",
        env="PGSLUICE_RESTORE_DATABASE_URL",
        commands=("restore",),
        file_variant=True,
        secret_bearing=True,
    )


OPTIONS: tuple[Option, ...] = options_of(Settings)


@dataclass(frozen=True)
class CommandArgs:
    """The positional arguments and switches of one command (not settings: no environment variable)."""

    json_output: bool = False
    state_as_exit_code: bool = False
    """status --exit-code: 9 when anything is pending, 6 when files and history disagree."""
    check_drift: bool = False
    """status --drift: compare the schema with the fingerprint of pgsluice's last run."""
    version: int | None = None
    resolve_as: str | None = None
    name: str | None = None
    backup_id: str | None = None
    clean: bool = False
    down_to: int | None = None
    down_steps: int | None = None
    down_future: bool = False


@dataclass(frozen=True, eq=False, repr=False)
class Config(Settings):
    """Everything a run needs, validated: the settings, the command and its arguments, and derived facts."""

    command: str = "migrate"
    args: CommandArgs = field(default_factory=CommandArgs)
    password: str | None = None
    """From PGPASSWORD_FILE; libpq reads PGPASSWORD and the URL's password itself."""
    hostname: str = "localhost"
    wait_max_interval_seconds: float = 2.0
    lock_poll_max_seconds: float = 0.25
    warnings: tuple[str, ...] = ()
    """Things worth telling the operator once logging is configured (a password given as a flag)."""
    target: str | None = None
    """Fleet: the target this configuration is for (``db`` or ``db:schema``)."""
    search_schema: str | None = None
    """Fleet: a schema target's schema: every migration runs with its search_path set to it."""
    redactor: Redactor = field(default_factory=Redactor, compare=False, repr=False)

    @property
    def lock_key(self) -> int:
        """The advisory lock key: a signed 64-bit hash of the history table's name."""
        digest = hashlib.sha256(f"pgsluice:{self.history_table}".encode()).digest()
        return int.from_bytes(digest[:8], "big", signed=True)


def _check_pg_env(env: Mapping[str, str]) -> None:
    """libpq's own variables that would only fail later, at the first connection."""
    port = env.get("PGPORT")
    if port:
        try:
            dsn.parse_conninfo(f"port={port}", "PGPORT")
        except dsn.ConninfoError as exc:
            raise ConfigError(str(exc), hint="set PGPORT to the server's port, e.g. 5432") from exc


def _check_connection(text: str, what: str, redactor: Redactor) -> None:
    redactor.add(*dsn.secret_fragments(text))
    try:
        dsn.parse_conninfo(text, what)
    except dsn.ConninfoError as exc:
        raise ConfigError(
            str(exc),
            hint="use postgresql://user@host:5432/dbname (the password via PGPASSWORD_FILE, or percent-encoded "
            "in the URL) or 'host=… dbname=…'",
        ) from exc


def _args_of(args: Mapping[str, Any]) -> CommandArgs:
    names = {f.name for f in dataclasses.fields(CommandArgs)}
    return CommandArgs(**{k: v for k, v in args.items() if k in names and v is not None})


def termination_log_of(argv: Sequence[str], env: Mapping[str, str] | None = None) -> Path | None:
    """Where the termination message goes, read straight from argv and the environment.

    For failures before the configuration is complete (a usage error): the file must be
    written for every exit code but 0, even when the configuration itself is what failed."""
    env = os.environ if env is None else env
    for index, arg in enumerate(argv):
        if arg == "--termination-log" and index + 1 < len(argv):
            return Path(argv[index + 1])
        if arg.startswith("--termination-log="):
            return Path(arg.split("=", 1)[1])
    if env.get("PGSLUICE_TERMINATION_LOG"):
        return Path(env["PGSLUICE_TERMINATION_LOG"])
    return DEFAULT_TERMINATION_LOG if DEFAULT_TERMINATION_LOG.exists() else None


def _resolve_options(
    args: Mapping[str, Any], env: Mapping[str, str], redactor: Redactor
) -> tuple[dict[str, Any], list[str]]:
    """Every option's value by precedence, parsed and checked; and the warnings they deserve."""
    values: dict[str, Any] = {}
    warnings: list[str] = []
    for opt in OPTIONS:
        try:
            found = lookup(opt, args, env)
            values[opt.name] = resolve(opt, found)
        except OptionError as exc:
            raise ConfigError(str(exc)) from exc
        if opt.secret_bearing and isinstance(values[opt.name], str):
            redactor.add(*dsn.secret_fragments(values[opt.name]))
            if found.source == opt.flag and "password" in dsn.parse_conninfo_or_empty(values[opt.name]):
                warnings.append(
                    f"{opt.flag} carries a password, which every user of this machine can read in the process "
                    f"list: use {opt.env} or {opt.env}_FILE (a mounted secret) instead"
                )
    return values, warnings


def _check_command(command: str, values: Mapping[str, Any], args: Mapping[str, Any], env: Mapping[str, str]) -> None:
    """What a command needs of the settings, checked before anything connects."""
    if command == "restore" and not values["restore_database_url"]:
        raise ConfigError(
            "restore: no target database",
            hint="set PGSLUICE_RESTORE_DATABASE_URL (or its _FILE variant), or pass --target-database",
        )
    if command in CONNECTING_COMMANDS:
        _check_pg_env(env)
    if command == "migrate" and values["require_backup"] and values["backup_url"] is None:
        raise ConfigError(
            "--require-backup is set but no backup target is configured",
            hint="set --backup-url / PGSLUICE_BACKUP_URL to s3://, gs://, az:// or file:// URL",
        )
    name = args.get("name")
    if command == "new" and name is not None and len(str(name).encode()) > MAX_NAME_BYTES:
        raise ConfigError(
            f"new: the name is {len(str(name).encode())} bytes long; a file name must stay under 255 bytes",
            hint=f"use a name of at most {MAX_NAME_BYTES} bytes",
        )


def load_config(args: Mapping[str, Any], env: Mapping[str, str] | None = None) -> Config:
    """Merge parsed flags with the environment; raises ConfigError naming the bad setting."""
    env = os.environ if env is None else env
    command = str(args.get("command") or "migrate")
    redactor = Redactor(env[name] for name in SECRET_ENV if env.get(name))
    values, warnings = _resolve_options(args, env, redactor)
    password = None
    if env.get("PGPASSWORD_FILE"):
        try:
            password = read_secret_file("PGPASSWORD_FILE", env["PGPASSWORD_FILE"])
        except ValueError as exc:
            raise ConfigError(f"PGPASSWORD_FILE: {exc}") from exc
        redactor.add(password)
    _check_command(command, values, args, env)
    if command in CONNECTING_COMMANDS and values["database_url"]:
        _check_connection(values["database_url"], "the database URL", redactor)
    if command == "restore":
        _check_connection(values["restore_database_url"], "the restore target's URL", redactor)
    if values["termination_log"] is None and DEFAULT_TERMINATION_LOG.exists():
        values["termination_log"] = DEFAULT_TERMINATION_LOG
    return Config(
        **values,
        command=command,
        args=_args_of(args),
        password=password,
        hostname=env.get("HOSTNAME") or socket.gethostname(),
        warnings=tuple(warnings),
        redactor=redactor,
    )
