"""The readers (dist_al.inputs) on their own: every vector layout, real PNG/JPEG files as bytes, structs and URIs
(local and on the moto S3 server), texts with a tokenizer trained here, and the contract's enforcement."""

from __future__ import annotations

import io
import re
import sys
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from inputdata import SIDE, digits, image_files, image_pool, sentences, text_pool, train_tokenizer
from PIL import Image

from dist_al.config import ConfigError, InputsConfig, PoolConfig, load_config, validate
from dist_al.core.errors import UserError
from dist_al.data.pool import plan_shards
from dist_al.data.writer import write_pool
from dist_al.inputs import InputError, images, load_reader, open_inputs, text, vectors
from dist_al.inputs.pipeline import decoded_batches, ordered_map, read_batch

# --------------------------------------------------------------------------- vectors


def _layouts(x: np.ndarray) -> dict[str, pa.Array]:
    n, d = x.shape
    flat = pa.array(x.reshape(-1))
    offsets = np.arange(0, n * d + 1, d, dtype=np.int32)
    raw = [r.tobytes() for r in x]
    return {
        "list": pa.ListArray.from_arrays(pa.array(offsets), flat),
        "large_list": pa.LargeListArray.from_arrays(pa.array(offsets.astype(np.int64)), flat),
        "fixed_list": pa.FixedSizeListArray.from_arrays(flat, d),
        "float64 list": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1).astype(np.float64)), d),
        "binary": pa.array(raw, pa.binary()),
        "large_binary": pa.array(raw, pa.large_binary()),
        "fixed_binary": pa.array(raw, pa.binary(4 * d)),
    }


@pytest.mark.parametrize("layout", list(_layouts(np.zeros((1, 1), np.float32))))
def test_every_vector_layout_reads_the_same_rows(layout, tmp_path):
    """Written to Parquet and read back (sliced into batches that start mid-array, as the pipeline makes them)."""
    x = np.random.default_rng(0).normal(size=(50, 6)).astype(np.float32)
    pq.write_table(pa.table({"features": _layouts(x)[layout]}), tmp_path / "p.parquet")
    table = pq.read_table(tmp_path / "p.parquet").combine_chunks()
    batch = table.to_batches()[0]
    for start, stop in ((0, 50), (7, 31)):
        got = vectors(batch.slice(start, stop - start))
        assert got.dtype == torch.float32 and got.shape == (stop - start, 6)
        assert np.array_equal(got.numpy(), x[start:stop])


def test_binary_float16_from_field_metadata_or_kwarg():
    x = np.random.default_rng(1).normal(size=(5, 4)).astype(np.float16)
    raw = pa.array([r.tobytes() for r in x], pa.binary(8))
    tagged = pa.record_batch(
        [raw], schema=pa.schema([pa.field("features", raw.type, metadata={"dist_al.dtype": "float16"})])
    )
    assert np.array_equal(vectors(tagged).numpy(), x.astype(np.float32))
    untagged = pa.record_batch({"features": raw})
    assert vectors(untagged).shape == (5, 2)  # read as float32 without a word on the type
    assert np.array_equal(vectors(untagged, dtype="float16").numpy(), x.astype(np.float32))


def test_write_pool_writes_the_fast_layout(tmp_path):
    """make-pool's layout: fixed_size_binary of raw float32, uncompressed, with its dtype in the field metadata."""
    x = np.random.default_rng(2).normal(size=(40, 3)).astype(np.float32)
    write_pool(str(tmp_path / "pool"), np.arange(40), x, rows_per_group=16)
    meta = pq.ParquetFile(tmp_path / "pool" / "part-00000.parquet")
    field = meta.schema_arrow.field("features")
    assert field.type == pa.binary(12) and field.metadata == {b"dist_al.dtype": b"float32"}
    assert meta.metadata.row_group(0).column(1).compression == "UNCOMPRESSED"
    pool, reader = open_inputs(PoolConfig(uri=str(tmp_path / "pool")), InputsConfig())
    got = [b.x.numpy() for b in decoded_batches(pool, plan_shards(pool, 1)[0], reader, batch_rows=7, threads=2)]
    assert np.array_equal(np.concatenate(got), x)


