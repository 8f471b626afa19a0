"""Writing pools: what ``dist-al make-pool`` turns into Parquet part files, and the helper tests use.

Four sources, one way of writing (``part-NNNNN.parquet`` files under the pool's URI, each appearing atomically, into
a target that must be empty unless ``overwrite``):

- vectors: an (N, D) array (``write_pool``; ``read_npy`` and ``read_vector_csv`` read ``--features`` / ``--csv``);
- images: a local folder (``scan_image_folder``, ``write_image_pool``), either with the encoded bytes in a binary
  column ``image`` or with the files copied under the pool's ``_images/`` prefix and their URIs in ``image_uri``
  (names starting with ``_`` are not pool files, so the copies never join the Parquet listing);
- texts: a CSV of id, text and an optional label (``read_text_csv``, ``write_text_pool``).

Bad input is found before anything is written: every image is decoded once first, every text row is checked, and
the first bad one is one ``UserError`` line naming the file or the row's id.  Labels that are class names (image
sub-folders, text labels that are words) become integers in sorted-name order; the names are kept in each file's
schema metadata under ``dist_al.class_names`` (a JSON list, index = label).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dist_al.core.errors import UserError
from dist_al.data.pool import DTYPE_KEY, PoolError, _display, _is_local, _url_to_fs
from dist_al.data.storage import writable, write_bytes_atomic, write_table_atomic

__all__ = [
    "ImageFolder",
    "TextRows",
    "check_images",
    "image_layout",
    "IMAGE_EXTENSIONS",
    "read_npy",
    "read_text_csv",
    "read_vector_csv",
    "scan_image_folder",
    "write_image_pool",
    "write_pool",
    "write_text_pool",
]

#: Files a class folder may hold; anything else (a README, a .DS_Store) is skipped and counted.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
CLASS_NAMES_KEY = b"dist_al.class_names"
IMAGES_PREFIX = "_images"  # under the pool: '_' keeps the copies out of the pool's file listing

ROWS_PER_FILE = 262_144
ROWS_PER_GROUP = 16_384
# image bytes: row groups of about this size (a row group is what a worker reads and decodes at once) ...
IMAGE_GROUP_BYTES = 32 << 20
IMAGE_FILE_BYTES = 512 << 20
# ... but never more rows than this, so the decode work of a pool of small images still spreads over shards
IMAGE_GROUP_ROWS = 1024
_IO_THREADS = 16


# --------------------------------------------------------------------------- the one way pools are written


def _write_parts(
    target: tuple,
    parts: Iterable[pa.Table],
    *,
    rows_per_group: int,
    storage_options: dict | None,
    class_names: list[str] | None = None,
    **parquet_options,
) -> list[str]:
    """Writes each table as the next ``part-NNNNN.parquet`` under the ``_prepare_target`` (with pyarrow's
    ``parquet_options``); returns their URIs."""
    fs, root = target
    written = []
    for index, table in enumerate(parts):
        if class_names is not None:
            table = table.replace_schema_metadata({CLASS_NAMES_KEY: json.dumps(class_names).encode()})
        path = _display(fs, f"{root}/part-{index:05d}.parquet")
        write_table_atomic(path, table, storage_options, row_group_size=rows_per_group, **parquet_options)
        written.append(path)
    return written


def _prepare_target(uri: str, storage_options: dict | None, overwrite: bool) -> tuple:
    """(fs, root) of an empty target: refuses a non-empty one unless ``overwrite`` (which first deletes what is
    there), so stale files from an earlier, larger pool can never join the new one."""
    fs, root = _url_to_fs(uri, storage_options)
    root = root.rstrip("/")
    with writable(uri):
        if fs.exists(root):
            existing = fs.find(root) if fs.isdir(root) else [root]
            if existing:
                if not overwrite:
                    raise PoolError(f"pool {uri}: target is not empty ({len(existing)} file(s)); pass overwrite=True")
                fs.rm(root, recursive=True)
        if _is_local(fs):
            fs.makedirs(root, exist_ok=True)
    return fs, root


def _check_layout(uri: str, rows_per_file: int, rows_per_group: int) -> None:
    if rows_per_file < 1 or rows_per_group < 1:
        raise PoolError(f"pool {uri}: rows per file and rows per group must be >= 1")


def _slices(table: pa.Table, rows_per_file: int) -> Iterator[pa.Table]:
    for start in range(0, max(table.num_rows, 1), rows_per_file):
        yield table.slice(start, rows_per_file)


# --------------------------------------------------------------------------- vectors


def write_pool(
    uri: str,
    ids,
    features,
    labels=None,
    *,
    rows_per_file: int = ROWS_PER_FILE,
    rows_per_group: int = ROWS_PER_GROUP,
    storage_options: dict | None = None,
    feature_type: str = "binary",
    id_column: str = "id",
    feature_column: str = "features",
    label_column: str = "label",
    overwrite: bool = False,
) -> list[str]:
    """Write a vector pool as ``part-NNNNN.parquet`` files under ``uri``.

    For ``dist-al make-pool``, tests and benchmarks.  Features are stored as float32 (float64 input stays float64),
    each row's raw little-endian values in a ``fixed_size_binary`` column, uncompressed, with the dtype in the field's
    metadata ("binary", the default: it reads 4-5x faster than a list column, docs/BENCHMARKS.md, and floats do not
    compress), or in a ``fixed_size_list`` ("fixed") or variable ``list`` ("list"); ``dist_al.inputs:vectors`` reads
    all three.  Ids are not checked for uniqueness here (tests write bad pools on purpose); ``open_pool`` checks
    them.

    Args:
        uri: pool directory or prefix (local path or fsspec URL).
        ids: N ids (integers become int64).
        features: an (N, D) array.
        labels: N integer labels, or None for an unlabeled pool.
        rows_per_file: rows per Parquet file.
        rows_per_group: rows per row group (the unit of shard plans and reads).
        storage_options: fsspec options of ``uri``.
        feature_type: "binary", "fixed" or "list".
        id_column: name of the id column.
        feature_column: name of the feature column.
        label_column: name of the label column.
        overwrite: delete what is at ``uri`` first, instead of refusing a non-empty target.

    Returns:
        The URIs of the files written.

    Raises:
        PoolError: a bad shape, mismatched lengths, or a non-empty target without ``overwrite``.
    """
    if feature_type not in ("binary", "fixed", "list"):
        raise ValueError(f"feature_type must be 'binary', 'fixed' or 'list', got {feature_type!r}")
    _check_layout(uri, rows_per_file, rows_per_group)
    feats = np.asarray(features)
    if feats.ndim != 2 or feats.shape[1] < 1:
        raise PoolError(f"pool {uri}: features must be a 2-D array (rows, D) with D >= 1, got shape {feats.shape}")
    if feats.dtype != np.float64:
        feats = feats.astype(np.float32, copy=False)
    feats = np.ascontiguousarray(feats)
    n, d = feats.shape
    id_arr = pa.array(list(ids) if not isinstance(ids, np.ndarray) else ids)
    if pa.types.is_integer(id_arr.type):
        id_arr = id_arr.cast(pa.int64())
    if len(id_arr) != n:
        raise PoolError(f"pool {uri}: ids has {len(id_arr)} rows, features has {n}")
    lab_arr = None
    if labels is not None:
        lab_arr = pa.array(np.asarray(labels, dtype=np.int64))
        if len(lab_arr) != n:
            raise PoolError(f"pool {uri}: labels has {len(lab_arr)} rows, features has {n}")

    def parts() -> Iterator[pa.Table]:
        for start in range(0, max(n, 1), rows_per_file):
            stop = min(start + rows_per_file, n)
            feat_col: pa.Array
            if feature_type == "binary":
                raw = feats[start:stop].astype(feats.dtype.newbyteorder("<"), copy=False)
                feat_col = pa.FixedSizeBinaryArray.from_buffers(
                    pa.binary(d * feats.dtype.itemsize), stop - start, [None, pa.py_buffer(raw.tobytes())]
                )
            elif feature_type == "fixed":
                feat_col = pa.FixedSizeListArray.from_arrays(pa.array(feats[start:stop].reshape(-1)), d)
            else:
                offsets = pa.array(np.arange(0, (stop - start) * d + 1, d, dtype=np.int32))
                feat_col = pa.ListArray.from_arrays(offsets, pa.array(feats[start:stop].reshape(-1)))
            cols = {id_column: id_arr[start:stop], feature_column: feat_col}
            if lab_arr is not None:
                cols[label_column] = lab_arr[start:stop]
            table = pa.table(cols)
            if feature_type == "binary":
                field = table.schema.field(feature_column).with_metadata({DTYPE_KEY: feats.dtype.name.encode()})
                table = table.cast(table.schema.set(table.schema.get_field_index(feature_column), field))
            yield table

    options: dict[str, Any] = {}
    if feature_type == "binary":
        others = [c for c in (id_column, label_column if lab_arr is not None else None) if c]
        options = {"compression": {c: "snappy" for c in others} | {feature_column: "none"}, "use_dictionary": others}
    target = _prepare_target(uri, storage_options, overwrite)
    return _write_parts(target, parts(), rows_per_group=rows_per_group, storage_options=storage_options, **options)


def read_npy(path: str, flag: str) -> np.ndarray:
    """An array from a .npy file, never unpickling it.

    Raises:
        UserError: the file is missing or not a plain .npy array; the message names ``flag`` and the file.
    """
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise UserError(f"{flag} {path}: cannot read a .npy array ({err})") from None


def _read_csv(path: str, flag: str, column_types: dict | None = None) -> pa.Table:
    import pyarrow.csv as pacsv

    try:
        return pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(column_types=column_types or {}))
    except (OSError, ValueError) as err:  # pyarrow.ArrowInvalid is a ValueError
        raise UserError(f"{flag} {path}: {' '.join(str(err).split())}") from None


def _require_columns(table: pa.Table, path: str, flag: str, wanted: dict[str, str]) -> None:
    """Each of ``wanted`` (column -> the option that names it) is in the CSV, else one line saying how to name it."""
    names = table.column_names
    for column, option in wanted.items():
        if column not in names:
            raise UserError(f"{flag} {path}: no column {column!r} (columns: {', '.join(names)}); name it with {option}")


def read_vector_csv(path: str, id_column: str, label_column: str | None):
    """(ids, features, labels) of a CSV with an id column, an optional label column and numeric feature columns.

    Raises:
        UserError: the file cannot be read, a named column is missing, or a feature column is not numeric.
    """
    table = _read_csv(path, "--csv")
    _require_columns(
        table, path, "--csv", {id_column: "--id-column", **({label_column: "--label-column"} if label_column else {})}
    )
    feature_cols = [c for c in table.column_names if c not in (id_column, label_column)]
    if not feature_cols:
        raise UserError(f"--csv {path}: no feature columns besides the id and label")
    try:
        feats = np.column_stack([table[c].to_numpy().astype(np.float32) for c in feature_cols])
    except (ValueError, TypeError):
        raise UserError(f"--csv {path}: feature columns must be numeric ({', '.join(feature_cols)})") from None
    labels = table[label_column].to_numpy() if label_column else None
    return table[id_column].to_numpy(), feats, labels


# --------------------------------------------------------------------------- texts


@dataclass(frozen=True)
class TextRows:
    """A text pool's rows, checked: unique non-null ids, non-empty texts, integer labels (or none)."""

    ids: pa.Array
    texts: pa.Array
    labels: pa.Array | None
    class_names: list[str] | None


