"""Smoke tests of `dist-al bench core --quick` (every row) and `dist-al bench distributed` (its options, one row).

Behaviour only: no timing assertions (the machines are shared and noisy).
"""

from __future__ import annotations

import re

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


@pytest.mark.slow
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


@pytest.mark.slow
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