@pytest.mark.parametrize(
    "column, problems",
    [
        (
            pa.array([[1.0, 2.0], [1.0], [3.0, 4.0], []], pa.list_(pa.float32())),
            [(1, "vector of length 1, expected D=2"), (3, "vector of length 0, expected D=2")],
        ),
        (
            pa.array([[1.0, 2.0], None, [1.0, 1.0], None], pa.list_(pa.float32())),
            [(1, "null vector"), (3, "null vector")],
        ),
        (
            pa.array([[1.0, np.nan], [1.0, 2.0], [np.inf, 0.0], [0.0, 0.0]], pa.list_(pa.float32(), 2)),
            [(0, "NaN or inf value"), (2, "NaN or inf value")],
        ),
        (
            pa.array([b"\0" * 8, b"\0" * 8, b"\0" * 4, b"\0" * 8], pa.binary()),
            [(2, "vector of length 1, expected D=2")],
        ),
    ],
    ids=["ragged", "null", "nan", "ragged binary"],
)
def test_bad_vectors_name_every_bad_row(column, problems):
    with pytest.raises(InputError) as err:
        vectors(pa.record_batch({"features": column}))
    assert [(p.row, p.reason) for p in err.value.problems] == problems
    assert {p.column for p in err.value.problems} == {"features"}


def test_finite_vectors_whose_sum_overflows_are_read():
    """The finiteness check sums the batch first: finite values near float32's limit overflow that sum, and the
    rows must still be read, not refused."""
    big = np.full((3, 4), 3e38, dtype=np.float32)
    assert np.array_equal(vectors(pa.record_batch({"features": pa.array(list(big), pa.list_(pa.float32(), 4))})), big)


def test_float64_vectors_beyond_float32_are_refused():
    """A float64 value float32 cannot hold would reach the model as inf: refused like one, on its row."""
    column = pa.array([[1.0, 2.0], [1e300, 0.0], [0.0, -1e39]], pa.list_(pa.float64(), 2))
    with pytest.raises(InputError) as err:
        vectors(pa.record_batch({"features": column}))
    why = "NaN or inf value, or a value beyond float32's range"
    assert [(p.row, p.reason) for p in err.value.problems] == [(1, why), (2, why)]


@pytest.mark.parametrize(
    "typ, message",
    [(pa.list_(pa.int64()), "holds lists of int64"), (pa.string(), "has type string"), (pa.binary(10), "10 bytes")],
)
def test_vector_column_types_are_checked_from_the_footer(typ, message):
    with pytest.raises(InputError, match=message):
        vectors.check(pa.schema([("features", typ)]))


# --------------------------------------------------------------------------- images


def _reference(blob: bytes, size: int, crop: int, mode: str) -> np.ndarray:
    """The images reader's steps written out with Pillow for one image: decode, mode, resize, centre crop."""
    img = Image.open(io.BytesIO(blob)).convert(mode)
    scale = size / min(img.size)
    img = img.resize((round(img.size[0] * scale), round(img.size[1] * scale)), Image.Resampling.BILINEAR)
    left, top = (img.size[0] - crop) // 2, (img.size[1] - crop) // 2
    arr = np.asarray(img.crop((left, top, left + crop, top + crop)), dtype=np.float32) / 255
    return arr.reshape(crop, crop, -1).transpose(2, 0, 1)


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_png_and_jpeg_bytes_decode_resize_crop_and_normalise(mode):
    blobs, exts, _ = image_files(6)
    assert set(exts) == {"png", "jpeg"}
    channels = 1 if mode == "L" else 3
    mean, std = [0.5] * channels, [0.25] * channels
    got = images(
        pa.record_batch({"image": pa.array(blobs, pa.binary())}), size=12, crop=10, mode=mode, mean=mean, std=std
    )
    assert got.shape == (6, channels, 10, 10) and got.dtype == torch.float32
    want = np.stack([(_reference(b, 12, 10, mode) - 0.5) / 0.25 for b in blobs])
    np.testing.assert_allclose(got.numpy(), want, atol=1e-6)


