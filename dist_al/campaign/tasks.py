"""What annotators see: each selected row's data in a labeling task, and links their browsers can open.

``labeling.image``, ``labeling.text`` and ``labeling.context`` name pool columns. Their raw values are read for
the round's selected rows at the places recorded when the rows were selected, as stored: an image is a URI or
its bytes, a text is a string, nothing is decoded for a model. A task's data (``export_selection`` adds ``id``,
``rank`` and ``ref``) then holds::

    image     a link to the image          (labeling.image)
    text      the text                     (labeling.text)
    context   {column: value, ...}         (labeling.context, shown as a table)
    features  {"0": x0, "1": x1, ...}      (labeling.features: table)

Image bytes are written once to ``WORKDIR/rounds/NNNN/export/media/<sha256 of the bytes>.<format>`` (the format
sniffed from the bytes; no pool value ever reaches a path) and linked like any image URI.

Links. The tasks file in the workdir keeps URIs as they are (``s3://...``, a path): a link that signs would be
a credential in a file. Tasks pushed to Label Studio get links it can show: ``http(s)://`` as they are;
object-store URIs (``s3://``, ``gs://``) as presigned GET URLs valid ``labeling.presign_expiry_s`` (made through
the pool's storage options, so with the pool's credentials, in memory only), or unsigned with
``presign_expiry_s: null``, for Label Studio's own cloud storage connection to resolve when it shows them (no
expiry; Label Studio then holds credentials for the bucket); local files as ``/data/local-files/?d=PATH``
relative to ``labeling.local_files_root``, Label Studio's LOCAL_FILES_DOCUMENT_ROOT (it must see the same
files, and serves them only under a local-files storage of the project: dist-al adds one for the directories
it links). A relative image path in the pool is relative to the pool's directory.
"""

from __future__ import annotations

import hashlib
import math
import os
import posixpath
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date, datetime
from urllib.parse import quote

import numpy as np
import pyarrow as pa
import torch

from dist_al.config import Config, LabelingConfig
from dist_al.core.errors import UserError
from dist_al.credentials import reveal
from dist_al.data.pool import Pool, find_ids, read_rows, recorded_places, recorded_rows
from dist_al.data.storage import exists, filesystem, write_bytes_atomic
from dist_al.inputs.contract import Reader, ReaderOutput
from dist_al.models.build import build_model, read_weights

LOCAL_FILES = "/data/local-files/?d="
_MEDIA_THREADS = 8
_IMAGE_FORMATS = (
    (b"\x89PNG\r\n\x1a\n", ".png"),
    (b"\xff\xd8\xff", ".jpg"),
    (b"GIF87a", ".gif"),
    (b"GIF89a", ".gif"),
    (b"BM", ".bmp"),
)


def _image_format(data: bytes) -> str:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    return next((ext for magic, ext in _IMAGE_FORMATS if data.startswith(magic)), ".bin")


