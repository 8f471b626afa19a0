"""Security: no unpickling of user files, no credentials in anything dist-al writes or prints, no file
name taken from pool values. Behavioural checks run the real `dist-al` command."""

from __future__ import annotations

import ast
import json
import os
import pickle
from pathlib import Path

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from test_bad_input import assert_one_line_error, cli, snapshot

from dist_al.labels import EXPORT_FILES
from dist_al.pool import write_pool

PACKAGE = Path(__file__).resolve().parents[1] / "dist_al"
DIM, CLASSES = 8, 3
MODEL = {"in_dim": DIM, "n_classes": CLASSES, "hidden": 16}

# ------------------------------------------------------------------------------------------- static scan

_UNPICKLERS = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "marshal", "shelve", "jsonpickle"}


def unsafe_calls(source: str, filename: str = "<src>") -> list[str]:
    """Calls that can run code from a file's contents: torch.load without weights_only=True, np.load with
    allow_pickle=True, yaml.load/unsafe_load/full_load or an unsafe Loader, (un)pickling loads, eval/exec."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if not isinstance(node, ast.Call):
            continue
        func, where = node.func, f"{filename}:{node.lineno}"
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        owner = func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else ""
        kwargs = {k.arg: k.value for k in node.keywords}

        def const(key):
            value = kwargs.get(key)
            return value.value if isinstance(value, ast.Constant) else ("<expr>" if value is not None else None)

        if name in ("eval", "exec") and isinstance(func, ast.Name):
            found.append(f"{where}: {name}()")
        elif name == "load" and owner == "torch" and const("weights_only") is not True:
            found.append(f"{where}: torch.load without weights_only=True")
        elif name == "load" and owner in ("np", "numpy") and const("allow_pickle") not in (None, False):
            found.append(f"{where}: np.load with allow_pickle")
        elif owner == "yaml" and name in ("load", "load_all", "unsafe_load", "unsafe_load_all", "full_load",
                                          "full_load_all"):
            found.append(f"{where}: yaml.{name}")
        elif owner in _UNPICKLERS and name in ("load", "loads", "Unpickler", "open"):
            found.append(f"{where}: {owner}.{name}")
        elif name in ("read_pickle",) or (owner == "torch" and name == "jit"):
            found.append(f"{where}: {name}")
    return found


def test_the_scan_finds_every_unsafe_pattern():
    bad = """
import torch, yaml, pickle, numpy as np
torch.load(f)
torch.load(f, weights_only=False)
np.load(f, allow_pickle=True)
yaml.load(text)
yaml.unsafe_load(text)
pickle.loads(data)
eval("1")
exec("x = 1")
df.read_pickle(p)
"""
    good = """
import torch, yaml, numpy as np
torch.load(f, map_location="cpu", weights_only=True)
np.load(f, allow_pickle=False)
np.load(f)
yaml.safe_load(text)
model.eval()
"""
    assert len(unsafe_calls(bad)) == 9, unsafe_calls(bad)
    assert unsafe_calls(good) == []


def test_package_never_unpickles_user_files():
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 20
    found = [hit for f in files for hit in unsafe_calls(f.read_text(), str(f.relative_to(PACKAGE.parent)))]
    assert found == []


# ---------------------------------------------------------------------------------- pickled payloads


class Payload:
    """Unpickling this creates a directory: proof that code ran."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


@pytest.fixture(scope="module")
def pool_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("security")
    feats = np.random.default_rng(0).normal(size=(90, DIM)).astype(np.float32)
    write_pool(str(root / "pool"), np.arange(90), feats, np.arange(90) % CLASSES, rows_per_file=45)
    return root / "pool"


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dumps"])
def test_checkpoint_with_a_code_payload_is_refused_and_does_not_run(tmp_path, pool_dir, writer):
    marker = tmp_path / "payload-ran"
    state = {"0.weight": torch.zeros(16, DIM), "evil": Payload(str(marker))}
    ckpt = tmp_path / "model.pt"
    if writer == "torch.save":
        torch.save(state, ckpt)
    else:
        ckpt.write_bytes(pickle.dumps(state))
    before = snapshot(tmp_path)
    res = cli("select", "--set", f"pool.uri={pool_dir}", "--set", f"model.kwargs={json.dumps(MODEL)}",
              "--set", f"model.checkpoint={ckpt}", "--set", "selection.budget=5", "--set", f"workdir={tmp_path}/w",
              "--out", str(tmp_path / "sel.parquet"), cwd=tmp_path)
    line = assert_one_line_error(res, str(ckpt), "holds more than tensors and is refused")
    print("OBSERVED", line)
    assert not marker.exists()
    assert snapshot(tmp_path) == before


