"""``python tune/search.py``: Ray Tune + Optuna search per data ratio, the results table, registry.

With no arguments it makes a small synthetic data set (when not already there), pretrains once
(inverted FAF), searches fine-tuning recipes for ratios 0.1 and 1.0 on local Ray with a local
sqlite MLflow and Optuna database, evaluates the best trial of each ratio on the test split with
its k-best ensemble, registers it as a version of ``<task>-<model>``, promotes the best version
through the registry's gate and prints the table. Everything lives in ``--workdir``.

Layers (as in Ray's Train/Tune interop): the Train worker function (``fpn.training.worker``),
the per-trial driver (:func:`tune.trial.train_trial` -> ``run_training``) and here the Tuner,
one per ratio, with one named Optuna study per ratio (``<task>-<model>-<ssl>-r<ratio>``).

Running it again after a kill resumes: the Tuner is restored from its storage (finished trials
are not run again, an interrupted trial resumes its Train run from the last checkpoint), the
Optuna studies keep their history, and every MLflow run and model version is found again by name
instead of being created twice.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python tune/search.py`: import the `tune` package instead
    _ROOT = str(Path(__file__).resolve().parent.parent)
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
    sys.path.insert(0, _ROOT)

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from tune.config import DEMO_SHAPE, SearchConfig, load_search_config
from tune.spaces import SearchSpace, default_space, load_space

__all__ = ["RatioResult", "SearchResult", "build_parser", "main", "run_search"]

#: CPU reserved by each trial's own function (the Train driver); its workers have their own
DRIVER_CPU = 0.05
#: custom resource of the on-demand head in cluster.yaml (100 of it: up to 100 trial drivers)
DRIVER_RESOURCE = "fpn_driver"
METRIC = "val_score"


@dataclass
class RatioResult:
    """The outcome of one ratio's study."""

    ratio: float
    study: str
    parent_run_id: str
    trials_complete: int
    best_trial: str | None = None
    best_run_id: str | None = None
    best_val: float = math.nan
    best_params: dict[str, Any] = field(default_factory=dict)
    test: dict[str, Any] = field(default_factory=dict)
    model_version: str | None = None


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


def _log(msg: str) -> None:
    print(f"[search] {msg}", flush=True)


# -- data ---------------------------------------------------------------------------------------

def ensure_store(cfg: SearchConfig) -> str:
    """The store to search on; the demo's synthetic store is made (and converted) when missing."""
    from fpn.data.store import open_store

    path = cfg.store_path()
    if cfg.data:
        open_store(path)  # a clear error naming the store when it is not one
        return path
    try:
        open_store(path)
        return path
    except (ValueError, FileNotFoundError, OSError):
        pass
    from data_prep.convert import convert
    from data_prep.synthetic import make_synthetic_dataset

    source = cfg.work_path() / "data" / "source"
    if not (source / "split.json").is_file():
        _log(f"making a synthetic data set in {source}")
        make_synthetic_dataset(source, patients=12, unlabelled=4, shape=DEMO_SHAPE, visits=2,
                               seed=cfg.seed, overwrite=True)
    _log(f"converting it to the store {path}")
    stats = convert(str(source), path, progress=False, num_cpus=cfg.num_cpus)
    if not stats.ok:
        raise ValueError(f"{source}: conversion failed: {stats.summary_line()}")
    return path


# -- resources ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class TrialResources:
    concurrency: int
    cpus_per_worker: float
    threads_per_worker: int


