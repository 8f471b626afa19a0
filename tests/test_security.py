"""Security: no unpickling of user files, no credentials in anything dist-al writes or prints, no file
name taken from pool values. Behavioural checks run the real `dist-al` command."""

from __future__ import annotations

import ast
import base64
import gzip
import io
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
import zipfile
from pathlib import Path
from urllib.parse import quote, quote_plus

import boto3
import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from rayhead import _kill_leftovers, without_ray_env
from s3server import (
    FAKE_KEY,
    FAKE_SECRET,
    create_bucket,
    s3_filesystem,
    storage_options_for,
)
from test_bad_input import assert_one_line_error, cli, snapshot

from dist_al.campaign.labels import EXPORT_FILES
from dist_al.campaign.rounds import LABEL_CONFIG
from dist_al.data.writer import write_pool

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

        def const(key, kwargs=kwargs):
            value = kwargs.get(key)
            return value.value if isinstance(value, ast.Constant) else ("<expr>" if value is not None else None)

        if name in ("eval", "exec") and isinstance(func, ast.Name):
            found.append(f"{where}: {name}()")
        elif name == "load" and owner == "torch" and const("weights_only") is not True:
            found.append(f"{where}: torch.load without weights_only=True")
        elif name == "load" and owner in ("np", "numpy") and const("allow_pickle") not in (None, False):
            found.append(f"{where}: np.load with allow_pickle")
        elif owner == "yaml" and name in (
            "load",
            "load_all",
            "unsafe_load",
            "unsafe_load_all",
            "full_load",
            "full_load_all",
        ):
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


# The one unpickling the package may do: the bench times Ray's serialisation of a BADGE centre on bytes it
# pickled itself a line before (no file, no network). Any other call, here or elsewhere, fails the test.
OWN_BYTES = {"dist_al/bench/distributed.py": "cloudpickle.loads"}


def test_package_never_unpickles_user_files():
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 20
    found = [hit for f in files for hit in unsafe_calls(f.read_text(), str(f.relative_to(PACKAGE.parent)))]
    allowed = [h for h in found if h.endswith(f": {OWN_BYTES.get(h.split(':')[0], '-')}")]
    assert [h for h in found if h not in allowed] == []
    assert len(allowed) <= 2, allowed  # the bench's two loads of its own bytes


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


@pytest.mark.subprocess
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
    res = cli(
        "select",
        "--set",
        f"pool.uri={pool_dir}",
        "--set",
        f"model.kwargs={json.dumps(MODEL)}",
        "--set",
        f"model.checkpoint={ckpt}",
        "--set",
        "selection.budget=5",
        "--set",
        f"workdir={tmp_path}/w",
        "--out",
        str(tmp_path / "sel.parquet"),
        cwd=tmp_path,
    )
    line = assert_one_line_error(res, str(ckpt), "holds more than tensors and is refused")
    print("OBSERVED", line)
    assert not marker.exists()
    assert snapshot(tmp_path) == before


# --------------------------------------------------------------------------------- credentials

RUN = uuid.uuid4().hex


def _fake(name: str) -> str:
    """Recognisable and unique to this run, with the '/' and '+' of real AWS secrets (URL-encoding changes it)."""
    return f"FAKESECRET-{RUN}-{name}/+"


ENV_KEY_ID, CFG_KEY_ID = f"AKIA{RUN[:16].upper()}", f"AKIA{RUN[16:].upper()}"
SECRETS = {  # where each is planted -> the secret
    "env AWS_ACCESS_KEY_ID": ENV_KEY_ID,
    "env AWS_SECRET_ACCESS_KEY": _fake("env-secret"),
    "env AWS_SESSION_TOKEN": _fake("env-session"),
    "env HF_TOKEN": _fake("env-hf"),
    "pool.storage_options.key": CFG_KEY_ID,
    "pool.storage_options.secret": _fake("cfg-secret"),
    "pool.storage_options.client_kwargs.aws_session_token": _fake("cfg-nested-token"),
    "demo --set pool.storage_options.password": _fake("demo-password"),
}


