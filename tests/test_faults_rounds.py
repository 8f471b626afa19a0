"""Labeling rounds under faults: the driver SIGKILLed at each step, two drivers at once, a flaky store.

Every fault is real: the CLI runs as a subprocess and kills itself with SIGKILL at a named
crash point (dist_al.faults) or is killed from outside; two processes race for one workdir on
local disk and on the moto S3 server; and a proxy in front of moto (tests/s3server.py,
FaultProxy) answers 503 SlowDown or resets the connection.  Each run that resumes must end
where an uninterrupted run ends: same selection, same states, same label records, no temp
files, no lock left behind.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import fsspec
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from s3server import FaultProxy, storage_options_for

from dist_al.campaign.labels import load_label_records
from dist_al.campaign.lock import WorkdirLock, WorkdirLocked
from dist_al.campaign.rounds import advance, ingest
from dist_al.config import validate
from dist_al.data.storage import write_bytes_atomic
from dist_al.data.synthetic import gaussian_mixture
from dist_al.data.writer import write_pool
from dist_al.models.build import read_weights

pytestmark = [pytest.mark.subprocess, pytest.mark.usefixtures("drivers_join_shared_head")]

BUDGET = 10
ROWS = 400
LOCKED = re.compile(
    r"^dist-al: workdir \S+ is locked by [^/\s]+/\d+ \(round\) since [\d\- :]+ \(expires in \d+ s\); "
    r"another dist-al is running$"
)
TEMP = re.compile(r"^\..+\.tmp-[0-9a-f]{32}$")


def make_pool(uri: str, storage_options: dict | None = None) -> dict:
    feats, labels = gaussian_mixture(ROWS, 4, 8, seed=3)
    ids = np.arange(1000, 1000 + ROWS)
    write_pool(
        uri, ids, feats.numpy(), labels.numpy(), rows_per_file=200, rows_per_group=100, storage_options=storage_options
    )
    return dict(zip(ids.tolist(), labels.tolist()))


def config(pool: str, workdir: str, storage_options: dict | None = None, backend: str = "local") -> dict:
    return {
        "pool": {"uri": pool, "label_column": "label", "storage_options": storage_options or {}},
        "model": {"kwargs": {"in_dim": 8, "n_classes": 4, "hidden": 16}},
        "selection": {"strategy": "badge", "budget": BUDGET, "seed": 1},
        "cluster": {"workers": 1},  # one shard worker: faults, not sharding, are under test
        "train": {"epochs": 5, "workers": 2, "lr": 0.01, "backend": backend, "seed": 0},
        "workdir": workdir,
    }


def write_config(tmp_path: Path, cfg: dict, name: str = "cfg.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def cli(*args, crash_at: str | None = None, popen: bool = False):
    env = {k: v for k, v in os.environ.items() if k != "DIST_AL_CRASH_AT"}
    if crash_at:
        env["DIST_AL_CRASH_AT"] = crash_at
    cmd = [sys.executable, "-m", "dist_al.cli", *args]
    if popen:
        return subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True
        )
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


def labels_csv(tmp_path: Path, ids, truth) -> str:
    path = tmp_path / "labels.csv"
    path.write_text("id,label\n" + "".join(f"{i},{truth[i]}\n" for i in ids))
    return str(path)


def read(uri: str, storage_options: dict | None = None) -> bytes:
    fs, path = fsspec.core.url_to_fs(uri, **(storage_options or {}))
    fs.invalidate_cache()
    return fs.cat_file(path)


def selection_ids(workdir: str, n: int = 1, storage_options: dict | None = None) -> list:
    return (
        pq.read_table(io.BytesIO(read(f"{workdir}/rounds/{n:04d}/selection.parquet", storage_options)))
        .column("id")
        .to_pylist()
    )


def outcome(workdir: str) -> dict:
    """What must agree with an uninterrupted run: selections, states, label records, the model; no leftovers."""
    root = Path(workdir)
    files = [p for p in root.rglob("*") if p.is_file()]
    records = sorted((root / "labels").glob("*.parquet"))
    rounds = sorted(p.name for p in (root / "rounds").iterdir())
    model = (
        read_weights(str(root / "rounds" / rounds[-1] / "model.pt"))
        if (root / "rounds" / rounds[-1] / "model.pt").exists()
        else None
    )
    return {
        "selections": {n: selection_ids(workdir, int(n)) for n in rounds},
        "states": {n: json.loads((root / "rounds" / n / "state.json").read_text())["state"] for n in rounds},
        "labels": sorted(load_label_records(str(root / "labels")).items()),
        "record_rows": sum(pq.read_metadata(p).num_rows for p in records),
        "exports": {n: sorted(p.name for p in (root / "rounds" / n / "export").iterdir()) for n in rounds},
        "leftovers": sorted(
            str(p.relative_to(root))
            for p in files
            if TEMP.match(p.name) or p.name == "lock.json" or "_ray_train" in str(p)
        ),
        "model": model,
    }


def same_model(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------------------ crashes


@pytest.mark.cluster
def test_sigkill_at_every_step_resumes_to_the_uninterrupted_result(tmp_path, ray_local):
    truth = make_pool(str(tmp_path / "pool"))

    # the uninterrupted run (in this process, on the module's Ray)
    ref_cfg = validate(config(str(tmp_path / "pool"), str(tmp_path / "ref")))
    assert advance(ref_cfg) == f"round 1: waiting for labels, 0/{BUDGET} received"
    ref_ids = selection_ids(str(tmp_path / "ref"))
    labels = labels_csv(tmp_path, ref_ids, truth)
    assert ingest(ref_cfg, labels).startswith(f"{BUDGET} labels accepted")
    assert advance(ref_cfg).startswith(f"round 1: trained on {BUDGET} labeled rows")
    expected = outcome(str(tmp_path / "ref"))

    work = tmp_path / "work"
    args = ("--config", write_config(tmp_path, config(str(tmp_path / "pool"), str(work))))
    r1 = work / "rounds" / "0001"

    # 1. killed after the selection is written, before its state
    out = cli("round", *args, "--no-progress", crash_at="select.after_write")
    assert out.returncode == -signal.SIGKILL, out.stderr
    assert (r1 / "selection.parquet").exists() and not (r1 / "state.json").exists()
    assert (work / "lock.json").exists()  # the dead holder's lock stays behind
    assert selection_ids(str(work)) == ref_ids

    # 2. resumes (takes over the dead pid's lock at once), selects again, killed after one export file
    out = cli("round", *args, "--no-progress", crash_at="export.after_first_file")
    assert out.returncode == -signal.SIGKILL, out.stderr
    assert json.loads((r1 / "state.json").read_text())["state"] == "SELECTED"
    assert sorted(p.name for p in (r1 / "export").iterdir()) == ["selection.csv"]

    # 3. resumes: the export completes
    out = cli("round", *args, "--no-progress")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"round 1: waiting for labels, 0/{BUDGET} received"
    assert "took over the stale lock" in out.stderr

    # 4. ingest killed while the label record's temp file is written, before its rename
    out = cli("ingest", *args, labels, crash_at="write.before_rename:/labels/")
    assert out.returncode == -signal.SIGKILL, out.stderr
    assert [p.name for p in (work / "labels").iterdir() if TEMP.match(p.name)]
    assert load_label_records(str(work / "labels")) == {}  # half-written records are never read

    # 5. ingest again: all labels land once; a third ingest adds nothing
    out = cli("ingest", *args, labels)
    assert out.returncode == 0 and out.stdout.startswith(f"{BUDGET} labels accepted"), out.stderr
    out = cli("ingest", *args, labels)
    assert out.returncode == 0 and out.stdout.startswith("0 labels accepted"), out.stderr

    # 6. killed while the trained checkpoint is being written
    out = cli("round", *args, "--no-progress", crash_at="write.before_rename:model.pt")
    assert out.returncode == -signal.SIGKILL, out.stderr
    assert json.loads((r1 / "state.json").read_text())["state"] == "LABELED"
    assert not (r1 / "model.pt").exists() and [p for p in r1.iterdir() if TEMP.match(p.name)]

    # 7. resumes: trains
    out = cli("round", *args, "--no-progress")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"round 1: trained on {BUDGET} labeled rows")

    got = outcome(str(work))
    assert got.pop("leftovers") == expected.pop("leftovers") == []
    assert same_model(got.pop("model"), expected.pop("model"))
    assert got == expected
    assert got["record_rows"] == BUDGET  # not a label lost or duplicated


@pytest.mark.cluster
def test_driver_killed_while_ray_train_runs_resumes(tmp_path, ray_local):
    truth = make_pool(str(tmp_path / "pool"))
    cfg = config(str(tmp_path / "pool"), str(tmp_path / "work"), backend="ray")
    args = ("--config", write_config(tmp_path, cfg))
    valid = validate(cfg)
    advance(valid)
    ingest(valid, labels_csv(tmp_path, selection_ids(valid.workdir), truth))
    run_dir = tmp_path / "work" / "rounds" / "0001" / "_ray_train"

    proc = cli("round", *args, "--no-progress", popen=True)
    deadline = time.monotonic() + 240
    while not (run_dir.exists() and any(run_dir.rglob("*"))) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started, as a node loss would
    proc.communicate()
    assert json.loads((tmp_path / "work" / "rounds" / "0001" / "state.json").read_text())["state"] == "LABELED"
    assert run_dir.exists() and not (run_dir.parent / "model.pt").exists()

    out = cli("round", *args, "--no-progress")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"round 1: trained on {BUDGET} labeled rows")
    assert json.loads((run_dir.parent / "metrics.json").read_text())["workers"] == 2
    got = outcome(str(tmp_path / "work"))
    assert got["leftovers"] == [] and got["states"] == {"0001": "TRAINED"} and got["record_rows"] == BUDGET


# -------------------------------------------------------------------------------------- concurrency


def race(args) -> tuple:
    procs = [cli("round", *args, "--no-progress", "--log-level", "INFO", popen=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    return [(p.returncode, o, e) for p, (o, e) in zip(procs, outs)]


def check_race(results) -> None:
    winners = [r for r in results if r[0] == 0]
    losers = [r for r in results if r[0] == 75]
    assert len(winners) == 1 and len(losers) == 1, results
    assert winners[0][1].strip() == f"round 1: waiting for labels, 0/{BUDGET} received"
    assert sum("round 1: selected" in e for _, _, e in results) == 1
    loser_lines = losers[0][2].strip().splitlines()
    assert len(loser_lines) == 1 and LOCKED.match(loser_lines[0]), loser_lines


def test_two_rounds_at_once_on_local_disk(tmp_path):
    make_pool(str(tmp_path / "pool"))
    work = tmp_path / "work"
    check_race(race(("--config", write_config(tmp_path, config(str(tmp_path / "pool"), str(work))))))
    assert sorted(p.name for p in (work / "rounds").iterdir()) == ["0001"]
    assert not (work / "lock.json").exists()


def test_two_rounds_at_once_on_s3(tmp_path, s3_bucket, s3_storage_options):
    make_pool(f"s3://{s3_bucket}/pool", s3_storage_options)
    work = f"s3://{s3_bucket}/work"
    check_race(race(("--config", write_config(tmp_path, config(f"s3://{s3_bucket}/pool", work, s3_storage_options)))))
    fs, _ = fsspec.core.url_to_fs(work, **s3_storage_options)
    fs.invalidate_cache()
    assert fs.ls(f"{s3_bucket}/work/rounds", detail=False) == [f"{s3_bucket}/work/rounds/0001"]
    assert not fs.exists(f"{s3_bucket}/work/lock.json")


def _foreign_lock(workdir: str, expires_in: float, storage_options=None) -> None:
    now = time.time()
    write_bytes_atomic(
        f"{workdir}/lock.json",
        json.dumps(
            {
                "host": "another-host",
                "pid": 4242,
                "token": "f" * 32,
                "command": "round",
                "acquired_at": now - 600,
                "expires_at": now + expires_in,
            }
        ).encode(),
        storage_options,
    )


@pytest.mark.parametrize("where", ["local", "s3"])
def test_lock_lease_expiry_heartbeat_and_release(tmp_path, where, request):
    if where == "s3":
        bucket, options = request.getfixturevalue("s3_bucket"), request.getfixturevalue("s3_storage_options")
        workdir = f"s3://{bucket}/work"
    else:
        options, workdir = {}, str(tmp_path / "work")
    _foreign_lock(workdir, expires_in=60, storage_options=options)
    with pytest.raises(WorkdirLocked, match=r"locked by another-host/4242 \(round\) .* \(expires in 5\d s\)"):
        WorkdirLock(workdir, options, command="round").acquire()

    _foreign_lock(workdir, expires_in=-1, storage_options=options)  # its holder stopped refreshing
    stale = json.loads(read(f"{workdir}/lock.json", options))
    lock = WorkdirLock(workdir, options, command="round", ttl=1.0).acquire()
    assert not WorkdirLock(workdir, options)._take_over(stale)  # a second taker of the same stale lock loses
    first = json.loads(read(f"{workdir}/lock.json", options))
    assert first["token"] == lock.token and first["host"] == socket.gethostname() and first["pid"] == os.getpid()
    with pytest.raises(WorkdirLocked):
        WorkdirLock(workdir, options, command="round").acquire()  # a live holder blocks even on its own host
    time.sleep(1.0)  # the heartbeat refreshes every ttl/4
    later = json.loads(read(f"{workdir}/lock.json", options))
    assert later["token"] == lock.token and later["expires_at"] > first["expires_at"]
    assert later["acquired_at"] == first["acquired_at"]
    lock.release()
    with pytest.raises(FileNotFoundError):
        read(f"{workdir}/lock.json", options)


def test_status_does_not_take_the_lock_but_ingest_does(tmp_path):
    truth = make_pool(str(tmp_path / "pool"))
    work = str(tmp_path / "work")
    args = ("--config", write_config(tmp_path, config(str(tmp_path / "pool"), work)))
    os.makedirs(work)
    _foreign_lock(work, expires_in=60)
    assert cli("status", *args).returncode == 0
    out = cli("ingest", *args, labels_csv(tmp_path, list(truth)[:3], truth))
    assert out.returncode == 75 and "another dist-al is running" in out.stderr
    assert not (tmp_path / "work" / "labels").exists()


# ------------------------------------------------------------------------------------ flaky store


@pytest.fixture
def flaky_s3(s3_server, s3_bucket):
    """(proxy, storage_options through it, bucket). botocore's own retries are off
    (total_max_attempts=1) so each fault reaches s3fs (5 tries) and then our layer."""
    proxy = FaultProxy(s3_server)
    options = dict(storage_options_for(proxy.url), config_kwargs={"retries": {"total_max_attempts": 1}})
    try:
        yield proxy, options, s3_bucket
    finally:
        proxy.stop()


def test_default_client_retries_absorb_a_few_faults(flaky_s3, caplog):
    proxy, options, bucket = flaky_s3
    default = storage_options_for(proxy.url)  # botocore's default retries on
    put = proxy.add("PUT", f"/{bucket}/x", "503", times=3)
    get = proxy.add("GET", f"/{bucket}/x", "reset", times=3)
    with caplog.at_level(logging.WARNING, logger="dist_al"):
        write_bytes_atomic(f"s3://{bucket}/x", b"payload", default)
        assert read(f"s3://{bucket}/x", default) == b"payload"
    assert put["hits"] == 3 and get["hits"] == 3
    assert not caplog.records  # botocore/s3fs retried; ours was not needed


def test_transient_store_faults_are_retried_and_a_persistent_one_changes_nothing(tmp_path, flaky_s3):
    proxy, options, bucket = flaky_s3
    truth = make_pool(f"s3://{bucket}/pool", options)
    work = f"s3://{bucket}/work"
    args = ("--config", write_config(tmp_path, config(f"s3://{bucket}/pool", work, options)))

    # s3fs tries a SlowDown 5 times, botocore's retries are off: 6 SlowDowns reach our layer; a reset is
    # tried once or twice below us (aiohttp retries one on a reused connection), so 2 resets may reach it
    faults = [
        proxy.add("PUT", f"/{bucket}/work/rounds/0001/selection.parquet", "503", times=6),
        proxy.add("GET", f"/{bucket}/work/rounds/0001/selection.parquet", "reset", times=2),
        proxy.add("PUT", f"/{bucket}/work/lock.json", "reset", times=2),
    ]
    out = cli("round", *args, "--no-progress")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"round 1: waiting for labels, 0/{BUDGET} received"
    assert [f["hits"] for f in faults] == [6, 2, 2]
    warnings = [line for line in out.stderr.splitlines() if line.startswith("WARNING dist_al.data.storage")]
    assert all(re.search(r"; retry [12] of 2 in [\d.]+ s$", w) for w in warnings), out.stderr
    assert sum("writing" in w and "selection.parquet" in w and "reduce your request rate" in w for w in warnings) == 1
    assert 1 <= sum("reading" in w and "selection.parquet" in w and "EndpointConnectionError" in w for w in warnings)
    assert 1 <= sum("creating" in w and "lock.json" in w for w in warnings)
    assert "Traceback" not in out.stderr

    fs, _ = fsspec.core.url_to_fs(work, **options)
    fs.invalidate_cache()
    before = {p: fs.cat_file(p) for p in fs.find(f"{bucket}/work")}
    assert not any(p.endswith("lock.json") for p in before)

    # the store keeps failing label writes: one error line, the workdir exactly as it was
    proxy.add("PUT", f"/{bucket}/work/labels/", "503", times=None)
    labels = labels_csv(tmp_path, selection_ids(work, 1, options), truth)
    out = cli("ingest", *args, labels)
    assert out.returncode == 1
    last = out.stderr.strip().splitlines()[-1]
    assert re.match(
        rf"dist-al: error: writing s3://{bucket}/work/labels/\S+\.parquet failed 3 times in [\d.]+ s, "
        r"giving up \(.*\); the workdir was left as it was$",
        last,
    ), out.stderr
    assert "Traceback" not in out.stderr
    fs.invalidate_cache()
    assert {p: fs.cat_file(p) for p in fs.find(f"{bucket}/work")} == before

    proxy.clear()  # the store is back: the same file lands once
    out = cli("ingest", *args, labels)
    assert out.returncode == 0 and out.stdout.startswith(f"{BUDGET} labels accepted"), out.stderr
    assert len(load_label_records(f"{work}/labels", options)) == BUDGET
