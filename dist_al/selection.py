"""Distributed selection from a config: pool -> shard plan -> ShardWorkers -> core loop -> ids.

The coordinator (this process) never holds the pool: it reads Parquet footers,
ships one copy of the model weights, and runs the strategy's sequential part
on sketches the workers send back.
"""

from __future__ import annotations

import contextlib
import logging
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
from .model import ModelSpec, build_model
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
    """Connects to `address` (or RAY_ADDRESS), or starts a local Ray for the duration."""
    if ray.is_initialized():
        yield
        return
    kwargs = dict(logging_level=logging.ERROR, log_to_driver=False)
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, **kwargs)
    try:
        yield
    finally:
        ray.shutdown()


def start_workers(cfg: dict, state, shards) -> list:
    c = cfg["cluster"]
    actor = ray.remote(ShardWorker).options(
        num_cpus=c["cpus_per_worker"], num_gpus=c["gpus_per_worker"], scheduling_strategy="SPREAD", max_restarts=0
    )
    return [
        actor.remote(pool_spec(cfg), shard, model_spec(cfg), state, batch_size=cfg["model"]["batch_size"],
                     autocast=cfg["model"]["autocast"], threads=max(1, int(c["cpus_per_worker"])))
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


def check_unique_ids(workers: list) -> None:
    """Hash-partitioned duplicate check: no process ever holds all ids."""
    n = len(workers)
    parts = [w.id_buckets.options(num_returns=n).remote(n) for w in workers]
    if n == 1:
        parts = [[p] for p in parts]
    found = ray.get([workers[b].duplicate_id.remote(*[parts[w][b] for w in range(n)]) for b in range(n)])
    dup = next((d for d in found if d is not None), None)
    if dup is not None:
        raise PoolError(f"pool ids must be unique: id {dup!r} occurs more than once")


def run_selection(cfg: dict, *, labeled_ids=None, progress: bool = False) -> SelectionResult:
    strategy = cfg["selection"]["strategy"]
    options = resolve_options(strategy, strategy_options(cfg))
    if "progress" in options:
        options["progress"] = progress
    seed = check_seed(cfg["selection"]["seed"])

    pool = open_pool(pool_spec(cfg))  # schema problems surface here, before any model runs
    shards = plan_shards(pool, cfg["cluster"]["workers"])
    model = build_model(model_spec(cfg), seed=seed)  # one init, shipped: same weights on every worker
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    labeled = None if labeled_ids is None else np.asarray(labeled_ids)

    with ray_session(cfg["cluster"]["address"]):
        t0 = time.perf_counter()
        workers = start_workers(cfg, ray.put(state), shards)
        embed(workers, pool.num_rows, progress)
        check_unique_ids(workers)
        summary = ray.get(workers[0].summary.remote())
        if strategy == "bait":
            check_reduction(options, summary["classes"], summary["feat_dim"])
        t1 = time.perf_counter()
        counts = ray.get([w.start.remote(strategy, labeled, s.first_row) for w, s in zip(workers, shards)])
        budget = check_budget(cfg["selection"]["budget"], sum(counts))
        with torch.inference_mode():
            selection = run_strategy(strategy, RayShards(workers), budget, seed, options)
        by_shard: dict[int, list[int]] = {}
        for s, i in selection.picks:
            by_shard.setdefault(s, []).append(i)
        fetched = {s: iter(ray.get(workers[s].ids_at.remote(rows))) for s, rows in by_shard.items()}
        ids = [next(fetched[s]) for s, _ in selection.picks]
        t2 = time.perf_counter()
    scores = selection.scores if selection.scores is not None else [None] * len(ids)
    table = pa.table({
        "id": pa.array(ids),
        "rank": pa.array(np.arange(1, len(ids) + 1, dtype=np.int64)),
        "strategy": pa.array([strategy] * len(ids), pa.string()),
        "score": pa.array(scores, pa.float64()),
    })
    return SelectionResult(table, t1 - t0, t2 - t1, len(workers))
