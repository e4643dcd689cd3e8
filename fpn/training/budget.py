"""A run's training budget: how many crops an epoch draws and how many optimizer steps they make.

With ``TrainConfig.steps_per_epoch`` set, the budget is in optimizer steps: every epoch is that
many steps per worker, whatever the number of training visits, so a run at ratio 0.1 (one
labelled patient) trains as long as one at ratio 1.0 (nnU-Net fixes 250 iterations per epoch for
the same reason). Without it, the reference's budget: ``data.multiplier`` crops per training
visit, so the steps follow the number of visits a ratio has.

The numbers here are what the worker's ``DataLoader`` gives (a ``DistributedSampler`` over the
crops, ``drop_last`` when a worker's shard holds at least one batch); the worker logs the steps
it actually took as ``train/steps``.
"""

from __future__ import annotations

import math

from fpn.config import TrainConfig

__all__ = ["crops_per_epoch", "steps_per_epoch"]


def crops_per_epoch(cfg: TrainConfig, visits: int, world: int = 1) -> int:
    """The crops one epoch draws over all ``world`` workers from ``visits`` training visits:
    ``steps_per_epoch x batch_size x world``, or ``multiplier x visits`` (the reference).

    Raises:
        ValueError: no training visits or no workers.
    """
    if visits < 1 or world < 1:
        raise ValueError(f"an epoch needs training visits and workers, got {visits} visits "
                         f"and {world} workers")
    if cfg.steps_per_epoch is not None:
        return cfg.steps_per_epoch * cfg.batch_size * world
    return cfg.data.multiplier * visits


def steps_per_epoch(cfg: TrainConfig, visits: int, world: int = 1) -> int:
    """The optimizer steps each worker takes in one epoch (``steps_per_epoch`` when set)."""
    shard = math.ceil(crops_per_epoch(cfg, visits, world) / world)
    return shard // cfg.batch_size if shard >= cfg.batch_size else 1
