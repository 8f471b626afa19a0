"""Strategy options: one frozen dataclass per strategy, whose defaults are the only defaults (the config's
typed selection section is built from these), checked on construction with errors that say what to change."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from .errors import UserError


def _check_positive(name: str, value: Any, *, at_least: float = 0.0, integer: bool = False, optional: bool = False):
    if value is None and optional:
        return None
    if integer:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
            raise UserError(f"option {name} must be a positive integer{' or None' if optional else ''}, got {value!r}")
        return int(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise UserError(f"option {name} must be a positive number, got {value!r}")
    if value < at_least:
        raise UserError(f"option {name} must be >= {at_least:g}, got {value!r}")
    return float(value)


T = TypeVar("T")


def option(default: T, description: str) -> T:
    """A strategy option's field: its default and the one line that documents it (in the config's JSON Schema,
    README's config reference and the API docs)."""
    return field(default=default, metadata={"description": description})


@dataclass(frozen=True)
class StrategyOptions:
    """A strategy's options: a frozen dataclass whose defaults are the only defaults (the config's too)."""


@dataclass(frozen=True)
class NoOptions(StrategyOptions):
    pass


@dataclass(frozen=True)
class BadgeOptions(StrategyOptions):
    prune: bool = option(
        True, "skip the rows that bounds prove a new centre cannot change (the same picks); false reads every row"
    )

    def __post_init__(self):
        if not isinstance(self.prune, bool):
            raise UserError(f"option prune must be true or false, got {self.prune!r}")


@dataclass(frozen=True)
class BadgeScalableOptions(StrategyOptions):
    rounds: int = option(5, "k-means|| rounds (passes over the pool)")
    oversampling: float = option(2.0, "candidates drawn per round, as a multiple of the budget")

    def __post_init__(self):
        object.__setattr__(self, "rounds", _check_positive("rounds", self.rounds, integer=True))
        object.__setattr__(self, "oversampling", _check_positive("oversampling", self.oversampling))


@dataclass(frozen=True)
class BaitOptions(StrategyOptions):
    lam: float = option(1.0, "ridge of M = lam I + ...; acts relative to |h|^2 (the reference uses 1e-2 for CIFAR)")
    oversample: float = option(2.0, "forward steps, as a multiple of the budget, before backward pruning")
    weighting: Literal["reference", "mean"] = option(
        "reference", "labeled vs batch Fisher weights: reference (1/(n_L+B) and B/(n_L+B)) or mean (both 1/(n_L+B))"
    )
    pca_dim: int | None = option(None, "project h onto its top pca_dim eigenvectors (large K*D); null = no projection")
    top_classes: int | None = option(None, "keep each row's top_classes most likely classes (large K); null = all")
    mode: Literal["auto", "exact", "candidates"] = option(
        "auto", "greedy steps over every unlabeled row (exact) or over candidates (large pools); auto picks by size"
    )
    candidates: float = option(25.0, "candidate mode: rows kept for the greedy steps, per forward step")

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


# Each strategy's options type, by name: what the config needs to know about strategies, without torch (the
# CLI checks a config before it imports the numeric core). dist_al.core.api.STRATEGIES adds the code.
STRATEGY_OPTIONS: dict[str, type[StrategyOptions]] = {
    "badge": BadgeOptions,
    "badge-scalable": BadgeScalableOptions,
    "bait": BaitOptions,
    "random": NoOptions,
    "entropy": NoOptions,
    "margin": NoOptions,
    "confidence": NoOptions,
    "coreset": NoOptions,
}
