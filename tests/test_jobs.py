"""`dist-al submit` / `jobs` / `logs` against a real head node started with `ray start --head`.

Everything a user does on a cluster: submit select and round jobs from a project
directory that holds the config and the user's own model module, wait for them,
read their logs, list them. Token authentication is on, as in current Ray.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import urllib.request

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from rayhead import ray_head, without_ray_env
from test_bad_input import assert_one_line_error

from dist_al.data.synthetic import gaussian_mixture
from dist_al.data.writer import write_pool

SECRET = "AKIA-NOT-A-REAL-SECRET-7f3a9c"  # must never reach the cluster's job records
MODEL_MODULE = '''"""A user's own model, importable only from the submitted working directory."""
from torch import nn


def build(in_dim, n_classes, hidden=16):
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.Tanh(), nn.Linear(hidden, n_classes))
'''


@pytest.fixture(scope="module")
def head():
    with ray_head(num_cpus=4, num_gpus=2) as h:
        yield h


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A user's project: config + model module in the working dir, pool and workdir on shared storage."""
    root = tmp_path_factory.mktemp("project")
    data = tmp_path_factory.mktemp("storage")
    feats, labels = gaussian_mixture(400, 3, 6, seed=2)
    ids = np.arange(100, 500)
    write_pool(str(data / "pool"), ids, feats.numpy(), labels.numpy(), rows_per_file=200, rows_per_group=100)
    test_x, test_y = gaussian_mixture(150, 3, 6, seed=3)
    write_pool(str(data / "eval"), np.arange(150), test_x.numpy(), test_y.numpy())
    (root / "my_nets.py").write_text(MODEL_MODULE)
    config = {
        "pool": {"uri": str(data / "pool"), "label_column": "label"},
        "model": {"factory": "my_nets:build", "kwargs": {"in_dim": 6, "n_classes": 3, "hidden": 12}},
        "selection": {"strategy": "badge", "budget": 15, "seed": 0},
        "train": {"epochs": 5, "workers": 2, "lr": 0.01, "backend": "ray"},
        "eval": {"uri": str(data / "eval")},
        "cluster": {"workers": 2, "gpus_per_worker": 1, "cpus_per_worker": 1},
        "workdir": str(data / "work"),
    }
    (root / "configs").mkdir()
    (root / "configs" / "al.yaml").write_text(yaml.safe_dump(config))
    bad = {**config, "selection": {"strategy": "badge", "budget": 15, "seeed": 1}}
    (root / "configs" / "bad.yaml").write_text(yaml.safe_dump(bad))
    return root, data, dict(zip(ids.tolist(), labels.tolist()))


def dist_al(head, project, *args, env=None, timeout=400):
    root = project[0]
    return subprocess.run(
        [sys.executable, "-m", "dist_al.cli", *args],
        cwd=root,
        capture_output=True,
        text=True,
        env=env or head.client_env(AWS_SECRET_ACCESS_KEY=SECRET),
        timeout=timeout,
    )


def submit(head, project, *command, config="configs/al.yaml", extra=()):
    return dist_al(
        head, project, "submit", "--address", head.dashboard, "--config", config, *extra, "--wait", "--", *command
    )


def job_record(head, sid) -> str:
    req = urllib.request.Request(f"{head.dashboard}/api/jobs/{sid}", headers={"Authorization": f"Bearer {head.token}"})
    return urllib.request.urlopen(req, timeout=10).read().decode()


@pytest.mark.cluster
@pytest.mark.subprocess
def test_select_job_runs_on_the_cluster_with_the_users_model(head, project):
    out = submit(head, project, "select", "--log-level", "INFO")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    sid = out.stdout.splitlines()[0]
    assert re.fullmatch(r"dist-al-select-\d{8}-\d{6}-[0-9a-f]{6}", sid)
    assert f"job {sid} succeeded" in out.stderr
    # the job's driver joined this cluster (RAY_ADDRESS), not a private local Ray
    assert re.search(rf"Ray at [\d.]+:{head.gcs_port}: 1 node\(s\), 4 CPUs, 2 GPUs", out.stdout), out.stdout[-3000:]
    # each ShardWorker holds its own GPU
    gpus = sorted(re.findall(r"shard \d \(\d+ rows\): node \w+, pid \d+, cpu, GPUs (\d)", out.stdout))
    assert gpus == ["0", "1"], out.stdout[-3000:]
    selections = list((project[1] / "work" / "selections").glob("*.parquet"))
    assert len(selections) == 1 and pq.read_table(selections[0]).num_rows == 15
    # nothing secret in what the cluster keeps about the job, and the user's model really ran there
    record = json.loads(job_record(head, sid))
    assert SECRET not in json.dumps(record) and head.token not in json.dumps(record)
    assert record["metadata"] == {"dist_al_command": "select", "dist_al_config": "configs/al.yaml"}
    assert record["entrypoint"] == "python -m dist_al.cli select --config configs/al.yaml --log-level INFO"


@pytest.mark.cluster
@pytest.mark.subprocess
def test_round_jobs_select_ingest_and_train_with_ray_train(head, project):
    root, data, truth = project
    out = submit(head, project, "round")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "round 1: waiting for labels, 0/15 received" in out.stdout
    chosen = pq.read_table(data / "work" / "rounds" / "0001" / "selection.parquet").column("id").to_pylist()
    with open(root / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows([("id", "label"), *((i, truth[i]) for i in chosen)])
    out = submit(head, project, "ingest", "labels.csv")  # a path inside the uploaded working dir
    assert out.returncode == 0 and "15 labels accepted" in out.stdout, out.stdout[-3000:] + out.stderr[-3000:]
    out = submit(head, project, "round")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "round 1: trained on 15 labeled rows, eval accuracy" in out.stdout
    state = json.loads((data / "work" / "rounds" / "0001" / "state.json").read_text())
    metrics = json.loads((data / "work" / "rounds" / "0001" / "metrics.json").read_text())
    assert state["state"] == "TRAINED" and metrics["workers"] == 2
    assert (data / "work" / "rounds" / "0001" / "model.pt").stat().st_size > 0


@pytest.mark.cluster
@pytest.mark.subprocess
def test_invalid_config_fails_the_job_with_the_config_error_in_its_logs(head, project):
    out = submit(head, project, "select", config="configs/bad.yaml")
    assert out.returncode == 1
    sid = out.stdout.splitlines()[0]
    error = "dist-al: error: unknown config key selection.seeed for strategy 'badge' (did you mean 'seed'?)"
    assert error in out.stdout
    assert f"job {sid} failed" in out.stderr
    logs = dist_al(head, project, "logs", sid, "--address", head.dashboard)
    assert logs.returncode == 0 and error in logs.stdout


@pytest.mark.cluster
@pytest.mark.subprocess
def test_jobs_lists_dist_al_jobs(head, project):
    out = dist_al(head, project, "jobs", env=head.client_env(RAY_ADDRESS=head.dashboard))
    assert out.returncode == 0, out.stderr
    rows = [line for line in out.stdout.splitlines() if line.startswith("| dist-al-")]
    assert rows and all(re.search(r"\| (SUCCEEDED|FAILED) \|", r) for r in rows), out.stdout
    assert any("| select |" in r and "SUCCEEDED" in r for r in rows) and any("FAILED" in r for r in rows), out.stdout


@pytest.mark.cluster
@pytest.mark.subprocess
def test_without_the_token_the_cluster_refuses_and_says_how_to_pass_it(head, project, tmp_path):
    env = head.client_env(HOME=str(tmp_path))  # no ~/.ray/auth_token there
    del env["RAY_AUTH_TOKEN"]
    out = dist_al(head, project, "jobs", "--address", head.dashboard, env=env)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "token authentication is on" in out.stderr and "RAY_AUTH_TOKEN" in out.stderr


@pytest.mark.cluster
@pytest.mark.subprocess
def test_credentials_in_a_submitted_config_are_refused_before_anything_is_sent(head, project):
    """Wherever a credential sits, in the config file or a --set, at any depth, as a key or inside a URI: one
    line naming where (never the value), exit 2, and the cluster never hears of the job."""
    root = project[0]
    cfg = yaml.safe_load((root / "configs" / "al.yaml").read_text())
    cfg["pool"]["storage_options"] = {"client_kwargs": {"region_name": "us-east-1", "aws_secret_access_key": SECRET}}
    (root / "configs" / "creds.yaml").write_text(yaml.safe_dump(cfg))
    cases = [
        (
            "configs/creds.yaml",
            [],
            f"{root}/configs/creds.yaml: pool.storage_options.client_kwargs.aws_secret_access_key holds a credential",
        ),
        (
            "configs/al.yaml",
            ["--set", f"pool.storage_options={{key: AKIAIOSFODNN7EXAMPLE, secret: {SECRET}}}"],
            "--set pool.storage_options: pool.storage_options.key holds a credential",
        ),
        (
            "configs/al.yaml",
            ["--set", f"pool.storage_options.client_kwargs.aws_session_token={SECRET}"],
            "pool.storage_options.client_kwargs.aws_session_token holds a credential",
        ),
        (
            "configs/al.yaml",
            ["--set", f"eval.uri=https://alice:{SECRET}@data.example.com/eval"],
            "--set eval.uri: eval.uri holds a credential",
        ),
    ]
    before = dist_al(head, project, "jobs", "--address", head.dashboard).stdout
    for config, extra, where in cases:
        out = submit(head, project, "select", config=config, extra=extra)
        assert_one_line_error(out, where, "credentials must not travel with a job")
        assert SECRET not in out.stderr + out.stdout and "AKIAIOSFODNN7EXAMPLE" not in out.stderr + out.stdout
    assert dist_al(head, project, "jobs", "--address", head.dashboard).stdout == before


@pytest.mark.cluster
@pytest.mark.subprocess
@pytest.mark.parametrize(
    "args, message",
    [
        (["--config", "configs/al.yaml", "--", "make-pool"], "cannot submit 'make-pool'"),
        (["--config", "configs/al.yaml"], "no command to run"),
        (["--config", "/etc/hostname", "--", "select"], "is outside the working directory"),
    ],
)
def test_bad_submissions_are_one_line_errors(head, project, args, message):
    out = dist_al(head, project, "submit", "--address", head.dashboard, *args)
    assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr


@pytest.mark.subprocess
def test_the_address_is_required():
    env = without_ray_env(os.environ)
    out = subprocess.run([sys.executable, "-m", "dist_al.cli", "jobs"], capture_output=True, text=True, env=env)
    assert out.returncode == 2 and "no cluster address" in out.stderr


@pytest.mark.cluster
@pytest.mark.subprocess
def test_the_token_file_in_home_is_used_when_the_environment_has_none(head, project, tmp_path):
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text(head.token + "\n")
    env = head.client_env(HOME=str(tmp_path))
    del env["RAY_AUTH_TOKEN"]
    out = dist_al(head, project, "jobs", "--address", head.dashboard, env=env)
    assert out.returncode == 0 and ("| dist-al-" in out.stdout or "no dist-al jobs on" in out.stdout), out.stderr


def test_token_lookup_order(monkeypatch, tmp_path):
    from dist_al.runtime.jobs import JobError, auth_headers

    for key in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert auth_headers() == {}
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("from-home\n")
    assert auth_headers() == {"Authorization": "Bearer from-home"}
    (tmp_path / "t").write_text("from-path")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "t"))
    assert auth_headers() == {"Authorization": "Bearer from-path"}
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-env")
    assert auth_headers() == {"Authorization": "Bearer from-env"}
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert auth_headers() == {}
    monkeypatch.delenv("RAY_AUTH_MODE")
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "missing"))
    with pytest.raises(JobError, match="RAY_AUTH_TOKEN_PATH"):
        auth_headers()


def test_a_relative_workdir_is_warned_about_wherever_it_is_set(tmp_path):
    from dist_al.config import read_config
    from dist_al.runtime.jobs import relative_workdir_warning

    config = str(tmp_path / "c.yaml")
    (tmp_path / "c.yaml").write_text("workdir: /shared/work\n")
    assert relative_workdir_warning(read_config(config)) is None
    assert "'./w' is a relative path" in relative_workdir_warning(read_config(config, ["workdir=./w"]))
    assert relative_workdir_warning(read_config(None, ["workdir=s3://bucket/work"])) is None
    assert "'./dist-al-work' is a relative path" in relative_workdir_warning(read_config(None))
