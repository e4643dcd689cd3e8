"""Search efficiency: ASHA + TPE against FIFO + random search on the same budget.

Both strategies get the same store, search space (``tune/default_space.yaml`` or ``--space``),
maximum epochs per trial, concurrency, seed and budget of trial-epochs: FIFO + random runs
``--trials`` trials to the end, and what that spends is the budget. ASHA + TPE is given more
trials (``--asha-trials``, default 3x) and its reports, in the order they arrived, are cut at
the budget: exactly what it would have done had it been stopped there, since every decision
before that point depended only on earlier reports. Each trial is
:func:`tune.trial.train_trial` (a Ray Train run of ``run_training`` reporting every epoch to Tune
through ``TuneReportCallback``; ASHA's stops go through ``tune.pruning``'s StopBoard so that the
Train run shuts its workers down itself). The search space is sampled by Optuna in both cases
(``TPESampler`` vs ``RandomSampler``), so only the sampler and the scheduler differ.

Reported: the trials each strategy started within the budget, the best validation Dice it
reached, and the trial-epochs it needed (counting every epoch reported by any of its trials, in
time order) to first reach the best validation Dice of FIFO + random, and to come within one
Dice point of it. ``--fifo-from`` reuses the FIFO + random reports of an earlier run with the
same settings.

Usage::

    python benchmarks/search_efficiency.py --smoke                  # < 3 min on 2 cores
    python benchmarks/search_efficiency.py                          # the demo store at ratio 0.25

Without ``--data`` it makes a synthetic store in the work folder (the demo's 12 + 4 patients at
16 x 64 x 128, or a 4 + 2 patient 8 x 64 x 32 store with ``--smoke``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from fpn import tags as T
from fpn.storage import write_atomic

__all__ = ["epochs_to_reach", "main", "run_strategy"]

METRIC = T.VAL_SCORE
NEAR = 0.01  # "as good in practice": within one Dice point of the FIFO best


def _make_store(work: Path, smoke: bool) -> str:
    from data_prep.convert import convert
    from data_prep.synthetic import make_synthetic_dataset

    store = work / "store.zarr"
    if store.exists():
        return str(store)
    shape, patients, unlabelled, visits = (((8, 64, 32), 4, 2, 2) if smoke
                                           else ((16, 64, 128), 12, 4, 3))
    make_synthetic_dataset(work / "source", patients=patients, unlabelled=unlabelled,
                           shape=shape, visits=visits, seed=0)
    stats = convert(str(work / "source"), str(store), progress=False)
    if not stats.ok:
        raise RuntimeError(f"{store}: conversion failed: {stats.summary_line()}")
    return str(store)


def _base_config(store: str, work: Path, args: argparse.Namespace,
                 cpus_per_worker: float) -> Any:
    from fpn.config import build_train_config

    return build_train_config("reference", {
        "task": "finetune", "data.store": store, "data.ratio": args.ratio,
        "data.crop": list(args.crop), "data.multiplier": args.multiplier,
        "data.loader_workers": 0, "model.name": "fpn", "optim.name": "sgd",
        "epochs": args.epochs, "batch_size": args.batch_size, "keep_best": 1,
        "overlay_every": 0, "log_model": False, "max_failures": 0, "workers": 1,
        "cpus_per_worker": cpus_per_worker, "threads_per_worker": 1,
        "storage": str(work / "runs"), "mlflow": f"sqlite:///{work / 'mlflow.db'}",
        "experiment": "search-efficiency", "seed": args.seed})


def _space(args: argparse.Namespace) -> Any:
    from tune.presets import SEARCH_PRESETS
    from tune.spaces import SearchSpace, load_space

    space = load_space(args.space or SEARCH_PRESETS["real"].space)
    if args.smoke:  # the tiniest networks only
        params = dict(space.params)
        params.pop("model.kwargs.width", None)
        return SearchSpace(params=params, fixed={**space.fixed, "model.kwargs.width": 0.25})
    return space


def run_strategy(strategy: str, *, base: Any, space: Any, trials: int, epochs: int,
                 concurrency: int, seed: int, storage: Path,
                 grace_period: int = 1) -> list[dict[str, Any]]:
    """Run one search; return every per-epoch report ``{trial, epoch, val_score, timestamp}``.

    Args:
        strategy: ``asha_tpe`` or ``fifo_random``.
        grace_period: ASHA's epochs before a trial may be stopped (``asha_tpe`` only).
    """
    import optuna
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler
    from ray.tune.search.optuna import OptunaSearch

    from fpn.tracking import client_for, ensure_experiment, find_or_create_run
    from tune.core import driver_resources
    from tune.pruning import CooperativeASHA, stop_board
    from tune.trial import FINAL, TrialSpec, train_trial

    study = f"effbench-{strategy}-{int(time.time())}"
    uri = base.tracking_uri()
    client = client_for(uri)
    exp = ensure_experiment(client, base.experiment, uri)
    parent, _ = find_or_create_run(client, exp, study, {T.BENCHMARK: "search_efficiency"})
    if strategy == "asha_tpe":
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(1, trials // 4))
        # as tune/search.py: never decide at the last epoch, so a trial reaching it finishes
        scheduler = (CooperativeASHA(study, time_attr="training_iteration", max_t=epochs - 1,
                                     grace_period=min(grace_period, epochs - 1),
                                     reduction_factor=2, stop_last_trials=False)
                     if epochs >= 2 else FIFOScheduler())
    elif strategy == "fifo_random":
        sampler = optuna.samplers.RandomSampler(seed=seed)
        scheduler = FIFOScheduler()
    else:
        raise ValueError(f"unknown strategy {strategy!r}")
    searcher = OptunaSearch(space=space, metric=METRIC, mode="max", sampler=sampler, seed=seed)
    spec = TrialSpec(base=base, study=study, parent_run_id=parent,
                     tags={T.BENCHMARK_STRATEGY: strategy})
    trainable = tune.with_resources(tune.with_parameters(train_trial, spec=spec),
                                    driver_resources())
    board = stop_board(study)  # alive for the whole search
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(metric=METRIC, mode="max", search_alg=searcher,
                                    scheduler=scheduler, num_samples=trials,
                                    max_concurrent_trials=concurrency),
        run_config=tune.RunConfig(name=study, storage_path=str(storage), verbose=0),
    )
    grid = tuner.fit()
    del board
    client.set_terminated(parent)
    reports: list[dict[str, Any]] = []
    for i, result in enumerate(grid):
        df = result.metrics_dataframe
        if df is None or METRIC not in df:
            continue
        for _, row in df.iterrows():
            if row.get(FINAL) == 1.0:  # train_trial's closing summary, not an epoch
                continue
            reports.append({"trial": i, "epoch": int(row["training_iteration"]),
                            METRIC: float(row[METRIC]), "timestamp": float(row["timestamp"])})
    return reports


def epochs_to_reach(reports: list[dict[str, Any]], target: float) -> int | None:
    """Trial-epochs spent (all trials, in report order) until a report first reaches ``target``."""
    ordered = sorted(reports, key=lambda r: (r["timestamp"], r["trial"], r["epoch"]))
    for spent, rep in enumerate(ordered, start=1):
        if rep[METRIC] >= target - 1e-12:
            return spent
    return None


def within_budget(reports: list[dict[str, Any]], budget: int) -> list[dict[str, Any]]:
    """The first ``budget`` reports in the order they arrived."""
    return sorted(reports, key=lambda r: (r["timestamp"], r["trial"], r["epoch"]))[:budget]


def rank_agreement(reports: list[dict[str, Any]], epochs: int) -> dict[int, float]:
    """Spearman correlation, over the trials that ran every epoch, between each epoch's
    validation Dice and the last epoch's: how well an early rung ranks trials."""
    from scipy.stats import spearmanr

    by_trial: dict[int, dict[int, float]] = {}
    for r in reports:
        by_trial.setdefault(r["trial"], {})[r["epoch"]] = r[METRIC]
    full = [t for t in by_trial.values() if all(e in t for e in range(1, epochs + 1))]
    if len(full) < 3:
        return {}
    last = [t[epochs] for t in full]
    return {e: float(spearmanr([t[e] for t in full], last).statistic)
            for e in range(1, epochs)}


