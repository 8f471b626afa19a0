"""Input checking for the core: every user mistake becomes one clear UserError."""

from __future__ import annotations

import numbers

import numpy as np
import torch

from .errors import UserError

# Probabilities from a float32 softmax over many classes drift from 1 by ~1e-6;
# a 1e-3 gap means the caller passed logits, unnormalised scores or a wrong axis.
PROB_SUM_TOLERANCE = {torch.float64: 1e-6, torch.float32: 1e-3}


def as_tensor(name: str, x, ndim: int) -> torch.Tensor:
    """Wraps numpy or torch input without copying and checks rank and values."""
    if isinstance(x, np.ndarray):
        if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
            raise UserError(f"{name} must be a real numeric array, got dtype {x.dtype}")
        x = torch.from_numpy(np.ascontiguousarray(x))
    elif not isinstance(x, torch.Tensor):
        raise UserError(f"{name} must be a numpy array or a torch tensor, got {type(x).__name__}")
    if x.ndim != ndim:
        raise UserError(f"{name} must have {ndim} dimensions, got shape {tuple(x.shape)}")
    if x.is_complex() or x.dtype == torch.bool:
        raise UserError(f"{name} must be real-valued, got dtype {x.dtype}")
    return x


def common_float_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float64 if any input is float64, else float32 (half inputs are too coarse for BAIT)."""
    if any(t.dtype == torch.float64 for t in tensors):
        return torch.float64
    return torch.float32


def check_shapes(probs: torch.Tensor, feats: torch.Tensor) -> None:
    """probs (N, K) with K >= 2 and feats (N, D) with D >= 1 describing the same N > 0 rows, on one device."""
    n, k = probs.shape
    if feats.shape[0] != n:
        raise UserError(f"probs has {n} rows but feats has {feats.shape[0]}: they must describe the same rows")
    if probs.device != feats.device:
        raise UserError(f"probs is on {probs.device} but feats is on {feats.device}: put both on one device")
    if n == 0:
        raise UserError("the pool is empty: probs and feats have 0 rows")
    if k < 2:
        raise UserError(f"probs must have at least 2 classes (columns), got {k}")
    if feats.shape[1] == 0:
        raise UserError("feats has 0 columns")


def first_invalid(probs: torch.Tensor, feats: torch.Tensor, tol: float) -> tuple[str, int] | None:
    """The first thing wrong with the values, as (what, row), or None if they are valid.

    The one definition of valid (p, h), for `select` and for the Ray workers' check of each
    embedded batch. what: "probs_nonfinite", "feats_nonfinite", "probs_negative" or
    "probs_sum" (a row off 1 by more than tol, see prob_sum_tolerance).
    """
    for name, t in (("probs", probs), ("feats", feats)):
        lo, hi = torch.aminmax(t)  # one pass; NaN and +-inf all show up in min or max
        if not (bool(torch.isfinite(lo)) and bool(torch.isfinite(hi))):
            return f"{name}_nonfinite", int((~torch.isfinite(t)).any(1).nonzero()[0, 0])
    if bool((probs < 0).any()):
        return "probs_negative", int((probs < 0).any(1).nonzero()[0, 0])
    gap = (probs.sum(1) - 1).abs()
    if bool((gap > tol).any()):
        return "probs_sum", int((gap > tol).nonzero()[0, 0])
    return None


def prob_sum_tolerance(probs: torch.Tensor) -> float:
    """How far from 1 a row of probs (as the caller gave it, before any cast) may sum."""
    return PROB_SUM_TOLERANCE[torch.float64 if probs.dtype == torch.float64 else torch.float32]


def check_probs_feats(probs, feats) -> tuple[torch.Tensor, torch.Tensor]:
    probs = as_tensor("probs", probs, 2)
    feats = as_tensor("feats", feats, 2)
    check_shapes(probs, feats)
    tol = prob_sum_tolerance(probs)
    dtype = common_float_dtype(probs, feats)
    probs, feats = probs.to(dtype), feats.to(dtype)
    bad = first_invalid(probs, feats, tol)
    if bad is None:
        return probs, feats
    what, row = bad
    if what.endswith("_nonfinite"):
        raise UserError(f"{what.split('_')[0]} contains NaN or inf values (first at row {row})")
    if what == "probs_negative":
        raise UserError(f"probs has negative entries (first at row {row}): pass softmax probabilities, not logits")
    raise UserError(
        f"probs rows must sum to 1 (tolerance {tol:g}); row {row} sums to {float(probs[row].sum()):.6g}: "
        "pass softmax probabilities over the class axis"
    )


def check_labeled(labeled, n: int, device: torch.device) -> torch.Tensor:
    """Boolean mask of length n from None, a boolean mask, or row indices (array, tensor or list)."""
    if labeled is None:
        return torch.zeros(n, dtype=torch.bool, device=device)
    array: np.ndarray | None = None  # what is read as numpy: anything but a boolean or integer tensor
    if isinstance(labeled, torch.Tensor):
        lab = labeled.detach()
        if lab.dtype != torch.bool and (lab.is_floating_point() or lab.is_complex()):
            array = lab.cpu().numpy()
    else:
        try:
            array = np.asarray(labeled)
        except (ValueError, TypeError):
            raise UserError("labeled must be a boolean mask or an array of row indices") from None
    shape = tuple(lab.shape) if array is None else array.shape
    if len(shape) != 1:
        raise UserError(f"labeled must be 1-dimensional (a mask or row indices), got shape {shape}")
    if array is not None:
        lab = _labeled_tensor(array, n)
    if lab.dtype == torch.bool:
        if lab.numel() != n:
            raise UserError(f"labeled mask has length {lab.numel()} but the pool has {n} rows")
        return lab.to(device)
    bad = (lab < 0) | (lab >= n)
    if bool(bad.any()):
        first = labeled[int(bad.nonzero()[0, 0])]
        first = first.item() if hasattr(first, "item") else first
        raise UserError(f"labeled index {first} is out of range for a pool of {n} rows")
    mask = torch.zeros(n, dtype=torch.bool, device=device)
    mask[lab.to(device=device, dtype=torch.long)] = True
    return mask


def _labeled_tensor(array: np.ndarray, n: int) -> torch.Tensor:
    """A 1-D numpy mask or index array as a tensor; indices out of range stay out of range."""
    if array.dtype == bool:
        return torch.from_numpy(np.ascontiguousarray(array))
    if len(array) == 0:
        return torch.zeros(0, dtype=torch.long)
    if array.dtype.kind == "f":
        if not np.isfinite(array).all() or (array != np.round(array)).any():
            raise UserError("labeled indices must be integers (or pass a boolean mask)")
        return torch.from_numpy(array.astype(np.float64))
    if array.dtype.kind in "iu":
        return torch.from_numpy(np.clip(array, -1, n).astype(np.int64))
    raise UserError(f"labeled must be a boolean mask or integer row indices, got values of type {array.dtype}")


def check_budget(budget, n_unlabeled: int) -> int:
    if isinstance(budget, bool) or not isinstance(budget, numbers.Integral):
        raise UserError(f"budget must be an integer, got {budget!r}")
    budget = int(budget)
    if budget <= 0:
        raise UserError(f"budget must be positive, got {budget}")
    if budget > n_unlabeled:
        raise UserError(f"budget {budget} is larger than the {n_unlabeled} unlabeled rows")
    return budget
