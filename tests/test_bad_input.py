"""Bad input through the real `dist-al` command: one clear line, exit != 0, no traceback, nothing written.

Every case runs `python -m dist_al.cli ...` in a fresh directory holding the case's config (and, for
cases on an existing workdir, a copy of a workdir that already has labels). The directory, the pool
and the workdir are snapshotted byte for byte before and after: a failed command may not create,
change or delete a single file (no workdir.json, no partial --out, no temp files).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from rayhead import without_ray_env

from dist_al.campaign.rounds import ingest
from dist_al.config import load_config
from dist_al.data.writer import write_pool
from dist_al.models import mlp
from dist_al.runtime.cluster import LOCAL_WORKERS_PER_CORE, cores

# The commands that get as far as Ray join the shared head (conftest.py); the cases about the limits of the
# private local Ray (their messages name it) strip RAY_ADDRESS and start one, as a user's laptop does.
pytestmark = [pytest.mark.subprocess, pytest.mark.cluster, pytest.mark.usefixtures("drivers_join_shared_head")]

ROWS, CLASSES, DIM = 120, 4, 8
MODEL = {"in_dim": DIM, "n_classes": CLASSES, "hidden": 16}
LABELED = 5  # rows labeled in the shared workdir
LOCAL_LIMIT = LOCAL_WORKERS_PER_CORE * cores()  # worker processes a local Ray runs on this machine


def cli(*args, cwd, env=None, timeout=300, local_ray=False):
    """`dist-al ARGS`; local_ray: without the RAY_ variables that make its driver join a running Ray."""
    full_env = {**os.environ, **(env or {})}
    if local_ray:
        full_env = without_ray_env(full_env)
    full_env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1]), full_env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "dist_al.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=full_env,
        timeout=timeout,
    )


def snapshot(*roots: Path) -> dict:
    """Every path under the roots (directories too, hidden files too) -> its bytes (None for a directory)."""
    out = {}
    for root in roots:
        if not root.exists():
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            for d in dirnames:
                out[os.path.join(dirpath, d)] = None
            for f in filenames:
                p = os.path.join(dirpath, f)
                out[p] = Path(p).read_bytes()
    return out


_WAITING = "WARNING dist_al.runtime.cluster: waiting for the cluster: "


def assert_one_line_error(res, *needles: str) -> str:
    """Exit code 2, exactly one stderr line starting 'dist-al: error:', holding every needle; returns it.
    The cluster's "waiting for the cluster" progress lines, printed while Ray workers start slowly on a busy
    machine, are not part of the error and are left out."""
    lines = [line for line in res.stderr.strip().splitlines() if not line.startswith(_WAITING)]
    assert res.returncode == 2, (res.returncode, res.stderr[-3000:])
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    assert len(lines) == 1, res.stderr[-3000:]
    assert lines[0].startswith("dist-al: error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


# --------------------------------------------------------------------------- inputs


def _table(ids, feats, id_type=None, feature_name="features"):
    flat = pa.array(np.asarray(feats, dtype=np.float32).reshape(-1))
    return pa.table({"id": pa.array(ids, id_type), feature_name: pa.FixedSizeListArray.from_arrays(flat, DIM)})


def _feats(n, seed=0):
    return np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)


def _write(path: Path, table: pa.Table) -> str:
    path.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path / "part-00000.parquet")
    return str(path)


def make_bad_pools(root: Path) -> dict[str, str]:
    ids = np.arange(ROWS, dtype=np.int64)
    f = _feats(ROWS)
    pools = {}
    pools["missing_column"] = _write(root / "missing_column", _table(ids, f, feature_name="embedding"))
    pools["mistyped_id"] = _write(root / "mistyped_id", _table(ids.astype(np.float64), f))
    ragged = pa.array([[0.5] * (DIM if i != 70 else DIM - 3) for i in range(ROWS)], pa.list_(pa.float32()))
    pools["ragged"] = _write(root / "ragged", pa.table({"id": ids, "features": ragged}))
    nan = f.copy()
    nan[77, 3] = np.nan
    pools["nan"] = _write(root / "nan", _table(ids, nan))
    inf = f.copy()
    inf[33, 0] = np.inf
    pools["inf"] = _write(root / "inf", _table(ids, inf))
    dup = ids.copy()
    dup[90] = 12
    pools["duplicate_ids"] = _write(root / "duplicate_ids", _table(dup, f))
    pools["empty_pool"] = _write(root / "empty_pool", _table(np.zeros(0, np.int64), np.zeros((0, DIM))))
    (root / "empty_dir").mkdir()
    (root / "empty_dir" / "_SUCCESS").write_text("")
    pools["empty_dir"] = str(root / "empty_dir")
    trunc = root / "truncated"
    write_pool(str(trunc), ids, f, rows_per_file=60)
    data = (trunc / "part-00001.parquet").read_bytes()
    (trunc / "part-00001.parquet").write_bytes(data[: len(data) // 2])
    pools["truncated"] = str(trunc)
    text = root / "not_parquet"
    write_pool(str(text), ids, f, rows_per_file=60)
    (text / "part-00002.parquet").write_text("id,features\n1,0.5\n")
    pools["not_parquet"] = str(text)
    return pools


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A good pool, bad pools, checkpoints, label files and a workdir that already holds labels."""
    root = tmp_path_factory.mktemp("bad-input")
    feats = _feats(ROWS, seed=1)
    labels = np.arange(ROWS) % CLASSES
    write_pool(str(root / "pool"), np.arange(1000, 1000 + ROWS), feats, labels, rows_per_file=60, rows_per_group=30)
    bad = make_bad_pools(root / "bad")
    torch.save(mlp(DIM + 1, CLASSES, 16).state_dict(), root / "wrong_shape.pt")
    good_cfg = {
        "pool": {"uri": str(root / "pool"), "label_column": "label"},
        "model": {"kwargs": MODEL},
        "selection": {"strategy": "margin", "budget": 10, "seed": 0},
        "cluster": {"workers": 2},
        "train": {"workers": 1, "epochs": 1},
        "workdir": str(root / "work"),
    }
    (root / "labels.csv").write_text("id,label\n" + "".join(f"{1000 + i},{i % CLASSES}\n" for i in range(LABELED)))
    print(ingest(load_config(None, base=good_cfg), str(root / "labels.csv")))
    assert (root / "work" / "workdir.json").exists()
    return {"root": root, "bad": bad, "cfg": good_cfg}


