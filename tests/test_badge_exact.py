"""BADGE (exact k-means++ and k-means||) against the dense oracle in dist_al.testing.oracles.

The fast code and the oracle share one sampling protocol (DESIGN.md section 3,
docstring of dist_al.core.badge), so in float64 their picks must be equal, not
just similar. The statistical test checks the D^2 law itself, independently of
that protocol, and shows that it can tell the right law from the laws that the
usual implementation mistakes produce.
"""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest
import torch

from dist_al.core import select
from dist_al.testing import oracles as dense

# -- helpers ------------------------------------------------------------------------------


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def random_instance(seed: int):
    """A small non-degenerate pool: Dirichlet probabilities, Gaussian features, maybe labeled rows."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 41))
    k = int(rng.integers(2, 7))
    d = int(rng.integers(1, 7))
    probs = rng.dirichlet(np.full(k, 0.7), size=n)
    feats = rng.normal(size=(n, d)) * rng.uniform(0.5, 3.0)
    kind = seed % 3  # none / boolean mask / index array
    labeled = None
    n_labeled = 0
    if kind and n > 6:
        n_labeled = int(rng.integers(1, n // 2))
        rows = rng.choice(n, size=n_labeled, replace=False)
        labeled = rows if kind == 2 else np.isin(np.arange(n), rows)
    budget = int(rng.integers(1, n - n_labeled + 1))
    return probs, feats, labeled, budget


def labeled_mask(labeled, n):
    mask = np.zeros(n, dtype=bool)
    if labeled is not None:
        mask[np.asarray(labeled)] = True
    return mask


def check_valid(picks, budget, labeled, n):
    picks = np.asarray(picks)
    assert picks.dtype == np.int64
    assert len(picks) == budget
    assert len(set(picks.tolist())) == budget, f"duplicate rows in {picks}"
    assert ((picks >= 0) & (picks < n)).all()
    assert not labeled_mask(labeled, n)[picks].any(), "a labeled row was picked"


def call_with_timeout(fn, seconds=30.0):
    """Runs fn() in a thread; fails the test (instead of hanging the suite) if it does not return."""
    box = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised below
            box["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"no answer after {seconds} s: the selection hangs"
    if "error" in box:
        raise box["error"]
    return box["value"]


def chi2_sf(x: float, df: int) -> float:
    """P(chi2_df > x) for an integer df (closed forms; no scipy needed)."""
    if not np.isfinite(x):
        return 0.0
    half = x / 2.0
    if df % 2 == 0:
        term, total = 1.0, 1.0
        for i in range(1, df // 2):
            term *= half / i
            total += term
        return math.exp(-half) * total
    total = math.erfc(math.sqrt(half))
    for i in range(1, (df - 1) // 2 + 1):
        total += math.exp(-half + (i - 0.5) * math.log(half) - math.lgamma(i + 0.5)) if half > 0 else 0.0
    return total


def g_statistic(counts: np.ndarray, expected_probs: np.ndarray) -> tuple[float, int]:
    """G = 2 sum O ln(O / E) over the rows of positive expected probability; a count on a
    row of probability 0 makes G infinite. Returns (G, degrees of freedom)."""
    counts = np.asarray(counts, dtype=np.float64)
    n = counts.sum()
    if (counts[expected_probs <= 0] > 0).any():
        return np.inf, int((expected_probs > 0).sum()) - 1
    support = expected_probs > 0
    o, e = counts[support], n * expected_probs[support]
    nz = o > 0
    return float(2 * np.sum(o[nz] * np.log(o[nz] / e[nz]))), int(support.sum()) - 1


def second_pick_law(embeddings: np.ndarray, labeled: np.ndarray, *, squared=True) -> tuple[int, np.ndarray]:
    """(first centre, law of the second pick) of k-means++ over given materialised embeddings."""
    norms = np.sum(embeddings**2, 1)
    norms[labeled] = -np.inf
    first = int(np.argmax(norms))
    weight = np.sum((embeddings - embeddings[first]) ** 2, 1)
    if not squared:
        weight = np.sqrt(weight)
    weight[labeled] = 0
    weight[first] = 0
    return first, weight / weight.sum()


# -- (a) the first centre -----------------------------------------------------------------


@pytest.mark.parametrize("seed", range(10))
def test_first_pick_is_largest_gradient_norm(seed):
    probs, feats, labeled, _ = random_instance(seed)
    n = len(probs)
    norms = np.sum(dense.gradient_embeddings(probs, feats) ** 2, 1)
    norms[labeled_mask(labeled, n)] = -np.inf
    for badge_seed in (0, 1, 12345):
        assert select("badge", probs, feats, 1, labeled=labeled, seed=badge_seed)[0] == np.argmax(norms)


def test_first_pick_ties_go_to_lowest_unlabeled_row():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3), size=12)
    feats = rng.normal(size=(12, 4)) * 0.1
    # rows 3, 5 and 9 are one and the same, far larger than the rest; row 3 is labeled
    probs[[5, 9, 3]] = [0.4, 0.35, 0.25]
    feats[[5, 9, 3]] = [3.0, -2.0, 1.0, 0.5]
    assert select("badge", probs, feats, 1)[0] == 3
    assert select("badge", probs, feats, 1, labeled=[3])[0] == 5
    assert select("badge", probs, feats, 1, labeled=np.isin(np.arange(12), [3, 5]))[0] == 9
    assert dense.badge(probs, feats, 1, labeled=[3])[0] == 5
    # a labeled row with the largest norm is never the first centre
    assert select("badge-scalable", probs, feats, 1, labeled=[3])[0] == 5


# -- (b) exact agreement with the oracle --------------------------------------------------


@pytest.mark.parametrize("case", range(60))
def test_badge_equals_dense_oracle(case):
    probs, feats, labeled, budget = random_instance(1000 + case)
    seed = case * 7 + 3
    want = dense.badge(probs, feats, budget, labeled=labeled, seed=seed)
    got = select("badge", probs, feats, budget, labeled=labeled, seed=seed)
    check_valid(got, budget, labeled, len(probs))
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("case", range(5))
def test_badge_equals_dense_oracle_with_torch_inputs(case):
    probs, feats, labeled, budget = random_instance(2000 + case)
    want = dense.badge(probs, feats, budget, labeled=labeled, seed=case)
    got = select(
        "badge",
        torch.from_numpy(probs),
        torch.from_numpy(feats),
        budget,
        labeled=None if labeled is None else torch.as_tensor(labeled),
        seed=case,
    )
    np.testing.assert_array_equal(got, want)


def test_dense_embeddings_are_the_kronecker_products():
    """The oracle's own layout, checked against np.kron row by row."""
    probs, feats, _, _ = random_instance(5)
    g = dense.gradient_embeddings(probs, feats)
    v = dense.fisher_factors(probs, feats)
    k = probs.shape[1]
    for x in range(len(probs)):
        yhat = int(np.argmax(probs[x]))
        np.testing.assert_allclose(g[x], np.kron(np.eye(k)[yhat] - probs[x], feats[x]), rtol=0, atol=1e-15)
        fisher = np.kron(np.diag(probs[x]) - np.outer(probs[x], probs[x]), np.outer(feats[x], feats[x]))
        np.testing.assert_allclose(v[x].T @ v[x], fisher, rtol=0, atol=1e-12)
        np.testing.assert_allclose(v[x][yhat], np.sqrt(probs[x, yhat]) * g[x], rtol=0, atol=1e-15)


