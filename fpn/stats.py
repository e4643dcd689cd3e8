"""Patient-level statistics of per-visit results: the numbers every results table reports.

The unit of analysis is the **patient**: the visits of one patient (both eyes, several days) are
not independent, so a test or an interval that treats visits as independent overstates what a
small test split shows (a split of 6 visits of 2 patients has an effective n of 2, not 6). Every
function here therefore first reduces the per-visit values to one value per patient (the mean
over that patient's visits), then works over patients:

- :func:`patient_means`: ``{visit: value}`` + ``{visit: patient}`` -> each patient's mean over
  its visits; non-finite values (an undefined HD95, say) are left out and counted.
- :func:`bootstrap_interval`: a bootstrap confidence interval of the mean of per-patient values
  (``scipy.stats.bootstrap``, seeded, so a table is reproducible). Percentile intervals below
  :data:`BCA_MIN_PATIENTS` patients, BCa from there on: BCa's bias correction is estimated from
  the share of resamples below the estimate, which with few patients is distorted by the many
  resamples that tie with it (with 2 patients, half of them), and its jackknife acceleration
  rests on n values. With very few patients every bootstrap interval is too narrow (it cannot
  see more spread than the patients at hand show): read it as a description, not a guarantee.
  Fewer than 2 patients: undefined (NaN), and the result says so.
- :func:`summarize`: :func:`patient_means` and the interval of one set of values.
- :func:`paired_comparison`: two arms (two methods on the same test visits), per patient the mean
  over its visits of the paired difference ``a - b`` (visits finite in both arms only), the
  bootstrap interval of the mean difference over patients, and the two-sided Wilcoxon
  signed-rank test of the per-patient differences (``scipy.stats.wilcoxon``): exact when the
  differences are distinct and nonzero, an exhaustive sign-flip permutation when they tie or
  some are zero (up to :data:`EXHAUSTIVE_MAX_PATIENTS` patients), the normal approximation
  beyond. Zero differences are dropped (``zero_method="wilcox"``) and counted. The smallest
  two-sided p an exact test can give over ``n`` nonzero differences is ``2 / 2**n``
  (:func:`min_attainable_p`: 0.5 for 2 patients, 0.0625 for 5; 6 patients are needed to reach
  p < 0.05): the result carries it, so a table can say when n is too small to show anything.
  Values are rounded to :data:`DECIMALS` decimals before ties, zeros and equality are judged
  (averaging leaves float noise that would otherwise break ties; scipy's documentation asks for
  the same). Needs scipy >= 1.15 (``rng=`` of ``bootstrap``; ``wilcoxon`` honouring an explicit
  ``method`` and taking a ``PermutationMethod``).
- :func:`holm`: Holm's step-down correction of a family of p-values. scipy (1.17) has no Holm
  (``scipy.stats.false_discovery_control`` is Benjamini-Hochberg/Yekutieli, a false-discovery
  rate, not a family-wise error rate) and statsmodels is not a dependency, so it is written by
  hand here (a sort and a running maximum).
- Several seeds (repeated trainings of one method; in the paper table seed ``s`` also picks
  which training patients are labelled, while the test patients stay the same):
  :func:`summarize_seeds` gives each seed's patient means and its mean over patients, the
  between-seed spread of those means (sd, min, max), each patient's value averaged over the
  seeds, and the interval over patients of those seed-averaged values (the patient stays the
  unit: seeds are not extra patients); :func:`paired_seed_comparison` pairs seed ``s`` of one
  arm with seed ``s`` of the other (the same labelled patients), averages each patient's
  difference over the seeds, and tests over patients.
- :func:`visit_patients` and :func:`record_metrics`: the same from per-visit evaluation records
  (``{"visit", "patient_id", <metric>: value, ...}``, as :func:`fpn.evaluation.evaluate_ensemble`
  writes them), for ``evaluate``'s summary and MLflow metrics.

Every result is a small frozen dataclass carrying its n's (patients, visits, seeds). Nothing
here formats: the tables (``tune.results``, ``tune.report``) do.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

__all__ = [
    "BCA_MIN_PATIENTS",
    "EXHAUSTIVE_MAX_PATIENTS",
    "Interval",
    "PairedComparison",
    "PatientMeans",
    "PatientSummary",
    "SeedSummary",
    "bootstrap_interval",
    "holm",
    "min_attainable_p",
    "paired_comparison",
    "paired_seed_comparison",
    "patient_means",
    "record_metrics",
    "summarize",
    "summarize_seeds",
    "visit_patients",
]

#: from this many patients on, ``method="auto"`` takes BCa intervals (percentile below)
BCA_MIN_PATIENTS = 10
#: up to this many patients, tied or zero differences get an exhaustive sign-flip test
EXHAUSTIVE_MAX_PATIENTS = 13
#: above this many patients the Wilcoxon test uses the normal approximation
EXACT_MAX_PATIENTS = 50
#: values are rounded to this many decimals before ties, zeros and equality are judged, so
#: that float noise of averaging (0.1 - 1e-17) neither breaks a tie nor makes a zero nonzero
DECIMALS = 12

IntervalMethod = Literal["auto", "percentile", "BCa"]


# -- results ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class PatientMeans:
    """Each patient's mean over its visits with a finite value.

    ``patients`` (sorted), ``means`` and ``visits`` (finite visits per patient) line up;
    ``n_undefined`` counts the visits left out as NaN or infinite (a patient whose every visit
    is undefined is left out altogether).
    """

    patients: tuple[str, ...]
    means: tuple[float, ...]
    visits: tuple[int, ...]
    n_undefined: int = 0

    @property
    def n_patients(self) -> int:
        return len(self.patients)

    @property
    def n_visits(self) -> int:
        """Visits with a finite value (those the means are over)."""
        return int(sum(self.visits))

    def as_dict(self) -> dict[str, float]:
        return dict(zip(self.patients, self.means))


@dataclass(frozen=True)
class Interval:
    """A bootstrap confidence interval of a mean over patients.

    ``method`` is what was used: ``"percentile"``, ``"BCa"``, ``"none"`` (all patients equal:
    the interval collapses onto the estimate) or ``"undefined"`` (fewer than 2 patients: ``low``
    and ``high`` are NaN; ``note`` says why).
    """

    estimate: float
    low: float
    high: float
    confidence: float
    method: str
    n_patients: int
    n_resamples: int
    note: str = ""

    @property
    def defined(self) -> bool:
        return math.isfinite(self.low) and math.isfinite(self.high)


@dataclass(frozen=True)
class PatientSummary:
    """One set of per-visit values at the patient level: the mean over patients of the patient
    means, their sd over patients (``ddof=1``; NaN for one patient) and the interval."""

    mean: float
    sd: float
    interval: Interval
    patient_means: PatientMeans
    n_patients: int
    n_visits: int
    n_undefined: int


@dataclass(frozen=True)
class PairedComparison:
    """Arm ``a`` against arm ``b`` over patients (see :func:`paired_comparison`).

    ``difference`` is the mean over patients of each patient's mean paired difference ``a - b``
    (seed-averaged for :func:`paired_seed_comparison`), with its bootstrap ``interval``.
    ``p_value`` is the two-sided Wilcoxon signed-rank p over the per-patient differences, None
    when undefined (fewer than 2 patients, or every difference zero; ``note`` says which);
    ``test`` names how it was computed (``"exact"``, ``"exhaustive permutation"``,
    ``"normal approximation"``, or ``""``); ``min_p`` is the smallest p that ``n_tested`` nonzero
    differences can give (:func:`min_attainable_p`). ``n_zero`` patients had a zero difference
    and are left out of the test (not of the mean and interval).
    """

    difference: float
    interval: Interval
    p_value: float | None
    test: str
    min_p: float | None
    differences: tuple[tuple[str, float], ...]
    n_patients: int
    n_visits: int
    n_zero: int
    n_seeds: int = 1
    note: str = ""

    @property
    def n_tested(self) -> int:
        """Patients the signed-rank test used (nonzero differences)."""
        return self.n_patients - self.n_zero


@dataclass(frozen=True)
class SeedSummary:
    """Several seeds of one method at the patient level (see :func:`summarize_seeds`).

    ``mean``, ``sd`` and ``interval`` are over patients of the seed-averaged patient values
    (``patient_values``); ``per_seed`` holds each seed's own :class:`PatientSummary` (seed
    order); ``seed_means`` each seed's mean over patients, and ``seed_sd`` (``ddof=1``; NaN for
    one seed), ``seed_min`` and ``seed_max`` their spread: how much retraining (and, in the
    paper table, another labelled subset) moves the result.
    """

    mean: float
    sd: float
    interval: Interval
    patient_values: tuple[tuple[str, float], ...]
    per_seed: tuple[tuple[int, PatientSummary], ...]
    seed_means: tuple[tuple[int, float], ...]
    seed_sd: float
    seed_min: float
    seed_max: float
    n_patients: int
    n_visits: int
    n_seeds: int
    n_undefined: int


# -- patients ---------------------------------------------------------------------------------

def _as_float(value: object) -> float:
    """A record's value as a float; None (an undefined metric) as NaN."""
    return math.nan if value is None else float(value)  # type: ignore[arg-type]


