"""Built-in model factories, named in a config as ``model.factory: dist_al.models:NAME``.

- ``mlp``: feature-vector pools (precomputed embeddings).
- ``cnn``: a small CNN for images stored flattened in a vector column.
- ``resnet``: ResNet-18/34/50 in plain torch for image pools, with torchvision's state_dict names and shapes, so a
  checkpoint saved from ``torchvision.models.resnet18()`` (or ImageNet weights) loads with ``weights_only=True``
  without torchvision installed (torchvision's wheels pin one torch build each; dist-al keeps torch open).
- ``text_classifier``: token embeddings, an optional small Transformer encoder, masked mean pooling and a linear head,
  for text pools read as ``input_ids`` / ``attention_mask``.

Every model ends in one ``nn.Linear`` registered last, so the embedder's hook finds the classifier head without
``model.classifier``. Nothing here downloads weights: they come only from ``model.checkpoint``.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from dist_al.models.build import ModelError


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


# --------------------------------------------------------------------------- ResNet
# Module names below (conv1, bn1, layerN.M.conv1, downsample.0, fc, ...) are torchvision's state_dict keys: do not
# rename them. tests/data/torchvision_resnet18_state_dict.txt is the list they are checked against.


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class _BasicBlock(nn.Module):
    """Two 3x3 convolutions and a shortcut (ResNet-18/34)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int, downsample: nn.Module | None):
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + shortcut)


