"""Selections out to labelers, labels back in: export files, label readers, the ingest policy,
append-only label records.  Tests taking ``store`` run on local disk and on a real S3 API
(moto server), like tests/test_pool.py.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import re
import warnings
from xml.etree import ElementTree

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from s3server import s3_filesystem

from dist_al.campaign import labels as labels_module
from dist_al.campaign.labels import (
    EXPORT_FILES,
    REASONS,
    IngestReport,
    LabelFileError,
    LabelRecords,
    append_label_records,
    export_selection,
    label_studio_config,
    load_label_records,
    read_labels,
    validate_labels,
)

CLASSES = ["cat", "dog", "bird"]


class Store:
    """One backend: URIs under a fresh root, raw reads/writes and listings."""

    def __init__(self, kind: str, base: str, options: dict, fs):
        self.kind, self.base, self.options, self.fs = kind, base.rstrip("/"), options, fs

    def uri(self, name: str) -> str:
        return f"{self.base}/{name}"

    def path(self, name: str) -> str:
        return fsspec.core.url_to_fs(self.uri(name), **self.options)[1]

    def put(self, name: str, data: bytes) -> str:
        if self.kind == "local":
            self.fs.makedirs(self.path(name).rsplit("/", 1)[0], exist_ok=True)
        self.fs.pipe_file(self.path(name), data)
        return self.uri(name)

    def get(self, name: str) -> bytes:
        return self.fs.cat_file(self.path(name))

    def all_files(self) -> list[str]:
        """Every file under the root, relative to it (fresh listing)."""
        self.fs.invalidate_cache()
        root = self.path("").rstrip("/")
        return sorted(p[len(root) + 1 :] for p in self.fs.find(root))


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        yield Store("local", str(tmp_path), {}, fsspec.filesystem("file"))
    else:
        options = request.getfixturevalue("s3_storage_options")
        bucket = request.getfixturevalue("s3_bucket")
        yield Store("s3", f"s3://{bucket}", options, s3_filesystem(options))


def parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def selection_table(ids, id_type=None) -> pa.Table:
    n = len(ids)
    return pa.table(
        {
            "id": pa.array(ids, id_type or pa.int64()),
            "rank": pa.array(range(1, n + 1), pa.int64()),
            "strategy": pa.array(["badge"] * n),
            "score": pa.array([0.5, float("nan")] + [None] * (n - 2), pa.float64()),
        }
    )


# ------------------------------------------------------------------------------------------ export


def test_export_writes_three_parseable_files(store):
    sel = selection_table([17, 3, 42])
    uris = export_selection(
        sel, store.uri("round-0/export"), pool_uri="s3://data/pool", id_column="row_id", storage_options=store.options
    )
    assert set(uris) == set(EXPORT_FILES)
    assert store.all_files() == sorted(f"round-0/export/{n}" for n in EXPORT_FILES)  # no temp files left
    assert uris["selection.parquet"] == store.uri("round-0/export/selection.parquet")

    refs = ["s3://data/pool#row_id=17", "s3://data/pool#row_id=3", "s3://data/pool#row_id=42"]
    t = pq.read_table(io.BytesIO(store.get("round-0/export/selection.parquet")))
    assert t.column_names == ["id", "rank", "strategy", "score", "data_ref"]
    assert t.schema.field("id").type == pa.int64()
    assert t.column("id").to_pylist() == [17, 3, 42]
    assert t.column("rank").to_pylist() == [1, 2, 3]
    assert t.column("score").to_pylist() == [0.5, None, None]  # NaN is not a score
    assert t.column("data_ref").to_pylist() == refs

    rows = list(csv.DictReader(io.StringIO(store.get("round-0/export/selection.csv").decode())))
    assert [r["id"] for r in rows] == ["17", "3", "42"]
    assert [r["data_ref"] for r in rows] == refs
    assert pacsv.read_csv(io.BytesIO(store.get("round-0/export/selection.csv"))).column_names == t.column_names

    tasks = json.loads(store.get("round-0/export/label_studio_tasks.json"))
    assert isinstance(tasks, list) and len(tasks) == 3
    for task, i, r, ref in zip(tasks, [17, 3, 42], [1, 2, 3], refs):
        # Label Studio's import format: "data" holds the task variables; "meta" is kept as is.
        assert set(task) == {"data", "meta"}
        assert task["data"] == {"id": i, "rank": r, "ref": ref}
        assert task["meta"]["strategy"] == "badge" and task["meta"]["pool_uri"] == "s3://data/pool"
        assert all(isinstance(v, (int, str)) for v in task["data"].values())
    assert tasks[0]["meta"]["score"] == 0.5 and tasks[1]["meta"]["score"] is None


def test_export_ids_with_path_characters_do_not_become_file_names(store):
    ids = ["../../escape", "a/b/c", "..", "x.parquet", 'sp ace,"q"']
    refs = {i: f"https://img.example/{n}.png" for n, i in enumerate(ids)}
    uris = export_selection(
        selection_table(ids, pa.string()),
        store.uri("out"),
        data_reference=refs,
        pool_uri="ignored",
        id_column="id",
        storage_options=store.options,
    )
    assert sorted(uris) == sorted(EXPORT_FILES)
    assert store.all_files() == sorted(f"out/{n}" for n in EXPORT_FILES)  # nothing else, nowhere else
    t = pq.read_table(io.BytesIO(store.get("out/selection.parquet")))
    assert t.column("id").to_pylist() == ids
    assert t.column("data_ref").to_pylist() == [refs[i] for i in ids]
    assert [r["id"] for r in csv.DictReader(io.StringIO(store.get("out/selection.csv").decode()))] == ids
    tasks = json.loads(store.get("out/label_studio_tasks.json"))
    assert [tk["data"]["id"] for tk in tasks] == ids


def test_export_mapping_must_cover_every_id(tmp_path):
    with pytest.raises(ValueError, match=r"no entry for 1 selected id.*3"):
        export_selection(selection_table([1, 3]), str(tmp_path), data_reference={1: "x"}, pool_uri="p", id_column="id")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="no 'id' column"):
        export_selection(pa.table({"row": [1]}), str(tmp_path), pool_uri="p", id_column="id")


def test_label_studio_config_matches_the_tasks():
    cfg = label_studio_config(["cat", 'dog & "pup"'])
    assert '<Text name="ref" value="$ref"/>' in cfg
    assert '<Choices name="label" toName="ref" choice="single"' in cfg
    root = ElementTree.fromstring(cfg)  # well-formed XML, names escaped
    assert [c.get("value") for c in root.iter("Choice")] == ["cat", 'dog & "pup"']


# -------------------------------------------------------------------------------------------- read


def test_read_labels_parquet(store):
    t = pa.table(
        {"note": ["a", "b", "c", "d"], "id": ["12", "13", " 14 ", "x9"], "label": ["dog", "2", "bird", "wolf"]}
    )
    uri = store.put("labels/l.parquet", parquet_bytes(t))
    rows = read_labels(uri, storage_options=store.options, id_type="int", class_names=CLASSES)
    assert rows == [(12, 1), (13, 2), (14, 2), ("x9", "wolf")]  # unparseable values pass through
    t = pa.table({"id": pa.array([5, 6], pa.int64()), "label": pa.array([0, 2], pa.int32())})
    uri = store.put("labels/int.parquet", parquet_bytes(t))
    assert read_labels(uri, storage_options=store.options, id_type="str") == [("5", 0), ("6", 2)]
    assert read_labels(uri, storage_options=store.options, id_type="int") == [(5, 0), (6, 2)]


def test_read_labels_csv(store):
    text = 'id,label,annotator\n007,1,ann\n"a/b,c",cat,ann\n../x,"2",ann\n12,,ann\n'
    uri = store.put("labels/l.csv", text.encode())
    rows = read_labels(uri, storage_options=store.options, id_type="str", class_names=CLASSES)
    assert rows == [("007", 1), ("a/b,c", 0), ("../x", 2), ("12", "")]  # "007" stays a string id
    uri = store.put("labels/int.csv", b"\xef\xbb\xbfid,label\n12,1\n0013,-1\n")  # Excel's BOM
    assert read_labels(uri, storage_options=store.options, id_type="int") == [(12, 1), (13, -1)]


@pytest.mark.parametrize("ext", ["parquet", "csv"])
def test_read_labels_missing_columns_names_file_and_columns(tmp_path, ext):
    path = tmp_path / f"bad.{ext}"
    if ext == "parquet":
        path.write_bytes(parquet_bytes(pa.table({"id": [1], "class": [2]})))
    else:
        path.write_text("id,class\n1,2\n")
    with pytest.raises(LabelFileError, match=rf"bad\.{ext}: missing column\(s\) label; found: id, class"):
        read_labels(str(path), id_type="int")


def test_read_labels_unsupported_or_missing_file(tmp_path):
    (tmp_path / "labels.txt").write_text("1,2\n")
    with pytest.raises(LabelFileError, match=r"labels\.txt: unsupported extension '\.txt'.*\.parquet.*\.csv.*\.json"):
        read_labels(str(tmp_path / "labels.txt"), id_type="int")
    with pytest.raises(LabelFileError, match=r"labels file \S*nope.csv does not exist"):
        read_labels(str(tmp_path / "nope.csv"), id_type="int")
    (tmp_path / "folder.csv").mkdir()
    with pytest.raises(LabelFileError, match=r"labels file \S*folder.csv cannot be read: Is a directory"):
        read_labels(str(tmp_path / "folder.csv"), id_type="int")
    with pytest.raises(ValueError, match="id_type"):
        read_labels(str(tmp_path / "x.csv"), id_type="int64")


_region_ids = itertools.count()


def ls_result(choice, from_name="label", to_name="ref"):
    return {
        "id": f"Reg{next(_region_ids):07d}",
        "type": "choices",  # LS region ids: short random strings
        "value": {"choices": choice if isinstance(choice, list) else [choice]},
        "origin": "manual",
        "to_name": to_name,
        "from_name": from_name,
    }


def ls_annotation(ann_id, task_id, results, created, updated=None, cancelled=False):
    return {
        "id": ann_id,
        "completed_by": 1,
        "result": results,
        "was_cancelled": cancelled,
        "ground_truth": False,
        "created_at": created,
        "updated_at": updated or created,
        "draft_created_at": None,
        "lead_time": 3.2,
        "prediction": {},
        "result_count": 0,
        "unique_id": f"u-{ann_id}",
        "import_id": None,
        "last_action": None,
        "task": task_id,
        "project": 7,
        "updated_by": 1,
        "parent_prediction": None,
        "parent_annotation": None,
        "last_created_by": None,
    }


def ls_task(task_id, pool_id, rank, annotations, predictions=()):
    """One task of Label Studio's JSON export, for a task imported from label_studio_tasks.json."""
    return {
        "id": task_id,
        "annotations": annotations,
        "file_upload": "a1b2c3-label_studio_tasks.json",
        "drafts": [],
        "predictions": list(predictions),
        "data": {"id": pool_id, "rank": rank, "ref": f"s3://b/pool#id={pool_id}"},
        "meta": {"strategy": "badge", "score": 0.25, "pool_uri": "s3://b/pool", "id_column": "id"},
        "created_at": "2025-11-20T09:00:00.000000Z",
        "updated_at": "2025-11-21T10:00:00.000000Z",
        "inner_id": task_id - 1000,
        "total_annotations": len(annotations),
        "cancelled_annotations": 0,
        "total_predictions": len(predictions),
        "comment_count": 0,
        "unresolved_comment_count": 0,
        "last_comment_updated_at": None,
        "project": 7,
        "updated_by": 1,
        "comment_authors": [],
    }


