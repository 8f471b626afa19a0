"""Running a reader over pool rows: in threads on the worker's CPUs, overlapped with the forward pass.

``decoded_batches`` reads a shard's id (and label) and input columns (``dist_al.data.pool.read_shard``: the
next row group is read ahead in a background thread) and hands each batch to the reader in a pool of
``threads`` threads, keeping ``threads + 1`` batches in flight and yielding them in pool order: while the
worker's main thread runs the model on one batch, the next ones are being decoded. Threads, not processes:
the decoding that costs (Pillow's decode and resize, Arrow's conversions, the tokenizers library) releases
the GIL, and a thread hands its tensors over without pickling them (64x64 PNG/JPEG on 2 cores: 2 threads
decoded 2.0x as fast as 2 processes; docs/BENCHMARKS.md).

Decoding happens in the ShardWorkers, not in a Ray Data stage: ``ray.data`` streaming ``map_batches``
(decode on CPU tasks, then embedding actors) took 2.7x as long as 2 ShardWorkers decoding in themselves
on the same image pool (docs/BENCHMARKS.md), and its (p, h) would still have to travel to the ShardWorkers
that keep them resident for every selection step. Ray Data would pay off only where decoding needs more
CPUs than the embedding nodes have; the workers' decode threads are the seam where it would plug in.

``read_batch`` is where the contract (``dist_al.inputs.contract``) is enforced, for every caller (the
ShardWorkers, training, evaluation): the output's type and row count; a reader's ``InputError`` becomes one
line naming the row's id, file and row group, or, with ``inputs.on_error: skip``, the rows are left out and
the reader is called again on the rest of the batch; any other exception from the reader is reported on
the first row it fails on.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Generator, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from dist_al.core.errors import UserError
from dist_al.data.pool import Pool, Shard, read_shard, row_location
from dist_al.inputs.contract import InputError, Problem, Reader, ReaderOutput, output_rows

__all__ = ["Decoded", "Skip", "decoded_batches", "ordered_map", "read_batch", "skipped_note"]


@dataclass(frozen=True)
class Skip:
    """A row left out with ``inputs.on_error: skip``: its id and the one line that says why."""

    id: Any
    line: str


@dataclass
class Decoded:
    """A batch of decoded rows: their shard rows (positions in the shard), ids, labels and the model input
    (None when every row of the batch was skipped), and the rows skipped."""

    rows: np.ndarray
    ids: np.ndarray
    labels: np.ndarray | None
    x: ReaderOutput | None
    skipped: list[Skip]


def skipped_note(skipped: list[Skip], where: str | None = None) -> str:
    """What a command's status line says about rows the reader skipped ("" when none were)."""
    if not skipped:
        return ""
    ids = ", ".join(repr(s.id) for s in skipped[:5]) + (", ..." if len(skipped) > 5 else "")
    listed = f", listed in {where}" if where else ""
    return f"; {len(skipped)} unreadable rows left out (inputs.on_error=skip: ids {ids}{listed})"


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _shown(value: Any) -> str:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"<{len(value)} bytes>"
    text = repr(value)
    return text if len(text) <= 200 else text[:197] + "..."


def _line(source: str, problem: Problem, ids: np.ndarray, locate: Callable[[int], str], row: int | None) -> str:
    """One line: the source, the row (id and place; the batch's id range when the problem names no row), the
    column and value, the reason."""
    if row is None:
        who = f"ids {_plain(ids[0])!r}..{_plain(ids[-1])!r} ({locate(0)}..)"
    else:
        who = f"id {_plain(ids[row])!r} ({locate(row)})"
    column = "" if problem.column is None else f", column {problem.column!r}"
    value = "" if problem.value is None else f" = {_shown(problem.value)}"
    return f"{source}: {who}{column}{value}: {problem.reason}"


def _describe(out: Any) -> str:
    if isinstance(out, dict):
        return "a dict {" + ", ".join(f"{k!r}: {_describe(v)}" for k, v in out.items()) + "}"
    shape = getattr(out, "shape", None)
    return f"a {type(out).__name__} of shape {tuple(shape)}" if shape is not None else f"a {type(out).__name__}"


def _located(locate: Callable[[int], str], idx: np.ndarray) -> Callable[[int], str]:
    """``locate`` for the rows ``idx`` of a batch, by their position among them."""
    return lambda i: locate(int(idx[i]))


def _first_failing(reader: Reader, batch: pa.RecordBatch) -> int | None:
    """The first row the reader fails on, by halving the batch; None when only the whole batch fails."""
    lo, hi = 0, batch.num_rows
    while hi - lo > 1:
        mid = (lo + hi) // 2
        for a, b in ((lo, mid), (mid, hi)):
            try:
                reader(batch.slice(a, b - a))
            except Exception:  # noqa: BLE001 - looking for the row, the exception is reported by the caller
                lo, hi = a, b
                break
        else:
            return None
    return lo


