"""Where a model's members come from: a checkpoint file or directory, a training run directory
(its ``fpn_run.json`` lists the k best), a registered MLflow model (``models:/NAME@ALIAS``), on a
local path or an fsspec URL (remote members are downloaded to a temporary folder).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from fpn.inference.locations import RUN_FILE, _fs, is_remote, join_location
from fpn.inference.member import MODEL_FILE

__all__ = ["resolve_members"]


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
