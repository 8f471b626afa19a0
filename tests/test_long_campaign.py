"""A long campaign stays fast: ingests (one label record each, as a pull every few minutes for weeks makes) and
`dist-al round` ticks that each pull one new annotation; the objects each ingest, tick and
`status` reads stay bounded, through the label-record checkpoints.

The ticks run dist-al's whole tick (lock, round files, push check, pull, ingest, label record) against Label
Studio's answers held in memory (``LabelStudioInMemory``): the real server's side of a pull is covered by
tests/test_labeling.py, and its time would hide dist-al's. The tests assert what is read, never a time; they
print the times.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dist_al.campaign import labels
from dist_al.campaign.rounds import ingest, status_table
from dist_al.config import validate
from dist_al.data.synthetic import gaussian_mixture
from dist_al.data.writer import write_pool

# Steps per soak: 300 in the suite (six label-record checkpoints, three blocks of 100 to compare), 1,000 for the
# figures in docs/BENCHMARKS.md (DIST_AL_SOAK_STEPS=1000).
INGESTS = int(os.environ.get("DIST_AL_SOAK_STEPS", "300"))
assert INGESTS % 100 == 0 and INGESTS >= 100, "DIST_AL_SOAK_STEPS: a multiple of 100"


@pytest.fixture
def reads(monkeypatch) -> dict:
    """{"n": the label-record objects read since the test last set it to 0}."""
    count = {"n": 0}
    real_read = labels.LabelRecords._read

    def counted(self, name):
        count["n"] += 1
        return real_read(self, name)

    monkeypatch.setattr(labels.LabelRecords, "_read", counted)
    return count


def soak(cfg, reads: dict, prepare, step) -> tuple[list, list]:
    """INGESTS steps, each recording one new label (``prepare(k)`` untimed, then ``step(k)`` timed), a `status`
    after every 100; asserts that each reads a bounded number of objects. Returns (wall seconds, this process's
    CPU seconds, objects read) per step and per status: the CPU time is what other jobs on the machine disturb
    least."""
    per_step, per_status = [], []

    def timed(fn, *args) -> tuple:
        reads["n"] = 0
        t0, c0 = time.perf_counter(), time.process_time()
        answer = fn(*args)
        return (time.perf_counter() - t0, time.process_time() - c0, reads["n"]), answer

    for k in range(INGESTS):
        prepare(k)
        per_step.append(timed(step, k)[0])
        if (k + 1) % 100 == 0:
            figures, table = timed(status_table, cfg)
            assert table.startswith(f"workdir {cfg.workdir}: {k + 1} labels recorded")
            per_status.append(figures)
    bound = labels.CHECKPOINT_EVERY + 2  # the pointer, the checkpoint, the records after it
    assert max(n for *_, n in per_step) <= bound and max(n for *_, n in per_status) <= bound
    return per_step, per_status


def print_blocks(what: str, per_step: list, per_status: list) -> None:
    for block in range(0, INGESTS, 100):
        wall, cpu, objects = zip(*per_step[block : block + 100])
        status_wall, status_cpu, status_objects = per_status[block // 100]
        print(
            f"OBSERVED {what} {block + 1:4d}-{block + 100:4d}: median {np.median(wall) * 1e3:6.1f} ms "
            f"(CPU {np.median(cpu) * 1e3:5.1f} ms), objects read max {max(objects):2d}; status after them: "
            f"{status_wall * 1e3:6.1f} ms (CPU {status_cpu * 1e3:5.1f} ms), {status_objects} objects"
        )


@pytest.mark.slow
def test_ingests_and_status_read_a_bounded_number_of_objects(tmp_path, reads):
    feats, truth = gaussian_mixture(INGESTS, 3, 4, seed=0)
    write_pool(str(tmp_path / "pool"), np.arange(INGESTS), feats.numpy(), truth.numpy(), rows_per_group=250)
    cfg = validate(
        {
            "pool": {"uri": str(tmp_path / "pool")},
            "model": {"kwargs": {"in_dim": 4, "n_classes": 3, "hidden": 4}},
            "selection": {"budget": 10},
            "workdir": str(tmp_path / "work"),
        }
    )
    inbox = tmp_path / "inbox.csv"

    def ingest_one(k: int) -> None:
        assert ingest(cfg, str(inbox)).startswith("1 label accepted")

    per_ingest, per_status = soak(
        cfg, reads, lambda k: inbox.write_text(f"id,label\n{k},{int(truth[k])}\n"), ingest_one
    )
    records = [n for n in os.listdir(tmp_path / "work" / "labels") if n.endswith(".parquet")]
    assert len(records) == INGESTS  # every record kept
    reads["n"] = 0
    assert labels.load_label_records(str(tmp_path / "work" / "labels")) == {k: int(truth[k]) for k in range(INGESTS)}
    load_reads = reads["n"]
    t0 = time.perf_counter()  # what every load read before checkpoints: each record ever written
    for name in sorted(records):
        pq.read_table(tmp_path / "work" / "labels" / name)
    every_record_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    labels.load_label_records(str(tmp_path / "work" / "labels"))
    print(
        f"OBSERVED load average {open('/proc/loadavg').read().split()[0]}; after {INGESTS} ingests a load reads "
        f"{load_reads} objects in {(time.perf_counter() - t0) * 1e3:.1f} ms; reading every record instead: "
        f"{len(records)} objects in {every_record_s * 1e3:.1f} ms. Per block of 100 ingests:"
    )
    print_blocks("ingests", per_ingest, per_status)


class LabelStudioInMemory:
    """Label Studio's answers to the client calls a tick makes (``dist_al.campaign.labelstudio.LabelStudio``), from
    memory: one project, the tasks pushed to it, and the annotations the test adds. What the soak measures is
    dist-al's side of a tick (the lock, the round's files, the pull's ingest and its label record), not HTTP."""

    shown = "http://label-studio.test"

    def __init__(self):
        self.project_: dict | None = None
        self.stored: list[dict] = []

    def check(self) -> None:
        pass

    def project(self, project: int) -> dict:
        assert self.project_ is not None and project == self.project_["id"]
        return self.project_

    def projects_titled(self, title: str) -> list[dict]:
        return [self.project_] if self.project_ is not None and self.project_["title"] == title else []

    def create_project(self, title: str, label_config: str) -> dict:
        self.project_ = {"id": 1, "title": title, "label_config": label_config}
        return self.project_

    def ensure_local_storage(self, project: int, directories: set[str]) -> None:
        pass

    def import_tasks(self, project: int, tasks: list[dict]) -> list[int]:
        first = len(self.stored) + 1
        self.stored += [{**t, "id": first + k, "annotations": [], "predictions": []} for k, t in enumerate(tasks)]
        return [first + k for k in range(len(tasks))]

    def tasks(self, project: int, first: int, last: int) -> list[dict]:
        return [t for t in self.stored if first <= t["id"] <= last]

    def annotate(self, k: int, choice: str) -> None:
        result = [{"from_name": "label", "to_name": "ref", "type": "choices", "value": {"choices": [choice]}}]
        self.stored[k]["annotations"].append({"id": k, "result": result, "was_cancelled": False})


