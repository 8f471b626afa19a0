"""The reader contract: how a batch of pool rows becomes the model's input.

A reader is any ``module:function`` named by ``inputs.reader`` (config section ``inputs``), called as::

    reader(batch: pyarrow.RecordBatch, **inputs.kwargs) -> torch.Tensor | dict[str, torch.Tensor]

- ``batch`` holds the reader's input columns, and no others, for up to ``model.batch_size`` consecutive rows
  of the pool (fewer at the end of a row group, or when rows were skipped), with the field metadata the
  Parquet file stores.
- It returns CPU tensors whose first dimension is ``batch.num_rows``: one tensor, which the model is called
  with as ``model(x)``, or a dict of them, passed as keyword arguments, ``model(**x)`` (``input_ids``,
  ``attention_mask``). dist-al moves them to the worker's device.
- The columns it reads are known without running it, so only their column chunks are fetched: the reader's
  ``columns(**kwargs) -> list[str]`` attribute when it has one; else the ``inputs.columns`` key; else every
  column of the pool but the id and label columns.
- ``check(schema: pyarrow.Schema, **kwargs) -> None``, an optional attribute, checks the input columns' types
  (``schema`` holds only them) and anything else it can before a worker starts (a tokenizer file), once per
  distinct file schema, from the Parquet footers; it raises :class:`InputError` naming the column.
- A row it cannot read (a corrupt image, a missing URI, an empty text) raises ``InputError(reason, row=i,
  column=name, value=the value or URI)``, ``i`` being the row's position in ``batch``;
  ``InputError.several(errors)`` reports every bad row of the batch at once. dist-al names the row's id,
  file and row group in the one-line error, or, with ``inputs.on_error: skip``, leaves those rows out (counted,
  logged at WARNING with their ids, reported at the end) and calls the reader again on the rest.
- A reader that takes a ``storage_options`` keyword gets the pool's (``pool.storage_options``, credentials held
  as secrets that ``dist_al.data.storage.filesystem`` reveals to fsspec alone) unless ``inputs.kwargs`` gives it.
- Any other exception is a failure of the reader, never skipped: dist-al finds the first row it fails on (by
  calling it on halves of the batch) and names it.
- The same reader feeds selection (ShardWorkers), retraining (Ray Train workers, minibatch by minibatch) and
  evaluation, so a model sees the same input everywhere. It is called from several threads at once
  (``inputs.threads``): it must be thread-safe and deterministic (the same rows give the same tensors), and it
  never downloads anything. A single tensor's rows each depend on their own pool row alone (retraining decodes
  the labeled rows once and slices minibatches out of them); a dict may pad per batch.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union

import pyarrow as pa
import torch

from dist_al.config import InputsConfig, PoolConfig
from dist_al.core.errors import UserError
from dist_al.data.pool import Pool, file_schemas, open_pool
from dist_al.importing import import_path

__all__ = ["InputError", "Problem", "Reader", "ReaderOutput", "load_reader", "open_inputs", "output_rows"]

ReaderOutput = Union[torch.Tensor, dict[str, torch.Tensor]]  # noqa: UP007 - a runtime alias on Python 3.10


@dataclass(frozen=True)
class Problem:
    """One row a reader cannot read: its position in the batch (None: the whole batch), column, value, reason."""

    reason: str
    row: int | None = None
    column: str | None = None
    value: Any = None


class InputError(UserError):
    """Rows a reader cannot turn into model input; dist-al adds the id, file and row group to the message."""

    def __init__(self, reason: str, *, row: int | None = None, column: str | None = None, value: Any = None):
        super().__init__(reason)
        self.problems: list[Problem] = [Problem(reason, row, column, value)]

    @classmethod
    def several(cls, errors: Sequence[InputError]) -> InputError:
        """One error holding the problems of several rows (every bad row of a batch at once)."""
        if not errors:
            raise ValueError("InputError.several needs at least one error")
        out = cls(str(errors[0]))
        out.problems = [p for e in errors for p in e.problems]
        return out


@dataclass(frozen=True)
class Reader:
    """A reader resolved from the ``inputs`` section: the function, its kwargs, and the columns it reads."""

    path: str
    fn: Callable[..., Any]
    kwargs: Mapping[str, Any]
    columns: tuple[str, ...]
    on_error: str = "raise"

    def __call__(self, batch: pa.RecordBatch) -> ReaderOutput:
        return self.fn(batch, **self.kwargs)

    def check(self, schema: pa.Schema) -> None:
        """The reader's own footer check of its columns' types (when it has one)."""
        check = getattr(self.fn, "check", None)
        if check is not None:
            check(schema, **self.kwargs)


def _import(path: str) -> Callable[..., Any]:
    fn = import_path(path, "inputs.reader")
    if not callable(fn):
        raise UserError(f"inputs.reader {path!r} is a {type(fn).__name__}, not a function")
    return fn


def _check_kwargs(path: str, fn: Callable[..., Any], kwargs: Mapping[str, Any]) -> None:
    """inputs.kwargs the reader does not take: one line now, not a TypeError on every worker."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        return
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return
    names = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)][1:]
    unknown = [k for k in kwargs if k not in names]
    if unknown:
        raise UserError(
            f"inputs.kwargs {', '.join(map(repr, unknown))}: not an argument of inputs.reader {path!r} "
            f"(it takes {', '.join(names) or 'no keyword arguments'})"
        )