def _forms(secret: str) -> set[bytes]:
    """The secret as raw bytes, URL-encoded, JSON-escaped, and base64 (standard and URL-safe) at each of the three
    alignments it can have inside a longer encoded blob (the 4 characters at either end, shared with its
    neighbours, are left out)."""
    raw = secret.encode()
    forms = {raw, quote(secret, safe="").encode(), quote_plus(secret).encode(), secret.replace("/", "\\/").encode()}
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        forms.update(encode(b"\0" * k + raw)[4 if k else 0 : -4] for k in range(3))
    return forms


FORMS = {where: _forms(secret) for where, secret in SECRETS.items()}


def _views(blob: bytes) -> list[bytes]:
    """A file's bytes, and what its container holds decoded: Parquet values and metadata, zip members (torch
    checkpoints), gzip."""
    views = [blob]
    if blob[:4] == b"PAR1":
        table = pq.read_table(pa.BufferReader(blob))
        views.append(repr((table.to_pylist(), table.schema.metadata)).encode())
    elif blob[:4] == b"PK\x03\x04":
        with zipfile.ZipFile(io.BytesIO(blob)) as archive:
            views += [archive.read(name) for name in archive.namelist()]
    elif blob[:2] == b"\x1f\x8b":
        views.append(gzip.decompress(blob))
    return views


def _leaks(blob: bytes | str) -> list[str]:
    """Where each secret found in `blob` was planted."""
    views = _views(blob.encode() if isinstance(blob, str) else blob)
    return [where for where, forms in FORMS.items() if any(form in view for form in forms for view in views)]


def _files(*roots: Path) -> dict[str, bytes]:
    """Every regular file under the roots (hidden ones too; links and sockets are not files)."""
    return {
        path: Path(path).read_bytes()
        for root in roots
        for directory, _, names in os.walk(root)
        for path in (os.path.join(directory, name) for name in names)
        if os.path.isfile(path) and not os.path.islink(path)
    }


