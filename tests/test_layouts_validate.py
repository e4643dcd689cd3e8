"""Source layouts (reference, manifest), per-visit loading and ``validate``."""

from __future__ import annotations

import numpy as np
import pytest

from data_prep.layouts import check_visit, discover, load_visit
from data_prep.sources import DataError
from data_prep.validate import validate_main, validate_source
from tests.fixtures_formats import (
    index_volume,
    line_positions,
    write_manifest,
    write_nifti,
    write_npy,
    write_png,
    write_reference_json,
    write_reference_visit,
    write_vol,
)

S, D, W = 3, 5, 7
SPACING = (0.12, 0.0039, 0.011)
SPACING_COLUMNS = ["patient_id", "eye", "day", "oct", "faf", "slo", "mask",
                   "spacing_s", "spacing_d", "spacing_w", "split"]


def _mask_png() -> np.ndarray:
    mask = np.zeros((S, W), np.uint8)
    mask[1:, 2:5] = 255
    return mask


def _grey(value: int = 90) -> np.ndarray:
    return np.full((S, W), value, np.uint8)


@pytest.fixture()
def reference_root(tmp_path):
    root = tmp_path / "ref"
    vol = index_volume(S, D, W)
    write_reference_visit(root, "P1", "OD", "0", "01", vol, SPACING, _grey(), _grey(40), _mask_png())
    write_reference_visit(root, "P1", "OD", "30", "02", vol)  # no images: unlabelled visit
    write_reference_visit(root, "P2", "OS", "0", "01", vol, SPACING, _grey(), None, _mask_png())
    write_reference_visit(root, "P3", "OD", "0", "01", vol, SPACING, None, None, _mask_png())
    data_info = {
        "P1": [{"FileSetId": "01", "Position": "OD", "DayInStudy": "0", "Device": "Spectralis"},
               {"FileSetId": "02", "Position": "OD", "DayInStudy": "30"}],
        "P2": [{"FileSetId": "01", "Position": "OS", "DayInStudy": 0}],
        "P3": [{"FileSetId": "01", "Position": "OD", "DayInStudy": "0"}],
    }
    write_reference_json(root, data_info, {"train": ["P1"], "val": [], "test": ["P2"]})
    return root


