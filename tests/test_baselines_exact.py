"""Exact orderings of the baselines (DESIGN.md section 5) on inputs small enough to check by hand.

The uncertainty tables use dyadic probabilities (multiples of 1/8), so every
margin and max is exact in float32 and float64 and the "ties" below are exact
ties, not round-off accidents. Coreset is checked against a plain-loop greedy
k-centre written here from the definition.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dist_al.core import select

DTYPES = [np.float32, np.float64]
CONTAINERS = ["numpy", "torch"]


def _inputs(probs, feats, dtype, container):
    probs = np.asarray(probs, dtype=dtype)
    feats = np.asarray(feats, dtype=dtype)
    if container == "torch":
        return torch.from_numpy(probs), torch.from_numpy(feats)
    return probs, feats


def _pick(strategy, probs, feats=None, budget=None, dtype=np.float64, container="numpy", **kw):
    probs = np.asarray(probs, dtype=np.float64)
    if feats is None:
        feats = np.arange(len(probs), dtype=np.float64)[:, None]
    if budget is None:
        budget = len(probs) - _n_labeled(kw.get("labeled"), len(probs))
    p, h = _inputs(probs, feats, dtype, container)
    out = select(strategy, p, h, budget, **kw)
    assert isinstance(out, np.ndarray) and out.dtype == np.int64
    return out.tolist()


def _n_labeled(labeled, n):
    if labeled is None:
        return 0
    labeled = np.asarray(labeled)
    if labeled.dtype == bool:
        return int(labeled.sum())
    return len(np.unique(labeled))


# One table, three different orders.
#
# row  p                        entropy H(p) (nats)                       margin p1-p2   max p
#  0   [1/2, 1/4, 1/4]          3 * (ln 2)/2            = 1.0397          1/4            1/2
#  1   [3/8, 3/8, 1/4]          2*(3/8)ln(8/3)+(1/4)ln4 = 1.0822          0              3/8
#  2   [1/4, 1/2, 1/4]          same multiset as row 0  = 1.0397          1/4            1/2
#  3   [1/8, 3/8, 1/2]          .2599 + .3678 + .3466   = 0.9743          1/8            1/2
#  4   [1,   0,   0  ]          0                                         1              1
#  5   [5/8, 1/4, 1/8]          .2938 + .3466 + .2599   = 0.9003          3/8            5/8
#
# entropy    (largest H first):      1, 0, 2 (tie with 0: lower row first), 3, 5, 4
# margin     (smallest margin first): 1, 3, 0, 2 (tie 1/4: 0 before 2), 5, 4
# confidence (smallest max p first):  1, 0, 2, 3 (three-way tie at 1/2, row order), 5, 4
TABLE = [
    [1 / 2, 1 / 4, 1 / 4],
    [3 / 8, 3 / 8, 1 / 4],
    [1 / 4, 1 / 2, 1 / 4],
    [1 / 8, 3 / 8, 1 / 2],
    [1.0, 0.0, 0.0],
    [5 / 8, 1 / 4, 1 / 8],
]
EXPECTED = {
    "entropy": [1, 0, 2, 3, 5, 4],
    "margin": [1, 3, 0, 2, 5, 4],
    "confidence": [1, 0, 2, 3, 5, 4],
}


def test_table_entropies_are_the_hand_values():
    # Guards the comment above: the hand-derived entropies are what the formula gives.
    hand = [
        1.5 * math.log(2),
        0.75 * math.log(8 / 3) + 0.25 * math.log(4),
        1.5 * math.log(2),
        0.125 * math.log(8) + 0.375 * math.log(8 / 3) + 0.5 * math.log(2),
        0.0,
        0.625 * math.log(8 / 5) + 0.25 * math.log(4) + 0.125 * math.log(8),
    ]
    p = np.array(TABLE)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.where(p > 0, p * np.log(p), 0.0).sum(1)
    np.testing.assert_allclose(h, hand, rtol=1e-12)
    np.testing.assert_allclose(h, [1.0397, 1.0822, 1.0397, 0.9743, 0.0, 0.9003], atol=1e-4)


@pytest.mark.parametrize("container", CONTAINERS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("strategy", sorted(EXPECTED))
def test_uncertainty_full_order(strategy, dtype, container):
    assert _pick(strategy, TABLE, dtype=dtype, container=container) == EXPECTED[strategy]


@pytest.mark.parametrize("strategy", sorted(EXPECTED))
def test_uncertainty_budget_is_a_prefix(strategy):
    for b in range(1, len(TABLE) + 1):
        assert _pick(strategy, TABLE, budget=b) == EXPECTED[strategy][:b]


@pytest.mark.parametrize("labeled_as", ["indices", "mask"])
@pytest.mark.parametrize("strategy", sorted(EXPECTED))
def test_uncertainty_skips_labeled(strategy, labeled_as):
    # Labeling rows 1 and 2 removes them from the hand orders above:
    # entropy 0, 3, 5, 4; margin 3, 0, 5, 4; confidence 0, 3, 5, 4.
    labeled = [1, 2] if labeled_as == "indices" else np.array([0, 1, 1, 0, 0, 0], dtype=bool)
    expected = [r for r in EXPECTED[strategy] if r not in (1, 2)]
    assert _pick(strategy, TABLE, labeled=labeled) == expected


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("strategy", sorted(EXPECTED))
def test_uncertainty_identical_rows_tie_to_lowest_row(strategy, dtype):
    # Five copies of one row and one one-hot row: the copies come out in row order, the
    # confident row last, whatever the strategy.
    row = [0.5, 0.25, 0.25]
    probs = [row, row, [0.0, 1.0, 0.0], row, row, row]
    assert _pick(strategy, probs, dtype=dtype) == [0, 1, 3, 4, 5, 2]
    # ... and with the lowest copies labeled, the next-lowest copy leads.
    assert _pick(strategy, probs, dtype=dtype, labeled=[0, 3], budget=3) == [1, 4, 5]


def test_margin_and_confidence_disagree_where_they_should():
    # row 0: [1/2, 1/2, 0]      margin 0       max 1/2
    # row 1: [3/8, 5/16, 5/16]  margin 1/16    max 3/8
    # margin wants row 0 first (smaller gap); confidence wants row 1 (smaller max).
    # entropy: H0 = ln 2 = 0.693, H1 = (3/8) ln(8/3) + (5/8) ln(16/5) = 0.368 + 0.727 = 1.095 -> row 1.
    probs = [[0.5, 0.5, 0.0], [3 / 8, 5 / 16, 5 / 16]]
    assert _pick("margin", probs) == [0, 1]
    assert _pick("confidence", probs) == [1, 0]
    assert _pick("entropy", probs) == [1, 0]


def test_binary_uncertainty_orders_agree():
    # With K = 2 all three are the same order: closeness of p to 1/2.
    # |p - 1/2|: row0 .375, row1 0, row2 .125, row3 .25, row4 0 (tie with row 1), row5 .5
    p1 = [7 / 8, 1 / 2, 3 / 8, 3 / 4, 1 / 2, 0.0]
    probs = [[a, 1 - a] for a in p1]
    for strategy in EXPECTED:
        assert _pick(strategy, probs) == [1, 4, 2, 3, 0, 5], strategy


def test_uncertainty_ignores_features():
    feats = np.random.default_rng(0).normal(size=(len(TABLE), 4)) * 1e3
    for strategy, expected in EXPECTED.items():
        assert _pick(strategy, TABLE, feats=feats) == expected


# -- random ------------------------------------------------------------------------------


def _random_inputs(n):
    probs = np.full((n, 2), 0.5)
    feats = np.zeros((n, 1))
    return probs, feats


def test_random_valid_distinct_unlabeled():
    probs, feats = _random_inputs(30)
    labeled = np.arange(0, 30, 3)
    for seed in range(50):
        out = select("random", probs, feats, 20, labeled=labeled, seed=seed)
        assert out.dtype == np.int64 and len(out) == 20
        assert len(set(out.tolist())) == 20
        assert set(out.tolist()).isdisjoint(labeled.tolist())
        assert ((out >= 0) & (out < 30)).all()


def test_random_takes_every_unlabeled_row_at_full_budget():
    probs, feats = _random_inputs(12)
    out = select("random", probs, feats, 9, labeled=[0, 5, 11], seed=3)
    assert sorted(out.tolist()) == [1, 2, 3, 4, 6, 7, 8, 9, 10]


def test_random_deterministic_per_seed():
    probs, feats = _random_inputs(40)
    for seed in (0, 1, 12345, 2**40):
        a = select("random", probs, feats, 10, labeled=[3, 4], seed=seed)
        b = select("random", probs, feats, 10, labeled=[3, 4], seed=seed)
        np.testing.assert_array_equal(a, b)


def test_random_different_seeds_differ():
    probs, feats = _random_inputs(40)
    picks = {tuple(select("random", probs, feats, 10, seed=s).tolist()) for s in range(20)}
    # 20 seeds, 40!/30! possible ordered picks: a collision would mean the seed is ignored.
    assert len(picks) == 20


def test_random_is_roughly_uniform():
    # Pool of 10 rows, rows 3 and 7 labeled, budget 3, seeds 0..1999.
    # Each of the 8 unlabeled rows should be picked 2000 * 3 / 8 = 750 times, and each should
    # be the *first* pick 2000 / 8 = 250 times. Chi-square with 7 degrees of freedom:
    # P(X > 24.32) = 0.001. Seeds are fixed, so this is deterministic, not flaky.
    probs, feats = _random_inputs(10)
    labeled = [3, 7]
    free = [r for r in range(10) if r not in labeled]
    seeds = 2000
    any_count = dict.fromkeys(free, 0)
    first_count = dict.fromkeys(free, 0)
    for s in range(seeds):
        out = select("random", probs, feats, 3, labeled=labeled, seed=s).tolist()
        assert set(out) <= set(free)
        for r in out:
            any_count[r] += 1
        first_count[out[0]] += 1
    for counts, expected in ((any_count, seeds * 3 / 8), (first_count, seeds / 8)):
        chi2 = sum((c - expected) ** 2 / expected for c in counts.values())
        assert chi2 < 24.32, (counts, chi2)


# -- coreset -----------------------------------------------------------------------------


def brute_kcentre(h: np.ndarray, budget: int, labeled: list[int]) -> list[int]:
    """Greedy k-centre from the definition, in plain loops.

    Centres start as the labeled rows. Each step takes the unchosen, unlabeled row whose
    distance to its nearest centre, sqrt(sum((x - c)^2)), is largest; ties go to the lowest
    row (strict > while scanning rows in order). With no centres every distance is +inf, so
    the first pick is the lowest unlabeled row, as the reference implementation does.
    """
    n = len(h)
    centres = [h[i] for i in labeled]
    taken = set(labeled)
    picks = []
    for _ in range(budget):
        best, best_d = -1, -1.0
        for i in range(n):
            if i in taken:
                continue
            d = math.inf
            for c in centres:
                d = min(d, math.sqrt(sum((float(x) - float(y)) ** 2 for x, y in zip(h[i], c))))
            if d > best_d:
                best, best_d = i, d
        picks.append(best)
        taken.add(best)
        centres.append(h[best])
    return picks


def _coreset(h, budget, labeled=None, seed=0):
    h = np.asarray(h, dtype=np.float64)
    probs = np.full((len(h), 2), 0.5)
    return select("coreset", probs, h, budget, labeled=labeled, seed=seed).tolist()


def test_coreset_hand_example_1d():
    # Points on a line: row0 at 0, row1 at 1, row2 at 5, row3 at 10.
    # No labeled rows: first centre = lowest row (0). Distances to {0}: 1, 5, 10 -> row 3.
    # Distances to {0, 10}: row1 min(1, 9) = 1, row2 min(5, 5) = 5 -> row 2, then row 1.
    h = [[0.0], [1.0], [5.0], [10.0]]
    assert _coreset(h, 4) == [0, 3, 2, 1]
    assert brute_kcentre(np.array(h), 4, []) == [0, 3, 2, 1]
    # Row 3 (at 10) labeled: distances to {10}: 10, 9, 5 -> row 0; then row1 min(9, 1) = 1,
    # row2 min(5, 5) = 5 -> row 2; then row 1.
    assert _coreset(h, 3, labeled=[3]) == [0, 2, 1]


def test_coreset_hand_tie_goes_to_lowest_row():
    # row0 at -2, row1 at 0 (labeled), row2 at 2: both unlabeled rows are 2 away -> row 0 first.
    assert _coreset([[-2.0], [0.0], [2.0]], 2, labeled=[1]) == [0, 2]
    # Four corners of a square, no labeled rows: first centre = row 0 at (-1, -1). Farthest from
    # it is row 3 at (1, 1) (2*sqrt(2)); then rows 1 and 2 are both 2 from each centre -> row 1,
    # then row 2.
    h = [[-1.0, -1.0], [-1.0, 1.0], [1.0, -1.0], [1.0, 1.0]]
    assert _coreset(h, 4) == [0, 3, 1, 2]
    # Same corners around a labeled centre row 4 at the origin: every corner stays sqrt(2) from
    # the origin, which is always its nearest centre, so it is a four-way tie at every step:
    # row order.
    h.append([0.0, 0.0])
    assert _coreset(h, 4, labeled=[4]) == [0, 1, 2, 3]


def test_coreset_first_pick_without_labels_is_lowest_unlabeled_row():
    h = np.random.default_rng(0).normal(size=(7, 3))
    assert _coreset(h, 1) == [0]
    # A labeled *mask* that has nothing set behaves like no labeled rows at all.
    assert _coreset(h, 1, labeled=np.zeros(7, dtype=bool)) == [0]


def test_coreset_ignores_seed():
    h = np.random.default_rng(1).normal(size=(15, 3))
    assert _coreset(h, 6, seed=0) == _coreset(h, 6, seed=99)


def _instances(count, seed, with_labeled):
    rng = np.random.default_rng(seed)
    for t in range(count):
        n = int(rng.integers(1, 16))
        d = int(rng.integers(1, 5))
        scale = float(10.0 ** rng.integers(-2, 3))
        h = rng.normal(size=(n, d)) * scale + rng.normal(size=d) * scale
        nl = int(rng.integers(0, n)) if with_labeled else 0
        labeled = sorted(rng.choice(n, size=nl, replace=False).tolist())
        budget = int(rng.integers(1, n - nl + 1))
        yield t, h, labeled, budget


@pytest.mark.parametrize("with_labeled", [False, True])
def test_coreset_matches_brute_force_random(with_labeled):
    for t, h, labeled, budget in _instances(150, 11 + with_labeled, with_labeled):
        got = _coreset(h, budget, labeled=labeled or None)
        assert got == brute_kcentre(h, budget, labeled), (t, h.tolist(), labeled, budget)


@pytest.mark.parametrize("with_labeled", [False, True])
def test_coreset_matches_brute_force_integer_grid(with_labeled):
    # Small integer coordinates: many exact distance ties, and every distance is computed
    # exactly in float64 by either formula, so tie-breaking (lowest row) is what is tested.
    rng = np.random.default_rng(5 + with_labeled)
    for t in range(150):
        n = int(rng.integers(1, 16))
        d = int(rng.integers(1, 4))
        h = rng.integers(-2, 3, size=(n, d)).astype(np.float64)
        nl = int(rng.integers(0, n)) if with_labeled else 0
        labeled = sorted(rng.choice(n, size=nl, replace=False).tolist())
        budget = int(rng.integers(1, n - nl + 1))
        got = _coreset(h, budget, labeled=labeled or None)
        assert got == brute_kcentre(h, budget, labeled), (t, h.tolist(), labeled, budget)


def test_coreset_labeled_mask_and_indices_agree():
    for _, h, labeled, budget in _instances(40, 3, True):
        mask = np.zeros(len(h), dtype=bool)
        mask[labeled] = True
        assert _coreset(h, budget, labeled=mask) == _coreset(h, budget, labeled=labeled or None)


def test_coreset_coincident_rows_tie_to_lowest_row():
    # Rows 2 and 3 duplicate rows 1 and 0. After rows 0 and 1 are centres, rows 2 and 3 are
    # both at distance exactly 0, so the tie rule says row 2 before row 3.
    h = [[-2.3, -0.2, -1.2], [-0.7, -0.5, -0.3], [-0.7, -0.5, -0.3], [-2.3, -0.2, -1.2]]
    assert brute_kcentre(np.array(h), 4, []) == [0, 1, 2, 3]
    assert _coreset(h, 4) == [0, 1, 2, 3]


def test_coreset_duplicates_match_brute_force():
    # Random pools in which half the rows are copies of other rows (distance exactly 0).
    rng = np.random.default_rng(7)
    for t in range(150):
        n = int(rng.integers(2, 12))
        d = int(rng.integers(1, 4))
        h = rng.normal(size=(n, d))
        h[rng.integers(0, n, size=n // 2)] = h[rng.integers(0, n, size=n // 2)]
        got = _coreset(h, n)
        assert got == brute_kcentre(h, n, []), (t, h.tolist())
