"""deploy/: every file parses, names the Ray and dist-al versions we pin, and would run on KubeRay.

No Kubernetes here. Each KubeRay manifest is validated against the real CRD schemas of every KubeRay
release we support (tests/data/kuberay/, see its README), made strict: a field the CRD does not list
is an error here, where the API server drops it unless the client asks for strict field validation
(kubectl does by default; Helm, Argo CD or a client-go program may not). Then the operator's own spec
validation, which the API server does not run, is reproduced below, so a manifest that the API server
accepts but the operator refuses or ignores fails a test.
"""

from __future__ import annotations

import copy
import functools
import gzip
import hashlib
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import jsonschema
import pytest
import tomllib
import yaml
from jsonschema.exceptions import ValidationError
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
KUBERAY_DATA = ROOT / "tests" / "data" / "kuberay"
KUBERAY_VERSIONS = sorted(p.name for p in KUBERAY_DATA.iterdir() if p.is_dir())
RAY_KINDS = ("RayCluster", "RayJob", "RayCronJob")
TOKEN_SECRET = "dist-al-ray-token"  # the Secret raycluster.yaml's authOptions names, and the CronJob reads


# --- The CRD schemas, strict ------------------------------------------------------------------------------------------


def _unknown_fields(validator, known, instance, schema):
    if validator.is_type(instance, "object"):
        for name in sorted(set(instance) - set(known)):
            yield ValidationError(
                f"unknown field {name!r}: the CRD does not have it (the API server drops it "
                "unless the client asks for strict field validation)"
            )


def _unique_list(validator, list_type, instance, schema):
    """The API server refuses duplicates in a list it keeps as a map (by its keys, defaults filled in) or a set."""
    if list_type == "map" and validator.is_type(instance, "array"):
        keys, fields = schema["x-kubernetes-list-map-keys"], schema["items"]["properties"]
        ids = [
            tuple(item.get(k, fields[k].get("default")) for k in keys) for item in instance if isinstance(item, dict)
        ]
    elif list_type == "set" and validator.is_type(instance, "array"):
        ids = [json.dumps(item, sort_keys=True) for item in instance]
    else:
        return
    for dup in sorted({i for i in ids if ids.count(i) > 1}, key=str):
        yield ValidationError(f"duplicate entry {dup}: the API server keeps this list unique")


def _cel_rules(validator, rules, instance, schema):
    """The API server runs these CEL rules and this test does not: reproduce them here before using the field."""
    yield ValidationError(
        "the CRD checks this field with CEL rules this test does not run: " + "; ".join(r["rule"] for r in rules)
    )


CrdValidator = jsonschema.validators.extend(
    jsonschema.Draft4Validator,
    {
        "x-dist-al-known-fields": _unknown_fields,
        "x-kubernetes-list-type": _unique_list,
        "x-kubernetes-validations": _cel_rules,
    },
)


