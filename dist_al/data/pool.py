"""Read-only Parquet pools: footer-only validation, shard plans, prefetched reads.

A pool is a Parquet dataset (one file, or a directory / object-store prefix of
files) at a local path or any fsspec URL (``s3://``, ``gs://``, ``file://``,
``memory://``).  It has a unique id column, the columns its reader turns into
the model's input (``dist_al.inputs``: vectors, image bytes or URIs, text), and
optionally an integer label column that is only read for simulation and
evaluation.  This module reads columns; what the input columns mean is the
reader's business.

Why it looks like this (DESIGN.md section 6):

* ``open_pool`` reads only the Parquet footers, so a bad pool (missing column,
  wrong type, not Parquet, truncated, empty, unreachable) fails in seconds with
  one clear ``PoolError`` line, before any worker or model starts.
* ``plan_shards`` cuts the pool at (file, row group) boundaries into contiguous
  ranges.  Global row order is "shard order, then row order inside a shard", so
  1 worker and 8 workers see the same rows in the same global order.
* ``read_shard`` projects columns (labels are not read unless asked), hands the
  input columns on as Arrow record batches for the reader, and prefetches the
  next row group in a background thread while the caller works on the current
  batch.

Files are read with ``pyarrow.parquet.ParquetFile`` through the fsspec
filesystem; each file's footer is read once at ``open_pool`` and passed back
to pyarrow on every row-group read, so remote stores see no repeated footer
requests and only the projected column chunks are fetched.
"""

from __future__ import annotations

import contextlib
import posixpath
import queue
import threading
from collections.abc import Generator, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from dist_al.config import PoolConfig
from dist_al.core.errors import UserError
from dist_al.data.storage import filesystem

__all__ = [
    "PoolError",
    "Pool",
    "Shard",
    "open_pool",
    "plan_shards",
    "read_shard",
    "row_location",
    "check_unique_ids",
    "duplicated_id",
    "id_locations",
    "find_ids",
    "shard_places",
    "read_rows",
    "recorded_places",
    "rows_table",
    "recorded_rows",
    "LOGICAL_COLUMNS",
]

#: Logical column names accepted by ``read_shard(columns=...)``, mapped to the
#: batch keys they produce.  The physical names come from ``PoolConfig``.
LOGICAL_COLUMNS = {"id": "ids", "label": "labels"}
#: Field metadata key naming the float type of a binary vector column (``dist_al.inputs.vectors``).
DTYPE_KEY = b"dist_al.dtype"

_PREFETCH_DEPTH = 2
_FOOTER_THREADS = 16
_READ_THREADS = 8  # row groups read at once by read_rows