def _patient_of(visit: str, patients: Mapping[str, str]) -> str:
    try:
        return str(patients[visit])
    except KeyError:
        raise ValueError(f"patients: no patient for visit {visit!r} (the visit->patient map "
                         "must cover every visit with a value)") from None


def patient_means(values: Mapping[str, float], patients: Mapping[str, str]) -> PatientMeans:
    """Each patient's mean over its visits.

    Args:
        values: ``{visit: value}`` of one model.
        patients: ``{visit: patient id}``; must cover every visit of ``values``.

    Raises:
        ValueError: a visit of ``values`` has no patient.
    """
    grouped: dict[str, list[float]] = {}
    undefined = 0
    for visit, value in values.items():
        patient = _patient_of(visit, patients)
        value = _as_float(value)
        if not math.isfinite(value):
            undefined += 1
            continue
        grouped.setdefault(patient, []).append(value)
    ids = tuple(sorted(grouped))
    return PatientMeans(ids, tuple(float(np.mean(grouped[p])) for p in ids),
                        tuple(len(grouped[p]) for p in ids), undefined)


def visit_patients(records: Sequence[Mapping[str, object]]) -> dict[str, str]:
    """``{visit: patient_id}`` of per-visit evaluation records.

    Raises:
        ValueError: a record lacks ``visit`` or ``patient_id``, or one visit has two patients.
    """
    out: dict[str, str] = {}
    for i, rec in enumerate(records):
        if "visit" not in rec or "patient_id" not in rec or rec["patient_id"] in (None, ""):
            raise ValueError(f"records[{i}]: a per-visit record needs 'visit' and 'patient_id'")
        visit, patient = str(rec["visit"]), str(rec["patient_id"])
        if out.setdefault(visit, patient) != patient:
            raise ValueError(f"records: visit {visit!r} has two patients "
                             f"({out[visit]!r} and {patient!r})")
    return out