def test_bytes_structs_local_and_s3_uris_give_the_same_tensor(tmp_path, s3_bucket, s3_storage_options):
    pools = {
        "bytes": image_pool(str(tmp_path / "b"), 24, "bytes"),
        "struct": image_pool(str(tmp_path / "s"), 24, "struct"),
        "local uri": image_pool(str(tmp_path / "u"), 24, "uri"),
        "s3 uri": image_pool(f"s3://{s3_bucket}/img", 24, "uri", storage_options=s3_storage_options),
    }
    got = {}
    for name, uri in pools.items():
        options = s3_storage_options if uri.startswith("s3://") else {}
        pool, reader = open_inputs(
            PoolConfig(uri=uri, storage_options=options),
            InputsConfig(reader="dist_al.inputs:images", kwargs={"size": 8, "mode": "L"}),
        )
        batches = decoded_batches(pool, plan_shards(pool, 1)[0], reader, batch_rows=10, threads=2)
        got[name] = torch.cat([b.x for b in batches])
    for name, x in got.items():
        assert torch.equal(x, got["bytes"]), name
    assert got["bytes"].shape == (24, 1, 8, 8)


def test_bad_images_name_every_bad_row(tmp_path):
    blobs, _, _ = image_files(5)
    missing = str(tmp_path / "nowhere.png")
    arr = pa.array([blobs[0], b"not an image", blobs[2][: len(blobs[2]) // 3], None, blobs[4]], pa.binary())
    with pytest.raises(InputError) as err:
        images(pa.record_batch({"image": arr}), size=8, mode="L")
    problems = {p.row: p.reason for p in err.value.problems}
    assert sorted(problems) == [1, 2, 3]
    assert problems[1] == "cannot decode image: not an image file Pillow can read"
    assert problems[2].startswith("cannot decode image (")  # truncated PNG
    assert problems[3] == "no image (null or empty)"
    with pytest.raises(InputError) as err:
        images(pa.record_batch({"image": [missing]}), size=8, mode="L")
    assert (err.value.problems[0].reason, err.value.problems[0].value) == ("no such file or object", missing)


def test_an_image_of_another_mode_is_converted_or_refused():
    blobs, _, _ = image_files(2)  # grey images
    batch = pa.record_batch({"image": pa.array(blobs, pa.binary())})
    assert images(batch, size=8, mode="RGB").shape == (2, 3, 8, 8)
    with pytest.raises(InputError) as err:
        images(batch, size=8, mode="RGB", convert=False)
    assert [p.reason for p in err.value.problems] == [
        "image mode is L, inputs.kwargs.mode is RGB (and convert is false)"
    ] * 2


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"mode": "CMYK"}, "mode must be RGB or L"),
        ({"size": 0}, "size must be a positive integer"),
        ({"size": 8, "crop": 9}, r"crop \(9\) must not exceed"),
        ({"mode": "RGB", "mean": [0.5]}, "mean needs 3 values for mode RGB"),
        ({"mode": "L", "std": [0.0]}, "std must be positive"),
    ],
)
def test_image_settings_are_checked_before_any_worker(kwargs, message):
    with pytest.raises(InputError, match=message):
        images.check(pa.schema([("image", pa.binary())]), **kwargs)


