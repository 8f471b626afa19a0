"""Distributed selection on a real multi-node Ray cluster (three nodes on this machine).

The selection must not depend on the worker count and must equal the core's
single-process selection on the same (p, h) arrays, for every strategy.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import ray
from raycluster import multi_node_cluster
from reference import embed_pool

from dist_al.config import validate
from dist_al.core import STRATEGIES, select
from dist_al.data.pool import open_pool, plan_shards
from dist_al.data.synthetic import gaussian_mixture
from dist_al.data.writer import write_pool
from dist_al.models.build import build_model
from dist_al.runtime.selection import run_selection, sharded_pool

pytestmark = [pytest.mark.cluster]

N_ROWS, N_CLASSES, DIM, ROWS_PER_GROUP = 1200, 4, 8, 100
MODEL = {"factory": "dist_al.models:mlp", "kwargs": {"in_dim": DIM, "n_classes": N_CLASSES, "hidden": 12}}
OPTIONS = {"bait": {"oversample": 1.5}, "badge-scalable": {"rounds": 3}}


@pytest.fixture(scope="module")
def cluster():
    with multi_node_cluster(head_cpus=2) as c:
        yield c


def _write(uri, storage_options=None):
    feats, labels = gaussian_mixture(N_ROWS, N_CLASSES, DIM, seed=3)
    ids = np.arange(1000, 1000 + N_ROWS, dtype=np.int64)[::-1].copy()  # ids are not row numbers
    write_pool(
        uri,
        ids,
        feats.numpy(),
        labels.numpy(),
        rows_per_file=400,
        rows_per_group=ROWS_PER_GROUP,
        storage_options=storage_options,
    )
    return ids


@pytest.fixture(scope="module")
def local_pool(tmp_path_factory):
    uri = str(tmp_path_factory.mktemp("pool") / "pool")
    ids = _write(uri)
    return uri, ids


def _config(uri, strategy, workers, storage_options=None, budget=15, label_column="label", model=MODEL, **options):
    return validate(
        {
            "pool": {"uri": uri, "label_column": label_column, "storage_options": storage_options or {}},
            "model": model,
            "selection": {"strategy": strategy, "budget": budget, "seed": 7, **OPTIONS.get(strategy, {}), **options},
            "cluster": {"workers": workers, "cpus_per_worker": 0.5},
        }
    )


def _core_selection(uri, strategy, labeled_ids, budget=15, options=None):
    """The single-process reference: the same model over the whole pool, then dist_al.core.select."""
    ids, probs, feats = embed_pool(uri, MODEL)
    labeled = np.isin(ids, labeled_ids)
    options = OPTIONS.get(strategy, {}) if options is None else options
    picks = select(strategy, probs, feats, budget, labeled=labeled, seed=7, **options)
    return ids[picks].tolist()


@pytest.fixture(scope="module")
def embedded(cluster, local_pool):
    """The local pool embedded by 1, 2 and 4 workers, kept resident for every strategy."""
    pools = {w: sharded_pool(_config(local_pool[0], "badge", w)) for w in (1, 2, 4)}
    yield pools
    for p in pools.values():
        p.close()


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_same_ids_for_1_2_4_workers_and_equal_to_core(embedded, local_pool, strategy):
    uri, ids = local_pool
    labeled = ids[::97][:8]
    runs = {
        w: p.select(strategy, 15, seed=7, options=OPTIONS.get(strategy), labeled_ids=labeled)
        for w, p in embedded.items()
    }
    picked = {w: r.table.column("id").to_pylist() for w, r in runs.items()}
    assert picked[1] == picked[2] == picked[4]
    assert picked[1] == _core_selection(uri, strategy, labeled)
    assert len(set(picked[1])) == 15 and not set(picked[1]) & set(labeled.tolist())
    assert runs[4].table.column("rank").to_pylist() == list(range(1, 16))


def test_bait_candidate_mode_same_ids_for_1_2_4_workers_and_equal_to_core(embedded, local_pool):
    """BAIT's candidate mode: 33 candidates for 22 forward steps over 1,192 rows, the others rescored from A
    on the way (lazy greedy); the rows each worker rescores depend on the sharding, the picks must not."""
    uri, ids = local_pool
    labeled = ids[::97][:8]
    options = {"oversample": 1.5, "mode": "candidates", "candidates": 1.5}
    picked = {
        w: p.select("bait", 15, seed=7, options=options, labeled_ids=labeled).table.column("id").to_pylist()
        for w, p in embedded.items()
    }
    assert picked[1] == picked[2] == picked[4] == _core_selection(uri, "bait", labeled, options=options)


def test_workers_spread_over_nodes(cluster, local_pool):
    from dist_al.runtime.sharded_pool import start_workers

    cfg = _config(local_pool[0], "badge", 3)
    pool = open_pool(cfg.pool)
    state = build_model(cfg.model).state_dict()
    workers = start_workers(cfg.pool, cfg.model, cfg.cluster, ray.put(state), plan_shards(pool, 3))
    ray.get([w.embed_step.remote(10**9) for w in workers])
    ray.get([w.embed_step.remote(10**9) for w in workers])
    nodes = {s["node"] for s in ray.get([w.summary.remote() for w in workers])}
    assert len(nodes) == 3


def test_s3_pool_on_moto_matches_local(cluster, local_pool, s3_bucket, s3_storage_options):
    uri = f"s3://{s3_bucket}/pool"
    _write(uri, s3_storage_options)
    got = run_selection(_config(uri, "badge", 3, s3_storage_options)).table.column("id").to_pylist()
    want = run_selection(_config(local_pool[0], "badge", 2)).table.column("id").to_pylist()
    assert got == want


def test_scores_and_strategy_columns(embedded):
    table = embedded[2].select("entropy", 15).table
    assert table.column_names == ["id", "rank", "strategy", "score"]
    scores = table.column("score").to_pylist()
    assert scores == sorted(scores, reverse=True)
    assert set(table.column("strategy").to_pylist()) == {"entropy"}


def test_budget_larger_than_pool_is_a_clear_error(embedded):
    with pytest.raises(ValueError, match="budget 5000 is larger than the 1200 unlabeled rows"):
        embedded[2].select("badge", 5000)


def test_duplicate_ids_are_reported_before_selection(cluster, tmp_path):
    feats, _ = gaussian_mixture(300, N_CLASSES, DIM, seed=1)
    ids = np.arange(300)
    ids[250] = 17
    write_pool(str(tmp_path / "dup"), ids, feats.numpy(), rows_per_file=100, rows_per_group=50)
    with pytest.raises(
        ValueError,
        match=r"id 17 appears 2 times: in \S+part-00000.parquet row group 0, "
        r"\S+part-00002.parquet row group 1$",
    ):
        run_selection(_config(str(tmp_path / "dup"), "badge", 3, label_column=None))


def test_badge_same_ids_for_1_and_3_workers_with_tiny_norm_rows(cluster, tmp_path):
    """30 rows of ordinary features, then 120 of ~1e-4 times that size with near-duplicates among them;
    a one-layer model, so h is the features. With 3 workers two shards hold only tiny rows, with 1 worker
    none does: the round-off threshold must not depend on what else a shard holds."""
    rng = np.random.default_rng(5)
    feats = rng.normal(size=(150, DIM)).astype(np.float32)
    feats[30:] *= 1e-4
    feats[31::4] = feats[30::4][: len(feats[31::4])] * np.float32(1 + 1e-2)
    uri = str(tmp_path / "tiny")
    write_pool(uri, np.arange(150), feats, rows_per_file=150, rows_per_group=50)
    linear = {"factory": "dist_al.models:mlp", "kwargs": {"in_dim": DIM, "n_classes": N_CLASSES, "depth": 0}}
    picked = []
    for workers in (1, 3):
        pool = sharded_pool(_config(uri, "badge", workers, label_column=None, model=linear))
        try:
            picked.append(pool.select("badge", 60, seed=7).table.column("id").to_pylist())
        finally:
            pool.close()
    assert len(set(picked[0])) == 60 and picked[0] == picked[1]


def test_badge_pruned_equals_full_pass_for_1_and_3_workers(cluster, tmp_path):
    """BADGE's pruning on the workers (a trained MLP's embeddings of noisy digits, the data where it skips most
    rows): the same ids with and without it, for 1 and 3 workers (shards of 1500 and 500 rows) and two seeds,
    and the core's ids on the same (p, h)."""
    from dist_al.models.embedder import Embedder
    from dist_al.testing.pools import noisy_digits, trained_digits_mlp

    network = trained_digits_mlp(hidden=32, steps=150)
    pixels, labels = noisy_digits(1500)
    uri = str(tmp_path / "digits")
    write_pool(uri, np.arange(1500), pixels.numpy(), labels.numpy(), rows_per_file=500, rows_per_group=100)
    model = {"factory": "dist_al.models:mlp", "kwargs": {"in_dim": 64, "n_classes": 10, "hidden": 32}}
    picked = {}
    for workers in (1, 3):
        pool = sharded_pool(_config(uri, "badge", workers, model=model), network)
        try:
            for seed, prune in itertools.product((7, 8), (True, False)):
                result = pool.select(
                    "badge", 80, seed=seed, options={"prune": prune}, labeled_ids=np.arange(0, 1500, 50)
                )
                picked[seed, workers, prune] = result.table.column("id").to_pylist()
        finally:
            pool.close()
    probs, feats = Embedder(network)(pixels)
    labeled = np.isin(np.arange(1500), np.arange(0, 1500, 50))
    for seed in (7, 8):
        core = select("badge", probs, feats, 80, labeled=labeled, seed=seed, prune=False).tolist()
        assert all(ids == core for (s, *_), ids in picked.items() if s == seed), picked
    assert picked[7, 1, True] != picked[8, 1, True]