def strict(schema):
    """The API server prunes fields a structural schema does not list; for us a dropped field is a bug: refuse it."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if (
        out.get("type") == "object"
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["x-dist-al-known-fields"] = sorted(out.get("properties", {}))
    return out


@functools.cache
def crd_validator(version: str, kind: str) -> jsonschema.protocols.Validator:
    text = gzip.decompress((KUBERAY_DATA / version / f"ray.io_{kind.lower()}s.yaml.gz").read_bytes())
    crd = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    [v1] = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    assert crd["spec"]["names"]["kind"] == kind and v1["served"] and v1["storage"]
    return CrdValidator(strict(v1["schema"]["openAPIV3Schema"]))


def json_path(path) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")


def schema_problems(validator, obj: dict, at: str = "") -> list[str]:
    errors = sorted(validator.iter_errors(obj), key=lambda e: [str(p) for p in e.absolute_path])
    return [f"{json_path([at, *e.absolute_path] if at else e.absolute_path)}: {e.message}" for e in errors]


# --- KubeRay's spec validation, which the API server does not run -----------------------------------------------------
# From ray-operator/controllers/ray/utils/validation.go at v1.6.2 (598eb66a) and v1.7.0 (59d663ae): the rules that
# can touch our manifests, the same at both tags unless noted, in the operator's words. On a failure the operator
# records a warning event (InvalidRayClusterSpec, InvalidRayJobSpec, InvalidRayCronJobSpec) and does nothing else.
# Not reproduced (fields we do not set): GCS fault tolerance, autoscaler v2 options, worker-group suspend,
# idleTimeoutSeconds and priority, deletionStrategy (its CEL rules make the schema check fail first),
# upgradeStrategy, label syntax, v1.7's networkPolicy / tlsOptions / historyServerOptions.

MAX_NAME = {"RayCluster": 53, "RayJob": 47}  # MaxRayClusterNameLength, MaxRayJobNameLength (utils/constant.go)
# RayCronJob: v1.6 names each RayJob "<name>-<5 random>", which must pass ValidateRayJobMetadata; v1.7 checks
# MaxRayCronJobNameLength (36) in ValidateRayCronJobSpec.
MAX_RAYCRONJOB_NAME = {"v1.6.2": 47 - 6, "v1.7.0": 36}
CRON_RANGES = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 6)]
CRON_NAMES = {3: "jan feb mar apr may jun jul aug sep oct nov dec".split(), 4: "sun mon tue wed thu fri sat".split()}


def parse_version(text: str) -> tuple[int, ...] | None:
    m = re.fullmatch(r"v?(\d+)\.(\d+)(?:\.(\d+))?", text)
    return tuple(int(g or 0) for g in m.groups()) if m else None


def cron_schedule_parses(schedule: str) -> bool:
    """robfig/cron's ParseStandard: five fields, or a descriptor; an optional TZ= prefix."""
    schedule = re.sub(r"^(CRON_)?TZ=\S+\s+", "", schedule)
    if schedule.startswith("@"):
        return (
            schedule in ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
            or re.fullmatch(r"@every (\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+", schedule) is not None
        )
    fields = schedule.split()
    if len(fields) != 5:
        return False
    for i, (field, (lo, hi)) in enumerate(zip(fields, CRON_RANGES)):
        for part in field.split(","):
            m = re.fullmatch(r"(?:\*|\?|(\w+)(?:-(\w+))?)(?:/(\d+))?", part.lower())
            if not m or m[3] == "0":
                return False
            for value in filter(None, (m[1], m[2])):
                names = CRON_NAMES.get(i, [])
                number = names.index(value) + (i == 3) if value in names else int(value) if value.isdigit() else -1
                if not lo <= number <= hi:
                    return False
    return True


def validate_ray_cluster_metadata(kind: str, name: str) -> list[str]:
    """ValidateRayClusterMetadata / ValidateRayJobMetadata."""
    out = [f"{kind} name should be no more than {MAX_NAME[kind]} characters"] if len(name) > MAX_NAME[kind] else []
    if not re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name):
        out.append(f"{kind} name should be a valid DNS1035 label: {name!r}")
    return out


def validate_ray_cluster_spec(spec: dict) -> list[str]:
    """ValidateRayClusterSpec."""
    out = []
    groups = [("Head", spec["headGroupSpec"])] + [(g["groupName"], g) for g in spec.get("workerGroupSpecs", [])]
    for name, group in groups:
        if not group["template"]["spec"].get("containers"):
            out.append(f"{name} group should have at least one container")
        params = group.get("rayStartParams", {})
        if any(params.get(k) for k in ("num-cpus", "num-gpus", "memory", "resources")) and group.get("resources"):
            out.append(
                f"resource fields should not be set in both rayStartParams and Resources for {name} group; "
                "please use only one"
            )
        if "labels" in params:
            out.append(
                f"rayStartParams['labels'] is not supported for {name} group; "
                "please use the top-level Labels field instead"
            )
    autoscaling = spec.get("enableInTreeAutoscaling", False)
    for g in spec.get("workerGroupSpecs", []):
        low, high = g.get("minReplicas"), g.get("maxReplicas")
        if not autoscaling and (low is None or high is None):
            out.append(
                f"worker group {g['groupName']} must set both minReplicas and maxReplicas when autoscaling is disabled"
            )
        if low is not None and high is not None and low > high:
            out.append(f"worker group {g['groupName']} has minReplicas {low} greater than maxReplicas {high}")
    auth = spec.get("authOptions", {})
    k8s_auth = auth.get("enableK8sTokenAuth", False)
    if auth.get("mode") == "token":
        version = parse_version(spec.get("rayVersion", ""))
        if version is None:
            out.append(
                "authOptions.mode is 'token' but RayVersion was not specified or its format is invalid: "
                f"{spec.get('rayVersion')!r}. Ray version 2.52.0 or later is required"
            )
        elif version < (2, 52, 0):
            out.append(f"authOptions.mode is 'token' but minimum Ray version is 2.52.0, got {spec['rayVersion']}")
        elif k8s_auth and version < (2, 55, 0):
            out.append("authOptions.enableK8sTokenAuth is enabled but minimum Ray version is 2.55.0")
        if k8s_auth and auth.get("secretName"):
            out.append("authOptions.enableK8sTokenAuth is enabled and authOptions.secretName is also set")
    elif k8s_auth:
        out.append("authOptions.enableK8sTokenAuth is enabled but authOptions.mode not set to 'token'")
    return out


