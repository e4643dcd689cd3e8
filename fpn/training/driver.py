"""The training driver: builds the TorchTrainer for one run, names it, tracks it, collects the k best.

``run_training(cfg)`` is what ``python -m fpn pretrain|finetune`` calls and what a Tune trial
calls (with the trial's name, so that a restarted trial resumes). It starts with
:func:`~fpn.training.preflight.preflight` (model, depth, ``--init``, run name, identity), before
Ray or MLflow. A run is known by its store fingerprint and config hash (recorded in
``fpn_run.json`` from its start and as MLflow tags): running it again with the same name, store and
config resumes the Ray Train run from its last checkpoint and continues the same unfinished MLflow
run, and a finished one is not trained again; the same name on another store or config is refused
(a chosen ``run_name``) or gets its own name (a derived one), see :mod:`fpn.training.identity`.
An error after the MLflow run exists marks it FAILED (KILLED on Ctrl-C), never leaves it RUNNING.

Storage may be an object store (``--storage s3://bucket/runs``): Ray Train writes checkpoints
there, the run directory's own files (``fpn_run.json``, ``attempts.jsonl``, the fault-drill
marker) go through fsspec, and ``best_checkpoints`` are URLs. For an S3-compatible endpoint other
than AWS (MinIO, moto), set ``AWS_ENDPOINT_URL`` (and credentials) in the driver's environment:
the driver builds Ray's storage filesystem from it and forwards :data:`FORWARDED_ENV` to the
workers, so a Ray instance started without those variables still reaches the endpoint.

Elastic training: ``cfg.workers_min`` turns ``workers`` into a range, ``ScalingConfig(num_workers=(min, max))``:
a run that loses a node goes on with fewer workers instead of waiting for a replacement.
"""

from __future__ import annotations

import logging
import os
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from fpn import tags as T
from fpn.config import TrainConfig
from fpn.device import device_policy
from fpn.storage import RunRecord, is_remote, load_members, resolve_members, write_run_record
from fpn.training.preflight import preflight
from fpn.training.ray_connect import connect_ray
from fpn.training.worker import score_name, train_fn_per_worker

__all__ = ["FORWARDED_ENV", "MlflowRun", "RunRecord", "build_trainer", "collect_outcome",
           "connect_ray", "init_member_ref", "open_mlflow_run", "preflight", "run_training",
           "storage_filesystem", "worker_env_vars"]

log = logging.getLogger(__name__)

# What workers need to reach an object store that is not AWS itself (MinIO, moto): forwarded
# from the driver's environment when set. On AWS the instance profile serves every node and none
# of these is set.
FORWARDED_ENV = (
    "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_REGION", "MLFLOW_S3_ENDPOINT_URL",
)


def worker_env_vars(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The driver's :data:`FORWARDED_ENV` variables that are set, plus ``extra``."""
    env = {k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)}
    env.update(extra or {})
    return env


def storage_filesystem(storage: str) -> tuple[Any, str]:
    """Ray's ``(storage_filesystem, storage_path)`` for a storage location.

    ``(None, storage)`` lets Ray resolve it (local paths, AWS S3 with instance credentials). For
    ``s3://`` with ``AWS_ENDPOINT_URL``/``AWS_ENDPOINT_URL_S3`` set, an explicit pyarrow
    ``S3FileSystem`` for that endpoint: Ray pickles it to its Train controller, which does not
    inherit the driver's environment and would otherwise look for AWS itself.
    """
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if not storage.startswith("s3://") or not endpoint:
        return None, storage
    from urllib.parse import urlparse

    import pyarrow.fs

    url = urlparse(endpoint)
    fs = pyarrow.fs.S3FileSystem(
        endpoint_override=url.netloc or url.path, scheme=url.scheme or "https",
        access_key=os.environ.get("AWS_ACCESS_KEY_ID"),
        secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY"),
        session_token=os.environ.get("AWS_SESSION_TOKEN"),
        region=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
    )
    return fs, storage[len("s3://"):]


def _checkpoint_location(path: str, storage: str) -> str:
    """A Ray checkpoint's path as a location: Ray strips the scheme of remote storage."""
    if not is_remote(storage) or "://" in path:
        return path
    return f"{storage.split('://', 1)[0]}://{path}"


