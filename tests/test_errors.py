"""The two kinds of errors the `dist-al` command reports.

A mistake the user can fix (``dist_al.core.errors.UserError``, raised where the input is found bad, also on a Ray
worker) is `dist-al: error: ...` and exit 2. Anything else is a bug, even a plain ValueError: one line
`dist-al: internal error: TYPE: message (at dist_al/FILE.py:LINE in FUNCTION)` and exit 1, the traceback with --debug.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import ray

from dist_al import cli, commands
from dist_al.core.inputs import check_budget
from dist_al.data.pool import plan_shards

ROOT = Path(__file__).resolve().parents[1]
INTERNAL = re.compile(
    r"^dist-al: internal error: (\w+): (.*) \(at (dist_al/[\w/]+\.py):\d+ in (\w+)\); "
    r"run with --debug for the traceback, and please report it$"
)


def make_pool_with(patch: str, *args: str):
    """`dist-al make-pool` in a fresh process, after running `patch` (Python) to plant a bug."""
    code = (
        f"import sys, dist_al.data.writer, dist_al.data.synthetic\n{patch}\n"
        "from dist_al.cli import main\nsys.exit(main(sys.argv[1:]))"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=120)


BUGS = [
    (
        "def bug(*a, **k):\n    raise ValueError('a bug deep down')\ndist_al.data.writer.write_table_atomic = bug",
        "ValueError",
        "a bug deep down",
        "dist_al/data/writer.py",
        "_write_parts",
    ),
    (
        "def bug(*a, **k):\n    return {}['rows']\ndist_al.data.synthetic.gaussian_mixture = bug",
        "KeyError",
        "'rows'",
        "dist_al/commands.py",
        "make_pool_command",
    ),
]


@pytest.mark.subprocess
@pytest.mark.parametrize("patch, kind, message, where, function", BUGS, ids=["ValueError", "KeyError"])
def test_a_bug_is_an_internal_error_with_its_place(tmp_path, patch, kind, message, where, function):
    res = make_pool_with(patch, "make-pool", str(tmp_path / "pool"), "--synthetic", "--rows", "20")
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 1 and len(lines) == 1, res.stderr
    print("OBSERVED", lines[0])
    assert INTERNAL.match(lines[0]).groups() == (kind, message, where, function), lines[0]
    debug = make_pool_with(patch, "--debug", "make-pool", str(tmp_path / "pool"), "--synthetic", "--rows", "20")
    assert debug.returncode == 1
    assert "Traceback (most recent call last)" in debug.stderr and f"{kind}: {message}" in debug.stderr


@pytest.mark.subprocess
def test_a_store_that_stays_down_is_an_error_of_the_environment_not_a_bug(tmp_path):
    patch = (
        "from dist_al.data.storage import StorageUnavailable\n"
        "def down(*a, **k):\n    raise StorageUnavailable('writing s3://b/p failed 3 times in 4.2 s, giving up')\n"
        "dist_al.data.writer.write_table_atomic = down"
    )
    res = make_pool_with(patch, "make-pool", str(tmp_path / "pool"), "--synthetic", "--rows", "20")
    assert res.returncode == 1
    assert res.stderr.strip() == "dist-al: error: writing s3://b/p failed 3 times in 4.2 s, giving up"


@pytest.mark.subprocess
def test_a_place_that_cannot_be_written_is_a_user_error(tmp_path):
    (tmp_path / "a-file").write_text("")
    res = make_pool_with("", "make-pool", str(tmp_path / "a-file" / "pool"), "--synthetic", "--rows", "20")
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip() == f"dist-al: error: cannot write {tmp_path / 'a-file' / 'pool'}: Not a directory"


@pytest.mark.parametrize(
    "function, args, code", [(check_budget, (5, 3), 2), (plan_shards, (None, 0), 1)], ids=["user error", "bug"]
)
def test_errors_raised_on_a_ray_worker(ray_local, monkeypatch, capsys, function, args, code):
    """The error crosses Ray as a RayTaskError: a user's mistake keeps its one line and exit 2, a bug is an
    internal error placed where it happened, on the worker."""
    monkeypatch.setattr(commands, "status_command", lambda _: ray.get(ray.remote(function).remote(*args)))
    assert cli.main(["status"]) == code
    err = capsys.readouterr().err.strip()
    print("OBSERVED", err)
    if code == 2:
        assert err == "dist-al: error: budget 5 is larger than the 3 unlabeled rows"
    else:
        assert INTERNAL.match(err).groups() == (
            "ValueError",
            "n_shards must be >= 1, got 0",
            "dist_al/data/pool.py",
            "plan_shards",
        ), err
