"""BAIT: greedy forward-backward Fisher design (Ash et al., NeurIPS 2021), DESIGN.md section 4.

Objective: choose S, |S| = B, minimising tr(M_S^{-1} F) with
    M_S = lam I + w_L n_L F_L + w_S sum_{x in S} I(x),  I(x) = V_x^T V_x,
and V_x = L_x (x) h_x^T, L_x = diag(sqrt(p)) (I - 1 p^T). The coordinator keeps
the d x d matrices A = M^{-1} and F (d = K*D); each shard keeps per-row K x K
state P_x = U_x A U_x^T and Q_x = U_x A F A U_x^T (U_x = sqrt(w_S) V_x) and
updates it from the broadcast G = A U_s^T, H = A F G with O(K^2 D) work per
row instead of rebuilding K x d embeddings. Scores are trace identities:
    add:    tr((I + P)^{-1} Q),   remove: tr((P - I)^{-1} Q).

Reductions for large K*D (as "Fast Fishing", Huseljic et al. 2024, does):
top_classes=c keeps the c most likely classes of each row (renormalised), so
per-row state is c x c; pca_dim=D' projects h onto the top D' eigenvectors of
the pool's uncentred second moment sum(h h^T), which is what the Fisher sees.
The reduced selection is exactly BAIT on the reduced (p, h).

Precision of the per-row state. The coordinator's A and F are float64; P and Q
are kept in the input's dtype (float32 for model outputs). Their step-by-step
updates subtract nearly equal numbers: a row's P starts as large as
kappa = w_S max|h|^2 / lam and falls to O(1) once rows like it are chosen,
keeping an absolute error of ~eps * kappa, and errors add up over the steps.
Measured on N=5,000 K=10 D=64 n_L=100 B=100 (dist_al.bench.core.make_pool:
softmax of a noisy linear head, mean top probability 0.7), float32 state
updated incrementally for all 300 steps, against P, Q recomputed from A in
float64 (relative errors; score errors relative to the best score):
    lam=1    (kappa 68):  Q 9e-5 after 100 and 200 steps, scores 4e-5; same picks
    lam=1e-2 (kappa 7e3): Q 3e-2 after 100 steps, 0.27 after 200, scores 0.1;
                          65 of 100 picks shared, objective +0.8%
    lam=1e-3 (kappa 7e4): Q 1.0 after 100 steps, 250 after 200, scores 64;
                          15 of 100 picks shared, objective tr(M_S^-1 F) +140%
and at N=20,000 B=200, lam=1e-2: 75 of 200 picks shared, objective +27%. The
same float32 state recomputed from A has score errors below 8e-7, 5e-5 and
4e-4 at every forward step of these runs.

Hence the policy. At each step the coordinator, which holds A, computes the
chosen row's score exactly (P_s = U A U^T and Q_s = R come with the update)
and compares it with the shard's; beyond DRIFT_TOL (1e-3, relative) every
shard recomputes P and Q from the current A and the step is chosen again. The
decision rests on one row's numbers, so it is the same for any sharding. If a
state just recomputed is already that far off, float32 cannot hold the pool
and the state moves to float64; it starts in float64 when kappa >
KAPPA_FLOAT32 (1e6, where float32 resolves P to ~0.1). Pruning (at most 2B
rows) always runs on a float64 state recomputed from A. With this, float32
picks equal float64 picks, in order, on all the runs above and at lam=1e-4
(0 to 2 refreshes for drift per selection). The scores reported for the picks
are the coordinator's exact ones. K x K solves whose matrix is not numerically
positive definite fall back from Cholesky to LU; a selection that needed any
logs one WARNING with the count.

Scale. tr(M_S^-1 F) and every P, Q and score are unchanged when h is scaled by s
and lam by s^2, so rescaling h inside the algorithm (by a power of two, say)
cannot help: what matters is lam relative to |h|^2, which is the user's
choice, and the picks do depend on it (scaling feats by s is dividing lam by
s^2). Large features with a small lam are handled by the float64 state above
rather than refused.

Candidate mode (BaitOptions.mode "candidates"; "auto" picks it above
AUTO_EXACT_ROWS unlabeled rows). Exact BAIT updates every unlabeled row's P, Q
at each of its 2B forward steps (O(N K^2 D) per step) and keeps 2 K^2 floats
per row. Candidate mode keeps that state only for `candidates` x 2B rows (the
candidates, 50,000 at B=1000) and runs the greedy steps on them, while F, the
labeled Fisher and the objective still cover the whole pool:
  - one initial pass scores every unlabeled row from A0 and C0 = A0 F A0
    (O(N K^2 D^2), in blocks of SCORE_BLOCK rows, no state kept) and keeps only
    that score, its stale score (float64, 8 bytes a row);
  - the candidates are the rows with the best known scores (the candidates'
    current ones, the others' stale ones); the coordinator cuts the shards'
    top lists in (score desc, global row asc) order, so the set does not depend
    on the sharding;
  - lazy greedy: before each forward step, if a row outside the candidates had,
    when last scored, a better score than the best candidate's current one,
    every outside row whose stale score beats it, and at least the `candidates`
    x 2B outside rows with the best stale scores, are rescored exactly from the
    current A (block by block); the candidates are cut again among themselves
    and the rows just rescored, all with current scores (rows joining bring the
    P, Q of their rescore, rows leaving keep their current score as stale
    score), and the step is chosen again;
  - pruning runs on the 2B chosen rows, as in exact mode; the precision policy
    above applies to the candidates' state.
If a row's add-score could only fall as rows are added (diminishing returns, as
for a submodular objective), a stale score would bound the current one and the
picks would be exact BAIT's. tr(M_S^-1 F) is not submodular in general, so this
is a heuristic, and its bound is measured: the objective within 1% of exact
BAIT's (`dist-al bench core --only bait-candidates`: N=100k and 200k, K=10,
D=128, B=100, three seeds each: exact BAIT's picks on all six pools, 4-6x
faster; tests/test_bait_candidates.py on small pools).
Why a band of rows per rescore: the scores fall together as M grows (N=300k,
B=300: the best score falls 10x over the 600 forward steps, a rescored row's
score is a median 0.56 of its stale one, and every row is rescored 2 to 7
times), so rescoring only the rows above the best candidate triggers another
rescore at almost every step (528 rescores at N=300k), each with a d x d
product A F A and passes over the shard; the band makes them 55, for about as
many rows computed (1.12M against 1.08M) and the same picks. Admitting rows on
their rescore's P, Q, rather than on a stale score with P, Q computed again at
the join (the rule before), saves that second computation: at N=2M, B=1000, 2
workers, the rescores took 393 s instead of 426 s and the select 642 s instead
of 680 s, run one after the other (a later run of the new rule: 672 s, as the
host drifted; docs/BENCHMARKS.md).
Costs: the initial pass is exact mode's (O(N K^2 D^2), the Fisher sums'
order); a forward step is O(candidates x 2B x K^2 D) instead of O(N K^2 D);
a rescore is O(rows rescored x K^2 D^2). Memory per row outside the
candidates: p, h and 8 bytes, instead of 2 K^2 state floats (1.6 GB at 2M
rows, K=10, float32). AUTO_EXACT_ROWS = 200,000: up to there exact BAIT's
steps run over at most 4x the 50,000 candidates of B=1000 and its state is
160 MB (at 200k rows, B=100 it took 4 minutes on 2 cores, candidate mode 40 s,
the same picks), so the reference procedure stays the default; above it exact BAIT's
time and state grow with N (more than an hour at 2M rows, extrapolated from
100k) while candidate mode's steps do not.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from .errors import UserError
from .options import BaitOptions
from .progress import progress_bar
from .shards import LocalShards, ShardGroup, argmax_first

# Coordinator matrices are d x d float64; above this d they stop fitting comfortably.
MAX_FISHER_DIM = 8192
_BLOCK_ELEMENTS = 1 << 23
# Per-row state accuracy (see the module docstring for the measurements behind these).
DRIFT_TOL = 1e-3  # relative error of the best row's score that triggers a refresh of P and Q from A
DRIFT_FLOOR = 1e-9  # ... relative to the initial objective, below which score errors do not matter
KAPPA_FLOAT32 = 1e6  # bound on a row's initial P (w_S max|h|^2 / lam) above which the state is float64
SYMMETRISE_EVERY = 64  # coordinator steps between explicit symmetrisations of A
# Candidate mode (the module docstring: Candidate mode).
AUTO_EXACT_ROWS = 200_000  # mode "auto": exact BAIT up to this many unlabeled rows
GPU_STEP_BYTES = 1 << 30  # temporaries of one block of a greedy step on a GPU (BaitShard.chunk)
SCORE_BLOCK = 16384  # rows per block when rows outside the candidates are rescored
QUADRATIC_BLOCK = 256  # rows per GEMM of the Fisher sums and of P, Q from A (the GEMM's output stays in cache)

log = logging.getLogger(__name__)


def check_reduction(options: BaitOptions, n_classes: int, n_feats: int) -> None:
    c, dp = options.top_classes, options.pca_dim
    if c is not None and not 2 <= c <= n_classes:
        raise UserError(f"option top_classes must be between 2 and the number of classes ({n_classes}), got {c}")
    if dp is not None and dp > n_feats:
        raise UserError(f"option pca_dim must be at most the feature width ({n_feats}), got {dp}")
    d = n_classes * (dp or n_feats)
    if d > MAX_FISHER_DIM:
        hint = max(1, MAX_FISHER_DIM // n_classes)
        raise UserError(
            f"BAIT needs d x d matrices with d = classes * feature width = {d}, above the limit {MAX_FISHER_DIM}: "
            f"set pca_dim (at most {hint} for {n_classes} classes) and consider top_classes"
        )


def _sandwich_left(Z: torch.Tensor, p: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """diag(s) (I - 1 p^T) Z for a batch: rows of Z are indexed by the row's classes."""
    return s[:, :, None] * (Z - (p[:, :, None] * Z).sum(1, keepdim=True))