def test_uris_are_fetched_concurrently_and_bounded(tmp_path, monkeypatch):
    """At most max_in_flight reads at once in the process, and more than one when the batch has many URIs."""
    images_module = sys.modules["dist_al.inputs.images"]  # the package's `images` is the reader

    blobs, _, _ = image_files(12)
    uris = []
    for i, blob in enumerate(blobs):
        (tmp_path / f"{i}.img").write_bytes(blob)
        uris.append(str(tmp_path / f"{i}.img"))
    active, peak, lock = [0], [0], threading.Lock()
    read = images_module._read

    def slow_read(uri, options):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.02)
        with lock:
            active[0] -= 1
        return read(uri, options)

    monkeypatch.setattr(images_module, "_read", slow_read)
    images(pa.record_batch({"image": uris}), size=8, mode="L", max_in_flight=3)
    assert 1 < peak[0] <= 3


# --------------------------------------------------------------------------- text


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return train_tokenizer(str(tmp_path_factory.mktemp("tok") / "tokenizer.json"))


def test_text_is_tokenised_and_padded_per_batch(tokenizer):
    from tokenizers import Tokenizer

    texts, _ = sentences(6)
    out = text(pa.record_batch({"text": texts}), tokenizer=tokenizer, max_length=5)
    tok = Tokenizer.from_file(tokenizer)
    lengths = [min(5, len(tok.encode(t).ids)) for t in texts]
    assert out["input_ids"].shape == (6, max(lengths)) and out["input_ids"].dtype == torch.int64
    assert out["attention_mask"].sum(1).tolist() == lengths
    for row, t in enumerate(texts):
        assert out["input_ids"][row, : lengths[row]].tolist() == tok.encode(t).ids[:5]
        assert (out["input_ids"][row, lengths[row] :] == tok.token_to_id("[PAD]")).all()


def test_empty_text_and_missing_tokenizer(tokenizer, tmp_path):
    with pytest.raises(InputError) as err:
        text(pa.record_batch({"text": ["the cat", "", None, "  "]}), tokenizer=tokenizer)
    assert [(p.row, p.reason) for p in err.value.problems] == [(1, "empty text"), (2, "empty text"), (3, "empty text")]
    missing = str(tmp_path / "no-tokenizer.json")
    with pytest.raises(InputError, match=f"inputs.kwargs.tokenizer '{missing}' does not exist"):
        text.check(pa.schema([("text", pa.string())]), tokenizer=missing)
    (tmp_path / "junk.json").write_text("{}")
    with pytest.raises(InputError, match="is not a tokenizer.json of the tokenizers library"):
        text.check(pa.schema([("text", pa.string())]), tokenizer=str(tmp_path / "junk.json"))


# --------------------------------------------------------------------------- the contract


def _reader(path="dist_al.inputs:vectors", **inputs):
    return load_reader(InputsConfig(reader=path, **inputs), PoolConfig(uri="x", label_column="label"), SCHEMA)


SCHEMA = pa.schema([("id", pa.int64()), ("a", pa.float32()), ("b", pa.float32()), ("label", pa.int64())])


def columns_reader(batch: pa.RecordBatch, scale: float = 1.0) -> torch.Tensor:
    """A reader without a columns attribute: every column it is given, stacked."""
    return torch.tensor(np.column_stack([c.to_numpy() for c in batch.columns]) * scale, dtype=torch.float32)


def test_which_columns_a_reader_reads():
    assert _reader().columns == ("features",)
    assert _reader(kwargs={"column": "emb"}).columns == ("emb",)
    assert _reader("test_inputs:columns_reader").columns == ("a", "b")  # all but id and label
    assert _reader("test_inputs:columns_reader", columns=["b"]).columns == ("b",)
    with pytest.raises(UserError, match="names its columns itself"):
        _reader(columns=["a"])


