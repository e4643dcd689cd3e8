"""``paper-table``: every (network, pretraining, ratio, seed) of the poster, on Ray, as one table.

Plan: one pretraining per (network, SSL target), then one fine-tuning per (network, pretraining
or none, ratio, seed), each a :func:`fpn.training.driver.run_training` call with the preset's
fixed recipe. Each call runs in its own Ray task (a driver holding
:func:`tune.core.driver_resources`), its Train workers in their own placement group; as many run
at once as :func:`tune.core.plan_resources` fits on the cluster's CPUs (or GPUs), and a
fine-tuning from a pretraining starts once that pretraining has finished. Each fine-tuned k-best
ensemble is then evaluated on the test split, in the same task (:func:`tune.core.evaluate_run`).

Run names are deterministic (``pt-<preset>-<store fingerprint>-<model>-<ssl>-r<ratio>-s<seed>``;
``...-pretrain-<model>-<target>``), so running the command again trains only what is missing
(``run_training`` returns a finished run's outcome at once) and evaluates only what has no
``evaluations/<run>/evaluation.json`` yet (:func:`tune.core.evaluate_run`, shared with the
search). A finished run is known by its name *and* its recorded config: one that trained with
another recipe (say an IPN under SGD before the ``paper`` preset gave it Adam) is refused before
anything trains (:func:`recipe_mismatch`), never silently reused.

Recipes: the preset's (``paper``: ``faithful``; ``quick``: ``quick``), then the preset's
per-network overrides (``paper``: Li et al.'s Adam for ``ipn`` / ``ipnv2``,
:data:`tune.presets.AUTHORS_OPTIMISER`), then the caller's ``--set``.

Statistics at the patient level (:mod:`tune.results`, :mod:`fpn.stats`): a cell is the mean over
test patients of each patient's value (its mean over its visits, averaged over the seeds), with
a bootstrap interval over patients and the spread between the seeds' means beside it; each row
is compared with the column's best row by the paired test over patients (seed ``s`` with seed
``s``), Holm-corrected over the table. Seed ``s`` sets both the training seed and the
labelled-subset seed (so seeds also vary which patients are labelled; every method sees the same
subsets, which is what makes the pairs fair). Pretrainings use seed 0.

Outputs in OUT: ``paper_table.md`` (Dice, HD95 and GA-area error tables), ``paper_table.csv``
(every cell with its p-value), ``per_visit.csv`` (every run's test visits), ``dice_vs_ratio.png``,
all also logged to one MLflow parent run (``paper-table-<preset>-<fingerprint>``) whose children
are the training runs.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fpn import tags as T
from fpn.config import SSL_TARGETS, TrainConfig, build_train_config
from fpn.stats import visit_patients
from fpn.storage import join_location, write_atomic
from tune.console import (
    close_progress_bar,
    log_folder,
    progress_bar,
    quiet_logging,
    say,
    step_progress_bar,
)
from tune.core import (
    DRIVER_CPU,
    MATCHED,
    Job,
    cluster_capacity,
    compute_matched_config,
    finished_run,
    make_synthetic_store,
    plan_resources,
    row_label,
    run_jobs,
)
from tune.presets import PAPER_PRESETS, PaperPreset
from tune.results import (
    Cell,
    build_seed_cells,
    cells_csv,
    comparisons_markdown,
    plot_cells,
    seed_table_markdown,
    table_markdown,
)

__all__ = [
    "DRIVER_CPU",
    "EXPERIMENT",
    "Job",
    "PaperTableResult",
    "PlannedRun",
    "job_config",
    "plan_cost",
    "plan_jobs",
    "plan_markdown",
    "plan_paper_table",
    "recipe_mismatch",
    "run_paper_table",
    "seed_values",
    "with_matched_jobs",
]

EXPERIMENT = "fpn-paper-table"
#: networks whose constructor needs the store's depth D
DEPTH_MODELS = ("resensnet", "ipn", "ipnv2")
#: (metric key, table title, scale, higher is better)
METRICS = (("dice", "Dice (%)", 100.0, True), ("hd95", "HD95 (mm)", 1.0, False),
           ("area_error_mm2", "GA-area error (mm²)", 1.0, False))


def _log(msg: str) -> None:
    say(f"[paper-table] {msg}")


@dataclass
class PaperTableResult:
    """What a ``paper-table`` run produced."""

    out: Path
    parent_run_id: str
    cells: dict[str, list[Cell]]
    markdown: str
    failed: dict[str, str] = field(default_factory=dict)
    trained: list[str] = field(default_factory=list)


def job_config(preset: PaperPreset, model: str, *, shared: Mapping[str, Any],
               overrides: Mapping[str, Any], job: Mapping[str, Any]) -> TrainConfig:
    """One run's config (:func:`fpn.config.build_train_config`): the preset's recipe, its
    per-network values for ``model``, what every run of the grid shares (store, storage,
    tracking, workers), the caller's ``--set`` (which wins for every network), then the job's
    own task, network, target, ratio, seed, name and ``init``."""
    return build_train_config(preset.recipe, preset.per_model.get(model), shared, overrides,
                              job, where=f"preset {preset.name!r}, {model}")


def plan_jobs(preset: PaperPreset, *, shared: Mapping[str, Any], overrides: Mapping[str, Any],
              prefix: str, models: Sequence[str], ssl: Sequence[str], ratios: Sequence[float],
              seeds: int, depth: int) -> list[Job]:
    """Pretrainings first (one per model and target), then every fine-tuning, ratio by ratio
    (ascending as given), so that the cheap, label-scarce columns finish first.

    Args:
        preset: the recipe and per-network values.
        shared: dotted values every run shares (``data.store``, ``storage``, ``mlflow``, ...).
        overrides: the caller's ``--set``.
        prefix: run name prefix (``pt-<preset>-<fingerprint8>``).
        depth: the store's D, for the networks that need it at construction.
    """
    def config(*, task: str, model: str, target: str, ratio: float, seed: int, name: str,
               init: str | None) -> TrainConfig:
        job = {"task": task, "model.name": model, "data.target": target, "data.ratio": ratio,
               "data.subset_seed": seed, "seed": seed, "run_name": name, "init": init}
        if model in DEPTH_MODELS:
            job["model.kwargs.depth"] = depth
        return job_config(preset, model, shared=shared, overrides=overrides, job=job)

    storage = str(shared["storage"])
    jobs: list[Job] = []
    for model in models:
        for target in ssl:
            if target == "none":
                continue
            name = f"{prefix}-pretrain-{model}-{target}"
            jobs.append(Job(name, config(task="pretrain", model=model, target=target, ratio=1.0,
                                         seed=0, name=name, init=None),
                            model=model, ssl=target))
    # ratio by ratio, smallest (cheapest) first: an interrupted grid leaves whole columns
    for ratio in ratios:
        for model in models:
            for target in ssl:
                pre = None if target == "none" else f"{prefix}-pretrain-{model}-{target}"
                init = None if pre is None else join_location(storage, pre)
                for seed in range(seeds):
                    name = f"{prefix}-{model}-{target}-r{ratio:g}-s{seed}"
                    jobs.append(Job(name, config(task="finetune", model=model, target="mask",
                                                 ratio=ratio, seed=seed, name=name, init=init),
                                    after=pre, evaluate=True, model=model, ssl=target,
                                    ratio=ratio, seed=seed))
    return jobs


def _grid_jobs(preset: PaperPreset, *, shared: Mapping[str, Any], overrides: Mapping[str, Any],
               store: Any, models: Sequence[str], ssl: Sequence[str], ratios: Sequence[float],
               seeds: int) -> list[Job]:
    """The grid's jobs for an open store. Run names depend only on the preset, the store and the
    grid, so ``--plan`` and the run name (and find finished) the same runs; a finished run is
    reused only when it trained with the same recipe (:func:`recipe_mismatch`)."""
    prefix = f"pt-{preset.name}-{store.fingerprint[:8]}"
    jobs = plan_jobs(preset, shared=shared, overrides=overrides, prefix=prefix, models=models,
                     ssl=ssl, ratios=ratios, seeds=seeds, depth=store.visits_for()[0].shape[1])
    return with_matched_jobs(jobs, store, prefix=prefix) if preset.compute_matched else jobs


def with_matched_jobs(jobs: list[Job], store: Any, *, prefix: str) -> list[Job]:
    """``jobs`` with, after each ratio's runs, the from-scratch control of every network that
    has both a scratch row and a pretraining: trained for the pretraining's steps plus the
    fine-tuning's (:func:`tune.core.compute_matched_config`), one per seed, the row
    ``<network> (scratch, matched steps)``."""
    pretrainings = {j.model: j for j in jobs if j.config.task == "pretrain"}
    out: list[Job] = []
    for i, job in enumerate(jobs):
        out.append(job)
        ends_ratio = i + 1 == len(jobs) or jobs[i + 1].ratio != job.ratio
        if not ends_ratio or job.config.task == "pretrain":
            continue
        for scratch in [j for j in jobs if j.ratio == job.ratio and j.ssl == "none"
                        and j.config.task == "finetune" and j.model in pretrainings]:
            name = f"{prefix}-{scratch.model}-{MATCHED}-r{scratch.ratio:g}-s{scratch.seed}"
            config = compute_matched_config(scratch.config, pretrainings[scratch.model].config,
                                            store).with_overrides({"run_name": name})
            out.append(Job(name, config, evaluate=True, model=scratch.model, ssl=MATCHED,
                           ratio=scratch.ratio, seed=scratch.seed))
    return out


def recipe_mismatch(recorded: Mapping[str, Any], wanted: TrainConfig) -> list[str]:
    """The training-relevant keys on which a finished run's recorded config differs from the
    wanted one, as ``key: recorded -> wanted`` (:func:`fpn.training.identity.config_differences`,
    the test that identifies every run). The pretraining a fine-tuning starts from is known by
    its run name, so ``init`` (its location) is not compared."""
    from fpn.training.identity import config_differences

    return [d for d in config_differences(dict(recorded), wanted.model_dump(mode="json"))
            if not d.startswith("init:")]


# -- what the grid costs, before anything runs --------------------------------------------------

@dataclass(frozen=True)
class PlannedRun:
    """One run of the grid with the work it will do (``--plan``)."""

    name: str
    task: str
    target: str
    method: str
    ratio: float
    seed: int
    train_visits: int
    val_visits: int
    epochs: int
    crops: int  #: training crops over all epochs (fpn.training.budget.crops_per_epoch x epochs)
    finished: bool


def plan_cost(jobs: Sequence[Job], store: Any, *, storage: str) -> list[PlannedRun]:
    """The training visits, validation visits and training crops of every job.

    The counts come from the same :func:`fpn.data.splits.plan_visits` the workers call, so they
    are what the runs will see.
    """
    from fpn.data.splits import plan_visits
    from fpn.training.budget import crops_per_epoch

    rows = []
    for job in jobs:
        cfg = job.config
        vp = plan_visits(store, cfg.data.target, cfg.data.ratio, cfg.data.subset_seed)
        crops = cfg.epochs * crops_per_epoch(cfg, len(vp.train_keys), cfg.workers)
        rows.append(PlannedRun(job.name, cfg.task, cfg.data.target, row_label(job.model, job.ssl),
                               job.ratio, job.seed, len(vp.train_keys), len(vp.val_keys),
                               cfg.epochs, crops, _finished(storage, job.name)))
    return rows


def plan_markdown(rows: Sequence[PlannedRun], *, crop: Sequence[int], concurrency: int = 1,
                  crops_per_second: float | None = None) -> str:
    """Runs and crops per pretraining target and per ratio, the totals and, given a throughput,
    the time it takes.

    Args:
        crop: the training crop (S, W), named in the text.
        concurrency: runs at once, for the wall-time estimate.
        crops_per_second: training crops per second of one run on the target hardware; None
            leaves the time out. Validation (every validation volume once per epoch) and
            evaluation are not in the estimate.
    """
    groups: dict[tuple[str, str], list[PlannedRun]] = {}
    for r in rows:
        what = r.target if r.task == "pretrain" else f"ratio {r.ratio:g}"
        groups.setdefault((r.task, what), []).append(r)
    lines = [("| task | target / ratio | runs | finished | epochs | training visits per run | "
              "training crops |"), "|---|---|---:|---:|---:|---|---:|"]
    for (task, what), rs in groups.items():
        low, high = min(r.train_visits for r in rs), max(r.train_visits for r in rs)
        lines.append(f"| {task} | {what} | {len(rs)} | {sum(r.finished for r in rs)} | "
                     f"{rs[0].epochs} | {low if low == high else f'{low}-{high}'} | "
                     f"{sum(r.crops for r in rs):,} |")
    todo = [r for r in rows if not r.finished]
    crops = sum(r.crops for r in todo)
    val = sum(r.epochs * r.val_visits for r in todo)
    lines += ["", (f"{len(rows)} runs ({len(rows) - len(todo)} finished); still to train: "
                   f"{len(todo)} runs, {crops:,} training crops of {crop[0]} x D x {crop[1]}, "
                   f"{val:,} validation volume passes.")]
    if crops_per_second:
        hours = crops / crops_per_second / 3600
        lines.append(f"At {crops_per_second:g} training crops/s per run: {hours:.1f} run-hours of "
                     f"training, about {hours / max(1, concurrency):.1f} h wall time with "
                     f"{concurrency} run(s) at once (validation, evaluation and start-up not "
                     "counted; a fine-tuning waits for its pretraining).")
    return "\n".join(lines)


# -- tables ----------------------------------------------------------------------------------

def seed_values(jobs: Sequence[Job], done: dict[str, dict],
                metric: str) -> dict[str, dict[float, dict[int, dict[str, float]]]]:
    """``{row: {ratio: {seed: {visit: value}}}}`` of one per-visit metric: every seed's model
    kept apart (:func:`tune.results.build_seed_cells` takes each one's mean and std)."""
    out: dict[str, dict[float, dict[int, dict[str, float]]]] = {}
    for job in jobs:
        if not job.evaluate or job.name not in done:
            continue
        visits = (out.setdefault(row_label(job.model, job.ssl), {}).setdefault(job.ratio, {})
                  .setdefault(job.seed, {}))
        for rec in done[job.name]["records"]:
            value = rec.get(metric)
            visits[rec["visit"]] = float(value) if value is not None else math.nan
    return out


def _per_visit_csv(jobs: Sequence[Job], done: dict[str, dict]) -> str:
    buf = io.StringIO()
    cols = ["method", "model", "ssl", "ratio", "seed", "run", "visit", "patient_id", "dice", "hd95",
            "area_pred_mm2", "area_true_mm2", "area_error_mm2"]
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
    w.writeheader()
    for job in jobs:
        if job.evaluate and job.name in done:
            for rec in done[job.name]["records"]:
                w.writerow({**rec, "method": row_label(job.model, job.ssl), "model": job.model,
                            "ssl": job.ssl, "ratio": f"{job.ratio:g}", "seed": job.seed,
                            "run": job.name})
    return buf.getvalue()


def _report(preset: str, seeds: int, cells: dict[str, list[Cell]], failed: dict[str, str]) -> str:
    legend = (f"Each of the {seeds} seed(s) trains every method on the same labelled patients "
              "(seed s also picks which ones); each model is its k-best ensemble. The unit is "
              "the test patient: the notes under each table say how cells, intervals and tests "
              "are computed and on how many patients and visits they rest.")
    lines = [f"# Test results, preset `{preset}`", "", legend, ""]
    for key, title, scale, _ in METRICS:
        lines += [f"## {title}", "", table_markdown(cells[key], title="Method", scale=scale)]
    lines += ["## Comparisons (Dice, %)", "", comparisons_markdown(cells["dice"], scale=100.0),
              "## Dice (%) of each seed's model", "",
              seed_table_markdown(cells["dice"], title="Method", scale=100.0)]
    if failed:
        lines += ["## Failed runs", ""] + [f"- `{k}`: {v}" for k, v in failed.items()] + [""]
    return "\n".join(lines)


# -- the command -----------------------------------------------------------------------------

def _make_demo_store(out: Path, preset: PaperPreset) -> str:
    """The preset's synthetic store in ``OUT/data`` (made once)."""
    return make_synthetic_store(out / "data", preset.store, log=_log)


def _shared(store: str, *, storage: str, tracking_uri: str, experiment: str, workers: int,
            gpus_per_worker: float, cpus_per_worker: float) -> dict[str, Any]:
    """What every run of the grid shares: where the data, the runs and the tracking are, and
    the resources of its Train workers."""
    return {"data.store": store, "storage": storage, "mlflow": tracking_uri,
            "experiment": experiment, "workers": workers, "gpus_per_worker": gpus_per_worker,
            "cpus_per_worker": cpus_per_worker,
            "threads_per_worker": max(1, int(cpus_per_worker))}


def _check_grid(models: Sequence[str], ssl: Sequence[str], ratios: Sequence[float],
                seeds: int) -> None:
    from fpn.models import list_models

    unknown = [m for m in models if m not in list_models()]
    if unknown:
        raise ValueError(f"unknown model(s) {unknown}; expected some of {list_models()}")
    bad = [s for s in ssl if s != "none" and s not in SSL_TARGETS]
    if bad:
        raise ValueError(f"unknown pretraining(s) {bad}; expected some of {('none', *SSL_TARGETS)}")
    if not models or not ssl or not ratios:
        raise ValueError("--models, --ssl and --ratios must each name at least one value")
    if any(not 0 < r <= 1 for r in ratios):
        raise ValueError(f"ratios must be in (0, 1], got {list(ratios)}")
    if seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {seeds}")


def _resolve_grid(preset: str, models: Sequence[str] | None, ssl: Sequence[str] | None,
                  ratios: Sequence[float] | None, seeds: int | None, workers: int,
                  ) -> tuple[PaperPreset, list[str], list[str], list[float], int]:
    """The preset and the grid, the preset's defaults filling what is not given; checked."""
    if preset not in PAPER_PRESETS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {sorted(PAPER_PRESETS)}")
    chosen = PAPER_PRESETS[preset]
    models = list(models or chosen.models)
    ssl = list(ssl or chosen.ssl)
    ratios = sorted(float(r) for r in (ratios or chosen.ratios))
    seeds = int(seeds if seeds is not None else chosen.seeds)
    _check_grid(models, ssl, ratios, seeds)
    if workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    return chosen, models, ssl, ratios, seeds


def plan_paper_table(*, out: str | Path, store: str | None = None, preset: str = "quick",
                     models: Sequence[str] | None = None, ssl: Sequence[str] | None = None,
                     ratios: Sequence[float] | None = None, seeds: int | None = None,
                     workers: int = 1, overrides: dict[str, Any] | None = None,
                     max_concurrent: int | None = None,
                     crops_per_second: float | None = None) -> str:
    """What :func:`run_paper_table` would train, and what it costs; starts nothing.

    Same grid arguments as :func:`run_paper_table`; ``max_concurrent`` (default 1) and
    ``crops_per_second`` only feed the time estimate. Without ``store`` it makes (or reuses)
    the synthetic demo store in OUT, as the real run would.

    Returns:
        The plan as Markdown (also printed).
    """
    from fpn.data.store import open_store

    chosen, models, ssl, ratios, seeds = _resolve_grid(preset, models, ssl, ratios, seeds,
                                                       workers)
    if crops_per_second is not None and not crops_per_second > 0:
        raise ValueError(f"--crops-per-second must be > 0, got {crops_per_second}")
    if store is not None:
        opened = open_store(store)
    else:
        out = Path(out).resolve()
        out.mkdir(parents=True, exist_ok=True)
        store = _make_demo_store(out, chosen)
        opened = open_store(store)
    storage = str(Path(out).resolve() / "runs")
    shared = _shared(store, storage=storage, tracking_uri="sqlite:///unused.db",
                     experiment=EXPERIMENT, workers=workers, gpus_per_worker=0.0,
                     cpus_per_worker=1.0)
    jobs = _grid_jobs(chosen, shared=shared, overrides=dict(overrides or {}), store=opened,
                      models=models, ssl=ssl, ratios=ratios, seeds=seeds)
    rows = plan_cost(jobs, opened, storage=storage)
    crop = jobs[0].config.data.crop
    text = (f"# paper-table plan, preset `{preset}`, store {store}\n\n"
            + plan_markdown(rows, crop=crop, concurrency=max_concurrent or 1,
                            crops_per_second=crops_per_second))
    print(text, flush=True)
    return text


def run_paper_table(*, out: str | Path, store: str | None = None, preset: str = "quick",
                    models: Sequence[str] | None = None, ssl: Sequence[str] | None = None,
                    ratios: Sequence[float] | None = None, seeds: int | None = None,
                    workers: int = 1, gpus_per_worker: float = 0.0,
                    mlflow: str | None = None, experiment: str = EXPERIMENT,
                    overrides: dict[str, Any] | None = None, max_concurrent: int | None = None,
                    num_cpus: int | None = None, verbose: bool = False) -> PaperTableResult:
    """Train, evaluate and tabulate the grid; see the module docstring.

    Args:
        out: folder for the runs, evaluations, tables, plot (and the store and MLflow database
            when not given).
        store: the fpn store; None makes the preset's synthetic store in OUT.
        preset: ``quick`` or ``paper`` (:data:`tune.presets.PAPER_PRESETS`).
        models, ssl, ratios, seeds: the grid; None takes the preset's default.
        workers: Ray Train workers of each run.
        gpus_per_worker: GPUs of each Train worker (0 on CPU).
        mlflow: tracking URI (default ``sqlite:///OUT/mlflow.db``).
        overrides: dotted TrainConfig values applied after the preset's (tests, experiments).
        max_concurrent: at most this many runs at once (default: what the cluster fits).
        num_cpus: CPUs of the local Ray started when none is running.
        verbose: the Train workers' epoch lines and Ray's logging on the console (default: a
            line per run and a progress bar; the rest in Ray's log files).

    Returns:
        The cells of each metric's table, the Markdown report, the parent MLflow run and the
        failed runs (a failed run leaves its cells empty; the others go on).
    """

    from fpn.data.store import open_store
    from fpn.tracking import client_for, ensure_experiment, find_or_create_run
    from fpn.training.ray_connect import connect_ray

    chosen, models, ssl, ratios, seeds = _resolve_grid(preset, models, ssl, ratios, seeds,
                                                       workers)
    if store is not None:
        open_store(store)  # a bad store fails here, with its name, before OUT is made
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if not verbose:
        quiet_logging()
    connect_ray(num_cpus=num_cpus, log_to_driver=verbose,
                logging_level=logging.INFO if verbose else logging.WARNING)
    store_path = store if store is not None else _make_demo_store(out, chosen)
    opened = open_store(store_path)
    uri = mlflow or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{out / 'mlflow.db'}"
    cpus, gpus = cluster_capacity()
    plan = plan_resources(cpus, gpus, workers=workers, gpus_per_worker=gpus_per_worker,
                          max_concurrent=max_concurrent)
    conc, cpw = plan.concurrency, plan.cpus_per_worker
    storage = str(out / "runs")
    shared = _shared(store_path, storage=storage, tracking_uri=uri, experiment=experiment,
                     workers=workers, gpus_per_worker=gpus_per_worker, cpus_per_worker=cpw)
    jobs = _grid_jobs(chosen, shared=shared, overrides=dict(overrides or {}), store=opened,
                      models=models, ssl=ssl, ratios=ratios, seeds=seeds)
    _check_reuse(jobs, storage)

    client = client_for(uri)
    exp_id = ensure_experiment(client, experiment, uri)
    grid_tags = {T.ROLE: "paper-table", T.PRESET: preset,
                 T.STORE: store_path, T.STORE_FINGERPRINT: opened.fingerprint,
                 T.MODELS: ",".join(models), T.SSL: ",".join(ssl),
                 T.RATIOS: ",".join(f"{r:g}" for r in ratios), T.SEEDS: str(seeds)}
    parent_id, resumed = find_or_create_run(client, exp_id, f"paper-table-{preset}-"
                                            f"{opened.fingerprint[:8]}", grid_tags)
    for k, v in grid_tags.items():
        client.set_tag(parent_id, k, v)
    if resumed:
        client.update_run(parent_id, status="RUNNING")
    finished_before = {j.name for j in jobs if _finished(storage, j.name)}
    _log(f"{len(jobs)} runs ({len(finished_before)} already finished), {conc} at a time, "
         f"{cpw:g} CPU per Train worker; MLflow {uri}, parent run {parent_id}")

    if not verbose:
        _log(f"the runs' and Ray's logs: {log_folder()} (--verbose: on the console)")
    progress_bar(len(jobs) - len(finished_before), desc="runs")
    try:
        done, failed = run_jobs(jobs, concurrency=conc, parent_run_id=parent_id,
                                eval_dir=out / "evaluations", tags={T.PAPER_TABLE: preset},
                                log=_log, on_end=step_progress_bar)
    finally:
        close_progress_bar()

    patients = visit_patients([rec for j in jobs if j.evaluate and j.name in done
                               for rec in done[j.name]["records"]])
    cells = {key: build_seed_cells(seed_values(jobs, done, key), patients,
                                   higher_is_better=better)
             for key, _, _, better in METRICS}
    markdown = _report(preset, seeds, cells, failed)
    write_atomic(out / "paper_table.md", markdown)
    write_atomic(out / "paper_table.csv", cells_csv(cells))
    write_atomic(out / "per_visit.csv", _per_visit_csv(jobs, done))
    artifacts = [out / "paper_table.md", out / "paper_table.csv", out / "per_visit.csv"]
    if cells["dice"]:
        artifacts.append(plot_cells(cells["dice"], out / "dice_vs_ratio.png"))
    for path in artifacts:
        client.log_artifact(parent_id, str(path))
    client.set_tag(parent_id, T.FAILED_RUNS, str(len(failed)))
    client.set_terminated(parent_id, status="FAILED" if failed else "FINISHED")
    print(markdown, flush=True)
    _log(f"tables in {out / 'paper_table.md'}; MLflow parent run {parent_id}")
    return PaperTableResult(out=out, parent_run_id=parent_id, cells=cells, markdown=markdown,
                            failed=failed,
                            trained=[n for n in done if n not in finished_before])


def _finished(storage: str, name: str) -> bool:
    return finished_run(storage, name) is not None


def _check_reuse(jobs: Sequence[Job], storage: str) -> None:
    """Refuse, before anything trains, to reuse a finished run trained with another recipe
    (e.g. an IPN trained under SGD before the preset gave it Adam)."""
    for job in jobs:
        record = finished_run(storage, job.name)
        if record is None or not record.config:
            continue
        diff = recipe_mismatch(record.config, job.config)
        if diff:
            more = f" (and {len(diff) - 2} more)" if len(diff) > 2 else ""
            raise ValueError(f"{join_location(storage, job.name)}: finished with another recipe "
                             f"({'; '.join(diff[:2])}{more}); move it away or use another --out")