# -- (c) the D^2 law, statistically -------------------------------------------------------

# 7 rows with 3 classes and 2 features, plus a labeled row 7 that has the largest norm.
# Chosen so that the laws of the second pick under the usual mistakes are far from the
# right one (total variation 0.2 to 0.37) and every allowed row has probability >= 0.05.
STAT_LOGITS = np.array(
    [
        [-1.9, 0.5, 0.4],
        [-2.7, -0.9, -1.3],
        [-0.8, -1.4, 2.0],
        [1.0, -1.2, 3.3],
        [0.7, -2.0, 1.0],
        [-1.2, 0.1, 0.9],
        [-1.6, -1.3, -0.5],
        [0.1, 0.0, 0.0],
    ]
)
STAT_FEATS = np.array(
    [[1.1, 0.2], [-0.8, -0.1], [1.7, -0.2], [-0.3, -0.4], [0.8, -0.3], [0.6, 0.4], [1.5, -0.3], [3.0, 3.0]]
)
STAT_LABELED = np.array([False] * 7 + [True])
STAT_DRAWS = 4000
ALPHA = 1e-6  # strict: a correct implementation fails this with probability 1e-6 per seed set


def wrong_embeddings(probs, feats, mistake):
    n, k = probs.shape
    if mistake == "second-class-label":  # e_y - p with y the runner-up class instead of argmax
        y = np.argsort(-probs, 1, kind="stable")[:, 1]
    else:
        y = np.argmax(probs, 1)
    a = np.eye(k)[y] - probs
    if mistake == "mixed-sign":  # (p - e_yhat) on odd rows, (e_yhat - p) on even rows
        a[1::2] *= -1
    return (a[:, :, None] * feats[:, None, :]).reshape(n, -1)