# --------------------------------------------------------------------------------- credentials

ENV_KEY, ENV_SECRET = "AKIAENVKEYQ7Z3XW9P2M", "envSecret/Kx81+qLm0VzT4yB6nR2cH9wJ5sD3fG7aE1uI8oP"
CFG_KEY, CFG_SECRET = "AKIACFGKEYR4T6Y8U0I2", "cfgSecret/Mn73+wQe5RtY9uIo1pAs3dF5gH7jK9lZ2xC4vB6"
SECRETS = (ENV_KEY, ENV_SECRET, CFG_KEY, CFG_SECRET)


def _aws_env(key=None, secret=None) -> dict:
    env = {"AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": "/nonexistent",
           "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent", "NO_PROXY": "127.0.0.1,localhost",
           "no_proxy": "127.0.0.1,localhost"}
    if key:
        env.update(AWS_ACCESS_KEY_ID=key, AWS_SECRET_ACCESS_KEY=secret)
    else:  # only the config's storage_options carry credentials
        env.update(AWS_ACCESS_KEY_ID="", AWS_SECRET_ACCESS_KEY="")
    return env


def _leaks(blob: bytes | str) -> list[str]:
    text = blob.decode("utf-8", errors="replace") if isinstance(blob, bytes) else blob
    return [s for s in SECRETS if s in text]


def test_credentials_never_reach_the_workdir_exports_or_logs(tmp_path, s3_server, s3_bucket, s3_storage_options):
    """Credentials from the environment (workdir on local disk: select, round, ...) and from
    pool.storage_options (workdir on S3: round, ...): round selects and exports, then ingest, status and an
    error on a missing object, all at --log-level DEBUG; no secret may appear in any output stream or in any
    file written locally or to the bucket."""
    rows = 90
    feats = np.random.default_rng(1).normal(size=(rows, DIM)).astype(np.float32)
    write_pool(f"s3://{s3_bucket}/pool", np.arange(rows), feats, np.arange(rows) % CLASSES, rows_per_file=45,
               storage_options=s3_storage_options)
    base = {"pool": {"uri": f"s3://{s3_bucket}/pool", "label_column": "label",
                     "storage_options": {"endpoint_url": s3_server, "client_kwargs": {"region_name": "us-east-1"}}},
            "model": {"kwargs": MODEL}, "selection": {"strategy": "margin", "budget": 6},
            "cluster": {"workers": 2}}
    runs = {
        "env": ({**base, "workdir": str(tmp_path / "work-env")}, _aws_env(ENV_KEY, ENV_SECRET)),
        "config": ({**base, "pool": {**base["pool"], "storage_options": {**base["pool"]["storage_options"],
                                                                          "key": CFG_KEY, "secret": CFG_SECRET}},
                    "workdir": f"s3://{s3_bucket}/work-config"}, _aws_env()),
    }
    streams, users_files = [], set()
    for name, (cfg, env) in runs.items():
        config = tmp_path / f"user-{name}.yaml"  # the user's own file: the one place the config secret may be
        config.write_text(yaml.safe_dump(cfg))
        users_files.add(str(config))
        common = ["--config", str(config), "--log-level", "DEBUG"]
        steps = (["select", "--no-progress"], ["round", "--no-progress"]) if name == "env" else (["round", "--no-progress"],)
        for args in steps:
            res = cli(args[0], *common, *args[1:], cwd=tmp_path, env=env)
            assert res.returncode == 0, res.stderr[-3000:]
            streams.append((f"{name} {args[0]}", res.stdout + res.stderr))
        selection_uri = f"{cfg['workdir']}/rounds/0001/selection.parquet"
        opts = s3_storage_options if cfg["workdir"].startswith("s3://") else {}
        with fsspec.open(selection_uri, "rb", **opts) as f:
            ids = pq.read_table(f).column("id").to_pylist()
        labels = tmp_path / f"{name}-labels.csv"
        labels.write_text("id,label\n" + "".join(f"{i},{i % CLASSES}\n" for i in ids[:3]))
        users_files.add(str(labels))
        for args in (["ingest", str(labels)], ["status"]):
            res = cli(args[0], *common, *args[1:], cwd=tmp_path, env=env)
            assert res.returncode == 0, res.stderr[-3000:]
            streams.append((f"{name} {args[0]}", res.stdout + res.stderr))
        missing = cli("ingest", *common, f"s3://{s3_bucket}/inbox/none.json", cwd=tmp_path, env=env)
        assert missing.returncode == 2 and "Traceback" not in missing.stderr  # DEBUG lines come before the error
        assert missing.stderr.strip().splitlines()[-1].endswith("inbox/none.json does not exist"), missing.stderr
        streams.append((f"{name} missing labels file", missing.stdout + missing.stderr))
    assert any("DEBUG" in text for _, text in streams)  # the debug level really was on

    files = {p: v for p, v in snapshot(tmp_path).items() if v is not None and p not in users_files}
    fs = fsspec.filesystem("s3", **s3_storage_options)
    fs.invalidate_cache()
    objects = {p: fs.cat_file(p) for p in fs.find(s3_bucket)}
    assert any(p.endswith("export/label_studio_tasks.json") for p in files)  # local export happened
    assert any(p.endswith("export/label_studio_tasks.json") for p in objects)  # s3 export happened
    assert any("/labels/" in p for p in objects) and any("/labels/" in p for p in files)
    leaked = {where: _leaks(blob) for where, blob in [*streams, *files.items(), *objects.items()] if _leaks(blob)}
    assert leaked == {}


