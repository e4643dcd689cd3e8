"""Settled BatchNorm statistics before every validation and checkpoint.

A BatchNorm network evaluates with the running averages of its batch statistics. After a short
run those still hold much of their initial values (momentum 0.1: after 16-36 steps about 18%),
so validation and test measure that lag, not the network: at initialisation FPN's logits have std
0.08 in eval mode against 1.48 in train mode on the same input. :func:`recompute_batchnorm`
replaces the running statistics by their average over a few training batches with the current
weights (``torch.optim.swa_utils.update_bn`` does the forward passes; the SWA recipe recomputes
them for the same reason), then averages them over the Ray Train workers, so that every rank
holds the statistics rank 0 checkpoints. Only the buffers change; weights and optimizer do not.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch import nn
from torch.optim.swa_utils import update_bn

__all__ = ["batchnorm_layers", "recompute_batchnorm"]


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers that keep running statistics, in module order (the same on every
    rank)."""
    return [m for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


def _average_over_workers(layers: list[nn.modules.batchnorm._BatchNorm]) -> None:
    """Each layer's running mean and variance pooled over the workers (equal batch counts): the
    mean of the means, and the mean of ``var + mean^2`` less the squared pooled mean."""
    world = dist.get_world_size()
    means = torch.cat([m.running_mean.detach().float().flatten() for m in layers])
    squares = torch.cat([(m.running_var.float() + m.running_mean.float() ** 2).flatten()
                         for m in layers])
    both = torch.stack([means, squares])
    dist.all_reduce(both, op=dist.ReduceOp.SUM)
    both /= world
    mean, var = both[0], (both[1] - both[0] ** 2).clamp_min(0)
    at = 0
    for m in layers:
        n = m.running_mean.numel()
        m.running_mean.copy_(mean[at:at + n].view_as(m.running_mean))
        m.running_var.copy_(var[at:at + n].view_as(m.running_var))
        at += n


@torch.no_grad()
def recompute_batchnorm(model: nn.Module, inputs: Iterable[torch.Tensor], batches: int) -> int:
    """Recompute the running statistics of ``model``'s BatchNorm layers from the first
    ``batches`` of ``inputs`` (network inputs, already on the model's device and in its memory
    format), then average them over the workers when a process group is up. Train/eval mode is
    restored.

    Returns:
        The batches used (0: the model has no BatchNorm, ``batches`` is 0 or ``inputs`` is
        empty; the statistics are then unchanged).
    """
    layers = batchnorm_layers(model)
    if not layers or batches <= 0:
        return 0
    taken = list(itertools.islice(iter(inputs), batches))
    if taken:  # update_bn resets the statistics first: never call it with nothing to average
        update_bn(taken, model)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        # every rank takes part (a collective), also one whose shard gave no batch
        _average_over_workers(layers)
    return len(taken)
