"""`dist-al make-pool` from real files: folders of PNG/JPEG images (bytes in Parquet, or files plus a manifest, also
on the moto S3 server) and CSVs of texts; bad input is one line and writes nothing."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from dist_al import cli
from dist_al.data.digits import digit_images
from dist_al.data.pool import _list_files
from dist_al.data.storage import filesystem
from dist_al.data.writer import check_images, image_layout, scan_image_folder, write_image_pool

CLASSES = ("one", "three", "zero")  # sorted: labels 0, 1, 2 hold digits 1, 3, 0
PER_CLASS = 4


def digit_folder(root: Path) -> dict[str, int]:
    """CLASS/NN.png (grayscale) and CLASS/NN.jpg (RGB) files rendered from scikit-learn's digits; path -> digit."""
    digits, y = digit_images()
    truth = {}
    for name, digit in zip(CLASSES, (1, 3, 0)):
        (root / name).mkdir(parents=True)
        images = digits[y == digit][:PER_CLASS]
        for i, pixels in enumerate(images):
            image = Image.fromarray((pixels * 255 / 16).astype(np.uint8), "L").resize((16, 16))
            rel = f"{name}/{i:02d}.{'png' if i % 2 else 'jpg'}"
            (image if i % 2 else image.convert("RGB")).save(root / rel)
            truth[rel] = digit
    return truth


def make_pool(*args: str, capsys) -> tuple[int, str, str]:
    code = cli.main(["make-pool", *args])
    out = capsys.readouterr()
    return code, out.out.strip(), out.err.strip()


def read(pool: Path):
    return pq.read_table(sorted(pool.glob("part-*.parquet")))


def test_an_image_folder_becomes_a_pool_of_encoded_bytes_with_labels_from_its_folders(tmp_path, capsys):
    truth = digit_folder(tmp_path / "digits")
    (tmp_path / "digits" / "zero" / "notes.txt").write_text("not an image")
    code, out, err = make_pool(
        str(tmp_path / "pool"), "--images", str(tmp_path / "digits"), "--rows-per-file", "5", capsys=capsys
    )
    assert code == 0, err
    assert out == (
        f"wrote 12 images (encoded bytes in column 'image') with labels 0=one, 1=three, 2=zero in 3 file(s) to "
        f"{tmp_path / 'pool'}; skipped 1 file(s) that are not images"
    )
    table = read(tmp_path / "pool")
    assert table.column_names == ["id", "path", "image", "label"]
    assert table["id"].to_pylist() == list(range(12))
    assert table["path"].to_pylist() == sorted(truth)
    assert table["label"].to_pylist() == [CLASSES.index(p.split("/")[0]) for p in sorted(truth)]
    assert table["image"].to_pylist() == [(tmp_path / "digits" / p).read_bytes() for p in sorted(truth)]
    metadata = pq.read_schema(tmp_path / "pool" / "part-00000.parquet").metadata
    assert json.loads(metadata[b"dist_al.class_names"]) == list(CLASSES)


def test_a_folder_of_images_only_is_an_unlabeled_pool(tmp_path, capsys):
    digit_folder(tmp_path / "digits")
    flat = tmp_path / "digits" / "three"
    code, out, err = make_pool(str(tmp_path / "pool"), "--images", str(flat), capsys=capsys)
    assert code == 0, err
    table = read(tmp_path / "pool")
    assert table.column_names == ["id", "path", "image"] and table.num_rows == PER_CLASS