def read_text_csv(path: str, id_column: str, text_column: str, label_column: str | None) -> TextRows:
    """The rows of a CSV of texts: an id column, a text column and optionally a label column (integers or names).

    Args:
        path: the CSV file.
        id_column: its id column (integers or strings).
        text_column: its text column.
        label_column: its label column, or None for an unlabeled pool; names become 0..K-1 in sorted order.

    Returns:
        The checked rows.

    Raises:
        UserError: one line for the first problem: an unreadable file, a missing column, a null or repeated id, an
            empty text, a missing label, or labels that are neither integers nor names.
    """
    flag = "--text"
    table = _read_csv(path, flag, {text_column: pa.string()})
    _require_columns(
        table,
        path,
        flag,
        {
            id_column: "--id-column",
            text_column: "--text-column",
            **({label_column: "--label-column"} if label_column else {}),
        },
    )
    ids = table[id_column].combine_chunks()
    if pa.types.is_integer(ids.type):
        ids = ids.cast(pa.int64())
    texts = table[text_column].combine_chunks()
    if ids.null_count:
        raise UserError(f"{flag} {path}: row {_first(pc.is_null(ids)) + 1} has no {id_column!r}")
    _check_unique(ids, f"{flag} {path}")
    empty = _blank(texts)
    if pc.any(empty).as_py():
        row = _first(empty)
        raise UserError(f"{flag} {path}: the text of id {ids[row].as_py()!r} is empty; remove the row or give it text")
    labels, class_names = None, None
    if label_column:
        labels, class_names = _labels(table[label_column].combine_chunks(), ids, f"{flag} {path}", label_column)
    return TextRows(ids, texts, labels, class_names)


