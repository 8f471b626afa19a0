"""A long campaign stays fast: 1,000 ingests (one label record each, as a pull every few minutes for weeks
makes) and the objects each ingest and each `status` reads stay bounded, through the label-record checkpoints.

The server is not needed for this: a pull from Label Studio ingests through the same records
(``dist_al.campaign.labels.LabelRecords``). The test asserts what is read, never a time; it prints the times.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

from dist_al.campaign import labels
from dist_al.campaign.rounds import ingest, status_table
from dist_al.config import validate
from dist_al.data.synthetic import gaussian_mixture
from dist_al.data.writer import write_pool

INGESTS = 1000


@pytest.mark.slow
def test_a_thousand_ingests_and_status_read_a_bounded_number_of_objects(tmp_path, monkeypatch):
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
    reads = {"n": 0}
    real_read = labels.LabelRecords._read

    def counted(self, name):
        reads["n"] += 1
        return real_read(self, name)

    monkeypatch.setattr(labels.LabelRecords, "_read", counted)
    per_ingest, per_status = [], []
    for k in range(INGESTS):
        path = tmp_path / "inbox.csv"
        path.write_text(f"id,label\n{k},{int(truth[k])}\n")
        reads["n"] = 0
        t0 = time.perf_counter()
        assert ingest(cfg, str(path)).startswith("1 label accepted")
        per_ingest.append((time.perf_counter() - t0, reads["n"]))
        if (k + 1) % 100 == 0:
            reads["n"] = 0
            t0 = time.perf_counter()
            assert status_table(cfg).startswith(f"workdir {cfg.workdir}: {k + 1} labels recorded")
            per_status.append((time.perf_counter() - t0, reads["n"]))

    bound = labels.CHECKPOINT_EVERY + 2  # the pointer, the checkpoint, the records after it
    assert max(n for _, n in per_ingest) <= bound and max(n for _, n in per_status) <= bound
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
    for block in range(0, INGESTS, 100):
        times = [t for t, _ in per_ingest[block : block + 100]]
        objects = [n for _, n in per_ingest[block : block + 100]]
        status_s, status_objects = per_status[block // 100]
        print(
            f"OBSERVED ingests {block + 1:4d}-{block + 100:4d}: median {np.median(times) * 1e3:6.1f} ms, "
            f"objects read max {max(objects):2d}; status after them: {status_s * 1e3:6.1f} ms, {status_objects} objects"
        )
