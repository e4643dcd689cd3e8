"""The results table and plot of both front-ends (the search and the paper table).

The poster's table as pure functions: per-visit values in, starred and bolded cells out; or
summary cells in (the search has a mean and std per cell, no per-visit values: no stars, no bold).

A *column* is one labelled-data ratio; a *row* is one method (network + pretraining). A cell
holds, for each seed, one value per test visit of that seed's model (:func:`build_seed_cells`;
:func:`build_cells` is the one-seed case). It is reported as the poster reports it:

- each seed's model gets its mean and std over the test visits (population std, ``ddof=0``:
  the spread of the test set itself);
- the cell is the mean over seeds of those means ± the mean over seeds of those stds. Visits are
  never averaged over seeds before the std is taken: that would shrink the spread the poster
  shows (a visit one seed gets wrong and another right would look average).

The best row of a column is the one with the best cell mean (highest Dice, lowest HD95 / area
error; the first row wins ties); every other row is compared with it by a two-sided paired
Wilcoxon signed-rank test and gets ``*`` (p < 0.05), ``**`` (p < 0.01) or ``***`` (p < 0.001).
The pairs are (seed, visit): seed ``s``'s model of the row against seed ``s``'s model of the best
row on the same test visit. Seed ``s`` fixes the labelled subset every method trains on, so the
two members of a pair saw the same labels and the same visit and differ only by the method and
its training noise. With several seeds the pairs of one visit are not independent, so the p-values
are somewhat optimistic next to a per-visit test; the per-seed values are in the CSV for anyone
who wants another test. The best row gets no star and is printed in bold. No star either when
the test is undefined (no common finite pair, or all paired differences zero).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "Cell",
    "build_cells",
    "build_seed_cells",
    "cells_csv",
    "paired_wilcoxon",
    "plain_cell",
    "plot_cells",
    "seed_table_markdown",
    "stars_for",
    "table_markdown",
]

#: per-visit values of one model in one cell: {visit key: value}
VisitValues = Mapping[str, float]
#: one cell's values, per seed: {seed: {visit key: value}}
SeedValues = Mapping[int, VisitValues]


@dataclass(frozen=True)
class Cell:
    """One table cell: a row (method) at a column (ratio).

    ``mean`` and ``std`` are the means over seeds of each seed's mean and std over the test
    visits; ``visits`` counts the distinct test visits with a finite value (in any seed);
    ``per_seed`` holds each seed's ``(seed, mean, std)``, in seed order (empty for a
    :func:`plain_cell`).
    """

    row: str
    ratio: float
    mean: float
    std: float
    visits: int
    best: bool
    p_value: float | None
    stars: str
    per_seed: tuple[tuple[int, float, float], ...] = ()

    @property
    def seeds(self) -> int:
        """How many seeds have a value in this cell."""
        return len(self.per_seed)


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


def paired_wilcoxon(a: Mapping[Any, float], b: Mapping[Any, float]) -> float | None:
    """Two-sided p-value of a Wilcoxon signed-rank test of ``a`` against ``b``, paired by key
    (a visit, or a ``(seed, visit)``).

    Only keys present (and finite) in both are used. Returns None when the test is undefined:
    no pair, or every paired difference is zero.
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


@dataclass(frozen=True)
class _SeedStats:
    mean: float
    std: float
    visits: int
    per_seed: tuple[tuple[int, float, float], ...]


def _seed_stats(per_seed: SeedValues) -> _SeedStats:
    """Each seed's mean and std over its visits, then the mean over seeds of each."""
    rows, visits = [], set()
    for seed in sorted(per_seed):
        mean, std, n = _mean_std(per_seed[seed])
        if n:
            rows.append((seed, mean, std))
            visits |= {k for k, v in per_seed[seed].items() if math.isfinite(v)}
    if not rows:
        return _SeedStats(math.nan, math.nan, 0, ())
    return _SeedStats(float(np.mean([r[1] for r in rows])), float(np.mean([r[2] for r in rows])),
                      len(visits), tuple(rows))


def _pairs(per_seed: SeedValues) -> dict[tuple[int, str], float]:
    """``{(seed, visit): value}``: what the paired test pairs on."""
    return {(seed, visit): value for seed, visits in per_seed.items()
            for visit, value in visits.items()}