@pytest.mark.slow
def test_ticks_each_pulling_a_new_annotation_stay_flat(tmp_path, monkeypatch, reads):
    """INGESTS `dist-al round` ticks on one round of INGESTS + 1 tasks, an annotator finishing one task between ticks:
    every tick pulls and records it (one label record per tick), every 100th is followed by `status`. The objects
    a tick's and a status's label load reads stay bounded; the time per tick and per status is printed."""
    from dist_al.campaign import labelstudio, rounds
    from dist_al.campaign.workdir import open_workdir, workdir_lock
    from dist_al.data.pool import find_ids, read_rows, rows_table
    from dist_al.data.storage import write_table_atomic
    from dist_al.inputs import open_inputs

    rows = INGESTS + 1  # one task stays open: the round never trains
    feats, truth = gaussian_mixture(rows, 3, 4, seed=0)
    write_pool(str(tmp_path / "pool"), np.arange(rows), feats.numpy(), truth.numpy(), rows_per_group=250)
    classes = ["a", "b", "c"]
    cfg = validate(
        {
            "pool": {"uri": str(tmp_path / "pool")},
            "model": {"kwargs": {"in_dim": 4, "n_classes": 3, "hidden": 4}},
            "selection": {"budget": rows},
            "labeling": {
                "backend": "label-studio",
                "url": LabelStudioInMemory.shown,
                "project": "soak",
                "classes": classes,
            },
            "workdir": str(tmp_path / "work"),
        }
    )
    server = LabelStudioInMemory()
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "0" * 40)
    monkeypatch.setattr(labelstudio.LabelStudio, "from_config", classmethod(lambda cls, lab: server))
    wd = open_workdir(cfg)  # round 1 as selection leaves it: every row selected
    pool, reader = open_inputs(cfg.pool, cfg.inputs)
    ids = list(range(rows))
    found, places = find_ids(pool, np.asarray(ids))
    assert found.tolist() == ids
    write_table_atomic(
        wd.round_path(1, rounds.SELECTED_ROWS), rows_table(pool, ids, places, read_rows(pool, places, reader.columns))
    )
    selection = {"id": np.arange(rows), "rank": np.arange(1, rows + 1)}
    write_table_atomic(wd.round_path(1, "selection.parquet"), pa.table(selection))
    wd.set_state(1, "SELECTED", strategy="random", budget=rows, checkpoint=None, selected_at=time.time())

    assert rounds.advance(cfg).startswith(f"round 1: waiting for labels, 0/{rows} received")  # the push

    def tick(k: int) -> None:
        with workdir_lock(cfg.workdir, cfg.pool.storage_options, "round"):  # as `dist-al round` runs it
            line = rounds.advance(cfg)
        assert line.startswith(f"round 1: waiting for labels, {k + 1}/{rows} received"), line
        assert line.endswith("; 1 new label accepted"), line

    per_tick, per_status = soak(
        cfg, reads, lambda k: server.annotate(k, classes[int(truth[server.stored[k]["data"]["id"]])]), tick
    )
    assert len(server.stored) == rows  # pushed once
    records = [n for n in os.listdir(tmp_path / "work" / "labels") if n.endswith(".parquet")]
    assert len(records) == INGESTS
    assert labels.load_label_records(str(tmp_path / "work" / "labels")) == {k: int(truth[k]) for k in range(INGESTS)}
    print(f"OBSERVED load average {open('/proc/loadavg').read().split()[0]}; {INGESTS} ticks. Per block of 100:")
    print_blocks("ticks", per_tick, per_status)
