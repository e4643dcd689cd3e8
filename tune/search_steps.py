"""The steps of a search (``python tune/search.py``, whose command line is :mod:`tune.search`).

:func:`run_search` answers the poster's question: for every configuration (from scratch, and
with pretraining) and ratio, a Ray Tune + Optuna study (:func:`search_ratio`); then it evaluates
the best trial of each on the test split with its k-best ensemble, registers it as a version of
``<task>-<model>``, promotes the best version through the registry's gate and writes the table.
Everything lives in the search's workdir.

Pretraining is per architecture and shared (:mod:`tune.pretraining`): a trial fine-tunes the
pretrained network of the architecture it drew, trained once by the first trial that needs it
(the others wait on a lease in the storage) and reused by every later trial and ratio. The
network knobs of the space are checked against the store's depth first
(:mod:`tune.space_check`).

Identity: the study, the Tune experiment and the parent MLflow run of a ratio are named after the
store's fingerprint (``<task>-<model>-<ssl>-<fingerprint[:8]>-r<ratio>``): a search on other data
in the same workdir never reuses this one's trials, evaluations or registered versions.

Layers (as in Ray's Train/Tune interop): the Train worker function (``fpn.training.worker``),
the per-trial driver (:func:`tune.trial.train_trial` -> ``run_training``) and here the Tuner,
one per ratio and configuration, with one named Optuna study each. What a trial needs travels
as one frozen :class:`tune.trial.TrialSpec`.

The steps of each ratio (:func:`search_ratio`) are named functions below: open the ratio's
parent run, fit its base config, run the Tuner, collect the finished trials (their records read
through fsspec, so ``--storage s3://...`` works), evaluate and register the best
(:func:`tune.core.evaluate_run`, shared with the paper table) and log it on the parent run.

Running it again after a kill resumes: the Tuner is restored from its storage (finished trials
are not run again, an interrupted trial resumes its Train run from the last checkpoint), the
Optuna studies keep their history, and every MLflow run and model version is found again by name
instead of being created twice.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fpn import tags as T
from fpn.config import TrainConfig
from fpn.stats import visit_patients
from fpn.storage import write_atomic
from tune.config import SearchConfig
from tune.console import close_progress_bar, log_folder, progress_bar, quiet_logging, say
from tune.core import (
    Evaluation,
    Registration,
    ResourcePlan,
    RunRecord,
    cluster_capacity,
    evaluate_run,
    finished_run,
    make_synthetic_store,
)
from tune.spaces import SearchSpace
from tune.trial import PretrainingSpec, TrialSpec
from tune.tuner import optuna_study, run_tuner, tidy_study

__all__ = ["RatioResult", "SearchResult", "run_search", "search_ratio"]


@dataclass
class RatioResult:
    """The outcome of one ratio's study."""

    ratio: float
    study: str
    parent_run_id: str
    trials_complete: int
    trials_pruned: int = 0  #: stopped early by ASHA (PRUNED in the Optuna study)
    trials_failed: int = 0
    best_trial: str | None = None
    best_run_id: str | None = None
    best_val: float = math.nan
    best_params: dict[str, Any] = field(default_factory=dict)
    test: dict[str, Any] = field(default_factory=dict)
    model_version: str | None = None
    configuration: str = ""  #: the table row (:func:`tune.core.row_label`)
    ssl: str = "none"
    dice_per_visit: dict[str, float] = field(default_factory=dict)  #: test Dice per test visit
    patient_of_visit: dict[str, str] = field(default_factory=dict)  #: each test visit's patient
    pretrainings_trained: int = 0  #: shared pretrainings this ratio's trials trained
    pretrainings_reused: int = 0  #: trials that reused one trained before (or elsewhere)


@dataclass
class SearchResult:
    """Everything a search produced, and where to look at it."""

    ratios: list[RatioResult]
    table_markdown: str
    files: dict[str, str]
    registered_model: str
    decision: str | None
    tracking_uri: str
    study_url: str
    promotion_refused: bool = False  #: the registry's gate refused (GateRefused); nothing moved


def _log(msg: str) -> None:
    say(f"[search] {msg}")


# -- data and resources ---------------------------------------------------------------------------

