"""Slow, obviously-correct reference implementations ("oracles") of BADGE and BAIT.

Why this module exists: the fast code in `badge.py` and `bait.py` never builds
the objects the papers talk about (N x K*D gradient embeddings, d x d Fisher
matrices per row); it works with factorisations, Woodbury updates and running
K x K statistics, which is exactly where subtle bugs hide. The functions here
do the opposite: they materialise everything in float64 numpy and follow
DESIGN.md sections 3-4 (and the reference JordanAsh/badge code) line by line,
with explicit inverses and recomputation from scratch. They serve two uses:

* ground truth for the tests: the fast code follows the same sampling and
  tie-breaking protocol, so its picks must equal these picks exactly, and its
  objective must equal the one computed here;
* the naive baseline of the benchmarks ("what the reference implementation
  costs").

Nothing here is meant to be fast, and nothing should be made clever: whole
arrays, plain numpy products, explicit inverses. The one concession is that
big products run as ordinary 2-d matrix products (not numpy's much slower
stacked matmul), so that the baseline is slow for the algorithm's reasons only.
`_bait_trace` also reports how close each greedy choice was (tests use it to
avoid near-ties, where round-off may legitimately flip a pick).

Inputs may be numpy arrays or torch tensors (any dtype, any device); they are
converted to float64 numpy. `labeled` is None, a boolean mask of length N, or
an array of row indices.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "gradient_embeddings",
    "fisher_factors",
    "badge",
    "bait",
    "bait_objective",
    "bait_reduce",
]


# -- input helpers ------------------------------------------------------------------------


def _float64(x) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().double().numpy()
    return np.array(x, dtype=np.float64)  # always a copy: callers' arrays are never touched


def _inputs(probs, feats) -> tuple[np.ndarray, np.ndarray]:
    p, h = _float64(probs), _float64(feats)
    if p.ndim != 2 or h.ndim != 2 or len(p) != len(h):
        raise ValueError(f"probs (N, K) and feats (N, D) must be 2-d with the same N, got {p.shape} and {h.shape}")
    return p, h


def _labeled_mask(labeled, n: int) -> np.ndarray:
    if labeled is None:
        return np.zeros(n, dtype=bool)
    if hasattr(labeled, "detach"):
        labeled = labeled.detach().cpu().numpy()
    labeled = np.asarray(labeled)
    if labeled.dtype == bool:
        if labeled.shape != (n,):
            raise ValueError(f"labeled mask must have shape ({n},), got {labeled.shape}")
        return labeled.copy()
    mask = np.zeros(n, dtype=bool)
    mask[labeled.astype(np.int64).reshape(-1)] = True
    return mask


def _check_budget(budget, n_unlabeled: int) -> int:
    budget = int(budget)
    if not 1 <= budget <= n_unlabeled:
        raise ValueError(f"budget must be in [1, {n_unlabeled}] (the unlabeled rows), got {budget}")
    return budget


# -- embeddings ---------------------------------------------------------------------------


def gradient_embeddings(probs, feats) -> np.ndarray:
    """g_x = (e_yhat - p) (x) h for every row, shape (N, K*D); entry (c, j) at c*D + j.

    yhat = np.argmax(p) (lowest class on ties). Row x equals np.kron(a_x, h_x).
    """
    p, h = _inputs(probs, feats)
    n, k = p.shape
    a = np.eye(k)[np.argmax(p, axis=1)] - p  # (N, K): e_yhat - p
    return (a[:, :, None] * h[:, None, :]).reshape(n, k * h.shape[1])  # [x, c, j] = a[x, c] * h[x, j]


def fisher_factors(probs, feats) -> np.ndarray:
    """V_x, shape (N, K, K*D): row c = sqrt(p_c) * ((e_c - p) (x) h), so I(x) = V_x^T V_x.

    V[x, c] equals np.sqrt(p[x, c]) * np.kron(e_c - p[x], h[x]).
    """
    p, h = _inputs(probs, feats)
    n, k = p.shape
    lx = np.sqrt(p)[:, :, None] * (np.eye(k)[None, :, :] - p[:, None, :])  # [x, c, :] = sqrt(p_c) (e_c - p)
    return (lx[:, :, :, None] * h[:, None, None, :]).reshape(n, k, k * h.shape[1])


# -- BADGE --------------------------------------------------------------------------------


def badge(probs, feats, budget, *, labeled=None, seed=0) -> np.ndarray:
    """k-means++ seeding over the materialised gradient embeddings of the unlabeled rows.

    Protocol (shared with dist_al.core.badge, so picks compare exactly):
    first centre = unlabeled row of largest |g|^2 (lowest row on ties); then
    with rng = np.random.default_rng(seed), per step: total = sum(d2); if
    total > 0, u = rng.random() and the pick is the first row whose running
    sum of d2 exceeds u * total; otherwise j = rng.integers(#unchosen unlabeled)
    and the pick is the j-th unchosen unlabeled row. Labeled and chosen rows
    have weight 0. Returns rows in pick order.
    """
    g = gradient_embeddings(probs, feats)
    n = len(g)
    labeled = _labeled_mask(labeled, n)
    budget = _check_budget(budget, int((~labeled).sum()))
    rng = np.random.default_rng(seed)

    norms = np.sum(g**2, axis=1)
    unlabeled_rows = np.flatnonzero(~labeled)
    first = int(unlabeled_rows[np.argmax(norms[unlabeled_rows])])  # np.argmax: first maximum
    chosen = [first]
    out_of_play = labeled.copy()  # labeled or chosen: weight 0, never picked
    out_of_play[first] = True
    d2 = np.full(n, np.inf)

    while len(chosen) < budget:
        newest = chosen[-1]
        d2 = np.minimum(d2, np.sum((g - g[newest]) ** 2, axis=1))
        d2[out_of_play] = 0.0
        total = float(np.sum(d2))
        if total > 0:
            target = rng.random() * total
            running = np.cumsum(d2)
            above = np.flatnonzero(running > target)
            if len(above):
                pick = int(above[0])
            else:  # round-off put the target at the very end: the last row with weight
                pick = int(np.flatnonzero(d2 > 0)[-1])
        else:  # every unchosen row coincides with a centre: uniform among them
            free = np.flatnonzero(~out_of_play)
            pick = int(free[rng.integers(len(free))])
        assert not out_of_play[pick]
        chosen.append(pick)
        out_of_play[pick] = True
    return np.array(chosen, dtype=np.int64)


# -- BAIT ---------------------------------------------------------------------------------


def _fisher_sum(v: np.ndarray) -> np.ndarray:
    """sum over rows x of V_x^T V_x (d x d): all rows' factor rows stacked, then one Gram matrix."""
    stacked = v.reshape(-1, v.shape[-1])
    return stacked.T @ stacked


def _bait_setup(probs, feats, labeled, lam, weighting, budget):
    """Fisher factors, pool Fisher F, U = sqrt(w_S) V and M0 = lam I + w_L n_L F_L."""
    p, h = _inputs(probs, feats)
    n = len(p)
    labeled = _labeled_mask(labeled, n)
    v = fisher_factors(p, h)
    d = v.shape[-1]
    fisher = _fisher_sum(v) / n
    n_l = int(labeled.sum())
    fisher_l = _fisher_sum(v[labeled]) / n_l if n_l else np.zeros((d, d))
    if weighting == "reference":
        w_l, w_s = 1.0 / (n_l + budget), budget / (n_l + budget)
    elif weighting == "mean":
        w_l = w_s = 1.0 / (n_l + budget)
    else:
        raise ValueError(f"weighting must be 'reference' or 'mean', got {weighting!r}")
    m0 = lam * np.eye(d) + w_l * n_l * fisher_l
    u = np.sqrt(w_s) * v
    return labeled, fisher, u, m0


def _sandwiches(uc: np.ndarray, a: np.ndarray, fisher: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """U A U^T and U A F A U^T for a stack of U (n, K, d), products taken left to right.

    The (n, K, d) @ (d, d) products run as one (n*K, d) @ (d, d) matrix product:
    the same numbers, but numpy's stacked matmul is ~20x slower at this shape, and
    a benchmark uses this module as the naive baseline, which should not be slow
    for reasons of numpy's dispatch.
    """
    n, k, d = uc.shape

    def times(stack, matrix):  # stack[i] @ matrix for every i
        return (stack.reshape(n * k, d) @ matrix).reshape(n, k, d)

    uct = uc.transpose(0, 2, 1)
    ua = times(uc, a)
    return ua @ uct, times(times(ua, fisher), a) @ uct


def _gap(scores: np.ndarray) -> float:
    """best score minus second best (inf when there is one candidate)."""
    if len(scores) < 2:
        return np.inf
    top = np.sort(scores)[::-1]
    return float(top[0] - top[1])


def _bait_trace(
    probs, feats, budget, *, labeled=None, lam=1.0, oversample=2.0, weighting="reference", forward_steps=None
):
    """dense BAIT, also returning per step the gap between the best and the second-best score.

    The gaps let tests reject instances whose choices are near-ties (round-off
    could then legitimately flip a pick). Returns (picks, objective, gaps).
    """
    n = len(_float64(probs))
    labeled = _labeled_mask(labeled, n)
    n_unlabeled = int((~labeled).sum())
    budget = _check_budget(budget, n_unlabeled)
    labeled, fisher, u, m0 = _bait_setup(probs, feats, labeled, lam, weighting, budget)
    k = u.shape[1]
    eye_k = np.eye(k)
    a = np.linalg.inv(m0)
    gaps = []

    if forward_steps is None:
        steps = min(int(round(oversample * budget)), n_unlabeled)
    else:
        steps = int(forward_steps)
        if not 0 <= steps <= n_unlabeled:
            raise ValueError(f"forward_steps must be in [0, {n_unlabeled}], got {forward_steps}")

    chosen: list[int] = []
    for _ in range(steps):
        # every unchosen unlabeled row at once, as the reference does (a stack of K x K problems)
        cands = np.array([x for x in np.flatnonzero(~labeled) if x not in chosen])
        p_stack, q_stack = _sandwiches(u[cands], a, fisher)
        scores = np.trace(np.linalg.inv(eye_k + p_stack) @ q_stack, axis1=1, axis2=2)
        i = int(np.argmax(scores))  # first maximum: ties go to the lowest row
        gaps.append(_gap(scores))
        us = u[cands[i]]
        a = a - a @ us.T @ np.linalg.inv(eye_k + us @ a @ us.T) @ us @ a
        chosen.append(int(cands[i]))

    if forward_steps is None:
        while len(chosen) > budget:
            p_stack, q_stack = _sandwiches(u[chosen], a, fisher)
            scores = np.trace(np.linalg.inv(p_stack - eye_k) @ q_stack, axis1=1, axis2=2)
            i = int(np.argmax(scores))  # first maximum: ties go to the earliest in the list
            gaps.append(_gap(scores))
            us = u[chosen[i]]
            a = a - a @ us.T @ np.linalg.inv(us @ a @ us.T - eye_k) @ us @ a
            del chosen[i]

    return np.array(chosen, dtype=np.int64), float(np.trace(a @ fisher)), np.array(gaps)


def bait(
    probs,
    feats,
    budget,
    *,
    labeled=None,
    lam=1.0,
    oversample=2.0,
    weighting="reference",
    forward_steps=None,
) -> tuple[np.ndarray, float]:
    """The reference BAIT greedy forward-backward selection with dense d x d matrices.

    Follows JordanAsh/badge query_strategies/bait_sampling.py `select`:
    A = inv(lam I + w_L n_L F_L); U_x = sqrt(w_S) V_x; forward
    int(round(oversample * budget)) steps (at most the unlabeled count), each
    adding the unchosen unlabeled row of largest
    tr(inv(I + U A U^T) U A F A U^T) (ties: lowest row) and updating
    A <- A - A U^T inv(I + U A U^T) U A; then backward until `budget` remain,
    each removing the chosen row of largest tr(inv(U A U^T - I) U A F A U^T)
    (ties: earliest in the list), A <- A - A U^T inv(U A U^T - I) U A.
    F is the mean Fisher over ALL rows, F_L over the labeled rows.
    Returns (surviving rows in pick order, tr(A F)).

    forward_steps=int: only that many forward steps and no backward pass;
    returns (picks so far, tr(A F)) (for timing single steps).
    """
    picks, objective, _ = _bait_trace(
        probs,
        feats,
        budget,
        labeled=labeled,
        lam=lam,
        oversample=oversample,
        weighting=weighting,
        forward_steps=forward_steps,
    )
    return picks, objective


def bait_objective(probs, feats, selected, *, labeled=None, lam=1.0, weighting="reference", budget=None) -> float:
    """tr(M_S^{-1} F), M_S = lam I + w_L n_L F_L + w_S sum_{x in S} I(x), from scratch.

    `budget` is the B in the weights w_L, w_S (default: len(selected)).
    """
    selected = np.asarray(selected, dtype=np.int64).reshape(-1)
    n = len(_float64(probs))
    labeled = _labeled_mask(labeled, n)
    budget = len(selected) if budget is None else int(budget)
    labeled, fisher, u, m0 = _bait_setup(probs, feats, labeled, lam, weighting, budget)
    m = m0 + _fisher_sum(u[selected])  # u = sqrt(w_S) V, so U^T U = w_S I(x)
    return float(np.trace(np.linalg.inv(m) @ fisher))


def bait_reduce(probs, feats, *, pca_dim=None, top_classes=None) -> tuple[np.ndarray, np.ndarray]:
    """The inputs BAIT sees after the dimension reductions of the fast code.

    top_classes=c: per row keep the c largest probabilities (ties: lower class
    first), zero the rest, renormalise the row to sum 1.
    pca_dim=D': S = feats^T feats (uncentred, over all rows); W = eigenvectors
    of S for its D' largest eigenvalues (descending); feats -> feats @ W.
    """
    p, h = _inputs(probs, feats)
    if top_classes is not None:
        c = int(top_classes)
        if not 1 <= c <= p.shape[1]:
            raise ValueError(f"top_classes must be in [1, {p.shape[1]}], got {top_classes}")
        reduced = np.zeros_like(p)
        for x in range(len(p)):
            keep = np.argsort(-p[x], kind="stable")[:c]  # stable: equal probabilities keep class order
            reduced[x, keep] = p[x, keep]
            reduced[x] /= reduced[x].sum()
        p = reduced
    if pca_dim is not None:
        dim = int(pca_dim)
        if not 1 <= dim <= h.shape[1]:
            raise ValueError(f"pca_dim must be in [1, {h.shape[1]}], got {pca_dim}")
        second_moment = h.T @ h
        values, vectors = np.linalg.eigh(second_moment)
        order = np.argsort(-values, kind="stable")[:dim]
        h = h @ vectors[:, order]
    return p, h
