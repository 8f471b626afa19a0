"""Every user mistake is one ValueError with a message that names the problem.

Also: precision follows the inputs (float64 if either is float64, float32
otherwise), torch and numpy inputs give the same picks, and `labeled` means
the same thing as a mask, an index array, a list or a tensor.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from dist_al.core import STRATEGIES, api, select
from dist_al.core.inputs import check_probs_feats

ALL_STRATEGIES = list(STRATEGIES)
N, K, D = 8, 3, 4


def pool(n=N, k=K, d=D, dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(k), size=n).astype(dtype)
    feats = rng.normal(size=(n, d)).astype(dtype)
    return probs, feats


def raises(match, strategy="entropy", probs=None, feats=None, budget=2, **kw):
    p0, f0 = pool()
    probs = p0 if probs is None else probs
    feats = f0 if feats is None else feats
    with pytest.raises(ValueError, match=match) as info:
        select(strategy, probs, feats, budget, **kw)
    return str(info.value)


# -- shapes ------------------------------------------------------------------------------


def test_rows_mismatch():
    probs, feats = pool()
    msg = raises(r"probs has 8 rows but feats has 7", probs=probs, feats=feats[:7])
    assert "same rows" in msg


def test_probs_not_2d():
    probs, _ = pool()
    raises(r"probs must have 2 dimensions, got shape \(3,\)", probs=probs[0])
    raises(r"probs must have 2 dimensions, got shape \(1, 8, 3\)", probs=probs[None])


def test_feats_not_2d():
    _, feats = pool()
    raises(r"feats must have 2 dimensions, got shape \(8,\)", feats=feats[:, 0])


def test_one_class():
    raises(r"at least 2 classes", probs=np.ones((N, 1)))


def test_no_feature_columns():
    _, feats = pool()
    raises(r"feats has 0 columns", feats=feats[:, :0])


def test_empty_pool():
    probs, feats = pool()
    raises(r"pool is empty", probs=probs[:0], feats=feats[:0], budget=1)


def test_transposed_probs_is_a_row_mismatch():
    probs, feats = pool()
    raises(r"probs has 3 rows but feats has 8", probs=probs.T)


@pytest.mark.parametrize(
    "bad, match",
    [
        (lambda p: p.tolist(), r"probs must be a numpy array or a torch tensor, got list"),
        (lambda p: p.astype(np.complex128), r"probs must be a real numeric array"),
        (lambda p: p > 0.3, r"probs must be a real numeric array"),
        (lambda p: p.astype(object), r"probs must be a real numeric array"),
        (lambda p: torch.from_numpy(p) > 0.3, r"probs must be real-valued"),
    ],
    ids=["list", "complex", "bool", "object", "torch-bool"],
)
def test_probs_wrong_type(bad, match):
    probs, _ = pool()
    raises(match, probs=bad(probs))


def test_probs_and_feats_on_different_devices():
    # The meta device needs no accelerator and is never the CPU.
    probs, feats = pool()
    raises(r"probs is on cpu but feats is on meta", probs=probs, feats=torch.empty(N, D, device="meta"))


# -- values ------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["probs", "feats"])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nan_inf(which, value, dtype):
    probs, feats = pool(dtype=dtype)
    arr = probs if which == "probs" else feats
    arr[5, 1] = value
    raises(rf"{which} contains NaN or inf values \(first at row 5\)", probs=probs, feats=feats)


def test_nan_in_torch_input():
    probs, feats = pool()
    feats[2, 0] = np.nan
    tp, tf = torch.from_numpy(probs), torch.from_numpy(feats)
    raises(r"feats contains NaN or inf values \(first at row 2\)", probs=tp, feats=tf)


def test_negative_probability_that_still_sums_to_one():
    probs, feats = pool()
    probs[4] = [1.25, -0.25, 0.0]
    msg = raises(r"probs has negative entries \(first at row 4\)", probs=probs)
    assert "not logits" in msg


def test_logits_instead_of_probabilities():
    probs, _ = pool()
    raises(r"negative entries.*not logits", probs=np.log(probs))


@pytest.mark.parametrize(
    "dtype, gap, ok",
    [
        (np.float64, 1e-5, False),
        (np.float64, 2e-6, False),
        (np.float64, 1e-7, True),
        (np.float32, 1e-2, False),
        (np.float32, 2e-3, False),
        (np.float32, 1e-4, True),
    ],
)
def test_sum_tolerance(dtype, gap, ok):
    # Tolerance on |row sum - 1|: 1e-6 in float64, 1e-3 in float32.
    probs, feats = pool(dtype=np.float64)
    probs[6] *= 1 + gap
    probs, feats = probs.astype(dtype), feats.astype(dtype)
    if ok:
        assert len(select("entropy", probs, feats, 2)) == 2
    else:
        tol = "1e-06" if dtype == np.float64 else "0.001"
        msg = raises(rf"probs rows must sum to 1 \(tolerance {tol}\); row 6 sums to", probs=probs, feats=feats)
        assert "class axis" in msg


def test_unnormalised_scores():
    probs, _ = pool()
    raises(r"rows must sum to 1.*row 0", probs=probs * 10)


def test_float32_softmax_over_many_classes_is_accepted():
    # A float32 softmax over many classes drifts from 1 by ~1e-7 .. 1e-6: that is not an error,
    # also not when the features are float64 (which moves the computation to float64).
    torch.manual_seed(0)
    probs = torch.softmax(torch.randn(64, 1000) * 3, dim=1)
    assert len(select("entropy", probs, torch.randn(64, 4), 3)) == 3
    assert len(select("entropy", probs, torch.randn(64, 4, dtype=torch.float64), 3)) == 3


@pytest.mark.parametrize("strategy", ALL_STRATEGIES)
def test_confident_float32_softmax_is_accepted(strategy):
    # softmax([20, 0]) in float32 is [1.0, 2.06e-9]: exactly 1 in float32, 1 + 2e-9 in float64.
    # Such rows are what every confident classifier produces; the call must work (BAIT: the
    # labeled Fisher diag(p) - p p^T of this row is not PSD unless p is renormalised).
    probs = torch.softmax(torch.tensor([[20.0, 0.0], [0.0, 0.0], [0.0, 1.0]]), dim=1)
    feats = torch.tensor([[1e5], [1.0], [2.0]])
    out = select(strategy, probs, feats, 1, labeled=[0])
    assert out.tolist()[0] in (1, 2)


@pytest.mark.parametrize("strategy", ALL_STRATEGIES)
def test_float32_rows_inside_the_tolerance_are_accepted_by_every_strategy(strategy):
    # Row 0 sums to 1.0001: inside the float32 tolerance (1e-3), so it is valid input and every
    # strategy must answer. (For BAIT, diag(p) - p p^T of a row summing above 1 has a negative
    # eigenvalue, -5e-5 here, which |h|^2 = 9e4 scales past lambda = 1.)
    probs = np.array([[0.50005, 0.50005], [0.5, 0.5]], dtype=np.float32)
    feats = np.array([[300.0], [1.0]], dtype=np.float32)
    assert select(strategy, probs, feats, 1, labeled=[0]).tolist() == [1]


def test_bait_confident_float32_pool_with_small_lambda():
    # A realistic float32 pool: confident softmax outputs, ReLU features of norm ~500, the
    # reference's small lambda. Valid input: BAIT must answer, not raise a LinAlgError.
    torch.manual_seed(0)
    probs = torch.softmax(torch.randn(200, 10) * 8, dim=1)
    feats = torch.relu(torch.randn(200, 8)) * 300
    out = select("bait", probs, feats, 10, labeled=np.arange(50), lam=1e-4)
    assert len(set(out.tolist())) == 10 and out.min() >= 50


# -- budget ------------------------------------------------------------------------------


@pytest.mark.parametrize("budget", [0, -1, -100])
def test_budget_not_positive(budget):
    raises(rf"budget must be positive, got {budget}", budget=budget)


def test_budget_larger_than_pool():
    raises(r"budget 9 is larger than the 8 unlabeled rows", budget=9)


def test_budget_larger_than_unlabeled_rows():
    raises(r"budget 6 is larger than the 5 unlabeled rows", budget=6, labeled=[0, 1, 2])


def test_budget_when_everything_is_labeled():
    raises(r"larger than the 0 unlabeled rows", budget=1, labeled=np.ones(N, dtype=bool))


@pytest.mark.parametrize("budget", [2.0, 2.5, "2", None, True, np.float64(2)], ids=repr)
def test_budget_not_an_integer(budget):
    raises(r"budget must be an integer", budget=budget)


@pytest.mark.parametrize("budget", [np.int64(3), np.int32(3), np.uint8(3)], ids=repr)
def test_budget_numpy_integer_is_fine(budget):
    probs, feats = pool()
    assert len(select("entropy", probs, feats, budget)) == 3


# -- strategy and options ----------------------------------------------------------------


def test_unknown_strategy_suggests():
    msg = raises(r"unknown strategy 'entroy' \(did you mean 'entropy'\?\)", strategy="entroy")
    assert "choose one of" in msg and "badge" in msg


def test_unknown_strategy_lists_choices():
    msg = raises(r"unknown strategy 'kmeans'", strategy="kmeans")
    for name in ALL_STRATEGIES:
        assert name in msg


@pytest.mark.parametrize("strategy", [None, 3], ids=repr)
def test_strategy_not_a_string(strategy):
    raises(r"unknown strategy", strategy=strategy)


def test_strategy_unhashable():
    raises(r"unknown strategy", strategy=["badge"])


def test_strategy_name_is_case_sensitive():
    raises(r"unknown strategy 'BADGE'", strategy="BADGE")


@pytest.mark.parametrize("strategy", ALL_STRATEGIES)
def test_unknown_option_is_named(strategy):
    msg = raises(rf"unknown option 'colour' for strategy '{strategy}'", strategy=strategy, colour=1)
    assert "valid options" in msg


def test_unknown_option_suggests():
    match = r"unknown option 'round' for strategy 'badge-scalable' \(did you mean 'rounds'\?\)"
    raises(match, strategy="badge-scalable", round=2)


def test_option_on_strategy_without_options():
    raises(r"unknown option 'seeds' for strategy 'margin'; valid options: none", strategy="margin", seeds=2)


@pytest.mark.parametrize(
    "strategy, option, value, match",
    [
        ("badge-scalable", "rounds", 0, r"option rounds must be a positive integer"),
        ("badge-scalable", "rounds", -2, r"option rounds must be a positive integer"),
        ("badge-scalable", "rounds", 1.5, r"option rounds must be a positive integer"),
        ("badge-scalable", "rounds", True, r"option rounds must be a positive integer"),
        ("badge-scalable", "rounds", None, r"option rounds must be a positive integer, got None"),
        ("badge-scalable", "oversampling", 0, r"option oversampling must be a positive number"),
        ("badge-scalable", "oversampling", -1.0, r"option oversampling must be a positive number"),
        ("badge-scalable", "oversampling", float("nan"), r"option oversampling must be a positive number"),
        ("badge-scalable", "oversampling", float("inf"), r"option oversampling must be a positive number"),
        ("badge-scalable", "oversampling", "2", r"option oversampling must be a positive number"),
        ("bait", "lam", 0.0, r"option lam must be a positive number"),
        ("bait", "lam", -1e-2, r"option lam must be a positive number"),
        ("bait", "lam", float("nan"), r"option lam must be a positive number"),
        ("bait", "oversample", 0.5, r"option oversample must be >= 1"),
        ("bait", "oversample", 0, r"option oversample must be a positive number"),
        ("bait", "weighting", "uniform", r"option weighting must be one of 'reference', 'mean', got 'uniform'"),
        ("bait", "pca_dim", 0, r"option pca_dim must be a positive integer or None"),
        ("bait", "pca_dim", 2.5, r"option pca_dim must be a positive integer or None"),
        ("bait", "top_classes", -1, r"option top_classes must be a positive integer or None"),
    ],
)
def test_bad_option_value(strategy, option, value, match):
    raises(match, strategy=strategy, **{option: value})


@pytest.mark.parametrize(
    "option, value, match",
    [
        ("top_classes", 1, r"option top_classes must be between 2 and the number of classes \(3\), got 1"),
        ("top_classes", 4, r"option top_classes must be between 2 and the number of classes \(3\), got 4"),
        ("pca_dim", 5, r"option pca_dim must be at most the feature width \(4\), got 5"),
    ],
)
def test_bait_reduction_out_of_range(option, value, match):
    raises(match, strategy="bait", **{option: value})


def test_bait_too_wide_without_pca():
    probs, feats = pool(n=4, k=50, d=2000)
    msg = raises(r"BAIT needs d x d matrices", strategy="bait", probs=probs, feats=feats)
    assert "pca_dim" in msg


# -- labeled -----------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [N, N + 10, -1, -N - 1])
@pytest.mark.parametrize("kind", ["numpy", "list", "torch"])
def test_labeled_index_out_of_range(bad, kind):
    idx = [0, bad, 2]
    labeled = {"numpy": np.array(idx), "list": idx, "torch": torch.tensor(idx)}[kind]
    raises(rf"labeled index {bad} is out of range for a pool of 8 rows", labeled=labeled)


def test_labeled_float_indices_must_be_whole():
    raises(r"labeled indices must be integers \(or pass a boolean mask\)", labeled=np.array([1.0, 2.5]))
    raises(r"labeled indices must be integers", labeled=np.array([np.nan]))


def test_labeled_whole_float_indices_are_fine():
    probs, feats = pool()
    a = select("entropy", probs, feats, 3, labeled=np.array([1.0, 4.0]))
    b = select("entropy", probs, feats, 3, labeled=[1, 4])
    np.testing.assert_array_equal(a, b)


def test_labeled_list_of_non_integers_is_rejected():
    # np.array([1.5]) is rejected (above); the same values as a list must not be truncated to 1.
    raises(r"labeled indices must be integers", labeled=[1.5])


@pytest.mark.parametrize("labeled", [[None], ["a"], [2**70]], ids=repr)
def test_labeled_list_of_junk_is_a_value_error(labeled):
    raises(r"labeled", labeled=labeled)


def test_labeled_infinite_index():
    msg = raises(r"labeled", labeled=np.array([np.inf]))
    # The message should say what is wrong with the value the user passed.
    assert "inf" in msg or "integer" in msg, msg


@pytest.mark.parametrize("length", [N - 1, N + 1])
@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_labeled_mask_wrong_length(length, kind):
    mask = np.zeros(length, dtype=bool)
    labeled = mask if kind == "numpy" else torch.from_numpy(mask)
    raises(rf"labeled mask has length {length} but the pool has 8 rows", labeled=labeled)


def test_labeled_mask_2d():
    raises(r"labeled must be 1-dimensional", labeled=np.zeros((2, 4), dtype=bool))


def test_labeled_index_array_2d():
    raises(r"labeled must be 1-dimensional", labeled=np.array([[0, 1]]))


@pytest.mark.parametrize("labeled", [{1, 2}, "1,2", 3.5], ids=repr)
def test_labeled_wrong_type(labeled):
    raises(r"labeled must be 1-dimensional \(a mask or row indices\)", labeled=labeled)


def test_labeled_bool_list_is_a_mask_or_rejected():
    # A list of booleans is a mask (the docstring's "boolean mask of length N"); reading it as
    # row indices True -> 1, False -> 0 would silently label the wrong rows.
    probs, feats = pool()
    mask = np.array([True, False, True, False, False, False, False, False])
    expected = select("entropy", probs, feats, 6, labeled=mask)
    try:
        got = select("entropy", probs, feats, 6, labeled=mask.tolist())
    except ValueError:
        return
    np.testing.assert_array_equal(got, expected)


# -- seed --------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [-1, 1.5, 1.0, "0", None, True], ids=repr)
def test_bad_seed(seed):
    raises(rf"seed must be a non-negative integer, got {re.escape(repr(seed))}", strategy="random", seed=seed)


@pytest.mark.parametrize("strategy", ALL_STRATEGIES)
def test_bad_seed_rejected_for_every_strategy(strategy):
    # Even strategies that never use the seed reject a bad one.
    raises(r"seed must be a non-negative integer", strategy=strategy, seed=-3)


@pytest.mark.parametrize("seed", [np.int64(5), np.uint32(5), 2**63 + 5], ids=repr)
def test_numpy_and_big_seeds_are_fine(seed):
    probs, feats = pool()
    assert len(select("random", probs, feats, 3, seed=seed)) == 3


# -- precision ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pdt, fdt, expected",
    [
        (torch.float32, torch.float32, torch.float32),
        (torch.float64, torch.float64, torch.float64),
        (torch.float32, torch.float64, torch.float64),
        (torch.float64, torch.float32, torch.float64),
        (torch.float16, torch.float16, torch.float32),
        (torch.bfloat16, torch.float32, torch.float32),
        (torch.int64, torch.float32, torch.float32),
    ],
)
def test_common_dtype(pdt, fdt, expected):
    probs, feats = pool()
    if pdt == torch.int64:  # one-hot integer "probabilities" are valid
        probs = np.eye(K)[probs.argmax(1)]
    p, f = check_probs_feats(torch.from_numpy(probs).to(pdt), torch.from_numpy(feats).to(fdt))
    assert p.dtype == expected and f.dtype == expected


@pytest.mark.parametrize("strategy", [s for s in ALL_STRATEGIES if s != "bait"])
@pytest.mark.parametrize(
    "pdt, fdt, expected",
    [
        (np.float32, np.float32, torch.float32),
        (np.float64, np.float64, torch.float64),
        (np.float32, np.float64, torch.float64),
        (np.float64, np.float32, torch.float64),
        (np.float16, np.float16, torch.float32),
    ],
)
def test_shards_compute_in_the_common_dtype(strategy, pdt, fdt, expected, monkeypatch):
    # White-box: every floating tensor the strategy's shard holds has the common dtype.
    seen = []
    original = api.run_strategy

    def spy(name, group, *args):
        for shard in group.shards:
            for attr, value in vars(shard).items():
                if isinstance(value, torch.Tensor) and value.is_floating_point():
                    seen.append((attr, value.dtype))
        return original(name, group, *args)

    monkeypatch.setattr(api, "run_strategy", spy)
    probs, feats = pool()
    select(strategy, probs.astype(pdt), feats.astype(fdt), 3)
    assert seen and all(dt == expected for _, dt in seen), seen


def test_float64_probs_are_not_rounded_to_float32():
    # row 0: [1/2 + 1e-12, 1/2 - 1e-12]  max p = 1/2 + 1e-12
    # row 1: [1/2, 1/2]                  max p = 1/2  -> least confident in float64: row 1 first.
    # In float32 both rows are [1/2, 1/2]: a tie, so row 0 first.
    probs = np.array([[0.5 + 1e-12, 0.5 - 1e-12], [0.5, 0.5]])
    feats64 = np.zeros((2, 1))
    assert select("confidence", probs, feats64, 1).tolist() == [1]
    assert select("confidence", probs, feats64.astype(np.float32), 1).tolist() == [1]  # f64 wins
    assert select("confidence", probs.astype(np.float32), feats64.astype(np.float32), 1).tolist() == [0]


def test_float64_feats_are_not_rounded_to_float32():
    # Points 0, 1, 1 + 1e-12 on a line, nothing labeled: first centre row 0, then the farthest
    # from 0, which is row 2 in float64 and a tie (-> row 1) in float32.
    feats = np.array([[0.0], [1.0], [1.0 + 1e-12]])
    probs = np.full((3, 2), 0.5)
    assert select("coreset", probs.astype(np.float32), feats, 2).tolist() == [0, 2]  # f64 wins
    assert select("coreset", probs.astype(np.float32), feats.astype(np.float32), 2).tolist() == [0, 1]


# -- containers and labeled forms --------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("strategy", ALL_STRATEGIES)
def test_torch_and_numpy_give_the_same_picks(strategy, dtype):
    probs, feats = pool(n=30, k=4, d=5, dtype=dtype, seed=3)
    labeled = np.array([0, 7, 8, 21])
    want = select(strategy, probs, feats, 10, labeled=labeled, seed=11)
    for p, f, lab in [
        (torch.from_numpy(probs), torch.from_numpy(feats), labeled),
        (torch.from_numpy(probs), feats, torch.from_numpy(labeled)),
        (probs, torch.from_numpy(feats), labeled),
    ]:
        np.testing.assert_array_equal(select(strategy, p, f, 10, labeled=lab, seed=11), want)


@pytest.mark.parametrize("strategy", ALL_STRATEGIES)
def test_labeled_forms_agree(strategy):
    probs, feats = pool(n=30, k=4, d=5, seed=4)
    idx = [3, 4, 10, 29]
    mask = np.zeros(30, dtype=bool)
    mask[idx] = True
    forms = {
        "mask": mask,
        "index array": np.array(idx),
        "int32 index array": np.array(idx, dtype=np.int32),
        "unsorted with repeats": np.array([29, 4, 3, 10, 4]),
        "list": idx,
        "tuple": tuple(idx),
        "torch mask": torch.from_numpy(mask),
        "torch indices": torch.tensor(idx),
    }
    results = {name: select(strategy, probs, feats, 8, labeled=lab, seed=2) for name, lab in forms.items()}
    for name, got in results.items():
        np.testing.assert_array_equal(got, results["mask"], err_msg=name)
        assert not set(got.tolist()) & set(idx)


def test_non_contiguous_inputs():
    # Views (reversed, strided, transposed) are ordinary numpy input and mean what they hold.
    probs, feats = pool(n=10, seed=8)
    mask = np.zeros(10, dtype=bool)
    mask[[1, 6]] = True
    want = select("coreset", probs, feats, 4, labeled=mask)
    rev = np.ascontiguousarray(mask[::-1])[::-1]  # same values, negative stride
    wide = np.zeros((10, 2), dtype=bool)
    wide[:, 0] = mask  # wide[:, 0]: same values, stride 2
    for lab in (wide[:, 0], np.array([6, 1])[::-1], np.array([1, 1, 6, 6])[::2]):
        np.testing.assert_array_equal(select("coreset", probs, feats, 4, labeled=lab), want)
    np.testing.assert_array_equal(select("coreset", probs, feats, 4, labeled=rev), want)
    p_rev = np.ascontiguousarray(probs[::-1])[::-1]
    f_t = np.ascontiguousarray(feats.T).T
    np.testing.assert_array_equal(select("coreset", p_rev, f_t, 4, labeled=mask), want)


@pytest.mark.parametrize("strategy", ALL_STRATEGIES)
def test_no_labeled_forms_agree(strategy):
    probs, feats = pool(n=12, seed=5)
    want = select(strategy, probs, feats, 5, seed=1)
    for lab in ([], np.array([], dtype=np.int64), np.zeros(12, dtype=bool), torch.zeros(12, dtype=torch.bool)):
        np.testing.assert_array_equal(select(strategy, probs, feats, 5, labeled=lab, seed=1), want)


@pytest.mark.parametrize("strategy", ALL_STRATEGIES)
def test_inputs_are_not_modified(strategy):
    probs, feats = pool(n=20, seed=6)
    labeled = np.zeros(20, dtype=bool)
    labeled[[1, 5]] = True
    copies = probs.copy(), feats.copy(), labeled.copy()
    tp, tf, tl = torch.from_numpy(probs.copy()), torch.from_numpy(feats.copy()), torch.from_numpy(labeled.copy())
    select(strategy, probs, feats, 6, labeled=labeled)
    select(strategy, tp, tf, 6, labeled=tl)
    for a, b in zip((probs, feats, labeled), copies):
        np.testing.assert_array_equal(a, b)
    for a, b in zip((tp, tf, tl), copies):
        np.testing.assert_array_equal(a.numpy(), b)


@pytest.mark.parametrize("strategy", ALL_STRATEGIES)
def test_requires_grad_inputs(strategy):
    probs, feats = pool(n=12, seed=7)
    tp = torch.tensor(probs, requires_grad=True)
    tf = torch.tensor(feats, requires_grad=True)
    np.testing.assert_array_equal(select(strategy, tp, tf, 4), select(strategy, probs, feats, 4))
