"""Configuration precedence and validation, before any connection."""

from __future__ import annotations

from pathlib import Path

import pytest

from pgsluice.config import TableName, load_config
from pgsluice.errors import ConfigError, ExitCode
from pgsluice.options import parse_duration, parse_size


def test_flag_beats_pgsluice_env_beats_standard_env_beats_default() -> None:
    """--database-url > PGSLUICE_DATABASE_URL > DATABASE_URL."""
    env = {"PGSLUICE_DATABASE_URL": "postgresql://a@h1/d", "DATABASE_URL": "postgresql://b@h2/d"}
    assert load_config({"database_url": "postgresql://c@h3/d"}, env).database_url == "postgresql://c@h3/d"
    assert load_config({}, env).database_url == "postgresql://a@h1/d"
    assert load_config({}, {"DATABASE_URL": "postgresql://b@h2/d"}).database_url == "postgresql://b@h2/d"
    assert load_config({}, {}).database_url == ""  # libpq's PG* variables then apply
    assert load_config({}, {}).wait_timeout_seconds == 60.0


def test_mounted_secret_files(tmp_path: Path) -> None:
    """DATABASE_URL_FILE and PGPASSWORD_FILE are read, and their secrets registered for redaction."""
    (tmp_path / "url").write_text("postgresql://app:hunter2xx@db/app\n")
    (tmp_path / "pw").write_text("filepass99\n")
    config = load_config({}, {"DATABASE_URL_FILE": str(tmp_path / "url"), "PGPASSWORD_FILE": str(tmp_path / "pw")})
    assert config.database_url == "postgresql://app:hunter2xx@db/app"
    assert config.password == "filepass99"
    assert config.redactor("x hunter2xx y filepass99") == "x *** y ***"


def test_missing_secret_file_is_a_usage_error() -> None:
    """A secret that is not mounted says which variable and which path."""
    with pytest.raises(ConfigError) as info:
        load_config({}, {"PGPASSWORD_FILE": "/nonexistent/pw"})
    assert info.value.exit_code == ExitCode.USAGE
    assert str(info.value).startswith("PGPASSWORD_FILE: cannot read /nonexistent/pw")


def test_bad_values_name_the_setting_without_the_secret() -> None:
    """A bad duration names the env var; a bad URL does not echo the password."""
    with pytest.raises(ConfigError, match=r"^PGSLUICE_WAIT_TIMEOUT: 'soon' is not a duration"):
        load_config({}, {"PGSLUICE_WAIT_TIMEOUT": "soon"})
    with pytest.raises(ConfigError) as info:
        load_config({"database_url": "host=db password=topsecret99 bogus"}, {})
    assert "topsecret99" not in str(info.value)
    with pytest.raises(ConfigError, match="--history-table"):
        load_config({"history_table": "a.b.c"}, {})


def test_history_table_is_always_schema_qualified() -> None:
    """A bare name means public.<name>."""
    assert load_config({"history_table": "schema_history"}, {}).history_table == TableName("public", "schema_history")
    assert load_config({}, {"PGSLUICE_HISTORY_TABLE": "ops.migrations"}).history_table == TableName("ops", "migrations")


def test_lock_key_differs_per_history_table() -> None:
    """Two apps with two tables in one database do not block each other."""
    one = load_config({}, {"PGSLUICE_HISTORY_TABLE": "app1.history"})
    two = load_config({}, {"PGSLUICE_HISTORY_TABLE": "app2.history"})
    assert one.lock_key != two.lock_key
    assert -(2**63) <= one.lock_key < 2**63


def test_units() -> None:
    """Durations and sizes accept their documented units."""
    assert [parse_duration(t) for t in ("90", "90s", "500ms", "5m", "2h")] == [90, 90, 0.5, 300, 7200]
    assert [parse_size(t) for t in ("1048576", "64MiB", "1GiB")] == [1048576, 64 * 1024**2, 1024**3]


def test_require_backup_without_target_is_a_usage_error() -> None:
    """The chart's safety switch: no backup target, no migration."""
    with pytest.raises(ConfigError, match="--require-backup"):
        load_config({"require_backup": True}, {})


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("ftp://host/x", "is not a supported backup target"),
        ("s3:///prefix", "names no bucket or container"),
        ("gs://", "names no bucket or container"),
        ("file://backups/x", "must be an absolute file:///path"),  # a host named 'backups'
        ("file://./backups", "must be an absolute file:///path"),
        ("file:///var/backups", None),
        ("s3://bucket", None),
    ],
)
def test_backup_url_shape_is_checked_with_the_configuration(url: str, problem: str | None) -> None:
    """Before anything connects: a URL that cannot name a place to put backups is exit 2."""
    if problem is None:
        assert load_config({"backup_url": url}, {}).backup_url == url
        return
    with pytest.raises(ConfigError, match=problem) as info:
        load_config({"backup_url": url}, {})
    assert info.value.exit_code == ExitCode.USAGE


def test_backup_upload_shape_bounds_memory_and_part_count() -> None:
    """Parts grow with the database (8 MiB .. 96 MiB) and concurrency shrinks so memory stays near 128 MiB."""
    from pgsluice.backup import upload_shape

    mib, gib = 1024**2, 1024**3
    assert upload_shape(100 * mib, None, None) == (8 * mib, 4)
    assert upload_shape(100 * gib, None, None) == (13 * mib, 4)
    assert upload_shape(500 * gib, None, None) == (64 * mib, 2)
    assert upload_shape(2000 * gib, None, None) == (96 * mib, 1)
    assert upload_shape(2000 * gib, 16 * mib, 8) == (16 * mib, 8)  # explicit settings win
    for size in (1 * gib, 100 * gib, 700 * gib):
        part, concurrency = upload_shape(size, None, None)
        assert size / part <= 8000
        assert part * concurrency <= 128 * mib