# -- intervals --------------------------------------------------------------------------------

def _check_interval_args(confidence: float, n_resamples: int) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence: must be in (0, 1), got {confidence}")
    if n_resamples < 100:
        raise ValueError(f"n_resamples: must be >= 100, got {n_resamples}")


def bootstrap_interval(samples: Sequence[float], *, confidence: float = 0.95,
                       n_resamples: int = 9999, seed: int = 0,
                       method: IntervalMethod = "auto") -> Interval:
    """Bootstrap confidence interval of the mean of ``samples`` (one value per patient).

    Resamples patients with replacement (``scipy.stats.bootstrap``, ``rng`` seeded by ``seed``:
    the same input gives the same interval). ``method="auto"``: percentile below
    :data:`BCA_MIN_PATIENTS` values, BCa from there on (module docstring). Non-finite samples
    are refused (drop them first: :func:`patient_means` does).

    Returns:
        The :class:`Interval`; undefined (NaN bounds, with a note) for fewer than 2 samples;
        collapsed onto the mean (``method="none"``) when every sample is equal.
    """
    from scipy.stats import bootstrap

    _check_interval_args(confidence, n_resamples)
    if method not in ("auto", "percentile", "BCa"):
        raise ValueError(f"method: expected 'auto', 'percentile' or 'BCa', got {method!r}")
    x = np.asarray(list(samples), dtype=float)
    if not np.all(np.isfinite(x)):
        raise ValueError("samples: non-finite value; leave undefined patients out first")
    n = int(x.size)
    estimate = float(x.mean()) if n else math.nan
    if n < 2:
        return Interval(estimate, math.nan, math.nan, confidence, "undefined", n, 0,
                        f"undefined: {n} patient(s); a bootstrap over patients needs 2 or more")
    if np.ptp(np.round(x, DECIMALS)) == 0.0:
        return Interval(estimate, estimate, estimate, confidence, "none", n, 0,
                        f"all {n} patients equal: the interval collapses onto the mean")
    used = ("BCa" if n >= BCA_MIN_PATIENTS else "percentile") if method == "auto" else method
    res = bootstrap((x,), np.mean, confidence_level=confidence, n_resamples=n_resamples,
                    method=used, vectorized=True, rng=np.random.default_rng(seed))
    low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    note = ""
    if used == "BCa" and not (math.isfinite(low) and math.isfinite(high)):
        # BCa can fail on a degenerate bootstrap distribution; the percentile interval cannot
        res = bootstrap((x,), np.mean, confidence_level=confidence, n_resamples=n_resamples,
                        method="percentile", vectorized=True, rng=np.random.default_rng(seed))
        low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
        used, note = "percentile", "BCa undefined on these values; percentile interval instead"
    return Interval(estimate, low, high, confidence, used, n, n_resamples, note)


