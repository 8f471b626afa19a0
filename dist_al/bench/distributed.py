"""`dist-al bench distributed`: ratios for the Ray layer, measured in one run on this machine.

- coordination overhead per exact-BADGE centre with 2 workers, and distributed / single-process
  time for BADGE on the same (p, h) rows;
- embedding-pass throughput (Parquet read with prefetch + model) / bare model forward throughput
  on the same rows already in memory, same process and threads;
- a full `dist-al select` (embed + BADGE) on a large pool on local disk: wall time and peak
  memory summed over the driver and every Ray process.
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
import torch

from ..config import validate
from ..core import select
from ..model import Embedder, ModelSpec, build_model
from ..pool import PoolSpec, open_pool, plan_shards, read_shard, write_pool
from ..synthetic import gaussian_mixture

K, D = 10, 128


def _model_spec() -> dict:
    return {"factory": "dist_al.models:mlp", "kwargs": {"in_dim": D, "n_classes": K, "hidden": D}}


def _make_pool(path: str, rows: int) -> None:
    """Writes in slices so making a 2M-row pool does not need the whole pool in memory."""
    step = 250_000
    parts = []
    for lo in range(0, rows, step):
        n = min(step, rows - lo)
        feats, labels = gaussian_mixture(n, K, D, seed=lo)
        sub = os.path.join(path, f"slice-{lo // step:04d}")
        write_pool(sub, np.arange(lo, lo + n, dtype=np.int64), feats.numpy(), labels.numpy(),
                   rows_per_file=step, rows_per_group=16_384)
        parts.append(sub)


def _cfg(uri: str, workers: int, budget: int, strategy: str = "badge") -> dict:
    return validate({
        "pool": {"uri": uri, "label_column": "label"},
        "model": _model_spec(),
        "selection": {"strategy": strategy, "budget": budget, "seed": 0},
        "cluster": {"workers": workers, "cpus_per_worker": 1},
    })


def _embed_in_driver(uri: str):
    pool = open_pool(PoolSpec(uri))
    embed = Embedder(build_model(ModelSpec(**_model_spec()), seed=0))
    probs, feats = [], []
    for batch in read_shard(pool, plan_shards(pool, 1)[0]):
        p, h = embed(torch.from_numpy(batch["features"].copy()))
        probs.append(p)
        feats.append(h)
    return torch.cat(probs), torch.cat(feats)


def bench_coordination(uri: str, rows: int, budget: int) -> list[dict]:
    import ray

    from ..selection import ShardedPool, ray_session

    probs, feats = _embed_in_driver(uri)
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    local = select("badge", probs, feats, budget, seed=0)
    single = time.perf_counter() - t0
    with ray_session(None, num_cpus=2):
        pool = ShardedPool(_cfg(uri, 2, budget))
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
        {"name": f"BADGE coordination per centre, 2 workers (N={rows:,}, B={budget})",
         "figure": f"{(dist - single) / budget * 1e3:.2f} ms/centre over single-process; "
                   f"2 RPC rounds = {2 * rpc * 1e3:.2f} ms", "ratio": None, "goal": "measure", "met": None},
        {"name": f"BADGE distributed (2 workers) / single process (N={rows:,}, B={budget})",
         "figure": f"{dist:.2f} s vs {single:.2f} s; same ids: {same}", "ratio": dist / single,
         "goal": "<= 1.5", "met": dist / single <= 1.5},
    ]


def bench_embedding(uri: str, hidden: int, depth: int) -> dict:
    """Pass (read with prefetch + model) vs bare forward on in-memory rows, same process and threads.

    Also times reading alone: overlap = (read + forward - pass) / min(read, forward) is 1 when the
    shorter of the two is fully hidden behind the longer and 0 when they run one after the other.
    """
    torch.set_num_threads(2)
    pool = open_pool(PoolSpec(uri))
    shard = plan_shards(pool, 1)[0]
    spec = ModelSpec("dist_al.models:mlp", {"in_dim": D, "n_classes": K, "hidden": hidden, "depth": depth})
    embed = Embedder(build_model(spec, seed=0))
    in_memory = [torch.from_numpy(b["features"].copy()) for b in read_shard(pool, shard)]
    for x in in_memory[:2]:
        embed(x)  # warm-up
    best = {"bare": float("inf"), "read": float("inf"), "pass": float("inf")}
    for _ in range(3):
        t0 = time.perf_counter()
        for x in in_memory:
            embed(x)
        best["bare"] = min(best["bare"], time.perf_counter() - t0)
        t0 = time.perf_counter()
        for b in read_shard(pool, shard):
            torch.from_numpy(b["features"].copy())
        best["read"] = min(best["read"], time.perf_counter() - t0)
        t0 = time.perf_counter()
        for b in read_shard(pool, shard):
            embed(torch.from_numpy(b["features"].copy()))
        best["pass"] = min(best["pass"], time.perf_counter() - t0)
    rows = pool.num_rows
    ratio = best["bare"] / best["pass"]  # = pass throughput / bare throughput
    overlap = (best["read"] + best["bare"] - best["pass"]) / min(best["read"], best["bare"])
    rate = {k: f"{rows / v:,.0f}" for k, v in best.items()}
    return {"name": f"embedding pass / bare forward throughput (N={rows:,}, D={D}, MLP hidden {hidden} x {depth})",
            "figure": f"pass {rate['pass']} vs bare {rate['bare']} rows/s; reading alone {rate['read']} rows/s; "
                      f"overlap {overlap:.2f}", "ratio": ratio, "goal": ">= 0.8", "met": ratio >= 0.8}


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


def bench_full_select(uri: str, rows: int, budget: int, workdir: str) -> dict:
    """`dist-al select` as users run it, in a child process whose process tree is measured."""
    cfg = os.path.join(workdir, "bench.yaml")
    with open(cfg, "w") as f:
        f.write(f"pool: {{uri: {uri}}}\nmodel: {{factory: 'dist_al.models:mlp', "
                f"kwargs: {{in_dim: {D}, n_classes: {K}, hidden: {D}}}}}\n"
                f"selection: {{strategy: badge, budget: {budget}}}\ncluster: {{workers: 2}}\nworkdir: {workdir}\n")
    t0 = time.perf_counter()
    with _PeakMemory() as peak:
        out = subprocess.run([sys.executable, "-m", "dist_al.cli", "select", "--config", cfg, "--no-progress"],
                             capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        return {"name": "full select", "figure": f"failed: {out.stderr.strip()[-300:]}", "ratio": None,
                "goal": "", "met": False}
    gib = peak.peak / 2**30
    return {"name": f"full `dist-al select` (N={rows:,}, D={D}, K={K}, BADGE B={budget}, 2 workers)",
            "figure": f"{wall:.0f} s wall, peak {gib:.2f} GiB (PSS summed over all processes) ({out.stdout.strip()})",
            "ratio": None, "goal": "<= 600 s, <= 8 GiB", "met": wall <= 600 and gib <= 8}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dist-al bench distributed", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes (seconds), for smoke tests")
    parser.add_argument("--only", choices=["coordination", "embedding", "full"], action="append",
                        help="run only these rows (repeatable)")
    args = parser.parse_args(argv)
    small, large, budget_small, budget_large = (20_000, 100_000, 50, 100) if args.quick else \
        (200_000, 2_000_000, 200, 1000)
    only = set(args.only or ["coordination", "embedding", "full"])
    print(f"command: dist-al bench distributed {shlex.join(argv or [])}")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, torch {torch.__version__}\n")
    rows = []
    with tempfile.TemporaryDirectory(prefix="dist-al-bench-") as tmp:
        small_uri = os.path.join(tmp, "small")
        _make_pool(small_uri, small)
        if "coordination" in only:
            rows += bench_coordination(small_uri, small, budget_small)
        if "embedding" in only:
            rows.append(bench_embedding(small_uri, hidden=D, depth=2))  # tiny head: reading-bound
            rows.append(bench_embedding(small_uri, hidden=1024, depth=2))  # production-size head
        if "full" in only or "coordination" in only:
            large_uri = os.path.join(tmp, "large")
            _make_pool(large_uri, large)
        if "coordination" in only:  # the same comparison where per-centre work dwarfs the RPCs
            rows += bench_coordination(large_uri, large, budget_small // 2)
        if "full" in only:
            rows.append(bench_full_select(large_uri, large, budget_large, tmp))
    print("| benchmark | measured | ratio | goal | met |")
    print("|---|---|---:|---|---|")
    for r in rows:
        ratio = "" if r["ratio"] is None else f"{r['ratio']:.2f}"
        met = "" if r["met"] is None else ("yes" if r["met"] else "NO")
        print(f"| {r['name']} | {r['figure']} | {ratio} | {r['goal']} | {met} |")
    return 0
