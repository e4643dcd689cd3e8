"""The clinical read-out: growth rates per eye, the ensemble's spread, agreement with graders,
the files, and the synthetic phantom's own truth (the rate from its written masks against the
rate of the lesion its generator drew)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fpn.agreement import (
    METRIC_NAMES,
    area_agreement,
    area_agreement_metrics,
    bland_altman,
    icc_2_1,
    r_squared,
    rate_errors,
)
from fpn.growth import (
    DAYS_PER_YEAR,
    VisitArea,
    growth_columns,
    growth_per_eye,
    lsq_rate,
    visit_areas,
    write_growth_csv,
)

pytestmark = pytest.mark.unit

#: t_{0.975} with 2 degrees of freedom, by hand: the t(2) CDF is 1/2 + t / (2 sqrt(2 + t^2)),
#: so F = 0.975 gives t / sqrt(2 + t^2) = 0.95, t = 0.95 sqrt(2 / (1 - 0.95^2))
T_975_DF2 = 0.95 * math.sqrt(2 / (1 - 0.95 ** 2))


def _eye(days, areas, *, patient="P1", eye="OD", members=None, graded=None) -> list[VisitArea]:
    return [VisitArea(f"{patient}_{eye}_{i}", patient, eye, d, a,
                      tuple(members[i]) if members else (), graded[i] if graded else None)
            for i, (d, a) in enumerate(zip(days, areas))]


# -- rates -----------------------------------------------------------------------------------------

def test_rate_on_a_known_series_matches_the_hand_computation():
    # area = 2 + 1.5 x + 0.1 (1, -1, -1, 1) over evenly spaced visits: the residual pattern is
    # orthogonal to (1, x), so the least-squares slope is exactly 1.5 mm^2/year, and
    # SSE = 4 * 0.01, s^2 = SSE / (n - 2) = 0.02, Sxx = (180 / 365.25)^2 * 5 (x in years)
    days = [0, 180, 360, 540]
    x = np.array(days) / DAYS_PER_YEAR
    areas = 2 + 1.5 * x + 0.1 * np.array([1, -1, -1, 1])
    (eye,) = growth_per_eye(_eye(days, list(areas)))
    stderr = math.sqrt(0.02 / ((180 / 365.25) ** 2 * 5))
    rate = eye.area_rate
    assert rate.per_year == pytest.approx(1.5, abs=1e-12)
    assert rate.stderr == pytest.approx(stderr, rel=1e-12)
    assert (rate.ci_low, rate.ci_high) == pytest.approx(
        (1.5 - T_975_DF2 * stderr, 1.5 + T_975_DF2 * stderr), rel=1e-10)
    assert rate.visits == 4 and eye.reason == ""
    # the sqrt-area rate is the same least-squares line through sqrt(area)
    fit = np.polyfit(x, np.sqrt(areas), 1)
    assert eye.sqrt_rate.per_year == pytest.approx(fit[0], rel=1e-10)
    assert [v.day for v in eye.visits] == days


def test_visits_are_put_in_time_order_before_the_fit():
    visits = _eye([360, 0, 180], [3.0, 1.0, 2.0])
    (eye,) = growth_per_eye(visits)
    assert eye.days == [0, 180, 360]
    assert eye.area_rate.per_year == pytest.approx(2 * DAYS_PER_YEAR / 360)
    assert eye.area_rate.ci_low == pytest.approx(eye.area_rate.per_year)  # exact line: zero width


def test_two_visits_give_the_exact_slope_and_no_interval():
    (eye,) = growth_per_eye(_eye([0, 200], [1.0, 1.8]))
    assert eye.area_rate.per_year == pytest.approx(0.8 * DAYS_PER_YEAR / 200)
    assert eye.area_rate.ci_low is None and eye.area_rate.ci_high is None
    assert eye.area_rate.stderr is None  # undefined, not zero
    assert "2 visits" in eye.reason and "no interval" in eye.reason
    assert eye.sqrt_rate.per_year == pytest.approx(
        (math.sqrt(1.8) - 1.0) * DAYS_PER_YEAR / 200)


def test_an_eye_with_one_visit_has_no_rate_and_says_why():
    eyes = growth_per_eye(_eye([0], [1.2]) + _eye([0, 180, 360], [1, 2, 3], patient="P2"))
    one, three = eyes
    assert (one.patient_id, one.area_rate, one.sqrt_rate) == ("P1", None, None)
    assert one.reason == "1 visit: a rate needs at least 2"
    assert three.area_rate is not None and three.reason == ""


def test_visits_without_days_give_no_rate_and_name_the_visits():
    rows = [{"visit": "A_OD_0", "patient_id": "A", "eye": "OD", "day": 0, "area_mm2": 1.0},
            {"visit": "A_OD_x", "patient_id": "A", "eye": "OD", "day": "", "area_mm2": 1.5},
            {"visit": "A_OD_y", "patient_id": "A", "eye": "OD", "day": None, "area_mm2": 2.0}]
    (eye,) = growth_per_eye(visit_areas(rows))
    assert eye.area_rate is None and eye.sqrt_rate is None
    assert eye.reason == "visits without a day: A_OD_x, A_OD_y"
    assert eye.days == [0, None, None]  # unknown days last


def test_all_visits_on_one_day_and_unjoinable_visits_give_no_rate():
    eyes = growth_per_eye(
        _eye([30, 30], [1.0, 1.1])
        + [VisitArea("vol_a", "", "", None, 1.0), VisitArea("vol_b", "", "", None, 2.0)])
    (same_day,) = [e for e in eyes if e.patient_id == "P1"]
    alone = [e for e in eyes if not e.patient_id]
    assert same_day.area_rate is None and same_day.reason == "all visits on one day"
    assert len(alone) == 2 and all(e.area_rate is None for e in alone)
    assert all(e.reason == "no patient id or eye: visits cannot be joined" for e in alone)


def test_lsq_rate_refuses_what_has_no_slope():
    with pytest.raises(ValueError, match="at least 2"):
        lsq_rate([0], [1.0])
    with pytest.raises(ValueError, match="one day"):
        lsq_rate([5, 5], [1.0, 2.0])
    with pytest.raises(ValueError, match="one length"):
        lsq_rate([0, 1], [1.0])


def test_visit_areas_refuses_bad_rows_naming_the_visit():
    with pytest.raises(ValueError, match=r"visit 'A_OD_0'.*day 'soon'"):
        visit_areas([{"visit": "A_OD_0", "day": "soon", "area_mm2": 1.0}])
    with pytest.raises(ValueError, match=r"visit 'A_OD_0'.*no 'area_mm2'"):
        visit_areas([{"visit": "A_OD_0", "day": 0}])
    with pytest.raises(ValueError, match=r"visit 'A_OD_0'.*finite number >= 0"):
        visit_areas([{"visit": "A_OD_0", "day": 0, "area_mm2": -1}])
    with pytest.raises(ValueError, match="given twice"):
        growth_per_eye(_eye([0], [1.0]) + _eye([0], [1.0]))


# -- the ensemble's spread ---------------------------------------------------------------------------

def test_member_rates_give_the_spread_of_the_rate(tmp_path):
    # three members on exact lines with slopes 1.0, 1.5 and 2.0 mm^2/year: their rates are those
    # slopes, min 1.0, max 2.0, sd 0.5; the reported area (the mean probability's) is separate
    days = [0, 180, 365]
    x = np.array(days) / DAYS_PER_YEAR
    members = [[1.0 + s * xi for s in (1.0, 1.5, 2.0)] for xi in x]
    reported = [1.0 + 1.4 * xi for xi in x]
    (eye,) = growth_per_eye(_eye(days, reported, members=members))
    assert eye.members == 3
    assert eye.member_area_rates == pytest.approx((1.0, 1.5, 2.0))
    assert eye.area_rate.per_year == pytest.approx(1.4)
    row = _csv_rows(write_growth_csv(tmp_path / "g.csv", [eye]))[0]
    assert float(row["member_rate_mm2_per_year_min"]) == pytest.approx(1.0)
    assert float(row["member_rate_mm2_per_year_max"]) == pytest.approx(2.0)
    assert float(row["member_rate_mm2_per_year_sd"]) == pytest.approx(0.5)
    sqrt_rates = [np.polyfit(x, np.sqrt([m[j] for m in members]), 1)[0] for j in range(3)]
    assert eye.member_sqrt_rates == pytest.approx(tuple(sqrt_rates))


# -- agreement -----------------------------------------------------------------------------------------

def test_bland_altman_on_a_small_known_example():
    # differences -0.5, -0.5, 0.5, -0.5: bias -0.25; deviations -0.25 (x3) and 0.75 give
    # SS = 0.75, sd = sqrt(0.75 / 3) = 0.5; limits -0.25 -/+ 1.96 * 0.5
    ba = bland_altman([1, 2, 3, 4], [1.5, 2.5, 2.5, 4.5])
    assert (ba.n, ba.bias, ba.sd) == (4, pytest.approx(-0.25), pytest.approx(0.5))
    assert ba.loa_low == pytest.approx(-0.25 - 1.959964 * 0.5, abs=1e-6)
    assert ba.loa_high == pytest.approx(-0.25 + 1.959964 * 0.5, abs=1e-6)
    one = bland_altman([1.0], [2.0])
    assert one.bias == -1.0 and math.isnan(one.sd) and math.isnan(one.loa_low)


def test_icc_2_1_reproduces_shrout_and_fleiss_table_2():
    # Shrout & Fleiss (1979), Table 2: 6 targets rated by 4 judges; their Table 4 gives
    # ICC(2,1) = .29 (from BMS 11.24, JMS 32.49, EMS 1.02 of their Table 3)
    ratings = [[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]]
    assert icc_2_1(ratings) == pytest.approx(0.29, abs=0.005)
    assert icc_2_1(ratings) == pytest.approx((11.24 - 1.02) / (11.24 + 3 * 1.02
                                                                + 4 * (32.49 - 1.02) / 6),
                                             abs=1e-3)


def test_icc_is_absolute_agreement_and_r2_is_association():
    graded = np.array([1.0, 2.0, 3.5, 5.0, 7.0])
    assert icc_2_1(np.column_stack([graded, graded])) == pytest.approx(1.0)
    shifted = graded + 1.0  # a constant bias: perfect association, imperfect agreement
    assert r_squared(shifted, graded) == pytest.approx(1.0)
    assert icc_2_1(np.column_stack([shifted, graded])) < 0.95
    assert math.isnan(icc_2_1([[1.0, 1.0]])) and math.isnan(r_squared([1, 1], [1, 2]))


def test_agreement_metrics_from_evaluate_records():
    # two patients: P1 OD with 3 visits (pred = graded + 0.2 at day 0 growing to + 0.4), P2 OS
    # with one visit (no rate); evaluate's records carry only these keys and the metrics
    records = [
        {"visit": "P1_OD_0", "patient_id": "P1", "eye": "OD", "day": 0, "dice": 0.9, "hd95": 1.0,
         "area_pred_mm2": 1.2, "area_true_mm2": 1.0},
        {"visit": "P1_OD_180", "patient_id": "P1", "eye": "OD", "day": 180, "dice": 0.9,
         "hd95": 1.0, "area_pred_mm2": 1.8, "area_true_mm2": 1.5},
        {"visit": "P1_OD_360", "patient_id": "P1", "eye": "OD", "day": 360, "dice": 0.9,
         "hd95": 1.0, "area_pred_mm2": 2.4, "area_true_mm2": 2.0},
        {"visit": "P2_OS_0", "patient_id": "P2", "eye": "OS", "day": 0, "dice": 0.5,
         "hd95": float("nan"), "area_pred_mm2": 0.5, "area_true_mm2": 0.6},
    ]
    m = area_agreement_metrics(records)
    assert set(m) == set(METRIC_NAMES)
    assert (m["area_n_visits"], m["area_n_eyes"], m["area_n_patients"]) == (4, 2, 2)
    assert m["area_bias_mm2"] == pytest.approx((0.2 + 0.3 + 0.4 - 0.1) / 4)
    assert m["area_loa_low_mm2"] < m["area_bias_mm2"] < m["area_loa_high_mm2"]
    # P1: pred rate 1.2 mm^2 per 180 days, graded 1.0 per 360 days... both exact lines
    pred_rate, graded_rate = 0.6 * DAYS_PER_YEAR / 180, 0.5 * DAYS_PER_YEAR / 180
    assert m["growth_rate_error_n_eyes"] == 1 and m["growth_rate_error_n_patients"] == 1
    assert m["growth_rate_error_mm2_per_year_mean"] == pytest.approx(pred_rate - graded_rate)
    assert m["growth_rate_error_mm2_per_year_mae"] == pytest.approx(pred_rate - graded_rate)
    assert math.isnan(m["growth_rate_error_mm2_per_year_sd"])  # one eye: no sd
    assert m["growth_n_eyes_with_rate"] == 1 and m["growth_n_eyes"] == 2
    assert math.isnan(m["area_member_range_mm2_mean"])  # the records carry no members
    agreement = area_agreement(visit_areas(records, area_key="area_pred_mm2",
                                           graded_key="area_true_mm2"))
    assert agreement.icc == pytest.approx(m["area_icc"]) and 0 < agreement.icc < 1


# -- files ---------------------------------------------------------------------------------------------

def _csv_rows(path: Path) -> list[dict[str, str]]:
    with Path(path).open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_growth_csv_leaves_undefined_values_empty_and_says_why(tmp_path):
    eyes = growth_per_eye(_eye([0], [1.0], patient="A")
                          + _eye([0, 180], [1.0, 1.5], patient="B")
                          + _eye([0, 180, 400], [1.0, 1.4, 2.1], patient="C")
                          + [VisitArea("D_OD_x", "D", "OD", None, 1.0),
                             VisitArea("D_OD_0", "D", "OD", 0, 1.2)])
    path = write_growth_csv(tmp_path / "growth.csv", eyes)
    assert not list(tmp_path.glob(".*tmp*"))  # written through a temporary name, then renamed
    rows = {r["patient_id"]: r for r in _csv_rows(path)}
    assert list(rows["A"]) == growth_columns("mm2") and "reason" in rows["A"]
    assert rows["A"]["rate_mm2_per_year"] == "" and rows["A"]["reason"].startswith("1 visit")
    assert rows["B"]["rate_mm2_per_year"] != "" and rows["B"]["rate_mm2_per_year_ci_low"] == ""
    assert "no interval" in rows["B"]["reason"]
    assert rows["C"]["rate_mm2_per_year_ci_low"] != "" and rows["C"]["reason"] == ""
    assert rows["D"]["rate_mm2_per_year"] == "" and "D_OD_x" in rows["D"]["reason"]
    assert rows["D"]["days"] == "0;"


# -- the read-out on a store -----------------------------------------------------------------------

SHAPE = (8, 64, 32)
SPACING = (0.12, 0.0039, 0.0113)


@pytest.fixture(scope="module")
def tiny_store_and_model(tmp_path_factory):
    """A store of 2 patients (one eye with 3 visits, two with a mask; one eye with 1 visit)
    written with the writer primitives, and 2 untrained FPN members."""
    from data_prep.sources import VisitArrays
    from data_prep.store_writer import Encoding, init_store, write_index, write_visit
    from fpn.models import create_model
    from fpn.storage import MODEL_FILE, save_member

    root = tmp_path_factory.mktemp("readout")
    location = str(root / "store.zarr")
    init_store(location)
    rng = np.random.default_rng(0)
    index = {}
    for patient, eye, day, labelled in [("A", "OD", 0, True), ("A", "OD", 170, True),
                                        ("A", "OD", 370, False), ("B", "OS", 0, True)]:
        mask = (rng.random(SHAPE[::2]) > 0.7).astype(np.uint8) if labelled else None
        arrays = VisitArrays(oct=rng.normal(0, 1, SHAPE).astype(np.float32), spacing_mm=SPACING,
                             mask=mask)
        key = f"{patient}_{eye}_{day}"
        index[key] = write_visit(location, key, arrays, patient_id=patient, eye=eye, day=day,
                                 encoding=Encoding("float32"))
    write_index(location, index, {"train": [], "val": [], "test": ["A", "B"]}, "seeded:0",
                Encoding("float32"))
    kwargs = {"in_channels": 1, "out_channels": 1, "width": 0.25}
    model_dir = root / "model"
    for j in range(2):
        torch.manual_seed(j)
        member = model_dir / "members" / f"m{j}" / MODEL_FILE
        member.parent.mkdir(parents=True)
        save_member(member, create_model("fpn", **kwargs).eval(), model_name="fpn",
                    model_kwargs=kwargs, target="mask", zscore_eps=1e-6)
    return location, str(model_dir)


def test_growth_readout_reports_the_ensembles_area_with_the_members_spread(
        tiny_store_and_model, tmp_path):
    from fpn.data.store import open_store
    from fpn.inference import load_ensemble
    from fpn.readout import growth_readout, predict_members

    location, model = tiny_store_and_model
    result = growth_readout(model, location, split="test", out=tmp_path / "out",
                            tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", device="cpu")
    store, ensemble = open_store(location), load_ensemble(model, device="cpu")
    pixel = SPACING[0] * SPACING[2]
    assert result.members == 2 and len(result.visits) == 4
    for v in result.visits:
        vol = store.read(v.visit, "oct")
        prob = ensemble.predict_volume(vol)  # what `predict` thresholds
        assert v.area == pytest.approx(float((prob >= 0.5).sum()) * pixel)
        mean, members = predict_members(ensemble, vol)
        np.testing.assert_array_equal(mean, prob)
        assert v.member_areas == pytest.approx(
            tuple(float((m >= 0.5).sum()) * pixel for m in members))
        info = store.visit(v.visit)
        expected = float(store.read(v.visit, "mask").sum()) * pixel if info.labelled else None
        assert v.graded_area == (pytest.approx(expected) if expected is not None else None)
    eyes = {e.patient_id: e for e in result.eyes}
    assert eyes["A"].area_rate is not None and eyes["A"].members == 2
    assert eyes["A"].graded_area_rate is None and "graded areas at 2 of 3" in eyes["A"].reason
    assert eyes["B"].area_rate is None and eyes["B"].reason.startswith("1 visit")
    assert set(result.metrics) == set(METRIC_NAMES)
    assert result.metrics["area_n_visits"] == 3 and result.metrics["area_n_patients"] == 2
    assert result.agreement is not None and result.agreement.n_visits == 3
    assert set(result.files) == {"growth_csv", "visits_csv", "growth_plot", "bland_altman_plot"}
    for path in result.files.values():
        assert path.parent == tmp_path / "out" and path.stat().st_size > 0
    assert Image.open(result.files["growth_plot"]).format == "PNG"
    visit_rows = _csv_rows(result.files["visits_csv"])
    assert [r["visit"] for r in visit_rows] == [v.visit for v in result.visits]
    by_visit = {r["visit"]: r for r in visit_rows}
    assert by_visit["A_OD_370"]["graded_area_mm2"] == "" and by_visit["A_OD_0"]["graded_area_mm2"]
    assert "member_2_area_mm2" in visit_rows[0]
    assert [r["reason"] != "" for r in _csv_rows(result.files["growth_csv"])] == [True, True]


def test_growth_readout_refuses_an_empty_split(tiny_store_and_model, tmp_path):
    from fpn.readout import growth_readout

    location, model = tiny_store_and_model
    with pytest.raises(ValueError, match="no visits in split 'val'"):
        growth_readout(model, location, split="val", out=tmp_path, device="cpu",
                       tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")


# -- the phantom's own truth ---------------------------------------------------------------------------

PHANTOM_SHAPE = (32, 16, 64)  # (S, D, W): en-face pixels of 0.19 x 0.09 mm, a few seconds


@pytest.fixture(scope="module", params=["easy", "hard"])
def phantom(request, tmp_path_factory):
    """A phantom (12 patients, up to 3 visits 180 days apart) and, per eye with 2+ visits, the
    visits as :class:`VisitArea`: area = the written mask's (read back from its PNG),
    graded_area = the generator's own lesion at that day (``lesion_mask(day)``)."""
    from data_prep.synthetic import make_synthetic_dataset
    from data_prep.synthetic.truth import lesion_area_mm2, replay_eyes

    root = tmp_path_factory.mktemp(f"phantom-{request.param}") / "data"
    make_synthetic_dataset(root, patients=12, unlabelled=0, shape=PHANTOM_SHAPE, visits=3,
                           seed=0, preset=request.param)
    info = json.loads((root / "data_info.json").read_text())
    visits, eyes = [], replay_eyes(root)
    for eye in eyes:
        s_mm, _, w_mm = eye.anatomy.grid.spacing_mm
        entries = [e for e in info[eye.patient_id] if e["Position"] == eye.eye]
        days = [int(e["DayInStudy"]) for e in entries]
        assert tuple(days) == eye.days
        truth = lesion_area_mm2(eye.anatomy, days)
        for entry, day, true_area in zip(entries, days, truth):
            png = (root / f"{eye.patient_id}_{eye.eye}" / str(day) / "preprocessed_images"
                   / f"bscan_size.mask_faf.{entry['FileSetId']}.png")
            mask = np.asarray(Image.open(png)) >= 128
            visits.append(VisitArea(f"{eye.patient_id}_{eye.eye}_{day}", eye.patient_id,
                                    eye.eye, day, float(mask.sum()) * s_mm * w_mm,
                                    graded_area=true_area))
    return request.param, root, eyes, visits