def case_dir(env, tmp_path, *, existing_workdir: bool, **sections) -> tuple[Path, Path]:
    """A directory with config.yaml (the good config with `sections` merged in) and maybe a workdir copy."""
    cfg = yaml.safe_load(yaml.safe_dump(env["cfg"]))
    cfg["workdir"] = str(tmp_path / "work")
    for key, value in sections.items():
        section, _, name = key.partition("__")
        if name:
            cfg.setdefault(section, {})[name] = value
        else:
            cfg[section] = value
    if existing_workdir:
        shutil.copytree(env["root"] / "work", tmp_path / "work")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    return tmp_path, tmp_path / "config.yaml"


def run_and_check(env, tmp_path, command: list[str], *needles, existing_workdir=False, cli_env=None, **sections):
    """Runs the command on the case's config; asserts a clean one-line failure and nothing written."""
    cwd, config = case_dir(env, tmp_path, existing_workdir=existing_workdir, **sections)
    watched = (cwd, env["root"] / "pool", env["root"] / "bad", env["root"] / "work")
    before = snapshot(*watched)
    local_ray = any("local Ray" in needle for needle in needles)
    res = cli(*command[:1], "--config", str(config), *command[1:], cwd=cwd, env=cli_env, local_ray=local_ray)
    line = assert_one_line_error(res, *needles)
    print(f"OBSERVED {' '.join(command[:1])}: {line}")
    after = snapshot(*watched)
    assert sorted(after) == sorted(before), set(after) ^ set(before)
    assert after == before
    return line


SELECT = ["select", "--out", "out/sel.parquet", "--no-progress"]
ROUND = ["round", "--no-progress"]