def validate_ray_job_spec(spec: dict) -> list[str]:
    """ValidateRayJobSpec (with validateDeletionConfiguration's TTL rule)."""
    out = []
    shutdown, suspend = spec.get("shutdownAfterJobFinishes", False), spec.get("suspend", False)
    ttl, backoff = spec.get("ttlSecondsAfterFinished", 0), spec.get("backoffLimit")
    selector, mode = spec.get("clusterSelector", {}), spec.get("submissionMode", "K8sJobMode")
    if suspend and not shutdown:
        out.append("a RayJob with shutdownAfterJobFinishes set to false is not allowed to be suspended")
    if ttl < 0:
        out.append("TTLSecondsAfterFinished must be a non-negative integer")
    if not shutdown and ttl > 0:
        out.append("a RayJob with shutdownAfterJobFinishes set to false cannot have TTLSecondsAfterFinished")
    if selector and suspend:
        out.append("the ClusterSelector mode doesn't support the suspend operation")
    if "rayClusterSpec" not in spec and not selector:
        out.append("one of RayClusterSpec or ClusterSelector must be set")
    if selector:
        if not selector.get("ray.io/cluster"):
            out.append("cluster name in ClusterSelector should not be empty")
        if mode == "SidecarMode":
            out.append("ClusterSelector is not supported in SidecarMode")
        if backoff is not None and backoff > 0:
            out.append("BackoffLimit is incompatible with ClusterSelector mode")
    if mode == "InteractiveMode" and backoff is not None and backoff > 0:
        out.append("BackoffLimit is incompatible with InteractiveMode")
    if mode == "SidecarMode":
        out += [
            "Currently, SidecarMode doesn't support " + f
            for f in ("SubmitterPodTemplate", "SubmitterConfig")
            if f[0].lower() + f[1:] in spec
        ]
        if (
            spec.get("rayClusterSpec", {})
            .get("headGroupSpec", {})
            .get("template", {})
            .get("spec", {})
            .get("restartPolicy", "Never")
            != "Never"
        ):
            out.append("restartPolicy for head Pod should be Never or unset when using SidecarMode")
    if "rayClusterSpec" in spec:
        if spec["rayClusterSpec"].get("authOptions", {}).get("enableK8sTokenAuth"):
            out.append("K8s token auth mode is currently not supported for RayJob")
        out += validate_ray_cluster_spec(spec["rayClusterSpec"])
    try:
        runtime_env = yaml.safe_load(spec.get("runtimeEnvYAML", ""))
        assert runtime_env is None or isinstance(runtime_env, dict)
    except (yaml.YAMLError, AssertionError):
        out.append("failed to unmarshal RuntimeEnvYAML")
    for field in ("activeDeadlineSeconds", "preRunningDeadlineSeconds"):
        if spec.get(field, 1) <= 0:
            out.append(f"{field} must be a positive integer")
    if backoff is not None and backoff < 0:
        out.append("backoffLimit must be a positive integer")
    return out


def validate_ray_cron_job(name: str, spec: dict, version: str) -> list[str]:
    """ValidateRayCronJobSpec, and the name its RayJobs get."""
    out = []
    if len(name) > MAX_RAYCRONJOB_NAME[version]:
        out.append(f"RayCronJob name should be no more than {MAX_RAYCRONJOB_NAME[version]} characters")
    if parse_version(version) >= (1, 7, 0) and "TZ" in spec["schedule"]:
        out.append("cannot use TZ or CRON_TZ in schedule, use timeZone field instead")
    if not cron_schedule_parses(spec["schedule"]):
        out.append(f"invalid cron schedule: {spec['schedule']!r}")
    return out + [f"invalid RayJob template: {p}" for p in validate_ray_job_spec(spec["jobTemplate"])]


# --- What the operator takes but ignores, or does not do the way we need ----------------------------------------------


def ray_cluster_specs(doc: dict) -> Iterator[tuple[str, dict]]:
    if doc["kind"] == "RayCluster":
        yield "spec", doc["spec"]
    for at, job in ray_job_specs(doc):
        if "rayClusterSpec" in job:
            yield f"{at}.rayClusterSpec", job["rayClusterSpec"]