def run_training(cfg: TrainConfig, *, parent_run_id: str | None = None,
                 extra_tags: dict[str, str] | None = None,
                 ray_callbacks: list[Any] | None = None,
                 worker_env: dict[str, str] | None = None) -> RunRecord:
    """Train one network with Ray Train and track it in MLflow.

    Args:
        cfg: the whole run's config.
        parent_run_id: MLflow parent (a search's per-ratio run) for nested runs.
        extra_tags: more MLflow tags (trial id, study name, ...).
        ray_callbacks: Ray Train ``UserCallback``s (the Tune bridge passes ``TuneReportCallback``).
        worker_env: more environment variables for the Ray Train workers (added to the
            :data:`FORWARDED_ENV` ones the driver has); not logged anywhere.

    Returns:
        The run's record (what ``fpn_run.json`` holds); its ``best_checkpoints`` feed
        :func:`fpn.inference.load_ensemble`.
    """
    # Every check that needs neither Ray nor MLflow first: a bad run fails in one line here.
    pf = preflight(cfg)
    store, plan, name, run_dir = pf.store, pf.plan, pf.name, pf.run_dir
    storage = cfg.storage_path()
    if pf.finished:  # the same store and config finished under this name: reuse it
        log.info("%s: already finished; not training again", run_dir)
        print(f"[fpn] run {name} already finished ({run_dir}, same store and config); "
              "not training again", flush=True)
        assert pf.record is not None
        return pf.record
    claim = RunRecord(run_name=name, run_dir=run_dir, config=cfg.model_dump(mode="json"),
                      store_fingerprint=pf.identity.store_fingerprint,
                      config_hash=pf.identity.config_hash)
    if pf.record is None:  # claim the name for this run before anything is trained under it
        write_run_record(claim)

    run = open_mlflow_run(cfg, store, plan, name, parent_run_id,
                          {**(extra_tags or {}), T.CONFIG_HASH: pf.identity.config_hash},
                          identity=pf.identity.key)
    try:
        connect_ray()  # before any Ray call (ray.put below): never a stale recorded cluster
        init_ref = init_member_ref(cfg, run, pf.init_payload)
        trainer = build_trainer(cfg, name, storage, run_dir, run, init_ref, ray_callbacks,
                                worker_env)
        result = trainer.fit()
        outcome = collect_outcome(result, cfg, claim, run.run_id, plan)
        _log_curves(run.logger, run.client, run.run_id)
        if cfg.log_model and outcome.best_checkpoints:
            from fpn.serving import log_ensemble_model

            with ExitStack() as members:  # remote ones: local copies while logging
                member_files = [members.enter_context(resolve_members(c))[0]
                                for c in outcome.best_checkpoints]
                outcome = replace(outcome, model_uri=log_ensemble_model(
                    run.uri, run.run_id, member_files, shape=store.visit(plan.val_keys[0]).shape))
    except BaseException as exc:  # no MLflow run is left RUNNING by an error
        _terminate_failed(run, "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise
    best = f"{outcome.best_scores[0]:.4f}" if outcome.best_scores else "nan"
    run.logger.set_tags({T.BEST_SCORE: best, T.STATUS: T.STATUS_FINISHED})
    run.logger.finish("FINISHED")
    outcome = replace(outcome, finished=True)
    write_run_record(outcome)
    return outcome


def _terminate_failed(run: MlflowRun, status: str) -> None:
    try:
        run.logger.set_tags({T.STATUS: status.lower()})
        run.logger.finish(status)
    except Exception:  # the original error matters more than a tracking hiccup
        log.exception("could not mark MLflow run %s %s", run.run_id, status)


@dataclass
class MlflowRun:
    """The run's MLflow handles: tracking URI, client, run id and a logger on it."""

    uri: str
    client: Any
    run_id: str
    logger: Any


def open_mlflow_run(cfg: TrainConfig, store: Any, plan: Any, name: str,
                    parent_run_id: str | None, extra_tags: dict[str, str] | None, *,
                    identity: str | None = None) -> MlflowRun:
    """Find (a resumed run) or create the run's MLflow run; a new one gets params and config.

    With ``identity`` only an unfinished run of this name *and* identity is continued; anything
    else (another store or config, or a finished run) gets a new MLflow run.
    """
    from fpn.tracking import (
        RunLogger,
        client_for,
        ensure_experiment,
        find_or_create_run,
        git_revision,
    )

    uri = cfg.tracking_uri()
    client = client_for(uri)
    exp_id = ensure_experiment(client, cfg.experiment, uri)
    tags = {
        T.TASK: cfg.task, T.MODEL: cfg.model.name, T.TARGET: cfg.data.target,
        T.RATIO: f"{cfg.data.ratio:g}", T.STORE_FINGERPRINT: store.fingerprint,
        T.STORE: cfg.data.store, T.GIT_REVISION: git_revision(),
        T.PATIENTS_USED: str(len(plan.train_patients)),
        T.TRAIN_VISITS: str(len(plan.train_keys)),
        **cfg.tags, **(extra_tags or {}),
    }
    run_id, resumed = find_or_create_run(client, exp_id, name, tags, parent_run_id,
                                         identity=identity,
                                         reopen_finished=identity is None)
    logger = RunLogger(uri, run_id)
    if not resumed:
        logger.log_params(cfg.flat_params())
        logger.log_text(cfg.to_yaml(), "config.yaml")
        logger.log_text("\n".join(plan.train_patients) + "\n", "train_patients.txt")
    else:  # an unfinished run of this very run (a crash left it FAILED or KILLED): running again
        client.update_run(run_id, status="RUNNING")
        print(f"[fpn] continuing MLflow run {run_id} ({name})", flush=True)
    return MlflowRun(uri, client, run_id, logger)


def init_member_ref(cfg: TrainConfig, run: MlflowRun, payload: dict[str, Any] | None = None
                    ) -> Any:
    """``--init``'s best member (``payload``, as :func:`~fpn.training.preflight.check_init`
    loaded and checked it; resolved here when not given), put in Ray's object store (None
    without ``--init``): workers on other nodes need no registry or storage access."""
    if not cfg.init:
        return None
    import ray

    if payload is None:
        payload = load_members(cfg.init, run.uri, k=1)[0]
    ref = ray.put(payload)
    run.logger.set_tags({T.INIT: cfg.init})
    return ref


def build_trainer(cfg: TrainConfig, name: str, storage: str, run_dir: str, run: MlflowRun,
                  init_ref: Any, ray_callbacks: list[Any] | None,
                  worker_env: dict[str, str] | None) -> Any:
    """The run's TorchTrainer: scaling and DDP backend from the device policy, storage, k best."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.train.v2.api.config import LoggingConfig

    workers_min = cfg.workers_min  # validated by TrainConfig: 1 <= workers_min <= workers
    num_workers: int | tuple[int, int] = (
        (workers_min, cfg.workers) if workers_min is not None and workers_min < cfg.workers
        else cfg.workers)
    policy = device_policy("cuda" if cfg.gpus_per_worker > 0 else "cpu", cfg)
    fs, fs_storage = storage_filesystem(storage)
    env = worker_env_vars(worker_env)
    return TorchTrainer(
        train_fn_per_worker,
        train_loop_config={
            "config": cfg.model_dump(mode="json"),
            "tracking_uri": run.uri,
            "mlflow_run_id": run.run_id,
            "init_member": init_ref,
            "run_dir": run_dir,
        },
        torch_config=TorchConfig(backend=policy.ddp_backend),
        scaling_config=ScalingConfig(
            num_workers=num_workers, use_gpu=policy.gpus_per_worker > 0,
            resources_per_worker=policy.resources_per_worker(cfg.cpus_per_worker)),
        run_config=RunConfig(
            name=name,
            storage_path=fs_storage,
            storage_filesystem=fs,
            worker_runtime_env={"env_vars": env} if env else None,
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_best,
                                               checkpoint_score_attribute=T.VAL_SCORE,
                                               checkpoint_score_order="max"),
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            callbacks=ray_callbacks or None,
            logging_config=LoggingConfig(log_level="WARNING"),
        ),
    )


def collect_outcome(result: Any, cfg: TrainConfig, claim: RunRecord, run_id: str,
                    plan: Any) -> RunRecord:
    """The run's record after ``fit``: the k best checkpoints (best first, as locations) and the
    last metrics, over what the run claimed when it started (``claim``: name, directory,
    identity, config)."""
    ranked = sorted(((c, m) for c, m in (result.best_checkpoints or [])),
                    key=lambda cm: cm[1].get(T.VAL_SCORE, float("-inf")), reverse=True)
    ranked = ranked[: cfg.keep_best]
    return replace(
        claim,
        mlflow_run_id=run_id,
        best_checkpoints=[_checkpoint_location(c.path, cfg.storage_path()) for c, _ in ranked],
        best_scores=[float(m.get(T.VAL_SCORE, float("nan"))) for _, m in ranked],
        score_name=score_name(cfg),
        last_metrics={k: float(v) for k, v in (result.metrics or {}).items()
                      if isinstance(v, (int, float))},
        train_patients=plan.train_patients,
    )


def _log_curves(logger: Any, client: Any, run_id: str) -> None:
    from fpn.training.overlays import save_learning_curves

    keys = [k for k in client.get_run(run_id).data.metrics
            if k in ("train/loss", "val/dice_mean", "val/dice_pooled", "val/ssim_mean",
                     "val/hd95_mean")]
    history = {k: [(m.step, m.value) for m in client.get_metric_history(run_id, k)] for k in keys}
    if history:
        with tempfile.TemporaryDirectory() as tmp:
            logger.log_file(save_learning_curves(Path(tmp) / "learning_curves.png", history))
