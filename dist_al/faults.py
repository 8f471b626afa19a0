"""Crash points for fault-injection tests: SIGKILL this process at a named step.

Set ``DIST_AL_CRASH_AT=NAME`` (or ``NAME:TEXT`` to crash only where the point's detail, e.g.
a file path, contains TEXT) and the process kills itself with SIGKILL when it reaches that
point, as a power cut or the OOM killer would.  Unset (always, outside tests), a crash point
is one environment lookup.  The points:

* ``select.after_write``   -- the round's selection.parquet is written, its state.json not yet
* ``export.after_first_file`` -- one of the three export files is written
* ``write.before_rename``  -- a local atomic write has its complete temp file, not yet renamed
  (detail: the target path; e.g. ``write.before_rename:/labels/`` is a label record being
  written, ``write.before_rename:model.pt`` a checkpoint being written)
"""

from __future__ import annotations

import os
import signal

ENV = "DIST_AL_CRASH_AT"


def crash_point(name: str, detail: str = "") -> None:
    want = os.environ.get(ENV)
    if not want:
        return
    point, _, text = want.partition(":")
    if point == name and text in detail:
        os.kill(os.getpid(), signal.SIGKILL)
