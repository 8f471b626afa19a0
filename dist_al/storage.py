"""Atomic writes to local paths and object stores: a reader never sees half a file."""

from __future__ import annotations

import io
import os
import uuid

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem


def write_bytes_atomic(uri: str, data: bytes, storage_options: dict | None = None) -> str:
    """Local: temp file + rename. Object stores: one PUT, which is atomic there."""
    fs, path = fsspec.core.url_to_fs(uri, **(storage_options or {}))
    if isinstance(fs, LocalFileSystem):
        directory = os.path.dirname(path) or "."
        os.makedirs(directory, exist_ok=True)
        tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp-{uuid.uuid4().hex}")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    else:
        fs.pipe_file(path, data)
    return uri


def write_table_atomic(uri: str, table: pa.Table, storage_options: dict | None = None, **parquet_options) -> str:
    buf = io.BytesIO()
    pq.write_table(table, buf, **parquet_options)
    return write_bytes_atomic(uri, buf.getvalue(), storage_options)
