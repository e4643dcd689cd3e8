"""The k-best ensemble: averages its members' probabilities on whole volumes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from fpn.data.transforms import bscan_stats, zscore
from fpn.device import device_policy
from fpn.storage.member import build_member
from fpn.storage.resolve import load_members

__all__ = ["Ensemble", "load_ensemble"]


class Ensemble:
    """Averages the members' probabilities on whole volumes, on the native (S, W) grid.

    Args:
        members: loaded member payloads (see :func:`load_member_file`).
        device: ``"cpu"``, ``"cuda"``; ``None`` picks CUDA when available.
    """

    def __init__(self, members: Sequence[dict[str, Any]], device: str | None = None):
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.policy = device_policy(self.device.type)  # bf16 + channels-last on a GPU
        self.models = [self.policy.prepare_model(build_member(m), self.device) for m in members]
        self.target = members[0]["target"]
        self.zscore_eps = members[0]["zscore_eps"]
        self.model_name = members[0]["model_name"]
        self.model_kwargs = members[0]["model_kwargs"]

    def __len__(self) -> int:
        return len(self.models)

    @torch.no_grad()
    def predict_normalised(self, vol: torch.Tensor) -> torch.Tensor:
        """``(B, 1, S, D, W)`` z-scored OCT -> ``(B, 1, S, W)`` mean probability."""
        vol = self.policy.prepare_input(vol.float(), self.device)
        acc = None
        for m in self.models:
            with self.policy.autocast():
                p = torch.sigmoid(m(vol).float())
            acc = p if acc is None else acc + p
        return acc / len(self.models)

    def predict_volume(self, oct_volume: np.ndarray) -> np.ndarray:
        """Raw ``(S, D, W)`` OCT (any scale) -> ``(S, W)`` float32 probability map."""
        v = np.asarray(oct_volume, np.float32)
        if v.ndim != 3:
            raise ValueError(f"expected an OCT volume (S, D, W), got shape {v.shape}")
        mean, std = bscan_stats(v)
        z = torch.from_numpy(zscore(v, mean, std, self.zscore_eps))[None, None]
        return self.predict_normalised(z)[0, 0].cpu().numpy()


def load_ensemble(ref: str, tracking_uri: str | None = None, k: int | None = None,
                  device: str | None = None) -> Ensemble:
    """The ensemble behind a checkpoint file/dir, a run directory or a ``models:/`` URI."""
    return Ensemble(load_members(ref, tracking_uri, k), device)
