"""Labeling rounds: SELECTED -> EXPORTED -> LABELED -> TRAINED, each step idempotent.

`advance` moves the current round as far as it can and answers one status line, so it is
safe to run from cron or a Kubernetes CronJob every few minutes: a step that already
happened is not repeated, and a crash at any point leaves a state the next run resumes.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import time
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dist_al.campaign.labels import (
    LABEL_STUDIO_TASKS,
    IngestReport,
    LabelFileError,
    LabelRecords,
    export_selection,
    label_studio_config,
    read_labels,
    validate_labels,
)
from dist_al.campaign.labelstudio import LabelStudio, LabelStudioError, pull_round, push_round
from dist_al.campaign.workdir import Workdir, open_workdir
from dist_al.config import Config
from dist_al.data.pool import find_ids, open_pool
from dist_al.data.storage import read_bytes, remove_tree, write_bytes_atomic, write_table_atomic
from dist_al.faults import crash_point

# torch and Ray (models, readers, the cluster) are imported by the steps that use them: `dist-al status` reads the
# workdir only, and importing them would make it seconds slower.
if TYPE_CHECKING:
    from dist_al.inputs.contract import Reader

log = logging.getLogger(__name__)

# Each round's selected rows, with where they live in the pool and their input columns as stored (pool.rows_table:
# vectors, image bytes or URIs, texts): the ShardWorkers read them right after selecting, so training reads them
# here rather than scanning the pool.
SELECTED_ROWS = "selected_rows.parquet"
# The rows a round's selection left out because the reader could not read them (inputs.on_error: skip): id, reason.
SKIPPED_ROWS = "skipped_rows.parquet"
# Each round's labeling counts: what the last pull from Label Studio saw, and what file ingests rejected.
LABELING = "labeling.json"
LABEL_CONFIG = "label_studio_config.xml"


def _records(wd: Workdir) -> LabelRecords:
    return LabelRecords(wd.path("labels"), wd.storage_options)


def _labels(cfg: Config, wd: Workdir) -> dict:
    return _records(wd).load()


def _n_classes(cfg: Config) -> int:
    from dist_al.models.build import build_model, classifier_layer

    model = build_model(cfg.model, storage_options=cfg.pool.storage_options)
    return classifier_layer(model, cfg.model.classifier).out_features


def _round_ids(wd: Workdir, n: int) -> list:
    return _read_selection(wd, n, columns=["id"]).column("id").to_pylist()


def _counts(wd: Workdir, n: int) -> dict:
    uri = wd.round_path(n, LABELING)
    return wd.read_json(uri) if wd.exists(uri) else {}


def _update_counts(wd: Workdir, n: int, **counts) -> None:
    """Rewrites the round's counts only when they change, so a tick that saw nothing new writes nothing."""
    before = _counts(wd, n)
    after = {**before, **counts}
    if after != before:
        wd.write_json(wd.round_path(n, LABELING), after)


def latest_checkpoint(wd: Workdir) -> str | None:
    for n in reversed(wd.rounds()):
        state = wd.state(n)
        if state and state["state"] == "TRAINED":
            return wd.round_path(n, "model.pt")
    return None


def _read_selection(wd: Workdir, n: int, name: str = "selection.parquet", columns=None) -> pa.Table:
    return pq.read_table(io.BytesIO(read_bytes(wd.round_path(n, name), wd.storage_options)), columns=columns)


def _recorded_rows(wd: Workdir) -> pa.Table | None:
    """Every round's selected rows with their places and input columns (rounds from before they were recorded,
    or recorded without today's input columns, have none: their labeled rows are found in the pool)."""
    tables = [_read_selection(wd, n, SELECTED_ROWS) for n in wd.rounds() if wd.exists(wd.round_path(n, SELECTED_ROWS))]
    tables = [t for t in tables if "inputs" in t.column_names]  # earlier versions recorded a features column
    try:
        return pa.concat_tables(tables, promote_options="permissive") if tables else None
    except pa.ArrowInvalid:  # rounds recorded with different readers: the latest one's rows, the rest by id
        return tables[-1]


