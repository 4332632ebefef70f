"""The chart, rendered by helm, and k8s/, validated offline against the Kubernetes OpenAPI schemas."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from pgsluice.errors import PERMANENT, TRANSIENT, ExitCode
from tests.support.cli import ROOT

pytestmark = pytest.mark.e2e

CHART = ROOT / "helm" / "pgsluice"
K8S = ROOT / "k8s"
K8S_VERSION = "1.33"
# Kubernetes wants each podFailurePolicy list in ascending order.
PERMANENT_CODES = sorted(int(code) for code in PERMANENT)
TRANSIENT_CODES = sorted(int(code) for code in TRANSIENT)
# Every values file in ci/ is linted, rendered in both modes, and validated.
CI_VALUES = sorted(path.name.removesuffix("-values.yaml") for path in (CHART / "ci").glob("*-values.yaml"))
KUSTOMIZATIONS = sorted(path.parent for path in K8S.rglob("kustomization.yaml"))
# Mode job: the Job is named after a hash of its spec, not after the release revision.
HASHED_JOB_NAME = re.compile(r"^rel-pgsluice-migrate-[0-9a-f]{10}$")


def validate(doc: dict[str, Any]) -> None:
    import kubernetes_validate

    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def render(helm: str, *args: str) -> list[dict[str, Any]]:
    out = subprocess.run(
        [helm, "template", "rel", str(CHART), "--namespace", "apps", *args], capture_output=True, text=True, check=True
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def ci_values(name: str) -> str:
    return str(CHART / "ci" / f"{name}-values.yaml")


def jobs_of(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == "Job"]


def the_job(docs: list[dict[str, Any]], component: str = "migration") -> dict[str, Any]:
    (job,) = [d for d in jobs_of(docs) if d["metadata"]["labels"]["app.kubernetes.io/component"] == component]
    return job


def env_of(job: dict[str, Any]) -> dict[str, Any]:
    container = job["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def exit_code_rules(job: dict[str, Any]) -> dict[str, list[int]]:
    """action → exit codes of the podFailurePolicy's onExitCodes rules."""
    rules = job["spec"]["podFailurePolicy"]["rules"]
    return {r["action"]: r["onExitCodes"]["values"] for r in rules if "onExitCodes" in r}