@pytest.mark.parametrize(
    "path, kwargs, message",
    [
        ("dist_al.inputs.vectors", {}, "must look like 'package.module:function'"),
        ("no_such_module:fn", {}, "cannot import module 'no_such_module'"),
        ("dist_al.inputs:nothing", {}, "has no attribute 'nothing'"),
        ("dist_al.inputs:vectors", {"colum": "x"}, "inputs.kwargs 'colum': not an argument of inputs.reader"),
    ],
)
def test_a_reader_that_cannot_be_loaded_is_one_line(path, kwargs, message):
    with pytest.raises(UserError, match=message):
        _reader(path, kwargs=kwargs)


def _read(reader_fn, n=6, on_error="raise"):
    from dist_al.inputs.contract import Reader

    reader = Reader("tests:fn", reader_fn, {}, ("v",), on_error)
    batch = pa.record_batch({"v": pa.array(np.arange(n, dtype=np.float32))})
    ids = np.arange(100, 100 + n)
    return read_batch(reader, batch, ids, lambda i: f"row {i}", "pool P")


def test_output_that_breaks_the_contract_is_one_line():
    cases = [
        (lambda b: b.column(0).to_numpy(), "returned a ndarray of shape (6,)"),
        (lambda b: torch.zeros(len(b) - 1, 2), "returned a Tensor of shape (5, 2) for 6 rows"),
        (lambda b: {"x": torch.zeros(len(b)), 3: torch.zeros(len(b))}, "returned a dict"),
        (lambda b: torch.tensor(1.0), "returned a Tensor of shape ()"),
    ]
    for fn, message in cases:
        with pytest.raises(UserError, match=re.escape(message)) as err:
            _read(fn)
        assert str(err.value).startswith("pool P: ids 100..105 (row 0..)") and "\n" not in str(err.value)


def test_a_reader_that_raises_is_reported_on_its_first_failing_row():
    def fails_on_103(batch):
        values = batch.column(0).to_numpy()
        if 3.0 in values:
            raise ZeroDivisionError("division by zero")
        return torch.from_numpy(values.copy())

    with pytest.raises(UserError) as err:
        _read(fails_on_103)
    assert str(err.value) == (
        "pool P: id 103 (row 3): inputs.reader 'tests:fn' failed: ZeroDivisionError: division by zero"
    )


def test_skip_leaves_the_bad_rows_out_and_reads_the_rest():
    def odd_rows_bad(batch):
        values = batch.column(0).to_numpy()
        bad = [InputError("odd", row=i, column="v", value=float(v)) for i, v in enumerate(values) if v % 2]
        if bad:
            raise InputError.several(bad)
        return torch.from_numpy(values.copy())

    out, keep, skipped = _read(odd_rows_bad, on_error="skip")
    assert out.tolist() == [0.0, 2.0, 4.0] and keep.tolist() == [True, False] * 3
    assert [s.id for s in skipped] == [101, 103, 105]
    assert skipped[0].line == "pool P: id 101 (row 1), column 'v' = 1.0: odd"
    with pytest.raises(InputError, match=r"^pool P: id 101 \(row 1\), column 'v' = 1.0: odd$"):
        _read(odd_rows_bad, on_error="raise")


def test_ordered_map_keeps_order_and_runs_in_threads():
    seen = set()

    def slow(i):
        seen.add(threading.current_thread().name)
        time.sleep(0.01 * (5 - i % 5))
        return i * i

    assert list(ordered_map(slow, iter(range(20)), 3)) == [i * i for i in range(20)]
    assert len(seen) > 1


def test_decoding_leaves_out_excluded_rows(tmp_path):
    x = np.random.default_rng(3).normal(size=(30, 2)).astype(np.float32)
    write_pool(str(tmp_path / "pool"), np.arange(30), x, rows_per_group=8)
    pool, reader = open_inputs(PoolConfig(uri=str(tmp_path / "pool")), InputsConfig())
    batches = list(
        decoded_batches(pool, plan_shards(pool, 1)[0], reader, batch_rows=5, threads=2, exclude=np.array([3, 9, 10]))
    )
    rows = np.concatenate([b.rows for b in batches])
    assert rows.tolist() == [r for r in range(30) if r not in (3, 9, 10)]
    assert np.array_equal(np.concatenate([b.x.numpy() for b in batches if b.x is not None]), x[rows])