def test_config_errors_do_not_echo_storage_options(tmp_path):
    res = cli("select", "--set", f"pool.uri={tmp_path}", "--set", "selection.budget=5",
              "--set", f"pool.storage_options=key={CFG_KEY} secret={CFG_SECRET}", cwd=tmp_path)
    line = assert_one_line_error(res, "config key pool.storage_options: expected a mapping, got a str")
    assert _leaks(res.stdout + res.stderr) == [] and not os.listdir(tmp_path)
    print("OBSERVED", line)


# ------------------------------------------------------------------------------------- file names

ODD_IDS = ["../../etc/x", "/abs/path", "..", ".", "a/b/../c", "C:\\Windows\\x", "name with spaces", "tab\there",
           "ünïcødé-ø", "*?<>|\"'", "$(touch pwned)", "%2e%2e%2f", "~root", "-rf", ""]


def test_export_file_names_never_come_from_pool_values(tmp_path):
    ids = ODD_IDS + [f"row-{i}" for i in range(30 - len(ODD_IDS))]
    feats = np.random.default_rng(2).normal(size=(len(ids), DIM)).astype(np.float32)
    write_pool(str(tmp_path / "pool"), ids, feats)
    work = tmp_path / "work"
    common = ["--set", f"pool.uri={tmp_path / 'pool'}", "--set", f"model.kwargs={json.dumps(MODEL)}",
              "--set", f"selection.budget={len(ids)}", "--set", "selection.strategy=random", "--set", f"workdir={work}"]
    before = set(snapshot(tmp_path))
    res = cli("round", *common, "--no-progress", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    export = work / "rounds" / "0001" / "export"
    assert sorted(os.listdir(export)) == sorted(EXPORT_FILES)
    exported = pacsv.read_csv(export / "selection.csv",
                              convert_options=pacsv.ConvertOptions(column_types={"id": pa.string()},
                                                                   strings_can_be_null=False))
    assert sorted(exported.column("id").to_pylist()) == sorted(ids)  # every odd id selected and kept intact
    tasks = json.loads((export / "label_studio_tasks.json").read_text())
    for k, task in enumerate(tasks):  # labelers' answers, in Label Studio's export shape
        task.update(id=500 + k, annotations=[{"result": [{"type": "choices", "from_name": "label",
                                                          "value": {"choices": [str(k % CLASSES)]}}]}])
    answers = tmp_path / "answers.json"
    answers.write_text(json.dumps(tasks))
    res = cli("ingest", *common, str(answers), cwd=tmp_path)
    assert res.returncode == 0 and res.stdout.startswith(f"{len(ids)} labels accepted"), res.stdout + res.stderr

    created = sorted(os.path.relpath(p, tmp_path) for p in set(snapshot(tmp_path)) - before - {str(answers)})
    labels = [p for p in created if p.startswith("work/labels/")]
    assert len(labels) == 1 and labels[0].endswith(".parquet")
    assert set(created) - set(labels) == {
        "work", "work/workdir.json", "work/config.yaml", "work/labels", "work/rounds", "work/rounds/0001",
        "work/rounds/0001/selection.parquet", "work/rounds/0001/selected_rows.parquet", "work/rounds/0001/state.json",
        "work/rounds/0001/export",
        *(f"work/rounds/0001/export/{name}" for name in EXPORT_FILES)}
    assert not Path("/abs/path").exists() and not (tmp_path / "pwned").exists()