def test_a_small_pool_selected_in_the_driver_gives_the_workers_ids(embedded, local_pool, monkeypatch):
    """cluster.driver_select_rows: a pool that small is selected in the driver on the workers' (p, h) (checked
    to have run there), with the same ids as on the workers, for every strategy and worker count."""
    from dist_al.runtime import sharded_pool as runtime

    in_driver = []

    class Recorded(runtime.LocalShards):
        def __init__(self, shards):
            in_driver.append(len(shards))
            super().__init__(shards)

    monkeypatch.setattr(runtime, "LocalShards", Recorded)
    labeled = local_pool[1][::97][:8]
    for strategy, (workers, pool) in itertools.product(STRATEGIES, embedded.items()):
        options = OPTIONS.get(strategy)
        want = pool.select(strategy, 15, seed=7, options=options, labeled_ids=labeled).table
        with monkeypatch.context() as m:
            m.setattr(pool, "cluster", pool.cluster.model_copy(update={"driver_select_rows": N_ROWS}))
            got = pool.select(strategy, 15, seed=7, options=options, labeled_ids=labeled).table
        assert got.column("id").to_pylist() == want.column("id").to_pylist(), (strategy, workers)
        scores = [(g, w) for g, w in zip(got.column("score").to_pylist(), want.column("score").to_pylist())]
        assert all(g == w or g == pytest.approx(w, rel=1e-5) for g, w in scores), (strategy, scores)
    assert in_driver == [w for _ in STRATEGIES for w in embedded]


