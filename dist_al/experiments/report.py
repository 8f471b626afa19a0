"""`dist-al evaluate`: statistics over `dist-al simulate` runs, for docs/EVALUATION.md.

A *setting* is one simulate run directory (one data set, model, batch size).
For each setting and strategy, from its curve.csv:

* **AUC**: the area under the accuracy-vs-labels curve by the trapezoid rule,
  divided by the label range, i.e. the mean accuracy over the labels bought
  (``auc``).  It is computed per seed; the difference to random is paired by
  seed (same seed = same initial labeled rows) and reported as mean +- s.e.
  with a two-sided paired t-test.
* **labels to target**: the target is the random strategy's mean accuracy at
  the setting's largest label count (a rule fixed in advance, nothing tuned);
  the labels a strategy needs are where its mean curve first reaches the target,
  linearly interpolated between the last point below and the first point at or
  above it (``labels_to_target``); None when it never does.  Reported relative
  to random's (< 1: fewer labels than random).
* **penalty matrix** (Ash et al. 2020, BADGE, appendix): for every setting,
  every label count after the shared initial one and every pair (i, j), a
  two-sided paired t-test over seeds of acc_i - acc_j at alpha 0.05; when
  t > t_crit, P[i, j] += 1 / L with L the number of those label counts in the
  setting, so one setting adds at most 1 to a cell (``penalty_matrix``).
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dist_al.core.errors import UserError
from dist_al.data.storage import writable

__all__ = [
    "Setting",
    "auc",
    "evaluate_command",
    "labels_to_target",
    "load_setting",
    "paired_t",
    "penalty_matrix",
    "t_critical",
    "write_report",
]

ALPHA = 0.05
#: Plot and table order: the baselines first, then the gradient-embedding strategies.
ORDER = ["random", "entropy", "margin", "confidence", "coreset", "badge", "badge-scalable", "bait"]


@dataclass
class Setting:
    """One simulate run: acc[strategy] is a (seeds, label counts) array over ``labels``."""

    name: str
    labels: np.ndarray
    acc: dict[str, np.ndarray]
    select_seconds: dict[str, float]
    embed_seconds: dict[str, float]
    info: dict = field(default_factory=dict)

    @property
    def strategies(self) -> list[str]:
        return sorted(self.acc, key=lambda s: (ORDER.index(s) if s in ORDER else len(ORDER), s))


def load_setting(run_dir: str) -> Setting:
    """Reads {run_dir}/simulation/curve.csv (and run.json for the data set, batch size and warm start)."""
    sim = os.path.join(run_dir, "simulation")
    path = os.path.join(sim, "curve.csv")
    if not os.path.isfile(path):
        raise UserError(f"{path} does not exist: run `dist-al simulate` with workdir={run_dir} first")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise UserError(f"{path} has no rows")
    labels = np.array(sorted({int(r["labeled"]) for r in rows}))
    seeds = sorted({int(r["seed"]) for r in rows})
    acc, sel, emb = {}, {}, {}
    for strategy in {r["strategy"] for r in rows}:
        mine = [r for r in rows if r["strategy"] == strategy]
        a = np.full((len(seeds), len(labels)), np.nan)
        for r in mine:
            a[seeds.index(int(r["seed"])), np.searchsorted(labels, int(r["labeled"]))] = float(r["accuracy"])
        if np.isnan(a).any():
            raise UserError(f"{path}: strategy {strategy} lacks some (seed, label count) points")
        acc[strategy] = a
        sel[strategy] = float(np.mean([float(r["select_seconds"]) for r in mine if r["select_seconds"]] or [np.nan]))
        emb[strategy] = float(np.mean([float(r["embed_seconds"]) for r in mine if r["embed_seconds"]] or [np.nan]))
    info: dict[str, Any] = {"seeds": len(seeds)}
    run_json = os.path.join(sim, "run.json")
    if os.path.isfile(run_json):
        with open(run_json) as f:
            run = json.load(f)
        pool_uri = run["pool"]["uri"].rstrip("/")
        info.update(
            dataset=os.path.basename(os.path.dirname(pool_uri)) or pool_uri,
            budget=run["selection"]["budget"],
            warm_start=run["train"]["warm_start"],
            initial=run["simulation"]["initial_labeled"],
            model=f"{run['model']['factory'].split(':')[-1]} {run['model']['kwargs']}",
        )
    return Setting(os.path.basename(os.path.normpath(run_dir)), labels, acc, sel, emb, info)


# --------------------------------------------------------------------------- statistics


def auc(labels, acc) -> float:
    """Trapezoid area under acc(labels) divided by the label range: the curve's mean accuracy."""
    n, a = np.asarray(labels, dtype=float), np.asarray(acc, dtype=float)
    if len(n) < 2:
        return float(a[0])
    return float(np.sum((a[1:] + a[:-1]) / 2 * np.diff(n)) / (n[-1] - n[0]))