def ensure_store(cfg: SearchConfig) -> str:
    """The store to search on; the demo's synthetic store is made (and converted) when missing."""
    from fpn.data.store import open_store

    if cfg.data:
        open_store(cfg.data)  # a clear error naming the store when it is not one
        return cfg.data
    spec = cfg.preset.store
    assert spec is not None, "a preset without a store needs --data"
    return make_synthetic_store(cfg.work_path() / "data", spec, seed=cfg.seed,
                                num_cpus=cfg.num_cpus, log=_log)


def plan_resources(cfg: SearchConfig) -> ResourcePlan:
    """Concurrent trials and CPUs per Train worker on the connected cluster
    (:func:`tune.core.plan_resources`)."""
    from tune.core import plan_resources as plan

    cpus, gpus = cluster_capacity()
    return plan(cpus, gpus, workers=cfg.workers, gpus_per_worker=cfg.gpus_per_worker,
                cpus_per_worker=cfg.cpus_per_worker, max_concurrent=cfg.max_concurrent,
                runs=cfg.trials_per_ratio())


# -- pretraining and the base training config -----------------------------------------------------

def _fix_architecture(space: SearchSpace, base: TrainConfig, init: str, uri: str,
                      model: str) -> tuple[TrainConfig, SearchSpace]:
    """A network given with ``--pretrained`` fixes the architecture: take its kwargs, stop
    searching ``model.*`` (the search's own pretraining is per architecture instead:
    :mod:`tune.pretraining`)."""
    from fpn.storage import load_members

    member = load_members(init, uri, k=1)[0]
    if member["model_name"] != model:
        raise ValueError(f"{init}: the pretrained network is {member['model_name']!r}, "
                         f"but the search is for {model!r}")
    base = base.with_overrides({"init": init, "model.kwargs": {
        k: v for k, v in member["model_kwargs"].items()
        if k not in ("in_channels", "out_channels")}})
    dropped = [k for k in space.params if k.startswith("model.")]
    if dropped:
        _log(f"{init}: the given pretrained network fixes the architecture; not searching "
             f"{', '.join(dropped)}")
    return base, space.model_copy(update={
        "params": {k: v for k, v in space.params.items() if k not in dropped},
        "fixed": {k: v for k, v in space.fixed.items() if not k.startswith("model.")}})


# -- one ratio, step by step ----------------------------------------------------------------------

def _open_parent(cfg: SearchConfig, ratio: float, space: SearchSpace, store: Any,
                 experiment_id: str) -> str:
    """The ratio's parent MLflow run (found again on a re-run), tagged with what it searches."""
    from fpn.tracking import RunLogger, client_for, find_or_create_run
    from tune.report import PARENT_ROLE

    uri = cfg.tracking_uri()
    study_name = cfg.study_name(ratio, store.fingerprint)
    parent_tags = {T.SEARCH_ROLE: PARENT_ROLE, T.SEARCH_TASK: cfg.task, T.MODEL: cfg.model,
                   T.SSL: cfg.ssl, T.RATIO: f"{ratio:g}", T.STUDY: study_name,
                   T.CONFIGURATION: cfg.configuration_label(),
                   T.STORE_FINGERPRINT: store.fingerprint, T.STUDY_DB: cfg.study_url()}
    parent_id, _ = find_or_create_run(client_for(uri), experiment_id, f"search-{study_name}",
                                      parent_tags)
    RunLogger(uri, parent_id).set_tags({**parent_tags,
                                        T.SEARCH_SPACE: space.describe()[:5000]})
    return parent_id


def _ratio_base(cfg: SearchConfig, base: TrainConfig, ratio: float, store: Any) -> TrainConfig:
    """The base config at ``ratio``; at scarce ratios more crops per visit (``crops_floor``)."""
    at_ratio = {"data.ratio": ratio}
    floor = cfg.crops_floor()
    if floor and base.steps_per_epoch is None:  # a budget in steps needs no floor
        from fpn.data.splits import plan_visits

        visits = len(plan_visits(store, "mask", ratio, cfg.seed).train_keys)
        multiplier = max(base.data.multiplier, math.ceil(floor / visits))
        if multiplier != base.data.multiplier:
            at_ratio["data.multiplier"] = multiplier
            _log(f"{cfg.study_name(ratio, store.fingerprint)}: {visits} training visit(s); "
                 f"{multiplier} crops per visit per epoch (at least {floor} crops an epoch)")
    return base.with_overrides(at_ratio)


