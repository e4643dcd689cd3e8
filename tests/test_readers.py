"""Format readers: every format round-trips to ``(S, D, W)`` in the documented orientation."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from fpn.data.readers import (
    DataError,
    binarize_mask,
    mask_binary_problem,
    read_enface,
    read_image_raw,
    read_mask,
    read_oct,
    resample_slo_to_oct_grid,
)
from tests.fixtures_formats import (
    index_volume,
    line_positions,
    write_dicom,
    write_nifti,
    write_npy,
    write_png,
    write_tiff,
    write_vol,
)

S, D, W = 3, 5, 7
SPACING = (0.12, 0.0039, 0.011)


pytestmark = pytest.mark.unit

@pytest.fixture()
def volume() -> np.ndarray:
    return index_volume(S, D, W)


def test_npy_round_trip_has_no_spacing(tmp_path, volume):
    data, spacing, extras = read_oct(write_npy(tmp_path / "v.NPY", volume.astype(np.float64)))
    assert data.dtype == np.float32 and data.flags.c_contiguous
    np.testing.assert_array_equal(data, volume)
    assert spacing is None and extras == {}


def test_truncated_npy_names_file_and_cause(tmp_path, volume):
    path = write_npy(tmp_path / "cut.npy", volume)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataError, match="truncated") as err:
        read_oct(path)
    assert err.value.path == str(path)


def test_garbage_npy_is_unreadable(tmp_path):
    path = tmp_path / "junk.npy"
    path.write_bytes(b"this is not numpy")
    with pytest.raises(DataError, match="unreadable .npy"):
        read_oct(path)


@pytest.mark.parametrize("name", ["v.nii", "v.nii.gz", "v.NII.GZ"])
def test_nifti_axes_are_w_d_s(tmp_path, volume, name):
    data, spacing, _ = read_oct(write_nifti(tmp_path / name, volume, SPACING))
    np.testing.assert_array_equal(data, volume)
    np.testing.assert_allclose(spacing, SPACING, rtol=1e-6)


def test_nifti_micron_units_and_unset_zooms(tmp_path, volume):
    microns = tuple(1000 * x for x in SPACING)
    _, spacing, _ = read_oct(write_nifti(tmp_path / "um.nii", volume, microns, unit="micron"))
    np.testing.assert_allclose(spacing, SPACING, rtol=1e-6)
    _, spacing, _ = read_oct(write_nifti(tmp_path / "none.nii", volume, None))
    assert spacing is None


def test_tiff_pages_are_bscans(tmp_path, volume):
    data, spacing, _ = read_oct(write_tiff(tmp_path / "v.tif", volume))
    np.testing.assert_array_equal(data, volume)
    assert spacing is None
    data, spacing, _ = read_oct(write_tiff(tmp_path / "v_ij.TIFF", volume, SPACING))
    np.testing.assert_array_equal(data, volume)
    np.testing.assert_allclose(spacing, SPACING, rtol=1e-5)


def test_single_page_tiff_is_rejected(tmp_path, volume):
    with pytest.raises(DataError, match="single-page"):
        read_oct(write_tiff(tmp_path / "page.tif", volume[0]))


@pytest.mark.parametrize("where", ["shared", "per_frame", "top"])
def test_dicom_frames_are_bscans(tmp_path, volume, where):
    data, spacing, extras = read_oct(write_dicom(tmp_path / "v.dcm", volume, SPACING, where))
    np.testing.assert_array_equal(data, volume)
    np.testing.assert_allclose(spacing, SPACING)
    assert extras["sop_class_uid"] == "1.2.840.10008.5.1.4.1.1.77.1.5.4"


def test_dicom_rescale_and_missing_spacing(tmp_path, volume):
    data, spacing, _ = read_oct(write_dicom(tmp_path / "r.dcm", volume, None, rescale=(2.0, -1.0)))
    np.testing.assert_allclose(data, 2.0 * volume - 1.0)
    assert spacing is None


def _vol_fixture(tmp_path, volume, name="v.vol"):
    slo = np.add.outer(np.arange(32), 4 * np.arange(48)).astype(np.uint8)  # linear: exact bilinear
    # B-scan s runs along SLO row 2 + 3 s, from column 4 to column 10 (pixel 0.02 x 0.01 mm).
    positions = line_positions(S, 4 * 0.01, 10 * 0.01, 2 * 0.02, 3 * 0.02)
    path = write_vol(tmp_path / name, volume, SPACING, slo, (0.02, 0.01), positions)
    return path, slo, positions


def test_vol_raw_floats_spacing_and_slo(tmp_path, volume):
    volume = volume.copy()
    volume[0, 0, 0] = np.finfo(np.float32).max  # HEYEX "no data" marker
    path, slo, positions = _vol_fixture(tmp_path, volume, "v.VOL")
    data, spacing, extras = read_oct(path)
    expected = volume.copy()
    expected[0, 0, 0] = 0
    np.testing.assert_array_equal(data, expected)
    np.testing.assert_allclose(spacing, SPACING)
    np.testing.assert_array_equal(extras["slo"], slo)
    np.testing.assert_allclose(extras["bscan_positions"], positions)
    assert extras["slo_scale_mm"] == (0.02, 0.01)
    assert extras["laterality"] == "OD"


def test_slo_resampled_along_bscan_lines(tmp_path, volume):
    path, slo, _ = _vol_fixture(tmp_path, volume)
    _, _, extras = read_oct(path)
    grid = resample_slo_to_oct_grid(extras["slo"], extras["bscan_positions"],
                                    extras["slo_scale_mm"], W)
    assert grid.shape == (S, W) and grid.dtype == np.float32
    np.testing.assert_allclose(grid, slo[[2, 5, 8], 4:11] / 255.0, atol=1e-6)


def test_slo_resampling_is_bilinear_between_pixels():
    slo = np.add.outer(10 * np.arange(8), np.arange(8)).astype(np.uint8)  # value = 10 r + c
    # One oblique B-scan from (row 1.5, col 0.5) to (row 4.5, col 6.5), pixel size 1 mm.
    positions = np.array([[[0.5, 1.5], [6.5, 4.5]]])
    grid = resample_slo_to_oct_grid(slo, positions, (1.0, 1.0), 4)
    rows, cols = np.linspace(1.5, 4.5, 4), np.linspace(0.5, 6.5, 4)
    np.testing.assert_allclose(grid[0] * 255, 10 * rows + cols, atol=1e-4)


def test_e2e_without_optional_extra_says_how_to_install(tmp_path, monkeypatch):
    path = tmp_path / "scan.E2E"
    path.write_bytes(b"CMDb" + bytes(64))
    # A None entry makes ``import oct_converter...`` raise ImportError, as when not installed.
    monkeypatch.setitem(sys.modules, "oct_converter", None)
    monkeypatch.setitem(sys.modules, "oct_converter.readers", None)
    with pytest.raises(DataError, match=r"pip install fpn\[e2e\]") as err:
        read_oct(path)
    assert err.value.path == str(path)


def test_unknown_and_missing_files(tmp_path):
    odd = tmp_path / "v.mha"
    odd.write_bytes(b"x")
    with pytest.raises(DataError, match="unknown format '.mha'"):
        read_oct(odd)
    with pytest.raises(DataError, match="unknown format"):
        read_enface(odd)
    with pytest.raises(DataError, match="file not found"):
        read_oct(tmp_path / "absent.nii.gz")
    damaged = tmp_path / "bad.nii.gz"
    damaged.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(DataError, match="unreadable NIfTI"):
        read_oct(damaged)


def test_enface_dtypes_scale_to_unit_range(tmp_path):
    grid = np.add.outer(np.arange(S), 10 * np.arange(W))
    u8 = write_png(tmp_path / "a.PNG", (grid * 3).astype(np.uint8))
    np.testing.assert_allclose(read_enface(u8), grid * 3 / 255.0, rtol=1e-6)
    u16 = write_png(tmp_path / "b.png", (grid * 900).astype(np.uint16))
    np.testing.assert_allclose(read_enface(u16), grid * 900 / 65535.0, rtol=1e-6)
    as_float = (grid / grid.max()).astype(np.float32)
    np.save(tmp_path / "c.npy", as_float)
    np.testing.assert_array_equal(read_enface(tmp_path / "c.npy"), as_float)
    import tifffile
    tifffile.imwrite(tmp_path / "d.tif", as_float)
    np.testing.assert_array_equal(read_enface(tmp_path / "d.tif"), as_float)
    rgb = np.repeat((grid * 3).astype(np.uint8)[..., None], 3, axis=-1)
    assert read_enface(write_png(tmp_path / "rgb.png", rgb)).shape == (S, W)


def test_enface_rejects_bad_values(tmp_path):
    np.save(tmp_path / "big.npy", np.full((S, W), 2.0, np.float32))
    with pytest.raises(DataError, match=r"outside|lie in \[0, 1\]"):
        read_enface(tmp_path / "big.npy")
    nan = np.zeros((S, W), np.float32)
    nan[1, 2] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    with pytest.raises(DataError, match="NaN or inf"):
        read_enface(tmp_path / "nan.npy")
    colour = np.zeros((S, W, 3), np.uint8)
    colour[..., 0] = 200
    with pytest.raises(DataError, match="single-channel"):
        read_enface(write_png(tmp_path / "colour.png", colour))


def test_masks_binarize_and_grey_levels_are_flagged(tmp_path):
    pattern = np.zeros((S, W), np.uint8)
    pattern[1:, 2:5] = 1
    for name, stored in (("m01.png", pattern), ("m255.png", pattern * 255),
                         ("m16.png", pattern.astype(np.uint16) * 65535)):
        path = write_png(tmp_path / name, stored)
        mask = read_mask(path)
        assert mask.dtype == np.uint8
        np.testing.assert_array_equal(mask, pattern)
        assert mask_binary_problem(read_image_raw(path)) is None
    grey = pattern * 255
    grey[0, 0] = 100
    raw = read_image_raw(write_png(tmp_path / "grey.png", grey))
    assert "not binary" in mask_binary_problem(raw)
    assert binarize_mask(raw)[0, 0] == 0  # 100 < 128: background, as in the reference
    grey[0, 1] = 128
    assert binarize_mask(grey)[0, 1] == 1
