"""The ShardWorker actor: one shard of the pool, embedded once and kept resident for every selection step.

Workers keep ids, p and h resident (and the strategy's per-row shard state), so the coordinator
(``dist_al.runtime.sharded_pool``) only sees sketches and the picked rows. The pool's rows become the model's
input through the ``inputs`` reader, decoded in threads on the worker's CPUs while the model runs
(``dist_al.inputs.pipeline``). Rows skipped with ``inputs.on_error: skip`` are not resident: a worker's row
``i`` is shard row ``positions[i]``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import ray
import torch

from dist_al.config import InputsConfig, ModelConfig, PoolConfig
from dist_al.core.api import STRATEGIES
from dist_al.core.errors import UserError
from dist_al.core.inputs import check_shapes, first_invalid, prob_sum_tolerance
from dist_al.data.pool import (
    duplicated_id,
    id_locations,
    read_rows,
    row_location,
    rows_table,
    shard_places,
)
from dist_al.inputs.contract import InputError, open_inputs
from dist_al.inputs.pipeline import Decoded, Skip, decoded_batches
from dist_al.models.build import ModelError, build_model
from dist_al.models.embedder import Embedder
from dist_al.runtime.wire import from_wire, to_wire


@dataclass
class PassTiming:
    """Where a worker's embedding pass spent its time, in seconds of its main thread: ``waiting`` for the next
    decoded batch (reading and decoding run ahead in threads; this is what they did not hide), the model's
    ``forward``, and the ``checks`` of its output with the copy into the resident rows."""

    rows: int = 0
    waiting: float = 0.0
    forward: float = 0.0
    checks: float = 0.0

    def line(self) -> str:
        return (
            f"{self.waiting:.1f} s waiting on reads/decoding, {self.forward:.1f} s forward, {self.checks:.1f} s checks"
        )


class ShardWorker:
    """One shard of the pool, embedded once and kept resident for every selection step."""

    def __init__(
        self,
        pool: PoolConfig,
        shard,
        model: ModelConfig,
        weights: dict,
        *,
        inputs: InputsConfig = InputsConfig(),
        threads: int = 1,
        labels: bool = False,
    ):
        torch.set_num_threads(max(1, int(threads)))
        gpu = torch.cuda.is_available() and bool(ray.get_gpu_ids())
        self.device = torch.device("cuda" if gpu else "cpu")
        # A mistake found here (a pool or checkpoint this node cannot read, where the driver could) is raised by
        # the first embed_step: raised from __init__ it would reach the driver as the actor's death, without its
        # message, and recovery would start the worker again.
        self.init_error: UserError | None = None
        try:
            self.pool, self.reader = open_inputs(pool, inputs)
            net = build_model(model, weights=weights)
        except UserError as err:
            self.init_error = UserError(
                f"{err} (on the Ray worker of shard {shard.index}, node {ray.util.get_node_ip_address()}: every "
                "node must reach what the config names; a relative path is resolved in each worker's directory)"
            )
            return
        self.decode_threads = inputs.threads or max(1, int(threads))
        self.shard = shard
        self.embedder = Embedder(net, model.classifier, self.device, model.autocast if gpu else None)
        self.batch_size = model.batch_size
        self._batches: Generator[Decoded, None, None] | None = None
        self._next_row = 0  # resident row of the next embedded batch's first row
        self._ids: list[np.ndarray] = []
        self._rows: list[np.ndarray] = []
        self.positions: np.ndarray | None = None  # shard row of each resident row (after the first pass)
        self.skipped: list[Skip] = []  # rows left out with inputs.on_error: skip
        # (p, h) of the pass so far: batches are copied into room for the whole shard, so no step ever holds
        # two copies of it (joining per-batch tensors at the end would, for a moment).
        self._p: torch.Tensor | None = None
        self._h: torch.Tensor | None = None
        self.timing = PassTiming()  # where the last embedding pass's time went
        self._y: list[np.ndarray] = []
        self.rows: int | None = None  # known once the first pass is complete
        # (p, h) of every row, resident once a pass is complete; dropped with new weights
        self.probs: torch.Tensor | None = None
        self.feats: torch.Tensor | None = None
        self.strategy_shard: Any = None  # the core's row side of the running strategy (BadgeShard, ...)
        # Simulation reads the pool's label column once, with the ids, and keeps it resident.
        self.with_labels = bool(labels and pool.label_column)
        self.labels: np.ndarray | None = None
        self._id_order: tuple[np.ndarray, np.ndarray] | None = None  # (argsort of ids, sorted ids)
        self._embedded = False

    # -- the embedding pass, in steps so the driver can show progress --------------------

    def embed_step(self, max_rows: int) -> int:
        """Embeds up to max_rows more rows (decoding ahead in the background); 0 when the shard is done."""
        if self.init_error is not None:
            raise self.init_error
        first = self.rows is None
        if self._batches is None:
            # labels are read on the first pass only; a re-embedding leaves out the rows the first pass skipped
            # (row order is fixed by the shard plan).
            self._batches = decoded_batches(
                self.pool,
                self.shard,
                self.reader,
                batch_rows=self.batch_size,
                threads=self.decode_threads,
                labels=first and self.with_labels,
                exclude=None if first else self._skipped_rows(),
            )
        done = 0
        timing = self.timing
        tick = time.perf_counter()
        for batch in self._batches:
            timing.waiting += time.perf_counter() - tick
            if first:
                self.skipped += batch.skipped
            elif batch.skipped:  # the resident ids, labels and positions came from the first pass
                raise InputError(
                    f"{batch.skipped[0].line} (read in the first pass, not now: the pool's rows must not change "
                    "while it is in use)"
                )
            if batch.x is None:
                tick = time.perf_counter()
                continue
            t0 = time.perf_counter()
            p, h = self._forward(batch)
            t1 = time.perf_counter()
            self._check_output(p, h, batch)
            self._keep(p, h)
            timing.forward += t1 - t0
            timing.checks += time.perf_counter() - t1
            timing.rows += len(p)
            if first:
                self._ids.append(batch.ids)
                self._rows.append(batch.rows)
                if batch.labels is not None:
                    self._y.append(batch.labels)
            done += len(p)
            if done >= max_rows:
                return done
            tick = time.perf_counter()
        if not self._embedded:
            self._finish()
        return done

    def _keep(self, p: torch.Tensor, h: torch.Tensor) -> None:
        """Copies a batch's (p, h) into the shard's resident rows, allocated at its first batch."""
        if self._p is None or self._h is None:
            rows = self.shard.num_rows if self.rows is None else self.rows
            self._p = torch.empty(rows, p.shape[1], dtype=p.dtype, device=p.device)
            self._h = torch.empty(rows, h.shape[1], dtype=h.dtype, device=h.device)
        self._p[self._next_row : self._next_row + len(p)] = p
        self._h[self._next_row : self._next_row + len(h)] = h
        self._next_row += len(p)

    def _skipped_rows(self) -> np.ndarray:
        assert self.positions is not None
        everything = np.ones(self.shard.num_rows, dtype=bool)
        everything[self.positions] = False
        return np.flatnonzero(everything)

    def _where(self, batch: Decoded, i: int) -> tuple[str, int, int]:
        return row_location(self.pool, self.shard, int(batch.rows[i]))

    def _forward(self, batch: Decoded) -> tuple[torch.Tensor, torch.Tensor]:
        """The model on a batch of reader output; its failure (a shape the model does not take) names the rows."""
        assert batch.x is not None
        try:
            return self.embedder(batch.x)
        except ModelError:
            raise
        except Exception as err:  # noqa: BLE001 - the model refused the reader's output: the user's to fix
            file_uri, group, row = self._where(batch, 0)
            shapes = (
                {k: tuple(v.shape) for k, v in batch.x.items()} if isinstance(batch.x, dict) else tuple(batch.x.shape)
            )
            detail = str(err).strip().splitlines()[0] if str(err).strip() else ""
            raise ModelError(
                f"the model failed on inputs.reader {self.reader.path!r}'s output {shapes} for ids "
                f"{_plain(batch.ids[0])!r}..{_plain(batch.ids[-1])!r} (file {file_uri}, row group {group}, from "
                f"row {row}): {type(err).__name__}: {detail}"
            ) from None

    def _check_output(self, p: torch.Tensor, h: torch.Tensor, batch: Decoded) -> None:
        """The core's checks of (p, h), per batch, so a failure can name the row (and a NaN never reaches
        a strategy, where it would turn BADGE's D^2 draws into uniform ones)."""
        n = len(batch.ids)
        try:
            if p.ndim != 2 or h.ndim != 2 or len(p) != n:
                raise ValueError(
                    f"expected probabilities ({n}, K) and features ({n}, D), "
                    f"got shapes {tuple(p.shape)} and {tuple(h.shape)}"
                )
            check_shapes(p, h)
        except ValueError as err:
            file_uri, group, row = self._where(batch, 0)
            raise ModelError(
                f"the model's output for file {file_uri} row group {group} (rows {row}..{row + n - 1}) "
                f"is unusable: {err}"
            ) from None
        bad = first_invalid(p, h, prob_sum_tolerance(p))
        if bad is None:
            return
        what, row = bad
        file_uri, group, in_group = self._where(batch, row)
        row_id = _plain(batch.ids[row])
        values = {
            "probs_nonfinite": "NaN/inf class probabilities",
            "feats_nonfinite": "NaN/inf classifier inputs",
            "probs_negative": "negative class probabilities",
            "probs_sum": f"class probabilities summing to {float(p[row].sum()):.6g}",
        }[what]
        if what.endswith("_nonfinite") and self.embedder.autocast == torch.float16:
            hint = "with model.autocast=fp16, try bf16 or null (float16 overflows above 65504)"
        else:
            hint = "check the model and model.checkpoint (NaN/inf weights, a division by zero, an overflow)"
        raise ModelError(
            f"the model produced {values} for id {row_id!r} (file {file_uri}, row group {group}, "
            f"row {in_group}); {hint}"
        )

    def _finish(self) -> None:
        if self.rows is None:
            self.ids = np.concatenate(self._ids) if self._ids else np.zeros(0, np.int64)
            self.positions = np.concatenate(self._rows) if self._rows else np.zeros(0, np.int64)
            if self.with_labels:
                self.labels = np.concatenate(self._y) if self._y else np.zeros(0, np.int64)
            self.rows = len(self.ids)
        n = self._next_row  # rows a reader skipped leave room unused at the end
        self.probs = self._p[:n] if self._p is not None else torch.zeros(0, self.embedder.n_classes)
        self.feats = self._h[:n] if self._h is not None else torch.zeros(0, 0)
        if len(self.probs) != self.rows:  # pragma: no cover - the pool changed under us
            raise RuntimeError(
                f"shard {self.shard.index}: re-embedding read {len(self.probs)} rows, the first pass {self.rows}"
            )
        self._ids, self._rows, self._y, self._p, self._h = [], [], [], None, None
        self._embedded = True

    def load_weights(self, weights: dict) -> None:
        """New model weights (same architecture): drops p, h and any strategy shard state, so the next
        ``embed_step`` calls re-read the shard's features and embed them with these weights."""
        self.embedder.model.load_state_dict(weights)
        self.embedder.model.eval()
        if self._batches is not None:
            self._batches.close()  # an unfinished pass stops its prefetch thread
        self._batches = None
        self._next_row = 0
        self._p = self._h = None
        self.timing = PassTiming()
        if self.rows is None:  # the first pass was cut short: it starts over, ids and labels too
            self._ids, self._rows, self._y, self.skipped = [], [], [], []
        self.probs = self.feats = None
        self.strategy_shard = None
        self._embedded = False

    def where(self) -> tuple[str, int]:
        """(node id, pid): answers at once, so the driver can tell a live worker from a lost one."""
        return ray.get_runtime_context().get_node_id(), os.getpid()

    def _embedding(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.probs is None or self.feats is None:
            raise RuntimeError(f"shard {self.shard.index} is not embedded: run embed_step until it answers 0")
        return self.probs, self.feats

    def summary(self) -> dict:
        probs, feats = self._embedding()
        return {
            "timing": self.timing,
            "rows": self.rows,
            "classes": probs.shape[1],
            "feat_dim": feats.shape[1],
            "device": str(self.device),
            "node": ray.get_runtime_context().get_node_id(),
            "pid": os.getpid(),
            "gpus": [str(g) for g in ray.get_gpu_ids()],
            "skipped": len(self.skipped),
        }

    def id_buckets(self, n_buckets: int) -> list[np.ndarray]:
        """This shard's ids split by hash, so duplicate checks need no single holder of all ids."""
        keys = _hash_ids(self.ids) % np.uint64(n_buckets)
        parts = [self.ids[keys == b] for b in range(n_buckets)]
        return parts if n_buckets > 1 else parts[0]

    def duplicate_id(self, *parts: np.ndarray):
        """An id that occurs twice in this worker's bucket (every shard's part of it), or None."""
        return duplicated_id(parts)

    def locate_id(self, value) -> list[str]:
        """Where in this shard's files ``value`` occurs, for an error that names them."""
        return id_locations(self.pool, self.shard, self.ids, value, self.positions)

    # -- selection --------------------------------------------------------------------

    def _labeled_mask(self, labeled_ids: np.ndarray | None) -> torch.Tensor:
        labeled = np.zeros(len(self.ids), dtype=bool) if labeled_ids is None else np.isin(self.ids, labeled_ids)
        return torch.from_numpy(labeled)

    def start(self, strategy: str, labeled_ids: np.ndarray | None, first_row: int) -> int:
        """Builds the strategy's shard (the core's row side of the algorithm) over the resident (p, h); returns
        this shard's unlabeled row count."""
        probs, feats = self._embedding()
        mask = self._labeled_mask(labeled_ids)
        self.strategy_shard = STRATEGIES[strategy].shard(probs, feats, mask.to(self.device), first_row)
        return int((~mask).sum())

    def selection_inputs(self, labeled_ids: np.ndarray | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(p, h, labeled mask) on the CPU, for a selection the driver runs itself (``cluster.driver_select_rows``)."""
        probs, feats = self._embedding()
        return probs.cpu(), feats.cpu(), self._labeled_mask(labeled_ids)

    def invoke(self, method: str, *args: Any) -> Any:
        """Calls a method of the strategy shard by name (the coordinator names it by reference, see RayShards)."""
        with torch.inference_mode():
            return to_wire(getattr(self.strategy_shard, method)(*from_wire(args)))

    def relay_first(self, step: tuple, index: int) -> Any:
        """A relay's first call (``RayShards.relay``) if this worker holds shard ``index``, the drawn one."""
        shard, method, args, _then, _then_args = step
        return self.invoke(method, *args) if shard == index else None

    def relay_then(self, step: tuple, *first: Any) -> Any:
        """A relay's second call, with the value the drawn shard's first call answered."""
        shard, _method, _args, then, then_args = step
        return self.invoke(then, first[shard], *then_args)

    def ids_at(self, local_rows: list[int]) -> np.ndarray:
        return self.ids[np.asarray(local_rows, dtype=np.int64)]

    def skipped_rows(self) -> list[Skip]:
        """The rows of this shard the first pass left out (``inputs.on_error: skip``), in shard order."""
        return self.skipped

    def located_rows(self, local_rows: list[int]) -> pa.Table:
        """Resident rows by position, with where they live and their input columns as stored
        (``pool.rows_table``): reads only the row groups holding them."""
        assert self.positions is not None
        places = shard_places(self.shard, self.positions[np.asarray(local_rows, dtype=np.int64)])
        inputs = read_rows(self.pool, places, self.reader.columns)
        return rows_table(self.pool, self.ids_at(local_rows), places, inputs)

    # -- labels (simulation: the pool's hidden label column) ---------------------------

    def _held_labels(self) -> np.ndarray:
        if self.labels is None:
            raise RuntimeError(
                "this ShardWorker holds no labels: start it with labels=True on a pool with pool.label_column set"
            )
        return self.labels

    def rows_at(self, local_rows) -> tuple[np.ndarray, np.ndarray]:
        """(ids, labels) of rows of this shard by position."""
        labels = self._held_labels()
        rows = np.asarray(local_rows, dtype=np.int64)
        return self.ids[rows], labels[rows]

    def labels_of(self, ids) -> tuple[np.ndarray, np.ndarray]:
        """(positions in ``ids`` of those held by this shard, their labels): a sorted-id lookup."""
        labels = self._held_labels()
        if self._id_order is None:
            order = np.argsort(self.ids, kind="stable")
            self._id_order = (order, self.ids[order])
        order, sorted_ids = self._id_order
        ids = np.asarray(ids, dtype=self.ids.dtype)
        if not len(sorted_ids):
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        pos = np.minimum(np.searchsorted(sorted_ids, ids), len(sorted_ids) - 1)
        hit = sorted_ids[pos] == ids
        return np.flatnonzero(hit), labels[order[pos[hit]]]


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _hash_ids(ids: np.ndarray) -> np.ndarray:
    if ids.dtype.kind in "iu":
        return (ids.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(33)
    import zlib

    return np.fromiter((zlib.crc32(str(i).encode()) for i in ids), dtype=np.uint64, count=len(ids))
