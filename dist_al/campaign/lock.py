"""One writer per workdir: a lease in WORKDIR/lock.json that every mutating command takes, and that fences its writes.

The lock file holds ``host, pid, token, command, acquired_at, expires_at``.  It is created
only if absent (local: a complete temp file hard-linked to the name; S3: a PUT with
``If-None-Match: *``), so of two commands started at once exactly one gets it; the other
raises :class:`WorkdirLocked`, whose one-line message names the holder.  A heartbeat thread
pushes ``expires_at`` forward every ``ttl / 4`` seconds while the command runs, and the lock
is deleted at the end.  A holder that died leaves its lock behind: it is taken over once it
has expired, or at once when the holder ran on this host and its pid is gone.

Fencing.  While held, the lock fences its workdir (:func:`dist_al.data.storage.fence`): every write
or removal under it first calls :meth:`WorkdirLock.check_held`, which raises :class:`LockLost`
once the heartbeat has found the lock taken over or removed, or once the lease this process
last confirmed is within ``ttl / 4`` of running out.  That check is a flag and a monotonic
clock reading, no I/O, and it is sound: a taker moves in only after ``expires_at`` has passed
(by its clock) or when this process is gone, and the fence closes ``ttl / 4`` (30 s) earlier,
which is what is left for a write already past its check and for clock skew between hosts.
Re-reading the lock before each write instead would cost a GET per file on S3 and still leave
a window between that read and the write, so it would close no gap this leaves open.  A write
refused is never half-done (files are written whole, the round state last), so the aborted
step is resumed by the next holder.  Not fenced: files other processes write (Ray Train's
scratch under ``_ray_train``, which each run names uniquely).

Deciding by content.  A conditional write's error does not say what happened: a PUT whose
reply was lost is retried (by botocore, s3fs or :func:`dist_al.data.storage.retrying`) and then
gets 412 from its own write, and s3fs maps many unrelated errors to EINVAL just as it maps 412.
So after a create or a compare-and-swap that failed, the lock is read back: if it holds what we
wrote, the write landed; if it is unchanged, the error was real and is raised; otherwise
another process wrote first.

Takeover and heartbeat are compare-and-swap on S3 (a PUT with ``If-Match`` on the ETag read),
so two processes can never both take over one stale lock there.  Local filesystems have no
compare-and-swap: a takeover first creates a guard ``lock.json.takeover-<stale token>.<k>``
exclusively (one taker wins), re-reads the lock, then replaces it; a heartbeat re-reads before
it rewrites.  A guard holds its taker's host, pid and an expiry ``TAKEOVER_GUARD_S`` ahead (the
work it guards takes milliseconds): a taker that finds guard k left by a taker that died (pid
gone on this host, or expired) does not remove it but tries guard k + 1, so two takers that
both find a dead guard still race for one name.  Whoever then holds the lock removes the guards
of other tokens (void, since a taker re-reads the lock before it swaps).  What remains is a
window of microseconds between that re-read and the rename, and on NFS the guarantees of its
link/rename.  An object store that ignores ``If-None-Match`` (AWS S3 and moto honour it) would
let two creates succeed; each creator reads the lock back and only the one whose token is there
proceeds, which narrows but does not close that race.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import suppress

from fsspec.implementations.local import LocalFileSystem

from dist_al.data.storage import (
    StorageUnavailable,
    create_exclusive,
    fence,
    filesystem,
    read_bytes,
    retrying,
    writable,
    write_bytes_atomic,
)
from dist_al.faults import crash_point

log = logging.getLogger(__name__)

LEASE_S = 120.0  # a holder that stops heartbeating loses the lock this long after its last refresh
FENCED_AFTER = 0.75  # writes stop this fraction of the lease after the last confirmed refresh
TAKEOVER_GUARD_S = 30.0  # a local takeover guard older than this was left by a taker that died


class WorkdirLocked(RuntimeError):
    """Another dist-al holds the workdir; the message says who and until when."""


class LockLost(RuntimeError):
    """This command no longer holds its workdir's lock; nothing more may be written."""


