"""The checkpoint member format that training writes and inference reads: one ensemble member
per ``model.pt``.

``{"format", "model_name", "model_kwargs", "state_dict", "target", "zscore_eps", ...}``: plain
tensors and builtins, written atomically and loaded with ``weights_only=True``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from fpn.storage.locations import atomic_file

__all__ = ["FORMAT", "MODEL_FILE", "build_member", "load_member_file", "save_member"]

MODEL_FILE = "model.pt"
FORMAT = "fpn-member/1"


def save_member(path: str | Path, model: torch.nn.Module, *, model_name: str,
                model_kwargs: dict[str, Any], target: str, zscore_eps: float,
                extra: dict[str, Any] | None = None) -> None:
    """Write one ensemble member to ``path`` atomically (temporary name, then rename)."""
    path = Path(path)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload = {"format": FORMAT, "model_name": model_name, "model_kwargs": dict(model_kwargs),
               "state_dict": state, "target": target, "zscore_eps": float(zscore_eps),
               **(extra or {})}
    with atomic_file(path) as tmp:
        torch.save(payload, tmp)


def load_member_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt files
        raise ValueError(f"{path}: not a readable fpn model file: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path}: not an fpn model file (format {FORMAT} expected)")
    return payload


def build_member(payload: dict[str, Any]) -> torch.nn.Module:
    from fpn.models import create_model

    model = create_model(payload["model_name"], **payload["model_kwargs"])
    model.load_state_dict(payload["state_dict"])
    return model.eval()
