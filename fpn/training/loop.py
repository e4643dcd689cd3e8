"""The framework-free parts of training: optimiser, schedule, one epoch, validation.

Nothing here knows about Ray; ``worker.py`` wires these into a Ray Train worker. What depends on
the device (memory format, copies, autocast) comes from :mod:`fpn.device`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable

import numpy as np
import torch
from torch import nn

from fpn.config import OptimConfig, TrainConfig
from fpn.device import DevicePolicy, device_policy
from fpn.metrics import VisitMetrics, visit_record

__all__ = ["build_optimizer", "build_scheduler", "train_epoch", "validate"]


def build_optimizer(model: nn.Module, cfg: OptimConfig,
                    pretrained: set[str] | None = None) -> torch.optim.Optimizer:
    """SGD (reference) or AdamW; weights loaded from ``--init`` may get ``lr * pretrained_lr_scale``."""
    pretrained = pretrained or set()
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    loaded = [p for n, p in named if n in pretrained]
    fresh = [p for n, p in named if n not in pretrained]
    groups = [g for g in (
        {"params": fresh, "lr": cfg.lr, "name": "fresh"},
        {"params": loaded, "lr": cfg.lr * cfg.pretrained_lr_scale, "name": "pretrained"},
    ) if g["params"]]
    for g in groups:
        g["initial_lr"] = g["lr"]
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def build_scheduler(opt: torch.optim.Optimizer, cfg: OptimConfig,
                    epochs: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-epoch factor: linear warm-up, then constant (reference) or cosine to zero."""

    def factor(epoch: int) -> float:
        if epoch < cfg.warmup_epochs:
            return (epoch + 1) / (cfg.warmup_epochs + 1)
        if cfg.schedule == "cosine":
            span = max(1, epochs - cfg.warmup_epochs)
            return 0.5 * (1 + math.cos(math.pi * (epoch - cfg.warmup_epochs) / span))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def train_epoch(model: nn.Module, loader: Iterable, loss_fn: nn.Module,
                opt: torch.optim.Optimizer, device: torch.device, cfg: TrainConfig,
                policy: DevicePolicy | None = None, *, start_step: int = 0,
                partial: tuple[float, int] = (0.0, 0),
                after_step: Callable[[int, float, int], None] | None = None) -> dict[str, float]:
    """One pass over this worker's shard of crops; returns loss, crops, seconds and the
    optimizer steps of the epoch (``steps``, those skipped on a resume included).

    ``policy`` (default: :func:`device_policy` for ``device``) decides the input's memory format,
    the copies and the autocast dtype. A pass resumed from a mid-epoch checkpoint skips its first
    ``start_step`` batches (the same ones: the sampler and crops are seeded by the epoch) and
    continues the loss sum and crop count of ``partial``. ``after_step(steps_done, loss_sum,
    crops)`` runs after every optimizer step (mid-epoch checkpoints, stop requests).
    """
    policy = policy or device_policy(device.type, cfg)
    model.train()
    total, n, t0 = float(partial[0]), int(partial[1]), time.perf_counter()
    steps = start_step
    for step, (oct_crop, target) in enumerate(loader):
        if step < start_step:
            continue
        oct_crop = policy.prepare_input(oct_crop, device)
        target = target.to(device, non_blocking=policy.non_blocking)
        with policy.autocast():
            logits = model(oct_crop)
        loss = loss_fn(logits.float(), target)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite training loss {loss.item()} "
                                     f"(lr {opt.param_groups[0]['lr']:.3g}); lower --lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.optim.grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        opt.step()
        total += float(loss.detach()) * oct_crop.shape[0]
        n += oct_crop.shape[0]
        steps = step + 1
        if after_step is not None:
            after_step(step + 1, total, n)
    return {"loss": total / max(n, 1), "crops": float(n), "seconds": time.perf_counter() - t0,
            "steps": float(steps)}


@torch.no_grad()
def validate(model: nn.Module, loader: Iterable, device: torch.device, cfg: TrainConfig,
             spacings: dict[str, tuple[float, float]], keep_probs: Iterable[str] = (),
             policy: DevicePolicy | None = None) -> tuple[VisitMetrics, dict[str, np.ndarray]]:
    """Whole volumes on the native grid: per-visit metrics, and the probability maps of
    ``keep_probs`` visits (for overlays)."""
    policy = policy or device_policy(device.type, cfg)
    model.eval()
    keep = set(keep_probs)
    metrics, probs = VisitMetrics(), {}
    for vol, target, keys in loader:
        vol = policy.prepare_input(vol, device)
        with policy.autocast():
            p = torch.sigmoid(model(vol).float()).cpu().numpy()
        t = target.numpy()
        for i, key in enumerate(keys):
            metrics.update(visit_record(key, p[i, 0], t[i, 0], ssl=cfg.is_ssl,
                                        spacing_sw=spacings.get(key, (1.0, 1.0))))
            if key in keep:
                probs[key] = p[i, 0]
    return metrics, probs
