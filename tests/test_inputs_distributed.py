"""Image and text pools end to end on Ray: the same ids for 1 and 3 ShardWorkers (and as one process embedding
the pool itself), a labeling round retrained with Ray Train through the reader, simulate, and on_error: skip.

The pools are real files (tests/inputdata.py): digits rendered as PNG and JPEG, as bytes in Parquet and as URIs on
the moto S3 server; sentences tokenised with a tokenizer trained in the test. The models are small factories of
tests/inputdata.py, which the Ray workers import (this module puts tests/ on their PYTHONPATH).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
import torch
from inputdata import image_files, image_pool, text_pool, train_tokenizer, write_parquet

from dist_al.campaign.rounds import SELECTED_ROWS, SKIPPED_ROWS, advance, ingest, select_step
from dist_al.campaign.workdir import open_workdir
from dist_al.config import validate
from dist_al.core import select
from dist_al.data.pool import plan_shards
from dist_al.experiments.simulate import simulate
from dist_al.inputs import InputError, open_inputs
from dist_al.inputs.pipeline import decoded_batches
from dist_al.models.build import build_model
from dist_al.models.embedder import Embedder
from dist_al.runtime.selection import sharded_pool

N, BUDGET = 120, 8
IMAGES = {
    "reader": "dist_al.inputs:images",
    "kwargs": {"size": 12, "crop": 10, "mode": "L", "mean": [0.5], "std": [0.5]},
}
CNN = {"factory": "inputdata:tiny_cnn", "kwargs": {"channels": 1, "n_classes": 10}, "batch_size": 32}
BAG = {"factory": "inputdata:bag_of_words", "kwargs": {"vocab": 64, "n_classes": 3}, "batch_size": 32}


@pytest.fixture(scope="module")
def ray_tests_importable():
    """A local Ray whose workers can import tests/inputdata.py (the models' factories)."""
    tests_dir = str(Path(__file__).resolve().parent)
    before = os.environ.get("PYTHONPATH", "")
    os.environ["PYTHONPATH"] = os.pathsep.join([tests_dir, before])
    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=4, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    yield
    ray.shutdown()
    os.environ["PYTHONPATH"] = before


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return train_tokenizer(str(tmp_path_factory.mktemp("tok") / "tokenizer.json"))


def _cfg(uri, inputs, model, *, workers=3, options=None, **sections):
    return validate(
        {
            "pool": {"uri": uri, "label_column": "label", "storage_options": options or {}},
            "inputs": inputs,
            "model": model,
            "selection": {"strategy": "badge", "budget": BUDGET, "seed": 3},
            "cluster": {"workers": workers, "cpus_per_worker": 0.5},
            **sections,
        }
    )


def _one_process(cfg) -> list:
    """The reference: this process decodes and embeds the whole pool, and the core selects on (p, h)."""
    pool, reader = open_inputs(cfg.pool, cfg.inputs)
    embed = Embedder(build_model(cfg.model, seed=cfg.selection.seed), cfg.model.classifier)
    ids, probs, feats = [], [], []
    for batch in decoded_batches(pool, plan_shards(pool, 1)[0], reader, batch_rows=17, threads=1):
        p, h = embed(batch.x)
        ids.append(batch.ids)
        probs.append(p)
        feats.append(h)
    ids = np.concatenate(ids)
    picks = select("badge", torch.cat(probs), torch.cat(feats), BUDGET, seed=cfg.selection.seed)
    return ids[picks].tolist()


def _distributed(cfg, workers) -> list:
    pool = sharded_pool(cfg.replace(cluster={"workers": workers}))
    try:
        assert len(pool.workers) == workers
        return pool.select("badge", BUDGET, seed=cfg.selection.seed).table.column("id").to_pylist()
    finally:
        pool.close()


@pytest.mark.parametrize("layout", ["bytes", "s3 uri"])
def test_image_pool_same_ids_for_1_and_3_workers(layout, tmp_path, s3_bucket, s3_storage_options, ray_tests_importable):
    if layout == "bytes":
        uri, options = image_pool(str(tmp_path), N, "bytes", rows_per_group=20), {}
    else:
        uri = image_pool(f"s3://{s3_bucket}/digits", N, "uri", storage_options=s3_storage_options, rows_per_group=20)
        options = s3_storage_options
    cfg = _cfg(uri, IMAGES, CNN, options=options)
    want = _one_process(cfg)
    assert _distributed(cfg, 1) == want
    assert _distributed(cfg, 3) == want


def test_text_pool_same_ids_for_1_and_3_workers(tmp_path, tokenizer, ray_tests_importable):
    uri = text_pool(str(tmp_path / "text"), N, rows_per_group=20)
    cfg = _cfg(uri, {"reader": "dist_al.inputs:text", "kwargs": {"tokenizer": tokenizer, "max_length": 8}}, BAG)
    want = _one_process(cfg)
    assert _distributed(cfg, 1) == want
    assert _distributed(cfg, 3) == want


def _round(cfg, truth: dict, tmp_path: Path, caplog) -> dict:
    """Select (recording the picked rows' input columns), label, retrain with Ray Train; the second round
    selects with the trained model. Training reads the recorded rows, not the pool."""
    first = advance(cfg)
    assert first.startswith("round 1: waiting for labels"), first
    picked = pq.read_table(f"{cfg.workdir}/rounds/0001/selection.parquet").column("id").to_pylist()
    recorded = pq.read_table(f"{cfg.workdir}/rounds/0001/{SELECTED_ROWS}")
    assert recorded.column("id").to_pylist() == picked
    labels = tmp_path / "labels.csv"
    labels.write_text("id,label\n" + "".join(f"{i},{truth[i]}\n" for i in picked))
    ingest(cfg, str(labels))
    with caplog.at_level(logging.INFO, logger="dist_al.campaign.train"):
        assert advance(cfg).startswith(f"round 1: trained on {BUDGET} labeled rows")
    assert not [r for r in caplog.records if "no recorded row" in r.getMessage()]
    second = advance(cfg)
    assert second.startswith("round 2: waiting for labels"), second
    return {"recorded": recorded}


def _image_pool(layout: str, root: str, bucket: str, options: dict, n: int = N, first_id: int = 0) -> tuple[str, dict]:
    """(pool URI, storage options): the images as bytes in a local pool, or as files on the moto S3 server with
    their URIs in the pool."""
    if layout == "bytes":
        return image_pool(root, n, "bytes", rows_per_group=20, first_id=first_id), {}
    s3_root = f"s3://{bucket}/{os.path.basename(root)}"
    return image_pool(s3_root, n, "uri", storage_options=options, rows_per_group=20, first_id=first_id), options


@pytest.mark.parametrize("layout", ["bytes", "s3 uri"])
def test_a_round_on_an_image_pool_trains_with_ray_train(
    layout, tmp_path, s3_bucket, s3_storage_options, ray_tests_importable, caplog
):
    uri, options = _image_pool(layout, str(tmp_path), s3_bucket, s3_storage_options)
    cfg = _cfg(
        uri,
        IMAGES,
        CNN,
        workers=2,
        options=options,
        train={"workers": 2, "epochs": 2, "cpus_per_worker": 0.5},
        workdir=str(tmp_path / "work"),
    )
    truth = dict(zip(range(N), image_files(N)[2].tolist()))
    out = _round(cfg, truth, tmp_path, caplog)
    # the encoded files, or their URIs (Ray Train's workers fetch them from S3 with the pool's storage options)
    recorded = pa.struct([("image", pa.binary() if layout == "bytes" else pa.string())])
    assert out["recorded"].schema.field("inputs").type == recorded


def test_a_round_on_a_text_pool_trains_with_ray_train(tmp_path, tokenizer, ray_tests_importable, caplog):
    uri = text_pool(str(tmp_path / "text"), N, rows_per_group=20)
    inputs = {"reader": "dist_al.inputs:text", "kwargs": {"tokenizer": tokenizer, "max_length": 8}}
    cfg = _cfg(
        uri,
        inputs,
        BAG,
        workers=2,
        train={"workers": 2, "epochs": 2, "cpus_per_worker": 0.5},
        workdir=str(tmp_path / "work"),
    )
    truth = dict(zip(pq.read_table(uri).column("id").to_pylist(), pq.read_table(uri).column("label").to_pylist()))
    out = _round(cfg, truth, tmp_path, caplog)
    assert out["recorded"].schema.field("inputs").type == pa.struct([("text", pa.string())])


@pytest.mark.parametrize("kind", ["images bytes", "images s3 uri", "text"])
def test_simulate_runs_on_image_and_text_pools(
    kind, tmp_path, tokenizer, s3_bucket, s3_storage_options, ray_tests_importable
):
    options: dict = {}
    if kind.startswith("images"):
        layout = kind.removeprefix("images ")
        uri, options = _image_pool(layout, str(tmp_path / "pool"), s3_bucket, s3_storage_options)
        eval_uri, _ = _image_pool(layout, str(tmp_path / "eval"), s3_bucket, s3_storage_options, 40, first_id=N)
        inputs, model = IMAGES, CNN
    else:
        uri = text_pool(str(tmp_path / "pool"), N, rows_per_group=20)
        eval_uri = text_pool(str(tmp_path / "eval"), 40, seed=1, first_id=N)
        inputs, model = {"reader": "dist_al.inputs:text", "kwargs": {"tokenizer": tokenizer}}, BAG
    cfg = _cfg(
        uri,
        inputs,
        model,
        workers=2,
        options=options,
        simulation={"initial_labeled": 10, "rounds": 1, "strategies": "badge,random"},
        train={"backend": "local", "epochs": 2},
        eval={"uri": eval_uri},
        workdir=str(tmp_path / "work"),
    )
    records = simulate(cfg)
    assert [(r["strategy"], r["labeled"]) for r in records] == [
        ("badge", 10),
        ("badge", 18),
        ("random", 10),
        ("random", 18),
    ]
    assert all(0 <= r["accuracy"] <= 1 for r in records)


def _pool_with_broken_images(root: Path, broken: dict[int, bytes]) -> str:
    blobs, _, labels = image_files(N)
    for row, blob in broken.items():
        blobs[row] = blob
    write_parquet(
        f"{root}/pool/part-00000.parquet",
        pa.table({"id": np.arange(N), "image": pa.array(blobs, pa.binary()), "label": labels}),
        rows_per_group=20,
    )
    return f"{root}/pool"


def test_skip_leaves_unreadable_rows_out_and_says_so(tmp_path, ray_tests_importable, caplog):
    broken = {7: b"not an image", 61: b"", 100: image_files(1)[0][0][:30]}
    uri = _pool_with_broken_images(tmp_path, broken)
    cfg = _cfg(uri, {**IMAGES, "on_error": "skip", "max_skipped": 0.05}, CNN, workdir=str(tmp_path / "work"))
    ids = {}
    with caplog.at_level(logging.WARNING, logger="dist_al.runtime.sharded_pool"):
        for workers in (1, 3):
            pool = sharded_pool(cfg.replace(cluster={"workers": workers}))
            try:
                assert pool.num_rows == N - 3 and [s.id for s in pool.skipped] == [7, 61, 100]
                result = pool.select("random", N - 3, seed=0)  # every readable row, none of the others
                ids[workers] = result.table.column("id").to_pylist()
                assert [s.id for s in result.skipped] == [7, 61, 100]
            finally:
                pool.close()
    assert ids[1] == ids[3] and sorted(ids[1]) == sorted(set(range(N)) - set(broken))
    summary = [r.getMessage() for r in caplog.records if "left out of selection" in r.getMessage()]
    assert summary and "ids 7, 61, 100" in summary[0]
    # a round records the skipped rows next to its selection
    line = select_step(cfg, open_workdir(cfg))
    assert line.startswith(f"round 1: selected {BUDGET} rows with badge; 3 unreadable rows left out"), line
    skipped = pq.read_table(f"{cfg.workdir}/rounds/0001/{SKIPPED_ROWS}")
    assert skipped.column("id").to_pylist() == [7, 61, 100]
    assert skipped.column("reason").to_pylist()[0].endswith("cannot decode image: not an image file Pillow can read")


def test_more_skipped_rows_than_allowed_fail(tmp_path, ray_tests_importable):
    uri = _pool_with_broken_images(tmp_path, {i: b"junk" for i in range(0, N, 20)})  # 6 of 120 rows
    cfg = _cfg(uri, {**IMAGES, "on_error": "skip", "max_skipped": 0.01}, CNN, workers=2)
    with pytest.raises(
        InputError, match=r"6 of the 120 rows of pool \S+ cannot be read, more than inputs.max_skipped \(0.01"
    ):
        sharded_pool(cfg)