def _scalar(value):
    """A pool value as JSON can hold it."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    return str(value)


def shown_columns(lab: LabelingConfig) -> list[str]:
    """The pool columns annotators see, image and text first."""
    return [c for c in (lab.image, lab.text) if c is not None] + list(lab.context)


def check_columns(lab: LabelingConfig, pool: Pool) -> None:
    """Raises UserError naming the config key of a shown column the pool does not have."""
    keys = [("labeling.image", lab.image), ("labeling.text", lab.text)] + [("labeling.context", c) for c in lab.context]
    for key, column in keys:
        if column is not None and column not in pool.schema.names:
            raise UserError(
                f"config key {key}: pool {pool.spec.uri} has no column {column!r} "
                f"(columns: {', '.join(pool.schema.names)})"
            )


def row_places(pool: Pool, ids: list, recorded: pa.Table | None) -> np.ndarray:
    """Places of the rows ``ids``, in that order: as recorded at selection, else found in the pool (one pass)."""
    if recorded is not None and set(ids) <= set(recorded.column("id").to_pylist()):
        at = {i: k for k, i in enumerate(recorded.column("id").to_pylist())}
        return recorded_places(pool, recorded.take(pa.array([at[i] for i in ids], pa.int64())))
    found, places = find_ids(pool, np.asarray(ids))
    at = {i: k for k, i in enumerate(found.tolist())}
    return places[[at[i] for i in ids]] if ids else places


@dataclass
class ShownRows:
    """What annotators see of each selected row (in selection order), links still plain URIs."""

    data: list[dict]
    inputs: pa.Table | None = field(default=None, repr=False)  # the reader's columns, for predictions


def _values(pool: Pool, ids: list, places: np.ndarray, columns: Sequence[str], recorded: pa.Table | None) -> pa.Table:
    """The ``columns`` of the rows as stored: from the rows recorded at selection when they hold them (the
    workers had them in hand), else read from the pool (the column chunks of the row groups that hold the rows)."""
    found, _, values = recorded_rows(pool, recorded, ids, columns)
    at = {i: k for k, i in enumerate(found.tolist())}
    if all(i in at for i in ids):
        return values.take(pa.array([at[i] for i in ids], pa.int64()))
    return read_rows(pool, places, columns)


def reader_batches(reader: Reader, table: pa.Table, batch_rows: int) -> Iterator[ReaderOutput]:
    """The model's input for the rows of ``table`` (the reader's columns as stored), ``batch_rows`` at a time."""
    for batch in table.combine_chunks().to_batches(max_chunksize=batch_rows):
        yield reader(batch)


def shown_rows(
    lab: LabelingConfig,
    pool: Pool,
    reader: Reader,
    ids: list,
    places: np.ndarray,
    *,
    recorded: pa.Table | None = None,
    media_prefix: str,
    storage_options: dict,
) -> ShownRows:
    """Reads the shown columns of the rows at ``places`` (or takes them from ``recorded``, the rows recorded at
    selection, when it has them) and makes each row's task data; image bytes are written to ``media_prefix``
    (once: a file already there has the same content, its name being that content's hash).

    Raises:
        UserError: a shown column the pool does not have, or an image column that holds neither URIs nor bytes.
    """
    check_columns(lab, pool)
    columns = shown_columns(lab)
    values = _values(pool, ids, places, columns, recorded) if columns else None
    data: list[dict] = [{} for _ in ids]
    if lab.image is not None and values is not None:
        kind = values.schema.field(lab.image).type
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or _is_binary(kind)):
            raise UserError(
                f"config key labeling.image: pool column {lab.image!r} holds {kind}; expected image URIs "
                "(strings) or image bytes (binary)"
            )
        base = _pool_base(pool)
        images = values.column(lab.image).to_pylist()
        with ThreadPoolExecutor(max_workers=_MEDIA_THREADS) as writers:  # an object store answers in parallel
            media = list(
                writers.map(
                    lambda v: _write_media(v, media_prefix, storage_options) if isinstance(v, bytes) else None, images
                )
            )
        for row, value, written in zip(data, images, media):
            if written is not None:
                row["image"] = written
            elif value is not None:
                row["image"] = value if _scheme(value) or value.startswith("/") else posixpath.join(base, value)
    if lab.text is not None and values is not None:
        for row, value in zip(data, values.column(lab.text).to_pylist()):
            row["text"] = value.decode("utf-8", "replace") if isinstance(value, bytes) else _scalar(value)
    if lab.context and values is not None:
        context = {c: values.column(c).to_pylist() for c in lab.context}
        for k, row in enumerate(data):
            row["context"] = {c: _scalar(v[k]) for c, v in context.items()}
    inputs = (
        _values(pool, ids, places, reader.columns, recorded) if lab.features == "table" or lab.predictions else None
    )
    if inputs is not None and lab.features == "table":
        vectors: list[torch.Tensor] = []
        for x in reader_batches(reader, inputs, 4096):
            if not (isinstance(x, torch.Tensor) and x.ndim == 2):
                raise UserError(
                    "config key labeling.features: table shows one vector per row, but inputs.reader "
                    f"{reader.path!r} does not give vectors; set labeling.features: hidden"
                )
            vectors.append(x)
        rows = torch.cat(vectors).tolist() if vectors else []
        for row, vector in zip(data, rows):
            row["features"] = {str(j): float(f"{x:.6g}") for j, x in enumerate(vector)}
    return ShownRows(data, inputs)


def _is_binary(kind: pa.DataType) -> bool:
    return pa.types.is_binary(kind) or pa.types.is_large_binary(kind) or pa.types.is_fixed_size_binary(kind)


def _pool_base(pool: Pool) -> str:
    """The directory relative image paths of the pool are relative to."""
    uri = pool.spec.uri.rstrip("/")
    return uri.rsplit("/", 1)[0] if len(pool.files) == 1 and pool.files[0].rstrip("/") == pool.root.rstrip("/") else uri


def _write_media(data: bytes, prefix: str, storage_options: dict) -> str:
    uri = f"{prefix.rstrip('/')}/{hashlib.sha256(data).hexdigest()[:32]}{_image_format(data)}"
    if not exists(uri, storage_options):
        write_bytes_atomic(uri, data, storage_options)
    return uri


def _scheme(uri: str) -> str:
    return uri.split("://", 1)[0].lower() if "://" in uri else ""


class Linker:
    """Turns the image URIs of tasks into links Label Studio can show (see the module docstring)."""

    def __init__(self, lab: LabelingConfig, storage_options: dict):
        self.lab = lab
        self.storage_options = storage_options
        self.local_dirs: set[str] = set()  # directories of the local files linked, for a local-files storage

    def __call__(self, uri: str, row_id) -> str:
        scheme = _scheme(uri)
        if scheme in ("http", "https") or uri.startswith("data:"):
            return uri
        if scheme not in ("", "file"):
            if self.lab.presign_expiry_s is None:
                return uri
            options = self.storage_options
            if scheme in ("s3", "s3a"):  # Signature Version 4: what every AWS region accepts, expiry up to a week
                config = reveal(options).get("config_kwargs") or {}
                options = {**options, "config_kwargs": {"signature_version": "s3v4", **config}}
            fs, path = filesystem(uri, options)
            try:
                return fs.sign(path, expiration=self.lab.presign_expiry_s)
            except NotImplementedError:
                raise UserError(
                    f"labeling: images on {scheme}:// cannot be presigned (row id {row_id!r}); set "
                    "labeling.presign_expiry_s: null and connect the bucket to the Label Studio project"
                ) from None
        path = os.path.abspath(uri[len("file://") :] if scheme == "file" else uri)
        root = self.lab.local_files_root
        if root is None:
            raise UserError(
                f"labeling: row id {row_id!r} shows the local file {path}, which Label Studio cannot open by "
                "itself: set labeling.local_files_root to its LOCAL_FILES_DOCUMENT_ROOT (it must see this "
                "file), or keep the images on an object store"
            )
        relative = os.path.relpath(path, os.path.abspath(root))
        if relative.startswith(".."):
            raise UserError(f"labeling: row id {row_id!r} shows {path}, which is not under labeling.local_files_root")
        self.local_dirs.add(os.path.dirname(path))
        return LOCAL_FILES + quote(relative)


def linked(data: list[dict], ids: list, linker: Linker) -> list[dict]:
    """Copies of the task data with every image as a link Label Studio can show."""
    return [{**row, "image": linker(row["image"], i)} if "image" in row else row for row, i in zip(data, ids)]


@torch.inference_mode()
def predict(cfg: Config, checkpoint: str, reader: Reader, inputs: pa.Table) -> tuple[list[int], list[float]]:
    """The class the model of ``checkpoint`` predicts for each row of ``inputs`` (the reader's columns as
    stored), and its probability."""
    model = build_model(cfg.model, weights=read_weights(checkpoint, cfg.pool.storage_options)).eval()
    classes: list[int] = []
    scores: list[float] = []
    for x in reader_batches(reader, inputs, cfg.model.batch_size):
        p = torch.softmax(model(**x) if isinstance(x, dict) else model(x), dim=1)
        best = p.max(dim=1)
        classes += best.indices.tolist()
        scores += best.values.tolist()
    return classes, scores


def prediction(class_name: str, score: float, *, to_name: str, model_version: str) -> dict:
    """A Label Studio prediction proposing ``class_name`` in the ``label`` control."""
    return {
        "model_version": model_version,
        "score": round(float(score), 6),
        "result": [{"from_name": "label", "to_name": to_name, "type": "choices", "value": {"choices": [class_name]}}],
    }


def to_name(lab: LabelingConfig) -> str:
    """The object the class choice refers to in the generated labeling config."""
    return "image" if lab.image is not None else "text" if lab.text is not None else "ref"
