"""The data set on disk: who is labelled, the split, the reference layout, written atomically."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from data_prep.synthetic.anatomy import make_eye_anatomy
from data_prep.synthetic.grid import MIN_SHAPE, SIZES, PhantomGrid
from data_prep.synthetic.presets import DEFAULT_PRESET, PhantomPreset, resolve_preset
from data_prep.synthetic.render import render_visit

__all__ = ["SynthSummary", "make_synthetic_dataset"]

# --- the dataset -------------------------------------------------------------------------------

@dataclass(frozen=True)
class SynthSummary:
    """What :func:`make_synthetic_dataset` wrote.

    Attributes:
        root: the dataset folder.
        shape: ``(S, D, W)`` of every volume; spacing_mm: ``(s, d, w)``.
        patients, labelled_patients, unlabelled_patients, rpd_patients: patient counts.
        eyes: eyes over all patients; visits: all visits; labelled_visits: visits with a mask.
        lesion_visits: labelled visits whose mask is not empty.
        mean_lesion_fraction: mean fraction of en-face pixels in GA over labelled visits.
        split: ``{"train", "val", "test"}`` patient ids (labelled patients only).
        preset: the difficulty preset's name (``"easy"`` or ``"hard"``).
        mean_truth_dice: mean Dice between the written masks (the grader's outline) and the
            rendered lesions over labelled visits with either non-empty (1.0 for ``easy``).
    """

    root: Path
    shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    patients: int
    labelled_patients: int
    unlabelled_patients: int
    rpd_patients: int
    eyes: int
    visits: int
    labelled_visits: int
    lesion_visits: int
    mean_lesion_fraction: float
    split: dict[str, list[str]]
    preset: str = DEFAULT_PRESET
    mean_truth_dice: float = 1.0

    def format(self) -> str:
        """A few human-readable lines."""
        parts = ", ".join(f"{k} {len(v)}" for k, v in self.split.items())
        spacing = ", ".join(f"{v:.4f}" for v in self.spacing_mm)
        return "\n".join([
            f"wrote {self.root}",
            (f"  patients {self.patients} ({self.labelled_patients} labelled: {parts}; "
             f"{self.unlabelled_patients} unlabelled; {self.rpd_patients} with RPD)"),
            (f"  eyes {self.eyes}, visits {self.visits} ({self.labelled_visits} labelled, "
             f"{self.lesion_visits} with GA)"),
            f"  volume {self.shape} (S, D, W), spacing {spacing} mm",
            f"  mean lesion fraction {self.mean_lesion_fraction:.3f}",
            (f"  phantom {self.preset}; written masks vs rendered lesions: mean Dice "
             f"{self.mean_truth_dice:.3f}"),
        ])


@dataclass(frozen=True)
class _PatientPlan:
    patient_id: str
    index: int
    labelled: bool
    rpd: bool
    eyes: tuple[str, ...]
    days: tuple[int, ...]


def _plan(patients: int, unlabelled: int, visits: int, rpd_fraction: float, seed: int
          ) -> tuple[list[_PatientPlan], dict[str, list[str]]]:
    """Who is labelled, eyes, visit days, phenotype and the 60/20/20 patient split."""
    rng = np.random.default_rng([seed, 0])
    total = patients + unlabelled
    width = max(3, len(str(total)))
    unlabelled_idx = set(rng.choice(total, size=unlabelled, replace=False).tolist())
    plans = []
    for index in range(total):
        if rng.random() < 0.25:
            eyes: tuple[str, ...] = ("OD", "OS")
        else:
            eyes = (str(rng.choice(["OD", "OS"])),)
        n_visits = int(rng.integers(max(1, visits - 1), visits + 1))
        days = [0] + [int(180 * k + rng.integers(-14, 15)) for k in range(1, n_visits)]
        plans.append(_PatientPlan(
            patient_id=f"P{index + 1:0{width}d}", index=index,
            labelled=index not in unlabelled_idx, rpd=bool(rng.random() < rpd_fraction),
            eyes=eyes, days=tuple(days)))
    labelled = [p.patient_id for p in plans if p.labelled]
    order = [labelled[i] for i in rng.permutation(len(labelled))]
    n = len(order)
    n_test = max(1, round(0.2 * n)) if n >= 2 else 0
    n_val = max(1, round(0.2 * n)) if n >= 3 else 0
    split = {"train": sorted(order[n_test + n_val:]), "val": sorted(order[n_test:n_test + n_val]),
             "test": sorted(order[:n_test])}
    return plans, split


def _save_png(path: Path, image: np.ndarray) -> None:
    Image.fromarray(np.ascontiguousarray(image)).save(path, format="PNG")


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def _write_dataset(root: Path, grid: PhantomGrid, plans: list[_PatientPlan],
                   split: dict[str, list[str]], seed: int, preset: PhantomPreset
                   ) -> SynthSummary:
    data_info: dict[str, list[dict[str, str]]] = {}
    spacing = np.asarray(grid.spacing_mm, dtype=np.float64)
    eyes = visits = labelled_visits = lesion_visits = 0
    lesion_fractions: list[float] = []
    truth_dice: list[float] = []
    for plan in plans:
        rng = np.random.default_rng([seed, 1, plan.index])  # independent of other patients
        entries: list[dict[str, str]] = []
        for eye in plan.eyes:
            eyes += 1
            anatomy = make_eye_anatomy(rng, grid, eye=eye, rpd=plan.rpd, preset=preset)
            for day in plan.days:
                file_set = f"{len(entries) + 1:02d}"
                entries.append({"FileSetId": file_set, "Position": eye, "DayInStudy": str(day),
                                "Phenotype": anatomy.phenotype})
                visit = render_visit(anatomy, day, rng)
                folder = root / f"{plan.patient_id}_{eye}" / str(day)
                images = folder / "preprocessed_images"
                images.mkdir(parents=True)
                np.save(folder / f"bscan_flat.{file_set}.npy", visit.oct)
                np.save(folder / f"spacing.{file_set}.npy", spacing)
                _save_png(images / f"bscan_size.faf.{file_set}.png", visit.faf)
                _save_png(images / f"bscan_size.slo.{file_set}.png", visit.slo)
                visits += 1
                if plan.labelled:
                    mask = np.where(visit.outline, 255, 0).astype(np.uint8)
                    _save_png(images / f"bscan_size.mask_faf.{file_set}.png", mask)
                    labelled_visits += 1
                    lesion_visits += int(visit.outline.any())
                    lesion_fractions.append(float(visit.outline.mean()))
                    if visit.outline.any() or visit.lesion.any():
                        truth_dice.append(_dice(visit.outline, visit.lesion))
        data_info[plan.patient_id] = entries
    (root / "data_info.json").write_text(json.dumps(data_info, indent=2) + "\n", encoding="utf-8")
    (root / "split.json").write_text(json.dumps(split, indent=2) + "\n", encoding="utf-8")
    return SynthSummary(
        root=root, shape=grid.shape, spacing_mm=grid.spacing_mm, patients=len(plans),
        labelled_patients=sum(p.labelled for p in plans),
        unlabelled_patients=sum(not p.labelled for p in plans),
        rpd_patients=sum(p.rpd for p in plans), eyes=eyes, visits=visits,
        labelled_visits=labelled_visits, lesion_visits=lesion_visits,
        mean_lesion_fraction=float(np.mean(lesion_fractions)) if lesion_fractions else 0.0,
        split=split, preset=preset.name,
        mean_truth_dice=float(np.mean(truth_dice)) if truth_dice else 1.0)


def _check_arguments(patients: int, unlabelled: int, shape: tuple[int, int, int], visits: int,
                     rpd_fraction: float) -> None:
    if patients < 0 or unlabelled < 0 or patients + unlabelled < 1:
        raise ValueError(f"need at least one patient (got {patients} labelled, "
                         f"{unlabelled} unlabelled)")
    if len(shape) != 3 or any(int(n) < lo for n, lo in zip(shape, MIN_SHAPE)):
        raise ValueError(f"shape (S, D, W) must be at least {MIN_SHAPE}, got {tuple(shape)}")
    if visits < 1:
        raise ValueError(f"visits must be >= 1, got {visits}")
    if not 0.0 <= rpd_fraction <= 1.0:
        raise ValueError(f"rpd_fraction must be in [0, 1], got {rpd_fraction}")


def make_synthetic_dataset(out: Path | str, patients: int = 12, unlabelled: int = 4,
                           shape: tuple[int, int, int] = SIZES["small"], visits: int = 3,
                           seed: int = 0, rpd_fraction: float = 0.25,
                           overwrite: bool = False,
                           preset: str | PhantomPreset = DEFAULT_PRESET) -> SynthSummary:
    """Write a synthetic GA dataset in the reference layout.

    The whole tree is written to a temporary sibling folder and renamed to ``out`` at the end,
    so ``out`` is never half-written. The same arguments give byte-identical files.

    Args:
        out: the dataset folder to create.
        patients: labelled patients (masks at every visit; split 60/20/20 into train/val/test).
        unlabelled: extra patients without masks (in ``data_info.json``, in no split part).
        shape: ``(S, D, W)`` of every OCT volume; the field of view stays ~6 x 0.5 x 6 mm.
        visits: the most visits per eye; each patient gets ``visits - 1`` or ``visits`` visits
            (at least 1), about 180 days apart.
        seed: seed of everything.
        rpd_fraction: probability that a patient's eyes also have reticular pseudodrusen.
        overwrite: replace a non-empty ``out``.
        preset: how hard the phantom is: ``"hard"`` (default: more speckle and variability,
            small faint lesions, single-modality confounders, masks drawn by an imperfect
            grader) or ``"easy"`` (the original phantom, byte for byte); see
            :mod:`data_prep.synthetic.presets`.

    ``phantom.json`` records the arguments and the preset's parameters (the reference layout
    readers ignore it). ``data_info.json`` entries carry an extra key ``"Phenotype"`` (``"GA"``
    or ``"GA+RPD"``); unlabelled patients are listed there but in no part of ``split.json``
    and have no masks.

    Returns:
        A :class:`SynthSummary`.

    Raises:
        FileExistsError: ``out`` exists, is not an empty folder, and ``overwrite`` is false.
        ValueError: bad counts, shape, fraction or preset.
    """
    out = Path(out)
    shape = tuple(int(n) for n in shape)  # type: ignore[assignment]
    _check_arguments(patients, unlabelled, shape, visits, rpd_fraction)
    preset = resolve_preset(preset)
    occupied = out.exists() and (not out.is_dir() or any(out.iterdir()))
    if occupied and not overwrite:
        what = "is not a folder" if not out.is_dir() else "is not empty"
        raise FileExistsError(f"{out}: exists and {what}; pass --overwrite to replace it")
    grid = PhantomGrid(shape)  # type: ignore[arg-type]
    plans, split = _plan(patients, unlabelled, visits, rpd_fraction, seed)

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        summary = _write_dataset(staging, grid, plans, split, seed, preset)
        recipe = {"generator": "data_prep.synthetic", "preset": preset.name,
                  "preset_parameters": dataclasses.asdict(preset), "patients": patients,
                  "unlabelled": unlabelled, "shape": list(shape), "visits": visits, "seed": seed,
                  "rpd_fraction": rpd_fraction}
        (staging / "phantom.json").write_text(json.dumps(recipe, indent=2) + "\n",
                                              encoding="utf-8")
        if out.exists() or out.is_symlink():
            trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, trash / "old")
            os.replace(staging, out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return dataclasses.replace(summary, root=out)

