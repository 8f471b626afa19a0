"""The sharded pool: ShardWorker actors that embed the pool once and keep it resident, driven by the core's
coordinator loops (``RayShards``), with lost workers replaced.

The coordinator (this process) never holds the pool: it reads Parquet footers, ships one copy of the model
weights, and runs the strategy's sequential part on sketches the workers send back.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pyarrow as pa
import ray
import torch
from torch import nn

from dist_al.config import ClusterConfig, InputsConfig, ModelConfig, PoolConfig
from dist_al.core.api import STRATEGIES, check_seed, resolve_options, run_strategy
from dist_al.core.bait import check_reduction
from dist_al.core.errors import UserError
from dist_al.core.inputs import check_budget
from dist_al.core.options import BaitOptions, StrategyOptions
from dist_al.core.progress import progress_bar
from dist_al.core.shards import LocalShards, ShardGroup
from dist_al.data.pool import PoolError, plan_shards
from dist_al.inputs.contract import InputError, open_inputs
from dist_al.inputs.pipeline import Skip
from dist_al.models.build import build_model
from dist_al.runtime.cluster import shard_workers, wait_started, worker_threads
from dist_al.runtime.wire import WireTensor, from_wire, to_wire
from dist_al.runtime.worker import ShardWorker

log = logging.getLogger(__name__)

# A lost ShardWorker is replaced (same shard, same weights, re-embedded) and the operation it was
# part of rerun from its start: workers are deterministic and the coordinator holds the only RNG,
# so the rerun gives the same result. This many recoveries per operation, then WorkerLostError.
MAX_RECOVERIES = 3
EMBED_STEP_ROWS = 65536
_LOGGED_SKIPS = 20  # skipped rows logged one line each (why); every id is in ShardedPool.skipped
_LISTED_SKIPS = 100  # ids listed in the summary warning


# What a Ray call raises when a ShardWorker (its process or its node) is gone; a worker's own
# exceptions arrive as RayTaskError and are not among these.
WORKER_LOST = (
    ray.exceptions.RayActorError,  # ActorDiedError, ActorUnavailableError
    ray.exceptions.ObjectLostError,  # a result that lived on a removed node
    ray.exceptions.WorkerCrashedError,
    ray.exceptions.NodeDiedError,
    ray.exceptions.RayChannelError,  # a compiled graph's channel closed under it (its worker died)
)

# A worker that has not answered in this long, while another was lost, is taken for lost too.
PROBE_SECONDS = 60.0


def get_all(refs: list) -> list:
    """ray.get of every ref. When a worker is lost, the other results are read too (waiting at most
    PROBE_SECONDS) before the loss is raised: a call that failed on a dead worker's result would
    otherwise be logged by Ray as an unhandled error when its ref is dropped."""
    try:
        return ray.get(refs)
    except WORKER_LOST:
        ray.wait(refs, num_returns=len(refs), timeout=PROBE_SECONDS)
        for ref in refs:
            with contextlib.suppress(ray.exceptions.RayError):
                ray.get(ref, timeout=0)
        raise


class RayShards:
    """The core's ShardGroup over ShardWorker actors: ``map`` calls every worker at once, in shard order. A
    method travels by name (``ShardWorker.invoke``); the coordinator loops name it by reference.

    ``relay`` (one exact k-means++ centre: take the drawn row on its shard, add it as a centre on all) runs
    as a Ray compiled graph when ``compiled`` (``cluster.compiled_graph``): the workers stay in one graph
    for the whole selection and pass the step's values through shared-memory channels, instead of a task
    submission, an object-store round and a reply per call. If the graph cannot be compiled (an older or
    restricted Ray), relay falls back to plain actor calls, which give the same results. ``close`` ends it.
    """

    # Arguments larger than this go to the object store once instead of once per worker.
    _PUT_BYTES = 1 << 16

    def __init__(self, workers: list, *, compiled: bool = False):
        self.workers = workers
        self.compiled = compiled
        self._graph: Any = None

    def map(self, method: Callable, *args: Any) -> list:
        return self.results(self.send(method, *args))

    def send(self, method: Callable, *args: Any) -> list:
        """Every worker's call of method, started; `results` waits for them (map is the two in a row)."""
        args = tuple(ray.put(a) if _nbytes(a) > self._PUT_BYTES else a for a in to_wire(args))
        return [w.invoke.remote(method.__name__, *args) for w in self.workers]

    @staticmethod
    def results(refs: list) -> list:
        return from_wire(get_all(refs))

    def call(self, shard: int, method: Callable, *args: Any) -> Any:
        return from_wire(ray.get(self.workers[shard].invoke.remote(method.__name__, *to_wire(args))))

    def relay(self, shard: int, method: Callable, args: tuple, then: Callable, *then_args: Any) -> tuple[Any, list]:
        args, then_args = to_wire(args), to_wire(then_args)
        step = (shard, method.__name__, args, then.__name__, then_args)
        graph = self._compiled_graph() if self.compiled else None
        if graph is not None:
            outputs = from_wire(ray.get(graph.execute(step), timeout=-1))  # -1: as long as the step takes
            return outputs[shard], outputs[len(self.workers) :]
        value = self.workers[shard].invoke.remote(method.__name__, *args)
        results = self.results([w.invoke.remote(then.__name__, value, *then_args) for w in self.workers])
        return from_wire(ray.get(value)), results

    def _compiled_graph(self):
        """Every worker's relay_first (the shard's own call; the others answer None), whose outputs every
        worker's relay_then reads; the driver reads both layers. Compiled once, on the first relay."""
        if self._graph is None:
            from ray.dag import InputNode, MultiOutputNode

            try:
                with InputNode() as step:
                    first = [w.relay_first.bind(step, i) for i, w in enumerate(self.workers)]
                    then = [w.relay_then.bind(step, *first) for w in self.workers]
                    self._graph = MultiOutputNode(first + then).experimental_compile()
            except Exception as err:  # noqa: BLE001 - any failure to compile leaves the plain calls
                log.warning(
                    "Ray compiled graph unavailable (%s); coordinating with plain actor calls", _first_line(err)
                )
                self.compiled = False
                return None
        return self._graph

    def close(self) -> None:
        """Tears the compiled graph down (the workers can then join another one)."""
        graph, self._graph = self._graph, None
        if graph is not None:
            with contextlib.suppress(Exception):  # after a lost worker the graph may be down already
                graph.teardown()


