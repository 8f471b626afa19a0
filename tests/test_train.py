"""Ray Train retraining (dist_al.campaign.train) on a real Parquet pool, a local Ray and a moto S3 server.

Each Ray Train fit starts a controller actor and two fresh worker processes
(15-40 s on a busy 2-core machine), so the module runs exactly one fit, with
the checkpoint and Ray Train's run storage on S3 (the multi-node setup), and
checks it from several sides.  Every error case fails on the driver before
Ray Train starts.
"""

from __future__ import annotations

import os
import uuid

import numpy as np
import pytest
import s3server
import torch

from dist_al.campaign.train import accuracy, gather_labeled, train
from dist_al.config import ConfigError, ModelConfig, validate
from dist_al.data.synthetic import gaussian_mixture
from dist_al.data.writer import write_pool
from dist_al.inputs import vectors
from dist_al.models.build import ModelError, build_model, read_weights

N_POOL, N_EVAL, K, D = 600, 300, 4, 8
N_LABELED = 240
TRAIN = {"epochs": 6, "lr": 0.02, "batch_size": 40, "workers": 2, "seed": 3}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    x, y = gaussian_mixture(N_POOL + N_EVAL, K, D, seed=0)
    x, y = x.numpy(), y.numpy()
    ids = np.arange(N_POOL + N_EVAL, dtype=np.int64) * 3 + 7  # not row numbers
    pool_uri, eval_uri = str(root / "pool"), str(root / "eval")
    write_pool(pool_uri, ids[:N_POOL], x[:N_POOL], y[:N_POOL], rows_per_group=64)  # many row groups / batches
    write_pool(eval_uri, ids[N_POOL:], x[N_POOL:], y[N_POOL:])
    picked = np.sort(np.random.default_rng(1).choice(N_POOL, N_LABELED, replace=False))
    labels = {int(ids[i]): int(y[i]) for i in picked[::-1]}  # dict order must not matter
    cfg = validate(
        {
            "pool": {"uri": pool_uri, "label_column": "label"},
            "model": {"kwargs": {"in_dim": D, "n_classes": K, "hidden": 32}},
            "selection": {"budget": 10},
            "train": TRAIN,
            "workdir": str(root / "work"),
        }
    )
    return {
        "root": root,
        "cfg": cfg,
        "labels": labels,
        "eval_uri": eval_uri,
        "x": x,
        "y": y,
        "ids": ids,
        "picked": picked,
    }


@pytest.fixture(scope="module")
def s3_run(s3_server, ray_local, data):
    """The one Ray Train fit of this module: checkpoint and Ray Train run storage on (moto) S3, eval local.

    Module-scoped (a fit costs 15-40 s here), so it sets up its own bucket and fake credentials
    with the s3server helpers instead of the per-test ``s3_bucket`` / ``s3_storage_options``.
    """
    with pytest.MonkeyPatch.context() as mp:
        s3server._set_fake_aws_env(mp, s3_server)
        s3server.clear_s3fs_caches()
        bucket = f"test-train-{uuid.uuid4().hex[:12]}"
        s3server.create_bucket(s3_server, bucket)
        options = s3server.storage_options_for(s3_server)
        uri = f"s3://{bucket}/work/round-1/model.pt"
        result = train(
            data["cfg"], data["labels"], checkpoint_uri=uri, eval_uri=data["eval_uri"], storage_options=options
        )
        yield {"result": result, "uri": uri, "options": options, "bucket": bucket}
        s3server.clear_s3fs_caches()


def _untrained(cfg):
    return build_model(cfg.model, seed=cfg.train.seed)


# --------------------------------------------------------------------------- a real fit


@pytest.mark.cluster
def test_ray_train_runs_two_workers(s3_run):
    result = s3_run["result"]
    assert result.workers == 2 and result.metrics["world_size"] == 2  # reported from inside the workers
    assert result.metrics["rows_per_worker"] == N_LABELED // 2
    assert result.train_rows == N_LABELED and result.metrics["train_rows"] == N_LABELED
    assert result.epochs == TRAIN["epochs"] and len(result.metrics["loss_history"]) == TRAIN["epochs"]
    assert result.metrics["loss_history"][-1] < 0.8 * result.metrics["loss_history"][0]
    assert result.checkpoint_uri == s3_run["uri"] and result.seconds > 0


@pytest.mark.cluster
def test_s3_checkpoint_loads_and_beats_untrained_model(s3_run, data):
    result, uri, options = s3_run["result"], s3_run["uri"], s3_run["options"]
    weights = read_weights(uri, options)  # weights_only=True, as selection loads model.checkpoint
    m = data["cfg"].model
    trained = build_model(m, weights=weights)
    acc_trained = accuracy(data["cfg"].pool, trained, data["eval_uri"])
    acc_untrained = accuracy(data["cfg"].pool, _untrained(data["cfg"]), data["eval_uri"])
    assert acc_trained == pytest.approx(result.accuracy)
    assert acc_trained > acc_untrained + 0.2, (acc_trained, acc_untrained)
    # model.checkpoint in a selection config (with the pool's storage_options) picks it up the same way
    via_spec = build_model(m.model_copy(update={"checkpoint": uri}), storage_options=options)
    assert all(torch.equal(a, weights[k]) for k, a in via_spec.state_dict().items())