class BaitShard:
    """One shard's rows: (p, h) for the Fisher sums, per-row P and Q for the greedy steps."""

    rescored: _RowState | None  # candidate mode: the rows `rescore` scored that may join the candidates

    def __init__(self, probs: torch.Tensor, feats: torch.Tensor, labeled: torch.Tensor, first_row: int = 0):
        self.p = probs / probs.sum(1, keepdim=True)  # the softmax Fisher assumes sum(p) == 1 exactly
        self.idx: torch.Tensor | None = None  # class of each column of p, when reduced to top classes
        self.h = feats
        self.labeled = labeled
        self.first_row = first_row
        self.n_classes = probs.shape[1]
        # rows per block of the greedy step: cache-sized on a CPU; on a GPU each block costs ~15 kernel launches
        # and a sync, so as many rows as GPU_STEP_BYTES of the step's temporaries (~16 K^2 floats a row) allow
        itemsize = feats.element_size()
        on_cpu = feats.device.type == "cpu"
        self.chunk = 2048 if on_cpu else max(2048, GPU_STEP_BYTES // (16 * self.n_classes**2 * itemsize))

    def shape(self) -> tuple[int, int, int]:
        return len(self.h), self.n_classes, self.h.shape[1]

    def device(self) -> str:
        return str(self.h.device)

    def reduce_classes(self, c: int) -> None:
        vals, idx = torch.sort(self.p, dim=1, descending=True, stable=True)
        vals = vals[:, :c]
        self.p = vals / vals.sum(1, keepdim=True)
        self.idx = idx[:, :c]

    def second_moment(self) -> torch.Tensor:
        h = self.h.double()
        return h.T @ h

    def project(self, W: torch.Tensor) -> None:
        self.h = self.h @ W.to(self.h.device, self.h.dtype)

    # -- Fisher sums ----------------------------------------------------------------------

    def fisher_sums(self, n_classes: int) -> tuple[torch.Tensor, torch.Tensor, int, int, float]:
        """Sum of I(x) over all rows and over labeled rows, as d x d float64; row count, labeled
        count, and the largest |h|^2 of an unlabeled row (for the state's precision)."""
        lab = self.labeled.nonzero()[:, 0]
        # float64 sums: the Fisher must stay positive semi-definite, and its value must not
        # depend on how rows are split into shards beyond float64 round-off
        pool = self._fisher_sum(self.p, self.idx, self.h, n_classes)
        labeled = self._fisher_sum(self.p[lab], None if self.idx is None else self.idx[lab], self.h[lab], n_classes)
        free = self.h[~self.labeled].double()
        max_norm2 = float(torch.linalg.vecdot(free, free).max()) if len(free) else 0.0
        return pool, labeled, len(self.h), len(lab), max_norm2

    @staticmethod
    def _fisher_sum(p, idx, h, K) -> torch.Tensor:
        if idx is None:
            return _fisher_sum_all_classes(p, h)
        n, c = p.shape
        D = h.shape[1]
        F2 = torch.zeros(K * K, D * D, dtype=torch.float64, device=h.device)
        block = max(1, _BLOCK_ELEMENTS // (c * c * D + D * D))
        for lo in range(0, n, block):
            pb, hb = p[lo : lo + block].double(), h[lo : lo + block].double()
            pb = pb / pb.sum(1, keepdim=True)
            M = torch.diag_embed(pb) - pb[:, :, None] * pb[:, None, :]  # diag(p) - p p^T
            hh = (hb[:, :, None] * hb[:, None, :]).reshape(len(hb), D * D)
            ib = idx[lo : lo + block]
            pair = (ib[:, :, None] * K + ib[:, None, :]).reshape(-1)
            vals = (M.reshape(len(hb), c * c, 1) * hh[:, None, :]).reshape(-1, D * D)
            F2.index_add_(0, pair, vals)
        # (a, b, j, k) -> (a, j, b, k): class-major d x d layout
        return F2.reshape(K, K, D, D).permute(0, 2, 1, 3).reshape(K * D, K * D)

    # -- per-row state -----------------------------------------------------------------

    @staticmethod
    def _block_quadratic(B: torch.Tensor, h: torch.Tensor, ic: torch.Tensor | None) -> torch.Tensor:
        """T[n, a, b] = h_n^T B[class a, :, class b, :] h_n over each row's classes (ic: None for all classes)."""
        D = h.shape[1]
        K = B.shape[0] // D
        B4 = B.to(h.dtype).reshape(K, D, K, D)
        if ic is None:  # T is symmetric in (a, b): one GEMM per block, h against the K(K+1)/2 blocks a <= b
            a, b = torch.triu_indices(K, K, device=h.device)
            W = B4[a, :, b, :].permute(1, 0, 2).reshape(D, -1)  # D x (pairs * D)
            out = torch.empty(len(h), K, K, dtype=h.dtype, device=h.device)
            for lo in range(0, len(h), QUADRATIC_BLOCK):
                hb = h[lo : lo + QUADRATIC_BLOCK]
                T = torch.linalg.vecdot((hb @ W).view(len(hb), -1, D), hb[:, None, :])
                out[lo : lo + QUADRATIC_BLOCK, a, b] = T
                out[lo : lo + QUADRATIC_BLOCK, b, a] = T
            return out
        c = ic.shape[1]  # gather only the c x c blocks each row needs
        out = torch.empty(len(h), c, c, dtype=h.dtype, device=h.device)
        Bp = B4.permute(0, 2, 1, 3).contiguous()
        block = max(1, _BLOCK_ELEMENTS // (c * c * D * D))
        for lo in range(0, len(h), block):
            hb, ib = h[lo : lo + block], ic[lo : lo + block]
            blocks = Bp[ib[:, :, None], ib[:, None, :]].reshape(len(hb), c * c, D, D)
            v = blocks @ hb[:, None, :, None]
            out[lo : lo + block] = (hb[:, None, None, :] @ v).reshape(len(hb), c, c)
        return out

    def init_state(self, A: torch.Tensor, C: torch.Tensor, w_s: float, float64: bool):
        """P, Q for every unlabeled row from A0 and C0 = A0 F A0 (in float64 if asked); returns the best row to add."""
        self._start(w_s)
        self.candidates = self._rows(None, torch.float64 if float64 else self.h.dtype)
        return self.refresh(A, C, "add", float64)

    def init_candidates(self, A: torch.Tensor, C: torch.Tensor, w_s: float, float64: bool, keep: int):
        """Candidate mode: no candidates yet and every row's first score to compute; answers as `rescore`."""
        self._start(w_s)
        none = torch.empty(0, dtype=torch.long, device=self.h.device)
        self.candidates = self._rows(none, torch.float64 if float64 else self.h.dtype)
        self._compute(self.candidates, A, C, "add")
        self.stale = torch.full((len(self.rows),), torch.inf, dtype=torch.float64, device=self.h.device)
        return self.rescore(A, C, -np.inf, keep)

    def rescore(self, A: torch.Tensor, C: torch.Tensor, above: float, keep: int):
        """Candidate mode: the exact add-scores, from A and C = A F A, of the free rows outside the candidates
        whose stale score is above `above` become their stale scores (block by block). Of those rows, the ones
        that may still join the candidates (this shard's `keep` best, counting the candidates) keep their P and
        Q for `keep_candidates`. Returns this shard's `keep` best rows with a current score (the candidates and
        the rows just rescored) as (scores, global rows), best first, ties to the lower row."""
        todo = (self._outside() & (self.stale > above)).nonzero()[:, 0]
        self.rows_rescored += len(todo) if above > -np.inf else 0
        cand = self.candidates
        rescored = cand.take(todo[:0])
        for lo in range(0, len(todo), SCORE_BLOCK):
            block = self._rows(todo[lo : lo + SCORE_BLOCK], cand.h.dtype)
            self._compute(block, A, C, "add")
            self.stale[block.pos] = block.score.double()
            rescored = rescored.concat(block)
            best = _best_first(*self._pooled(cand, rescored))[:keep]
            rescored = rescored.take(best[best >= len(cand.h)].sort().values - len(cand.h))
        self.rescored = rescored
        scores, pos = self._pooled(cand, rescored)
        best = _best_first(scores, pos)[:keep]
        best = best[scores[best] > -torch.inf]
        return scores[best], self.first_row + self.rows[pos[best]]

    def keep_candidates(self, score: float, row: int):
        """Candidate mode, after `rescore`: of the candidates and the rows just rescored, those above (score,
        global row) in (score desc, row asc) order are the candidates; candidates that leave keep their current
        score as stale score. Nothing is recomputed: the rows that join bring the P and Q of their rescore.
        Returns the best row to add."""
        old, rescored = self.candidates, self.rescored
        if rescored is None:
            raise RuntimeError("BAIT: keep_candidates follows rescore, in candidate mode")
        self.rescored = None
        scores, pos = self._pooled(old, rescored)
        rows = self.first_row + self.rows[pos]
        stay = (scores > score) | ((scores == score) & (rows <= row))
        leave = ~stay[: len(old.h)]
        self.stale[old.positions()[leave]] = old.score[leave].double()
        kept = stay.nonzero()[:, 0]
        self.candidates = old.concat(rescored).take(kept[torch.argsort(pos[kept])])  # row order: ties to the lower
        return self.best("add")

    def _pooled(self, cand: _RowState, rescored: _RowState) -> tuple[torch.Tensor, torch.Tensor]:
        """(current scores in float64, positions) of the candidates, then the rescored rows; -inf for rows no
        longer free."""
        pos = torch.cat([cand.positions(), rescored.positions()])
        scores = torch.cat([cand.score, rescored.score]).double()
        return scores.masked_fill(~self.free[pos], -torch.inf), pos

    def outside_top(self, m: int) -> torch.Tensor:
        """The m best stale scores of the free rows outside the candidates, best first. They change only in a
        rescore and the cut after it: a step's pick is a candidate."""
        stale = self.stale[self._outside()]
        return torch.topk(stale, min(m, len(stale))).values

    def _outside(self) -> torch.Tensor:
        """Free rows that are not candidates (a mask over the unlabeled rows)."""
        mask = self.free.clone()
        mask[self.candidates.pos] = False
        return mask

    def _start(self, w_s: float) -> None:
        self.rows = (~self.labeled).nonzero()[:, 0]
        self.w_s = w_s
        self.chosen = torch.zeros(len(self.rows), dtype=torch.bool, device=self.h.device)
        self.free = torch.ones_like(self.chosen)  # neither chosen nor pruned
        self.lu_solves = 0
        self.rows_rescored = 0  # candidate mode, for the log
        self.pruning: _RowState | None = None
        self.rescored = None

    def _rows(self, pos: torch.Tensor | None, dtype: torch.dtype) -> _RowState:
        """State holder for the candidate rows at positions pos (None: all of them), P and Q not yet computed."""
        sel = self.rows if pos is None else self.rows[pos]
        p = self.p[sel].to(dtype).contiguous()
        ic = None if self.idx is None else self.idx[sel].contiguous()
        return _RowState(pos, self.h[sel].to(dtype).contiguous(), p, (self.w_s * p).sqrt(), ic)

    def refresh(self, A: torch.Tensor, C: torch.Tensor, kind: str, float64: bool = False):
        """Recomputes P and Q from A and C = A F A, dropping the round-off the incremental updates
        accumulated; for kind "remove", from here on only the chosen rows, in float64. Returns the best row."""
        if kind == "remove":
            self.pruning = self._rows(self.chosen.nonzero()[:, 0], torch.float64)
        elif float64 and self.candidates.h.dtype != torch.float64:
            self.candidates = self._rows(self.candidates.pos, torch.float64)
        self._compute(self._state(kind), A, C, kind)
        return self.best(kind)

    def _compute(self, st: _RowState, A: torch.Tensor, C: torch.Tensor, kind: str) -> None:
        """P, Q and scores of the rows of st from A and C = A F A."""
        st.P = _sandwich(self._block_quadratic(A, st.h, st.ic), st.p, st.s)
        st.Q = _sandwich(self._block_quadratic(C, st.h, st.ic), st.p, st.s)
        st.score = torch.empty(len(st.h), dtype=st.h.dtype, device=st.h.device)
        for lo in range(0, len(st.h), self.chunk):
            sl = slice(lo, lo + self.chunk)
            st.score[sl] = self._scores(kind, st.P[sl], st.Q[sl])

    def _state(self, kind: str) -> _RowState:
        if kind == "add":
            return self.candidates
        if self.pruning is None:
            raise RuntimeError("BAIT's pruning phase has not started on this shard")
        return self.pruning

    def update(self, GZ, sign, global_row: int, kind: str, next_kind: str | None):
        """Applies A' = A - G S G^T to P and Q (from the step's factors, see `_step_factors`); marks the row
        added or removed; returns the next best."""
        local = global_row - self.first_row
        if 0 <= local < len(self.h):
            pos = int(torch.searchsorted(self.rows, torch.tensor(local, device=self.rows.device)))
            self.chosen[pos] = kind == "add"
            self.free[pos] = False
        if next_kind is None:
            return None
        st = self._state(next_kind)
        dt, dev = st.h.dtype, st.h.device
        D = st.h.shape[1]
        K, k = GZ.shape[0] // D, GZ.shape[1] // 2
        # one GEMM projects every row onto both halves of GZ, for every class
        GZ = GZ.to(dev, dt).reshape(K, D, 2 * k).permute(1, 0, 2).reshape(D, K * 2 * k)
        sign = sign.to(dev, dt)
        if next_kind == "add":  # every candidate row, in cache-sized slices updated in place
            for lo in range(0, len(st.h), self.chunk):
                sl = slice(lo, lo + self.chunk)
                ic = None if st.ic is None else st.ic[sl]
                _update_block(st.P[sl], st.Q[sl], st.h[sl], st.p[sl], st.s[sl], ic, GZ, sign)
                st.score[sl] = self._scores("add", st.P[sl], st.Q[sl])
        else:  # pruning: only the rows still chosen
            keep = self.chosen[st.pos].nonzero()[:, 0]
            P, Q = st.P[keep], st.Q[keep]
            ic = None if st.ic is None else st.ic[keep]
            _update_block(P, Q, st.h[keep], st.p[keep], st.s[keep], ic, GZ, sign)
            st.P[keep], st.Q[keep] = P, Q
            st.score[keep] = self._scores("remove", P, Q)
        return self.best(next_kind)

    def _scores(self, kind: str, P: torch.Tensor, Q: torch.Tensor) -> torch.Tensor:
        """add: tr((I + P)^{-1} Q);  remove: tr((P - I)^{-1} Q) = -tr((I - P)^{-1} Q)."""
        eye = torch.eye(P.shape[1], dtype=P.dtype, device=P.device)
        if kind == "add":
            values, lu = _trace_solve(eye + P, Q)
        else:
            values, lu = _trace_solve(eye - P, Q)
            values = -values
        self.lu_solves += lu
        return values

    def counts(self) -> tuple[int, int]:
        """(K x K solves that fell back to LU, rows rescored outside the candidates after the first scoring)."""
        return self.lu_solves, self.rows_rescored

    def best(self, kind: str):
        """(score, global row, p, classes, h) of the best row to add or remove, score -inf if none."""
        st = self._state(kind)
        mask = self.free if kind == "add" else self.chosen
        if st.pos is not None:
            mask = mask[st.pos]
        if not bool(mask.any()):
            return -np.inf, -1, None, None, None
        j = int(st.score.masked_fill(~mask, -torch.inf).argmax())
        r = int(self.rows[j if st.pos is None else st.pos[j]])
        idx = None if st.ic is None else st.ic[j].cpu()
        return float(st.score[j]), self.first_row + r, st.p[j].cpu(), idx, st.h[j].cpu()


def _not_computed() -> torch.Tensor:
    return torch.empty(0)


def _best_first(scores: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Indices of rows in (score desc, position asc) order; positions grow with global rows, so this is the
    order in which the coordinator cuts the candidates, whatever the sharding."""
    by_pos = torch.argsort(pos)
    return by_pos[torch.sort(scores[by_pos], descending=True, stable=True).indices]


@dataclass
class _RowState:
    """Some candidate rows of a shard (pos: their positions among the candidates, None for all) with
    their factors and per-row P, Q and score."""

    pos: torch.Tensor | None
    h: torch.Tensor
    p: torch.Tensor
    s: torch.Tensor  # sqrt(w_S p)
    ic: torch.Tensor | None
    P: torch.Tensor = field(default_factory=_not_computed)  # the three are set by BaitShard.refresh
    Q: torch.Tensor = field(default_factory=_not_computed)
    score: torch.Tensor = field(default_factory=_not_computed)

    def positions(self) -> torch.Tensor:
        if self.pos is None:
            raise RuntimeError("BAIT: this state holds every row, not rows by position")
        return self.pos

    def take(self, i: torch.Tensor) -> _RowState:
        """The rows i (an index tensor) of a state with positions."""
        ic = None if self.ic is None else self.ic[i]
        P, Q, score = self.P[i], self.Q[i], self.score[i]
        return _RowState(self.positions()[i], self.h[i], self.p[i], self.s[i], ic, P, Q, score)

    def concat(self, other: _RowState) -> _RowState:
        """Both states' rows, self's first (states with positions)."""
        ic = None if self.ic is None or other.ic is None else torch.cat([self.ic, other.ic])
        pos = torch.cat([self.positions(), other.positions()])
        h, p, s, P, Q, score = (
            torch.cat([getattr(self, f), getattr(other, f)]) for f in ("h", "p", "s", "P", "Q", "score")
        )
        return _RowState(pos, h, p, s, ic, P, Q, score)


def _fisher_sum_all_classes(p: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """sum over rows of (diag(p) - p p^T) (x) h h^T as d x d float64, class-major: block (a, b) is
    H^T diag(M_ab) H, one GEMM per row block for the K(K+1)/2 blocks a <= b, mirrored for a > b."""
    K, D = p.shape[1], h.shape[1]
    a, b = torch.triu_indices(K, K, device=h.device)
    acc = torch.zeros(D, len(a) * D, dtype=torch.float64, device=h.device)
    for lo in range(0, len(h), QUADRATIC_BLOCK):
        pb, hb = p[lo : lo + QUADRATIC_BLOCK].double(), h[lo : lo + QUADRATIC_BLOCK].double()
        pb = pb / pb.sum(1, keepdim=True)
        M = torch.diag_embed(pb) - pb[:, :, None] * pb[:, None, :]  # diag(p) - p p^T
        acc.addmm_(hb.T, (M[:, a, b, None] * hb[:, None, :]).reshape(len(hb), -1))
    blocks = acc.reshape(D, len(a), D).transpose(0, 1)
    F4 = torch.empty(K, K, D, D, dtype=torch.float64, device=h.device)
    F4[a, b] = blocks
    F4[b, a] = blocks.mT
    return F4.permute(0, 2, 1, 3).reshape(K * D, K * D)


def _sandwich(T: torch.Tensor, p: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """diag(s) (I - 1 p^T) T (I - p 1^T) diag(s): U A U^T from the block forms T."""
    left = _sandwich_left(T, p, s)
    return (left - left @ p[:, :, None]) * s[:, None, :]


def _update_block(P, Q, h, p, s, ic, GZ, sign) -> None:
    """P -= X diag(sign) X^T;  Q += Z X^T + X Z^T  with [X, Z] = U GZ (in place; see `_step_factors`)."""
    n, k = len(h), len(sign)
    XZ = (h @ GZ).reshape(n, -1, 2 * k)
    if ic is not None:
        XZ = XZ.gather(1, ic[:, :, None].expand(-1, -1, 2 * k))
    XZ = _sandwich_left(XZ, p, s)
    X, Z = XZ[..., :k], XZ[..., k:]
    P.baddbmm_(X * sign, X.mT, alpha=-1)
    Q.baddbmm_(Z, X.mT)
    Q.baddbmm_(X, Z.mT)


def _step_factors(G, H, S, R) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The step A' = A - G S G^T in factored form: (GZ, sign, W) with S = T diag(sign) T^T (T = V |e|^(1/2)
    from S = V diag(e) V^T), W = G T, so that A' = A - W diag(sign) W^T and, per row, X = U W and
    Z = U (W R'/2 - H T diag(sign)), R' = diag(sign) T^T R T diag(sign), GZ = [W, W R'/2 - H T diag(sign)]:
        P' = P - X S' X^T,   Q' = Q - X S Y^T - Y S X^T + X S R S X^T = Q + Z X^T + X Z^T,
    two batched products per row instead of five."""
    e, V = torch.linalg.eigh(S)
    T = V * e.abs().sqrt()
    sign = e.sign()
    W = G @ T
    R2 = sign[:, None] * (T.T @ R @ T) * sign[None, :]
    return torch.cat([W, W @ R2 / 2 - (H @ T) * sign], 1), sign, W


def _trace_solve(Mpd: torch.Tensor, Q: torch.Tensor) -> tuple[torch.Tensor, int]:
    """tr(M^{-1} Q) per batch item for symmetric positive definite M, and how many items needed LU."""
    L, info = torch.linalg.cholesky_ex(Mpd)
    failed = int((info != 0).sum())
    if failed:  # numerically indefinite: LU for the batch
        return torch.linalg.solve(Mpd, Q).diagonal(dim1=-2, dim2=-1).sum(-1), failed
    return torch.cholesky_solve(Q, L).diagonal(dim1=-2, dim2=-1).sum(-1), 0


def _embedding_columns(p, idx, h, w_s: float, n_classes: int) -> torch.Tensor:
    """U_s^T as a d x c matrix (d = K*D) for one row."""
    p, h = p.double(), h.double()
    c = len(p)
    classes = torch.arange(n_classes) if idx is None else idx
    Lmat = (w_s * p).sqrt()[:, None] * (torch.eye(c, dtype=torch.float64) - p[None, :])  # c x c
    U3 = torch.zeros(n_classes, len(h), c, dtype=torch.float64)
    U3[classes] = Lmat.T[:, None, :] * h[None, :, None]
    return U3.reshape(-1, c)


@contextlib.contextmanager
def numerical_errors():
    """Linear-algebra failures on extreme inputs become a UserError that says what to change."""
    try:
        yield
    except torch.linalg.LinAlgError as err:
        raise UserError(
            f"BAIT is numerically unstable on these inputs ({str(err).splitlines()[0]}): increase lam or rescale feats"
        ) from None


@dataclass(frozen=True)
class BaitResult:
    indices: np.ndarray
    objective: float


def _coordinator_device(group: ShardGroup) -> torch.device:
    dev = torch.device(group.call(0, BaitShard.device))
    return dev if dev.type != "cuda" or torch.cuda.is_available() else torch.device("cpu")


def candidate_count(options: BaitOptions, n_forward: int, n_unlabeled: int) -> int | None:
    """How many rows candidate mode keeps for the greedy steps; None for exact BAIT (all rows)."""
    mode = options.mode
    if mode == "auto":
        mode = "exact" if n_unlabeled <= AUTO_EXACT_ROWS else "candidates"
    keep = math.ceil(options.candidates * n_forward)
    return None if mode == "exact" or keep >= n_unlabeled else keep


def _candidate_cut(tops: list[tuple[torch.Tensor, torch.Tensor]], keep: int) -> tuple[float, int]:
    """(score, global row) of the keep-th best of the shards' best rows, in (score desc, row asc) order."""
    scores = np.concatenate([s.cpu().numpy() for s, _ in tops])
    rows = np.concatenate([r.cpu().numpy() for _, r in tops])
    last = np.lexsort((rows, -scores))[min(keep, len(rows)) - 1]
    return float(scores[last]), int(rows[last])


def _outside_scores(tops: list[torch.Tensor], m: int) -> tuple[float, float]:
    """From the shards' m best stale scores outside the candidates: the best and the m-th best (-inf when there
    are fewer), the rows above which the next rescore covers at least."""
    scores = np.sort(np.concatenate([t.cpu().numpy() for t in tops]))[::-1]
    return (float(scores[0]) if len(scores) else -np.inf), (float(scores[m - 1]) if len(scores) >= m else -np.inf)


def bait(
    group: ShardGroup,
    budget: int,
    options: BaitOptions = BaitOptions(),
    *,
    progress: bool = False,
    forward_steps: int | None = None,
) -> tuple[list[tuple[int, int]], list[float], float]:
    """Coordinator loop: ((shard, local) picks in pick order, their add-scores, final tr(M^{-1} F)).

    forward_steps (benchmarks): stop after that many forward steps, no pruning.
    """
    lam, oversample, weighting = options.lam, options.oversample, options.weighting
    pca_dim, top_classes = options.pca_dim, options.top_classes
    t_start = time.perf_counter()
    dev = _coordinator_device(group)
    shapes = group.map(BaitShard.shape)
    first_rows = np.cumsum([0] + [n for n, _, _ in shapes])[:-1]
    K, D = shapes[0][1], pca_dim or shapes[0][2]
    if top_classes is not None:
        group.map(BaitShard.reduce_classes, top_classes)
    if pca_dim is not None:
        second = sum(m.to(dev) for m in group.map(BaitShard.second_moment))
        W = torch.linalg.eigh(second).eigenvectors.flip(1)[:, :pca_dim]
        W *= torch.sign(W.gather(0, W.abs().argmax(0, keepdim=True)))  # deterministic signs
        group.map(BaitShard.project, W)

    sums = group.map(BaitShard.fisher_sums, K)
    n_rows, n_labeled = sum(x[2] for x in sums), sum(x[3] for x in sums)
    F = sum(x[0].to(dev) for x in sums) / n_rows
    F = (F + F.T) / 2
    F_labeled_sum = sum(x[1].to(dev) for x in sums)
    w_labeled = 1.0 / (n_labeled + budget)
    w_batch = budget * w_labeled if weighting == "reference" else w_labeled
    eye = torch.eye(K * D, dtype=torch.float64, device=dev)
    A = torch.linalg.inv(lam * eye + w_labeled * F_labeled_sum)
    A = (A + A.T) / 2
    n_forward = min(int(round(oversample * budget)) if forward_steps is None else forward_steps, n_rows - n_labeled)
    prune = forward_steps is None and n_forward > budget
    # w_S max|h|^2 / lam bounds the eigenvalues a row's P starts with (the module docstring: Precision)
    max_norm2 = max(x[4] for x in sums)
    float64 = w_batch * max_norm2 / lam > KAPPA_FLOAT32
    score_floor = DRIFT_FLOOR * float((A * F).sum())

    bar = progress_bar(n_forward + (n_forward - budget if prune else 0), "bait", progress)
    keep = candidate_count(options, n_forward, n_rows - n_labeled)
    outside = band = -np.inf  # candidate mode: the best stale score outside the candidates, and the band's edge
    if keep is None:
        bests = group.map(BaitShard.init_state, A, A @ F @ A, w_batch, float64)
    else:  # candidate mode: the greedy steps run on the rows with the best known scores
        tops = group.map(BaitShard.init_candidates, A, A @ F @ A, w_batch, float64, keep)
        bests = group.map(BaitShard.keep_candidates, *_candidate_cut(tops, keep))
        outside, band = _outside_scores(group.map(BaitShard.outside_top, keep), keep)
    seconds = {"scoring": time.perf_counter() - t_start, "rescores": 0.0, "refreshes": 0.0}
    rescores = 0
    fresh = True  # the shards' P and Q were computed from A itself, not updated step by step
    refreshes = steps = 0
    picks: list[int] = []
    scores: dict[int, float] = {}
    adding = n_forward > 0
    while adding or (prune and len(picks) > budget):
        kind = "add" if adding else "remove"
        shard = argmax_first([b[0] for b in bests])
        score, row, p, idx, h = bests[shard]
        if adding and keep is not None and outside > score:
            # a row outside the candidates scored better when it was last scored: rescore those rows from A
            t0 = time.perf_counter()
            tops = group.map(BaitShard.rescore, A, A @ F @ A, min(score, band), keep)
            bests = group.map(BaitShard.keep_candidates, *_candidate_cut(tops, keep))
            outside, band = _outside_scores(group.map(BaitShard.outside_top, keep), keep)
            fresh = False
            rescores += 1
            seconds["rescores"] += time.perf_counter() - t0
            continue
        U = _embedding_columns(p, idx, h, w_batch, K).to(dev)
        G = A @ U
        # add: S = (I + P_s)^{-1}; remove: S = (P_s - I)^{-1}; both give A' = A - G S G^T
        S = torch.linalg.inv(
            U.T @ G + (1.0 if adding else -1.0) * torch.eye(U.shape[1], dtype=torch.float64, device=dev)
        )
        FG = F @ G
        H, R = A @ FG, G.T @ FG
        exact = float(torch.trace(S @ R))  # the row's score from A itself: R = U A F A U^T = Q_s
        drifted = abs(score - exact) > DRIFT_TOL * max(abs(exact), score_floor)
        if drifted and (not fresh or (adding and not float64)):
            # recompute P, Q from A and choose again; a state that was just recomputed and is already
            # this far off is beyond float32, so it is recomputed in float64
            float64 = float64 or fresh
            t0 = time.perf_counter()
            bests = group.map(BaitShard.refresh, A, A @ F @ A, kind, float64)
            fresh = True
            refreshes += 1
            seconds["refreshes"] += time.perf_counter() - t0
            continue
        GZ, sign, W = _step_factors(G, H, S, R)
        A.addmm_(W * sign, W.T, alpha=-1)  # an entry and its mirror are the same products: A stays symmetric
        steps += 1
        if steps % SYMMETRISE_EVERY == 0:  # round-off must not break symmetry over thousands of steps
            A = (A + A.T) / 2
        if adding:
            picks.append(row)
            scores[row] = exact
            adding = len(picks) < n_forward
            next_kind = "add" if adding else ("remove" if prune else None)
        else:
            picks.remove(row)
            next_kind = "remove" if len(picks) > budget else None
        if kind == "add" and next_kind == "remove":  # pruning starts from P, Q recomputed in float64
            group.map(BaitShard.update, GZ, sign, row, kind, None)
            bests = group.map(BaitShard.refresh, A, A @ F @ A, "remove")
        else:
            bests = group.map(BaitShard.update, GZ, sign, row, kind, next_kind)
        fresh = next_kind != kind
        bar.update()
    bar.close()
    lu_solves, rows_rescored = (sum(c) for c in zip(*group.map(BaitShard.counts)))
    if lu_solves:
        log.warning(
            "BAIT: %d per-row K x K solves fell back from Cholesky to LU (matrices not numerically positive "
            "definite; %d refreshes for drift): their scores are less accurate; lam=%g is small next to "
            "|h|^2 (up to %.3g): a larger lam avoids it",
            lu_solves,
            refreshes,
            lam,
            max_norm2,
        )
    total = time.perf_counter() - t_start
    log.info(  # where the time went (docs/BENCHMARKS.md, the 2M-row row)
        "BAIT: %.1f s: scoring every row %.1f s, %d steps %.1f s, %d rescores outside the candidates %.1f s "
        "(%d rows), %d refreshes of the per-row state for drift %.1f s%s",
        total,
        seconds["scoring"],
        steps,
        total - sum(seconds.values()),
        rescores,
        seconds["rescores"],
        rows_rescored,
        refreshes,
        seconds["refreshes"],
        " (float64 state)" if float64 else "",
    )
    owners = []
    for row in picks:
        shard = int(np.searchsorted(first_rows, row, side="right")) - 1
        owners.append((shard, row - int(first_rows[shard])))
    return owners, [scores[r] for r in picks], float((A * F).sum())


def run(
    probs, feats, budget: int, *, labeled=None, progress: bool = False, forward_steps: int | None = None, **options
) -> BaitResult:
    """Single-process BAIT on arrays, with the final objective (tests and benchmarks)."""
    from .inputs import check_budget, check_labeled, check_probs_feats

    probs, feats = check_probs_feats(probs, feats)
    mask = check_labeled(labeled, len(probs), probs.device)
    budget = check_budget(budget, int((~mask).sum()))
    opts = BaitOptions(**options)
    check_reduction(opts, probs.shape[1], feats.shape[1])
    with torch.inference_mode(), numerical_errors():
        picks, _, objective = bait(
            LocalShards([BaitShard(probs, feats, mask)]), budget, opts, progress=progress, forward_steps=forward_steps
        )
    return BaitResult(np.array([i for _, i in picks], dtype=np.int64), objective)


def objectives(
    probs,
    feats,
    selections,
    *,
    labeled=None,
    budget: int,
    lam: float = 1.0,
    weighting: Literal["reference", "mean"] = "reference",
) -> list[float]:
    """tr(M_S^{-1} F) of each selection S (row indices) of one pool, from float64 Fisher sums: how benchmarks
    compare selections on pools too large for the dense oracle (`dist_al.testing.oracles.bait_objective`,
    whose memory grows as N * K * K*D).

    Args:
        probs, feats: the pool's (N, K) probabilities and (N, D) features.
        selections: row index arrays, one per selection.
        labeled: the labeled rows (mask or indices), in F_L.
        budget: the B of the weights w_L, w_S.
        lam, weighting: as BaitOptions.

    Returns:
        One objective per selection (the unreduced problem's: no pca_dim or top_classes).
    """
    from .inputs import check_labeled, check_probs_feats

    probs, feats = check_probs_feats(probs, feats)
    mask = check_labeled(labeled, len(probs), probs.device)
    opts = BaitOptions(lam=lam, weighting=weighting)
    shard = BaitShard(probs, feats, mask)
    K, D = probs.shape[1], feats.shape[1]
    with torch.inference_mode():
        pool, labeled_sum, n_rows, n_labeled, _ = shard.fisher_sums(K)
        F = pool / n_rows
        w_labeled = 1.0 / (n_labeled + budget)
        w_batch = budget * w_labeled if opts.weighting == "reference" else w_labeled
        M0 = opts.lam * torch.eye(K * D, dtype=torch.float64, device=F.device) + w_labeled * labeled_sum
        out = []
        for rows in selections:
            rows = torch.as_tensor(np.asarray(rows, dtype=np.int64), device=shard.h.device)
            M = M0 + w_batch * shard._fisher_sum(shard.p[rows], None, shard.h[rows], K)
            out.append(float(torch.trace(torch.linalg.solve(M, F))))
    return out
