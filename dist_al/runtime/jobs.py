"""Ray Job submission: any dist-al command runs on a cluster as a Ray Job.

The user's working directory (with the config, and any model module the config
names) travels as the job's runtime_env working_dir, so the job's driver, every
ShardWorker and every Ray Train worker import the same code. The entrypoint is
the same `dist-al COMMAND --config ... --set ...` line the user would type, so a
job fails exactly as a local run would, with the same one-line errors in its logs.

Credentials never travel with the job: the Ray token is read from the
environment or Ray's token file and sent as an HTTP header only, and a config
or --set that carries a credential anywhere is refused (the cluster gets its own
from its environment: IRSA, a Kubernetes Secret, an instance profile).
"""

from __future__ import annotations

import datetime
import os
import secrets
import shlex
import sys
import time
from pathlib import Path

from dist_al.config import read_config
from dist_al.core.errors import UserError
from dist_al.credentials import credential_paths

COMMANDS = ("select", "round", "export", "ingest", "train", "status", "simulate")
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
# Never uploaded: version control, environments, caches, and dist-al's default local outputs.
EXCLUDES = [
    ".git",
    ".venv",
    "venv",
    ".tox",
    "__pycache__",
    "*.pyc",
    ".pytest_cache",
    ".mypy_cache",
    ".ruff_cache",
    "*.egg-info",
    "dist-al-work",
    "dist-al-demo",
    "*.pt",
    ".ipynb_checkpoints",
]
SUBMISSION_PREFIX = "dist-al-"


class JobError(UserError):
    """A submission problem the user can fix; the message says what and how."""


def cluster_address(address: str | None) -> str:
    """--address, else RAY_API_SERVER_ADDRESS, else RAY_ADDRESS: the order `ray job submit` uses."""
    address = address or os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS")
    if not address:
        raise JobError("no cluster address: pass --address http://HEAD:8265 (the Ray dashboard) or set RAY_ADDRESS")
    if "://" not in address:
        address = f"http://{address}"
    return address


def auth_headers() -> dict:
    """The Ray token as an Authorization header, from RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token
    (Ray's own lookup order); none when RAY_AUTH_MODE=disabled or no token exists."""
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        return {}
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if not token:
        path = os.environ.get("RAY_AUTH_TOKEN_PATH")
        candidate = Path(path) if path else Path.home() / ".ray" / "auth_token"
        if path and not candidate.is_file():
            raise JobError(f"RAY_AUTH_TOKEN_PATH={path} is not a readable file")
        token = candidate.read_text().strip() if candidate.is_file() else ""
    return {"Authorization": f"Bearer {token}"} if token else {}


def client(address: str | None):
    try:
        from ray.job_submission import JobSubmissionClient
    except ImportError as err:  # ray without the [default] extra
        raise JobError(f"job submission needs ray[default] ({err}): pip install 'dist-al[jobs]'") from None
    url = cluster_address(address)
    try:
        return JobSubmissionClient(url, headers=auth_headers())
    except ConnectionError as err:
        raise JobError(f"cannot reach the Ray dashboard at {url}: {err}") from None
    except Exception as err:  # noqa: BLE001 - the SDK's errors have no common base; _job_error says which
        raise _job_error(url, err) from None


def _job_error(url: str, err: Exception) -> JobError:
    from ray.exceptions import AuthenticationError

    if isinstance(err, AuthenticationError):
        return JobError(
            f"the cluster at {url} refused the request: token authentication is on and no valid token "
            "was sent; set RAY_AUTH_TOKEN, or RAY_AUTH_TOKEN_PATH, or put the cluster's token in "
            "~/.ray/auth_token (see deploy/README.md, 'The Ray token')"
        )
    return JobError(
        f"Ray job API at {url}: {str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__}"
    )


