"""One writer per workdir: a lease in WORKDIR/lock.json that every mutating command takes.

The lock file holds ``host, pid, token, command, acquired_at, expires_at``.  It is created
only if absent (local: a complete temp file hard-linked to the name; S3: a PUT with
``If-None-Match: *``), so of two commands started at once exactly one gets it; the other
raises :class:`WorkdirLocked`, whose one-line message names the holder.  A heartbeat thread
pushes ``expires_at`` forward every ``ttl / 4`` seconds while the command runs, and the lock
is deleted at the end.  A holder that died leaves its lock behind: it is taken over once it
has expired, or at once when the holder ran on this host and its pid is gone.

Takeover and heartbeat are compare-and-swap on S3 (a PUT with ``If-Match`` on the ETag read),
so two processes can never both take over one stale lock there.  Local filesystems have no
compare-and-swap: a takeover first creates ``lock.json.takeover-<stale token>`` exclusively
(one taker wins), re-reads the lock, then replaces it; a heartbeat re-reads before it
rewrites.  What remains is a window of microseconds between that re-read and the rename,
and on NFS the guarantees of its link/rename.  An object store that ignores ``If-None-Match``
(AWS S3 and moto honour it) would let two creates succeed; each creator reads the lock back
and only the one whose token is there proceeds, which narrows but does not close that race.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import threading
import time
import uuid

import fsspec
from fsspec.implementations.local import LocalFileSystem

from .storage import create_exclusive, read_bytes, retrying, writable, write_bytes_atomic

log = logging.getLogger(__name__)

LEASE_S = 120.0  # a holder that stops heartbeating loses the lock this long after its last refresh


class WorkdirLocked(RuntimeError):
    """Another dist-al holds the workdir; the message says who and until when."""


class WorkdirLock:
    def __init__(self, workdir: str, storage_options: dict | None = None, *, command: str = "", ttl: float = LEASE_S):
        self.uri = workdir.rstrip("/") + "/lock.json"
        self.workdir = workdir
        self.storage_options = storage_options or {}
        self.command = command
        self.ttl = ttl
        self.token = uuid.uuid4().hex
        self.fs, self.path = fsspec.core.url_to_fs(self.uri, **self.storage_options)
        self.local = isinstance(self.fs, LocalFileSystem)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._created_dir = False
        self.acquired_at = time.time()

    # -- the lock record -----------------------------------------------------------------

    def _record(self) -> bytes:
        return json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "token": self.token,
                           "command": self.command, "acquired_at": self.acquired_at,
                           "expires_at": time.time() + self.ttl}, indent=1).encode()

    def _read(self) -> tuple[dict | None, str | None]:
        """(record, etag) of the lock now; (None, None) if there is none."""
        try:
            if not self.local:
                self.fs.invalidate_cache(self.path)
            etag = None if self.local else retrying(f"reading {self.uri}", self.fs.info, self.path).get("ETag")
            return json.loads(read_bytes(self.uri, self.storage_options)), etag
        except FileNotFoundError:
            return None, None
        except json.JSONDecodeError:  # never written by us; treat as expired
            return {"host": "?", "pid": 0, "token": "?", "expires_at": 0}, None

    @staticmethod
    def _stale(rec: dict) -> bool:
        if rec.get("expires_at", 0) < time.time():
            return True
        if rec.get("host") == socket.gethostname() and rec.get("pid"):
            try:
                os.kill(int(rec["pid"]), 0)
            except ProcessLookupError:
                return True  # its holder died on this host
            except PermissionError:
                pass
        return False

    def _swap(self, expected_token: str) -> bool:
        """Replaces the lock record holding ``expected_token`` by ours; False if it changed meanwhile."""
        current, etag = self._read()
        if current is None or current.get("token") != expected_token:
            return False
        data = self._record()
        if self.local:
            write_bytes_atomic(self.uri, data, self.storage_options)
            return True
        try:
            retrying(f"writing {self.uri}", self.fs.pipe_file, self.path, data, IfMatch=etag)
            return True
        except OSError as err:  # 412 PreconditionFailed: written by someone else since we read it
            if "Precondition" in str(err) or err.errno == errno.EINVAL:
                return False
            raise

    # -- acquire / refresh / release --------------------------------------------------------

    def acquire(self) -> "WorkdirLock":
        if self.local and not os.path.isdir(os.path.dirname(self.path)):
            with writable(self.workdir):
                os.makedirs(os.path.dirname(self.path))
            self._created_dir = True
        self.acquired_at = time.time()
        for _ in range(5):
            create_exclusive(self.uri, self._record(), self.storage_options)
            # Read back even after a create that reported success: a store that ignores If-None-Match
            # lets the last writer win; and a create whose reply was lost reports failure yet holds.
            held, _ = self._read()
            if held is None:
                continue  # released meanwhile: try again
            if held.get("token") == self.token:
                break
            if not self._stale(held):
                raise WorkdirLocked(self._message(held))
            if self._take_over(held):
                log.warning("took over the stale lock of %s from %s (pid %s on %s): its lease expired or its "
                            "process is gone", self.workdir, held.get("command") or "dist-al", held.get("pid"),
                            held.get("host"))
                break
        else:
            raise WorkdirLocked(f"workdir {self.workdir}: could not take its lock, it keeps changing hands")
        self._thread = threading.Thread(target=self._heartbeat, name="dist-al-lock-heartbeat", daemon=True)
        self._thread.start()
        return self

    def _take_over(self, held: dict) -> bool:
        if not self.local:
            return self._swap(held.get("token"))
        guard = f"{self.uri}.takeover-{held.get('token')}"
        if not create_exclusive(guard, self.token.encode(), self.storage_options):
            return False
        try:
            return self._swap(held.get("token"))
        finally:
            os.remove(self.fs._strip_protocol(guard))

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.ttl / 4):
            try:
                if not self._swap(self.token):
                    log.error("lost the lock of %s to another dist-al (this one stalled past its lease)", self.workdir)
                    return
            except Exception as err:  # noqa: BLE001 - keep trying; the lease gives us ttl of slack
                log.warning("could not refresh the lock of %s: %s", self.workdir, err)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        held, _ = self._read()
        if held is not None and held.get("token") == self.token:
            retrying(f"deleting {self.uri}", self.fs.rm_file, self.path)
        if self._created_dir:  # a command that failed early leaves no empty workdir behind
            try:
                os.rmdir(os.path.dirname(self.path))
            except OSError:
                pass

    def __enter__(self) -> "WorkdirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def _message(self, held: dict) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(held.get("acquired_at", 0)))
        left = max(0, int(held.get("expires_at", 0) - time.time()))
        what = f" ({held['command']})" if held.get("command") else ""
        return (f"workdir {self.workdir} is locked by {held.get('host')}/{held.get('pid')}{what} since {since} "
                f"(expires in {left} s); another dist-al is running")