class _Bottleneck(nn.Module):
    """1x1 down, 3x3 (carrying the stride, as torchvision's "ResNet v1.5"), 1x1 up, and a shortcut (ResNet-50)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int, downsample: nn.Module | None):
        super().__init__()
        self.conv1 = _conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + shortcut)


_ARCHS: dict[str, tuple[type[_BasicBlock] | type[_Bottleneck], tuple[int, int, int, int]]] = {
    "resnet18": (_BasicBlock, (2, 2, 2, 2)),
    "resnet34": (_BasicBlock, (3, 4, 6, 3)),
    "resnet50": (_Bottleneck, (3, 4, 6, 3)),
}


class ResNet(nn.Module):
    """A torchvision-compatible ResNet: same module tree, so the same state_dict keys and shapes."""

    def __init__(self, arch: str, num_classes: int, in_channels: int, stem: str):
        super().__init__()
        block, depths = _ARCHS[arch]
        small = stem == "small"
        # the small stem keeps the 7x7 kernel (a torchvision checkpoint still loads) but not its 4x downsampling
        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=1 if small else 2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.Identity() if small else nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        inplanes = 64
        stages = []
        for index, (planes, depth) in enumerate(zip((64, 128, 256, 512), depths)):
            stride = 1 if index == 0 else 2
            downsample = None
            if stride != 1 or inplanes != planes * block.expansion:
                downsample = nn.Sequential(
                    _conv1x1(inplanes, planes * block.expansion, stride), nn.BatchNorm2d(planes * block.expansion)
                )
            blocks = [block(inplanes, planes, stride, downsample)]
            inplanes = planes * block.expansion
            blocks += [block(inplanes, planes, 1, None) for _ in range(1, depth)]
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet(
    arch: Literal["resnet18", "resnet34", "resnet50"] = "resnet18",
    num_classes: int = 1000,
    in_channels: int = 3,
    stem: Literal["imagenet", "small"] = "imagenet",
) -> nn.Module:
    """A ResNet whose state_dict keys and shapes are torchvision's, for image pools read by the images reader.

    Args:
        arch: ``resnet18``, ``resnet34`` or ``resnet50`` (torchvision's layer counts and blocks).
        num_classes: width of the final ``fc`` layer, the classifier head the embedder hooks (h is its 512- or
            2048-wide input).
        in_channels: 3 for RGB, 1 for grayscale (``conv1`` then differs from an RGB checkpoint's shape).
        stem: ``imagenet`` is torchvision's (7x7 stride-2 convolution, 3x3 stride-2 max-pool: 224 px inputs);
            ``small`` keeps the same 7x7 weights but with stride 1 and no max-pool, for 32-64 px inputs, which the
            ImageNet stem would shrink to 1x1-2x2 by ``layer4``. The state_dict is the same for both.

    Returns:
        The model, initialised as torchvision initialises it (weights come from ``model.checkpoint``).

    Raises:
        ModelError: an unknown ``arch`` or ``stem``, or a size below 1.
    """
    if arch not in _ARCHS:
        raise ModelError(f"model.kwargs.arch {arch!r} is not one of {', '.join(_ARCHS)}")
    if stem not in ("imagenet", "small"):
        raise ModelError(f"model.kwargs.stem {stem!r} is not 'imagenet' or 'small'")
    if num_classes < 1 or in_channels < 1:
        raise ModelError(f"model.kwargs: num_classes ({num_classes}) and in_channels ({in_channels}) must be >= 1")
    return ResNet(arch, num_classes, in_channels, stem)


# --------------------------------------------------------------------------- text


class TextClassifier(nn.Module):
    """Token embeddings, ``layers`` pre-norm Transformer encoder layers (0: none), masked mean pooling, a head."""

    def __init__(self, vocab_size, num_classes, dim, layers, heads, max_length, padding_idx, dropout):
        super().__init__()
        self.max_length = max_length
        self.embed = nn.Embedding(vocab_size, dim, padding_idx=padding_idx)
        self.encoder: nn.Module | None = None
        if layers:
            self.position = nn.Embedding(max_length, dim)
            layer = nn.TransformerEncoderLayer(
                dim, heads, 4 * dim, dropout, activation="gelu", batch_first=True, norm_first=True
            )
            self.encoder = nn.TransformerEncoder(layer, layers, norm=nn.LayerNorm(dim), enable_nested_tensor=False)
        self.head = nn.Linear(dim, num_classes)  # registered last: the classifier the embedder hooks

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        keep = attention_mask.bool()
        x = self.embed(input_ids)
        if self.encoder is not None:
            length = input_ids.shape[1]
            if length > self.max_length:
                raise ModelError(
                    f"a batch of {length} tokens is longer than the text classifier's max_length "
                    f"{self.max_length}; set the text reader's max_length to at most that"
                )
            x = x + self.position(torch.arange(length, device=input_ids.device))
            x = self.encoder(x, src_key_padding_mask=~keep)
        weights = keep.unsqueeze(-1).to(x.dtype)
        pooled = (x * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        return self.head(pooled)


def text_classifier(
    vocab_size: int,
    num_classes: int,
    dim: int = 128,
    layers: int = 1,
    heads: int = 4,
    max_length: int = 256,
    padding_idx: int = 0,
    dropout: float = 0.1,
) -> nn.Module:
    """A small text classifier for text pools; called as ``model(input_ids=..., attention_mask=...)``.

    Args:
        vocab_size: the tokenizer's vocabulary size (``Tokenizer.get_vocab_size()``).
        num_classes: width of the ``head`` layer, the classifier the embedder hooks (h is the pooled ``dim`` vector).
        dim: embedding width.
        layers: Transformer encoder layers (0: a bag of embeddings, mean-pooled: fastest, no position).
        heads: attention heads per layer (must divide ``dim``).
        max_length: longest token sequence the position embedding covers (the text reader's ``max_length``).
        padding_idx: the tokenizer's padding id, whose embedding stays zero.
        dropout: dropout inside the encoder while training.

    Returns:
        The model; padded positions (``attention_mask`` 0) are ignored by attention and by the pooling.

    Raises:
        ModelError: sizes below 1, or ``heads`` not dividing ``dim``.
    """
    if min(vocab_size, num_classes, dim, heads, max_length) < 1 or layers < 0:
        raise ModelError(
            "model.kwargs: vocab_size, num_classes, dim, heads and max_length must be >= 1 and layers >= 0"
        )
    if layers and dim % heads:
        raise ModelError(f"model.kwargs.heads ({heads}) must divide dim ({dim})")
    return TextClassifier(vocab_size, num_classes, dim, layers, heads, max_length, padding_idx, dropout)
