"""The chart, rendered by helm, and k8s/, validated offline against the Kubernetes OpenAPI schemas."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.cli import ROOT

pytestmark = pytest.mark.e2e

CHART = ROOT / "helm" / "pgsluice"
K8S_VERSION = "1.33"
PERMANENT, TRANSIENT = [2, 4, 6, 7], [3, 5, 8]


def validate(doc: dict[str, Any]) -> None:
    import kubernetes_validate

    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def render(helm: str, *args: str) -> list[dict[str, Any]]:
    out = subprocess.run(
        [helm, "template", "rel", str(CHART), "--namespace", "apps", *args], capture_output=True, text=True, check=True
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def the_job(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (job,) = [d for d in docs if d["kind"] == "Job"]
    return job


def env_of(job: dict[str, Any]) -> dict[str, Any]:
    container = job["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def assert_job_safety(job: dict[str, Any]) -> None:
    spec = job["spec"]
    pod = spec["template"]["spec"]
    container = pod["containers"][0]
    assert pod["restartPolicy"] == "Never"
    assert pod["automountServiceAccountToken"] is False
    assert 0 <= spec["backoffLimit"] <= 5
    assert spec["activeDeadlineSeconds"] > 0
    assert spec["ttlSecondsAfterFinished"] > 0
    rules = spec["podFailurePolicy"]["rules"]
    by_action = {r["action"]: r for r in rules}
    assert by_action["FailJob"]["onExitCodes"]["values"] == PERMANENT
    assert by_action["Count"]["onExitCodes"]["values"] == TRANSIENT
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    sc, psc = container["securityContext"], pod["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert psc["runAsNonRoot"] is True
    assert psc["seccompProfile"]["type"] == "RuntimeDefault"
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]


@pytest.mark.parametrize("values", ["hook", "job", "backup"])
def test_helm_lint_passes(helm: str, values: str) -> None:
    """helm lint --strict with each CI values file."""
    subprocess.run(
        [helm, "lint", "--strict", str(CHART), "-f", str(CHART / "ci" / f"{values}-values.yaml")],
        check=True,
        capture_output=True,
    )


def test_hook_mode_renders_a_valid_safe_hook_job(helm: str) -> None:
    """Hook annotations, every safety field, the URL only by secretKeyRef, no backup → backup none."""
    docs = render(helm, "-f", str(CHART / "ci" / "hook-values.yaml"))
    job = the_job(docs)
    validate(job)
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert annotations["helm.sh/hook-delete-policy"] == "before-hook-creation"
    assert annotations["helm.sh/hook-weight"] == "-5"
    assert job["metadata"]["name"] == "rel-pgsluice-migrate"
    assert_job_safety(job)
    env = env_of(job)
    assert env["DATABASE_URL"] == {"secretKeyRef": {"name": "app-database", "key": "DATABASE_URL"}}
    assert (env["PGSLUICE_BACKUP_URL"], env["PGSLUICE_REQUIRE_BACKUP"]) == ("none", "false")
    image = job["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == "pgsluice:0.1.0"


def test_job_mode_is_a_plain_job_per_revision(helm: str) -> None:
    """No hook annotations; the name carries the revision; extra annotations pass through."""
    job = the_job(render(helm, "-f", str(CHART / "ci" / "job-values.yaml")))
    validate(job)
    assert not any(k.startswith("helm.sh/hook") for k in job["metadata"]["annotations"])
    assert job["metadata"]["annotations"]["argocd.argoproj.io/sync-wave"] == "-1"
    assert job["metadata"]["name"] == "rel-pgsluice-migrate-1"
    assert_job_safety(job)


def test_backup_values_turn_require_backup_on_and_keep_credentials_in_secrets(helm: str) -> None:
    """backup.url set: require on, settings passed, credentials via envFrom, migrations from the ConfigMap."""
    job = the_job(render(helm, "-f", str(CHART / "ci" / "backup-values.yaml"), "--set", "image.tag=9.9.9"))
    validate(job)
    env = env_of(job)
    assert env["PGSLUICE_BACKUP_URL"] == "s3://backups/app"
    assert env["PGSLUICE_REQUIRE_BACKUP"] == "true"
    assert (env["PGSLUICE_BACKUP_KEEP"], env["PGSLUICE_BACKUP_MAX_AGE"]) == ("7", "30d")
    assert env["PGSLUICE_BACKUP_PATH_STYLE"] == "true"
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["envFrom"] == [{"secretRef": {"name": "backup-credentials"}}]
    assert container["image"] == "pgsluice:9.9.9"
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    assert volumes["migrations"]["configMap"]["name"] == "app-migrations"
    rendered = yaml.safe_dump(job)
    assert "password" not in rendered.lower() and "postgresql://" not in rendered


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "mode=hooks"], "mode"),
        (["--set", "settings.waitTimeout=soon"], "waitTimeout"),
        (["--set", "backup.url=ftp://x/y"], "url"),
        (["--set", "backup.require=true"], "url"),
        (["--set", "job.backoffLimit=-1"], "backoffLimit"),
        (["--set", "imagePullPolicy=Always"], "imagePullPolicy"),
        (["--set", "settings.historyTable=Bad.Name"], "historyTable"),
    ],
)
def test_bad_values_are_rejected_by_the_schema(helm: str, args: list[str], message: str) -> None:
    """values.schema.json rejects each bad value at install time, naming it."""
    proc = subprocess.run(
        [helm, "template", "rel", str(CHART), "--set", "existingSecret=s", *args],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode != 0
    assert message in proc.stderr


def test_missing_existing_secret_is_an_error_that_explains_why(helm: str) -> None:
    """A pre-install hook cannot use a Secret of its own release: the error says so."""
    proc = subprocess.run([helm, "template", "rel", str(CHART)], capture_output=True, text=True, check=False)
    assert proc.returncode != 0
    assert "existingSecret is required" in proc.stderr


def test_k8s_manifests_are_valid_and_safe() -> None:
    """Everything kustomization.yaml lists validates; the Job and the init container carry the safety fields."""
    kustomization = yaml.safe_load((ROOT / "k8s" / "kustomization.yaml").read_text())
    docs = {}
    for name in kustomization["resources"]:
        for doc in yaml.safe_load_all((ROOT / "k8s" / name).read_text()):
            validate(doc)
            docs[doc["kind"]] = doc
    assert set(docs) == {"Secret", "ConfigMap", "Job", "Deployment"}
    assert_job_safety(docs["Job"])
    init = docs["Deployment"]["spec"]["template"]["spec"]["initContainers"][0]
    assert init["securityContext"]["readOnlyRootFilesystem"] is True
    assert init["env"][0]["valueFrom"]["secretKeyRef"]["name"] == "app-database"
    assert docs["Deployment"]["spec"]["template"]["spec"]["automountServiceAccountToken"] is False


def test_chart_readme_documents_every_value() -> None:
    """Each leaf of values.yaml has a row in the chart README's values table."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    readme = (CHART / "README.md").read_text()

    def leaves(node: Any, prefix: str = "") -> list[str]:
        if isinstance(node, dict) and node and prefix not in ("resources", "podSecurityContext", "securityContext"):
            return [leaf for k, v in node.items() for leaf in leaves(v, f"{prefix}.{k}" if prefix else k)]
        return [prefix]

    missing = [key for key in leaves(values) if f"| `{key}` |" not in readme]
    assert missing == []


def test_values_schema_is_valid_json_schema(tmp_path: Path) -> None:
    """The schema itself is well formed (helm would ignore a broken one)."""
    import json

    import jsonschema

    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.validate(yaml.safe_load((CHART / "values.yaml").read_text()), schema)
