"""The orchestration core under both front-ends: the search (``tune/search.py``) and the paper
table (``tune/experiments``).

- :func:`plan_resources`: how many training runs fit the cluster at once, and the CPUs of each
  Train worker (the driver resource and the per-run driver CPU are defined here, once).
- :func:`driver_resources`: what each run's driver (a Tune trial or a Ray task) holds.
- :func:`fpn.storage.run_record.finished_run`: "is this run finished?" for local paths and
  object stores alike (re-exported here).
- :func:`evaluate_run`: a run's k-best ensemble on the test split -> per-visit records and test
  metrics, logged on its MLflow run, cached, and (given a :class:`Registration`) registered.
- :func:`make_synthetic_store`: the demo's synthetic store, made once.
- :func:`row_label`: the one name of a table row (a network and its pretraining), in the
  search's table and the paper table alike.
- :mod:`tune.results`: the results table and plot.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fpn import tags as T
from fpn.storage import RunRecord, finished_run, read_run_record, write_atomic
from tune.presets import SyntheticStore

__all__ = [
    "DRIVER_CPU",
    "DRIVER_RESOURCE",
    "MATCHED",
    "Evaluation",
    "Job",
    "Registration",
    "ResourcePlan",
    "RunRecord",
    "cluster_capacity",
    "compute_matched_config",
    "driver_resources",
    "evaluate_run",
    "finished_run",
    "make_synthetic_store",
    "plan_resources",
    "read_run_record",
    "row_label",
    "run_jobs",
    "run_steps",
]

#: the poster's names of the networks
METHOD_NAMES = {"fpn": "FPN", "resensnet": "ReSensNet", "lachinov": "Lachinov et al.",
                "ipn": "IPN", "ipnv2": "IPNv2"}
#: how a pretraining target is named in a row label, as the poster names it
SSL_LABELS = {"inverted_faf": "FAF", "faf": "raw FAF", "slo": "SLO"}


#: the ``ssl`` of a row trained from scratch for as many optimiser steps as pretraining and
#: fine-tuning together (:func:`compute_matched_config`)
MATCHED = "matched"


def row_label(model: str, ssl: str, *, pretrained_from: str | None = None) -> str:
    """The table row of a network and its pretraining, as the poster writes it: ``FPN``,
    ``FPN (FAF pretraining)``, ``Lachinov et al. (SLO pretraining)``; a network fine-tuned from
    a given pretrained model (the search's ``--pretrained``): ``FPN (pretrained)``; from scratch
    for the pretrained row's steps in all (:data:`MATCHED`): ``FPN (scratch, matched steps)``."""
    name = METHOD_NAMES.get(model, model)
    if pretrained_from:
        return f"{name} (pretrained)"
    if ssl == MATCHED:
        return f"{name} (scratch, matched steps)"
    return name if ssl == "none" else f"{name} ({SSL_LABELS.get(ssl, ssl)} pretraining)"


def run_steps(cfg: Any, store: Any) -> tuple[int, int]:
    """``(epochs, optimiser steps per epoch)`` of a run of ``cfg`` on ``store`` (per worker, as
    its DataLoader gives them: :func:`fpn.training.budget.steps_per_epoch`)."""
    from fpn.data.splits import plan_visits
    from fpn.training.budget import steps_per_epoch

    plan = plan_visits(store, cfg.data.target, cfg.data.ratio, cfg.data.subset_seed)
    return cfg.epochs, steps_per_epoch(cfg, len(plan.train_keys), cfg.workers)


def compute_matched_config(finetune: Any, pretrain: Any, store: Any) -> Any:
    """The from-scratch control of a pretrained row: ``finetune`` (its recipe, ratio, seed and
    drawn values) with no ``init`` and as many more epochs as the pretraining's optimiser steps
    fill, so that it trains for the pretraining's steps plus the fine-tuning's (nnssl's
    ``--from_scratch`` baseline, on equal compute). "Pretraining helps" then cannot mean "more
    steps help"."""
    ft_epochs, ft_steps = run_steps(finetune, store)
    pre_epochs, pre_steps = run_steps(pretrain, store)
    extra = math.ceil(pre_epochs * pre_steps / ft_steps)
    return finetune.with_overrides({"init": None, "epochs": ft_epochs + extra})

#: CPU held by each run's driver (a Tune trial's function or a Ray task); its Train workers hold
#: their own CPUs in their own placement group
DRIVER_CPU = 0.05
#: custom resource of the on-demand head in cluster.yaml (100 of it: up to 100 run drivers)
DRIVER_RESOURCE = "fpn_driver"


# -- resources ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class ResourcePlan:
    """Runs at once and the CPUs (and torch threads) of each of their Train workers."""

    concurrency: int
    cpus_per_worker: float
    threads_per_worker: int


def plan_resources(cpus: float, gpus: float, *, workers: int, gpus_per_worker: float = 0.0,
                   cpus_per_worker: float | None = None, max_concurrent: int | None = None,
                   runs: int | None = None) -> ResourcePlan:
    """Concurrent runs and CPUs per Train worker that fit ``cpus`` / ``gpus`` without deadlock.

    Each run holds :data:`DRIVER_CPU` for its driver plus ``workers`` Train workers; runs beyond
    what fits would hold a driver slot while their workers wait for CPUs that never come free,
    so the concurrency is derived from the resources.

    Args:
        cpus, gpus: what the cluster has.
        workers: Ray Train workers per run.
        gpus_per_worker: GPUs of each worker (0 on CPU).
        cpus_per_worker: fixed CPUs per worker; None shares the CPUs among the concurrent runs.
        max_concurrent: at most this many runs at once.
        runs: how many runs there are at most (no more concurrency than that).

    Raises:
        ValueError: one run does not fit (the message says what it needs and what there is).
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if gpus_per_worker > 0:
        if gpus < workers * gpus_per_worker:
            raise ValueError(f"a run needs {workers * gpus_per_worker:g} GPUs; the cluster has "
                             f"{gpus:g}")
        fit = int(gpus // (workers * gpus_per_worker))
    else:
        fit = max(1, int(cpus // workers))
    conc = max(1, min(max_concurrent or fit, fit, runs or fit))
    cpw = cpus_per_worker or max(0.05, (cpus / conc - DRIVER_CPU) / workers)
    while conc > 1 and conc * (DRIVER_CPU + workers * cpw) > cpus + 1e-9:
        conc -= 1
    if DRIVER_CPU + workers * cpw > cpus + 1e-9:
        raise ValueError(f"a run needs {DRIVER_CPU + workers * cpw:g} CPUs; the cluster has "
                         f"{cpus:g}")
    return ResourcePlan(conc, round(cpw, 3), max(1, int(cpw)))


def cluster_capacity() -> tuple[float, float]:
    """``(CPUs, GPUs)`` of the Ray cluster this process is connected to."""
    import ray

    res = ray.cluster_resources()
    return float(res.get("CPU", 1)), float(res.get("GPU", 0))


def driver_resources() -> dict[str, float]:
    """What each run's driver holds: :data:`DRIVER_CPU`, and one :data:`DRIVER_RESOURCE` when
    the cluster has it (cluster.yaml puts it on the on-demand head only: drivers never land on
    spot nodes, where a preemption would take the run's bookkeeping with it)."""
    import ray

    bundle = {"CPU": DRIVER_CPU}
    if ray.cluster_resources().get(DRIVER_RESOURCE):
        bundle[DRIVER_RESOURCE] = 1.0
    return bundle


# -- training runs as Ray tasks ---------------------------------------------------------------

@dataclass
class Job:
    """One training run of a front-end: its config, the run it waits for (a pretraining),
    whether its k-best ensemble is evaluated on the test split, and what it is (the table row's
    network, pretraining, ratio and seed)."""

    name: str
    config: Any  #: its TrainConfig
    after: str | None = None
    evaluate: bool = False
    model: str = ""
    ssl: str = "none"
    ratio: float = 1.0
    seed: int = 0
    parent_run_id: str | None = None  #: its MLflow parent; None: the one given to run_jobs


def _execute_job(cfg: Any, parent_run_id: str, tags: dict[str, str],
                 eval_dir: str | None) -> dict[str, Any]:
    """Train (or find finished) one run; evaluate it (once) when ``eval_dir`` is given."""
    import torch

    from fpn.data.store import open_store
    from fpn.training.driver import run_training

    torch.set_num_threads(1)  # the work happens in the Train workers; evaluation is small
    started = time.monotonic()
    record = run_training(cfg, parent_run_id=parent_run_id, extra_tags=tags)
    out: dict[str, Any] = {"record": asdict(record), "seconds": time.monotonic() - started}
    if eval_dir is not None:
        store = open_store(cfg.data.store, storage_options=cfg.data.storage_options)
        evaluation = evaluate_run(record, store, tracking_uri=cfg.tracking_uri(),
                                  out_dir=eval_dir, log=lambda m: None)
        out["records"], out["summary"] = evaluation.records, evaluation.summary
    return out


def run_jobs(jobs: list[Job], *, concurrency: int, parent_run_id: str | None, eval_dir: Path,
             tags: dict[str, str], log: Callable[[str], None] = print,
             on_end: Callable[[Job], None] | None = None,
             ) -> tuple[dict[str, dict], dict[str, str]]:
    """Run ``jobs`` as Ray tasks (each a driver holding :func:`driver_resources`; its Train
    workers in their own placement group), at most ``concurrency`` at once, each after its
    ``after``; ``on_end(job)`` when a run ends (a progress bar). A failed run does not take the
    others with it.

    Returns:
        ``(done, failed)``: per finished job its record, seconds and (evaluated ones) test
        records and summary; per failed job its error's last line.
    """
    import ray

    driver = driver_resources()
    remote = ray.remote(num_cpus=driver.pop("CPU"), resources=driver or None,
                        max_retries=0)(_execute_job)
    pending = list(jobs)
    running: dict[Any, Job] = {}
    done: dict[str, dict] = {}
    failed: dict[str, str] = {}
    while pending or running:
        for job in [j for j in pending if j.after in failed]:
            pending.remove(job)
            failed[job.name] = f"its pretraining {job.after} failed"
        ready = [j for j in pending if j.after is None or j.after in done]
        while ready and len(running) < concurrency:
            job = ready.pop(0)
            pending.remove(job)
            job_eval = str(eval_dir / job.name) if job.evaluate else None
            job_tags = {**tags, T.METHOD: row_label(job.model, job.ssl)}
            running[remote.remote(job.config, job.parent_run_id or parent_run_id, job_tags,
                                  job_eval)] = job
        if not running:
            break
        finished, _ = ray.wait(list(running), num_returns=1)
        job = running.pop(finished[0])
        if on_end is not None:
            on_end(job)
        try:
            done[job.name] = ray.get(finished[0])
            log(f"{job.name}: done ({done[job.name]['seconds']:.0f} s)")
        except Exception as exc:  # noqa: BLE001 -- a failed run must not take the others with it
            failed[job.name] = str(exc).strip().splitlines()[-1] if str(exc).strip() else repr(exc)
            log(f"{job.name}: FAILED: {failed[job.name]}")
    return done, failed


# -- the demo's data ------------------------------------------------------------------------------

def make_synthetic_store(folder: str | Path, spec: SyntheticStore, *, seed: int = 0,
                         num_cpus: int | None = None, log: Callable[[str], None] = print) -> str:
    """The synthetic data set a preset asks for (``spec``, ``seed``) in a folder of its own,
    ``FOLDER/<spec.folder_name(seed)>/`` (``source`` and ``store.zarr``), each made only when
    missing or incomplete; returns the store's path. Another spec (a preset that changed, another
    seed) gets another folder, so nothing made for one is reused or overwritten for the other."""
    from data_prep.convert import convert
    from data_prep.synthetic import make_synthetic_dataset
    from fpn.data.store import StoreError, open_store

    store = spec.store_path(folder, seed)
    source = store.parent / "source"
    try:
        opened = open_store(str(store))
        if opened.visits and opened.conversion.get("complete", False):
            return str(store)
    except (StoreError, ValueError, FileNotFoundError, OSError):
        pass
    if not (source / "split.json").is_file():
        log(f"making a synthetic data set in {source}")
        make_synthetic_dataset(source, patients=spec.patients, unlabelled=spec.unlabelled,
                               shape=spec.shape, visits=spec.visits, seed=seed, overwrite=True)
    log(f"converting it to the store {store}")
    stats = convert(str(source), str(store), progress=False, num_cpus=num_cpus)
    if not stats.ok:
        raise ValueError(f"{source}: conversion failed: {stats.summary_line()}")
    return str(store)


# -- a run's test evaluation ---------------------------------------------------------------------

@dataclass
class Registration:
    """Register the evaluated run as a version of ``name``.

    ``tags`` are added to the version's own (test and validation Dice, store, run, revision);
    ``card`` makes the version's description (model card) from all its tags and the evaluation.
    """

    name: str
    tags: dict[str, str] = field(default_factory=dict)
    card: Callable[[dict[str, str], Evaluation], str] | None = None


@dataclass
class Evaluation:
    """A run's k-best ensemble on the test split."""

    mlflow_run_id: str
    records: list[dict[str, Any]]  #: one per test visit, with ``area_error_mm2``
    summary: dict[str, Any]  #: visits, members, <metric>_mean / _std, store_fingerprint, csv
    test_keys_sha: str
    model_version: str | None = None

    @property
    def dice_mean(self) -> float:
        return float(self.summary.get("dice_mean", math.nan))


def evaluate_run(record: RunRecord, store: Any, *, tracking_uri: str, out_dir: str | Path,
                 registration: Registration | None = None, log: Callable[[str], None] = print,
                 ) -> Evaluation:
    """Evaluate a finished run's k-best ensemble on the store's test split, once.

    Writes ``OUT_DIR/eval_test.csv`` (per visit) and ``OUT_DIR/evaluation.json`` (the cache: a
    later call for the same MLflow run reads it instead of evaluating again); logs ``test/*``
    metrics, the CSV and the store's fingerprint on the run's MLflow run; with ``registration``
    registers the run's logged model (found again, not duplicated, on a re-run).
    """
    out = Path(out_dir)
    cache = out / "evaluation.json"
    evaluation = _cached(cache, record.mlflow_run_id)
    if evaluation is None:
        evaluation = _evaluate(record, store, tracking_uri, out)
        write_atomic(cache, json.dumps({"mlflow_run_id": record.mlflow_run_id,
                                        "records": evaluation.records,
                                        "summary": evaluation.summary,
                                        "test_keys_sha": evaluation.test_keys_sha}, default=str))
    if registration is not None:
        evaluation.model_version = _register(record, store, evaluation, tracking_uri,
                                             registration, log)
    return evaluation


def _cached(path: Path, run_id: str) -> Evaluation | None:
    if not path.is_file():
        return None
    try:
        cached = json.loads(path.read_text())
    except ValueError:
        return None
    if cached.get("mlflow_run_id") != run_id or "summary" not in cached:
        return None
    return Evaluation(run_id, cached["records"], cached["summary"], cached["test_keys_sha"])


def _evaluate(record: RunRecord, store: Any, uri: str, out: Path) -> Evaluation:
    from fpn.evaluation import evaluate_split
    from fpn.inference import load_ensemble

    result = evaluate_split(load_ensemble(record.run_dir, uri), store, "test", out,
                            tracking_uri=uri, run_id=record.mlflow_run_id)
    return Evaluation(record.mlflow_run_id, result.records, result.summary, result.keys_sha)


def _register(record: RunRecord, store: Any, evaluation: Evaluation, uri: str,
              registration: Registration, log: Callable[[str], None]) -> str | None:
    from fpn.registry import register_version
    from fpn.tracking import RunLogger, git_revision

    if not record.model_uri:
        log(f"{record.run_name}: the run logged no model; nothing to register")
        return None
    s = evaluation.summary
    tags = {
        T.VERSION_VAL_DICE: f"{record.best_score:.6f}",
        T.VERSION_TEST_DICE: f"{float(s.get('dice_mean', math.nan)):.6f}",
        T.VERSION_TEST_DICE_STD: f"{float(s.get('dice_std', math.nan)):.6f}",
        T.VERSION_STORE_FINGERPRINT: store.fingerprint, T.VERSION_TEST_SPLIT: "test",
        T.VERSION_TEST_KEYS_SHA: evaluation.test_keys_sha, T.VERSION_GIT_REVISION: git_revision(),
        T.VERSION_MLFLOW_RUN_ID: record.mlflow_run_id, **registration.tags,
    }
    card = registration.card(tags, evaluation) if registration.card else ""
    if card:
        RunLogger(uri, record.mlflow_run_id).log_text(card, "model_card.md")
    mv = register_version(uri, registration.name, record.model_uri, record.mlflow_run_id,
                          tags=tags, description=card)
    log(f"{record.run_name}: registered {registration.name} version {mv.version}")
    return str(mv.version)