def ray_job_specs(doc: dict) -> Iterator[tuple[str, dict]]:
    if doc["kind"] == "RayJob":
        yield "spec", doc["spec"]
    elif doc["kind"] == "RayCronJob":
        yield "spec.jobTemplate", doc["spec"]["jobTemplate"]


def pod_templates(doc: dict) -> Iterator[tuple[str, dict]]:
    """Every pod template of a manifest, with its path."""
    for at, cluster in ray_cluster_specs(doc):
        yield f"{at}.headGroupSpec.template", cluster["headGroupSpec"]["template"]
        for i, group in enumerate(cluster.get("workerGroupSpecs", [])):
            yield f"{at}.workerGroupSpecs[{i}].template", group["template"]
    for at, job in ray_job_specs(doc):
        if "submitterPodTemplate" in job:
            yield f"{at}.submitterPodTemplate", job["submitterPodTemplate"]
    if doc["kind"] == "CronJob":
        yield "spec.jobTemplate.spec.template", doc["spec"]["jobTemplate"]["spec"]["template"]


def operator_ignores(doc: dict) -> list[str]:
    out = []
    for at, cluster in ray_cluster_specs(doc):
        # utils.GetRayDashboardClientFunc reads the token from the Secret only when authOptions.mode is token.
        auth = cluster.get("authOptions", {})
        if auth.get("mode") != "token":
            out.append(
                f"{at}: token authentication is off for the operator: set authOptions.mode: token (the "
                "operator sends the dashboard token it needs to submit and poll RayJobs only then; a "
                "RAY_AUTH_MODE env var does not tell it)"
            )
        elif auth.get("secretName") != TOKEN_SECRET:
            out.append(
                f"{at}: authOptions.secretName must be {TOKEN_SECRET!r}, the Secret the CronJob and "
                f"`dist-al submit` users read (without it the operator makes a Secret of its own)"
            )
    if doc["kind"] != "CronJob":
        for at, template in pod_templates(doc):
            for c in template["spec"]["containers"]:
                for env in c.get("env", []):
                    if env["name"] in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN"):
                        out.append(
                            f"{at} {c['name']}: {env['name']} set by hand: authOptions has the operator "
                            "set it (common.SetContainerTokenAuthEnvVars), and one set by hand overrides it"
                        )
    for at, job in ray_job_specs(doc):
        if job.get("clusterSelector"):
            # rayjob_controller.go: a finished RayJob with a clusterSelector returns before any deletion.
            out += [
                f"{at}.{field} is ignored with clusterSelector: the operator deletes nothing of a RayJob that "
                "runs on a selected cluster"
                for field in ("shutdownAfterJobFinishes", "ttlSecondsAfterFinished", "deletionStrategy")
                if field in job
            ]
    return out


def kuberay_problems(doc: dict, version: str) -> list[str]:
    """Why KubeRay `version` would refuse `doc`, or drop or ignore part of it; empty when it takes it whole."""
    kind, name = doc["kind"], doc["metadata"]["name"]
    problems = schema_problems(crd_validator(version, kind), {k: v for k, v in doc.items() if k != "metadata"})
    if problems:  # the API server refuses the object (or prunes fields): the operator's rules do not apply
        return problems
    if kind == "RayCronJob":
        problems += validate_ray_cron_job(name, doc["spec"], version)
    else:
        problems += validate_ray_cluster_metadata(kind, name)
        problems += validate_ray_job_spec(doc["spec"]) if kind == "RayJob" else validate_ray_cluster_spec(doc["spec"])
    return [f"the operator refuses it: {p}" for p in problems] + operator_ignores(doc)


# --- Kubernetes' own kinds: the fields each may have (k8s.io/api core/v1, batch/v1) -----------------------------------

KUBERNETES_KINDS = {
    ("v1", "ConfigMap"): {"apiVersion", "kind", "metadata", "data", "binaryData", "immutable"},
    ("v1", "ServiceAccount"): {
        "apiVersion",
        "kind",
        "metadata",
        "secrets",
        "imagePullSecrets",
        "automountServiceAccountToken",
    },
    ("batch/v1", "CronJob"): {"apiVersion", "kind", "metadata", "spec"},
}
CRONJOB_SPEC = {
    "concurrencyPolicy",
    "failedJobsHistoryLimit",
    "jobTemplate",
    "schedule",
    "startingDeadlineSeconds",
    "successfulJobsHistoryLimit",
    "suspend",
    "timeZone",
}
JOB_SPEC = {
    "activeDeadlineSeconds",
    "backoffLimit",
    "backoffLimitPerIndex",
    "completionMode",
    "completions",
    "managedBy",
    "manualSelector",
    "maxFailedIndexes",
    "parallelism",
    "podFailurePolicy",
    "podReplacementPolicy",
    "selector",
    "successPolicy",
    "suspend",
    "template",
    "ttlSecondsAfterFinished",
}


