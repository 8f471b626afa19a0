"""BADGE: k-means++ seeding over last-layer gradient embeddings (Ash et al., ICLR 2020).

The embedding g_x = (e_yhat - p) (x) h is never built. Each row keeps
a = e_yhat - p (K floats) and h (D floats); squared distances factorise as
    ||g_x - g_z||^2 = |g_x|^2 + |g_z|^2 - 2 <a_x, a_z> <h_x, h_z>,
so one k-means++ step is one pass over the resident (a, h): two GEMVs and a
few length-N vector operations (DESIGN.md section 3).

Sampling protocol (the oracle in dist_al.testing.oracles follows it exactly):
the coordinator's numpy Generator draws u = rng.random() per step and picks
the first row whose running sum of d2 (global row order, float64) exceeds
u * sum(d2); when sum(d2) == 0 it draws j = rng.integers(#unchosen) and picks
the j-th unchosen row.
"""

from __future__ import annotations

import numpy as np
import torch

from .errors import UserError
from .progress import progress_bar
from .shards import ShardGroup, argmax_first, locate, snap_roundoff_

# Rows per block when a distance matrix against many centres is formed.
_BLOCK_ELEMENTS = 1 << 24
# Rows per block of the running sums used to draw the next centre.
_DRAW_BLOCK = 4096


def _first_exceeding(weights: torch.Tensor, target: float) -> tuple[int, float]:
    """First index whose running sum exceeds target, and target minus the sum before it.

    On round-off (target at or past the total) it answers the last positive weight.
    """
    running = torch.cumsum(weights, 0)
    i = int(torch.searchsorted(running, torch.tensor([target], dtype=running.dtype, device=running.device), right=True))
    if i >= len(weights) or not bool(weights[i] > 0):
        i = int((weights > 0).nonzero()[-1, 0])
    return i, target - (float(running[i - 1]) if i > 0 else 0.0)


def gradient_factors(probs: torch.Tensor) -> torch.Tensor:
    """a = e_yhat - p, the class factor of the gradient embedding (sign is irrelevant)."""
    a = -probs
    a[torch.arange(len(a), device=a.device), probs.argmax(1)] += 1
    return a


