"""The built-in backbones: a ResNet with torchvision's state_dict, and a small text classifier.

torchvision is not installed beside the pinned CPU torch, so the ResNet is checked against a vendored list of
torchvision's resnet18 state_dict (tests/data/torchvision_resnet18_state_dict.txt) and torchvision's published
parameter counts, and a checkpoint with exactly those keys and shapes is loaded the way dist-al loads every
checkpoint (weights_only=True).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dist_al.config import ModelConfig
from dist_al.models import resnet, text_classifier
from dist_al.models.build import ModelError, build_model, classifier_layer
from dist_al.models.embedder import Embedder

TORCHVISION_RESNET18 = Path(__file__).parent / "data" / "torchvision_resnet18_state_dict.txt"


def torchvision_resnet18_shapes() -> list[tuple[str, tuple[int, ...]]]:
    rows = [line.split() for line in TORCHVISION_RESNET18.read_text().splitlines() if not line.startswith("#")]
    return [(key, () if shape == "scalar" else tuple(int(n) for n in shape.split("x"))) for key, shape in rows]


def torchvision_like_checkpoint(path: Path, *, with_batch_counts: bool = True) -> dict[str, torch.Tensor]:
    """A state_dict file with torchvision's resnet18 keys and shapes and random values, as torch.save writes it."""
    gen = torch.Generator().manual_seed(0)
    state = {}
    for key, shape in torchvision_resnet18_shapes():
        if key.endswith("num_batches_tracked"):
            if with_batch_counts:
                state[key] = torch.tensor(7)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=gen) + 0.5
        else:
            state[key] = torch.randn(shape, generator=gen) * 0.05
    torch.save(state, path)
    return state


@pytest.mark.parametrize("stem", ["imagenet", "small"])
def test_resnet18_state_dict_keys_and_shapes_are_torchvision_s(stem):
    ours = [(key, tuple(value.shape)) for key, value in resnet("resnet18", stem=stem).state_dict().items()]
    assert ours == torchvision_resnet18_shapes()


def test_resnet_parameter_counts_are_torchvision_s():
    # torchvision's documented sizes: 11,689,512 / 21,797,672 / 25,557,032 parameters
    counts = {arch: sum(p.numel() for p in resnet(arch).parameters()) for arch in ("resnet18", "resnet34", "resnet50")}
    assert counts == {"resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032}


@pytest.mark.parametrize("with_batch_counts", [True, False], ids=["current", "pre-0.4-checkpoint"])
def test_a_torchvision_checkpoint_loads_with_weights_only_and_feeds_the_embedder(tmp_path, with_batch_counts):
    state = torchvision_like_checkpoint(tmp_path / "resnet18.pt", with_batch_counts=with_batch_counts)
    spec = ModelConfig(factory="dist_al.models:resnet", checkpoint=str(tmp_path / "resnet18.pt"))
    model = build_model(spec)
    loaded = model.state_dict()
    assert all(torch.equal(loaded[key], value) for key, value in state.items())
    assert classifier_layer(model) is model.fc
    p, h = Embedder(model)(torch.rand(2, 3, 64, 64))
    assert p.shape == (2, 1000) and h.shape == (2, 512)
    assert torch.isfinite(h).all()
    torch.testing.assert_close(p.sum(1), torch.ones(2))


def test_a_checkpoint_of_another_arch_is_one_clear_error(tmp_path):
    torchvision_like_checkpoint(tmp_path / "r18.pt")
    spec = ModelConfig(
        factory="dist_al.models:resnet", kwargs={"arch": "resnet34"}, checkpoint=str(tmp_path / "r18.pt")
    )
    with pytest.raises(ModelError, match="checkpoint does not match the model built by 'dist_al.models:resnet'"):
        build_model(spec)


def test_the_small_stem_keeps_small_images_spatial_and_grayscale_works():
    seen = {}
    for stem in ("imagenet", "small"):
        model = resnet("resnet18", num_classes=10, in_channels=1, stem=stem).eval()
        model.layer4.register_forward_hook(lambda _m, _i, out, stem=stem: seen.__setitem__(stem, out.shape))
        p, h = Embedder(model)(torch.rand(3, 1, 32, 32))
        assert p.shape == (3, 10) and h.shape == (3, 512)
    assert seen == {"imagenet": (3, 512, 1, 1), "small": (3, 512, 4, 4)}


def test_resnet50_head_is_2048_wide():
    p, h = Embedder(resnet("resnet50", num_classes=5, stem="small"))(torch.rand(2, 3, 32, 32))
    assert p.shape == (2, 5) and h.shape == (2, 2048)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"arch": "resnet101"}, "arch 'resnet101' is not one of resnet18, resnet34, resnet50"),
        ({"stem": "cifar"}, "stem"),
    ],
)
def test_unknown_resnet_options_are_model_errors(kwargs, message):
    with pytest.raises(ModelError, match=message):
        build_model(ModelConfig(factory="dist_al.models:resnet", kwargs=kwargs))


@pytest.mark.parametrize("layers", [0, 1, 2])
def test_text_classifier_ignores_padding_and_exposes_its_head(layers):
    model = build_model(
        ModelConfig(
            factory="dist_al.models:text_classifier",
            kwargs={"vocab_size": 50, "num_classes": 3, "dim": 16, "layers": layers, "heads": 2},
        ),
        seed=3,
    ).eval()
    assert classifier_layer(model) is model.head
    ids = torch.tensor([[5, 9, 11, 0, 0], [7, 8, 9, 10, 12]])
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    with torch.no_grad():
        batch = model(input_ids=ids, attention_mask=mask)
        alone = model(input_ids=ids[:1, :3], attention_mask=mask[:1, :3])  # the first row without its padding
    torch.testing.assert_close(batch[:1], alone)
    p, h = Embedder(model)(ids[1:])  # no mask: every token counts
    assert p.shape == (1, 3) and h.shape == (1, 16)


def test_text_longer_than_max_length_is_a_model_error():
    model = text_classifier(vocab_size=20, num_classes=2, dim=8, heads=2, max_length=4)
    with pytest.raises(ModelError, match="longer than the text classifier's max_length 4"):
        model(input_ids=torch.ones(1, 5, dtype=torch.long))