def _trial_runs(client: Any, experiment_id: str, parent_run_id: str) -> list[Any]:
    return client.search_runs([experiment_id],
                              filter_string=f"tags.`{T.MLFLOW_PARENT_RUN_ID}` = '{parent_run_id}'",
                              max_results=1000)


def _close_stopped_trials(client: Any, runs: list[Any]) -> None:
    """ASHA stops trials by killing them: close their MLflow runs, saying why."""
    for run in runs:
        if run.info.status == "RUNNING" and run.data.tags.get(T.STATUS) != T.STATUS_FINISHED:
            client.set_tag(run.info.run_id, T.STATUS, T.STATUS_STOPPED)
            client.set_terminated(run.info.run_id, status="KILLED")


def _finished_trials(runs: list[Any], trials_storage: str) -> list[tuple[Any, RunRecord]]:
    """The trials whose run finished with checkpoints, best validation score first (the
    earlier trial first on a tie); their records are read wherever the storage is."""
    scored = []
    for run in runs:
        record = finished_run(trials_storage, run.data.tags.get(T.RUN_NAME, run.info.run_name))
        if record is not None and record.usable:
            scored.append((run, record))
    scored.sort(key=lambda s: (-s[1].best_score, s[0].info.start_time))
    return scored


def _log_study(cfg: SearchConfig, study: Any, parent_id: str) -> None:
    """The study's summary, its trials' plot and table on the ratio's parent run."""
    from fpn.tracking import RunLogger
    from tune.report import plot_trials, study_summary

    if study is None:
        return
    logger = RunLogger(cfg.tracking_uri(), parent_id)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "study_summary.md").write_text(study_summary(study))
        logger.log_file(Path(tmp) / "study_summary.md")
        logger.log_file(plot_trials(study, Path(tmp) / "val_dice_over_trials.png"))
        study.trials_dataframe().to_csv(Path(tmp) / "trials.csv", index=False)
        logger.log_file(Path(tmp) / "trials.csv")


def _registration(cfg: SearchConfig, ratio: float, study_name: str, run: Any,
                  record: RunRecord, store: Any) -> Registration:
    """How the best trial is registered: as a version of ``<task>-<model>`` with its model card."""
    from tune.report import model_card

    def card(tags: dict[str, str], evaluation: Evaluation) -> str:
        return model_card(name=cfg.registered_name(), store=store, tags=tags,
                          config=record.config, train_patients=record.train_patients,
                          test=evaluation.summary, study_url=cfg.study_url())

    return Registration(cfg.registered_name(), card=card, tags={
        T.VERSION_RATIO: f"{ratio:g}", T.VERSION_SSL: cfg.ssl, T.VERSION_STUDY: study_name,
        T.VERSION_TRIAL: run.data.tags.get(T.TRIAL_ID, ""),
        T.VERSION_PRETRAINED: cfg.pretrained or ""})


def _log_best(cfg: SearchConfig, parent_id: str, run: Any, record: RunRecord,
              evaluation: Evaluation) -> dict[str, Any]:
    """The best trial's test metrics, name and parameters on the ratio's parent run (once)."""
    from mlflow.entities import Metric

    from fpn.tracking import RunLogger, client_for

    uri = cfg.tracking_uri()
    client = client_for(uri)
    logger = RunLogger(uri, parent_id)
    trial_id = run.data.tags.get(T.TRIAL_ID, "")
    params = json.loads(run.data.tags.get(T.TRIAL_PARAMS, "{}"))
    parent = client.get_run(parent_id)
    test = {**evaluation.summary, "test_keys_sha": evaluation.test_keys_sha}
    if not (parent.data.tags.get(T.BEST_TRIAL) == trial_id
            and "test/dice_mean" in parent.data.metrics):
        now = int(time.time() * 1000)
        client.log_batch(parent_id, metrics=[
            Metric(f"test/{k}", float(v), now, 0) for k, v in evaluation.summary.items()
            if isinstance(v, (int, float)) and math.isfinite(v)] + [
            Metric("best/val_dice", record.best_score, now, 0)])
        logger.log_file(evaluation.summary["csv"], "evaluation")
    logger.set_tags({T.BEST_TRIAL: trial_id, T.BEST_RUN_ID: run.info.run_id,
                     T.TEST_KEYS_SHA: evaluation.test_keys_sha,
                     **{T.best_param(k): str(v) for k, v in params.items()}})
    logger.log_text(json.dumps(params, indent=2, sort_keys=True), "best_params.json")
    return test


