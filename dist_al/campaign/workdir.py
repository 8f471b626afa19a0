"""The workdir: all state of a labeling campaign, on local disk or an object store.

Layout (WORKDIR is a local path or an s3:// prefix; the pool is never written):

    WORKDIR/workdir.json                  pool fingerprint + the config keys rounds must keep
    WORKDIR/config.yaml                   the config snapshot at creation, for people (credentials redacted)
    WORKDIR/labels/*.parquet              append-only label records (dist_al.campaign.labels)
    WORKDIR/rounds/NNNN/selection.parquet the round's selection (id, rank, strategy, score)
    WORKDIR/rounds/NNNN/selected_rows.parquet  the selected rows: id, where in the pool (file, row group, row),
                                          features; training reads these instead of the pool
    WORKDIR/rounds/NNNN/export/           selection.parquet, selection.csv, label_studio_tasks.json
    WORKDIR/rounds/NNNN/model.pt          the checkpoint trained at the end of the round
    WORKDIR/rounds/NNNN/metrics.json      training rows, eval accuracy, times
    WORKDIR/rounds/NNNN/state.json        SELECTED -> EXPORTED -> LABELED -> TRAINED
    WORKDIR/lock.json                     while a mutating command runs (dist_al.campaign.lock)

Every file is written atomically (temp + rename locally, one PUT on object stores), and each
step writes its state last, so a crash leaves the previous state and the step runs again.
A local write killed midway leaves a ``.NAME.tmp-<hex>`` file; the next command that takes
the lock removes those (no other writer can be running then: the lock fences every write).
The lock's own temp files are the exception: a competing acquirer writes ``.lock.json.tmp-<hex>``
(or a guard's) and links it to its name a moment later, lock or no lock, so those are removed
only once older than a lease, the bound the lock already trusts for a process that went quiet.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field

from fsspec.implementations.local import LocalFileSystem

from dist_al.campaign.lock import WorkdirLock
from dist_al.config import Config, PoolConfig
from dist_al.core.errors import UserError
from dist_al.credentials import redact
from dist_al.data.pool import open_pool
from dist_al.data.storage import (
    exists,
    filesystem,
    read_bytes,
    retrying,
    write_bytes_atomic,
)

log = logging.getLogger(__name__)

STATES = ("SELECTED", "EXPORTED", "LABELED", "TRAINED")
# Changing these between rounds would mix labels or models of different things.
PINNED_KEYS = (
    ("pool", "id_column"),
    ("inputs", "reader"),
    ("inputs", "kwargs"),
    ("inputs", "columns"),
    ("model", "factory"),
    ("model", "kwargs"),
)
_VECTORS = "dist_al.inputs:vectors"


class WorkdirError(UserError):
    """The workdir does not fit this config or pool; the message says what differs."""


@dataclass
class Workdir:
    uri: str
    storage_options: dict
    # (workdir.json record, config.yaml bytes) of a workdir not yet on storage; `create` writes them
    pending: tuple | None = field(default=None, repr=False)

    def create(self) -> None:
        """Puts a new workdir on storage; steps call it just before their first write, so a command that fails
        on bad input leaves no workdir behind."""
        if self.pending is not None:
            meta, config_yaml = self.pending
            self.write_json(self.path("workdir.json"), meta)
            write_bytes_atomic(self.path("config.yaml"), config_yaml, self.storage_options)
            self.pending = None

    def path(self, *parts: str) -> str:
        return "/".join([self.uri.rstrip("/"), *parts])

    def round_path(self, n: int, *parts: str) -> str:
        return self.path("rounds", f"{n:04d}", *parts)

    # -- small files ------------------------------------------------------------------

    def exists(self, uri: str) -> bool:
        return exists(uri, self.storage_options)

    def read_json(self, uri: str):
        return json.loads(read_bytes(uri, self.storage_options))

    def write_json(self, uri: str, value) -> None:
        write_bytes_atomic(uri, json.dumps(value, indent=2, sort_keys=True).encode(), self.storage_options)

    def rounds(self) -> list[int]:
        fs, path = filesystem(self.path("rounds"), self.storage_options)
        if not retrying(f"checking {self.path('rounds')}", fs.exists, path):
            return []
        names = [p.rstrip("/").rsplit("/", 1)[-1] for p in retrying(f"listing {path}", fs.ls, path, detail=False)]
        return sorted(int(n) for n in names if n.isdigit())

    def state(self, n: int) -> dict | None:
        uri = self.round_path(n, "state.json")
        return self.read_json(uri) if self.exists(uri) else None

    def set_state(self, n: int, state: str, **extra) -> dict:
        assert state in STATES
        record = {**(self.state(n) or {"round": n}), **extra, "state": state}
        self.write_json(self.round_path(n, "state.json"), record)
        return record


_TEMP_FILE = re.compile(r"^\..+\.tmp-[0-9a-f]{32}$")  # storage.write_bytes_atomic's local temp files


@contextmanager
def workdir_lock(workdir: str, storage_options: dict, command: str):
    """Holds the workdir's lock (see dist_al.campaign.lock) and clears what killed writers left behind."""
    fs, root = filesystem(workdir, storage_options)
    local = isinstance(fs, LocalFileSystem)
    made_here = local and not os.path.exists(root)  # a command that fails on bad input leaves no workdir behind
    try:
        with WorkdirLock(workdir, storage_options, command=command) as lock:
            if local:
                _remove_temp_files(root, lock)
            yield lock
    finally:
        if made_here and os.path.isdir(root) and not os.listdir(root):
            os.rmdir(root)