def write_text_pool(
    uri: str,
    rows: TextRows,
    *,
    rows_per_file: int = ROWS_PER_FILE,
    rows_per_group: int = ROWS_PER_GROUP,
    storage_options: dict | None = None,
    overwrite: bool = False,
) -> list[str]:
    """Writes a text pool: columns ``id``, ``text`` and, when labeled, ``label``.

    Returns:
        The URIs of the files written.

    Raises:
        PoolError: a non-empty target without ``overwrite``, or a row count below 1 per file or group.
    """
    _check_layout(uri, rows_per_file, rows_per_group)
    columns = {"id": rows.ids, "text": rows.texts}
    if rows.labels is not None:
        columns["label"] = rows.labels
    return _write_parts(
        _prepare_target(uri, storage_options, overwrite),
        _slices(pa.table(columns), rows_per_file),
        rows_per_group=rows_per_group,
        storage_options=storage_options,
        class_names=rows.class_names,
    )


def _blank(strings: pa.Array) -> pa.Array:
    """True where a string cell is null, empty or only whitespace."""
    return pc.or_kleene(pc.is_null(strings), pc.equal(pc.utf8_trim_whitespace(strings.fill_null("")), ""))


def _first(mask: pa.Array) -> int:
    return int(np.flatnonzero(mask.to_numpy(zero_copy_only=False))[0])


