"""Labeling rounds: SELECTED -> EXPORTED -> LABELED -> TRAINED, each step idempotent.

`advance` moves the current round as far as it can and answers one status line, so it is
safe to run from cron or a Kubernetes CronJob every few minutes: a step that already
happened is not repeated, and a crash at any point leaves a state the next run resumes.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dist_al.campaign.labels import (
    LabelFileError,
    append_label_records,
    export_selection,
    load_label_records,
    read_labels,
    validate_labels,
)
from dist_al.campaign.workdir import Workdir, open_workdir
from dist_al.config import Config
from dist_al.data.pool import find_ids, open_pool
from dist_al.data.storage import read_bytes, remove_tree, write_table_atomic
from dist_al.faults import crash_point
from dist_al.models.build import build_model, classifier_layer, read_weights
from dist_al.runtime.cluster import cluster_session
from dist_al.runtime.selection import preflight, sharded_pool

log = logging.getLogger(__name__)

# Each round's selected rows, with where they live in the pool and their features (pool.rows_table): the
# ShardWorkers read them right after selecting, so training reads them here rather than scanning the pool.
SELECTED_ROWS = "selected_rows.parquet"


def _labels(cfg: Config, wd: Workdir) -> dict:
    return load_label_records(wd.path("labels"), wd.storage_options)


def latest_checkpoint(wd: Workdir) -> str | None:
    for n in reversed(wd.rounds()):
        state = wd.state(n)
        if state and state["state"] == "TRAINED":
            return wd.round_path(n, "model.pt")
    return None


def _read_selection(wd: Workdir, n: int, name: str = "selection.parquet", columns=None) -> pa.Table:
    return pq.read_table(io.BytesIO(read_bytes(wd.round_path(n, name), wd.storage_options)), columns=columns)


def _recorded_rows(wd: Workdir) -> pa.Table | None:
    """Every round's selected rows with their places and features (rounds from before they were recorded
    have none: their labeled rows are found in the pool)."""
    tables = [_read_selection(wd, n, SELECTED_ROWS) for n in wd.rounds() if wd.exists(wd.round_path(n, SELECTED_ROWS))]
    return pa.concat_tables(tables, promote_options="permissive") if tables else None


def _current(wd: Workdir) -> tuple[int, str | None]:
    rounds = wd.rounds()
    if not rounds:
        return 0, None
    state = wd.state(rounds[-1])
    return rounds[-1], state["state"] if state else None


# -- the steps ------------------------------------------------------------------------


def select_step(cfg: Config, wd: Workdir, progress: bool = False) -> str:
    n, state = _current(wd)
    if state is not None and state != "TRAINED":
        return f"round {n}: already selected ({state.lower()})"
    if state == "TRAINED" or n == 0:
        n += 1
    round_cfg = cfg.replace(model={"checkpoint": latest_checkpoint(wd) or cfg.model.checkpoint})
    labeled = list(_labels(cfg, wd))
    sel = cfg.selection
    network = preflight(round_cfg, len(labeled))  # ingest only records ids of this pool
    with cluster_session(cfg):
        pool = sharded_pool(round_cfg, network, progress=progress)
        try:
            result = pool.select(
                sel.strategy, sel.budget, seed=sel.seed + n, options=sel.options(), labeled_ids=labeled or None
            )
            rows = pool.picked_rows(result)
        finally:
            pool.close()
    wd.create()
    write_table_atomic(wd.round_path(n, SELECTED_ROWS), rows, wd.storage_options)
    write_table_atomic(wd.round_path(n, "selection.parquet"), result.table, wd.storage_options)
    crash_point("select.after_write")
    wd.set_state(
        n,
        "SELECTED",
        strategy=sel.strategy,
        budget=result.table.num_rows,
        checkpoint=round_cfg.model.checkpoint,
        selected_at=time.time(),
    )
    return f"round {n}: selected {result.table.num_rows} rows with {sel.strategy}"


def export_step(cfg: Config, wd: Workdir) -> str:
    n, state = _current(wd)
    if state != "SELECTED":
        return f"round {n}: nothing to export ({(state or 'no round').lower()})"
    files = export_selection(
        _read_selection(wd, n),
        wd.round_path(n, "export"),
        pool_uri=cfg.pool.uri,
        id_column=cfg.pool.id_column,
        storage_options=wd.storage_options,
    )
    wd.set_state(n, "EXPORTED", exported_at=time.time())
    return f"round {n}: exported {len(files)} files to {wd.round_path(n, 'export')}"


def label_progress(cfg: Config, wd: Workdir, n: int) -> tuple[int, int]:
    ids = _read_selection(wd, n).column("id").to_pylist()
    labels = _labels(cfg, wd)
    return sum(i in labels for i in ids), len(ids)


def labeled_step(cfg: Config, wd: Workdir) -> str:
    n, state = _current(wd)
    if state != "EXPORTED":
        return f"round {n}: not waiting for labels ({(state or 'no round').lower()})"
    got, want = label_progress(cfg, wd, n)
    if got < want:
        return f"round {n}: waiting for labels, {got}/{want} received"
    wd.set_state(n, "LABELED", labeled_at=time.time())
    return f"round {n}: all {want} labels received"


def check_training_inputs(cfg: Config) -> None:
    """What training will read besides the labeled rows, checked before anything starts or is written: the
    model (factory, kwargs, classifier) and the eval set's footers (``eval.uri``)."""
    from dist_al.campaign.train import open_eval_set

    build_model(cfg.model.model_copy(update={"checkpoint": None}), seed=cfg.train_seed)
    if cfg.eval.uri is not None:
        open_eval_set(cfg.pool, cfg.eval.uri)


