"""The results table and plot of both front-ends (the search and the paper table), at the
patient level.

Pure functions: per-visit values and the visit->patient map in, cells with their statistics
out, Markdown / CSV / a plot from the cells. The numbers come from :mod:`fpn.stats`; what this
module adds is the table's layout and the choice of reference and family.

A *column* is one labelled-data ratio; a *row* is one method (network + pretraining). A cell
holds, for each seed, one value per test visit of that seed's model (:func:`build_seed_cells`;
:func:`build_cells` is the one-seed case), and the map ``{visit: patient}`` of the test split.

**Why patients.** Visits of one patient (two eyes, several days) are not independent, so a mean
± std over visits and a test that pairs visits overstate what a small test split shows (6 visits
of 2 patients are n = 2, not 6). Every cell and test is therefore over patients:

- **cell**: each patient's mean over its visits (within each seed; then averaged over the seeds
  that have it: seeds are repeated trainings of the same method, not more patients), the mean
  over patients of those (``Cell.mean``), their sd over patients (``Cell.std``) and a 95%
  bootstrap confidence interval over patients (``Cell.ci_low``, ``Cell.ci_high``; percentile
  below 10 patients, BCa from 10: :func:`fpn.stats.bootstrap_interval`). Printed ``72.3 [61.0,
  80.2]``. Undefined (``[–]``) for a single patient.
- **seeds**: each seed's own mean over patients (``Cell.per_seed``) and their spread between
  seeds (sd, min, max: ``Cell.seed_sd``...). In the paper table seed ``s`` also picks which
  training patients are labelled, so that spread is what a reader needs to judge one seed's
  number: the table prints it under each multi-seed cell (``seeds: sd 43.5 (0.0–61.6)``).
- **comparison**: each row against its column's *reference* row (the paper table: the best row
  of the column, bold; the search: the first row, the baseline), per patient the mean paired
  difference over visits (seed ``s`` paired with seed ``s``: the same labelled patients, the same
  test visit; then averaged over seeds), its bootstrap interval, and the two-sided Wilcoxon
  signed-rank test over patients (exact for small n; :func:`fpn.stats.paired_comparison`).
- **family**: the p-values of all comparisons of one table (every column) are Holm-corrected
  together (:func:`fpn.stats.holm`); stars come from the corrected p: ``*`` < 0.05, ``**`` < 0.01,
  ``***`` < 0.001. A test over ``n`` patients cannot give a p below ``2 / 2**n`` (0.0625 for 5
  patients), and the note under the table says so when no star is reachable.
- **n**: under every table a line with the number of patients and visits of the split (and of
  seeds), and the range when cells differ (a NaN HD95 leaves a visit out).

**The poster's way** (each seed's mean ± std over the visits, ``ddof=0``; the cell the mean over
seeds of those means ± the mean of those stds) stays available as ``Cell.visit_mean``,
``Cell.visit_std`` and ``Cell.per_seed_visits``, and in the CSV (:func:`cells_csv`), for
comparison with the poster; it is not the headline any more: it treats visits as independent,
and averaging within-seed stds hides a seed at 61.6 beside a seed at 0.0.

Cells known only by a summary (:func:`plain_cell`: the search's table of earlier runs, read back
from MLflow) are printed as they came (``mean ± std`` over visits, or the patient-level mean and
interval when the run logged them), never bold and never starred.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from fpn.figures import save_figure
from fpn.stats import (
    PairedComparison,
    SeedSummary,
    holm,
    min_attainable_p,
    paired_seed_comparison,
    summarize_seeds,
)

__all__ = [
    "Cell",
    "build_cells",
    "build_seed_cells",
    "cell_text",
    "cells_csv",
    "comparisons_markdown",
    "interval_text",
    "paired_wilcoxon",
    "plain_cell",
    "plot_cells",
    "seed_table_markdown",
    "stars_for",
    "table_markdown",
    "table_notes",
]

#: per-visit values of one model in one cell: {visit key: value}
VisitValues = Mapping[str, float]
#: one cell's values, per seed: {seed: {visit key: value}}
SeedValues = Mapping[int, VisitValues]
#: the visit -> patient map of the split the values are on: {visit key: patient id}
Patients = Mapping[str, str]

Reference = Literal["best", "first"]

#: below this many patients the note under a table says that the interval is only a range
FEW_PATIENTS = 5


@dataclass(frozen=True)
class Cell:
    """One table cell: a row (method) at a column (ratio). See the module docstring.

    Patient level (the headline): ``mean`` and ``std`` are the mean and sd (``ddof=1``) over
    ``patients`` of each patient's (seed-averaged) mean over its visits, ``ci_low``/``ci_high``
    the 95% bootstrap interval of ``mean``; ``per_seed`` holds each seed's ``(seed, mean, sd)``
    over patients, in seed order. ``visits`` counts the distinct visits with a finite value (in
    any seed). ``best``: the best mean of its column (bold in the paper table). ``p_value``:
    the signed-rank test over patients against ``reference`` (the row compared with; None on
    the reference row itself, or when the test is undefined), ``p_holm`` the same Holm-corrected
    over the ``family`` comparisons of the table, ``stars`` from ``p_holm``.

    The poster's per-visit numbers: ``visit_mean`` and ``visit_std`` (mean over seeds of each
    seed's mean and std over visits, ``ddof=0``), ``per_seed_visits`` each seed's
    ``(seed, mean, std)`` over visits. ``summary`` and ``comparison`` are the full
    :mod:`fpn.stats` results behind the numbers (None for a :func:`plain_cell`).
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
    patients: int = 0
    ci_low: float = math.nan
    ci_high: float = math.nan
    visit_mean: float = math.nan
    visit_std: float = math.nan
    per_seed_visits: tuple[tuple[int, float, float], ...] = ()
    p_holm: float | None = None
    family: int = 0
    reference: str | None = None
    summary: SeedSummary | None = None
    comparison: PairedComparison | None = None

    @property
    def seeds(self) -> int:
        """How many seeds have a value in this cell."""
        return len(self.per_seed)

    @property
    def seed_sd(self) -> float:
        """Sd (``ddof=1``) of the seeds' means over patients; NaN for fewer than 2 seeds."""
        return self.summary.seed_sd if self.summary is not None else math.nan

    @property
    def seed_min(self) -> float:
        return self.summary.seed_min if self.summary is not None else math.nan

    @property
    def seed_max(self) -> float:
        return self.summary.seed_max if self.summary is not None else math.nan

    @property
    def ci_method(self) -> str:
        """How the interval was made (``percentile``, ``BCa``, ``none``, ``undefined``, or
        ``""`` for a cell without one)."""
        return self.summary.interval.method if self.summary is not None else ""

    @property
    def min_p(self) -> float | None:
        """The smallest p the comparison's test could give (``2 / 2**n``), None without one."""
        return self.comparison.min_p if self.comparison is not None else None


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


