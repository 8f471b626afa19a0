"""Models by import path, checkpoints loaded safely, and (p, h) from the final nn.Linear."""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch
from torch import nn

from dist_al.config import ModelConfig
from dist_al.models.build import ModelError, build_model, classifier_layer
from dist_al.models.embedder import Embedder


def test_mlp_gives_softmax_and_penultimate_features():
    model = build_model(ModelConfig(kwargs={"in_dim": 6, "n_classes": 3, "hidden": 5}), seed=1)
    x = torch.randn(4, 6)
    p, h = Embedder(model)(x)
    assert p.shape == (4, 3) and h.shape == (4, 5)
    torch.testing.assert_close(p, torch.softmax(model(x), 1))
    torch.testing.assert_close(h, model[:-1](x))


def test_same_seed_same_weights_and_state_overrides_seed():
    spec = ModelConfig(kwargs={"in_dim": 6, "n_classes": 3})
    a, b = build_model(spec, seed=4), build_model(spec, seed=4)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    c = build_model(spec, seed=5, weights=a.state_dict())
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), c.state_dict().values()))


def test_cnn_on_flattened_images():
    model = build_model(ModelConfig(factory="dist_al.models:cnn", kwargs={"image_shape": (1, 8, 8), "n_classes": 4}))
    p, h = Embedder(model)(torch.randn(3, 64))
    assert p.shape == (3, 4) and h.shape == (3, 128)


def test_user_factory_and_named_classifier(tmp_path, monkeypatch):
    (tmp_path / "my_nets.py").write_text(
        textwrap.dedent("""
        from torch import nn
        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.body = nn.Linear(4, 7)
                self.head = nn.Linear(7, 3)
                self.aux = nn.Linear(7, 2)   # registered last, but not the classifier
            def forward(self, x):
                return self.head(self.body(x).relu())
        def build():
            return Net()
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = ModelConfig(factory="my_nets:build", classifier="head")
    p, h = Embedder(build_model(spec), "head")(torch.randn(2, 4))
    assert p.shape == (2, 3) and h.shape == (2, 7)
    with pytest.raises(ModelError, match="ran 0 times"):  # the auto-detected last Linear never runs
        Embedder(build_model(ModelConfig(factory="my_nets:build")))(torch.randn(2, 4))
    sys.modules.pop("my_nets", None)


def test_checkpoint_round_trip_and_mismatch(tmp_path):
    spec = ModelConfig(kwargs={"in_dim": 6, "n_classes": 3})
    model = build_model(spec, seed=9)
    torch.save(model.state_dict(), tmp_path / "ok.pt")
    loaded = build_model(
        ModelConfig(factory=spec.factory, kwargs=spec.kwargs, checkpoint=str(tmp_path / "ok.pt")), seed=0
    )
    assert all(torch.equal(x, y) for x, y in zip(model.state_dict().values(), loaded.state_dict().values()))
    with pytest.raises(ModelError, match="checkpoint does not match the model"):
        build_model(
            ModelConfig(factory=spec.factory, kwargs={"in_dim": 6, "n_classes": 4}, checkpoint=str(tmp_path / "ok.pt"))
        )


def test_checkpoint_with_arbitrary_pickle_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"weight": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(ModelError, match="holds more than tensors and is refused"):
        build_model(ModelConfig(kwargs={"in_dim": 6, "n_classes": 3}, checkpoint=str(tmp_path / "evil.pt")))


@pytest.mark.parametrize(
    "factory, message",
    [
        ("no_colon", "must look like 'package.module:function'"),
        ("no_such_module_xyz:build", "cannot import module 'no_such_module_xyz'"),
        ("dist_al.models:nope", "has no attribute 'nope'"),
    ],
)
def test_bad_factories(factory, message):
    with pytest.raises(ModelError, match=message):
        build_model(ModelConfig(factory=factory))


def test_bad_kwargs_missing_checkpoint_and_no_linear(tmp_path):
    with pytest.raises(ModelError, match="rejected model.kwargs"):
        build_model(ModelConfig(kwargs={"in_dims": 3}))
    with pytest.raises(ModelError, match="cannot be read"):
        build_model(ModelConfig(kwargs={"in_dim": 6, "n_classes": 3}, checkpoint=str(tmp_path / "missing.pt")))
    with pytest.raises(ModelError, match="no nn.Linear layer"):
        classifier_layer(nn.Sequential(nn.ReLU()))