def build_seed_cells(values: Mapping[str, Mapping[float, SeedValues]], *,
                     higher_is_better: bool = True) -> list[Cell]:
    """Cells from every seed's per-visit values, the best row of each column marked and the
    others starred (see the module docstring for the statistics).

    Args:
        values: ``{row: {ratio: {seed: {visit: value}}}}``; a missing ratio is an empty cell,
            a missing seed is a seed that row did not run (its pairs are left out of the test).
        higher_is_better: True for Dice, False for HD95 and area errors.

    Returns:
        One :class:`Cell` per (row, ratio) present in ``values``, rows in their given order,
        ratios ascending.
    """
    ratios = sorted({r for per_ratio in values.values() for r in per_ratio})
    cells: list[Cell] = []
    for ratio in ratios:
        column = {row: per_ratio[ratio] for row, per_ratio in values.items() if ratio in per_ratio}
        stats = {row: _seed_stats(v) for row, v in column.items()}
        ranked = [row for row in column if stats[row].visits > 0]
        best = None
        if ranked:
            sign = 1.0 if higher_is_better else -1.0
            best = max(ranked, key=lambda row: sign * stats[row].mean)  # first row wins ties
        for row, per_seed in column.items():
            st = stats[row]
            p = (None if best is None or row == best
                 else paired_wilcoxon(_pairs(per_seed), _pairs(column[best])))
            cells.append(Cell(row, ratio, st.mean, st.std, st.visits, row == best, p,
                              stars_for(p), st.per_seed))
    order = {row: i for i, row in enumerate(values)}
    return sorted(cells, key=lambda c: (order[c.row], c.ratio))


def build_cells(values: Mapping[str, Mapping[float, VisitValues]], *,
                higher_is_better: bool = True) -> list[Cell]:
    """Cells of one seed (or of values already pooled by the caller): :func:`build_seed_cells`
    with every cell's visits as seed 0.

    Args:
        values: ``{row: {ratio: {visit: value}}}``; a missing ratio is an empty cell.
        higher_is_better: True for Dice, False for HD95 and area errors.
    """
    return build_seed_cells({row: {ratio: {0: visits} for ratio, visits in per_ratio.items()}
                             for row, per_ratio in values.items()},
                            higher_is_better=higher_is_better)


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


def seed_table_markdown(cells: Sequence[Cell], *, title: str = "Method", scale: float = 1.0,
                        decimals: int = 2, ratio_label: str = "{ratio:g}") -> str:
    """Each seed's own mean ± std per cell (``s0: 81.20 ± 9.10<br>s1: ...``), rows and columns
    as :func:`table_markdown`: the numbers the main table averages."""
    rows = list(dict.fromkeys(c.row for c in cells))
    ratios = sorted({c.ratio for c in cells})
    by_key = {(c.row, c.ratio): c for c in cells}

    def text(c: Cell) -> str:
        return "<br>".join(f"s{seed}: {scale * m:.{decimals}f} ± {scale * sd:.{decimals}f}"
                           for seed, m, sd in c.per_seed) or "–"

    lines = [f"| {title} | " + " | ".join(ratio_label.format(ratio=r) for r in ratios) + " |",
             "|---|" + "---|" * len(ratios)]
    for row in rows:
        lines.append(f"| {row} | " + " | ".join(
            text(by_key[(row, r)]) if (row, r) in by_key else "" for r in ratios) + " |")
    return "\n".join(lines) + "\n"


def cells_csv(cells_by_metric: Mapping[str, Sequence[Cell]]) -> str:
    """One line per (metric, row, ratio): mean, std (unscaled), visits, best, p_value, stars,
    seeds, and the seeds with each one's mean and std (``;``-separated, in seed order)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["metric", "method", "ratio", "mean", "std", "visits", "best", "p_value", "stars",
                "seeds", "seed_ids", "seed_means", "seed_stds"])
    for metric, cells in cells_by_metric.items():
        for c in cells:
            w.writerow([metric, c.row, f"{c.ratio:g}", f"{c.mean:.6g}", f"{c.std:.6g}", c.visits,
                        int(c.best), "" if c.p_value is None else f"{c.p_value:.6g}", c.stars,
                        c.seeds, ";".join(str(s) for s, _, _ in c.per_seed),
                        ";".join(f"{m:.6g}" for _, m, _ in c.per_seed),
                        ";".join(f"{sd:.6g}" for _, _, sd in c.per_seed)])
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