def summarize(values: Mapping[str, float], patients: Mapping[str, str], *,
              confidence: float = 0.95, n_resamples: int = 9999, seed: int = 0,
              method: IntervalMethod = "auto") -> PatientSummary:
    """One model's per-visit values at the patient level: :func:`patient_means`, then the mean,
    sd and :func:`bootstrap_interval` over patients.

    Args:
        values: ``{visit: value}``; non-finite values are left out and counted.
        patients: ``{visit: patient id}``.
        confidence, n_resamples, seed, method: of the interval (:func:`bootstrap_interval`).
    """
    pm = patient_means(values, patients)
    return _summary_of(pm, confidence=confidence, n_resamples=n_resamples, seed=seed,
                       method=method)


def _summary_of(pm: PatientMeans, *, confidence: float, n_resamples: int, seed: int,
                method: IntervalMethod) -> PatientSummary:
    means = np.asarray(pm.means, dtype=float)
    interval = bootstrap_interval(means, confidence=confidence, n_resamples=n_resamples,
                                  seed=seed, method=method)
    sd = float(means.std(ddof=1)) if means.size >= 2 else math.nan
    return PatientSummary(interval.estimate, sd, interval, pm, pm.n_patients, pm.n_visits,
                          pm.n_undefined)


# -- paired tests -----------------------------------------------------------------------------

def min_attainable_p(n: int) -> float | None:
    """The smallest two-sided p of an exact Wilcoxon signed-rank test over ``n`` nonzero
    differences: ``2 / 2**n`` (every difference of one sign), capped at 1; None for ``n < 1``.
    """
    if n < 1:
        return None
    return min(1.0, 2.0 / 2.0 ** n)


def _signed_rank(d: np.ndarray) -> tuple[float | None, str, int, str]:
    """``(p, test, n_zero, note)`` of the two-sided Wilcoxon signed-rank test of ``d``."""
    from scipy.stats import PermutationMethod, wilcoxon

    d = np.round(d, DECIMALS)
    n = int(d.size)
    nonzero = d[d != 0.0]
    n_zero = n - int(nonzero.size)
    if n < 2:
        return None, "", n_zero, f"undefined: {n} patient(s); a paired test needs 2 or more"
    if nonzero.size == 0:
        return None, "", n_zero, f"undefined: all {n} patients' differences are zero"
    tied = np.unique(np.abs(nonzero)).size < nonzero.size
    if not tied and n_zero == 0 and n <= EXACT_MAX_PATIENTS:
        method: object = "exact"
        test = "exact"
    elif n <= EXHAUSTIVE_MAX_PATIENTS:
        # ties or zeros change the null distribution: every sign flip, enumerated (exact too)
        method, test = PermutationMethod(n_resamples=np.inf), "exhaustive permutation"
    else:
        method, test = "asymptotic", "normal approximation"
    p = float(wilcoxon(d, zero_method="wilcox", alternative="two-sided", method=method).pvalue)
    if not math.isfinite(p):
        return None, "", n_zero, "undefined: scipy's signed-rank test returned no p-value"
    return min(p, 1.0), test, n_zero, ""


def _comparison(diffs: Mapping[str, float], n_visits: int, n_seeds: int, *,
                confidence: float, n_resamples: int, seed: int,
                method: IntervalMethod) -> PairedComparison:
    ids = sorted(diffs)
    d = np.asarray([diffs[p] for p in ids], dtype=float)
    interval = bootstrap_interval(d, confidence=confidence, n_resamples=n_resamples, seed=seed,
                                  method=method)
    p, test, n_zero, note = _signed_rank(d)
    return PairedComparison(interval.estimate, interval, p, test,
                            min_attainable_p(len(ids) - n_zero),
                            tuple((p_, float(diffs[p_])) for p_ in ids), len(ids), n_visits,
                            n_zero, n_seeds, note)


