"""`dist-al bench distributed`: ratios for the Ray layer, measured in one run on this machine.

- coordination overhead per exact-BADGE centre with 2 workers, and distributed / single-process
  time for BADGE on the same (p, h) rows;
- embedding-pass throughput (Parquet read with prefetch + model) / bare model forward throughput
  on the same rows already in memory, same process and threads;
- a full `dist-al select` (embed + BADGE, and embed + BAIT with its default mode, which is candidate
  mode at this size) on a large pool on local disk: wall time and peak memory summed over the driver
  and every Ray process;
- training's read of its labeled rows (1 in 400 of the pool, spread over it) from the rows
  recorded at selection, as a ratio to one full pass over the pool; with the pass over ids that
  labels without a record need, and the recording itself, for comparison.

With --device cuda the model forward and the single-process selection run on the GPU, and the
ShardWorkers get half a GPU each.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import pyarrow.parquet as pq
import torch

from dist_al.bench import options
from dist_al.campaign.train import gather_labeled
from dist_al.config import Config, ModelConfig, PoolConfig, validate
from dist_al.core import select
from dist_al.data.pool import (
    open_pool,
    plan_shards,
    read_rows,
    read_shard,
    rows_table,
    shard_places,
    write_pool,
)
from dist_al.data.synthetic import gaussian_mixture
from dist_al.models.build import build_model
from dist_al.models.embedder import Embedder

K, D = 10, 128
ROWS = ("coordination", "embedding", "full", "bait-full", "gather")


def _model_config(hidden: int = D, depth: int = 2) -> ModelConfig:
    return ModelConfig(kwargs={"in_dim": D, "n_classes": K, "hidden": hidden, "depth": depth})


def _make_pool(path: str, rows: int) -> None:
    """Writes in slices so making a 2M-row pool does not need the whole pool in memory."""
    step = 250_000
    parts = []
    for lo in range(0, rows, step):
        n = min(step, rows - lo)
        feats, labels = gaussian_mixture(n, K, D, seed=lo)
        sub = os.path.join(path, f"slice-{lo // step:04d}")
        write_pool(
            sub,
            np.arange(lo, lo + n, dtype=np.int64),
            feats.numpy(),
            labels.numpy(),
            rows_per_file=step,
            rows_per_group=16_384,
        )
        parts.append(sub)


def _gpus_per_worker(device: torch.device | None) -> float:
    return 0.5 if device is not None and device.type == "cuda" else 0  # two ShardWorkers share the one GPU


def _cfg(uri: str, workers: int, budget: int, device: torch.device | None = None, strategy: str = "badge") -> Config:
    return validate(
        {
            "pool": {"uri": uri, "label_column": "label"},
            "model": _model_config().model_dump(),
            "selection": {"strategy": strategy, "budget": budget, "seed": 0},
            "cluster": {"workers": workers, "cpus_per_worker": 1, "gpus_per_worker": _gpus_per_worker(device)},
        }
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _embed_in_driver(uri: str, device: torch.device):
    pool = open_pool(PoolConfig(uri=uri))
    embed = Embedder(build_model(_model_config(), seed=0), device=device)
    probs, feats = [], []
    for batch in read_shard(pool, plan_shards(pool, 1)[0]):
        p, h = embed(torch.from_numpy(batch["features"].copy()))
        probs.append(p)
        feats.append(h)
    return torch.cat(probs), torch.cat(feats)


def bench_coordination(uri: str, rows: int, budget: int, device: torch.device) -> list[dict]:
    import ray

    from dist_al.runtime.cluster import ray_session
    from dist_al.runtime.selection import sharded_pool

    probs, feats = _embed_in_driver(uri, device)
    torch.set_num_threads(2)
    _sync(device)
    t0 = time.perf_counter()
    local = select("badge", probs, feats, budget, seed=0)
    single = time.perf_counter() - t0
    with ray_session(None, num_cpus=2):
        pool = sharded_pool(_cfg(uri, 2, budget, device), build_model(_model_config(), seed=0))
        pool.select("badge", 2)  # warm-up: worker code paths and RPC connections
        dist = pool.select("badge", budget).seconds_select
        ids = pool.select("badge", budget).table.column("id").to_pylist()
        # the RPC cost alone: a no-op round on both workers, as one k-means++ step makes two
        t0 = time.perf_counter()
        reps = 200
        for _ in range(reps):
            ray.get([w.summary.remote() for w in pool.workers])
        rpc = (time.perf_counter() - t0) / reps
        pool.close()
    same = ids == [int(i) for i in np.arange(rows)[local]]  # ids are row numbers in this pool
    return [
        {
            "name": f"BADGE coordination per centre, 2 workers (N={rows:,}, B={budget})",
            "figure": f"{(dist - single) / budget * 1e3:.2f} ms/centre over single-process; "
            f"2 RPC rounds = {2 * rpc * 1e3:.2f} ms",
            "ratio": None,
            "goal": "measure",
            "met": None,
        },
        {
            "name": f"BADGE distributed (2 workers) / single process (N={rows:,}, B={budget})",
            "figure": f"{dist:.2f} s vs {single:.2f} s; same ids: {same}",
            "ratio": dist / single,
            "goal": "<= 1.5",
            "met": dist / single <= 1.5,
        },
    ]


def bench_embedding(uri: str, hidden: int, depth: int, device: torch.device) -> dict:
    """Pass (read with prefetch + model) vs bare forward on in-memory rows, same process and threads.

    Also times reading alone: overlap = (read + forward - pass) / min(read, forward) is 1 when the
    shorter of the two is fully hidden behind the longer and 0 when they run one after the other.
    """
    torch.set_num_threads(2)
    pool = open_pool(PoolConfig(uri=uri))
    shard = plan_shards(pool, 1)[0]
    embed = Embedder(build_model(_model_config(hidden, depth), seed=0), device=device)
    in_memory = [torch.from_numpy(b["features"].copy()) for b in read_shard(pool, shard)]  # host memory
    for x in in_memory[:2]:
        embed(x)  # warm-up
    best = {"bare": float("inf"), "read": float("inf"), "pass": float("inf")}
    for _ in range(3):
        _sync(device)
        t0 = time.perf_counter()
        for x in in_memory:
            embed(x)
        _sync(device)
        best["bare"] = min(best["bare"], time.perf_counter() - t0)
        t0 = time.perf_counter()
        for b in read_shard(pool, shard):
            torch.from_numpy(b["features"].copy())
        best["read"] = min(best["read"], time.perf_counter() - t0)
        t0 = time.perf_counter()
        for b in read_shard(pool, shard):
            embed(torch.from_numpy(b["features"].copy()))
        _sync(device)
        best["pass"] = min(best["pass"], time.perf_counter() - t0)
    rows = pool.num_rows
    ratio = best["bare"] / best["pass"]  # = pass throughput / bare throughput
    overlap = (best["read"] + best["bare"] - best["pass"]) / min(best["read"], best["bare"])
    rate = {k: f"{rows / v:,.0f}" for k, v in best.items()}
    return {
        "name": f"embedding pass / bare forward throughput (N={rows:,}, D={D}, MLP hidden {hidden} x {depth}, "
        f"{device.type})",
        "figure": f"pass {rate['pass']} vs bare {rate['bare']} rows/s; reading alone {rate['read']} rows/s; "
        f"overlap {overlap:.2f}",
        "ratio": ratio,
        "goal": ">= 0.8",
        "met": ratio >= 0.8,
    }


class _PeakMemory:
    """Peak of the summed PSS of this process and all its descendants (raylet, Ray workers).

    PSS, not RSS: every Ray process maps the same torch and Ray libraries, and summed RSS would
    count those shared pages once per process.
    """

    def __init__(self, interval: float = 0.5):
        import psutil

        self.psutil, self.interval, self.peak = psutil, interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        me = self.psutil.Process()
        while not self._stop.is_set():
            total = 0
            for p in [me] + me.children(recursive=True):
                try:
                    total += p.memory_full_info().pss
                except self.psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


# goals of the full select: (seconds, GiB summed over processes) per strategy
FULL_GOALS = {"badge": (600, 8), "bait": (900, 12)}


def bench_full_select(
    uri: str, rows: int, budget: int, workdir: str, device: torch.device, strategy: str = "badge"
) -> dict:
    """`dist-al select` as users run it, in a child process whose process tree is measured."""
    cfg = os.path.join(workdir, "bench.yaml")
    with open(cfg, "w") as f:
        f.write(
            f"pool: {{uri: {uri}}}\nmodel: {{factory: 'dist_al.models:mlp', "
            f"kwargs: {{in_dim: {D}, n_classes: {K}, hidden: {D}}}}}\n"
            f"selection: {{strategy: {strategy}, budget: {budget}}}\n"
            f"cluster: {{workers: 2, gpus_per_worker: {_gpus_per_worker(device)}}}\nworkdir: {workdir}\n"
        )
    load_before = _load()
    t0 = time.perf_counter()
    with _PeakMemory() as peak:
        out = subprocess.run(
            [sys.executable, "-m", "dist_al.cli", "select", "--config", cfg, "--no-progress"],
            capture_output=True,
            text=True,
        )
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        return {
            "name": "full select",
            "figure": f"failed: {out.stderr.strip()[-300:]}",
            "ratio": None,
            "goal": "",
            "met": False,
        }
    gib = peak.peak / 2**30
    seconds, gib_goal = FULL_GOALS[strategy]
    return {
        "name": f"full `dist-al select` (N={rows:,}, D={D}, K={K}, {strategy.upper()} B={budget}, 2 workers, "
        f"{device.type})",
        "figure": f"{wall:.0f} s wall, peak {gib:.2f} GiB (PSS summed over all processes), load average before / "
        f"after {load_before} / {_load()} ({out.stdout.strip()})",
        "ratio": None,
        "goal": f"<= {seconds} s, <= {gib_goal} GiB",
        "met": wall <= seconds and gib <= gib_goal,
    }


def bench_gather(uri: str, rows: int, labeled: int, workdir: str) -> dict:
    """Training's read of `labeled` rows spread over the pool, recorded at selection, against one full pass."""
    pool = open_pool(PoolConfig(uri=uri))
    shard = plan_shards(pool, 1)[0]
    picked = np.sort(np.random.default_rng(0).choice(rows, labeled, replace=False))  # ids are row numbers here
    labels = {int(i): 0 for i in picked}
    pool_cfg = _cfg(uri, 1, 1).pool

    def full_pass():
        for _ in read_shard(pool, shard, columns=("id", "features")):
            pass

    def record():  # what the ShardWorkers do right after selecting, each for its own shard, here in one process
        places = shard_places(shard, picked)
        pq.write_table(rows_table(pool, picked, places, read_rows(pool, places)), recorded_uri)

    recorded_uri = os.path.join(workdir, "selected_rows.parquet")
    t_full, _ = _best(full_pass)
    t_record, _ = _best(record)
    t_gather, got = _best(lambda: gather_labeled(pool_cfg, labels, pq.read_table(recorded_uri)))  # as train_step reads
    t_by_id, want = _best(lambda: gather_labeled(pool_cfg, labels))
    same = all(np.array_equal(a, b) for a, b in zip(got, want))
    starts = np.cumsum([0] + [n for _, _, n in pool.row_groups])
    touched = len(np.unique(np.searchsorted(starts, picked, side="right")))
    ratio = t_gather / t_full
    return {
        "name": f"gather {labeled:,} labeled rows for training from recorded rows / one full pass (N={rows:,}, D={D})",
        "figure": f"{t_gather:.3f} s vs {t_full:.2f} s; the rows lie in {touched} of {len(pool.row_groups)} row "
        f"groups; without records (one pass over ids, then those row groups) {t_by_id:.2f} s = "
        f"{t_by_id / t_full:.2f} of a pass; recording them at selection, one process "
        f"{t_record:.2f} s; same rows: {same}",
        "ratio": ratio,
        "goal": "<= 0.05",
        "met": ratio <= 0.05 and same,
    }


