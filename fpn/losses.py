"""Training losses: ``(logits, target) -> scalar``. Pure functions and small modules; no I/O.

Segmentation follows the reference, ``(soft Dice + BCE) / 2`` with soft Dice
``1 - 2 sum(p g) / (sum(p^2) + sum(g^2))`` (for a binary ``g``, ``sum(g^2) = sum(g)``), one Dice
over the whole batch, with configurable weights. Reconstruction is negative SSIM (Wang et al.
2004) with a Gaussian window on ``sigmoid(logits)`` against the en-face image in ``[0, 1]``, plus
an optional L1 term.

Both are written here in a few lines of torch rather than taken from MONAI (``DiceLoss``) and
torchmetrics (``structural_similarity_index_measure``): importing those packages costs every
process that trains about 6.6 s of CPU (MONAI's ``__init__`` loads all of MONAI, torchmetrics
loads scipy.signal), and every Ray Train worker, Tune trial and CLI trains. The unit tests
(``tests/test_metrics.py``) hold both functions equal to those libraries.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fpn.config import LossConfig

__all__ = ["ReconstructionLoss", "SegmentationLoss", "build_loss", "soft_dice_loss",
           "ssim_window_for", "structural_similarity"]

#: the smoothing terms of the soft Dice (numerator and denominator), as MONAI's defaults
DICE_SMOOTH = 1e-5


def soft_dice_loss(prob: torch.Tensor, target: torch.Tensor,
                   smooth: float = DICE_SMOOTH) -> torch.Tensor:
    """``1 - (2 sum(p g) + s) / (sum(p^2) + sum(g^2) + s)`` per channel over the batch and every
    spatial position (one Dice for the batch: crops without lesion would otherwise give a
    degenerate per-sample Dice), averaged over channels; ``prob`` and ``target`` ``(B, C, ...)``."""
    dims = [0, *range(2, prob.dim())]
    intersection = (prob * target).sum(dims)
    denominator = (prob * prob).sum(dims) + (target * target).sum(dims)
    return (1.0 - (2.0 * intersection + smooth) / (denominator + smooth)).mean()


def _gaussian_window(size: int, sigma: float, like: torch.Tensor) -> torch.Tensor:
    x = torch.arange(size, dtype=like.dtype, device=like.device) - (size - 1) / 2
    g = torch.exp(-0.5 * (x / sigma) ** 2)
    g = g / g.sum()
    return torch.outer(g, g)


def structural_similarity(pred: torch.Tensor, target: torch.Tensor, *, kernel_size: int = 11,
                          sigma: float = 1.5, data_range: float = 1.0, k1: float = 0.01,
                          k2: float = 0.03) -> torch.Tensor:
    """Mean SSIM of ``(B, C, H, W)`` images with a ``kernel_size`` Gaussian window (odd;
    differentiable).

    Local statistics are Gaussian-weighted means around every pixel, the image reflected at its
    borders (as torchmetrics computes it, so that the library stays the oracle and earlier
    results stand); the SSIM map is averaged per image, then over the batch.
    """
    channels, batch, pad = pred.shape[1], pred.shape[0], (kernel_size - 1) // 2
    window = _gaussian_window(kernel_size, sigma, pred).expand(channels, 1, kernel_size,
                                                                kernel_size)
    p = F.pad(pred, (pad, pad, pad, pad), mode="reflect")
    t = F.pad(target, (pad, pad, pad, pad), mode="reflect")
    stats = F.conv2d(torch.cat([p, t, p * p, t * t, p * t]), window, groups=channels)
    mu_p, mu_t, pp, tt, pt = stats.split(batch)
    var_p = (pp - mu_p * mu_p).clamp_min(0.0)
    var_t = (tt - mu_t * mu_t).clamp_min(0.0)
    cov = pt - mu_p * mu_t
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    ssim_map = ((2 * mu_p * mu_t + c1) * (2 * cov + c2)) / (
        (mu_p * mu_p + mu_t * mu_t + c1) * (var_p + var_t + c2))
    return ssim_map.flatten(1).mean(1).mean()


class SegmentationLoss(nn.Module):
    """``dice_weight * softDice + bce_weight * BCE`` on logits ``(B, 1, S, W)``."""

    def __init__(self, dice_weight: float = 0.5, bce_weight: float = 0.5):
        super().__init__()
        self.dice_weight = dice_weight
        self.bce_weight = bce_weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        loss = self.bce_weight * F.binary_cross_entropy_with_logits(logits, target)
        if self.dice_weight:
            loss = loss + self.dice_weight * soft_dice_loss(torch.sigmoid(logits), target)
        return loss


def ssim_window_for(size_sw: tuple[int, int], window: int) -> int:
    """The largest odd window <= ``window`` that fits the en-face size (small crops, small S)."""
    fit = min(window, *size_sw)
    return max(3, fit if fit % 2 else fit - 1)


class ReconstructionLoss(nn.Module):
    """``-SSIM(sigmoid(logits), target) + l1_weight * L1`` on ``(B, 1, S, W)``."""

    def __init__(self, window: int = 11, sigma: float = 1.5, l1_weight: float = 0.0):
        super().__init__()
        self.window, self.sigma, self.l1_weight = window, sigma, l1_weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        pred = torch.sigmoid(logits.float())
        k = ssim_window_for(tuple(pred.shape[-2:]), self.window)
        loss = -structural_similarity(pred, target.float(), kernel_size=k, sigma=self.sigma)
        if self.l1_weight:
            loss = loss + self.l1_weight * F.l1_loss(pred, target)
        return loss


def build_loss(cfg: LossConfig, ssl: bool) -> nn.Module:
    if ssl:
        return ReconstructionLoss(cfg.ssim_window, cfg.ssim_sigma, cfg.l1_weight)
    return SegmentationLoss(cfg.dice_weight, cfg.bce_weight)
