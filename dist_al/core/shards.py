"""The seam between the selection algorithms and where rows live.

Every selection algorithm is written once, as a coordinator loop that talks to
a group of shards through `map` (same call on every shard, results in shard
order) and `call` (one shard), naming the shard's method by reference
(``group.map(BadgeShard.add_centre, centre)``), so an IDE, grep and the type
checker follow it. `LocalShards` runs them in this process; the Ray layer
provides the same methods over actors. One loop for both is what makes the
distributed selection equal to the single-process one.

Global row order is shard order, then row order inside a shard.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch


class ShardGroup(Protocol):
    def map(self, method: Callable, *args: Any) -> list: ...

    def call(self, shard: int, method: Callable, *args: Any) -> Any: ...

    def relay(self, shard: int, method: Callable, args: tuple, then: Callable, *then_args: Any) -> tuple[Any, list]:
        """Calls ``method(*args)`` on one shard, then ``then(value, *then_args)`` on every shard with the value it
        returned; answers (value, the results in shard order). The value goes from shard to shards without the
        coordinator waiting in between: one round trip where call + map take two."""


class LocalShards:
    def __init__(self, shards: Sequence[Any]):
        self.shards = list(shards)

    def map(self, method: Callable, *args: Any) -> list:
        return [method(s, *args) for s in self.shards]

    def call(self, shard: int, method: Callable, *args: Any) -> Any:
        return method(self.shards[shard], *args)

    def relay(self, shard: int, method: Callable, args: tuple, then: Callable, *then_args: Any) -> tuple[Any, list]:
        value = self.call(shard, method, *args)
        return value, self.map(then, value, *then_args)


# ||x - z||^2 computed as |x|^2 + |z|^2 - 2<x, z> keeps a round-off residue of a few ulps of
# |x|^2 + |z|^2 when x == z; below this relative size a distance is taken to be exactly 0,
# so coincident rows tie exactly and ties go to the lowest row as documented.
ROUNDOFF_ULPS = 64


def snap_roundoff_(dist: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Zeroes, in place, distances that are round-off of the factorised formula; scale (|x|^2 + |z|^2,
    per distance) is overwritten."""
    return dist.masked_fill_(dist <= scale.mul_(ROUNDOFF_ULPS * torch.finfo(dist.dtype).eps), 0.0)


def argmax_first(values: Sequence[float]) -> int:
    """Index of the largest value; ties go to the lowest index (= lowest global row)."""
    best = 0
    for i, v in enumerate(values):
        if v > values[best]:
            best = i
    return best


def locate(totals: Sequence[float], target: float) -> tuple[int, float]:
    """The shard whose running total first exceeds target, and target minus the totals before it.

    On round-off (target at or past the grand total) it answers the last non-empty shard.
    """
    running = 0.0
    last = None
    for i, t in enumerate(totals):
        if t <= 0:
            continue
        if running + t > target:
            return i, target - running
        last, last_running = i, running
        running += t
    if last is None:
        raise RuntimeError("locate() needs at least one positive total")
    return last, target - last_running


def offsets(sizes: Sequence[int]) -> list[int]:
    out, acc = [], 0
    for s in sizes:
        out.append(acc)
        acc += s
    return out