def test_image_files_are_copied_to_s3_with_a_manifest_of_their_uris(tmp_path, s3_bucket, s3_storage_options):
    truth = digit_folder(tmp_path / "digits")
    folder = scan_image_folder(str(tmp_path / "digits"))
    check_images(folder)
    uri = f"s3://{s3_bucket}/pool"
    files = write_image_pool(uri, folder, storage="files", storage_options=s3_storage_options)
    assert files == [f"{uri}/part-00000.parquet"]
    fs, root = filesystem(uri, s3_storage_options)
    with fs.open(f"{root}/part-00000.parquet", "rb") as f:
        table = pq.read_table(f)
    assert table.column_names == ["id", "path", "image_uri", "label"]
    assert table["image_uri"].to_pylist() == [f"{uri}/_images/{p}" for p in sorted(truth)]
    for path, image_uri in zip(table["path"].to_pylist(), table["image_uri"].to_pylist()):
        assert fs.cat_file(image_uri) == (tmp_path / "digits" / path).read_bytes()
    assert [p.rsplit("/", 1)[-1] for p in _list_files(uri, fs, root)] == ["part-00000.parquet"]  # copies not listed


def test_local_image_files_are_named_by_absolute_paths(tmp_path, capsys):
    digit_folder(tmp_path / "digits")
    code, out, err = make_pool(
        str(tmp_path / "pool"), "--images", str(tmp_path / "digits"), "--image-storage", "files", capsys=capsys
    )
    assert code == 0, err
    uris = read(tmp_path / "pool")["image_uri"].to_pylist()
    assert uris[0] == str(tmp_path / "pool" / "_images" / "one" / "00.jpg")
    assert all(Path(u).is_file() for u in uris)


def test_image_row_groups_hold_about_32_mib_and_at_most_1024_rows(tmp_path):
    digit_folder(tmp_path / "digits")
    folder = scan_image_folder(str(tmp_path / "digits"))

    def layout(size: int, storage: str = "bytes") -> tuple[int, int]:
        return image_layout(dataclasses.replace(folder, sizes=(size,) * len(folder.files)), storage)

    assert layout(8 << 20) == (64, 16)  # 8 MiB photos: 16 rows per group at least, ~512 MiB files
    assert layout(100 << 10) == (5232, 327)  # 100 KiB JPEGs: 32 MiB groups
    assert layout(300) == layout(300, "files") == (262_144, 1024)  # tiny images: 1024 rows per group at most
    write_image_pool(str(tmp_path / "pool"), folder, rows_per_group=5)
    meta = pq.ParquetFile(tmp_path / "pool" / "part-00000.parquet").metadata
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [5, 5, 2]


def texts_csv(path: Path, rows: list[tuple], header="id,text,team") -> Path:
    path.write_text(header + "\n" + "".join(",".join(map(str, row)) + "\n" for row in rows))
    return path


def test_a_csv_of_texts_becomes_a_text_pool_with_class_names(tmp_path, capsys):
    csv = texts_csv(
        tmp_path / "t.csv",
        [(7, '"printer, jammed again"', "hardware"), (3, "password reset", "accounts"), (9, "vpn down", "network")],
    )
    code, out, err = make_pool(str(tmp_path / "pool"), "--text", str(csv), "--label-column", "team", capsys=capsys)
    assert code == 0, err
    assert out == "wrote 3 texts (column 'text') with labels 0=accounts, 1=hardware, 2=network in 1 file(s) to " + str(
        tmp_path / "pool"
    )
    table = read(tmp_path / "pool")
    assert table.to_pydict() == {
        "id": [7, 3, 9],
        "text": ["printer, jammed again", "password reset", "vpn down"],
        "label": [1, 0, 2],
    }


def test_a_csv_of_texts_with_integer_labels_or_none(tmp_path, capsys):
    csv = texts_csv(tmp_path / "t.csv", [("a", "one", 1), ("b", "two", 0)], header="key,body,y")
    args = ["--text", str(csv), "--id-column", "key", "--text-column", "body"]
    assert make_pool(str(tmp_path / "p1"), *args, "--label-column", "y", capsys=capsys)[0] == 0
    assert read(tmp_path / "p1").to_pydict() == {"id": ["a", "b"], "text": ["one", "two"], "label": [1, 0]}
    assert make_pool(str(tmp_path / "p2"), *args, capsys=capsys)[0] == 0
    assert read(tmp_path / "p2").column_names == ["id", "text"]