def label_studio_export() -> list[dict]:
    return [
        # relabeled: the newer annotation (by updated_at, though listed first) wins
        ls_task(
            1001,
            17,
            1,
            [
                ls_annotation(2, 1001, [ls_result("bird")], "2025-11-21T10:05:00.1Z", "2025-11-21T11:00:00Z"),
                ls_annotation(1, 1001, [ls_result("cat")], "2025-11-21T10:00:00.5Z"),
            ],
        ),
        # the latest annotation was cancelled (skipped): the earlier one counts
        ls_task(
            1002,
            3,
            2,
            [
                ls_annotation(3, 1002, [ls_result("dog")], "2025-11-21T10:00:00Z"),
                ls_annotation(4, 1002, [], "2025-11-21T12:00:00Z", cancelled=True),
            ],
            predictions=[{"id": 9, "model_version": "m1", "score": 0.4, "result": [ls_result("cat")]}],
        ),
        ls_task(1003, 42, 3, []),  # not labeled yet: skipped
        ls_task(1004, 8, 4, [ls_annotation(5, 1004, [ls_result("cat")], "2025-11-21T10:00:00Z", cancelled=True)]),
        ls_task(1005, "9", 5, [ls_annotation(6, 1005, [ls_result("2")], "2025-11-21T10:00:00Z")]),
        ls_task(1006, 10, 6, [ls_annotation(7, 1006, [ls_result(["cat", "dog"])], "2025-11-21T10:00:00Z")]),
        ls_task(1007, 11, 7, [ls_annotation(8, 1007, [ls_result("wolf")], "2025-11-21T10:00:00Z")]),
    ]