def _nbytes(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, np.ndarray):
        return value.nbytes
    if isinstance(value, WireTensor):
        return value.array.nbytes
    if isinstance(value, (tuple, list)):
        return sum(_nbytes(v) for v in value)
    return 0


class WorkerLostError(RuntimeError):
    """ShardWorkers kept dying: recovery gave up."""


@dataclass
class SelectionResult:
    table: pa.Table  # id, rank, strategy, score
    seconds_embed: float
    seconds_select: float
    workers: int
    picks: list[tuple[int, int]] = field(default_factory=list)  # (shard, row in the shard) per pick, in rank order
    skipped: list[Skip] = field(default_factory=list)  # rows left out with inputs.on_error: skip, in pool order


def start_workers(
    pool: PoolConfig,
    model: ModelConfig,
    cluster: ClusterConfig,
    weights,
    shards,
    *,
    inputs: InputsConfig = InputsConfig(),
    labels: bool = False,
) -> list:
    """A ShardWorker per shard, once each has started: on a cluster that cannot place them all within
    cluster.start_timeout_s, none is left running and ClusterTooSmall says what they need (dist_al.runtime.cluster)."""
    actor = ray.remote(ShardWorker).options(
        num_cpus=cluster.cpus_per_worker, num_gpus=cluster.gpus_per_worker, scheduling_strategy="SPREAD", max_restarts=0
    )
    threads = worker_threads(cluster.cpus_per_worker)
    # handles: Ray types a method's .remote only on @ray.method-decorated methods; the driver calls them as Any
    workers: list[Any] = [
        actor.remote(pool, shard, model, weights, inputs=inputs, threads=threads, labels=labels) for shard in shards
    ]
    group = replace(shard_workers(cluster), count=len(workers))
    wait_started(workers, [w.where.remote() for w in workers], group, cluster.start_timeout_s)
    return workers


