"""Parquet pool tests on real files: local disk, fsspec memory://, and a real S3 API (moto server).

Every test taking ``store`` runs once per backend, like fsspec's abstract test
suites: the same code path (fsspec + pyarrow) must behave the same everywhere.
"""

from __future__ import annotations

import io
import pickle
import threading
import time
import uuid

import fsspec
import fsspec.implementations.local
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from s3server import s3_filesystem

from dist_al.config import InputsConfig, PoolConfig
from dist_al.data.pool import (
    Pool,
    PoolError,
    Shard,
    check_unique_ids,
    plan_shards,
    read_shard,
)
from dist_al.data.writer import write_pool
from dist_al.inputs import InputError, load_reader, open_inputs
from dist_al.inputs.pipeline import decoded_batches


class Store:
    """One backend: makes pool URIs and puts raw bytes / tables there."""

    def __init__(self, kind: str, base: str, options: dict, fs):
        self.kind, self.base, self.options, self.fs = kind, base.rstrip("/"), options, fs

    def uri(self, name: str) -> str:
        return f"{self.base}/{name}"

    def spec(self, name: str, **kw) -> PoolConfig:
        return PoolConfig(uri=self.uri(name), storage_options=self.options, **kw)

    def put_bytes(self, name: str, data: bytes) -> None:
        _, path = fsspec.core.url_to_fs(self.uri(name), **self.options)
        if self.kind == "local":
            self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        self.fs.pipe_file(path, data)

    def put_table(self, name: str, table: pa.Table, row_group_size: int | None = None) -> None:
        buf = io.BytesIO()
        pq.write_table(table, buf, row_group_size=row_group_size)
        self.put_bytes(name, buf.getvalue())

    def remove(self, name: str) -> None:
        _, path = fsspec.core.url_to_fs(self.uri(name), **self.options)
        self.fs.rm_file(path)

    def write(self, name: str, ids, feats, labels=None, **kw) -> PoolConfig:
        write_pool(self.uri(name), ids, feats, labels, storage_options=self.options, **kw)
        return self.spec(name, label_column="label" if labels is not None else None)


