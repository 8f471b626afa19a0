"""Distributed selection survives lost ShardWorkers: killed actors and a removed node.

Faults are injected at a chosen step, not by timing: a worker that exits itself
(os._exit) in the middle of a given call, the driver killing a worker with
ray.kill while a given broadcast is in flight, and a node of a real multi-node
ray.cluster_utils.Cluster removed while one is in flight. Each test checks that
the fault happened (a new worker pid or node, the recovery warning) and that
the selection equals the fault-free one, id for id.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import ray
from raycluster import multi_node_cluster
from reference import embed_pool

from dist_al.config import validate
from dist_al.core import select
from dist_al.data.synthetic import gaussian_mixture
from dist_al.data.writer import write_pool
from dist_al.models.build import build_model
from dist_al.runtime import sharded_pool as pool_runtime
from dist_al.runtime.selection import sharded_pool
from dist_al.runtime.sharded_pool import RayShards, WorkerLostError
from dist_al.runtime.worker import ShardWorker

pytestmark = [pytest.mark.cluster]

# Workers unpickle the test's ShardWorker subclass by value: this module is not importable there.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

N_ROWS, N_CLASSES, DIM, WORKERS, BUDGET = 360, 4, 8, 3, 10
MODEL = {"factory": "dist_al.models:mlp", "kwargs": {"in_dim": DIM, "n_classes": N_CLASSES, "hidden": 12}}
OPTIONS = {"bait": {"oversample": 1.5}, "badge-scalable": {"rounds": 2}}
STRATEGIES = ("badge", "bait", "badge-scalable", "coreset")


class TripWorker(ShardWorker):
    """A ShardWorker that exits its process in the middle of a call, once a trip file says so.

    Each line of the trip file, "shard method n", makes the worker of that shard die during
    its n-th call of method (an ``invoke`` method, ``embed_step`` or ``id_buckets``), counted
    from when it reads the file (its construction and every ``start``). Unless the line also
    says "always", the dying worker removes it, so its replacement lives; it appends its pid
    to the file's ".died" twin.
    """

    trip: str = ""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._arm()

    def _lines(self) -> list[str]:
        try:
            return Path(self.trip).read_text().splitlines()
        except FileNotFoundError:
            return []

    def _arm(self) -> None:
        self._armed = None
        for line in self._lines():
            shard, method, n, *always = line.split()
            if int(shard) == self.shard.index:
                self._armed = [method, int(n), bool(always), line]
                return

    def _tick(self, method: str) -> None:
        if self._armed and self._armed[0] == method:
            self._armed[1] -= 1
            if self._armed[1] == 0:
                if not self._armed[2]:
                    rest = [line for line in self._lines() if line != self._armed[3]]
                    Path(self.trip).write_text("\n".join(rest))
                with open(self.trip + ".died", "a") as f:
                    f.write(f"{os.getpid()}\n")
                os._exit(1)

    def id_buckets(self, n_buckets: int):
        self._tick("id_buckets")
        return super().id_buckets(n_buckets)

    def embed_step(self, max_rows: int) -> int:
        self._tick("embed_step")
        return super().embed_step(max_rows)

    def start(self, *args):
        self._arm()
        return super().start(*args)

    def invoke(self, method: str, *args):
        self._tick(method)
        return super().invoke(method, *args)


def trip_worker(trip: Path) -> type:
    return type("TripWorker", (TripWorker,), {"trip": str(trip)})


def during(method: str, n: int, action) -> type:
    """RayShards that runs action() once while the n-th broadcast of method is in flight."""
    seen = {"calls": 0}

    class Shards(RayShards):
        def map(self, fn, *args):
            if fn.__name__ == method:
                seen["calls"] += 1
                if seen["calls"] == n:
                    refs = self.send(fn, *args)
                    action(self)
                    return self.results(refs)
            return super().map(fn, *args)

    return Shards


@pytest.fixture(scope="module")
def cluster():
    with multi_node_cluster(head_cpus=1) as c:
        yield c


@pytest.fixture(scope="module")
def pool_uri(tmp_path_factory):
    uri = str(tmp_path_factory.mktemp("pool") / "pool")
    feats, labels = gaussian_mixture(N_ROWS, N_CLASSES, DIM, seed=5)
    ids = np.arange(5000, 5000 + N_ROWS, dtype=np.int64)[::-1].copy()
    write_pool(uri, ids, feats.numpy(), labels.numpy(), rows_per_file=120, rows_per_group=30)
    return uri


def _config(uri):
    return validate(
        {
            "pool": {"uri": uri, "label_column": "label"},
            "model": MODEL,
            "selection": {"strategy": "badge", "budget": BUDGET, "seed": 7},
            "cluster": {"workers": WORKERS, "cpus_per_worker": 0.5},
        }
    )


@pytest.fixture(scope="module")
def trip(tmp_path_factory):
    return tmp_path_factory.mktemp("trip") / "trip"


class _Messages(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def hurt_pool(cluster, pool_uri, trip):
    """The pool every test uses, made of TripWorkers: shard 1's dies in its second embedding step
    (after the first returned), shard 2's in the duplicate-id check. Answers (pool, pids that
    died, warnings logged while it was built)."""
    trip.write_text("1 embed_step 2\n2 id_buckets 1")
    mp = pytest.MonkeyPatch()
    mp.setattr(pool_runtime, "ShardWorker", trip_worker(trip))
    mp.setattr(pool_runtime, "EMBED_STEP_ROWS", 30)  # 4 steps per shard
    handler = _Messages()
    logging.getLogger("dist_al.runtime.sharded_pool").addHandler(handler)
    try:
        pool = sharded_pool(_config(pool_uri), labels=True)
        died = _died(trip)
    finally:
        logging.getLogger("dist_al.runtime.sharded_pool").removeHandler(handler)
        Path(str(trip) + ".died").unlink(missing_ok=True)
    yield pool, died, handler.messages
    pool.close()
    mp.undo()


@pytest.fixture(scope="module")
def pool(hurt_pool):
    return hurt_pool[0]


@pytest.fixture(scope="module")
def fault_free(pool_uri):
    """The selections without Ray: the same model over the whole pool, then dist_al.core.select
    (tests/test_distributed.py shows the fault-free distributed selection equals it)."""
    ids, probs, feats = embed_pool(pool_uri, MODEL)
    return {s: ids[select(s, probs, feats, BUDGET, seed=7, **OPTIONS.get(s, {}))].tolist() for s in STRATEGIES}


@pytest.fixture(autouse=True)
def _clean_trip(trip):
    yield
    for path in (trip, Path(str(trip) + ".died")):
        path.unlink(missing_ok=True)


def _select(pool, strategy, labeled=None):
    table = pool.select(strategy, BUDGET, seed=7, options=OPTIONS.get(strategy), labeled_ids=labeled).table
    return table.column("id").to_pylist()


def _died(trip) -> list[int]:
    return [int(line) for line in Path(str(trip) + ".died").read_text().split()]


def _recoveries(caplog) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "dist_al.runtime.sharded_pool" and "recovery" in r.getMessage()
    ]


def test_workers_dying_in_the_embedding_pass_and_the_id_check(hurt_pool, fault_free):
    pool, died, messages = hurt_pool
    assert len(died) == 2 and pool.where[1][1] not in died and pool.where[2][1] not in died
    assert [m for m in messages if "recovery" in m and "shard 1 lost" in m and "embedding pass" in m]
    assert [m for m in messages if "recovery" in m and "shard 2 lost" in m and "duplicate-id check" in m]
    assert {s: _select(pool, s) for s in STRATEGIES} == fault_free


@pytest.mark.parametrize("compiled", [False, True], ids=["actor calls", "compiled graph"])
def test_worker_dying_in_badge_centre_3(pool, fault_free, trip, caplog, monkeypatch, compiled):
    monkeypatch.setattr(pool, "cluster", pool.cluster.model_copy(update={"compiled_graph": compiled}))
    before = pool.where[2]
    trip.write_text("2 add_taken 3")  # the broadcast of centre 3 of 10 (relayed from the shard that drew it)
    caplog.set_level(logging.WARNING, logger="dist_al.runtime.sharded_pool")
    assert _select(pool, "badge") == fault_free["badge"]
    assert _died(trip) == [before[1]] and pool.where[2][1] != before[1]
    assert any("shard 2 lost" in m and "selection 'badge'" in m for m in _recoveries(caplog))


def test_worker_killed_in_bait_update(pool, fault_free, monkeypatch, caplog):
    victim = pool.workers[0]
    before = pool.where[0]
    monkeypatch.setattr(
        pool_runtime, "RayShards", during("update", 4, lambda g: ray.kill(g.workers[0], no_restart=True))
    )
    caplog.set_level(logging.WARNING, logger="dist_al.runtime.sharded_pool")
    assert _select(pool, "bait") == fault_free["bait"]
    assert pool.workers[0] is not victim and pool.where[0][1] != before[1]
    assert any("shard 0 lost" in m and "selection 'bait'" in m for m in _recoveries(caplog))


def test_node_removed_during_badge_scalable_and_coreset(cluster, pool, fault_free, monkeypatch, caplog):
    head = cluster.head_node.node_id
    shard = next(s for s, (node, _) in enumerate(pool.where) if node != head)
    node = next(n for n in cluster.worker_nodes if n.node_id == pool.where[shard][0])
    hosted = [s for s, (n, _) in enumerate(pool.where) if n == node.node_id]
    monkeypatch.setattr(pool_runtime, "RayShards", during("add_centres", 2, lambda g: cluster.remove_node(node)))
    caplog.set_level(logging.WARNING, logger="dist_al.runtime.sharded_pool")
    try:
        assert _select(pool, "badge-scalable") == fault_free["badge-scalable"]
        assert all(pool.where[s][0] not in (node.node_id, None) for s in hosted)
        assert sum(f"shard {s} lost" in m for m in _recoveries(caplog) for s in hosted) == len(hosted)
        assert _select(pool, "coreset") == fault_free["coreset"]  # the pool keeps working on fewer nodes
    finally:
        cluster.add_node(num_cpus=2)
        cluster.wait_for_nodes()


def _kill(worker) -> None:
    """ray.kill, and wait until the worker is gone (the kill lands asynchronously)."""
    ray.kill(worker, no_restart=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            ray.get(worker.where.remote(), timeout=5)
        except ray.exceptions.RayActorError:
            return
        time.sleep(0.05)
    raise AssertionError("the killed worker still answers")


def test_labels_and_reembed_survive_a_killed_worker(pool, fault_free, caplog):
    caplog.set_level(logging.WARNING, logger="dist_al.runtime.sharded_pool")
    rows = np.arange(0, N_ROWS, 37)  # rows on every shard
    ids, labels = pool.rows_at(rows)
    _kill(pool.workers[1])
    assert np.array_equal(pool.labels_of(ids), labels)
    _kill(pool.workers[2])
    again_ids, again_labels = pool.rows_at(rows)
    assert np.array_equal(again_ids, ids) and np.array_equal(again_labels, labels)
    _kill(pool.workers[0])
    pool.reembed(build_model(pool.model, seed=7).state_dict())  # the same weights: the same ids
    assert _select(pool, "badge") == fault_free["badge"]
    recoveries = _recoveries(caplog)
    for shard, during in ((1, "reading labels by id"), (2, "reading labels by row"), (0, "loading new weights")):
        assert [m for m in recoveries if f"during {during}: shard {shard} lost" in m], (shard, during, recoveries)


def test_picked_rows_survive_a_killed_worker(pool, fault_free, caplog):
    caplog.set_level(logging.WARNING, logger="dist_al.runtime.sharded_pool")
    result = pool.select("badge", BUDGET, seed=7)
    rows = pool.picked_rows(result)
    assert rows.column("id").to_pylist() == fault_free["badge"]
    shard = result.picks[0][0]
    _kill(pool.workers[shard])
    assert pool.picked_rows(result).equals(rows)  # a new worker for that shard reads the same rows
    assert [m for m in _recoveries(caplog) if f"during reading the picked rows: shard {shard} lost" in m]


def test_worker_that_keeps_dying_is_a_clear_error(pool, fault_free, trip, monkeypatch):
    monkeypatch.setattr(pool_runtime, "MAX_RECOVERIES", 1)  # the default 3 costs two more worker starts
    trip.write_text("1 add_taken 1 always")  # every replacement of shard 1 dies the same way
    with pytest.raises(
        WorkerLostError, match=r"'badge': ShardWorkers kept dying \(lost now: shard 1\), gave up after 1 "
    ):
        _select(pool, "badge")
    assert len(_died(trip)) == 2
    trip.unlink()
    assert _select(pool, "badge") == fault_free["badge"]  # the next call heals the pool