def _current(wd: Workdir) -> tuple[int, str | None]:
    rounds = wd.rounds()
    if not rounds:
        return 0, None
    state = wd.state(rounds[-1])
    return rounds[-1], state["state"] if state else None


# -- the steps ------------------------------------------------------------------------


def select_step(cfg: Config, wd: Workdir, progress: bool = False) -> str:
    from dist_al.inputs.pipeline import skipped_note
    from dist_al.runtime.cluster import cluster_session
    from dist_al.runtime.selection import preflight, sharded_pool

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
    if result.skipped:
        skipped = pa.table({"id": [s.id for s in result.skipped], "reason": [s.line for s in result.skipped]})
        write_table_atomic(wd.round_path(n, SKIPPED_ROWS), skipped, wd.storage_options)
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
        skipped=len(result.skipped),
    )
    note = skipped_note(result.skipped, wd.round_path(n, SKIPPED_ROWS))
    return f"round {n}: selected {result.table.num_rows} rows with {sel.strategy}{note}"


def export_step(cfg: Config, wd: Workdir) -> str:
    from dist_al.campaign.tasks import row_places, shown_rows
    from dist_al.inputs.contract import open_inputs

    n, state = _current(wd)
    if state != "SELECTED":
        return f"round {n}: nothing to export ({(state or 'no round').lower()})"
    lab = cfg.labeling
    client = LabelStudio.from_config(lab) if lab.backend == "label-studio" else None
    class_names = lab.class_names(_n_classes(cfg))
    selection = _read_selection(wd, n)
    ids = selection.column("id").to_pylist()
    pool, reader = open_inputs(cfg.pool, cfg.inputs)
    recorded = _read_selection(wd, n, SELECTED_ROWS) if wd.exists(wd.round_path(n, SELECTED_ROWS)) else None
    shown = shown_rows(
        lab,
        pool,
        reader,
        ids,
        row_places(pool, ids, recorded),
        recorded=recorded,
        media_prefix=wd.round_path(n, "export", "media"),
        storage_options=wd.storage_options,
    )
    files = export_selection(
        selection,
        wd.round_path(n, "export"),
        pool_uri=cfg.pool.uri,
        id_column=cfg.pool.id_column,
        storage_options=wd.storage_options,
        task_data=shown.data,
        predictions=_predictions(cfg, wd, n, reader, shown.inputs, class_names),
        meta={"round": n},
    )
    config_xml = _label_config(cfg, class_names)
    write_bytes_atomic(wd.round_path(n, "export", LABEL_CONFIG), config_xml.encode(), wd.storage_options)
    line = f"round {n}: exported {len(files) + 1} files to {wd.round_path(n, 'export')}"
    if client is not None:
        record, made = _push(cfg, wd, n, client, ids, class_names)
        line += f"; {made} tasks pushed to Label Studio project {record['project']} ({record['title']!r})"
    wd.set_state(n, "EXPORTED", exported_at=time.time(), classes=class_names)
    return line


def _label_config(cfg: Config, class_names: list[str]) -> str:
    lab = cfg.labeling
    return label_studio_config(
        class_names,
        image=lab.image is not None,
        text=lab.text is not None,
        context=bool(lab.context),
        features=lab.features == "table",
    )


def _predictions(
    cfg: Config, wd: Workdir, n: int, reader: Reader, inputs: pa.Table | None, class_names: list[str]
) -> list[list[dict]] | None:
    """The class the round's model predicts for each selected row, as Label Studio predictions (labeling.predictions;
    none before a model was trained or given, since an untrained model's guess would only mislead)."""
    from dist_al.campaign.tasks import predict, prediction, to_name

    if not cfg.labeling.predictions or inputs is None:
        return None
    checkpoint = (wd.state(n) or {}).get("checkpoint")
    if checkpoint is None:
        log.info("round %d: no trained model yet, so no predictions are sent with the tasks", n)
        return None
    classes, scores = predict(cfg, checkpoint, reader, inputs)
    version = f"dist-al round {n}"
    target = to_name(cfg.labeling)
    return [[prediction(class_names[c], p, to_name=target, model_version=version)] for c, p in zip(classes, scores)]


