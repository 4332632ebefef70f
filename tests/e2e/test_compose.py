"""docker-compose.yml validated, and brought up for real: db → migrate → app."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import build
from tests.support.cli import ROOT, write_migrations
from tests.support.pgserver import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

COMPOSE = ROOT / "docker-compose.yml"
OVERRIDE = ROOT / "tests" / "e2e" / "compose.override.yml"


def compose_bin() -> str:
    found = shutil.which("docker-compose")
    if not found:
        pytest.skip("docker-compose not found (apt-get install docker-compose)")
    return found


def test_compose_file_is_valid() -> None:
    """docker-compose config accepts the file; the gate is service_completed_successfully."""
    import yaml

    out = subprocess.run([compose_bin(), "-f", str(COMPOSE), "config"], capture_output=True, text=True, check=True)
    config = yaml.safe_load(out.stdout)
    services = config["services"]
    assert services["app"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert services["migrate"]["depends_on"]["db"]["condition"] == "service_healthy"
    assert services["migrate"]["restart"] == "no"
    assert services["migrate"]["read_only"] is True
    assert services["migrate"]["environment"]["PGSLUICE_REQUIRE_BACKUP"] == "true"


@pytest.fixture(scope="module")
def test_images(docker_client: Any, base_image: str) -> None:
    """Local stand-ins for postgres:17 and MinIO, built from Debian's postgresql and PyPI's moto."""
    for name in ("postgres", "s3"):
        build(
            docker_client,
            ROOT / "tests" / "e2e" / "images" / name,
            f"pgsluice-test-{name}:latest",
            {"BASE_IMAGE": base_image},
        )


@pytest.fixture
def project(pgsluice_image: str, test_images: None, tmp_path: Path) -> Iterator[dict[str, Any]]:  # noqa: ARG001 - test_images: built first
    """A compose project of its own: ports, migrations folder; torn down with its volumes."""
    name = f"sluice{secrets.token_hex(3)}"
    env = {
        **os.environ,
        "COMPOSE_PROJECT_NAME": name,
        "PGSLUICE_IMAGE": pgsluice_image,
        "DB_PORT": str(free_port()),
        "S3_PORT": str(free_port()),
        "DB_HOST": "127.0.0.1",
        "S3_HOST": "127.0.0.1",
        "MIGRATIONS_DIR": str(tmp_path / "migrations"),
        "APP_KEEP_RUNNING": "true",
    }
    shutil.copytree(ROOT / "migrations", tmp_path / "migrations")
    (tmp_path / "migrations").chmod(0o755)
    base = [compose_bin(), "-f", str(COMPOSE), "-f", str(OVERRIDE)]
    yield {"env": env, "base": base, "dir": tmp_path / "migrations", "name": name}
    subprocess.run([*base, "down", "-v", "--remove-orphans"], env=env, capture_output=True, check=False)


def container_state(docker_client: Any, project: str, service: str) -> dict[str, Any] | None:
    found = docker_client.containers.list(
        all=True, filters={"label": [f"com.docker.compose.project={project}", f"com.docker.compose.service={service}"]}
    )
    return found[0].attrs["State"] if found else None


def test_app_starts_only_after_migrate_exits_0(docker_client: Any, project: dict[str, Any]) -> None:
    """up: migrate applies the example migrations with a backup to the S3 service; then the app runs."""
    proc = subprocess.run(
        [*project["base"], "up", "--no-build", "--no-color", "--exit-code-from", "app", "app"],
        env=project["env"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    logs = subprocess.run(
        [*project["base"], "logs", "--no-color", "migrate"],
        env=project["env"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    assert proc.returncode == 0, logs[-3000:] + proc.stderr[-3000:]
    migrate = container_state(docker_client, project["name"], "migrate")
    app = container_state(docker_client, project["name"], "app")
    assert migrate is not None and app is not None
    assert migrate["ExitCode"] == 0
    assert app["StartedAt"] > migrate["FinishedAt"]
    assert "backup.completed" in logs
    app_lines = [line.split("|", 1)[1].strip() for line in proc.stdout.splitlines() if line.startswith("app_1")]
    assert app_lines == ["5"]  # the app read the migrated schema's version


def test_app_never_starts_when_migrate_fails(docker_client: Any, project: dict[str, Any]) -> None:
    """A broken migration: migrate exits 7 and the app container is never started."""
    write_migrations(project["dir"], {"006_broken.sql": "ALTER TABLE no_such_table ADD COLUMN x int;\n"})
    proc = subprocess.run(
        [*project["base"], "up", "--no-build", "app"],
        env=project["env"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode != 0
    migrate = container_state(docker_client, project["name"], "migrate")
    assert migrate is not None
    assert migrate["ExitCode"] == 7
    app = container_state(docker_client, project["name"], "app")
    assert app is None or app["StartedAt"].startswith("0001-01-01")