def _patient_differences(a: Mapping[str, float], b: Mapping[str, float],
                         patients: Mapping[str, str]) -> tuple[dict[str, float], set[str]]:
    """Per patient the mean paired difference ``a - b`` over visits finite in both arms."""
    grouped: dict[str, list[float]] = {}
    used: set[str] = set()
    for visit in sorted(set(a) & set(b)):
        x, y = _as_float(a[visit]), _as_float(b[visit])
        if math.isfinite(x) and math.isfinite(y):
            grouped.setdefault(_patient_of(visit, patients), []).append(x - y)
            used.add(visit)
    return {p: float(np.mean(v)) for p, v in grouped.items()}, used


def paired_comparison(a: Mapping[str, float], b: Mapping[str, float],
                      patients: Mapping[str, str], *, confidence: float = 0.95,
                      n_resamples: int = 9999, seed: int = 0,
                      method: IntervalMethod = "auto") -> PairedComparison:
    """Arm ``a`` against arm ``b`` on the same visits, over patients.

    Each visit finite in both arms gives a difference ``a - b``; each patient's differences are
    averaged; the mean over patients gets a bootstrap interval and the per-patient differences
    a two-sided Wilcoxon signed-rank test (module docstring: exact, exhaustive or normal).

    Args:
        a, b: ``{visit: value}`` of the two arms; visits in only one arm are left out.
        patients: ``{visit: patient id}``.
        confidence, n_resamples, seed, method: of the interval (:func:`bootstrap_interval`).
    """
    diffs, used = _patient_differences(a, b, patients)
    return _comparison(diffs, len(used), 1, confidence=confidence, n_resamples=n_resamples,
                       seed=seed, method=method)


# -- several comparisons ----------------------------------------------------------------------

def holm(p_values: Sequence[float | None]) -> tuple[float | None, ...]:
    """Holm's step-down adjusted p-values, in the input order; None stays None and is not
    counted in the family.

    Written by hand (scipy has no Holm; module docstring): with the ``m`` defined p-values
    sorted ascending, the ``i``-th (from 0) becomes ``max_{j <= i} min(1, (m - j) p_(j))``.
    Rejecting where the adjusted p is below alpha controls the family-wise error rate at alpha.
    """
    defined = [(i, float(p)) for i, p in enumerate(p_values) if p is not None]
    for i, p in defined:
        if not (math.isfinite(p) and 0.0 <= p <= 1.0):
            raise ValueError(f"p_values[{i}]: a p-value must be in [0, 1], got {p}")
    m = len(defined)
    out: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, (i, p) in enumerate(sorted(defined, key=lambda t: t[1])):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return tuple(out)


# -- seeds ------------------------------------------------------------------------------------

def summarize_seeds(values: Mapping[int, Mapping[str, float]], patients: Mapping[str, str], *,
                    confidence: float = 0.95, n_resamples: int = 9999, seed: int = 0,
                    method: IntervalMethod = "auto") -> SeedSummary:
    """Several seeds of one method at the patient level.

    Each seed's values become patient means (:func:`summarize`, with its own interval); each
    patient's value is then the mean over the seeds that have it of its per-seed means, and the
    cell's mean, sd and interval are over patients of those. The between-seed spread is the sd
    (``ddof=1``), min and max of the seeds' means over patients.

    Args:
        values: ``{seed: {visit: value}}``; a seed with no finite value is left out.
        patients: ``{visit: patient id}``.
        confidence, n_resamples, seed, method: of the intervals (:func:`bootstrap_interval`);
            ``seed`` is the bootstrap's, not a training seed.
    """
    per_seed: list[tuple[int, PatientSummary]] = []
    undefined = 0
    for s in sorted(values):
        summary = summarize(values[s], patients, confidence=confidence,
                            n_resamples=n_resamples, seed=seed, method=method)
        undefined += summary.n_undefined
        if summary.n_patients:
            per_seed.append((s, summary))
    by_patient: dict[str, list[float]] = {}
    visits_of: dict[str, set[str]] = {}  # each patient's distinct finite visits, any seed
    for s, summary in per_seed:
        for p, m in summary.patient_means.as_dict().items():
            by_patient.setdefault(p, []).append(m)
        for v, x in values[s].items():
            if math.isfinite(_as_float(x)):
                visits_of.setdefault(_patient_of(v, patients), set()).add(v)
    ids = tuple(sorted(by_patient))
    pm = PatientMeans(ids, tuple(float(np.mean(by_patient[p])) for p in ids),
                      tuple(len(visits_of[p]) for p in ids), undefined)
    overall = _summary_of(pm, confidence=confidence, n_resamples=n_resamples, seed=seed,
                          method=method)
    seed_means = tuple((s, summary.mean) for s, summary in per_seed)
    means = np.asarray([m for _, m in seed_means], dtype=float)
    return SeedSummary(
        overall.mean, overall.sd, overall.interval, tuple(zip(pm.patients, pm.means)),
        tuple(per_seed), seed_means,
        float(means.std(ddof=1)) if means.size >= 2 else math.nan,
        float(means.min()) if means.size else math.nan,
        float(means.max()) if means.size else math.nan,
        pm.n_patients, pm.n_visits, len(per_seed), undefined)