def _push(cfg: Config, wd: Workdir, n: int, client: LabelStudio, ids: list, class_names: list[str]):
    """Pushes the round's tasks that Label Studio does not have yet: those of the exported tasks file, their
    images linked so that Label Studio can show them."""
    from dist_al.campaign.tasks import Linker, linked

    def make_tasks(todo: list) -> tuple[list[dict], set[str]]:
        tasks = json.loads(read_bytes(wd.round_path(n, "export", LABEL_STUDIO_TASKS), wd.storage_options))
        wanted = set(todo)
        tasks = [t for t in tasks if t["data"]["id"] in wanted]
        linker = Linker(cfg.labeling, wd.storage_options)
        data = linked([t["data"] for t in tasks], [t["data"]["id"] for t in tasks], linker)
        return [{**t, "data": d} for t, d in zip(tasks, data)], linker.local_dirs

    return push_round(
        client,
        cfg.labeling,
        wd,
        n,
        ids,
        make_tasks,
        label_config=_label_config(cfg, class_names),
        class_names=class_names,
    )


def label_progress(cfg: Config, wd: Workdir, n: int, labels: dict | None = None) -> tuple[int, int]:
    ids = _round_ids(wd, n)
    labels = _labels(cfg, wd) if labels is None else labels
    return sum(i in labels for i in ids), len(ids)


def labeled_step(cfg: Config, wd: Workdir) -> str:
    n, state = _current(wd)
    if state != "EXPORTED":
        return f"round {n}: not waiting for labels ({(state or 'no round').lower()})"
    records = _records(wd)
    labels = records.load()
    pulled = ""
    if cfg.labeling.backend == "label-studio":
        pulled = "; " + _pull(cfg, wd, n, records, labels)
        labels = records.labels()
    got, want = label_progress(cfg, wd, n, labels)
    lab = cfg.labeling
    waited = time.time() - (wd.state(n) or {}).get("exported_at", time.time())
    if got < want and not (got >= math.ceil(lab.min_fraction * want) and waited >= lab.max_wait_s):
        return f"round {n}: waiting for labels, {got}/{want} received{pulled}"
    wd.set_state(n, "LABELED", labeled_at=time.time())
    if got < want:
        return (
            f"round {n}: {got}/{want} labels received, labeling.min_fraction {lab.min_fraction:g} reached and "
            f"labeling.max_wait_s {lab.max_wait_s:g} passed: the round is labeled{pulled}"
        )
    return f"round {n}: all {want} labels received{pulled}"


def _pull(cfg: Config, wd: Workdir, n: int, records: LabelRecords, labels: dict) -> str:
    """Pulls the round's annotations from Label Studio and ingests them (after pushing what is missing); answers
    what it saw. Writes nothing unless everything was read."""
    lab = cfg.labeling
    client = LabelStudio.from_config(lab)
    class_names = (wd.state(n) or {}).get("classes") or lab.class_names(_n_classes(cfg))  # as exported
    ids = _round_ids(wd, n)
    record, _ = _push(cfg, wd, n, client, ids, class_names)
    pulled = pull_round(client, record, class_names)
    gone = [(tid, i) for tid, i in pulled.deleted if i not in labels]
    if gone:
        raise LabelStudioError(
            f"round {n}: {len(gone)} of its {pulled.pushed} Label Studio tasks are gone from project "
            f"{record['project']} (e.g. task {gone[0][0]} for id {gone[0][1]!r}); dist-al never makes a task twice "
            "by itself: restore them in Label Studio or label those ids by file (dist-al ingest), and the next "
            "tick carries on"
        )
    report = validate_labels(pulled.rows, known_ids=set(ids), n_classes=len(class_names), existing=labels)
    records.append(
        report.accepted, source=f"label-studio project {record['project']}", round_=n, predicted=pulled.predicted
    )
    kept = sum(pulled.predicted.get(i) == label for i, label in report.accepted)
    _update_counts(
        wd, n, pushed=pulled.pushed, annotated=pulled.annotated, skipped=pulled.skipped, rejected=report.n_rejected
    )
    line = (
        f"Label Studio: {pulled.annotated}/{pulled.pushed} annotated, {pulled.skipped} skipped; "
        + _accepted(report)
        + (f" ({kept} as predicted)" if pulled.predicted and report.accepted else "")
    )
    rejected = [part for part in report.summary().split("; ")[1:] if part.startswith("rejected: ")]
    return line + (f"; {rejected[0]}" if rejected else "")


