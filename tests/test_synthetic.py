"""The synthetic phantom: reference layout, determinism, and the imaging physics it claims."""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_prep.synthetic import (
    FIELD_OF_VIEW_MM,
    PhantomGrid,
    SynthSummary,
    make_eye_anatomy,
    make_synthetic_dataset,
    render_visit,
    synth_main,
)

SHAPE = (8, 64, 48)  # (S, D, W)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, SynthSummary]:
    out = tmp_path_factory.mktemp("synth") / "data"
    summary = make_synthetic_dataset(out, patients=6, unlabelled=2, shape=SHAPE, visits=3,
                                     seed=11, rpd_fraction=0.5)
    return out, summary


def _visits(root: Path):
    """Yield ``(patient, entry, folder)`` for every visit in data_info.json."""
    info = json.loads((root / "data_info.json").read_text())
    for patient, entries in info.items():
        for entry in entries:
            yield patient, entry, root / f"{patient}_{entry['Position']}" / entry["DayInStudy"]


def _png(folder: Path, name: str, file_set: str) -> np.ndarray:
    return np.asarray(Image.open(folder / "preprocessed_images"
                                 / f"bscan_size.{name}.{file_set}.png"))


def _labelled_visits(root: Path):
    """Yield ``(oct (S, D, W), faf, slo, mask bool (S, W), spacing)`` for visits with a mask."""
    for _, entry, folder in _visits(root):
        file_set = entry["FileSetId"]
        mask_path = folder / "preprocessed_images" / f"bscan_size.mask_faf.{file_set}.png"
        if mask_path.exists():
            yield (np.load(folder / f"bscan_flat.{file_set}.npy"), _png(folder, "faf", file_set),
                   _png(folder, "slo", file_set), _png(folder, "mask_faf", file_set) >= 128,
                   np.load(folder / f"spacing.{file_set}.npy"))


def _rows(height_lo: float, height_hi: float) -> np.ndarray:
    """Depth rows whose centre lies ``height_lo <= h < height_hi`` mm above Bruch's membrane."""
    h = PhantomGrid(SHAPE).height_mm()
    return np.flatnonzero((h >= height_lo) & (h < height_hi))


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# --- determinism ---------------------------------------------------------------------------------

def test_same_seed_gives_identical_bytes_and_another_seed_differs(tmp_path):
    kwargs = {"patients": 2, "unlabelled": 1, "shape": (4, 32, 16), "visits": 2}
    make_synthetic_dataset(tmp_path / "a", seed=5, **kwargs)
    make_synthetic_dataset(tmp_path / "b", seed=5, **kwargs)
    make_synthetic_dataset(tmp_path / "c", seed=6, **kwargs)
    first, second, other = (_tree_digest(tmp_path / n) for n in "abc")
    assert first == second
    oct_digests = {v for k, v in first.items() if k.endswith(".npy") and "bscan_flat" in k}
    other_digests = {v for k, v in other.items() if k.endswith(".npy") and "bscan_flat" in k}
    assert oct_digests.isdisjoint(other_digests)


# --- layout --------------------------------------------------------------------------------------

def test_layout_files_dtypes_and_shapes(dataset):
    root, summary = dataset
    s, d, w = SHAPE
    split = json.loads((root / "split.json").read_text())
    assert set(split) == {"train", "val", "test"}
    labelled = {p for part in split.values() for p in part}
    count = masks = 0
    for patient, entry, folder in _visits(root):
        assert set(entry) >= {"FileSetId", "Position", "DayInStudy"}
        assert entry["Position"] in ("OD", "OS") and entry["Phenotype"] in ("GA", "GA+RPD")
        file_set = entry["FileSetId"]
        volume = np.load(folder / f"bscan_flat.{file_set}.npy")
        assert volume.dtype == np.float32 and volume.shape == SHAPE
        assert np.isfinite(volume).all() and volume.min() >= 0
        spacing = np.load(folder / f"spacing.{file_set}.npy")
        assert spacing.shape == (3,) and (spacing > 0).all()
        np.testing.assert_allclose(spacing * SHAPE, FIELD_OF_VIEW_MM)
        for name in ("faf", "slo"):
            image = Image.open(folder / "preprocessed_images" / f"bscan_size.{name}.{file_set}.png")
            assert image.mode == "L" and np.asarray(image).shape == (s, w)
        mask_path = folder / "preprocessed_images" / f"bscan_size.mask_faf.{file_set}.png"
        assert mask_path.exists() == (patient in labelled)
        if mask_path.exists():
            mask = np.asarray(Image.open(mask_path))
            assert mask.dtype == np.uint8 and mask.shape == (s, w)
            assert set(np.unique(mask)) <= {0, 255}
            masks += 1
        count += 1
    assert (count, masks) == (summary.visits, summary.labelled_visits)
    assert d == volume.shape[1]


def test_split_is_by_patient_and_leaves_unlabelled_out(dataset):
    root, summary = dataset
    split = json.loads((root / "split.json").read_text())
    info = json.loads((root / "data_info.json").read_text())
    parts = [set(split[k]) for k in ("train", "val", "test")]
    assert all(parts) and not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    labelled = set().union(*parts)
    assert len(labelled) == summary.labelled_patients == 6
    assert len(set(info) - labelled) == summary.unlabelled_patients == 2
    assert labelled <= set(info)
    # every visit of a patient sits in the patient's own folders
    for patient, _, folder in _visits(root):
        assert folder.parent.name.startswith(f"{patient}_") and folder.is_dir()