def plan_resources(cfg: SearchConfig) -> TrialResources:
    """Concurrent trials and CPUs per Train worker that fit the cluster without deadlock.

    Each trial holds :data:`DRIVER_CPU` for its function plus ``workers_per_trial`` workers in
    their own placement group; trials beyond what fits would hold a driver slot while their
    workers wait for CPUs that never come free, so the concurrency is derived from the resources.
    """
    import ray

    res = ray.cluster_resources()
    cpus, gpus = float(res.get("CPU", 1)), float(res.get("GPU", 0))
    w = cfg.workers_per_trial
    if cfg.gpus_per_worker > 0:
        if gpus < w * cfg.gpus_per_worker:
            raise ValueError(f"a trial needs {w * cfg.gpus_per_worker:g} GPUs; the cluster has {gpus:g}")
        fit = int(gpus // (w * cfg.gpus_per_worker))
    else:
        fit = max(1, int(cpus // w))
    conc = min(cfg.max_concurrent or fit, fit, cfg.trials)
    cpw = cfg.cpus_per_worker or max(0.05, (cpus / conc - DRIVER_CPU) / w)
    while conc > 1 and conc * (DRIVER_CPU + w * cpw) > cpus + 1e-9:
        conc -= 1
    if DRIVER_CPU + w * cpw > cpus + 1e-9:
        raise ValueError(f"a trial needs {DRIVER_CPU + w * cpw:g} CPUs; the cluster has {cpus:g}")
    return TrialResources(conc, round(cpw, 3), max(1, int(cpw)))


# -- pretraining and the base training config ---------------------------------------------------

def _train_tree(cfg: SearchConfig, store: str, *, task: str, target: str, epochs: int,
                storage_dir: str, cpus_per_worker: float, threads: int) -> dict[str, Any]:
    from fpn.config import set_dotted

    tree: dict[str, Any] = {
        "task": task, "data": {"store": store, "target": target, "subset_seed": cfg.seed},
        "model": {"name": cfg.model, "kwargs": {}}, "epochs": epochs, "seed": cfg.seed,
        "workers": cfg.workers_per_trial, "gpus_per_worker": cfg.gpus_per_worker,
        "cpus_per_worker": cpus_per_worker, "threads_per_worker": threads,
        "storage": str(Path(cfg.storage_path()) / storage_dir) if "://" not in cfg.storage_path()
        else f"{cfg.storage_path().rstrip('/')}/{storage_dir}",
        "mlflow": cfg.tracking_uri(), "experiment": cfg.experiment,
    }
    for dotted, value in cfg.train_overrides().items():
        set_dotted(tree, dotted, value)
    tree["task"], tree["data"]["target"], tree["epochs"] = task, target, epochs
    return tree


def pretrain(cfg: SearchConfig, store: str, fingerprint: str) -> str:
    """Pretrain once (``cfg.ssl``) and return the reference fine-tuning loads (run dir or URI)."""
    import ray

    from fpn.config import TrainConfig
    from fpn.training.driver import run_training

    cpus = float(ray.cluster_resources().get("CPU", 1)) / cfg.workers_per_trial
    tree = _train_tree(cfg, store, task="pretrain", target=cfg.ssl,
                       epochs=cfg.pretraining_epochs(), storage_dir="pretrain",
                       cpus_per_worker=cpus, threads=max(1, int(cpus)))
    tree.pop("init", None)
    tree["run_name"] = f"pretrain-{cfg.model}-{cfg.ssl}-{fingerprint[:8]}-s{cfg.seed}"
    tcfg = TrainConfig.model_validate(tree)
    _log(f"pretraining {tcfg.run_name} ({tcfg.epochs} epochs, target {cfg.ssl})")
    outcome = run_training(tcfg, extra_tags={"fpn.search_task": cfg.task,
                                              "fpn.search_role": "pretrain"})
    if not outcome.best_checkpoints:
        raise ValueError(f"pretraining {tcfg.run_name} left no checkpoint")
    local = "://" not in tcfg.storage_path()
    return outcome.run_dir if local else (outcome.model_uri or outcome.best_checkpoints[0])


def _fix_architecture(space: SearchSpace, tree: dict[str, Any], init: str, uri: str,
                      model: str) -> SearchSpace:
    """A pretrained network fixes the architecture: take its kwargs, stop searching ``model.*``."""
    from fpn.inference import load_member_file, resolve_members

    member = load_member_file(resolve_members(init, uri, k=1)[0])
    if member["model_name"] != model:
        raise ValueError(f"{init}: the pretrained network is {member['model_name']!r}, "
                         f"but the search is for {model!r}")
    tree["model"]["kwargs"] = {k: v for k, v in member["model_kwargs"].items()
                               if k not in ("in_channels", "out_channels")}
    dropped = [k for k in space.params if k.startswith("model.")]
    if dropped:
        _log(f"the pretrained network fixes the architecture; not searching {', '.join(dropped)}")
    return SearchSpace(params={k: v for k, v in space.params.items() if k not in dropped},
                       fixed={k: v for k, v in space.fixed.items() if not k.startswith("model.")})


# -- one ratio ----------------------------------------------------------------------------------

def _optuna_trial_finished(searcher: Any, trial_id: str) -> bool:
    ot_trial = searcher._ot_trials.get(trial_id)
    if ot_trial is None:
        return False
    return searcher._ot_study._storage.get_trial(ot_trial._trial_id).state.is_finished()


try:
    from ray.tune.search.optuna import OptunaSearch as _OptunaSearch

    class ResumableOptunaSearch(_OptunaSearch):
        """OptunaSearch that tolerates a trial finished in the study but not in Tune's last
        experiment checkpoint (the search was killed in between): Tune runs it again (its Train
        run is found finished and only reports), and its result must not reach Optuna twice."""

        def on_trial_result(self, trial_id: str, result: dict) -> None:
            if not _optuna_trial_finished(self, trial_id):
                super().on_trial_result(trial_id, result)

        def on_trial_complete(self, trial_id: str, result: dict | None = None,
                              error: bool = False) -> None:
            if _optuna_trial_finished(self, trial_id):
                self._completed_trials.add(trial_id)
                return
            super().on_trial_complete(trial_id, result, error)
except ImportError:  # optuna missing: the search reports it when it runs
    pass


def _trial_name(trial: Any) -> str:
    return str(trial.trial_id)


def _optuna_study(cfg: SearchConfig, study_name: str) -> Any:
    import optuna

    storage = optuna.storages.RDBStorage(cfg.study_url())
    try:
        return optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        return None


def _tidy_study(study: Any) -> None:
    """Trials still RUNNING after the Tuner returned were asked by a killed search and never run."""
    import optuna

    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)
        study.set_user_attr(f"orphan_{t.number}", "asked by an interrupted search, never run")


def _scheduler(cfg: SearchConfig, study_name: str) -> Any:
    """ASHA on validation Dice, never deciding at the last epoch (a trial that reached it runs
    to its end: checkpoints ranked, ensemble logged); FIFO when there is a single epoch."""
    from ray.tune.schedulers import FIFOScheduler

    from tune.pruning import CooperativeASHA

    epochs = cfg.train_epochs()
    if epochs < 2:
        return FIFOScheduler()
    return CooperativeASHA(study_name, time_attr="training_iteration", max_t=epochs - 1,
                           grace_period=min(cfg.asha_grace(), epochs - 1), reduction_factor=2,
                           stop_last_trials=False)


def _run_tuner(cfg: SearchConfig, study_name: str, space: SearchSpace, context: dict[str, Any],
               resources: TrialResources) -> None:
    import optuna
    import ray
    from ray import tune

    from tune.pruning import stop_board
    from tune.trial import train_trial

    storage = cfg.storage_path()
    exp_path = f"{storage.rstrip('/')}/{study_name}" if "://" in storage else str(Path(storage) / study_name)
    driver_bundle: dict[str, float] = {"cpu": DRIVER_CPU}
    if ray.cluster_resources().get(DRIVER_RESOURCE):
        # cluster.yaml puts this resource on the on-demand head only: trial drivers never land
        # on spot nodes, where a preemption would take the trial's bookkeeping with it
        driver_bundle[DRIVER_RESOURCE] = 1.0
    trainable = tune.with_resources(tune.with_parameters(train_trial, context=context),
                                    driver_bundle)
    board = stop_board(study_name)  # held here so that it lives as long as the search
    if tune.Tuner.can_restore(exp_path):
        _log(f"{study_name}: resuming the search in {exp_path}")
        tuner = tune.Tuner.restore(exp_path, trainable, resume_unfinished=True,
                                   restart_errored=True)
    else:
        existing = _optuna_study(cfg, study_name)
        done = 0 if existing is None else sum(
            t.state.is_finished() for t in existing.get_trials(deepcopy=False))
        remaining = cfg.trials - done
        if remaining <= 0:
            _log(f"{study_name}: the study already holds {done} finished trials")
            return
        searcher = ResumableOptunaSearch(space=space, metric=METRIC, mode="max",
                                         storage=optuna.storages.RDBStorage(cfg.study_url()),
                                         study_name=study_name, seed=cfg.seed)
        scheduler = _scheduler(cfg, study_name)
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                metric=METRIC, mode="max", search_alg=searcher, scheduler=scheduler,
                num_samples=remaining, max_concurrent_trials=resources.concurrency,
                trial_name_creator=_trial_name, trial_dirname_creator=_trial_name),
            run_config=tune.RunConfig(name=study_name, storage_path=storage,
                                      failure_config=tune.FailureConfig(max_failures=1),
                                      verbose=1),
        )
        _log(f"{study_name}: {remaining} trial(s), {resources.concurrency} at a time")
    grid = tuner.fit()
    del board
    errors = [r.error for r in grid if r.error is not None]
    if errors and len(errors) == len(grid):
        raise RuntimeError(f"{study_name}: every trial failed; first error: {errors[0]}")


