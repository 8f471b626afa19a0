"""Retrain the classifier on every labeled row with Ray Train (TorchTrainer, DDP) or in-process.

The labeled set is small (thousands of rows) next to the pool (millions), and
its rows lie all over the pool: 5,000 labels among 2,000,000 rows fall in every
one of its 128 row groups, so any read of them from the pool (by recorded
place, or with an id filter pushed into the Parquet reads, whose row-group
statistics cannot exclude a group that holds one) decodes about a whole pass
of features (`dist-al bench distributed --only gather`: 0.7-1.7 of a full pass
in two runs on this busy 2-core machine).  So the rows are read once, where the
pool is already spread over workers: right after a round's selection each
ShardWorker reads the row groups of its own picks (up to one read of its
shard's features, all workers at once), and the round records those rows (id,
file, row group, row, and the reader's input columns as the pool stores them:
vectors, image bytes or URIs, texts) next to its selection (``rounds.SELECTED_ROWS``).
``gather_labeled`` takes a labeled id's row from there (0.008-0.009 of a full
pass for 5,000 rows) and finds the others (labels ingested for ids dist-al
never selected, rounds from before rows were recorded, and every row in
``simulate``, which records none) with one pass over the pool's id column
alone, logged at INFO with their count, then reads only the row groups that
hold them: no slower than the full scan it replaces.

The driver puts those rows (an Arrow table of the input columns, and the
labels) in the Ray object store, and every Ray Train worker trains the same
seeded model on its rank's share of it (a ``DistributedSampler`` split:
equal-sized shards, so every worker takes the same number of steps), decoding
each minibatch through the ``inputs`` reader on its own CPUs, the next ones in
threads while the model trains on the current one (``dist_al.inputs.pipeline``):
the model trains on exactly the input it selects with.  A labeled row the
reader cannot read fails training with one line naming it, whatever
``inputs.on_error`` says: selection never picks a skipped row, so such a row
has a label from elsewhere and needs fixing.  Not a ``ray.data`` dataset passed to the trainer:
every rank needs all rows in pool order (the sampler reshuffles the split each
epoch, which keeps the result bit-identical to the ``local`` backend), and for
5,000 rows x 128 floats the driver's read plus ``ray.put`` took 0.03 s here
while ``ray.data.read_parquet`` of the same rows iterated in a Ray task took
9-12 s (its executor's start-up, on this 2-core machine).  Rank 0 reports the
final ``state_dict`` as a Ray Train checkpoint; the driver copies its
``model.pt`` to ``checkpoint_uri`` (local or object store, written atomically),
which the next selection round loads as ``model.checkpoint`` with
``weights_only=True``.

Config: the ``train`` section (``dist_al.config.TrainConfig``).

Ray must already be initialised by the caller for the ``ray`` backend (``dist_al.runtime.cluster.cluster_session``).
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import posixpath
import tempfile
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from dist_al.config import Config, InputsConfig, PoolConfig
from dist_al.core.errors import UserError
from dist_al.data.pool import (
    Pool,
    PoolError,
    find_ids,
    plan_shards,
    read_rows,
    recorded_rows,
)
from dist_al.data.storage import filesystem, write_bytes_atomic
from dist_al.inputs.contract import Reader, ReaderOutput, open_inputs
from dist_al.inputs.pipeline import decoded_batches, ordered_map, read_batch
from dist_al.models.build import build_model, classifier_layer, read_weights

log = logging.getLogger(__name__)

__all__ = ["TrainResult", "accuracy", "fit_loop", "gather_labeled", "train"]

_CHECKPOINT_FILE = "model.pt"
_EVAL_BATCH_ROWS = 4096


@dataclass
class TrainResult:
    checkpoint_uri: str
    train_rows: int
    accuracy: float | None  # on eval_uri, None without one
    epochs: int
    seconds: float
    workers: int = 0  # world size Ray Train ran with (reported by the workers)
    loss: float | None = None  # mean training loss of the last epoch, over all workers
    metrics: dict = field(default_factory=dict)  # rank 0's final ray.train.report metrics
    weights: dict | None = None  # the trained state_dict (CPU), as loaded back from the checkpoint bytes


# --------------------------------------------------------------------------- labeled rows


def _label_keys(labels: Mapping) -> np.ndarray:
    keys = list(labels.keys())
    if all(isinstance(k, (int, np.integer)) and not isinstance(k, (bool, np.bool_)) for k in keys):
        return np.asarray(keys, dtype=np.int64)
    arr = np.empty(len(keys), dtype=object)
    arr[:] = keys
    return arr


def _check_labels(labels: Mapping, n_classes: int) -> None:
    for key, value in labels.items():
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
            raise UserError(f"label of id {key!r} must be an integer class index, got {value!r}")
        if not 0 <= int(value) < n_classes:
            raise UserError(
                f"label {int(value)} of id {key!r} is outside [0, {n_classes}): the model has {n_classes} classes"
            )


@dataclass
class LabeledRows:
    """The labeled rows, in pool order: ids, their input columns as the pool stores them, labels, and where
    each lives (``where[i]``: "file F, row group G, row R", for messages)."""

    ids: np.ndarray
    inputs: pa.Table
    y: np.ndarray
    where: list[str]
    source: str  # "labeled rows of pool URI"


def gather_labeled(
    pool_cfg: PoolConfig, labels: Mapping, recorded: pa.Table | None = None, *, inputs: InputsConfig = InputsConfig()
) -> LabeledRows:
    """The labeled rows (ids, input columns, labels (n,) int64), in pool order.

    ``recorded``: rows recorded at selection (``pool.rows_table``: id, place, input columns); a labeled
    id found there is not read from the pool. The other labeled ids are found with one pass over the
    pool's id column, and only the row groups holding them are read. Raises UserError when a labeled
    id is not in the pool (count and examples) or appears in it more than once.
    """
    if not labels:
        raise UserError("no labeled rows: the labels mapping is empty, nothing to train on")
    keys = _label_keys(labels)
    pool, reader = open_inputs(pool_cfg, inputs)
    ids, places, rows = recorded_rows(pool, recorded, keys, reader.columns)
    rest = keys[~np.isin(keys, ids)]
    if len(rest):
        log.info(
            "%d of %d labeled ids have no recorded row: finding them with one pass over the id column of pool %s",
            len(rest),
            len(keys),
            pool.spec.uri,
        )
        found, found_places = find_ids(pool, rest)
        _check_found(pool, keys, rest, found)
        ids = np.concatenate([ids, found])
        places = np.concatenate([places, found_places])
        more = read_rows(pool, found_places, reader.columns)
        rows = pa.concat_tables([rows, more], promote_options="permissive") if rows.num_rows else more
    order = np.lexsort((places[:, 2], places[:, 1], places[:, 0]))  # pool order
    ids, places, rows = ids[order], places[order], rows.take(pa.array(order))
    y = np.fromiter((int(labels[k]) for k in ids.tolist()), dtype=np.int64, count=len(ids))
    where = [f"file {pool.file_uri(int(f))}, row group {g}, row {r}" for f, g, r in places.tolist()]
    return LabeledRows(ids, rows, y, where, f"labeled rows of pool {pool_cfg.uri}")


def _check_found(pool, keys: np.ndarray, wanted: np.ndarray, found: np.ndarray) -> None:
    """Each of ``wanted`` (some of the labeled ``keys``, in their order) found in the pool exactly once."""
    uniq, counts = np.unique(found, return_counts=True)
    if len(uniq) < len(found):
        dup = uniq[counts > 1][0]
        raise UserError(
            f"labeled id {dup.item() if isinstance(dup, np.generic) else dup!r} appears more than "
            f"once in pool {pool.spec.uri}"
        )
    if len(found) < len(wanted):
        missing = wanted[~np.isin(wanted, found)]
        examples = ", ".join(repr(k.item() if isinstance(k, np.generic) else k) for k in missing[:5])
        hint = ""
        id_type = pool.schema.field(pool.spec.id_column).type
        if keys.dtype == object and pa.types.is_integer(id_type):
            hint = " (the pool's ids are integers, the labels' ids are not)"
        elif keys.dtype != object and not pa.types.is_integer(id_type):
            hint = " (the pool's ids are strings, the labels' ids are integers)"
        raise UserError(
            f"{len(missing)} of {len(keys)} labeled id(s) are not in pool {pool.spec.uri}{hint}; e.g. {examples}"
        )


# --------------------------------------------------------------------------- worker side


def _unwrap(model: nn.Module) -> nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model


def _to(x: ReaderOutput, device: torch.device) -> ReaderOutput:
    if isinstance(x, dict):
        return {k: v.to(device, non_blocking=True) for k, v in x.items()}
    return x.to(device, non_blocking=True)


def _call(model: nn.Module, x: ReaderOutput) -> torch.Tensor:
    return model(**x) if isinstance(x, dict) else model(x)


# Labeled rows whose decoded inputs take at most this many bytes are decoded once per fit instead of once per epoch
# (a minibatch is then a slice of one tensor: no Arrow take, reader call or thread hand-off per step).
DECODE_ONCE_BYTES = 256 << 20
_DECODE_ONCE_PROBE = 256  # rows decoded to estimate the bytes a row's input takes


class Minibatches:
    """(reader output, labels) of each minibatch of an epoch's row order; a row the reader cannot read raises,
    naming it.

    The labeled rows are decoded once, up front, when the reader returns one tensor (the contract: a row's
    values depend on that row alone) and all of them fit in ``DECODE_ONCE_BYTES``; otherwise (a dict, padded per
    batch, or inputs too large) each epoch decodes minibatch by minibatch in ``threads`` threads ahead of the
    caller (``ordered_map``). Both give the same tensors.
    """

    def __init__(self, reader: Reader, data: LabeledRows, batch_size: int, threads: int):
        self.reader = dataclasses.replace(reader, on_error="raise")  # a labeled row must be readable (module doc)
        self.data, self.batch_size, self.threads = data, batch_size, threads
        self.y = torch.as_tensor(data.y)
        self.decoded = self._decode_all()

    def _decode(self, rows: np.ndarray) -> ReaderOutput:
        data = self.data
        batch = data.inputs.take(pa.array(rows)).combine_chunks().to_batches()[0]
        x, _, _ = read_batch(self.reader, batch, data.ids[rows], lambda i: data.where[int(rows[i])], data.source)
        assert x is not None, "on_error=raise: every row is read or the call raised"
        return x

    def _decode_all(self) -> torch.Tensor | None:
        n = len(self.y)
        if n == 0:
            return None
        probe = self._decode(np.arange(min(n, _DECODE_ONCE_PROBE)))
        if not isinstance(probe, torch.Tensor) or probe.nbytes / probe.shape[0] * n > DECODE_ONCE_BYTES:
            return None
        rest = [np.arange(s, min(s + _DECODE_ONCE_PROBE, n)) for s in range(_DECODE_ONCE_PROBE, n, _DECODE_ONCE_PROBE)]
        parts = [probe, *ordered_map(self._decode, rest, self.threads, "train-decode")]
        if any(not isinstance(x, torch.Tensor) or x.shape[1:] != probe.shape[1:] for x in parts):
            return None  # a reader whose rows' shape depends on the batch: decoded per minibatch
        return torch.cat(parts)

    def __call__(self, index: torch.Tensor):
        chunks = [index[start : start + self.batch_size] for start in range(0, len(index), self.batch_size)]
        if self.decoded is not None:
            decoded = self.decoded
            return ((decoded[rows], self.y[rows]) for rows in chunks)
        return ordered_map(
            lambda rows: (self._decode(rows.numpy()), self.y[rows]), chunks, self.threads, "train-decode"
        )


def fit_loop(
    config: dict,
    data: LabeledRows,
    weights: dict | None,
    *,
    rank: int = 0,
    world: int = 1,
    device: torch.device | str = "cpu",
    prepare=None,
) -> tuple[dict, dict]:
    """The training loop both backends run: same seeded model, this rank's share of the rows, Adam + CE.

    ``data``: the labeled rows, decoded minibatch by minibatch with
    ``config["reader"]`` (``Minibatches``); ``weights`` an optional starting
    state_dict.  ``prepare`` wraps the model for the backend (Ray Train's ``prepare_model``: device placement, DDP when
    world > 1); None moves it to ``device``.  With ``world == 1`` this is plain
    single-process training (the ``local`` backend).  Returns (the trained
    state_dict on CPU, metrics).
    """
    from torch.utils.data import DistributedSampler, TensorDataset

    torch.set_num_threads(config["threads"])
    torch.manual_seed(config["seed"] + rank)  # dropout etc.; weights come from build_model's own seed
    model = build_model(config["model"], seed=config["seed"], weights=weights)
    model = prepare(model) if prepare is not None else model.to(device)
    device = torch.device(device)

    n = len(data.y)
    # DistributedSampler pads to a multiple of world size, so every rank takes the same number of steps.
    sampler: DistributedSampler[int] = DistributedSampler(
        TensorDataset(torch.empty(n)), num_replicas=world, rank=rank, shuffle=True, seed=config["seed"]
    )
    optimiser = torch.optim.Adam(model.parameters(), lr=config["lr"])
    loss_fn = nn.CrossEntropyLoss()
    batches = Minibatches(config["reader"], data, config["batch_size"], config["decode_threads"])
    history = []
    model.train()
    for epoch in range(config["epochs"]):
        sampler.set_epoch(epoch)
        index = torch.tensor(list(iter(sampler)), dtype=torch.long)
        total = torch.zeros(2, dtype=torch.float64)  # loss sum, rows
        for xb, yb in batches(index):
            optimiser.zero_grad(set_to_none=True)
            loss = loss_fn(_call(model, _to(xb, device)), yb.to(device, non_blocking=True))
            loss.backward()
            optimiser.step()
            total += torch.tensor([loss.item() * len(yb), len(yb)], dtype=torch.float64)
        if world > 1:
            import torch.distributed as dist

            total_dev = total.to(device)
            dist.all_reduce(total_dev)
            total = total_dev.cpu()
        history.append(float(total[0] / total[1]))

    metrics = {
        "loss": history[-1],
        "loss_history": history,
        "world_size": world,
        "train_rows": n,
        "rows_per_worker": len(sampler),
        "epochs": config["epochs"],
    }
    state_dict = {k: v.detach().cpu() for k, v in _unwrap(model).state_dict().items()}
    return state_dict, metrics


def _train_loop(config: dict) -> None:
    """Runs on every Ray Train worker: ``fit_loop`` on this rank; rank 0 reports the checkpoint."""
    import ray
    import ray.train
    import ray.train.torch
    from ray.train import Checkpoint

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    data = ray.get(config["data"])
    weights = ray.get(config["weights"]) if config["weights"] is not None else None
    state_dict, metrics = fit_loop(
        config,
        data,
        weights,
        rank=rank,
        world=world,
        device=ray.train.torch.get_device(),
        prepare=ray.train.torch.prepare_model,
    )
    if rank == 0:
        with tempfile.TemporaryDirectory() as tmp:
            torch.save(state_dict, os.path.join(tmp, _CHECKPOINT_FILE))
            ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp))
    else:
        ray.train.report(metrics, checkpoint=None)  # every rank must call report the same number of times


def _train_local(config: dict, data: LabeledRows, weights: dict | None, use_gpu: bool) -> tuple[dict, dict]:
    """The ``local`` backend: ``fit_loop`` in this process as the only worker, leaving the caller's
    torch RNG and thread count as they were."""
    device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
    threads = torch.get_num_threads()
    try:
        with torch.random.fork_rng(devices=[torch.cuda.current_device()] if device.type == "cuda" else []):
            return fit_loop(config, data, weights, device=device)
    finally:
        torch.set_num_threads(threads)


# --------------------------------------------------------------------------- storage


def _is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def _run_storage(storage_path: str, storage_options: dict | None):
    """(storage_path, storage_filesystem) for RunConfig: local paths absolute; remote via fsspec."""
    if _is_local(storage_path):
        path = storage_path.removeprefix("file://")
        return os.path.abspath(os.path.expanduser(path)), None
    import pyarrow.fs as pafs

    fs, path = filesystem(storage_path, storage_options)
    # Ray strips no prefix itself when given a filesystem: it wants the bare bucket/key path.
    return path, pafs.PyFileSystem(pafs.FSSpecHandler(fs))


def _default_storage_path(checkpoint_uri: str) -> str:
    if _is_local(checkpoint_uri):
        path = checkpoint_uri.removeprefix("file://")
        return os.path.join(os.path.dirname(os.path.abspath(path)), "_ray_train")
    return posixpath.join(posixpath.dirname(checkpoint_uri), "_ray_train")


def _read_checkpoint_bytes(checkpoint) -> bytes:
    path = posixpath.join(checkpoint.path, _CHECKPOINT_FILE)
    with checkpoint.filesystem.open_input_stream(path) as f:
        return f.read()


def _remove_run(fs, storage_path: str, run_name: str, default_storage: bool) -> None:
    """Delete this run's directory (its checkpoint is copied out); with the default storage, its empty parent."""
    run_dir = posixpath.join(storage_path.rstrip("/"), run_name)
    try:
        fs.delete_dir(run_dir)
        local_dir = default_storage and os.path.isabs(storage_path) and os.path.isdir(storage_path)
        if local_dir and not os.listdir(storage_path):
            os.rmdir(storage_path)
    except Exception as err:  # noqa: BLE001 - best effort; the model is already copied
        log.warning("could not remove Ray Train run directory %s: %s", run_dir, err)