def test_reference_discovery(reference_root):
    visits, problems, split = discover(reference_root, "reference")
    assert problems == []
    assert split == {"train": ["P1"], "val": [], "test": ["P2"]}
    by_key = {v.key: v for v in visits}
    assert sorted(by_key) == ["P1_OD_0", "P1_OD_30", "P2_OS_0", "P3_OD_0"]
    assert by_key["P1_OD_0"].split == "train" and by_key["P2_OS_0"].split == "test"
    assert by_key["P3_OD_0"].split is None  # outside split.json: left to the store writer
    assert by_key["P1_OD_30"].mask is None and by_key["P1_OD_30"].faf is None  # unlabelled
    assert by_key["P2_OS_0"].slo is None and by_key["P2_OS_0"].mask is not None
    assert by_key["P1_OD_0"].oct.endswith("P1_OD/0/bscan_flat.01.npy")

    arrays = load_visit(by_key["P1_OD_0"])
    np.testing.assert_array_equal(arrays.oct, index_volume(S, D, W))
    assert arrays.spacing_mm == pytest.approx(SPACING)
    np.testing.assert_array_equal(arrays.mask, _mask_png() // 255)
    np.testing.assert_allclose(arrays.slo, 40 / 255)
    assert arrays.extra["spacing_source"] == "spacing_file"


def test_reference_clean_source_validates(reference_root, capsys):
    visits, problems = validate_source(reference_root, "reference")
    assert len(visits) == 4 and problems == []
    assert validate_main([str(reference_root), "--layout", "reference"]) == 0
    assert "OK: 4 visits (3 with mask), 0 problem(s)" in capsys.readouterr().out


def test_reference_missing_json_and_double_split(tmp_path, reference_root):
    empty = tmp_path / "empty"
    empty.mkdir()
    _, problems, split = discover(empty, "reference")
    assert split is None
    assert {p.path for p in problems} == {str(empty / "data_info.json"), str(empty / "split.json")}
    assert all("file not found" in p.message for p in problems)

    write_reference_json(reference_root, {"P1": [{"FileSetId": "01", "Position": "OD",
                                                  "DayInStudy": "0"}]},
                         {"train": ["P1"], "test": ["P1"]})
    _, problems = validate_source(reference_root, "reference")
    assert [str(p) for p in problems] == [
        f"{reference_root / 'split.json'}: patient P1 is in more than one split part: train, test"]


def test_manifest_formats_spacing_precedence_and_vol_slo(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    vol = index_volume(S, D, W)
    write_nifti(data / "a.nii.gz", vol, SPACING)
    write_npy(data / "b.npy", vol)
    slo = np.add.outer(np.arange(32), 4 * np.arange(48)).astype(np.uint8)
    write_vol(data / "c.vol", vol, SPACING, slo, (0.02, 0.01),
              line_positions(S, 0.04, 0.10, 0.04, 0.06))
    write_png(data / "mask.png", _mask_png())
    write_manifest(tmp_path / "manifest.csv", [
        {"patient_id": "A", "eye": "od", "day": 0, "oct": "data/a.nii.gz", "mask": "data/mask.png",
         "split": "train"},
        {"patient_id": "A", "eye": "OD", "day": 7, "oct": str(data / "a.nii.gz"),
         "spacing_s": 0.2, "spacing_d": 0.005, "spacing_w": 0.01, "split": "train"},
        {"patient_id": "B", "eye": "OS", "day": 0, "oct": "data/b.npy",
         "spacing_s": 0.1, "spacing_d": 0.004, "spacing_w": 0.01},
        {"patient_id": "C", "eye": "OD", "day": 3, "oct": "data/c.vol", "split": "test"},
    ], SPACING_COLUMNS)

    visits, problems, split = discover(tmp_path, "manifest")  # folder holding manifest.csv
    assert problems == []
    assert split == {"train": ["A"], "val": [], "test": ["C"]}
    by_key = {v.key: v for v in visits}
    assert by_key["A_OD_0"].oct == str(data / "a.nii.gz") and by_key["B_OS_0"].split is None

    from_file = load_visit(by_key["A_OD_0"])
    assert from_file.spacing_mm == pytest.approx(SPACING)
    np.testing.assert_array_equal(from_file.mask, _mask_png() // 255)
    assert load_visit(by_key["A_OD_7"]).spacing_mm == (0.2, 0.005, 0.01)  # manifest wins
    assert load_visit(by_key["B_OS_0"]).spacing_mm == (0.1, 0.004, 0.01)

    heidelberg = load_visit(by_key["C_OD_3"])
    np.testing.assert_array_equal(heidelberg.oct, vol)
    assert heidelberg.spacing_mm == pytest.approx(SPACING)
    # B-scan s lies on SLO row 2 + 3 s, A-scans on columns 4..10.
    np.testing.assert_allclose(heidelberg.slo, slo[[2, 5, 8], 4:11] / 255, atol=1e-6)

    _, problems = validate_source(tmp_path / "manifest.csv", "manifest", workers=2)
    assert problems == []


def test_manifest_declaration_problems(tmp_path):
    write_manifest(tmp_path / "m.csv", [
        {"patient_id": "", "eye": "OD", "day": 0, "oct": "x.npy"},
        {"patient_id": "A", "eye": "left", "day": 0, "oct": "x.npy"},
        {"patient_id": "A", "eye": "OD", "day": "baseline", "oct": "x.npy"},
        {"patient_id": "A", "eye": "OD", "day": 1, "oct": "x.npy", "split": "holdout"},
    ], ["patient_id", "eye", "day", "oct", "split"])
    visits, problems, _ = discover(tmp_path / "m.csv", "manifest")
    messages = [p.message for p in problems]
    assert messages == ["row 2: empty patient_id", "row 3: eye 'left' is not OD or OS",
                        "row 4: day 'baseline' is not an integer",
                        "row 5: split 'holdout' is not one of train, val, test, unlabelled"]
    assert len(visits) == 1
    (tmp_path / "bad.csv").write_text("patient,eye\nA,OD\n")
    _, problems, _ = discover(tmp_path / "bad.csv", "manifest")
    assert "missing column(s): patient_id, day, oct" in problems[0].message


@pytest.fixture()
def faulty_source(tmp_path):
    """A manifest where every row but the duplicates carries exactly one fault."""
    d = tmp_path
    vol = index_volume(S, D, W)
    write_npy(d / "good.npy", vol)
    write_png(d / "mask.png", _mask_png())
    write_png(d / "faf.png", _grey())
    truncated = write_npy(d / "truncated.npy", vol)
    truncated.write_bytes(truncated.read_bytes()[:-17])
    (d / "unreadable.nii.gz").write_bytes(b"\x1f\x8b\x08 definitely not gzip")
    nan = vol.copy()
    nan[1, 2, 3] = np.nan
    nan[2, 0, 0] = np.inf
    write_npy(d / "nan.npy", nan)
    write_png(d / "mask_small.png", _mask_png()[:, :-1])
    write_png(d / "faf_wide.png", np.zeros((S, W + 2), np.uint8))
    grey = _mask_png()
    grey[0, 0] = 100
    write_png(d / "mask_grey.png", grey)
    write_npy(d / "nospacing.npy", vol)
    write_npy(d / "negspacing.npy", vol)
    (d / "scan.mha").write_bytes(b"ObjectType = Image\n")
    sp = {"spacing_s": SPACING[0], "spacing_d": SPACING[1], "spacing_w": SPACING[2]}
    rows = [
        {"patient_id": "P01", "eye": "OD", "day": 0, "oct": "missing.npy", **sp},
        {"patient_id": "P02", "eye": "OD", "day": 0, "oct": "unreadable.nii.gz", **sp},
        {"patient_id": "P03", "eye": "OD", "day": 0, "oct": "truncated.npy", **sp},
        {"patient_id": "P04", "eye": "OD", "day": 0, "oct": "nan.npy", **sp},
        {"patient_id": "P05", "eye": "OD", "day": 0, "oct": "good.npy", "mask": "mask_small.png",
         **sp},
        {"patient_id": "P06", "eye": "OD", "day": 0, "oct": "good.npy", "faf": "faf_wide.png",
         **sp},
        {"patient_id": "P07", "eye": "OD", "day": 0, "oct": "good.npy", "mask": "mask_grey.png",
         **sp},
        {"patient_id": "P08", "eye": "OD", "day": 0, "oct": "nospacing.npy"},
        {"patient_id": "P09", "eye": "OD", "day": 0, "oct": "negspacing.npy",
         "spacing_s": 0.1, "spacing_d": 0.0, "spacing_w": -0.01},
        {"patient_id": "P10", "eye": "OS", "day": 5, "oct": "good.npy", "mask": "mask.png", **sp},
        {"patient_id": "P10", "eye": "OS", "day": 5, "oct": "good.npy", "faf": "faf.png", **sp},
        {"patient_id": "P11", "eye": "OD", "day": 0, "oct": "good.npy", "split": "train", **sp},
        {"patient_id": "P11", "eye": "OD", "day": 9, "oct": "good.npy", "split": "test", **sp},
        {"patient_id": "P12", "eye": "OD", "day": 0, "oct": "scan.mha", **sp},
    ]
    csv_path = write_manifest(d / "manifest.csv", rows, SPACING_COLUMNS)
    expected = [
        (d / "missing.npy", "file not found"),
        (d / "unreadable.nii.gz", "unreadable NIfTI"),
        (d / "truncated.npy", "truncated"),
        (d / "nan.npy", "NaN or inf (2 of"),
        (d / "mask_small.png", "mask shape (3, 6) does not match the OCT en-face grid (S, W) = (3, 7)"),
        (d / "faf_wide.png", "faf shape (3, 9) does not match"),
        (d / "mask_grey.png", "not binary"),
        (d / "nospacing.npy", "missing spacing"),
        (csv_path, "non-positive or non-finite spacing (0.1, 0.0, -0.01)"),
        (csv_path, "duplicate visit P10_OS_5"),
        (csv_path, "patient P11 is in more than one split part: train, test"),
        (d / "scan.mha", "unknown format '.mha'"),
    ]
    return csv_path, expected


def test_validate_lists_every_problem(faulty_source):
    csv_path, expected = faulty_source
    visits, problems = validate_source(csv_path, "manifest")
    assert len(visits) == 14
    for path, cause in expected:
        assert any(p.path == str(path) and cause in p.message for p in problems), (path, cause)
    assert len(problems) == len(expected), "\n".join(map(str, problems))


def test_validate_main_exit_codes(faulty_source, capsys, tmp_path):
    csv_path, expected = faulty_source
    assert validate_main([str(csv_path), "--layout", "manifest", "--workers", "2"]) == 1
    out = capsys.readouterr().out
    for path, cause in expected:
        assert any(line.startswith(str(path)) and cause in line for line in out.splitlines())
    assert f"FAILED: 14 visits (3 with mask), {len(expected)} problem(s)" in out

    assert validate_main([str(csv_path)]) == 2  # --layout is required
    assert validate_main([str(csv_path), "--layout", "zip"]) == 2
    assert validate_main([str(tmp_path / "nowhere"), "--layout", "manifest"]) == 2


def test_load_visit_raises_naming_the_file(faulty_source):
    csv_path, _ = faulty_source
    visits, _, _ = discover(csv_path, "manifest")
    by_key = {v.key: v for v in visits}
    with pytest.raises(DataError, match="truncated") as err:
        load_visit(by_key["P03_OD_0"])
    assert err.value.path.endswith("truncated.npy")
    with pytest.raises(DataError, match="not binary"):
        load_visit(by_key["P07_OD_0"])
    assert check_visit(by_key["P10_OS_5"]) == []
