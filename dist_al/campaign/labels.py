"""Selections out to labelers, labels back in, and the append-only label records.

Out: :func:`export_selection` writes a round's selection under a prefix (local dir
or object-store prefix) as ``selection.parquet`` and ``selection.csv`` (columns
``id, rank, strategy, score, data_ref``) and ``label_studio_tasks.json`` (Label
Studio import tasks, one per selected row)::

    {"data": {"id": 17, "rank": 1, "ref": "s3://bucket/pool#id=17"},
     "meta": {"strategy": "badge", "score": null, "pool_uri": "...", "id_column": "id"}}

Label Studio reads ``data`` as the task's variables (``$id``, ``$rank``,
``$ref`` in a labeling config, see :func:`label_studio_config`) and keeps
``meta`` as opaque per-task metadata.  ``data_ref`` / ``ref`` says where a
labeler finds the row: ``"{pool_uri}#{id_column}={id}"`` unless the caller
passes its own mapping (e.g. an image URL per id).  ``task_data`` adds what
annotators see (``image``, ``text``, ``context``, ``features``: see
``dist_al.campaign.tasks``) and ``predictions`` the model's proposal.  File names
are fixed; no pool value ever becomes part of a path.  Every file is written
atomically, and ``selection.parquet`` last, so its presence means the export is
complete.

In: :func:`read_labels` reads ``(id, label)`` rows from Parquet or CSV (columns
``id`` and ``label``; extra columns ignored) or from a Label Studio JSON export
(the "JSON" export format: a list of tasks, each with ``data`` and
``annotations``).  The format is chosen by extension (``.parquet``, ``.csv``,
``.json``).  For a Label Studio task the pool id is ``data.id`` (what
``export_selection`` put there; the task's own top-level ``id`` is Label
Studio's), and the label comes from the latest (by ``updated_at``, then
``created_at``, then position) non-cancelled annotation that has a ``choices``
result; tasks without one are skipped (not labeled yet).  Ids are normalised to
the pool's id type (``"12"`` -> ``12`` for int pools, ``12`` -> ``"12"`` for
string pools); labels are normalised to class indices: an int, a digit string,
or (with ``class_names``) a class name.  A value that cannot be normalised is
passed through unchanged, so that :func:`validate_labels` rejects that row and
reports it, instead of the whole file failing.  Only structural problems
(unsupported extension, missing columns, not a Label Studio export) raise
:class:`LabelFileError`.

Ingest policy (:func:`validate_labels`).  Every input row lands in exactly one
bucket, checked in this order, so the counts add up to the number of rows:

1. ``unknown_id`` (rejected): the id is not in the pool.
2. ``conflict`` (rejected): the same id appears more than once in the file
   with different labels; ALL of that id's rows are rejected, nothing about
   that id is recorded.
3. ``invalid_label`` (rejected): the label is not an integer (a name not in
   ``class_names``, a float, empty, several choices in one annotation).
4. ``out_of_range`` (rejected): an integer label outside ``[0, n_classes)``.
5. ``duplicate`` (no-op): the same id again with the same label; the first
   row counts, the rest are duplicates.
6. ``conflict_existing`` (rejected): the id was already labeled in an earlier
   ingest with a DIFFERENT label.  Label records are never rewritten, so a
   relabel is reported, never applied.
7. ``already_labeled`` (no-op): the id was already labeled earlier with the
   same label.  Re-ingesting a file therefore changes nothing.
8. accepted: everything else, in file order.

Label records (:class:`LabelRecords`; :func:`append_label_records`,
:func:`load_label_records`): each ingest that accepts anything writes ONE new
immutable Parquet file under the records prefix, named ``<UTC timestamp>-<content
hash>.parquet`` (never from ids), with columns ``id, label, round, source,
ingested_at, predicted`` (``predicted``: the class the model proposed to the
annotator, null when none was).  Files are never rewritten or deleted; the current
labels are all records in name (= time) order, read through the latest checkpoint
(see :class:`LabelRecords`) so that a read stays bounded however many there are.
Should two records ever disagree about an id (two ingests racing on one workdir),
the earlier record wins and a warning names the later file.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import numbers
import os
import re
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any
from xml.sax.saxutils import quoteattr

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from dist_al.core.errors import UserError
from dist_al.data.storage import (
    exists,
    filesystem,
    remove_tree,
    retrying,
    write_bytes_atomic,
    write_table_atomic,
)
from dist_al.faults import crash_point

__all__ = [
    "EXPORT_FILES",
    "REASONS",
    "IngestReport",
    "LabelFileError",
    "append_label_records",
    "export_selection",
    "label_studio_config",
    "load_label_records",
    "read_labels",
    "validate_labels",
]

SELECTION_PARQUET = "selection.parquet"
SELECTION_CSV = "selection.csv"
LABEL_STUDIO_TASKS = "label_studio_tasks.json"
EXPORT_FILES = (SELECTION_PARQUET, SELECTION_CSV, LABEL_STUDIO_TASKS)

# Reason -> (rejected?, singular, plural) in the order the policy checks them.
REASONS: dict[str, tuple[bool, str, str]] = {
    "unknown_id": (True, "unknown id", "unknown ids"),
    "conflict": (True, "conflicting row", "conflicting rows"),
    "invalid_label": (True, "non-integer label", "non-integer labels"),
    "out_of_range": (True, "out-of-range label", "out-of-range labels"),
    "duplicate": (False, "duplicate", "duplicates"),
    "conflict_existing": (True, "conflict with an earlier label", "conflicts with earlier labels"),
    "already_labeled": (False, "already labeled", "already labeled"),
}
MAX_EXAMPLES = 5
_ID_ONLY = ("unknown_id", "duplicate", "already_labeled")  # examples shown as the id alone
RECORD_COLUMNS = ("id", "label", "round", "source", "ingested_at", "predicted")
_RECORD_NAME = re.compile(r"^\d{8}T\d{12}Z-[0-9a-f]{16}\.parquet$")
_STAMP = "%Y%m%dT%H%M%S%f"
CHECKPOINTS = "_checkpoints"
LAST_CHECKPOINT = "_last_checkpoint.json"
CHECKPOINT_EVERY = 50  # records after the last checkpoint that make an append write the next one
KEEP_CHECKPOINTS = 2
_INT_RE = re.compile(r"\s*[+-]?\d+\s*")
_FRACTION_RE = re.compile(r"\.(\d+)")


class LabelFileError(UserError):
    """A labels file that cannot be read as labels at all (format, columns, structure)."""


# ---------------------------------------------------------------------------------------- export


def export_selection(
    selection: pa.Table,
    out_prefix: str,
    *,
    data_reference: Mapping | None = None,
    pool_uri: str,
    id_column: str,
    storage_options: dict | None = None,
    task_data: list[dict] | None = None,
    predictions: list[list[dict]] | None = None,
    meta: dict | None = None,
) -> dict[str, str]:
    """Write the selection for labelers; return {file name: URI} for the three files.

    ``selection`` needs an ``id`` column; ``rank`` defaults to 1..n, ``strategy``
    and ``score`` to null.  ``data_reference`` maps every selected id to where a
    labeler finds the row; without it the reference is ``"{pool_uri}#{id_column}={id}"``.
    ``task_data`` (one dict per selected row, in order) adds what annotators see to each task's ``data``
    (``dist_al.campaign.tasks``), ``predictions`` the model's proposal per task, ``meta`` keys to every task's meta.
    """
    if not isinstance(selection, pa.Table):
        raise TypeError(f"selection must be a pyarrow.Table, got {type(selection).__name__}")
    if "id" not in selection.column_names:
        raise ValueError(f"selection has no 'id' column (columns: {', '.join(selection.column_names) or 'none'})")
    n = selection.num_rows
    ids = selection.column("id").to_pylist()
    if any(i is None for i in ids):
        raise ValueError("selection has null ids")
    ranks = selection.column("rank").to_pylist() if "rank" in selection.column_names else list(range(1, n + 1))
    strategies = selection.column("strategy").to_pylist() if "strategy" in selection.column_names else [None] * n
    scores = selection.column("score").to_pylist() if "score" in selection.column_names else [None] * n
    scores = [None if s is None or not math.isfinite(float(s)) else float(s) for s in scores]

    if data_reference is None:
        refs = [f"{pool_uri}#{id_column}={i}" for i in ids]
    else:
        missing = [i for i in ids if i not in data_reference]
        if missing:
            raise ValueError(
                f"data_reference has no entry for {len(missing)} selected id(s), e.g. "
                + ", ".join(repr(i) for i in missing[:MAX_EXAMPLES])
            )
        refs = [str(data_reference[i]) for i in ids]

    id_type = selection.schema.field("id").type
    table = pa.table(
        {
            "id": selection.column("id").combine_chunks() if n else pa.array([], id_type),
            "rank": pa.array(ranks, pa.int64()),
            "strategy": pa.array(strategies, pa.string()),
            "score": pa.array(scores, pa.float64()),
            "data_ref": pa.array(refs, pa.string()),
        }
    )

    shown = task_data if task_data is not None else [{}] * n
    if len(shown) != n or (predictions is not None and len(predictions) != n):
        raise ValueError(f"task_data and predictions need one entry per selected row ({n})")
    tasks: list[dict[str, Any]] = [
        {
            "data": {**extra, "id": i, "rank": r, "ref": ref},
            "meta": {"strategy": s, "score": sc, "pool_uri": pool_uri, "id_column": id_column, **(meta or {})},
        }
        for i, r, ref, s, sc, extra in zip(ids, ranks, refs, strategies, scores, shown)
    ]
    for task, proposed in zip(tasks, predictions or []):
        if proposed:
            task["predictions"] = proposed
    tasks_bytes = json.dumps(tasks, indent=1, allow_nan=False).encode("utf-8")

    csv_buf = io.BytesIO()
    pacsv.write_csv(table, csv_buf)

    uris = {name: _join(out_prefix, name) for name in EXPORT_FILES}
    write_bytes_atomic(uris[SELECTION_CSV], csv_buf.getvalue(), storage_options)
    crash_point("export.after_first_file")
    write_bytes_atomic(uris[LABEL_STUDIO_TASKS], tasks_bytes, storage_options)
    write_table_atomic(uris[SELECTION_PARQUET], table, storage_options)  # last: marks a complete export
    return uris


def label_studio_config(
    class_names: Iterable[str],
    *,
    from_name: str = "label",
    image: bool = False,
    text: bool = False,
    context: bool = False,
    features: bool = False,
) -> str:
    """A Label Studio labeling config for single-class labeling of exported tasks.

    Shows the row's id, then what the tasks carry: the image (``$image``), the text (``$text``), the context
    columns and the feature vector as tables (``$context``, ``$features``); with neither an image nor a text,
    the row's reference (``$ref``). One ``Choices`` control named ``from_name`` holds the class names in
    class-index order (pass the same ``class_names`` to :func:`read_labels`).
    """
    names = [str(c) for c in class_names]
    if not names:
        raise ValueError("class_names is empty")
    if len(set(names)) != len(names):
        raise ValueError("class_names has repeated names")
    shown = ['  <Header value="$id"/>']
    if image:
        shown.append('  <Image name="image" value="$image" zoom="true"/>')
    if text:
        shown.append('  <Text name="text" value="$text"/>')
    if not (image or text):
        shown.append('  <Text name="ref" value="$ref"/>')
    if context:
        shown.append('  <Table name="context" value="$context"/>')
    if features:
        shown.append('  <Table name="features" value="$features"/>')
    to_name = "image" if image else "text" if text else "ref"
    choices = "\n".join(f"    <Choice value={quoteattr(c)}/>" for c in names)
    return (
        "<View>\n"
        + "\n".join(shown)
        + "\n"
        + f'  <Choices name={quoteattr(from_name)} toName="{to_name}" choice="single" showInline="true">\n'
        + f"{choices}\n"
        + "  </Choices>\n"
        + "</View>\n"
    )


# ------------------------------------------------------------------------------------------ read


def read_labels(
    uri: str,
    *,
    storage_options: dict | None = None,
    id_type: str,
    class_names: list[str] | None = None,
    from_name: str | None = None,
) -> list[tuple]:
    """(id, label) rows of a labels file, ids normalised to ``id_type`` ("int" or "str").

    ``class_names`` maps label names to indices (``class_names[i]`` -> ``i``);
    ``from_name`` picks one ``Choices`` control of a Label Studio project that has
    several (required then).  Values that cannot be normalised are returned as
    they are, for :func:`validate_labels` to reject and report.
    """
    if id_type not in ("int", "str"):
        raise ValueError(f"id_type must be 'int' or 'str', got {id_type!r}")
    names: dict[str, int] | None = None
    if class_names is not None:
        names = {str(c): i for i, c in enumerate(class_names)}
        if len(names) != len(class_names):
            raise UserError(f"class names repeat: {', '.join(map(str, class_names))}")
    path_part = uri.split("?", 1)[0].rstrip("/")
    base = path_part.rsplit("/", 1)[-1]
    ext = "." + base.rsplit(".", 1)[-1].lower() if "." in base else ""
    if ext not in (".parquet", ".csv", ".json"):
        raise LabelFileError(
            f"labels file {uri}: unsupported extension {ext or '(none)'!r}; expected .parquet or .csv "
            "(columns id, label) or .json (a Label Studio JSON export)"
        )
    fs, path = filesystem(uri, storage_options)
    try:
        with fs.open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError as e:
        raise LabelFileError(f"labels file {uri} does not exist") from e
    except (PermissionError, IsADirectoryError) as e:
        raise LabelFileError(f"labels file {uri} cannot be read: {e.strerror or e}") from e

    if ext == ".json":
        raw = _label_studio_rows(uri, data, from_name)
    else:
        raw = _tabular_rows(uri, data, ext)
    return [(_normalise_id(i, id_type), _normalise_label(lab, names)) for i, lab in raw]


def _tabular_rows(uri: str, data: bytes, ext: str) -> list[tuple]:
    if ext == ".parquet":
        try:
            pf = pq.ParquetFile(io.BytesIO(data))
        except (pa.ArrowException, OSError) as e:
            raise LabelFileError(f"labels file {uri}: not a readable Parquet file ({e})") from e
        found = pf.schema_arrow.names
        _require_columns(uri, found)
        table = pf.read(columns=["id", "label"])
    else:
        try:
            # id and label stay strings: inference would turn "007" into 7 or ids into floats.
            table = pacsv.read_csv(
                io.BytesIO(data),
                convert_options=pacsv.ConvertOptions(column_types={"id": pa.string(), "label": pa.string()}),
            )
        except pa.ArrowInvalid as e:
            raise LabelFileError(f"labels file {uri}: not a readable CSV file ({e})") from e
        _require_columns(uri, table.column_names)
    return list(zip(table.column("id").to_pylist(), table.column("label").to_pylist()))


def _require_columns(uri: str, found: list[str]) -> None:
    missing = [c for c in ("id", "label") if c not in found]
    if missing:
        raise LabelFileError(
            f"labels file {uri}: missing column(s) {', '.join(missing)}; "
            f"found: {', '.join(found) if found else 'no columns'}; expected columns id, label"
        )


def _label_studio_rows(uri: str, data: bytes, from_name: str | None) -> list[tuple]:
    try:
        tasks = json.loads(data.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LabelFileError(f"labels file {uri}: not valid JSON ({e})") from e
    if not isinstance(tasks, list):
        raise LabelFileError(
            f"labels file {uri}: a Label Studio JSON export is a list of tasks; got a JSON {type(tasks).__name__}"
        )
    rows = []
    for k, task in enumerate(tasks):
        where = f"labels file {uri}: task #{k}" + (
            f" (Label Studio id {task['id']})" if isinstance(task, dict) and "id" in task else ""
        )
        if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
            raise LabelFileError(
                f"{where} has no 'data' object; expected Label Studio's JSON export format "
                "(not JSON-MIN or CSV), with tasks imported from label_studio_tasks.json"
            )
        if "id" not in task["data"]:
            raise LabelFileError(
                f"{where}: data has no 'id' (keys: {', '.join(map(str, task['data'])) or 'none'}); "
                "tasks must come from dist-al's label_studio_tasks.json"
            )
        annotations = task.get("annotations")
        if annotations is None:
            raise LabelFileError(f"{where} has no 'annotations' list; expected Label Studio's JSON export format")
        label = latest_label(annotations, where=where, from_name=from_name)
        if label is not None:  # else not labeled (yet): no submitted annotation with a choice
            rows.append((task["data"]["id"], label))
    return rows


def latest_label(annotations: list, *, where: str, from_name: str | None = None):
    """The label of a Label Studio task's latest (by ``updated_at``, then ``created_at``, then position)
    non-cancelled annotation with a choice: the choice, or the list of choices when it holds several (which
    the ingest policy rejects); None when there is none."""
    best, best_key = None, None
    for pos, ann in enumerate(annotations):
        if not isinstance(ann, dict) or ann.get("was_cancelled"):
            continue
        choices = _choices_of(where, ann, from_name)
        if choices is None:
            continue
        key = (_timestamp(ann.get("updated_at")), _timestamp(ann.get("created_at")), pos)
        if best_key is None or key > best_key:
            best, best_key = choices, key
    if best is None:
        return None
    return best[0] if len(best) == 1 else list(best)


def _choices_of(where: str, ann: dict, from_name: str | None) -> list | None:
    """The choices of one annotation (None if it has no choices result)."""
    results = [r for r in ann.get("result") or [] if isinstance(r, dict) and r.get("type") == "choices"]
    if from_name is not None:
        results = [r for r in results if r.get("from_name") == from_name]
    else:
        controls = sorted({str(r.get("from_name")) for r in results})
        if len(controls) > 1:
            raise LabelFileError(
                f"{where}: annotation has choices from several controls ({', '.join(controls)}); "
                "pass from_name to say which one holds the class"
            )
    if not results:
        return None
    out: list = []
    for r in results:
        value = r.get("value")
        out.extend((value.get("choices") if isinstance(value, dict) else None) or [])
    return out or None


def _timestamp(s) -> float:
    if not isinstance(s, str):
        return float("-inf")
    s = s.strip().replace("Z", "+00:00")
    m = _FRACTION_RE.search(s)
    if m:  # Python 3.10's fromisoformat takes only 3 or 6 fraction digits
        s = s[: m.start()] + "." + m.group(1)[:6].ljust(6, "0") + s[m.end() :]
    try:
        t = datetime.fromisoformat(s)
    except ValueError:
        return float("-inf")
    if t.tzinfo is None:
        t = t.replace(tzinfo=timezone.utc)
    return t.timestamp()


def _normalise_id(value, id_type: str):
    if id_type == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and _INT_RE.fullmatch(value):
            return int(value)
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


def _normalise_label(value, names: dict[str, int] | None):
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        if names is not None and value in names:
            return names[value]
        if _INT_RE.fullmatch(value):
            return int(value)
        if names is not None and value.strip() in names:
            return names[value.strip()]
    return value


# -------------------------------------------------------------------------------------- validate


@dataclass
class IngestReport:
    """What an ingest did with each row: accepted, or which reason (see the module policy)."""

    accepted: list[tuple] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))
    examples: dict[str, list[tuple]] = field(default_factory=lambda: {r: [] for r in REASONS})
    _keys: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    _hidden: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def n_rows(self) -> int:
        return len(self.accepted) + sum(self.counts.values())

    @property
    def n_rejected(self) -> int:
        return sum(c for r, c in self.counts.items() if REASONS[r][0])

    def _add(self, reason: str, example: tuple, key=None) -> None:
        """Count one row; keep it as an example (one per ``key`` when given, at most MAX_EXAMPLES)."""
        self.counts[reason] += 1
        if key is not None:
            keys = self._keys.setdefault(reason, set())
            if key in keys:
                return
            keys.add(key)
        if len(self.examples[reason]) < MAX_EXAMPLES:
            self.examples[reason].append(example)
        else:
            self._hidden[reason] = True

    def summary(self) -> str:
        """One line, e.g. "412 labels accepted; rejected: 3 unknown ids (e.g. 99999, ...), ..."."""
        n = len(self.accepted)
        parts = [f"{n} label{'' if n == 1 else 's'} accepted"]
        rejected = [self._phrase(r) for r, (rej, _, _) in REASONS.items() if rej and self.counts[r]]
        noops = [self._phrase(r) for r, (rej, _, _) in REASONS.items() if not rej and self.counts[r]]
        parts.append("rejected: " + ", ".join(rejected) if rejected else "nothing rejected")
        if noops:
            parts.append("no-ops: " + ", ".join(noops))
        return "; ".join(parts)

    def _phrase(self, reason: str) -> str:
        c = self.counts[reason]
        _, one, many = REASONS[reason]
        shown = [self._example(reason, e) for e in self.examples[reason]]
        hidden = self._hidden.get(reason, False)
        if reason in _ID_ONLY:
            ex = ", ".join(shown) + (", ..." if hidden else "")
        else:
            ex = "; ".join(shown) + ("; ..." if hidden else "")
        return f"{c} {one if c == 1 else many} ({'e.g. ' if hidden else ''}{ex})"

    @staticmethod
    def _example(reason: str, e: tuple) -> str:
        if reason in _ID_ONLY:
            return repr(e[0])
        if reason == "conflict":
            return f"id {e[0]!r}: " + " vs ".join(repr(v) for v in e[1])
        if reason == "conflict_existing":
            return f"id {e[0]!r}: {e[1]!r}, recorded {e[2]!r}"
        return f"id {e[0]!r}: {e[1]!r}"


def validate_labels(
    rows: Iterable[tuple],
    *,
    known_ids: set | Callable,
    n_classes: int,
    existing: Mapping,
) -> IngestReport:
    """Apply the ingest policy (module docstring) to (id, label) rows.

    ``known_ids`` is a container of the pool's ids (``id in known_ids``) or a
    callable that takes a list of distinct candidate ids and returns one bool
    per id (so a pool can answer in one pass); ``existing`` maps already
    recorded ids to labels (:func:`load_label_records`).
    """
    if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 1:
        raise ValueError(f"n_classes must be a positive int, got {n_classes!r}")
    rows = [tuple(r) for r in rows]
    for k, r in enumerate(rows):
        if len(r) != 2:
            raise ValueError(f"row {k} is not an (id, label) pair: {r!r}")
    rows = [(_py_int(i), _py_int(lab)) for i, lab in rows]  # numpy integers -> int
    report = IngestReport()

    candidates = list(dict.fromkeys(i for i, _ in rows if _hashable_id(i)))
    if not hasattr(known_ids, "__contains__"):
        if not callable(known_ids):
            raise TypeError("known_ids must be a container of ids or a callable")
        answers = list(known_ids(candidates))
        if len(answers) != len(candidates):
            raise ValueError(f"known_ids returned {len(answers)} answers for {len(candidates)} ids")
        known = {i for i, ok in zip(candidates, answers) if ok}
    else:
        known = {i for i in candidates if i in known_ids}

    # Distinct labels per known id, to find in-file conflicts.
    labels_of: dict = {}
    for i, lab in rows:
        if _hashable_id(i) and i in known:
            seen = labels_of.setdefault(i, [])
            key = _label_key(lab)
            if all(_label_key(x) != key for x in seen):
                seen.append(lab)

    first_seen: set = set()
    for i, lab in rows:
        if not (_hashable_id(i) and i in known):
            report._add("unknown_id", (i, lab))
            continue
        if len(labels_of[i]) > 1:
            report._add("conflict", (i, tuple(labels_of[i])), key=i)
            continue
        if not isinstance(lab, int) or isinstance(lab, bool):
            report._add("invalid_label", (i, lab))
            continue
        if not 0 <= lab < n_classes:
            report._add("out_of_range", (i, lab))
            continue
        if i in first_seen:
            report._add("duplicate", (i, lab), key=i)
            continue
        first_seen.add(i)
        if i in existing:
            before = existing[i]
            if before == lab:
                report._add("already_labeled", (i, lab))
            else:
                report._add("conflict_existing", (i, lab, before))
            continue
        report.accepted.append((i, lab))
    return report


def _py_int(v):
    if isinstance(v, numbers.Integral) and not isinstance(v, (bool, int)):
        return int(v)
    return v


def _hashable_id(i) -> bool:
    return (isinstance(i, int) and not isinstance(i, bool)) or isinstance(i, str)


def _label_key(lab):
    if isinstance(lab, bool):
        return ("bool", lab)
    if isinstance(lab, int):
        return ("int", lab)
    return ("other", repr(lab))


# --------------------------------------------------------------------------------------- records


def _record_table(accepted: list[tuple], *, round_: int, source: str, predicted: Mapping | None, now) -> pa.Table:
    ids = [i for i, _ in accepted]
    labels = [lab for _, lab in accepted]
    if any(isinstance(v, bool) or not isinstance(v, int) for v in labels):
        raise ValueError("record labels must be ints (validate_labels first)")
    if all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        id_arr = pa.array(ids, pa.int64())
    elif all(isinstance(i, str) for i in ids):
        id_arr = pa.array(ids, pa.string())
    else:
        raise ValueError("record ids must be all ints or all strings")
    if len(set(ids)) != len(ids):
        raise ValueError("record ids repeat (validate_labels first)")
    return pa.table(
        {
            "id": id_arr,
            "label": pa.array(labels, pa.int64()),
            "round": pa.array([int(round_)] * len(ids), pa.int64()),
            "source": pa.array([str(source)] * len(ids), pa.string()),
            "ingested_at": pa.array([now] * len(ids), pa.timestamp("us", tz="UTC")),
            "predicted": pa.array([(predicted or {}).get(i) for i in ids], pa.int64()),
        }
    )


def _record_columns(table: pa.Table) -> pa.Table:
    """A record's columns in RECORD_COLUMNS order; records written before ``predicted`` existed get nulls."""
    if "predicted" not in table.column_names:
        table = table.append_column("predicted", pa.nulls(table.num_rows, pa.int64()))
    return table.select(list(RECORD_COLUMNS))