def _trial_runs(client: Any, experiment_id: str, parent_run_id: str) -> list[Any]:
    return client.search_runs([experiment_id],
                              filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'",
                              max_results=1000)


def _close_stopped_trials(client: Any, runs: list[Any]) -> None:
    """ASHA stops trials by killing them: close their MLflow runs, saying why."""
    for run in runs:
        if run.info.status == "RUNNING" and run.data.tags.get("fpn.status") != "finished":
            client.set_tag(run.info.run_id, "fpn.status", "stopped")
            client.set_terminated(run.info.run_id, status="KILLED")


def _outcome_of(run: Any, trials_storage: str) -> dict[str, Any] | None:
    from fpn.inference import RUN_FILE

    name = run.data.tags.get("fpn.run_name", run.info.run_name)
    if "://" not in trials_storage:
        f = Path(trials_storage) / name / RUN_FILE
        if f.is_file():
            info = json.loads(f.read_text())
            if info.get("finished") and info.get("best_checkpoints"):
                return info
    return None


def _test_keys_sha(keys: list[str]) -> str:
    import hashlib

    return hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest()[:16]


def search_ratio(cfg: SearchConfig, ratio: float, space: SearchSpace, base: dict[str, Any],
                 resources: TrialResources, store: Any, experiment_id: str) -> RatioResult:
    """Search one ratio, evaluate its best trial on the test split, log it on the parent run."""
    from fpn.evaluation import evaluate
    from fpn.tracking import RunLogger, client_for, find_or_create_run
    from tune.report import PARENT_ROLE, plot_trials, study_summary

    uri = cfg.tracking_uri()
    client = client_for(uri)
    study_name = cfg.study_name(ratio)
    parent_tags = {"fpn.search_role": PARENT_ROLE, "fpn.search_task": cfg.task,
                   "fpn.model": cfg.model, "fpn.ssl": cfg.ssl, "fpn.ratio": f"{ratio:g}",
                   "fpn.study": study_name, "fpn.configuration": cfg.configuration_label(),
                   "fpn.store_fingerprint": store.fingerprint, "fpn.study_db": cfg.study_url()}
    parent_id, _ = find_or_create_run(client, experiment_id, f"search-{study_name}", parent_tags)
    logger = RunLogger(uri, parent_id)
    logger.set_tags({**parent_tags, "fpn.search_space": space.describe()[:5000]})

    base = json.loads(json.dumps(base))
    base["data"]["ratio"] = ratio
    floor = cfg.crops_floor()
    if floor:
        from fpn.data.splits import plan_visits

        visits = len(plan_visits(store, "mask", ratio, cfg.seed).train_keys)
        multiplier = base["data"].get("multiplier", 20)
        base["data"]["multiplier"] = max(multiplier, math.ceil(floor / visits))
        if base["data"]["multiplier"] != multiplier:
            _log(f"{study_name}: {visits} training visit(s); {base['data']['multiplier']} crops "
                 f"per visit per epoch (at least {floor} crops an epoch)")
    context = {"base": base, "study": study_name, "parent_run_id": parent_id,
               "tags": {"fpn.search_task": cfg.task, "fpn.search_role": "trial"}}
    _run_tuner(cfg, study_name, space, context, resources)

    study = _optuna_study(cfg, study_name)
    if study is not None:
        _tidy_study(study)
    runs = _trial_runs(client, experiment_id, parent_id)
    _close_stopped_trials(client, runs)
    result = RatioResult(ratio, study_name, parent_id,
                         trials_complete=0 if study is None else sum(
                             t.state.name == "COMPLETE" for t in study.get_trials(deepcopy=False)))
    trials_storage = base["storage"]
    scored = []
    for run in runs:
        info = _outcome_of(run, trials_storage)
        if info is not None:
            scored.append((max(info["best_scores"]), run.info.start_time, run, info))
    with tempfile.TemporaryDirectory() as tmp:
        if study is not None:
            (Path(tmp) / "study_summary.md").write_text(study_summary(study))
            logger.log_file(Path(tmp) / "study_summary.md")
            logger.log_file(plot_trials(study, Path(tmp) / "val_dice_over_trials.png"))
            study.trials_dataframe().to_csv(Path(tmp) / "trials.csv", index=False)
            logger.log_file(Path(tmp) / "trials.csv")
    if not scored:
        client.set_terminated(parent_id, "FAILED")
        raise RuntimeError(f"{study_name}: no trial finished with a checkpoint")
    scored.sort(key=lambda s: (-s[0], s[1]))
    best_val, _, best_run, info = scored[0]
    trial_id = best_run.data.tags.get("fpn.trial_id", "")
    params = json.loads(best_run.data.tags.get("fpn.trial_params", "{}"))
    result.best_trial, result.best_run_id, result.best_val, result.best_params = (
        trial_id, best_run.info.run_id, best_val, params)

    # the best trial's k-best ensemble on the test split (skipped when already done for it)
    parent = client.get_run(parent_id)
    if parent.data.tags.get("fpn.best_trial") == trial_id and "test/dice_mean" in parent.data.metrics:
        m = parent.data.metrics
        test = {"dice_mean": m["test/dice_mean"], "dice_std": m.get("test/dice_std", math.nan),
                "visits": m.get("test/visits", 0),
                "test_keys_sha": parent.data.tags.get("fpn.test_keys_sha", "")}
    else:
        out = cfg.work_path() / "results" / study_name
        ref = info["run_dir"] if Path(info["run_dir"]).is_dir() else (info.get("model_uri") or "")
        _log(f"{study_name}: evaluating trial {trial_id} (val Dice {best_val:.4f}) on the test split")
        test = evaluate(ref, store.location, split="test", out=str(out), tracking_uri=uri)
        keys = [v.key for v in store.visits_for(splits="test", require="mask")]
        test["test_keys_sha"] = _test_keys_sha(keys)
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        client.log_batch(parent_id, metrics=[
            Metric(f"test/{k}", float(v), now, 0) for k, v in test.items()
            if isinstance(v, (int, float)) and math.isfinite(v)] + [
            Metric("best/val_dice", best_val, now, 0)])
        logger.log_file(test["csv"], "evaluation")
    logger.set_tags({"fpn.best_trial": trial_id, "fpn.best_run_id": best_run.info.run_id,
                     "fpn.test_keys_sha": test["test_keys_sha"],
                     **{f"best.{k}": str(v) for k, v in params.items()}})
    logger.log_text(json.dumps(params, indent=2, sort_keys=True), "best_params.json")
    result.test = test
    result.model_version = _register(cfg, ratio, study_name, store, best_run, info, test, best_val)
    client.set_terminated(parent_id, "FINISHED")
    return result