def paired_wilcoxon(a: VisitValues, b: VisitValues, patients: Patients) -> float | None:
    """Two-sided p of the Wilcoxon signed-rank test of ``a`` against ``b`` over patients (each
    patient's mean paired difference over the visits finite in both;
    :func:`fpn.stats.paired_comparison`). None when undefined: fewer than 2 patients, or every
    difference zero."""
    from fpn.stats import paired_comparison

    return paired_comparison(a, b, patients).p_value


def _visit_level(per_seed: SeedValues) -> tuple[float, float, tuple[tuple[int, float, float],
                                                                     ...]]:
    """The poster's numbers: each seed's mean and std (``ddof=0``) over its finite visits, and
    the means over seeds of those."""
    rows = []
    for seed in sorted(per_seed):
        vals = np.array([v for v in per_seed[seed].values()
                         if v is not None and math.isfinite(v)], dtype=float)
        if vals.size:
            rows.append((seed, float(vals.mean()), float(vals.std())))
    if not rows:
        return math.nan, math.nan, ()
    return (float(np.mean([r[1] for r in rows])), float(np.mean([r[2] for r in rows])),
            tuple(rows))


def _reference_row(column: Mapping[str, SeedValues], summaries: Mapping[str, SeedSummary],
                   reference: Reference, higher_is_better: bool) -> tuple[str | None, str | None]:
    """``(best row, reference row)`` of one column; the first row wins ties."""
    ranked = [row for row in column if summaries[row].n_patients > 0]
    if not ranked:
        return None, None
    sign = 1.0 if higher_is_better else -1.0
    best = max(ranked, key=lambda row: sign * summaries[row].mean)
    return best, (best if reference == "best" else ranked[0])


