"""Models named by import path (``model.factory``), with weights from a checkpoint or a seed.

The model factory contract. ``model.factory: "package.module:function"`` names a callable that dist-al imports
(the current directory is on the path, so a module next to the config works, and travels with ``dist-al submit``)
and calls as ``function(**model.kwargs)``. It must return a ``torch.nn.Module`` that

* takes a batch of the pool's rows as its model input (today a float32 ``(rows, D)`` tensor of the feature
  column) and needs no special forward signature;
* ends in an ``nn.Linear`` classifier: dist-al hooks that layer (named by ``model.classifier``; by default the
  last ``nn.Linear`` the model registers), takes its input as the features h and the softmax of its output as the
  class probabilities p, which is all BADGE, BAIT and the baselines need (``dist_al.models.embedder``). The layer
  must run exactly once per forward pass;
* builds the same architecture for the same kwargs, so its ``state_dict`` loads on every ShardWorker and Ray
  Train worker.

Weights come from ``model.checkpoint`` (a ``state_dict`` read with torch's ``weights_only`` unpickler: a file
that holds code is refused), from the previous round, or from a fresh initialisation seeded by
``selection.seed``, done once in the driver and shipped to every worker. Every failure is a ``ModelError`` (a
``UserError``) whose one line names the key and what to change.
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


def read_weights(uri: str, storage_options: dict | None = None) -> dict:
    """A state_dict from any fsspec URI, loaded with ``weights_only=True`` (never arbitrary pickle).

    Args:
        uri: a local path or fsspec URL of a ``torch.save(model.state_dict())`` file (a dict with a ``model`` entry
            holding the state_dict is taken too).
        storage_options: fsspec options for ``uri`` (``pool.storage_options``).

    Returns:
        The state_dict, its tensors on the CPU.

    Raises:
        ModelError: the file cannot be read, holds more than tensors (code), or is no state_dict.
    """
    try:
        fs, path = filesystem(uri, storage_options)
        data = fs.cat_file(path)
    except (FileNotFoundError, OSError) as err:
        raise ModelError(f"model.checkpoint {uri!r} cannot be read: {err}") from None
    try:
        with warnings.catch_warnings():  # e.g. "pickle protocol 4": noise on top of the one error line
            warnings.simplefilter("ignore")
            weights = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
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
    if isinstance(weights, dict) and "model" in weights and isinstance(weights["model"], dict):
        weights = weights["model"]
    if not isinstance(weights, dict):
        raise ModelError(f"model.checkpoint {uri!r} holds a {type(weights).__name__}, not a state_dict")
    return weights


def _first_line(err: BaseException) -> str:
    return next((line.strip() for line in str(err).splitlines() if line.strip()), "(no detail)")


def _unpickling_reason(err: BaseException) -> str:
    """The line of torch's long weights_only message that says what was refused (not its advice to turn it off)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    found = [line for line in lines if "GLOBAL" in line or "Unsupported" in line or "WeightsUnpickler error" in line]
    return (found[-1] if found else lines[-1] if lines else type(err).__name__).rstrip(":")


def build_model(
    spec: ModelConfig, *, seed: int = 0, weights: dict | None = None, storage_options: dict | None = None
) -> nn.Module:
    """The config's model, built by its factory and given its weights.

    Args:
        spec: the ``model`` section: factory, kwargs, checkpoint, classifier.
        seed: seeds the factory's initialisation (used when neither ``weights`` nor a checkpoint is given).
        weights: a state_dict to load; else ``spec.checkpoint`` is read; else the seeded initialisation stays.
        storage_options: fsspec options for the checkpoint (``pool.storage_options``).

    Returns:
        The model, on the CPU, with its classifier layer checked (``classifier_layer``).

    Raises:
        ModelError: the factory cannot be imported, rejects the kwargs or returns no ``nn.Module``; the
            checkpoint cannot be read or does not match the model; no classifier layer is found.
    """
    factory = _import_factory(spec.factory)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            model = factory(**spec.kwargs)
        except TypeError as err:
            raise ModelError(f"model.factory {spec.factory!r} rejected model.kwargs {spec.kwargs}: {err}") from None
    if not isinstance(model, nn.Module):
        raise ModelError(f"model.factory {spec.factory!r} returned a {type(model).__name__}, not a torch.nn.Module")
    if weights is None and spec.checkpoint:
        weights = read_weights(spec.checkpoint, storage_options)
    if weights is not None:
        try:
            model.load_state_dict(weights)
        except RuntimeError as err:
            first = str(err).strip().splitlines()
            detail = " ".join(line.strip() for line in first[:3])
            raise ModelError(f"checkpoint does not match the model built by {spec.factory!r}: {detail}") from None
    classifier_layer(model, spec.classifier)  # fail now, not on a worker
    return model


def classifier_layer(model: nn.Module, name: str | None = None) -> nn.Linear:
    """The model's classifier: the layer whose input is h and whose softmax output is p.

    Args:
        model: the built model.
        name: a module name (``model.classifier``, as ``model.named_modules()`` lists it); None = the last
            ``nn.Linear`` the model registers.

    Returns:
        The ``nn.Linear`` layer.

    Raises:
        ModelError: ``name`` is not an ``nn.Linear`` of the model, or the model has no ``nn.Linear``.
    """
    if name is not None:
        layer = dict(model.named_modules()).get(name)
        if not isinstance(layer, nn.Linear):
            raise ModelError(f"model.classifier {name!r} is not an nn.Linear module of the model")
        return layer
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ModelError("the model has no nn.Linear layer to use as the classifier; name one in model.classifier")
    return linears[-1]
