"""Built-in model factories: `dist_al.models:mlp` for feature-vector pools, `dist_al.models:cnn` for images."""

from __future__ import annotations

from torch import nn


def mlp(in_dim: int, n_classes: int, hidden: int = 256, depth: int = 2, dropout: float = 0.0) -> nn.Module:
    """MLP for precomputed embeddings (CLIP, text encoders): the common production pool."""
    layers: list[nn.Module] = []
    width = in_dim
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        if dropout:
            layers.append(nn.Dropout(dropout))
        width = hidden
    layers.append(nn.Linear(width, n_classes))
    return nn.Sequential(*layers)


class _Unflatten(nn.Module):
    """Pools store images flattened; the CNN restores (C, H, W)."""

    def __init__(self, shape: tuple[int, int, int]):
        super().__init__()
        self.shape = tuple(shape)

    def forward(self, x):
        return x.reshape(len(x), *self.shape)


def cnn(image_shape: tuple[int, int, int], n_classes: int, width: int = 32, embed_dim: int = 128) -> nn.Module:
    """A small CNN for image tensors stored flattened in the feature column."""
    c, h, w = image_shape
    return nn.Sequential(
        _Unflatten((c, h, w)),
        nn.Conv2d(c, width, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(4),
        nn.Flatten(),
        nn.Linear(2 * width * 16, embed_dim),
        nn.ReLU(),
        nn.Linear(embed_dim, n_classes),
    )