def labels_to_target(labels, acc, target: float) -> float | None:
    """Labels where the curve first reaches ``target`` (linear between the neighbouring points); None if never."""
    n, a = np.asarray(labels, dtype=float), np.asarray(acc, dtype=float)
    hit = np.flatnonzero(a >= target)
    if len(hit) == 0:
        return None
    k = int(hit[0])
    if k == 0:
        return float(n[0])
    return float(n[k - 1] + (target - a[k - 1]) / (a[k] - a[k - 1]) * (n[k] - n[k - 1]))


def t_critical(df: int, alpha: float = ALPHA) -> float:
    """Two-sided critical value of Student's t (df=4: 2.776)."""
    from scipy import stats

    return float(stats.t.ppf(1 - alpha / 2, df))


def paired_t(diff) -> float:
    """The paired t statistic mean / (sd / sqrt(n)); +-inf for equal nonzero differences, 0 for all zero."""
    d = np.asarray(diff, dtype=float)
    mean, sd = d.mean(), d.std(ddof=1)
    if np.ptp(d) <= 1e-12:  # equal differences (up to float rounding of accuracies): no spread
        return 0.0 if mean == 0 else math.copysign(math.inf, mean)
    return float(mean / (sd / math.sqrt(len(d))))


def penalty_matrix(settings: list[Setting], strategies: list[str], alpha: float = ALPHA) -> np.ndarray:
    """P[i, j]: settings-weighted count of label counts where i beats j significantly (see module doc)."""
    k = len(strategies)
    p = np.zeros((k, k))
    for s in settings:
        if not all(name in s.acc for name in strategies):
            continue
        # the first label count is the shared initial model: every strategy has the same accuracy there
        cols = range(1, len(s.labels)) if len(s.labels) > 1 else range(1)
        n_seeds = s.acc[strategies[0]].shape[0]
        if n_seeds < 2:
            continue
        crit = t_critical(n_seeds - 1, alpha)
        for c in cols:
            for i, a in enumerate(strategies):
                for j, b in enumerate(strategies):
                    if i != j and paired_t(s.acc[a][:, c] - s.acc[b][:, c]) > crit:
                        p[i, j] += 1 / len(cols)
    return p


def setting_summary(s: Setting) -> dict[str, dict]:
    """strategy -> auc, auc_diff (vs random, paired mean), auc_se, auc_t, significant, labels, ratio, select_s."""
    per_seed = {name: np.array([auc(s.labels, row) for row in s.acc[name]]) for name in s.strategies}
    out: dict[str, dict[str, Any]] = {
        name: {
            "auc": float(per_seed[name].mean()),
            "auc_se": _se(per_seed[name]),
            "select_s": s.select_seconds[name],
            "embed_s": s.embed_seconds[name],
            "final": float(s.acc[name].mean(0)[-1]),
            "final_se": _se(s.acc[name][:, -1]),
        }
        for name in s.strategies
    }
    base = s.acc.get("random")
    if base is None:
        return out
    target = float(base.mean(0)[-1])
    base_auc = np.array([auc(s.labels, row) for row in base])
    base_n = labels_to_target(s.labels, base.mean(0), target)
    for name, row in out.items():
        d = per_seed[name] - base_auc
        t = paired_t(d) if len(d) > 1 else 0.0
        crit = t_critical(len(d) - 1) if len(d) > 1 else math.inf
        n = labels_to_target(s.labels, s.acc[name].mean(0), target)
        row.update(
            auc_diff=float(d.mean()),
            auc_diff_se=_se(d),
            auc_t=t,
            significant=abs(t) > crit,
            target=target,
            labels=n,
            ratio=None if n is None or not base_n else n / base_n,
        )
    return out


def _se(x) -> float:
    x = np.asarray(x, dtype=float)
    return float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else 0.0


# --------------------------------------------------------------------------- report


def _title(s: Setting) -> str:
    i = s.info
    if "dataset" not in i:
        return s.name
    return (
        f"{i['dataset']}, {'warm-started' if i['warm_start'] else 'from scratch'}, "
        f"batch {i['budget']} (+{i['initial']} initial)"
    )


def _fmt_ratio(row: dict) -> str:
    if row.get("labels") is None:
        return "not reached"
    return f"{row['labels']:.0f} ({row['ratio']:.2f}x)" if row.get("ratio") is not None else f"{row['labels']:.0f}"