def kubernetes_problems(doc: dict, version: str) -> list[str]:
    out = [f"unknown field {f!r}" for f in sorted(set(doc) - KUBERNETES_KINDS[doc["apiVersion"], doc["kind"]])]
    name = doc["metadata"]["name"]
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*", name):
        out.append(f"metadata.name {name!r} is not a DNS-1123 subdomain")
    if doc["kind"] == "CronJob":
        spec = doc["spec"]
        out += [f"spec: unknown field {f!r}" for f in sorted(set(spec) - CRONJOB_SPEC)]
        missing = [f"spec: missing {f!r}" for f in ("schedule", "jobTemplate") if f not in spec]
        if missing:
            return out + missing
        job = spec["jobTemplate"]["spec"]
        out += [f"spec.jobTemplate.spec: unknown field {f!r}" for f in sorted(set(job) - JOB_SPEC)]
        if len(name) > 52:
            out.append("a CronJob name must be no more than 52 characters")
        if job["template"]["spec"].get("restartPolicy") not in ("Never", "OnFailure"):
            out.append("a Job's pod needs restartPolicy Never or OnFailure")
        # The pod template has corev1.PodTemplateSpec's schema, which the RayJob CRD holds as submitterPodTemplate.
        rayjob = crd_validator(version, "RayJob")
        pod_schema = rayjob.schema["properties"]["spec"]["properties"]["submitterPodTemplate"]
        out += schema_problems(rayjob.evolve(schema=pod_schema), job["template"], "spec.jobTemplate.spec.template")
    return out


# --- The manifests ----------------------------------------------------------------------------------------------------


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


def kuberay_manifests() -> list[tuple[str, dict]]:
    return [(p, d) for p, d in documents() if p.startswith("deploy/kuberay/")]


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
        for version in (
            re.findall(r"rayproject/ray:(\d+\.\d+\.\d+)", text)
            + re.findall(r"ray\[[\w,]+\]==(\d+\.\d+\.\d+)", text)
            + re.findall(r"RAY_VERSION=(\d+\.\d+\.\d+)", text)
            + re.findall(r"rayVersion: \"(\d+\.\d+\.\d+)\"", text)
        ):
            assert version == pin["ray"], f"{path}: Ray {version}, pinned {pin['ray']}"
            seen += 1
        for dist_al, ray in re.findall(r"dist-al:(\d+\.\d+\.\d+)-ray(\d+\.\d+\.\d+)-(?:cpu|gpu)", text):
            assert (dist_al, ray) == (pin["dist_al"], pin["ray"]), f"{path}: image tag {dist_al}-ray{ray}"
            seen += 1
        assert not re.search(r"[\w-]+\.[\w.-]+/[\w./-]*dist-al:(?!\d+\.\d+\.\d+-ray\d+\.\d+\.\d+-(cpu|gpu))", text), (
            f"{path}: odd image tag"
        )
    assert seen >= 10


def test_dockerfile_builds_from_the_official_ray_image_in_both_variants():
    text = (DEPLOY / "docker" / "Dockerfile").read_text()
    assert re.search(r"^FROM rayproject/ray:\$\{RAY_VERSION\}-py311-\$\{VARIANT\}$", text, re.M)
    assert re.search(r"^ARG RAY_VERSION=" + re.escape(pins()["ray"]) + "$", text, re.M)
    assert re.search(r"^ARG VARIANT=(cpu|gpu)$", text, re.M) and '"$VARIANT" = "cpu"' in text
    assert 'pip install --no-cache-dir ".[jobs]"' in text  # dist-al itself, with job submission
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "3.11" in project.get("requires-python", ">=3.11") or project.get("requires-python", "").startswith(">=3.1")


def test_vendored_crds_are_the_release_files_their_readme_names():
    readme = (KUBERAY_DATA / "README.md").read_text()
    listed = dict(re.findall(r"^\| `(v[\d.]+/ray\.io_\w+\.yaml\.gz)` \| `([0-9a-f]{40})` \|", readme, re.M))
    files = sorted(str(p.relative_to(KUBERAY_DATA)) for p in KUBERAY_DATA.glob("*/*.yaml.gz"))
    assert sorted(listed) == files
    assert set(files) == {f"{v}/ray.io_{k.lower()}s.yaml.gz" for v in KUBERAY_VERSIONS for k in RAY_KINDS}
    for name, blob in listed.items():
        data = gzip.decompress((KUBERAY_DATA / name).read_bytes())
        assert hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest() == blob, f"{name} is not KubeRay's file"


