"""The synthetic phantom: reference layout, determinism, the imaging physics it claims, the easy
preset's identity with the phantom before the split, and the hard preset's difficulty."""

from __future__ import annotations

import hashlib
import importlib.util
import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from data_prep.synthetic import (
    DEFAULT_PRESET,
    FIELD_OF_VIEW_MM,
    PRESETS,
    PhantomGrid,
    SynthSummary,
    make_eye_anatomy,
    make_synthetic_dataset,
    render_visit,
    synth_main,
)

SHAPE = (8, 64, 48)  # (S, D, W)
#: the last commit of the single-module phantom: the easy preset must reproduce it
BEFORE_SPLIT = "a3bd67c5f87a6497da169b2c516db0a65300dd61"
REPO = Path(__file__).resolve().parents[1]


def _make(root: Path, preset: str) -> SynthSummary:
    return make_synthetic_dataset(root, patients=6, unlabelled=2, shape=SHAPE, visits=3,
                                  seed=11, rpd_fraction=0.5, preset=preset)


@pytest.fixture(scope="module", params=["easy", "hard"])
def dataset(request, tmp_path_factory) -> tuple[Path, SynthSummary]:
    out = tmp_path_factory.mktemp(f"synth-{request.param}") / "data"
    return out, _make(out, request.param)


@pytest.fixture(scope="module")
def easy_and_hard(tmp_path_factory) -> dict[str, tuple[Path, SynthSummary]]:
    root = tmp_path_factory.mktemp("synth-both")
    return {name: (root / name, _make(root / name, name)) for name in ("easy", "hard")}


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

@pytest.mark.parametrize("preset", ["easy", "hard"])
def test_same_seed_gives_identical_bytes_and_another_seed_differs(tmp_path, preset):
    kwargs = {"patients": 2, "unlabelled": 1, "shape": (4, 32, 16), "visits": 2,
              "preset": preset}
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
    low = 0.02 if summary.preset == "easy" else 0.005
    assert low < summary.mean_lesion_fraction < 0.6


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
    """The OCT carries the GA signal with either preset (fainter with ``hard``)."""
    root, summary = dataset
    rpe_loss, hyper = (0.7, 1.3) if summary.preset == "easy" else (0.85, 1.15)
    rpe_rows, choroid_rows = _rows(0.0, 0.02), _rows(-0.12, -0.03)
    assert _band_means(rpe_rows, "in")(root) < rpe_loss * _band_means(rpe_rows, "out")(root)
    assert _band_means(choroid_rows, "in")(root) > hyper * _band_means(choroid_rows, "out")(root)


def test_faf_is_dark_and_slo_bright_in_the_lesion(dataset):
    root, summary = dataset
    faf_dark, slo_bright = (0.5, 1.3) if summary.preset == "easy" else (0.8, 1.05)
    faf_in, faf_out, slo_in, slo_out = [], [], [], []
    for _, faf, slo, mask, _ in _labelled_visits(root):
        outside = ~_grow(mask)
        faf_in.append(faf[mask]), faf_out.append(faf[outside])
        slo_in.append(slo[mask]), slo_out.append(slo[outside])
    assert np.concatenate(faf_in).mean() < faf_dark * np.concatenate(faf_out).mean()
    assert np.concatenate(slo_in).mean() > slo_bright * np.concatenate(slo_out).mean()


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


# --- presets: easy is the phantom before the split, hard leaves room to learn ---------------------

