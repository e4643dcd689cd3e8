"""The clinical read-out of a model on a store: GA area and growth per eye, with the ensemble's
spread, and agreement with the graders where the visits have masks.

:func:`growth_readout` is what ``python -m fpn growth`` runs: it loads the k-best ensemble
(:func:`fpn.inference.load_ensemble`: a run directory, a checkpoint or ``models:/NAME@ALIAS``),
predicts every visit of the split(s) of a store (local path or ``s3://`` URL), and writes into
``out``:

- ``growth_visits.csv``: per visit, the area (the ensemble's mean probability thresholded, as
  ``predict`` does: the reported number), its sqrt, each member's own area and their min, max
  and sd, and the graded area where the visit has a mask;
- ``growth.csv``: per eye, the growth rates with their intervals, the members' rates and, where
  graded, the graded rates and the rate errors (:mod:`fpn.growth`);
- ``growth.png``: area over time per eye; ``bland_altman.png`` where masks exist
  (:mod:`fpn.agreement`).

It logs nothing: it returns the flat metrics and the files, and the caller logs them to MLflow.
Areas are mm^2 = pixels x spacing_S x spacing_W (the store always has a spacing).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fpn.agreement import AreaAgreement, area_agreement, plot_bland_altman, readout_metrics
from fpn.data.transforms import bscan_stats, zscore
from fpn.growth import (
    EyeGrowth,
    VisitArea,
    growth_per_eye,
    plot_growth,
    write_growth_csv,
    write_visits_csv,
)
from fpn.inference import Ensemble

__all__ = [
    "BLAND_ALTMAN_PLOT",
    "GROWTH_CSV",
    "GROWTH_PLOT",
    "VISITS_CSV",
    "GrowthReadout",
    "growth_readout",
    "predict_members",
    "readout_ensemble",
    "visit_areas_of",
    "write_readout",
]

GROWTH_CSV = "growth.csv"
VISITS_CSV = "growth_visits.csv"
GROWTH_PLOT = "growth.png"
BLAND_ALTMAN_PLOT = "bland_altman.png"


def predict_members(ensemble: Ensemble, oct_volume: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Raw ``(S, D, W)`` OCT -> ``(mean (S, W), members (k, S, W))`` float32 probabilities.

    The same z-scoring and forward pass as :meth:`Ensemble.predict_volume`, with the members'
    maps kept; the mean is accumulated in the same order, so it is the map ``predict`` writes.
    """
    v = np.asarray(oct_volume, np.float32)
    if v.ndim != 3:
        raise ValueError(f"expected an OCT volume (S, D, W), got shape {v.shape}")
    mean, std = bscan_stats(v)
    z = torch.from_numpy(zscore(v, mean, std, ensemble.zscore_eps))[None, None]
    vol = ensemble.policy.prepare_input(z.float(), ensemble.device)
    members = []
    acc = None
    with torch.no_grad():
        for model in ensemble.models:
            with ensemble.policy.autocast():
                p = torch.sigmoid(model(vol).float())
            members.append(p[0, 0].cpu().numpy())
            acc = p if acc is None else acc + p
        assert acc is not None  # an Ensemble has at least one member
        mean_prob = (acc / len(ensemble.models))[0, 0].cpu().numpy()
    return mean_prob, np.stack(members)


def visit_areas_of(ensemble: Ensemble, store: Any, infos: Sequence[Any], *,
                   threshold: float = 0.5) -> list[VisitArea]:
    """Per visit of ``infos`` (:class:`fpn.data.store.VisitInfo`): the ensemble's area, each
    member's area (its own probability at the same threshold) and, where the visit has a mask,
    the graded area; all in mm^2."""
    out = []
    for info in infos:
        pixel_mm2 = float(info.spacing_mm[0]) * float(info.spacing_mm[2])
        mean_prob, member_probs = predict_members(ensemble, store.read(info.key, "oct"))
        area = float((mean_prob >= threshold).sum()) * pixel_mm2
        member_areas = tuple(float(a) * pixel_mm2
                             for a in (member_probs >= threshold).sum(axis=(1, 2)))
        graded = (float((store.read(info.key, "mask") >= 1).sum()) * pixel_mm2
                  if "mask" in info.has else None)
        out.append(VisitArea(info.key, info.patient_id, info.eye, int(info.day), area,
                             member_areas, graded))
    return out


