"""Shared pytest fixtures, the Hypothesis profiles, and the test tiers' markers."""

import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import ray
import torch
from hypothesis import settings
from lsserver import start_label_studio, stop
from rayhead import TEST_RAY_ENV
from s3server import s3_bucket, s3_server, s3_storage_options  # noqa: F401  (moto S3 on loopback)

os.environ.update(TEST_RAY_ENV)  # before any Ray starts: the local Rays of tests and of the commands they run

# "ci" (the default): the same examples on every run and every machine, so a red suite means a change
# broke something, not that Hypothesis drew a new input. "explore": many more examples from random seeds,
# failures kept in .hypothesis/ and replayed first; run it to hunt new cases, and pin each one found with
# @example. Chosen by HYPOTHESIS_PROFILE; test modules read it at import, so it is loaded here.
settings.register_profile("ci", max_examples=80, derandomize=True, database=None, print_blob=True)
settings.register_profile("explore", max_examples=2000, derandomize=False, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


# Test tiers (markers registered in pyproject.toml): tests that use these fixtures get the marker themselves.
_FIXTURE_MARKS = {
    "ray_local": "cluster",
    "shared_ray_head": "cluster",
    "drivers_join_shared_head": "cluster",
    "ray_tests_importable": "cluster",
    "s3_server": "s3",
    "s3_bucket": "s3",
    "s3_storage_options": "s3",
}


# The longest test modules, longest first (seconds of each, summed over its tests, in the whole suite's run with three
# test processes on the 2-core machine, 2026-12-01).
# pytest-xdist hands out modules in collection order, so these go first: a long module started last would leave
# the other test processes idle while it runs. Only an order: a module missing here runs after them, in name order.
LONGEST_FIRST = [
    "test_inputs_distributed.py",  # 332 s
    "test_security.py",  # 293 s
    "test_configs_run.py",  # 244 s
    "test_labeling.py",  # 236 s
    "test_bad_input.py",  # 230 s
    "test_distributed.py",  # 206 s
    "test_faults_rounds.py",  # 196 s
    "test_faults_distributed.py",  # 124 s
    "test_cli.py",  # 115 s
    "test_simulate.py",  # 115 s
    "test_jobs.py",  # 106 s
    "test_bad_input_readers.py",  # 90 s
    "test_bench_smoke.py",  # 54 s
    "test_rounds.py",  # 54 s
    "test_long_campaign.py",  # 48 s
]


def pytest_collection_modifyitems(items):
    rank = {name: k for k, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a module's own order is kept
    for item in items:
        for fixture, mark in _FIXTURE_MARKS.items():
            if fixture in item.fixturenames:
                item.add_marker(mark)
        if any(item.get_closest_marker(m) for m in ("cluster", "subprocess", "labelstudio")):
            item.add_marker("slow")  # starting Ray, a fresh interpreter that imports torch, or a Label Studio server


_RAY_FIXTURES: set[str] = set()  # fixtures seen starting Ray, which run before the autouse check below


@pytest.hookimpl(hookwrapper=True)
def pytest_fixture_setup(fixturedef, request):
    before = ray.is_initialized()
    yield
    if not before and ray.is_initialized():
        _RAY_FIXTURES.add(fixturedef.argname)


@pytest.fixture(autouse=True)
def _tiers_hold(request, monkeypatch):
    """A test that starts Ray must be marked ``cluster``, one that runs a program ``subprocess`` (Ray and Label
    Studio start their own), so ``-m "not slow"`` stays fast. Fixtures are checked too: a module-scoped one
    starts Ray before this runs."""

    def marked(name):
        return request.node.get_closest_marker(name) is not None

    def refuse(what, mark):
        def refused(*args, **kwargs):
            pytest.fail(f"{request.node.nodeid} {what}: mark it @pytest.mark.{mark}", pytrace=False)

        return refused

    if not marked("cluster"):
        started_ray = _RAY_FIXTURES.intersection(request.fixturenames)
        if started_ray:
            pytest.fail(f"{request.node.nodeid} uses {sorted(started_ray)}, which start Ray: mark it cluster")
        monkeypatch.setattr(ray, "init", refuse("starts Ray", "cluster"))
        if not (marked("subprocess") or marked("labelstudio")):
            monkeypatch.setattr(subprocess.Popen, "__init__", refuse("runs a program", "subprocess"))
    yield


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Test inputs are tiny: intra-op threads only add overhead, and on a busy 2-core machine
    OpenMP spinning makes small batched linalg calls ~50x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def label_studio():
    """One real Label Studio (tests/lsserver.py) on a free port of 127.0.0.1 per test process, with a temporary
    data directory and SQLite, local-files serving under ``files_root`` (tests that want Label Studio to show
    local files put them there). Tests share it, each with a project of its own."""
    root = Path(tempfile.mkdtemp(prefix="dal-ls-"))
    server = start_label_studio(root)
    try:
        yield server
    finally:
        stop(server.process)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray per test module. 4 logical CPUs on 2 cores: room for 2 shard workers or
    2 Ray Train workers plus the trainer's controller."""
    if ray.is_initialized():  # another module left Ray running
        ray.shutdown()
    ray.init(address="local", num_cpus=4, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def shared_ray_head():
    """One `ray start --head` (tests/rayhead.py) per test process, for the `dist-al` commands of many modules. Its
    workers import from the repository and tests/ (the model factories and readers the tests' configs name), as
    the workers of the local Ray a command starts do through the command's own PYTHONPATH."""
    from rayhead import ray_head

    tests = os.path.dirname(os.path.abspath(__file__))
    path = os.pathsep.join([tests, os.path.dirname(tests), os.environ.get("PYTHONPATH", "")])
    with ray_head(num_cpus=8, env={"PYTHONPATH": path}) as head:
        yield head


@pytest.fixture
def drivers_join_shared_head(shared_ray_head, monkeypatch):
    """`dist-al` processes the test starts join the shared head (RAY_ADDRESS, as a Ray Job's driver does) instead of
    each starting and stopping a private local Ray, ~9 CPU-seconds a command on a 2-core machine. Only for configs
    whose paths are absolute: the head's workers do not run in the command's directory. The private local Ray
    keeps its own tests (test_cli, test_configs_run, test_bad_input's local-limit cases, the walkthroughs)."""
    for name, value in shared_ray_head.driver_env().items():
        if name.startswith("RAY_"):
            monkeypatch.setenv(name, value)
