"""Synthetic pools: a Gaussian mixture with labels, for benchmarks, demos and tests."""

from __future__ import annotations

import torch


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
    feats = means[labels] + torch.randn(n, dim, generator=g, dtype=torch.float64)
    return feats.to(dtype), labels
