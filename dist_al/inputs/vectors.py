"""``dist_al.inputs:vectors``: one float vector per row, as a (rows, D) float32 tensor (the default reader).

Every layout a pool may hold is read, converted without per-row Python:

- ``list`` / ``large_list`` / ``fixed_size_list`` of float16/float32/float64;
- ``fixed_size_binary`` (``dist-al make-pool`` writes this: it decodes fastest, see docs/BENCHMARKS.md) or
  ``binary`` / ``large_binary``, each row the raw little-endian float32 (or float16) values of its vector;
  the dtype is the ``dtype`` kwarg, else the column's field metadata ``dist_al.dtype`` (which make-pool
  writes), else float32.

D is ``dim`` when given, else fixed by the column type (fixed sizes) or by the batch's first row; a row of
another length, a null, or a NaN/inf value is an :class:`InputError` naming the row.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from dist_al.data.pool import DTYPE_KEY
from dist_al.inputs.contract import InputError

__all__ = ["Vectors", "vectors"]

_BINARY_DTYPES: dict[str, np.dtype] = {
    "float32": np.dtype("<f4"),
    "float16": np.dtype("<f2"),
    "float64": np.dtype("<f8"),
}


def _is_binary(t: pa.DataType) -> bool:
    return pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t)


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


class Vectors:
    """The vectors reader (module docstring); ``column``: the pool column, ``dim``: the expected D."""

    def columns(self, column: str = "features", dim: int | None = None, dtype: str | None = None) -> list[str]:
        return [column]

    def check(self, schema: pa.Schema, column: str = "features", dim: int | None = None, dtype: str | None = None):
        field = schema.field(column)
        t = field.type
        if dtype is not None and dtype not in _BINARY_DTYPES:
            raise InputError(f"inputs.kwargs.dtype must be float32, float16 or float64, got {dtype!r}", column=column)
        if _is_list(t):
            # Integer features are refused on purpose: they are usually raw codes or pixels that need
            # scaling, and int64 does not fit float32 exactly. Cast them when writing the pool.
            if not pa.types.is_floating(t.value_type):
                raise InputError(
                    f"holds lists of {t.value_type}; expected float16/float32/float64 values (cast integer "
                    "features to float when writing the pool)",
                    column=column,
                )
            size = t.list_size if pa.types.is_fixed_size_list(t) else None
        elif _is_binary(t):
            width = self._dtype(field, dtype).itemsize
            size = t.byte_width // width if pa.types.is_fixed_size_binary(t) else None
            if pa.types.is_fixed_size_binary(t) and t.byte_width % width:
                raise InputError(
                    f"has {t.byte_width} bytes per row, not a whole number of {width}-byte floats", column=column
                )
        else:
            raise InputError(
                f"has type {t}; expected a list, large_list or fixed_size_list of floats, or binary raw float32 "
                "vectors",
                column=column,
            )
        if size is not None and dim is not None and size != dim:
            raise InputError(f"has vectors of length {size}, inputs.kwargs.dim is {dim}", column=column)
        if size == 0:
            raise InputError("has vectors of length 0", column=column)

    @staticmethod
    def _dtype(field: pa.Field, dtype: str | None) -> np.dtype:
        if dtype is None and field.metadata and DTYPE_KEY in field.metadata:
            dtype = field.metadata[DTYPE_KEY].decode()
        return _BINARY_DTYPES[dtype if dtype in _BINARY_DTYPES else "float32"]

    def __call__(
        self, batch: pa.RecordBatch, column: str = "features", dim: int | None = None, dtype: str | None = None
    ) -> torch.Tensor:
        field = batch.schema.field(column)
        arr = batch.column(column)
        n = len(arr)
        if arr.null_count:
            raise InputError.several(
                [InputError("null vector", row=int(i), column=column) for i in np.flatnonzero(~_valid(arr))]
            )
        if _is_binary(arr.type):
            flat, d = self._binary(arr, self._dtype(field, dtype), column, dim)
        else:
            flat, d = self._list(arr, column, dim)
        if flat.size != n * d:  # pragma: no cover - guarded by the length checks
            raise InputError(f"{flat.size} values for {n} rows of D={d}", column=column)
        out = flat.reshape(n, d)
        converted = out.dtype != np.float32
        if converted or not out.flags.writeable:  # float16/64 to float32; Arrow's buffers may be read-only
            with np.errstate(over="ignore"):  # a float64 beyond float32 becomes inf, refused below
                out = out.astype(np.float32)
        # the batch's sum is finite only if every value is (NaN and inf propagate): one read of the batch, where
        # np.isfinite(out).all(1) also writes a bool per value; the rows are checked one by one only when it is
        # not (an overflowing sum of finite values then finds none). Not BLAS: its threads would spin against
        # the model's while this runs in a decode thread.
        with np.errstate(over="ignore", invalid="ignore"):  # inf - inf, and overflows, are what it looks for
            total = out.sum()
        if not np.isfinite(total):
            bad = np.flatnonzero(~np.isfinite(out).all(1))
            what = "NaN or inf value" + (", or a value beyond float32's range" if converted else "")
            if len(bad):
                raise InputError.several([InputError(what, row=int(i), column=column) for i in bad])
        return torch.from_numpy(out)

    def _list(self, arr: pa.Array, column: str, dim: int | None) -> tuple[np.ndarray, int]:
        if pa.types.is_fixed_size_list(arr.type):
            d = arr.type.list_size
            if dim is not None and d != dim:
                raise InputError(f"has vectors of length {d}, expected D={dim}", column=column)
        else:
            lengths = np.diff(np.asarray(arr.offsets))
            d = dim if dim is not None else int(lengths[0]) if len(lengths) else 0
            _ragged(lengths, d, column)
        values = arr.flatten()  # honours slicing; dense once every length is d
        if values.null_count:
            rows = np.unique(np.flatnonzero(~_valid(values)) // max(d, 1))
            raise InputError.several([InputError("null value inside", row=int(i), column=column) for i in rows])
        return np.asarray(values.to_numpy(zero_copy_only=False)), d

    def _binary(self, arr: pa.Array, dt: np.dtype, column: str, dim: int | None) -> tuple[np.ndarray, int]:
        n, width = len(arr), dt.itemsize
        data = arr.buffers()[-1]
        if pa.types.is_fixed_size_binary(arr.type):
            nbytes = arr.type.byte_width
            start = arr.offset * nbytes
        else:
            offsets = np.frombuffer(
                arr.buffers()[1], dtype=np.int64 if pa.types.is_large_binary(arr.type) else np.int32
            )[arr.offset : arr.offset + n + 1]
            lengths = np.diff(offsets)
            nbytes = dim * width if dim is not None else int(lengths[0]) if n else 0
            _ragged(lengths // width, nbytes // width, column, lengths % width)
            start = int(offsets[0]) if n else 0
        if nbytes % width:
            raise InputError.several(
                [InputError(f"{nbytes} bytes, not a whole number of {width}-byte floats", row=0, column=column)]
            )
        d = nbytes // width
        if dim is not None and d != dim:
            raise InputError(f"has vectors of length {d}, expected D={dim}", column=column)
        flat = np.frombuffer(data, dtype=dt, count=n * d, offset=start) if n and d else np.zeros(0, dt)
        return flat, d


def _valid(arr: pa.Array) -> np.ndarray:
    return np.asarray(arr.is_valid(), dtype=bool)


def _ragged(lengths: np.ndarray, d: int, column: str, remainder: np.ndarray | None = None) -> None:
    bad = lengths != d if remainder is None else (lengths != d) | (remainder != 0)
    if d == 0:
        bad = np.ones(len(lengths), dtype=bool)
    if bad.any():
        raise InputError.several(
            [
                InputError(f"vector of length {int(lengths[i])}, expected D={d}", row=int(i), column=column)
                for i in np.flatnonzero(bad)
            ]
        )


vectors = Vectors()
