"""Bad input the readers meet, through the real `dist-al` command (tests/test_bad_input.py's way): one line naming
the row (its id, file, row group and row, the column and the value or URI), exit 2, nothing written.

Image pools hold real PNG/JPEG files (tests/inputdata.py); the models and the users' readers are factories of
tests/inputdata.py, which the CLI imports from PYTHONPATH.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import yaml
from inputdata import image_files, image_pool, text_pool, train_tokenizer, write_parquet
from test_bad_input import assert_one_line_error, cli, snapshot

from dist_al.data.writer import write_pool

# each case runs dist-al, whose driver joins the shared Ray head (conftest.py)
pytestmark = [pytest.mark.subprocess, pytest.mark.cluster, pytest.mark.usefixtures("drivers_join_shared_head")]

TESTS = str(Path(__file__).resolve().parent)
N = 40
CNN = {"factory": "inputdata:tiny_cnn", "kwargs": {"channels": 1, "n_classes": 10}, "batch_size": 16}
BAG = {"factory": "inputdata:bag_of_words", "kwargs": {"vocab": 64, "n_classes": 3}, "batch_size": 16}
MLP = {"kwargs": {"in_dim": 8, "n_classes": 3, "hidden": 8}, "batch_size": 16}
IMAGES = {"reader": "dist_al.inputs:images", "kwargs": {"size": 8, "mode": "L"}}
SELECT = ["select", "--out", "out/sel.parquet", "--no-progress"]
ROUND = ["round", "--no-progress"]


@pytest.fixture(scope="module")
def pools(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad-readers")
    blobs, exts, labels = image_files(N)
    corrupt = list(blobs)
    corrupt[5] = b"\x89PNG\r\n\x1a\n but not really"
    write_parquet(
        f"{root}/corrupt/part-00000.parquet",
        pa.table({"id": np.arange(N), "image": pa.array(corrupt, pa.binary()), "label": labels}),
        rows_per_group=20,
    )
    uris = image_pool(str(root / "uris"), N, "uri", rows_per_group=20)
    os.remove(root / "uris" / "images" / f"27.{exts[27]}")
    texts = text_pool(str(root / "text"), N, rows_per_group=20)
    table = pa.parquet.read_table(texts)
    empty = table.set_column(
        1, "text", pa.array([t if i != 13 else "" for i, t in enumerate(table.column("text").to_pylist())])
    )
    write_parquet(f"{root}/empty_text/part-00000.parquet", empty, rows_per_group=20)
    feats = np.random.default_rng(0).normal(size=(N, 8)).astype(np.float32)
    feats[:, 0] = np.arange(N)  # row i's first value is i
    write_pool(str(root / "vectors"), np.arange(1000, 1000 + N), feats, np.arange(N) % 3, rows_per_group=20)
    return {
        "root": root,
        "corrupt": f"{root}/corrupt",
        "uris": uris,
        "bytes": image_pool(str(root / "bytes"), N, "bytes", rows_per_group=20),
        "empty_text": f"{root}/empty_text",
        "text": texts,
        "vectors": str(root / "vectors"),
        "tokenizer": train_tokenizer(str(root / "tok" / "tokenizer.json")),
    }


def _check(pools, tmp_path, command, config: dict, *needles) -> str:
    cfg = {
        "selection": {"strategy": "margin", "budget": 5},
        "cluster": {"workers": 2},
        "train": {"workers": 1, "epochs": 1},
        "workdir": str(tmp_path / "work"),
        **config,
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    watched = (tmp_path, pools["root"])
    before = snapshot(*watched)
    env = {"PYTHONPATH": os.pathsep.join([TESTS, os.environ.get("PYTHONPATH", "")])}
    res = cli(command[0], "--config", str(tmp_path / "config.yaml"), *command[1:], cwd=tmp_path, env=env)
    line = assert_one_line_error(res, *needles)
    print(f"OBSERVED {command[0]}: {line}")
    assert snapshot(*watched) == before  # nothing written, nothing removed
    return line


def test_corrupt_image(pools, tmp_path):
    _check(
        pools,
        tmp_path,
        SELECT,
        {"pool": {"uri": pools["corrupt"]}, "inputs": IMAGES, "model": CNN},
        "id 5 (file ",
        "corrupt/part-00000.parquet, row group 0, row 5), column 'image': cannot decode image",
    )


def test_missing_uri(pools, tmp_path):
    _check(
        pools,
        tmp_path,
        ROUND,
        {"pool": {"uri": pools["uris"]}, "inputs": IMAGES, "model": CNN},
        "id 27 (file ",
        "row group 1, row 7), column 'image' = '",
        "images/27.jpeg': no such file or object",
    )


def test_image_of_the_wrong_mode(pools, tmp_path):
    inputs = {"reader": "dist_al.inputs:images", "kwargs": {"size": 8, "mode": "RGB", "convert": False}}
    _check(
        pools,
        tmp_path,
        SELECT,
        {
            "pool": {"uri": pools["bytes"]},
            "inputs": inputs,
            "model": {**CNN, "kwargs": {"channels": 3, "n_classes": 10}},
        },
        "row group ",  # a row of either worker's shard: whichever decodes first
        "row 0), column 'image': image mode is L, inputs.kwargs.mode is RGB (and convert is false)",
    )


def test_empty_text(pools, tmp_path):
    inputs = {"reader": "dist_al.inputs:text", "kwargs": {"tokenizer": pools["tokenizer"]}}
    _check(
        pools,
        tmp_path,
        ROUND,
        {"pool": {"uri": pools["empty_text"]}, "inputs": inputs, "model": BAG},
        "id 13 (file ",
        "row group 0, row 13), column 'text': empty text",
    )


def test_tokenizer_file_that_does_not_exist(pools, tmp_path):
    missing = str(tmp_path / "tokenizer.json")
    inputs = {"reader": "dist_al.inputs:text", "kwargs": {"tokenizer": missing}}
    _check(
        pools,
        tmp_path,
        SELECT,
        {"pool": {"uri": pools["text"]}, "inputs": inputs, "model": BAG},
        f"inputs.kwargs.tokenizer '{missing}' does not exist",
    )


def test_reader_that_raises(pools, tmp_path):
    inputs = {"reader": "inputdata:fails_on_value", "kwargs": {"value": 23.0}, "columns": ["features"]}
    _check(
        pools,
        tmp_path,
        SELECT,
        {"pool": {"uri": pools["vectors"]}, "inputs": inputs, "model": MLP},
        "id 1023 (file ",
        "row group 1, row 3): inputs.reader 'inputdata:fails_on_value' failed: ValueError: cannot handle 23.0",
    )


def _names_a_first_batch(line: str) -> None:
    """Every batch fails: the line names the first batch of whichever of the 2 workers' shards (rows 1000-1019 and
    1020-1039) failed first."""
    assert "ids 1000..1015 (file " in line or "ids 1020..1035 (file " in line, line


def test_reader_returning_the_wrong_row_count(pools, tmp_path):
    inputs = {"reader": "inputdata:one_row_short", "columns": ["features"]}
    line = _check(
        pools,
        tmp_path,
        ROUND,
        {"pool": {"uri": pools["vectors"]}, "inputs": inputs, "model": MLP},
        "inputs.reader 'inputdata:one_row_short' returned a Tensor of shape (15, 8) for 16 rows",
    )
    _names_a_first_batch(line)


def test_reader_returning_a_shape_the_model_does_not_take(pools, tmp_path):
    inputs = {"reader": "inputdata:too_narrow", "columns": ["features"]}
    line = _check(
        pools,
        tmp_path,
        SELECT,
        {"pool": {"uri": pools["vectors"]}, "inputs": inputs, "model": MLP},
        "the model failed on inputs.reader 'inputdata:too_narrow''s output (16, 3) for ids 10",
        "RuntimeError: mat1 and mat2 shapes cannot be multiplied",
    )
    _names_a_first_batch(line)


def test_the_old_feature_column_key(pools, tmp_path):
    _check(
        pools,
        tmp_path,
        SELECT,
        {"pool": {"uri": pools["vectors"], "feature_column": "features"}, "model": MLP},
        "config key pool.feature_column moved: the vectors reader's column is inputs.kwargs.column",
    )
