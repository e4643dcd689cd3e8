"""``python -m tune.experiments paper-table [...]``: a thin parser over :func:`run_paper_table`."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

__all__ = ["build_parser", "main"]


def _csv_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _ratios(text: str) -> list[float]:
    try:
        return [float(t) for t in _csv_list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"ratios must be numbers, got {text!r}") from None


def _override(text: str) -> tuple[str, Any]:
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), yaml.safe_load(value)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tune.experiments")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("paper-table", help="train, evaluate and tabulate the poster's grid",
                       description="Every (network, pretraining, ratio, seed) on Ray with a fixed "
                       "recipe; test Dice/HD95/GA-area tables with paired Wilcoxon stars. "
                       "Defaults of --models/--ssl/--ratios/--seeds come from the preset "
                       "(quick: lachinov,fpn / none,inverted_faf / 0.1,1.0 / 1 seed; paper: all "
                       "five networks / none,slo,inverted_faf / 0.05,0.1,0.2,1.0 / 3 seeds).")
    p.add_argument("--data", help="fpn store (default: make the demo's synthetic store in OUT)")
    p.add_argument("--models", type=_csv_list, help="comma-separated networks")
    p.add_argument("--ssl", type=_csv_list, help="comma-separated: none, inverted_faf, faf, slo")
    p.add_argument("--ratios", type=_ratios, help="comma-separated labelled-data ratios")
    p.add_argument("--seeds", type=int, help="seeds per (network, pretraining, ratio)")
    p.add_argument("--preset", choices=["quick", "paper"], default="quick")
    p.add_argument("--out", default="paper_table", help="folder for everything (default %(default)s)")
    p.add_argument("--workers-per-run", type=int, default=1, help="Ray Train workers per run")
    p.add_argument("--gpus-per-worker", type=float, default=0.0)
    p.add_argument("--max-concurrent", type=int, help="at most this many runs at once")
    p.add_argument("--num-cpus", type=int, help="CPUs of the local Ray (when none is running)")
    p.add_argument("--mlflow", help="tracking URI (default sqlite:///OUT/mlflow.db)")
    p.add_argument("--experiment", default="fpn-paper-table", help="MLflow experiment")
    p.add_argument("--set", dest="overrides", type=_override, action="append", default=[],
                   metavar="KEY=VALUE", help="dotted TrainConfig override on top of the preset, "
                   "e.g. --set epochs=2 --set model.kwargs.width=0.25")
    p.add_argument("--plan", action="store_true", help="print the runs and the training crops "
                   "they need (and, with --crops-per-second, the time), train nothing")
    p.add_argument("--crops-per-second", type=float, help="with --plan: training crops/s of one "
                   "run on the target hardware, e.g. 67.8 for the FPN on one H100 at 32x128x256 "
                   "(benchmarks/README.md)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from fpn.data.store import StoreError
    from tune.experiments.paper_table import plan_paper_table, run_paper_table

    if args.crops_per_second is not None and not args.plan:
        print("paper-table: error: --crops-per-second needs --plan", file=sys.stderr)
        return 2
    try:
        if args.plan:
            plan_paper_table(
                out=args.out, store=args.data, preset=args.preset, models=args.models,
                ssl=args.ssl, ratios=args.ratios, seeds=args.seeds,
                workers_per_run=args.workers_per_run, overrides=dict(args.overrides),
                max_concurrent=args.max_concurrent, crops_per_second=args.crops_per_second)
            return 0
        result = run_paper_table(
            out=args.out, store=args.data, preset=args.preset, models=args.models, ssl=args.ssl,
            ratios=args.ratios, seeds=args.seeds, workers_per_run=args.workers_per_run,
            gpus_per_worker=args.gpus_per_worker, mlflow=args.mlflow,
            experiment=args.experiment, overrides=dict(args.overrides),
            max_concurrent=args.max_concurrent, num_cpus=args.num_cpus)
    except (ValueError, StoreError) as exc:
        print(f"paper-table: error: {exc}", file=sys.stderr)
        return 2
    if result.failed:
        print(f"paper-table: {len(result.failed)} run(s) failed: {', '.join(result.failed)}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