def test_read_labels_label_studio_export(store):
    uri = store.put("ls/project-7-at-2025-11-21.json", json.dumps(label_studio_export(), indent=2).encode())
    rows = read_labels(uri, storage_options=store.options, id_type="int", class_names=CLASSES)
    assert rows == [(17, 2), (3, 1), (9, 2), (10, ["cat", "dog"]), (11, "wolf")]
    # without class names, names pass through (and validate_labels rejects them)
    assert read_labels(uri, storage_options=store.options, id_type="str")[:3] == [
        ("17", "bird"),
        ("3", "dog"),
        ("9", 2),
    ]


def test_read_labels_label_studio_several_controls(tmp_path):
    task = ls_task(
        1001,
        5,
        1,
        [ls_annotation(1, 1001, [ls_result("dog", "label"), ls_result("blurry", "quality")], "2025-11-21T10:00:00Z")],
    )
    path = tmp_path / "export.json"
    path.write_text(json.dumps([task]))
    with pytest.raises(LabelFileError, match=r"task #0 \(Label Studio id 1001\).*label, quality.*from_name"):
        read_labels(str(path), id_type="int", class_names=CLASSES)
    assert read_labels(str(path), id_type="int", class_names=CLASSES, from_name="label") == [(5, 1)]


@pytest.mark.parametrize(
    "content, match",
    [
        ({"tasks": []}, "list of tasks"),
        ([{"id": 1, "image": "x.png", "label": "cat"}], "no 'data' object"),  # JSON-MIN export
        ([{"id": 1, "data": {"image": "x.png"}, "annotations": []}], "data has no 'id' .*keys: image"),
        ([{"id": 1, "data": {"id": 5}}], "no 'annotations' list"),
    ],
)
def test_read_labels_not_a_label_studio_export(tmp_path, content, match):
    path = tmp_path / "e.json"
    path.write_text(json.dumps(content))
    with pytest.raises(LabelFileError, match=match):
        read_labels(str(path), id_type="int")
    path.write_text("{not json")
    with pytest.raises(LabelFileError, match="not valid JSON"):
        read_labels(str(path), id_type="int")