# -- registry -----------------------------------------------------------------------------------

def _register(cfg: SearchConfig, ratio: float, study: str, store: Any, run: Any,
              info: dict[str, Any], test: dict[str, Any], best_val: float) -> str | None:
    from fpn.registry import register_version
    from fpn.tracking import RunLogger, git_revision
    from tune.report import model_card

    uri = cfg.tracking_uri()
    model_uri = info.get("model_uri")
    if not model_uri:
        _log(f"{study}: the best trial logged no model; nothing to register")
        return None
    tags = {
        "ratio": f"{ratio:g}", "ssl": cfg.ssl, "val_dice": f"{best_val:.6f}",
        "test_dice": f"{float(test['dice_mean']):.6f}",
        "test_dice_std": f"{float(test.get('dice_std', math.nan)):.6f}",
        "store_fingerprint": store.fingerprint, "test_split": "test",
        "test_keys_sha": test["test_keys_sha"], "study": study,
        "trial": run.data.tags.get("fpn.trial_id", ""), "git_revision": git_revision(),
        "mlflow_run_id": run.info.run_id, "pretrained": cfg.pretrained or "",
    }
    card = model_card(name=cfg.registered_name(), store=store, tags=tags, config=info.get("config", {}),
                      train_patients=info.get("train_patients", []), test=test,
                      study_url=cfg.study_url())
    RunLogger(uri, run.info.run_id).log_text(card, "model_card.md")
    mv = register_version(uri, cfg.registered_name(), model_uri, run.info.run_id, tags=tags,
                          description=card)
    _log(f"{study}: registered {cfg.registered_name()} version {mv.version}")
    return str(mv.version)