def _log_pretrainings(cfg: SearchConfig, parent_id: str, runs: list[Any]) -> tuple[int, int]:
    """How many shared pretrainings this ratio's trials trained and how many they reused, on
    the parent run (metrics ``pretrain/trained``, ``pretrain/reused`` and the same as tags)."""
    from mlflow.entities import Metric

    from fpn.tracking import RunLogger, client_for

    outcomes = [r.data.tags.get(T.PRETRAINING) for r in runs]
    trained = outcomes.count(T.PRETRAINING_TRAINED)
    reused = outcomes.count(T.PRETRAINING_REUSED)
    now = int(time.time() * 1000)
    client_for(cfg.tracking_uri()).log_batch(parent_id, metrics=[
        Metric("pretrain/trained", float(trained), now, 0),
        Metric("pretrain/reused", float(reused), now, 0)])
    RunLogger(cfg.tracking_uri(), parent_id).set_tags({
        T.PRETRAININGS_TRAINED: str(trained), T.PRETRAININGS_REUSED: str(reused)})
    return trained, reused


def search_ratio(cfg: SearchConfig, ratio: float, space: SearchSpace, base: TrainConfig,
                 resources: ResourcePlan, store: Any, experiment_id: str,
                 pretraining: PretrainingSpec | None = None) -> RatioResult:
    """Search one ratio, evaluate its best trial on the test split, log it on the parent run,
    register it. With ``pretraining``, each trial fine-tunes the shared pretraining of the
    architecture it draws (:mod:`tune.pretraining`)."""
    from fpn.tracking import client_for

    client = client_for(cfg.tracking_uri())
    study_name = cfg.study_name(ratio, store.fingerprint)
    parent_id = _open_parent(cfg, ratio, space, store, experiment_id)
    ratio_base = _ratio_base(cfg, base, ratio, store)
    spec = TrialSpec(base=ratio_base, study=study_name, parent_run_id=parent_id,
                     tags={T.SEARCH_TASK: cfg.task, T.SEARCH_ROLE: T.ROLE_TRIAL},
                     pretraining=pretraining)
    run_tuner(cfg, spec, space, resources)

    study = optuna_study(cfg, study_name)
    if study is not None:
        tidy_study(study)
    runs = _trial_runs(client, experiment_id, parent_id)
    _close_stopped_trials(client, runs)
    states = [] if study is None else [t.state.name for t in study.get_trials(deepcopy=False)]
    result = RatioResult(ratio, study_name, parent_id, trials_complete=states.count("COMPLETE"),
                         trials_pruned=states.count("PRUNED"), trials_failed=states.count("FAIL"),
                         configuration=cfg.configuration_label(), ssl=cfg.ssl)
    if pretraining is not None:
        result.pretrainings_trained, result.pretrainings_reused = _log_pretrainings(
            cfg, parent_id, runs)
        _log(f"{study_name}: {result.pretrainings_trained} pretraining(s) trained, "
             f"{result.pretrainings_reused} reused")
    finished = _finished_trials(runs, ratio_base.storage)
    _log_study(cfg, study, parent_id)
    if not finished:
        client.set_terminated(parent_id, "FAILED")
        raise RuntimeError(f"{study_name}: no trial finished with a checkpoint "
                           f"(trial runs in {ratio_base.storage})")
    best_run, record = finished[0]
    trial_id = best_run.data.tags.get(T.TRIAL_ID, "")
    _log(f"{study_name}: best trial {trial_id} (val score {record.best_score:.4f}); its ensemble "
         "on the test split")
    evaluation = evaluate_run(record, store, tracking_uri=cfg.tracking_uri(),
                              out_dir=cfg.work_path() / "results" / study_name,
                              registration=_registration(cfg, ratio, study_name, best_run, record,
                                                         store),
                              log=_log)
    result.test = _log_best(cfg, parent_id, best_run, record, evaluation)
    result.best_trial, result.best_run_id, result.best_val = (
        trial_id, best_run.info.run_id, record.best_score)
    result.best_params = json.loads(best_run.data.tags.get(T.TRIAL_PARAMS, "{}"))
    result.model_version = evaluation.model_version
    result.dice_per_visit = {r["visit"]: float(r["dice"]) for r in evaluation.records
                             if "dice" in r}
    result.patient_of_visit = visit_patients(evaluation.records)
    client.set_terminated(parent_id, "FINISHED")
    return result