@pytest.mark.cluster
def test_s3_run_storage_is_cleaned_up(s3_run):
    import s3fs

    bucket = s3_run["bucket"]
    fs = s3fs.S3FileSystem(skip_instance_cache=True, **s3_run["options"])
    # Ray Train's run directory (<checkpoint dir>/_ray_train/<run>) is gone; only the model is left.
    assert fs.find(f"{bucket}/work") == [f"{bucket}/work/round-1/model.pt"]


# --------------------------------------------------------------------------- driver side, no fit


def test_gather_labeled_keeps_only_labeled_rows_in_pool_order(data):
    rows = gather_labeled(data["cfg"].pool, data["labels"])
    ids, x, y = rows.ids, vectors(rows.inputs.combine_chunks().to_batches()[0]).numpy(), rows.y
    picked = data["picked"]
    np.testing.assert_array_equal(ids, data["ids"][picked])
    np.testing.assert_array_equal(x, data["x"][picked])
    np.testing.assert_array_equal(y, data["y"][picked])
    assert x.dtype == np.float32 and y.dtype == np.int64


def _minibatches(reader, rows, index, monkeypatch, *, once: bool) -> list:
    from dist_al.campaign import train as train_module

    monkeypatch.setattr(train_module, "DECODE_ONCE_BYTES", 1 << 30 if once else 0)
    batches = train_module.Minibatches(reader, rows, batch_size=40, threads=2)
    assert (batches.decoded is not None) == once
    return list(batches(index))


def test_minibatches_decoded_once_equal_those_decoded_per_step(data, monkeypatch):
    from dist_al.inputs.contract import open_inputs

    rows = gather_labeled(data["cfg"].pool, data["labels"])
    index = torch.randperm(len(rows.y), generator=torch.Generator().manual_seed(0))
    _, reader = open_inputs(data["cfg"].pool, data["cfg"].inputs)
    once = _minibatches(reader, rows, index, monkeypatch, once=True)
    per_step = _minibatches(reader, rows, index, monkeypatch, once=False)
    assert len(once) == len(per_step) == -(-N_LABELED // 40)
    for (x1, y1), (x2, y2) in zip(once, per_step):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    picked = data["picked"][index.numpy()]
    np.testing.assert_array_equal(torch.cat([x for x, _ in once]).numpy(), data["x"][picked])


def test_train_settings_defaults_and_checks(data):
    raw = data["cfg"].raw()
    cfg = validate({**raw, "train": {}})
    s = cfg.train
    assert (s.epochs, s.lr, s.batch_size, s.workers, s.use_gpu, s.warm_start) == (20, 1e-3, 128, 2, False, False)
    assert s.seed is None and cfg.train_seed == cfg.selection.seed
    for key, bad in [
        ("epochs", 0),
        ("lr", -1.0),
        ("batch_size", 1.5),
        ("workers", 0),
        ("use_gpu", "yes"),
        ("seed", -1),
        ("epochs", True),
    ]:
        with pytest.raises(ConfigError, match=f"train.{key}"):
            validate({**raw, "train": {key: bad}})


def _train_fails(data, labels, match, **kwargs):
    uri = str(data["root"] / "errors" / "model.pt")
    with pytest.raises(ValueError, match=match):
        train(data["cfg"], labels, checkpoint_uri=uri, **kwargs)
    assert not os.path.exists(os.path.dirname(uri))  # failed before Ray Train started or wrote anything (no Ray)


def test_no_labeled_rows(data):
    _train_fails(data, {}, "no labeled rows")


@pytest.mark.parametrize("bad", [K, -1])
def test_label_outside_model_classes_names_the_id(data, bad):
    labels = dict(data["labels"])
    some_id = next(iter(labels))
    labels[some_id] = bad
    _train_fails(data, labels, rf"label {bad} of id {some_id} is outside \[0, {K}\)")


def test_non_integer_label(data):
    labels = dict(data["labels"])
    labels[next(iter(labels))] = "cat"
    _train_fails(data, labels, "must be an integer class index")


def test_labeled_ids_missing_from_pool(data):
    labels = dict(data["labels"])
    labels.update({10**9 + 1: 0, 10**9 + 2: 1, 10**9 + 3: 2})
    _train_fails(data, labels, rf"3 of {N_LABELED + 3} labeled id\(s\) are not in pool .*e\.g\. 1000000001")


def test_string_ids_against_integer_pool(data):
    labels = {str(k): v for k, v in data["labels"].items()}
    _train_fails(data, labels, "pool's ids are integers")


def test_warm_start_weights_must_match_the_model(data):
    wrong = build_model(ModelConfig(kwargs={"in_dim": D, "n_classes": K, "hidden": 16})).state_dict()
    with pytest.raises(ModelError, match="does not match"):
        train(
            data["cfg"],
            data["labels"],
            checkpoint_uri=str(data["root"] / "errors" / "model.pt"),
            warm_start_weights=wrong,
        )