# -- the whole search ---------------------------------------------------------------------------

def run_search(cfg: SearchConfig) -> SearchResult:
    """Pretrain (unless ``ssl`` is none or ``pretrained`` is given), search each ratio, evaluate,
    register, promote and write the table. Safe to run again after a kill (it resumes)."""
    import torch

    from fpn.data.store import open_store
    from fpn.registry import promote
    from fpn.tracking import RunLogger, client_for, ensure_experiment, find_or_create_run
    from tune import report

    torch.set_num_threads(1)
    cfg.work_path().mkdir(parents=True, exist_ok=True)
    _start_ray(cfg)
    store_path = ensure_store(cfg)
    store = open_store(store_path)
    space = load_space(cfg.space) if cfg.space else default_space()
    uri = cfg.tracking_uri()
    client = client_for(uri)
    experiment_id = ensure_experiment(client, cfg.experiment, uri)
    resources = plan_resources(cfg)

    init = cfg.pretrained
    if init is None and cfg.ssl != "none":
        init = pretrain(cfg, store_path, store.fingerprint)
    base = _train_tree(cfg, store_path, task="finetune", target="mask", epochs=cfg.train_epochs(),
                       storage_dir="trials", cpus_per_worker=resources.cpus_per_worker,
                       threads=resources.threads_per_worker)
    if init is not None:
        base["init"] = init
        space = _fix_architecture(space, base, init, uri, cfg.model)

    results = [search_ratio(cfg, r, space, base, resources, store, experiment_id)
               for r in cfg.ratios]

    decision = None
    versions = [r for r in results if r.model_version]
    if cfg.promote and versions:
        best = max(versions, key=lambda r: float(r.test.get("dice_mean", -1)))
        decision = promote(uri, cfg.registered_name(), best.model_version).message()
        _log(decision)

    rows = report.collect_rows(client, experiment_id, cfg.task, cfg.model)
    table = report.table_markdown(rows)
    out = cfg.work_path() / "results"
    out.mkdir(parents=True, exist_ok=True)
    files = {"markdown": out / "table.md", "csv": out / "table.csv", "plot": out / "dice_vs_ratio.png"}
    _write_atomic(files["markdown"], table)
    _write_atomic(files["csv"], report.table_csv(rows))
    report.plot_table(rows, files["plot"])
    summary_id, _ = find_or_create_run(client, experiment_id, f"search-table-{cfg.task}-{cfg.model}",
                                       {"fpn.search_role": "table", "fpn.search_task": cfg.task})
    summary = RunLogger(uri, summary_id)
    for f in files.values():
        summary.log_file(f)
    summary.finish("FINISHED")
    return SearchResult(results, table, {k: str(v) for k, v in files.items()},
                        cfg.registered_name(), decision, uri, cfg.study_url())


