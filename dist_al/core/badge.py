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

from collections.abc import Callable

import numpy as np
import torch

from .errors import UserError
from .kernels import CUDA_DOT_ROWS, row_dots
from .progress import progress_bar
from .shards import ROUNDOFF_ULPS, ShardGroup, argmax_first, locate, snap_roundoff_

# Rows per block when a distance matrix against many centres is formed.
_BLOCK_ELEMENTS = 1 << 24
# Rows per block of the running sums used to draw the next centre.
_DRAW_BLOCK = 4096
# Every pruning bound keeps this margin, in ulps of the norms involved: four times the round-off that
# snap_roundoff_ allows for the factorised distance (ROUNDOFF_ULPS), so a skipped row's d2 is the full pass's.
PRUNE_ULPS = 4 * ROUNDOFF_ULPS
# Rows whose exact distance is needed are gathered into a buffer of this size at a time (cache-resident, and few
# enough calls), below this share of the shard; above it, one pass over all rows is cheaper.
_GATHER_BYTES = 1 << 22
_GATHER_SHARE = 0.3
# Above this share of rows left by the triangle inequality, the Cauchy-Schwarz bound reads all of a in one pass.
_STREAM_SHARE = 0.25
# The most steps in a row that read every row without trying the bounds (CentreBounds.record).
_MAX_FULL_PASSES = 15


def _first_exceeding(weights: torch.Tensor, target: float) -> tuple[int, float]:
    """First index whose running sum exceeds target, and target minus the sum before it.

    On round-off (target at or past the total) it answers the last positive weight.
    """
    running = torch.cumsum(weights, 0)
    i = int(torch.searchsorted(running, torch.tensor([target], dtype=running.dtype, device=running.device), right=True))
    if i >= len(weights) or not bool(weights[i] > 0):
        i = int((weights > 0).nonzero()[-1, 0])
    return i, target - (float(running[i - 1]) if i > 0 else 0.0)


