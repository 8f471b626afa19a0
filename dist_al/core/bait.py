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
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .progress import progress_bar
from .shards import LocalShards, ShardGroup, argmax_first

# Coordinator matrices are d x d float64; above this d they stop fitting comfortably.
MAX_FISHER_DIM = 8192
_BLOCK_ELEMENTS = 1 << 23


def check_reduction(options: dict, n_classes: int, n_feats: int) -> None:
    c, dp = options.get("top_classes"), options.get("pca_dim")
    if c is not None and not 2 <= c <= n_classes:
        raise ValueError(f"option top_classes must be between 2 and the number of classes ({n_classes}), got {c}")
    if dp is not None and dp > n_feats:
        raise ValueError(f"option pca_dim must be at most the feature width ({n_feats}), got {dp}")
    d = n_classes * (dp or n_feats)
    if d > MAX_FISHER_DIM:
        hint = max(1, MAX_FISHER_DIM // n_classes)
        raise ValueError(
            f"BAIT needs d x d matrices with d = classes * feature width = {d}, above the limit {MAX_FISHER_DIM}: "
            f"set pca_dim (at most {hint} for {n_classes} classes) and consider top_classes"
        )


def _sandwich_left(Z: torch.Tensor, p: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """diag(s) (I - 1 p^T) Z for a batch: rows of Z are indexed by the row's classes."""
    return s[:, :, None] * (Z - p[:, None, :] @ Z)


class BaitShard:
    """One shard's rows: (p, h) for the Fisher sums, per-row P and Q for the greedy steps."""

    def __init__(self, probs: torch.Tensor, feats: torch.Tensor, labeled: torch.Tensor, first_row: int = 0):
        self.p = probs
        self.idx = None  # class of each column of p, when reduced to top classes
        self.h = feats
        self.labeled = labeled
        self.first_row = first_row
        self.n_classes = probs.shape[1]

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
        return (self.h.T @ self.h).double()

    def project(self, W: torch.Tensor) -> None:
        self.h = self.h @ W.to(self.h.device, self.h.dtype)

    # -- Fisher sums ----------------------------------------------------------------------

    def fisher_sums(self, n_classes: int) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        """Sum of I(x) over all rows and over labeled rows, as d x d float64."""
        lab = self.labeled.nonzero()[:, 0]
        pool = self._fisher_sum(self.p, self.idx, self.h, n_classes)
        labeled = self._fisher_sum(self.p[lab], None if self.idx is None else self.idx[lab], self.h[lab], n_classes)
        return pool, labeled, len(self.h), len(lab)

    @staticmethod
    def _fisher_sum(p, idx, h, K) -> torch.Tensor:
        n, c = p.shape
        D = h.shape[1]
        F2 = torch.zeros(K * K, D * D, dtype=torch.float64, device=h.device)
        block = max(1, _BLOCK_ELEMENTS // (c * c * D + D * D))
        for lo in range(0, n, block):
            pb, hb = p[lo : lo + block], h[lo : lo + block]
            M = torch.diag_embed(pb) - pb[:, :, None] * pb[:, None, :]  # diag(p) - p p^T
            hh = (hb[:, :, None] * hb[:, None, :]).reshape(len(hb), D * D)
            if idx is None:
                F2 += (M.reshape(len(hb), K * K).T @ hh).double()
            else:
                ib = idx[lo : lo + block]
                pair = (ib[:, :, None] * K + ib[:, None, :]).reshape(-1)
                vals = (M.reshape(len(hb), c * c, 1) * hh[:, None, :]).reshape(-1, D * D)
                F2.index_add_(0, pair, vals.double())
        # (a, b, j, k) -> (a, j, b, k): class-major d x d layout
        return F2.reshape(K, K, D, D).permute(0, 2, 1, 3).reshape(K * D, K * D)

    # -- per-row state -----------------------------------------------------------------

    def _block_quadratic(self, B: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """T[n, a, b] = h_n^T B[class a, :, class b, :] h_n over each row's classes."""
        K = B.shape[0] // self.h.shape[1]
        D = self.h.shape[1]
        c = self.p.shape[1]
        B4 = B.to(self.h.dtype).reshape(K, D, K, D)
        out = torch.empty(len(rows), c, c, dtype=self.h.dtype, device=self.h.device)
        if self.idx is None:
            Bm = B4.permute(1, 0, 2, 3).reshape(D, K * K * D)
            block = max(1, _BLOCK_ELEMENTS // (K * K * D))
            for lo in range(0, len(rows), block):
                hb = self.h[rows[lo : lo + block]]
                tmp = (hb @ Bm).reshape(len(hb), K * K, D)
                out[lo : lo + block] = (tmp @ hb[:, :, None]).reshape(len(hb), K, K)
        else:
            Bp = B4.permute(0, 2, 1, 3).contiguous()  # (a, b, j, k)
            block = max(1, _BLOCK_ELEMENTS // (c * c * D * D))
            for lo in range(0, len(rows), block):
                r = rows[lo : lo + block]
                hb, ib = self.h[r], self.idx[r]
                blocks = Bp[ib[:, :, None], ib[:, None, :]].reshape(len(r), c * c, D, D)
                v = blocks @ hb[:, None, :, None]
                out[lo : lo + block] = (hb[:, None, None, :] @ v).reshape(len(r), c, c)
        return out

    def init_state(self, A: torch.Tensor, C: torch.Tensor, w_s: float):
        """P, Q for every unlabeled row from A0 and C0 = A0 F A0; returns the best row to add."""
        self.rows = (~self.labeled).nonzero()[:, 0]
        self.chosen = torch.zeros(len(self.rows), dtype=torch.bool, device=self.h.device)
        self.removed = torch.zeros_like(self.chosen)
        p = self.p[self.rows]
        self.s = (w_s * p).sqrt()
        self.P = self._sandwich(self._block_quadratic(A, self.rows), p)
        self.Q = self._sandwich(self._block_quadratic(C, self.rows), p)
        return self.best("add")

    def _sandwich(self, T: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """diag(s) (I - 1 p^T) T (I - p 1^T) diag(s): U A U^T from the block forms T."""
        left = _sandwich_left(T, p, self.s)
        return (left - left @ p[:, :, None]) * self.s[:, None, :]

    def _project_rows(self, G3: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """X = U_x G for the rows at positions pos: contract h over D, pick the row's classes."""
        K, D, k = G3.shape
        rows = self.rows[pos]
        Z = (self.h[rows] @ G3.permute(1, 0, 2).reshape(D, K * k)).reshape(len(rows), K, k)
        if self.idx is not None:
            Z = Z.gather(1, self.idx[rows][:, :, None].expand(-1, -1, k))
        return _sandwich_left(Z, self.p[rows], self.s[pos])

    def update(self, G, H, S, R, global_row: int, kind: str, next_kind: str | None):
        """Applies A' = A - G S G^T to P and Q; marks the row added or removed; returns the next best."""
        local = global_row - self.first_row
        if 0 <= local < len(self.h):
            pos = int(torch.searchsorted(self.rows, torch.tensor(local, device=self.rows.device)))
            if kind == "add":
                self.chosen[pos] = True
            else:
                self.chosen[pos], self.removed[pos] = False, True
        if next_kind is None:
            return None
        dt, dev = self.h.dtype, self.h.device
        D = self.h.shape[1]
        K = G.shape[0] // D
        G3, H3 = (M.to(dev, dt).reshape(K, D, -1) for M in (G, H))
        S, R = S.to(dev, dt), R.to(dev, dt)
        targets = torch.arange(len(self.rows), device=dev) if next_kind == "add" else self.chosen.nonzero()[:, 0]
        c = self.p.shape[1]
        block = max(1, _BLOCK_ELEMENTS // (4 * c * max(c, G.shape[1])))
        for lo in range(0, len(targets), block):
            pos = targets[lo : lo + block]
            X = self._project_rows(G3, pos)
            Y = self._project_rows(H3, pos)
            XS = X @ S
            XSt = XS.transpose(1, 2)
            cross = XS @ Y.transpose(1, 2)
            self.P[pos] -= XS @ X.transpose(1, 2)
            self.Q[pos] += (XS @ R) @ XSt - cross - cross.transpose(1, 2)
        return self.best(next_kind)

    def best(self, kind: str):
        """(score, global row, p, classes, h) of the best row to add or remove; score -inf if none."""
        eye = torch.eye(self.P.shape[1], dtype=self.P.dtype, device=self.P.device)
        if kind == "add":
            pos = (~self.chosen & ~self.removed).nonzero()[:, 0]
            score = _trace_solve(eye + self.P[pos], self.Q[pos])
        else:
            pos = self.chosen.nonzero()[:, 0]
            score = -_trace_solve(eye - self.P[pos], self.Q[pos])
        if len(pos) == 0:
            return -np.inf, -1, None, None, None
        j = int(score.argmax())
        r = int(self.rows[pos[j]])
        idx = None if self.idx is None else self.idx[r].cpu()
        return float(score[j]), self.first_row + r, self.p[r].cpu(), idx, self.h[r].cpu()


def _trace_solve(Mpd: torch.Tensor, Q: torch.Tensor) -> torch.Tensor:
    """tr(M^{-1} Q) per batch item for symmetric positive definite M."""
    L, info = torch.linalg.cholesky_ex(Mpd)
    if bool((info != 0).any()):  # numerically indefinite: fall back to LU
        return torch.linalg.solve(Mpd, Q).diagonal(dim1=-2, dim2=-1).sum(-1)
    return torch.cholesky_solve(Q, L).diagonal(dim1=-2, dim2=-1).sum(-1)


def _embedding_columns(p, idx, h, w_s: float, n_classes: int) -> torch.Tensor:
    """U_s^T as a d x c matrix (d = K*D) for one row."""
    p, h = p.double(), h.double()
    c = len(p)
    classes = torch.arange(n_classes) if idx is None else idx
    Lmat = (w_s * p).sqrt()[:, None] * (torch.eye(c, dtype=torch.float64) - p[None, :])  # c x c
    U3 = torch.zeros(n_classes, len(h), c, dtype=torch.float64)
    U3[classes] = Lmat.T[:, None, :] * h[None, :, None]
    return U3.reshape(-1, c)


@dataclass(frozen=True)
class BaitResult:
    indices: np.ndarray
    objective: float


def _coordinator_device(group: ShardGroup) -> torch.device:
    dev = torch.device(group.call(0, "device"))
    return dev if dev.type != "cuda" or torch.cuda.is_available() else torch.device("cpu")


def bait(
    group: ShardGroup,
    budget: int,
    *,
    lam: float = 1.0,
    oversample: float = 2.0,
    weighting: str = "reference",
    pca_dim: int | None = None,
    top_classes: int | None = None,
    progress: bool = False,
    forward_steps: int | None = None,
) -> tuple[list[tuple[int, int]], list[float], float]:
    """Coordinator loop: ((shard, local) picks in pick order, their add-scores, final tr(M^{-1} F)).

    forward_steps (benchmarks): stop after that many forward steps, no pruning.
    """
    dev = _coordinator_device(group)
    shapes = group.map("shape")
    first_rows = np.cumsum([0] + [n for n, _, _ in shapes])[:-1]
    K, D = shapes[0][1], pca_dim or shapes[0][2]
    if top_classes is not None:
        group.map("reduce_classes", top_classes)
    if pca_dim is not None:
        second = sum(m.to(dev) for m in group.map("second_moment"))
        W = torch.linalg.eigh(second).eigenvectors.flip(1)[:, :pca_dim]
        W *= torch.sign(W.gather(0, W.abs().argmax(0, keepdim=True)))  # deterministic signs
        group.map("project", W)

    sums = group.map("fisher_sums", K)
    n_rows, n_labeled = sum(x[2] for x in sums), sum(x[3] for x in sums)
    F = sum(x[0].to(dev) for x in sums) / n_rows
    F_labeled_sum = sum(x[1].to(dev) for x in sums)
    w_labeled = 1.0 / (n_labeled + budget)
    w_batch = budget * w_labeled if weighting == "reference" else w_labeled
    eye = torch.eye(K * D, dtype=torch.float64, device=dev)
    A = torch.cholesky_inverse(torch.linalg.cholesky(lam * eye + w_labeled * F_labeled_sum))
    n_forward = min(int(round(oversample * budget)), n_rows - n_labeled)
    if forward_steps is not None:
        n_forward = min(forward_steps, n_forward)
    prune = forward_steps is None and n_forward > budget

    bar = progress_bar(n_forward + (n_forward - budget if prune else 0), "bait", progress)
    bests = group.map("init_state", A, A @ F @ A, w_batch)
    picks: list[int] = []
    scores: dict[int, float] = {}
    adding = n_forward > 0
    while adding or (prune and len(picks) > budget):
        shard = argmax_first([b[0] for b in bests])
        score, row, p, idx, h = bests[shard]
        U = _embedding_columns(p, idx, h, w_batch, K).to(dev)
        G = A @ U
        # add: S = (I + P_s)^{-1}; remove: S = (P_s - I)^{-1}; both give A' = A - G S G^T
        S = torch.linalg.inv(U.T @ G + (1.0 if adding else -1.0) * torch.eye(U.shape[1], dtype=torch.float64, device=dev))
        FG = F @ G
        H, R = A @ FG, G.T @ FG
        A = A - G @ S @ G.T
        A = (A + A.T) / 2  # keep round-off from breaking symmetry over hundreds of steps
        kind = "add" if adding else "remove"
        if adding:
            picks.append(row)
            scores[row] = score
            adding = len(picks) < n_forward
            next_kind = "add" if adding else ("remove" if prune else None)
        else:
            picks.remove(row)
            next_kind = "remove" if len(picks) > budget else None
        bests = group.map("update", G, H, S, R, row, kind, next_kind)
        bar.update()
    bar.close()
    owners = []
    for row in picks:
        shard = int(np.searchsorted(first_rows, row, side="right")) - 1
        owners.append((shard, row - int(first_rows[shard])))
    return owners, [scores[r] for r in picks], float((A * F).sum())


def run(probs, feats, budget: int, *, labeled=None, **options) -> BaitResult:
    """Single-process BAIT on arrays, with the final objective (tests and benchmarks)."""
    from .inputs import check_budget, check_labeled, check_probs_feats

    probs, feats = check_probs_feats(probs, feats)
    mask = check_labeled(labeled, len(probs), probs.device)
    budget = check_budget(budget, int((~mask).sum()))
    check_reduction(options, probs.shape[1], feats.shape[1])
    with torch.inference_mode():
        picks, _, objective = bait(LocalShards([BaitShard(probs, feats, mask)]), budget, **options)
    return BaitResult(np.array([i for _, i in picks], dtype=np.int64), objective)
