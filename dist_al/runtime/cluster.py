"""The Ray cluster a command runs on, and whether it can hold the workers the command asks for.

Ray queues an actor (or a placement group) it cannot place and waits for resources, silently and without end.
dist-al decides first, by the kind of cluster:

* The private local Ray that dist-al starts itself (neither ``cluster.address`` nor ``RAY_ADDRESS`` names a
  cluster) cannot grow. Its logical CPUs are sized to what the command asks for (at least the machine's cores), so
  any number of CPU workers fits: logical CPUs only count scheduling slots, and each worker's torch threads are its
  share of the real cores (``worker_threads``), so the cores are not oversubscribed. What can never fit is refused
  at once, before any actor starts or anything is written, with a ``ClusterTooSmall`` naming the numbers and the
  keys to change: GPUs the machine does not have, or more than ``LOCAL_WORKERS_PER_CORE`` worker processes per core
  (each is a Python process with torch and its shard resident).
* A cluster dist-al connects to (``cluster.address``, or ``RAY_ADDRESS`` as inside a Ray Job; or a Ray the caller
  initialised) may grow: an autoscaler, KubeRay, nodes joining. dist-al waits for it, says so every
  ``PROGRESS_SECONDS`` at WARNING (how many workers have started, what each of the rest needs, what is free), and
  after ``cluster.start_timeout_s`` releases every actor and placement group it made and raises ``ClusterTooSmall``.

ShardWorkers are waited for as actors (started = placed and constructed). Ray Train's workers are waited for as
one single-bundle placement group each, released before the trainer starts: Ray Train V2 itself waits 60 s for its
worker group, then retries without end (its controller failures are unlimited by default).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from dataclasses import dataclass
from typing import Any

import ray

from dist_al.config import ClusterConfig, Config, TrainConfig
from dist_al.core.errors import UserError

log = logging.getLogger(__name__)

LOCAL_WORKERS_PER_CORE = 4
PROGRESS_SECONDS = 10.0

# (machine cores, logical CPUs) of the private local Ray dist-al started; None when there is none.
_local: tuple[int, int] | None = None


class ClusterTooSmall(UserError):
    """The workers asked for cannot all be placed: never on this local Ray, or not within cluster.start_timeout_s."""


@dataclass(frozen=True)
class WorkerGroup:
    """``count`` workers of one kind that live at the same time, each asking for ``cpus`` and ``gpus``."""

    kind: str  # "ShardWorker", "Ray Train worker"
    count: int
    cpus: float
    gpus: float
    keys: tuple[str, str, str]  # the config keys of count, cpus and gpus, for the messages

    def bundle(self) -> dict[str, float]:
        return {k: v for k, v in (("CPU", self.cpus), ("GPU", self.gpus)) if v > 0}

    def each(self) -> str:
        return f"{self.cpus:g} CPU and {self.gpus:g} GPU each"


def shard_workers(cluster: ClusterConfig) -> WorkerGroup:
    return WorkerGroup(
        "ShardWorker",
        cluster.workers,
        cluster.cpus_per_worker,
        cluster.gpus_per_worker,
        ("cluster.workers", "cluster.cpus_per_worker", "cluster.gpus_per_worker"),
    )


def train_workers(train: TrainConfig) -> WorkerGroup | None:
    """Ray Train's worker group (None with ``backend: local``: no Ray workers)."""
    if train.backend != "ray":
        return None
    return WorkerGroup(
        "Ray Train worker",
        train.workers,
        train.cpus_per_worker,
        1 if train.use_gpu else 0,
        ("train.workers", "train.cpus_per_worker", "train.use_gpu"),
    )


# -------------------------------------------------------------------------- the session


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@contextlib.contextmanager
def ray_session(address: str | None, num_cpus: int | None = None, *, groups: tuple[WorkerGroup, ...] = ()):
    """Connects to ``address`` (else RAY_ADDRESS, which a Ray Job's driver has), or starts a private local Ray
    for the duration, with ``num_cpus`` logical CPUs (default: sized to ``groups``, the workers that will live at
    once) and refuses ``groups`` it can never hold. Never silently joins a cluster some other ``ray start`` left
    on this machine. Inside a Ray already initialised, it does nothing."""
    global _local
    if ray.is_initialized():
        yield
        return
    kwargs: dict[str, Any] = {"logging_level": logging.ERROR, "log_to_driver": False}
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, **kwargs)
    else:
        num_cpus = num_cpus or max(cores(), math.ceil(sum(g.count * g.cpus for g in groups) - 1e-9))
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, **kwargs)
        _local = (cores(), num_cpus)
    try:
        resources = ray.cluster_resources()
        log.info(
            "Ray at %s: %d node(s), %g CPUs, %g GPUs",
            ray.get_runtime_context().gcs_address,
            len([n for n in ray.nodes() if n["Alive"]]),
            resources.get("CPU", 0),
            resources.get("GPU", 0),
        )
        if _local is not None:
            _check_local(groups, resources.get("GPU", 0))
        yield
    finally:
        _local = None
        ray.shutdown()


