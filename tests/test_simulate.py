"""Simulated active learning (dist_al.experiments.simulate) on a local Ray, the local training backend, re-embedding.

One full simulation (two strategies x two seeds x three rounds on a small,
easy Gaussian-mixture pool) is run once for the module and checked from
several sides; the rest are cheap checks around it.
"""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from dist_al.campaign.train import accuracy, train
from dist_al.cli import main as cli_main
from dist_al.config import ModelConfig, PoolConfig, validate
from dist_al.core import select as core_select
from dist_al.data.pool import open_pool, plan_shards
from dist_al.data.synthetic import gaussian_mixture
from dist_al.data.writer import write_pool
from dist_al.experiments.simulate import (
    CURVE_COLUMNS,
    curve_uris,
    format_table,
    simulate,
)
from dist_al.models.build import build_model, read_weights
from dist_al.models.embedder import Embedder
from dist_al.runtime.selection import sharded_pool
from dist_al.runtime.worker import ShardWorker

N_POOL, N_EVAL, K, D = 600, 300, 4, 8
INITIAL, BUDGET, ROUNDS, SEEDS = 12, 12, 3, 2
STRATEGIES = ["badge", "random"]
MODEL = {"factory": "dist_al.models:mlp", "kwargs": {"in_dim": D, "n_classes": K, "hidden": 16}}
TRAIN = {"backend": "local", "epochs": 30, "lr": 0.01, "batch_size": 16}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("simulate")
    x, y = gaussian_mixture(N_POOL + N_EVAL, K, D, seed=5, separation=2.5)  # easy: well separated blobs
    x, y = x.numpy(), y.numpy()
    ids = np.arange(N_POOL + N_EVAL, dtype=np.int64) * 7 + 100  # ids are not row numbers
    pool_uri, eval_uri = str(root / "pool"), str(root / "eval")
    write_pool(pool_uri, ids[:N_POOL], x[:N_POOL], y[:N_POOL], rows_per_group=50)
    write_pool(eval_uri, ids[N_POOL:], x[N_POOL:], y[N_POOL:])
    cfg = validate(
        {
            "pool": {"uri": pool_uri, "label_column": "label"},
            "model": MODEL,
            "selection": {"strategy": "badge", "budget": BUDGET, "seed": 3},
            "train": TRAIN,
            "simulation": {
                "initial_labeled": INITIAL,
                "rounds": ROUNDS,
                "strategies": ",".join(STRATEGIES),
                "seeds": SEEDS,
            },
            "eval": {"uri": eval_uri},
            "cluster": {"workers": 2, "cpus_per_worker": 0.5},
            "workdir": str(root / "work"),
        }
    )
    return {"root": root, "cfg": cfg, "x": x, "y": y, "ids": ids, "eval_uri": eval_uri}


@pytest.fixture(scope="module")
def run(ray_local, data):
    return simulate(data["cfg"])


def _mean(records, **where):
    return np.mean([r["accuracy"] for r in records if all(r[k] == v for k, v in where.items())])


# --------------------------------------------------------------------------- the simulation


@pytest.mark.cluster
def test_curve_csv(run, data):
    csv_uri, _ = curve_uris(data["cfg"])
    with open(csv_uri) as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == CURVE_COLUMNS
    assert len(rows) == len(run) == len(STRATEGIES) * SEEDS * (ROUNDS + 1)
    for strategy in STRATEGIES:
        for seed in (3, 4):  # selection.seed + range(seeds)
            mine = [r for r in rows if r["strategy"] == strategy and int(r["seed"]) == seed]
            assert [int(r["round"]) for r in mine] == list(range(ROUNDS + 1))
            assert [int(r["labeled"]) for r in mine] == [INITIAL + BUDGET * i for i in range(ROUNDS + 1)]
            assert all(0 <= float(r["accuracy"]) <= 1 for r in mine)
            assert all(float(r["select_seconds"]) >= 0 for r in mine[:-1]) and mine[-1]["select_seconds"] == ""


