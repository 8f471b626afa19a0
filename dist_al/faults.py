"""Crash points for fault-injection tests: SIGKILL (or SIGSTOP) this process at a named step.

Set ``DIST_AL_CRASH_AT=NAME`` (or ``NAME:TEXT`` to crash only where the point's detail, e.g.
a file path, contains TEXT) and the process kills itself with SIGKILL when it reaches that
point, as a power cut or the OOM killer would.  ``DIST_AL_STALL_AT`` takes the same form and
stops the process with SIGSTOP instead, as a VM pause or a swap storm would; the test resumes
it with SIGCONT.  Unset (always, outside tests), a crash point is two environment lookups.
The points:

* ``select.after_write``   -- the round's selection.parquet is written, its state.json not yet
* ``export.after_first_file`` -- one of the three export files is written
* ``write.before_rename``  -- a local atomic write has its complete temp file, not yet renamed
  (detail: the target path; e.g. ``write.before_rename:/labels/`` is a label record being
  written, ``write.before_rename:model.pt`` a checkpoint being written)
* ``create.before_link``   -- a local exclusive create has its complete temp file, not yet
  linked to its name (detail: the target path; ``create.before_link:lock.json`` is a command
  taking the workdir lock)
* ``lock.after_guard``     -- a local takeover of a stale lock holds its takeover guard file
  and has not yet replaced the lock (detail: the guard's path)
* ``labelstudio.before_send`` -- a push to Label Studio recorded a batch as being sent, and has not sent it
* ``labelstudio.after_send``  -- Label Studio made a batch of tasks; their ids are not recorded yet
* ``labels.after_checkpoint`` -- a label-record checkpoint is written, its pointer not yet
"""

from __future__ import annotations

import os
import signal

ENV = "DIST_AL_CRASH_AT"
STALL_ENV = "DIST_AL_STALL_AT"


def crash_point(name: str, detail: str = "") -> None:
    for env, sig in ((ENV, signal.SIGKILL), (STALL_ENV, signal.SIGSTOP)):
        want = os.environ.get(env)
        if want:
            point, _, text = want.partition(":")
            if point == name and text in detail:
                os.kill(os.getpid(), sig)