def _accepted(report: IngestReport) -> str:
    n = len(report.accepted)
    return f"{n} new label{'' if n == 1 else 's'} accepted"


def check_training_inputs(cfg: Config) -> None:
    """What training will read besides the labeled rows, checked before anything starts or is written: the
    model (factory, kwargs, classifier) and the eval set's footers (``eval.uri``)."""
    from dist_al.campaign.train import open_eval_set
    from dist_al.models.build import build_model

    build_model(cfg.model.model_copy(update={"checkpoint": None}), seed=cfg.train_seed)
    if cfg.eval.uri is not None:
        open_eval_set(cfg.pool, cfg.eval.uri, cfg.inputs)


def train_step(cfg: Config, wd: Workdir) -> str:
    from dist_al.campaign.train import train
    from dist_al.models.build import read_weights
    from dist_al.runtime.cluster import cluster_session

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
    from dist_al.campaign.tasks import check_columns

    check_training_inputs(cfg)
    wd = open_workdir(cfg, create=False)
    n, state = _current(wd)
    if state in (None, "TRAINED"):  # before minutes of selection, what would keep it from reaching annotators
        check_columns(cfg.labeling, open_pool(cfg.pool))
        cfg.labeling.class_names(_n_classes(cfg))
        if cfg.labeling.backend == "label-studio":
            LabelStudio.from_config(cfg.labeling).check()
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
    if class_names is None:
        class_names = cfg.labeling.classes
    rows = read_labels(uri, storage_options=cfg.pool.storage_options, id_type=id_type, class_names=class_names)
    n_classes = _n_classes(cfg)

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

    records = _records(wd)
    report = validate_labels(rows, known_ids=known, n_classes=n_classes, existing=records.load())
    if report.n_rejected and not report.accepted:
        raise LabelFileError(f"labels file {uri}: no label accepted; {report.summary().split('; ', 1)[1]}")
    if report.accepted:
        wd.create()
    n, _ = _current(wd)
    records.append(report.accepted, source=os.path.basename(uri), round_=n)
    if n and report.n_rejected:
        _update_counts(wd, n, rejected_in_files=_counts(wd, n).get("rejected_in_files", 0) + report.n_rejected)
    return report.summary()


def status_table(cfg: Config) -> str:
    """Per round: its state, how many rows were selected, pushed to Label Studio, annotated there, skipped,
    accepted as labels and rejected, and what training made of them."""
    wd = open_workdir(cfg, create=False)
    labels = _labels(cfg, wd)
    lines = [
        f"workdir {wd.uri}: {len(labels)} labels recorded",
        "",
        "| round | state | strategy | selected | pushed | annotated | skipped | accepted | rejected | train rows "
        "| eval accuracy |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n in wd.rounds():
        state = wd.state(n) or {"state": "INCOMPLETE"}
        selected = wd.exists(wd.round_path(n, "selection.parquet"))
        got, want = label_progress(cfg, wd, n, labels) if selected else (0, 0)
        counts = _counts(wd, n)
        rejected = counts.get("rejected", 0) + counts.get("rejected_in_files", 0) if counts else ""
        metrics_uri = wd.round_path(n, "metrics.json")
        m = wd.read_json(metrics_uri) if wd.exists(metrics_uri) else {}
        acc = "" if m.get("accuracy") is None else f"{m['accuracy']:.3f}"
        lines.append(
            f"| {n} | {state['state']} | {state.get('strategy', '')} | {want} | {counts.get('pushed', '')} | "
            f"{counts.get('annotated', '')} | {counts.get('skipped', '')} | {got} | {rejected} | "
            f"{m.get('train_rows', '')} | {acc} |"
        )
    return "\n".join(lines)