class WorkdirLock:
    def __init__(
        self, workdir: str, storage_options: dict | None = None, *, command: str = "", ttl: float | None = None
    ):
        self.uri = workdir.rstrip("/") + "/lock.json"
        self.workdir = workdir
        self.storage_options = storage_options or {}
        self.command = command
        self.ttl = LEASE_S if ttl is None else ttl
        self.token = uuid.uuid4().hex
        self.fs, self.path = filesystem(self.uri, self.storage_options)
        self.local = isinstance(self.fs, LocalFileSystem)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._created_dir = False
        self._lift_fence: Callable[[], None] | None = None
        self._confirmed_at = 0.0  # monotonic time at which the lease last confirmed was written
        self._lost = False
        self._refresh_error = "none"  # the last heartbeat failure, for LockLost's message
        self.acquired_at = time.time()

    # -- the lock record -----------------------------------------------------------------

    def _record(self) -> bytes:
        return json.dumps(
            {
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "token": self.token,
                "command": self.command,
                "acquired_at": self.acquired_at,
                "expires_at": time.time() + self.ttl,
            },
            indent=1,
        ).encode()

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
        """Expired, or its holder ran on this host and is gone (lock records and takeover guards alike)."""
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

    def _swap(self, expected_token: str | None) -> bool:
        """Replaces the lock record holding ``expected_token`` by ours; False if it changed meanwhile."""
        current, etag = self._read()
        if current is None or current.get("token") != expected_token:
            return False
        if expected_token == self.token and time.monotonic() > self._confirmed_at + self.ttl:
            return False  # our lease ran out, so a taker may be moving in: never revive it
        data = self._record()
        if self.local:
            write_bytes_atomic(self.uri, data, self.storage_options, fenced=False)
            return True
        try:
            retrying(f"writing {self.uri}", self.fs.pipe_file, self.path, data, IfMatch=etag)
            return True
        except Exception as err:
            now, _ = self._read()
            if now == json.loads(data):
                log.info(
                    "the lock of %s holds our write although the store answered %s (a retried PUT)",
                    self.workdir,
                    type(err).__name__,
                )
                return True
            if now == current:
                raise  # nothing changed: the PUT failed for a reason of its own
            return False

    # -- acquire / refresh / release --------------------------------------------------------

    def acquire(self) -> WorkdirLock:
        if self.local and not os.path.isdir(os.path.dirname(self.path)):
            with writable(self.workdir):
                os.makedirs(os.path.dirname(self.path))
            self._created_dir = True
        self.acquired_at = time.time()
        for _ in range(5):
            since = time.monotonic()
            failure = None
            try:
                create_exclusive(self.uri, self._record(), self.storage_options)
            except (OSError, StorageUnavailable) as err:  # whether it landed is read back, as after any create
                failure = err
            # Read back even after a create that reported success: a store that ignores If-None-Match
            # lets the last writer win; and a create whose reply was lost reports failure yet holds.
            held, _ = self._read()
            if held is None:
                if failure is not None:
                    raise failure
                continue  # released meanwhile: try again
            if held.get("token") == self.token:
                break
            if not self._stale(held):
                raise WorkdirLocked(self._message(held))
            since = time.monotonic()
            if self._take_over(held):
                log.warning(
                    "took over the stale lock of %s from %s (pid %s on %s): its lease expired or its process is gone",
                    self.workdir,
                    held.get("command") or "dist-al",
                    held.get("pid"),
                    held.get("host"),
                )
                break
        else:
            raise WorkdirLocked(f"workdir {self.workdir}: could not take its lock, it keeps changing hands")
        self._confirmed_at = since
        if self.local:
            self._clear_guards()
        self._lift_fence = fence(self.workdir, self.storage_options, self.check_held)
        self._thread = threading.Thread(target=self._heartbeat, name="dist-al-lock-heartbeat", daemon=True)
        self._thread.start()
        return self

    def _take_over(self, held: dict) -> bool:
        if not self.local:
            return self._swap(held.get("token"))
        guard = self._claim_guard(str(held.get("token")))
        if guard is None:
            return False
        crash_point("lock.after_guard", guard)
        try:
            return self._swap(held.get("token"))
        finally:
            with suppress(FileNotFoundError):  # the new holder may have cleared it already
                os.remove(guard)

    def _claim_guard(self, stale_token: str) -> str | None:
        """Creates the first free takeover guard of ``stale_token``, passing over those of takers that died; None
        if the guards vanished (the lock changed hands); WorkdirLocked while a live taker holds one."""
        record = json.dumps(
            {
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "token": self.token,
                "command": self.command,
                "expires_at": time.time() + TAKEOVER_GUARD_S,
            }
        ).encode()
        for k in itertools.count():
            uri = f"{self.uri}.takeover-{stale_token}.{k}"
            if create_exclusive(uri, record, self.storage_options):
                return self.fs._strip_protocol(uri)
            try:
                guard = json.loads(read_bytes(uri, self.storage_options))
            except FileNotFoundError:
                return None
            except json.JSONDecodeError:  # never written by us
                continue
            if not self._stale(guard):
                raise WorkdirLocked(
                    f"workdir {self.workdir}: its stale lock is being taken over by "
                    f"{guard.get('host')}/{guard.get('pid')}; another dist-al is running"
                )
        raise AssertionError("unreachable")

    def _clear_guards(self) -> None:
        """Removes the takeover guards of other tokens, left by takers killed midway: void once we hold the lock."""
        directory, name = os.path.split(self.path)
        for entry in os.listdir(directory):
            if entry.startswith(f"{name}.takeover-") and not entry.startswith(f"{name}.takeover-{self.token}."):
                with suppress(FileNotFoundError):
                    os.remove(os.path.join(directory, entry))

    def refresh(self) -> None:
        """One heartbeat: extends the lease, or marks the lock lost when another holds it or none does."""
        since = time.monotonic()
        if self._swap(self.token):
            self._confirmed_at = since
        else:
            self._lost = True

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.ttl / 4):
            try:
                self.refresh()
            except Exception as err:  # noqa: BLE001 - keep trying; check_held stops writes when the lease runs low
                self._refresh_error = _one_line(err)
                log.warning("could not refresh the lock of %s: %s", self.workdir, self._refresh_error)
                continue
            if self._lost:
                log.warning(
                    "lost the lock of %s (taken over or removed, or its lease ran out): this command stops "
                    "before its next write",
                    self.workdir,
                )
                return

    def check_held(self) -> None:
        """Raises LockLost unless this process still holds the lock; the fence every workdir write passes."""
        if not self._lost and time.monotonic() < self._confirmed_at + FENCED_AFTER * self.ttl:
            return
        self._lost = True
        raise LockLost(self._lost_message())

    def release(self) -> None:
        if self._lift_fence is not None:
            self._lift_fence()
            self._lift_fence = None
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

    def __enter__(self) -> WorkdirLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def _message(self, held: dict) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(held.get("acquired_at", 0)))
        left = max(0, int(held.get("expires_at", 0) - time.time()))
        what = f" ({held['command']})" if held.get("command") else ""
        return (
            f"workdir {self.workdir} is locked by {held.get('host')}/{held.get('pid')}{what} since {since} "
            f"(expires in {left} s); another dist-al is running"
        )

    def _lost_message(self) -> str:
        """Who holds the lock now (one read, on this error path only)."""
        lost = f"lost the workdir lock of {self.workdir}"
        try:
            held, _ = self._read()
        except Exception as err:  # noqa: BLE001 - the message is all that is at stake
            held, self._refresh_error = {"token": self.token}, _one_line(err)  # say what this process knows
        if held is None:
            return f"{lost}: its lock file was removed"
        if held.get("token") != self.token:
            what = f" ({held['command']})" if held.get("command") else ""
            return f"{lost} to {held.get('host')}/{held.get('pid')}{what}"
        return (
            f"{lost}: its lease was last refreshed {time.monotonic() - self._confirmed_at:.0f} s ago, "
            f"{FENCED_AFTER * self.ttl:g} s is the most a write may follow one (last refresh error: "
            f"{self._refresh_error})"
        )


def _one_line(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}".splitlines()[0][:300]