def _rows_where(mask: torch.Tensor) -> torch.Tensor:
    """Indices of the true entries of a 1-d mask (numpy's is several times faster than torch's on the CPU)."""
    if mask.device.type == "cpu":
        return torch.from_numpy(np.flatnonzero(mask.numpy()))
    return mask.nonzero()[:, 0]


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
        h_norm2 = torch.linalg.vecdot(self.h, self.h)
        self.norm2 = torch.linalg.vecdot(self.a, self.a) * h_norm2
        self.available = ~labeled
        self.d2 = torch.where(self.available, torch.inf, 0.0).to(self.h.dtype)
        self.first_row = first_row
        self.n_available = int(self.available.sum())
        n, device = len(self.d2), self.d2.device
        self.block_sums: torch.Tensor | None = None  # float64 sums of d2 per block of rows, from the first centre
        self._dirty = torch.ones(-(-n // _DRAW_BLOCK), dtype=torch.bool, device=device)  # blocks to sum again
        self.bounds = CentreBounds(self.a, self.h, h_norm2, self.norm2)
        self.rows_read = 0  # rows whose h the k-means++ steps have read so far: what pruning saves
        # Room for a step's temporaries over all rows: fresh ones would cost page faults at every centre.
        self._work = torch.empty(2, n, dtype=self.d2.dtype, device=device)
        self._flags = torch.empty(2, n, dtype=torch.bool, device=device)
        rows = (
            CUDA_DOT_ROWS if device.type == "cuda" else _GATHER_BYTES // (self.h.shape[1] * self.h.element_size() or 1)
        )
        self._gathered = torch.empty(max(1, min(n, rows)), self.h.shape[1], dtype=self.h.dtype, device=device)

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
        self.bounds.nearest[i] = 0
        self._dirty[i // _DRAW_BLOCK] = True
        self.n_available -= 1
        return self.centre(i)

    def add_centre(self, centre, prune: bool = True) -> tuple[float, int]:
        """d2 <- min(d2, distance to the new centre); returns (sum of d2, unchosen rows).

        With prune, the rows that CentreBounds proves unchanged are not read (DESIGN.md section 3), and d2
        ends as with prune=False, which reads every row, bit for bit."""
        a_c, h_c, n_c = (t.to(self.h.device, self.h.dtype) for t in centre)
        self.bounds.usable &= prune
        group = self.bounds.add(a_c, h_c, n_c)
        limits = self.bounds.limits(group)
        if limits is None:
            self._full_pass(group, a_c, h_c, n_c)
        else:
            rows, ab, scale = self._unsettled_rows(limits, a_c, h_c, n_c)
            paid = len(rows) <= _GATHER_SHARE * len(self.d2)
            self.bounds.record(paid)
            self.rows_read += len(rows) if paid else len(self.d2)
            if paid:
                hh = self._gathered_dots(rows, h_c)
            else:  # gathering copies rows: one pass is cheaper
                hh = torch.index_select(row_dots(self.h, h_c, out=self._work[0]), 0, rows)
            dist = hh.mul_(ab).add_(scale)  # the full pass's arithmetic, on these rows
            snap_roundoff_(dist, scale)
            closer = _rows_where(dist < torch.index_select(self.d2, 0, rows))
            moved, d2 = rows[closer], dist[closer]
            self.d2.index_copy_(0, moved, d2)
            self.bounds.assign(group, moved, d2, torch.index_select(self.norm2, 0, moved))
            self._dirty.index_fill_(0, torch.div(moved, _DRAW_BLOCK, rounding_mode="floor"), True)
        return self._total()

    def _full_pass(self, group: int, a_c, h_c, n_c) -> None:
        # -2 <a_x, a_c>: scaling the centre by -2 is exact and costs no pass over N
        ab = row_dots(self.a, a_c * -2, out=self._work[0])
        dist = row_dots(self.h, h_c, out=self._work[1]).mul_(ab)
        self.rows_read += len(self.d2)
        scale = torch.add(self.norm2, n_c, out=ab)  # ab is spent: its memory takes |g_x|^2 + |g_c|^2
        snap_roundoff_(dist.add_(scale), scale)  # per row, so no row's threshold depends on its shard
        moved = _rows_where(torch.lt(dist, self.d2, out=self._flags[0])) if self.bounds.usable else None
        torch.minimum(self.d2, dist, out=self.d2)
        if moved is not None:
            d2 = torch.index_select(self.d2, 0, moved)
            self.bounds.assign(group, moved, d2, torch.index_select(self.norm2, 0, moved))
        self._dirty.fill_(True)

    def _unsettled_rows(self, limits: torch.Tensor, a_c, h_c, n_c):
        """The rows whose distance to the new centre the bounds of CentreBounds leave open, with -2 <a_x, a_c>
        and |g_x|^2 + |g_c|^2 for them."""
        bounds, work, flags = self.bounds, self._work, self._flags
        near = torch.gt(self.d2, torch.index_select(limits, 0, bounds.nearest, out=work[0]), out=flags[0])
        rows = _rows_where(near)
        # Cauchy-Schwarz: open while d2 + |ab| |h_x| |h_c| - |g_x|^2 (1 - 3 margin) > |g_c|^2 (1 - 3 margin), with
        # min(ab, 0) for |ab| (and a negated |h_c|) where <h_x, h_c> >= 0.
        relu = bounds.nonneg and bool((h_c >= 0).all())
        h_c_norm = float(torch.linalg.vector_norm(h_c)) * (-1 if relu else 1)
        cutoff = float(n_c) * (1 - 3 * bounds.margin)
        if len(rows) > _STREAM_SHARE * len(self.d2):  # most rows: one pass over a beats gathering its rows
            ab = row_dots(self.a, a_c * -2, out=work[0])
            reach = torch.clamp(ab, max=0, out=work[1]) if relu else torch.abs(ab, out=work[1])
            slack = torch.addcmul(self.d2, reach, bounds.h_norm, value=h_c_norm, out=reach).sub_(bounds.norm2_low)
            rows = _rows_where(torch.logical_and(near, torch.gt(slack, cutoff, out=flags[1]), out=flags[1]))
            ab = torch.index_select(ab, 0, rows)
        else:
            ab = row_dots(torch.index_select(self.a, 0, rows), a_c * -2)
            reach = ab.clamp(max=0) if relu else ab.abs()
            slack = torch.addcmul(
                torch.index_select(self.d2, 0, rows), reach, torch.index_select(bounds.h_norm, 0, rows), value=h_c_norm
            ).sub_(torch.index_select(bounds.norm2_low, 0, rows))
            keep = _rows_where(slack > cutoff)
            rows, ab = rows[keep], ab[keep]
        return rows, ab, torch.index_select(self.norm2, 0, rows).add_(n_c)

    def _gathered_dots(self, rows: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """<h_x, v> for the given rows, gathered a cache-sized chunk at a time into one reused buffer."""
        out = torch.empty(len(rows), dtype=self.h.dtype, device=self.h.device)
        chunk = len(self._gathered)
        for lo in range(0, len(rows), chunk):
            part = rows[lo : lo + chunk]
            row_dots(torch.index_select(self.h, 0, part, out=self._gathered[: len(part)]), v, out=out[lo : lo + chunk])
        return out

    def _total(self) -> tuple[float, int]:
        """Sum of d2, kept per block of rows so a draw only needs a running sum inside one block; only the
        blocks whose rows changed are summed again, each as a recount of all of them would."""
        if self.block_sums is None:
            self.block_sums = torch.zeros(len(self._dirty), dtype=torch.float64, device=self.d2.device)
        blocks = _rows_where(self._dirty)
        if len(blocks):
            n_full = len(self.d2) // _DRAW_BLOCK
            full = blocks[blocks < n_full]
            if len(full) == n_full:
                sums = self.d2[: n_full * _DRAW_BLOCK].view(-1, _DRAW_BLOCK).sum(1, dtype=torch.float64)
                self.block_sums[:n_full] = sums
            elif len(full):
                rows = self.d2[: n_full * _DRAW_BLOCK].view(-1, _DRAW_BLOCK)
                self.block_sums.index_copy_(0, full, torch.index_select(rows, 0, full).sum(1, dtype=torch.float64))
            if len(full) < len(blocks):  # the last block, shorter than the others
                self.block_sums[n_full] = self.d2[n_full * _DRAW_BLOCK :].sum(dtype=torch.float64)
            self._dirty.fill_(False)
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

    def add_taken(self, taken, prune: bool = True) -> tuple[float, int]:
        """add_centre of the centre that take_weighted or take_uniform answered (row, centre) for."""
        return self.add_centre(taken[1], prune)

    # -- k-means|| ----------------------------------------------------------------------

    def add_centres(self, centres) -> tuple[float, int]:
        a_c, h_c, n_c = (t.to(self.h.device, self.h.dtype) for t in centres)
        self.bounds.usable = False  # these centres have no groups: later centres read every row
        self._dirty.fill_(True)
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
        self._dirty.index_fill_(0, torch.div(local, _DRAW_BLOCK, rounding_mode="floor"), True)
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


class CentreBounds:
    """What exact pruning keeps (DESIGN.md section 3; Raff, IJCAI 2021): the centres' factors, each row's nearest
    centre (its group), and per group the largest d2 and |g_x|^2 of its rows (upper bounds: rows leave groups).

    Group 0 holds the rows that never change (labeled and chosen rows, d2 = 0); centre j is group j. A new
    centre c settles a row x of group j without reading it
      - by the triangle inequality: ||g_x - g_c|| >= D(j, c) - d(x), where D(j, c) costs K + D multiply-adds, so
        x keeps d2 when d(x) <= D(j, c) / 2. A group whose largest d(x) passes contributes no row;
      - else by Cauchy-Schwarz on h: ||g_x - g_c||^2 >= |g_x|^2 + |g_c|^2 - 2 |<a_x, a_c>| |h_x| |h_c| (with
        <h_x, h_c> >= 0 when both are non-negative, as after a ReLU), which reads a_x (K floats) only.
    The rows left are read (h_x, D floats) and their distance computed as the full pass computes it. Each bound
    keeps a margin of PRUNE_ULPS ulps of the norms involved, four times the round-off that snap_roundoff_ allows
    the factorised formula: a row is skipped only if its computed distance would have been at least its d2 and
    above the snap threshold, so every skipped row keeps the d2 that the full pass leaves.
    """

    def __init__(self, a: torch.Tensor, h: torch.Tensor, h_norm2: torch.Tensor, norm2: torch.Tensor):
        self.margin = PRUNE_ULPS * torch.finfo(h.dtype).eps
        self.h_norm = h_norm2.sqrt()
        self.norm2_low = norm2 * (1 - 3 * self.margin)
        self.nonneg = not h.numel() or bool(h.min() >= 0)  # a reduction: (h >= 0) would be an N x D temporary
        self.nearest = torch.zeros(len(h), dtype=torch.int32, device=h.device)
        self.a = torch.zeros(0, a.shape[1], dtype=torch.float64, device=h.device)
        self.h = torch.zeros(0, h.shape[1], dtype=torch.float64, device=h.device)
        self.norm2, self.max_d2, self.max_norm2 = torch.zeros(3, 0, dtype=torch.float64, device=h.device)
        self.count = 1  # groups, the never-changing group 0 included
        self.usable = True  # False once centres came without groups (k-means||'s add_centres), or prune=False
        self.misses = 0  # steps in a row where the bounds left too many rows to gather
        self.full_passes_left = 0
        self.dtype = h.dtype

    def add(self, a_c: torch.Tensor, h_c: torch.Tensor, n_c: torch.Tensor) -> int:
        """Records a new centre; returns its group."""
        if self.count >= len(self.norm2):
            grow = max(64, len(self.norm2))
            self.a, self.h, self.norm2, self.max_d2, self.max_norm2 = (
                torch.cat([t, t.new_zeros((grow, *t.shape[1:]))])
                for t in (self.a, self.h, self.norm2, self.max_d2, self.max_norm2)
            )
        j = self.count
        self.a[j], self.h[j], self.norm2[j] = a_c, h_c, n_c
        self.count += 1
        return j

    def limits(self, group: int) -> torch.Tensor | None:
        """Per group (indexed by group), the d2 up to which the triangle inequality settles a row of it for the
        new centre (-inf: none; +inf: all, e.g. group 0); None when this step reads every row instead."""
        if not self.usable or group == 1:
            return None
        if self.full_passes_left:
            self.full_passes_left -= 1
            return None
        j = group
        dist = self.norm2[1:j] + self.norm2[j] - 2 * (self.a[1:j] @ self.a[j]) * (self.h[1:j] @ self.h[j])
        limit = dist / 4 - 2 * self.margin * (self.max_norm2[1:j] + self.norm2[1:j].clamp(min=float(self.norm2[j])))
        out = torch.full((j,), torch.inf, dtype=self.dtype, device=self.norm2.device)
        out[1:] = limit.masked_fill_(self.max_d2[1:j] <= limit, torch.inf)  # a group that passes whole
        return out

    def record(self, paid: bool) -> None:
        """After a step that tried the bounds: when they left too many rows open 2, 3, 4, 5 or more times in a
        row, the next 1, 3, 7 or 15 steps read every row without trying them (a cheap rule: trying costs about
        a quarter of a full pass)."""
        self.misses = 0 if paid else self.misses + 1
        self.full_passes_left = min(2 ** max(self.misses - 1, 0) - 1, _MAX_FULL_PASSES)

    def assign(self, group: int, rows: torch.Tensor, d2: torch.Tensor, norm2: torch.Tensor) -> None:
        """Rows that moved to a new centre's group, with their new d2 and their |g_x|^2."""
        self.nearest.index_fill_(0, rows, group)
        if len(rows):
            self.max_d2[group] = d2.max()
            self.max_norm2[group] = norm2.max()


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


def _draw_next(stats, rng: np.random.Generator) -> tuple[int, Callable, float | int]:
    """Where the next centre is: (shard, the BadgeShard method that takes it there, its argument)."""
    totals = [t for t, _ in stats]
    total = _finite_total(stats)
    if total > 0:
        shard, target = locate(totals, rng.random() * total)
        return shard, BadgeShard.take_weighted, target
    # every unchosen row coincides with a centre: uniform, never a hang
    counts = [m for _, m in stats]
    shard, j = locate(counts, int(rng.integers(sum(counts))))
    return shard, BadgeShard.take_uniform, int(j)


def _continue_kmeanspp(group, picks, stats, budget, rng, bar, prune=True):
    while len(picks) < budget:
        shard, take, arg = _draw_next(stats, rng)
        if len(picks) + 1 < budget:  # the centre goes shard to shards, not via here
            (row, _), stats = group.relay(shard, take, (arg,), BadgeShard.add_taken, prune)
        else:
            row, _ = group.call(shard, take, arg)
        picks.append((shard, row))
        bar.update()
    return picks


def _first_centre(group: ShardGroup):
    bests = group.map(BadgeShard.best_norm)
    shard = argmax_first([v for v, _ in bests])
    return shard, bests[shard][1]


def kmeanspp(
    group: ShardGroup, budget: int, seed: int, progress: bool = False, prune: bool = True
) -> list[tuple[int, int]]:
    """Exact k-means++ seeding; returns (shard, local row) in pick order. prune: skip the rows that bounds prove
    unchanged by a new centre (same picks; BadgeShard.add_centre)."""
    rng = np.random.default_rng(seed)
    bar = progress_bar(budget, "badge", progress)
    shard, i = _first_centre(group)
    centre = group.call(shard, BadgeShard.take, i)
    picks = [(shard, i)]
    bar.update()
    if budget > 1:
        stats = group.map(BadgeShard.add_centre, centre, prune)
        _continue_kmeanspp(group, picks, stats, budget, rng, bar, prune)
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