def _takes(fn: Callable[..., Any], name: str) -> bool:
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        return False


def load_reader(inputs: InputsConfig, pool: PoolConfig, schema: pa.Schema) -> Reader:
    """The ``inputs`` section's reader, with the pool columns it reads (``schema``: the pool's, for the default).

    Raises:
        UserError: the reader cannot be imported, takes none of the kwargs given, names no columns, or names
            its columns itself while ``inputs.columns`` is set too.
    """
    fn = _import(inputs.reader)
    kwargs = dict(inputs.kwargs)
    _check_kwargs(inputs.reader, fn, kwargs)
    if "storage_options" not in kwargs and _takes(fn, "storage_options"):
        kwargs["storage_options"] = pool.storage_options  # the pool's, credentials held as secrets
    named = getattr(fn, "columns", None)
    if named is not None:
        if inputs.columns is not None:
            raise UserError(
                f"inputs.columns is set, but inputs.reader {inputs.reader!r} names its columns itself "
                f"({', '.join(named(**kwargs))}): remove inputs.columns"
            )
        columns = list(named(**kwargs))
    elif inputs.columns is not None:
        columns = list(inputs.columns)
    else:
        columns = [c for c in schema.names if c not in (pool.id_column, pool.label_column)]
    if not columns or not all(isinstance(c, str) and c for c in columns):
        raise UserError(f"inputs.reader {inputs.reader!r} reads no pool columns ({columns!r}): set inputs.columns")
    return Reader(inputs.reader, fn, kwargs, tuple(dict.fromkeys(columns)), inputs.on_error)


def output_rows(out: Any) -> int | None:
    """The row count of a reader's output (its tensors' first dimension), or None when it breaks the contract
    (not a tensor or a non-empty dict of str -> tensor, a 0-d tensor, tensors of different lengths)."""
    tensors = list(out.values()) if isinstance(out, dict) and out else [out]
    if isinstance(out, dict) and not all(isinstance(k, str) for k in out):
        return None
    if not all(isinstance(t, torch.Tensor) and t.ndim >= 1 for t in tensors):
        return None
    lengths = {len(t) for t in tensors}
    return lengths.pop() if len(lengths) == 1 else None


def open_inputs(pool_cfg: PoolConfig, inputs: InputsConfig) -> tuple[Pool, Reader]:
    """The pool (footers only) and its reader, with the reader's columns checked in every file's footer: a
    missing column or a type the reader cannot read fails here, before any worker starts.

    Raises:
        PoolError: the pool cannot be opened, or a file lacks an input column.
        InputError: the reader's own check refused a file's column types (the message names the file).
        UserError: the reader cannot be loaded (``load_reader``).
    """
    pool = open_pool(pool_cfg)
    reader = load_reader(inputs, pool_cfg, pool.schema)
    checked: set[str] = set()
    for uri, schema in file_schemas(pool, reader.columns):
        if str(schema) in checked:
            continue
        checked.add(str(schema))
        try:
            reader.check(schema)
        except InputError as err:
            p = err.problems[0]
            if p.column is None:  # about the reader's settings, not the file
                raise InputError(p.reason) from None
            raise InputError(f"pool {pool_cfg.uri}: file {uri} column {p.column!r}: {p.reason}") from None
    return pool, reader