def build_seed_cells(values: Mapping[str, Mapping[float, SeedValues]], patients: Patients, *,
                     higher_is_better: bool = True, reference: Reference = "best",
                     confidence: float = 0.95, n_resamples: int = 9999,
                     bootstrap_seed: int = 0) -> list[Cell]:
    """Cells from every seed's per-visit values, at the patient level (module docstring).

    Args:
        values: ``{row: {ratio: {seed: {visit: value}}}}``; a missing ratio is an empty cell,
            a missing seed is a seed that row did not run (left out of its pairs).
        patients: ``{visit: patient id}`` of the split; must cover every visit of ``values``.
        higher_is_better: True for Dice, False for HD95 and area errors.
        reference: what each row is compared with, per column: ``"best"`` (the best mean; the
            paper table) or ``"first"`` (the first row that has the column; the search's
            baseline).
        confidence, n_resamples, bootstrap_seed: of the bootstrap intervals (seeded: the same
            values give the same table).

    Returns:
        One :class:`Cell` per (row, ratio) present in ``values``, rows in their given order,
        ratios ascending. The p-values of all cells are Holm-corrected as one family.

    Raises:
        ValueError: a visit has no patient, or ``reference`` is unknown.
    """
    if reference not in ("best", "first"):
        raise ValueError(f"reference: expected 'best' or 'first', got {reference!r}")
    boot = {"confidence": confidence, "n_resamples": n_resamples, "seed": bootstrap_seed}
    ratios = sorted({r for per_ratio in values.values() for r in per_ratio})
    drafts: list[dict] = []
    for ratio in ratios:
        column = {row: per_ratio[ratio] for row, per_ratio in values.items() if ratio in per_ratio}
        summaries = {row: summarize_seeds(v, patients, **boot) for row, v in column.items()}
        best, ref = _reference_row(column, summaries, reference, higher_is_better)
        for row, per_seed in column.items():
            summary = summaries[row]
            comparison = (None if ref is None or row == ref or summary.n_patients == 0 else
                          paired_seed_comparison(per_seed, column[ref], patients, **boot))
            drafts.append({"row": row, "ratio": ratio, "summary": summary, "best": row == best,
                           "reference": None if comparison is None else ref,
                           "comparison": comparison, "visit": _visit_level(per_seed)})
    raw = [None if d["comparison"] is None else d["comparison"].p_value for d in drafts]
    adjusted = holm(raw)
    family = sum(p is not None for p in raw)
    cells = []
    for d, p, p_adj in zip(drafts, raw, adjusted):
        s: SeedSummary = d["summary"]
        visit_mean, visit_std, per_seed_visits = d["visit"]
        cells.append(Cell(
            d["row"], d["ratio"], s.mean, s.sd, s.n_visits, d["best"], p, stars_for(p_adj),
            tuple((seed, ps.mean, ps.sd) for seed, ps in s.per_seed), s.n_patients,
            s.interval.low, s.interval.high, visit_mean, visit_std, per_seed_visits, p_adj,
            family if p is not None else 0, d["reference"], s, d["comparison"]))
    order = {row: i for i, row in enumerate(values)}
    return sorted(cells, key=lambda c: (order[c.row], c.ratio))


