"""Learning-curve plots: accuracy against the number of labels, one line per strategy.

Drawn on matplotlib's Agg canvas (no display, no pyplot global state), returned
as PNG bytes so callers write them atomically wherever the workdir lives.
"""

from __future__ import annotations

import io
import math
from collections import defaultdict

import numpy as np

__all__ = ["curve_stats", "plot_curve"]

# Fixed colours, so a strategy looks the same in every plot; baselines dashed.
_COLOURS = {"badge": "#1f77b4", "bait": "#d62728", "badge-scalable": "#17becf", "coreset": "#9467bd",
            "entropy": "#ff7f0e", "margin": "#2ca02c", "confidence": "#8c564b", "random": "#555555"}
_BASELINES = {"random"}


def curve_stats(records: list[dict]) -> dict[str, list[tuple[int, float, float, int]]]:
    """strategy -> [(labeled, mean accuracy, standard error, seeds)] sorted by labeled, strategies in first-seen order.

    The standard error is std (ddof=1) / sqrt(seeds); 0 with one seed.
    """
    grouped: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for rec in records:
        grouped[rec["strategy"]][int(rec["labeled"])].append(float(rec["accuracy"]))
    out = {}
    for strategy, by_n in grouped.items():
        rows = []
        for n in sorted(by_n):
            acc = np.asarray(by_n[n])
            se = float(acc.std(ddof=1) / math.sqrt(len(acc))) if len(acc) > 1 else 0.0
            rows.append((n, float(acc.mean()), se, len(acc)))
        out[strategy] = rows
    return out


def plot_curve(records: list[dict], *, title: str = "Active learning: test accuracy vs labels",
               subtitle: str | None = None, dpi: int = 120) -> bytes:
    """A PNG (bytes) of mean accuracy vs labels per strategy, with a +-1 s.e. band where there are 2+ seeds."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    stats = curve_stats(records)
    fig = Figure(figsize=(7.5, 5.0), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    spare = iter(c for c in ("#e377c2", "#bcbd22", "#7f7f7f", "#aec7e8") if c not in _COLOURS.values())
    for strategy, rows in stats.items():
        n = np.array([r[0] for r in rows])
        mean = np.array([r[1] for r in rows])
        se = np.array([r[2] for r in rows])
        colour = _COLOURS.get(strategy) or next(spare, None)
        seeds = max(r[3] for r in rows)
        style = "--" if strategy in _BASELINES else "-"
        line, = ax.plot(n, mean, style, marker="o", markersize=4, linewidth=2, color=colour, label=strategy)
        if seeds > 1:
            ax.fill_between(n, mean - se, mean + se, color=line.get_color(), alpha=0.18, linewidth=0)
    ax.set_xlabel("number of labeled samples")
    ax.set_ylabel("test accuracy")
    if subtitle:
        fig.suptitle(title, fontsize=13, y=0.98)
        ax.set_title(subtitle, fontsize=9, color="#444444")
    else:
        ax.set_title(title, fontsize=13)
    ax.grid(True, alpha=0.3)
    ax.legend(title="strategy", loc="lower right", frameon=True)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