@dataclass(frozen=True)
class GrowthReadout:
    """What :func:`growth_readout` computed and wrote.

    Attributes:
        visits: per visit (:class:`VisitArea`), sorted by key.
        eyes: per eye (:class:`EyeGrowth`).
        agreement: per-visit area agreement, ``None`` when no visit has a mask.
        metrics: the flat metrics (:data:`fpn.agreement.METRIC_NAMES`; NaN where undefined).
        files: ``{"growth_csv", "visits_csv", "growth_plot"[, "bland_altman_plot"]}`` -> path.
        members: ensemble members; split: the split part(s) read (``None``: all);
        store_fingerprint: the store's fingerprint.
    """

    visits: list[VisitArea]
    eyes: list[EyeGrowth]
    agreement: AreaAgreement | None
    metrics: dict[str, float]
    files: dict[str, Path]
    members: int = 0
    split: str | tuple[str, ...] | None = None
    store_fingerprint: str = ""


def write_readout(visits: Sequence[VisitArea], out: str | Path, unit: str = "mm2"
                  ) -> tuple[list[EyeGrowth], dict[str, Path]]:
    """Growth per eye from ``visits`` and the read-out's files in ``out`` (created): the two
    CSVs, the growth plot, and the Bland-Altman plot when some visit has a graded area."""
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    eyes = growth_per_eye(visits)
    files = {"visits_csv": write_visits_csv(out_dir / VISITS_CSV, visits, unit),
             "growth_csv": write_growth_csv(out_dir / GROWTH_CSV, eyes, unit),
             "growth_plot": plot_growth(out_dir / GROWTH_PLOT, eyes, unit)}
    if any(v.graded_area is not None for v in visits):
        files["bland_altman_plot"] = plot_bland_altman(out_dir / BLAND_ALTMAN_PLOT, visits, unit)
    return eyes, files


def readout_ensemble(ensemble: Ensemble, store: Any, *, out: str | Path,
                     split: str | Sequence[str] | None = "test",
                     threshold: float = 0.5) -> GrowthReadout:
    """:func:`growth_readout` with an ensemble and a store already open."""
    if ensemble.target != "mask":
        raise ValueError(f"the model predicts {ensemble.target!r} (a pretraining model), not a "
                         "GA mask: give a fine-tuned model")
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    infos = store.visits_for(splits=split)
    if not infos:
        raise ValueError(f"{store.location}: no visits in split {split!r}")
    visits = visit_areas_of(ensemble, store, infos, threshold=threshold)
    eyes, files = write_readout(visits, out)
    graded = any(v.graded_area is not None for v in visits)
    split_read = split if split is None or isinstance(split, str) else tuple(split)
    return GrowthReadout(visits=visits, eyes=eyes,
                         agreement=area_agreement(visits) if graded else None,
                         metrics=readout_metrics(visits, eyes), files=files,
                         members=len(ensemble), split=split_read,
                         store_fingerprint=str(getattr(store, "fingerprint", "")))


def growth_readout(model_ref: str, store: str, *, out: str | Path,
                   split: str | Sequence[str] | None = "test", tracking_uri: str | None = None,
                   k: int | None = None, threshold: float = 0.5,
                   storage_options: dict[str, Any] | None = None,
                   device: str | None = None) -> GrowthReadout:
    """GA area and growth per eye of ``model_ref``'s k-best ensemble on a store's split(s).

    Args:
        model_ref: a run directory, checkpoint or ``models:/NAME@ALIAS`` (local or URL).
        store: the store's path or URL (``s3://...``).
        out: the folder for the files (created).
        split: split part(s) (``train``, ``val``, ``test``, ``unlabelled``); ``None``: all.
        tracking_uri: MLflow (for ``models:/``); default ``$MLFLOW_TRACKING_URI`` or ./mlflow.db.
        k: use only the k best members.
        threshold: on the mean probability (and each member's, for the spread).
        storage_options: fsspec options of the store.
        device: ``"cpu"``/``"cuda"``; ``None`` picks CUDA when available.

    Raises:
        ValueError: no visits in the split, a pretraining model, a bad threshold.
        fpn.data.store.StoreError: the store cannot be opened.
    """
    from fpn.config import default_mlflow_uri
    from fpn.data.store import open_store
    from fpn.inference import load_ensemble

    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_mlflow_uri()
    opened = open_store(store, storage_options=storage_options)
    ensemble = load_ensemble(model_ref, uri, k, device)
    return readout_ensemble(ensemble, opened, out=out, split=split, threshold=threshold)