# -- the compute-matched scratch row -------------------------------------------------------------

def matched_rows(cfg: SearchConfig, scratch: list[RatioResult], resources: ResourcePlan,
                 store: Any, space: SearchSpace) -> list[RatioResult]:
    """Per ratio, the scratch study's best configuration trained again from scratch for the
    pretraining's optimiser steps plus the fine-tuning's (:func:`tune.core.compute_matched_config`):
    the table's row ``<network> (scratch, matched steps)``, so that the pretrained row is also
    compared on equal compute. Not a search: one run per ratio, its runs side by side as Ray
    tasks; evaluated on the test split like the others, not registered."""
    from tune.core import MATCHED, Job, compute_matched_config, row_label, run_jobs

    pre_cfg = cfg.model_copy(update={"ssl": cfg.configurations()[-1]})
    scratch_cfg = cfg.model_copy(update={"ssl": "none"})
    base, _, _ = _base_config(scratch_cfg, store, resources, space)
    pretrain = pre_cfg.train_config(task="pretrain", target=pre_cfg.ssl,
                                    epochs=pre_cfg.pretraining_epochs(), storage_dir="pretrain")
    jobs = []
    for r in scratch:
        name = f"{r.study}-{MATCHED}"
        finetune = _ratio_base(scratch_cfg, base, r.ratio, store).with_overrides(
            {**r.best_params, "run_name": name})
        config = compute_matched_config(finetune, pretrain, store)
        _log(f"{name}: the best scratch trial's configuration for {config.epochs} epochs "
             f"(fine-tuning {finetune.epochs} + the pretraining's steps)")
        jobs.append(Job(name, config, evaluate=True, model=cfg.model, ssl=MATCHED,
                        ratio=r.ratio, parent_run_id=r.parent_run_id))
    done, failed = run_jobs(jobs, concurrency=resources.concurrency, parent_run_id=None,
                            eval_dir=cfg.work_path() / "results", log=_log,
                            tags={T.SEARCH_TASK: cfg.task, T.SEARCH_ROLE: T.ROLE_MATCHED})
    if failed:
        raise RuntimeError(f"the compute-matched scratch run(s) failed: {failed}")
    out = []
    for job in jobs:
        finished = done[job.name]
        records = finished["records"]
        out.append(RatioResult(
            job.ratio, job.name, job.parent_run_id or "", trials_complete=1,
            configuration=row_label(cfg.model, MATCHED), ssl=MATCHED,
            best_val=max(finished["record"]["best_scores"] or [math.nan]),
            test=finished["summary"],
            dice_per_visit={r["visit"]: float(r["dice"]) for r in records if "dice" in r},
            patient_of_visit=visit_patients(records)))
    return out


# -- the whole search -----------------------------------------------------------------------------

def _store_depths(store: Any) -> list[int]:
    """The OCT depths of the store's labelled visits (what every network must take)."""
    return sorted({int(v.shape[1]) for v in store.visits_for(require="mask")}) or \
        sorted({int(v.shape[1]) for v in store.visits_for()})


def checked_space(cfg: SearchConfig, store: Any) -> SearchSpace:
    """The search space with its network knobs categorical and checked at the store's depth
    (:func:`tune.space_check.check_model_knobs`)."""
    from tune.space_check import check_model_knobs

    return check_model_knobs(cfg.search_space(), cfg.train_config().model.kwargs, cfg.model,
                             _store_depths(store), gpus_per_worker=cfg.gpus_per_worker,
                             strict=cfg.strict_space, log=_log)


