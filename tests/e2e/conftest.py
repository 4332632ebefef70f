"""e2e fixtures: a Docker engine, the real image built from the Dockerfile, helm.

Each skips with its reason when the tool is missing; .ci/run makes them all present
(scripts/e2e-setup.sh).
"""

from __future__ import annotations

import gc
import os
import shutil
import subprocess
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import ROOT

IMAGE_TAG = "pgsluice:e2e"


def extra_ca() -> Path | None:
    """The CA a TLS-intercepting proxy needs: PGSLUICE_EXTRA_CA, PIP_CERT, or pip's configured cert."""
    for name in ("PGSLUICE_EXTRA_CA", "PIP_CERT"):
        if os.environ.get(name) and Path(os.environ[name]).is_file():
            return Path(os.environ[name])
    pip = shutil.which("pip") or shutil.which("pip3")
    if pip:
        out = subprocess.run([pip, "config", "list"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            key, _, value = line.partition("=")
            path = Path(value.strip().strip("'\""))
            if key.endswith(".cert") and path.is_file():
                return path
    return None


@pytest.fixture(scope="session")
def docker_client() -> Iterator[Any]:
    """A client of a running Docker engine."""
    import docker

    problem = None
    try:
        client = docker.from_env(timeout=600)
        client.ping()
    except Exception as exc:  # noqa: BLE001 - any failure to reach a daemon means: no Docker engine here
        problem = f"no Docker engine: {exc}"
    if problem is not None:
        # docker-py leaves the socket of its failed version request unclosed (the exception's
        # frames hold it): collect it here, where its ResourceWarning is expected, instead of
        # letting `filterwarnings = error` fail the whole session at exit.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()
        pytest.skip(problem)
    yield client
    client.close()


@pytest.fixture(scope="session")
def base_image(docker_client: Any) -> str:
    """PGSLUICE_BASE_IMAGE, the local trixie base (scripts/build-base-image.sh), or python:3.13-slim-trixie."""
    import docker

    candidates = [os.environ.get("PGSLUICE_BASE_IMAGE"), "pgsluice-base:trixie", "python:3.13-slim-trixie"]
    for name in filter(None, candidates):
        try:
            docker_client.images.get(name)
        except docker.errors.ImageNotFound:
            continue
        return name
    pytest.skip("no base image: run scripts/build-base-image.sh (no registry here to pull python:3.13-slim-trixie)")


def build(docker_client: Any, context: Path, tag: str, buildargs: dict[str, str]) -> Any:
    """docker build with host networking, the extra CA copied into the context when there is one."""
    ca = extra_ca()
    target = context / "extra-ca.crt"
    copied = False
    if ca is not None and not target.exists():
        shutil.copyfile(ca, target)
        copied = True
    try:
        image, _logs = docker_client.images.build(
            path=str(context), tag=tag, buildargs=buildargs, network_mode="host", rm=True, forcerm=True
        )
        return image
    finally:
        if copied:
            target.unlink()


@pytest.fixture(scope="session")
def pgsluice_image(docker_client: Any, base_image: str) -> str:
    """The real image, built from the repository's Dockerfile."""
    build(docker_client, ROOT, IMAGE_TAG, {"BASE_IMAGE": base_image})
    return IMAGE_TAG


@pytest.fixture(scope="session")
def helm() -> str:
    """The helm binary (PATH, or where scripts/e2e-setup.sh builds it)."""
    found = shutil.which("helm") or (
        "/var/cache/pgsluice/bin/helm" if Path("/var/cache/pgsluice/bin/helm").exists() else None
    )
    if not found:
        pytest.skip("helm not found: go install helm.sh/helm/v3/cmd/helm (scripts/e2e-setup.sh does)")
    return found