def _check_unique(ids: pa.Array, source: str) -> None:
    counts = pc.value_counts(ids)
    repeated = counts.filter(pc.greater(counts.field("counts"), 1))
    if len(repeated):
        value, times = repeated.field("values")[0].as_py(), repeated.field("counts")[0].as_py()
        raise UserError(f"{source}: id {value!r} appears {times} times; ids must be unique")


def _labels(column: pa.Array, ids: pa.Array, source: str, name: str) -> tuple[pa.Array, list[str] | None]:
    """Integer labels as they are; names as 0..K-1 in sorted order, with the names."""
    missing = _blank(column) if pa.types.is_string(column.type) else pc.is_null(column)
    if pc.any(missing).as_py():
        row = _first(missing)
        raise UserError(
            f"{source}: id {ids[row].as_py()!r} has no {name!r}; label every row, or leave out --label-column"
        )
    if pa.types.is_integer(column.type):
        return column.cast(pa.int64()), None
    if not pa.types.is_string(column.type):
        raise UserError(f"{source}: column {name!r} must hold integers or class names, not {column.type}")
    class_names = sorted(pc.unique(column).to_pylist())
    return pc.index_in(column, pa.array(class_names)).cast(pa.int64()), class_names


# --------------------------------------------------------------------------- images


@dataclass(frozen=True)
class ImageFolder:
    """The images of a local folder, in sorted path order: with labels if it has one sub-folder per class."""

    root: str
    files: tuple[str, ...]  # paths relative to root, '/'-separated
    sizes: tuple[int, ...]  # bytes of each file
    labels: tuple[int, ...] | None
    class_names: tuple[str, ...] | None
    skipped: tuple[str, ...]  # files that are not images (by extension)


