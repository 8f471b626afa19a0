"""Production rounds driven only by round / export / ingest / train over a workdir on S3 (moto)."""

from __future__ import annotations

import io
import json
import logging

import numpy as np
import pyarrow.parquet as pq
import pytest

from dist_al.campaign.rounds import (
    advance,
    export_step,
    ingest,
    status_table,
    train_step,
)
from dist_al.campaign.workdir import WorkdirError, open_workdir
from dist_al.config import validate
from dist_al.data.storage import filesystem, read_bytes
from dist_al.data.synthetic import gaussian_mixture
from dist_al.data.writer import write_pool
from dist_al.models.build import read_weights

pytestmark = [pytest.mark.cluster]

BUDGET = 20


@pytest.fixture
def campaign(s3_bucket, s3_storage_options, ray_local):
    options, bucket = s3_storage_options, s3_bucket
    feats, labels = gaussian_mixture(600, 4, 8, seed=5)
    ids = np.arange(5000, 5600)
    write_pool(
        f"s3://{bucket}/pool",
        ids,
        feats.numpy(),
        labels.numpy(),
        rows_per_file=200,
        rows_per_group=100,
        storage_options=options,
    )
    truth = dict(zip(ids.tolist(), labels.tolist()))
    cfg = validate(
        {
            "pool": {"uri": f"s3://{bucket}/pool", "label_column": "label", "storage_options": options},
            "model": {"kwargs": {"in_dim": 8, "n_classes": 4, "hidden": 16}},
            "selection": {"strategy": "badge", "budget": BUDGET, "seed": 1},
            "cluster": {"workers": 2},
            "train": {"epochs": 30, "workers": 2, "lr": 0.01},
            "eval": {"uri": f"s3://{bucket}/pool"},
            "workdir": f"s3://{bucket}/work",
        }
    )
    return cfg, truth, options


def snapshot(cfg) -> dict:
    fs, root = filesystem(cfg.workdir, cfg.pool.storage_options)
    fs.invalidate_cache()
    return {p: fs.cat_file(p) for p in sorted(fs.find(root))}


def selected_ids(cfg, n) -> list:
    data = read_bytes(f"{cfg.workdir}/rounds/{n:04d}/selection.parquet", cfg.pool.storage_options)
    return pq.read_table(io.BytesIO(data)).column("id").to_pylist()


def label_studio_export(ids, truth) -> str:
    """Shaped like Label Studio's JSON export: task ids are Label Studio's, the pool id is in data."""
    tasks = []
    for k, i in enumerate(ids):
        tasks.append(
            {
                "id": 900 + k,
                "data": {"id": i, "ref": f"pool#id={i}"},
                "annotations": [
                    {
                        "id": 70 + k,
                        "was_cancelled": False,
                        "created_at": "2026-11-21T10:00:00Z",
                        "updated_at": "2026-11-21T10:00:00Z",
                        "result": [
                            {
                                "from_name": "label",
                                "to_name": "ref",
                                "type": "choices",
                                "value": {"choices": [str(truth[i])]},
                            }
                        ],
                    }
                ],
            }
        )
    return json.dumps(tasks)


def put(cfg, name: str, text: str) -> str:
    uri = f"{cfg.workdir.rsplit('/', 1)[0]}/inbox/{name}"
    fs, path = filesystem(uri, cfg.pool.storage_options)
    fs.pipe_file(path, text.encode())
    return uri