@pytest.mark.slow  # validating against the full CRD schemas, ~2 s each
@pytest.mark.parametrize("version", KUBERAY_VERSIONS)
def test_kuberay_manifests_fit_the_crds_and_the_operator_takes_them(version):
    checked = set()
    for where, doc in kuberay_manifests():
        if doc["kind"] in RAY_KINDS:
            assert doc["apiVersion"] == "ray.io/v1", where
            problems = kuberay_problems(doc, version)
        else:
            assert (doc["apiVersion"], doc["kind"]) in KUBERNETES_KINDS, f"{where}: a kind this test does not check"
            problems = kubernetes_problems(doc, version)
        assert not problems, f"{where} {doc['kind']} (KubeRay {version}):\n" + "\n".join(problems)
        checked.add(doc["kind"])
    assert checked == {*RAY_KINDS, "CronJob", "ServiceAccount", "ConfigMap"}


def test_ray_clusters_are_a_cpu_head_and_gpu_workers_on_our_ray():
    specs = [s for _, d in manifests("RayCluster") + manifests("RayJob") for s in ray_cluster_specs(d)]
    assert len(specs) == 2
    for at, spec in specs:
        assert spec["rayVersion"] == pins()["ray"], at
        assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0", f"{at}: work must stay off the head"
        groups = spec["workerGroupSpecs"]
        assert any(
            "nvidia.com/gpu" in c["resources"]["limits"] for g in groups for c in g["template"]["spec"]["containers"]
        ), f"{at}: no GPU worker group"
        for g in groups:
            assert g["minReplicas"] <= g.get("replicas", g["minReplicas"]) <= g["maxReplicas"], at


def test_every_container_names_its_image():
    for where, doc in kuberay_manifests():
        for at, template in pod_templates(doc):
            for c in template["spec"]["containers"]:
                assert c.get("image"), f"{where} {at} {c['name']}: a pod without an image never starts"


def test_rayjob_runs_one_round_on_a_cluster_of_its_own():
    [(_, doc)] = manifests("RayJob")
    spec = doc["spec"]
    assert spec["entrypoint"].startswith("dist-al round --config /etc/dist-al/config.yaml")
    assert spec["shutdownAfterJobFinishes"] is True and "clusterSelector" not in spec  # the cluster goes with it


def test_scheduled_rounds_run_on_the_long_lived_cluster_with_its_token():
    [(_, cluster)] = manifests("RayCluster")
    name = cluster["metadata"]["name"]
    [(_, doc)] = manifests("RayCronJob")
    job = doc["spec"]["jobTemplate"]
    assert job["entrypoint"].startswith("dist-al round") and job["clusterSelector"] == {"ray.io/cluster": name}
    assert len(doc["spec"]["schedule"].split()) == 5
    [(_, cron)] = manifests("CronJob")
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]
    [container] = pod["spec"]["containers"]
    assert "dist-al submit --config configs/config.yaml --wait -- round" in " ".join(container["command"])
    env = {e["name"]: e for e in container["env"]}
    # utils.GenerateHeadServiceName: "<cluster>-head-svc"; the token is the one authOptions gives the cluster
    assert env["RAY_ADDRESS"]["value"] == f"http://{name}-head-svc:8265"
    assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": cluster["spec"]["authOptions"]["secretName"],
        "key": "auth_token",
    }


def test_no_credentials_in_any_deploy_file():
    for path in DEPLOY.rglob("*"):
        if path.is_file():
            text = path.read_text()
            assert not re.search(r"AKIA[0-9A-Z]{16}", text), path
            assert not re.search(r"(?i)(aws_secret_access_key|auth_token)\s*[:=]\s*['\"]?[A-Za-z0-9/+]{16,}", text), (
                path
            )
    for where, doc in kuberay_manifests():
        for at, template in pod_templates(doc):
            for c in template["spec"]["containers"]:
                for env in c.get("env", []):
                    secretish = re.search(r"SECRET|TOKEN|PASSWORD|KEY", env["name"])
                    assert not (secretish and "value" in env), f"{where} {at}: {env['name']} must come from a Secret"
    [(_, account)] = manifests("ServiceAccount")
    assert "eks.amazonaws.com/role-arn" in account["metadata"]["annotations"]
    [(_, config)] = manifests("ConfigMap")
    cfg = yaml.safe_load(config["data"]["config.yaml"])
    assert not cfg["pool"].get("storage_options")