class BadgeShard:
    """One shard's rows for exact k-means++ and k-means|| (the row side of the algorithm)."""

    def __init__(self, probs: torch.Tensor, feats: torch.Tensor, labeled: torch.Tensor, first_row: int = 0):
        self.a = gradient_factors(probs)
        self.h = feats
        self.norm2 = torch.linalg.vecdot(self.a, self.a) * torch.linalg.vecdot(self.h, self.h)
        self.available = ~labeled
        self.d2 = torch.where(self.available, torch.inf, 0.0).to(self.h.dtype)
        self.block_sums: torch.Tensor | None = None  # d2 summed per block of rows, by add_centre
        self.first_row = first_row
        self.n_available = int(self.available.sum())

    # -- exact k-means++ ------------------------------------------------------------------

    def best_norm(self) -> tuple[float, int]:
        if self.n_available == 0:
            return -np.inf, -1
        i = int(self.norm2.masked_fill(~self.available, -torch.inf).argmax())
        return float(self.norm2[i]), i

    def centre(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The row's factors on the CPU, ready to travel to other shards."""
        return self.a[i].cpu(), self.h[i].cpu(), self.norm2[i].cpu()

    def take(self, i: int):
        if not bool(self.available[i]):
            raise RuntimeError(f"row {i} of shard at {self.first_row} taken twice")
        self.available[i] = False
        self.d2[i] = 0
        self.n_available -= 1
        return self.centre(i)

    def add_centre(self, centre) -> tuple[float, int]:
        """d2 <- min(d2, distance to the new centre); returns (sum of d2, unchosen rows)."""
        a_c, h_c, n_c = (t.to(self.h.device, self.h.dtype) for t in centre)
        ab = self.a @ (a_c * -2)  # -2 <a_x, a_c>: scaling the centre by -2 is exact and costs no pass over N
        dist = (self.h @ h_c).mul_(ab)
        scale = torch.add(self.norm2, n_c, out=ab)  # ab is spent: its memory takes |g_x|^2 + |g_c|^2
        snap_roundoff_(dist.add_(scale), scale)  # per row, so no row's threshold depends on its shard
        torch.minimum(self.d2, dist, out=self.d2)
        return self._total()

    def _total(self) -> tuple[float, int]:
        """Sum of d2, kept per block of rows so a draw only needs a running sum inside one block."""
        n_full = len(self.d2) // _DRAW_BLOCK * _DRAW_BLOCK
        sums = [self.d2[:n_full].view(-1, _DRAW_BLOCK).sum(1, dtype=torch.float64)]
        if n_full < len(self.d2):
            sums.append(self.d2[n_full:].sum(dtype=torch.float64).reshape(1))
        self.block_sums = torch.cat(sums)
        return float(self.block_sums.sum()), self.n_available

    def take_weighted(self, target: float):
        """The first row whose running d2 sum exceeds target (D^2 sampling), taken."""
        if self.block_sums is None:
            raise RuntimeError("take_weighted needs the d2 sums of an add_centre first")
        b, rest = _first_exceeding(self.block_sums, target)
        lo = b * _DRAW_BLOCK
        block = self.d2[lo : lo + _DRAW_BLOCK]
        i, _ = _first_exceeding(block.to(torch.float64), rest)
        return lo + i, self.take(lo + i)

    def take_uniform(self, j: int):
        i = int(self.available.nonzero()[j, 0])
        return i, self.take(i)

    # -- k-means|| ----------------------------------------------------------------------

    def add_centres(self, centres) -> tuple[float, int]:
        a_c, h_c, n_c = (t.to(self.h.device, self.h.dtype) for t in centres)
        if len(n_c):
            block = max(1, _BLOCK_ELEMENTS // len(n_c))
            for lo in range(0, len(self.h), block):
                hi = lo + block
                dist = (self.h[lo:hi] @ h_c.T).mul_(self.a[lo:hi] @ a_c.T).mul_(-2)
                scale = self.norm2[lo:hi, None] + n_c
                snap_roundoff_(dist.add_(scale), scale)
                torch.minimum(self.d2[lo:hi], dist.min(1).values, out=self.d2[lo:hi])
        return self._total()

    def sample_candidates(self, seed: int, round_: int, oversampling: float, total: float):
        """Rows kept independently with probability min(1, l * d2 / total) (Bahmani et al. 2012).

        The uniforms are a hash of (seed, round, global row), so the draw does not
        depend on how the pool is sharded.
        """
        rows = np.arange(self.first_row, self.first_row + len(self.d2), dtype=np.int64)
        u = torch.from_numpy(row_uniforms(seed, round_, rows)).to(self.d2.device)
        keep = (u * total < oversampling * self.d2.to(torch.float64)) & (self.d2 > 0)
        local = keep.nonzero()[:, 0]
        self.d2[local] = 0  # a candidate is at distance 0 from itself, whatever the round-off says
        return local.cpu(), self.a[local].cpu(), self.h[local].cpu(), self.norm2[local].cpu()

    def nearest_counts(self, centres) -> torch.Tensor:
        """How many unchosen rows of this shard have each centre as their nearest."""
        a_c, h_c, n_c = (t.to(self.h.device, self.h.dtype) for t in centres)
        counts = torch.zeros(len(n_c), dtype=torch.long, device=self.h.device)
        rows = self.available.nonzero()[:, 0]
        block = max(1, _BLOCK_ELEMENTS // max(1, len(n_c)))
        for lo in range(0, len(rows), block):
            r = rows[lo : lo + block]
            dist = (self.h[r] @ h_c.T).mul_(self.a[r] @ a_c.T).mul_(-2).add_(self.norm2[r, None]).add_(n_c)
            counts += torch.bincount(dist.argmin(1), minlength=len(n_c))
        return counts.cpu()


def row_uniforms(seed: int, stream: int, rows: np.ndarray) -> np.ndarray:
    """Uniform [0, 1) numbers keyed by (seed, stream, row): splitmix64 of a counter."""
    with np.errstate(over="ignore"):
        key = np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        key = _splitmix(key ^ np.uint64(stream * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF))
        z = _splitmix(rows.astype(np.uint64) ^ key)
    return (z >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def _splitmix(x: np.ndarray) -> np.ndarray:
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


# -- coordinator loops (the only RNG lives here) -----------------------------------------


def _finite_total(stats) -> float:
    """The sum of d2 over all shards; a NaN or inf (which would silently turn the D^2 draw into a
    uniform one) is an error naming its likely cause."""
    total = sum(t for t, _ in stats)
    if not np.isfinite(total):
        raise UserError(
            f"BADGE: the squared distances between gradient embeddings sum to {total}: probs or feats hold NaN/inf, "
            "or |p - e_yhat|^2 |h|^2 overflows the feature dtype: rescale feats or pass float64"
        )
    return total


def _draw_next(group: ShardGroup, stats, rng: np.random.Generator):
    """Starts taking the next centre; returns (shard, handle of its local row, handle of the centre)."""
    totals = [t for t, _ in stats]
    total = _finite_total(stats)
    if total > 0:
        shard, target = locate(totals, rng.random() * total)
        row, centre = group.submit(shard, BadgeShard.take_weighted, target, returns=2)
    else:  # every unchosen row coincides with a centre: uniform, never a hang
        counts = [m for _, m in stats]
        shard, j = locate(counts, int(rng.integers(sum(counts))))
        row, centre = group.submit(shard, BadgeShard.take_uniform, int(j), returns=2)
    return shard, row, centre


def _continue_kmeanspp(group, picks, stats, budget, rng, bar):
    while len(picks) < budget:
        shard, row, centre = _draw_next(group, stats, rng)
        if len(picks) + 1 < budget:
            stats = group.map(BadgeShard.add_centre, centre)  # the centre goes shard to shard, not via here
        picks.append((shard, group.fetch(row)))
        bar.update()
    return picks


def _first_centre(group: ShardGroup):
    bests = group.map(BadgeShard.best_norm)
    shard = argmax_first([v for v, _ in bests])
    return shard, bests[shard][1]


def kmeanspp(group: ShardGroup, budget: int, seed: int, progress: bool = False) -> list[tuple[int, int]]:
    """Exact k-means++ seeding; returns (shard, local row) in pick order."""
    rng = np.random.default_rng(seed)
    bar = progress_bar(budget, "badge", progress)
    shard, i = _first_centre(group)
    centre = group.call(shard, BadgeShard.take, i)
    picks = [(shard, i)]
    bar.update()
    if budget > 1:
        _continue_kmeanspp(group, picks, group.map(BadgeShard.add_centre, centre), budget, rng, bar)
    bar.close()
    return picks


def kmeans_parallel(
    group: ShardGroup, budget: int, seed: int, rounds: int = 5, oversampling: float = 2.0, progress: bool = False
) -> list[tuple[int, int]]:
    """k-means|| candidates, weighted k-means++ on them down to the budget."""
    rng = np.random.default_rng(seed)
    shard, i = _first_centre(group)
    first = group.call(shard, BadgeShard.take, i)
    owners = [(shard, i)]
    cand = [tuple(t[None] for t in first)]
    stats = group.map(BadgeShard.add_centre, first)
    for r in range(rounds):
        total = _finite_total(stats)
        if total <= 0:
            break
        sampled = group.map(BadgeShard.sample_candidates, seed, r, oversampling * budget, total)
        new = [s for s in sampled if len(s[0])]
        if not new:
            continue
        for shard_id, s in enumerate(sampled):
            owners.extend((shard_id, int(j)) for j in s[0])
        batch = tuple(torch.cat([s[k] for s in new]) for k in (1, 2, 3))
        cand.append(batch)
        stats = group.map(BadgeShard.add_centres, batch)
    a_c, h_c, n_c = (torch.cat([c[k] for c in cand]) for k in range(3))
    weights = sum(group.map(BadgeShard.nearest_counts, (a_c, h_c, n_c))).to(torch.float64)
    weights[0] += 1  # the first centre is taken, so it counts itself
    chosen = _weighted_kmeanspp(a_c, h_c, n_c, weights, min(budget, len(n_c)), rng, progress)
    picks = [(owners[0])]
    for c in chosen[1:]:
        picks.append(owners[c])
        group.call(owners[c][0], BadgeShard.take, owners[c][1])
    if len(picks) < budget:  # fewer candidates than the budget: exact k-means++ finishes
        stats = group.map(BadgeShard.add_centres, (a_c, h_c, n_c))
        _continue_kmeanspp(group, picks, stats, budget, rng, progress_bar(budget - len(picks), "badge", progress))
    return picks


def _weighted_kmeanspp(a, h, norm2, weights, budget, rng, progress) -> list[int]:
    """k-means++ over a small in-memory candidate set; candidate 0 is the first centre."""
    a, h, norm2 = a.double(), h.double(), norm2.double()
    d2 = torch.full((len(norm2),), torch.inf, dtype=torch.float64)
    chosen = [0]
    bar = progress_bar(budget, "badge-scalable", progress)
    while True:
        c = chosen[-1]
        scale = norm2 + norm2[c]
        dist = snap_roundoff_(scale - 2 * (a @ a[c]) * (h @ h[c]), scale)
        torch.minimum(d2, dist, out=d2)
        d2[chosen] = 0
        bar.update()
        if len(chosen) == budget:
            break
        w = d2 * weights
        total = float(w.sum())
        if total > 0:
            running = torch.cumsum(w, 0)
            nxt = int(
                torch.searchsorted(running, torch.tensor([rng.random() * total], dtype=torch.float64), right=True)
            )
            if nxt >= len(w) or not bool(w[nxt] > 0):
                nxt = int((w > 0).nonzero()[-1, 0])
        else:
            free = torch.ones(len(d2), dtype=torch.bool)
            free[chosen] = False
            nxt = int(free.nonzero()[int(rng.integers(int(free.sum()))), 0])
        chosen.append(nxt)
    bar.close()
    return chosen