@pytest.fixture(scope="module")
def credential_run(tmp_path_factory, s3_server):
    """Every dist-al command that writes, run once at --log-level DEBUG with secrets planted in the environment
    of each command and in the config's pool.storage_options (top level and under client_kwargs): pools, workdir
    and selections on moto S3, the simulation's workdir, the demo, the evaluation and the benchmarks on local
    disk. HOME, TMPDIR and RAY_TMPDIR point into the test's own directories, so whatever the commands (and the
    local Rays they start: Ray 2.60 puts its session logs under RAY_TMPDIR/ray) write there is scanned too.
    The bucket keeps versions, so every object ever written there is scanned, also those deleted since (the
    lock's, Ray Train's run directory). Yields the local roots, the bucket's objects and each command's output."""
    root = tmp_path_factory.mktemp("credentials")
    private_tmp = Path(tempfile.mkdtemp(prefix="dal-sec-", dir="/tmp"))  # short: Ray's socket paths fit 107 bytes
    bucket = f"creds-{RUN[:12]}"
    create_bucket(s3_server, bucket)
    client = boto3.client(
        "s3",
        endpoint_url=s3_server,
        aws_access_key_id=FAKE_KEY,
        aws_secret_access_key=FAKE_SECRET,
        region_name="us-east-1",
    )
    client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})  # keeps what is deleted
    (root / "home").mkdir()
    env = without_ray_env({k: v for k, v in os.environ.items() if not k.startswith("AWS_")})
    env.update({name.split()[1]: SECRETS[name] for name in SECRETS if name.startswith("env ")})
    env.update(
        AWS_ENDPOINT_URL=s3_server,
        AWS_DEFAULT_REGION="us-east-1",
        AWS_EC2_METADATA_DISABLED="true",
        AWS_CONFIG_FILE="/nonexistent",
        AWS_SHARED_CREDENTIALS_FILE="/nonexistent",
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
        HOME=str(root / "home"),
        TMPDIR=str(private_tmp),
        RAY_TMPDIR=str(private_tmp),
        PYTHONPATH=os.pathsep.join([str(PACKAGE.parent), os.environ.get("PYTHONPATH", "")]),
    )
    outputs: dict[str, str] = {}

    def run(*args: str, expect: int = 0) -> subprocess.CompletedProcess:
        res = subprocess.run(
            [sys.executable, "-m", "dist_al.cli", *args], capture_output=True, text=True, cwd=root, env=env, timeout=600
        )
        name = f"{len(outputs):02d} {' '.join(args[:2])}"
        outputs[name] = res.stdout + res.stderr
        (root / "logs").mkdir(exist_ok=True)
        (root / "logs" / f"{len(outputs):02d}.log").write_text(outputs[name])
        assert res.returncode == expect, (name, res.stderr[-3000:])
        return res

    s3 = f"s3://{bucket}"
    user = root / "user"  # the user's own files: the one place the config's secrets may be
    user.mkdir()
    nested = {
        "region_name": "us-east-1",
        "aws_session_token": SECRETS["pool.storage_options.client_kwargs.aws_session_token"],
    }
    config = {
        "pool": {
            "uri": f"{s3}/pool",
            "label_column": "label",
            "storage_options": {
                "endpoint_url": s3_server,
                "key": CFG_KEY_ID,
                "client_kwargs": nested,
                "secret": SECRETS["pool.storage_options.secret"],
            },
        },
        "model": {"kwargs": MODEL},
        "selection": {"strategy": "margin", "budget": 6},
        "train": {"epochs": 2, "workers": 1, "batch_size": 16},
        "eval": {"uri": f"{s3}/eval"},
        "simulation": {"initial_labeled": 6, "rounds": 1, "seeds": 1, "strategies": "random"},
        "cluster": {"workers": 1},
        "workdir": f"{s3}/work",
    }
    (user / "config.yaml").write_text(yaml.safe_dump(config))
    common = ["--config", str(user / "config.yaml"), "--log-level", "DEBUG"]
    debug = ["--log-level", "DEBUG"]
    try:
        for name, rows, seed in (("pool", 120, 0), ("eval", 60, 1)):  # credentials from the environment only
            run(
                "make-pool",
                f"{s3}/{name}",
                "--synthetic",
                "--rows",
                str(rows),
                "--classes",
                str(CLASSES),
                "--dim",
                str(DIM),
                "--seed",
                str(seed),
                "--rows-per-file",
                "60",
                *debug,
            )
        run("select", *common, "--no-progress")
        run("round", *common, "--no-progress")  # round 1: select + export
        run("export", *common)
        fs = s3_filesystem(storage_options_for(s3_server), fresh=True)
        with fs.open(f"{s3}/work/rounds/0001/selection.parquet", "rb") as f:
            ids = pq.read_table(f).column("id").to_pylist()
        (user / "labels.csv").write_text("id,label\n" + "".join(f"{i},{i % CLASSES}\n" for i in ids))
        run("ingest", *common, str(user / "labels.csv"))
        run("ingest", *common, f"{s3}/inbox/none.json", expect=2)  # an error at DEBUG level
        run("train", *common)
        run("round", *common, "--no-progress")  # round 1: all labels in, trains with Ray Train
        run("status", *common)
        run(
            "simulate",
            *common,
            "--no-progress",
            "--set",
            f"workdir={root / 'simulation'}",
            "--set",
            "train.backend=local",
        )
        run("evaluate", str(root / "simulation"), "--out", str(root / "evaluation"), *debug)
        run(
            "demo",
            "--workdir",
            str(root / "demo"),
            "--no-progress",
            *debug,
            "--set",
            "simulation.rounds=1",
            "--set",
            "simulation.seeds=1",
            "--set",
            "simulation.strategies=random",
            "--set",
            "train.epochs=1",
            "--set",
            "simulation.initial_labeled=10",
            "--set",
            "selection.budget=10",
            "--set",
            "cluster.workers=1",
            "--set",
            f"pool.storage_options={{password: {SECRETS['demo --set pool.storage_options.password']}}}",
        )
        run("--log-level", "DEBUG", "bench", "core", "--quick", "--repeats", "1", "--only", "badge-dense")
        run("--log-level", "DEBUG", "bench", "distributed", "--quick", "--only", "embedding")
        objects = {
            f"{bucket}/{v['Key']}@{v['VersionId']}": client.get_object(
                Bucket=bucket, Key=v["Key"], VersionId=v["VersionId"]
            )["Body"].read()
            for page in client.get_paginator("list_object_versions").paginate(Bucket=bucket)
            for v in page.get("Versions", [])
        }
        yield {"root": root, "tmp": private_tmp, "user": user, "objects": objects, "outputs": outputs}
    finally:
        _kill_leftovers(str(private_tmp))
        shutil.rmtree(private_tmp, ignore_errors=True)