def _load() -> str:
    """The 1-minute load average: the machine may be shared, and figures are read next to it."""
    return f"{os.getloadavg()[0]:.2f}"


def _best(fn, repeats: int = 2):
    """(the shortest of `repeats` timed calls, the last call's result)."""
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="dist-al bench distributed", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    options.add_common(parser, ROWS, quick="small sizes (seconds), for smoke tests")
    parser.add_argument(
        "--rows", type=int, default=None, help="rows of the large pool (default 2,000,000; 100,000 with --quick)"
    )
    args = parser.parse_args(argv)
    device = options.device(parser, args.device)
    only = options.only(parser, args.only, ROWS)
    small, large, budget_small, budget_large = (
        (20_000, 100_000, 50, 100) if args.quick else (200_000, 2_000_000, 200, 1000)
    )
    large = args.rows or large
    print(f"command: dist-al bench distributed {shlex.join(argv)}")
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, torch {torch.__version__}, "
        f"device {device}\n"
    )
    rows = []
    with tempfile.TemporaryDirectory(prefix="dist-al-bench-") as tmp:
        small_uri, large_uri = os.path.join(tmp, "small"), os.path.join(tmp, "large")
        if {"coordination", "embedding"} & set(only):
            _make_pool(small_uri, small)
        if {"coordination", "full", "bait-full", "gather"} & set(only):
            _make_pool(large_uri, large)
        for name in only:
            if name == "coordination":
                rows += bench_coordination(small_uri, small, budget_small, device)
                # the same comparison where per-centre work dwarfs the RPCs
                rows += bench_coordination(large_uri, large, budget_small // 2, device)
            elif name == "embedding":
                rows.append(bench_embedding(small_uri, D, 2, device))  # tiny head: reading-bound
                rows.append(bench_embedding(small_uri, 1024, 2, device))  # production-size head
            elif name == "full":
                rows.append(bench_full_select(large_uri, large, budget_large, tmp, device))
            elif name == "bait-full":
                rows.append(bench_full_select(large_uri, large, budget_large, tmp, device, "bait"))
            else:
                rows.append(bench_gather(large_uri, large, large // 400, tmp))
    print("| benchmark | measured | ratio | goal | met |")
    print("|---|---|---:|---|---|")
    for r in rows:
        ratio = "" if r["ratio"] is None else f"{r['ratio']:.3f}" if r["ratio"] < 0.1 else f"{r['ratio']:.2f}"
        met = "" if r["met"] is None else ("yes" if r["met"] else "NO")
        print(f"| {r['name']} | {r['figure']} | {ratio} | {r['goal']} | {met} |")
    return 0