def wrong_laws(probs, feats):
    g = dense.gradient_embeddings(probs, feats)
    return {
        "distance-not-squared": second_pick_law(g, STAT_LABELED, squared=False)[1],
        "mixed-sign": second_pick_law(wrong_embeddings(probs, feats, "mixed-sign"), STAT_LABELED)[1],
        "second-class-label": second_pick_law(wrong_embeddings(probs, feats, "second-class-label"), STAT_LABELED)[1],
    }


def test_chi2_sf_matches_known_values():
    # reference values of the chi-square survival function
    assert chi2_sf(3.841458820694124, 1) == pytest.approx(0.05, rel=1e-9)
    assert chi2_sf(5.991464547107979, 2) == pytest.approx(0.05, rel=1e-9)
    assert chi2_sf(11.070497693516351, 5) == pytest.approx(0.05, rel=1e-9)
    assert chi2_sf(20.515005652432873, 5) == pytest.approx(0.001, rel=1e-9)
    assert chi2_sf(0.0, 4) == 1.0


@pytest.mark.slow  # thousands of draws for the chi-square test (~3 s)
def test_second_pick_follows_d2_law_and_the_test_rejects_wrong_laws():
    probs = softmax(STAT_LOGITS)
    feats = STAT_FEATS
    g = dense.gradient_embeddings(probs, feats)
    first, law = second_pick_law(g, STAT_LABELED)
    assert first == 6
    assert law[~STAT_LABELED & (np.arange(8) != first)].min() > 0.05

    counts = np.zeros(len(probs))
    for seed in range(STAT_DRAWS):
        picks = select("badge", probs, feats, 2, labeled=STAT_LABELED, seed=seed)
        assert picks[0] == first
        counts[picks[1]] += 1

    stat, df = g_statistic(counts, law)
    assert chi2_sf(stat, df) > ALPHA, f"second pick is not D^2-distributed: G={stat:.1f}, counts={counts}, law={law}"

    # The same statistic at the same level rejects the laws of the usual mistakes, both
    # (1) for the counts we observed, and (2) for counts a wrong implementation would produce.
    sim = np.random.default_rng(2024)
    for mistake, wrong in wrong_laws(probs, feats).items():
        assert 0.5 * np.abs(wrong - law).sum() > 0.15, mistake  # the instance separates them
        stat_wrong, df_wrong = g_statistic(counts, wrong)
        assert chi2_sf(stat_wrong, df_wrong) < ALPHA, f"observed counts do not reject the {mistake} law"
        wrong_counts = sim.multinomial(STAT_DRAWS, wrong)
        stat_sim, _ = g_statistic(wrong_counts, law)
        assert chi2_sf(stat_sim, df) < ALPHA, f"a {mistake} implementation would pass this test"


# -- (d) never a duplicate; (e) never a hang ----------------------------------------------


