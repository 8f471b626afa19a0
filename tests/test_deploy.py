"""deploy/: every file parses, names the Ray and dist-al versions we pin, and fits the KubeRay CRDs.

No Kubernetes or AWS here, so the manifests are checked against the CRDs' schemas as
written down below (KubeRay v1.6: RayCronJob is alpha there, behind the RayCronJob
feature gate), field by field: every required field present, no unknown field.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
KUBERAY_VERSION = "1.6"

# From ray-operator/config/crd/bases/ray.io_{rayclusters,rayjobs,raycronjobs}.yaml (KubeRay v1.6):
# required fields, and every field an object may have (an unknown one is a typo the API server rejects).
RAYCLUSTER_SPEC = {
    "required": {"headGroupSpec"},
    "fields": {"authOptions", "autoscalerOptions", "enableInTreeAutoscaling", "gcsFaultToleranceOptions",
               "headGroupSpec", "headServiceAnnotations", "managedBy", "rayVersion", "suspend", "upgradeStrategy",
               "workerGroupSpecs"},
}
HEAD_GROUP = {"required": {"template"},
              "fields": {"enableIngress", "headService", "labels", "rayStartParams", "resources", "serviceType",
                         "template"}}
WORKER_GROUP = {"required": {"groupName", "maxReplicas", "minReplicas", "template"},
                "fields": {"groupName", "idleTimeoutSeconds", "labels", "maxReplicas", "minReplicas", "numOfHosts",
                           "rayStartParams", "replicas", "resources", "scaleStrategy", "suspend", "template"}}
RAYJOB_SPEC = {"required": set(),
               "fields": {"activeDeadlineSeconds", "backoffLimit", "clusterSelector", "deletionStrategy", "entrypoint",
                          "entrypointNumCpus", "entrypointNumGpus", "entrypointResources", "jobId", "managedBy",
                          "metadata", "preRunningDeadlineSeconds", "rayClusterSpec", "runtimeEnvYAML",
                          "shutdownAfterJobFinishes", "submissionMode", "submitterConfig", "submitterPodTemplate",
                          "suspend", "ttlSecondsAfterFinished"}}
RAYCRONJOB_SPEC = {"required": {"jobTemplate", "schedule"}, "fields": {"jobTemplate", "schedule", "suspend"}}
CRONJOB_SPEC = {"required": {"jobTemplate", "schedule"},
                "fields": {"concurrencyPolicy", "failedJobsHistoryLimit", "jobTemplate", "schedule",
                           "startingDeadlineSeconds", "successfulJobsHistoryLimit", "suspend", "timeZone"}}


def pins() -> dict:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    ray_req = next(Requirement(r) for r in project["dependencies"] if Requirement(r).name == "ray")
    ray_pin = re.search(r"^ray==(\S+)$", (ROOT / "scripts" / "constraints.txt").read_text(), re.M).group(1)
    return {"dist_al": project["version"], "ray": ray_pin, "ray_spec": ray_req.specifier}


def documents() -> list[tuple[str, dict]]:
    out = []
    for path in sorted(DEPLOY.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            out.append((str(path.relative_to(ROOT)), doc))
    return out


def manifests(kind: str) -> list[tuple[str, dict]]:
    return [(p, d) for p, d in documents() if isinstance(d, dict) and d.get("kind") == kind]


def check_fields(where: str, obj: dict, schema: dict) -> None:
    missing = schema["required"] - set(obj)
    unknown = set(obj) - schema["fields"]
    assert not missing, f"{where}: missing required {sorted(missing)} (KubeRay v{KUBERAY_VERSION} CRD)"
    assert not unknown, f"{where}: fields the CRD does not have: {sorted(unknown)}"


def check_pod_template(where: str, template: dict) -> None:
    containers = template["spec"]["containers"]
    assert containers, f"{where}: no containers"
    for c in containers:
        assert c.get("name") and c.get("image"), f"{where}: a container needs a name and an image"
        for env in c.get("env", []):
            secretish = re.search(r"SECRET|TOKEN|PASSWORD|KEY", env["name"])
            assert not (secretish and "value" in env), f"{where}: {env['name']} must come from a Secret (valueFrom)"


def check_ray_cluster_spec(where: str, spec: dict) -> None:
    check_fields(f"{where} spec", spec, RAYCLUSTER_SPEC)
    assert spec["rayVersion"] == pins()["ray"]
    check_fields(f"{where} headGroupSpec", spec["headGroupSpec"], HEAD_GROUP)
    check_pod_template(f"{where} head", spec["headGroupSpec"]["template"])
    groups = spec.get("workerGroupSpecs", [])
    assert any("nvidia.com/gpu" in c["resources"]["limits"] for g in groups
               for c in g["template"]["spec"]["containers"]), f"{where}: no GPU worker group"
    for g in groups:
        check_fields(f"{where} workerGroupSpecs[{g.get('groupName')}]", g, WORKER_GROUP)
        assert g["minReplicas"] <= g.get("replicas", g["minReplicas"]) <= g["maxReplicas"]
        check_pod_template(f"{where} {g['groupName']}", g["template"])
    for template in [spec["headGroupSpec"]["template"]] + [g["template"] for g in groups]:
        for c in template["spec"]["containers"]:
            env = {e["name"]: e for e in c.get("env", [])}
            assert env.get("RAY_AUTH_MODE", {}).get("value") == "token", f"{where}: token authentication must be on"
            assert "secretKeyRef" in env["RAY_AUTH_TOKEN"]["valueFrom"]


def test_every_yaml_under_deploy_parses():
    docs = documents()
    assert len(docs) >= 7 and all(isinstance(d, dict) for _, d in docs)


def test_versions_agree_with_pyproject_everywhere():
    pin = pins()
    assert pin["ray"] in pin["ray_spec"], f"constraints pin ray {pin['ray']} outside pyproject's {pin['ray_spec']}"
    files = sorted(p for p in DEPLOY.rglob("*") if p.is_file() and p.suffix != ".md")
    seen = 0
    for path in files:
        text = path.read_text()
        for version in re.findall(r"rayproject/ray:(\d+\.\d+\.\d+)", text) + \
                re.findall(r"ray\[[\w,]+\]==(\d+\.\d+\.\d+)", text) + re.findall(r"RAY_VERSION=(\d+\.\d+\.\d+)", text) + \
                re.findall(r"rayVersion: \"(\d+\.\d+\.\d+)\"", text):
            assert version == pin["ray"], f"{path}: Ray {version}, pinned {pin['ray']}"
            seen += 1
        for dist_al, ray in re.findall(r"dist-al:(\d+\.\d+\.\d+)-ray(\d+\.\d+\.\d+)-(?:cpu|gpu)", text):
            assert (dist_al, ray) == (pin["dist_al"], pin["ray"]), f"{path}: image tag {dist_al}-ray{ray}"
            seen += 1
        assert not re.search(r"[\w-]+\.[\w.-]+/[\w./-]*dist-al:(?!\d+\.\d+\.\d+-ray\d+\.\d+\.\d+-(cpu|gpu))", text), f"{path}: odd image tag"
    assert seen >= 10


def test_dockerfile_builds_from_the_official_ray_image_in_both_variants():
    text = (DEPLOY / "docker" / "Dockerfile").read_text()
    assert re.search(r"^FROM rayproject/ray:\$\{RAY_VERSION\}-py311-\$\{VARIANT\}$", text, re.M)
    assert re.search(r"^ARG RAY_VERSION=" + re.escape(pins()["ray"]) + "$", text, re.M)
    assert re.search(r"^ARG VARIANT=(cpu|gpu)$", text, re.M) and '"$VARIANT" = "cpu"' in text
    assert 'pip install --no-cache-dir ".[jobs]"' in text  # dist-al itself, with job submission
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "3.11" in project.get("requires-python", ">=3.11") or project.get("requires-python", "").startswith(">=3.1")


def test_raycluster_has_what_its_crd_requires():
    [(where, doc)] = manifests("RayCluster")
    assert doc["apiVersion"] == "ray.io/v1" and doc["metadata"]["name"]
    check_ray_cluster_spec(where, doc["spec"])


def test_rayjob_runs_one_round_on_a_cluster_of_its_own():
    [(where, doc)] = manifests("RayJob")
    assert doc["apiVersion"] == "ray.io/v1"
    spec = doc["spec"]
    check_fields(f"{where} spec", spec, RAYJOB_SPEC)
    assert spec["entrypoint"].startswith("dist-al round --config /etc/dist-al/config.yaml")
    check_ray_cluster_spec(where, spec["rayClusterSpec"])
    check_pod_template(f"{where} submitter", spec["submitterPodTemplate"])


def test_scheduled_rounds_with_raycronjob_and_the_cronjob_fallback():
    [(where, doc)] = manifests("RayCronJob")
    assert doc["apiVersion"] == "ray.io/v1"
    check_fields(f"{where} spec", doc["spec"], RAYCRONJOB_SPEC)
    job = doc["spec"]["jobTemplate"]
    check_fields(f"{where} jobTemplate", job, RAYJOB_SPEC)
    assert job["entrypoint"].startswith("dist-al round") and job["clusterSelector"] == {"ray.io/cluster": "dist-al"}
    assert len(doc["spec"]["schedule"].split()) == 5
    [(where, cron)] = manifests("CronJob")
    assert cron["apiVersion"] == "batch/v1"
    check_fields(f"{where} spec", cron["spec"], CRONJOB_SPEC)
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]
    check_pod_template(where, pod)
    assert pod["spec"]["restartPolicy"] in ("Never", "OnFailure")
    command = " ".join(pod["spec"]["containers"][0]["command"])
    assert "dist-al submit --config configs/config.yaml --wait -- round" in command


def test_no_credentials_in_any_deploy_file():
    for path in DEPLOY.rglob("*"):
        if path.is_file():
            text = path.read_text()
            assert not re.search(r"AKIA[0-9A-Z]{16}", text), path
            assert not re.search(r"(?i)(aws_secret_access_key|auth_token)\s*[:=]\s*['\"]?[A-Za-z0-9/+]{16,}", text), path
    [(_, account)] = manifests("ServiceAccount")
    assert "eks.amazonaws.com/role-arn" in account["metadata"]["annotations"]
    [(_, config)] = manifests("ConfigMap")
    cfg = yaml.safe_load(config["data"]["config.yaml"])
    assert not cfg["pool"].get("storage_options")


def test_the_configmap_config_is_a_valid_dist_al_config():
    from dist_al.config import validate

    [(_, config)] = manifests("ConfigMap")
    cfg = validate(yaml.safe_load(config["data"]["config.yaml"]))
    assert cfg["cluster"]["gpus_per_worker"] == 1 and cfg["train"]["use_gpu"] is True


def test_cluster_launcher_config_has_a_head_and_gpu_workers_and_installs_dist_al():
    doc = yaml.safe_load((DEPLOY / "cluster" / "aws-gpu.yaml").read_text())
    assert doc["provider"]["type"] == "aws" and doc["provider"]["region"]
    types = doc["available_node_types"]
    assert doc["head_node_type"] in types
    workers = {k: v for k, v in types.items() if k != doc["head_node_type"]}
    assert any(v["node_config"]["InstanceType"].startswith(("g", "p")) for v in workers.values())
    for name, node in types.items():
        assert "node_config" in node and "resources" in node, name
    for node in workers.values():
        assert node["min_workers"] <= node["max_workers"] <= doc["max_workers"]
    setup = "\n".join(doc["setup_commands"])
    assert "/home/ray/dist-al[jobs]" in setup and doc["file_mounts"]["/home/ray/dist-al"] == "."
    starts = doc["head_start_ray_commands"] + doc["worker_start_ray_commands"]
    assert all("RAY_AUTH_MODE=token" in c for c in starts if "ray start" in c)


@pytest.mark.parametrize("name", ["docker/Dockerfile", "kuberay/raycluster.yaml", "kuberay/rayjob-round.yaml",
                                  "kuberay/raycronjob-rounds.yaml", "kuberay/cronjob-rounds.yaml",
                                  "kuberay/serviceaccount.yaml", "kuberay/configmap.yaml", "cluster/aws-gpu.yaml"])
def test_deploy_readme_walks_through_every_file(name):
    assert name in (DEPLOY / "README.md").read_text()
