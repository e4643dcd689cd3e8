"""The head's prior: the training split's GA fraction, and when a run starts from it.

A segmentation run whose head is fresh (from scratch, or ``reinit_head`` over a pretrained
network) starts with its output bias at the logit of the fraction of GA pixels in its own
training visits (:func:`fpn.models.head.set_output_prior`), so that it starts by predicting
about as much GA as there is, not 20-40% of every image.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from fpn.config import TrainConfig

__all__ = ["ga_fraction", "wants_head_prior"]


def ga_fraction(store: Any, keys: Sequence[str]) -> float:
    """The fraction of en-face pixels that are GA over the visits ``keys`` (pooled: every
    pixel counts once).

    Raises:
        ValueError: no visits.
    """
    if not keys:
        raise ValueError(f"{store.location}: no training visits to take the GA fraction of")
    positive = total = 0
    for key in keys:
        mask = np.asarray(store.read(key, "mask")) >= 0.5
        positive += int(mask.sum())
        total += mask.size
    return positive / total


def wants_head_prior(cfg: TrainConfig, resumed: bool) -> bool:
    """Whether the run sets the head's prior: a segmentation run with ``head_prior`` on whose
    head is fresh (no ``init``, or ``reinit_head``), and not a resumed run (its head is
    trained)."""
    fresh_head = cfg.init is None or cfg.reinit_head
    return cfg.head_prior and not cfg.is_ssl and fresh_head and not resumed
