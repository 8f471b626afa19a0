"""Distributed selection from a config: pool -> shard plan -> ShardWorkers -> core loop -> ids.

The coordinator (this process) never holds the pool: it reads Parquet footers,
ships one copy of the model weights, and runs the strategy's sequential part
on sketches the workers send back.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import ray
import torch

from .config import strategy_options
from .core.api import check_seed, resolve_options, run_strategy
from .core.bait import check_reduction
from .core.inputs import check_budget
from .core.progress import progress_bar
from .distributed import RayShards, ShardWorker
from .model import ModelSpec, build_model, classifier_layer
from .pool import PoolError, PoolSpec, open_pool, plan_shards

log = logging.getLogger(__name__)


@dataclass
class SelectionResult:
    table: pa.Table  # id, rank, strategy, score
    seconds_embed: float
    seconds_select: float
    workers: int


def pool_spec(cfg: dict) -> PoolSpec:
    p = cfg["pool"]
    return PoolSpec(p["uri"], p["id_column"], p["feature_column"], p["label_column"], p["storage_options"])


def model_spec(cfg: dict) -> ModelSpec:
    m = cfg["model"]
    return ModelSpec(m["factory"], m["kwargs"], m["checkpoint"], m["classifier"], cfg["pool"]["storage_options"])


@contextlib.contextmanager
def ray_session(address: str | None, num_cpus: int | None = None):
    """Connects to `address` (else RAY_ADDRESS, which a Ray Job's driver has), or starts a private local
    Ray for the duration: never silently joins a cluster some other `ray start` left on this machine."""
    if ray.is_initialized():
        yield
        return
    kwargs = dict(logging_level=logging.ERROR, log_to_driver=False)
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, **kwargs)
    try:
        yield
    finally:
        ray.shutdown()


def start_workers(cfg: dict, state, shards, *, labels: bool = False) -> list:
    c = cfg["cluster"]
    actor = ray.remote(ShardWorker).options(
        num_cpus=c["cpus_per_worker"], num_gpus=c["gpus_per_worker"], scheduling_strategy="SPREAD", max_restarts=0
    )
    return [
        actor.remote(pool_spec(cfg), shard, model_spec(cfg), state, batch_size=cfg["model"]["batch_size"],
                     autocast=cfg["model"]["autocast"], threads=max(1, int(c["cpus_per_worker"])), labels=labels)
        for shard in shards
    ]


def embed(workers: list, total_rows: int, progress: bool, step_rows: int = 65536) -> None:
    """Runs the embedding pass on every worker at once, with a progress bar over rows."""
    bar = progress_bar(total_rows, "embedding", progress)
    pending = {w.embed_step.remote(step_rows): w for w in workers}
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        worker = pending.pop(ready[0])
        rows = ray.get(ready[0])
        if rows:
            bar.update(rows)
            pending[worker.embed_step.remote(step_rows)] = worker
    bar.close()


def check_unique_ids_on_workers(workers: list) -> None:
    """Hash-partitioned duplicate check: no process ever holds all ids."""
    n = len(workers)
    parts = [w.id_buckets.options(num_returns=n).remote(n) for w in workers]
    if n == 1:
        parts = [[p] for p in parts]
    found = ray.get([workers[b].duplicate_id.remote(*[parts[w][b] for w in range(n)]) for b in range(n)])
    problem = next((d for d in found if d is not None), None)
    if problem is not None:
        raise PoolError(problem)


class ShardedPool:
    """A pool embedded by ShardWorkers and kept resident, so several selections reuse one pass.

    ``labels=True`` (simulation) also keeps the pool's label column on the
    workers (``pool.label_column`` must be set), for ``rows_at`` and
    ``labels_of``; ``reembed`` swaps in new model weights without restarting
    the actors.
    """

    def __init__(self, cfg: dict, *, progress: bool = False, labels: bool = False):
        self.cfg = cfg
        self.progress = progress
        if labels and not cfg["pool"]["label_column"]:
            raise ValueError("pool labels requested but config key pool.label_column is not set")
        pool = open_pool(pool_spec(cfg))  # schema problems surface here, before any model runs
        self.num_rows = pool.num_rows
        self.shards = plan_shards(pool, cfg["cluster"]["workers"])
        model = build_model(model_spec(cfg), seed=cfg["selection"]["seed"])  # one init, shipped to all
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        t0 = time.perf_counter()
        self.workers = start_workers(cfg, ray.put(state), self.shards, labels=labels)
        embed(self.workers, pool.num_rows, progress)
        check_unique_ids_on_workers(self.workers)
        self.summary = ray.get(self.workers[0].summary.remote())
        self.seconds_embed = time.perf_counter() - t0

    def reembed(self, state: dict) -> float:
        """Loads ``state`` (a state_dict of the same model) on every worker and embeds the pool again
        with it (features only: ids and labels stay resident); returns the seconds it took."""
        t0 = time.perf_counter()
        ref = ray.put({k: v.detach().cpu() for k, v in state.items()})
        ray.get([w.load_state.remote(ref) for w in self.workers])
        embed(self.workers, self.num_rows, self.progress)
        self.seconds_embed = time.perf_counter() - t0
        return self.seconds_embed

    def rows_at(self, rows) -> tuple[np.ndarray, np.ndarray]:
        """(ids, labels) of global row positions (pool order: shard order, then row order), in the given order."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= self.num_rows):
            raise ValueError(f"row positions must lie in [0, {self.num_rows})")
        starts = np.array([s.first_row for s in self.shards], dtype=np.int64)
        shard_of = np.searchsorted(starts, rows, side="right") - 1
        ids, labels = np.zeros(len(rows), dtype=np.int64), np.zeros(len(rows), dtype=np.int64)
        shards = np.unique(shard_of)
        fetched = ray.get([self.workers[s].rows_at.remote(rows[shard_of == s] - starts[s]) for s in shards])
        for s, (got_ids, got_labels) in zip(shards, fetched):
            where = shard_of == s
            if got_ids.dtype != ids.dtype:
                ids = ids.astype(got_ids.dtype)  # string ids: an object array
            ids[where] = got_ids
            labels[where] = got_labels
        return ids, labels

    def labels_of(self, ids) -> np.ndarray:
        """The labels of ``ids`` (in that order), looked up on the workers that hold them."""
        ids = np.asarray(ids)
        labels = np.full(len(ids), -1, dtype=np.int64)
        found = np.zeros(len(ids), dtype=bool)
        ref = ray.put(ids)
        for pos, lab in ray.get([w.labels_of.remote(ref) for w in self.workers]):
            labels[pos] = lab
            found[pos] = True
        if not found.all():
            missing = ids[~found]
            raise ValueError(f"{len(missing)} id(s) are not in pool {self.cfg['pool']['uri']}, "
                             f"e.g. {missing[0].item() if isinstance(missing[0], np.generic) else missing[0]!r}")
        return labels

    def select(self, strategy: str, budget: int, *, seed: int = 0, options: dict | None = None,
               labeled_ids=None) -> SelectionResult:
        options = resolve_options(strategy, options or {})
        if "progress" in options:
            options["progress"] = self.progress
        seed = check_seed(seed)
        if strategy == "bait":
            check_reduction(options, self.summary["classes"], self.summary["feat_dim"])
        labeled = None if labeled_ids is None else np.asarray(labeled_ids)
        t0 = time.perf_counter()
        counts = ray.get([w.start.remote(strategy, labeled, s.first_row) for w, s in zip(self.workers, self.shards)])
        budget = check_budget(budget, sum(counts))
        with torch.inference_mode():
            selection = run_strategy(strategy, RayShards(self.workers), budget, seed, options)
        by_shard: dict[int, list[int]] = {}
        for s, i in selection.picks:
            by_shard.setdefault(s, []).append(i)
        fetched = {s: iter(ray.get(self.workers[s].ids_at.remote(rows))) for s, rows in by_shard.items()}
        ids = [next(fetched[s]) for s, _ in selection.picks]
        scores = selection.scores if selection.scores is not None else [None] * len(ids)
        table = pa.table({
            "id": pa.array(ids),
            "rank": pa.array(np.arange(1, len(ids) + 1, dtype=np.int64)),
            "strategy": pa.array([strategy] * len(ids), pa.string()),
            "score": pa.array(scores, pa.float64()),
        })
        return SelectionResult(table, self.seconds_embed, time.perf_counter() - t0, len(self.workers))

    def close(self) -> None:
        for w in self.workers:
            ray.kill(w)
        self.workers = []


def preflight(cfg: dict, n_labeled: int = 0) -> None:
    """What can be checked without Ray (pool footers, model and checkpoint, budget, BAIT's size), so bad input
    fails in seconds, before any worker starts or anything is written. ``n_labeled``: labeled ids known to be
    in the pool."""
    pool = open_pool(pool_spec(cfg))
    model = build_model(model_spec(cfg), seed=cfg["selection"]["seed"])
    check_budget(cfg["selection"]["budget"], pool.num_rows - n_labeled)
    strategy = cfg["selection"]["strategy"]
    if strategy == "bait":
        layer = classifier_layer(model, cfg["model"]["classifier"])
        check_reduction(resolve_options(strategy, strategy_options(cfg)), layer.out_features, layer.in_features)


def run_selection(cfg: dict, *, labeled_ids=None, progress: bool = False) -> SelectionResult:
    """One selection as the config says: embed the pool on Ray, select, return the ids."""
    sel = cfg["selection"]
    preflight(cfg)
    with ray_session(cfg["cluster"]["address"]):
        pool = ShardedPool(cfg, progress=progress)
        try:
            return pool.select(sel["strategy"], sel["budget"], seed=sel["seed"], options=strategy_options(cfg),
                               labeled_ids=labeled_ids)
        finally:
            pool.close()


def select(config, *, overrides=(), labeled_ids=None, progress: bool = False) -> pa.Table:
    """Notebook entry point: a config (YAML path or dict) in, the selection table (id, rank, strategy, score) out."""
    from .config import load_config

    cfg = load_config(config, overrides) if isinstance(config, str) else load_config(None, overrides, base=config)
    return run_selection(cfg, labeled_ids=labeled_ids, progress=progress).table
