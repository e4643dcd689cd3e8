"""``python -m tune.experiments paper-table [...]``: a thin parser over :func:`run_paper_table`.

Options follow :mod:`tune.cli` (the same spelling as the search and ``python -m fpn``)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# no progress bar per downloaded file (a registered model is some 75 files)
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

from tune.presets import PAPER_PRESETS

__all__ = ["build_parser", "main"]


def _grid_help() -> str:
    """Each preset's default grid, as the help says it (from :data:`tune.presets.PAPER_PRESETS`)."""
    return "; ".join(
        f"{name}: {','.join(p.models)} / {','.join(p.ssl)} / "
        f"{','.join(f'{r:g}' for r in p.ratios)} / {p.seeds} seed(s)"
        for name, p in PAPER_PRESETS.items())


def build_parser() -> argparse.ArgumentParser:
    from tune.cli import add_list, add_ratios, add_set, add_workers

    parser = argparse.ArgumentParser(prog="python -m tune.experiments")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("paper-table", help="train, evaluate and tabulate the poster's grid",
                       description="Every (network, pretraining, ratio, seed) on Ray with a fixed "
                       "recipe; test Dice/HD95/GA-area tables with paired Wilcoxon stars. "
                       "Defaults of --models/--ssl/--ratios/--seeds come from the preset "
                       f"({_grid_help()}).")
    p.add_argument("--data", help="fpn store (default: make the demo's synthetic store in OUT)")
    add_list(p, "--models", "networks, e.g. fpn lachinov or fpn,lachinov")
    add_list(p, "--ssl", "pretrainings: none, inverted_faf, faf, slo (space- or comma-separated)")
    add_ratios(p, "the preset's")
    p.add_argument("--seeds", type=int, help="seeds per (network, pretraining, ratio)")
    p.add_argument("--preset", choices=sorted(PAPER_PRESETS), default="quick",
                   help="; ".join(f"{k}: recipe {v.recipe}" for k, v in PAPER_PRESETS.items())
                   + " (tune/presets.py; default %(default)s)")
    p.add_argument("--out", "--workdir", dest="out", default="paper_table",
                   help="folder for everything (default %(default)s)")
    add_workers(p, "--workers-per-run", default=1)
    p.add_argument("--gpus-per-worker", type=float, default=0.0)
    p.add_argument("--max-concurrent", type=int, help="at most this many runs at once")
    p.add_argument("--num-cpus", type=int, help="CPUs of the local Ray (when none is running)")
    p.add_argument("--mlflow", help="tracking URI (default sqlite:///OUT/mlflow.db)")
    p.add_argument("--experiment", default="fpn-paper-table", help="MLflow experiment")
    add_set(p)
    p.add_argument("--verbose", action="store_true", help="the Train workers' epoch lines and "
                   "Ray's logging on the console (default: a line per run and a progress bar)")
    p.add_argument("--plan", action="store_true", help="print the runs and the training crops "
                   "they need (and, with --crops-per-second, the time), train nothing")
    p.add_argument("--crops-per-second", type=float, help="with --plan: training crops/s of one "
                   "run on the target hardware, e.g. 67.8 for the FPN on one H100 at 32x128x256 "
                   "(benchmarks/README.md)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from fpn.config import parse_sets
    from tune.cli import run_command

    args = build_parser().parse_args(argv)
    if args.crops_per_second is not None and not args.plan:
        print("paper-table: error: --crops-per-second needs --plan", file=sys.stderr)
        return 2

    def body() -> int:
        from tune.experiments.paper_table import plan_paper_table, run_paper_table

        grid = {"out": args.out, "store": args.data, "preset": args.preset,
                "models": args.models, "ssl": args.ssl, "ratios": args.ratios,
                "seeds": args.seeds, "workers": args.workers,
                "overrides": parse_sets(args.set), "max_concurrent": args.max_concurrent}
        if args.plan:
            plan_paper_table(**grid, crops_per_second=args.crops_per_second)
            return 0
        result = run_paper_table(**grid, gpus_per_worker=args.gpus_per_worker,
                                 mlflow=args.mlflow, experiment=args.experiment,
                                 num_cpus=args.num_cpus, verbose=args.verbose)
        if result.failed:
            print(f"paper-table: {len(result.failed)} run(s) failed: "
                  f"{', '.join(result.failed)}", file=sys.stderr)
            return 1
        return 0

    return run_command("paper-table", body)


if __name__ == "__main__":
    sys.exit(main())
