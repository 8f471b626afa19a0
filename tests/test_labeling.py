"""Rounds driven against a real Label Studio server (tests/lsserver.py): tasks carry what annotators see, each
tick pushes once and pulls what they finished, and every failure of the server is one line that changes nothing.

Annotations are posted through Label Studio's API as its web app posts them. A round is made "selected" by hand
(``selected_round``) where selection is not what is under test; the full rounds select with Ray and train.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from lsserver import free_port
from s3server import FaultProxy

from dist_al.campaign.labels import load_label_records
from dist_al.campaign.rounds import SELECTED_ROWS, advance, status_table
from dist_al.campaign.workdir import open_workdir
from dist_al.config import validate
from dist_al.data.pool import find_ids, read_rows, rows_table
from dist_al.data.storage import write_table_atomic
from dist_al.data.synthetic import gaussian_mixture
from dist_al.inputs.contract import open_inputs
from dist_al.models.build import build_model

pytestmark = pytest.mark.labelstudio

CLASSES = ["cat", "dog", "bird", "fish"]
DIM = 6
ROWS = 60
PNG = b"\x89PNG\r\n\x1a\n"


def image_bytes(i: int) -> bytes:
    return PNG + f"image of row {i}".encode() + bytes(range(8))


def write_pool(path: Path, *, text: bool = False, image_uris: dict | None = None, storage_options=None) -> dict:
    """A vector pool (the model eats the features) with what annotators see next to it: image bytes or image
    URIs, or a text, and a context column. Returns the hidden truth, id -> class."""
    feats, labels = gaussian_mixture(ROWS, len(CLASSES), DIM, seed=2)
    ids = list(range(100, 100 + ROWS))
    columns = {
        "id": pa.array(ids, pa.int64()),
        "features": pa.FixedSizeListArray.from_arrays(pa.array(feats.numpy().reshape(-1)), DIM),
        "label": pa.array(labels.numpy(), pa.int64()),
        "source": pa.array([f"camera {i % 3}" for i in ids]),
    }
    if text:
        columns["body"] = pa.array([f"text of row {i}: a {CLASSES[c]}" for i, c in zip(ids, labels.tolist())])
    elif image_uris is not None:
        columns["image_uri"] = pa.array([image_uris[i] for i in ids])
    else:
        columns["image"] = pa.array([image_bytes(i) for i in ids], pa.binary())
    write_table_atomic(f"{path}/part-0.parquet", pa.table(columns), storage_options, row_group_size=25)
    return dict(zip(ids, labels.tolist()))


def config(pool: str, workdir: str, server, project: str, **labeling) -> dict:
    return {
        "pool": {"uri": pool, "label_column": "label"},
        "model": {"kwargs": {"in_dim": DIM, "n_classes": len(CLASSES), "hidden": 8}},
        "selection": {"strategy": "random", "budget": 10, "seed": 3},
        "cluster": {"workers": 1},
        "train": {"epochs": 3, "backend": "local", "seed": 0},
        "labeling": {
            "backend": "label-studio",
            "url": server.url,
            "project": project,
            "classes": CLASSES,
            "local_files_root": str(server.files_root),
            "image": "image",
            **labeling,
        },
        "workdir": workdir,
    }


def selected_round(cfg, ids: list, checkpoint: str | None = None) -> None:
    """Round 1 as selection leaves it (the selection, the selected rows and their places, state SELECTED)."""
    wd = open_workdir(cfg)
    pool, reader = open_inputs(cfg.pool, cfg.inputs)
    found, places = find_ids(pool, np.asarray(ids))
    at = {i: k for k, i in enumerate(found.tolist())}
    places = places[[at[i] for i in ids]]
    rows = rows_table(pool, ids, places, read_rows(pool, places, reader.columns))  # as the ShardWorkers record them
    write_table_atomic(wd.round_path(1, SELECTED_ROWS), rows, wd.storage_options)
    selection = pa.table({"id": pa.array(ids, pa.int64()), "rank": pa.array(range(1, len(ids) + 1), pa.int64())})
    write_table_atomic(wd.round_path(1, "selection.parquet"), selection, wd.storage_options)
    wd.set_state(1, "SELECTED", strategy="random", budget=len(ids), checkpoint=checkpoint, selected_at=time.time())


@pytest.fixture
def api_key(label_studio, monkeypatch):
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", label_studio.token)
    return label_studio.token


@pytest.fixture
def files(label_studio, request):
    """A fresh directory Label Studio can serve files from (under its LOCAL_FILES_DOCUMENT_ROOT)."""
    path = label_studio.files_root / re.sub(r"\W", "-", request.node.name)
    path.mkdir()
    return path


def project_named(server, title: str) -> dict:
    found = [p for p in server.api("GET", "/api/projects/?page_size=1000")["results"] if p["title"] == title]
    assert len(found) == 1, found
    return found[0]


def snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def cli(*args, env_update: dict | None = None, crash_at: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "DIST_AL_CRASH_AT"}
    env.update(env_update or {})
    if crash_at:
        env["DIST_AL_CRASH_AT"] = crash_at
    return subprocess.run(
        [sys.executable, "-m", "dist_al.cli", *args], capture_output=True, text=True, env=env, timeout=300
    )


def write_config(tmp: Path, cfg: dict) -> str:
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def one_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    return lines[0]


# ------------------------------------------------------------------------------------------- full rounds


@pytest.mark.slow
def test_full_round_on_an_image_pool_shows_each_image_and_trains(label_studio, api_key, files, ray_local):
    truth = write_pool(files / "pool")
    cfg = validate(
        config(str(files / "pool"), str(files / "work"), label_studio, "images full round", context=["source"])
    )
    line = advance(cfg)  # select, export, push, first pull
    assert (
        line
        == "round 1: waiting for labels, 0/10 received; Label Studio: 0/10 annotated, 0 skipped; 0 new labels accepted"
    )
    project = project_named(label_studio, "images full round")
    assert "<Image" in project["label_config"] and "<Table" in project["label_config"]
    tasks = label_studio.tasks(project["id"])
    assert sorted(t["data"]["id"] for t in tasks) == sorted(
        pq.read_table(files / "work/rounds/0001/selection.parquet").column("id").to_pylist()
    )
    for task in tasks:  # the link Label Studio shows is the row's image, served from the workdir's media
        link = task["data"]["image"]
        assert link.startswith("/data/local-files/?d=")
        assert label_studio.fetch(link) == image_bytes(task["data"]["id"])
        assert task["data"]["context"] == {"source": f"camera {task['data']['id'] % 3}"}
    media = sorted((files / "work/rounds/0001/export/media").iterdir())
    assert len(media) == 10 and all(p.suffix == ".png" for p in media)
    exported = json.loads((files / "work/rounds/0001/export/label_studio_tasks.json").read_text())
    assert all(t["data"]["image"].startswith(str(files / "work/rounds/0001/export/media/")) for t in exported)

    for task in tasks[:6]:
        label_studio.annotate(task["id"], CLASSES[truth[task["data"]["id"]]], to_name="image")
    assert advance(cfg).startswith("round 1: waiting for labels, 6/10 received; Label Studio: 6/10 annotated")
    for task in tasks[6:]:
        label_studio.annotate(task["id"], CLASSES[truth[task["data"]["id"]]], to_name="image")
    line = advance(cfg)  # the rest pulled: LABELED, then trained
    assert line.startswith("round 1: trained on 10 labeled rows"), line
    assert load_label_records(str(files / "work/labels")) == {t["data"]["id"]: truth[t["data"]["id"]] for t in tasks}
    assert "| 1 | TRAINED | random | 10 | 10 | 10 | 0 | 10 | 0 | 10 |" in status_table(cfg)
    assert len(label_studio.tasks(project["id"])) == 10  # three ticks, one push


@pytest.mark.slow
def test_full_round_on_a_text_pool_with_predictions(label_studio, api_key, files, ray_local):
    truth = write_pool(files / "pool", text=True)
    raw = config(
        str(files / "pool"),
        str(files / "work"),
        label_studio,
        "texts full round",
        predictions=True,
        image=None,
        text="body",
    )
    torch.save(build_model(validate(raw).model, seed=5).state_dict(), files / "given.pt")
    raw["model"]["checkpoint"] = str(files / "given.pt")
    cfg = validate(raw)
    advance(cfg)
    project = project_named(label_studio, "texts full round")
    assert '<Text name="text"' in project["label_config"]
    tasks = label_studio.tasks(project["id"])
    assert len(tasks) == 10
    for task in tasks:
        assert task["data"]["text"].startswith(f"text of row {task['data']['id']}:")
        (proposal,) = task["predictions"]
        assert proposal["result"][0]["value"]["choices"][0] in CLASSES and 0 < proposal["score"] <= 1
    proposed = {t["data"]["id"]: t["predictions"][0]["result"][0]["value"]["choices"][0] for t in tasks}
    for task in tasks[:4]:  # accepted as proposed
        label_studio.annotate(task["id"], proposed[task["data"]["id"]], to_name="text")
    for task in tasks[4:]:
        label_studio.annotate(task["id"], CLASSES[truth[task["data"]["id"]]], to_name="text")
    line = advance(cfg)
    assert line.startswith("round 1: trained on 10 labeled rows"), line
    records = pa.concat_tables([pq.read_table(p) for p in sorted((files / "work/labels").glob("*.parquet"))])
    kept = {
        i for i, label, p in zip(*(records.column(c).to_pylist() for c in ("id", "label", "predicted"))) if label == p
    }
    assert {t["data"]["id"] for t in tasks[:4]} <= kept  # which labels were accepted as the model proposed them


# ------------------------------------------------------------------------------------------------- push


def test_push_survives_a_crash_before_and_after_each_send_without_a_duplicate(label_studio, api_key, files):
    write_pool(files / "pool")
    raw = config(str(files / "pool"), str(files / "work"), label_studio, "crash mid-push", push_batch=3)
    cfg = validate(raw)
    ids = list(range(120, 130))
    selected_round(cfg, ids)
    args = ("export", "--config", write_config(files, raw))
    record = files / "work/rounds/0001/label_studio.json"

    out = cli(*args, crash_at="labelstudio.after_send")  # the first batch made, not recorded
    assert out.returncode == -signal.SIGKILL, out.stderr
    assert json.loads(record.read_text())["sending"] == ids[:3] and json.loads(record.read_text())["tasks"] == []
    project = project_named(label_studio, "crash mid-push")
    assert len(label_studio.tasks(project["id"])) == 3

    out = cli(*args, crash_at="labelstudio.before_send")  # adopts batch 1, records batch 2 as sending, dies
    assert out.returncode == -signal.SIGKILL, out.stderr
    assert [i for i, _ in json.loads(record.read_text())["tasks"]] == ids[:3]
    assert len(label_studio.tasks(project["id"])) == 3

    out = cli(*args)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith(f"7 tasks pushed to Label Studio project {project['id']} ('crash mid-push')")
    tasks = label_studio.tasks(project["id"])
    assert sorted(t["data"]["id"] for t in tasks) == ids  # each row once
    assert sorted(map(tuple, json.loads(record.read_text())["tasks"])) == sorted(
        (t["data"]["id"], t["id"]) for t in tasks
    )

    for _ in range(2):  # more ticks: nothing new
        assert cli("round", "--config", args[2]).returncode == 0
    assert len(label_studio.tasks(project["id"])) == 10


def test_a_lost_answer_to_an_import_is_resumed_without_a_duplicate(label_studio, api_key, files):
    write_pool(files / "pool")
    proxy = FaultProxy(label_studio.url)
    try:
        raw = config(str(files / "pool"), str(files / "work"), label_studio, "lost import reply", push_batch=4)
        raw["labeling"]["url"] = proxy.url
        cfg = validate(raw)
        selected_round(cfg, list(range(130, 140)))
        rule = proxy.add("POST", r"/import", "lost-reply", times=1)  # carried out, then the connection drops
        out = cli("round", "--config", write_config(files, raw))
        assert out.returncode == 1 and rule["hits"] == 1, out.stderr
        assert re.fullmatch(
            r"dist-al: error: Label Studio at http://127\.0\.0\.1:\d+ is not reachable .*"
            r"importing 4 tasks into project \d+\); the next tick carries on",
            one_line(out.stderr),
        ), out.stderr
        project = project_named(label_studio, "lost import reply")
        assert len(label_studio.tasks(project["id"])) == 4
        out = cli("round", "--config", write_config(files, raw))
        assert out.returncode == 0, out.stderr
        assert sorted(t["data"]["id"] for t in label_studio.tasks(project["id"])) == list(range(130, 140))
    finally:
        proxy.stop()


# ------------------------------------------------------------------------------------------------- pull


def test_pull_reports_a_changed_annotation_and_skipped_tasks(label_studio, api_key, files):
    truth = write_pool(files / "pool")
    cfg = validate(config(str(files / "pool"), str(files / "work"), label_studio, "pull policy"))
    ids = list(range(140, 150))
    selected_round(cfg, ids)
    advance(cfg)
    project = project_named(label_studio, "pull policy")
    by_id = {t["data"]["id"]: t for t in label_studio.tasks(project["id"])}
    first = label_studio.annotate(by_id[140]["id"], CLASSES[truth[140]], to_name="image")
    label_studio.annotate(by_id[141]["id"], None, to_name="image", cancelled=True)  # skipped
    label_studio.annotate(by_id[142]["id"], None, to_name="image", cancelled=True)  # skipped, then labeled
    label_studio.annotate(by_id[142]["id"], CLASSES[truth[142]], to_name="image")
    line = advance(cfg)
    assert (
        line
        == "round 1: waiting for labels, 2/10 received; Label Studio: 2/10 annotated, 1 skipped; 2 new labels accepted"
    )
    records = snapshot(files / "work/labels")

    other = CLASSES[(truth[140] + 1) % len(CLASSES)]
    label_studio.update_annotation(first["id"], other, to_name="image")  # changed after it was ingested
    line = advance(cfg)
    assert line == (
        "round 1: waiting for labels, 2/10 received; Label Studio: 2/10 annotated, 1 skipped; 0 new labels accepted; "
        f"rejected: 1 conflict with an earlier label (id 140: {(truth[140] + 1) % len(CLASSES)}, recorded {truth[140]})"
    )
    assert snapshot(files / "work/labels") == records  # the record is never rewritten
    assert "| 1 | EXPORTED | random | 10 | 10 | 2 | 1 | 2 | 1 |" in status_table(cfg)


def test_min_fraction_after_max_wait_ends_the_round(label_studio, api_key, files):
    truth = write_pool(files / "pool")
    cfg = validate(
        config(
            str(files / "pool"), str(files / "work"), label_studio, "min fraction", min_fraction=0.5, max_wait_s=3600
        )
    )
    selected_round(cfg, list(range(150, 160)))
    advance(cfg)
    tasks = label_studio.tasks(project_named(label_studio, "min fraction")["id"])
    for task in tasks[:5]:
        label_studio.annotate(task["id"], CLASSES[truth[task["data"]["id"]]], to_name="image")
    assert advance(cfg).startswith("round 1: waiting for labels, 5/10 received")  # half, but the wait is not over
    wd = open_workdir(cfg)
    wd.set_state(1, "EXPORTED", exported_at=time.time() - 3601)
    line = advance(cfg.replace(train={"epochs": 1}))
    assert line.startswith("round 1: trained on 5 labeled rows"), line


# ---------------------------------------------------------------------------------------------- failures


def test_every_server_failure_is_one_line_and_changes_nothing(label_studio, api_key, files):
    truth = write_pool(files / "pool")
    raw = config(str(files / "pool"), str(files / "work"), label_studio, "failures", timeout_s=2)
    cfg = validate(raw)
    selected_round(cfg, list(range(100, 110)))
    path = write_config(files, raw)
    assert cli("round", "--config", path).returncode == 0
    project = project_named(label_studio, "failures")
    tasks = label_studio.tasks(project["id"])
    label_studio.annotate(tasks[0]["id"], CLASSES[truth[tasks[0]["data"]["id"]]], to_name="image")
    work = files / "work"
    before = snapshot(work)
    url = re.escape(label_studio.url)

    def tick(expect: int, pattern: str, **env) -> None:
        out = cli("round", "--config", path, env_update=env)
        assert out.returncode == expect, out.stderr
        assert re.fullmatch(pattern, one_line(out.stderr)), out.stderr
        print("OBSERVED", one_line(out.stderr))
        assert snapshot(work) == before

    with label_studio.paused():  # slow: accepts, never answers
        tick(
            1,
            rf"dist-al: error: Label Studio at {url} did not answer within 2 s \(labeling\.timeout_s\) "
            r"\(reading project \d+\); the next tick carries on",
        )
    tick(
        2,
        rf"dist-al: error: Label Studio at {url} refused the API key in LABEL_STUDIO_API_KEY "
        r"\(401: Invalid token\.\) while reading project \d+; set a valid access token",
        LABEL_STUDIO_API_KEY="0" * 40,
    )
    tick(
        2,
        r"dist-al: error: labeling\.backend is label-studio but LABEL_STUDIO_API_KEY is not set: .*",
        LABEL_STUDIO_API_KEY="",
    )
    down_path = files / "down.yaml"
    down_path.write_text(
        yaml.safe_dump({**raw, "labeling": {**raw["labeling"], "url": f"http://127.0.0.1:{free_port()}"}})
    )
    out = cli("round", "--config", str(down_path))
    assert out.returncode == 1 and "is not reachable (connection refused)" in one_line(out.stderr), out.stderr
    assert snapshot(work) == before

    proxy = FaultProxy(label_studio.url)
    try:
        proxy.add("GET", r"/api/tasks", "503", times=None)
        via_proxy = files / "proxy.yaml"
        via_proxy.write_text(yaml.safe_dump({**raw, "labeling": {**raw["labeling"], "url": proxy.url}}))
        out = cli("round", "--config", str(via_proxy))
        assert out.returncode == 1 and re.search(r"answered 503 while reading the tasks of project \d+", out.stderr)
        assert snapshot(work) == before
    finally:
        proxy.stop()

    label_studio.api("DELETE", f"/api/tasks/{tasks[5]['id']}/")
    tick(
        2,
        rf"dist-al: error: round 1: 1 of its 10 Label Studio tasks are gone from project {project['id']} "
        rf"\(e\.g\. task {tasks[5]['id']} for id {tasks[5]['data']['id']}\); dist-al never makes a task twice .*",
    )
    label_studio.api("DELETE", f"/api/projects/{project['id']}/")
    tick(
        2,
        rf"dist-al: error: Label Studio project {project['id']} \('failures'\) at {url}, where this round's 10 "
        r"tasks were pushed, is gone \(deleted\?\); nothing was changed: to push the round again, .*",
    )

    raw["labeling"]["project"] = "failures, second project"  # the next tick carries on, in a new project
    out = cli("round", "--config", write_config(files, raw))
    assert out.returncode == 0, out.stderr
    assert len(label_studio.tasks(project_named(label_studio, "failures, second project")["id"])) == 10


def test_a_personal_access_token_works_as_the_api_key(label_studio, files, monkeypatch):
    write_pool(files / "pool")
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", label_studio.personal_access_token())
    cfg = validate(config(str(files / "pool"), str(files / "work"), label_studio, "personal token"))
    selected_round(cfg, list(range(100, 105)))
    assert advance(cfg).startswith("round 1: waiting for labels, 0/5 received")
    assert len(label_studio.tasks(project_named(label_studio, "personal token")["id"])) == 5


def test_object_store_images_are_presigned_for_label_studio_and_never_in_the_workdir(
    label_studio, api_key, s3_bucket, s3_storage_options
):
    import fsspec

    fs = fsspec.filesystem("s3", **s3_storage_options)
    uris = {}
    for i in range(100, 100 + ROWS):
        fs.pipe_file(f"{s3_bucket}/pool/images/{i}.png", image_bytes(i))
        # half absolute, half relative to the pool's directory
        uris[i] = f"s3://{s3_bucket}/pool/images/{i}.png" if i % 2 else f"images/{i}.png"
    write_pool(f"s3://{s3_bucket}/pool", image_uris=uris, storage_options=s3_storage_options)
    pool = f"s3://{s3_bucket}/pool/part-0.parquet"  # images next to it: relative paths are relative to its folder
    raw = config(pool, f"s3://{s3_bucket}/work", label_studio, "presigned", image="image_uri")
    raw["pool"]["storage_options"] = s3_storage_options
    cfg = validate(raw)
    selected_round(cfg, list(range(100, 106)))
    advance(cfg)
    tasks = label_studio.tasks(project_named(label_studio, "presigned")["id"])
    assert len(tasks) == 6
    for task in tasks:  # a link any browser can open, for a week
        link = task["data"]["image"]
        assert link.startswith(s3_storage_options["endpoint_url"]) and "X-Amz-Signature=" in link
        assert "X-Amz-Expires=604800" in link and label_studio.fetch(link) == image_bytes(task["data"]["id"])
    exported = json.loads(fs.cat_file(f"{s3_bucket}/work/rounds/0001/export/label_studio_tasks.json"))
    assert {t["data"]["id"]: t["data"]["image"] for t in exported} == {
        i: f"s3://{s3_bucket}/pool/images/{i}.png" for i in range(100, 106)
    }
    fs.invalidate_cache()
    assert not [p for p in fs.find(f"{s3_bucket}/work") if b"X-Amz-" in fs.cat_file(p)]  # no signature in a file

    unsigned = cfg.replace(labeling={"presign_expiry_s": None, "project": "unsigned"}, workdir=f"s3://{s3_bucket}/w2")
    selected_round(unsigned, list(range(100, 103)))
    advance(unsigned)  # for Label Studio's own cloud storage connection to resolve
    tasks = label_studio.tasks(project_named(label_studio, "unsigned")["id"])
    assert sorted(t["data"]["image"] for t in tasks) == sorted(
        uris[i] if i % 2 else f"s3://{s3_bucket}/pool/{uris[i]}" for i in range(100, 103)
    )
