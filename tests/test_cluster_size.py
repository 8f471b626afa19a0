"""More workers than the cluster can place never wait silently forever (dist_al/runtime/cluster.py).

A cluster dist-al connects to may grow: dist-al waits, says what is missing, and proceeds when a node joins, or
gives up after cluster.start_timeout_s with every actor and placement group it made released. A private local Ray
is sized to the job, and what it can never hold is refused at once (tests/test_bad_input.py runs those through
the command).
"""

from __future__ import annotations

import logging
import re
import threading
import time

import numpy as np
import pytest
import ray
from raycluster import multi_node_cluster

from dist_al.campaign.train import train
from dist_al.config import validate
from dist_al.data.writer import write_pool
from dist_al.runtime import cluster as capacity
from dist_al.runtime.cluster import ClusterTooSmall, WorkerGroup, worker_threads
from dist_al.runtime.selection import sharded_pool

DIM, CLASSES = 4, 3


@pytest.fixture(scope="module")
def head_only():
    """A real Ray cluster of one node with 1 CPU, that tests may add nodes to."""
    with multi_node_cluster(head_cpus=1, worker_nodes=0) as c:
        yield c


@pytest.fixture(scope="module")
def pool_uri(tmp_path_factory):
    uri = str(tmp_path_factory.mktemp("pool") / "pool")
    rng = np.random.default_rng(0)
    write_pool(uri, np.arange(60), rng.normal(size=(60, DIM)), np.arange(60) % CLASSES, rows_per_group=20)
    return uri


def _config(uri, **cluster):
    return validate(
        {
            "pool": {"uri": uri, "label_column": "label"},
            "model": {"kwargs": {"in_dim": DIM, "n_classes": CLASSES, "hidden": 8}},
            "selection": {"strategy": "margin", "budget": 5},
            "train": {"workers": 2, "epochs": 1},
            "cluster": {"workers": 2, **cluster},
        }
    )


def _cpus_free_again(cpus: float) -> bool:
    """The cluster's free CPUs come back to `cpus` (released resources return asynchronously)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if ray.available_resources().get("CPU", 0) == cpus:
            return True
        time.sleep(0.1)
    return False


def _dies(actor) -> bool:
    """The actor stops answering (ray.kill lands asynchronously)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            ray.get(actor.ping.remote(), timeout=5)
        except ray.exceptions.RayActorError:
            return True
        time.sleep(0.1)
    return False


