"""Patient-level subsets for the labelled-data ratios.

The ratio applies to training patients, never to visits: every visit of a chosen patient comes
along. Subsets are seeded and nested (the 0.05 subset lies inside the 0.1 subset, and so on)
because they are prefixes of one seeded permutation. The reference release's script trained every
ratio below 1.0 on a single patient; here the count is ``max(1, floor(N * ratio))``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["VisitPlan", "plan_visits", "ratio_patients", "subset_size"]


def subset_size(n_patients: int, ratio: float) -> int:
    """``max(1, floor(n * ratio))`` patients (0 when there are none)."""
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"ratio must be in (0, 1], got {ratio}")
    if n_patients <= 0:
        return 0
    # a small tolerance so that e.g. 20 * 0.05 is 1, not 0.999... -> 0
    return max(1, min(n_patients, math.floor(n_patients * ratio + 1e-9)))


def ratio_patients(train_patients: Sequence[str], ratio: float, seed: int = 0) -> list[str]:
    """The labelled training patients used at ``ratio``, as a prefix of a seeded permutation.

    Args:
        train_patients: ids of the training patients that have labels (order does not matter).
        ratio: fraction in (0, 1].
        seed: permutation seed; the same seed gives nested subsets across ratios.

    Returns:
        The chosen patient ids, sorted.
    """
    pool = sorted(set(train_patients))
    order = np.random.default_rng(seed).permutation(len(pool))
    chosen = [pool[i] for i in order[: subset_size(len(pool), ratio)]]
    return sorted(chosen)


@dataclass(frozen=True)
class VisitPlan:
    """Which visits a run trains and validates on, and which patients they belong to."""

    train_keys: list[str]
    val_keys: list[str]
    train_patients: list[str]


def plan_visits(store: Any, target: str, ratio: float = 1.0, seed: int = 0) -> VisitPlan:
    """Training and validation visits for ``target``.

    Pretraining (``target`` an en-face modality) uses every train and unlabelled visit that has
    the modality, labelled or not; test patients stay unseen. Fine-tuning (``mask``) uses every
    labelled visit of :func:`ratio_patients` of the labelled training patients. Validation is
    always the ``val`` split's visits with the target.
    """
    from fpn.data.dataset import select_visits

    if target == "mask":
        labelled = sorted({v.patient_id for v in store.visits_for(splits="train", require="mask")})
        patients = ratio_patients(labelled, ratio, seed)
        train = select_visits(store, "mask", "train", patients)
    else:
        train = select_visits(store, target, ("train", "unlabelled"))
        patients = sorted({store.visit(k).patient_id for k in train})
    val = select_visits(store, target, "val")
    if not train:
        raise ValueError(f"{store.location}: no training visits with {target!r}")
    if not val:
        raise ValueError(f"{store.location}: no validation visits with {target!r}")
    return VisitPlan(train, val, patients)
