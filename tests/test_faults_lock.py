"""The workdir lock under faults: a holder that lost its lease, lock writes whose reply lies, dead takers, the sweep.

As in test_faults_rounds.py every fault is real: processes stop themselves (SIGSTOP) or die (SIGKILL) at named
points (dist_al.faults), another process takes the lock over, and a proxy in front of moto loses replies or answers
errors (tests/s3server.py, FaultProxy).  Leases are seconds long (the ``ttl`` parameter, or ``LEASE_S`` set in the
child process), so no test waits for the default 120 s.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import fsspec
import pytest
from test_faults_rounds import (  # noqa: F401
    TEMP,
    _foreign_lock,
    config,
    flaky_s3,
    labels_csv,
    make_pool,
    read,
    write_config,
)

from dist_al.campaign.lock import LockLost, WorkdirLock, WorkdirLocked
from dist_al.campaign.rounds import ingest
from dist_al.campaign.workdir import workdir_lock
from dist_al.config import validate
from dist_al.data.storage import remove_tree, write_bytes_atomic

HOST = socket.gethostname()
# the CLI with a lease of argv[1] seconds; the lock reads LEASE_S when it is made
LEASED_CLI = (
    "import sys, dist_al.campaign.lock; dist_al.campaign.lock.LEASE_S = float(sys.argv[1]); "
    "from dist_al.cli import main; "
    "sys.exit(main(sys.argv[2:]))"
)
# a bare acquirer, as the CLI's commands acquire: exits 75 with the one line when the lock is held
ACQUIRER = (
    "import sys; from dist_al.campaign.lock import WorkdirLock, WorkdirLocked\n"
    "try:\n    WorkdirLock(sys.argv[1], command='round').acquire()\n"
    "except WorkdirLocked as err:\n    print(err); sys.exit(75)\n"
)


def spawn(code: str, *args, crash_at: str | None = None, stall_at: str | None = None) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("DIST_AL_CRASH_AT", "DIST_AL_STALL_AT")}
    env.update({k: v for k, v in (("DIST_AL_CRASH_AT", crash_at), ("DIST_AL_STALL_AT", stall_at)) if v})
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )


def wait_stopped(proc: subprocess.Popen, timeout: float = 120.0) -> None:
    """Until the process has stopped itself at its stall point (state T in /proc)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        with open(f"/proc/{proc.pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "T":
                return
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"never reached its stall point: {proc.communicate()}")


def take_over(workdir: str, storage_options=None, timeout: float = 60.0) -> WorkdirLock:
    """Another dist-al: takes the lock as soon as its holder's lease has run out."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return WorkdirLock(workdir, storage_options, command="round", ttl=60.0).acquire()
        except WorkdirLocked:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def wait_lost(lock: WorkdirLock, timeout: float = 30.0) -> str:
    """Until the lock's fence refuses writes; its LockLost message."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            lock.check_held()
        except LockLost as err:
            return str(err)
        time.sleep(0.05)
    raise AssertionError("the fence never closed")


def lock_record(workdir: str, storage_options=None) -> dict:
    return json.loads(read(f"{workdir}/lock.json", storage_options))


def where(kind: str, tmp_path: Path, request) -> tuple[str, dict]:
    if kind == "s3":
        return f"s3://{request.getfixturevalue('s3_bucket')}/work", request.getfixturevalue("s3_storage_options")
    return str(tmp_path / "work"), {}


# ----------------------------------------------------------------------------------------- the fence


@pytest.mark.subprocess
def test_a_command_that_lost_its_lease_stops_before_its_next_write(tmp_path):
    truth = make_pool(str(tmp_path / "pool"))
    work = str(tmp_path / "work")
    cfg = config(str(tmp_path / "pool"), work)
    labels = labels_csv(tmp_path, list(truth)[:5], truth)
    # ingest stalls (a VM pause) with its label record written to a temp file, before the rename
    proc = spawn(
        LEASED_CLI,
        "4",
        "ingest",
        "--config",
        write_config(tmp_path, cfg),
        labels,
        stall_at="write.before_rename:/labels/",
    )
    wait_stopped(proc)
    taker = take_over(work)  # its 4 s lease runs out; another dist-al takes the workdir
    try:
        os.kill(proc.pid, signal.SIGCONT)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 76, err
        assert re.match(
            rf"^dist-al: error: lost the workdir lock of {re.escape(work)} to {re.escape(HOST)}/"
            rf"{os.getpid()} \(round\); nothing more was written; the next tick resumes$",
            err.strip().splitlines()[-1],
        ), err
        assert "Traceback" not in err and out == ""
        root = Path(work)
        assert not list((root / "labels").glob("*.parquet"))  # no label record landed
        assert not [p for p in root.rglob("*") if TEMP.match(p.name)]
        assert lock_record(work)["token"] == taker.token  # the loser did not delete the new holder's lock
    finally:
        taker.release()
    assert ingest(validate(cfg), labels).startswith("5 labels accepted")  # the next holder does the step