def train_step(cfg: Config, wd: Workdir) -> str:
    from dist_al.campaign.train import train

    check_training_inputs(cfg)
    n, state = _current(wd)
    if state != "LABELED":
        if state == "EXPORTED":
            got, want = label_progress(cfg, wd, n)
            return f"round {n}: not ready to train, waiting for labels, {got}/{want} received"
        return f"round {n}: nothing to train ({(state or 'no round').lower()})"
    labels = _labels(cfg, wd)
    if cfg.train.storage_path is None:  # a Ray Train run killed with its driver leaves its files
        leftover = wd.round_path(n, "_ray_train")
        if wd.exists(leftover):
            log.info("removing %s, left by a training run that was killed", leftover)
            remove_tree(leftover, wd.storage_options)
    warm = None
    if cfg.train.warm_start:
        previous = latest_checkpoint(wd) or cfg.model.checkpoint
        warm = read_weights(previous, wd.storage_options) if previous else None
    local = cfg.train.backend == "local"  # trains in this process: no Ray to start
    with contextlib.nullcontext() if local else cluster_session(cfg, shards=False, train=True):
        result = train(
            cfg,
            labels,
            checkpoint_uri=wd.round_path(n, "model.pt"),
            eval_uri=cfg.eval.uri,
            warm_start_weights=warm,
            storage_options=wd.storage_options,
            recorded=_recorded_rows(wd),
        )
    metrics = {
        "round": n,
        "train_rows": result.train_rows,
        "accuracy": result.accuracy,
        "epochs": result.epochs,
        "seconds": result.seconds,
        "workers": result.workers,
    }
    wd.write_json(wd.round_path(n, "metrics.json"), metrics)
    wd.set_state(n, "TRAINED", trained_at=time.time())
    acc = "" if result.accuracy is None else f", eval accuracy {result.accuracy:.3f}"
    return f"round {n}: trained on {result.train_rows} labeled rows{acc}"