def assert_exit_codes_match_errors(job: dict[str, Any]) -> None:
    """Permanent codes fail the Job (a fleet: the index) at once; transient ones count; nothing else."""
    fail = "FailIndex" if job["spec"].get("completionMode") == "Indexed" else "FailJob"
    assert exit_code_rules(job) == {fail: PERMANENT_CODES, "Count": TRANSIENT_CODES}, job["metadata"]["name"]
    ignore = [r for r in job["spec"]["podFailurePolicy"]["rules"] if r["action"] == "Ignore"]
    assert ignore == [{"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}]


def assert_job_api_rules(job: dict[str, Any]) -> None:
    """The rules of Kubernetes' Job validation that its OpenAPI schema, and so kubernetes-validate, cannot say.

    From validateJobSpec and validatePodFailurePolicy (pkg/apis/batch/validation).
    """
    spec = job["spec"]
    pod = spec["template"]["spec"]
    if spec.get("completionMode") == "Indexed":
        assert "completions" in spec
    else:
        assert "backoffLimitPerIndex" not in spec and "maxFailedIndexes" not in spec, "requires indexed completion mode"
    if "maxFailedIndexes" in spec:
        assert "backoffLimitPerIndex" in spec
        assert spec["maxFailedIndexes"] <= spec["completions"]
    if "podFailurePolicy" not in spec:
        return
    assert pod["restartPolicy"] == "Never"
    containers = {c["name"] for c in pod["containers"] + pod.get("initContainers", [])}
    rules = spec["podFailurePolicy"]["rules"]
    assert len(rules) <= 20
    for rule in rules:
        if rule["action"] == "FailIndex":
            assert "backoffLimitPerIndex" in spec, "FailIndex requires the backoffLimitPerIndex to be set"
        assert ("onExitCodes" in rule) != ("onPodConditions" in rule)
        if "onExitCodes" in rule:
            on = rule["onExitCodes"]
            assert on.get("containerName", next(iter(containers))) in containers
            assert 0 < len(on["values"]) <= 255
            assert on["values"] == sorted(set(on["values"])), "must be ordered, without duplicates"
            assert on["operator"] == "NotIn" or 0 not in on["values"]


def assert_job_safety(job: dict[str, Any]) -> None:
    spec = job["spec"]
    pod = spec["template"]["spec"]
    container = pod["containers"][0]
    assert pod["restartPolicy"] == "Never"
    assert pod["automountServiceAccountToken"] is False
    if spec.get("completionMode") == "Indexed":
        # backoffLimit would cap the failures of all indexes together: per index only.
        assert "backoffLimit" not in spec
        assert 0 <= spec["backoffLimitPerIndex"] <= 5
    else:
        assert 0 <= spec["backoffLimit"] <= 5
    assert spec["activeDeadlineSeconds"] > 0
    assert spec.get("ttlSecondsAfterFinished", 1) > 0  # absent: job.ttlSecondsAfterFinished null (Argo CD, mode job)
    assert_exit_codes_match_errors(job)
    assert_job_api_rules(job)
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


def kustomization_resources(folder: Path) -> list[str]:
    """The resources a kustomization.yaml lists."""
    return [str(r) for r in yaml.safe_load((folder / "kustomization.yaml").read_text())["resources"]]


def kustomization_docs(folder: Path) -> dict[str, dict[str, Any]]:
    """kind → document, of the files a kustomization.yaml lists (one of each kind)."""
    docs = [doc for name in kustomization_resources(folder) for doc in yaml.safe_load_all((folder / name).read_text())]
    by_kind = {doc["kind"]: doc for doc in docs}
    assert len(by_kind) == len(docs)
    return by_kind


def pod_failure_policy_jobs(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The Job (or a CronJob's Job template) of a manifest, when it has a podFailurePolicy."""
    spec = doc.get("spec") or {}
    job = {"metadata": doc.get("metadata", {}), "spec": spec.get("jobTemplate", {}).get("spec", spec)}
    return [job] if "podFailurePolicy" in job["spec"] else []


def test_ci_values_cover_every_mode_and_feature() -> None:
    """The parametrized tests below run over these files: keep the features covered."""
    assert {"hook", "job", "backup", "rollback", "fleet", "unsafe", "argocd"} <= set(CI_VALUES)


@pytest.mark.parametrize("values", CI_VALUES)
def test_helm_lint_passes(helm: str, values: str) -> None:
    """helm lint --strict with each CI values file."""
    subprocess.run([helm, "lint", "--strict", str(CHART), "-f", ci_values(values)], check=True, capture_output=True)


@pytest.mark.parametrize("mode", ["hook", "job"])
@pytest.mark.parametrize("values", CI_VALUES)
def test_every_rendered_object_is_valid(helm: str, values: str, mode: str) -> None:
    """Each CI values file, in both modes: every object validates, every Job carries the safety fields."""
    docs = render(helm, "-f", ci_values(values), "--set", f"mode={mode}")
    assert jobs_of(docs)
    for doc in docs:
        validate(doc)
    for job in jobs_of(docs):
        assert_job_safety(job)


@pytest.mark.parametrize("mode", ["hook", "job"])
@pytest.mark.parametrize("values", CI_VALUES)
def test_chart_exit_codes_are_those_of_pgsluice_errors(helm: str, values: str, mode: str) -> None:
    """podFailurePolicy lists of every rendered Job (migrate, fleet, rollback) are PERMANENT and TRANSIENT."""
    for job in jobs_of(render(helm, "-f", ci_values(values), "--set", f"mode={mode}")):
        assert_exit_codes_match_errors(job)


def test_chart_exit_code_defaults_are_those_of_pgsluice_errors() -> None:
    """The one place in the chart, values.yaml, and its README row hold pgsluice.errors' lists."""
    policy = yaml.safe_load((CHART / "values.yaml").read_text())["podFailurePolicy"]
    assert policy == {"permanentExitCodes": PERMANENT_CODES, "transientExitCodes": TRANSIENT_CODES}
    readme = (CHART / "README.md").read_text()
    for key, codes in policy.items():
        assert f"| `podFailurePolicy.{key}` | `{codes}` |" in readme


def test_k8s_exit_codes_are_those_of_pgsluice_errors() -> None:
    """Every manifest under k8s/ with a podFailurePolicy uses PERMANENT and TRANSIENT."""
    found = []
    for path in sorted(K8S.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            for job in pod_failure_policy_jobs(doc or {}):
                assert_exit_codes_match_errors(job)
                found.append(path.relative_to(K8S).as_posix())
    assert {"job.yaml", "fleet/job.yaml"} <= set(found)


def test_every_k8s_manifest_is_listed_in_its_kustomization() -> None:
    """No manifest under k8s/ escapes validation: each is a resource of its folder's kustomization."""
    listed = {folder / name for folder in KUSTOMIZATIONS for name in kustomization_resources(folder)}
    manifests = {p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml"}
    assert manifests - listed == set()


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
    assert job["spec"]["ttlSecondsAfterFinished"] == 86400
    assert_job_safety(job)
    env = env_of(job)
    assert env["DATABASE_URL"] == {"secretKeyRef": {"name": "app-database", "key": "DATABASE_URL"}}
    assert (env["PGSLUICE_BACKUP_URL"], env["PGSLUICE_REQUIRE_BACKUP"]) == ("none", "false")
    assert env["PGSLUICE_UNSAFE_DDL"] == "warn"
    assert (env["PGSLUICE_ON_DRIFT"], env["PGSLUICE_LOCK_STRATEGY"], env["PGSLUICE_STRICT_FUTURE"]) == (
        "warn",
        "advisory",
        "false",
    )
    assert not any(name.startswith(("PGSLUICE_VAR_", "PGSLUICE_SHARD", "PGSLUICE_TARGETS")) for name in env)
    assert [d["kind"] for d in docs] == ["Job"]
    image = job["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == "pgsluice:0.1.0"


def test_job_mode_is_a_plain_job_named_after_its_spec(helm: str) -> None:
    """No hook annotations; the name carries a hash of the spec; extra annotations pass through."""
    job = the_job(render(helm, "-f", str(CHART / "ci" / "job-values.yaml")))
    validate(job)
    assert not any(k.startswith("helm.sh/hook") for k in job["metadata"]["annotations"])
    assert job["metadata"]["annotations"]["argocd.argoproj.io/sync-wave"] == "-1"
    assert HASHED_JOB_NAME.match(job["metadata"]["name"]), job["metadata"]["name"]
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
        (["--set", "settings.unsafeDdl=maybe"], "unsafeDdl"),
        (["--set", "settings.onDrift=ignore"], "onDrift"),
        (["--set", "settings.lockStrategy=mutex"], "lockStrategy"),
        (["--set", "settings.strictFuture=yes"], "strictFuture"),
        (["--set-string", "settings.vars.bad-name=x"], "bad-name"),
        (["--set", "settings.vars.batch=5"], "/settings/vars/batch"),
        (["--set", "fleet.shards=-1"], "shards"),
        (["--set", "fleet.shards=0"], "shards"),
        (["--set", "fleet.backoffLimitPerIndex=-1"], "backoffLimitPerIndex"),
        (["--set", "fleet.enabled=true"], "targets"),
        (["--set", "fleet.enabled=true,fleet.targets={a b}"], "targets"),
        (["--set", "fleet.enabled=true,fleet.targets={a},fleet.targetsConfigMap=t"], "not both"),
        (["--set", "fleet.enabled=true,fleet.targets={a},fleet.maxFailedIndexes=5"], "maxFailedIndexes"),
        (["--set", "fleet.enabled=true,fleet.targets={a},rollback.enabled=true"], "rollback.enabled"),
        (["--set", "rollback.deletePolicy=never"], "deletePolicy"),
        (["--set", "podFailurePolicy.permanentExitCodes={0}"], "permanentExitCodes"),
        (["--set", "podFailurePolicy.permanentExitCodes={4,2}"], "ascending"),
        (["--set", "podFailurePolicy.transientExitCodes={3,7}"], "exit code 7 is in both"),
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
    docs = kustomization_docs(K8S)
    for doc in docs.values():
        validate(doc)
    assert set(docs) == {"Secret", "ConfigMap", "Job", "Deployment"}
    assert_job_safety(docs["Job"])
    init = docs["Deployment"]["spec"]["template"]["spec"]["initContainers"][0]
    assert init["securityContext"]["readOnlyRootFilesystem"] is True
    assert init["env"][0]["valueFrom"]["secretKeyRef"]["name"] == "app-database"
    assert docs["Deployment"]["spec"]["template"]["spec"]["automountServiceAccountToken"] is False


def test_k8s_fleet_is_a_valid_indexed_job_over_its_targets() -> None:
    """k8s/fleet: an Indexed Job, FailIndex on permanent codes, the shard count equal to completions."""
    docs = kustomization_docs(K8S / "fleet")
    for doc in docs.values():
        validate(doc)
    assert set(docs) == {"ConfigMap", "Job"}
    job, targets = docs["Job"], docs["ConfigMap"]
    assert_job_safety(job)
    spec = job["spec"]
    assert (spec["completionMode"], spec["completions"], spec["backoffLimitPerIndex"]) == ("Indexed", 4, 2)
    env = env_of(job)
    assert env["PGSLUICE_SHARD_COUNT"] == str(spec["completions"])
    assert env["PGSLUICE_TARGETS_FILE"] == "/targets/targets.txt"
    assert env["DATABASE_URL"] == {"secretKeyRef": {"name": "app-database", "key": "DATABASE_URL"}}
    pod = spec["template"]["spec"]
    assert pod["containers"][0]["args"] == ["migrate"]
    assert {"name": "targets", "mountPath": "/targets", "readOnly": True} in pod["containers"][0]["volumeMounts"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["targets"]["configMap"]["name"] == targets["metadata"]["name"]
    assert [item["key"] for item in volumes["targets"]["configMap"]["items"]] == list(targets["data"])
    assert len(targets["data"]["targets.txt"].split()) >= spec["completions"]


@pytest.mark.parametrize("folder", KUSTOMIZATIONS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_k8s_kustomizations_build_into_valid_objects(folder: Path) -> None:
    """kubectl kustomize builds each folder; the built objects validate too."""
    kubectl = shutil.which("kubectl")
    if not kubectl:
        pytest.skip("kubectl not found: it builds the kustomizations")
    out = subprocess.run([kubectl, "kustomize", str(folder)], capture_output=True, text=True, check=True).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    assert len(docs) == len(kustomization_docs(folder))
    for doc in docs:
        validate(doc)
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "pgsluice-example"


def test_rollback_hook_runs_down_future_like_the_migrate_job(helm: str) -> None:
    """rollback.enabled: a pre-rollback hook Job, `down --future`, everything else as the migrate Job."""
    docs = render(helm, "-f", ci_values("rollback"))
    migrate, rollback = the_job(docs), the_job(docs, "rollback")
    for job in (migrate, rollback):
        validate(job)
        assert_job_safety(job)
    assert rollback["metadata"]["name"] == "rel-pgsluice-rollback"
    assert rollback["metadata"]["annotations"] == {
        "helm.sh/hook": "pre-rollback",
        "helm.sh/hook-weight": "-10",
        "helm.sh/hook-delete-policy": "before-hook-creation",
    }
    assert migrate["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    pod, migrate_pod = rollback["spec"]["template"]["spec"], migrate["spec"]["template"]["spec"]
    assert pod["containers"][0]["args"] == ["down", "--future"]
    assert migrate_pod["containers"][0]["args"] == ["migrate"]
    # Same env, secrets, security contexts, resources, volumes; only the args differ.
    assert {**pod["containers"][0], "args": None} == {**migrate_pod["containers"][0], "args": None}
    assert {**pod, "containers": None} == {**migrate_pod, "containers": None}
    assert {"name": "migrations", "configMap": {"name": "app-migrations-v41"}} in pod["volumes"]
    assert rollback["spec"]["podFailurePolicy"] == migrate["spec"]["podFailurePolicy"]
    assert rollback["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] == "rollback"


def test_rollback_hook_is_not_rendered_in_job_mode_or_by_default(helm: str) -> None:
    """A plain Job per revision has no Helm hooks: mode job renders the migrate Job only."""
    for args in (["-f", ci_values("rollback"), "--set", "mode=job"], ["-f", ci_values("hook")]):
        docs = render(helm, *args)
        names = [job["metadata"]["name"] for job in jobs_of(docs)]
        assert names == ["rel-pgsluice-migrate"] or (len(names) == 1 and HASHED_JOB_NAME.match(names[0])), names
        assert not any("pre-rollback" in str(d["metadata"].get("annotations")) for d in docs)


def test_fleet_renders_an_indexed_job_over_the_targets(helm: str) -> None:
    """fleet.enabled: Indexed Job, per-index backoff, FailIndex on permanent codes, targets in a hook ConfigMap."""
    docs = render(helm, "-f", ci_values("fleet"))
    job = the_job(docs)
    (targets,) = [d for d in docs if d["kind"] == "ConfigMap"]
    for doc in docs:
        validate(doc)
    assert_job_safety(job)
    spec = job["spec"]
    assert job["metadata"]["name"] == "rel-pgsluice-migrate"
    assert {k: spec.get(k) for k in ("completionMode", "completions", "parallelism", "backoffLimitPerIndex")} == {
        "completionMode": "Indexed",
        "completions": 3,
        "parallelism": 3,
        "backoffLimitPerIndex": 2,
    }
    assert spec["maxFailedIndexes"] == 1
    assert "backoffLimit" not in spec
    rules = {r["action"]: r for r in spec["podFailurePolicy"]["rules"]}
    assert set(rules) == {"FailIndex", "Count", "Ignore"}
    assert rules["FailIndex"]["onExitCodes"]["values"] == PERMANENT_CODES
    assert rules["Count"]["onExitCodes"]["values"] == TRANSIENT_CODES
    assert rules["Ignore"]["onPodConditions"] == [{"type": "DisruptionTarget", "status": "True"}]
    pod = spec["template"]["spec"]
    assert pod["containers"][0]["args"] == ["migrate"]
    env = env_of(job)
    assert env["PGSLUICE_TARGETS_FILE"] == "/targets/targets.txt"
    assert (env["PGSLUICE_SHARD_COUNT"], env["PGSLUICE_PARALLEL"], env["PGSLUICE_CANARY"]) == ("3", "2", "1")
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["targets"]["configMap"] == {
        "name": "rel-pgsluice-targets",
        "items": [{"key": "targets.txt", "path": "targets.txt"}],
    }
    assert targets["metadata"]["name"] == "rel-pgsluice-targets"
    assert targets["data"]["targets.txt"] == "tenant_1\ntenant_2\napp:tenant_17\nreports:tenant_18\n"
    # A hook Job runs before the release's resources exist: its ConfigMap is an earlier hook.
    annotations = targets["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert int(annotations["helm.sh/hook-weight"]) < int(job["metadata"]["annotations"]["helm.sh/hook-weight"])


def test_fleet_defaults_and_an_existing_targets_config_map(helm: str) -> None:
    """Defaults: parallelism = shards, no maxFailedIndexes, no canary; targetsConfigMap renders no ConfigMap."""
    docs = render(helm, "-f", ci_values("job"), "--set", "fleet.enabled=true,fleet.targetsConfigMap=tenants")
    job = the_job(docs)
    validate(job)
    assert_job_safety(job)
    assert [d["kind"] for d in docs] == ["Job"]
    spec = job["spec"]
    assert (spec["completions"], spec["parallelism"], spec["backoffLimitPerIndex"]) == (4, 4, 2)
    assert "maxFailedIndexes" not in spec
    env = env_of(job)
    assert (env["PGSLUICE_SHARD_COUNT"], env["PGSLUICE_PARALLEL"]) == ("4", "1")
    assert "PGSLUICE_CANARY" not in env
    volumes = {v["name"]: v for v in spec["template"]["spec"]["volumes"]}
    assert volumes["targets"]["configMap"]["name"] == "tenants"


def test_fleet_targets_config_map_follows_the_job_in_job_mode(helm: str) -> None:
    """Mode job: a plain ConfigMap with the Job's annotations (an Argo CD sync wave), no Helm hook."""
    docs = render(helm, "-f", ci_values("job"), "-f", ci_values("fleet"), "--set", "mode=job")
    (targets,) = [d for d in docs if d["kind"] == "ConfigMap"]
    assert targets["metadata"]["annotations"] == {"argocd.argoproj.io/sync-wave": "-1"}
    assert HASHED_JOB_NAME.match(the_job(docs)["metadata"]["name"])


def test_new_settings_are_passed_as_environment(helm: str) -> None:
    """unsafeDdl block and the other new settings reach the container; each var is one PGSLUICE_VAR_."""
    job = the_job(render(helm, "-f", ci_values("unsafe")))
    validate(job)
    env = env_of(job)
    assert env["PGSLUICE_UNSAFE_DDL"] == "block"
    assert (env["PGSLUICE_ON_DRIFT"], env["PGSLUICE_LOCK_STRATEGY"], env["PGSLUICE_STRICT_FUTURE"]) == (
        "fail",
        "lease",
        "true",
    )
    variables = {k: v for k, v in env.items() if k.startswith("PGSLUICE_VAR_")}
    assert variables == {"PGSLUICE_VAR_app_role": "app_rw", "PGSLUICE_VAR_search_path": "app"}


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


def test_values_schema_is_valid_json_schema() -> None:
    """The schema itself is well formed (helm would ignore a broken one)."""
    import json

    import jsonschema

    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.validate(yaml.safe_load((CHART / "values.yaml").read_text()), schema)


# GitOps: mode job named after what it runs, Argo CD's hooks, timeouts, resources, pinned images.


def job_name(helm: str, *args: str) -> str:
    """The migrate Job's name, rendered in mode job with ``args``."""
    return str(the_job(render(helm, "--set", "existingSecret=s", "--set", "mode=job", *args))["metadata"]["name"])


def test_job_mode_name_changes_with_what_the_job_runs_and_only_then(helm: str) -> None:
    """helm template (Argo CD) always renders revision 1: the name comes from the spec, so a new image is a new Job
    (no "field is immutable") and the same inputs are the same Job."""
    v1 = job_name(helm, "--set", "image.tag=0.1.0")
    assert HASHED_JOB_NAME.match(v1), v1
    assert job_name(helm, "--set", "image.tag=0.1.0") == v1
    assert job_name(helm, "--set", "image.tag=0.1.0", "--set", "hook.weight=-9") == v1  # not in the spec
    assert job_name(helm, "--set", "image.tag=0.1.0", "--set", "job.annotations.team=db") == v1
    changed = {
        "image": job_name(helm, "--set", "image.tag=0.2.0"),
        "digest": job_name(helm, "--set", "image.tag=0.1.0", "--set", f"image.digest=sha256:{'a' * 64}"),
        "migrations": job_name(helm, "--set", "image.tag=0.1.0", "--set", "migrations.checksum=abc123"),
        "configMap": job_name(helm, "--set", "image.tag=0.1.0", "--set", "migrations.configMap=app-migrations-v2"),
        "setting": job_name(helm, "--set", "image.tag=0.1.0", "--set", "settings.lockTimeout=90s"),
    }
    assert len({v1, *changed.values()}) == 1 + len(changed), changed


def test_job_mode_name_follows_the_fleet_targets(helm: str) -> None:
    """A fleet's targets are read by the pod, not part of its spec: their checksum annotation renames the Job."""
    base = ("-f", ci_values("fleet"))
    job = the_job(render(helm, *base, "--set", "mode=job"))
    annotations = job["spec"]["template"]["metadata"]["annotations"]
    assert re.fullmatch(r"[0-9a-f]{64}", annotations["checksum/targets"])
    assert job_name(helm, *base) == job_name(helm, *base)
    assert job_name(helm, *base, "--set", "fleet.targets={tenant_1,tenant_2,tenant_3}") != job_name(helm, *base)


def test_job_mode_name_stays_within_the_label_limit(helm: str) -> None:
    """Kubernetes puts the Job's name in a label of its pods (63 characters): a long release name is truncated."""
    long_release = "app-" + "x" * 49  # the longest Helm accepts: 53 characters
    out = subprocess.run(
        [helm, "template", long_release, str(CHART), "--set", "existingSecret=s", "--set", "mode=job"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    (job,) = jobs_of([d for d in yaml.safe_load_all(out) if d])
    validate(job)
    name = job["metadata"]["name"]
    assert len(name) <= 63 and re.fullmatch(r"[a-z0-9-]+-[0-9a-f]{10}", name), name


@pytest.mark.parametrize("mode", ["job", "hook"])
def test_argocd_hook_option_adds_argo_cd_presync_annotations(helm: str, mode: str) -> None:
    """argocd.hook: a PreSync hook with its delete policy and hook.weight as the sync wave, in both modes (Argo CD
    then ignores the Helm hook annotations, Helm ignores Argo CD's); digest and checksum reach the pod."""
    job = the_job(render(helm, "-f", ci_values("argocd"), "--set", f"mode={mode}"))
    validate(job)
    assert_job_safety(job)
    annotations = job["metadata"]["annotations"]
    argocd = {k: v for k, v in annotations.items() if k.startswith("argocd.argoproj.io/")}
    assert argocd == {
        "argocd.argoproj.io/hook": "PreSync",
        "argocd.argoproj.io/hook-delete-policy": "BeforeHookCreation,HookSucceeded",
        "argocd.argoproj.io/sync-wave": "-5",
    }
    helm_hooks = {k for k in annotations if k.startswith("helm.sh/hook")}
    assert helm_hooks == (
        {"helm.sh/hook", "helm.sh/hook-weight", "helm.sh/hook-delete-policy"} if mode == "hook" else set()
    )
    assert "ttlSecondsAfterFinished" not in job["spec"]  # job.ttlSecondsAfterFinished: null
    pod = job["spec"]["template"]
    assert pod["metadata"]["annotations"] == {"checksum/migrations": "9e107d9d372bb6826bd81d3542a419d6"}
    digest = "sha256:4f2a9c0e8b7d6a5f4e3d2c1b0a9f8e7d6c5b4a3f2e1d0c9b8a7f6e5d4c3b2a19"
    assert pod["spec"]["containers"][0]["image"] == f"registry.example.com/pgsluice:0.1.0@{digest}"


def test_argocd_hook_option_off_by_default_and_its_sync_wave_yields_to_job_annotations(helm: str) -> None:
    """No Argo CD annotation unless asked; job.annotations' own sync wave is the only one (no duplicate key)."""
    for values in CI_VALUES:
        if values != "argocd":
            for job in jobs_of(render(helm, "-f", ci_values(values))):
                assert "argocd.argoproj.io/hook" not in (job["metadata"].get("annotations") or {})
    docs = render(helm, "-f", ci_values("job"), "-f", ci_values("fleet"), "--set", "mode=job,argocd.hook=true")
    job = the_job(docs)
    (targets,) = [d for d in docs if d["kind"] == "ConfigMap"]
    assert job["metadata"]["annotations"]["argocd.argoproj.io/sync-wave"] == "-1"
    assert job["metadata"]["annotations"]["argocd.argoproj.io/hook"] == "PreSync"
    # The fleet's targets: a PreSync hook too, so it exists when the Job starts.
    assert targets["metadata"]["annotations"]["argocd.argoproj.io/hook"] == "PreSync"
    docs = render(helm, "-f", ci_values("fleet"), "--set", "argocd.hook=true")
    (targets,) = [d for d in docs if d["kind"] == "ConfigMap"]
    assert targets["metadata"]["annotations"]["argocd.argoproj.io/sync-wave"] == "-6"  # one wave before the Job


def render_notes(helm: str, tmp_path: Path, *args: str) -> str:
    """NOTES.txt as helm install prints it, rendered offline: the same text, included into a ConfigMap of a copy
    of the chart (helm template leaves NOTES out, and helm install --dry-run wants a cluster)."""
    chart = tmp_path / "pgsluice"
    shutil.copytree(CHART, chart)
    notes = chart / "templates" / "NOTES.txt"
    (chart / "templates" / "_notes.tpl").write_text(
        '{{- define "test.notes" -}}\n' + notes.read_text() + "\n{{- end -}}\n"
    )
    notes.unlink()
    configmap = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\ndata:\n"
    (chart / "templates" / "notes.yaml").write_text(configmap + '  notes: {{ include "test.notes" . | quote }}\n')
    out = subprocess.run(
        [helm, "template", "rel", str(chart), "--namespace", "apps", "--show-only", "templates/notes.yaml", *args],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return str(yaml.safe_load(out)["data"]["notes"])


def seconds(duration: str) -> float:
    """A duration of the values (60, 60s, 500ms, 5m, 2h, 1d) in seconds."""
    number, unit = re.fullmatch(r"([0-9.]+)(ms|s|m|h|d)?", duration).groups()  # type: ignore[union-attr]
    return float(number) * {None: 1, "s": 1, "ms": 0.001, "m": 60, "h": 3600, "d": 86400}[unit]


HELM_DEFAULT_TIMEOUT = 300  # helm --timeout, and Flux's HelmRelease spec.timeout


def test_default_deadline_fits_helm_default_timeout_and_the_waits_fit_the_deadline(helm: str) -> None:
    """Out of the box, Helm does not give up on a hook still running, and pgsluice's own waits end before the
    deadline (exit 3 or 5 with a reason, not DeadlineExceeded)."""
    for values in CI_VALUES:
        for job in jobs_of(render(helm, "-f", ci_values(values))):
            spec = job["spec"]
            grace = spec["template"]["spec"]["terminationGracePeriodSeconds"]
            assert spec["activeDeadlineSeconds"] + grace < HELM_DEFAULT_TIMEOUT, values
            env = env_of(job)
            waits = seconds(env["PGSLUICE_WAIT_TIMEOUT"]) + seconds(env["PGSLUICE_LOCK_TIMEOUT"])
            assert waits < spec["activeDeadlineSeconds"], values


def test_notes_print_the_timeout_rule_and_warn_when_values_break_it(helm: str, tmp_path: Path) -> None:
    """NOTES: the rule with the numbers; a warning with the --timeout to pass once the deadline is raised alone, and
    one when the waits outlast the deadline; none with the defaults."""
    default = render_notes(helm, tmp_path / "a", "--set", "existingSecret=s")
    flat = " ".join(default.split())
    assert "the Job may run 240s (job.activeDeadlineSeconds), then take up to 30s to stop" in flat
    assert "(job.terminationGracePeriodSeconds): 270s in all" in flat
    assert "raise both together" in default
    assert "WARNING: 270s" not in default and "settings.waitTimeout" not in default
    raised = render_notes(helm, tmp_path / "b", "--set", "existingSecret=s", "--set", "job.activeDeadlineSeconds=900")
    assert "WARNING: 930s is not below Helm's default --timeout of 5m: pass --timeout 990s" in " ".join(raised.split())
    slow = render_notes(helm, tmp_path / "c", "--set", "existingSecret=s", "--set", "settings.lockTimeout=5m")
    assert "WARNING: settings.waitTimeout + settings.lockTimeout (360s) are not below" in " ".join(slow.split())


def test_notes_name_the_job_that_mode_job_renders(helm: str, tmp_path: Path) -> None:
    """The kubectl wait line in NOTES names the hashed Job, and waits for its deadline and grace period."""
    notes = render_notes(helm, tmp_path, "--set", "existingSecret=s", "--set", "mode=job")
    name = job_name(helm)
    assert f"--timeout=300s job/{name}" in notes


def test_internal_error_fails_the_job_at_once() -> None:
    """Exit 1 is a bug that a retry meets again: permanent, in the chart's defaults and k8s/ (checked above)."""
    assert ExitCode.INTERNAL in PERMANENT and ExitCode.INTERNAL not in TRANSIENT
    assert 1 in yaml.safe_load((CHART / "values.yaml").read_text())["podFailurePolicy"]["permanentExitCodes"]


def mebibytes(quantity: str) -> float:
    """A Kubernetes memory quantity (Mi, Gi) in MiB."""
    number, unit = re.fullmatch(r"([0-9]+)(Mi|Gi)", quantity).groups()  # type: ignore[union-attr]
    return float(number) * {"Mi": 1, "Gi": 1024}[unit]


def test_memory_request_covers_the_documented_backup_peak() -> None:
    """The request is at least the README's peak during a backup (under 200 MiB), the limit above it; the values
    comment explains it from the current upload shape (no 16 MiB parts any more)."""
    from pgsluice.backup import IN_FLIGHT_BUDGET, MAX_PART, MIN_PART

    readme = " ".join((ROOT / "README.md").read_text().split())
    assert "peak memory stays under 200 MiB" in readme
    resources = yaml.safe_load((CHART / "values.yaml").read_text())["resources"]
    request, limit = mebibytes(resources["requests"]["memory"]), mebibytes(resources["limits"]["memory"])
    assert 200 <= request <= limit
    text = (CHART / "values.yaml").read_text()
    comment = " ".join(text[: text.index("\nresources:")].rsplit("\n\n", 1)[1].replace("#", " ").split())
    assert "under 200 MiB" in comment and "16 MiB" not in comment
    assert f"{IN_FLIGHT_BUDGET >> 20} MiB" in comment
    assert f"{MIN_PART >> 20} to" in comment and f"{MAX_PART >> 20} MiB" in comment


def test_image_digest_pins_the_image_and_is_checked(helm: str) -> None:
    """image.digest: repository:tag@digest; anything but sha256:<64 hex> is refused."""
    digest = f"sha256:{'0123456789abcdef' * 4}"
    job = the_job(render(helm, "-f", ci_values("hook"), "--set", f"image.digest={digest}"))
    assert job["spec"]["template"]["spec"]["containers"][0]["image"] == f"pgsluice:0.1.0@{digest}"
    proc = subprocess.run(
        [helm, "template", "rel", str(CHART), "--set", "existingSecret=s", "--set", "image.digest=latest"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode != 0 and "digest" in proc.stderr


def k8s_images(docs: list[dict[str, Any]]) -> list[str]:
    """The image of every container and init container in these manifests."""
    pods = [d["spec"]["template"]["spec"] for d in docs if d["kind"] in ("Job", "Deployment")]
    return [c["image"] for pod in pods for c in pod.get("initContainers", []) + pod["containers"]]


def test_k8s_images_are_pinned() -> None:
    """Every image under k8s/ has a tag other than latest (or a digest), as written and as kustomize builds it."""
    docs = [
        doc
        for path in sorted(K8S.rglob("*.yaml"))
        if path.name != "kustomization.yaml"
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]
    images = k8s_images(docs)
    assert len(images) >= 3  # the Job, the fleet's Job, the Deployment's init container (and its app)
    pgsluice = [i for i in images if i.split("@")[0].split(":")[0] == "pgsluice"]
    assert pgsluice == ["pgsluice:0.1.0"] * 3, images
    for image in images:
        name = image.split("@")[0].rsplit("/", 1)[-1]
        assert ":" in name and not name.endswith(":latest"), image
    kubectl = shutil.which("kubectl")
    if kubectl:
        for folder in KUSTOMIZATIONS:
            out = subprocess.run([kubectl, "kustomize", str(folder)], capture_output=True, text=True, check=True).stdout
            built = [i for i in k8s_images([d for d in yaml.safe_load_all(out) if d]) if i.startswith("pgsluice")]
            assert built and set(built) == {"pgsluice:0.1.0"}, folder


def test_chart_readme_has_a_gitops_section() -> None:
    """Argo CD (PreSync hook or mode job), Flux and kubectl apply -k, in one section of the chart README."""
    readme = (CHART / "README.md").read_text()
    section = readme[readme.index("\n## GitOps\n") :]
    section = section[: section.index("\n## ", 1)]
    for needle in ("Argo CD", "PreSync", "argocd.hook", "mode `job`", "Flux", "spec.timeout", "kubectl apply -k"):
        assert needle in section, needle
