"""Inference: the k-best ensemble, where its members come from, and prediction on volumes.

A trained model is one or more *members*: ``model.pt`` files written by the training workers
(``{"format", "model_name", "model_kwargs", "state_dict", "target", "zscore_eps", ...}``, plain
tensors and builtins, loaded with ``weights_only=True``). :func:`resolve_members` finds them from
a checkpoint file or directory, a training run directory (its ``fpn_run.json`` lists the k best),
or a registered MLflow model (``models:/NAME@ALIAS``, whose artifacts hold the same files).

Run directories and checkpoints may live in an object store (``s3://bucket/runs/<run>``, any
fsspec URL): the member files are then downloaded to a temporary folder. The small
``*_location`` helpers read and write a run directory's own files (``fpn_run.json``,
``attempts.jsonl``) on a local path or an fsspec URL alike; S3-compatible endpoints (MinIO, moto)
come from ``AWS_ENDPOINT_URL``, which boto3, s3fs and pyarrow all honour.
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
    "Ensemble",
    "append_location_line",
    "is_remote",
    "join_location",
    "load_ensemble",
    "load_member_file",
    "location_exists",
    "read_location_text",
    "resolve_members",
    "save_member",
    "write_location_text",
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


# -- run-directory files on a local path or an fsspec URL -------------------------------------------
def is_remote(location: str) -> bool:
    """True for an fsspec URL other than ``file://`` (``s3://``, ``gs://``, ``memory://``, ...)."""
    return "://" in str(location) and not str(location).startswith("file://")


def _local(location: str) -> Path:
    location = str(location)
    return Path(location.removeprefix("file://"))


def join_location(base: str, *parts: str) -> str:
    """``base/part/...`` for a path or a URL (URLs always join with ``/``)."""
    if is_remote(base):
        return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])
    return str(_local(base).joinpath(*parts))


def _fs(location: str) -> tuple[Any, str]:
    import fsspec

    fs, path = fsspec.core.url_to_fs(location)
    # another process (a Ray worker, a re-run) may have written here since fsspec cached a listing
    fs.invalidate_cache()
    return fs, path


def location_exists(location: str) -> bool:
    """Whether a file exists at a local path or an fsspec URL."""
    if not is_remote(location):
        return _local(location).is_file()
    fs, path = _fs(location)
    return bool(fs.isfile(path))


def read_location_text(location: str) -> str | None:
    """The text of a file at a path or URL, or None when it does not exist."""
    if not is_remote(location):
        p = _local(location)
        return p.read_text() if p.is_file() else None
    fs, path = _fs(location)
    try:
        return fs.cat_file(path).decode()
    except FileNotFoundError:
        return None


def write_location_text(location: str, text: str) -> None:
    """Write a whole file: locally to a temporary name then renamed; on an object store in one
    PUT, which the store makes visible whole or not at all."""
    if not is_remote(location):
        p = _local(location)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
        tmp.write_text(text)
        os.replace(tmp, p)
        return
    fs, path = _fs(location)
    fs.pipe_file(path, text.encode())


def append_location_line(location: str, line: str) -> None:
    """Append one line. Object stores cannot append, so there the file is read and rewritten:
    fine for the single writer (rank 0) of a small log such as ``attempts.jsonl``."""
    line = line.rstrip("\n") + "\n"
    if not is_remote(location):
        p = _local(location)
        p.parent.mkdir(parents=True, exist_ok=True)
        with p.open("a") as fh:
            fh.write(line)
        return
    write_location_text(location, (read_location_text(location) or "") + line)


def _download_members(ref: str, remote: list[str]) -> list[Path]:
    """Download remote member files to a fresh temporary folder, one sub-folder each."""
    import fsspec

    dst = Path(tempfile.mkdtemp(prefix="fpn-model-"))
    local: list[Path] = []
    for i, url in enumerate(remote):
        fs, path = _fs(url)
        if not fs.isfile(path):
            raise ValueError(f"{ref}: member file missing: {url}")
        parent = path.rstrip("/").split("/")[-2] if "/" in path.rstrip("/") else "member"
        out = dst / f"{i:02d}-{parent}" / MODEL_FILE
        out.parent.mkdir(parents=True)
        with fsspec.open(url, "rb") as src, out.open("wb") as fh:
            fh.write(src.read())
        local.append(out)
    return local


def _remote_members(ref: str, k: int | None) -> list[Path]:
    fs, path = _fs(ref)
    scheme = ref.split("://", 1)[0]
    path = path.rstrip("/")
    if fs.isfile(path):
        remote = [ref]
    elif fs.isfile(f"{path}/{RUN_FILE}"):
        info = json.loads(fs.cat_file(f"{path}/{RUN_FILE}"))
        remote = [join_location(c, MODEL_FILE) for c in info.get("best_checkpoints", [])]
        if not remote:
            raise ValueError(f"{ref}/{RUN_FILE}: the run has no checkpoints yet")
    elif fs.isfile(f"{path}/{MODEL_FILE}"):
        remote = [join_location(ref, MODEL_FILE)]
    else:
        found = sorted(fs.glob(f"{path}/members/*/{MODEL_FILE}")) or sorted(
            fs.glob(f"{path}/*/{MODEL_FILE}"))
        if not found:
            if not fs.exists(path):
                raise ValueError(f"{ref}: no such checkpoint, run directory or model file")
            raise ValueError(f"{ref}: no {MODEL_FILE} or {RUN_FILE} found")
        remote = [f"{scheme}://{p}" for p in found]
    return _download_members(ref, remote[:k] if k else remote)


def resolve_members(ref: str, tracking_uri: str | None = None, k: int | None = None) -> list[Path]:
    """Paths of the member files behind ``ref`` (file, checkpoint dir, run dir, ``models:/``).

    ``ref`` may be an fsspec URL (``s3://bucket/runs/<run>``): its members are downloaded to a
    temporary folder and the local copies returned.
    """
    if is_remote(ref) and not ref.startswith(("models:/", "runs:/")):
        return _remote_members(ref, k)
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
        from fpn.training.device import device_policy

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
    return Ensemble([load_member_file(p) for p in resolve_members(ref, tracking_uri, k)], device)
