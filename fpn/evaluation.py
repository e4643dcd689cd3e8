"""``evaluate`` and ``predict``: the k-best ensemble on whole volumes, on the native grid.

Both read models through :func:`fpn.inference.load_ensemble` (checkpoint, run directory or
``models:/NAME@ALIAS``) and data through :func:`fpn.data.open_store` or one OCT file.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from fpn import tags as T
from fpn.agreement import readout_metrics, visit_areas_from_records
from fpn.data.dataset import stored_name
from fpn.data.store import open_store
from fpn.data.transforms import target_from
from fpn.growth import growth_per_eye
from fpn.inference import Ensemble, load_ensemble
from fpn.metrics import VisitMetrics, visit_record
from fpn.readout import write_readout
from fpn.stats import record_metrics
from fpn.storage import RUN_FILE, atomic_file, join_location, read_location_text

__all__ = ["AREAS_COLUMNS", "AREAS_COLUMNS_PX", "SplitEvaluation", "evaluate",
           "evaluate_ensemble", "evaluate_split", "growth", "keys_digest", "predict"]

AREAS_COLUMNS = ["visit", "patient_id", "eye", "day", "mask_png", "area_mm2"]
#: ``areas.csv`` of volumes without a spacing: the area in pixels
AREAS_COLUMNS_PX = [*AREAS_COLUMNS[:-1], "area_px"]


def _atomic_write(path: Path, write) -> None:
    with atomic_file(path) as tmp:
        write(tmp)


def _write_csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)

    _atomic_write(path, write)


def _source_run_id(model_ref: str, tracking_uri: str | None) -> str | None:
    """The MLflow run a model came from, when it can be known.

    ``models:/NAME@ALIAS`` and ``models:/NAME/VERSION`` are registered versions; ``models:/m-<id>``
    is an MLflow 3 logged model (what ``log_model`` returns as ``model_uri``), whose run is its
    ``source_run_id``; a run directory (path or URL) names its run in its record.
    """
    if not model_ref.startswith(("models:/", "runs:/")):
        text = read_location_text(join_location(model_ref, RUN_FILE))  # a path or an s3:// URL
        return json.loads(text).get("mlflow_run_id") if text else None
    if model_ref.startswith("runs:/"):
        return model_ref[len("runs:/"):].split("/", 1)[0] or None
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    body = model_ref[len("models:/"):].strip("/")
    name, _, alias = body.partition("@")
    if alias:
        return client.get_model_version_by_alias(name, alias).run_id
    name, _, version = body.partition("/")
    if not version:  # models:/m-<id>: a logged model, not a registered version
        return client.get_logged_model(name).source_run_id
    return client.get_model_version(name, version).run_id


def evaluate_ensemble(ensemble: Ensemble, store: Any, keys: list[str]) -> VisitMetrics:
    """Per-visit metrics of ``ensemble`` on ``keys`` (Dice/HD95/areas and the area error, or
    SSIM for SSL), each record carrying its visit's patient, eye and day."""
    ssl = ensemble.target != "mask"
    name = stored_name(ensemble.target)
    metrics = VisitMetrics()
    for key in keys:
        info = store.visit(key)
        prob = ensemble.predict_volume(store.read(key, "oct"))
        target = target_from(ensemble.target, store.read(key, name))
        rec = visit_record(key, prob, target, ssl=ssl,
                           spacing_sw=(info.spacing_mm[0], info.spacing_mm[2]))
        if not ssl:
            rec["area_error_mm2"] = abs(rec["area_pred_mm2"] - rec["area_true_mm2"])
        rec.update(patient_id=info.patient_id, eye=info.eye, day=info.day)
        metrics.update(rec)
    return metrics


@dataclass(frozen=True)
class SplitEvaluation:
    """A model's k-best ensemble on one split of a store."""

    split: str
    records: list[dict[str, Any]]  #: one per visit (:func:`evaluate_ensemble`)
    summary: dict[str, Any]  #: split, members, store_fingerprint, <metric>_mean / _std, csv
    keys_sha: str  #: which visits: a digest of their keys (:func:`keys_digest`)


def keys_digest(keys: list[str]) -> str:
    """A short digest of a split's visit keys: which visits a number was measured on."""
    return hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest()[:16]


