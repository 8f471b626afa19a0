"""A real Label Studio server for tests: ``label-studio`` from PyPI in its own virtual environment, on loopback.

Its dependencies (Django and some hundred more) never enter dist-al's environment: the server runs from a
venv at ``$DIST_AL_LABEL_STUDIO_VENV`` or ``~/.cache/dist-al/label-studio-<VERSION>``. A session that finds no
venv there installs one (a minute or two, once per machine; a file lock keeps two sessions from installing at
once, and a marker file written last tells a finished install from one that was interrupted).

The first server a machine starts runs Label Studio's database migrations (a minute or more on a busy
machine); its fresh database is then kept next to the venv (under a file lock too), and every server starts
from a copy in seconds.

``python tests/lsserver.py`` does both ahead of time: ``scripts/test.sh`` runs it in the background while it
installs dist-al and runs the checks, so that on a fresh machine (CI) the first Label Studio test does not wait
minutes for them. It needs no pytest: the ``label_studio`` fixture is in ``tests/conftest.py``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

VERSION = "1.23.2"
USER, PASSWORD = "dist-al@example.com", "dist-al-test-password"
TOKEN = "5a1f0c3e9b7d4e2f8a6c1b0d3e5f7a9c2b4d6e8f"  # the legacy token of the test user (40 hex digits)
START_TIMEOUT_S = 600


def venv_dir() -> Path:
    return Path(
        os.environ.get("DIST_AL_LABEL_STUDIO_VENV") or Path.home() / ".cache" / "dist-al" / f"label-studio-{VERSION}"
    )


def ensure_venv() -> Path:
    """The venv's ``label-studio`` executable, installing the venv first if it is not there."""
    path = venv_dir()
    exe = path / "bin" / "label-studio"
    if os.environ.get("DIST_AL_LABEL_STUDIO_VENV") and exe.exists():  # one the user made: trust it
        return exe
    marker = path / ".dist-al-installed"
    if marker.exists():
        return exe
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.exists():
            return exe
        shutil.rmtree(path, ignore_errors=True)  # an install that was interrupted
        t0 = time.monotonic()
        subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
        subprocess.run(
            [
                str(path / "bin" / "pip"),
                "install",
                "--quiet",
                "--disable-pip-version-check",
                f"label-studio=={VERSION}",
            ],
            check=True,
            timeout=1800,
        )
        marker.write_text(VERSION)
        print(f"installed label-studio {VERSION} in {path} in {time.monotonic() - t0:.0f} s", file=sys.stderr)
    return exe


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LabelStudioServer:
    url: str
    token: str  # the legacy token of the test user
    files_root: Path  # LOCAL_FILES_DOCUMENT_ROOT
    process: subprocess.Popen
    log: Path
    _personal: str | None = None

    def api(self, method: str, path: str, body=None, *, authorization: str | None = None):
        """A request as an annotator's browser (or an admin's script) makes it; its JSON answer."""
        request = urllib.request.Request(
            self.url + path,
            data=None if body is None else json.dumps(body).encode(),
            method=method,
            headers={"Content-Type": "application/json", "Authorization": authorization or f"Token {self.token}"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            data = response.read()
        return json.loads(data) if data else None

    def fetch(self, link: str) -> bytes:
        """What a browser showing a task's link gets (relative links are Label Studio's own, with the session)."""
        url = self.url + link if link.startswith("/") else link
        headers = {"Authorization": f"Token {self.token}"} if link.startswith("/") else {}
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=60) as response:
            return response.read()

    def personal_access_token(self) -> str:
        """The test user's personal access token (a JWT refresh token; Label Studio gives a user one at a time)."""
        if self._personal is None:
            self._personal = self.api("POST", "/api/token/")["token"]
        return self._personal

    def tasks(self, project: int) -> list[dict]:
        return self.api("GET", f"/api/tasks/?project={project}&fields=all&page_size=1000")["tasks"]

    def annotate(self, task: int, choice: str | None, *, to_name: str = "ref", cancelled: bool = False) -> dict:
        """Submits an annotation of ``task`` choosing ``choice`` (or skips the task: ``cancelled``)."""
        result = (
            []
            if choice is None
            else [{"from_name": "label", "to_name": to_name, "type": "choices", "value": {"choices": [choice]}}]
        )
        return self.api("POST", f"/api/tasks/{task}/annotations/", {"result": result, "was_cancelled": cancelled})

    def update_annotation(self, annotation: int, choice: str, *, to_name: str = "ref") -> dict:
        result = [{"from_name": "label", "to_name": to_name, "type": "choices", "value": {"choices": [choice]}}]
        return self.api("PATCH", f"/api/annotations/{annotation}/", {"result": result})

    @contextlib.contextmanager
    def paused(self):
        """The server stopped (SIGSTOP): it accepts connections and answers nothing, as a hung server does."""
        os.killpg(self.process.pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.killpg(self.process.pid, signal.SIGCONT)


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=5) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def fresh_database() -> Path:
    """A migrated, still empty database to start servers from, made once per machine by starting a server on a
    database of its own."""
    template = venv_dir().parent / f"label-studio-{VERSION}-fresh.sqlite3"
    if template.exists():
        return template
    with open(template.parent / f".{template.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if template.exists():
            return template
        root = Path(tempfile.mkdtemp(prefix="dal-ls-migrate-"))
        try:
            server = _start(root, database=None)
            stop(server.process)
            partial = template.with_suffix(f".tmp-{os.getpid()}")
            with sqlite3.connect(root / "data" / "ls.sqlite3") as src, sqlite3.connect(partial) as dst:
                src.backup(dst)
            os.replace(partial, template)
        finally:
            shutil.rmtree(root, ignore_errors=True)
    return template


def start_label_studio(root: Path) -> LabelStudioServer:
    """A server on a copy of the fresh database."""
    return _start(root, database=fresh_database())


def _start(root: Path, database: Path | None) -> LabelStudioServer:
    """A server whose data lives under ``root``, its database copied from ``database`` (None: a new one)."""
    exe = ensure_venv()
    data, files = root / "data", root / "files"
    data.mkdir(parents=True)
    files.mkdir()
    if database is not None:
        shutil.copyfile(database, data / "ls.sqlite3")
    database = data / "ls.sqlite3"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "LABEL_STUDIO", "PYTHON", "DJANGO"))}
    env.update(
        HOME=str(root),
        LOCAL_FILES_SERVING_ENABLED="true",
        LOCAL_FILES_DOCUMENT_ROOT=str(files),
        LATEST_VERSION_CHECK="false",
        COLLECT_ANALYTICS="false",
    )
    log = root / "label-studio.log"
    command = [
        str(exe), "start", "--no-browser", "--data-dir", str(data), "-db", str(database),
        "--internal-host", "127.0.0.1", "-p", str(port),
        "--username", USER, "--password", PASSWORD, "--user-token", TOKEN, "--enable-legacy-api-token",
    ]  # fmt: skip
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT_S
    while not _healthy(url):
        if process.poll() is not None or time.monotonic() > deadline:
            stop(process)
            raise RuntimeError(f"Label Studio did not start; the end of {log}:\n{log.read_text()[-3000:]}")
        time.sleep(1)
    return LabelStudioServer(url, TOKEN, files, process, log)


def stop(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGCONT)
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


if __name__ == "__main__":
    t0 = time.monotonic()
    print(f"Label Studio {VERSION}: venv {ensure_venv().parent.parent}, fresh database {fresh_database()}", flush=True)
    print(f"ready in {time.monotonic() - t0:.0f} s")