def _remove_temp_files(root: str, lock: WorkdirLock) -> None:
    """Removes what killed writes left; spares the lock's own temp files younger than a lease (see the module
    docstring): a competing acquirer's is about to be linked, and removing it would crash that acquirer."""
    lock_files = "." + os.path.basename(lock.path)
    for directory, _, files in os.walk(root):
        for name in files:
            if not _TEMP_FILE.match(name):
                continue
            path = os.path.join(directory, name)
            with suppress(FileNotFoundError):
                if name.startswith(lock_files) and time.time() - os.path.getmtime(path) < lock.ttl:
                    continue
                log.info("removing %s, left by a write that was killed", path)
                os.remove(path)


def pool_fingerprint(pool_cfg: PoolConfig) -> str:
    """Hash of what the Parquet footers say (files, row counts, schema): the pool's identity."""
    pool = open_pool(pool_cfg)
    root = pool_cfg.uri.rstrip("/")
    parts = {
        "files": [
            [
                pool.file_uri(i)[len(root) :] if pool.file_uri(i).startswith(root) else pool.file_uri(i),
                sum(n for f, _, n in pool.row_groups if f == i),
            ]
            for i in range(len(pool.files))
        ],
        "rows": pool.num_rows,
        "schema": str(pool.schema),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def open_workdir(cfg: Config, create: bool = True) -> Workdir:
    """Opens the config's workdir; refuses one made for another pool or model. A new workdir is written now,
    or with ``create=False`` only when a step calls ``Workdir.create`` before its first write."""
    wd = Workdir(cfg.workdir, cfg.pool.storage_options)
    meta_uri = wd.path("workdir.json")
    fingerprint = pool_fingerprint(cfg.pool)
    pinned = redact({".".join(k): getattr(getattr(cfg, k[0]), k[1]) for k in PINNED_KEYS})
    if not wd.exists(meta_uri):
        wd.pending = ({"version": 1, "pool_fingerprint": fingerprint, "pinned": pinned}, cfg.to_yaml().encode())
        if create:
            wd.create()
        return wd
    meta = wd.read_json(meta_uri)
    if meta.get("pool_fingerprint") != fingerprint:
        raise WorkdirError(
            f"workdir {wd.uri} was made from a different pool (fingerprint {meta.get('pool_fingerprint')}, "
            f"this pool {fingerprint}): use a new workdir for a new pool"
        )
    made = _upgraded_pins(meta.get("pinned", {}))
    for key, value in pinned.items():
        if made.get(key) != value and not _same_vectors_column(made, pinned, key):
            raise WorkdirError(
                f"workdir {wd.uri} was made with {key} = {made.get(key)!r}, the config now says "
                f"{value!r}: labels and models of the two cannot mix; use a new workdir"
            )
    return wd


def _upgraded_pins(made: dict) -> dict:
    """A workdir made before the ``inputs`` section pinned ``pool.feature_column``: the vectors reader's column."""
    if "pool.feature_column" not in made:
        return made
    rest = {k: v for k, v in made.items() if k != "pool.feature_column"}
    return {**rest, "inputs.reader": _VECTORS, "inputs.kwargs": {"column": made["pool.feature_column"]}}


def _same_vectors_column(made: dict, pinned: dict, key: str) -> bool:
    """The vectors reader with its column given or left at its default reads the same column."""
    if key != "inputs.kwargs" or made.get("inputs.reader") != _VECTORS or pinned.get("inputs.reader") != _VECTORS:
        return False
    return {"column": "features", **made.get(key, {})} == {"column": "features", **pinned.get(key, {})}