# --------------------------------------------------------------------------- evaluation


def eval_pool(pool_cfg: PoolConfig, eval_uri: str) -> PoolConfig:
    """The labeled evaluation set: the pool's columns at ``eval_uri``, labels in ``pool.label_column`` (``label``
    when that is null), read with the pool's storage options."""
    return pool_cfg.model_copy(update={"uri": eval_uri, "label_column": pool_cfg.label_column or "label"})


def open_eval_set(pool_cfg: PoolConfig, eval_uri: str, inputs: InputsConfig = InputsConfig()) -> tuple[Pool, Reader]:
    """The eval set with its footers read and checked (columns, types, rows) and its reader, so that a bad
    ``eval.uri`` fails when a command starts, not after training; the error names the key."""
    try:
        return open_inputs(eval_pool(pool_cfg, eval_uri), inputs)
    except PoolError as err:
        raise PoolError(f"eval.uri: {err}") from None


@torch.inference_mode()
def accuracy(
    pool_cfg: PoolConfig,
    model: nn.Module,
    eval_uri: str,
    *,
    inputs: InputsConfig = InputsConfig(),
    batch_rows: int = _EVAL_BATCH_ROWS,
) -> float:
    """Accuracy of ``model`` on a Parquet dataset with the pool's column names (``eval_pool``), batch by batch
    through the ``inputs`` reader (decoded in threads ahead of the model). Rows the reader skips
    (``inputs.on_error: skip``) are left out and logged."""
    pool, reader = open_eval_set(pool_cfg, eval_uri, inputs)
    model = model.eval()
    device = next(model.parameters()).device
    threads = inputs.threads or min(4, os.cpu_count() or 1)
    correct = total = skipped = 0
    for shard in plan_shards(pool, 1):
        batches = decoded_batches(pool, shard, reader, batch_rows=batch_rows, threads=threads, labels=True)
        for batch in batches:
            for skip in batch.skipped:
                log.warning("evaluation set: skipped (inputs.on_error=skip): %s", skip.line)
            skipped += len(batch.skipped)
            if batch.x is None:
                continue
            pred = _call(model, _to(batch.x, device)).argmax(1).cpu().numpy()
            correct += int((pred == batch.labels).sum())
            total += len(pred)
    if not total:
        raise UserError(f"evaluation set {eval_uri}: every one of its {skipped} rows was skipped, nothing to score")
    return correct / total


