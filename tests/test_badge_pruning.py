"""BADGE's exact pruning (DESIGN.md section 3, dist_al.core.badge.CentreBounds) against the full pass.

A row that pruning skips keeps its d2, and the full pass would have left it unchanged too; a row it reads gets
the full pass's distance up to the round-off of a BLAS dot product (a gathered row may be summed in another
order). So the D^2 draws, and the picks, are the same: every test runs the pruned and the unpruned (prune=False:
every row read at every centre) algorithm side by side, on embeddings of a trained model, Gaussian mixtures,
near-duplicate and tiny-norm rows, and rows where the triangle inequality holds with equality.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from dist_al.core import select
from dist_al.core.api import resolve_options, run_strategy
from dist_al.core.badge import BadgeShard, _rows_where, kmeanspp
from dist_al.core.errors import UserError
from dist_al.core.shards import ROUNDOFF_ULPS, LocalShards
from dist_al.data.synthetic import gaussian_mixture
from dist_al.testing.pools import digits_embeddings


@functools.cache
def _digits(n: int = 3000) -> tuple[torch.Tensor, torch.Tensor]:
    return digits_embeddings(n, hidden=32, steps=150)


def _gaussian(seed: int, n: int = 2000):
    feats, _ = gaussian_mixture(n, 6, 24, seed=seed)
    logits = feats @ torch.randn(24, 6, generator=torch.Generator().manual_seed(seed)) * 0.5
    return torch.softmax(logits, 1), feats


def _near_duplicates(seed: int, n: int = 1500):
    """Ordinary rows, rows of ~1e-4 their norm, and near-copies of both (some within round-off, some just out)."""
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.full(4, 0.5), size=n)
    feats = rng.normal(size=(n, 8))
    feats[n // 3 :] *= 1e-4
    for step, factor in ((5, 1 + 1e-7), (7, 1 + 1e-3), (11, 1.0)):
        feats[1::step] = feats[::step][: len(feats[1::step])] * factor
        probs[1::step] = probs[::step][: len(probs[1::step])]
    return torch.from_numpy(probs.astype(np.float32)), torch.from_numpy(feats.astype(np.float32))


def _collinear(seed: int, n: int = 800):
    """One shared a and h on a line through the origin at integer steps: many rows sit exactly halfway between
    two others, where ||g_x - g_c|| = D(n(x), c) - d(x) and the triangle inequality holds with equality. Every
    value is a small dyadic number, so every dot product is exact in float32 whatever order a kernel sums in."""
    rng = np.random.default_rng(seed)
    probs = np.tile([0.5, 0.25, 0.25], (n, 1))
    feats = np.outer(rng.integers(-40, 41, size=n), rng.integers(-3, 4, size=5))
    return torch.from_numpy(probs.astype(np.float32)), torch.from_numpy(feats.astype(np.float32))


POOLS = {
    "digits-mlp": lambda seed: _digits(),
    "gaussian": _gaussian,
    "near-duplicates": _near_duplicates,
    "collinear": _collinear,
}


def _shards(probs, feats, cuts, labeled):
    edges = [0, *cuts, len(probs)]
    return [BadgeShard(probs[lo:hi], feats[lo:hi], labeled[lo:hi], lo) for lo, hi in zip(edges, edges[1:])], edges


def _assert_same_d2(pruned: BadgeShard, full: BadgeShard, scale: float) -> None:
    """Equal up to the round-off that snap_roundoff_ allows the factorised distance, with the block sums of
    the draw a recount of d2."""
    tol = ROUNDOFF_ULPS * torch.finfo(full.d2.dtype).eps * (full.norm2 + scale)
    assert bool(((pruned.d2 - full.d2).abs() <= tol).all())
    recount = BadgeShard(torch.ones(len(full.d2), 1), full.h, torch.zeros(len(full.d2), dtype=torch.bool))
    recount.d2 = pruned.d2.clone()
    recount._total()
    assert torch.equal(recount.block_sums, pruned.block_sums)


@pytest.mark.parametrize("pool", list(POOLS))
@pytest.mark.parametrize("seed", range(3))
def test_every_step_leaves_the_full_pass_d2(pool, seed):
    """Lockstep: the same centres go to a pruned and an unpruned copy of each shard; after every centre each
    row's d2 agrees up to round-off, the block sums are a recount, and the D^2 draw takes the same row."""
    probs, feats = POOLS[pool](seed)
    n = len(probs)
    labeled = torch.zeros(n, dtype=torch.bool)
    labeled[torch.randperm(n, generator=torch.Generator().manual_seed(seed))[: n // 50]] = True
    cuts = sorted(np.random.default_rng(seed).choice(np.arange(1, n), size=2, replace=False).tolist())
    pruned, edges = _shards(probs, feats, cuts, labeled)
    full, _ = _shards(probs, feats, cuts, labeled)
    rng = np.random.default_rng(seed)
    centre = pruned[0].centre(int(pruned[0].best_norm()[1]))
    scale = float(torch.linalg.vecdot(feats, feats).max()) * 2  # >= any |g_c|^2: |a|^2 <= 2
    for _ in range(120):
        stats = [s.add_centre(centre) for s in pruned]
        full_stats = [s.add_centre(centre, prune=False) for s in full]
        assert [m for _, m in stats] == [m for _, m in full_stats]
        np.testing.assert_allclose([t for t, _ in stats], [t for t, _ in full_stats], rtol=1e-6)
        for p, f in zip(pruned, full):
            _assert_same_d2(p, f, scale)
            assert pool != "collinear" or torch.equal(p.d2, f.d2)  # exact arithmetic: exactly equal
        if sum(t for t, _ in stats) == 0:  # every row coincides with a centre
            break
        target = rng.random() * sum(t for t, _ in stats)
        shard = next((i for i, t in enumerate(np.cumsum([t for t, _ in stats])) if t > target), len(stats) - 1)
        row, centre = pruned[shard].take_weighted(target - sum(t for t, _ in stats[:shard]))
        assert full[shard].take_weighted(target - sum(t for t, _ in stats[:shard]))[0] == row
    assert sum(s.rows_read for s in pruned) < sum(s.rows_read for s in full)


@pytest.mark.parametrize("pool", list(POOLS))
@pytest.mark.parametrize("cuts", [[], [700], [100, 101, 650]])
def test_same_picks_as_the_full_pass_for_any_sharding(pool, cuts):
    probs, feats = POOLS[pool](1)
    labeled = torch.zeros(len(probs), dtype=torch.bool)
    labeled[::97] = True
    picks = {}
    for prune in (True, False):
        shards, edges = _shards(probs, feats, cuts, labeled)
        selection = run_strategy("badge", LocalShards(shards), 150, 4, resolve_options("badge", {"prune": prune}))
        picks[prune] = [edges[s] + i for s, i in selection.picks]
    assert picks[True] == picks[False]
    assert picks[True] == select("badge", probs, feats, 150, labeled=labeled, seed=4, prune=False).tolist()


def test_pruning_reads_a_fraction_of_the_rows_of_a_trained_model():
    """The point of pruning: on a trained model's embeddings most rows are never read again."""
    probs, feats = _digits()
    labeled = torch.zeros(len(probs), dtype=torch.bool)
    read = {}
    for prune in (True, False):
        shard = BadgeShard(probs, feats, labeled)
        kmeanspp(LocalShards([shard]), 200, 0, prune=prune)
        read[prune] = shard.rows_read
    assert read[False] == 199 * len(probs)
    assert read[True] < 0.25 * read[False]


def test_k_means_parallel_then_exact_steps_read_every_row():
    """k-means||'s candidates carry no groups, so the exact steps that finish it read every row, with the
    same picks as without pruning."""
    probs, feats = _gaussian(2, n=300)
    ids = [select("badge-scalable", probs, feats, 250, seed=3, rounds=1, oversampling=0.2)]
    assert len(set(ids[0].tolist())) == 250


def test_prune_must_be_a_bool():
    assert resolve_options("badge", {"prune": False}).prune is False
    with pytest.raises(UserError, match="option prune must be true or false, got 'no'"):
        resolve_options("badge", {"prune": "no"})


def test_rows_where_is_torch_nonzero():
    """The numpy path on the CPU answers what the torch path (used on GPUs) answers."""
    mask = torch.rand(10_000, generator=torch.Generator().manual_seed(0)) > 0.7
    assert torch.equal(_rows_where(mask), mask.nonzero()[:, 0])
    assert torch.equal(_rows_where(torch.zeros(0, dtype=torch.bool)), torch.zeros(0, dtype=torch.long))


@pytest.mark.parametrize(
    "mkl, vendor, numpy_blas, kernel",
    [
        (True, "GenuineIntel", "scipy-openblas", "torch"),
        (True, "AuthenticAMD", "scipy-openblas", "numpy"),
        (True, "AuthenticAMD", "mkl-sdl", "torch"),
        (True, "AuthenticAMD", "unknown", "torch"),
        (False, "AuthenticAMD", "openblas", "torch"),
        (True, "unknown", "openblas", "torch"),
    ],
)
def test_dot_kernel_avoids_mkl_gemv_off_intel(monkeypatch, mkl, vendor, numpy_blas, kernel):
    from dist_al.core import kernels

    monkeypatch.setattr(torch.backends.mkl, "is_available", lambda: mkl)
    monkeypatch.setattr(kernels, "cpu_info", lambda key: vendor)
    monkeypatch.setattr(kernels, "_numpy_blas", lambda: numpy_blas)
    kernels.dot_kernel.cache_clear()
    try:
        assert kernels.dot_kernel() == kernel
    finally:
        kernels.dot_kernel.cache_clear()


@pytest.mark.parametrize("pool", ["digits-mlp", "gaussian"])
def test_numpy_dot_kernel_gives_the_same_picks(monkeypatch, pool):
    """The kernel taken on AMD CPUs (numpy's BLAS), run here: the picks of torch.mv's, pruned or not."""
    from dist_al.core import kernels

    probs, feats = POOLS[pool](0)
    want = select("badge", probs, feats, 100, seed=2)
    monkeypatch.setattr(kernels, "dot_kernel", lambda: "numpy")
    for prune in (True, False):
        np.testing.assert_array_equal(select("badge", probs, feats, 100, seed=2, prune=prune), want)
    out = torch.empty(len(feats))
    assert kernels.row_dots(feats, feats[0], out=out) is out
    torch.testing.assert_close(out, feats @ feats[0])


@pytest.mark.parametrize("n", [1, 6, 7, 8, 23])
def test_fixed_shape_dots_of_any_length_equal_torch_mv(monkeypatch, n):
    """The GPU path of row_dots (GEMVs of exactly CUDA_DOT_ROWS rows, a padded rest), run here on 7-row slices."""
    from dist_al.core import kernels

    monkeypatch.setattr(kernels, "CUDA_DOT_ROWS", 7)
    rows, v = torch.randn(n, 5, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    out = torch.full((n,), torch.nan, dtype=torch.float64)
    assert kernels._fixed_shape_dots(rows, v, out) is out
    torch.testing.assert_close(out, rows @ v, rtol=1e-14, atol=0)
    torch.testing.assert_close(kernels._fixed_shape_dots(rows, v, None), rows @ v, rtol=1e-14, atol=0)
