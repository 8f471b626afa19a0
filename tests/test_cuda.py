"""The numeric core and the embedder on a CUDA device: the same picks as on the CPU, and autocast's outputs checked.

Skipped where torch sees no GPU (CI, these development machines); run on a GPU machine with
`python -m pytest tests/test_cuda.py` (it needs no Ray, no conftest and no server).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from dist_al.bench.core import labeled_rows, make_pool
from dist_al.core import STRATEGIES, select
from dist_al.core.badge import BadgeShard, kmeanspp
from dist_al.core.errors import UserError
from dist_al.core.inputs import first_invalid, prob_sum_tolerance
from dist_al.core.kernels import CUDA_DOT_ROWS, row_dots
from dist_al.core.shards import LocalShards
from dist_al.models.embedder import Embedder
from dist_al.testing import oracles as dense

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
CUDA = torch.device("cuda")


def pool64(n: int, k: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    return make_pool(n, k, d, seed=seed, dtype=torch.float64)


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
@pytest.mark.parametrize("seed", [0, 1])
def test_every_strategy_picks_on_cuda_what_it_picks_on_the_cpu(strategy, seed):
    """float64 inputs, so the two devices' different summation orders cannot decide a pick."""
    n, k, d, b = 2_000, 5, 16, 25
    probs, feats = pool64(n, k, d, seed)
    labeled = labeled_rows(n, seed)
    cpu = select(strategy, probs, feats, b, labeled=labeled, seed=seed)
    gpu = select(strategy, probs.to(CUDA), feats.to(CUDA), b, labeled=labeled, seed=seed)
    np.testing.assert_array_equal(gpu, cpu)


@pytest.mark.parametrize("seed", range(4))
def test_badge_and_bait_on_cuda_equal_the_dense_oracles(seed):
    n, k, d, b = 300, 4, 6, 12
    probs, feats = pool64(n, k, d, seed)
    labeled = labeled_rows(n, seed)
    p_np, f_np = probs.numpy(), feats.numpy()
    on_gpu = probs.to(CUDA), feats.to(CUDA)
    np.testing.assert_array_equal(select("badge", *on_gpu, b, seed=seed), dense.badge(p_np, f_np, b, seed=seed))
    want = dense.bait(p_np, f_np, b, labeled=labeled)[0]
    np.testing.assert_array_equal(select("bait", *on_gpu, b, labeled=labeled), want)


def test_badge_pruning_on_cuda_keeps_the_full_pass_picks():
    """float32 on the device, as a real pool is: the bounds must skip only rows that cannot change."""
    probs, feats = make_pool(50_000, 10, 64, seed=3, device=CUDA)
    unlabeled = torch.zeros(len(probs), dtype=torch.bool, device=CUDA)

    def picks(prune: bool):
        with torch.inference_mode():
            shard = BadgeShard(probs, feats, unlabeled)
            return kmeanspp(LocalShards([shard]), 200, seed=3, prune=prune), shard.rows_read

    (full, read_full), (pruned, read_pruned) = picks(False), picks(True)
    assert pruned == full
    assert read_pruned < read_full  # the bounds did skip rows


@pytest.mark.parametrize("d", [10, 512])
def test_row_dots_of_gathered_rows_equal_the_full_pass_bit_for_bit(d):
    """What pruning rests on: a row's dot product is the same whichever rows it is computed with."""
    g = torch.Generator(device=CUDA).manual_seed(d)
    n = 2 * CUDA_DOT_ROWS + 12_345
    rows, v = torch.randn(n, d, device=CUDA, generator=g), torch.randn(d, device=CUDA, generator=g)
    full = row_dots(rows, v)
    for size in (1, 1_000, 30_000, CUDA_DOT_ROWS + 1, n // 2):
        picked = torch.randperm(n, device=CUDA, generator=g)[:size]
        assert torch.equal(row_dots(rows[picked], v), full[picked]), size


def test_bait_candidate_mode_on_cuda_equals_the_cpu():
    probs, feats = pool64(6_000, 5, 16, seed=2)
    labeled = labeled_rows(len(probs), 2)
    options = dict(mode="candidates", candidates=3)
    cpu = select("bait", probs, feats, 20, labeled=labeled, **options)
    gpu = select("bait", probs.to(CUDA), feats.to(CUDA), 20, labeled=labeled, **options)
    np.testing.assert_array_equal(gpu, cpu)


# -- autocast: the finiteness checks the Ray workers run on each batch (runtime/worker.py: _check_output) --


def classifier(scale: float) -> nn.Module:
    """An MLP whose hidden activations are about `scale` (float16 overflows above 65504; bfloat16 does not)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))
    with torch.no_grad():
        model[0].weight.mul_(scale)
        model[2].weight.div_(scale)
    return model


@pytest.mark.parametrize("autocast", ["bf16", "fp16"])
def test_autocast_outputs_are_float32_probabilities_close_to_full_precision(autocast):
    x = torch.randn(4_096, 8)
    p32, h32 = Embedder(classifier(1.0), device=CUDA)(x)
    p, h = Embedder(classifier(1.0), device=CUDA, autocast=autocast)(x)
    assert p.dtype == h.dtype == torch.float32 and p.device.type == "cuda"
    assert first_invalid(p, h, prob_sum_tolerance(p)) is None
    torch.testing.assert_close(p, p32, atol=2e-2, rtol=0)
    torch.testing.assert_close(h, h32, atol=5e-2, rtol=5e-2)


def test_fp16_overflow_is_caught_and_bf16_is_not_overflowed():
    x = torch.randn(1_024, 8)
    p, h = Embedder(classifier(1e6), device=CUDA, autocast="fp16")(x)
    bad = first_invalid(p, h, prob_sum_tolerance(p))
    assert bad is not None and bad[0].endswith("_nonfinite"), bad
    with pytest.raises(UserError, match="NaN or inf"):
        select("badge", p, h, 10)
    p, h = Embedder(classifier(1e6), device=CUDA, autocast="bf16")(x)
    assert first_invalid(p, h, prob_sum_tolerance(p)) is None
    assert len(select("badge", p, h, 10)) == 10