def _start_ray(cfg: SearchConfig) -> None:
    """Connect to ``$RAY_ADDRESS`` when set; else start a local Ray of our own (``address=
    "local"``: never join another cluster that happens to run on this machine)."""
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        from fpn.training.driver import ensure_ray

        ensure_ray()
    else:
        # the dashboard serves the state API that Ray Train's placement-group cleaner polls
        ray.init(address="local", num_cpus=cfg.num_cpus, log_to_driver=True)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def print_result(res: SearchResult) -> None:
    print()
    for r in res.ratios:
        print(f"ratio {r.ratio:g}: study {r.study}, {r.trials_complete} complete trial(s); best "
              f"trial {r.best_trial} val Dice {r.best_val:.4f}, test Dice "
              f"{100 * float(r.test.get('dice_mean', math.nan)):.2f} ± "
              f"{100 * float(r.test.get('dice_std', math.nan)):.2f} % -> "
              f"{res.registered_model} version {r.model_version}")
    print()
    print(res.table_markdown)
    if res.decision:
        print(res.decision)
    print(f"table: {res.files['markdown']}, {res.files['csv']}, {res.files['plot']}")
    print(f"MLflow:  mlflow ui --backend-store-uri {res.tracking_uri}")
    print(f"Optuna:  optuna-dashboard {res.study_url}")
    print(f"Serve:   MLFLOW_TRACKING_URI={res.tracking_uri} mlflow models serve "
          f"-m models:/{res.registered_model}@champion --env-manager local -p 5001 -h 127.0.0.1")


