"""Models named by import path (``model.factory``), with weights from a checkpoint or a seed.

Checkpoints are state_dicts read with torch's weights_only unpickler: a file that holds code is refused.
"""

from __future__ import annotations

import io
import pickle  # only for its exception type: checkpoints are read by torch's weights_only unpickler
import warnings

import torch
from torch import nn

from dist_al.config import ModelConfig
from dist_al.core.errors import UserError
from dist_al.data.storage import filesystem
from dist_al.importing import import_path


class ModelError(UserError):
    """A model that cannot be built, loaded or used; the message says which and why."""


def _import_factory(path: str):
    return import_path(path, "model.factory", ModelError)


def load_state(uri: str, storage_options: dict | None = None) -> dict:
    """A state_dict from any fsspec URI, loaded with weights_only=True (never arbitrary pickle)."""
    try:
        fs, path = filesystem(uri, storage_options)
        data = fs.cat_file(path)
    except (FileNotFoundError, OSError) as err:
        raise ModelError(f"model.checkpoint {uri!r} cannot be read: {err}") from None
    try:
        with warnings.catch_warnings():  # e.g. "pickle protocol 4": noise on top of the one error line
            warnings.simplefilter("ignore")
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:  # torch's weights_only unpickler refused something
        raise ModelError(
            f"model.checkpoint {uri!r} holds more than tensors and is refused (loading it could run "
            f"code; save model.state_dict() only): {_unpickling_reason(err)}"
        ) from None
    except Exception as err:  # noqa: BLE001 - torch raises several types for corrupt files
        raise ModelError(
            f"model.checkpoint {uri!r} is not a torch state_dict file (torch.save of "
            f"model.state_dict()): {type(err).__name__}: {_first_line(err)}"
        ) from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise ModelError(f"model.checkpoint {uri!r} holds a {type(state).__name__}, not a state_dict")
    return state


def _first_line(err: BaseException) -> str:
    return next((line.strip() for line in str(err).splitlines() if line.strip()), "(no detail)")


def _unpickling_reason(err: BaseException) -> str:
    """The line of torch's long weights_only message that says what was refused (not its advice to turn it off)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    found = [line for line in lines if "GLOBAL" in line or "Unsupported" in line or "WeightsUnpickler error" in line]
    return (found[-1] if found else lines[-1] if lines else type(err).__name__).rstrip(":")


def build_model(
    spec: ModelConfig, *, seed: int = 0, state: dict | None = None, storage_options: dict | None = None
) -> nn.Module:
    """The model with weights from `state`, else the checkpoint (read with ``storage_options``), else initialised
    from the seed."""
    factory = _import_factory(spec.factory)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            model = factory(**spec.kwargs)
        except TypeError as err:
            raise ModelError(f"model.factory {spec.factory!r} rejected model.kwargs {spec.kwargs}: {err}") from None
    if not isinstance(model, nn.Module):
        raise ModelError(f"model.factory {spec.factory!r} returned a {type(model).__name__}, not a torch.nn.Module")
    if state is None and spec.checkpoint:
        state = load_state(spec.checkpoint, storage_options)
    if state is not None:
        try:
            model.load_state_dict(state)
        except RuntimeError as err:
            first = str(err).strip().splitlines()
            detail = " ".join(line.strip() for line in first[:3])
            raise ModelError(f"checkpoint does not match the model built by {spec.factory!r}: {detail}") from None
    classifier_layer(model, spec.classifier)  # fail now, not on a worker
    return model


def classifier_layer(model: nn.Module, name: str | None = None) -> nn.Linear:
    """The final nn.Linear: the named module, else the last nn.Linear registered."""
    if name is not None:
        layer = dict(model.named_modules()).get(name)
        if not isinstance(layer, nn.Linear):
            raise ModelError(f"model.classifier {name!r} is not an nn.Linear module of the model")
        return layer
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ModelError("the model has no nn.Linear layer to use as the classifier; name one in model.classifier")
    return linears[-1]
