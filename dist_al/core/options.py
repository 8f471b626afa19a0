"""Strategy options: one frozen dataclass per strategy, whose defaults are the only defaults (the config's
typed selection section is built from these), checked on construction with errors that say what to change."""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from .errors import UserError


def _check_positive(name: str, value: Any, *, at_least: float = 0.0, integer: bool = False, optional: bool = False):
    if value is None and optional:
        return None
    if integer:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
            raise UserError(f"option {name} must be a positive integer{' or None' if optional else ''}, got {value!r}")
        return int(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value) or value <= 0:
        raise UserError(f"option {name} must be a positive number, got {value!r}")
    if value < at_least:
        raise UserError(f"option {name} must be >= {at_least:g}, got {value!r}")
    return float(value)


class StrategyOptions:
    """A strategy's options: a frozen dataclass whose defaults are the only defaults (the config's too)."""


@dataclass(frozen=True)
class NoOptions(StrategyOptions):
    pass


@dataclass(frozen=True)
class BadgeScalableOptions(StrategyOptions):
    rounds: int = 5  # k-means|| rounds (passes over the pool)
    oversampling: float = 2.0  # candidates per round, as a multiple of the budget

    def __post_init__(self):
        object.__setattr__(self, "rounds", _check_positive("rounds", self.rounds, integer=True))
        object.__setattr__(self, "oversampling", _check_positive("oversampling", self.oversampling))


@dataclass(frozen=True)
class BaitOptions(StrategyOptions):
    lam: float = 1.0  # ridge of M; the reference uses 1e-2 for CIFAR
    oversample: float = 2.0  # forward steps, as a multiple of the budget, before backward pruning
    weighting: Literal["reference", "mean"] = "reference"  # labeled vs batch Fisher weights (DESIGN.md 4)
    pca_dim: int | None = None  # project h onto its top pca_dim eigenvectors (large K*D)
    top_classes: int | None = None  # keep each row's top_classes most likely classes (large K)
    mode: Literal["auto", "exact", "candidates"] = "auto"  # greedy steps over all rows or over candidates
    candidates: float = 25.0  # candidate mode: rows kept, as a multiple of the forward steps

    def __post_init__(self):
        object.__setattr__(self, "lam", _check_positive("lam", self.lam))
        object.__setattr__(self, "oversample", _check_positive("oversample", self.oversample, at_least=1.0))
        if self.weighting not in ("reference", "mean"):
            raise UserError(f"option weighting must be one of 'reference', 'mean', got {self.weighting!r}")
        object.__setattr__(self, "pca_dim", _check_positive("pca_dim", self.pca_dim, integer=True, optional=True))
        object.__setattr__(
            self, "top_classes", _check_positive("top_classes", self.top_classes, integer=True, optional=True)
        )
        if self.mode not in ("auto", "exact", "candidates"):
            raise UserError(f"option mode must be one of 'auto', 'exact', 'candidates', got {self.mode!r}")
        object.__setattr__(self, "candidates", _check_positive("candidates", self.candidates, at_least=1.0))
