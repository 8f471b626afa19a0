"""Synthetic pools: a Gaussian mixture with labels, for benchmarks, demos and tests."""

from __future__ import annotations

import torch

_SLICE_ELEMENTS = 1 << 22  # float64 values drawn per slice (32 MiB)


def gaussian_mixture(
    n: int,
    n_classes: int,
    dim: int,
    *,
    seed: int = 0,
    separation: float = 2.0,
    dtype=torch.float32,
    sample_seed: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (n, dim), labels (n,)): unit-variance blobs around random class means.

    ``seed`` draws the mixture (its class means) and, by default, the rows; a ``sample_seed`` draws other rows
    of the same mixture (a labeled eval set for a pool, say)."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(n_classes, dim, generator=g, dtype=torch.float64) * separation / dim**0.5 * 2
    if sample_seed is not None:
        g = torch.Generator().manual_seed(sample_seed)
    labels = torch.randint(0, n_classes, (n,), generator=g)
    # In slices of float64 work, so ten million rows need little more memory than the result. The rows are those
    # of one draw of all the normals: torch draws normals 16 at a time, so every slice but the last draws a
    # multiple of 16, and the last at least 16 (or all there are).
    feats = torch.empty(n, dim, dtype=dtype)
    step = 16 * max(1, _SLICE_ELEMENTS // (16 * dim))
    lo = 0
    while lo < n:
        hi = n if (n - lo - step) * dim < 16 else lo + step
        feats[lo:hi] = means[labels[lo:hi]] + torch.randn(hi - lo, dim, generator=g, dtype=torch.float64)
        lo = hi
    return feats, labels