def test_the_phantom_replay_draws_the_written_masks(phantom):
    """The replayed generator is the one that wrote the data: its grader's outline of its lesion
    at each day is the mask on disk, pixel for pixel (the lesion itself for ``easy``)."""
    from data_prep.synthetic.render import grader_outline

    preset, root, eyes, _ = phantom
    info = json.loads((root / "data_info.json").read_text())
    for eye in eyes:
        for entry in (e for e in info[eye.patient_id] if e["Position"] == eye.eye):
            day = int(entry["DayInStudy"])
            mask = np.asarray(Image.open(
                root / f"{eye.patient_id}_{eye.eye}" / str(day) / "preprocessed_images"
                / f"bscan_size.mask_faf.{entry['FileSetId']}.png")) >= 128
            lesion = eye.anatomy.lesion_mask(day)
            np.testing.assert_array_equal(mask, grader_outline(eye.anatomy, lesion))
            if preset == "easy":
                np.testing.assert_array_equal(mask, lesion)


def test_growth_rate_from_the_phantoms_masks_matches_its_generator(phantom):
    """The least-squares rate from the written masks against the same rate from the generator's
    lesion at the same days (its area is not linear in time: the threshold drops linearly, so
    like is compared with like). ``rate_errors`` gives mask rate - generator rate per eye.

    - ``easy``: the mask is the lesion, so the rates are equal (to rounding).
    - ``hard``: the mask is a grader's outline (presets.py): 0.02-0.1 mm outside the lesion
      (a per-eye bias) +/- up to 0.08 mm of smooth jitter, smoothed by 0.05 mm, without foci
      under 0.03 mm^2. A band outside a growing lesion adds its perimeter's growth times the
      offset to the area's rate, so the mask's mm^2/year rate is larger on average, by up to
      ~offset / radius (0.1 / 0.25 mm for the smallest lesions: ~40 %): per eye within 50 % of
      the generator's rate. On the sqrt-area scale a constant outward offset cancels (a disc of
      radius r: sqrt(A) = sqrt(pi) r, its outline sqrt(pi) (r + o): the same slope; that is
      why GATHER used sqrt-area), leaving the jitter met by the moving edge, the smoothing and
      the dropped foci: per eye within 0.1 sqrt-mm/year of the generator's rate where the eye
      has GA at every visit (about a third of the phantom's mean sqrt rate, 0.34), and the
      mean over eyes within 0.02. Not for eyes with no GA at baseline: their sqrt-area jumps
      from 0 to sqrt(pi) (r + o), so the band does not cancel. Measured (seeds 0-9 at this
      shape, 0-4 at 16 x 64 x 128, 0-3 at 48 x 16 x 128; 235 eyes with GA at every visit):
      sqrt-rate difference at most 0.079 (95th percentile 0.04), mean within 0.004; mm^2 rate
      within 44 % (259 eyes, incipient ones included).
    """
    preset, _, _, visits = phantom
    eyes = [e for e in growth_per_eye(visits) if e.area_rate is not None]
    assert len(eyes) >= 10
    errors = {(p, e): (d_area, d_sqrt) for p, e, d_area, d_sqrt in rate_errors(eyes).eyes}
    assert len(errors) == len(eyes)
    for e in eyes:
        d_area, d_sqrt = errors[(e.patient_id, e.eye)]
        true_rate = e.graded_area_rate.per_year
        assert true_rate > 0  # the generator's lesions only grow
        if preset == "easy":
            assert d_area == pytest.approx(0.0, abs=1e-9 * true_rate)
            assert d_sqrt == pytest.approx(0.0, abs=1e-9)
            continue
        assert abs(d_area) <= 0.5 * true_rate, (e.patient_id, e.eye, d_area, true_rate)
        if all(v.graded_area > 0 for v in e.visits):
            assert abs(d_sqrt) <= 0.1, (e.patient_id, e.eye, d_sqrt)
    if preset == "hard":
        with_ga = [errors[(e.patient_id, e.eye)][1] for e in eyes
                   if all(v.graded_area > 0 for v in e.visits)]
        assert len(with_ga) >= 8 and abs(float(np.mean(with_ga))) <= 0.02
        # the outline lies outside the lesion: the mm^2 rate is larger on average
        assert float(np.mean([errors[k][0] for k in errors])) > 0