def build_cells(values: Mapping[str, Mapping[float, VisitValues]], patients: Patients, *,
                higher_is_better: bool = True, reference: Reference = "best",
                confidence: float = 0.95, n_resamples: int = 9999,
                bootstrap_seed: int = 0) -> list[Cell]:
    """Cells of one seed: :func:`build_seed_cells` with every cell's visits as seed 0.

    Args:
        values: ``{row: {ratio: {visit: value}}}``; a missing ratio is an empty cell.
        patients: ``{visit: patient id}``.
        higher_is_better, reference, confidence, n_resamples, bootstrap_seed: as
            :func:`build_seed_cells`.
    """
    return build_seed_cells({row: {ratio: {0: visits} for ratio, visits in per_ratio.items()}
                             for row, per_ratio in values.items()}, patients,
                            higher_is_better=higher_is_better, reference=reference,
                            confidence=confidence, n_resamples=n_resamples,
                            bootstrap_seed=bootstrap_seed)


def plain_cell(row: str, ratio: float, mean: float, std: float, visits: int, *,
               patients: int = 0, ci_low: float = math.nan,
               ci_high: float = math.nan) -> Cell:
    """A cell known only by its summary (no per-visit values): never bold, never starred.

    ``mean`` and ``std`` are over visits (the poster's); with ``patients`` and an interval
    (logged by a run that had the patient-level summary), the cell prints those instead.
    """
    return Cell(row, ratio, mean, std, visits, False, None, "", patients=patients,
                ci_low=ci_low, ci_high=ci_high, visit_mean=mean, visit_std=std)


# -- text -------------------------------------------------------------------------------------

def _digits(scale: float, decimals: int | None) -> int:
    """Digits after the point: as given, else 1 for percentages (scale 100), 2 otherwise."""
    if decimals is not None:
        return decimals
    return 1 if scale >= 100 else 2


