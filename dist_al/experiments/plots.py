"""Learning-curve plots: accuracy against the number of labels, one line per strategy.

Drawn on matplotlib's Agg canvas (no display, no pyplot global state), returned
as PNG bytes so callers write them atomically wherever the workdir lives.
"""

from __future__ import annotations

import io
import math
from collections import defaultdict

import numpy as np

__all__ = ["curve_stats", "plot_curve", "plot_curve_panels", "plot_penalty"]

# Fixed colours, so a strategy looks the same in every plot; baselines dashed.
_COLOURS = {
    "badge": "#1f77b4",
    "bait": "#d62728",
    "badge-scalable": "#17becf",
    "coreset": "#9467bd",
    "entropy": "#ff7f0e",
    "margin": "#2ca02c",
    "confidence": "#8c564b",
    "random": "#555555",
}
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


def plot_curve(
    records: list[dict],
    *,
    title: str = "Active learning: test accuracy vs labels",
    subtitle: str | None = None,
    dpi: int = 120,
) -> bytes:
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
        (line,) = ax.plot(n, mean, style, marker="o", markersize=4, linewidth=2, color=colour, label=strategy)
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


def plot_curve_panels(panels, *, title: str, dpi: int = 72) -> bytes:
    """A PNG of several settings side by side: panels are (title, labels, {strategy: (seeds, labels) accuracy})."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = min(2, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(6.2 * cols, 4.2 * rows), dpi=dpi)
    FigureCanvasAgg(fig)
    for k, (name, labels, acc) in enumerate(panels):
        ax = fig.add_subplot(rows, cols, k + 1)
        for strategy, a in acc.items():
            a = np.asarray(a, dtype=float)
            mean = a.mean(0)
            se = a.std(0, ddof=1) / math.sqrt(len(a)) if len(a) > 1 else np.zeros_like(mean)
            style = "--" if strategy in _BASELINES else "-"
            (line,) = ax.plot(
                labels,
                mean,
                style,
                marker="o" if len(labels) < 8 else None,
                markersize=3,
                linewidth=1.5,
                color=_COLOURS.get(strategy),
                label=strategy,
            )
            ax.fill_between(labels, mean - se, mean + se, color=line.get_color(), alpha=0.15, linewidth=0)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("number of labeled samples")
        ax.set_ylabel("test accuracy")
        ax.grid(True, alpha=0.3)
        if k == 0:
            ax.legend(fontsize=8, loc="lower right")
    fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def plot_penalty(matrix, strategies: list[str], *, n_settings: int, dpi: int = 100) -> bytes:
    """The BADGE paper's pairwise penalty heatmap: P[i, j] = how often row i beats column j significantly,
    with the column-wise max ("how often j is beaten") as an extra row and the row sums in the row labels."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    p = np.asarray(matrix, dtype=float)
    k = len(strategies)
    shown = np.vstack([p, p.max(0, initial=0)])
    fig = Figure(figsize=(1.0 * k + 3, 0.8 * k + 2), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    im = ax.imshow(shown, cmap="viridis", vmin=0, vmax=max(float(shown.max()), 1.0), aspect="auto")
    for i in range(k + 1):
        for j in range(k):
            v = shown[i, j]
            ax.text(
                j,
                i,
                f"{v:.2f}",
                ha="center",
                va="center",
                fontsize=8,
                color="black" if v > 0.6 * shown.max() else "white",
            )
    ax.axhline(k - 0.5, color="white", linewidth=3)
    ax.set_xticks(range(k), strategies, rotation=40, ha="right")
    ax.set_yticks(range(k + 1), [f"{s} (Σ {p[i].sum():.2f})" for i, s in enumerate(strategies)] + ["column max"])
    ax.set_xlabel("is beaten: strategy j")
    ax.set_ylabel("beats: strategy i (row sum)")
    ax.set_title(
        f"Pairwise penalty matrix over {n_settings} settings\n"
        "(paired t-test over seeds, p < 0.05, each setting adds at most 1)",
        fontsize=10,
    )
    fig.colorbar(im, ax=ax, fraction=0.04)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