# id, command, use a copy of the existing workdir, config sections, substrings of the error line
POOL_CASES = [
    (
        "missing column",
        SELECT,
        False,
        "missing_column",
        ["part-00000.parquet", "has no column 'features'", "embedding"],
    ),
    ("mistyped id column", ROUND, True, "mistyped_id", ["part-00000.parquet", "id column 'id' has type double"]),
    (
        "feature lists of different lengths",
        SELECT,
        False,
        "ragged",
        [
            "id 70 (file ",
            "part-00000.parquet, row group 0, row 70), column 'features': vector of length 5, expected D=8",
        ],
    ),
    ("NaN feature", ROUND, False, "nan", ["id 77 (file ", "part-00000.parquet", "column 'features': NaN or inf value"]),
    (
        "inf feature",
        SELECT,
        False,
        "inf",
        ["id 33 (file ", "part-00000.parquet", "column 'features': NaN or inf value"],
    ),
    (
        "duplicate ids",
        ROUND,
        False,
        "duplicate_ids",
        ["ids are not unique: id 12 appears 2 times", "part-00000.parquet row group 0"],
    ),
    ("empty pool (0 rows)", SELECT, False, "empty_pool", ["empty pool (0 rows"]),
    ("empty pool (no data files)", ROUND, False, "empty_dir", ["empty pool (no data files"]),
    ("truncated Parquet file", ROUND, True, "truncated", ["part-00001.parquet", "not Parquet or is truncated"]),
    ("non-Parquet file", SELECT, False, "not_parquet", ["part-00002.parquet", "not Parquet or is truncated"]),
]


@pytest.mark.parametrize("name, command, existing, pool, needles", POOL_CASES, ids=[c[0] for c in POOL_CASES])
def test_bad_pool(env, tmp_path, name, command, existing, pool, needles):
    run_and_check(
        env, tmp_path, command, env["bad"][pool], *needles, existing_workdir=existing, pool={"uri": env["bad"][pool]}
    )


def test_pool_that_does_not_exist(env, tmp_path):
    run_and_check(
        env, tmp_path, ROUND, "no such file, directory, bucket or prefix", pool={"uri": str(tmp_path / "nowhere")}
    )


def test_pool_the_driver_reads_and_the_workers_do_not(env, tmp_path):
    """On a cluster (the shared head, whose workers run in a directory of their own) a relative pool path that the
    driver reads and the workers do not is one line naming the worker's side, not three recoveries of a 'dying'
    ShardWorker."""
    shutil.copytree(env["root"] / "pool", tmp_path / "pool")
    needles = [
        "pool pool: no such file, directory, bucket or prefix",
        "on the Ray worker of shard ",  # whichever shard fails first
        "relative",
    ]
    run_and_check(env, tmp_path, SELECT, *needles, pool={"uri": "pool", "label_column": "label"})


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_pool_that_is_not_readable(env, tmp_path):
    locked = tmp_path / "locked"
    shutil.copytree(env["root"] / "pool", locked)
    (locked / "part-00001.parquet").chmod(0)
    try:
        run_and_check(env, tmp_path, SELECT, "part-00001.parquet", "permission denied", pool={"uri": str(locked)})
    finally:
        (locked / "part-00001.parquet").chmod(0o644)