def test_the_configmap_config_is_a_valid_dist_al_config():
    from dist_al.config import validate

    [(_, config)] = manifests("ConfigMap")
    cfg = validate(yaml.safe_load(config["data"]["config.yaml"]))
    assert cfg.cluster.gpus_per_worker == 1 and cfg.train.use_gpu is True


def test_the_round_driver_gets_the_label_studio_key_from_a_secret_and_the_labeling_section_is_valid():
    """The Ray head, where `dist-al round` runs, reads LABEL_STUDIO_API_KEY from an optional Secret (clusters
    without Label Studio still start), and the configmap's commented labeling section, uncommented, checks."""
    from dist_al.config import validate

    heads = [
        (where, template)
        for kind in ("RayCluster", "RayJob")
        for where, doc in manifests(kind)
        for at, template in pod_templates(doc)
        if at.endswith("headGroupSpec.template")
    ]
    assert len(heads) == 2
    for where, template in heads:
        [container] = template["spec"]["containers"]
        assert {"secretRef": {"name": "dist-al-label-studio", "optional": True}} in container["envFrom"], where
    [(_, config)] = manifests("ConfigMap")
    text = config["data"]["config.yaml"]
    uncommented = re.sub(r"(?m)^# (labeling:|  \w)", r"\1", text)
    assert uncommented != text
    cfg = validate(yaml.safe_load(uncommented))
    assert cfg.labeling.backend == "label-studio" and cfg.labeling.image == "image_uri"


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


@pytest.mark.parametrize(
    "name",
    [
        "docker/Dockerfile",
        "kuberay/raycluster.yaml",
        "kuberay/rayjob-round.yaml",
        "kuberay/raycronjob-rounds.yaml",
        "kuberay/cronjob-rounds.yaml",
        "kuberay/serviceaccount.yaml",
        "kuberay/configmap.yaml",
        "cluster/aws-gpu.yaml",
        *KUBERAY_VERSIONS,
    ],
)
def test_deploy_readme_walks_through_every_file_and_names_the_kuberay_versions_checked(name):
    assert name in (DEPLOY / "README.md").read_text()


# --- The checks catch what a real operator would refuse or ignore -----------------------------------------------------


def _token_only_in_env(doc: dict) -> None:
    """The manifests before authOptions: token mode switched on through each container's env only."""
    for _, cluster in ray_cluster_specs(doc):
        del cluster["authOptions"]
    for _, template in pod_templates(doc):
        for c in template["spec"]["containers"]:
            c.setdefault("env", []).extend(
                [
                    {"name": "RAY_AUTH_MODE", "value": "token"},
                    {
                        "name": "RAY_AUTH_TOKEN",
                        "valueFrom": {"secretKeyRef": {"name": TOKEN_SECRET, "key": "auth_token"}},
                    },
                ]
            )


def _worker(doc: dict) -> dict:
    return doc["spec"]["workerGroupSpecs"][0]