def test_badge_compiled_graph_and_plain_actor_calls_give_the_same_ids(embedded, monkeypatch):
    """cluster.compiled_graph: exact BADGE's centres through a Ray compiled graph (checked to have run), or
    through plain actor calls; the same ids for 1, 2 and 4 workers."""
    from dist_al.runtime import sharded_pool as runtime

    graphs = []
    close = runtime.RayShards.close
    monkeypatch.setattr(runtime.RayShards, "close", lambda self: (graphs.append(self._graph), close(self))[1])
    picked = {}
    for workers, pool in embedded.items():
        for compiled in (True, False):
            monkeypatch.setattr(pool, "cluster", pool.cluster.model_copy(update={"compiled_graph": compiled}))
            picked[workers, compiled] = pool.select("badge", 40, seed=3).table.column("id").to_pylist()
    assert [g is not None for g in graphs] == [True, False] * 3
    assert len(set(map(tuple, picked.values()))) == 1, picked


def test_a_graph_that_cannot_be_compiled_falls_back_to_actor_calls(embedded, monkeypatch, caplog):
    """A Ray that cannot compile the graph (an older or restricted one): one warning, plain calls, the same ids."""
    import logging

    from ray.dag import MultiOutputNode

    pool = embedded[2]
    want = pool.select("badge", 30, seed=5).table.column("id").to_pylist()  # plain calls, the default
    monkeypatch.setattr(pool, "cluster", pool.cluster.model_copy(update={"compiled_graph": True}))

    def refuse(self, **kwargs):
        raise RuntimeError("shared-memory channels are not available here")

    monkeypatch.setattr(MultiOutputNode, "experimental_compile", refuse)
    caplog.set_level(logging.WARNING, logger="dist_al.runtime.sharded_pool")
    assert pool.select("badge", 30, seed=5).table.column("id").to_pylist() == want
    warnings = [r.getMessage() for r in caplog.records if "compiled graph" in r.getMessage()]
    assert warnings == [
        "Ray compiled graph unavailable (RuntimeError: shared-memory channels are not available here); "
        "coordinating with plain actor calls"
    ]