def _call(url: str, fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except JobError:
        raise
    except Exception as err:  # noqa: BLE001 - the SDK raises RuntimeError for HTTP errors, AuthenticationError for 401/403
        raise _job_error(url, err) from None


# -- what a job carries --------------------------------------------------------------------


def check_no_credentials(config_path: Path, overrides: list[str]) -> None:
    """Credentials in a submitted config would sit in the uploaded package, the job's entrypoint and the cluster's
    job record. The file and each --set are read as the job will read them (dist_al.config.read_config) and every
    value is checked, at any depth (dist_al.credentials)."""
    sources = [(str(config_path), read_config(str(config_path)))]
    sources += [(f"--set {item.partition('=')[0].strip()}", read_config(None, [item])) for item in overrides]
    for where, raw in sources:
        found = credential_paths(raw)
        if found:
            raise JobError(
                f"{where}: {found[0]} holds a credential; credentials must not travel with a job: remove "
                "it and give the cluster its own (IRSA, a Kubernetes Secret, an instance profile; see "
                "deploy/README.md)"
            )


def relative_workdir_warning(raw: dict) -> str | None:
    """A relative local workdir would land in the job's temporary copy of the working directory."""
    workdir = raw.get("workdir", "./dist-al-work")
    if isinstance(workdir, str) and "://" not in workdir and not os.path.isabs(workdir):
        return (
            f"warning: workdir {workdir!r} is a relative path: on the cluster it resolves inside the job's "
            "temporary working directory and is lost when the job ends; use s3://... or a path every node shares"
        )
    return None


def submission_id(command: str) -> str:
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{SUBMISSION_PREFIX}{command}-{stamp}-{secrets.token_hex(3)}"


def entrypoint(command: str, config_rel: str, overrides: list[str], args: list[str]) -> str:
    line = ["python", "-m", "dist_al.cli", command, "--config", config_rel]
    for item in overrides:
        line += ["--set", item]
    return shlex.join(line + list(args))


def submit(
    *,
    address: str | None,
    config: str,
    overrides: list[str],
    command_line: list[str],
    working_dir: str | None = None,
    wait: bool = False,
    job_id: str | None = None,
    out=sys.stdout,
    err=sys.stderr,
) -> int:
    if not command_line:
        raise JobError("no command to run: put it after `--`, e.g. dist-al submit --config c.yaml -- round")
    command, args = command_line[0], command_line[1:]
    if command not in COMMANDS:
        raise JobError(f"cannot submit {command!r}: one of {', '.join(COMMANDS)}")
    root = Path(working_dir or os.getcwd()).resolve()
    if not root.is_dir():
        raise JobError(f"--working-dir {root} is not a directory")
    config_path = Path(config).resolve()
    if not config_path.is_file():
        raise JobError(f"config file {config} does not exist")
    try:
        config_rel = config_path.relative_to(root).as_posix()
    except ValueError:
        raise JobError(
            f"config {config_path} is outside the working directory {root} that travels with the job: "
            "move it under that directory or pass --working-dir"
        ) from None
    check_no_credentials(config_path, overrides)
    warning = relative_workdir_warning(read_config(str(config_path), overrides))
    if warning:
        print(warning, file=err)

    jobs = client(address)
    url = cluster_address(address)
    sid = job_id or submission_id(command)
    runtime_env = {"working_dir": str(root), "excludes": EXCLUDES, "env_vars": {"PYTHONUNBUFFERED": "1"}}
    metadata = {"dist_al_command": command, "dist_al_config": config_rel}
    _call(
        url,
        jobs.submit_job,
        entrypoint=entrypoint(command, config_rel, overrides, args),
        runtime_env=runtime_env,
        submission_id=sid,
        metadata=metadata,
    )
    print(sid, file=out)
    if not wait:
        print(f"follow it with: dist-al logs {sid} --follow --address {url}", file=err)
        return 0
    return follow(jobs, url, sid, out=out, err=err)


def follow(jobs, url: str, sid: str, *, out=sys.stdout, err=sys.stderr) -> int:
    """Streams the job's logs until it ends; exit status 0 only when it SUCCEEDED."""
    import asyncio

    async def tail():
        async for chunk in jobs.tail_job_logs(sid):
            out.write(chunk)
            out.flush()

    try:
        asyncio.run(tail())
    except KeyboardInterrupt:
        print(f"\nstopped following; the job keeps running (stop it with: ray job stop {sid})", file=err)
        return 130
    except Exception as error:  # noqa: BLE001 - the log stream can drop; the status below still tells how it ended
        print(f"log stream ended early ({error}); waiting for the job's status", file=err)
    status = _call(url, jobs.get_job_status, sid)
    while str(status) not in TERMINAL:
        time.sleep(1.0)
        status = _call(url, jobs.get_job_status, sid)
    info = _call(url, jobs.get_job_info, sid)
    status = str(info.status)
    print(f"job {sid} {status.lower()}" + ("" if status == "SUCCEEDED" else f": {_last_line(info.message)}"), file=err)
    return 0 if status == "SUCCEEDED" else 1


def _last_line(message: str | None) -> str:
    lines = [line for line in (message or "").splitlines() if line.strip()]
    return lines[-1] if lines else "no message"


def list_jobs(address: str | None, show_all: bool = False) -> str:
    jobs = client(address)
    url = cluster_address(address)
    rows = [j for j in _call(url, jobs.list_jobs) if show_all or (j.submission_id or "").startswith(SUBMISSION_PREFIX)]
    rows.sort(key=lambda j: j.start_time or 0)
    lines = ["| submission id | status | started (UTC) | seconds | command |", "|---|---|---|---:|---|"]
    for j in rows:
        start = (
            datetime.datetime.fromtimestamp(j.start_time / 1000, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
            if j.start_time
            else ""
        )
        seconds = f"{(j.end_time - j.start_time) / 1000:.0f}" if j.start_time and j.end_time else ""
        command = (j.metadata or {}).get("dist_al_command") or j.entrypoint
        lines.append(f"| {j.submission_id or j.job_id} | {j.status} | {start} | {seconds} | {command} |")
    if len(lines) == 2:
        return f"no dist-al jobs on {url}" + ("" if show_all else " (--all lists every job)")
    return "\n".join(lines)


def show_logs(address: str | None, sid: str, follow_logs: bool = False, *, out=sys.stdout, err=sys.stderr) -> int:
    jobs = client(address)
    url = cluster_address(address)
    if follow_logs:
        return follow(jobs, url, sid, out=out, err=err)
    try:
        logs = jobs.get_job_logs(sid)
    except Exception as error:  # noqa: BLE001 - the SDK reports a missing job only in the message
        if "does not exist" in str(error) or "404" in str(error):
            raise JobError(f"no job {sid!r} on {url} (list them with: dist-al jobs --address {url})") from None
        raise _job_error(url, error) from None
    out.write(logs)
    return 0