def evaluate_split(ensemble: Ensemble, store: Any, split: str, out_dir: str | Path, *,
                   tracking_uri: str | None = None, run_id: str | None = None
                   ) -> SplitEvaluation:
    """The one test evaluation (``python -m fpn evaluate``, the search and the paper table):
    the ensemble on every visit of ``split`` that has its target; ``OUT_DIR/eval_<split>.csv``
    (per visit); with ``run_id``, ``<split>/<metric>`` metrics, the store's fingerprint and the
    CSV on that MLflow run.

    Raises:
        ValueError: the split has no visit with the ensemble's target (names the store).
    """
    name = stored_name(ensemble.target)
    keys = [v.key for v in store.visits_for(splits=split, require=name)]
    if not keys:
        raise ValueError(f"{store.location}: no {split!r} visits with {name!r}")
    metrics = evaluate_ensemble(ensemble, store, keys)
    agg = metrics.aggregate()
    # the patient is the unit: each metric's mean over patients and its interval
    agg.update(record_metrics(metrics.records, [k[:-len("_mean")] for k in list(agg)
                                                if k.endswith("_mean")]))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = [out / f"eval_{split}.csv"]
    _write_csv(files[0], metrics.records, list(metrics.records[0].keys()))
    if ensemble.target == "mask":  # the clinical read-out: areas against the graders, growth
        visits = visit_areas_from_records(metrics.records)
        agg.update(readout_metrics(visits, growth_per_eye(visits)))
        files += list(write_readout(visits, out)[1].values())
    summary = {"split": split, "members": len(ensemble), "store_fingerprint": store.fingerprint,
               **agg, "csv": str(files[0])}
    if run_id is not None:
        from mlflow.entities import Metric

        from fpn.tracking import RunLogger, client_for

        now = int(time.time() * 1000)
        client_for(tracking_uri).log_batch(run_id, metrics=[
            Metric(f"{split}/{k}", float(v), now, 0) for k, v in agg.items()
            if math.isfinite(v)])
        logger = RunLogger(tracking_uri, run_id)
        logger.set_tags({T.split_store_fingerprint(split): store.fingerprint})
        for path in files:
            logger.log_file(path, "evaluation")
        summary["mlflow_run_id"] = run_id
    return SplitEvaluation(split, metrics.records, summary, keys_digest(keys))


def evaluate(model_ref: str, store_path: str, *, split: str = "test", out: str | None = None,
             tracking_uri: str | None = None, k: int | None = None,
             storage_options: dict | None = None, log_to_mlflow: bool = True) -> dict[str, Any]:
    """``python -m fpn evaluate``: the k-best ensemble on a split (:func:`evaluate_split`),
    logged on the MLflow run the model came from (or a new ``evaluate-<split>`` run).

    Returns the summary: ``{split, visits, dice_mean, dice_std, hd95_mean, ..., csv}``.
    """
    from fpn.config import default_mlflow_uri

    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_mlflow_uri()
    ensemble = load_ensemble(model_ref, uri, k)
    store = open_store(store_path, storage_options=storage_options)
    ref_path = Path(model_ref)
    out_dir = Path(out) if out else (ref_path if ref_path.is_dir() else Path("."))
    run_id = None
    if log_to_mlflow:
        from fpn.tracking import client_for, ensure_experiment

        run_id = _source_run_id(model_ref, uri)
        if run_id is None:
            client = client_for(uri)
            exp = ensure_experiment(client, "fpn-evaluation", uri)
            run_id = client.create_run(exp, run_name=f"evaluate-{split}").info.run_id
    return evaluate_split(ensemble, store, split, out_dir, tracking_uri=uri,
                          run_id=run_id).summary


def _save_npy(tmp: Path, array: np.ndarray) -> None:
    with tmp.open("wb") as fh:  # a file object: np.save would append ".npy" to the tmp name
        np.save(fh, array)


def _save_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    _atomic_write(path, lambda tmp: Image.fromarray(array).save(tmp, format="PNG"))


