"""The results table and plot of both front-ends (the search and the paper table).

The poster's table as pure functions: per-visit values in, starred and bolded cells out; or
summary cells in (the search has a mean and std per cell, no per-visit values: no stars, no bold).

A *column* is one labelled-data ratio; a *row* is one method (network + pretraining). Each cell
holds one value per test visit (already pooled over seeds by the caller). The best row of a
column is the one with the best mean (highest Dice, lowest HD95 / area error); every other row is
compared with it by a paired Wilcoxon signed-rank test over the visits both rows have, and gets
``*`` (p < 0.05), ``**`` (p < 0.01) or ``***`` (p < 0.001). The best row gets no star and is
printed in bold. No star either when the test is undefined (fewer than one paired visit, or all
paired differences zero).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "Cell",
    "build_cells",
    "cells_csv",
    "paired_wilcoxon",
    "plain_cell",
    "plot_cells",
    "stars_for",
    "table_markdown",
]

#: per-visit values of one cell: {visit key: value}
VisitValues = Mapping[str, float]


@dataclass(frozen=True)
class Cell:
    """One table cell: a row (method) at a column (ratio)."""

    row: str
    ratio: float
    mean: float
    std: float
    visits: int
    best: bool
    p_value: float | None
    stars: str


def stars_for(p_value: float | None) -> str:
    """``***`` for p < 0.001, ``**`` for p < 0.01, ``*`` for p < 0.05, else ``""``."""
    if p_value is None or not math.isfinite(p_value):
        return ""
    if p_value < 0.001:
        return "***"
    if p_value < 0.01:
        return "**"
    if p_value < 0.05:
        return "*"
    return ""


def paired_wilcoxon(a: VisitValues, b: VisitValues) -> float | None:
    """Two-sided p-value of a Wilcoxon signed-rank test of ``a`` against ``b``, paired by visit.

    Only visits present (and finite) in both are used. Returns None when the test is undefined:
    no paired visit, or every paired difference is zero.
    """
    from scipy.stats import wilcoxon

    keys = sorted(k for k in set(a) & set(b)
                  if math.isfinite(a[k]) and math.isfinite(b[k]))
    if not keys:
        return None
    x = np.array([a[k] for k in keys], dtype=float)
    y = np.array([b[k] for k in keys], dtype=float)
    if np.allclose(x - y, 0.0, rtol=0.0, atol=1e-12):
        return None
    try:
        p = float(wilcoxon(x, y, zero_method="wilcox", alternative="two-sided").pvalue)
    except ValueError:  # scipy refuses some degenerate inputs
        return None
    return p if math.isfinite(p) else None


def _mean_std(values: VisitValues) -> tuple[float, float, int]:
    vals = np.array([v for v in values.values() if math.isfinite(v)], dtype=float)
    if vals.size == 0:
        return math.nan, math.nan, 0
    return float(vals.mean()), float(vals.std()), int(vals.size)


def build_cells(values: Mapping[str, Mapping[float, VisitValues]], *,
                higher_is_better: bool = True) -> list[Cell]:
    """Cells with the best row of each column marked and the others starred.

    Args:
        values: ``{row: {ratio: {visit: value}}}``; a missing ratio is an empty cell.
        higher_is_better: True for Dice, False for HD95 and area errors.

    Returns:
        One :class:`Cell` per (row, ratio) present in ``values``, rows in their given order,
        ratios ascending.
    """
    ratios = sorted({r for per_ratio in values.values() for r in per_ratio})
    cells: list[Cell] = []
    for ratio in ratios:
        column = {row: per_ratio[ratio] for row, per_ratio in values.items() if ratio in per_ratio}
        stats = {row: _mean_std(v) for row, v in column.items()}
        ranked = [row for row in column if stats[row][2] > 0]
        best = None
        if ranked:
            sign = 1.0 if higher_is_better else -1.0
            best = max(ranked, key=lambda row: sign * stats[row][0])  # first row wins ties
        for row, visit_values in column.items():
            mean, std, n = stats[row]
            p = None if best is None or row == best else paired_wilcoxon(visit_values, column[best])
            cells.append(Cell(row, ratio, mean, std, n, row == best, p, stars_for(p)))
    order = {row: i for i, row in enumerate(values)}
    return sorted(cells, key=lambda c: (order[c.row], c.ratio))


def plain_cell(row: str, ratio: float, mean: float, std: float, visits: int) -> Cell:
    """A cell known only by its summary (no per-visit values): never bold, never starred."""
    return Cell(row, ratio, mean, std, visits, False, None, "")


def _cell_text(cell: Cell, scale: float, decimals: int) -> str:
    if not math.isfinite(cell.mean):
        return "–"
    text = f"{scale * cell.mean:.{decimals}f} ± {scale * cell.std:.{decimals}f}"
    if cell.best:
        return f"**{text}**"
    return text + (f" {cell.stars}" if cell.stars else "")


def table_markdown(cells: Sequence[Cell], *, title: str = "Method", scale: float = 1.0,
                   decimals: int = 2, ratio_label: str = "{ratio:g}") -> str:
    """The poster's table in Markdown: rows in first-seen order, one column per ratio.

    Args:
        cells: from :func:`build_cells`.
        title: header of the first column.
        scale: multiplies means and stds (100 for Dice in %).
        decimals: digits after the point.
        ratio_label: format of a column header, given ``ratio``.
    """
    rows = list(dict.fromkeys(c.row for c in cells))
    ratios = sorted({c.ratio for c in cells})
    by_key = {(c.row, c.ratio): c for c in cells}
    lines = [f"| {title} | " + " | ".join(ratio_label.format(ratio=r) for r in ratios) + " |",
             "|---|" + "---|" * len(ratios)]
    for row in rows:
        texts = [_cell_text(by_key[(row, r)], scale, decimals) if (row, r) in by_key else ""
                 for r in ratios]
        lines.append(f"| {row} | " + " | ".join(texts) + " |")
    return "\n".join(lines) + "\n"


def cells_csv(cells_by_metric: Mapping[str, Sequence[Cell]]) -> str:
    """One line per (metric, row, ratio): mean, std (unscaled), visits, best, p_value, stars."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["metric", "method", "ratio", "mean", "std", "visits", "best", "p_value", "stars"])
    for metric, cells in cells_by_metric.items():
        for c in cells:
            w.writerow([metric, c.row, f"{c.ratio:g}", f"{c.mean:.6g}", f"{c.std:.6g}", c.visits,
                        int(c.best), "" if c.p_value is None else f"{c.p_value:.6g}", c.stars])
    return buf.getvalue()


def plot_cells(cells: Sequence[Cell], path: str | Path, *, scale: float = 100.0,
               ylabel: str = "test Dice (%)") -> Path:
    """Mean ± std against the labelled-data ratio (log axis), one line per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [c for c in cells if math.isfinite(c.mean)]
    rows = list(dict.fromkeys(c.row for c in sorted(shown, key=lambda c: len(c.row))))
    ratios = sorted({c.ratio for c in shown})
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=100)
    for row in rows:
        pts = sorted((c for c in shown if c.row == row), key=lambda c: c.ratio)
        ax.errorbar([p.ratio for p in pts], [scale * p.mean for p in pts],
                    yerr=[scale * p.std for p in pts], marker="o", capsize=3, label=row)
    ax.set_xscale("log")
    ax.set_xticks(ratios)
    ax.set_xticklabels([f"{r:g}" for r in ratios])
    ax.set_xlabel("fraction of labelled training patients")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
