"""Agreement of predicted GA areas and growth rates with the graders', and the read-out's metrics.

Per visit (predicted vs graded area, mm^2):

- Bland-Altman (Bland & Altman 1986): bias = mean(pred - graded), 95% limits of agreement
  ``bias +/- 1.96 sd(pred - graded)`` (sd with n - 1);
- ICC(2,1) (Shrout & Fleiss 1979, case 2, single measure): two-way random effects, absolute
  agreement, the model and the grader as two raters of each visit. Written here from the ANOVA
  mean squares, because neither scipy nor the project's dependencies have it (pingouin does, and
  is not a dependency): with n targets (visits) and k raters,
  ``ICC(2,1) = (BMS - EMS) / (BMS + (k - 1) EMS + k (JMS - EMS) / n)``, where BMS is the
  between-targets, JMS the between-raters and EMS the residual mean square;
- r^2: the squared Pearson correlation (:func:`scipy.stats.pearsonr`), as published 3D-to-2D GA
  work reports it (it measures association, not agreement; read it beside the bias).

Per eye: the growth-rate error, predicted rate minus graded rate (mm^2/year and sqrt-mm/year),
over eyes where both rates exist (:mod:`fpn.growth`), summarised as mean, sd and mean absolute
error.

The unit of analysis: visits of one patient are not independent (nor are a patient's two eyes),
so every result carries ``n`` visits, eyes and patients. The limits of agreement treat visits as
independent; with several visits per patient they are somewhat too narrow (Bland & Altman 2007
give the repeated-measures correction, not applied here).

Every metric name the read-out reports is defined once, below (``METRIC_*``): flat names that
MLflow takes as they are (``evaluate`` prefixes them with the split: ``test/area_bias_mm2``).
Undefined values are NaN (loggers skip non-finite values).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from fpn.figures import save_figure
from fpn.growth import EyeGrowth, VisitArea, growth_per_eye, visit_areas

__all__ = [
    "METRIC_NAMES",
    "AreaAgreement",
    "BlandAltman",
    "RateErrors",
    "area_agreement",
    "area_agreement_metrics",
    "bland_altman",
    "icc_2_1",
    "plot_bland_altman",
    "r_squared",
    "rate_errors",
    "readout_metrics",
    "visit_areas_from_records",
]

# -- metric names (the one place; the lead moves them into fpn/tags.py) ----------------------------
# counts (the unit of analysis is the patient: report them beside every number)
METRIC_GROWTH_N_VISITS = "growth_n_visits"
METRIC_GROWTH_N_EYES = "growth_n_eyes"
METRIC_GROWTH_N_PATIENTS = "growth_n_patients"
METRIC_GROWTH_N_EYES_WITH_RATE = "growth_n_eyes_with_rate"
# the predicted growth (mean over eyes with a rate)
METRIC_GROWTH_RATE_MEAN = "growth_rate_mm2_per_year_mean"
METRIC_GROWTH_SQRT_RATE_MEAN = "growth_sqrt_rate_mm_per_year_mean"
# the ensemble's spread: members' max - min, averaged over visits (area) or eyes (rates)
METRIC_AREA_MEMBER_RANGE_MEAN = "area_member_range_mm2_mean"
METRIC_MEMBER_RATE_RANGE_MEAN = "growth_member_rate_range_mm2_per_year_mean"
METRIC_MEMBER_SQRT_RATE_RANGE_MEAN = "growth_member_sqrt_rate_range_mm_per_year_mean"
# per-visit area agreement with the graders
METRIC_AREA_N_VISITS = "area_n_visits"
METRIC_AREA_N_EYES = "area_n_eyes"
METRIC_AREA_N_PATIENTS = "area_n_patients"
METRIC_AREA_BIAS = "area_bias_mm2"
METRIC_AREA_DIFF_SD = "area_diff_sd_mm2"
METRIC_AREA_LOA_LOW = "area_loa_low_mm2"
METRIC_AREA_LOA_HIGH = "area_loa_high_mm2"
METRIC_AREA_ICC = "area_icc"
METRIC_AREA_R2 = "area_r2"
# per-eye growth-rate error (predicted - graded)
METRIC_RATE_ERROR_N_EYES = "growth_rate_error_n_eyes"
METRIC_RATE_ERROR_N_PATIENTS = "growth_rate_error_n_patients"
METRIC_RATE_ERROR_MEAN = "growth_rate_error_mm2_per_year_mean"
METRIC_RATE_ERROR_SD = "growth_rate_error_mm2_per_year_sd"
METRIC_RATE_ERROR_MAE = "growth_rate_error_mm2_per_year_mae"
METRIC_SQRT_RATE_ERROR_MEAN = "growth_rate_error_sqrt_mm_per_year_mean"
METRIC_SQRT_RATE_ERROR_SD = "growth_rate_error_sqrt_mm_per_year_sd"
METRIC_SQRT_RATE_ERROR_MAE = "growth_rate_error_sqrt_mm_per_year_mae"

#: every name above, in the order the read-out reports them
METRIC_NAMES: tuple[str, ...] = (
    METRIC_GROWTH_N_VISITS,
    METRIC_GROWTH_N_EYES,
    METRIC_GROWTH_N_PATIENTS,
    METRIC_GROWTH_N_EYES_WITH_RATE,
    METRIC_GROWTH_RATE_MEAN,
    METRIC_GROWTH_SQRT_RATE_MEAN,
    METRIC_AREA_MEMBER_RANGE_MEAN,
    METRIC_MEMBER_RATE_RANGE_MEAN,
    METRIC_MEMBER_SQRT_RATE_RANGE_MEAN,
    METRIC_AREA_N_VISITS,
    METRIC_AREA_N_EYES,
    METRIC_AREA_N_PATIENTS,
    METRIC_AREA_BIAS,
    METRIC_AREA_DIFF_SD,
    METRIC_AREA_LOA_LOW,
    METRIC_AREA_LOA_HIGH,
    METRIC_AREA_ICC,
    METRIC_AREA_R2,
    METRIC_RATE_ERROR_N_EYES,
    METRIC_RATE_ERROR_N_PATIENTS,
    METRIC_RATE_ERROR_MEAN,
    METRIC_RATE_ERROR_SD,
    METRIC_RATE_ERROR_MAE,
    METRIC_SQRT_RATE_ERROR_MEAN,
    METRIC_SQRT_RATE_ERROR_SD,
    METRIC_SQRT_RATE_ERROR_MAE,
)

#: the normal quantile of 95% limits of agreement (Bland & Altman's 1.96)
LOA_Z = float(stats.norm.ppf(0.975))


def _n_patients(visits: Iterable[VisitArea]) -> int:
    return len({v.patient_id for v in visits if v.patient_id})


def _n_eyes(visits: Iterable[VisitArea]) -> int:
    return len({(v.patient_id, v.eye) for v in visits if v.patient_id and v.eye})


@dataclass(frozen=True)
class BlandAltman:
    """Bias and 95% limits of agreement of ``pred - graded`` over ``n`` pairs."""

    n: int
    bias: float
    sd: float
    loa_low: float
    loa_high: float


def bland_altman(pred: Sequence[float], graded: Sequence[float]) -> BlandAltman:
    """Bland-Altman bias (mean of ``pred - graded``) and limits ``bias +/- 1.96 sd``.

    NaN where undefined: no pairs (everything), one pair (sd and limits).

    Raises:
        ValueError: ``pred`` and ``graded`` differ in length.
    """
    p, g = np.asarray(pred, dtype=float), np.asarray(graded, dtype=float)
    if p.shape != g.shape or p.ndim != 1:
        raise ValueError(f"bland_altman: pred and graded must be 1-D of one length, got "
                         f"{p.shape} and {g.shape}")
    diff = p - g
    bias = float(diff.mean()) if diff.size else math.nan
    sd = float(diff.std(ddof=1)) if diff.size > 1 else math.nan
    return BlandAltman(int(diff.size), bias, sd, bias - LOA_Z * sd, bias + LOA_Z * sd)


def icc_2_1(ratings: np.ndarray | Sequence[Sequence[float]]) -> float:
    """ICC(2,1) of an ``(n targets, k raters)`` table: two-way random effects, absolute
    agreement, single measure (Shrout & Fleiss 1979, Psychological Bulletin 86:420-428).

    From the two-way ANOVA without replication: ``BMS = SS_rows / (n - 1)``,
    ``JMS = SS_columns / (k - 1)``, ``EMS = SS_residual / ((n - 1)(k - 1))``;
    ``ICC(2,1) = (BMS - EMS) / (BMS + (k - 1) EMS + k (JMS - EMS) / n)``.
    NaN with fewer than 2 targets or 2 raters, or when every rating is equal (0 / 0).
    """
    y = np.asarray(ratings, dtype=float)
    if y.ndim != 2:
        raise ValueError(f"icc_2_1: ratings must be a (targets, raters) table, got {y.shape}")
    n, k = y.shape
    if n < 2 or k < 2:
        return math.nan
    grand = y.mean()
    ss_rows = k * float(((y.mean(axis=1) - grand) ** 2).sum())
    ss_cols = n * float(((y.mean(axis=0) - grand) ** 2).sum())
    ss_error = float(((y - grand) ** 2).sum()) - ss_rows - ss_cols
    bms, jms = ss_rows / (n - 1), ss_cols / (k - 1)
    ems = ss_error / ((n - 1) * (k - 1))
    denominator = bms + (k - 1) * ems + k * (jms - ems) / n
    return math.nan if denominator == 0 else (bms - ems) / denominator


def r_squared(pred: Sequence[float], graded: Sequence[float]) -> float:
    """Squared Pearson correlation; NaN with fewer than 2 pairs or a constant side."""
    p, g = np.asarray(pred, dtype=float), np.asarray(graded, dtype=float)
    if p.size < 2 or np.ptp(p) == 0 or np.ptp(g) == 0:
        return math.nan
    return float(stats.pearsonr(p, g).statistic ** 2)


@dataclass(frozen=True)
class AreaAgreement:
    """Per-visit area agreement over the visits that have a graded area."""

    n_visits: int
    n_eyes: int
    n_patients: int
    bland_altman: BlandAltman
    icc: float
    r2: float


def area_agreement(visits: Sequence[VisitArea]) -> AreaAgreement:
    """Bland-Altman, ICC(2,1) and r^2 of predicted vs graded areas, over the visits with a
    graded area (the others are left out)."""
    graded = [v for v in visits if v.graded_area is not None]
    p = [v.area for v in graded]
    g = [float(v.graded_area) for v in graded]  # type: ignore[arg-type]
    icc = icc_2_1(np.column_stack([p, g])) if graded else math.nan
    return AreaAgreement(len(graded), _n_eyes(graded), _n_patients(graded),
                         bland_altman(p, g), icc, r_squared(p, g))


@dataclass(frozen=True)
class RateErrors:
    """Per-eye growth-rate errors (predicted - graded), over eyes with both rates.

    Attributes:
        eyes: ``(patient_id, eye, area-rate error, sqrt-rate error)`` per eye.
        n_eyes, n_patients: counts.
        mean, sd, mae: of the area-rate errors (mm^2/year); ``sqrt_*``: sqrt-mm/year.
    """

    eyes: tuple[tuple[str, str, float, float], ...]
    n_eyes: int
    n_patients: int
    mean: float
    sd: float
    mae: float
    sqrt_mean: float
    sqrt_sd: float
    sqrt_mae: float


def _summary(errors: np.ndarray) -> tuple[float, float, float]:
    if not errors.size:
        return math.nan, math.nan, math.nan
    sd = float(errors.std(ddof=1)) if errors.size > 1 else math.nan
    return float(errors.mean()), sd, float(np.abs(errors).mean())


def rate_errors(eyes: Sequence[EyeGrowth]) -> RateErrors:
    """Predicted minus graded growth rate per eye, and its mean, sd and mean absolute error."""
    rows = tuple((e.patient_id, e.eye,
                  e.area_rate.per_year - e.graded_area_rate.per_year,
                  e.sqrt_rate.per_year - e.graded_sqrt_rate.per_year)  # type: ignore[union-attr]
                 for e in eyes if e.area_rate and e.graded_area_rate)
    area = np.array([r[2] for r in rows], dtype=float)
    sqrt = np.array([r[3] for r in rows], dtype=float)
    return RateErrors(rows, len(rows), len({r[0] for r in rows}), *_summary(area),
                      *_summary(sqrt))


def _mean(values: Iterable[float]) -> float:
    a = np.array(list(values), dtype=float)
    return float(a.mean()) if a.size else math.nan


def readout_metrics(visits: Sequence[VisitArea], eyes: Sequence[EyeGrowth]) -> dict[str, float]:
    """The flat metrics (names :data:`METRIC_NAMES`) of a read-out: counts, the predicted
    growth, the members' spread and, where graded areas exist, the agreement; NaN where
    undefined (e.g. no graded areas, no members)."""
    with_rate = [e for e in eyes if e.area_rate is not None]
    agreement = area_agreement(visits)
    errors = rate_errors(eyes)
    ba = agreement.bland_altman
    return {
        METRIC_GROWTH_N_VISITS: float(len(visits)),
        METRIC_GROWTH_N_EYES: float(_n_eyes(visits)),
        METRIC_GROWTH_N_PATIENTS: float(_n_patients(visits)),
        METRIC_GROWTH_N_EYES_WITH_RATE: float(len(with_rate)),
        METRIC_GROWTH_RATE_MEAN: _mean(e.area_rate.per_year for e in with_rate),  # type: ignore[union-attr]
        METRIC_GROWTH_SQRT_RATE_MEAN: _mean(e.sqrt_rate.per_year for e in with_rate),  # type: ignore[union-attr]
        METRIC_AREA_MEMBER_RANGE_MEAN: _mean(max(v.member_areas) - min(v.member_areas)
                                             for v in visits if v.member_areas),
        METRIC_MEMBER_RATE_RANGE_MEAN: _mean(max(e.member_area_rates) - min(e.member_area_rates)
                                             for e in eyes if e.member_area_rates),
        METRIC_MEMBER_SQRT_RATE_RANGE_MEAN: _mean(max(e.member_sqrt_rates)
                                                  - min(e.member_sqrt_rates)
                                                  for e in eyes if e.member_sqrt_rates),
        METRIC_AREA_N_VISITS: float(agreement.n_visits),
        METRIC_AREA_N_EYES: float(agreement.n_eyes),
        METRIC_AREA_N_PATIENTS: float(agreement.n_patients),
        METRIC_AREA_BIAS: ba.bias,
        METRIC_AREA_DIFF_SD: ba.sd,
        METRIC_AREA_LOA_LOW: ba.loa_low,
        METRIC_AREA_LOA_HIGH: ba.loa_high,
        METRIC_AREA_ICC: agreement.icc,
        METRIC_AREA_R2: agreement.r2,
        METRIC_RATE_ERROR_N_EYES: float(errors.n_eyes),
        METRIC_RATE_ERROR_N_PATIENTS: float(errors.n_patients),
        METRIC_RATE_ERROR_MEAN: errors.mean,
        METRIC_RATE_ERROR_SD: errors.sd,
        METRIC_RATE_ERROR_MAE: errors.mae,
        METRIC_SQRT_RATE_ERROR_MEAN: errors.sqrt_mean,
        METRIC_SQRT_RATE_ERROR_SD: errors.sqrt_sd,
        METRIC_SQRT_RATE_ERROR_MAE: errors.sqrt_mae,
    }


def visit_areas_from_records(records: Iterable[Mapping[str, Any]]) -> list[VisitArea]:
    """``evaluate``'s per-visit records (keys ``visit, patient_id, eye, day, area_pred_mm2,
    area_true_mm2``, ...) as :class:`VisitArea`\\ s, the graded area from ``area_true_mm2``."""
    return visit_areas(records, area_key="area_pred_mm2", graded_key="area_true_mm2")


def area_agreement_metrics(records: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """The read-out's flat metrics from ``evaluate``'s per-visit records: Bland-Altman bias and
    limits, ICC(2,1), r^2, the per-eye growth-rate error and the counts (no member metrics:
    the records carry none, so those are NaN).

    Raises:
        ValueError: a record without a visit key or area, or with a bad day (naming it).
    """
    visits = visit_areas_from_records(records)
    return readout_metrics(visits, growth_per_eye(visits))


def plot_bland_altman(path: str | Path, visits: Sequence[VisitArea], unit: str = "mm2") -> Path:
    """The Bland-Altman plot of the visits with a graded area: difference (predicted - graded)
    against the mean of the two, with the bias and the 95% limits; written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    graded = [v for v in visits if v.graded_area is not None]
    p = np.array([v.area for v in graded], dtype=float)
    g = np.array([v.graded_area for v in graded], dtype=float)
    ba = bland_altman(p, g)
    label = "mm²" if unit == "mm2" else "px"
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.scatter((p + g) / 2, p - g, s=14, color="tab:blue")
    for value, style, text in ((ba.bias, "-", "bias"), (ba.loa_low, "--", "lower LoA"),
                               (ba.loa_high, "--", "upper LoA")):
        if math.isfinite(value):
            ax.axhline(value, color="tab:red", linestyle=style, linewidth=1)
            ax.annotate(f"{text} {value:+.3f}", (1.0, value), xycoords=("axes fraction", "data"),
                        ha="right", va="bottom", fontsize=7)
    ax.axhline(0.0, color="grey", linewidth=0.5)
    ax.set_xlabel(f"mean of predicted and graded area ({label})")
    ax.set_ylabel(f"predicted - graded ({label})")
    ax.set_title(f"Bland-Altman: {ba.n} visits, {_n_eyes(graded)} eyes, "
                 f"{_n_patients(graded)} patients", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)