CONFIG_CASES = [
    (
        "labeling column missing",
        ROUND,
        True,
        {"labeling__image": "photo"},
        ["config key labeling.image: pool ", "has no column 'photo' (columns: id, features"],
    ),
    (
        "labeling classes do not match the model",
        ROUND,
        False,
        {"labeling__classes": ["cat", "dog"]},
        [f"config key labeling.classes names 2 classes, the model has {CLASSES}"],
    ),
    ("budget zero", ROUND, True, {"selection__budget": 0}, ["selection.budget must be positive, got 0"]),
    ("budget negative", SELECT, False, {"selection__budget": -3}, ["selection.budget must be positive, got -3"]),
    (
        "budget above unlabeled rows (select)",
        SELECT,
        False,
        {"selection__budget": ROWS + 1},
        [f"budget {ROWS + 1} is larger than the {ROWS} unlabeled rows"],
    ),
    (
        "budget above unlabeled rows (round)",
        ROUND,
        True,
        {"selection__budget": ROWS - LABELED + 1},
        [f"budget {ROWS - LABELED + 1} is larger than the {ROWS - LABELED} unlabeled rows"],
    ),
    (
        "model factory cannot be imported",
        ROUND,
        False,
        {"model__factory": "no_such_pkg.nets:build"},
        ["model.factory 'no_such_pkg.nets:build'", "cannot import module 'no_such_pkg.nets'"],
    ),
    (
        "model factory attribute missing",
        SELECT,
        False,
        {"model__factory": "dist_al.models:vit"},
        ["module 'dist_al.models' has no attribute 'vit'"],
    ),
    (
        "checkpoint shapes do not match",
        SELECT,
        False,
        {"model__checkpoint": "CKPT"},
        ["checkpoint does not match the model", "size mismatch"],
    ),
    (
        "checkpoint missing",
        ROUND,
        True,
        {"model__checkpoint": "/nonexistent/model.pt"},
        ["model.checkpoint '/nonexistent/model.pt' cannot be read"],
    ),
    (  # found when the round starts, not after its labels are in and it trains
        "eval set that does not exist (round)",
        ROUND,
        False,
        {"eval__uri": "/nonexistent/eval-pool"},
        ["eval.uri: pool /nonexistent/eval-pool: no such file, directory, bucket or prefix"],
    ),
    (
        "eval set that does not exist (train)",
        ["train"],
        True,
        {"eval__uri": "/nonexistent/eval-pool"},
        ["eval.uri: pool /nonexistent/eval-pool: no such file, directory, bucket or prefix"],
    ),
    (
        "model class count differs from the labels",
        ["train"],
        True,
        {"model__kwargs": {**MODEL, "n_classes": CLASSES + 1}},
        ["model.kwargs", f"'n_classes': {CLASSES}", f"'n_classes': {CLASSES + 1}"],
    ),
    (
        "model has fewer classes than the pool's labels (simulate)",
        ["simulate", "--no-progress"],
        False,
        {
            "model__kwargs": {**MODEL, "n_classes": CLASSES - 1},
            "train__backend": "local",
            "eval__uri": "POOL",
            "simulation": {"initial_labeled": 20, "rounds": 1},
        },
        [f"is outside [0, {CLASSES - 1})", f"the model has {CLASSES - 1} classes"],
    ),
    (
        "unknown config key",
        ROUND,
        False,
        {"selection__budgett": 5},
        ["unknown config key selection.budgett", "did you mean 'budget'?"],
    ),
    (
        "unknown section",
        SELECT,
        False,
        {"clustr": {"workers": 2}},
        ["unknown config key 'clustr'", "did you mean 'cluster'?"],
    ),
    (
        "wrong type",
        ROUND,
        True,
        {"cluster__workers": "two"},
        ["config key cluster.workers: expected an integer", "'two'"],
    ),
    (
        "GPUs the local Ray does not have (select)",
        SELECT,
        False,
        {"cluster__gpus_per_worker": 16},
        [
            "2 ShardWorkers with 16 GPU each need 32 GPUs, the local Ray has ",
            "change cluster.workers or cluster.gpus_per_worker, or set cluster.address",
        ],
    ),
    (
        "more ShardWorkers than a local Ray runs (round)",
        ROUND,
        True,
        {"cluster__workers": LOCAL_LIMIT + 1},
        [
            f"{LOCAL_LIMIT + 1} ShardWorkers are more worker processes than a local Ray runs on this machine's",
            "lower cluster.workers, or set cluster.address",
        ],
    ),
    (
        "Ray Train GPUs the local Ray does not have (simulate)",
        ["simulate", "--no-progress"],
        False,
        {
            "train__use_gpu": True,
            "train__workers": LOCAL_LIMIT - 2,
            "eval__uri": "POOL",
            "simulation": {"initial_labeled": 20, "rounds": 1},
        },
        [
            f"{LOCAL_LIMIT - 2} Ray Train workers with 1 GPU each need {LOCAL_LIMIT - 2} GPUs, the local Ray has ",
            "change train.workers or train.use_gpu",
        ],
    ),
]


