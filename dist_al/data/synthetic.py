"""Synthetic pools: a Gaussian mixture with labels, for benchmarks, demos and tests."""

from __future__ import annotations

import torch


def gaussian_mixture(
    n: int, n_classes: int, dim: int, *, seed: int = 0, separation: float = 2.0, dtype=torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (n, dim), labels (n,)): unit-variance blobs around random class means."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(n_classes, dim, generator=g, dtype=torch.float64) * separation / dim**0.5 * 2
    labels = torch.randint(0, n_classes, (n,), generator=g)
    feats = means[labels] + torch.randn(n, dim, generator=g, dtype=torch.float64)
    return feats.to(dtype), labels