@pytest.mark.slow  # waits out real heartbeats and leases
@pytest.mark.parametrize("kind", ["local", "s3"])
def test_a_heartbeat_that_finds_the_lock_taken_over_fences_every_write(tmp_path, kind, request):
    work, options = where(kind, tmp_path, request)
    lock = WorkdirLock(work, options, command="round", ttl=1.0).acquire()
    try:
        fs, path = fsspec.core.url_to_fs(f"{work}/lock.json", **options)
        fs.pipe_file(
            path,
            json.dumps(
                {
                    "host": "another-host",
                    "pid": 4242,
                    "token": "f" * 32,
                    "command": "train",
                    "acquired_at": time.time(),
                    "expires_at": time.time() + 60,
                }
            ).encode(),
        )
        assert wait_lost(lock) == f"lost the workdir lock of {work} to another-host/4242 (train)"
        with pytest.raises(LockLost, match="to another-host/4242"):
            write_bytes_atomic(f"{work}/rounds/0001/state.json", b"{}", options)
        with pytest.raises(LockLost):
            remove_tree(f"{work}/rounds", options)
        fs.invalidate_cache()
        assert not fs.exists(path.replace("lock.json", "rounds/0001/state.json"))
        write_bytes_atomic(f"{work}-other/x", b"x", options)  # the fence is this workdir's only
    finally:
        lock.release()
    assert lock_record(work, options)["token"] == "f" * 32  # the new holder's lock stays


@pytest.mark.slow  # waits out real heartbeats and leases
def test_a_heartbeat_that_cannot_refresh_closes_the_fence_before_the_lease_runs_out(flaky_s3):
    proxy, options, bucket = flaky_s3
    work = f"s3://{bucket}/work"
    lock = WorkdirLock(work, options, command="round", ttl=2.0).acquire()
    try:
        proxy.add("PUT", f"/{bucket}/work/lock.json", "503", times=None)  # the store refuses every refresh
        message = wait_lost(lock)
        assert re.match(
            rf"lost the workdir lock of {work}: its lease was last refreshed \d+ s ago, 1.5 s is the most "
            r"a write may follow one \(last refresh error: .*\)$",
            message,
        ), message
        assert lock_record(work, options)["token"] == lock.token  # nobody took it: the fence closed first
        with pytest.raises(LockLost):
            write_bytes_atomic(f"{work}/rounds/0001/selection.parquet", b"x", options)
    finally:
        proxy.clear()
        lock.release()
    fs, _ = fsspec.core.url_to_fs(work, **options)
    fs.invalidate_cache()
    assert not fs.exists(f"{bucket}/work/rounds") and not fs.exists(f"{bucket}/work/lock.json")


# ---------------------------------------------------------------------- lock writes decided by content


@pytest.mark.parametrize("path", ["create", "refresh", "take over"])
def test_a_lock_put_whose_reply_was_lost_gets_412_from_itself_and_holds(flaky_s3, path, caplog):
    proxy, options, bucket = flaky_s3
    work = f"s3://{bucket}/work"
    if path == "take over":
        _foreign_lock(work, expires_in=-1, storage_options=options)
    lock = WorkdirLock(work, options, command="round", ttl=60.0)  # no heartbeat during the test
    if path == "refresh":
        lock.acquire()
    before = lock_record(work, options) if path != "create" else None
    lost = proxy.add("PUT", f"/{bucket}/work/lock.json", "lost-reply")  # carried out, its reply reset
    try:
        with caplog.at_level(logging.INFO, logger="dist_al.campaign.lock"):
            if path == "create":
                lock.acquire()
            elif path == "refresh":
                lock.refresh()
                lock.check_held()  # not lost: writes go on
            else:
                assert lock._take_over(before)
        assert lost["hits"] == 1
        after = lock_record(work, options)
        assert after["token"] == lock.token and (before is None or after["expires_at"] > before["expires_at"])
        if path != "create":  # the retried PUT got 412 from its own write; the lock's content decided
            assert "holds our write although the store answered OSError" in caplog.text
    finally:
        lock.release()