def read_batch(
    reader: Reader, batch: pa.RecordBatch, ids: np.ndarray, locate: Callable[[int], str], source: str
) -> tuple[ReaderOutput | None, np.ndarray, list[Skip]]:
    """(the reader's output for the rows it could read (None: none), which rows those are, the rows skipped).

    Args:
        reader: the resolved reader.
        batch: the input columns of the rows.
        ids: the rows' ids, for messages.
        locate: row of ``batch`` -> where it lives ("file F, row group G, row R"), for messages.
        source: what the rows are ("pool s3://..."), the messages' first words.

    Raises:
        InputError: a row the reader cannot read (with ``on_error: raise``), named by id and place.
        UserError: the reader failed otherwise, or broke the contract (its output's type or row count).
    """
    n = batch.num_rows
    keep = np.ones(n, dtype=bool)
    skipped: list[Skip] = []
    while keep.any():
        idx = np.flatnonzero(keep)
        sub = batch if len(idx) == n else batch.take(pa.array(idx))
        try:
            out = reader(sub)
        except InputError as err:
            rows = [p.row if p.row is not None and 0 <= p.row < len(idx) else None for p in err.problems]
            if reader.on_error == "raise" or None in rows:
                row = rows[0]
                raise InputError(
                    _line(source, err.problems[0], ids, locate, None if row is None else int(idx[row]))
                ) from None
            for p, r in zip(err.problems, rows):
                assert r is not None
                skipped.append(Skip(_plain(ids[idx[r]]), _line(source, p, ids, locate, int(idx[r]))))
                keep[idx[r]] = False
            continue
        except UserError:
            raise
        except Exception as err:  # noqa: BLE001 - a failure of the reader: reported on its row, not a crash
            row = _first_failing(reader, sub)
            what = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}".rstrip(": ")
            problem = Problem(f"inputs.reader {reader.path!r} failed: {what}")
            raise UserError(_line(source, problem, ids, locate, None if row is None else int(idx[row]))) from None
        if output_rows(out) != len(idx):
            raise UserError(
                _line(
                    source,
                    Problem(
                        f"inputs.reader {reader.path!r} returned {_describe(out)} for {len(idx)} rows; a reader "
                        "returns a torch.Tensor, or a dict of them, whose first dimension is the row count"
                    ),
                    ids[idx],
                    _located(locate, idx),
                    None,
                )
            )
        return out, keep, skipped
    return None, keep, skipped


def ordered_map(fn: Callable[[Any], Any], items: Iterable, threads: int, name: str = "decode") -> Generator:
    """``fn`` over ``items`` in ``threads`` threads, ``threads + 1`` calls in flight, results in order.

    Close the iterator (or exhaust it) to stop: calls not started are cancelled, and ``items`` is closed.
    """
    pending: collections.deque[Future] = collections.deque()
    ex = ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix=name)
    try:
        for item in items:
            pending.append(ex.submit(fn, item))
            if len(pending) > threads:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        ex.shutdown(wait=True, cancel_futures=True)
        close = getattr(items, "close", None)
        if close is not None:
            close()


def decoded_batches(
    pool: Pool,
    shard: Shard,
    reader: Reader,
    *,
    batch_rows: int,
    threads: int,
    labels: bool = False,
    exclude: np.ndarray | None = None,
) -> Generator[Decoded, None, None]:
    """The shard's rows decoded by ``reader``, batch by batch in pool order (module docstring).

    ``exclude``: shard rows not to decode (those skipped in an earlier pass). Close the iterator to stop early.
    """
    raw = read_shard(pool, shard, ("id", "label") if labels else ("id",), batch_rows=batch_rows, inputs=reader.columns)
    source = f"pool {pool.spec.uri}"

    def locate(shard_row: int) -> str:
        file_uri, group, row = row_location(pool, shard, shard_row)
        return f"file {file_uri}, row group {group}, row {row}"

    def decode(b: dict) -> Decoded:
        rows = b["row"] + np.arange(len(b["ids"]), dtype=np.int64)
        ids, labs, batch = b["ids"], b.get("labels"), b["inputs"]
        if exclude is not None and len(exclude):
            mask = ~np.isin(rows, exclude)
            rows, ids, batch = rows[mask], ids[mask], batch.filter(pa.array(mask))
            labs = None if labs is None else labs[mask]
        if not len(rows):
            return Decoded(rows, ids, labs, None, [])
        out, keep, skipped = read_batch(reader, batch, ids, lambda i: locate(int(rows[i])), source)
        return Decoded(rows[keep], ids[keep], None if labs is None else labs[keep], out, skipped)

    return ordered_map(decode, raw, threads, f"decode-{shard.index}")
