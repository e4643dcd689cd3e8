"""MLflow at the edges: one run per training, found again by name so that a resumed run continues.

The driver creates (or finds) the run and logs the config; rank 0 of the Ray Train workers logs
per-epoch metrics and overlays through :class:`RunLogger`, which never logs an epoch twice.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from fpn import tags as T

__all__ = ["RunLogger", "client_for", "ensure_experiment", "find_or_create_run", "git_revision"]


def git_revision() -> str:
    """The git revision of this checkout (``+dirty`` when modified), or ``unknown``."""
    root = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5, check=False).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def client_for(tracking_uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri=tracking_uri)


def ensure_experiment(client: MlflowClient, name: str, tracking_uri: str) -> str:
    """The experiment id, creating it with an absolute artifact location for local stores.

    Ray Train workers run in another working directory, so a relative default (``./mlruns``)
    would scatter artifacts; a sqlite store keeps them in ``mlartifacts/`` beside its file.
    """
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if tracking_uri.startswith("sqlite:///"):
        # beside the database file, so that a store in a temp dir keeps its artifacts there
        location = (Path(tracking_uri[len("sqlite:///"):]).resolve().parent / "mlartifacts").as_uri()
    return client.create_experiment(name, artifact_location=location)


def find_or_create_run(client: MlflowClient, experiment_id: str, run_name: str,
                       tags: dict[str, str], parent_run_id: str | None = None, *,
                       identity: str | None = None,
                       reopen_finished: bool = True) -> tuple[str, bool]:
    """Return ``(run_id, resumed)``: the run of this name to continue, or a new one.

    With ``identity`` (a training run's :attr:`~fpn.training.identity.RunIdentity.key`) only a
    run tagged with that identity is continued, and with ``reopen_finished=False`` never a
    FINISHED one: continuing a finished run would make :meth:`RunLogger.log_epoch` skip every
    epoch it already holds, dropping the new run's metrics. The new run is tagged with it.
    """
    if "'" in run_name or "`" in run_name:
        raise ValueError(f"invalid run name {run_name!r}: no quotes")
    query = f"tags.`{T.RUN_NAME}` = '{run_name}'"
    if identity is not None:
        query += f" and tags.`{T.RUN_IDENTITY}` = '{identity}'"
    if not reopen_finished:
        query += " and attributes.status != 'FINISHED'"
    found = client.search_runs(
        [experiment_id], filter_string=query,
        order_by=["attributes.start_time DESC"], max_results=1,
    )
    if found:
        return found[0].info.run_id, True
    all_tags = {T.RUN_NAME: run_name, T.MLFLOW_RUN_NAME: run_name, **tags}
    if identity is not None:
        all_tags[T.RUN_IDENTITY] = identity
    if parent_run_id:
        all_tags[T.MLFLOW_PARENT_RUN_ID] = parent_run_id
    run = client.create_run(experiment_id, run_name=run_name, tags=all_tags)
    return run.info.run_id, False


class RunLogger:
    """Logs metrics by epoch to one MLflow run, skipping epochs it already holds."""

    def __init__(self, tracking_uri: str, run_id: str):
        self.client = client_for(tracking_uri)
        self.run_id = run_id

    def logged_steps(self, key: str) -> set[int]:
        return {m.step for m in self.client.get_metric_history(self.run_id, key)}

    def log_epoch(self, epoch: int, metrics: dict[str, float], probe_key: str) -> bool:
        """Log ``metrics`` at step ``epoch`` unless ``probe_key`` already has that step."""
        if epoch in self.logged_steps(probe_key):
            return False
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, epoch) for k, v in metrics.items()
                 if isinstance(v, (int, float))]
        for i in range(0, len(batch), 900):
            self.client.log_batch(self.run_id, metrics=batch[i:i + 900])
        return True

    def log_params(self, params: dict[str, Any]) -> None:
        existing = self.client.get_run(self.run_id).data.params
        new = [Param(k, str(v)[:6000]) for k, v in params.items() if k not in existing]
        for i in range(0, len(new), 90):
            self.client.log_batch(self.run_id, params=new[i:i + 90])

    def set_tags(self, tags: dict[str, Any]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_file(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_text(self, text: str, name: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            p = Path(tmp) / name
            p.write_text(text)
            self.client.log_artifact(self.run_id, str(p))

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)


def active_uri(uri: str) -> None:
    """Point the fluent API at ``uri`` (for ``mlflow.pyfunc.log_model`` and friends)."""
    mlflow.set_tracking_uri(uri)