@pytest.mark.slow  # waits out real heartbeats and leases
def test_an_unrelated_einval_on_a_lock_put_is_raised_not_taken_for_a_lost_lock(flaky_s3):
    proxy, options, bucket = flaky_s3
    work = f"s3://{bucket}/work"
    proxy.add("PUT", f"/{bucket}/work/lock.json", "lost-reply")
    proxy.add("PUT", f"/{bucket}/work/lock.json", "400")  # answers the create's retry
    lock = WorkdirLock(work, options, command="round", ttl=60.0).acquire()  # the create landed: read back, held
    try:
        before = lock_record(work, options)
        assert before["token"] == lock.token
        proxy.add("PUT", f"/{bucket}/work/lock.json", "400")  # InvalidRequest: EINVAL, as a 412 would be
        with pytest.raises(OSError) as err:
            lock.refresh()  # what the heartbeat logs as a failed refresh, and tries again
        assert err.value.errno == errno.EINVAL
        assert lock_record(work, options) == before
        lock.check_held()  # not lost
        lock.refresh()
        assert lock_record(work, options)["expires_at"] > before["expires_at"]
    finally:
        lock.release()

    _foreign_lock(work, expires_in=-1, storage_options=options)
    stale = lock_record(work, options)
    proxy.add("PUT", f"/{bucket}/work/lock.json", "400")
    with pytest.raises(OSError):
        WorkdirLock(work, options)._take_over(stale)  # an error, not "another taker was first"
    assert lock_record(work, options) == stale


# ---------------------------------------------------------------------------------- takeover guards


@pytest.mark.subprocess
def test_a_taker_killed_holding_its_guard_does_not_block_later_takeovers(tmp_path):
    work = str(tmp_path / "work")
    os.makedirs(work)
    _foreign_lock(work, expires_in=-1)
    stale = lock_record(work)
    proc = spawn(ACQUIRER, work, crash_at="lock.after_guard")
    proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL
    assert sorted(os.listdir(work)) == ["lock.json", f"lock.json.takeover-{'f' * 32}.0"]
    assert lock_record(work) == stale

    lock = WorkdirLock(work, command="round").acquire()  # the guard's taker is gone: passed over
    try:
        assert lock_record(work)["token"] == lock.token
        assert os.listdir(work) == ["lock.json"]  # the dead taker's guard is cleared
    finally:
        lock.release()


def test_takeover_guards_expire_and_a_live_one_wins(tmp_path):
    work = str(tmp_path / "work")
    os.makedirs(work)
    _foreign_lock(work, expires_in=-1)
    guard = f"{work}/lock.json.takeover-{'f' * 32}"
    now = time.time()
    Path(f"{guard}.0").write_text(json.dumps({"host": "another-host", "pid": 7, "expires_at": now - 1}))  # expired
    Path(f"{guard}.1").write_text(json.dumps({"host": "another-host", "pid": 8, "expires_at": now + 30}))
    with pytest.raises(WorkdirLocked, match=r"its stale lock is being taken over by another-host/8; another"):
        WorkdirLock(work).acquire()  # the taker that claimed guard 1 after the dead guard 0 goes on alone
    os.remove(f"{guard}.1")  # that taker gave up
    lock = WorkdirLock(work).acquire()
    try:
        assert os.listdir(work) == ["lock.json"]
    finally:
        lock.release()


# ----------------------------------------------------------------------------------------- the sweep


@pytest.mark.subprocess
def test_the_temp_sweep_spares_a_competing_acquirers_temp_file(tmp_path):
    work = tmp_path / "work"
    (work / "rounds" / "0001").mkdir(parents=True)
    killed_write = work / "rounds" / "0001" / f".state.json.tmp-{'a' * 32}"
    killed_create = work / f".lock.json.tmp-{'b' * 32}"
    killed_write.write_text("{}")
    killed_create.write_text("{}")
    os.utime(killed_create, (time.time() - 3600,) * 2)  # older than a lease: its creator is long gone
    # a competitor stalls between writing its lock temp file and linking it
    competitor = spawn(ACQUIRER, str(work), stall_at="create.before_link:lock.json")
    wait_stopped(competitor)
    (pending,) = [p for p in work.iterdir() if TEMP.match(p.name) and p != killed_create]
    cfg = {"workdir": str(work), "pool": {"storage_options": {}}}
    try:
        with workdir_lock(cfg["workdir"], cfg["pool"]["storage_options"], "round") as lock:
            assert pending.exists() and not killed_write.exists() and not killed_create.exists()
            os.kill(competitor.pid, signal.SIGCONT)
            out, err = competitor.communicate(timeout=120)
            assert competitor.returncode == 75, err  # it lost cleanly: its link found the lock taken
            assert f"is locked by {HOST}/{os.getpid()} (round)" in out and "Traceback" not in err
            assert lock_record(str(work))["token"] == lock.token
    finally:
        if competitor.poll() is None:
            competitor.kill()
    assert not pending.exists()  # its creator removed it
