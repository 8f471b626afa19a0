"""Baselines: random, entropy, margin, least-confidence and coreset (DESIGN.md section 5).

Ties go to the lowest global row. The uncertainty scores merge across shards
as top-k lists; coreset is greedy k-centre on h with the labeled rows as the
initial centres (Sener & Savarese 2018). With no labeled rows every distance
starts at infinity and the first centre is the first unlabeled row, as in the
reference implementation.
"""

from __future__ import annotations

import numpy as np
import torch

from .progress import progress_bar
from .shards import ShardGroup, argmax_first, snap_roundoff_

_BLOCK_ELEMENTS = 1 << 24


def uncertainty(strategy: str, probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(priority, score): rows with higher priority are picked first; score is what users read."""
    if strategy == "entropy":
        score = torch.special.entr(probs).sum(1)
        return score, score
    if strategy == "margin":
        top2 = probs.topk(2, dim=1).values
        score = top2[:, 0] - top2[:, 1]
        return -score, score
    if strategy == "confidence":
        score = probs.max(1).values
        return -score, score
    raise ValueError(f"not an uncertainty strategy: {strategy}")


class BaselineShard:
    """One shard's rows for the baselines."""

    def __init__(self, probs: torch.Tensor, feats: torch.Tensor, labeled: torch.Tensor, first_row: int = 0):
        self.probs = probs
        self.h = feats
        self.labeled = labeled
        self.available = ~labeled
        self.first_row = first_row

    def first_row_index(self) -> int:
        return self.first_row

    def n_available(self) -> int:
        return int(self.available.sum())

    def available_rows(self, positions: np.ndarray) -> np.ndarray:
        return self.available.nonzero()[:, 0].cpu().numpy()[positions]

    def top(self, strategy: str, k: int):
        """This shard's best k unchosen rows: (priority, score, local row), best first, ties by row."""
        priority, score = uncertainty(strategy, self.probs)
        rows = self.available.nonzero()[:, 0]
        order = torch.sort(priority[rows], descending=True, stable=True).indices[:k]
        rows = rows[order]
        return priority[rows].cpu(), score[rows].cpu(), rows.cpu()

    # -- coreset (greedy k-centre) --------------------------------------------------------

    def labeled_feats(self) -> torch.Tensor:
        return self.h[self.labeled].cpu()

    def start_kcentre(self, centres: torch.Tensor) -> tuple[float, int]:
        self.sq = self.h.square().sum(1)
        self.min_d2 = torch.full_like(self.sq, torch.inf)
        centres = centres.to(self.h.device, self.h.dtype)
        if len(centres):
            csq = centres.square().sum(1)
            block = max(1, _BLOCK_ELEMENTS // len(centres))
            for lo in range(0, len(self.h), block):
                scale = self.sq[lo : lo + block, None] + csq
                d = snap_roundoff_((self.h[lo : lo + block] @ centres.T).mul_(-2).add_(scale), scale)
                self.min_d2[lo : lo + block] = d.min(1).values
        return self._farthest()

    def _farthest(self) -> tuple[float, int]:
        if not bool(self.available.any()):
            return -np.inf, -1
        i = int(self.min_d2.masked_fill(~self.available, -torch.inf).argmax())
        return float(self.min_d2[i]), i

    def add_kcentre(self, h_c: torch.Tensor, global_row: int) -> tuple[float, int]:
        """Adds the centre at global_row (taken if it is this shard's); returns the new farthest row."""
        local = global_row - self.first_row
        if 0 <= local < len(self.h):
            self.available[local] = False
        h_c = h_c.to(self.h.device, self.h.dtype)
        scale = self.sq + h_c.square().sum()
        d = snap_roundoff_((self.h @ h_c).mul_(-2).add_(scale), scale)
        torch.minimum(self.min_d2, d, out=self.min_d2)
        return self._farthest()

    def row_feats(self, i: int) -> torch.Tensor:
        return self.h[i].cpu()


def random_pick(group: ShardGroup, budget: int, seed: int) -> list[tuple[int, int]]:
    counts = group.map(BaselineShard.n_available)
    positions = np.random.default_rng(seed).choice(sum(counts), size=budget, replace=False)
    starts = np.cumsum([0] + counts)
    shard_of = np.searchsorted(starts, positions, side="right") - 1
    local = {}
    for s in np.unique(shard_of):
        local[s] = group.call(int(s), BaselineShard.available_rows, positions[shard_of == s] - starts[s])
    cursor = {s: 0 for s in local}
    picks = []
    for s in shard_of:
        picks.append((int(s), int(local[s][cursor[s]])))
        cursor[s] += 1
    return picks


def top_k(group: ShardGroup, strategy: str, budget: int) -> tuple[list[tuple[int, int]], list[float]]:
    """Merge of per-shard top-k lists; a stable sort keeps ties in global row order."""
    tops = group.map(BaselineShard.top, strategy, budget)
    priority = torch.cat([t[0].double() for t in tops])
    score = torch.cat([t[1].double() for t in tops])
    owners = [(s, int(r)) for s, t in enumerate(tops) for r in t[2]]
    order = torch.sort(priority, descending=True, stable=True).indices[:budget]
    return [owners[i] for i in order], score[order].tolist()


def kcentre(group: ShardGroup, budget: int, progress: bool = False) -> tuple[list[tuple[int, int]], list[float]]:
    """Greedy k-centre; the score of a pick is its distance to the centres before it."""
    first_rows = group.map(BaselineShard.first_row_index)
    labeled = torch.cat(group.map(BaselineShard.labeled_feats))
    bests = group.map(BaselineShard.start_kcentre, labeled)
    picks: list[tuple[int, int]] = []
    scores: list[float] = []
    bar = progress_bar(budget, "coreset", progress)
    while len(picks) < budget:
        s = argmax_first([v for v, _ in bests])
        d2, i = bests[s]
        picks.append((s, i))
        scores.append(float(np.sqrt(d2)))
        bar.update()
        if len(picks) < budget:
            bests = group.map(BaselineShard.add_kcentre, group.call(s, BaselineShard.row_feats, i), first_rows[s] + i)
    bar.close()
    return picks, scores