def _base_config(cfg: SearchConfig, store: Any, resources: ResourcePlan, space: SearchSpace,
                 ) -> tuple[TrainConfig, SearchSpace, PretrainingSpec | None]:
    """The fine-tuning config every trial starts from, the space, and (when the configuration
    pretrains) how each trial finds or trains the pretraining of the architecture it draws
    (:func:`tune.trial.with_pretrained`)."""
    base = cfg.train_config(cpus_per_worker=resources.cpus_per_worker,
                            threads=resources.threads_per_worker)
    if cfg.pretrained is not None:
        base, space = _fix_architecture(space, base, cfg.pretrained, cfg.tracking_uri(),
                                        cfg.model)
        return base, space, None
    if cfg.ssl == "none":
        return base, space, None
    pretrain = cfg.train_config(task="pretrain", target=cfg.ssl,
                                epochs=cfg.pretraining_epochs(), storage_dir="pretrain",
                                cpus_per_worker=resources.cpus_per_worker,
                                threads=resources.threads_per_worker)
    return base, space, PretrainingSpec(
        config=pretrain.with_overrides({"init": None}), storage=cfg.storage_path(),
        store_fingerprint=store.fingerprint, tags={T.SEARCH_TASK: cfg.task, T.SSL: cfg.ssl})


def _promote(cfg: SearchConfig, results: list[RatioResult]) -> tuple[str | None, bool]:
    """The best registered version of this search through the registry's gate.

    Returns the decision's message and whether the gate refused (``GateRefused``: the registry
    is unchanged; the search still prints its table and succeeds)."""
    from fpn.registry import GateRefused, promote

    versions = [r for r in results if r.model_version]
    if not cfg.promote or not versions:
        return None, False
    best = max(versions, key=lambda r: float(r.test.get("dice_mean", -1)))
    try:
        decision = promote(cfg.tracking_uri(), cfg.registered_name(), best.model_version).message()
    except GateRefused as exc:
        decision = (f"promotion of {cfg.registered_name()} version {best.model_version} refused: "
                    f"{exc}")
        _log(decision)
        return decision, True
    _log(decision)
    return decision, False


def _study_notes(ratios: list[RatioResult]) -> str:
    """What the searches behind the table were: per study the trials it ran and how many ASHA
    pruned, and whether TPE left its random start-up (with fewer trials it did not, and every
    study of the table drew the same configurations: a paired random search)."""
    from tune.tuner import TPE_STARTUP_TRIALS

    lines = [("Searches (Optuna studies; TPE samples at random for its first "
              f"{TPE_STARTUP_TRIALS} trials):")]
    from tune.core import MATCHED

    studies = [r for r in ratios if r.ssl != MATCHED]
    for r in studies:
        ran = r.trials_complete + r.trials_pruned + r.trials_failed
        lines.append(f"- {r.configuration}, ratio {r.ratio:g}: {ran} trial(s), "
                     f"{r.trials_pruned} pruned by ASHA, {r.trials_failed} failed; best trial "
                     f"{r.best_trial} (val score {r.best_val:.4f})")
    for r in (r for r in ratios if r.ssl == MATCHED):
        lines.append(f"- {r.configuration}, ratio {r.ratio:g}: no search: the scratch study's "
                     "best configuration, trained from scratch for the pretraining's optimiser "
                     "steps plus the fine-tuning's (the row on equal compute); not registered")
    if all(r.trials_complete + r.trials_pruned + r.trials_failed < TPE_STARTUP_TRIALS
           for r in studies):
        lines.append("No study left TPE's random start-up, and the studies share the search's "
                     "seed: every row and ratio drew the same configurations, so the table "
                     "compares the rows by a paired random search, not a tuned one.")
    return "\n".join(lines) + "\n"


