"""Inference: the k-best ensemble, where its members come from, and prediction on volumes.

A trained model is one or more *members*: ``model.pt`` files written by the training workers
(``{"format", "model_name", "model_kwargs", "state_dict", "target", "zscore_eps", ...}``, plain
tensors and builtins, loaded with ``weights_only=True``). :func:`resolve_members` finds them from
a checkpoint file or directory, a training run directory (its ``fpn_run.json`` lists the k best),
or a registered MLflow model (``models:/NAME@ALIAS``, whose artifacts hold the same files).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fpn.data.transforms import bscan_stats, zscore

__all__ = [
    "MODEL_FILE",
    "RUN_FILE",
    "save_member",
    "load_member_file",
    "resolve_members",
    "Ensemble",
    "load_ensemble",
]

MODEL_FILE = "model.pt"
RUN_FILE = "fpn_run.json"
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
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_member_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt files
        raise ValueError(f"{path}: not a readable fpn model file: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path}: not an fpn model file (format {FORMAT} expected)")
    return payload


def _members_in_dir(d: Path) -> list[Path]:
    if (d / RUN_FILE).is_file():
        info = json.loads((d / RUN_FILE).read_text())
        paths = [Path(p) / MODEL_FILE for p in info.get("best_checkpoints", [])]
        if not paths:
            raise ValueError(f"{d / RUN_FILE}: the run has no checkpoints yet")
        return paths
    if (d / MODEL_FILE).is_file():
        return [d / MODEL_FILE]
    members = sorted(d.glob(f"members/*/{MODEL_FILE}")) or sorted(d.glob(f"*/{MODEL_FILE}"))
    if not members:
        raise ValueError(f"{d}: no {MODEL_FILE} or {RUN_FILE} found")
    return members


def resolve_members(ref: str, tracking_uri: str | None = None, k: int | None = None) -> list[Path]:
    """Paths of the member files behind ``ref`` (file, checkpoint dir, run dir, ``models:/``)."""
    if ref.startswith(("models:/", "runs:/")):
        import mlflow

        if tracking_uri:
            mlflow.set_tracking_uri(tracking_uri)
        local = Path(mlflow.artifacts.download_artifacts(
            artifact_uri=ref, dst_path=tempfile.mkdtemp(prefix="fpn-model-")))
        members = sorted(local.glob(f"artifacts/members/*/{MODEL_FILE}")) or sorted(
            local.rglob(MODEL_FILE))
        if not members:
            raise ValueError(f"{ref}: the model holds no fpn member files")
    else:
        p = Path(ref)
        if not p.exists():
            raise ValueError(f"{ref}: no such checkpoint, run directory or model file")
        members = [p] if p.is_file() else _members_in_dir(p)
    missing = [m for m in members if not m.is_file()]
    if missing:
        raise ValueError(f"{ref}: member files missing: {', '.join(map(str, missing))}")
    return members[:k] if k else members


def build_member(payload: dict[str, Any]) -> torch.nn.Module:
    from fpn.models import create_model

    model = create_model(payload["model_name"], **payload["model_kwargs"])
    model.load_state_dict(payload["state_dict"])
    return model.eval()


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
        self.models = [build_member(m).to(self.device) for m in members]
        self.target = members[0]["target"]
        self.zscore_eps = members[0]["zscore_eps"]
        self.model_name = members[0]["model_name"]
        self.model_kwargs = members[0]["model_kwargs"]

    def __len__(self) -> int:
        return len(self.models)

    @torch.no_grad()
    def predict_normalised(self, vol: torch.Tensor) -> torch.Tensor:
        """``(B, 1, S, D, W)`` z-scored OCT -> ``(B, 1, S, W)`` mean probability."""
        vol = vol.to(self.device, torch.float32)
        amp = self.device.type == "cuda"
        acc = None
        for m in self.models:
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=amp):
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
    return Ensemble([load_member_file(p) for p in resolve_members(ref, tracking_uri, k)], device)