# ---------------------------------------------------------------------------------------- validate


def test_validate_every_reason():
    known = set(range(100))
    existing = {50: 1, 51: 2}
    rows = [
        (1, 0),
        (99999, 1),
        ("abc", 1),
        (None, 2),  # unknown ids
        (5, 1),
        (5, 2),
        (5, 1),  # conflict within the file: all 3 rows
        (6, "cat"),
        (7, 2.5),
        (8, ["cat", "dog"]),  # not integers
        (17, 12),
        (18, -1),  # out of range
        (2, 2),
        (2, 2),
        (2, 2),  # duplicates: first accepted
        (50, 1),  # already labeled, same label
        (51, 0),  # conflicts with the earlier record
        (3, 1),
    ]
    report = validate_labels(rows, known_ids=known, n_classes=3, existing=existing)
    assert report.accepted == [(1, 0), (2, 2), (3, 1)]
    assert report.counts == {
        "unknown_id": 3,
        "conflict": 3,
        "invalid_label": 3,
        "out_of_range": 2,
        "duplicate": 2,
        "conflict_existing": 1,
        "already_labeled": 1,
    }
    assert report.n_rows == len(rows) and report.n_rejected == 12
    assert report.examples["unknown_id"] == [(99999, 1), ("abc", 1), (None, 2)]
    assert report.examples["conflict"] == [(5, (1, 2))]
    assert report.examples["invalid_label"] == [(6, "cat"), (7, 2.5), (8, ["cat", "dog"])]
    assert report.examples["out_of_range"] == [(17, 12), (18, -1)]
    assert report.examples["conflict_existing"] == [(51, 0, 2)]
    assert report.examples["already_labeled"] == [(50, 1)]
    assert report.examples["duplicate"] == [(2, 2)]  # one example per id
    assert report.summary() == (
        "3 labels accepted; rejected: 3 unknown ids (99999, 'abc', None), 3 conflicting rows (id 5: 1 vs 2), "
        "3 non-integer labels (id 6: 'cat'; id 7: 2.5; id 8: ['cat', 'dog']), "
        "2 out-of-range labels (id 17: 12; id 18: -1), 1 conflict with an earlier label (id 51: 0, recorded 2); "
        "no-ops: 2 duplicates (2), 1 already labeled (50)"
    )


