"""Per-visit metrics on the native en-face grid, and their accumulation across Ray workers.

Pure functions (``dice``, ``hd95``, ``ssim``) on ``(S, W)`` arrays; ``VisitMetrics`` collects one
record per visit, merges records from every worker and aggregates mean +/- std, and the Dice
pooled over the split's pixels (:func:`pooled_dice`: what ranks checkpoints and trials, because
the mean of per-visit Dice, which scores an empty prediction on an empty mask 1, lets a model
that predicts nothing beat every model that learnt something on a split with few GA visits).
They are written
here (numpy, scipy.ndimage, :func:`fpn.losses.structural_similarity`) instead of calling MONAI's
``compute_dice``/``compute_hausdorff_distance`` and torchmetrics' SSIM, whose imports cost every
training process about 6.6 s of CPU (:mod:`fpn.losses`); ``tests/test_metrics.py`` holds them
equal to those libraries.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import ndimage

from fpn.losses import ssim_window_for, structural_similarity

__all__ = ["PIXEL_COUNTS", "RECORD_META", "VisitMetrics", "dice", "hd95", "pooled_dice", "ssim",
           "visit_record"]

# fields of a per-visit record that describe the visit rather than measure it
RECORD_META = frozenset({"visit", "patient_id", "eye", "day"})
#: pixel counts of a segmentation record (predicted, graded, both): summed over a split by
#: :func:`pooled_dice`, never averaged
PIXEL_COUNTS = frozenset({"pred_px", "true_px", "inter_px"})


def _as_mask(x: np.ndarray | torch.Tensor) -> np.ndarray:
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    return a.reshape(a.shape[-2:]) > 0.5


def dice(pred: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor) -> float:
    """Dice of two binary ``(S, W)`` masks; an empty prediction on an empty mask scores 1."""
    p, t = _as_mask(pred), _as_mask(target)
    total = int(p.sum()) + int(t.sum())
    return 1.0 if total == 0 else 2.0 * int((p & t).sum()) / total


def _edges(mask: np.ndarray) -> np.ndarray:
    """The mask's boundary pixels: in the mask, with a 4-neighbour outside it (or off the grid)."""
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def hd95(pred: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor,
         spacing_sw: tuple[float, float] = (1.0, 1.0)) -> float:
    """95th-percentile Hausdorff distance in mm between binary ``(S, W)`` masks: the larger of
    the two directed 95th percentiles of boundary-to-nearest-boundary distances.

    NaN when either mask is empty (undefined), 0 when both are identical.
    """
    p, t = _as_mask(pred), _as_mask(target)
    if not p.any() or not t.any():
        return math.nan
    ep, et = _edges(p), _edges(t)
    spacing = [float(s) for s in spacing_sw]
    to_t = ndimage.distance_transform_edt(~et, sampling=spacing)[ep]
    to_p = ndimage.distance_transform_edt(~ep, sampling=spacing)[et]
    return float(max(np.percentile(to_t, 95), np.percentile(to_p, 95)))


def ssim(pred: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor,
         window: int = 11, sigma: float = 1.5) -> float:
    """SSIM of two ``(S, W)`` images in ``[0, 1]`` (Gaussian window)."""
    p = torch.as_tensor(np.asarray(pred, np.float32)).reshape(1, 1, *np.shape(pred)[-2:])
    t = torch.as_tensor(np.asarray(target, np.float32)).reshape(1, 1, *np.shape(target)[-2:])
    k = ssim_window_for(tuple(p.shape[-2:]), window)
    return float(structural_similarity(p, t, kernel_size=k, sigma=sigma, data_range=1.0))


def visit_record(key: str, prob: np.ndarray, target: np.ndarray, *, ssl: bool,
                 spacing_sw: tuple[float, float] = (1.0, 1.0), threshold: float = 0.5) -> dict:
    """The metrics of one visit from its probability map and target, both ``(S, W)``."""
    if ssl:
        return {"visit": key, "ssim": ssim(prob, target), "l1": float(np.abs(prob - target).mean())}
    pred = (prob >= threshold).astype(np.uint8)
    gt = (target >= 0.5).astype(np.uint8)
    area = float(spacing_sw[0] * spacing_sw[1])
    return {
        "visit": key,
        "dice": dice(pred, gt),
        "hd95": hd95(pred, gt, spacing_sw),
        "area_pred_mm2": float(pred.sum()) * area,
        "area_true_mm2": float(gt.sum()) * area,
        "pred_px": int(pred.sum()),
        "true_px": int(gt.sum()),
        "inter_px": int((pred & gt).sum()),
    }


def pooled_dice(records: list[dict]) -> float:
    """Dice over every pixel of a split: ``2 sum(inter) / (sum(pred) + sum(true))`` of the
    records' :data:`PIXEL_COUNTS`. A model that predicts nothing scores 0 on any split with GA;
    1 only when neither the split nor the prediction has any (NaN without records)."""
    if not records:
        return math.nan
    inter = sum(int(r["inter_px"]) for r in records)
    total = sum(int(r["pred_px"]) + int(r["true_px"]) for r in records)
    return 1.0 if total == 0 else 2.0 * inter / total


@dataclass
class VisitMetrics:
    """Accumulates per-visit records (``update``), merges workers (``merge``), ``aggregate``s."""

    records: list[dict] = field(default_factory=list)

    def update(self, record: dict) -> None:
        self.records.append(record)

    def reset(self) -> None:
        self.records.clear()

    def merge(self, others: list[list[dict]]) -> None:
        """Keep one record per visit from every worker's list (DDP samplers may repeat visits)."""
        seen = {r["visit"]: r for part in others for r in part}
        self.records = [seen[k] for k in sorted(seen)]

    def aggregate(self) -> dict[str, float]:
        """``{name}_mean``, ``{name}_std`` for every numeric metric; NaNs (undefined HD95) are
        left out of the mean and counted in ``{name}_undefined``; ``dice_pooled``
        (:func:`pooled_dice`) where the records hold pixel counts."""
        out: dict[str, float] = {"visits": float(len(self.records))}
        if not self.records:
            return out
        if all(PIXEL_COUNTS <= r.keys() for r in self.records):
            out["dice_pooled"] = pooled_dice(self.records)
        names = [k for k, v in self.records[0].items()
                 if isinstance(v, (int, float)) and k not in RECORD_META | PIXEL_COUNTS]
        for name in names:
            vals = np.array([r[name] for r in self.records], dtype=float)
            ok = vals[~np.isnan(vals)]
            out[f"{name}_mean"] = float(ok.mean()) if ok.size else math.nan
            out[f"{name}_std"] = float(ok.std()) if ok.size else math.nan
            if ok.size < vals.size:
                out[f"{name}_undefined"] = float(vals.size - ok.size)
        return out