class LabelRecords:
    """The label records under one prefix: one immutable file per ingest, read through the latest checkpoint.

    Records are named ``<UTC timestamp>-<content hash>.parquet`` and never rewritten or deleted: they are the
    audit trail. Reading them all would cost a GET per ingest ever made, so every ``CHECKPOINT_EVERY`` records
    an append (under the workdir lock, as every append is) also writes a checkpoint, as table formats do:
    ``_checkpoints/<last record covered>.parquet`` holds every row of every record up to that one (with a
    ``record`` column naming its file), and ``_last_checkpoint.json`` points at it. A load then reads the
    pointer, the checkpoint and the records named after it (on S3 one LIST that starts after that name), so
    the objects read per load stay below ``CHECKPOINT_EVERY + 2`` however long the campaign. Checkpoints are
    derived and replaceable: a crash between a checkpoint and its pointer leaves the older pair in force, and
    only the ``KEEP_CHECKPOINTS`` newest are kept. A new record's name always sorts after every record seen,
    so a host whose clock lags cannot slip a record behind a checkpoint.
    """

    def __init__(self, prefix: str, storage_options: dict | None = None):
        self.prefix = prefix.rstrip("/")
        self.storage_options = storage_options or {}
        self.fs, self.root = filesystem(self.prefix, self.storage_options)
        self.root = self.root.rstrip("/")
        self.objects_read = 0  # by the last load: the pointer, the checkpoint and the records after it
        self._checkpoint: pa.Table | None = None
        self._through = ""  # the last record the checkpoint covers
        self._tail: list[tuple[str, pa.Table]] = []  # the records after it, in name order
        self._loaded = False

    # -- reading ------------------------------------------------------------------------

    def load(self) -> dict:
        """All recorded labels, {id: label}; where two records disagree about an id, the earlier one wins
        (and a warning names the later record)."""
        self.objects_read = 0
        self._checkpoint, self._through = None, ""
        pointer = self._read(LAST_CHECKPOINT)
        if pointer is not None:
            last = json.loads(pointer)
            self._checkpoint = pq.read_table(io.BytesIO(self._read_required(last["checkpoint"])))
            self._through = last["through"]
        self._tail = [
            (name, _record_columns(self._parquet(name, self._read_required(name))))
            for name in self._names_after(self._through)
        ]
        self._loaded = True
        return self.labels()

    def labels(self) -> dict:
        """The labels as last loaded, with what this instance appended since (no I/O)."""
        parts = [self._checkpoint.select(["id", "label", "record"])] if self._checkpoint is not None else []
        parts += [t.select(["id", "label"]).append_column("record", pa.array([n] * t.num_rows)) for n, t in self._tail]
        if not parts or not sum(p.num_rows for p in parts):
            return {}
        rows = pa.concat_tables(parts, promote_options="permissive")
        ids = rows.column("id").to_numpy()
        labels = rows.column("label").to_numpy()
        _, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
        disagree = np.flatnonzero(labels != labels[first[inverse.reshape(-1)]])
        if disagree.size:
            records = rows.column("record").to_numpy(zero_copy_only=False)
            for name, count in zip(*np.unique(records[disagree], return_counts=True)):
                warnings.warn(
                    f"label record {_join(self.prefix, name)}: {count} label(s) disagree with earlier records; "
                    "earlier kept",
                    stacklevel=3,
                )
        first.sort()
        return dict(zip(ids[first].tolist(), labels[first].tolist()))

    def _read(self, name: str) -> bytes | None:
        self.objects_read += 1
        try:
            return retrying(f"reading {_join(self.prefix, name)}", self.fs.cat_file, f"{self.root}/{name}")
        except FileNotFoundError:
            return None

    def _read_required(self, name: str) -> bytes:
        data = self._read(name)
        if data is None:
            raise LabelFileError(f"label records {self.prefix}: {name} is missing")
        return data

    def _parquet(self, name: str, data: bytes) -> pa.Table:
        table = pq.read_table(io.BytesIO(data))
        missing = [c for c in ("id", "label") if c not in table.column_names]
        if missing:
            raise LabelFileError(
                f"label record {_join(self.prefix, name)}: missing column(s) {', '.join(missing)}; "
                f"found: {', '.join(table.column_names)}"
            )
        for column, kind in (("round", pa.int64()), ("source", pa.string())):
            if column not in table.column_names:
                table = table.append_column(column, pa.nulls(table.num_rows, kind))
        if "ingested_at" not in table.column_names:
            table = table.append_column("ingested_at", pa.nulls(table.num_rows, pa.timestamp("us", tz="UTC")))
        return table

    def _names_after(self, after: str) -> list[str]:
        """Names of the record files that sort after ``after``, in order (one LIST from there on S3)."""
        if isinstance(self.fs, LocalFileSystem):
            try:
                names = os.listdir(self.root)
            except FileNotFoundError:
                return []
        elif hasattr(self.fs, "call_s3"):  # s3fs: LIST from `after` on, not from the first record ever written
            bucket, _, key = self.root.partition("/")
            names, token = [], None
            while True:
                kwargs = {"Bucket": bucket, "Prefix": key + "/", "Delimiter": "/", "StartAfter": f"{key}/{after}"}
                if token:
                    kwargs["ContinuationToken"] = token
                page = retrying(f"listing {self.prefix}", self.fs.call_s3, "list_objects_v2", **kwargs)
                names += [o["Key"].rsplit("/", 1)[-1] for o in page.get("Contents", [])]
                token = page.get("NextContinuationToken")
                if not token:
                    break
        else:
            self.fs.invalidate_cache(self.root)
            try:
                entries = retrying(f"listing {self.prefix}", self.fs.ls, self.root, detail=False)
            except FileNotFoundError:
                return []
            names = [e.rstrip("/").rsplit("/", 1)[-1] for e in entries]
        return sorted(n for n in names if _RECORD_NAME.match(n) and n > after)

    # -- writing ------------------------------------------------------------------------

    def append(
        self, accepted: list[tuple], *, source: str, round_: int, predicted: Mapping | None = None
    ) -> str | None:
        """Writes one new immutable record of the ``accepted`` (id, label) rows; returns its URI (None when
        nothing was accepted). ``predicted`` maps ids to the class the model proposed to the annotator."""
        accepted = [(_py_int(i), _py_int(lab)) for i, lab in accepted]
        if not accepted:
            return None
        if not self._loaded:
            self.load()
        now = datetime.now(timezone.utc)
        table = _record_table(accepted, round_=round_, source=source, predicted=predicted, now=now)
        last = self._tail[-1][0] if self._tail else self._through
        stamp = now
        if last and stamp.strftime(_STAMP) + "Z" <= last[:22]:  # this clock lags the one that wrote `last`
            stamp = datetime.strptime(last[:21], _STAMP).replace(tzinfo=timezone.utc) + timedelta(microseconds=1)
        digest = hashlib.sha256(
            json.dumps([int(round_), str(source), [[i, lab] for i, lab in accepted]], sort_keys=True).encode()
        ).hexdigest()[:16]
        name = f"{stamp.strftime(_STAMP)}Z-{digest}.parquet"
        uri = _join(self.prefix, name)
        if exists(uri, self.storage_options):  # same content in the same microsecond: never overwrite a record
            raise FileExistsError(f"label record {uri} already exists")
        write_table_atomic(uri, table, self.storage_options)
        self._tail.append((name, table))
        if len(self._tail) >= CHECKPOINT_EVERY:
            self._write_checkpoint()
        return uri

    def _write_checkpoint(self) -> None:
        through = self._tail[-1][0]
        parts = [self._checkpoint] if self._checkpoint is not None else []
        parts += [t.append_column("record", pa.array([n] * t.num_rows, pa.string())) for n, t in self._tail]
        table = pa.concat_tables(parts, promote_options="permissive")
        name = f"{CHECKPOINTS}/{through}"
        write_table_atomic(_join(self.prefix, name), table, self.storage_options)
        crash_point("labels.after_checkpoint")
        pointer = {"checkpoint": name, "through": through, "rows": table.num_rows}
        write_bytes_atomic(_join(self.prefix, LAST_CHECKPOINT), json.dumps(pointer).encode(), self.storage_options)
        self._checkpoint, self._through, self._tail = table, through, []
        folder = f"{self.root}/{CHECKPOINTS}"
        older = sorted(p.rsplit("/", 1)[-1] for p in retrying(f"listing {folder}", self.fs.ls, folder, detail=False))
        for old in [n for n in older if _RECORD_NAME.match(n)][:-KEEP_CHECKPOINTS]:
            remove_tree(_join(self.prefix, f"{CHECKPOINTS}/{old}"), self.storage_options)


def append_label_records(
    records_prefix: str,
    accepted: list[tuple],
    *,
    source: str,
    round_: int,
    storage_options: dict | None = None,
    predicted: Mapping | None = None,
) -> str | None:
    """Writes one new immutable record file for ``accepted`` (id, label) rows; returns its URI.

    Nothing accepted -> nothing written, None.  The name is a UTC timestamp plus a
    hash of the content, so name order is ingest order and no id reaches a path.
    """
    return LabelRecords(records_prefix, storage_options).append(
        accepted, source=source, round_=round_, predicted=predicted
    )


def load_label_records(records_prefix: str, storage_options: dict | None = None) -> dict:
    """All recorded labels, {id: label}, earliest record first (see :class:`LabelRecords`)."""
    return LabelRecords(records_prefix, storage_options).load()


def _join(prefix: str, name: str) -> str:
    return prefix.rstrip("/") + "/" + name