@pytest.mark.subprocess
@pytest.mark.cluster
def test_every_writer_ran(credential_run):
    """The scan below covers real writes: each command wrote what it writes, at DEBUG; the bucket's history holds
    what was deleted since (Ray Train's run directory); Ray's session logs of each local Ray are in the scanned
    temp dir; the configs written for people keep the keys and lose the values."""
    root, objects = credential_run["root"], credential_run["objects"]
    written = set(objects) | {os.path.relpath(p, root) for p in _files(root)}
    for expected in (
        "/pool/part-",
        "/eval/part-",
        "/work/selections/margin-budget6-seed0.parquet",
        "/work/config.yaml@",
        "/work/workdir.json@",
        "/work/lock.json@",
        "/work/labels/",
        "/work/rounds/0001/export/label_studio_tasks.json@",
        "/work/rounds/0001/model.pt@",
        "/work/rounds/0001/metrics.json@",
        "/work/rounds/0001/_ray_train/",
        "simulation/simulation/run.json",
        "simulation/simulation/curve.png",
        "evaluation/eval-tables.md",
        "demo/simulation/curve.csv",
        "demo/pool/",
        "home/",
    ):
        assert any(expected in path for path in written), expected
    assert any("DEBUG" in text for text in credential_run["outputs"].values())
    sessions = {p.split("/ray/")[1].split("/")[0] for p in _files(credential_run["tmp"]) if "/logs/" in p}
    assert len(sessions) == 5  # select, round (select), round (Ray Train), simulate, demo
    snapshots = [objects[p].decode() for p in objects if "/work/config.yaml@" in p]
    snapshots.append((root / "simulation" / "simulation" / "run.json").read_text())
    for text in snapshots:
        assert text.count("<redacted>") == 3 and "aws_session_token" in text and "endpoint_url" in text


@pytest.mark.subprocess
@pytest.mark.cluster
def test_credentials_never_reach_a_file_an_object_or_a_log(credential_run):
    """No planted secret, raw or encoded, in any command's output, in any file under the workdirs, pools,
    outputs, HOME or the temp dir with Ray's session logs, or in any object of the bucket."""
    user = str(credential_run["user"])
    files = {
        p: v
        for p, v in _files(credential_run["root"], credential_run["tmp"]).items()
        if not p.startswith(user + os.sep)
    }
    assert len(files) > 100 and credential_run["objects"]
    scanned = [*credential_run["outputs"].items(), *files.items(), *credential_run["objects"].items()]
    leaked = {where: _leaks(blob) for where, blob in scanned if _leaks(blob)}
    assert leaked == {}
    print(
        "OBSERVED",
        f"{len(credential_run['outputs'])} command outputs, {len(files)} local files "
        f"({sum(map(len, files.values())) / 2**20:.1f} MiB), {len(credential_run['objects'])} object versions: "
        f"none holds any of the {len(SECRETS)} secrets in any of their forms",
    )