def _write_table(cfg: SearchConfig, client: Any, experiment_id: str, fingerprint: str,
                 ratios: list[RatioResult]) -> tuple[str, dict[str, Path]]:
    """The table: Markdown, CSV and plot in WORKDIR/results, also logged on one MLflow run.

    With per-visit test Dice for its rows (this search's configurations), the comparison table
    at the patient level (:func:`tune.report.comparison_markdown`: per cell the mean over test
    patients and its bootstrap interval; per ratio each row's difference from the first row,
    the baseline, with its interval and the paired test over patients, Holm-corrected over the
    table); else the summary table of every search of this task, model and store in the
    experiment."""
    from fpn.tracking import RunLogger, find_or_create_run
    from tune import report

    rows = report.collect_rows(client, experiment_id, cfg.task, cfg.model,
                               fingerprint=fingerprint)
    values: dict[str, dict[float, dict[str, float]]] = {}
    patients: dict[str, str] = {}
    for r in ratios:
        if r.dice_per_visit:
            values.setdefault(r.configuration, {})[r.ratio] = r.dice_per_visit
            patients.update(r.patient_of_visit)
    out = cfg.work_path() / "results"
    out.mkdir(parents=True, exist_ok=True)
    files = {"markdown": out / "table.md", "csv": out / "table.csv", "plot": out / "dice_vs_ratio.png"}
    if values:
        table = report.comparison_markdown(values, patients)
        write_atomic(files["csv"], report.comparison_csv(values, patients))
        from tune.results import plot_cells

        plot_cells(report.comparison_cells(values, patients), files["plot"])
    else:
        table = report.table_markdown(rows)
        write_atomic(files["csv"], report.table_csv(rows))
        report.plot_table(rows, files["plot"])
    table = table + "\n" + _study_notes(ratios)
    write_atomic(files["markdown"], table)
    summary_id, _ = find_or_create_run(client, experiment_id,
                                       f"search-table-{cfg.task}-{cfg.model}-{fingerprint[:8]}",
                                       {T.SEARCH_ROLE: T.ROLE_TABLE, T.SEARCH_TASK: cfg.task,
                                        T.STORE_FINGERPRINT: fingerprint})
    summary = RunLogger(cfg.tracking_uri(), summary_id)
    for f in files.values():
        summary.log_file(f)
    summary.finish("FINISHED")
    return table, files


def run_search(cfg: SearchConfig) -> SearchResult:
    """Pretrain (unless ``ssl`` is none or ``pretrained`` is given), search each ratio, evaluate,
    register, promote and write the table. Safe to run again after a kill (it resumes)."""
    import torch

    from fpn.data.store import open_store
    from fpn.tracking import client_for, ensure_experiment
    from fpn.training.ray_connect import connect_ray

    torch.set_num_threads(1)
    cfg.work_path().mkdir(parents=True, exist_ok=True)
    if not cfg.verbose:
        quiet_logging()
    # the one way to reach Ray: $RAY_ADDRESS when set; else a local Ray of our own. Without
    # --verbose what the workers and trials print stays in Ray's log files (log_folder())
    connect_ray(num_cpus=cfg.num_cpus, log_to_driver=cfg.verbose,
                logging_level=logging.INFO if cfg.verbose else logging.WARNING)
    if not cfg.verbose:
        _log(f"the trials' and Ray's logs: {log_folder()} (--verbose: on the console)")
    store_path = ensure_store(cfg)
    store = open_store(store_path)
    uri = cfg.tracking_uri()
    client = client_for(uri)
    experiment_id = ensure_experiment(client, cfg.experiment, uri)
    resources = plan_resources(cfg)
    space = checked_space(cfg, store)
    results: list[RatioResult] = []
    configurations = cfg.configurations()
    matched = cfg.with_matched_row()
    progress_bar(len(configurations) * len(cfg.ratios) * cfg.trials_per_ratio())
    try:
        for ssl in configurations:  # from scratch first, then pretrained (one row each)
            scfg = cfg.model_copy(update={"ssl": ssl})
            base, sspace, pretraining = _base_config(scfg, store, resources, space)
            results += [search_ratio(scfg, r, sspace, base, resources, store, experiment_id,
                                     pretraining) for r in cfg.ratios]
    finally:
        close_progress_bar()
    if matched:  # the scratch row again, on the pretrained row's compute
        scratch = [r for r in results if r.ssl == "none"]
        results[len(scratch):len(scratch)] = matched_rows(cfg, scratch, resources, store, space)
    decision, refused = _promote(cfg, results)
    table, files = _write_table(cfg, client, experiment_id, store.fingerprint, results)
    return SearchResult(results, table, {k: str(v) for k, v in files.items()},
                        cfg.registered_name(), decision, uri, cfg.study_url(),
                        promotion_refused=refused)