def test_production_loop_is_idempotent_and_trains_with_ray_train(campaign, caplog):
    cfg, truth, _ = campaign
    caplog.set_level(logging.INFO, logger="dist_al")

    assert advance(cfg) == f"round 1: waiting for labels, 0/{BUDGET} received"
    before = snapshot(cfg)
    assert any(p.endswith("export/label_studio_tasks.json") for p in before)
    assert advance(cfg) == f"round 1: waiting for labels, 0/{BUDGET} received"
    assert export_step(cfg, open_workdir(cfg)) == "round 1: nothing to export (exported)"
    assert train_step(cfg, open_workdir(cfg)).startswith("round 1: not ready to train, waiting for labels, 0/")
    assert snapshot(cfg) == before  # re-running changes nothing

    ids = selected_ids(cfg, 1)
    recorded = f"{cfg.workdir}/rounds/0001/selected_rows.parquet"
    recorded_ids = pq.read_table(io.BytesIO(read_bytes(recorded, cfg.pool.storage_options))).column("id")
    assert recorded_ids.to_pylist() == ids  # the picked rows, recorded by the ShardWorkers
    first = put(cfg, "batch1.json", label_studio_export(ids[:12], truth))
    assert ingest(cfg, first).startswith("12 labels accepted")
    assert not [r for r in caplog.records if "never selected" in r.getMessage()]  # selected ids: no pass
    after_first = snapshot(cfg)
    assert ingest(cfg, first).startswith("0 labels accepted")  # the same export again: all no-ops
    assert snapshot(cfg) == after_first
    assert advance(cfg) == f"round 1: waiting for labels, 12/{BUDGET} received"

    rest = ids[12:]
    csv = (
        "id,label\n"
        + "".join(f"{i},{truth[i]}\n" for i in rest)
        + "123456,1\n"
        + f"{ids[0]},{(truth[ids[0]] + 1) % 4}\n"
    )
    caplog.clear()
    summary = ingest(cfg, put(cfg, "batch2.csv", csv))
    assert summary.startswith(f"{len(rest)} labels accepted") and "unknown" in summary and "conflict" in summary
    never_selected = [r.getMessage() for r in caplog.records if "never selected" in r.getMessage()]
    assert [m.split(":")[0] for m in never_selected] == ["1 of 10 ids were never selected"]  # 123456, by its pass

    caplog.clear()
    line = advance(cfg)  # all labels in: LABELED, then Ray Train
    assert not [r for r in caplog.records if "no recorded row" in r.getMessage()]  # no pass over the pool
    assert line.startswith(f"round 1: trained on {BUDGET} labeled rows, eval accuracy")
    metrics = json.loads(snapshot(cfg)[next(p for p in snapshot(cfg) if p.endswith("0001/metrics.json"))])
    assert metrics["workers"] == 2 and metrics["train_rows"] == BUDGET
    model_uri = f"{cfg.workdir}/rounds/0001/model.pt"
    read_weights(model_uri, cfg.pool.storage_options)  # weights_only load works
    trained = snapshot(cfg)
    assert train_step(cfg, open_workdir(cfg)) == "round 1: nothing to train (trained)"
    assert export_step(cfg, open_workdir(cfg)) == "round 1: nothing to export (trained)"
    status_table(cfg)
    assert snapshot(cfg) == trained

    assert advance(cfg) == f"round 2: waiting for labels, 0/{BUDGET} received"
    state2 = json.loads(snapshot(cfg)[next(p for p in snapshot(cfg) if p.endswith("0002/state.json"))])
    assert state2["checkpoint"] == model_uri  # round 2 selected with round 1's model
    assert not set(selected_ids(cfg, 2)) & set(ids)
    table = status_table(cfg)
    # no Label Studio: nothing pushed, annotated or skipped; 20 accepted, 2 rejected (the unknown id, the conflict)
    assert "| 1 | TRAINED | badge | 20 |  |  |  | 20 | 2 | 20 |" in table
    assert "| 2 | EXPORTED | badge | 20 |  |  |  | 0 |  |  |  |" in table


def test_workdir_refuses_another_pool_or_model(campaign, tmp_path):
    cfg, _, options = campaign
    open_workdir(cfg)
    other = cfg.replace(model={"kwargs": {"in_dim": 8, "n_classes": 4, "hidden": 32}})
    with pytest.raises(WorkdirError, match="model.kwargs"):
        open_workdir(other)
    bucket = cfg.workdir.split("/")[2]
    feats, labels = gaussian_mixture(100, 4, 8, seed=6)
    write_pool(f"s3://{bucket}/pool2", np.arange(100), feats.numpy(), labels.numpy(), storage_options=options)
    moved = cfg.replace(pool={"uri": f"s3://{bucket}/pool2"})
    with pytest.raises(WorkdirError, match="different pool"):
        open_workdir(moved)
    snap = snapshot(cfg)
    assert not any(
        "secret" in v.decode(errors="ignore").lower() and "testing" in v.decode(errors="ignore")
        for p, v in snap.items()
        if p.endswith("config.yaml")
    )
