"""Where the embedding pass's time goes with the tiny 128 x 2 head (issue 15, goal 4; docs/BENCHMARKS.md), in this
process on a 200,000-row pool of make-pool's layout, best of 3: reading the row groups alone, the vectors reader
alone, the bare forward, the pipeline alone, and three ways to run them together: the pipeline's (reading and
decoding in background threads), everything in the main thread, and two row groups read at once in two threads
between forwards. Wall and CPU time each.

    .venv/bin/python scripts/embedding_split.py [POOL_DIR]
"""

import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import pyarrow.parquet as pq
import torch

from dist_al.bench import distributed as bench
from dist_al.config import InputsConfig, PoolConfig
from dist_al.data.pool import plan_shards, read_shard
from dist_al.inputs.contract import open_inputs
from dist_al.models.build import build_model
from dist_al.models.embedder import Embedder

ROWS = 200_000


def main() -> None:
    torch.set_num_threads(2)
    path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(tempfile.gettempdir(), "dist-al-embedding-split")
    if not os.path.exists(path):
        bench._make_pool(path, ROWS, "binary")
    pool, reader = open_inputs(PoolConfig(uri=path), InputsConfig())
    shard = plan_shards(pool, 1)[0]
    embed = Embedder(build_model(bench._model_config(128, 2), seed=0), device="cpu")
    batch = bench.BATCH_ROWS

    def raw():
        return read_shard(pool, shard, ("id",), batch_rows=batch, inputs=reader.columns)

    stored = list(raw())
    xs = [reader(b["inputs"]) for b in stored]
    groups = [(f, g) for f, meta in zip(pool.files, pool.metadata) for g in range(meta.num_row_groups)]
    threads = ThreadPoolExecutor(2)

    def row_group(fg):  # a ParquetFile per call: one is not safe to read from two threads
        f, g = fg
        vectors = (
            pq.ParquetFile(f, memory_map=True)
            .read_row_group(g, columns=reader.columns)
            .combine_chunks()
            .to_batches()[0]
        )
        return [reader(vectors.slice(lo, batch)) for lo in range(0, vectors.num_rows, batch)]

    ways = {
        "reading the row groups": lambda: [None for _ in raw()],
        "the vectors reader": lambda: [reader(b["inputs"]) for b in stored],
        "bare forward": lambda: [embed(x) for x in xs],
        "pipeline alone": lambda: [None for _ in bench._batches(path)],
        "pass, background threads": lambda: [embed(b.x) for b in bench._batches(path)],
        "pass, main thread": lambda: [embed(reader(b["inputs"])) for b in raw()],
        "pass, 2 row groups between forwards": lambda: [
            embed(x)
            for lo in range(0, len(groups), 2)
            for part in threads.map(row_group, groups[lo : lo + 2])
            for x in part
        ],
    }
    bare = None
    for name, way in ways.items():
        way()  # warm-up
        best = min(_timed(way) for _ in range(3))
        bare = best[0] if name == "bare forward" else bare
        ratio = f", {bare / best[0]:.2f} of the bare forward" if bare and name.startswith("pass") else ""
        print(f"{name:38s} wall {best[0] * 1e3:7.1f} ms  cpu {best[1] * 1e3:7.1f} ms{ratio}", flush=True)


def _timed(fn) -> tuple[float, float]:
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


if __name__ == "__main__":
    main()
