"""BAIT's candidate mode on one pool in this process: its time, rescores and rows rescored (from the selection's
INFO log), and with --exact its objective against exact BAIT's and random's. The figures behind the rescore rule
(dist_al/core/bait.py, "Why a band of rows per rescore"; docs/BENCHMARKS.md, goal 1):

    .venv/bin/python scripts/bait_rescores.py --rows 300000 --budget 300
    .venv/bin/python scripts/bait_rescores.py --rows 100000 --budget 100 --exact --seeds 0 1
"""

import argparse
import logging
import time

import numpy as np
import torch

from dist_al.bench.core import labeled_rows, make_pool
from dist_al.core import select
from dist_al.core.bait import objectives


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--budget", type=int, default=300)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--exact", action="store_true", help="also run exact BAIT and compare objectives")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("dist_al.core.bait").setLevel(logging.INFO)  # the line with rescores and rows rescored
    for seed in args.seeds:
        probs, feats = make_pool(args.rows, 10, 128, seed=seed)
        labeled = labeled_rows(args.rows, seed)

        def run(mode: str, probs=probs, feats=feats, labeled=labeled):
            t0 = time.perf_counter()
            picks = select("bait", probs, feats, args.budget, labeled=labeled, mode=mode)
            return picks, time.perf_counter() - t0

        cand, t_cand = run("candidates")
        line = f"N={args.rows:,} B={args.budget} seed {seed}: candidates {t_cand:.1f} s"
        if args.exact:
            exact, t_exact = run("exact")
            rand = [select("random", probs, feats, args.budget, labeled=labeled, seed=s) for s in range(3)]
            o_exact, o_cand, *o_rand = objectives(
                probs, feats, [exact, cand, *rand], labeled=labeled, budget=args.budget
            )
            line += (
                f", exact {t_exact:.1f} s; objective candidates / exact {o_cand / o_exact:.5f}, random / exact "
                f"{np.mean(o_rand) / o_exact:.3f}; same picks: {np.array_equal(exact, cand)}"
            )
        print(line, flush=True)


if __name__ == "__main__":
    main()
