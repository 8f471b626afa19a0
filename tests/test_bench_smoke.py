"""Smoke tests of `dist-al bench core --quick` (every row) and `dist-al bench distributed` (its options, one row).

Behaviour only: no timing assertions (the machines are shared and noisy).
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from dist_al.bench import __main__ as bench_cli
from dist_al.bench import core

ROW_TITLES = {
    "badge-bound": ["BADGE time per centre / one-pass bound"],
    "badge-dense": ["BADGE vs dense materialised"],
    "bait-step": ["BAIT forward step vs dense"],
    "bait-e2e": ["BAIT end to end: time", "BAIT end to end: peak memory"],
    "bait-candidates": ["BAIT candidates: objective vs exact", "BAIT candidates: objective vs exact (2x N)"],
    "bait-reduced": ["BAIT reduced: time", "BAIT reduced: peak memory", "BAIT reduced: objective quality"],
}


def _table_rows(out: str) -> list[list[str]]:
    lines = [line for line in out.splitlines() if line.startswith("| ")]
    return [[c.strip() for c in line.strip("|").split(" | ")] for line in lines[1:]]  # without the header


@pytest.mark.subprocess  # the bench runs its fresh-process rows as child programs
def test_quick_run_prints_every_row(capsys):
    rc = core.main(["--quick", "--repeats", "1"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert out.startswith("command: python -m dist_al.bench core --quick --repeats 1\n")
    assert "torch " + torch.__version__ in out and "torch threads" in out
    assert "| benchmark | setting | measured | ratio | goal | met? |" in out
    rows = _table_rows(out)
    assert all(len(r) == 6 for r in rows), rows
    names = [r[0] for r in rows]
    for bench, titles in ROW_TITLES.items():
        # a row whose library piece is still missing is one "unavailable" row under the bench's name
        if bench in names:
            row = rows[names.index(bench)]
            assert row[2].startswith("unavailable: "), row
            continue
        for title in titles:
            hits = [r for r in rows if r[0] == title]
            assert len(hits) == 1, (title, names)
            measured, met = hits[0][2], hits[0][5]
            assert not measured.startswith("error"), hits[0]
            assert measured.startswith("unavailable: ") or met in ("yes", "NO", "n/a"), hits[0]
    assert "error:" not in out
    assert re.search(r"total wall time: [0-9.]+ s", out)


def test_only_and_dispatch(capsys):
    assert bench_cli.main(["core", "--quick", "--only", "badge-dense"]) == 0
    rows = _table_rows(capsys.readouterr().out)
    assert [r[0] for r in rows] == ["BADGE vs dense materialised"]
    assert rows[0][2].startswith("unavailable: ") or "first pick" in rows[0][2]


@pytest.mark.parametrize(
    "argv",
    [["--only", "nope"], ["--scale", "0"], ["--device", "tpu"], ["--top-classes", "1"], ["--repeats", "0"]],
)
def test_bad_arguments_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as e:
        core.main(argv)
    assert e.value.code == 2
    assert "error" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--only", "nope,x"], "--only: unknown row(s) nope, x; choose from "),
        (["--device", "meta"], "--device must be cpu or cuda, got 'meta'"),
    ],
)
def test_both_benchmarks_take_the_same_options(argv, message, capsys):
    for suite in ("core", "distributed"):
        with pytest.raises(SystemExit) as e:
            bench_cli.main([suite, *argv])
        assert e.value.code == 2
        assert f"dist-al bench {suite}: error: {message}" in capsys.readouterr().err


@pytest.mark.subprocess  # the bench runs its fresh-process rows as child programs
def test_distributed_quick_gather_row(capsys):
    assert bench_cli.main(["distributed", "--quick", "--only", "gather"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("command: dist-al bench distributed --quick --only gather\n")
    [row] = _table_rows(out)  # name, measured, ratio, goal, met
    assert row[0].startswith("gather 250 labeled rows for training from recorded rows / one full pass")
    assert "same rows: True" in row[1] and row[4] in ("yes", "NO")


def test_image_row_measures_the_pass_against_decoding_and_the_forward(tmp_path):
    from dist_al.bench.distributed import _make_image_pool, bench_images

    _make_image_pool(str(tmp_path / "pool"), 24, str(tmp_path / "files"))
    rows = bench_images(str(tmp_path / "pool"), torch.device("cpu"), [1, 2], repeats=1)
    assert [r["name"].split(", ")[-2] for r in rows] == ["1 decode thread(s)", "2 decode thread(s)"]
    assert rows[0]["name"].startswith("image embedding pass / slower of decoding alone and forward alone (N=24 JPEGs")
    assert all(r["ratio"] > 0 and "decoding alone" in r["figure"] and r["goal"] == ">= 0.8" for r in rows)


@pytest.mark.subprocess  # the bench runs its fresh-process rows as child programs
def test_image_row_with_device_cuda_runs_the_model_there(monkeypatch, capsys):
    """`--device cuda` is accepted where torch sees a GPU, and the image row's model and batches go to it: the
    Embedder is built for cuda and the timings wait on cuda. Without a GPU here the Embedder records the device it
    is given and runs on the CPU, and the synchronisation is recorded instead of called."""
    from dist_al.bench import distributed
    from dist_al.models.embedder import Embedder

    devices, synced = [], []

    class RecordingEmbedder(Embedder):
        def __init__(self, model, classifier=None, device="cpu", autocast=None):
            devices.append(torch.device(device))
            super().__init__(model, classifier, "cpu", autocast)

    make_pool = distributed._make_image_pool
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(distributed, "Embedder", RecordingEmbedder)
    monkeypatch.setattr(distributed, "_sync", synced.append)
    monkeypatch.setattr(distributed, "_make_image_pool", lambda uri, rows, folder: make_pool(uri, 24, folder))
    assert bench_cli.main(["distributed", "--quick", "--only", "images", "--device", "cuda"]) == 0
    out = capsys.readouterr().out
    assert "device cuda" in out.splitlines()[1]
    rows = _table_rows(out)
    assert [r[0].split(", ")[-2:] for r in rows] == [["1 decode thread(s)", "cuda)"], ["2 decode thread(s)", "cuda)"]]
    assert devices == [torch.device("cuda")]
    assert synced and set(synced) == {torch.device("cuda")}


def test_unknown_benchmark(capsys):
    assert bench_cli.main(["nope"]) == 2
    assert "unknown benchmark" in capsys.readouterr().err


def test_synthetic_pool_is_a_valid_non_degenerate_pool():
    probs, feats = core.make_pool(3000, 10, 16, seed=1)
    assert probs.shape == (3000, 10) and feats.shape == (3000, 16)
    assert probs.dtype == torch.float32 and feats.dtype == torch.float32
    assert torch.allclose(probs.sum(1), torch.ones(3000), atol=1e-5)
    top = probs.max(1).values
    assert 0.6 < float(top.mean()) < 0.8  # neither one-hot nor uniform
    assert float(top.min()) < 0.5 < float(top.max())
    again, _ = core.make_pool(3000, 10, 16, seed=1)
    assert torch.equal(probs, again)


def test_missing_pieces_print_unavailable_rows(monkeypatch, capsys):
    def missing(module, attr=None):
        raise core.Unavailable(f"{module}.{attr} does not exist yet")

    monkeypatch.setattr(core, "_need", missing)
    assert core.main(["--quick", "--only", "badge-dense,bait-step"]) == 0
    rows = _table_rows(capsys.readouterr().out)
    assert [r[0] for r in rows] == ["badge-dense", "bait-step"]
    assert all(r[2].startswith("unavailable: dist_al.testing.oracles.") for r in rows), rows


def test_full_select_id_check_recomputes_p_h_and_catches_other_ids(tmp_path):
    """The full row's id check: (p, h) embedded here as the ShardWorkers embed them (the same as one pass of the
    model over the pool), single-process BADGE on them, and a selection whose ids differ anywhere fails it."""
    from dist_al.bench.distributed import D, K, _model_config, check_ids, embed_pool
    from dist_al.core import select
    from dist_al.data.synthetic import gaussian_mixture
    from dist_al.data.writer import write_pool
    from dist_al.models.build import build_model
    from dist_al.models.embedder import Embedder

    x, y = gaussian_mixture(600, K, D, seed=2)
    ids = np.arange(1000, 1600)
    write_pool(str(tmp_path / "pool"), ids, x.numpy(), y.numpy(), rows_per_group=128)
    embedded = embed_pool(str(tmp_path / "pool"), _model_config(hidden=D), 2)
    assert embedded.ids.tolist() == ids.tolist() and len(embedded.stages) == 2
    p, h = Embedder(build_model(_model_config(hidden=D), seed=0))(x)
    assert torch.equal(embedded.probs, p) and torch.equal(embedded.feats, h)
    picked = ids[select("badge", p, h, 30, seed=0)]

    assert check_ids(picked, embedded, 30, None)["met"]
    other = picked.copy()
    other[[11, 12]] = other[[12, 11]]
    row = check_ids(other, embedded, 30, None)
    assert not row["met"] and "same ids: False (first difference at rank 12)" in row["figure"]
    row = check_ids(other, embedded, 30, 11)  # the first 11 picks agree
    assert row["met"] and "the first 11 of 30 picks" in row["name"]
    assert not check_ids(picked[:29], embedded, 30, None)["met"]


@pytest.mark.slow
@pytest.mark.cluster
@pytest.mark.subprocess
def test_distributed_full_row_runs_make_pool_and_select_and_checks_ids(capsys):
    assert bench_cli.main(["distributed", "--quick", "--only", "full", "--rows", "20000", "--check-centres", "40"]) == 0
    rows = _table_rows(capsys.readouterr().out)
    assert [r[0].split(" (")[0] for r in rows] == [
        "`dist-al make-pool --synthetic`",
        "full `dist-al select`",
        "where the select's time goes",
        "ids of the full select / single-process BADGE on the same",
    ]
    assert "PSS summed over all processes" in rows[1][1] and rows[1][4] in ("yes", "NO")
    assert "s forward" in rows[2][1] and "ms per centre" in rows[2][1]
    assert "the first 40 of 100 picks" in rows[3][0] and rows[3][1].startswith("same ids: True") and rows[3][4] == "yes"