@pytest.mark.labelstudio
@pytest.mark.slow
def test_label_studio_api_keys_never_reach_the_workdir_a_log_or_an_error(label_studio, tmp_path):
    """The labeling path (select, push, pull, train, status) at DEBUG against a real Label Studio, with
    LABEL_STUDIO_API_KEY a personal access token, then a legacy token, then a wrong one: no form of any of them,
    nor any access token Label Studio handed out for them (a JWT), in any output or in any file the commands
    wrote (the workdir, HOME, the temp dir with Ray's session logs)."""
    private_tmp = Path(tempfile.mkdtemp(prefix="dal-ls-sec-", dir="/tmp"))
    personal = label_studio.personal_access_token()
    wrong = uuid.uuid4().hex + uuid.uuid4().hex[:8]
    keys = {"personal access token": personal, "legacy token": label_studio.token, "wrong key": wrong}
    write_pool(
        str(tmp_path / "pool"), np.arange(40), np.random.default_rng(0).normal(size=(40, DIM)), np.arange(40) % 3
    )
    config = {
        "pool": {"uri": str(tmp_path / "pool")},
        "model": {"kwargs": MODEL},
        "selection": {"strategy": "random", "budget": 4},
        "cluster": {"workers": 1},
        "train": {"epochs": 1, "backend": "local"},
        "labeling": {"backend": "label-studio", "url": label_studio.url, "project": "security scan"},
        "workdir": str(tmp_path / "work"),
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    (tmp_path / "home").mkdir()
    env = without_ray_env({k: v for k, v in os.environ.items() if not k.startswith("LABEL_STUDIO")})
    env.update(HOME=str(tmp_path / "home"), TMPDIR=str(private_tmp), RAY_TMPDIR=str(private_tmp))
    outputs = []

    def run(command: str, key: str, expect: int = 0) -> None:
        res = subprocess.run(
            [
                sys.executable,
                "-m",
                "dist_al.cli",
                "--log-level",
                "DEBUG",
                command,
                "--config",
                str(tmp_path / "config.yaml"),
            ],
            capture_output=True,
            text=True,
            env={**env, "LABEL_STUDIO_API_KEY": key},
            timeout=600,
        )
        outputs.append(res.stdout + res.stderr)
        assert res.returncode == expect, res.stderr[-3000:]

    try:
        run("round", personal)  # select, export, push, pull
        project = next(p for p in label_studio.api("GET", "/api/projects/")["results"] if p["title"] == "security scan")
        for task in label_studio.tasks(project["id"]):
            label_studio.annotate(task["id"], str(task["data"]["id"] % 3))
        run("round", personal)  # pull, then train
        run("status", personal)
        run("round", label_studio.token)  # round 2: select, push, pull with the legacy token
        run("round", wrong, expect=2)
        assert "refused the API key in LABEL_STUDIO_API_KEY (401" in outputs[-1]
        files = _files(tmp_path / "work", tmp_path / "home", private_tmp)
        assert any("/ray/" in p for p in files) and any(p.endswith("label_studio.json") for p in files)
        scanned = [*outputs, *files.values()]
        for name, key in keys.items():
            forms = _forms(key)
            leaked = [
                blob[:200]
                for blob in scanned
                for view in _views(blob if isinstance(blob, bytes) else blob.encode())
                if any(f in view for f in forms)
            ]
            assert not leaked, name
        jwt = re.compile(rb"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.")
        assert jwt.search(personal.encode())  # the shape every token Label Studio hands out has
        assert not [b for b in scanned for v in _views(b if isinstance(b, bytes) else b.encode()) if jwt.search(v)]
        print("OBSERVED", f"{len(outputs)} command outputs and {len(files)} files: no key and no access token")
    finally:
        _kill_leftovers(str(private_tmp))
        shutil.rmtree(private_tmp, ignore_errors=True)


def test_the_scan_finds_each_planted_secret_in_each_form():
    for where, secret in SECRETS.items():
        encoded = [
            f"x{quote(secret, safe='')}y",
            json.dumps({"s": secret}).replace("/", "\\/"),
            *(b"<" + base64.b64encode(pad + secret.encode() + b"!!") + b">" for pad in (b"", b"a", b"ab")),
            gzip.compress(secret.encode() * 3),
        ]
        for blob in [secret, *encoded]:
            assert _leaks(blob) == [where], (where, blob)
    buf = io.BytesIO()
    pq.write_table(pa.table({"note": [SECRETS["env HF_TOKEN"]]}), buf, compression="gzip", write_statistics=False)
    assert SECRETS["env HF_TOKEN"].encode() not in buf.getvalue() and _leaks(buf.getvalue()) == ["env HF_TOKEN"]


@pytest.mark.subprocess
def test_config_errors_do_not_echo_storage_options(tmp_path):
    res = cli(
        "select",
        "--set",
        f"pool.uri={tmp_path}",
        "--set",
        "selection.budget=5",
        "--set",
        f"pool.storage_options=key={CFG_KEY_ID} secret={SECRETS['pool.storage_options.secret']}",
        cwd=tmp_path,
    )
    line = assert_one_line_error(res, "config key pool.storage_options: expected a mapping, got a str")
    assert _leaks(res.stdout + res.stderr) == [] and not os.listdir(tmp_path)
    print("OBSERVED", line)


# ------------------------------------------------------------------------------------- file names

ODD_IDS = [
    "../../etc/x",
    "/abs/path",
    "..",
    ".",
    "a/b/../c",
    "C:\\Windows\\x",
    "name with spaces",
    "tab\there",
    "ünïcødé-ø",
    "*?<>|\"'",
    "$(touch pwned)",
    "%2e%2e%2f",
    "~root",
    "-rf",
    "",
]


@pytest.mark.subprocess
@pytest.mark.cluster
def test_export_file_names_never_come_from_pool_values(tmp_path):
    ids = ODD_IDS + [f"row-{i}" for i in range(30 - len(ODD_IDS))]
    feats = np.random.default_rng(2).normal(size=(len(ids), DIM)).astype(np.float32)
    write_pool(str(tmp_path / "pool"), ids, feats)
    work = tmp_path / "work"
    common = [
        "--set",
        f"pool.uri={tmp_path / 'pool'}",
        "--set",
        f"model.kwargs={json.dumps(MODEL)}",
        "--set",
        f"selection.budget={len(ids)}",
        "--set",
        "selection.strategy=random",
        "--set",
        f"workdir={work}",
    ]
    before = set(snapshot(tmp_path))
    res = cli("round", *common, "--no-progress", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    export = work / "rounds" / "0001" / "export"
    assert sorted(os.listdir(export)) == sorted([*EXPORT_FILES, LABEL_CONFIG])
    exported = pacsv.read_csv(
        export / "selection.csv",
        convert_options=pacsv.ConvertOptions(column_types={"id": pa.string()}, strings_can_be_null=False),
    )
    assert sorted(exported.column("id").to_pylist()) == sorted(ids)  # every odd id selected and kept intact
    tasks = json.loads((export / "label_studio_tasks.json").read_text())
    for k, task in enumerate(tasks):  # labelers' answers, in Label Studio's export shape
        task.update(
            id=500 + k,
            annotations=[
                {"result": [{"type": "choices", "from_name": "label", "value": {"choices": [str(k % CLASSES)]}}]}
            ],
        )
    answers = tmp_path / "answers.json"
    answers.write_text(json.dumps(tasks))
    res = cli("ingest", *common, str(answers), cwd=tmp_path)
    assert res.returncode == 0 and res.stdout.startswith(f"{len(ids)} labels accepted"), res.stdout + res.stderr

    created = sorted(os.path.relpath(p, tmp_path) for p in set(snapshot(tmp_path)) - before - {str(answers)})
    labels = [p for p in created if p.startswith("work/labels/")]
    assert len(labels) == 1 and labels[0].endswith(".parquet")
    assert set(created) - set(labels) == {
        "work",
        "work/workdir.json",
        "work/config.yaml",
        "work/labels",
        "work/rounds",
        "work/rounds/0001",
        "work/rounds/0001/selection.parquet",
        "work/rounds/0001/selected_rows.parquet",
        "work/rounds/0001/state.json",
        "work/rounds/0001/export",
        *(f"work/rounds/0001/export/{name}" for name in [*EXPORT_FILES, LABEL_CONFIG]),
    }
    assert not Path("/abs/path").exists() and not (tmp_path / "pwned").exists()