def test_validate_examples_are_capped_and_summary_says_so():
    rows = [(i, 0) for i in range(1000, 1012)] + [(1, 7), (2, 0)]
    report = validate_labels(rows, known_ids=set(range(10)), n_classes=3, existing={})
    assert report.counts["unknown_id"] == 12 and len(report.examples["unknown_id"]) == 5
    assert report.summary() == (
        "1 label accepted; rejected: 12 unknown ids (e.g. 1000, 1001, 1002, 1003, 1004, ...), "
        "1 out-of-range label (id 1: 7)"
    )
    assert IngestReport().summary() == "0 labels accepted; nothing rejected"
    assert set(REASONS) == set(IngestReport().counts)


def test_validate_known_ids_callable_is_asked_once_in_a_batch():
    calls = []

    def known(ids):
        calls.append(list(ids))
        return [i % 2 == 0 for i in ids]

    rows = [(np.int64(2), np.int64(0)), (3, 0), (2, 0), (4, 1)]  # numpy integers count as ints
    report = validate_labels(rows, known_ids=known, n_classes=2, existing={4: 1})
    assert calls == [[2, 3, 4]]
    assert report.accepted == [(2, 0)]
    assert report.counts["unknown_id"] == 1 and report.counts["duplicate"] == 1
    assert report.counts["already_labeled"] == 1
    with pytest.raises(ValueError, match="n_classes"):
        validate_labels([], known_ids=set(), n_classes=0, existing={})


def test_validate_string_pool_after_read(tmp_path):
    path = tmp_path / "l.csv"
    path.write_text("id,label\nrow-1,dog\nrow-2,bird\nrow-9,cat\n")
    rows = read_labels(str(path), id_type="str", class_names=CLASSES)
    report = validate_labels(rows, known_ids={"row-1", "row-2"}, n_classes=3, existing={"row-2": 2})
    assert report.accepted == [("row-1", 1)]
    assert report.summary() == "1 label accepted; rejected: 1 unknown id ('row-9'); no-ops: 1 already labeled ('row-2')"


# ----------------------------------------------------------------------------------------- records