def setting_table(s: Setting) -> str:
    """Markdown: one row per strategy with AUC, its paired difference to random, labels to target, timings."""
    summary = setting_summary(s)
    target = next(iter(summary.values())).get("target")
    lines = [
        f"**{_title(s)}** (`{s.name}`; {s.info.get('seeds', '?')} seeds; labels {s.labels[0]}-{s.labels[-1]}; "
        + (f"target = random's final mean accuracy {target:.3f})" if target is not None else "no random run)"),
        "",
        "| strategy | final acc | AUC | AUC - random (pts) | labels to target (x random) | select s/round |"
        " embed s/round |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in summary.items():
        diff = (
            ""
            if "auc_diff" not in row or name == "random"
            else (
                f"{100 * row['auc_diff']:+.1f} ± {100 * row['auc_diff_se']:.1f}" + (" *" if row["significant"] else "")
            )
        )
        lines.append(
            f"| {name} | {row['final']:.3f} ± {row['final_se']:.3f} | {row['auc']:.3f} | {diff} | "
            f"{_fmt_ratio(row) if 'target' in row else ''} | {row['select_s']:.3f} | {row['embed_s']:.3f} |"
        )
    return "\n".join(lines)


def headline_table(settings: list[Setting], names=("badge", "bait")) -> str:
    """Markdown: per setting, AUC - random and the label ratio for the named strategies."""
    head = "| setting |" + "".join(f" {n}: AUC - random (pts) | {n}: labels vs random |" for n in names)
    lines = [head, "|---|" + "---:|---:|" * len(names)]
    for s in settings:
        summary = setting_summary(s)
        cells = ""
        for n in names:
            row = summary.get(n)
            if row is None or "auc_diff" not in row:
                cells += " | |"
                continue
            cells += (
                f" {100 * row['auc_diff']:+.1f} ± {100 * row['auc_diff_se']:.1f}"
                f"{' *' if row['significant'] else ''} | {_fmt_ratio(row)} |"
            )
        lines.append(f"| {_title(s)} |{cells}")
    return "\n".join(lines)


def time_table(settings: list[Setting]) -> str:
    """Markdown: mean selection seconds per round, strategy x setting."""
    strategies = [n for n in ORDER if any(n in s.acc for s in settings)]
    lines = ["| strategy |" + "".join(f" {s.name} |" for s in settings), "|---|" + "---:|" * len(settings)]
    for n in strategies:
        lines.append(f"| {n} |" + "".join(f" {s.select_seconds[n]:.3f} |" if n in s.acc else " |" for s in settings))
    return "\n".join(lines)


def write_report(run_dirs: list[str], out: str) -> list[str]:
    """Writes the figures and tables for these runs into ``out``; returns the paths written."""
    from dist_al.experiments.plots import plot_curve_panels, plot_penalty

    settings = sorted(
        (load_setting(d) for d in run_dirs),
        key=lambda s: (s.info.get("dataset", s.name), s.info.get("warm_start", False), s.info.get("budget", 0), s.name),
    )
    with writable(out):
        os.makedirs(out, exist_ok=True)
    written = []
    by_dataset: dict[str, list[Setting]] = {}
    for s in settings:
        by_dataset.setdefault(s.info.get("dataset", s.name), []).append(s)
    for dataset, group in by_dataset.items():
        panels = [(_title(s), s.labels, {n: s.acc[n] for n in s.strategies}) for s in group]
        path = os.path.join(out, f"eval-curves-{dataset}.png")
        with open(path, "wb") as f:
            f.write(plot_curve_panels(panels, title=f"{dataset}: test accuracy vs labels (mean ± 1 s.e.)"))
        written.append(path)
    strategies = [n for n in ORDER if all(n in s.acc for s in settings)]
    p = penalty_matrix(settings, strategies)
    path = os.path.join(out, "eval-penalty.png")
    with open(path, "wb") as f:
        f.write(plot_penalty(p, strategies, n_settings=len(settings)))
    written.append(path)
    md = [
        "<!-- written by `dist-al evaluate`; do not edit by hand -->",
        "",
        "## Headline: BADGE and BAIT against random",
        "",
        "AUC - random: paired over seeds, mean ± s.e. in accuracy points (* : two-sided paired t-test, p < 0.05). "
        "Labels vs random: labels to reach random's final mean accuracy, and that over random's.",
        "",
        headline_table(settings),
        "",
        "## Penalty matrix",
        "",
        f"P[i, j] (row i beats column j), summed over {len(settings)} settings; each setting adds at most 1.",
        "",
        "| beats → |" + "".join(f" {n} |" for n in strategies) + " row sum |",
        "|---|" + "---:|" * (len(strategies) + 1),
    ]
    for i, n in enumerate(strategies):
        md.append(f"| {n} |" + "".join(f" {v:.2f} |" for v in p[i]) + f" {p[i].sum():.2f} |")
    md.append("| column max |" + "".join(f" {v:.2f} |" for v in p.max(0)) + " |")
    md += ["", "## Selection seconds per round", "", time_table(settings), "", "## Every setting", ""]
    for s in settings:
        md += [setting_table(s), ""]
    path = os.path.join(out, "eval-tables.md")
    with open(path, "w") as f:
        f.write("\n".join(md))
    written.append(path)
    path = os.path.join(out, "eval-summary.csv")
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        cols = [
            "auc",
            "auc_se",
            "auc_diff",
            "auc_diff_se",
            "auc_t",
            "significant",
            "final",
            "final_se",
            "target",
            "labels",
            "ratio",
            "select_s",
            "embed_s",
        ]
        w.writerow(["setting", "strategy", *cols])
        for s in settings:
            for n, row in setting_summary(s).items():
                w.writerow([s.name, n, *("" if row.get(c) is None else _csv(row[c]) for c in cols)])
    written.append(path)
    return written


def _csv(v):
    return f"{v:.6g}" if isinstance(v, float) else v


def evaluate_command(args) -> int:
    """`dist-al evaluate RUN_DIR... --out DIR`."""
    for path in write_report(args.run_dirs, args.out):
        print(path)
    return 0
