"""`dist-al demo`: learning curves of badge, bait and random on scikit-learn's bundled digits.

Writes a pool (with its label column) and a test set from scikit-learn's bundled digits
(``dist_al.data.digits``: no download) under the workdir, then runs the
simulation of ``configs/demo.yaml`` (``dist_al.experiments.simulate``) on a local Ray:
ShardWorker actors embed the pool with each round's model, the strategies
select, the hidden labels are revealed, the MLP is retrained in-process
(``train.backend: local``) and scored on the test set.  Prints the mean
accuracy per strategy and label count and writes
``{workdir}/simulation/curve.csv`` and ``curve.png``.

Reproduce it with the general command once the pools exist::

    dist-al simulate --config configs/demo.yaml --set pool.uri=./dist-al-demo/pool
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

__all__ = ["DEMO_CONFIG", "run_demo", "write_digits_pools"]

#: The demo's settings (a real config file: `dist-al simulate --config` runs it too).
DEMO_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"
EVAL_ROWS = 500
_SPLIT_SEED = 0


def write_digits_pools(workdir: str) -> tuple[str, str, int, int]:
    """Writes {workdir}/pool (ids, features in [0, 1], labels) and {workdir}/eval; returns (pool, eval, rows, rows).

    Both are replaced if they exist (they are the demo's own, always the same data).
    """
    from dist_al.data.digits import load_digits
    from dist_al.data.writer import write_pool

    x, y = load_digits()
    x = (x / 16.0).astype(np.float32)  # pixel intensities 0..16
    order = np.random.default_rng(_SPLIT_SEED).permutation(len(y))
    test, pool = np.sort(order[:EVAL_ROWS]), np.sort(order[EVAL_ROWS:])
    pool_uri, eval_uri = os.path.join(workdir, "pool"), os.path.join(workdir, "eval")
    # ids are the rows' indices in load_digits; small row groups so the pool splits over the workers
    write_pool(pool_uri, pool.astype(np.int64), x[pool], y[pool], rows_per_group=128, overwrite=True)
    write_pool(eval_uri, test.astype(np.int64), x[test], y[test], overwrite=True)
    return pool_uri, eval_uri, len(pool), len(test)


def run_demo(
    workdir: str = "./dist-al-demo",
    *,
    seeds: int | None = None,
    config: str | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    progress: bool = True,
) -> int:
    import yaml

    from dist_al.config import ConfigError, load_config
    from dist_al.experiments.simulate import curve_uris, format_table, simulate

    path = Path(config) if config else DEMO_CONFIG
    if not path.is_file():
        raise ConfigError(
            f"demo config {path} does not exist (it ships in the repository's configs/ directory; pass --config)"
        )
    t0 = time.perf_counter()
    pool_uri, eval_uri, n_pool, n_eval = write_digits_pools(workdir)
    with open(path) as f:
        raw = yaml.safe_load(f) or {}
    raw.setdefault("pool", {})["uri"] = pool_uri
    raw.setdefault("eval", {})["uri"] = eval_uri
    raw["workdir"] = workdir
    cfg = load_config(None, overrides, base=raw)
    sim, sel = cfg.simulation, cfg.selection
    seeds = sim.seeds if seeds is None else seeds
    print(
        f"digits (scikit-learn): {n_pool} pool rows with hidden labels, {n_eval} test rows, 64 features, "
        f"10 classes\n{sim.strategies or sel.strategy}: {sim.initial_labeled} random labels, then "
        f"{sim.rounds} rounds of +{sel.budget}; model {cfg.model.factory} {cfg.model.kwargs}, "
        f"retrained each round ({cfg.train.backend} backend); {seeds} seed(s); "
        f"{cfg.cluster.workers} Ray workers\n",
        flush=True,
    )
    records = simulate(cfg, seeds=seeds, progress=progress, name="digits (scikit-learn) pool")
    csv_uri, png_uri = curve_uris(cfg)
    print(format_table(records))
    print(f"\ncurve: {csv_uri}, {png_uri} ({time.perf_counter() - t0:.0f}s)")
    print(
        f"again with the general command: dist-al simulate --config {path} "
        f"--set pool.uri={pool_uri} --set eval.uri={eval_uri} --set workdir={workdir}"
    )
    return 0
