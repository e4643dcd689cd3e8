"""fpn.stats: patient-level aggregation, the bootstrap over patients, the paired test over
patients, Holm's correction and the between-seed spread, on small examples worked by hand and
against scipy called directly on the patient values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from fpn import stats

pytestmark = pytest.mark.unit

NAN = float("nan")

# 4 patients with 1-3 visits each; one visit of D is undefined (an HD95 of an empty mask, say)
PATIENTS = {"a1": "A", "a2": "A", "b1": "B", "c1": "C", "c2": "C", "c3": "C", "d1": "D",
            "d2": "D"}
VALUES = {"a1": 0.5, "a2": 0.7, "b1": 0.9, "c1": 0.2, "c2": 0.4, "c3": 0.6, "d1": NAN,
          "d2": 0.8}
# by hand: A (0.5 + 0.7) / 2 = 0.6, B 0.9, C (0.2 + 0.4 + 0.6) / 3 = 0.4, D 0.8 (d1 left out)
MEANS = {"A": 0.6, "B": 0.9, "C": 0.4, "D": 0.8}


# -- patients ---------------------------------------------------------------------------------

def test_patient_means_by_hand():
    pm = stats.patient_means(VALUES, PATIENTS)
    assert pm.patients == ("A", "B", "C", "D")
    assert pm.as_dict() == pytest.approx(MEANS)
    assert pm.visits == (2, 1, 3, 1) and pm.n_visits == 7 and pm.n_patients == 4
    assert pm.n_undefined == 1
    # the mean over patients (0.675) is not the mean over visits (4.1 / 7 = 0.5857): C's three
    # visits count once, as one patient
    s = stats.summarize(VALUES, PATIENTS)
    assert s.mean == pytest.approx(0.675) and s.n_patients == 4 and s.n_visits == 7
    assert s.sd == pytest.approx(np.std(list(MEANS.values()), ddof=1))
    assert s.n_undefined == 1


def test_a_visit_without_patient_is_refused_with_its_name():
    with pytest.raises(ValueError, match="patients: no patient for visit 'x9'"):
        stats.patient_means({**VALUES, "x9": 0.1}, PATIENTS)


def test_visit_patients_from_evaluation_records():
    records = [{"visit": "a1", "patient_id": "A", "dice": 0.5},
               {"visit": "b1", "patient_id": "B", "dice": 0.9}]
    assert stats.visit_patients(records) == {"a1": "A", "b1": "B"}
    with pytest.raises(ValueError, match=r"records\[0\]: .*'patient_id'"):
        stats.visit_patients([{"visit": "a1", "dice": 0.5}])
    with pytest.raises(ValueError, match="visit 'a1' has two patients"):
        stats.visit_patients([*records, {"visit": "a1", "patient_id": "Z"}])


def test_record_metrics_are_the_patient_level_summary_as_floats():
    records = [{"visit": v, "patient_id": p, "dice": VALUES[v], "hd95": None if v == "b1" else 1.0}
               for v, p in PATIENTS.items()]
    out = stats.record_metrics(records, ("dice", "hd95", "absent"))
    s = stats.summarize(VALUES, PATIENTS)
    assert out["patients"] == 4.0
    assert out["dice_patient_mean"] == pytest.approx(0.675)
    assert (out["dice_patient_ci_low"], out["dice_patient_ci_high"]) == (s.interval.low,
                                                                         s.interval.high)
    assert out["dice_patients"] == 4.0 and out["hd95_patients"] == 3.0  # B's only HD95 is None
    assert not any(k.startswith("absent") for k in out)
    assert all(isinstance(v, float) for v in out.values())


# -- the bootstrap over patients --------------------------------------------------------------

def test_bootstrap_contains_the_mean_and_is_reproducible():
    s = stats.summarize(VALUES, PATIENTS, seed=7)
    ci = s.interval
    assert ci.method == "percentile" and ci.n_patients == 4 and ci.confidence == 0.95
    assert ci.low < 0.675 < ci.high
    assert MEANS["C"] <= ci.low and ci.high <= MEANS["B"]  # a mean of patients stays within them
    assert stats.summarize(VALUES, PATIENTS, seed=7).interval == ci  # the same seed, the same CI
    # exactly scipy's percentile bootstrap of the 4 patient means with that seed
    ref = sps.bootstrap((np.array(list(MEANS.values())),), np.mean, method="percentile",
                        n_resamples=9999, rng=np.random.default_rng(7), vectorized=True)
    assert (ci.low, ci.high) == pytest.approx((ref.confidence_interval.low,
                                               ref.confidence_interval.high))


def test_bootstrap_method_collapse_and_undefined():
    many = np.linspace(0.1, 0.9, 12)
    assert stats.bootstrap_interval(many).method == "BCa"          # >= 10 patients
    assert stats.bootstrap_interval(many[:9]).method == "percentile"
    assert stats.bootstrap_interval(many[:9], method="BCa").method == "BCa"
    # identical patients: the interval collapses onto the mean
    same = stats.summarize({"a1": 0.7, "a2": 0.7, "b1": 0.7}, PATIENTS)
    assert (same.interval.low, same.interval.high, same.interval.method) == (0.7, 0.7, "none")
    # one patient (however many visits): undefined, and it says so
    one = stats.summarize({"c1": 0.2, "c2": 0.4, "c3": 0.6}, PATIENTS)
    assert one.n_patients == 1 and one.n_visits == 3 and one.mean == pytest.approx(0.4)
    assert math.isnan(one.interval.low) and math.isnan(one.interval.high)
    assert one.interval.method == "undefined" and "1 patient" in one.interval.note
    assert not one.interval.defined and math.isnan(one.sd)
    none = stats.summarize({"d1": NAN}, PATIENTS)
    assert none.n_patients == 0 and math.isnan(none.mean) and none.n_undefined == 1
    with pytest.raises(ValueError, match="confidence"):
        stats.bootstrap_interval([0.1, 0.2], confidence=95)
    with pytest.raises(ValueError, match="samples: non-finite"):
        stats.bootstrap_interval([0.1, NAN])


# -- the paired test over patients ------------------------------------------------------------

def test_paired_comparison_is_wilcoxon_on_patient_means():
    # b = a - delta per visit; per patient the mean of its deltas
    delta = {"a1": 0.10, "a2": 0.20, "b1": 0.05, "c1": 0.30, "c2": 0.30, "c3": 0.36,
             "d1": 0.40, "d2": 0.40}
    a = {v: 0.9 for v in PATIENTS}
    b = {v: 0.9 - d for v, d in delta.items()}
    b["d1"] = NAN  # left out of D's pairs
    cmp = stats.paired_comparison(a, b, PATIENTS)
    by_hand = {"A": 0.15, "B": 0.05, "C": 0.32, "D": 0.40}
    assert dict(cmp.differences) == pytest.approx(by_hand)
    assert cmp.difference == pytest.approx(np.mean(list(by_hand.values())))
    assert cmp.n_patients == 4 and cmp.n_visits == 7 and cmp.n_zero == 0 and cmp.n_seeds == 1
    ref = sps.wilcoxon(list(by_hand.values()), method="exact")
    assert cmp.p_value == pytest.approx(ref.pvalue) == pytest.approx(2 / 2 ** 4)
    assert cmp.test == "exact" and cmp.min_p == pytest.approx(0.125)
    assert cmp.interval.low <= cmp.difference <= cmp.interval.high
    # the visit-level test the tables used before: 7 pairs, all one sign -> 2 / 2^7, an n the
    # data do not have
    assert sps.wilcoxon([0.1, 0.2, 0.05, 0.3, 0.3, 0.36, 0.4]).pvalue < cmp.p_value


def test_ties_zeros_and_too_few_patients():
    # ties among the patient differences: every sign flip enumerated, as scipy does itself
    a = {"a1": 0.5, "b1": 0.5, "c1": 0.5, "d2": 0.5}
    b = {"a1": 0.4, "b1": 0.4, "c1": 0.3, "d2": 0.6}      # differences 0.1, 0.1, 0.2, -0.1
    cmp = stats.paired_comparison(a, b, PATIENTS)
    assert cmp.test == "exhaustive permutation"
    assert cmp.p_value == pytest.approx(sps.wilcoxon([0.1, 0.1, 0.2, -0.1]).pvalue)
    # a zero difference is dropped from the test (zero_method="wilcox") and counted
    b_zero = {**b, "b1": 0.5}
    cmp = stats.paired_comparison(a, b_zero, PATIENTS)
    assert cmp.n_zero == 1 and cmp.n_tested == 3 and cmp.min_p == pytest.approx(0.25)
    assert cmp.p_value == pytest.approx(sps.wilcoxon([0.1, 0.0, 0.2, -0.1]).pvalue)
    # all differences zero: the test is undefined; the interval collapses on 0
    cmp = stats.paired_comparison(a, dict(a), PATIENTS)
    assert cmp.p_value is None and "all 4 patients' differences are zero" in cmp.note
    assert (cmp.interval.low, cmp.interval.high) == (0.0, 0.0)
    # one patient, however many visits: no test, no interval
    one = stats.paired_comparison({"c1": 0.9, "c2": 0.8}, {"c1": 0.1, "c2": 0.2}, PATIENTS)
    assert one.p_value is None and one.n_patients == 1 and one.n_visits == 2
    assert "1 patient" in one.note and not one.interval.defined
    # two patients (the demo's test split): the smallest p is 0.5
    two = stats.paired_comparison({"a1": 0.9, "b1": 0.8}, {"a1": 0.1, "b1": 0.2}, PATIENTS)
    assert two.p_value == pytest.approx(0.5) and two.min_p == pytest.approx(0.5)
    assert stats.paired_comparison({"a1": 1.0}, {"b1": 1.0}, PATIENTS).n_patients == 0


def test_min_attainable_p():
    assert [stats.min_attainable_p(n) for n in (0, 1, 2, 5, 6)] == [
        None, 1.0, 0.5, 0.0625, 0.03125]


# -- Holm -------------------------------------------------------------------------------------

def test_holm_textbook_example_and_none():
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4 0.02, x3 0.03, x2 0.06, x1 0.04 -> running max 0.06
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx((0.03, 0.06, 0.06, 0.02))
    # None stays None and is not in the family (m = 2 here)
    assert stats.holm([0.02, None, 0.04]) == pytest.approx((0.04, None, 0.04))
    assert stats.holm([0.6, 0.7]) == (1.0, 1.0)  # capped at 1
    assert stats.holm([]) == () and stats.holm([None]) == (None,)
    with pytest.raises(ValueError, match=r"p_values\[1\]"):
        stats.holm([0.1, 1.5])


# -- seeds ------------------------------------------------------------------------------------

SEEDS = {0: {"a1": 0.6, "a2": 0.6, "b1": 0.9, "c1": 0.3},        # A 0.6, B 0.9, C 0.3 -> 0.6
         1: {"a1": 0.0, "a2": 0.2, "b1": 0.0, "c1": 0.2},        # A 0.1, B 0.0, C 0.2 -> 0.1
         2: {"a1": 0.5, "a2": 0.7, "b1": NAN, "c1": 0.5}}        # A 0.6, C 0.5 -> 0.55


def test_between_seed_spread_and_seed_averaged_patients():
    s = stats.summarize_seeds(SEEDS, PATIENTS)
    assert s.n_seeds == 3 and s.n_patients == 3 and s.n_visits == 4 and s.n_undefined == 1
    assert dict(s.seed_means) == pytest.approx({0: 0.6, 1: 0.1, 2: 0.55})
    assert s.seed_sd == pytest.approx(np.std([0.6, 0.1, 0.55], ddof=1))
    assert (s.seed_min, s.seed_max) == pytest.approx((0.1, 0.6))
    # each patient averaged over the seeds that have it: A (0.6 + 0.1 + 0.6) / 3, B (0.9 + 0.0)
    # / 2 (seed 2's B is undefined), C (0.3 + 0.2 + 0.5) / 3
    by_hand = {"A": 1.3 / 3, "B": 0.45, "C": 1.0 / 3}
    assert dict(s.patient_values) == pytest.approx(by_hand)
    assert s.mean == pytest.approx(np.mean(list(by_hand.values())))
    assert s.interval.n_patients == 3 and s.interval.low <= s.mean <= s.interval.high
    assert [seed for seed, _ in s.per_seed] == [0, 1, 2]
    assert s.per_seed[2][1].n_patients == 2
    one = stats.summarize_seeds({0: SEEDS[0]}, PATIENTS)
    assert one.n_seeds == 1 and math.isnan(one.seed_sd) and one.seed_min == one.seed_max


def test_paired_seed_comparison_pairs_seed_with_seed_and_tests_over_patients():
    other = {s: {v: (x - 0.1 if math.isfinite(x) else x) for v, x in visits.items()}
             for s, visits in SEEDS.items()}
    other[0]["b1"] = 0.6                      # B, seed 0: 0.3 below instead of 0.1
    other[5] = {"a1": 0.0}                    # a seed only one arm ran: left out
    cmp = stats.paired_seed_comparison(SEEDS, other, PATIENTS)
    assert cmp.n_seeds == 3 and cmp.n_patients == 3 and cmp.n_visits == 4
    # A: 0.1 in every seed; B: (0.3 + 0.1) / 2 (no pair in seed 2); C: 0.1
    by_hand = {"A": 0.1, "B": 0.2, "C": 0.1}
    assert dict(cmp.differences) == pytest.approx(by_hand)
    assert cmp.p_value == pytest.approx(sps.wilcoxon([0.1, 0.2, 0.1]).pvalue)
    assert cmp.min_p == pytest.approx(0.25)  # 3 patients: never below 0.25