# -- command line -------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python tune/search.py", description=__doc__.splitlines()[0])
    # default None everywhere: only given flags override --config and SearchConfig's defaults
    p.add_argument("--config", help="YAML file with any of these options (SearchConfig fields)")
    p.add_argument("--data", help="store path or URL (default: a synthetic demo store)")
    p.add_argument("--workdir", help="demo data, results, default databases (default fpn-search)")
    p.add_argument("--task", help="names the registered model <task>-<model> (default ga)")
    p.add_argument("--model", help="network name (default fpn)")
    p.add_argument("--ssl", choices=["inverted_faf", "faf", "slo", "none"],
                   help="pretraining target, or none (default inverted_faf)")
    p.add_argument("--pretrained", help="pretrained checkpoint, run dir or models:/... "
                   "(skips pretraining)")
    p.add_argument("--ratios", type=float, nargs="+", help="labelled-data ratios (default 0.1 1.0)")
    p.add_argument("--trials", type=int, help="trials per ratio")
    p.add_argument("--max-concurrent", type=int, help="concurrent trials (default: what fits)")
    p.add_argument("--workers-per-trial", type=int, help="Ray Train workers per trial")
    p.add_argument("--gpus-per-worker", type=float)
    p.add_argument("--cpus-per-worker", type=float)
    p.add_argument("--epochs", type=int, help="fine-tuning epochs per trial (ASHA's max_t)")
    p.add_argument("--pretrain-epochs", type=int)
    p.add_argument("--grace-period", type=int, help="ASHA: epochs before a trial may be stopped "
                   "(default: half of --epochs)")
    p.add_argument("--min-crops-per-epoch", type=int,
                   help="raise crops per visit at scarce ratios (default 48 for the demo)")
    p.add_argument("--space", help="YAML search space (default tune/default_space.yaml)")
    p.add_argument("--storage", help="Ray storage path or URL (default WORKDIR/ray)")
    p.add_argument("--mlflow", help="MLflow tracking URI (default sqlite:///WORKDIR/mlflow.db)")
    p.add_argument("--study-db", help="Optuna storage URL (default sqlite:///WORKDIR/optuna.db)")
    p.add_argument("--experiment", help="MLflow experiment (default fpn-search)")
    p.add_argument("--seed", type=int)
    p.add_argument("--num-cpus", type=int, help="CPUs of the local Ray instance")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="TrainConfig override for every run, e.g. data.crop=[32,256]")
    p.add_argument("--no-promote", action="store_true", default=None)
    return p


def config_from_args(args: argparse.Namespace) -> SearchConfig:
    import yaml

    given = {k: v for k, v in vars(args).items()
             if k not in ("config", "set", "no_promote") and v is not None}
    if args.no_promote:
        given["promote"] = False
    if args.set:
        train: dict[str, Any] = {}
        for item in args.set:
            key, sep, value = item.partition("=")
            if not sep:
                raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
            train[key] = yaml.safe_load(value)
        given["train"] = train
    return load_search_config(args.config, given)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = config_from_args(args)
        print_result(run_search(cfg))
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