def _details(results: dict[str, list[dict[str, Any]]], epochs: int) -> str:
    lines = []
    agree = rank_agreement(results["fifo_random"], epochs)
    if agree:
        lines.append("rank agreement with the last epoch (Spearman, FIFO's trials), by epoch: "
                     + ", ".join(f"{e}: {rho:.2f}" for e, rho in agree.items()))
    for name, reps in results.items():
        by_trial: dict[int, list[dict[str, Any]]] = {}
        for r in reps:
            by_trial.setdefault(r["trial"], []).append(r)
        full = sorted(max(x[METRIC] for x in v) for v in by_trial.values()
                      if len(v) >= epochs)
        if full:
            lines.append(f"{name}: {len(full)} trial(s) ran all {epochs} epochs; their best val "
                         f"Dice: median {full[len(full) // 2]:.4f}, min {full[0]:.4f}")
    return "\n".join(lines)


def _table(results: dict[str, list[dict[str, Any]]], target: float,
           margin: float = NEAR) -> str:
    """One row per strategy; the last two columns count trial-epochs to reach the FIFO best and
    to come within ``margin`` of it (the best is a maximum over noisy epochs; the margin
    column says how soon a strategy is as good in practice)."""
    header = ("| strategy | trials | trial-epochs spent | best val Dice | "
              f"trial-epochs to reach {target:.4f} | to reach {target - margin:.4f} |")
    lines = [header, "|---|---|---|---|---|---|"]
    for name, reps in results.items():
        best = max((r[METRIC] for r in reps), default=float("nan"))
        cells = [epochs_to_reach(reps, t) for t in (target, target - margin)]
        lines.append(f"| {name} | {len({r['trial'] for r in reps})} | {len(reps)} | {best:.4f} | "
                     + " | ".join("not reached" if c is None else str(c) for c in cells) + " |")
    return "\n".join(lines)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _read_reports(path: Path) -> dict[str, Any]:
    """An earlier run's ``search_efficiency.json``; a bad file exits naming it."""
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SystemExit(f"{path}: cannot read it: {exc}") from None
    if not (isinstance(saved, dict) and "target" in saved
            and isinstance(saved.get("reports"), dict)
            and isinstance(saved["reports"].get("fifo_random"), list)):
        raise SystemExit(f"{path}: not a search_efficiency.json (no target or FIFO reports)")
    return saved


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny store and budget (< 3 minutes)")
    p.add_argument("--data", help="fpn store (default: a synthetic one in --workdir)")
    p.add_argument("--workdir", help="folder for the store, runs and MLflow (default: a temp dir)")
    p.add_argument("--trials", type=_positive_int, default=16)
    p.add_argument("--epochs", type=_positive_int, default=8, help="maximum epochs per trial")
    p.add_argument("--ratio", type=float, default=0.25,
                   help="labelled-data ratio (at 1.0 every configuration saturates on the phantom)")
    p.add_argument("--crop", type=int, nargs=2, default=[16, 128], metavar=("S", "W"))
    p.add_argument("--multiplier", type=_positive_int, default=8, help="crops per training visit per epoch")
    p.add_argument("--batch-size", type=_positive_int, default=4)
    p.add_argument("--space", help="search space YAML (default tune/default_space.yaml)")
    p.add_argument("--num-cpus", type=_positive_int, default=2)
    p.add_argument("--concurrency", type=_positive_int, help="trials at once (default: one per CPU)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--asha-trials", type=_positive_int,
                   help="trials ASHA + TPE may start before its budget runs out (default 3x --trials)")
    p.add_argument("--grace-period", type=_positive_int,
                   help="ASHA: epochs before a trial may be stopped (default: half of --epochs, "
                   "as in tune/search.py)")
    p.add_argument("--fifo-from", type=Path, metavar="JSON",
                   help="take FIFO + random's reports from an earlier search_efficiency.json")
    p.add_argument("--table-from", type=Path, metavar="JSON",
                   help="print the table of an earlier run's search_efficiency.json and exit")
    return p


