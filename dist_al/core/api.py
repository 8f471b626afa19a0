"""`select`: the public entry point of the numeric core, and the strategy table behind it."""

from __future__ import annotations

import difflib
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any, TypeAlias

import numpy as np
import torch

from . import badge, bait, baselines
from .errors import UserError
from .inputs import check_budget, check_labeled, check_probs_feats
from .options import STRATEGY_OPTIONS, BaitOptions, StrategyOptions
from .shards import LocalShards, ShardGroup


@dataclass(frozen=True)
class Selection:
    """Picked rows as (shard, local row) in pick order, with a score per pick where the strategy has one."""

    picks: list[tuple[int, int]]
    scores: list[float] | None = None


@dataclass(frozen=True)
class Strategy:
    shard: type
    run: Callable[..., Selection]  # (group, budget, seed, options, progress) -> Selection
    options: type[StrategyOptions]


def _run_badge(group, budget, seed, options, progress):
    return Selection(badge.kmeanspp(group, budget, seed, progress, options.prune))


def _run_badge_scalable(group, budget, seed, options, progress):
    return Selection(badge.kmeans_parallel(group, budget, seed, options.rounds, options.oversampling, progress))


def _run_random(group, budget, seed, options, progress):
    return Selection(baselines.random_pick(group, budget, seed))


def _uncertainty_runner(name):
    def run(group, budget, seed, options, progress):
        return Selection(*baselines.top_k(group, name, budget))

    return run


def _run_coreset(group, budget, seed, options, progress):
    return Selection(*baselines.kcentre(group, budget, progress))


def _run_bait(group, budget, seed, options, progress):
    picks, scores, _ = bait.bait(group, budget, options, progress=progress)
    return Selection(picks, scores)


_CODE = {
    "badge": (badge.BadgeShard, _run_badge),
    "badge-scalable": (badge.BadgeShard, _run_badge_scalable),
    "bait": (bait.BaitShard, _run_bait),
    "random": (baselines.BaselineShard, _run_random),
    "entropy": (baselines.BaselineShard, _uncertainty_runner("entropy")),
    "margin": (baselines.BaselineShard, _uncertainty_runner("margin")),
    "confidence": (baselines.BaselineShard, _uncertainty_runner("confidence")),
    "coreset": (baselines.BaselineShard, _run_coreset),
}
STRATEGIES: dict[str, Strategy] = {name: Strategy(*_CODE[name], options) for name, options in STRATEGY_OPTIONS.items()}


def strategy_spec(name: str) -> Strategy:
    if not isinstance(name, str) or name not in STRATEGIES:
        hint = difflib.get_close_matches(str(name), STRATEGIES, n=1)
        extra = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise UserError(f"unknown strategy {name!r}{extra}; choose one of {', '.join(STRATEGIES)}")
    return STRATEGIES[name]


def resolve_options(name: str, options: StrategyOptions | dict[str, Any] | None = None) -> StrategyOptions:
    """The strategy's options object from keyword values (defaults filled in); unknown names and bad values are
    UserErrors."""
    kind = strategy_spec(name).options
    if isinstance(options, kind):
        return options
    if isinstance(options, StrategyOptions):
        raise UserError(f"strategy {name!r} takes {kind.__name__}, got {type(options).__name__}")
    given = dict(options or {})
    valid = [f.name for f in fields(kind)]
    for key in given:
        if key not in valid:
            hint = difflib.get_close_matches(key, valid, n=1)
            extra = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise UserError(
                f"unknown option {key!r} for strategy {name!r}{extra}; valid options: {', '.join(valid) or 'none'}"
            )
    return kind(**given)


def check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise UserError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def run_strategy(
    name: str, group: ShardGroup, budget: int, seed: int, options: StrategyOptions, progress: bool = False
) -> Selection:
    """Runs a strategy's coordinator loop over any shard group (local or Ray)."""
    return STRATEGIES[name].run(group, budget, seed, options, progress)


ArrayLike: TypeAlias = np.ndarray | torch.Tensor  # numpy arrays or torch tensors on any device


def select(
    strategy: str,
    probs: ArrayLike,
    feats: ArrayLike,
    budget: int,
    *,
    labeled: ArrayLike | Sequence[int] | None = None,
    seed: int = 0,
    progress: bool = False,
    **options: Any,
) -> np.ndarray:
    """Rows to label next, in pick order, from the model's outputs on the pool (one process, no Ray).

    Inputs are numpy arrays or torch tensors on any device; the work stays on that device, in float64 if either
    input is float64 and float32 otherwise. The same picks as the textbook algorithm (tested against dense
    float64 oracles in ``dist_al.testing.oracles``); ties go to the lowest row.

    Args:
        strategy: one of `STRATEGIES`: ``badge``, ``badge-scalable``, ``bait``, ``random``, ``entropy``,
            ``margin``, ``confidence``, ``coreset``.
        probs: (N, K) softmax probabilities, K >= 2; each row sums to 1.
        feats: (N, D) inputs of the model's final linear layer (the penultimate features).
        budget: rows to pick, at most the number of unlabeled rows.
        labeled: None, a boolean mask of length N, or indices of rows already labeled: never returned; BAIT
            counts them in its labeled Fisher, coreset uses them as initial centres.
        seed: seeds the strategy's random draws (BADGE's D^2 sampling, random); a non-negative integer.
        progress: show a progress bar on a terminal.
        **options: the strategy's options, the fields of its options type in `dist_al.core.options`
            (``rounds``, ``oversampling`` for badge-scalable; ``lam``, ``oversample``, ``weighting``, ``pca_dim``,
            ``top_classes`` for bait); the others take none.

    Returns:
        ``budget`` distinct row indices, a numpy int64 array in pick order.

    Raises:
        dist_al.core.errors.UserError: (a ValueError) an unknown strategy or option, an option out of range,
            arrays of the wrong shape, dtype or values (NaN/inf, probabilities that do not sum to 1), a bad
            ``labeled`` or ``seed``, a budget above the unlabeled rows, or BAIT's d = K * D above
            ``dist_al.core.bait.MAX_FISHER_DIM``; the message names the problem and what to change.
    """
    opts = resolve_options(strategy, options)
    seed = check_seed(seed)
    probs, feats = check_probs_feats(probs, feats)
    mask = check_labeled(labeled, len(probs), probs.device)
    budget = check_budget(budget, int((~mask).sum()))
    if isinstance(opts, BaitOptions):
        bait.check_reduction(opts, probs.shape[1], feats.shape[1])
    with torch.inference_mode(), bait.numerical_errors():
        shard = STRATEGIES[strategy].shard(probs, feats, mask)
        selection = run_strategy(strategy, LocalShards([shard]), budget, seed, opts, bool(progress))
    return np.fromiter((i for _, i in selection.picks), dtype=np.int64, count=len(selection.picks))
