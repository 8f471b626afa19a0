"""`select`: the public entry point of the numeric core, and the strategy table behind it."""

from __future__ import annotations

import difflib
import numbers
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from . import badge, bait, baselines
from .errors import UserError
from .inputs import check_budget, check_labeled, check_probs_feats
from .shards import LocalShards, ShardGroup


@dataclass(frozen=True)
class Selection:
    """Picked rows as (shard, local row) in pick order, with a score per pick where the strategy has one."""

    picks: list[tuple[int, int]]
    scores: list[float] | None = None


def _positive_number(name):
    def check(v):
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not np.isfinite(v) or v <= 0:
            raise UserError(f"option {name} must be a positive number, got {v!r}")
        return float(v)

    return check


def _at_least_one(name):
    def check(v):
        v = _positive_number(name)(v)
        if v < 1:
            raise UserError(f"option {name} must be >= 1, got {v!r}")
        return v

    return check


def _positive_int_or_none(name):
    def check(v):
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v <= 0:
            raise UserError(f"option {name} must be a positive integer or None, got {v!r}")
        return int(v)

    return check


def _positive_int(name):
    def check(v):
        if v is None:
            raise UserError(f"option {name} must be a positive integer, got None")
        return _positive_int_or_none(name)(v)

    return check


def _choice(name, values):
    def check(v):
        if v not in values:
            raise UserError(f"option {name} must be one of {', '.join(map(repr, values))}, got {v!r}")
        return v

    return check


def _flag(v):
    return bool(v)


@dataclass(frozen=True)
class Strategy:
    shard: type
    run: Callable[..., Selection]
    options: dict[str, tuple[Any, Callable[[Any], Any]]]  # name -> (default, checker)


def _run_badge(group, budget, seed, progress):
    return Selection(badge.kmeanspp(group, budget, seed, progress))


def _run_badge_scalable(group, budget, seed, rounds, oversampling, progress):
    return Selection(badge.kmeans_parallel(group, budget, seed, rounds, oversampling, progress))


def _run_random(group, budget, seed):
    return Selection(baselines.random_pick(group, budget, seed))


def _uncertainty_runner(name):
    def run(group, budget, seed):
        return Selection(*baselines.top_k(group, name, budget))

    return run


def _run_coreset(group, budget, seed, progress):
    return Selection(*baselines.kcentre(group, budget, progress))


def _run_bait(group, budget, seed, **opts):
    picks, scores, _ = bait.bait(group, budget, **opts)
    return Selection(picks, scores)


_PROGRESS = {"progress": (False, _flag)}

STRATEGIES: dict[str, Strategy] = {
    "badge": Strategy(badge.BadgeShard, _run_badge, dict(_PROGRESS)),
    "badge-scalable": Strategy(
        badge.BadgeShard,
        _run_badge_scalable,
        {
            "rounds": (5, _positive_int("rounds")),
            "oversampling": (2.0, _positive_number("oversampling")),
            **_PROGRESS,
        },
    ),
    "bait": Strategy(
        bait.BaitShard,
        _run_bait,
        {
            "lam": (1.0, _positive_number("lam")),
            "oversample": (2.0, _at_least_one("oversample")),
            "weighting": ("reference", _choice("weighting", ("reference", "mean"))),
            "pca_dim": (None, _positive_int_or_none("pca_dim")),
            "top_classes": (None, _positive_int_or_none("top_classes")),
            **_PROGRESS,
        },
    ),
    "random": Strategy(baselines.BaselineShard, _run_random, {}),
    "entropy": Strategy(baselines.BaselineShard, _uncertainty_runner("entropy"), {}),
    "margin": Strategy(baselines.BaselineShard, _uncertainty_runner("margin"), {}),
    "confidence": Strategy(baselines.BaselineShard, _uncertainty_runner("confidence"), {}),
    "coreset": Strategy(baselines.BaselineShard, _run_coreset, dict(_PROGRESS)),
}


def strategy_spec(name: str) -> Strategy:
    if not isinstance(name, str) or name not in STRATEGIES:
        hint = difflib.get_close_matches(str(name), STRATEGIES, n=1)
        extra = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise UserError(f"unknown strategy {name!r}{extra}; choose one of {', '.join(STRATEGIES)}")
    return STRATEGIES[name]


def resolve_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """Options with defaults filled in; unknown names and bad values are UserErrors."""
    spec = strategy_spec(name)
    for key in options:
        if key not in spec.options:
            valid = ", ".join(spec.options) or "none"
            hint = difflib.get_close_matches(key, spec.options, n=1)
            extra = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise UserError(f"unknown option {key!r} for strategy {name!r}{extra}; valid options: {valid}")
    return {k: check(options.get(k, default)) for k, (default, check) in spec.options.items()}


def check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise UserError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def run_strategy(name: str, group: ShardGroup, budget: int, seed: int, options: dict[str, Any]) -> Selection:
    """Runs a strategy's coordinator loop over any shard group (local or Ray)."""
    return STRATEGIES[name].run(group, budget, seed, **options)


def select(strategy: str, probs, feats, budget: int, *, labeled=None, seed: int = 0, **options) -> np.ndarray:
    """Rows to label next, in pick order.

    probs: (N, K) softmax probabilities; feats: (N, D) inputs of the final linear
    layer. numpy arrays or torch tensors on any device; the work stays on that
    device, in float64 if either input is float64 and float32 otherwise.
    labeled: None, a boolean mask of length N, or row indices already labeled:
    never returned; BAIT uses them in the labeled Fisher, coreset as centres.
    Returns `budget` distinct row indices as a numpy int64 array.
    """
    options = resolve_options(strategy, options)
    seed = check_seed(seed)
    probs, feats = check_probs_feats(probs, feats)
    mask = check_labeled(labeled, len(probs), probs.device)
    budget = check_budget(budget, int((~mask).sum()))
    if strategy == "bait":
        bait.check_reduction(options, probs.shape[1], feats.shape[1])
    with torch.inference_mode(), bait.numerical_errors():
        shard = STRATEGIES[strategy].shard(probs, feats, mask)
        selection = run_strategy(strategy, LocalShards([shard]), budget, seed, options)
    return np.fromiter((i for _, i in selection.picks), dtype=np.int64, count=len(selection.picks))
