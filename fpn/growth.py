"""GA growth per eye: visits in time order, area and sqrt-area, least-squares rates per year.

The clinical endpoint of the GA trials (OAKS/DERBY: area; GATHER1/2: sqrt-area, which removes
most of the growth's dependence on the baseline size) is the slope of the lesion area over time.
Here each eye (``patient_id`` + ``eye``) gets:

- its visits in time order, with the area and the sqrt-area at each;
- the growth rate in area units per year and sqrt-area units per year: the slope of an ordinary
  least-squares line over all its visits (:func:`scipy.stats.linregress`), with a two-sided
  interval from the t distribution on the slope's standard error (n - 2 degrees of freedom).
  With exactly two visits the line passes through both points, so the slope is the rate but its
  residual variance, and hence the interval, is undefined (not zero): the interval is left empty
  and the eye's ``reason`` says so;
- the ensemble's spread: every member's own area at each visit (its probability thresholded like
  the ensemble's mean), and every member's own least-squares rate over the eye's visits. The
  members' rates (their min, max and sd) are the uncertainty reported for the model. This was
  chosen over a bootstrap over members and visits because (1) the k members are the model's own
  alternatives (the k best checkpoints), so their rates answer "how much would another equally
  good model change this eye's rate?" directly; (2) the uncertainty from the visits (the scatter
  of the areas about the line) is already in the t interval, and mixing it in again would count
  it twice; (3) eyes have 2 to 4 visits, where resampling visits mostly draws repeated days, whose
  slope is undefined, so a bootstrap over visits is degenerate;
- where every visit has a graded area, the same rate from the graded areas.

An eye with one visit, visits without days, or all visits on one day gets an empty rate and a
stated ``reason``, never a made-up number. Areas are in mm^2 (``unit="mm2"``) or, for volumes
without a spacing, in pixels (``unit="px"``); column names carry the unit.

Example::

    visits = [VisitArea("P1_OD_0", "P1", "OD", 0, 2.0), VisitArea("P1_OD_180", "P1", "OD", 180, 2.6)]
    eyes = growth_per_eye(visits)
    write_growth_csv("out/growth.csv", eyes)
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from fpn.figures import save_figure
from fpn.storage import atomic_file

__all__ = [
    "DAYS_PER_YEAR",
    "UNITS",
    "EyeGrowth",
    "Rate",
    "VisitArea",
    "growth_columns",
    "growth_per_eye",
    "growth_rows",
    "lsq_rate",
    "plot_growth",
    "visit_areas",
    "visit_columns",
    "visit_rows",
    "write_csv",
    "write_growth_csv",
    "write_visits_csv",
]

#: days per year of the rates (the Julian year; days in study are calendar days)
DAYS_PER_YEAR = 365.25
#: area unit -> the unit of its square root, as column names spell them (``area_mm2``,
#: ``sqrt_area_mm``; without a spacing ``area_px``, ``sqrt_area_px``)
UNITS: dict[str, str] = {"mm2": "mm", "px": "px"}


@dataclass(frozen=True)
class VisitArea:
    """The lesion area of one visit.

    Attributes:
        visit: visit key.
        patient_id, eye: the eye the visit belongs to (both empty: it cannot be joined).
        day: day in study; ``None`` when unknown.
        area: the reported area (mm^2 or pixels): the ensemble's mean probability thresholded.
        member_areas: each ensemble member's own area (empty when not known).
        graded_area: the grader's area from the mask, ``None`` without a mask.
    """

    visit: str
    patient_id: str
    eye: str
    day: int | None
    area: float
    member_areas: tuple[float, ...] = ()
    graded_area: float | None = None

    @property
    def sqrt_area(self) -> float:
        return math.sqrt(max(self.area, 0.0))


@dataclass(frozen=True)
class Rate:
    """A least-squares slope per year and its two-sided interval.

    Attributes:
        per_year: the slope (units per year).
        stderr: the slope's standard error; ``None`` with two visits (undefined).
        ci_low, ci_high: the interval (``confidence``), ``None`` when undefined.
        visits: points on the line.
        confidence: the interval's level.
    """

    per_year: float
    stderr: float | None
    ci_low: float | None
    ci_high: float | None
    visits: int
    confidence: float = 0.95


def lsq_rate(days: Sequence[float], values: Sequence[float], confidence: float = 0.95) -> Rate:
    """The least-squares slope of ``values`` over ``days``, per year, with its t interval.

    The interval is ``slope +/- t_{(1 + confidence) / 2, n - 2} * stderr`` (``stderr`` from
    :func:`scipy.stats.linregress`); with two points it is undefined and left ``None``.

    Raises:
        ValueError: fewer than two points, lengths that differ, or all points on one day.
    """
    x = np.asarray(days, dtype=float) / DAYS_PER_YEAR
    y = np.asarray(values, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"lsq_rate: days and values must be 1-D of one length, got {x.shape} "
                         f"and {y.shape}")
    if x.size < 2:
        raise ValueError(f"lsq_rate: a rate needs at least 2 visits, got {x.size}")
    if np.ptp(x) == 0:
        raise ValueError("lsq_rate: all visits are on one day")
    if not 0 < confidence < 1:
        raise ValueError(f"lsq_rate: confidence must be in (0, 1), got {confidence}")
    fit = stats.linregress(x, y)
    slope = float(fit.slope)
    if x.size == 2:
        return Rate(slope, None, None, None, 2, confidence)
    stderr = float(fit.stderr)
    half = float(stats.t.ppf((1 + confidence) / 2, x.size - 2)) * stderr
    return Rate(slope, stderr, slope - half, slope + half, int(x.size), confidence)


@dataclass(frozen=True)
class EyeGrowth:
    """The growth of one eye.

    Attributes:
        patient_id, eye: the eye.
        visits: its visits in time order (day, then key; unknown days last).
        area_rate, sqrt_rate: the rates of the reported areas (``None``: see ``reason``).
        member_area_rates, member_sqrt_rates: each member's own rate (empty when unknown).
        graded_area_rate, graded_sqrt_rate: the rates of the graded areas, where every visit has
            one.
        reason: why a value is empty (``"; "``-joined), ``""`` when nothing is.
    """

    patient_id: str
    eye: str
    visits: tuple[VisitArea, ...]
    area_rate: Rate | None
    sqrt_rate: Rate | None
    member_area_rates: tuple[float, ...]
    member_sqrt_rates: tuple[float, ...]
    graded_area_rate: Rate | None
    graded_sqrt_rate: Rate | None
    reason: str

    @property
    def days(self) -> list[int | None]:
        return [v.day for v in self.visits]

    @property
    def members(self) -> int:
        return len(self.member_area_rates)


def _time_order(visit: VisitArea) -> tuple[int, int, str]:
    return (visit.day is None, visit.day if visit.day is not None else 0, visit.visit)


def _why_no_rate(visits: Sequence[VisitArea]) -> str:
    """Why the visits give no rate; ``""`` when they do."""
    if not visits[0].patient_id or not visits[0].eye:
        return "no patient id or eye: visits cannot be joined"
    if len(visits) < 2:
        return "1 visit: a rate needs at least 2"
    missing = [v.visit for v in visits if v.day is None]
    if missing:
        return f"visits without a day: {', '.join(missing)}"
    if len({v.day for v in visits}) < 2:
        return "all visits on one day"
    return ""


def _member_rates(visits: Sequence[VisitArea], days: list[float],
                  confidence: float) -> tuple[tuple[float, ...], tuple[float, ...], str]:
    counts = {len(v.member_areas) for v in visits}
    if counts == {0}:
        return (), (), ""
    if len(counts) > 1:
        return (), (), "member areas missing at some visits"
    k = counts.pop()
    areas = np.array([v.member_areas for v in visits], dtype=float)  # (visits, k)
    area_rates = tuple(lsq_rate(days, areas[:, j], confidence).per_year for j in range(k))
    sqrt_rates = tuple(lsq_rate(days, np.sqrt(np.maximum(areas[:, j], 0.0)),
                                confidence).per_year for j in range(k))
    return area_rates, sqrt_rates, ""


def _one_eye(visits: list[VisitArea], confidence: float) -> EyeGrowth:
    visits = sorted(visits, key=_time_order)
    reasons = []
    area_rate = sqrt_rate = graded_rate = graded_sqrt = None
    member_rates: tuple[float, ...] = ()
    member_sqrt: tuple[float, ...] = ()
    why = _why_no_rate(visits)
    if why:
        reasons.append(why)
    else:
        days = [float(v.day) for v in visits]  # type: ignore[arg-type]
        area_rate = lsq_rate(days, [v.area for v in visits], confidence)
        sqrt_rate = lsq_rate(days, [v.sqrt_area for v in visits], confidence)
        if len(visits) == 2:
            reasons.append("2 visits: the line passes through both; no interval")
        member_rates, member_sqrt, why_members = _member_rates(visits, days, confidence)
        if why_members:
            reasons.append(why_members)
        graded = [v.graded_area for v in visits]
        if all(g is not None for g in graded):
            graded_rate = lsq_rate(days, graded, confidence)  # type: ignore[arg-type]
            graded_sqrt = lsq_rate(days, [math.sqrt(max(g, 0.0)) for g in graded],  # type: ignore[arg-type]
                                   confidence)
        elif any(g is not None for g in graded):
            n = sum(g is not None for g in graded)
            reasons.append(f"graded areas at {n} of {len(graded)} visits: no graded rate")
    first = visits[0]
    return EyeGrowth(first.patient_id, first.eye, tuple(visits), area_rate, sqrt_rate,
                     member_rates, member_sqrt, graded_rate, graded_sqrt, "; ".join(reasons))


def growth_per_eye(visits: Iterable[VisitArea], confidence: float = 0.95) -> list[EyeGrowth]:
    """Group visits by eye (``patient_id`` + ``eye``) and compute each eye's growth.

    Visits without a patient id or eye are each their own "eye" with no rate. Eyes are returned
    sorted by patient id and eye.

    Raises:
        ValueError: a visit key given twice.
    """
    groups: dict[tuple[str, str, str], list[VisitArea]] = {}
    seen: set[str] = set()
    for v in visits:
        if v.visit in seen:
            raise ValueError(f"growth_per_eye: visit {v.visit!r} is given twice")
        seen.add(v.visit)
        joinable = bool(v.patient_id and v.eye)
        key = (v.patient_id, v.eye, "" if joinable else v.visit)
        groups.setdefault(key, []).append(v)
    return [_one_eye(groups[key], confidence) for key in sorted(groups)]


# -- rows and files ------------------------------------------------------------------------------

def _labels(unit: str) -> tuple[str, str]:
    if unit not in UNITS:
        raise ValueError(f"unit must be one of {sorted(UNITS)}, got {unit!r}")
    return unit, UNITS[unit]


def _parse_day(value: Any, where: str) -> int | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    try:
        day = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: day {value!r} is not a number of days") from None
    if not day.is_integer():
        raise ValueError(f"{where}: day {value!r} is not a whole number of days")
    return int(day)


def _parse_area(value: Any, where: str) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        area = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: area {value!r} is not a number") from None
    if not math.isfinite(area) or area < 0:
        raise ValueError(f"{where}: area {value!r} is not a finite number >= 0")
    return area


def visit_areas(rows: Iterable[Mapping[str, Any]], *, area_key: str = "area_mm2",
                graded_key: str | None = None, members_key: str | None = None
                ) -> list[VisitArea]:
    """:class:`VisitArea`\\ s from per-visit rows (``predict``'s ``areas.csv``, ``evaluate``'s
    records): keys ``visit``, ``patient_id``, ``eye``, ``day`` (int, or ``None``/``""``) and
    ``area_key``; optionally ``graded_key`` (the graded area) and ``members_key`` (a sequence of
    member areas).

    Raises:
        ValueError: a row without a visit or area, or with a day or area that is not a number
            (naming the visit and the key).
    """
    out = []
    for i, row in enumerate(rows):
        visit = str(row.get("visit") or "")
        where = f"row {i} (visit {visit!r})" if visit else f"row {i}"
        if not visit:
            raise ValueError(f"{where}: no 'visit' key")
        area = _parse_area(row.get(area_key), f"{where}, {area_key}")
        if area is None:
            raise ValueError(f"{where}: no {area_key!r}")
        graded = _parse_area(row.get(graded_key), f"{where}, {graded_key}") if graded_key else None
        members: tuple[float, ...] = ()
        if members_key and row.get(members_key) is not None:
            parsed = [_parse_area(a, f"{where}, {members_key}") for a in row[members_key]]
            members = tuple(float(a) for a in parsed if a is not None)
        out.append(VisitArea(visit, str(row.get("patient_id") or ""), str(row.get("eye") or ""),
                             _parse_day(row.get("day"), where), area, members, graded))
    return out


def _num(x: float | None) -> float | str:
    """A CSV cell: the number, or ``""`` when undefined (never a made-up 0)."""
    return "" if x is None or not math.isfinite(x) else float(x)


def _spread(values: Sequence[float]) -> tuple[float | None, float | None, float | None]:
    """``(min, max, sd)`` of member values; ``sd`` needs two members."""
    if not values:
        return None, None, None
    a = np.asarray(values, dtype=float)
    sd = float(a.std(ddof=1)) if a.size > 1 else None
    return float(a.min()), float(a.max()), sd


def visit_columns(unit: str = "mm2", members: int = 0) -> list[str]:
    """The columns of the per-visit CSV (:func:`visit_rows`)."""
    a, s = _labels(unit)
    cols = ["visit", "patient_id", "eye", "day", f"area_{a}", f"sqrt_area_{s}"]
    if members:
        cols += [f"member_area_{a}_min", f"member_area_{a}_max", f"member_area_{a}_sd"]
        cols += [f"member_{j + 1}_area_{a}" for j in range(members)]
    return cols + [f"graded_area_{a}", f"graded_sqrt_area_{s}"]


def visit_rows(visits: Sequence[VisitArea], unit: str = "mm2") -> list[dict[str, Any]]:
    """One flat dict per visit (columns :func:`visit_columns`)."""
    a, s = _labels(unit)
    rows = []
    for v in visits:
        low, high, sd = _spread(v.member_areas)
        row: dict[str, Any] = {"visit": v.visit, "patient_id": v.patient_id, "eye": v.eye,
                               "day": "" if v.day is None else v.day, f"area_{a}": v.area,
                               f"sqrt_area_{s}": v.sqrt_area,
                               f"member_area_{a}_min": _num(low), f"member_area_{a}_max": _num(high),
                               f"member_area_{a}_sd": _num(sd),
                               f"graded_area_{a}": _num(v.graded_area),
                               f"graded_sqrt_area_{s}": "" if v.graded_area is None
                               else math.sqrt(v.graded_area)}
        row.update({f"member_{j + 1}_area_{a}": m for j, m in enumerate(v.member_areas)})
        rows.append(row)
    return rows


def growth_columns(unit: str = "mm2") -> list[str]:
    """The columns of ``growth.csv`` (:func:`growth_rows`)."""
    a, s = _labels(unit)
    r, q = f"rate_{a}_per_year", f"sqrt_rate_{s}_per_year"
    return ["patient_id", "eye", "visits", "days", "first_day", "last_day", "follow_up_years",
            f"first_area_{a}", f"last_area_{a}",
            r, f"{r}_ci_low", f"{r}_ci_high", q, f"{q}_ci_low", f"{q}_ci_high", "ci_level",
            "members", f"member_{r}_min", f"member_{r}_max", f"member_{r}_sd",
            f"member_{q}_min", f"member_{q}_max", f"member_{q}_sd",
            f"graded_{r}", f"graded_{q}", f"{r}_error", f"{q}_error", "reason"]


def growth_rows(eyes: Sequence[EyeGrowth], unit: str = "mm2") -> list[dict[str, Any]]:
    """One flat dict per eye (columns :func:`growth_columns`); undefined values are ``""``."""
    a, s = _labels(unit)
    r, q = f"rate_{a}_per_year", f"sqrt_rate_{s}_per_year"
    rows = []
    for e in eyes:
        known = [d for d in e.days if d is not None]
        row: dict[str, Any] = {
            "patient_id": e.patient_id, "eye": e.eye, "visits": len(e.visits),
            "days": ";".join("" if d is None else str(d) for d in e.days),
            "first_day": min(known) if known else "", "last_day": max(known) if known else "",
            "follow_up_years": (max(known) - min(known)) / DAYS_PER_YEAR if known else "",
            f"first_area_{a}": e.visits[0].area, f"last_area_{a}": e.visits[-1].area,
            "members": e.members, "reason": e.reason,
        }
        for name, rate in ((r, e.area_rate), (q, e.sqrt_rate)):
            row[name] = _num(rate.per_year if rate else None)
            row[f"{name}_ci_low"] = _num(rate.ci_low if rate else None)
            row[f"{name}_ci_high"] = _num(rate.ci_high if rate else None)
        has_ci = e.area_rate is not None and e.area_rate.ci_low is not None
        row["ci_level"] = e.area_rate.confidence if has_ci else ""  # type: ignore[union-attr]
        for name, member_rates in ((r, e.member_area_rates), (q, e.member_sqrt_rates)):
            low, high, sd = _spread(member_rates)
            row[f"member_{name}_min"], row[f"member_{name}_max"] = _num(low), _num(high)
            row[f"member_{name}_sd"] = _num(sd)
        for name, pred, graded in ((r, e.area_rate, e.graded_area_rate),
                                   (q, e.sqrt_rate, e.graded_sqrt_rate)):
            row[f"graded_{name}"] = _num(graded.per_year if graded else None)
            row[f"{name}_error"] = _num(pred.per_year - graded.per_year
                                        if pred and graded else None)
        rows.append(row)
    return rows


def write_csv(path: str | Path, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> Path:
    """Write ``rows`` as CSV atomically (a temporary sibling, then ``os.replace``)."""
    path = Path(path)
    with atomic_file(path) as tmp, tmp.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="ignore", restval="")
        w.writeheader()
        w.writerows(rows)
    return path


def write_growth_csv(path: str | Path, eyes: Sequence[EyeGrowth], unit: str = "mm2") -> Path:
    """``growth.csv``: one row per eye (:func:`growth_rows`), written atomically."""
    return write_csv(path, growth_rows(eyes, unit), growth_columns(unit))


def write_visits_csv(path: str | Path, visits: Sequence[VisitArea], unit: str = "mm2") -> Path:
    """The per-visit CSV (:func:`visit_rows`), written atomically."""
    members = max((len(v.member_areas) for v in visits), default=0)
    return write_csv(path, visit_rows(visits, unit), visit_columns(unit, members))


# -- plot ------------------------------------------------------------------------------------------

def plot_growth(path: str | Path, eyes: Sequence[EyeGrowth], unit: str = "mm2",
                max_panels: int = 60) -> Path:
    """Small multiples, one panel per eye: area over days in study, predicted (line; the members'
    min-max as a band) and graded (squares, dashed) where known. Eyes without days are drawn
    over their visit order. At most ``max_panels`` eyes (the title says how many were left out).
    Written atomically as PNG (matplotlib's Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _labels(unit)
    label = "area (mm²)" if unit == "mm2" else "area (px)"
    rate_unit = "mm²/y" if unit == "mm2" else "px/y"
    shown = list(eyes)[:max_panels]
    n = max(len(shown), 1)
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    for ax in axes.ravel()[len(shown):]:
        ax.axis("off")
    for ax, e in zip(axes.ravel(), shown):
        has_days = all(d is not None for d in e.days)
        x = np.array([d if has_days else i for i, d in enumerate(e.days)], dtype=float)
        ax.plot(x, [v.area for v in e.visits], "o-", color="tab:red", label="predicted")
        if all(v.member_areas for v in e.visits):
            lo = [min(v.member_areas) for v in e.visits]
            hi = [max(v.member_areas) for v in e.visits]
            ax.fill_between(x, lo, hi, color="tab:red", alpha=0.2, label="members")
        graded = [(xi, v.graded_area) for xi, v in zip(x, e.visits) if v.graded_area is not None]
        if graded:
            gx, gy = zip(*graded)
            ax.plot(gx, gy, "s--", color="tab:green", label="graded")
        rate = (f"{e.area_rate.per_year:+.2f} {rate_unit}" if e.area_rate
                else e.reason.split(":")[0])
        ax.set_title(f"{e.patient_id or e.visits[0].visit} {e.eye}: {rate}", fontsize=8)
        ax.set_xlabel("day in study" if has_days else "visit (no days)", fontsize=7)
        ax.set_ylabel(label, fontsize=7)
        ax.tick_params(labelsize=7)
    if shown:
        axes.ravel()[0].legend(fontsize=6)
    left_out = len(eyes) - len(shown)
    fig.suptitle(f"GA area per eye ({len(shown)} eyes"
                 + (f"; {left_out} more not shown)" if left_out else ")"), fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)