MUTATIONS: dict[str, tuple[str, Callable[[dict], object], str]] = {
    "ttl-without-shutdown": (
        "raycronjob-rounds.yaml",
        lambda d: d["spec"]["jobTemplate"].update(ttlSecondsAfterFinished=3600),
        "invalid RayJob template: a RayJob with shutdownAfterJobFinishes set to false "
        "cannot have TTLSecondsAfterFinished",
    ),
    "rayjob-ttl-without-shutdown": (
        "rayjob-round.yaml",
        lambda d: d["spec"].pop("shutdownAfterJobFinishes"),
        "shutdownAfterJobFinishes set to false cannot have TTLSecondsAfterFinished",
    ),
    "raycluster-token-only-in-env": (
        "raycluster.yaml",
        _token_only_in_env,
        "spec: token authentication is off for the operator: set authOptions.mode: token",
    ),
    "rayjob-token-only-in-env": (
        "rayjob-round.yaml",
        _token_only_in_env,
        "spec.rayClusterSpec: token authentication is off for the operator",
    ),
    "token-env-by-hand": (
        "raycronjob-rounds.yaml",
        lambda d: d["spec"]["jobTemplate"]["submitterPodTemplate"]["spec"]["containers"][0].update(
            env=[{"name": "RAY_AUTH_TOKEN", "value": "x"}]
        ),
        "RAY_AUTH_TOKEN set by hand",
    ),
    "other-token-secret": (
        "raycluster.yaml",
        lambda d: d["spec"]["authOptions"].pop("secretName"),
        "authOptions.secretName must be 'dist-al-ray-token'",
    ),
    "misspelt-groupName": (
        "raycluster.yaml",
        lambda d: _worker(d).update(groupNmae=_worker(d).pop("groupName")),
        "spec.workerGroupSpecs[0]: unknown field 'groupNmae'",
    ),
    "misspelt-deep-in-a-pod": (
        "rayjob-round.yaml",
        lambda d: (c := d["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]).update(
            volumeMount=c.pop("volumeMounts")
        ),
        "headGroupSpec.template.spec.containers[0]: unknown field 'volumeMount'",
    ),
    "wrong-type": (
        "raycluster.yaml",
        lambda d: _worker(d).update(maxReplicas="8"),
        "spec.workerGroupSpecs[0].maxReplicas: '8' is not of type 'integer'",
    ),
    "bad-quantity": (
        "raycluster.yaml",
        lambda d: _worker(d)["template"]["spec"]["containers"][0]["resources"]["limits"].update(memory="32 GB"),
        "resources.limits.memory: '32 GB' does not match",
    ),
    "duplicate-port": (
        "raycluster.yaml",
        lambda d: (p := d["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["ports"]).append(dict(p[0])),
        "duplicate entry (6379, 'TCP')",
    ),
    "field-with-cel-rules": (
        "rayjob-round.yaml",
        lambda d: d["spec"].update(managedBy="someone-else"),
        "spec.managedBy: the CRD checks this field with CEL rules",
    ),
    "min-above-max": (
        "raycluster.yaml",
        lambda d: _worker(d).update(minReplicas=9),
        "worker group gpu has minReplicas 9 greater than maxReplicas 8",
    ),
    "selector-with-retries": (
        "raycronjob-rounds.yaml",
        lambda d: d["spec"]["jobTemplate"].update(backoffLimit=2),
        "BackoffLimit is incompatible with ClusterSelector mode",
    ),
    "selector-with-shutdown": (
        "raycronjob-rounds.yaml",
        lambda d: d["spec"]["jobTemplate"].update(shutdownAfterJobFinishes=True),
        "shutdownAfterJobFinishes is ignored with clusterSelector",
    ),
    "bad-schedule": (
        "raycronjob-rounds.yaml",
        lambda d: d["spec"].update(schedule="*/10 * * *"),
        "invalid cron schedule: '*/10 * * *'",
    ),
    "old-ray-with-token": (
        "raycluster.yaml",
        lambda d: d["spec"].update(rayVersion="2.50.0"),
        "authOptions.mode is 'token' but minimum Ray version is 2.52.0, got 2.50.0",
    ),
    "no-cluster": (
        "rayjob-round.yaml",
        lambda d: d["spec"].pop("rayClusterSpec"),
        "one of RayClusterSpec or ClusterSelector must be set",
    ),
    "name-too-long": (
        "raycronjob-rounds.yaml",
        lambda d: d["metadata"].update(name="dist-al-rounds-" + "x" * 30),
        "RayCronJob name should be no more than",
    ),
}


@pytest.mark.parametrize("version", KUBERAY_VERSIONS)
@pytest.mark.parametrize("mutation", list(MUTATIONS))
def test_a_manifest_kuberay_would_refuse_or_ignore_fails_with_the_reason(mutation, version):
    file, mutate, expected = MUTATIONS[mutation]
    [doc] = [d for p, d in kuberay_manifests() if p == f"deploy/kuberay/{file}"]
    assert not kuberay_problems(doc, version)
    mutated = copy.deepcopy(doc)
    mutate(mutated)
    problems = kuberay_problems(mutated, version)
    assert any(expected in p for p in problems), problems


def test_the_cronjob_pod_is_checked_against_the_pod_template_schema():
    [(_, cron)] = manifests("CronJob")
    mutated = copy.deepcopy(cron)
    mutated["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["comand"] = ["sh"]
    mutated["spec"]["jobTemplate"]["spec"]["backofLimit"] = 1
    problems = kubernetes_problems(mutated, KUBERAY_VERSIONS[-1])
    assert "spec.jobTemplate.spec: unknown field 'backofLimit'" in problems
    assert any("spec.jobTemplate.spec.template.spec.containers[0]: unknown field 'comand'" in p for p in problems)