@pytest.mark.parametrize("strategy", ["badge", "badge-scalable"])
@pytest.mark.parametrize("seed", range(6))
def test_no_duplicates_with_identical_and_zero_gradient_rows(strategy, seed):
    rng = np.random.default_rng(seed)
    distinct_p = rng.dirichlet(np.ones(4), size=3)
    distinct_h = rng.normal(size=(3, 5))
    rows = rng.integers(0, 3, size=30)
    probs, feats = distinct_p[rows], distinct_h[rows]
    probs[::4] = np.eye(4)[rng.integers(0, 4, size=len(probs[::4]))]  # one-hot: a = 0, zero gradient
    feats[1::7] = 0.0  # zero features: zero gradient too
    labeled = rng.choice(30, size=5, replace=False) if seed % 2 else None
    n_unlabeled = 30 - (0 if labeled is None else 5)
    for budget in (1, 4, n_unlabeled // 2, n_unlabeled):
        picks = call_with_timeout(lambda b=budget: select(strategy, probs, feats, b, labeled=labeled, seed=seed))
        check_valid(picks, budget, labeled, 30)
    assert set(picks.tolist()) == set(np.flatnonzero(~labeled_mask(labeled, 30)).tolist())


@pytest.mark.parametrize("strategy", ["badge", "badge-scalable"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_all_rows_identical_does_not_hang(strategy, dtype):
    probs = np.tile(np.array([0.5, 0.3, 0.2], dtype=dtype), (40, 1))
    feats = np.tile(np.array([1.0, -2.0, 0.5], dtype=dtype), (40, 1))
    for seed in range(3):
        for budget in (2, 17, 40):
            picks = call_with_timeout(lambda b=budget, s=seed: select(strategy, probs, feats, b, seed=s))
            check_valid(picks, budget, None, 40)
            assert picks[0] == 0  # all norms tie: lowest row
    labeled = np.arange(0, 40, 3)
    picks = call_with_timeout(lambda: select(strategy, probs, feats, 40 - len(labeled), labeled=labeled, seed=1))
    check_valid(picks, 40 - len(labeled), labeled, 40)
    assert picks[0] == 1


@pytest.mark.parametrize("strategy", ["badge", "badge-scalable"])
def test_all_gradients_zero(strategy):
    """One-hot predictions everywhere: every embedding is 0, every distance 0."""
    rng = np.random.default_rng(3)
    probs = np.eye(5)[rng.integers(0, 5, size=25)]
    feats = rng.normal(size=(25, 3))
    picks = call_with_timeout(lambda: select(strategy, probs, feats, 23, labeled=[0, 1], seed=4))
    check_valid(picks, 23, [0, 1], 25)
    assert picks[0] == 2


def test_dense_oracle_all_rows_identical_is_uniform_and_distinct():
    probs = np.tile([0.6, 0.4], (10, 1))
    feats = np.tile([1.0, 2.0], (10, 1))
    picks = dense.badge(probs, feats, 10, seed=0)
    assert picks[0] == 0 and sorted(picks.tolist()) == list(range(10))
    # uniform branch: j = rng.integers(#unchosen), the j-th unchosen row
    rng = np.random.default_rng(0)
    free = list(range(1, 10))
    expected = [0]
    while free:
        expected.append(free.pop(int(rng.integers(len(free)))))
    np.testing.assert_array_equal(picks, expected)


# -- (f) badge-scalable ---------------------------------------------------------------------


@pytest.mark.parametrize("case", range(12))
def test_badge_scalable_valid_deterministic_and_first_pick(case):
    probs, feats, labeled, budget = random_instance(3000 + case)
    n = len(probs)
    norms = np.sum(dense.gradient_embeddings(probs, feats) ** 2, 1)
    norms[labeled_mask(labeled, n)] = -np.inf
    n_unlabeled = n - int(labeled_mask(labeled, n).sum())
    for b in sorted({1, budget, n_unlabeled}):
        picks = select("badge-scalable", probs, feats, b, labeled=labeled, seed=case)
        check_valid(picks, b, labeled, n)
        assert picks[0] == np.argmax(norms)
        again = select("badge-scalable", probs, feats, b, labeled=labeled, seed=case)
        np.testing.assert_array_equal(picks, again)


@pytest.mark.parametrize("options", [{}, {"rounds": 1, "oversampling": 0.5}, {"rounds": 8, "oversampling": 4.0}])
def test_badge_scalable_large_budget(options):
    rng = np.random.default_rng(11)
    probs = rng.dirichlet(np.ones(4), size=300)
    feats = rng.normal(size=(300, 6))
    labeled = rng.choice(300, size=40, replace=False)
    for budget in (50, 150, 260):
        picks = select("badge-scalable", probs, feats, budget, labeled=labeled, seed=5, **options)
        check_valid(picks, budget, labeled, 300)


def blobs(seed, n_clusters=5, per_cluster=40, dim=8):
    """Well separated Gaussian blobs; cluster c is predicted as class c with confidence ~0.75."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_clusters, dim))
    centres *= 10.0 / np.linalg.norm(centres, axis=1, keepdims=True)  # equal norms: no cluster near 0
    cluster = np.repeat(np.arange(n_clusters), per_cluster)
    feats = centres[cluster] + 0.1 * rng.normal(size=(len(cluster), dim))
    logits = 2.5 * np.eye(n_clusters)[cluster] + 0.05 * rng.normal(size=(len(cluster), n_clusters))
    return softmax(logits), feats, cluster


@pytest.mark.parametrize("strategy", ["badge", "badge-scalable"])
def test_clusters_are_covered(strategy):
    n_clusters = 5
    covered = {n_clusters: 0, 2 * n_clusters: 0}
    runs = 20
    for seed in range(runs):
        probs, feats, cluster = blobs(seed, n_clusters)
        for budget in covered:
            picks = select(strategy, probs, feats, budget, seed=seed)
            covered[budget] += len(set(cluster[picks].tolist())) == n_clusters
    # random picks would cover all 5 clusters with 5 picks 4% of the time, with 10 picks 52%
    assert covered[n_clusters] >= 18, covered
    assert covered[2 * n_clusters] == runs, covered


# -- (g) the picks do not depend on how the pool is sharded ---------------------------------


def tiny_norm_pool(seed: int, n_big: int = 12, n_tiny: int = 120):
    """float32 rows of ordinary gradient norm first, then many of ~1e-8 times that norm (tiny features),
    with near-duplicates among them: some closer than round-off (they coincide), some just farther."""
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(3), size=n_big + n_tiny)
    feats = rng.normal(size=(n_big + n_tiny, 4))
    feats[n_big:] *= 1e-4
    feats[n_big + 1 :: 6] = feats[n_big::6][: len(feats[n_big + 1 :: 6])] * (1 + 1e-4)
    feats[n_big + 2 :: 6] = feats[n_big::6][: len(feats[n_big + 2 :: 6])] * (1 + 3e-2)
    probs[n_big + 1 :: 6] = probs[n_big::6][: len(probs[n_big + 1 :: 6])]
    probs[n_big + 2 :: 6] = probs[n_big::6][: len(probs[n_big + 2 :: 6])]
    return torch.from_numpy(probs.astype(np.float32)), torch.from_numpy(feats.astype(np.float32))


@pytest.mark.parametrize("strategy", ["badge", "badge-scalable"])
@pytest.mark.parametrize("seed", range(3))
def test_same_picks_for_any_sharding_with_tiny_norm_rows(strategy, seed):
    """The round-off threshold of a distance is per row, not per shard: a shard holding only tiny-norm
    rows and one that also holds large-norm rows treat the same tiny distance alike."""
    from dist_al.core.api import STRATEGIES, resolve_options, run_strategy
    from dist_al.core.shards import LocalShards

    probs, feats = tiny_norm_pool(seed)
    n = len(probs)
    labeled = torch.zeros(n, dtype=torch.bool)
    labeled[[3, 40]] = True
    runs = []
    for cuts in ([], [12], [5, 40, 100], [12, 70, 71]):
        edges = [0, *cuts, n]
        shards = [
            STRATEGIES[strategy].shard(probs[lo:hi], feats[lo:hi], labeled[lo:hi], lo)
            for lo, hi in zip(edges, edges[1:])
        ]
        picks = run_strategy(strategy, LocalShards(shards), 60, seed, resolve_options(strategy, {})).picks
        runs.append([edges[s] + i for s, i in picks])
    assert len(set(runs[0])) == 60
    assert all(r == runs[0] for r in runs[1:]), runs
    np.testing.assert_array_equal(select(strategy, probs, feats, 60, labeled=labeled, seed=seed), runs[0])


def test_non_finite_distances_are_an_error_not_uniform_draws():
    """A NaN that reaches the D^2 draw (past the input checks: here a shard made directly) is refused:
    `total > 0` would be false and BADGE would draw uniformly without a word."""
    from dist_al.core import badge
    from dist_al.core.shards import LocalShards

    probs = torch.full((6, 2), 0.5, dtype=torch.float64)
    feats = torch.arange(12, dtype=torch.float64).reshape(6, 2)
    feats[4, 1] = torch.nan
    for run in (badge.kmeanspp, badge.kmeans_parallel):
        shards = LocalShards([badge.BadgeShard(probs, feats, torch.zeros(6, dtype=torch.bool))])
        with pytest.raises(ValueError, match=r"BADGE: the squared distances .* sum to nan: probs or feats hold NaN"):
            run(shards, 3, 0)


@pytest.mark.parametrize("strategy", ["badge", "badge-scalable"])
def test_overflowing_gradient_norms_are_a_clear_error(strategy):
    """Finite float32 features whose |p - e_yhat|^2 |h|^2 overflows: a ValueError saying so."""
    probs = np.tile(np.array([0.5, 0.5], dtype=np.float32), (5, 1))
    feats = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32) * 1e20
    with pytest.raises(ValueError, match="overflows the feature dtype: rescale feats or pass float64"):
        select(strategy, probs, feats, 3)
    select(strategy, probs.astype(np.float64), feats.astype(np.float64), 3)
