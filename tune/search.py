"""``python tune/search.py`` (``fpn-search``): Ray Tune + Optuna search per data ratio, table, registry.

With no arguments it answers the poster's question on a small synthetic data set (made when not
already there): it searches FPN from scratch and FPN with inverted-FAF pretraining at ratios 0.1
and 1.0 (the ``demo`` preset of :mod:`tune.presets`: trials, epochs, recipe, space), on local Ray
with a local sqlite MLflow and Optuna database; evaluates the best trial of each on the test
split with its k-best ensemble, registers it, promotes the best version through the registry's
gate and prints the table. The steps are :mod:`tune.search_steps`; this module parses the
command line into a :class:`tune.config.SearchConfig` and prints the result.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# no progress bar per downloaded file (a registered model is some 75 files)
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

from tune.config import SearchConfig, load_search_config
from tune.search_steps import SearchResult, run_search

__all__ = ["build_parser", "config_from_args", "main", "print_result"]


# -- command line ---------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    """The flags; ``dest`` is the SearchConfig field each sets, and the help of a preset's value
    comes from :mod:`tune.presets`."""
    from tune.cli import add_ratios, add_set, add_workers

    fields = SearchConfig.model_fields

    def text(name: str) -> str:
        return fields[name].description or ""

    p = argparse.ArgumentParser(prog="python tune/search.py", description=__doc__.splitlines()[0])
    # default None everywhere: only given flags override --config and the preset
    p.add_argument("--config", help="YAML file with any of these options (SearchConfig fields)")
    p.add_argument("--data", help="store path or URL (default: a synthetic demo store)")
    p.add_argument("--workdir", help="demo data, results, default databases (default fpn-search)")
    p.add_argument("--task", help="names the registered model <task>-<model> (default ga)")
    p.add_argument("--model", help="network name (default fpn)")
    p.add_argument("--ssl", choices=["inverted_faf", "faf", "slo", "none"],
                   help="pretraining target, or none (default inverted_faf)")
    p.add_argument("--pretrained", help="pretrained checkpoint, run dir or models:/... "
                   "(skips pretraining)")
    add_ratios(p, "0.1 1.0")
    p.add_argument("--trials", type=int, help=text("trials"))
    p.add_argument("--max-concurrent", type=int, help="concurrent trials (default: what fits)")
    add_workers(p, "--workers-per-trial")
    p.add_argument("--gpus-per-worker", type=float)
    p.add_argument("--cpus-per-worker", type=float)
    p.add_argument("--epochs", type=int, help=text("epochs"))
    p.add_argument("--pretrain-epochs", type=int, help=text("pretrain_epochs"))
    p.add_argument("--grace-period", type=int, help=text("grace_period"))
    p.add_argument("--min-crops-per-epoch", type=int, help=text("min_crops_per_epoch"))
    p.add_argument("--space", help=text("space"))
    p.add_argument("--recipe", help=text("recipe"))
    p.add_argument("--storage", help="Ray storage path or URL (default WORKDIR/ray)")
    p.add_argument("--mlflow", help="MLflow tracking URI (default sqlite:///WORKDIR/mlflow.db)")
    p.add_argument("--study-db", help="Optuna storage URL (default sqlite:///WORKDIR/optuna.db)")
    p.add_argument("--experiment", help="MLflow experiment (default fpn-search)")
    p.add_argument("--seed", type=int)
    p.add_argument("--num-cpus", type=int, help="CPUs of the local Ray instance")
    add_set(p)
    p.add_argument("--no-promote", dest="promote", action="store_const", const=False)
    p.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=None,
                   help=text("baseline"))
    p.add_argument("--compute-matched", action=argparse.BooleanOptionalAction, default=None,
                   help=text("compute_matched"))
    p.add_argument("--strict-space", action="store_true", default=None, help=text("strict_space"))
    p.add_argument("--verbose", action="store_true", default=None, help=text("verbose"))
    return p


def config_from_args(args: argparse.Namespace) -> SearchConfig:
    """The SearchConfig of a command line: ``--config``, then every flag that was given."""
    from fpn.config import parse_sets

    given = {k: v for k, v in vars(args).items() if k not in ("config", "set") and v is not None}
    if args.set:
        given["train"] = parse_sets(args.set)
    return load_search_config(args.config, given)


def print_result(res: SearchResult) -> None:
    print()
    for r in res.ratios:
        if not r.model_version and not r.best_trial:  # the compute-matched row: no study
            print(f"{r.configuration}, ratio {r.ratio:g}: run {r.study}, val score "
                  f"{r.best_val:.4f} (not registered)")
            continue
        print(f"{r.configuration}, ratio {r.ratio:g}: study {r.study}, "
              f"{r.trials_complete} complete and {r.trials_pruned} pruned trial(s); best "
              f"trial {r.best_trial} val score {r.best_val:.4f} -> "
              f"{res.registered_model} version {r.model_version}")
    print()
    print(res.table_markdown)
    if res.promotion_refused:
        print("promotion refused by the registry's gate; the champion is unchanged")
    print(f"table: {res.files['markdown']}, {res.files['csv']}, {res.files['plot']}")
    print(f"MLflow:  mlflow ui --backend-store-uri {res.tracking_uri}")
    print(f"Optuna:  optuna-dashboard {res.study_url}")
    print(f"Serve:   MLFLOW_TRACKING_URI={res.tracking_uri} mlflow models serve "
          f"-m models:/{res.registered_model}@champion --env-manager local -p 5001 -h 127.0.0.1")


def main(argv: list[str] | None = None) -> int:
    from tune.cli import run_command

    args = build_parser().parse_args(argv)

    def body() -> int:
        cfg = config_from_args(args)
        try:
            print_result(run_search(cfg))
        except Exception:
            from tune.console import log_folder

            if (folder := log_folder()) is not None:  # the trials' own logs are there
                print(f"search: the trials' and Ray's logs: {folder}", file=sys.stderr)
            raise
        return 0

    return run_command("search", body)


if __name__ == "__main__":
    sys.exit(main())