@pytest.fixture(params=["local", "memory", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        yield Store("local", str(tmp_path), {}, fsspec.filesystem("file"))
    elif request.param == "memory":
        base = f"memory://pooltest-{uuid.uuid4().hex}"
        fs = fsspec.filesystem("memory")
        yield Store("memory", base, {}, fs)
        if fs.exists(base):
            fs.rm(base, recursive=True)
    else:
        options = request.getfixturevalue("s3_storage_options")
        bucket = request.getfixturevalue("s3_bucket")
        yield Store("s3", f"s3://{bucket}", options, s3_filesystem(options))


def make_data(n=230, d=4, seed=0, string_ids=False):
    rng = np.random.default_rng(seed)
    ids = np.array([f"row-{i:05d}" for i in range(n)], dtype=object) if string_ids else np.arange(1000, 1000 + n)
    feats = rng.standard_normal((n, d)).astype(np.float32)
    labels = rng.integers(0, 5, n)
    return ids, feats, labels


def open_vectors(spec: PoolConfig, **kwargs) -> Pool:
    """The pool with the default reader's footer checks (``dist_al.inputs:vectors`` on its ``features`` column)."""
    return open_inputs(spec, InputsConfig(kwargs=kwargs))[0]


def read_all(pool: Pool, n_shards: int = 1, columns=("id", "features"), batch_rows=64, column="features"):
    """ids, features (decoded by the vectors reader, as the workers decode them) and labels, in pool order."""
    reader = load_reader(InputsConfig(kwargs={"column": column}), pool.spec, pool.schema)
    out: dict[str, list] = {}
    for shard in plan_shards(pool, n_shards):
        for b in decoded_batches(pool, shard, reader, batch_rows=batch_rows, threads=2, labels="label" in columns):
            batch = {"id": ("ids", b.ids), "features": ("features", b.x.numpy()), "label": ("labels", b.labels)}
            for name in columns:
                key, value = batch[name]
                out.setdefault(key, []).append(value)
    return {k: np.concatenate(v) for k, v in out.items()}


def feature_table(ids, rows, typ=None) -> pa.Table:
    return pa.table({"id": pa.array(ids, pa.int64()), "features": pa.array(rows, typ or pa.list_(pa.float32()))})


# ----------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("feature_type", ["binary", "fixed", "list"])
@pytest.mark.parametrize("string_ids", [False, True])
def test_round_trip(store, feature_type, string_ids):
    ids, feats, labels = make_data(n=120, string_ids=string_ids)
    spec = store.write("pool", ids, feats, labels, rows_per_file=50, rows_per_group=16, feature_type=feature_type)
    pool = open_vectors(spec)
    assert len(pool.files) == 3 and pool.num_rows == 120
    assert [n for _, _, n in pool.row_groups] == [16, 16, 16, 2] * 2 + [16, 4]
    got = read_all(pool, 2, ("id", "features", "label"), batch_rows=10)
    np.testing.assert_array_equal(got["ids"], ids)
    np.testing.assert_array_equal(got["features"], feats)
    np.testing.assert_array_equal(got["labels"], labels)
    assert got["features"].dtype == np.float32 and got["labels"].dtype == np.int64
    assert got["ids"].dtype == (object if string_ids else np.int64)


def test_batches_are_contiguous_float32_and_bounded(store):
    ids, feats, _ = make_data(n=60, d=3)
    pool = open_vectors(store.write("pool", ids, feats, rows_per_file=60, rows_per_group=25, feature_type="list"))
    reader = load_reader(InputsConfig(), pool.spec, pool.schema)
    batches = list(decoded_batches(pool, plan_shards(pool, 1)[0], reader, batch_rows=10, threads=2))
    assert [len(b.ids) for b in batches] == [10, 10, 5, 10, 10, 5, 10]  # never spans a row group
    for b in batches:
        assert b.x.dtype == torch.float32 and b.x.is_contiguous() and b.x.shape == (len(b.ids), 3)


def test_single_file_uri_and_ignored_files(store):
    ids, feats, _ = make_data(n=40)
    store.write("pool", ids, feats, rows_per_file=20, rows_per_group=8)
    store.put_bytes("pool/_SUCCESS", b"")
    store.put_bytes("pool/.part-00009.parquet.tmp-123", b"half written")
    store.put_bytes("pool/_tmp/part-9.parquet", b"garbage")
    pool = open_vectors(store.spec("pool"))
    assert [p.rsplit("/", 1)[1] for p in pool.files] == ["part-00000.parquet", "part-00001.parquet"]
    single = open_vectors(store.spec("pool/part-00001.parquet"))
    assert single.num_rows == 20
    np.testing.assert_array_equal(read_all(single)["ids"], ids[20:])


@pytest.mark.parametrize(
    "id_type, feature_type, label_type",
    [
        (pa.int32(), pa.large_list(pa.float64()), pa.int8()),
        (pa.large_string(), pa.list_(pa.float16()), pa.uint16()),
        (pa.string(), pa.list_(pa.float64(), 3), pa.int32()),
    ],
)
def test_accepted_types(store, id_type, feature_type, label_type):
    ids = [3, 1, 2] if pa.types.is_integer(id_type) else ["c", "a", "b"]
    rows = [[0.5, 1.0, 2.0], [3.0, 4.0, -1.0], [0.25, 8.0, 16.0]]
    table = pa.table(
        {
            "id": pa.array(ids, id_type),
            "features": pa.array(rows, feature_type),
            "label": pa.array([1, 0, 2], label_type),
        }
    )
    store.put_table("pool/a.parquet", table, row_group_size=2)
    pool = open_vectors(store.spec("pool", label_column="label"))
    assert pool.schema.field("features").type == feature_type
    got = read_all(pool, 2, ("id", "features", "label"))
    assert list(got["ids"]) == ids
    np.testing.assert_array_equal(got["features"], np.array(rows, np.float32))
    np.testing.assert_array_equal(got["labels"], [1, 0, 2])


def test_file_url_and_no_temp_files_left(tmp_path):
    ids, feats, _ = make_data(n=30)
    uris = write_pool(f"file://{tmp_path}/pool", ids, feats, rows_per_file=10, rows_per_group=4)
    assert sorted(p.name for p in (tmp_path / "pool").iterdir()) == [f"part-0000{i}.parquet" for i in range(3)]
    assert uris == [f"file://{tmp_path}/pool/part-0000{i}.parquet" for i in range(3)]
    pool = open_vectors(PoolConfig(uri=f"file://{tmp_path}/pool"))
    np.testing.assert_array_equal(read_all(pool, 3)["features"], feats)


def test_write_refuses_non_empty_target(store):
    ids, feats, _ = make_data(n=30)
    store.write("pool", ids, feats, rows_per_file=10)
    with pytest.raises(PoolError, match="not empty"):
        store.write("pool", ids[:10], feats[:10])
    store.write("pool", ids[:10], feats[:10], overwrite=True)
    assert open_vectors(store.spec("pool")).num_rows == 10


def test_pool_pickles(store):
    ids, feats, _ = make_data(n=30)
    pool = open_vectors(store.write("pool", ids, feats, rows_per_file=10, rows_per_group=4))
    clone = pickle.loads(pickle.dumps(pool))
    assert clone.row_groups == pool.row_groups and clone.files == pool.files
    np.testing.assert_array_equal(read_all(clone, 2)["features"], feats)


# ----------------------------------------------------------------------------- shard plans


def check_plan(pool: Pool, shards: list[Shard], w: int) -> None:
    assert len(shards) == min(w, len(pool.row_groups))
    assert [s.index for s in shards] == list(range(len(shards)))
    assert [rg for s in shards for rg in s.row_groups] == list(pool.row_groups)  # contiguous, in order
    first = 0
    for s in shards:
        assert s.row_groups, "empty shard"
        assert s.first_row == first and s.num_rows == sum(n for _, _, n in s.row_groups)
        first += s.num_rows
    assert first == pool.num_rows


def test_shard_plan_stable_and_balanced(store):
    ids, feats, _ = make_data(n=230)
    spec = store.write("pool", ids, feats, rows_per_file=50, rows_per_group=7)
    pool = open_vectors(spec)
    assert len(pool.row_groups) == 4 * 8 + 5  # 7 groups of 7 + 1 of 1 per full file; 4x7 + 2 in the last
    biggest = max(n for _, _, n in pool.row_groups)
    again = open_vectors(spec)
    for w in range(1, 6):
        shards = plan_shards(pool, w)
        check_plan(pool, shards, w)
        assert shards == plan_shards(again, w) == plan_shards(pool, w)
        for s in shards:
            assert abs(s.num_rows - pool.num_rows / w) <= biggest, (w, [x.num_rows for x in shards])


def test_shard_plan_exact_and_fewer_row_groups_than_shards(store):
    ids, feats, _ = make_data(n=100)
    pool = open_vectors(store.write("pool", ids, feats, rows_per_file=100, rows_per_group=10))
    assert [s.num_rows for s in plan_shards(pool, 5)] == [20] * 5
    assert [s.num_rows for s in plan_shards(pool, 4)] == [20, 30, 20, 30]  # cuts nearest 25, 50, 75; ties go early
    many = plan_shards(pool, 25)
    check_plan(pool, many, 25)
    assert len(many) == 10 and all(len(s.row_groups) == 1 for s in many)
    with pytest.raises(ValueError):
        plan_shards(pool, 0)


def test_shards_in_plan_order_equal_whole_pool(store):
    ids, feats, labels = make_data(n=120)
    pool = open_vectors(store.write("pool", ids, feats, labels, rows_per_file=40, rows_per_group=9))
    assert len(pool.row_groups) == 15
    for w in range(1, 6):
        got = read_all(pool, w, ("id", "features", "label"), batch_rows=5)
        np.testing.assert_array_equal(got["ids"], ids)
        np.testing.assert_array_equal(got["features"], feats)
        np.testing.assert_array_equal(got["labels"], labels)


def test_open_and_plan_read_no_row_data(store, monkeypatch):
    ids, feats, _ = make_data(n=60)
    spec = store.write("pool", ids, feats, rows_per_file=20, rows_per_group=5)

    def forbidden(*a, **k):
        raise AssertionError("row data read during open_pool/plan_shards")

    for name in ("read_row_group", "read_row_groups", "read", "iter_batches"):
        monkeypatch.setattr(pq.ParquetFile, name, forbidden)
    pool = open_vectors(spec)
    assert pool.num_rows == 60 and len(plan_shards(pool, 3)) == 3


# ----------------------------------------------------------------------------- projection


def test_column_projection(store):
    ids, feats, labels = make_data(n=40)
    table = pa.table(
        {
            "id": pa.array(ids),
            "features": pa.FixedSizeListArray.from_arrays(pa.array(feats.ravel()), 4),
            "label": pa.array(labels.tolist()[:-1] + [None], pa.int64()),  # bad, but only if read
            "extra": pa.array(["x"] * 40),
        }
    )
    store.put_table("pool/a.parquet", table, row_group_size=16)
    pool = open_vectors(store.spec("pool", label_column="label"))
    shard = plan_shards(pool, 1)[0]
    assert [sorted(b) for b in read_shard(pool, shard, ("id",))] == [["ids", "row"]] * 3
    batches = list(read_shard(pool, shard, (), inputs=("features",)))
    assert [sorted(b) for b in batches] == [["inputs", "row"]] * 3 and [b["row"] for b in batches] == [0, 16, 32]
    assert batches[0]["inputs"].schema.names == ["features"]
    assert sorted(next(read_shard(pool, shard))) == ["ids", "row"]
    # the label column is broken (a null); it is only noticed when labels are read
    np.testing.assert_array_equal(read_all(pool, 1, ("id",))["ids"], ids)
    with pytest.raises(PoolError, match=r"null label for id 1039"):
        read_all(pool, 1, ("id", "label"))
    with pytest.raises(PoolError, match="unknown column"):
        read_shard(pool, shard, ("extra",))
    no_labels = open_vectors(store.spec("pool"))
    with pytest.raises(PoolError, match="label_column is not set"):
        read_shard(no_labels, shard, ("id", "label"))


def test_custom_column_names(store):
    ids, feats, labels = make_data(n=20)
    write_pool(
        store.uri("pool"),
        ids,
        feats,
        labels,
        storage_options=store.options,
        id_column="uid",
        feature_column="emb",
        label_column="y",
    )
    pool = open_vectors(
        PoolConfig(uri=store.uri("pool"), id_column="uid", label_column="y", storage_options=store.options),
        column="emb",
    )
    got = read_all(pool, 2, ("label", "id", "features"), column="emb")
    np.testing.assert_array_equal(got["labels"], labels)
    np.testing.assert_array_equal(got["ids"], ids)
    np.testing.assert_array_equal(got["features"], feats)


# ----------------------------------------------------------------------------- schema errors


def one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_missing_column_names_file_column_and_existing(store):
    ids, feats, _ = make_data(n=20)
    store.write("pool", ids, feats, rows_per_file=10)
    store.put_table("pool/part-00002.parquet", pa.table({"id": [1], "feats": pa.array([[1.0] * 4])}))
    with pytest.raises(PoolError) as exc:
        open_vectors(store.spec("pool"))
    msg = one_line(exc)
    assert "part-00002.parquet" in msg and "'features'" in msg and "columns: id, feats" in msg
    with pytest.raises(PoolError, match=r"part-00000.parquet has no column 'label' \(columns: id, features\)"):
        open_vectors(store.spec("pool", label_column="label"))


@pytest.mark.parametrize(
    "columns, match",
    [
        ({"id": pa.array([1.5]), "features": pa.array([[1.0]])}, r"id column 'id' has type double"),
        ({"id": pa.array([1], pa.int16()), "features": pa.array([[1.0]])}, r"id column 'id' has type int16"),
        ({"id": pa.array([1]), "features": pa.array([1.0])}, r"column 'features': has type double; expected a list"),
        ({"id": pa.array([1]), "features": pa.array([["a"]])}, r"column 'features': holds lists of string"),
        ({"id": pa.array([1]), "features": pa.array([[1]])}, r"column 'features': holds lists of int64"),
        ({"id": [1], "features": pa.array([[1.0]]), "label": [0.5]}, r"label column 'label' has type double"),
        ({"id": [1], "features": pa.array([[1.0]]), "label": ["cat"]}, r"label column 'label' has type string"),
    ],
)
def test_wrong_types(store, columns, match):
    store.put_table("pool/bad.parquet", pa.table(columns))
    with pytest.raises((PoolError, InputError), match=match) as exc:
        open_vectors(store.spec("pool", label_column="label" if "label" in columns else None))
    assert "bad.parquet" in one_line(exc)


def test_files_must_agree_on_id_kind_but_not_width(store):
    store.put_table("pool/a.parquet", feature_table([1], [[1.0, 2.0]]))
    store.put_table("pool/b.parquet", feature_table([2], [[3.0, 4.0]], pa.large_list(pa.float64())))
    fixed = pa.array([[5.0, 6.0]], pa.list_(pa.float32(), 2))
    store.put_table("pool/c.parquet", pa.table({"id": pa.array([3], pa.int32()), "features": fixed}))
    pool = open_vectors(store.spec("pool"))
    np.testing.assert_array_equal(read_all(pool)["features"], [[1, 2], [3, 4], [5, 6]])
    store.put_table("pool/d.parquet", pa.table({"id": ["x"], "features": pa.array([[1.0, 2.0]])}))
    match = r"d.parquet has string ids \(string\) but file \S*a.parquet has integer ids \(int64\)"
    with pytest.raises(PoolError, match=match):
        open_vectors(store.spec("pool"))


def test_empty_pool(store):
    store.put_table("pool/a.parquet", feature_table([], []))
    store.put_table("pool/b.parquet", feature_table([], []))
    with pytest.raises(PoolError, match=r"empty pool \(0 rows in 2 file\(s\)\)"):
        open_vectors(store.spec("pool"))
    store.put_bytes("only_hidden/_SUCCESS", b"")
    with pytest.raises(PoolError, match="empty pool"):
        open_vectors(store.spec("only_hidden"))


def test_empty_files_and_row_groups_are_skipped(store):
    store.put_table("pool/a.parquet", feature_table([], []))
    store.put_table("pool/b.parquet", feature_table([1, 2, 3], [[1.0], [2.0], [3.0]]), row_group_size=2)
    pool = open_vectors(store.spec("pool"))
    assert pool.row_groups == ((1, 0, 2), (1, 1, 1))
    np.testing.assert_array_equal(read_all(pool, 3)["ids"], [1, 2, 3])


def test_non_parquet_file_in_directory(store):
    ids, feats, _ = make_data(n=20)
    store.write("pool", ids, feats, rows_per_file=10)
    store.put_bytes("pool/notes.txt", b"these are not the rows you are looking for")
    with pytest.raises(PoolError, match=r"file \S*pool/notes.txt is not Parquet or is truncated") as exc:
        open_vectors(store.spec("pool"))
    one_line(exc)


def test_truncated_file(store):
    ids, feats, _ = make_data(n=20)
    store.write("pool", ids, feats, rows_per_file=10)
    buf = io.BytesIO()
    pq.write_table(feature_table([1, 2], [[1.0] * 4, [2.0] * 4]), buf)
    store.put_bytes("pool/part-00001.parquet", buf.getvalue()[:-30])
    with pytest.raises(PoolError, match=r"file \S*pool/part-00001.parquet is not Parquet or is truncated"):
        open_vectors(store.spec("pool"))
    store.put_bytes("pool/part-00001.parquet", b"")
    with pytest.raises(PoolError, match=r"part-00001.parquet is not Parquet or is truncated"):
        open_vectors(store.spec("pool"))


def test_missing_path(store):
    with pytest.raises(PoolError, match=r": no such file, directory, bucket or prefix$") as exc:
        open_vectors(store.spec("does/not/exist"))
    assert store.uri("does/not/exist") in one_line(exc)


def test_missing_bucket(s3_storage_options):
    uri = f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/pool"
    with pytest.raises(PoolError, match=rf"^pool {uri}: no such file, directory, bucket or prefix$"):
        open_vectors(PoolConfig(uri=uri, storage_options=s3_storage_options))


class _RefusingFileSystem(fsspec.implementations.local.LocalFileSystem):
    """A local filesystem whose metadata calls fail like a store that refuses access."""

    protocol = ("refusing",)
    error: type = PermissionError

    def info(self, path, **kwargs):
        raise self.error("Access Denied")


@pytest.mark.parametrize("error, match", [(PermissionError, "permission denied"), (TimeoutError, "cannot be read")])
def test_unreadable_uri(tmp_path, monkeypatch, error, match):
    monkeypatch.setattr(_RefusingFileSystem, "error", error)
    fsspec.register_implementation("refusing", _RefusingFileSystem, clobber=True)
    with pytest.raises(PoolError, match=rf"^pool refusing://{tmp_path}: {match}"):
        open_vectors(PoolConfig(uri=f"refusing://{tmp_path}", storage_options={"skip_instance_cache": True}))


def test_unknown_protocol():
    with pytest.raises(PoolError, match=r"pool nosuchproto://x: cannot open filesystem"):
        open_vectors(PoolConfig(uri="nosuchproto://x"))


# ----------------------------------------------------------------------------- row content errors


def test_ragged_features(store):
    rows = [[1.0, 2.0, 3.0]] * 5
    store.put_table("pool/a.parquet", feature_table(range(10, 15), rows))
    ragged = rows[:3] + [[1.0, 2.0]] + rows[:1]
    store.put_table("pool/b.parquet", feature_table(range(20, 25), ragged), row_group_size=2)
    pool = open_vectors(store.spec("pool"))
    with pytest.raises(InputError) as exc:
        read_all(pool, 2)
    msg = one_line(exc)
    assert "id 23 (file " in msg
    assert "b.parquet, row group 1, row 1), column 'features': vector of length 2, expected D=3" in msg


def test_fixed_size_lists_of_another_dim_are_refused_from_the_footer(store):
    store.put_table("pool/a.parquet", feature_table([1], [[1.0, 2.0]], pa.list_(pa.float32(), 2)))
    store.put_table("pool/b.parquet", feature_table([2], [[1.0, 2.0, 3.0]], pa.list_(pa.float32(), 3)))
    match = r"b.parquet column 'features': has vectors of length 3, inputs.kwargs.dim is 2$"
    with pytest.raises(InputError, match=match):
        open_vectors(store.spec("pool"), dim=2)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_features(store, bad):
    ids, feats, _ = make_data(n=30)
    feats[17, 2] = bad
    pool = open_vectors(store.write("pool", ids, feats, rows_per_file=10, rows_per_group=5))
    match = r"id 1017 \(file \S+part-00001.parquet, row group 1, row 2\), column 'features': NaN or inf value$"
    with pytest.raises(InputError, match=match):
        read_all(pool, 2)


def test_null_features(store):
    store.put_table("pool/a.parquet", feature_table([7, 8, 9], [[1.0], None, [3.0]]))
    with pytest.raises(InputError, match=r"id 8 \(file \S+a.parquet, row group 0, row 1\), column 'features': null"):
        read_all(open_vectors(store.spec("pool")))
    store.put_table("pool/a.parquet", feature_table([7, 8, 9], [[1.0, 1.0], [2.0, 2.0], [3.0, None]]))
    with pytest.raises(InputError, match=r"id 9 .*, column 'features': null value inside"):
        read_all(open_vectors(store.spec("pool")))


# ----------------------------------------------------------------------------- ids


def test_duplicate_ids(store):
    ids, feats, _ = make_data(n=40)
    ids[33] = ids[5]
    pool = open_vectors(store.write("pool", ids, feats, rows_per_file=10, rows_per_group=5))
    per_shard = [np.concatenate([b["ids"] for b in read_shard(pool, s, ("id",))]) for s in plan_shards(pool, 4)]
    with pytest.raises(PoolError, match=r"id 1005 appears more than once \(in id array\(s\) \[0, 3\]\)"):
        check_unique_ids(per_shard)


def test_check_unique_ids_cases():
    check_unique_ids([np.arange(5), np.arange(5, 9), np.array([], dtype=np.int64)])
    check_unique_ids([np.array(["a", "b"], dtype=object), np.array(["c"], dtype=object)])
    check_unique_ids([])
    with pytest.raises(PoolError, match=r"id 'b' appears more than once \(in id array\(s\) \[1, 2\]\)"):
        check_unique_ids([np.array(x, dtype=object) for x in (["a"], ["b", "c"], ["b"])])
    with pytest.raises(PoolError, match=r"id 3 appears more than once \(in id array\(s\) \[0\]\)"):
        check_unique_ids([np.array([3, 1, 3])])
    with pytest.raises(PoolError, match="mix integers and strings"):
        check_unique_ids([np.array([1]), np.array(["1"], dtype=object)])


# ----------------------------------------------------------------------------- prefetch


def test_prefetch_propagates_error_mid_read(store):
    ids, feats, _ = make_data(n=60)
    feats[47, 0] = np.nan  # file 2, row group 1
    pool = open_vectors(store.write("pool", ids, feats, rows_per_file=20, rows_per_group=10))
    reader = load_reader(InputsConfig(), pool.spec, pool.schema)
    it = decoded_batches(pool, plan_shards(pool, 1)[0], reader, batch_rows=10, threads=2)
    seen = []
    with pytest.raises(InputError, match=r"id 1047 \(file \S+part-00002.parquet, row group 0, row 7\), column 'fea"):
        for batch in it:
            seen.append(batch.ids)
    np.testing.assert_array_equal(np.concatenate(seen), ids[:40])  # every good batch came first, in order


def test_prefetch_propagates_io_error(store):
    ids, feats, _ = make_data(n=60)
    pool = open_vectors(store.write("pool", ids, feats, rows_per_file=20, rows_per_group=10))
    store.remove("pool/part-00002.parquet")  # vanishes after open_pool
    got = []
    with pytest.raises((OSError, PoolError)):
        for batch in read_shard(pool, plan_shards(pool, 1)[0], batch_rows=10):
            got.append(batch["ids"])
    assert len(np.concatenate(got)) == 40


def _prefetch_threads(index):
    return [t for t in threading.enumerate() if t.name == f"pool-prefetch-{index}"]


def test_prefetch_reads_ahead_and_stops_when_caller_stops(store, monkeypatch):
    ids, feats, _ = make_data(n=100)
    pool = open_vectors(store.write("pool", ids, feats, rows_per_file=100, rows_per_group=10))
    reads = []
    real = pq.ParquetFile.read_row_group

    def counting(self, i, *a, **k):
        reads.append(i)
        return real(self, i, *a, **k)

    monkeypatch.setattr(pq.ParquetFile, "read_row_group", counting)
    shard = Shard(index=9_999, row_groups=pool.row_groups, first_row=0, num_rows=100)
    it = read_shard(pool, shard, batch_rows=10)
    assert not _prefetch_threads(9_999)  # nothing starts before the first next()
    first = next(it)
    np.testing.assert_array_equal(first["ids"], ids[:10])
    deadline = time.monotonic() + 5
    while len(reads) < 3 and time.monotonic() < deadline:  # 1 handed out + queue depth 2
        time.sleep(0.01)
    time.sleep(0.1)
    assert len(reads) == 3 or len(reads) == 4, reads  # bounded: the producer may hold one more
    it.close()
    assert not _prefetch_threads(9_999)
    assert len(reads) <= 4


@pytest.mark.slow  # importing scikit-learn takes 3-4 s
def test_bundled_digits_are_scikit_learns():
    from sklearn.datasets import load_digits as sklearn_digits

    from dist_al.data.digits import load_digits

    x, y = load_digits()
    want_x, want_y = sklearn_digits(return_X_y=True)
    assert x.dtype == want_x.dtype and y.dtype == want_y.dtype
    np.testing.assert_array_equal(x, want_x)
    np.testing.assert_array_equal(y, want_y)
