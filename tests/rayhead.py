"""A real Ray head node on loopback, started with `ray start --head` as users start one.

Free ports and a private temp dir keep it apart from any other Ray on the
machine; token authentication is on with a token that lives only in the
environment of the head and of the test's own client processes. Teardown kills
the head's whole process group, then anything still running from its temp dir
(never `ray stop`, which would stop every Ray on the machine).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

BIN = Path(sys.executable).parent

# Ray settings for every Ray the tests start. Ray Train V2's controller polls its workers every 2 s by default, and
# each phase of a fit (start, run, finish) waits for a poll; the tests' fits train tiny models for well under a
# second. Measured back to back, the two modules alone: test_inputs_distributed + test_rounds 160 s -> 120 s (in
# the whole suite less: the other test processes fill the waits).
TEST_RAY_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2"}


def without_ray_env(env: Mapping[str, str]) -> dict[str, str]:
    """`env` without the RAY_ variables that point a process at a running Ray (address, token), keeping
    TEST_RAY_ENV."""
    return {k: v for k, v in env.items() if not k.startswith("RAY_")} | TEST_RAY_ENV


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RayHead:
    dashboard: str  # http://127.0.0.1:PORT, what `dist-al submit --address` takes
    gcs_port: int
    token: str
    temp_dir: str
    log: str

    def client_env(self, **extra) -> dict:
        """Environment of a user's shell that holds the cluster's token."""
        env = without_ray_env(os.environ)
        return {**env, "RAY_AUTH_TOKEN": self.token, "PATH": f"{BIN}:{env.get('PATH', '')}", **extra}

    def driver_env(self, **extra) -> dict:
        """Environment of a `dist-al` process whose driver joins this head (RAY_ADDRESS, as in a Ray Job) instead
        of starting a private local Ray: the same code path after ray.init, without starting and stopping a Ray
        per command. RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 keeps Ray from replacing 127.0.0.1 in the address with
        the machine's own address, on which this loopback head does not listen."""
        return self.client_env(
            RAY_ADDRESS=f"127.0.0.1:{self.gcs_port}",
            RAY_AUTH_MODE="token",
            RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
            **extra,
        )


def _wait_up(url: str, token: str, proc: subprocess.Popen, log: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ray start exited with {proc.returncode}:\n{Path(log).read_text()[-3000:]}")
        try:
            req = urllib.request.Request(f"{url}/api/version", headers={"Authorization": f"Bearer {token}"})
            urllib.request.urlopen(req, timeout=2).read()
            return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"Ray dashboard at {url} did not come up in {timeout} s:\n{Path(log).read_text()[-3000:]}")


def _kill_leftovers(temp_dir: str) -> None:
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if temp_dir.encode() in cmdline:
            with contextlib.suppress(OSError):
                os.kill(int(pid), signal.SIGKILL)


@contextlib.contextmanager
def ray_head(num_cpus: int = 4, num_gpus: int = 0, env: dict | None = None):
    """Yields a RayHead; logical GPUs (`num_gpus`) let placement be tested on a machine without any; `env` adds to
    the environment of the head and so of its workers (PYTHONPATH for modules the tests name in configs)."""
    temp_dir = tempfile.mkdtemp(prefix="dal-head-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    token = secrets.token_hex(16)
    gcs, dashboard = free_port(), free_port()
    ports = {
        "--port": gcs,
        "--dashboard-port": dashboard,
        "--ray-client-server-port": free_port(),
        "--dashboard-agent-listen-port": free_port(),
    }
    cmd = [
        str(BIN / "ray"),
        "start",
        "--head",
        "--block",
        f"--temp-dir={temp_dir}",
        "--node-ip-address=127.0.0.1",
        f"--num-cpus={num_cpus}",
        f"--num-gpus={num_gpus}",
        "--include-dashboard=true",
        "--dashboard-host=127.0.0.1",
        "--disable-usage-stats",
        *[f"{k}={v}" for k, v in ports.items()],
    ]
    head_env = without_ray_env(os.environ)
    head_env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, PATH=f"{BIN}:{head_env.get('PATH', '')}")
    head_env.update(env or {})
    log = os.path.join(temp_dir, "ray-start.log")
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=head_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{dashboard}"
    try:
        _wait_up(url, token, proc, log)
        yield RayHead(url, gcs, token, temp_dir, log)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        _kill_leftovers(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