# --------------------------------------------------------------------------- driver


def train(
    cfg: Config,
    labels: Mapping,
    *,
    checkpoint_uri: str,
    eval_uri: str | None = None,
    warm_start_weights: dict | None = None,
    storage_options: dict | None = None,
    recorded: pa.Table | None = None,
) -> TrainResult:
    """Train the config's model on every labeled row; write its state_dict to ``checkpoint_uri``.

    ``train.backend: ray`` (default) runs ``train.workers`` Ray Train workers;
    ``local`` runs the same loop (``fit_loop``) in this process as one worker
    (``train.workers``, ``cpus_per_worker`` and ``storage_path`` are then unused;
    torch threads: ``cpus_per_worker``).

    ``labels`` maps pool id -> integer class.  ``warm_start_weights`` (a
    state_dict) is the starting point when given; otherwise with
    ``train.warm_start: true`` the model starts from ``model.checkpoint``, and
    else from a fresh init seeded by ``train.seed``.  ``storage_options`` are
    for ``checkpoint_uri`` (and the Ray Train run storage); the pool and
    ``eval_uri`` use ``pool.storage_options``.  ``recorded``: rows recorded at selection, read
    instead of the pool (``gather_labeled``).

    Raises UserError for an empty ``labels``, a bad ``eval_uri``, a label outside the model's
    classes, or labeled ids missing from the pool, before any worker starts (and before it needs Ray).
    """
    import ray

    from dist_al.runtime.cluster import train_workers, wait_placeable, worker_threads

    t0 = time.perf_counter()
    settings = cfg.train
    if not labels:
        raise UserError("no labeled rows: the labels mapping is empty, nothing to train on")
    if eval_uri is not None:
        open_eval_set(cfg.pool, eval_uri, cfg.inputs)

    weights = warm_start_weights
    if weights is None and settings.warm_start and cfg.model.checkpoint:
        weights = read_weights(cfg.model.checkpoint, cfg.pool.storage_options)
    fresh = cfg.model.model_copy(update={"checkpoint": None})
    driver_model = build_model(fresh, seed=cfg.train_seed, weights=weights)  # fails fast on a bad model or weights
    n_classes = classifier_layer(driver_model, fresh.classifier).out_features
    _check_labels(labels, n_classes)

    data = gather_labeled(cfg.pool, labels, recorded, inputs=cfg.inputs)
    _, reader = open_inputs(cfg.pool, cfg.inputs)
    threads = worker_threads(settings.cpus_per_worker)
    loop_config = {
        "model": fresh,
        "seed": cfg.train_seed,
        "epochs": settings.epochs,
        "lr": settings.lr,
        "batch_size": settings.batch_size,
        "threads": threads,
        "reader": reader,
        "decode_threads": cfg.inputs.threads or threads,
    }
    rows = len(data.y)
    if settings.backend == "local":
        log.info("training on %d labeled rows in this process", rows)
        trained_weights, metrics = _train_local(loop_config, data, weights, settings.use_gpu)
        buf = io.BytesIO()
        torch.save(trained_weights, buf)
        write_bytes_atomic(checkpoint_uri, buf.getvalue(), storage_options)
        return _result(cfg, driver_model, trained_weights, metrics, checkpoint_uri, rows, eval_uri, t0)

    if not ray.is_initialized():  # checked after the inputs, so a bad input needs no Ray to be reported
        raise RuntimeError(
            "Ray is not initialised: call ray.init() or use dist_al.runtime.cluster.cluster_session first"
        )
    log.info("training on %d labeled rows with %d Ray Train workers", rows, settings.workers)
    try:
        from ray.train import CheckpointConfig, RunConfig, ScalingConfig
        from ray.train.torch import TorchTrainer
    except ImportError as err:
        raise UserError(f"training with train.backend=ray needs Ray Train ({err}): pip install 'ray[train]'") from None

    default_storage = settings.storage_path is None
    storage_path, storage_fs = _run_storage(
        settings.storage_path or _default_storage_path(checkpoint_uri), storage_options
    )
    # Ray Train V2 would wait for its worker group without end (60 s tries, retried forever): wait here, and say so.
    wait_placeable(train_workers(settings), cfg.cluster.start_timeout_s)
    run_name = f"dist-al-train-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
    data_ref = ray.put(data)
    weights_ref = ray.put({k: v.detach().cpu() for k, v in weights.items()}) if weights is not None else None
    loop_config.update(data=data_ref, weights=weights_ref)
    trainer = TorchTrainer(
        _train_loop,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(
            num_workers=settings.workers,
            use_gpu=settings.use_gpu,
            resources_per_worker={"CPU": settings.cpus_per_worker},
        ),
        run_config=RunConfig(
            name=run_name,
            storage_path=storage_path,
            storage_filesystem=storage_fs,
            checkpoint_config=CheckpointConfig(num_to_keep=1),
        ),
    )
    result = trainer.fit()  # raises ray.train.TrainingFailedError if a worker fails
    if result.checkpoint is None:
        raise RuntimeError(f"Ray Train run {run_name} finished without a checkpoint")
    saved = _read_checkpoint_bytes(result.checkpoint)
    trained_weights = torch.load(io.BytesIO(saved), map_location="cpu", weights_only=True)  # what readers will do
    write_bytes_atomic(checkpoint_uri, saved, storage_options)
    _remove_run(result.checkpoint.filesystem, storage_path, run_name, default_storage)
    return _result(cfg, driver_model, trained_weights, dict(result.metrics or {}), checkpoint_uri, rows, eval_uri, t0)


def _result(cfg: Config, driver_model, trained_weights, metrics, checkpoint_uri, rows, eval_uri, t0) -> TrainResult:
    score = None
    if eval_uri is not None:
        driver_model.load_state_dict(trained_weights)
        score = accuracy(cfg.pool, driver_model, eval_uri, inputs=cfg.inputs)
    return TrainResult(
        checkpoint_uri=checkpoint_uri,
        train_rows=rows,
        accuracy=score,
        epochs=cfg.train.epochs,
        seconds=time.perf_counter() - t0,
        workers=int(metrics.get("world_size", 0)),
        loss=metrics.get("loss"),
        metrics=metrics,
        weights=trained_weights,
    )
