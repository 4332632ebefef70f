"""The option machinery: one declaration per setting, read by argparse, the environment and the README.

A setting is a field of ``config.Settings`` declared with :func:`option`: its default,
flag, environment variable, parser, unit and help live there and nowhere else. The
CLI's arguments, the precedence lookup and the README's options table are all derived
from ``options()``.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

COMMANDS: dict[str, str] = {
    "migrate": "wait, lock, plan, back up, apply pending migrations (the default)",
    "status": "every migration with its state",
    "plan": "what migrate would run, with every check; changes nothing",
    "baseline": "record every file up to VERSION as applied without running it",
    "resolve": "settle a half-applied no-transaction migration",
    "down": "undo applied migrations, newest first, with their down SQL (--to VERSION, --steps N or --future)",
    "new": "create the next numbered migration file",
    "lint": "check the migrations folder offline",
    "backup": "take a backup now",
    "backups": "list the complete backups",
    "restore": "restore a backup into a target database",
}
"""Every command and what it does (``--help``); ``run.RUNNERS`` holds the function of each."""
ALL_COMMANDS = tuple(COMMANDS)
CONNECTING_COMMANDS = ("migrate", "status", "plan", "baseline", "resolve", "down", "backup", "backups", "restore")
PLANNING_COMMANDS = ("migrate", "plan", "down")
READING_MIGRATIONS = ("migrate", "status", "plan", "baseline", "lint", "down", "backup")
DUMPING_COMMANDS = ("migrate", "down", "backup")
STORE_COMMANDS = ("migrate", "down", "backup", "backups", "restore")

OLDEST_SUPPORTED_POSTGRES = "14"
"""The oldest PostgreSQL major pgsluice supports (the community's oldest maintained one): what ``lint`` assumes."""
_PG_VERSION = re.compile(r"^\s*\d+(?:\.\d+){0,2}\s*$")
_DURATION = re.compile(r"^\s*(?P<num>\d+(?:\.\d+)?)\s*(?P<unit>ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_SIZE = re.compile(r"^\s*(?P<num>\d+)\s*(?P<unit>B|KiB|MiB|GiB|K|M|G)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"b": 1, "k": 1024, "kib": 1024, "m": 1024**2, "mib": 1024**2, "g": 1024**3, "gib": 1024**3, None: 1}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def parse_duration(text: str) -> float:
    """Seconds from ``90``, ``90s``, ``500ms``, ``5m``, ``2h`` or ``7d``."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a duration (examples: 30, 30s, 500ms, 5m, 2h)")
    return float(match["num"]) * _DURATION_UNITS[match["unit"]]


def parse_duration_or_off(text: str) -> float:
    """A duration, or ``off`` (infinite: never)."""
    return math.inf if text.strip().lower() in ("off", "never") else parse_duration(text)


def parse_pg_version(text: str) -> str:
    """A PostgreSQL version as ``lint --pg-version`` takes it: ``14``, ``14.2``, ``9.6.3`` or ``140002``."""
    value = text.strip()
    parts = value.split(".")
    major = int(parts[0]) if _PG_VERSION.match(value) else 0
    valid = (
        (len(parts) == 1 and 10 <= major < 100)  # a major (10 and later)
        or (len(parts) == 1 and 90000 <= major < 1_000_000)  # server_version_num
        or (len(parts) == 2 and 10 <= major < 100)  # 14.2
        or (len(parts) in (2, 3) and major == 9)  # 9.6, 9.6.3
    )
    if not valid:
        raise ValueError(f"{text!r} is not a PostgreSQL version (examples: 14, 15.4, 9.6.3, 150004)")
    return value


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


def parse_count(text: str) -> int:
    """A non-negative whole number."""
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a whole number") from None  # int()'s own message adds nothing
    if value < 0:
        raise ValueError(f"{text!r} must not be negative")
    return value


def positive(value: float | None) -> None:
    """Check: greater than 0."""
    if value is not None and value <= 0:
        raise ValueError("must be greater than 0")


@dataclass(frozen=True)
class Option:
    """One setting: the field it fills, its flag and environment variables, its default and unit."""

    name: str
    flag: str
    env: str | None
    default: Any
    help: str
    parse: Callable[[str], Any] | None = None
    check: Callable[[Any], None] | None = None
    unit: str = ""
    commands: tuple[str, ...] = ALL_COMMANDS
    standard_env: tuple[str, ...] = ()
    boolean: bool = False
    repeatable: bool = False
    env_prefix: str | None = None
    """For a repeatable ``NAME=VALUE`` option: every ``<prefix>NAME`` variable adds one."""
    file_variant: bool = False
    """The value may come from a file named by ``<env>_FILE`` (a mounted secret)."""
    secret_bearing: bool = False
    """The value may hold a password: warn when it is given on the command line."""
    default_text: str | None = None
    """What the README says the default is, when the value alone does not say it."""

    @property
    def metavar(self) -> str:
        """The placeholder in ``--help``."""
        return self.flag.removeprefix("--").upper().replace("-", "_")


def option(
    default: Any,
    help: str,
    *,
    flag: str | None = None,
    env: str | None = "",
    parse: Callable[[str], Any] | None = None,
    check: Callable[[Any], None] | None = None,
    unit: str = "",
    commands: Sequence[str] = ALL_COMMANDS,
    standard_env: Sequence[str] = (),
    repeatable: bool = False,
    env_prefix: str | None = None,
    file_variant: bool = False,
    secret_bearing: bool = False,
    default_text: str | None = None,
) -> Any:
    """A dataclass field that is also a command-line option and an environment variable.

    The flag defaults to the field name without its unit suffix (``wait_timeout_seconds`` is
    ``--wait-timeout``) and the variable to ``PGSLUICE_`` and the flag (``PGSLUICE_WAIT_TIMEOUT``).
    """
    spec = {
        "flag": flag,
        "env": env,
        "help": help,
        "parse": parse,
        "check": check,
        "unit": unit,
        "commands": tuple(commands),
        "standard_env": tuple(standard_env),
        "boolean": isinstance(default, bool) or parse is parse_bool,
        "repeatable": repeatable,
        "env_prefix": env_prefix,
        "file_variant": file_variant,
        "secret_bearing": secret_bearing,
        "default_text": default_text,
    }
    if isinstance(default, tuple | list | dict):
        return dataclasses.field(default_factory=lambda: default, metadata={"option": spec})
    return dataclasses.field(default=default, metadata={"option": spec})


def _flag_of(name: str) -> str:
    for suffix in ("_seconds", "_bytes"):
        name = name.removesuffix(suffix)
    return "--" + name.replace("_", "-")


def options_of(settings_type: type) -> tuple[Option, ...]:
    """Every option declared on the dataclass ``settings_type``, in declaration order."""
    found: list[Option] = []
    for f in dataclasses.fields(settings_type):
        spec = f.metadata.get("option")
        if spec is None:
            continue
        flag = spec["flag"] or _flag_of(f.name)
        env = spec["env"]
        if env == "":
            env = "PGSLUICE_" + flag.removeprefix("--").upper().replace("-", "_")
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        values = {k: v for k, v in spec.items() if k not in ("flag", "env")}
        found.append(Option(name=f.name, flag=flag, env=env, default=default, **values))
    return tuple(found)


@dataclass(frozen=True)
class Found:
    """A raw value and where it came from (a flag, a variable, a file, or the default)."""

    value: Any
    source: str


def read_secret_file(variable: str, path: str) -> str:
    """The content of a mounted secret file, stripped; ValueError naming the variable, never the content."""
    try:
        text = Path(path).read_bytes().decode("utf-8").strip()
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}; mount the secret file or unset {variable}") from exc
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path} is not UTF-8 text (byte {exc.start}); write the secret as UTF-8") from exc
    if not text:
        raise ValueError(f"{path} is empty; write the value into it or unset {variable}")
    return text


def lookup(opt: Option, args: Mapping[str, Any], env: Mapping[str, str]) -> Found:
    """The raw value of ``opt`` by precedence: flag, its variable (or ``_FILE``), standard variables, default."""
    given = args.get(opt.name)
    if opt.repeatable and opt.env_prefix:
        # NAME=VALUE pairs merge: each <prefix>NAME variable, then each flag (a flag wins for its NAME).
        prefix = opt.env_prefix
        pairs = [f"{k.removeprefix(prefix)}={v}" for k, v in sorted(env.items()) if k.startswith(prefix)]
        pairs += list(given or ())
        if pairs:
            return Found(pairs, opt.flag if given else f"{prefix}*")
    if given is not None and given != []:
        return Found(given, opt.flag)
    for name in (opt.env, *opt.standard_env):
        if not name:
            continue
        if name in env:
            return Found(env[name], name)
        file_name = f"{name}_FILE"
        if opt.file_variant and env.get(file_name):
            try:
                return Found(read_secret_file(file_name, env[file_name]), file_name)
            except ValueError as exc:
                raise OptionError(file_name, str(exc)) from exc
    return Found(opt.default, "default")


class OptionError(ValueError):
    """A value that does not parse or check, and the flag or variable it came from."""

    def __init__(self, source: str, problem: str) -> None:
        super().__init__(f"{source}: {problem}")
        self.source = source


def resolve(opt: Option, found: Found) -> Any:
    """Parse and check a raw value; OptionError names its source."""
    value = found.value
    try:
        if opt.repeatable:
            items = value if isinstance(value, list | tuple) else [value]
            value = tuple(opt.parse(str(v)) if opt.parse else v for v in items)
        elif isinstance(value, str) and opt.parse is not None:
            value = opt.parse(value)
        if opt.check is not None:
            opt.check(value)
    except ValueError as exc:
        raise OptionError(found.source, str(exc)) from exc
    return value


def readme_table(opts: Sequence[Option]) -> str:
    """The README's options table: flag, environment, default, unit, meaning."""
    rows = ["| flag | environment | default | unit | meaning |", "| --- | --- | --- | --- | --- |"]
    for opt in opts:
        flag = f"`{opt.flag}`"
        if opt.boolean:
            flag += f" / `--no-{opt.flag.removeprefix('--')}`"
        if opt.repeatable:
            flag += " (repeatable)"
        envs = [name for name in (opt.env, *opt.standard_env) if name]
        if opt.file_variant:
            envs = [x for name in envs for x in (name, f"{name}_FILE")]
        if opt.env_prefix:
            envs.append(f"{opt.env_prefix}<name>")
        env = " / ".join(f"`{name}`" for name in envs)
        if opt.default_text is not None:
            default = opt.default_text
        elif opt.default is None or opt.default in ("", ()):
            default = "unset"
        elif isinstance(opt.default, bool):
            default = str(opt.default).lower()
        elif isinstance(opt.default, float) and opt.default.is_integer():
            default = str(int(opt.default))
        elif opt.unit == "bytes" and isinstance(opt.default, int) and opt.default % 1024**2 == 0:
            default = f"{opt.default // 1024**2}MiB"
        else:
            default = str(opt.default)
        rows.append(f"| {flag} | {env} | {default} | {opt.unit} | {opt.help} |")
    return "\n".join(rows)