# --------------------------------------------------------------------------- config


def test_pool_feature_column_says_where_it_moved():
    with pytest.raises(ConfigError, match="config key pool.feature_column moved: .* inputs.kwargs.column"):
        validate({"pool": {"uri": "p", "feature_column": "emb"}, "selection": {"budget": 1}})
    cfg = load_config(None, ["inputs.kwargs.column=emb"], base={"pool": {"uri": "p"}, "selection": {"budget": 1}})
    assert cfg.inputs.reader == "dist_al.inputs:vectors" and cfg.inputs.kwargs == {"column": "emb"}


def test_a_text_pool_opens_with_its_tokenizer(tmp_path, tokenizer):
    uri = text_pool(str(tmp_path / "text"), 10)
    pool, reader = open_inputs(
        PoolConfig(uri=uri, label_column="label"),
        InputsConfig(reader="dist_al.inputs:text", kwargs={"tokenizer": tokenizer}),
    )
    assert reader.columns == ("text",) and pool.num_rows == 10
    with pytest.raises(InputError, match="does not exist"):
        open_inputs(
            PoolConfig(uri=uri),
            InputsConfig(reader="dist_al.inputs:text", kwargs={"tokenizer": str(tmp_path / "x.json")}),
        )
    with pytest.raises(InputError, match=r"file \S+part-00000.parquet column 'label': has type int64; expected string"):
        open_inputs(
            PoolConfig(uri=uri),
            InputsConfig(reader="dist_al.inputs:text", kwargs={"column": "label", "tokenizer": tokenizer}),
        )


def test_digits_are_real_images():
    images_, labels = digits(20)
    assert images_.shape == (20, 8, 8) and images_.max() > 200 and len(set(labels.tolist())) == 10
    blobs, exts, _ = image_files(2)
    assert blobs[0][:8] == b"\x89PNG\r\n\x1a\n" and blobs[1][:2] == b"\xff\xd8"
    assert Image.open(io.BytesIO(blobs[1])).size == (SIDE, SIDE)


def test_workdirs_pin_the_reader_and_read_the_old_pin(tmp_path):
    """A workdir pins inputs.reader and its kwargs; one made before the inputs section pinned pool.feature_column,
    which stands for the vectors reader on that column."""
    import json

    from dist_al.campaign.workdir import WorkdirError, open_workdir

    x = np.random.default_rng(5).normal(size=(20, 3)).astype(np.float32)
    write_pool(str(tmp_path / "pool"), np.arange(20), x)
    base = {"pool": {"uri": str(tmp_path / "pool")}, "selection": {"budget": 1}, "workdir": str(tmp_path / "work")}
    cfg = validate(base)
    open_workdir(cfg)
    meta_path = tmp_path / "work" / "workdir.json"
    meta = json.loads(meta_path.read_text())
    assert meta["pinned"]["inputs.reader"] == "dist_al.inputs:vectors" and meta["pinned"]["inputs.kwargs"] == {}
    open_workdir(cfg.replace(inputs={"kwargs": {"column": "features"}}))  # the default, said out loud
    with pytest.raises(WorkdirError, match="was made with inputs.reader = 'dist_al.inputs:vectors'"):
        open_workdir(cfg.replace(inputs={"reader": "dist_al.inputs:images", "kwargs": {"column": "features"}}))
    old = {k: v for k, v in meta["pinned"].items() if not k.startswith("inputs.")}
    meta_path.write_text(json.dumps({**meta, "pinned": {**old, "pool.feature_column": "features"}}))
    open_workdir(cfg)
    with pytest.raises(WorkdirError, match=r"was made with inputs.kwargs = \{'column': 'features'\}"):
        open_workdir(cfg.replace(inputs={"kwargs": {"column": "emb"}}))
