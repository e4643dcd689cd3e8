"""Training losses: ``(logits, target) -> scalar``. Small modules; no I/O.

Segmentation follows the reference, ``(soft Dice + BCE) / 2`` with soft Dice
``1 - 2 sum(p g) / (sum(p^2) + sum(g))`` (MONAI's DiceLoss with squared predictions; for a binary
``g``, ``sum(g^2) = sum(g)``), with configurable weights. Reconstruction is negative SSIM with a
Gaussian window (torchmetrics) on ``sigmoid(logits)`` against the en-face image in ``[0, 1]``,
plus an optional L1 term.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from torch import nn
from torchmetrics.functional.image import structural_similarity_index_measure

from fpn.config import LossConfig

__all__ = ["ReconstructionLoss", "SegmentationLoss", "build_loss", "ssim_window_for"]


class SegmentationLoss(nn.Module):
    """``dice_weight * softDice + bce_weight * BCE`` on logits ``(B, 1, S, W)``."""

    def __init__(self, dice_weight: float = 0.5, bce_weight: float = 0.5):
        super().__init__()
        self.dice_weight = dice_weight
        self.bce_weight = bce_weight
        # batch=True: one Dice over the whole batch, as the reference (crops without lesion
        # would otherwise give a degenerate per-sample Dice).
        self.dice = DiceLoss(sigmoid=True, squared_pred=True, batch=True)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        loss = self.bce_weight * F.binary_cross_entropy_with_logits(logits, target)
        if self.dice_weight:
            loss = loss + self.dice_weight * self.dice(logits, target)
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
        ssim = structural_similarity_index_measure(
            pred, target, gaussian_kernel=True, sigma=self.sigma, kernel_size=k, data_range=1.0
        )
        loss = -ssim
        if self.l1_weight:
            loss = loss + self.l1_weight * F.l1_loss(pred, target)
        return loss


def build_loss(cfg: LossConfig, ssl: bool) -> nn.Module:
    if ssl:
        return ReconstructionLoss(cfg.ssim_window, cfg.ssim_sigma, cfg.l1_weight)
    return SegmentationLoss(cfg.dice_weight, cfg.bce_weight)