def predict(model_ref: str, *, out: str, store: str | None = None, split: str = "test",
            input_file: str | None = None, tracking_uri: str | None = None,
            k: int | None = None, threshold: float = 0.5,
            storage_options: dict | None = None,
            spacing: tuple[float, float, float] | None = None) -> list[dict[str, Any]]:
    """Predict en-face masks; per visit ``<visit>_mask.png`` (uint8 0/255, native (S, W)),
    ``<visit>_prob.npy`` (float32), ``<visit>_overlay.png``; and ``areas.csv`` (written last).

    Area in mm^2 = mask pixels x spacing_S x spacing_W. A file without spacing (a bare ``.npy``)
    takes ``spacing`` (mm, ``(S, D, W)``); without either its mask is still written, with the
    area in pixels (``area_px`` instead of ``area_mm2`` in ``areas.csv``).
    """
    from fpn.config import default_mlflow_uri
    from fpn.training.overlays import enface_projection, save_overlay

    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_mlflow_uri()
    ensemble = load_ensemble(model_ref, uri, k)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)

    def items():
        if input_file is not None:
            from fpn.data.readers import read_oct

            vol, file_spacing, _ = read_oct(input_file)
            yield (Path(input_file).name.split(".")[0], vol,
                   spacing if spacing is not None else file_spacing, {})
            return
        st = open_store(store, storage_options=storage_options)
        infos = st.visits_for(splits=split)
        if not infos:
            raise ValueError(f"{store}: no visits in split {split!r}")
        for info in infos:
            yield info.key, st.read(info.key, "oct"), spacing or info.spacing_mm, {
                "patient_id": info.patient_id, "eye": info.eye, "day": info.day}

    rows = []
    for key, vol, vol_spacing, meta in items():
        prob = ensemble.predict_volume(vol)
        mask = (prob >= threshold).astype(np.uint8)
        mask_png = out_dir / f"{key}_mask.png"
        _save_png(mask_png, mask * 255)
        _atomic_write(out_dir / f"{key}_prob.npy", partial(_save_npy, array=prob))
        sw = (1.0, 1.0) if vol_spacing is None else (vol_spacing[0], vol_spacing[2])
        save_overlay(out_dir / f"{key}_overlay.png", enface_projection(vol), prob, None,
                     ssl=False, title=key, spacing_sw=sw)
        row = {"visit": key, "patient_id": meta.get("patient_id", ""),
               "eye": meta.get("eye", ""), "day": meta.get("day", ""), "mask_png": mask_png.name}
        if vol_spacing is None:
            row["area_px"] = float(mask.sum())
        else:
            row["area_mm2"] = float(mask.sum()) * float(vol_spacing[0]) * float(vol_spacing[2])
        rows.append(row)
    columns = AREAS_COLUMNS if all("area_mm2" in r for r in rows) else AREAS_COLUMNS_PX
    _write_csv(out_dir / "areas.csv", rows, columns)
    return rows


def growth(model_ref: str, store: str, *, out: str, split: str | None = "test",
           tracking_uri: str | None = None, k: int | None = None, threshold: float = 0.5,
           storage_options: dict | None = None, log_to_mlflow: bool = True) -> dict[str, Any]:
    """``python -m fpn growth``: GA area and its growth per eye across visits
    (:func:`fpn.readout.growth_readout`: ``growth.csv``, per-visit areas with the ensemble
    members' spread, the plots; agreement with the graders where the visits have masks), logged
    on the MLflow run the model came from (or a new ``growth-<split>`` run) as ``<split>/...``
    metrics and ``growth/`` artifacts.

    Returns the summary: the metrics, the files, the eyes with a rate and why others have none.
    """
    from fpn.config import default_mlflow_uri
    from fpn.readout import growth_readout

    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_mlflow_uri()
    readout = growth_readout(model_ref, store, out=out, split=split, tracking_uri=uri, k=k,
                             threshold=threshold, storage_options=storage_options)
    summary: dict[str, Any] = {
        "split": split or "all", "members": readout.members,
        "store_fingerprint": readout.store_fingerprint, **readout.metrics,
        "files": {k_: str(v) for k_, v in readout.files.items()},
        "eyes_without_rate": {f"{e.patient_id}/{e.eye}": e.reason for e in readout.eyes
                              if e.area_rate is None}}
    if log_to_mlflow:
        from mlflow.entities import Metric

        from fpn.tracking import RunLogger, client_for, ensure_experiment

        name = split or "all"
        client = client_for(uri)
        run_id = _source_run_id(model_ref, uri)
        if run_id is None:
            exp = ensure_experiment(client, "fpn-evaluation", uri)
            run_id = client.create_run(exp, run_name=f"growth-{name}").info.run_id
        now = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Metric(f"{name}/{k_}", float(v), now, 0)
                                          for k_, v in readout.metrics.items()
                                          if math.isfinite(v)])
        logger = RunLogger(uri, run_id)
        for path in readout.files.values():
            logger.log_file(path, "growth")
        summary["mlflow_run_id"] = run_id
    return summary
