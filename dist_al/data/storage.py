"""Workdir I/O: atomic writes, exclusive creates and reads, retried when the store fails transiently.

Retries sit here, in one place: every object-store read and write of the workdir (and of its
lock) goes through :func:`retrying`.  Below it, s3fs already retries SlowDown, timeouts and
dropped responses 5 times (0.1 s .. 0.8 s apart), and botocore's default ("legacy") mode
retries 5xx and connection errors, a reset connection included, up to 5 attempts inside each
of those.  What still fails reaches :func:`retrying`, which tries the whole operation
``RETRY_ATTEMPTS`` times in all with exponential backoff and jitter, logging each retry at
WARNING.  Non-transient errors (missing file, permission, a lost exclusive create) are never
retried.  When the store stays down, :class:`StorageUnavailable` says what failed and how
often; since every file is written whole and the round state last, the workdir is unchanged.

Writes are also where a workdir's lock is enforced: :func:`fence` registers a check for every
path under a workdir, and :func:`write_bytes_atomic` and :func:`remove_tree` run it first
(locally just before the rename that makes a file visible), so a command that lost its lock
stops before its next write, whichever module writes.  Only the lock's own files bypass it:
its record (``fenced=False``) and :func:`create_exclusive`, which only the lock uses.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import io
import logging
import os
import random
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import suppress

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from dist_al.core.errors import UserError
from dist_al.credentials import reveal
from dist_al.faults import crash_point

log = logging.getLogger(__name__)

RETRY_ATTEMPTS = 3  # in all; backoff 0.5 s then 1 s (times a random 0.5..1 jitter)
RETRY_BASE_S = 0.5
RETRY_MAX_S = 8.0
_TRANSIENT_ERRNO = {
    errno.EBUSY,
    errno.EAGAIN,
    errno.ETIMEDOUT,
    errno.ECONNRESET,
    errno.ECONNABORTED,
    errno.EPIPE,
    errno.ESTALE,
}  # s3fs reports 503 SlowDown / ServiceUnavailable as EBUSY


class StorageUnavailable(RuntimeError):
    """The object store kept failing after every retry."""


def is_transient(err: BaseException) -> bool:
    """Errors a later attempt can cure: connection resets and timeouts, HTTP 5xx and SlowDown."""
    if isinstance(err, (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False
    if isinstance(err, (ConnectionError, TimeoutError)):
        return True
    if isinstance(err, OSError) and err.errno in _TRANSIENT_ERRNO:
        return True
    try:
        from botocore.exceptions import ClientError, HTTPClientError
        from botocore.exceptions import ConnectionError as BotoConnectionError
    except ImportError:  # pragma: no cover - no S3 support installed
        return False
    if isinstance(err, (HTTPClientError, BotoConnectionError)):  # connection closed/reset, timeouts, unreachable
        return True
    if isinstance(err, ClientError):
        return err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) >= 500
    return type(err).__name__ in ("FSTimeoutError", "ClientPayloadError", "ServerDisconnectedError")


def retrying(what: str, fn, *args, **kwargs):
    """fn(*args, **kwargs), tried again on transient errors with exponential backoff and jitter."""
    t0 = time.monotonic()
    for attempt in range(1, RETRY_ATTEMPTS + 1):
        try:
            return fn(*args, **kwargs)
        except Exception as err:
            if not is_transient(err):
                raise
            reason = f"{type(err).__name__}: {err}".strip().splitlines()[0][:300]
            if attempt == RETRY_ATTEMPTS:
                raise StorageUnavailable(
                    f"{what} failed {attempt} times in {time.monotonic() - t0:.1f} s, giving up ({reason})"
                ) from err
            delay = min(RETRY_MAX_S, RETRY_BASE_S * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
            log.warning("%s failed (%s); retry %d of %d in %.1f s", what, reason, attempt, RETRY_ATTEMPTS - 1, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


@contextlib.contextmanager
def writable(uri: str):
    """Writing to a place the user named (workdir, --out, a pool to make): one that cannot be written (no such
    bucket, permission denied, a file where a directory should be) is theirs to fix, a UserError naming it."""
    try:
        yield
    except (FileNotFoundError, PermissionError, NotADirectoryError, IsADirectoryError) as err:
        raise UserError(f"cannot write {uri}: {err.strerror or err}") from err


def _writes(fn):
    @functools.wraps(fn)
    def write(uri: str, *args, **kwargs):
        with writable(uri):
            return fn(uri, *args, **kwargs)

    return write


def filesystem(uri: str, storage_options: dict | None = None):
    """(filesystem, path) of ``uri``: the one place where storage options (their credentials revealed) reach
    fsspec, so every other place can carry them as secrets."""
    return fsspec.core.url_to_fs(uri, **reveal(storage_options or {}))


_fences: list[tuple[type, str, Callable[[], None]]] = []  # (filesystem class, root path, check)
_fences_guard = threading.Lock()


def fence(root_uri: str, storage_options: dict | None, check: Callable[[], None]) -> Callable[[], None]:
    """Makes every later fenced write or removal under ``root_uri`` in this process call ``check()`` first
    (which raises to refuse it); returns the function that lifts the fence."""
    fs, root = filesystem(root_uri, storage_options)
    entry = (type(fs), root.rstrip("/"), check)
    with _fences_guard:
        _fences.append(entry)

    def lift() -> None:
        with _fences_guard:
            if entry in _fences:
                _fences.remove(entry)

    return lift


def _check_fences(fs, path: str) -> None:
    with _fences_guard:
        checks = [
            check
            for cls, root, check in _fences
            if isinstance(fs, cls) and (path == root or path.startswith(root + "/"))
        ]
    for check in checks:
        check()


def _tmp_name(path: str) -> str:
    return os.path.join(os.path.dirname(path) or ".", f".{os.path.basename(path)}.tmp-{uuid.uuid4().hex}")


def _write_local_tmp(path: str, data: bytes) -> str:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = _tmp_name(path)
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return tmp


@_writes
def write_bytes_atomic(uri: str, data: bytes, storage_options: dict | None = None, *, fenced: bool = True) -> str:
    """Local: temp file + rename. Object stores: one PUT, which is atomic there. ``fenced=False``: the lock's
    own record only."""
    fs, path = filesystem(uri, storage_options)
    if isinstance(fs, LocalFileSystem):
        tmp = _write_local_tmp(path, data)
        try:
            crash_point("write.before_rename", path)
            if fenced:
                _check_fences(fs, path)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    else:
        if fenced:
            _check_fences(fs, path)
        retrying(f"writing {uri}", fs.pipe_file, path, data)
    return uri


def write_table_atomic(uri: str, table: pa.Table, storage_options: dict | None = None, **parquet_options) -> str:
    buf = io.BytesIO()
    pq.write_table(table, buf, **parquet_options)
    return write_bytes_atomic(uri, buf.getvalue(), storage_options)


@_writes
def create_exclusive(uri: str, data: bytes, storage_options: dict | None = None) -> bool:
    """Writes ``data`` to ``uri`` only if nothing is there; False if something is.

    Local: a complete temp file hard-linked to the name (link fails if the name exists, and
    readers never see half a file). Object stores: a PUT with ``If-None-Match: *``.
    """
    fs, path = filesystem(uri, storage_options)
    if isinstance(fs, LocalFileSystem):
        tmp = _write_local_tmp(path, data)
        try:
            crash_point("create.before_link", path)
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        finally:
            with suppress(FileNotFoundError):
                os.remove(tmp)
    try:
        retrying(f"creating {uri}", fs.pipe_file, path, data, mode="create")
        return True
    except FileExistsError:
        return False


def remove_tree(uri: str, storage_options: dict | None = None) -> None:
    """Deletes a file or folder and everything under it (fenced, as writes are)."""
    fs, path = filesystem(uri, storage_options)
    _check_fences(fs, path)
    retrying(f"removing {uri}", fs.rm, path, recursive=True)


def read_bytes(uri: str, storage_options: dict | None = None) -> bytes:
    fs, path = filesystem(uri, storage_options)
    return retrying(f"reading {uri}", fs.cat_file, path)


def exists(uri: str, storage_options: dict | None = None) -> bool:
    fs, path = filesystem(uri, storage_options)
    return retrying(f"checking {uri}", fs.exists, path)
