"""(p, h) of a trained model, for tests and benchmarks of what depends on the data, such as BADGE's pruning.

Synthetic Gaussian mixtures put every row at about the same distance from every other in K*D dimensions; a
trained network's embeddings are confident on most rows and clustered, so bounds and other data-dependent
shortcuts behave differently on them (DESIGN.md section 3). Both are measured.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from dist_al.models.embedder import Embedder
from dist_al.models.factories import mlp


def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    from dist_al.data.digits import load_digits

    x, y = load_digits()
    return torch.tensor(x / 16.0, dtype=torch.float32), torch.tensor(y)


def trained_digits_mlp(*, hidden: int = 128, seed: int = 0, labeled: int = 300, steps: int = 300) -> nn.Module:
    """dist_al.models:mlp (64 inputs, 10 classes, two hidden layers) trained on scikit-learn's bundled digits.

    Args:
        hidden: width of the two hidden layers (h is the second one's ReLU output).
        seed: seeds the initialisation and which digits are labeled.
        labeled: digits it is trained on (full-batch Adam, learning rate 1e-3).
        steps: training steps.

    Returns:
        The model, in eval mode.
    """
    x, y = _digits()
    torch.manual_seed(seed)
    model = mlp(x.shape[1], 10, hidden=hidden, depth=2)
    train = torch.from_numpy(np.random.default_rng(seed).choice(len(x), labeled, replace=False))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny steps: more threads only wait for each other, badly so on a busy machine
    try:
        for _ in range(steps):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[train]), y[train]).backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


def noisy_digits(n: int, *, seed: int = 0, noise: float = 0.15) -> tuple[torch.Tensor, torch.Tensor]:
    """(pixels (n, 64) in [0, 1], labels (n,)): digits drawn with replacement, each with its own Gaussian noise."""
    x, y = _digits()
    g = torch.Generator().manual_seed(seed + 1)
    rows = torch.randint(len(x), (n,), generator=g)
    return (x[rows] + noise * torch.randn(n, x.shape[1], generator=g)).clamp_(0, 1), y[rows]


def digits_embeddings(
    n: int, *, hidden: int = 128, seed: int = 0, steps: int = 300, device: str | torch.device = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(probs (n, 10), feats (n, hidden)) of `trained_digits_mlp` over `noisy_digits(n)`, float32 on `device`
    (the model runs there; it is trained on the CPU), computed in slices so the peak is the output plus one
    slice."""
    embed = Embedder(trained_digits_mlp(hidden=hidden, seed=seed, steps=steps), device=device)
    probs, feats = torch.empty(n, 10, device=device), torch.empty(n, hidden, device=device)
    step = 1 << 16
    for lo in range(0, n, step):
        x, _ = noisy_digits(min(step, n - lo), seed=seed + lo)
        probs[lo : lo + len(x)], feats[lo : lo + len(x)] = embed(x)
    return probs, feats