class _Progress(logging.Handler):
    """Collects the progress lines; ``one_waits`` is set once one says the first worker started and one waits."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.lines: list[str] = []
        self.one_waits = threading.Event()

    def emit(self, record):
        if record.getMessage().startswith("waiting for the cluster"):
            self.lines.append(record.getMessage())
            if "1 of 2 ShardWorkers started" in record.getMessage():
                self.one_waits.set()


@pytest.fixture
def progress(monkeypatch):
    monkeypatch.setattr(capacity, "PROGRESS_SECONDS", 0.5)
    handler = _Progress()
    logging.getLogger("dist_al.runtime.cluster").addHandler(handler)
    yield handler
    logging.getLogger("dist_al.runtime.cluster").removeHandler(handler)


@pytest.mark.cluster
def test_waits_for_a_node_that_joins_then_proceeds(head_only, pool_uri, progress):
    """2 ShardWorkers of 1 CPU on a 1-CPU cluster: one starts, the other waits until a node joins."""
    outcome = {}

    def select():  # Ray adds nodes from the main thread only: the driver waits in this one
        try:
            pool = sharded_pool(_config(pool_uri, cpus_per_worker=1, start_timeout_s=120))
            try:
                outcome["picked"] = len(pool.select("margin", 5).table)
                outcome["nodes"] = len({node for node, _ in pool.where})
            finally:
                pool.close()
        except Exception as err:  # noqa: BLE001 - reported by the assertion below
            outcome["error"] = err

    driver = threading.Thread(target=select)
    driver.start()
    node = head_only.add_node(num_cpus=1) if progress.one_waits.wait(120) else None
    driver.join(300)
    if node is not None:
        head_only.remove_node(node)
    assert node is not None and outcome == {"picked": 5, "nodes": 2}, outcome
    line = next(line for line in progress.lines if "1 of 2" in line)
    print("OBSERVED", line)
    assert line.startswith(
        "waiting for the cluster: 1 of 2 ShardWorkers started; the other 1 need 1 CPU and 0 GPU "
        "each, the cluster has 0 of 1 CPUs and 0 of 0 GPUs free; giving up in "
    )


@pytest.mark.cluster
def test_shard_workers_time_out_and_are_released(head_only, pool_uri, progress):
    with pytest.raises(ClusterTooSmall) as err:
        sharded_pool(_config(pool_uri, cpus_per_worker=1, start_timeout_s=2))
    print("OBSERVED", err.value)
    assert re.match(
        r"the cluster had [01] of 2 ShardWorkers started after 2 s \(cluster.start_timeout_s\); they "
        r"need 1 CPU and 0 GPU each, and the cluster has [01] of 1 CPUs and 0 of 0 GPUs free: change "
        r"cluster.workers, cluster.cpus_per_worker, cluster.gpus_per_worker, add nodes, or raise "
        r"cluster.start_timeout_s$",
        str(err.value),
    )
    assert progress.lines  # it said so while it waited
    assert _cpus_free_again(1)


@ray.remote(num_cpus=1)
class _Worker:
    def ping(self):
        return True


@pytest.mark.cluster
def test_a_timeout_kills_the_workers_that_had_started(head_only):
    first, second = _Worker.remote(), _Worker.remote()
    assert ray.get(first.ping.remote())  # started: it holds the cluster's only CPU
    group = WorkerGroup(
        "ShardWorker", 2, 1, 0, ("cluster.workers", "cluster.cpus_per_worker", "cluster.gpus_per_worker")
    )
    with pytest.raises(ClusterTooSmall, match="^the cluster had 1 of 2 ShardWorkers started after 1 s"):
        capacity.wait_started([first, second], [first.ping.remote(), second.ping.remote()], group, 1)
    assert _dies(first)
    assert _cpus_free_again(1)


@pytest.mark.cluster
def test_ray_train_workers_time_out_and_their_placement_is_released(head_only, pool_uri, tmp_path):
    cfg = _config(pool_uri, start_timeout_s=1)
    with pytest.raises(
        ClusterTooSmall,
        match=r"^the cluster had [01] of 2 Ray Train workers placeable after 1 s "
        r"\(cluster.start_timeout_s\); they need 1 CPU and 0 GPU each.*"
        r"change train.workers, train.cpus_per_worker, train.use_gpu",
    ):
        train(cfg, {i: i % CLASSES for i in range(10)}, checkpoint_uri=str(tmp_path / "model.pt"))
    assert _cpus_free_again(1)
    assert all(pg["state"] == "REMOVED" for pg in ray.util.placement_group_table().values())
    assert not list(tmp_path.iterdir())


def test_worker_threads_are_a_share_of_the_cores_on_an_oversubscribed_local_ray(monkeypatch):
    assert worker_threads(4) == 4 and worker_threads(0.5) == 1  # a cluster: as many threads as CPUs asked for
    monkeypatch.setattr(capacity, "_local", (2, 8))  # 2 cores, 8 logical CPUs
    assert worker_threads(4) == 1 and worker_threads(1) == 1
    monkeypatch.setattr(capacity, "_local", (8, 8))
    assert worker_threads(4) == 4


@pytest.mark.parametrize("gpus, fits", [(1, False), (2, True)])
def test_fractional_gpus_are_packed_as_ray_packs_them(monkeypatch, gpus, fits):
    """3 workers of 0.4 GPU: 0.4 x 3 = 1.2 GPUs, but at most 2 fit inside one GPU, so they need 2."""
    monkeypatch.setattr(capacity, "cores", lambda: 2)
    group = WorkerGroup(
        "ShardWorker", 3, 0, 0.4, ("cluster.workers", "cluster.cpus_per_worker", "cluster.gpus_per_worker")
    )
    if fits:
        capacity._check_local((group,), gpus)
    else:
        with pytest.raises(ClusterTooSmall, match="3 ShardWorkers with 0.4 GPU each need 2 GPUs, the local Ray has 1"):
            capacity._check_local((group,), gpus)