def check_unique_ids_on_workers(workers: list) -> None:
    """Hash-partitioned duplicate check: no process ever holds all ids."""
    n = len(workers)
    parts = [w.id_buckets.options(num_returns=n).remote(n) for w in workers]
    if n == 1:
        parts = [[p] for p in parts]
    found = get_all([workers[b].duplicate_id.remote(*[parts[w][b] for w in range(n)]) for b in range(n)])
    value = next((d for d in found if d is not None), None)
    if value is not None:
        places = [place for where in get_all([w.locate_id.remote(value) for w in workers]) for place in where]
        raise PoolError(f"pool ids are not unique: id {value!r} appears {len(places)} times: in {', '.join(places)}")


class ShardedPool:
    """A pool embedded by ShardWorkers and kept resident, so several selections reuse one pass.

    ``labels=True`` (simulation) also keeps the pool's label column on the
    workers (``pool.label_column`` must be set), for ``rows_at`` and
    ``labels_of``; ``reembed`` swaps in new model weights without restarting
    the actors. ``inputs`` says how rows become the model's input; rows it
    skips (``inputs.on_error: skip``) are not resident: ``num_rows`` counts
    the rest, global row positions number them (shard order, then row order),
    and ``skipped`` lists the others (logged at WARNING; more than
    ``inputs.max_skipped`` of the pool is an InputError). ``network``: the
    model already built from the config (``preflight``'s), else it is built
    here. A worker that dies (its process or its node) is replaced and
    its shard re-embedded; the call that saw it die runs again (see MAX_RECOVERIES).
    """

    def __init__(
        self,
        pool: PoolConfig,
        model: ModelConfig,
        cluster: ClusterConfig,
        *,
        inputs: InputsConfig = InputsConfig(),
        network: nn.Module | None = None,
        seed: int = 0,
        progress: bool = False,
        labels: bool = False,
    ):
        self.pool, self.model, self.cluster, self.inputs = pool, model, cluster, inputs
        self.progress = progress
        if labels and not pool.label_column:
            raise UserError("pool labels requested but config key pool.label_column is not set")
        self.with_labels = labels
        opened, _ = open_inputs(pool, inputs)  # schema problems surface here, before any model runs
        self.num_rows = opened.num_rows
        self.shards = plan_shards(opened, cluster.workers)
        if network is None:  # one init, shipped to all
            network = build_model(model, seed=seed, storage_options=pool.storage_options)
        # Kept for the pool's life: a replacement worker starts from the weights the others hold.
        self._weights = ray.put({k: v.detach().cpu() for k, v in network.state_dict().items()})
        t0 = time.perf_counter()
        self.workers = self._start(self.shards)
        self.where: list[tuple[str, int] | None] = [None] * len(self.shards)  # (node, pid) per shard
        self._embed()  # replaces the workers it loses itself
        self._recovering("the duplicate-id check", lambda: check_unique_ids_on_workers(self.workers))
        placement = self._recovering("the summary", lambda: ray.get([w.summary.remote() for w in self.workers]))
        for shard, where in zip(self.shards, placement):
            log.info(
                "shard %d (%d rows): node %s, pid %d, %s, GPUs %s; embedding pass: %s",
                shard.index,
                where["rows"],
                where["node"][:12],
                where["pid"],
                where["device"],
                ",".join(where["gpus"]) or "none",
                where["timing"].line(),
            )
        self.summary = placement[0]
        self.first_rows = [int(x) for x in np.cumsum([0] + [p["rows"] for p in placement])[:-1]]
        self.num_rows = sum(p["rows"] for p in placement)
        self.skipped: list[Skip] = []
        if any(p["skipped"] for p in placement):
            self._report_skipped(opened.num_rows)
        self.seconds_embed = time.perf_counter() - t0

    def _start(self, shards) -> list:
        return start_workers(
            self.pool, self.model, self.cluster, self._weights, shards, inputs=self.inputs, labels=self.with_labels
        )

    def _report_skipped(self, pool_rows: int) -> None:
        parts = self._recovering(
            "reading the skipped rows", lambda: ray.get([w.skipped_rows.remote() for w in self.workers])
        )
        self.skipped = [s for part in parts for s in part]
        n = len(self.skipped)
        if n > self.inputs.max_skipped * pool_rows:
            raise InputError(
                f"{n} of the {pool_rows} rows of pool {self.pool.uri} cannot be read, more than inputs.max_skipped "
                f"({self.inputs.max_skipped:g} of the pool); the first: {self.skipped[0].line}"
            )
        for skip in self.skipped[:_LOGGED_SKIPS]:
            log.warning("skipped (inputs.on_error=skip): %s", skip.line)
        ids = ", ".join(repr(s.id) for s in self.skipped[:_LISTED_SKIPS])
        more = f" and {n - _LISTED_SKIPS} more" if n > _LISTED_SKIPS else ""
        log.warning(
            "%d of the %d rows of pool %s cannot be read and are left out of selection (inputs.on_error=skip): "
            "ids %s%s",
            n,
            pool_rows,
            self.pool.uri,
            ids,
            more,
        )

    # -- lost workers --------------------------------------------------------------------

    def _recovering(self, what: str, run):
        """run(), replacing lost workers and running it again, at most MAX_RECOVERIES times."""
        for attempt in range(1, MAX_RECOVERIES + 2):
            try:
                return run()
            except WORKER_LOST as err:
                if attempt > MAX_RECOVERIES:
                    lost = ", ".join(map(str, self._lost_shards())) or "none now"
                    raise WorkerLostError(
                        f"{what}: ShardWorkers kept dying (lost now: shard {lost}), gave up after "
                        f"{MAX_RECOVERIES} recoveries (last: {_first_line(err)})"
                    ) from err
                self._heal(what, err, attempt)

    def _heal(self, what: str, err: Exception, attempt: int) -> None:
        t0 = time.perf_counter()
        lost = {s: self._replace(s) for s in self._lost_shards()}
        self._embed(list(lost))
        for s, (node, pid) in lost.items():
            log.warning(
                "recovery %d of %d during %s: shard %d lost its ShardWorker (node %s, pid %s: %s); a new one "
                "on node %s (pid %s) re-embedded the shard in %.1f s; rerunning %s from its start",
                attempt,
                MAX_RECOVERIES,
                what,
                s,
                node,
                pid,
                _first_line(err),
                *self._place(s),
                time.perf_counter() - t0,
                what,
            )
        if not lost:
            log.warning(
                "recovery %d of %d during %s: %s, but every ShardWorker answers; rerunning %s",
                attempt,
                MAX_RECOVERIES,
                what,
                _first_line(err),
                what,
            )

    def _lost_shards(self) -> list[int]:
        probes = [w.where.remote() for w in self.workers]
        ray.wait(probes, num_returns=len(probes), timeout=PROBE_SECONDS)
        lost = []
        for s, probe in enumerate(probes):
            try:
                self.where[s] = ray.get(probe, timeout=0)
            except (*WORKER_LOST, ray.exceptions.GetTimeoutError):
                lost.append(s)
        return lost

    def _place(self, s: int) -> tuple[str, int | str]:
        """(node, pid) of shard s's worker, as far as known."""
        return self.where[s] or ("not yet known", "not yet known")

    def _replace(self, s: int) -> tuple[str, int | str]:
        """Starts a new worker for shard s (not yet embedded); answers where the lost one was."""
        lost = self._place(s)
        ray.kill(self.workers[s], no_restart=True)  # one that hangs must not come back later
        self.workers[s] = self._start([self.shards[s]])[0]
        self.where[s] = None
        return lost

    def _embed(self, shards=None) -> None:
        """Runs the embedding pass on the given shards' workers (all by default) at once, with a
        progress bar over rows; a worker lost on the way is replaced and its shard starts over.
        Workers that are done answer their next step with 0 at once, so a rerun costs nothing."""
        shards = list(range(len(self.workers)) if shards is None else shards)
        rows = {s: 0 for s in shards}
        bar = progress_bar(sum(self.shards[s].num_rows for s in shards), "embedding", self.progress)
        pending = {self.workers[s].embed_step.remote(EMBED_STEP_ROWS): s for s in shards}
        replaced = 0
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            s = pending.pop(ready[0])
            try:
                done = ray.get(ready[0])
                if not done:
                    self.where[s] = ray.get(self.workers[s].where.remote())
                    continue
            except WORKER_LOST as err:
                replaced += 1
                if replaced > MAX_RECOVERIES:
                    raise WorkerLostError(
                        f"the embedding pass: the ShardWorker of shard {s} kept dying, gave up after "
                        f"{MAX_RECOVERIES} recoveries (last: {_first_line(err)})"
                    ) from err
                node, pid = self._replace(s)
                log.warning(
                    "recovery %d of %d during the embedding pass: shard %d lost its ShardWorker (node %s, "
                    "pid %s: %s); a new one embeds the shard from its start",
                    replaced,
                    MAX_RECOVERIES,
                    s,
                    node,
                    pid,
                    _first_line(err),
                )
                bar.update(-rows[s])
                done = rows[s] = 0
            bar.update(done)
            rows[s] += done
            pending[self.workers[s].embed_step.remote(EMBED_STEP_ROWS)] = s
        bar.close()

    # -- the pool's operations --------------------------------------------------------------

    def reembed(self, weights: dict) -> float:
        """Loads ``weights`` (a state_dict of the same model) on every worker and embeds the pool again
        with them (features only: ids and labels stay resident); returns the seconds it took."""
        t0 = time.perf_counter()
        self._weights = ray.put({k: v.detach().cpu() for k, v in weights.items()})
        self._recovering(
            "loading new weights", lambda: ray.get([w.load_weights.remote(self._weights) for w in self.workers])
        )
        self._embed()
        self.seconds_embed = time.perf_counter() - t0
        return self.seconds_embed

    def rows_at(self, rows) -> tuple[np.ndarray, np.ndarray]:
        """(ids, labels) of global row positions (pool order: shard order, then row order), in the given order."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= self.num_rows):
            raise ValueError(f"row positions must lie in [0, {self.num_rows})")
        starts = np.array(self.first_rows, dtype=np.int64)
        shard_of = np.searchsorted(starts, rows, side="right") - 1
        ids, labels = np.zeros(len(rows), dtype=np.int64), np.zeros(len(rows), dtype=np.int64)
        shards = np.unique(shard_of)
        fetched = self._recovering(
            "reading labels by row",
            lambda: ray.get([self.workers[s].rows_at.remote(rows[shard_of == s] - starts[s]) for s in shards]),
        )
        for s, (got_ids, got_labels) in zip(shards, fetched):
            where = shard_of == s
            if got_ids.dtype != ids.dtype:
                ids = ids.astype(got_ids.dtype)  # string ids: an object array
            ids[where] = got_ids
            labels[where] = got_labels
        return ids, labels

    def labels_of(self, ids) -> np.ndarray:
        """The labels of ``ids`` (in that order), looked up on the workers that hold them."""
        ids = np.asarray(ids)
        labels = np.full(len(ids), -1, dtype=np.int64)
        found = np.zeros(len(ids), dtype=bool)
        ref = ray.put(ids)
        for pos, lab in self._recovering(
            "reading labels by id", lambda: ray.get([w.labels_of.remote(ref) for w in self.workers])
        ):
            labels[pos] = lab
            found[pos] = True
        if not found.all():
            missing = ids[~found]
            raise UserError(
                f"{len(missing)} id(s) are not in pool {self.pool.uri}, "
                f"e.g. {missing[0].item() if isinstance(missing[0], np.generic) else missing[0]!r}"
            )
        return labels

    def select(
        self,
        strategy: str,
        budget: int,
        *,
        seed: int = 0,
        options: StrategyOptions | dict | None = None,
        labeled_ids=None,
    ) -> SelectionResult:
        options = resolve_options(strategy, options)
        seed = check_seed(seed)
        if isinstance(options, BaitOptions):
            check_reduction(options, self.summary["classes"], self.summary["feat_dim"])
        labeled = None if labeled_ids is None else np.asarray(labeled_ids)
        t0 = time.perf_counter()
        table, picks = self._recovering(
            f"selection {strategy!r}", lambda: self._select(strategy, budget, seed, options, labeled)
        )
        return SelectionResult(
            table, self.seconds_embed, time.perf_counter() - t0, len(self.workers), picks, list(self.skipped)
        )

    def picked_rows(self, result: SelectionResult) -> pa.Table:
        """The picked rows with where they live and their input columns (``pool.rows_table``), in rank order: each
        ShardWorker reads the row groups of its own picks, all at once, so that training reads these rows
        instead of the pool."""
        picks = np.asarray(result.picks, dtype=np.int64).reshape(-1, 2)
        shards = np.unique(picks[:, 0])
        parts = self._recovering(
            "reading the picked rows",
            lambda: get_all([self.workers[s].located_rows.remote(picks[picks[:, 0] == s, 1]) for s in shards]),
        )
        rank = np.argsort(np.argsort(picks[:, 0], kind="stable"))  # the parts hold the picks grouped by shard
        return pa.concat_tables(parts).take(rank)

    def _select(
        self, strategy: str, budget: int, seed: int, options: StrategyOptions, labeled
    ) -> tuple[pa.Table, list]:
        """One run of the strategy from its start: every worker's strategy shard is built afresh, on the worker, or
        in the driver from the workers' (p, h) when the pool has at most ``cluster.driver_select_rows`` rows (the
        same shards and coordinator loop, without a Ray round trip per step)."""
        group: ShardGroup
        in_driver = self.num_rows <= self.cluster.driver_select_rows
        if in_driver:
            parts = get_all([w.selection_inputs.remote(labeled) for w in self.workers])
            spec = STRATEGIES[strategy]
            group = LocalShards([spec.shard(p, h, mask, row) for (p, h, mask), row in zip(parts, self.first_rows)])
            counts = [int((~mask).sum()) for _, _, mask in parts]
        else:
            counts = get_all([w.start.remote(strategy, labeled, row) for w, row in zip(self.workers, self.first_rows)])
            group = RayShards(self.workers, compiled=self.cluster.compiled_graph)
        budget = check_budget(budget, sum(counts))
        threads = torch.get_num_threads()
        if in_driver:  # the workers' thread count: the same kernels, so the same bits and ids
            torch.set_num_threads(worker_threads(self.cluster.cpus_per_worker))
        try:
            with torch.inference_mode():
                selection = run_strategy(strategy, group, budget, seed, options, self.progress)
        finally:
            torch.set_num_threads(threads)
            if isinstance(group, RayShards):
                group.close()
        by_shard: dict[int, list[int]] = {}
        for s, i in selection.picks:
            by_shard.setdefault(s, []).append(i)
        fetched = {s: iter(ray.get(self.workers[s].ids_at.remote(rows))) for s, rows in by_shard.items()}
        ids = [next(fetched[s]) for s, _ in selection.picks]
        scores = selection.scores if selection.scores is not None else [None] * len(ids)
        return pa.table(
            {
                "id": pa.array(ids),
                "rank": pa.array(np.arange(1, len(ids) + 1, dtype=np.int64)),
                "strategy": pa.array([strategy] * len(ids), pa.string()),
                "score": pa.array(scores, pa.float64()),
            }
        ), list(selection.picks)

    def close(self) -> None:
        for w in self.workers:
            ray.kill(w)
        self.workers = []


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"