def _module_before_split(tmp_path: Path):
    """The single-module phantom at :data:`BEFORE_SPLIT`, imported from git (skip without it)."""
    try:
        source = subprocess.run(["git", "-C", str(REPO), "show",
                                 f"{BEFORE_SPLIT}:data_prep/synthetic.py"],
                                capture_output=True, text=True, check=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        pytest.skip(f"git history with {BEFORE_SPLIT[:8]} is not available here")
    path = tmp_path / "synthetic_before_split.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("synthetic_before_split", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop(spec.name, None)
    return module


def test_easy_preset_writes_the_same_bytes_as_the_phantom_before_the_split(tmp_path):
    before = _module_before_split(tmp_path)
    kwargs = {"patients": 3, "unlabelled": 1, "shape": (4, 32, 24), "visits": 2, "seed": 3,
              "rpd_fraction": 0.5}
    before.make_synthetic_dataset(tmp_path / "before", **kwargs)
    make_synthetic_dataset(tmp_path / "easy", preset="easy", **kwargs)
    expected, got = _tree_digest(tmp_path / "before"), _tree_digest(tmp_path / "easy")
    assert got.pop("phantom.json")  # the one file the phantom before the split did not write
    assert len(expected) > 10 and got == expected
    recipe = json.loads((tmp_path / "easy" / "phantom.json").read_text())
    assert recipe["preset"] == "easy" and recipe["seed"] == 3 and recipe["shape"] == [4, 32, 24]


def test_default_preset_is_hard_and_unknown_presets_are_refused(tmp_path, capsys):
    assert DEFAULT_PRESET == "hard" and set(PRESETS) == {"easy", "hard"}
    with pytest.raises(ValueError, match="unknown phantom preset 'medium'"):
        make_synthetic_dataset(tmp_path / "x", patients=1, unlabelled=0, preset="medium")
    assert not (tmp_path / "x").exists()
    with pytest.raises(SystemExit) as exc:
        synth_main([str(tmp_path / "y"), "--preset", "medium"])
    assert exc.value.code == 2 and "--preset" in capsys.readouterr().err


def test_cli_preset_and_size(tmp_path, capsys):
    args = ["--patients", "1", "--unlabelled", "0", "--shape", "4", "32", "16", "--visits", "1"]
    assert synth_main([str(tmp_path / "e"), "--preset", "easy", *args]) == 0
    assert "phantom easy" in capsys.readouterr().out
    assert synth_main([str(tmp_path / "h"), *args]) == 0
    assert "phantom hard" in capsys.readouterr().out
    assert _tree_digest(tmp_path / "e") != _tree_digest(tmp_path / "h")
    assert synth_main([str(tmp_path / "s"), "--size", "small", "--patients", "1",
                       "--unlabelled", "0", "--visits", "1"]) == 0
    assert "(16, 64, 128)" in capsys.readouterr().out


def _foci_areas_mm2(root: Path) -> list[float]:
    """Areas of the connected lesion foci of every labelled visit's mask."""
    areas = []
    for _, _, _, mask, spacing in _labelled_visits(root):
        labels, _ = ndimage.label(mask)
        areas += list(np.bincount(labels.ravel())[1:] * spacing[0] * spacing[2])
    return areas


def test_hard_lesions_are_smaller_and_fainter(easy_and_hard):
    (easy_root, easy), (hard_root, hard) = easy_and_hard["easy"], easy_and_hard["hard"]
    assert hard.mean_lesion_fraction < 0.6 * easy.mean_lesion_fraction
    assert np.median(_foci_areas_mm2(hard_root)) < 0.6 * np.median(_foci_areas_mm2(easy_root))

    def faf_contrast(root: Path) -> float:
        inside, outside = [], []
        for _, faf, _, mask, _ in _labelled_visits(root):
            inside.append(faf[ndimage.binary_erosion(mask, np.ones((1, 3)))])
            outside.append(faf[~_grow(mask)])
        return float(np.concatenate(inside).mean() / np.concatenate(outside).mean())

    # fainter, yet still dark: inverted FAF still marks GA
    assert faf_contrast(easy_root) < faf_contrast(hard_root) < 0.8


def test_hard_oct_is_noisier(easy_and_hard):
    def speckle_contrast(root: Path) -> float:
        """std / mean of the OCT in the homogeneous ONL band, outside lesions."""
        ratios = []
        for volume, _, _, mask, _ in _labelled_visits(root):
            band = volume[:, _rows(0.09, 0.125), :][np.broadcast_to(
                ~_grow(mask)[:, None, :], (SHAPE[0], len(_rows(0.09, 0.125)), SHAPE[2]))]
            ratios.append(band.std() / band.mean())
        return float(np.mean(ratios))

    assert speckle_contrast(easy_and_hard["hard"][0]) > 1.1 * speckle_contrast(
        easy_and_hard["easy"][0])


def _hard_eye_without_ga(seed: int):
    """A hard-preset eye whose GA never appears, to look at its confounders alone."""
    grid = PhantomGrid((16, 64, 128))
    anatomy = make_eye_anatomy(np.random.default_rng(seed), grid, eye="OD", preset="hard")
    anatomy.lesion_threshold0 = float(anatomy.lesion_field.max()) + 1.0
    return grid, anatomy


def test_hard_confounders_look_like_ga_on_one_modality_only():
    faf_values = {"faf_only": [], "oct_only": [], "neither": []}
    choroid_values = {"faf_only": [], "oct_only": [], "neither": []}
    for seed in range(6):
        grid, anatomy = _hard_eye_without_ga(seed)
        assert anatomy.faf_confounder is not None and anatomy.oct_confounder is not None
        visit = render_visit(anatomy, 0, np.random.default_rng(100 + seed))
        assert not visit.lesion.any() and not visit.outline.any()  # never labelled
        h = grid.height_mm()
        choroid = visit.oct[:, (h >= -0.12) & (h < -0.03), :].mean(axis=1)
        quiet = anatomy.vessel_profile < 0.05
        where = {
            "faf_only": (anatomy.faf_confounder > 0.3) & (anatomy.oct_confounder < 0.01) & quiet,
            "oct_only": (anatomy.oct_confounder > 0.4) & (anatomy.faf_confounder < 0.01) & quiet,
            "neither": (anatomy.oct_confounder < 0.01) & (anatomy.faf_confounder < 0.01) & quiet}
        for name, pixels in where.items():
            faf_values[name].append(visit.faf[pixels] / visit.faf[where["neither"]].mean())
            choroid_values[name].append(choroid[pixels] / choroid[where["neither"]].mean())
    faf = {k: np.concatenate(v) for k, v in faf_values.items()}
    oct_ = {k: np.concatenate(v) for k, v in choroid_values.items()}
    assert len(faf["faf_only"]) >= 20 and len(faf["oct_only"]) >= 20
    # FAF-only patches: dark on FAF, no hypertransmission on OCT
    assert faf["faf_only"].mean() < 0.75 and 0.9 < oct_["faf_only"].mean() < 1.1
    # OCT-only patches: hypertransmission on OCT, FAF unchanged
    assert oct_["oct_only"].mean() > 1.2 and 0.85 < faf["oct_only"].mean() < 1.15


def test_hard_oct_patches_keep_the_ellipsoid_zone_ga_does_not():
    """What tells incomplete RPE attenuation from GA on OCT: the photoreceptors are still there."""
    grid = PhantomGrid((16, 64, 128))
    h = grid.height_mm()
    ez_rows = (h >= 0.03) & (h < 0.06)
    in_patch, in_ga, healthy = [], [], []
    for seed in range(4):
        anatomy = make_eye_anatomy(np.random.default_rng(seed), grid, eye="OS", preset="hard")
        visit = render_visit(anatomy, 400, np.random.default_rng(seed))
        ez = visit.oct[:, ez_rows, :].mean(axis=1)
        quiet = anatomy.vessel_profile < 0.05
        far = ~ndimage.binary_dilation(visit.lesion, iterations=3)
        in_patch.append(ez[(anatomy.oct_confounder > 0.4) & far & quiet])
        in_ga.append(ez[ndimage.binary_erosion(visit.lesion) & quiet])
        healthy.append(ez[(anatomy.oct_confounder < 0.01) & far & quiet])
    patch, ga, ok = (float(np.concatenate(v).mean()) for v in (in_patch, in_ga, healthy))
    assert patch > 0.85 * ok and ga < 0.8 * ok


def test_hard_mask_is_a_grader_outline_within_a_bounded_distance_of_the_truth():
    grid = PhantomGrid((16, 64, 128))
    s_mm, _, w_mm = grid.spacing_mm
    preset = PRESETS["hard"]
    bound = preset.outline_bias_mm[1] + 2 * preset.outline_jitter_mm + 2 * w_mm
    differs = 0
    for seed in range(6):
        anatomy = make_eye_anatomy(np.random.default_rng(seed), grid, eye="OD", preset="hard")
        outlines = []
        for day in (0, 180, 360):
            visit = render_visit(anatomy, day, np.random.default_rng(seed))
            truth, outline = visit.lesion, visit.outline
            assert np.array_equal(truth, anatomy.lesion_mask(day))
            differs += int(not np.array_equal(truth, outline))
            if truth.any():
                # every outline pixel lies within the bound of the rendered lesion ...
                to_truth = ndimage.distance_transform_edt(~truth, sampling=(s_mm, w_mm))
                assert to_truth[outline].max(initial=0.0) <= bound
                # ... and every lesion pixel the grader missed lies within it of the outline,
                # or in a focus too small to draw
                labels, count = ndimage.label(truth)
                area = np.bincount(labels.ravel(), minlength=count + 1) * s_mm * w_mm
                big_enough = area >= preset.min_focus_mm2 + 2 * bound * (s_mm + w_mm)
                drawable = truth & big_enough[labels]
                if outline.any():
                    to_outline = ndimage.distance_transform_edt(~outline, sampling=(s_mm, w_mm))
                    assert to_outline[drawable].max(initial=0.0) <= bound + s_mm
                else:
                    assert not drawable.any()
            outlines.append(outline)
        for earlier, later in itertools.pairwise(outlines):  # the grader's outline grows too
            assert not (earlier & ~later).any()
    assert differs >= 6


def test_written_masks_are_the_truth_only_for_easy(easy_and_hard):
    assert easy_and_hard["easy"][1].mean_truth_dice == 1.0
    assert 0.6 < easy_and_hard["hard"][1].mean_truth_dice <= 1.0


def test_hard_inverted_faf_still_correlates_with_the_mask(easy_and_hard):
    """Inter-modal pretraining needs the inverted FAF to carry GA."""
    faf, mask = [], []
    for _, image, _, m, _ in _labelled_visits(easy_and_hard["hard"][0]):
        faf.append(255.0 - image.ravel()), mask.append(m.ravel().astype(float))
    assert np.corrcoef(np.concatenate(faf), np.concatenate(mask))[0, 1] > 0.25