def paired_seed_comparison(a: Mapping[int, Mapping[str, float]],
                           b: Mapping[int, Mapping[str, float]], patients: Mapping[str, str], *,
                           confidence: float = 0.95, n_resamples: int = 9999, seed: int = 0,
                           method: IntervalMethod = "auto") -> PairedComparison:
    """Arm ``a`` against arm ``b`` over patients, with several seeds.

    Seed ``s`` of ``a`` pairs with seed ``s`` of ``b`` only (same labelled subset, same test
    visit); within a seed, each patient's difference is its mean paired difference over visits
    (as :func:`paired_comparison`); each patient's differences are then averaged over the seeds
    both arms ran, and the interval and the signed-rank test are over patients. Seeds in one arm
    only are left out (``n_seeds`` counts the shared ones).

    Args:
        a, b: ``{seed: {visit: value}}`` of the two arms.
        patients: ``{visit: patient id}``.
        confidence, n_resamples, seed, method: of the interval (:func:`bootstrap_interval`).
    """
    by_patient: dict[str, list[float]] = {}
    visits: set[str] = set()
    seeds = 0
    for s in sorted(set(a) & set(b)):
        diffs, used = _patient_differences(a[s], b[s], patients)
        if diffs:
            seeds += 1
            visits |= used
        for p, d in diffs.items():
            by_patient.setdefault(p, []).append(d)
    averaged = {p: float(np.mean(v)) for p, v in by_patient.items()}
    return _comparison(averaged, len(visits), seeds, confidence=confidence,
                       n_resamples=n_resamples, seed=seed, method=method)


# -- per-visit records ------------------------------------------------------------------------


def record_metrics(records: Sequence[Mapping[str, object]], names: Sequence[str], *,
                   confidence: float = 0.95, n_resamples: int = 9999,
                   seed: int = 0) -> dict[str, float]:
    """Patient-level summary of per-visit evaluation records, as flat floats (for a summary
    dict or MLflow metrics).

    Returns ``patients`` (distinct patients among the records) and, per metric ``name`` with a
    value in the records, ``{name}_patient_mean``, ``{name}_patient_sd`` (over patients,
    ``ddof=1``), ``{name}_patient_ci_low`` / ``_high`` (the bootstrap interval; NaN when
    undefined) and ``{name}_patients`` (patients with a finite value).

    Args:
        records: ``[{"visit", "patient_id", name: value, ...}]`` (one per visit).
        names: the metrics to summarise, e.g. ``("dice", "hd95")``; a name no record has is
            skipped.
    """
    patients = visit_patients(records)
    out: dict[str, float] = {"patients": float(len(set(patients.values())))}
    for name in names:
        values = {str(r["visit"]): _as_float(r[name]) for r in records if name in r}
        if not values:
            continue
        s = summarize(values, patients, confidence=confidence, n_resamples=n_resamples,
                      seed=seed)
        out.update({f"{name}_patient_mean": s.mean, f"{name}_patient_sd": s.sd,
                    f"{name}_patient_ci_low": s.interval.low,
                    f"{name}_patient_ci_high": s.interval.high,
                    f"{name}_patients": float(s.n_patients)})
    return out