def interval_text(low: float, high: float, scale: float, d: int) -> str:
    """``[61.0, 80.2]`` (bounds times ``scale``, ``d`` decimals); ``[–]`` when undefined."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return "[–]"
    return f"[{scale * low:.{d}f}, {scale * high:.{d}f}]"


def cell_text(cell: Cell, *, scale: float = 1.0, decimals: int | None = None,
              stars: bool = True, bold_best: bool = True, seeds: bool = True) -> str:
    """One cell as printed: ``72.3 [61.0, 80.2] *`` (bold when best), plus for several seeds
    ``<br>seeds: sd 4.3 (61.6–70.2)``; a :func:`plain_cell` as ``mean ± std`` over visits (or
    its patient-level mean and interval when it has them); ``–`` when empty."""
    d = _digits(scale, decimals)
    if not math.isfinite(cell.mean):
        return "–"
    if cell.summary is None and cell.patients == 0:  # the poster's summary, read back
        text = f"{scale * cell.mean:.{d}f} ± {scale * cell.std:.{d}f}"
    else:
        text = f"{scale * cell.mean:.{d}f} {interval_text(cell.ci_low, cell.ci_high, scale, d)}"
    if cell.best and bold_best:
        text = f"**{text}**"
    elif stars and cell.stars:
        text += f" {cell.stars}"
    if seeds and cell.seeds >= 2:
        text += (f"<br>seeds: sd {scale * cell.seed_sd:.{d}f} "
                 f"({scale * cell.seed_min:.{d}f}–{scale * cell.seed_max:.{d}f})")
    return text


def _span(counts: Iterable[int]) -> str:
    counts = sorted(set(counts))
    if not counts:
        return "0"
    return str(counts[0]) if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"


def _n_line(cells: Sequence[Cell], split: str) -> str:
    """``n: 5 test patients, 10 visits, 3 seeds per cell`` (ranges where the cells differ)."""
    shown = [c for c in cells if math.isfinite(c.mean)]
    if not shown:
        return f"n: no {split} values."
    seeds = [c.seeds for c in shown if c.summary is not None]
    patients = [c.patients for c in shown if c.patients]
    parts = []
    if patients:
        parts.append(f"{_span(patients)} {split} patients")
    parts.append(f"{_span(c.visits for c in shown)} visits")
    if seeds and max(seeds) > 1:
        parts.append(f"{_span(seeds)} seed{'' if max(seeds) == 1 else 's'}")
    line = "n: " + ", ".join(parts) + " per cell"
    undefined = sum(c.summary.n_undefined for c in shown if c.summary is not None)
    if undefined:
        line += f"; {undefined} undefined (seed, visit) values left out"
    return line + "."


def _family_note(cells: Sequence[Cell], reference: str) -> str:
    tested = [c for c in cells if c.comparison is not None]
    if not tested:
        return "No comparisons (one row, or no paired patients)."
    family = max(c.family for c in tested)
    n_tested = [c.comparison.n_tested for c in tested
                if c.comparison is not None and c.p_value is not None]
    pairing = ("the mean paired difference over its visits, seed s with seed s, averaged over "
               "the seeds" if any(c.seeds >= 2 for c in tested)
               else "the mean paired difference over its visits")
    text = (f"Stars: two-sided Wilcoxon signed-rank test over patients against {reference}, "
            f"per patient {pairing}; p Holm-corrected over the {family} "
            f"comparison{'s' if family != 1 else ''} of this table: * p < 0.05, ** p < 0.01, "
            "*** p < 0.001.")
    if not n_tested:
        return text + " No test was defined (fewer than 2 patients, or no difference)."
    floor = min_attainable_p(max(n_tested)) or 1.0  # the most patients any test had
    if floor >= 0.05:
        text += (f" With {_span(n_tested)} patients a test cannot give p below {floor:.3g} "
                 "(2/2^n, before correction): no star is reachable, whatever the difference.")
    return text


def table_notes(cells: Sequence[Cell], *, split: str = "test", reference: str = "the best "
                "row of its column (bold)") -> str:
    """The lines under a table: n per cell, what a cell is, the test and its family."""
    if cells and all(c.summary is None for c in cells):
        if any(c.patients for c in cells):
            what = ("Cells: mean over patients of each patient's mean over its visits [95% "
                    "bootstrap CI over patients], as the runs logged them; no tests (the "
                    "per-visit values are not at hand).")
        else:
            what = ("Cells: mean ± std over visits (the runs' per-visit summaries; no patient "
                    "map, so no patient-level interval or test).")
        return f"{_n_line(cells, split)} {what}\n"
    multi = any(c.seeds >= 2 for c in cells)
    methods = sorted({c.ci_method for c in cells if c.ci_method in ("percentile", "BCa")})
    what = ("Cells: mean over patients of each patient's mean over its visits"
            + (" (averaged over the seeds)" if multi else "")
            + f" [95% bootstrap CI over patients{', ' + '/'.join(methods) if methods else ''}]"
            + ("; seeds: sd (min–max) of the seeds' means over patients (the interval is over "
               "patients only and leaves this spread out)" if multi else "") + ".")
    if any(c.ci_method == "undefined" for c in cells):
        what += " [–]: one patient, no interval."
    fewest = min((c.patients for c in cells if c.ci_method in ("percentile", "BCa")), default=0)
    if 0 < fewest < FEW_PATIENTS:
        what += (f" With {fewest} patients an interval cannot be wider than the patients at "
                 "hand: it describes them and is no reliable 95% interval.")
    return f"{_n_line(cells, split)} {what} {_family_note(cells, reference)}\n"


def _grid(cells: Sequence[Cell]) -> tuple[list[str], list[float], dict[tuple[str, float], Cell]]:
    rows = list(dict.fromkeys(c.row for c in cells))
    ratios = sorted({c.ratio for c in cells})
    return rows, ratios, {(c.row, c.ratio): c for c in cells}


def table_markdown(cells: Sequence[Cell], *, title: str = "Method", scale: float = 1.0,
                   decimals: int | None = None, ratio_label: str = "{ratio:g}",
                   split: str = "test", notes: bool = True, bold_best: bool = True) -> str:
    """The results table in Markdown: rows in first-seen order, one column per ratio, cells as
    :func:`cell_text`, and (``notes``) the lines of :func:`table_notes` under it.

    Args:
        cells: from :func:`build_seed_cells` / :func:`build_cells` (or plain cells).
        title: header of the first column.
        scale: multiplies means, intervals and spreads (100 for Dice in %).
        decimals: digits after the point (default: 1 for scale 100, else 2).
        ratio_label: format of a column header, given ``ratio``.
        split: the split the values are on, for the n line.
        notes: add the n line and the legend under the table.
        bold_best: print the best cell of each column in bold.
    """
    rows, ratios, by_key = _grid(cells)
    lines = [f"| {title} | " + " | ".join(ratio_label.format(ratio=r) for r in ratios) + " |",
             "|---|" + "---|" * len(ratios)]
    for row in rows:
        texts = [cell_text(by_key[(row, r)], scale=scale, decimals=decimals,
                           bold_best=bold_best) if (row, r) in by_key else "" for r in ratios]
        lines.append(f"| {row} | " + " | ".join(texts) + " |")
    text = "\n".join(lines) + "\n"
    if notes:
        text += "\n" + table_notes(cells, split=split)
    return text


def seed_table_markdown(cells: Sequence[Cell], *, title: str = "Method", scale: float = 1.0,
                        decimals: int | None = None, ratio_label: str = "{ratio:g}") -> str:
    """Each seed's own mean over patients and its interval per cell (``s0: 61.6 [55.0,
    68.0]<br>s1: ...``), rows and columns as :func:`table_markdown`: what the main table
    averages, and where a seed that failed shows."""
    d = _digits(scale, decimals)
    rows, ratios, by_key = _grid(cells)

    def text(c: Cell) -> str:
        if c.summary is None:
            return "–"
        return "<br>".join(
            f"s{seed}: {scale * ps.mean:.{d}f} "
            f"{interval_text(ps.interval.low, ps.interval.high, scale, d)}"
            for seed, ps in c.summary.per_seed) or "–"

    lines = [f"| {title} | " + " | ".join(ratio_label.format(ratio=r) for r in ratios) + " |",
             "|---|" + "---|" * len(ratios)]
    for row in rows:
        lines.append(f"| {row} | " + " | ".join(
            text(by_key[(row, r)]) if (row, r) in by_key else "" for r in ratios) + " |")
    return "\n".join(lines) + "\n"


def _p_text(p: float | None) -> str:
    return "–" if p is None else f"{p:.3g}"


def comparisons_markdown(cells: Sequence[Cell], *, scale: float = 1.0,
                         decimals: int | None = None, ratio_label: str = "{ratio:g}") -> str:
    """Every comparison of a table, one line each: column, row, reference, the mean per-patient
    difference (row - reference) with its 95% bootstrap interval, p, Holm p, and the n's."""
    d = _digits(scale, decimals)
    lines = [("| Ratio | Method | vs | Difference [95% CI] | p | p (Holm) | patients | visits "
              "| seeds |"), "|---|---|---|---|---|---|---|---|---|"]
    for c in sorted((c for c in cells if c.comparison is not None), key=lambda c: c.ratio):
        cmp = c.comparison
        assert cmp is not None
        diff = (f"{scale * cmp.difference:+.{d}f} "
                f"{interval_text(cmp.interval.low, cmp.interval.high, scale, d)}")
        lines.append(f"| {ratio_label.format(ratio=c.ratio)} | {c.row} | {c.reference} | {diff} "
                     f"| {_p_text(c.p_value)} | {_p_text(c.p_holm)}{c.stars} | {cmp.n_patients} "
                     f"| {cmp.n_visits} | {cmp.n_seeds} |")
    return "\n".join(lines) + "\n"