def _broken_folder(tmp_path: Path, kind: str) -> Path:
    root = tmp_path / "in"
    if kind == "empty":
        root.mkdir()
    elif kind == "corrupt":
        digit_folder(root)
        (root / "one" / "01.png").write_bytes(b"not an image at all")
    elif kind == "truncated":
        digit_folder(root)
        data = (root / "zero" / "02.jpg").read_bytes()
        (root / "zero" / "02.jpg").write_bytes(data[: len(data) // 2])
    elif kind == "mixed":
        digit_folder(root)
        (root / "one" / "00.jpg").rename(root / "stray.jpg")
    elif kind == "empty-class":
        digit_folder(root)
        (root / "none").mkdir()
    return root


@pytest.mark.parametrize(
    "kind, needle",
    [
        ("empty", "no images (.png, .jpg"),
        ("corrupt", "one/01.png is not a readable image (UnidentifiedImageError"),
        ("truncated", "zero/02.jpg is not a readable image (OSError: Truncated File Read"),
        ("mixed", "holds both images and sub-folders"),
        ("empty-class", "class folder 'none' holds no images"),
        ("missing", "no such folder"),
    ],
)
def test_a_bad_image_folder_is_one_line_and_writes_nothing(tmp_path, capsys, kind, needle):
    root = _broken_folder(tmp_path, kind) if kind != "missing" else tmp_path / "nowhere"
    code, out, err = make_pool(str(tmp_path / "pool"), "--images", str(root), capsys=capsys)
    assert code == 2 and out == "" and len(err.splitlines()) == 1, err
    assert err.startswith(f"dist-al: error: --images {root}") and needle in err, err
    print("OBSERVED", err)
    assert not (tmp_path / "pool").exists()


@pytest.mark.parametrize(
    "rows, args, needle",
    [
        (
            [(1, "hi", "a")],
            ["--text-column", "body"],
            "no column 'body' (columns: id, text, team); name it with --text-column",
        ),
        ([(1, "hi", "a"), (2, " ", "b")], [], "the text of id 2 is empty"),
        ([(1, "hi", "a"), (1, "ho", "b")], [], "id 1 appears 2 times; ids must be unique"),
        ([(1, "hi", "a"), (2, "ho", "")], ["--label-column", "team"], "id 2 has no 'team'"),
    ],
    ids=["no text column", "empty text", "repeated id", "missing label"],
)
def test_a_bad_text_csv_is_one_line_and_writes_nothing(tmp_path, capsys, rows, args, needle):
    csv = texts_csv(tmp_path / "t.csv", rows)
    code, out, err = make_pool(str(tmp_path / "pool"), "--text", str(csv), *args, capsys=capsys)
    assert code == 2 and out == "" and len(err.splitlines()) == 1, err
    assert err.startswith(f"dist-al: error: --text {csv}: ") and needle in err, err
    print("OBSERVED", err)
    assert not (tmp_path / "pool").exists()


def test_synthetic_rows_drawn_in_slices_are_those_of_one_draw(monkeypatch):
    """make-pool --synthetic draws ten million rows in slices (little memory beyond the result); the rows must be
    those one draw of all the normals gives, whatever the slice size and however the last slice falls."""
    import torch

    from dist_al.data import synthetic

    def one_draw(n: int, dim: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(0)
        means = torch.randn(4, dim, generator=g, dtype=torch.float64) * 2.0 / dim**0.5 * 2
        labels = torch.randint(0, 4, (n,), generator=g)
        return (means[labels] + torch.randn(n, dim, generator=g, dtype=torch.float64)).float()

    monkeypatch.setattr(synthetic, "_SLICE_ELEMENTS", 1000)  # slices of 320 rows at dim 3
    for n, dim in [(1, 3), (321, 3), (325, 3), (326, 3), (1001, 3), (999, 7), (700, 64), (5, 1)]:
        feats, _ = synthetic.gaussian_mixture(n, 4, dim)
        assert torch.equal(feats, one_draw(n, dim)), (n, dim)
