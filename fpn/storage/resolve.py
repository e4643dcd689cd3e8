"""Where a model's members come from: a checkpoint file or directory, a training run directory
(its ``fpn_run.json`` lists the k best), a registered MLflow model (``models:/NAME@ALIAS``), on a
local path or an fsspec URL. Remote members and registered models are downloaded to a temporary
folder that lives as long as the ``with resolve_members(...)`` block (it was left behind, one
copy of the model per call, until 2026-12-04); :func:`load_members` loads and cleans up at once.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fpn.storage.locations import _fs, is_remote, join_location
from fpn.storage.member import MODEL_FILE, load_member_file
from fpn.storage.run_record import RUN_FILE

__all__ = ["load_members", "resolve_members"]


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
def _download_members(ref: str, remote: list[str], dst: Path) -> list[Path]:
    """Download remote member files to ``dst``, one sub-folder each."""
    import fsspec

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


def _remote_members(ref: str, k: int | None, dst: Path) -> list[Path]:
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
    return _download_members(ref, remote[:k] if k else remote, dst)


@contextmanager
def resolve_members(ref: str, tracking_uri: str | None = None,
                    k: int | None = None) -> Iterator[list[Path]]:
    """Paths of the member files behind ``ref`` (file, checkpoint dir, run dir, ``models:/``),
    valid inside the ``with`` block.

    ``ref`` may be an fsspec URL (``s3://bucket/runs/<run>``) or a registered model: its members
    are downloaded to a temporary folder, removed when the block ends (also on an error).
    """
    with tempfile.TemporaryDirectory(prefix="fpn-model-") as tmp:
        yield _resolve(ref, tracking_uri, k, Path(tmp))


def load_members(ref: str, tracking_uri: str | None = None,
                 k: int | None = None) -> list[dict[str, Any]]:
    """The member payloads behind ``ref`` (:func:`resolve_members`, loaded; nothing left on
    disk)."""
    with resolve_members(ref, tracking_uri, k) as paths:
        return [load_member_file(p) for p in paths]


def _resolve(ref: str, tracking_uri: str | None, k: int | None, tmp: Path) -> list[Path]:
    if is_remote(ref) and not ref.startswith(("models:/", "runs:/")):
        return _remote_members(ref, k, tmp)
    if ref.startswith(("models:/", "runs:/")):
        import mlflow

        if tracking_uri:
            mlflow.set_tracking_uri(tracking_uri)
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=ref, dst_path=str(tmp)))
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
