"""How much of the pool BADGE's pruning bounds leave open per centre (issue 15, goal 0; docs/BENCHMARKS.md), on
`bench core --only badge-bound`'s two pools, at each step that tries the bounds:

- rows in open groups: rows whose group (nearest centre) the triangle inequality does not settle whole, so that
  grouping rows by nearest centre could skip all the others without touching them;
- past the triangle test: rows whose own d2 the triangle inequality does not settle;
- read: rows Cauchy-Schwarz leaves too, whose h the step reads.

    .venv/bin/python scripts/badge_open_rows.py [--rows 1000000] [--budget 1000]
"""

import argparse

import numpy as np
import torch

from dist_al.bench.core import make_pool
from dist_al.core.badge import BadgeShard, kmeanspp
from dist_al.core.shards import LocalShards
from dist_al.testing.pools import digits_embeddings


def open_shares(probs: torch.Tensor, feats: torch.Tensor, budget: int) -> np.ndarray:
    """Per step that tried the bounds: (groups open, rows in open groups, past the triangle test, read) as shares."""
    shares = []
    unsettled = BadgeShard._unsettled_rows

    def recorded(shard, limits, a_c, h_c, n_c):
        row_limit = limits[shard.bounds.nearest.long()]
        rows = unsettled(shard, limits, a_c, h_c, n_c)
        n = len(shard.d2)
        shares.append(
            (
                float((limits[1:] != torch.inf).float().mean()),
                float((row_limit != torch.inf).sum()) / n,
                float((shard.d2 > row_limit).sum()) / n,
                len(rows[0]) / n,
            )
        )
        return rows

    BadgeShard._unsettled_rows = recorded
    try:
        with torch.inference_mode():
            shard = BadgeShard(probs, feats, torch.zeros(len(probs), dtype=torch.bool))
            kmeanspp(LocalShards([shard]), budget, 0, prune=True)
    finally:
        BadgeShard._unsettled_rows = unsettled
    return np.array(shares)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--budget", type=int, default=1000)
    args = parser.parse_args()
    torch.set_num_threads(2)
    pools = {
        "Gaussian mixture": lambda: make_pool(args.rows, 10, 128, seed=0),
        "trained MLP on digits": lambda: digits_embeddings(args.rows, hidden=128, seed=0),
    }
    for name, make in pools.items():
        shares = open_shares(*make(), args.budget)
        print(f"{name}, N={args.rows:,} B={args.budget}: {len(shares)} steps tried the bounds")
        print("  steps, in fifths | groups open | rows in open groups | past the triangle test | read")
        for k, part in enumerate(np.array_split(shares, 5)):
            g, rows, tri, read = part.mean(0)
            print(f"  {k + 1}/5{'':13s}| {g:11.1%} | {rows:19.1%} | {tri:22.1%} | {read:.1%}")


if __name__ == "__main__":
    main()