class PoolError(UserError):
    """A pool is missing, unreadable or malformed; the message is one line naming the file."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))  # embedded library errors may span lines


@dataclass(frozen=True)
class Shard:
    """A contiguous run of row groups; computed from footers only.

    ``row_groups`` holds ``(file_index, row_group_index, num_rows)`` tuples in
    pool order; ``first_row`` is the global offset of the shard's first row.
    """

    index: int
    row_groups: tuple[tuple[int, int, int], ...]
    first_row: int
    num_rows: int


@dataclass(frozen=True, eq=False)
class Pool:
    """An opened, validated pool.  Holds footers only, never row data.

    ``files`` are filesystem paths (as ``fs`` expects them) in stable sorted
    order; ``row_groups`` lists every non-empty row group as
    ``(file_index, row_group_index, num_rows)`` in that order (row groups with
    0 rows are skipped).  ``schema`` is the Arrow schema of the first file.
    Picklable, so it can be shipped to workers without re-reading footers.
    """

    spec: PoolConfig
    fs: Any
    files: tuple[str, ...]
    metadata: tuple[Any, ...]  # pyarrow.parquet.FileMetaData per file
    row_groups: tuple[tuple[int, int, int], ...]
    num_rows: int
    schema: pa.Schema
    root: str = ""  # the pool's URI as an ``fs`` path: files are named relative to it in recorded rows

    def file_uri(self, file_index: int) -> str:
        """Full URI of a file, for messages."""
        return _display(self.fs, self.files[file_index])

    def file_key(self, file_index: int) -> str:
        """A file's path relative to the pool's root ("" for a one-file pool): how recorded rows name it."""
        path, root = self.files[file_index], self.root.rstrip("/")
        return path[len(root) :].lstrip("/") if path.startswith(root) else path


# --------------------------------------------------------------------------- open


def open_pool(spec: PoolConfig, columns: Sequence[str] = ()) -> Pool:
    """List the pool's files, read and validate their footers, and return a ``Pool``.

    Accepted column types: id int64/int32/string/large_string; label any
    integer type.  ``columns``: the input columns every file must have (their
    types are the reader's to check, ``dist_al.inputs``).  Files may differ in
    width (int32/int64) but ids must be all integer or all string.  Other
    columns are never read.

    Raises ``PoolError`` for a URI that does not exist or cannot be read, a file
    that is not Parquet or is truncated, a missing column or wrong column type,
    files that disagree on column types, or a pool with 0 rows.
    """
    fs, root = _url_to_fs(spec.uri, spec.storage_options)
    files = _list_files(spec.uri, fs, root)
    metadata = _read_footers(spec.uri, fs, files)

    schemas = [_validate_schema(spec, fs, path, md, columns) for path, md in zip(files, metadata)]
    # Files may differ in width (int32/int64) but not in kind: ids all integer or all string.
    id_kind = _id_kind
    for path, types in zip(files[1:], schemas[1:]):
        if id_kind(types[spec.id_column]) != id_kind(schemas[0][spec.id_column]):
            raise PoolError(
                f"pool {spec.uri}: file {_display(fs, path)} has {id_kind(types[spec.id_column])} ids "
                f"({types[spec.id_column]}) but file {_display(fs, files[0])} has "
                f"{id_kind(schemas[0][spec.id_column])} ids ({schemas[0][spec.id_column]}); all files must agree"
            )

    row_groups = []
    for fi, md in enumerate(metadata):
        for rg in range(md.num_row_groups):
            n = md.row_group(rg).num_rows
            if n > 0:
                row_groups.append((fi, rg, n))
    num_rows = sum(n for _, _, n in row_groups)
    if num_rows == 0:
        raise PoolError(f"pool {spec.uri}: empty pool (0 rows in {len(files)} file(s))")

    return Pool(
        spec=spec,
        fs=fs,
        files=tuple(files),
        metadata=tuple(metadata),
        row_groups=tuple(row_groups),
        num_rows=num_rows,
        schema=metadata[0].schema.to_arrow_schema(),
        root=root,
    )


def file_schemas(pool: Pool, columns: Sequence[str]) -> list[tuple[str, pa.Schema]]:
    """(file URI, the schema of ``columns`` in it) for every file of the pool, in file order.

    Raises ``PoolError`` naming the first file without one of the columns.
    """
    out = []
    for path, md in zip(pool.files, pool.metadata):
        _validate_schema(pool.spec, pool.fs, path, md, columns)
        schema = md.schema.to_arrow_schema()
        out.append((_display(pool.fs, path), pa.schema([schema.field(c) for c in columns])))
    return out


def _id_kind(t: pa.DataType) -> str:
    return "integer" if pa.types.is_integer(t) else "string"


def _url_to_fs(uri: str, storage_options: dict | None):
    try:
        return filesystem(uri, storage_options)
    except (ImportError, ValueError) as exc:
        raise PoolError(f"pool {uri}: cannot open filesystem: {exc}") from exc


def _display(fs, path: str) -> str:
    try:
        return fs.unstrip_protocol(path)
    except Exception:  # noqa: BLE001 - exotic filesystems; the path is shown as it is
        return path


def _list_files(uri: str, fs, root: str) -> list[str]:
    """Sorted data files under ``root`` (recursive), skipping names starting with '_' or '.'."""
    try:
        fs.invalidate_cache(root)  # another process may have written the pool since
        info = fs.info(root)
        if info["type"] != "directory":
            return [info.get("name", root)]
        found = fs.find(root)
    except FileNotFoundError as exc:
        raise PoolError(f"pool {uri}: no such file, directory, bucket or prefix") from exc
    except PermissionError as exc:
        raise PoolError(f"pool {uri}: permission denied ({exc})") from exc
    except OSError as exc:
        raise PoolError(f"pool {uri}: cannot be read ({type(exc).__name__}: {exc})") from exc

    base = root.rstrip("/")
    keep = []
    for path in found:
        rel = path[len(base) :].lstrip("/") if path.startswith(base) else posixpath.basename(path)
        if any(part.startswith(("_", ".")) for part in rel.split("/") if part):
            continue
        keep.append((rel, path))
    if not keep:
        raise PoolError(f"pool {uri}: empty pool (no data files; names starting with '_' or '.' are ignored)")
    keep.sort()
    return [path for _, path in keep]


def _is_local(fs) -> bool:
    return isinstance(fs, LocalFileSystem)


def _open_input(fs, path: str):
    """A source for ParquetFile: native path locally, an unbuffered fsspec file elsewhere.

    ``cache_type="none"`` makes every pyarrow read one exact range request, so a
    footer read fetches the footer and a projected read fetches only the needed
    column chunks (fsspec's default read-ahead would pull whole blocks).
    """
    if _is_local(fs):
        return path
    return fs.open(path, "rb", cache_type="none")


def _read_footer(fs, path: str):
    src = _open_input(fs, path)
    try:
        return pq.ParquetFile(src).metadata
    finally:
        if not isinstance(src, str):
            src.close()


def _read_footers(uri: str, fs, files: list[str]) -> list:
    """Read every footer (in parallel: remote stores are latency bound), keep file order."""

    def one(path):
        try:
            return _read_footer(fs, path)
        except pa.ArrowInvalid as exc:
            raise PoolError(f"pool {uri}: file {_display(fs, path)} is not Parquet or is truncated ({exc})") from exc
        except FileNotFoundError as exc:
            raise PoolError(f"pool {uri}: file {_display(fs, path)} disappeared while opening the pool") from exc
        except PermissionError as exc:
            raise PoolError(f"pool {uri}: file {_display(fs, path)}: permission denied ({exc})") from exc
        except OSError as exc:
            raise PoolError(
                f"pool {uri}: file {_display(fs, path)} cannot be read ({type(exc).__name__}: {exc})"
            ) from exc

    if len(files) == 1:
        return [one(files[0])]
    with ThreadPoolExecutor(max_workers=min(_FOOTER_THREADS, len(files))) as ex:
        futures = [ex.submit(one, p) for p in files]
        return [f.result() for f in futures]  # first failing file in order is reported


def _validate_schema(spec: PoolConfig, fs, path: str, md, columns: Sequence[str] = ()) -> dict[str, pa.DataType]:
    """Check one file's footer schema; return {column: type} for the pool's columns."""
    try:
        schema = md.schema.to_arrow_schema()
    except (pa.ArrowException, ValueError) as exc:
        raise PoolError(f"pool {spec.uri}: file {_display(fs, path)} has an unreadable schema ({exc})") from exc
    where = f"pool {spec.uri}: file {_display(fs, path)}"
    wanted = [spec.id_column, *columns] + ([spec.label_column] if spec.label_column else [])
    types = {}
    for name in wanted:
        idx = schema.get_field_index(name)
        if idx < 0:
            raise PoolError(f"{where} has no column {name!r} (columns: {', '.join(schema.names) or 'none'})")
        types[name] = schema.field(idx).type

    t = types[spec.id_column]
    if not (t in (pa.int64(), pa.int32()) or pa.types.is_string(t) or pa.types.is_large_string(t)):
        raise PoolError(
            f"{where}: id column {spec.id_column!r} has type {t}; expected int64, int32, string or large_string"
        )

    if spec.label_column:
        t = types[spec.label_column]
        if not pa.types.is_integer(t):
            raise PoolError(f"{where}: label column {spec.label_column!r} has type {t}; expected an integer type")
    return types


def _read_row_group(fs, path: str, md, rg: int, columns: list[str]) -> pa.Table:
    src = _open_input(fs, path)
    try:
        return pq.ParquetFile(src, metadata=md).read_row_group(rg, columns=columns)
    finally:
        if not isinstance(src, str):
            src.close()


# --------------------------------------------------------------------------- plan


def plan_shards(pool: Pool, n_shards: int) -> list[Shard]:
    """Split the pool into ``n_shards`` contiguous, row-balanced ranges of row groups.

    Cut k (k = 1..W-1) goes at the row-group boundary whose cumulative row count
    is closest to k*N/W (ties: the earlier boundary), never leaving a shard
    empty.  With fewer row groups than shards, returns one shard per row group
    (fewer shards than asked).  Deterministic: footers only, stable order.
    """
    if n_shards < 1:
        raise ValueError(f"n_shards must be >= 1, got {n_shards}")
    groups = list(pool.row_groups)
    g = len(groups)
    w = min(n_shards, g)
    cum = np.concatenate([[0], np.cumsum([n for _, _, n in groups], dtype=np.int64)])
    total = int(cum[-1])

    cuts = [0]
    for k in range(1, w):
        lo = cuts[-1] + 1  # at least one row group in the previous shard
        hi = g - (w - k)  # at least one row group for each remaining shard
        target = k * total / w
        cand = np.arange(lo, hi + 1)
        cuts.append(int(cand[np.argmin(np.abs(cum[cand] - target))]))
    cuts.append(g)

    shards = []
    for i in range(w):
        a, b = cuts[i], cuts[i + 1]
        rows = int(cum[b] - cum[a])
        shards.append(Shard(index=i, row_groups=tuple(groups[a:b]), first_row=int(cum[a]), num_rows=rows))
    return shards


# --------------------------------------------------------------------------- read


def read_shard(
    pool: Pool,
    shard: Shard,
    columns: Sequence[str] = ("id",),
    batch_rows: int = 65536,
    inputs: Sequence[str] = (),
) -> Generator[dict[str, Any], None, None]:
    """Yield the shard's rows in order as dicts, prefetching in a thread.

    ``columns`` are logical names from ``LOGICAL_COLUMNS`` ("id", "label"),
    ``inputs`` physical names of input columns; only those columns are read.
    Batch keys: ``ids`` (int64, or an object array of str), ``labels`` (int64),
    ``inputs`` (a ``pyarrow.RecordBatch`` of the input columns, for a reader),
    and always ``row``: the shard row (position in the shard) of the batch's
    first row.  Batches never span row groups, so each has at most
    ``batch_rows`` rows.  The next row group is read in a background thread
    (queue depth 2) while the caller works; its exceptions are raised here.
    Close the iterator (or exhaust it) to stop the thread early.
    """
    if batch_rows < 1:
        raise ValueError(f"batch_rows must be >= 1, got {batch_rows}")
    unknown = [c for c in columns if c not in LOGICAL_COLUMNS]
    if unknown:
        raise PoolError(f"pool {pool.spec.uri}: unknown column(s) {unknown}; choose from {sorted(LOGICAL_COLUMNS)}")
    if "label" in columns and not pool.spec.label_column:
        raise PoolError(f"pool {pool.spec.uri}: labels requested but pool.label_column is not set")
    if not columns and not inputs:
        raise PoolError(f"pool {pool.spec.uri}: no columns requested")
    wanted = tuple(dict.fromkeys(columns))  # dedupe, keep order
    names = tuple(dict.fromkeys(inputs))
    return _prefetch(lambda: _iter_batches(pool, shard, wanted, names, batch_rows), f"pool-prefetch-{shard.index}")


def _prefetch(make_iter, name: str) -> Generator:
    """Run an iterator in a daemon thread behind a bounded queue; re-raise its errors."""
    q: queue.Queue = queue.Queue(maxsize=_PREFETCH_DEPTH)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce():
        items = make_iter()
        try:
            while not stop.is_set():  # checked before every read, not only on a full queue
                try:
                    item = next(items)
                except StopIteration:
                    put(("done", None))
                    return
                if not put(("item", item)):
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            put(("error", exc))
        finally:
            items.close()  # closes open files

    def consume():
        thread = threading.Thread(target=produce, name=name, daemon=True)
        thread.start()
        try:
            while True:
                kind, item = q.get()
                if kind == "item":
                    yield item
                elif kind == "done":
                    return
                else:
                    raise item
        finally:
            stop.set()
            while True:  # unblock a producer waiting on a full queue
                try:
                    q.get_nowait()
                except queue.Empty:
                    break
            thread.join(timeout=10)

    return consume()


def _iter_batches(pool: Pool, shard: Shard, wanted: tuple[str, ...], inputs: tuple[str, ...], batch_rows: int):
    spec = pool.spec
    physical = {"id": spec.id_column, "label": spec.label_column}
    read_cols = list(dict.fromkeys([physical[c] for c in wanted] + list(inputs)))
    open_file = None  # (file_index, ParquetFile, source) reused across a file's row groups
    first = 0  # shard row of the row group's first row
    try:
        for fi, rg, n in shard.row_groups:
            with _reading(pool, fi, rg):
                if open_file is None or open_file[0] != fi:
                    if open_file is not None and not isinstance(open_file[2], str):
                        open_file[2].close()
                    open_file = None
                    src = _open_input(pool.fs, pool.files[fi])
                    # memory-mapped locally: pages are decoded from the page cache, one copy fewer (the read of a
                    # 200,000-row pool: 28 -> 18-20 ms); a file truncated while mapped fails the reading worker
                    parquet = pq.ParquetFile(src, metadata=pool.metadata[fi], memory_map=isinstance(src, str))
                    open_file = (fi, parquet, src)
                table = open_file[1].read_row_group(rg, columns=read_cols)
            if table.num_rows != n:
                raise PoolError(
                    f"pool {spec.uri}: file {pool.file_uri(fi)} row group {rg} has {table.num_rows} rows, "
                    f"footer said {n}"
                )
            arrays: dict[str, Any] = {}
            for logical in wanted:
                col = table.column(physical[logical])
                if logical == "id":
                    arrays["ids"] = _ids_to_numpy(pool, fi, rg, col)
                else:
                    arrays["labels"] = _labels_to_numpy(pool, fi, rg, col)
            if inputs:
                arrays["inputs"] = _record_batch(table.select(list(inputs)))
            for start in range(0, n, batch_rows):
                yield {"row": first + start, **{k: v[start : start + batch_rows] for k, v in arrays.items()}}
            first += n
    finally:
        if open_file is not None and not isinstance(open_file[2], str):
            open_file[2].close()


def _record_batch(table: pa.Table) -> pa.RecordBatch:
    """The table's rows as one record batch (a row group's columns are one chunk: no copy then)."""
    batches = table.combine_chunks().to_batches()
    return batches[0] if len(batches) == 1 else pa.RecordBatch.from_pylist([], schema=table.schema)


@contextlib.contextmanager
def _reading(pool: Pool, fi: int, rg: int):
    """A corrupt row group is a PoolError naming it; I/O errors stay OSError (callers may retry them), with context."""
    try:
        yield
    except pa.ArrowInvalid as exc:
        raise PoolError(f"{_where(pool, fi, rg)} is corrupt ({exc})") from exc
    except OSError as exc:
        if hasattr(exc, "add_note"):
            exc.add_note(f"while reading {_where(pool, fi, rg)}")
        raise


def _id_at(pool: Pool, fi: int, rg: int, row: int):
    """The id of one row, read only when an error message needs it."""
    try:
        col = _read_row_group(pool.fs, pool.files[fi], pool.metadata[fi], rg, [pool.spec.id_column]).column(0)
        return col[row].as_py()
    except Exception:  # noqa: BLE001 - best effort, for a message
        return f"<row {row}>"


def _where(pool: Pool, fi: int, rg: int) -> str:
    return f"pool {pool.spec.uri}: file {pool.file_uri(fi)} row group {rg}"


def _first_null(arr: pa.Array) -> int:
    return int(np.argmin(np.asarray(arr.is_valid())))


def _ids_to_numpy(pool: Pool, fi: int, rg: int, col: pa.ChunkedArray) -> np.ndarray:
    arr = col.combine_chunks()
    if arr.null_count:
        raise PoolError(f"{_where(pool, fi, rg)}: null id at row {_first_null(arr)}")
    if pa.types.is_integer(arr.type):
        return np.asarray(arr.to_numpy(), dtype=np.int64)
    return arr.to_numpy(zero_copy_only=False)  # object array of str


def _labels_to_numpy(pool: Pool, fi: int, rg: int, col: pa.ChunkedArray) -> np.ndarray:
    arr = col.combine_chunks()
    if arr.null_count:
        row = _first_null(arr)
        raise PoolError(f"{_where(pool, fi, rg)}: null label for id {_id_at(pool, fi, rg, row)!r}")
    return np.asarray(arr.to_numpy(), dtype=np.int64)


# --------------------------------------------------------------------------- ids


def duplicated_id(id_arrays: Iterable[np.ndarray]):
    """One id that occurs more than once across the arrays, or None."""
    arrays = [a for a in (np.asarray(a) for a in id_arrays) if a.size]
    if not arrays:
        return None
    kinds = {"int" if np.issubdtype(a.dtype, np.integer) else "str" for a in arrays}
    if len(kinds) > 1:
        raise PoolError("pool ids mix integers and strings across shards")
    if kinds == {"int"}:
        allv = np.sort(np.concatenate([a.astype(np.int64, copy=False) for a in arrays]))
        dup = np.flatnonzero(allv[1:] == allv[:-1])
        return allv[dup[0]].item() if dup.size else None
    import pyarrow.compute as pc

    chunked = pa.chunked_array([pa.array(a, type=pa.large_string()) for a in arrays])
    counts = pc.value_counts(chunked)
    dups = pc.filter(counts.field("values"), pc.greater(counts.field("counts"), 1))
    return dups[0].as_py() if len(dups) else None


def check_unique_ids(id_arrays: Iterable[np.ndarray]) -> None:
    """Raise ``PoolError`` naming one duplicated id (and the arrays holding it).

    Selections are reported by id, so a duplicate would make a pick ambiguous.
    """
    all_arrays = [np.asarray(a) for a in id_arrays]
    value = duplicated_id(all_arrays)
    if value is None:
        return
    where = [i for i, a in enumerate(all_arrays) if a.size and np.any(a == value)]
    raise PoolError(f"pool ids are not unique: id {value!r} appears more than once (in id array(s) {where})")


def id_locations(pool: Pool, shard: Shard, ids: np.ndarray, value, positions: np.ndarray | None = None) -> list[str]:
    """'FILE row group G' for each row of the shard holding ``value``: ``ids`` are the ids of the shard rows
    ``positions`` (default: every row of the shard, in order)."""
    out = []
    for pos in np.flatnonzero(ids == value):
        file_uri, group, _ = row_location(pool, shard, int(pos if positions is None else positions[pos]))
        out.append(f"{file_uri} row group {group}")
    return out


# --------------------------------------------------------------------------- rows by place
#
# A place is (file index, row group, row in the group): int64 arrays of shape (n, 3). Sorted
# lexicographically, places are in pool order.


def shard_places(shard: Shard, local_rows) -> np.ndarray:
    """Places of rows of ``shard`` given by their positions in it."""
    local = np.asarray(local_rows, dtype=np.int64)
    sizes = np.asarray([n for _, _, n in shard.row_groups], dtype=np.int64)
    ends = np.cumsum(sizes)
    k = np.searchsorted(ends, local, side="right")
    groups = np.asarray([(fi, rg) for fi, rg, _ in shard.row_groups], dtype=np.int64)
    return np.column_stack([groups[k], local - (ends - sizes)[k]])


def find_ids(pool: Pool, ids) -> tuple[np.ndarray, np.ndarray]:
    """(the pool's ids that are in ``ids``, their places), in pool order: one pass over the id column
    alone. An id the pool holds twice comes back twice."""
    wanted = np.asarray(ids)
    shard = plan_shards(pool, 1)[0]
    batches = read_shard(pool, shard, columns=("id",), batch_rows=max(n for _, _, n in shard.row_groups))
    found, places = [], []
    for batch, (fi, rg, _) in zip(batches, shard.row_groups):  # one batch per row group
        hit = np.flatnonzero(np.isin(batch["ids"], wanted))
        if hit.size:
            found.append(batch["ids"][hit])
            places.append(np.column_stack([np.full(hit.size, fi), np.full(hit.size, rg), hit]))
    if not found:
        return wanted[:0], np.zeros((0, 3), dtype=np.int64)
    return np.concatenate(found), np.concatenate(places).astype(np.int64)


def read_rows(pool: Pool, places, columns: Sequence[str]) -> pa.Table:
    """The ``columns`` of the rows at ``places``, in that order, as they are stored (the reader decodes them).

    Reads only those column chunks of the row groups that hold the rows, several at once (decoding
    releases the GIL; object stores answer in parallel), and keeps only those rows.
    """
    places = np.asarray(places, dtype=np.int64).reshape(-1, 3)
    columns = list(dict.fromkeys(columns))
    missing = [c for c in columns if c not in pool.schema.names]
    if missing:
        raise PoolError(f"pool {pool.spec.uri} has no column {missing[0]!r} (columns: {', '.join(pool.schema.names)})")
    if not len(places):
        return pool.schema.empty_table().select(columns)
    order = np.lexsort((places[:, 1], places[:, 0]))
    starts = np.flatnonzero(np.any(np.diff(places[order, :2], axis=0) != 0, axis=1)) + 1
    groups = np.split(order, starts)

    def read(idx: np.ndarray) -> pa.Table:
        fi, rg = int(places[idx[0], 0]), int(places[idx[0], 1])
        with _reading(pool, fi, rg):
            table = _read_row_group(pool.fs, pool.files[fi], pool.metadata[fi], rg, columns)
        return table.take(pa.array(places[idx, 2]))

    with ThreadPoolExecutor(max_workers=min(_READ_THREADS, len(groups))) as ex:
        parts = list(ex.map(read, groups))
    # files may differ in width (int32/int64, list/large_list): one schema, the first part's, for all
    table = pa.concat_tables(parts, promote_options="permissive")
    return table.take(pa.array(np.argsort(np.concatenate(groups), kind="stable")))


def recorded_places(pool: Pool, table: pa.Table) -> np.ndarray:
    """Places of the rows of ``table`` (``rows_table``: file, row_group, row), in its order.

    Raises:
        PoolError: a row this pool does not have (the pool changed since the rows were recorded).
    """
    files = {pool.file_key(i): i for i in range(len(pool.files))}
    group_rows = {(fi, rg): n for fi, rg, n in pool.row_groups}
    places = np.column_stack(
        [
            np.asarray([files.get(k, -1) for k in table.column("file").to_pylist()], dtype=np.int64),
            table.column("row_group").to_numpy().astype(np.int64),
            table.column("row").to_numpy().astype(np.int64),
        ]
    ).reshape(-1, 3)
    for f, g, r in places.tolist():
        if not 0 <= r < group_rows.get((f, g), 0):
            raise PoolError(f"pool {pool.spec.uri} has no row {r} in row group {g} of the file recorded for it")
    return places


def rows_table(pool: Pool, ids, places, inputs: pa.Table) -> pa.Table:
    """Pool rows with where they live: id, file (its path relative to the pool's root), row_group, row, and
    ``inputs``, a struct of the rows' input columns as the pool stores them (``read_rows``)."""
    places = np.asarray(places, dtype=np.int64).reshape(-1, 3)
    return pa.table(
        {
            "id": pa.array(ids),
            "file": pa.array([pool.file_key(int(fi)) for fi in places[:, 0]], pa.string()),
            "row_group": pa.array(places[:, 1]),
            "row": pa.array(places[:, 2]),
            "inputs": pa.StructArray.from_arrays(
                [inputs.column(c).combine_chunks() for c in inputs.column_names],
                fields=list(inputs.schema),
            ),
        }
    )


def recorded_rows(
    pool: Pool, table: pa.Table | None, ids, columns: Sequence[str]
) -> tuple[np.ndarray, np.ndarray, pa.Table]:
    """(ids, places, the ``columns``) of the rows of ``table`` (``rows_table``) whose id is in ``ids``, one per id.

    A row whose file, row group or row this pool does not have is left out, and so is every row of a table
    recorded without all of ``columns`` (an earlier reader's, or an earlier version's): the caller finds
    those ids in the pool itself.
    """
    columns = list(dict.fromkeys(columns))
    none = (np.asarray(ids)[:0], np.zeros((0, 3), dtype=np.int64), pool.schema.empty_table().select(columns))
    if table is None or not table.num_rows or "inputs" not in table.column_names:
        return none
    recorded = table.schema.field("inputs").type
    if not all(recorded.get_field_index(c) >= 0 for c in columns):
        return none
    rec_ids = table.column("id").to_numpy()
    if rec_ids.dtype.kind in "iu":
        rec_ids = rec_ids.astype(np.int64)
    _, first = np.unique(rec_ids, return_index=True)  # an id recorded twice (two rounds) is the same row
    keep = first[np.isin(rec_ids[first], ids)]
    files = {pool.file_key(i): i for i in range(len(pool.files))}
    group_rows = {(fi, rg): n for fi, rg, n in pool.row_groups}
    fi = np.asarray([files.get(k, -1) for k in table.column("file").take(keep).to_pylist()], dtype=np.int64)
    places = np.column_stack([fi, table.column("row_group").to_numpy()[keep], table.column("row").to_numpy()[keep]])
    exists = np.asarray([0 <= r < group_rows.get((f, g), 0) for f, g, r in places.tolist()], dtype=bool)
    keep, places = keep[exists], places[exists].astype(np.int64)
    struct = table.column("inputs").take(keep).combine_chunks()
    fields = pa.schema([recorded.field(c) for c in columns])  # with their metadata: a vector column's dtype
    values = pa.Table.from_arrays([struct.field(c) for c in columns], schema=fields)
    return rec_ids[keep], places, values


def row_location(pool: Pool, shard: Shard, pos: int) -> tuple[str, int, int]:
    """(file URI, row group, row inside the row group) of the shard's row ``pos`` (rows in shard order)."""
    ends = np.cumsum([n for _, _, n in shard.row_groups])
    k = int(np.searchsorted(ends, pos, side="right"))
    file_index, group, _ = shard.row_groups[k]
    return pool.file_uri(file_index), group, pos - (int(ends[k - 1]) if k else 0)