def test_reference_layout_reader_accepts_it(dataset):
    from data_prep.layouts import discover

    root, summary = dataset
    visits, problems, split = discover(root, "reference")
    assert problems == []
    assert len(visits) == summary.visits
    assert sum(v.mask is not None for v in visits) == summary.labelled_visits
    assert all(v.faf and v.slo for v in visits)
    assert {v.patient_id for v in visits if v.split is None} == \
        set(json.loads((root / "data_info.json").read_text())) - {p for part in split.values()
                                                                  for p in part}


def test_most_labelled_visits_have_a_lesion(dataset):
    _, summary = dataset
    assert summary.lesion_visits >= 0.7 * summary.labelled_visits
    assert 0.02 < summary.mean_lesion_fraction < 0.6


# --- physics -------------------------------------------------------------------------------------

def _band_means(rows: np.ndarray, select: str):
    """Mean OCT over ``rows`` for A-scans inside or outside the lesion, over all labelled visits."""
    def mean(root: Path) -> float:
        values = []
        for volume, _, _, mask, _ in _labelled_visits(root):
            where = mask if select == "in" else ~_grow(mask)
            values.append(volume[:, rows, :].mean(axis=1)[where])
        return float(np.concatenate(values).mean())
    return mean


def _grow(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    return ndimage.binary_dilation(mask, iterations=2)


def test_rpe_is_brighter_than_onl_outside_lesions(dataset):
    root, _ = dataset
    rpe = _band_means(_rows(0.0, 0.02), "out")(root)
    onl = _band_means(_rows(0.09, 0.125), "out")(root)
    assert rpe > 1.8 * onl


def test_ga_loses_rpe_and_shows_hypertransmission(dataset):
    root, _ = dataset
    rpe_rows, choroid_rows = _rows(0.0, 0.02), _rows(-0.12, -0.03)
    assert _band_means(rpe_rows, "in")(root) < 0.7 * _band_means(rpe_rows, "out")(root)
    assert _band_means(choroid_rows, "in")(root) > 1.3 * _band_means(choroid_rows, "out")(root)


def test_faf_is_dark_and_slo_bright_in_the_lesion(dataset):
    root, _ = dataset
    faf_in, faf_out, slo_in, slo_out = [], [], [], []
    for _, faf, slo, mask, _ in _labelled_visits(root):
        outside = ~_grow(mask)
        faf_in.append(faf[mask]), faf_out.append(faf[outside])
        slo_in.append(slo[mask]), slo_out.append(slo[outside])
    assert np.concatenate(faf_in).mean() < 0.5 * np.concatenate(faf_out).mean()
    assert np.concatenate(slo_in).mean() > 1.3 * np.concatenate(slo_out).mean()


def test_lesions_only_grow_across_visits(dataset):
    root, _ = dataset
    masks: dict[str, list[tuple[int, np.ndarray]]] = {}
    for _, entry, folder in _visits(root):
        path = folder / "preprocessed_images" / f"bscan_size.mask_faf.{entry['FileSetId']}.png"
        if path.exists():
            masks.setdefault(str(folder.parent), []).append(
                (int(entry["DayInStudy"]), np.asarray(Image.open(path)) >= 128))
    grew = 0
    for series in masks.values():
        series.sort(key=lambda item: item[0])
        for (_, earlier), (_, later) in itertools.pairwise(series):
            assert not (earlier & ~later).any(), "a later mask lost lesion pixels"
            grew += int(later.sum() > earlier.sum())
    assert grew > 0


def test_vessels_shadow_the_layers_below():
    grid = PhantomGrid((8, 64, 256))
    rng = np.random.default_rng(2)
    anatomy = make_eye_anatomy(rng, grid, eye="OD")
    visit = render_visit(anatomy, 0, rng)
    healthy = anatomy.lesion_field < anatomy.lesion_threshold(0) - 0.2
    big = anatomy.vessel_radius_mm > 0.03
    on_vessel = healthy & big & (anatomy.vessel_profile > 0.6)
    beside = (healthy & big & (anatomy.vessel_profile < 0.01)
              & (anatomy.vessel_offset_mm < 6 * anatomy.vessel_radius_mm))
    assert on_vessel.sum() >= 10 and beside.sum() >= 10
    h = grid.height_mm()
    outer = visit.oct[:, (h >= 0.0) & (h < 0.08), :].mean(axis=1)  # RPE and photoreceptors
    assert outer[on_vessel].mean() < 0.75 * outer[beside].mean()


def test_rpd_raises_mounds_above_the_rpe():
    grid = PhantomGrid((8, 64, 128))
    anatomy = make_eye_anatomy(np.random.default_rng(4), grid, eye="OS", rpd=True)
    assert anatomy.phenotype == "GA+RPD" and anatomy.rpd_height_mm.max() > 0.015
    plain = make_eye_anatomy(np.random.default_rng(4), grid, eye="OS", rpd=False)
    assert plain.phenotype == "GA" and not plain.rpd_height_mm.any()


# --- output safety -------------------------------------------------------------------------------

def test_refuses_to_overwrite_a_non_empty_folder(tmp_path, capsys):
    out = tmp_path / "data"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    args = [str(out), "--patients", "1", "--unlabelled", "0", "--shape", "4", "32", "16",
            "--visits", "1"]
    assert synth_main(args) == 1
    err = capsys.readouterr().err
    assert str(out) in err and "not empty" in err and "--overwrite" in err
    assert (out / "keep.txt").read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # nothing half-written

    assert synth_main(args + ["--overwrite"]) == 0
    assert not (out / "keep.txt").exists() and (out / "data_info.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
    assert "mean lesion fraction" in capsys.readouterr().out


def test_bad_arguments_are_refused(tmp_path, capsys):
    assert synth_main([str(tmp_path / "x"), "--shape", "4", "4", "16"]) == 2
    assert "shape" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    with pytest.raises(ValueError, match="patient"):
        make_synthetic_dataset(tmp_path / "y", patients=0, unlabelled=0)