@pytest.mark.cluster
def test_curve_png_is_a_valid_png(run, data):
    import matplotlib.image

    _, png_uri = curve_uris(data["cfg"])
    with open(png_uri, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(png_uri)
    assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 400
    assert image[..., :3].std() > 0.05  # something is drawn


@pytest.mark.cluster
def test_accuracy_rises_with_labels(run):
    first, last = _mean(run, round=0), _mean(run, round=ROUNDS)
    assert last > first, (first, last)
    assert last > 0.8


@pytest.mark.cluster
def test_same_initial_rows_for_every_strategy_at_a_seed(run):
    for seed in (3, 4):
        round0 = {r["accuracy"] for r in run if r["seed"] == seed and r["round"] == 0}
        assert len(round0) == 1  # the same rows, the same model


@pytest.mark.cluster
def test_checkpoints_per_round_load_and_match_the_curve(run, data):
    cfg = data["cfg"]
    for strategy in STRATEGIES:
        weights = read_weights(f"{cfg.workdir}/simulation/{strategy}/seed4/round{ROUNDS}.pt")
        acc = accuracy(cfg.pool, build_model(ModelConfig(**MODEL), weights=weights), data["eval_uri"])
        want = next(r["accuracy"] for r in run if r["strategy"] == strategy and r["seed"] == 4 and r["round"] == ROUNDS)
        assert acc == pytest.approx(want)


@pytest.mark.cluster
def test_table_lists_every_strategy_and_label_count(run):
    table = format_table(run)
    assert "over 2 seeds" in table
    for strategy in STRATEGIES:
        assert f"| {strategy} " in table
    for n in (INITIAL, INITIAL + BUDGET * ROUNDS):
        assert f" {n} |" in table


# --------------------------------------------------------------------------- re-embedding and labels on Ray


def test_reembed_changes_predictions_and_matches_core(ray_local, data):
    cfg = data["cfg"].replace(selection={"strategy": "margin", "budget": 20, "seed": 0})
    x, y, ids = data["x"][:N_POOL], data["y"][:N_POOL], data["ids"][:N_POOL]
    labeled = {int(i): int(c) for i, c in zip(ids[::10], y[::10])}
    trained = train(cfg, labeled, checkpoint_uri=str(data["root"] / "reembed" / "model.pt")).weights
    pool = sharded_pool(cfg, labels=True)
    try:
        before = pool.select("margin", 20).table.column("id").to_pylist()
        pool.reembed(trained)
        after = pool.select("margin", 20).table.column("id").to_pylist()
        # labels come from the workers, by id (any order) and by global row
        some = ids[[5, 599, 0, 300]]
        np.testing.assert_array_equal(pool.labels_of(some), y[[5, 599, 0, 300]])
        got_ids, got_labels = pool.rows_at([599, 3, 250])
        np.testing.assert_array_equal(got_ids, ids[[599, 3, 250]])
        np.testing.assert_array_equal(got_labels, y[[599, 3, 250]])
        with pytest.raises(ValueError, match="not in pool"):
            pool.labels_of([ids[0], 1])
    finally:
        pool.close()
    embedder = Embedder(build_model(ModelConfig(**MODEL), weights=trained))
    p, h = embedder(torch.from_numpy(x))
    assert after == ids[core_select("margin", p, h, 20)].tolist()  # the workers used the new weights
    assert after != before


@pytest.mark.cluster
def test_worker_reembeds_in_place_with_string_ids(tmp_path):
    x, y = gaussian_mixture(40, 3, 4, seed=1)
    ids = np.array([f"row-{i:03d}" for i in range(40)], dtype=object)
    write_pool(str(tmp_path / "p"), ids, x.numpy(), y.numpy(), rows_per_group=16)
    spec = PoolConfig(uri=str(tmp_path / "p"), label_column="label")
    shard = plan_shards(open_pool(spec), 1)[0]
    model_spec = ModelConfig(kwargs={"in_dim": 4, "n_classes": 3, "hidden": 8})
    worker = ShardWorker(spec, shard, model_spec, build_model(model_spec, seed=0).state_dict(), labels=True)
    while worker.embed_step(10):
        pass
    assert worker.timing.rows == 40 and "s forward" in worker.timing.line()  # the pass says where its time went
    p0 = worker.probs.clone()
    pos, labels = worker.labels_of(np.array(["row-039", "nope", "row-002"], dtype=object))
    assert pos.tolist() == [0, 2] and labels.tolist() == [int(y[39]), int(y[2])]
    worker.load_weights(build_model(model_spec, seed=1).state_dict())
    assert worker.probs is None
    while worker.embed_step(10):
        pass
    assert worker.rows == 40 and worker.ids.tolist() == ids.tolist()
    expected, _ = Embedder(build_model(model_spec, seed=1))(x)
    torch.testing.assert_close(worker.probs, expected)
    assert not torch.allclose(worker.probs, p0)


# --------------------------------------------------------------------------- the local training backend


def test_local_backend_is_deterministic_and_learns(data):
    cfg = data["cfg"]
    rng = np.random.default_rng(0)
    rows = rng.choice(N_POOL, 60, replace=False)
    labels = {int(data["ids"][i]): int(data["y"][i]) for i in rows}
    a = train(cfg, labels, checkpoint_uri=str(data["root"] / "local" / "a.pt"), eval_uri=data["eval_uri"])
    b = train(cfg, labels, checkpoint_uri=str(data["root"] / "local" / "b.pt"), eval_uri=data["eval_uri"])
    assert a.workers == 1 and a.train_rows == 60 and len(a.metrics["loss_history"]) == TRAIN["epochs"]
    assert a.metrics["loss_history"] == b.metrics["loss_history"] and a.accuracy == b.accuracy
    assert all(torch.equal(v, b.weights[k]) for k, v in a.weights.items())
    saved = read_weights(str(data["root"] / "local" / "a.pt"))
    assert all(torch.equal(v, saved[k]) for k, v in a.weights.items())
    untrained = accuracy(cfg.pool, build_model(ModelConfig(**MODEL), seed=cfg.selection.seed), data["eval_uri"])
    assert a.accuracy > untrained + 0.2, (a.accuracy, untrained)
    assert a.metrics["loss_history"][-1] < 0.5 * a.metrics["loss_history"][0]
    other = train(cfg.replace(train={**TRAIN, "seed": 99}), labels, checkpoint_uri=str(data["root"] / "local" / "c.pt"))
    assert not all(torch.equal(v, other.weights[k]) for k, v in a.weights.items())


def test_local_backend_leaves_torch_rng_and_threads_alone(data):
    labels = {int(data["ids"][i]): int(data["y"][i]) for i in range(20)}
    torch.manual_seed(123)
    want = torch.rand(3)
    torch.manual_seed(123)
    threads = torch.get_num_threads()
    train(
        data["cfg"].replace(train={**TRAIN, "cpus_per_worker": 2}),
        labels,
        checkpoint_uri=str(data["root"] / "local" / "rng.pt"),
    )
    assert torch.equal(torch.rand(3), want) and torch.get_num_threads() == threads


# --------------------------------------------------------------------------- errors and the command line


@pytest.mark.parametrize(
    "change, message",
    [
        ({"pool": {"label_column": None}}, "set config key pool.label_column"),
        ({"eval": {"uri": None}}, "set config key eval.uri"),
        ({"simulation": {"rounds": 100}}, "= 1212 labels"),
    ],
)
def test_settings_errors_before_anything_starts(data, change, message):
    with pytest.raises(ValueError, match=message):
        simulate(data["cfg"].replace(**change))


def test_cli_unknown_strategy_is_one_line(data, tmp_path, capsys):

    path = tmp_path / "sim.yaml"
    path.write_text(data["cfg"].to_yaml())
    assert cli_main(["simulate", "--config", str(path), "--strategies", "badge,bayt"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "dist-al: error: unknown strategy 'bayt' (did you mean 'bait'?); choose one of "
        "badge, badge-scalable, bait, random, entropy, margin, confidence, coreset"
    )


def test_cli_help_has_examples(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli_main(["simulate", "--help"])
    assert exit_.value.code == 0 and "examples:" in capsys.readouterr().out


def test_local_backend_equals_one_worker_ray_train(ray_local, data):
    """The same loop function either way: one Ray Train worker gives the local backend's weights exactly."""
    labels = {int(data["ids"][i]): int(data["y"][i]) for i in range(0, N_POOL, 15)}
    local = train(data["cfg"], labels, checkpoint_uri=str(data["root"] / "backends" / "local.pt"))
    cfg = data["cfg"].replace(train={**TRAIN, "backend": "ray", "workers": 1})
    on_ray = train(cfg, labels, checkpoint_uri=str(data["root"] / "backends" / "ray.pt"))
    assert on_ray.workers == 1 and on_ray.metrics["loss_history"] == local.metrics["loss_history"]
    assert all(torch.equal(v, on_ray.weights[k]) for k, v in local.weights.items())


def test_pool_and_workdir_on_s3(ray_local, data, s3_bucket, s3_storage_options):
    """Pool, test set, checkpoints and the curve all on an object store (moto S3)."""
    import s3fs

    x, y, ids = data["x"], data["y"], data["ids"]
    root = f"s3://{s3_bucket}"
    write_pool(f"{root}/pool", ids[:200], x[:200], y[:200], rows_per_group=50, storage_options=s3_storage_options)
    write_pool(f"{root}/eval", ids[N_POOL:], x[N_POOL:], y[N_POOL:], storage_options=s3_storage_options)
    cfg = data["cfg"].replace(
        pool={"uri": f"{root}/pool", "label_column": "label", "storage_options": s3_storage_options},
        eval={"uri": f"{root}/eval"},
        simulation={"initial_labeled": 10, "rounds": 2},
        workdir=f"{root}/work",
    )
    records = simulate(cfg, strategies="margin", seeds=1)
    assert [(r["round"], r["labeled"]) for r in records] == [(0, 10), (1, 10 + BUDGET), (2, 10 + 2 * BUDGET)]
    fs = s3fs.S3FileSystem(skip_instance_cache=True, **s3_storage_options)
    found = sorted(p.removeprefix(f"{s3_bucket}/work/simulation/") for p in fs.find(f"{s3_bucket}/work"))
    assert found == [
        "curve.csv",
        "curve.png",
        "margin/seed3/round0.pt",
        "margin/seed3/round1.pt",
        "margin/seed3/round2.pt",
    ]
    assert fs.cat(f"{s3_bucket}/work/simulation/curve.png")[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_rerun_of_a_finished_simulation_changes_nothing(ray_local, data, tmp_path, capsys):
    import argparse

    from dist_al.experiments.simulate import simulate_command

    cfg_path = tmp_path / "sim.yaml"
    cfg = data["cfg"]
    cfg_path.write_text(
        f"pool: {{uri: {cfg.pool.uri}, label_column: label}}\n"
        f"model: {{kwargs: {{in_dim: {D}, n_classes: {K}, hidden: 16}}}}\n"
        f"selection: {{strategy: random, budget: {BUDGET}}}\ntrain: {{backend: local, epochs: 5}}\n"
        f"simulation: {{initial_labeled: {INITIAL}, rounds: 1}}\neval: {{uri: {data['eval_uri']}}}\n"
        f"workdir: {tmp_path / 'work'}\n"
    )
    args = argparse.Namespace(
        config=str(cfg_path), overrides=[], strategies=None, seeds=None, no_progress=True, log_level="WARNING"
    )
    assert simulate_command(args) == 0
    files = {p: p.read_bytes() for p in sorted((tmp_path / "work").rglob("*")) if p.is_file()}
    assert simulate_command(args) == 0
    assert "simulation already complete for this config" in capsys.readouterr().out
    assert {p: p.read_bytes() for p in sorted((tmp_path / "work").rglob("*")) if p.is_file()} == files