def _joined(values: Iterable[float]) -> str:
    return ";".join(f"{v:.6g}" for v in values)


def cells_csv(cells_by_metric: Mapping[str, Sequence[Cell]]) -> str:
    """One line per (metric, row, ratio), unscaled: the patient-level numbers (``mean``,
    ``std``, ``patients``, ``ci_low``, ``ci_high``, ``ci_method``; per seed ``seed_means`` /
    ``seed_stds`` over patients; ``seed_sd``/``min``/``max``), the comparison (``reference``,
    ``difference`` and its interval, ``p_value``, ``p_holm``, ``holm_family``, ``test``,
    ``min_p``, ``stars``), and the poster's per-visit numbers (``visit_mean``, ``visit_std``,
    ``seed_visit_means``, ``seed_visit_stds``)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["metric", "method", "ratio", "mean", "std", "visits", "best", "p_value", "stars",
                "seeds", "seed_ids", "seed_means", "seed_stds", "patients", "ci_low", "ci_high",
                "ci_method", "seed_sd", "seed_min", "seed_max", "reference", "difference",
                "difference_ci_low", "difference_ci_high", "p_holm", "holm_family", "test",
                "min_p", "visit_mean", "visit_std", "seed_visit_means", "seed_visit_stds"])
    for metric, cells in cells_by_metric.items():
        for c in cells:
            cmp = c.comparison
            w.writerow([
                metric, c.row, f"{c.ratio:g}", f"{c.mean:.6g}", f"{c.std:.6g}", c.visits,
                int(c.best), "" if c.p_value is None else f"{c.p_value:.6g}", c.stars, c.seeds,
                ";".join(str(s) for s, _, _ in c.per_seed), _joined(m for _, m, _ in c.per_seed),
                _joined(sd for _, _, sd in c.per_seed), c.patients, f"{c.ci_low:.6g}",
                f"{c.ci_high:.6g}", c.ci_method, f"{c.seed_sd:.6g}", f"{c.seed_min:.6g}",
                f"{c.seed_max:.6g}", c.reference or "",
                "" if cmp is None else f"{cmp.difference:.6g}",
                "" if cmp is None else f"{cmp.interval.low:.6g}",
                "" if cmp is None else f"{cmp.interval.high:.6g}",
                "" if c.p_holm is None else f"{c.p_holm:.6g}", c.family,
                "" if cmp is None else cmp.test,
                "" if c.min_p is None else f"{c.min_p:.6g}",
                f"{c.visit_mean:.6g}", f"{c.visit_std:.6g}",
                _joined(m for _, m, _ in c.per_seed_visits),
                _joined(sd for _, _, sd in c.per_seed_visits)])
    return buf.getvalue()


def plot_cells(cells: Sequence[Cell], path: str | Path, *, scale: float = 100.0,
               ylabel: str = "test Dice (%)") -> Path:
    """The mean over patients against the labelled-data ratio (log axis), one line per row,
    the 95% bootstrap interval over patients as error bars (a :func:`plain_cell` without an
    interval: ± std over visits; a cell of one patient: no bar)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [c for c in cells if math.isfinite(c.mean)]
    rows = list(dict.fromkeys(c.row for c in sorted(shown, key=lambda c: len(c.row))))
    ratios = sorted({c.ratio for c in shown})
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=100)
    for row in rows:
        pts = sorted((c for c in shown if c.row == row), key=lambda c: c.ratio)
        below, above = [], []
        for p in pts:
            if math.isfinite(p.ci_low) and math.isfinite(p.ci_high):
                below.append(max(0.0, p.mean - p.ci_low))
                above.append(max(0.0, p.ci_high - p.mean))
            elif p.summary is None and p.patients == 0 and math.isfinite(p.std):
                below.append(p.std)
                above.append(p.std)
            else:
                below.append(0.0)
                above.append(0.0)
        ax.errorbar([p.ratio for p in pts], [scale * p.mean for p in pts],
                    yerr=[[scale * b for b in below], [scale * a for a in above]],
                    marker="o", capsize=3, label=row)
    ax.set_xscale("log")
    ax.set_xticks(ratios)
    ax.set_xticklabels([f"{r:g}" for r in ratios])
    ax.set_xlabel("fraction of labelled training patients")
    ax.set_ylabel(ylabel + (" (95% CI over patients)" if any(c.summary for c in shown) else ""))
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)