#: settings that must match for ``--fifo-from`` to reuse an earlier run's FIFO reports
_SAME = ("trials", "epochs", "ratio", "crop", "multiplier", "batch_size", "space", "seed")


def _earlier_fifo(path: Path, args: argparse.Namespace) -> tuple[list[dict[str, Any]], float]:
    saved = _read_reports(path)
    old = saved.get("args", {})
    differ = [k for k in _SAME if old.get(k) != getattr(args, k)]
    if differ:
        raise SystemExit(f"{path}: --fifo-from ran with other settings: "
                         + ", ".join(f"{k}={old.get(k)!r} (now {getattr(args, k)!r})"
                                     for k in differ))
    reports = saved.get("all_reports", saved["reports"])["fifo_random"]
    return reports, float(saved.get("seconds", {}).get("fifo_random", float("nan")))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.table_from:
        saved = _read_reports(args.table_from)
        print(_table(saved["reports"], saved["target"]))
        if "args" in saved:
            print(_details(saved["reports"], int(saved["args"]["epochs"])))
        return 0
    if args.smoke:
        args.trials, args.epochs, args.crop = 2, 2, [8, 32]
        args.multiplier, args.batch_size = 1, 2
    import ray
    import torch

    from fpn.training.ray_connect import connect_ray
    from tune.core import cluster_capacity, plan_resources

    torch.set_num_threads(1)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="search_efficiency_")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    connect_ray(num_cpus=args.num_cpus, log_to_driver=False)
    cpus, gpus = cluster_capacity()
    plan = plan_resources(cpus, gpus, workers=1, max_concurrent=args.concurrency or int(cpus),
                          runs=args.trials)
    concurrency, cpus_per_worker = plan.concurrency, plan.cpus_per_worker
    store = args.data or _make_store(work, args.smoke)
    base = _base_config(store, work, args, cpus_per_worker)
    space = _space(args)
    started = time.monotonic()
    results: dict[str, list[dict[str, Any]]] = {}
    seconds: dict[str, float] = {}
    if args.fifo_from:
        results["fifo_random"], seconds["fifo_random"] = _earlier_fifo(args.fifo_from, args)
    trials = {"fifo_random": args.trials, "asha_tpe": args.asha_trials or 3 * args.trials}
    grace = args.grace_period or max(1, args.epochs // 2)
    for strategy in ("fifo_random", "asha_tpe"):
        if strategy in results:
            continue
        t0 = time.monotonic()
        results[strategy] = run_strategy(strategy, base=base, space=space,
                                         trials=trials[strategy], epochs=args.epochs,
                                         concurrency=concurrency, seed=args.seed,
                                         storage=work / "tune", grace_period=grace)
        seconds[strategy] = time.monotonic() - t0
    budget = len(results["fifo_random"])
    spent = {k: len(v) for k, v in results.items()}
    cut = {k: within_budget(v, budget) for k, v in results.items()}
    target = max((r[METRIC] for r in results["fifo_random"]), default=float("nan"))
    print(f"\nSearch efficiency: budget {budget} trial-epochs (FIFO: {args.trials} trials x "
          f"{args.epochs} epochs), {concurrency} trials at a time, seed {args.seed}, ASHA grace "
          f"period {grace}; store {store}, ratio {args.ratio:g}")
    print(f"machine: {platform.node()} {platform.machine()}, {cpus:g} Ray CPUs; "
          f"ray {ray.__version__}, torch {torch.__version__}")
    print(_table(cut, target))
    print(_details(cut, args.epochs))
    print(f"(ASHA + TPE ran {spent['asha_tpe']} trial-epochs in all; the table counts the first "
          f"{budget})")
    print("wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items())
          + f"; total {time.monotonic() - started:.0f} s")
    out = work / "search_efficiency.json"
    write_atomic(out, json.dumps(  # no half-written file on a crash
        {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
         "target": target, "budget": budget, "spent": spent, "seconds": seconds,
         "reports": cut, "all_reports": results}, indent=2))
    print(f"reports: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
