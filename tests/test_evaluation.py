"""dist_al.experiments.report: the statistics against hand-computed values, and a tiny comparison end to end."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from dist_al.cli import main as cli_main
from dist_al.experiments.datasets import split, write_dataset
from dist_al.experiments.report import (
    Setting,
    auc,
    labels_to_target,
    load_setting,
    paired_t,
    penalty_matrix,
    setting_summary,
    t_critical,
)

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- statistics


def test_auc_is_the_trapezoid_area_over_the_label_range():
    # (0.5+0.7)/2 * 10 + (0.7+0.8)/2 * 20 = 6 + 15 = 21 over 30 labels
    assert auc([10, 20, 40], [0.5, 0.7, 0.8]) == pytest.approx(0.7)
    assert auc([10, 20], [0.6, 0.6]) == pytest.approx(0.6)


def test_labels_to_target_interpolates_at_the_first_crossing():
    n = [10, 20, 40]
    assert labels_to_target(n, [0.5, 0.7, 0.8], 0.75) == pytest.approx(30.0)  # halfway from 0.7 to 0.8
    assert labels_to_target(n, [0.5, 0.7, 0.8], 0.7) == pytest.approx(20.0)
    assert labels_to_target(n, [0.5, 0.7, 0.8], 0.4) == pytest.approx(10.0)  # already there at the start
    assert labels_to_target(n, [0.5, 0.7, 0.8], 0.9) is None
    # not monotone: the first crossing counts, not a later dip and recovery
    assert labels_to_target([10, 20, 30, 40], [0.5, 0.8, 0.6, 0.9], 0.7) == pytest.approx(10 + 10 * 0.2 / 0.3)


def test_paired_t_and_critical_value():
    assert paired_t([1.0, 2.0, 3.0]) == pytest.approx(2 / (1 / math.sqrt(3)))
    assert paired_t([0.0, 0.0, 0.0]) == 0.0
    assert paired_t([0.1, 0.1, 0.1]) == math.inf
    assert t_critical(4) == pytest.approx(2.776, abs=1e-3)  # the BADGE appendix: 5 seeds


def _setting(acc: dict[str, np.ndarray], labels=(10, 20, 30)) -> Setting:
    return Setting(
        "s",
        np.array(labels),
        {k: np.asarray(v, float) for k, v in acc.items()},
        {k: 0.0 for k in acc},
        {k: 0.0 for k in acc},
    )


def test_penalty_matrix_counts_only_significant_wins_weighted_by_label_counts():
    rng = np.random.default_rng(0)
    base = np.column_stack([np.full(5, 0.5), rng.uniform(0.6, 0.7, 5), rng.uniform(0.7, 0.8, 5)])
    a = base.copy()
    a[:, 1] += [0.05, 0.06, 0.04, 0.05, 0.07]  # t = 10.6 > 2.776: a beats b at 20 labels
    a[:, 2] += [0.01, 0.01, 0.01, 0.01, -0.01]  # t = 1.5: not significant at 30 labels
    c = base.copy()
    c[:, 2] -= [0.02, 0.03, 0.02, 0.025, 0.02]  # b and a beat c at 30 labels
    p = penalty_matrix([_setting({"a": a, "b": base, "c": c})], ["a", "b", "c"])
    # L = 2 label counts after the shared first one, so each win adds 1/2
    expected = np.array(
        [
            [0.0, 0.5, 1.0],  # a beats b at 20; beats c at 20 (c = b there) and at 30
            [0.0, 0.0, 0.5],  # b beats c at 30
            [0.0, 0.0, 0.0],
        ]
    )
    np.testing.assert_allclose(p, expected)
    # a second, identical setting doubles every entry: settings add up, each at most 1 per pair
    np.testing.assert_allclose(
        penalty_matrix([_setting({"a": a, "b": base, "c": c})] * 2, ["a", "b", "c"]), 2 * expected
    )


def test_summary_against_random_by_hand():
    random = np.array([[0.5, 0.6, 0.7], [0.5, 0.6, 0.7]])
    badge = np.array([[0.5, 0.7, 0.8], [0.5, 0.7, 0.8]])
    s = setting_summary(_setting({"random": random, "badge": badge}))
    # target: random's final mean 0.7, reached by random at 30 and by badge at 20 labels
    assert s["badge"]["target"] == pytest.approx(0.7)
    assert s["badge"]["labels"] == pytest.approx(20.0)
    assert s["badge"]["ratio"] == pytest.approx(20 / 30)
    assert s["random"]["ratio"] == pytest.approx(1.0)
    # AUC: random (0.55*10 + 0.65*10)/20 = 0.6, badge (0.6*10 + 0.75*10)/20 = 0.675
    assert s["badge"]["auc_diff"] == pytest.approx(0.075)
    assert s["badge"]["significant"]  # identical differences in both seeds: t is infinite


# --------------------------------------------------------------------------- data


def test_eval_data_split_is_stratified_disjoint_and_fixed(tmp_path):
    info = write_dataset(str(tmp_path), "digits")
    pool = pq.read_table(tmp_path / "digits" / "pool")
    test = pq.read_table(tmp_path / "digits" / "test")
    assert (info["pool"], info["test"]) == (pool.num_rows, test.num_rows) == (1297, 500)
    assert not set(pool.column("id").to_pylist()) & set(test.column("id").to_pylist())
    y = np.arange(100) % 4
    a, b = split(y, 20)
    np.testing.assert_array_equal(np.bincount(y[b]), [5, 5, 5, 5])
    np.testing.assert_array_equal(split(y, 20)[1], b)  # the same split every time


# --------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_tiny_comparison_end_to_end(ray_local, tmp_path):
    """2 strategies x 2 seeds x 2 rounds on digits through the CLI: the files exist and parse."""
    write_dataset(str(tmp_path / "data"), "digits")
    runs = []
    for budget in (5,):
        run = tmp_path / f"digits-b{budget}"
        rc = cli_main(
            [
                "simulate",
                "--config",
                str(ROOT / "configs" / "eval-digits.yaml"),
                "--no-progress",
                "--strategies",
                "random,badge",
                "--seeds",
                "2",
                "--set",
                f"pool.uri={tmp_path / 'data' / 'digits' / 'pool'}",
                "--set",
                f"eval.uri={tmp_path / 'data' / 'digits' / 'test'}",
                "--set",
                f"selection.budget={budget}",
                "--set",
                "simulation.rounds=2",
                "--set",
                "simulation.initial_labeled=10",
                "--set",
                "train.epochs=3",
                "--set",
                "cluster.cpus_per_worker=0.5",
                "--set",
                f"workdir={run}",
            ]
        )
        assert rc == 0
        runs.append(str(run))
    out = tmp_path / "report"
    assert cli_main(["evaluate", *runs, "--out", str(out)]) == 0
    for png in ("eval-curves-digits.png", "eval-penalty.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    tables = (out / "eval-tables.md").read_text()
    assert "## Penalty matrix" in tables and "| badge |" in tables
    with open(out / "eval-summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert {(r["setting"], r["strategy"]) for r in rows} == {("digits-b5", s) for s in ("random", "badge")}
    setting = load_setting(runs[0])
    assert setting.info["dataset"] == "digits" and setting.info["budget"] == 5
    assert setting.acc["badge"].shape == (2, 3)  # 2 seeds x (2 rounds + 1) label counts


def test_evaluate_names_a_missing_run(tmp_path, capsys):
    assert cli_main(["evaluate", str(tmp_path / "nope"), "--out", str(tmp_path)]) == 2
    assert "curve.csv does not exist" in capsys.readouterr().err