@pytest.mark.parametrize("name, command, existing, sections, needles", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_bad_config_or_model(env, tmp_path, name, command, existing, sections, needles):
    if sections.get("model__checkpoint") == "CKPT":
        sections = {**sections, "model__checkpoint": str(env["root"] / "wrong_shape.pt")}
    if sections.get("eval__uri") == "POOL":
        sections = {**sections, "eval__uri": str(env["root"] / "pool")}
    run_and_check(env, tmp_path, command, *needles, existing_workdir=existing, **sections)


def test_debug_shows_the_traceback(env, tmp_path):
    cwd, config = case_dir(env, tmp_path, existing_workdir=False, model__factory="no_such_pkg.nets:build")
    res = cli("--debug", "select", "--config", str(config), "--out", "out/sel.parquet", cwd=cwd)
    assert res.returncode != 0
    assert "Traceback (most recent call last)" in res.stderr and "cannot import module 'no_such_pkg.nets'" in res.stderr
    assert not (cwd / "out").exists() and not (cwd / "work").exists()


class _NaNForOneRow(torch.nn.Module):
    def __init__(self, in_dim: int, n_classes: int, hidden: int, marker: float):
        super().__init__()
        self.body, self.classifier = mlp(in_dim, hidden, hidden, depth=1), torch.nn.Linear(hidden, n_classes)
        self.marker = marker

    def forward(self, x):
        return self.classifier(self.body(x).masked_fill(x[:, :1] == self.marker, float("nan")))


def nan_for_one_row(in_dim: int, n_classes: int, hidden: int, marker: float) -> torch.nn.Module:
    """model.factory of a model that outputs NaN for the one row whose first feature is `marker`."""
    return _NaNForOneRow(in_dim, n_classes, hidden, marker)


def test_model_that_outputs_nan_for_one_row(env, tmp_path):
    """The workers check each embedded batch: the error names the row's id, file, row group and row (row 100 of
    the pool: file 1 of 60-row files, row group 1 of 30-row groups, row 10), and no selection is made from NaNs."""
    marker = float(_feats(ROWS, seed=1)[100, 0])
    tests_dir = str(Path(__file__).resolve().parent)
    run_and_check(
        env,
        tmp_path,
        SELECT,
        "the model produced NaN/inf class probabilities for id 1100 (file ",
        "part-00001.parquet, row group 1, row 10); check the model and model.checkpoint",
        cli_env={"PYTHONPATH": os.pathsep.join([tests_dir, os.environ.get("PYTHONPATH", "")])},
        model={"factory": "test_bad_input:nan_for_one_row", "kwargs": {**MODEL, "marker": marker}},
        selection={"strategy": "badge", "budget": 10, "seed": 0},
    )


def test_nan_under_fp16_autocast_suggests_bf16(env):
    """On a GPU worker with model.autocast=fp16 the hint names the likely cause (run here without a GPU: the
    check itself, on a batch whose row 7 overflowed)."""
    from dist_al.config import PoolConfig
    from dist_al.data.pool import open_pool, plan_shards
    from dist_al.inputs.pipeline import Decoded
    from dist_al.models.build import ModelError
    from dist_al.runtime.worker import ShardWorker

    worker = object.__new__(ShardWorker)
    worker.pool = open_pool(PoolConfig(uri=str(env["root"] / "pool")))
    worker.shard = plan_shards(worker.pool, 2)[1]
    worker.embedder = types.SimpleNamespace(autocast=torch.float16)
    p, h = torch.full((30, CLASSES), 1 / CLASSES), torch.ones(30, 16)
    h[7, 3] = torch.inf
    batch = Decoded(rows=np.arange(30, 60), ids=np.arange(1090, 1120), labels=None, x=None, skipped=[])
    with pytest.raises(
        ModelError,
        match=r"NaN/inf classifier inputs for id 1097 \(file \S+part-00001.parquet, "
        r"row group 1, row 7\); with model.autocast=fp16, try bf16 or null",
    ):
        worker._check_output(p, h, batch)


# --------------------------------------------------------------------------- labels


def _label_files(work: Path) -> list[Path]:
    return sorted((work / "labels").glob("*.parquet")) if (work / "labels").exists() else []


def test_ingest_rejects_bad_rows_and_lands_the_valid_ones(env, tmp_path):
    cwd, config = case_dir(env, tmp_path, existing_workdir=True)
    labels = cwd / "mixed.csv"
    labels.write_text("id,label\n1010,1\n99999,2\n1011,7\n1012,0\n1012,3\n1013,cat\n1000,0\n1001,3\n")
    before = _label_files(cwd / "work")
    res = cli("ingest", "--config", str(config), str(labels), cwd=cwd)
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr[-2000:]
    out = res.stdout.strip()
    print("OBSERVED ingest:", out)
    assert out.startswith("1 label accepted; rejected: "), out
    for part in (
        "1 unknown id (99999)",
        "1 out-of-range label (id 1011: 7)",
        "id 1012: 0 vs 3",
        "1 non-integer label (id 1013: 'cat')",
        "id 1001: 3, recorded 1",
    ):
        assert part in out, (part, out)
    new = sorted(set(_label_files(cwd / "work")) - set(before))
    assert len(new) == 1
    assert pq.read_table(new[0]).select(["id", "label"]).to_pylist() == [{"id": 1010, "label": 1}]


@pytest.mark.parametrize("existing", [True, False], ids=["existing workdir", "fresh workdir"])
def test_ingest_with_every_row_bad_writes_nothing(env, tmp_path, existing):
    labels = tmp_path / "in" / "bad.csv"
    labels.parent.mkdir()
    labels.write_text("id,label\n99999,2\n1011,7\n1012,0\n1012,3\n")
    line = run_and_check(
        env,
        tmp_path,
        ["ingest", str(labels)],
        "labels file",
        "bad.csv",
        "no label accepted",
        "unknown id (99999)",
        existing_workdir=existing,
    )
    assert "id 1011: 7" in line


def test_ingest_labels_file_with_missing_column(env, tmp_path):
    labels = tmp_path / "in" / "bad.csv"
    labels.parent.mkdir()
    labels.write_text("id,class\n1010,1\n")
    run_and_check(env, tmp_path, ["ingest", str(labels)], "bad.csv", "missing column(s) label")


# --------------------------------------------------------------------------- object store


def s3_env(endpoint, key="testing-key", secret="testing-secret"):
    return {
        "AWS_ACCESS_KEY_ID": key,
        "AWS_SECRET_ACCESS_KEY": secret,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": "/nonexistent",
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }


def test_s3_bucket_that_does_not_exist(env, tmp_path, s3_server):
    run_and_check(
        env,
        tmp_path,
        SELECT,
        "s3://no-such-bucket-7f3a/pool",
        "no such file, directory, bucket or prefix",
        cli_env=s3_env(s3_server),
        pool={"uri": "s3://no-such-bucket-7f3a/pool", "storage_options": {"endpoint_url": s3_server}},
    )


def test_s3_bad_credentials(env, tmp_path, s3_server, s3_bucket, s3_storage_options, monkeypatch):
    """moto checks signatures once its 'no auth' allowance is spent: unknown keys get a 403."""
    from moto import settings
    from moto.core.authorization import ActionAuthenticatorMixin

    write_pool(f"s3://{s3_bucket}/pool", np.arange(ROWS), _feats(ROWS), storage_options=s3_storage_options)
    monkeypatch.setattr(settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)
    monkeypatch.setattr(ActionAuthenticatorMixin, "request_count", 0)
    uri = f"s3://{s3_bucket}/pool"
    run_and_check(
        env,
        tmp_path,
        ROUND,
        uri,
        "permission denied",
        cli_env=s3_env(s3_server, "AKIAWRONG", "wrong"),
        pool={"uri": uri, "storage_options": {"endpoint_url": s3_server}},
    )