def cluster_session(cfg: Config, *, shards: bool = True, train: bool = False):
    """``ray_session`` for a command that runs ShardWorkers and/or Ray Train's workers (both at once: simulate)."""
    groups = ([shard_workers(cfg.cluster)] if shards else []) + ([train_workers(cfg.train)] if train else [])
    return ray_session(cfg.cluster.address, groups=tuple(g for g in groups if g is not None))


def _check_local(groups: tuple[WorkerGroup, ...], gpus: float) -> None:
    processes = sum(g.count for g in groups)
    limit = LOCAL_WORKERS_PER_CORE * cores()
    if processes > limit:
        asked = " and ".join(f"{g.count} {g.kind}s" for g in groups)
        raise ClusterTooSmall(
            f"{asked} are more worker processes than a local Ray runs on this machine's {cores()} CPU cores "
            f"(at most {limit}, {LOCAL_WORKERS_PER_CORE} per core): lower {' or '.join(g.keys[0] for g in groups)}, "
            "or set cluster.address to a Ray cluster"
        )
    # Ray places a fractional GPU request inside one GPU, a whole one on whole GPUs.
    on_gpus = [g for g in groups if g.gpus > 0]
    need = sum(g.count * g.gpus if g.gpus >= 1 else math.ceil(g.count / math.floor(1 / g.gpus + 1e-9)) for g in on_gpus)
    if need > gpus:
        asked = " and ".join(f"{g.count} {g.kind}s with {g.gpus:g} GPU each" for g in on_gpus)
        keys = " or ".join(f"{g.keys[0]} or {g.keys[2]}" for g in on_gpus)
        raise ClusterTooSmall(
            f"{asked} need {need:g} GPUs, the local Ray has {gpus:g}: change {keys}, "
            "or set cluster.address to a Ray cluster with GPUs"
        )


def worker_threads(cpus_per_worker: float) -> int:
    """Torch threads of a worker that asked for ``cpus_per_worker`` CPUs: as many, but on a private local Ray
    whose logical CPUs outnumber the cores, its share of the real cores (at least 1)."""
    share = cpus_per_worker if _local is None else cpus_per_worker * min(1.0, _local[0] / _local[1])
    return max(1, int(share))


# -------------------------------------------------------------------------- waiting on a cluster that may grow


def wait_started(actors: list, probes: list, group: WorkerGroup, timeout_s: float) -> None:
    """Waits until every actor has answered its probe (a cheap call: it is placed and constructed); on a cluster
    that does not place them all within ``timeout_s``, kills every one of them and raises ClusterTooSmall."""
    try:
        _wait(probes, group, timeout_s, "started")
    except ClusterTooSmall:
        for actor in actors:
            ray.kill(actor, no_restart=True)
        raise


def wait_placeable(group: WorkerGroup | None, timeout_s: float) -> None:
    """Waits until the cluster can place ``group`` beside what already runs there (one placement group of one
    bundle per worker), then releases the placement groups; ClusterTooSmall after ``timeout_s``."""
    if group is None or not group.bundle():
        return
    from ray.util.placement_group import placement_group, remove_placement_group

    groups = [placement_group([group.bundle()]) for _ in range(group.count)]
    try:
        _wait([pg.ready() for pg in groups], group, timeout_s, "placeable")
    finally:
        for pg in groups:
            remove_placement_group(pg)


def _wait(refs: list, group: WorkerGroup, timeout_s: float, done: str) -> None:
    t0 = time.monotonic()
    pending, ready = list(refs), 0
    while True:
        left = timeout_s - (time.monotonic() - t0)
        got, pending = ray.wait(pending, num_returns=len(pending), timeout=max(0.0, min(PROGRESS_SECONDS, left)))
        ready += len(got)
        if not pending:
            return
        free, total = ray.available_resources(), ray.cluster_resources()
        have = (
            f"the cluster has {free.get('CPU', 0):g} of {total.get('CPU', 0):g} CPUs and "
            f"{free.get('GPU', 0):g} of {total.get('GPU', 0):g} GPUs free"
        )
        if time.monotonic() - t0 >= timeout_s:
            raise ClusterTooSmall(
                f"the cluster had {ready} of {group.count} {group.kind}s {done} after {timeout_s:g} s "
                f"(cluster.start_timeout_s); they need {group.each()}, and {have}: change {', '.join(group.keys)}, "
                "add nodes, or raise cluster.start_timeout_s"
            )
        log.warning(
            "waiting for the cluster: %d of %d %ss %s; the other %d need %s, %s; giving up in %.0f s "
            "(cluster.start_timeout_s)",
            ready,
            group.count,
            group.kind,
            done,
            len(pending),
            group.each(),
            have,
            timeout_s - (time.monotonic() - t0),
        )