def ingest(store, labels_uri, *, round_, known, source="labelers"):
    """The whole ingest path: read, validate against the records, append."""
    prefix = store.uri("workdir/labels")
    existing = load_label_records(prefix, storage_options=store.options)
    rows = read_labels(labels_uri, storage_options=store.options, id_type="int", class_names=CLASSES)
    report = validate_labels(rows, known_ids=known, n_classes=3, existing=existing)
    uri = append_label_records(prefix, report.accepted, source=source, round_=round_, storage_options=store.options)
    return report, uri


def test_records_are_append_only_and_reingest_is_a_noop(store):
    known = set(range(100))
    ls_uri = store.put("in/export.json", json.dumps(label_studio_export()).encode())
    report, first = ingest(store, ls_uri, round_=0, known=known)
    assert report.accepted == [(17, 2), (3, 1), (9, 2)]
    assert first is not None and first.startswith(store.uri("workdir/labels/"))
    name = first.rsplit("/", 1)[-1]
    assert re.fullmatch(r"\d{8}T\d{12}Z-[0-9a-f]{16}\.parquet", name)  # UTC timestamp + content hash, no ids
    first_bytes = store.get("workdir/labels/" + name)

    t = pq.read_table(io.BytesIO(first_bytes))
    assert t.column_names == ["id", "label", "round", "source", "ingested_at", "predicted"]
    assert t.column("id").to_pylist() == [17, 3, 9] and t.column("round").to_pylist() == [0, 0, 0]
    assert t.column("source").to_pylist() == ["labelers"] * 3
    assert load_label_records(store.uri("workdir/labels"), storage_options=store.options) == {17: 2, 3: 1, 9: 2}

    # Re-ingesting the same file: every row is a no-op (or rejected as before), no new file.
    again, uri = ingest(store, ls_uri, round_=0, known=known)
    assert uri is None and again.accepted == []
    assert again.counts["already_labeled"] == 3
    assert store.all_files() == sorted(["in/export.json", "workdir/labels/" + name])

    # A second round: new labels go to a second file; a relabel of 17 is rejected; file 1 untouched.
    csv_uri = store.put("in/round1.csv", b"id,label\n17,cat\n20,dog\n21,0\n3,dog\n")
    report, second = ingest(store, csv_uri, round_=1, known=known, source="csv")
    assert report.accepted == [(20, 1), (21, 0)]
    assert report.counts["conflict_existing"] == 1 and report.counts["already_labeled"] == 1
    assert second != first and second.rsplit("/", 1)[-1] > name  # name order = ingest order
    assert store.get("workdir/labels/" + name) == first_bytes
    assert [f for f in store.all_files() if f.startswith("workdir/")] == sorted(
        ["workdir/labels/" + name, "workdir/labels/" + second.rsplit("/", 1)[-1]]
    )
    assert load_label_records(store.uri("workdir/labels"), storage_options=store.options) == {
        17: 2,
        3: 1,
        9: 2,
        20: 1,
        21: 0,
    }


def test_load_records_missing_prefix_temp_files_and_earliest_wins(tmp_path):
    prefix = str(tmp_path / "labels")
    assert load_label_records(prefix) == {}
    assert append_label_records(prefix, [], source="x", round_=0) is None
    assert not (tmp_path / "labels").exists()
    a = append_label_records(prefix, [("r/1", 0), ("..", 1)], source="x", round_=0)
    (tmp_path / "labels" / ".zzz.parquet.tmp-123").write_bytes(b"half a file")  # an in-flight write
    b = append_label_records(prefix, [("r/1", 2), ("r/3", 1)], source="y", round_=1)  # bypasses validation
    assert a < b
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert load_label_records(prefix) == {"r/1": 0, "..": 1, "r/3": 1}
    assert len(caught) == 1 and "1 label(s) disagree" in str(caught[0].message)
    assert sorted(p.name for p in (tmp_path / "labels").iterdir() if not p.name.startswith(".")) == sorted(
        [a.rsplit("/", 1)[-1], b.rsplit("/", 1)[-1]]
    )
    with pytest.raises(ValueError, match="ints"):
        append_label_records(prefix, [(1, "cat")], source="x", round_=0)
    with pytest.raises(ValueError, match="repeat"):
        append_label_records(prefix, [(1, 0), (1, 0)], source="x", round_=0)