def advance(cfg: Config, progress: bool = False) -> str:
    """Moves the current round as far as it can go; answers the last status line. Everything the round will need
    is checked first (the eval set and the model here, the pool, checkpoint and budget before selecting), so a
    bad input fails this tick, not the one that trains after the labels are in."""
    check_training_inputs(cfg)
    wd = open_workdir(cfg, create=False)
    n, state = _current(wd)
    if state in (None, "TRAINED"):
        log.info(select_step(cfg, wd, progress))
    if _current(wd)[1] == "SELECTED":
        log.info(export_step(cfg, wd))
    if _current(wd)[1] == "EXPORTED":
        line = labeled_step(cfg, wd)
        if _current(wd)[1] != "LABELED":
            return line
    if _current(wd)[1] == "LABELED":
        return train_step(cfg, wd)
    n, state = _current(wd)
    return f"round {n}: {(state or 'no round').lower()}"


# -- labels in --------------------------------------------------------------------------


def ingest(cfg: Config, uri: str, class_names: list[str] | None = None) -> str:
    """Adds labels from a file; invalid rows are reported and rejected, valid rows land. A file whose rows
    are all rejected is a LabelFileError and writes nothing. An id some round selected is in the pool (the workdir
    is bound to it); only the others are looked for, in one pass over the pool's id column."""
    wd = open_workdir(cfg, create=False)
    pool = open_pool(cfg.pool)
    id_field = pool.schema.field(cfg.pool.id_column)
    id_type = "int" if pa.types.is_integer(id_field.type) else "str"
    rows = read_labels(uri, storage_options=cfg.pool.storage_options, id_type=id_type, class_names=class_names)
    n_classes = classifier_layer(
        build_model(cfg.model, storage_options=cfg.pool.storage_options), cfg.model.classifier
    ).out_features

    def known(ids):
        """Ids dist-al selected from this pool are in it; the others are looked for in its id column."""
        found = {
            i
            for n in wd.rounds()
            if wd.exists(wd.round_path(n, "selection.parquet"))
            for i in _read_selection(wd, n, columns=["id"]).column("id").to_pylist()
        }
        unseen = [i for i in ids if i not in found]
        if id_type == "int":  # only ids of the pool's kind can be in it
            rest = np.asarray([i for i in unseen if isinstance(i, int) and -(2**63) <= i < 2**63], dtype=np.int64)
        else:
            rest = np.asarray([i for i in unseen if isinstance(i, str)], dtype=object)
        if len(rest):
            log.info(
                "%d of %d ids were never selected: looking for them in one pass over the id column of pool %s",
                len(rest),
                len(ids),
                pool.spec.uri,
            )
            found.update(find_ids(pool, rest)[0].tolist())
        return [i in found for i in ids]

    report = validate_labels(rows, known_ids=known, n_classes=n_classes, existing=_labels(cfg, wd))
    if report.n_rejected and not report.accepted:
        raise LabelFileError(f"labels file {uri}: no label accepted; {report.summary().split('; ', 1)[1]}")
    if report.accepted:
        wd.create()
    n, _ = _current(wd)
    append_label_records(
        wd.path("labels"), report.accepted, source=os.path.basename(uri), round_=n, storage_options=wd.storage_options
    )
    return report.summary()


def status_table(cfg: Config) -> str:
    wd = open_workdir(cfg, create=False)
    labels = _labels(cfg, wd)
    lines = [
        f"workdir {wd.uri}: {len(labels)} labels recorded",
        "",
        "| round | state | strategy | selected | labels received | train rows | eval accuracy |",
        "|---:|---|---|---:|---:|---:|---:|",
    ]
    for n in wd.rounds():
        state = wd.state(n) or {"state": "INCOMPLETE"}
        got, want = label_progress(cfg, wd, n) if wd.exists(wd.round_path(n, "selection.parquet")) else (0, 0)
        metrics_uri = wd.round_path(n, "metrics.json")
        m = wd.read_json(metrics_uri) if wd.exists(metrics_uri) else {}
        acc = "" if m.get("accuracy") is None else f"{m['accuracy']:.3f}"
        lines.append(
            f"| {n} | {state['state']} | {state.get('strategy', '')} | {want} | {got} | "
            f"{m.get('train_rows', '')} | {acc} |"
        )
    return "\n".join(lines)
