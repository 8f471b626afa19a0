"""What annotators see, without a server: task data from pool columns, media written once, links."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pytest

from dist_al.campaign.tasks import Linker, linked, row_places, shown_rows
from dist_al.config import validate
from dist_al.core.errors import UserError
from dist_al.data.pool import find_ids, rows_table
from dist_al.data.storage import write_table_atomic
from dist_al.inputs.contract import open_inputs

PNG = b"\x89PNG\r\n\x1a\n"


def pool_with(tmp_path, **columns):
    n = 6
    table = pa.table(
        {
            "id": pa.array(range(10, 10 + n), pa.int64()),
            "features": pa.FixedSizeListArray.from_arrays(pa.array(np.arange(2 * n, dtype=np.float32)), 2),
            **columns,
        }
    )
    write_table_atomic(str(tmp_path / "pool" / "part-0.parquet"), table, row_group_size=4)
    return str(tmp_path / "pool")


def labeling(pool: str, **keys):
    return validate({"pool": {"uri": pool}, "selection": {"budget": 1}, "labeling": keys})


def test_rows_show_their_columns_and_image_bytes_are_written_once(tmp_path):
    images = pa.array([PNG + bytes([i]) for i in range(6)], pa.binary())
    pool_uri = pool_with(tmp_path, photo=images, note=pa.array([f"n{i}" for i in range(6)]), when=pa.array(range(6)))
    cfg = labeling(pool_uri, image="photo", context=["note", "when"], features="table")
    pool, reader = open_inputs(cfg.pool, cfg.inputs)
    ids = [15, 11, 12]
    places = row_places(pool, ids, None)
    media = str(tmp_path / "work" / "media")
    shown = shown_rows(cfg.labeling, pool, reader, ids, places, media_prefix=media, storage_options={})
    assert [row["context"] for row in shown.data] == [
        {"note": "n5", "when": 5},
        {"note": "n1", "when": 1},
        {"note": "n2", "when": 2},
    ]
    assert [row["features"] for row in shown.data] == [
        {"0": 10.0, "1": 11.0},
        {"0": 2.0, "1": 3.0},
        {"0": 4.0, "1": 5.0},
    ]
    for row, i in zip(shown.data, ids):
        assert row["image"].startswith(media + "/") and row["image"].endswith(".png")
        assert open(row["image"], "rb").read() == PNG + bytes([i - 10])
    stamps = {p: os.stat(os.path.join(media, p)).st_mtime_ns for p in os.listdir(media)}
    again = shown_rows(cfg.labeling, pool, reader, ids, places, media_prefix=media, storage_options={})
    assert (
        again.data == shown.data
        and {p: os.stat(os.path.join(media, p)).st_mtime_ns for p in os.listdir(media)} == stamps
    )

    recorded_inputs = pa.table(
        {
            "photo": pa.array([PNG + b"recorded"] * 3, pa.binary()),
            "note": pa.array(["r"] * 3),
            "when": pa.array([0] * 3),
            "features": pa.array([[0.0, 0.0]] * 3, pa.list_(pa.float32(), 2)),
        }
    )
    recorded = rows_table(pool, ids, places, recorded_inputs)  # as the ShardWorkers record the rows they pick
    from_record = shown_rows(
        cfg.labeling, pool, reader, ids, places, recorded=recorded, media_prefix=media, storage_options={}
    )
    assert {open(r["image"], "rb").read() for r in from_record.data} == {PNG + b"recorded"}  # not read from the pool


def test_links_for_label_studio(tmp_path):
    uris = pa.array(
        ["https://cdn.example/a.png", "images/b.png", str(tmp_path / "elsewhere" / "c.png"), None, "d.png", "e.png"]
    )
    pool_uri = pool_with(tmp_path, uri=uris)
    cfg = labeling(pool_uri, image="uri", local_files_root=str(tmp_path / "pool"))
    pool, reader = open_inputs(cfg.pool, cfg.inputs)
    ids = [10, 11, 13]
    shown = shown_rows(
        cfg.labeling, pool, reader, ids, row_places(pool, ids, None), media_prefix="unused", storage_options={}
    )
    assert shown.data == [{"image": "https://cdn.example/a.png"}, {"image": f"{pool_uri}/images/b.png"}, {}]
    linker = Linker(cfg.labeling, {})
    assert linked(shown.data, ids, linker) == [
        {"image": "https://cdn.example/a.png"},
        {"image": "/data/local-files/?d=images/b.png"},
        {},
    ]
    assert linker.local_dirs == {f"{pool_uri}/images"}
    with pytest.raises(UserError, match=r"row id 12 shows .*c\.png, which is not under labeling\.local_files_root"):
        Linker(cfg.labeling, {})(str(tmp_path / "elsewhere" / "c.png"), 12)
    unrooted = labeling(pool_uri, image="uri").labeling
    with pytest.raises(UserError, match="set labeling.local_files_root to its LOCAL_FILES_DOCUMENT_ROOT"):
        Linker(unrooted, {})(f"{pool_uri}/images/b.png", 11)


def test_a_shown_column_the_pool_lacks_or_cannot_show_is_named(tmp_path):
    pool_uri = pool_with(tmp_path, score=pa.array([0.5] * 6))
    cfg = labeling(pool_uri)
    pool, reader = open_inputs(cfg.pool, cfg.inputs)
    places = find_ids(pool, np.asarray([10]))[1]
    with pytest.raises(
        UserError, match=r"config key labeling.context: pool .* has no column 'nope' \(columns: id, features, score\)"
    ):
        shown_rows(
            labeling(pool_uri, context=["nope"]).labeling,
            pool,
            reader,
            [10],
            places,
            media_prefix="",
            storage_options={},
        )
    with pytest.raises(UserError, match="pool column 'score' holds double; expected image URIs"):
        shown_rows(
            labeling(pool_uri, image="score").labeling, pool, reader, [10], places, media_prefix="", storage_options={}
        )