def scan_image_folder(root: str) -> ImageFolder:
    """Lists a folder of images: either images only (an unlabeled pool) or one sub-folder per class (labels 0..K-1 in
    sorted folder-name order; images anywhere below a class folder belong to it). Names starting with '.' are ignored.

    Args:
        root: a local folder.

    Returns:
        The images found (not yet opened: ``check_images`` decodes them).

    Raises:
        UserError: the folder is missing, holds no images, mixes images and class folders at its top, or has a class
            folder without images.
    """
    flag = f"--images {root}"
    if not os.path.isdir(root):
        raise UserError(f"{flag}: no such folder")
    top = sorted(e for e in os.listdir(root) if not e.startswith("."))
    class_dirs = [e for e in top if os.path.isdir(os.path.join(root, e))]
    top_files = [e for e in top if not os.path.isdir(os.path.join(root, e))]
    if class_dirs and any(_is_image(e) for e in top_files):
        raise UserError(
            f"{flag}: holds both images and sub-folders; put every image in its class's sub-folder, or use a folder "
            "of images only for an unlabeled pool"
        )
    files: list[str] = []
    labels: list[int] = []
    skipped: list[str] = [e for e in top_files if not _is_image(e)] if class_dirs else []
    if not class_dirs:
        found, skipped = _walk(root, "")
        files = found
    for label, name in enumerate(class_dirs):
        found, other = _walk(root, name)
        if not found:
            raise UserError(f"{flag}: class folder {name!r} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        files += found
        labels += [label] * len(found)
        skipped += other
    if not files:
        raise UserError(f"{flag}: no images ({', '.join(IMAGE_EXTENSIONS)}) in the folder")
    sizes = tuple(os.path.getsize(os.path.join(root, f)) for f in files)
    return ImageFolder(
        root,
        tuple(files),
        sizes,
        tuple(labels) if class_dirs else None,
        tuple(class_dirs) if class_dirs else None,
        tuple(skipped),
    )


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _walk(root: str, sub: str) -> tuple[list[str], list[str]]:
    """(images, other files) below root/sub, as sorted '/'-separated paths relative to root."""
    images: list[str] = []
    other: list[str] = []
    for folder, dirs, names in os.walk(os.path.join(root, sub)):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        rel = os.path.relpath(folder, root).replace(os.sep, "/")
        for name in sorted(n for n in names if not n.startswith(".")):
            path = name if rel == "." else f"{rel}/{name}"
            (images if _is_image(name) else other).append(path)
    return sorted(images), sorted(other)


def check_images(folder: ImageFolder, threads: int = _IO_THREADS) -> None:
    """Decodes every image once (JPEGs at reduced scale: the whole stream is still read), so a broken file is found
    before anything is written.

    Raises:
        UserError: the first unreadable image in path order, named with the reason.
    """
    from PIL import Image

    def problem(rel: str) -> str | None:
        path = os.path.join(folder.root, rel)
        try:
            with Image.open(path) as image:
                image.draft(image.mode, (1, 1))  # JPEG: decode at 1/8 scale; other formats: a full decode
                image.load()
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
            reason = " ".join(str(err).replace(f" {path!r}", "").split())  # the line names the file once
            return f"{type(err).__name__}: {reason}"
        return None

    with ThreadPoolExecutor(threads) as pool:
        for rel, reason in zip(folder.files, pool.map(problem, folder.files)):
            if reason is not None:
                raise UserError(f"--images {folder.root}: {rel} is not a readable image ({reason}); fix or remove it")


def image_layout(folder: ImageFolder, storage: str) -> tuple[int, int]:
    """(rows per file, rows per row group) for an image pool: row groups of about ``IMAGE_GROUP_BYTES`` of encoded
    images (16 to ``IMAGE_GROUP_ROWS`` rows), files of about ``IMAGE_FILE_BYTES`` (at most ``ROWS_PER_FILE`` rows);
    a manifest of URIs is small."""
    if storage == "files":
        return ROWS_PER_FILE, IMAGE_GROUP_ROWS
    mean = max(1, sum(folder.sizes) // len(folder.sizes))
    group = int(np.clip(IMAGE_GROUP_BYTES // mean, 16, IMAGE_GROUP_ROWS))
    return max(group, min(ROWS_PER_FILE, IMAGE_FILE_BYTES // mean) // group * group), group


def write_image_pool(
    uri: str,
    folder: ImageFolder,
    *,
    storage: Literal["bytes", "files"] = "bytes",
    rows_per_file: int | None = None,
    rows_per_group: int | None = None,
    storage_options: dict | None = None,
    overwrite: bool = False,
    threads: int = _IO_THREADS,
) -> list[str]:
    """Writes an image pool from a scanned folder: ids 0..N-1 in path order, ``path`` (relative to the folder),
    ``label`` when the folder has class sub-folders, and the image as ``image`` (encoded bytes, ``storage="bytes"``)
    or ``image_uri`` (``storage="files"``: each file copied to ``URI/_images/PATH``, the copies written before the
    manifest that names them).  Call ``check_images`` first: this writes what it reads.

    Args:
        uri: pool directory or prefix (local path or fsspec URL).
        folder: from ``scan_image_folder``.
        storage: "bytes" or "files".
        rows_per_file: rows per Parquet file (default: ``image_layout``).
        rows_per_group: rows per row group (default: ``image_layout``).
        storage_options: fsspec options of ``uri``.
        overwrite: delete what is at ``uri`` first, instead of refusing a non-empty target.
        threads: files read (and copied) at once.

    Returns:
        The URIs of the Parquet files written.

    Raises:
        PoolError: a non-empty target without ``overwrite``, or a row count below 1 per file or group.
    """
    if storage not in ("bytes", "files"):
        raise ValueError(f"storage must be 'bytes' or 'files', got {storage!r}")
    default_file, default_group = image_layout(folder, storage)
    rows_per_file, rows_per_group = rows_per_file or default_file, rows_per_group or default_group
    _check_layout(uri, rows_per_file, rows_per_group)
    fs, root = _prepare_target(uri, storage_options, overwrite)

    def read(rel: str) -> bytes:
        with open(os.path.join(folder.root, rel), "rb") as f:
            return f.read()

    def copy(rel: str) -> str:
        target = f"{root}/{IMAGES_PREFIX}/{rel}"
        write_bytes_atomic(_display(fs, target), read(rel), storage_options)
        return target if _is_local(fs) else _display(fs, target)

    def parts(pool: ThreadPoolExecutor) -> Iterator[pa.Table]:
        for start in range(0, len(folder.files), rows_per_file):
            rel = folder.files[start : start + rows_per_file]
            columns = {"id": pa.array(np.arange(start, start + len(rel), dtype=np.int64)), "path": pa.array(rel)}
            if storage == "bytes":
                columns["image"] = pa.array(list(pool.map(read, rel)), type=pa.binary())
            else:
                columns["image_uri"] = pa.array(list(pool.map(copy, rel)), type=pa.string())
            if folder.labels is not None:
                columns["label"] = pa.array(folder.labels[start : start + len(rel)], type=pa.int64())
            yield pa.table(columns)

    with ThreadPoolExecutor(threads) as pool:
        return _write_parts(
            (fs, root),
            parts(pool),
            rows_per_group=rows_per_group,
            storage_options=storage_options,
            class_names=list(folder.class_names) if folder.class_names else None,
        )
