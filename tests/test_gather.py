"""The labeled rows training reads: rows recorded at selection, else found by id, against the full scan.

One pool per id kind (integer, string): 3 files of 4 row groups, ids in no order, so neither row-group
statistics nor row numbers say where an id is. Its recorded rows come from a real ShardedPool on 2 workers.
"""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from reference import full_scan_labeled

from dist_al.campaign.train import gather_labeled
from dist_al.config import validate
from dist_al.data.synthetic import gaussian_mixture
from dist_al.data.writer import write_pool
from dist_al.inputs import vectors
from dist_al.runtime.selection import sharded_pool

pytestmark = [pytest.mark.cluster]

N, K, D, PICKS = 360, 3, 6, 12


def _ids(kind: str) -> np.ndarray:
    order = np.random.default_rng(4).permutation(N)
    return order * 7 + 3 if kind == "int" else np.asarray([f"row-{i:05d}" for i in order], dtype=object)


@pytest.fixture(scope="module", params=["int", "str"])
def pool(request, tmp_path_factory, ray_local):
    """(config, ids in pool order, labels, the recorded rows of a 2-worker selection of PICKS rows)."""
    uri = str(tmp_path_factory.mktemp(f"gather-{request.param}") / "pool")
    x, y = gaussian_mixture(N, K, D, seed=2)
    ids = _ids(request.param)
    write_pool(uri, ids, x.numpy(), y.numpy(), rows_per_file=120, rows_per_group=30)
    cfg = validate(
        {
            "pool": {"uri": uri, "label_column": "label"},
            "model": {"kwargs": {"in_dim": D, "n_classes": K, "hidden": 8}},
            "selection": {"strategy": "badge", "budget": PICKS},
            "cluster": {"workers": 2, "cpus_per_worker": 0.5},
        }
    )
    sharded = sharded_pool(cfg)
    try:
        result = sharded.select("badge", PICKS)
        recorded = sharded.picked_rows(result)
    finally:
        sharded.close()
    assert recorded.column("id").to_pylist() == result.table.column("id").to_pylist()  # rank order
    truth = dict(zip(ids.tolist(), y.tolist()))
    return cfg, ids, truth, recorded


def test_recorded_rows_name_where_each_pick_lives(pool):
    cfg, _, _, recorded = pool
    root = cfg.pool.uri
    assert len(set(recorded.column("file").to_pylist())) > 1  # picks from several files
    for row in recorded.to_pylist():
        table = pq.ParquetFile(f"{root}/{row['file']}").read_row_group(row["row_group"])
        assert table.column("id")[row["row"]].as_py() == row["id"]
        assert table.column("features")[row["row"]].as_py() == row["inputs"]["features"]  # as stored


def _labels(truth: dict, ids: np.ndarray, recorded: pa.Table, extra: int) -> dict:
    """Every recorded id plus `extra` ids that were never selected, in no particular order."""
    picked = recorded.column("id").to_pylist()
    others = [i for i in ids.tolist() if i not in set(picked)]
    chosen = picked + list(np.random.default_rng(9).choice(np.asarray(others, dtype=object), extra, replace=False))
    chosen.reverse()
    return {i: truth[i] for i in chosen}


def _same(got, want):
    """The gathered rows, decoded by the vectors reader, are the full scan's."""
    decoded = vectors(got.inputs.combine_chunks().to_batches()[0]).numpy()
    for a, b in zip((got.ids, decoded, got.y), want):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    assert len(got.where) == len(got.ids) and all(w.startswith("file ") for w in got.where)


def test_gather_equals_the_full_scan(pool, caplog):
    cfg, ids, truth, recorded = pool
    labels = _labels(truth, ids, recorded, extra=20)
    want = full_scan_labeled(cfg.pool, labels)
    with caplog.at_level(logging.INFO, logger="dist_al.campaign.train"):
        _same(gather_labeled(cfg.pool, labels, recorded), want)  # 12 recorded rows, 20 found by id
    assert [r.getMessage().split(":")[0] for r in caplog.records] == ["20 of 32 labeled ids have no recorded row"]
    _same(gather_labeled(cfg.pool, labels), want)  # nothing recorded: every id found by id
    only_recorded = {i: truth[i] for i in recorded.column("id").to_pylist()}
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="dist_al.campaign.train"):
        _same(gather_labeled(cfg.pool, only_recorded, recorded), full_scan_labeled(cfg.pool, only_recorded))
    assert not caplog.records  # no pass over the pool


def test_recorded_rows_the_pool_does_not_have_are_found_by_id(pool):
    """A recorded row whose file, row group or row this pool lacks (another pool's record) is not trusted."""
    cfg, ids, truth, recorded = pool
    files, groups, rows = (recorded.column(c).to_pylist() for c in ("file", "row_group", "row"))
    files[0], groups[1], rows[2] = "gone.parquet", 99, 10_000
    stale = (
        recorded.set_column(1, "file", pa.array(files))
        .set_column(2, "row_group", pa.array(groups))
        .set_column(3, "row", pa.array(rows))
    )
    labels = _labels(truth, ids, recorded, extra=3)
    _same(gather_labeled(cfg.pool, labels, stale), full_scan_labeled(cfg.pool, labels))


def _error(fn, *args) -> str:
    with pytest.raises(ValueError) as err:
        fn(*args)
    return str(err.value)


def test_ids_missing_from_the_pool_are_the_same_error(pool):
    cfg, ids, truth, recorded = pool
    labels = _labels(truth, ids, recorded, extra=2)
    missing = {10**9 + 1: 0, 10**9 + 2: 1} if isinstance(ids[0], (int, np.integer)) else {"nope-1": 0, "nope-2": 1}
    labels.update(missing)
    message = _error(gather_labeled, cfg.pool, labels, recorded)
    assert message == _error(full_scan_labeled, cfg.pool, labels)
    assert message.startswith(f"2 of {PICKS + 4} labeled id(s) are not in pool ")
    wrong_kind = {(str(i) if isinstance(i, int) else k): v for k, (i, v) in enumerate(labels.items())}
    assert _error(gather_labeled, cfg.pool, wrong_kind, recorded) == _error(full_scan_labeled, cfg.pool, wrong_kind)


def test_a_labeled_id_the_pool_holds_twice_is_the_same_error(tmp_path):
    x, y = gaussian_mixture(90, K, D, seed=1)
    ids = np.arange(90)
    ids[70] = ids[5]
    uri = str(tmp_path / "pool")
    write_pool(uri, ids, x.numpy(), y.numpy(), rows_per_file=40, rows_per_group=20)
    cfg = validate(
        {"pool": {"uri": uri}, "model": {"kwargs": {"in_dim": D, "n_classes": K}}, "selection": {"budget": 1}}
    )
    labels = {5: 1, 6: 0}
    message = _error(gather_labeled, cfg.pool, labels)
    assert message == _error(full_scan_labeled, cfg.pool, labels) and message.startswith("labeled id 5 appears more")