# ----------------------------------------------------------------------------------- record checkpoints


def _naive(store, prefix: str) -> dict:
    """The labels as every record file says them, earliest first: what a load must equal."""
    out: dict = {}
    for name in sorted(
        n for n in store.all_files() if re.fullmatch(rf"{prefix}/\d{{8}}T\d{{12}}Z-\w{{16}}\.parquet", n)
    ):
        t = pq.read_table(io.BytesIO(store.get(name)))
        for i, lab in zip(t.column("id").to_pylist(), t.column("label").to_pylist()):
            out.setdefault(i, lab)
    return out


def test_checkpoints_bound_what_a_load_reads_and_keep_every_record(store, monkeypatch):
    monkeypatch.setattr(labels_module, "CHECKPOINT_EVERY", 4)
    prefix = store.uri("work/labels")
    records = LabelRecords(prefix, store.options)
    assert records.load() == {} and records.objects_read == 1  # the pointer, absent
    for k in range(11):
        rows = [(10 * k + j, (k + j) % 3) for j in range(3)] + ([(0, 2)] if k == 5 else [])  # id 0 again, relabeled
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            LabelRecords(prefix, store.options).append(rows, source=f"batch {k}", round_=k)
            fresh = LabelRecords(prefix, store.options)
            assert fresh.load() == _naive(store, "work/labels")
        assert fresh.objects_read <= 4 + 2, (k, fresh.objects_read)
    files = store.all_files()
    assert len([f for f in files if re.fullmatch(r"work/labels/\d{8}T.*\.parquet", f)]) == 11  # every record kept
    assert len([f for f in files if f.startswith("work/labels/_checkpoints/")]) == 2  # the two newest
    pointer = json.loads(store.get("work/labels/_last_checkpoint.json"))
    assert pointer["rows"] == 8 * 3 + 1 and pointer["checkpoint"] == f"_checkpoints/{pointer['through']}"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert LabelRecords(prefix, store.options).load()[0] == 0  # the earlier record wins, and it says so
    assert ["1 label(s) disagree" in str(w.message) for w in caught] == [True]


def test_a_checkpoint_whose_pointer_was_never_written_changes_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(labels_module, "CHECKPOINT_EVERY", 3)
    prefix = str(tmp_path / "labels")
    for k in range(3):
        append_label_records(prefix, [(k, 1)], source="a", round_=0)
    pointer = (tmp_path / "labels" / "_last_checkpoint.json").read_bytes()
    real = labels_module.write_bytes_atomic

    def dies_before_the_pointer(uri, data, *args, **kwargs):
        if uri.endswith("_last_checkpoint.json"):
            raise OSError("killed")
        return real(uri, data, *args, **kwargs)

    monkeypatch.setattr(labels_module, "write_bytes_atomic", dies_before_the_pointer)
    for k in range(3, 5):
        append_label_records(prefix, [(k, 1)], source="b", round_=1)
    with pytest.raises(OSError, match="killed"):
        append_label_records(prefix, [(5, 1)], source="b", round_=1)  # the checkpoint is written, its pointer not
    assert (tmp_path / "labels" / "_last_checkpoint.json").read_bytes() == pointer
    assert load_label_records(prefix) == dict.fromkeys(range(6), 1)


def test_a_record_sorts_after_every_record_seen_even_from_a_lagging_clock(tmp_path):
    prefix = str(tmp_path / "labels")
    ahead = "21000101T000000000000Z-0123456789abcdef.parquet"  # written by a host whose clock runs ahead
    (tmp_path / "labels").mkdir()
    pq.write_table(pa.table({"id": [1], "label": [0]}), tmp_path / "labels" / ahead)
    uri = append_label_records(prefix, [(2, 1)], source="x", round_=0)
    assert uri.rsplit("/", 1)[-1] > ahead and uri.rsplit("/", 1)[-1].startswith("21000101T000000000001Z-")
    assert load_label_records(prefix) == {1: 0, 2: 1}
