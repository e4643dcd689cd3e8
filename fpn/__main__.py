"""``python -m fpn {pretrain, finetune, evaluate, predict, registry}``: thin parsers over typed functions.

Training options map onto :class:`fpn.config.TrainConfig`; ``--config FILE`` gives the same
options as YAML, and flags given on the command line override it. Bad input exits 2 with one
line naming the problem (as every command of the project does); the demo, which makes data and
so is orchestration, is ``python -m tune.demo``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# no progress bar per downloaded file (a registered model is some 75 files)
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

__all__ = ["config_from_args", "main"]


def _add_training_options(p: argparse.ArgumentParser) -> None:
    """The training flags. Each flag's ``dest`` is the dotted TrainConfig key it sets, so a
    flag given on the command line is one override of :func:`fpn.config.build_train_config`;
    ``default=None`` everywhere: a flag not given overrides nothing."""
    p.add_argument("--data", dest="data.store", help="store path or URL (data_prep convert output)")
    p.add_argument("--config", dest="config_file", help="YAML file with any TrainConfig fields")
    p.add_argument("--recipe", help="a shipped recipe (faithful, reference, cpu-small, quick, "
                   "tiny; fpn/recipes/) or a recipe YAML file, under --config and the flags")
    p.add_argument("--faithful", action="store_const", const="faithful", dest="recipe",
                   help="the reference recipe exactly, fp32 (= --recipe faithful): the way to "
                   "reproduce the poster")
    p.add_argument("--model", dest="model.name",
                   help="network name (fpn, resensnet, lachinov, ipn, ipnv2)")
    p.add_argument("--model-arg", dest="model_args", action="append", default=[],
                   metavar="KEY=VALUE",
                   help="constructor argument of the network, e.g. reduction=attention")
    p.add_argument("--epochs", dest="epochs", type=int)
    p.add_argument("--batch-size", dest="batch_size", type=int)
    p.add_argument("--crop", dest="data.crop", type=int, nargs=2, metavar=("S", "W"))
    p.add_argument("--steps-per-epoch", dest="steps_per_epoch", type=int,
                   help="the budget: optimizer steps per epoch at every ratio (default: the "
                   "recipe's; none: --multiplier crops per volume)")
    p.add_argument("--multiplier", dest="data.multiplier", type=int,
                   help="crops per volume per epoch (without a --steps-per-epoch budget)")
    p.add_argument("--lr", dest="optim.lr", type=float)
    p.add_argument("--optimizer", dest="optim.name", choices=["sgd", "adamw"])
    p.add_argument("--weight-decay", dest="optim.weight_decay", type=float)
    p.add_argument("--schedule", dest="optim.schedule", choices=["none", "cosine"])
    p.add_argument("--warmup-epochs", dest="optim.warmup_epochs", type=int)
    p.add_argument("--seed", dest="seed", type=int)
    p.add_argument("--run-name", dest="run_name")
    p.add_argument("--workers", dest="workers", type=int, help="Ray Train workers (data-parallel)")
    p.add_argument("--workers-min", dest="workers_min", type=int,
                   help="elastic: train on as few as this many workers (--workers is the maximum)")
    p.add_argument("--gpus-per-worker", dest="gpus_per_worker", type=float)
    p.add_argument("--cpus-per-worker", dest="cpus_per_worker", type=float)
    p.add_argument("--threads-per-worker", dest="threads_per_worker", type=int)
    p.add_argument("--loader-workers", dest="data.loader_workers", type=int)
    p.add_argument("--keep-best", dest="keep_best", type=int)
    p.add_argument("--max-failures", dest="max_failures", type=int)
    p.add_argument("--checkpoint-every-steps", dest="checkpoint_every_steps", type=int,
                   metavar="N", help="also checkpoint every N optimizer steps (spot nodes: a "
                   "reclaim then costs at most N steps)")
    p.add_argument("--spot-notice-url", dest="spot_notice_url",
                   help="poll this EC2 spot interruption notice URL and checkpoint at the next "
                   "step on a notice (default: $FPN_SPOT_NOTICE_URL, else off)")
    p.add_argument("--storage", dest="storage", help="Ray storage path or URL for checkpoints")
    p.add_argument("--mlflow", dest="mlflow",
                   help="MLflow tracking URI (default $MLFLOW_TRACKING_URI or ./mlflow.db)")
    p.add_argument("--experiment", dest="experiment", help="MLflow experiment name")
    p.add_argument("--noise-std", dest="data.noise_std", type=float)
    p.add_argument("--offset-std", dest="data.offset_std", type=float,
                   help="std of one additive offset per crop; 0: off")
    p.add_argument("--no-augment", dest="data.augment", action="store_const", const=False)
    p.add_argument("--no-log-model", dest="log_model", action="store_const", const=False)
    p.add_argument("--set", dest="set", action="append", default=[], metavar="KEY=VALUE",
                   help="any dotted TrainConfig key, e.g. --set optim.momentum=0.95 (last)")


#: what the command line holds besides dotted TrainConfig keys
_NOT_CONFIG = frozenset({"command", "config_file", "recipe", "model_args", "set", "target"})


def config_from_args(args: argparse.Namespace, task: str) -> Any:
    """The run's TrainConfig: the recipe, then ``--config``, then the flags given, then
    ``--set`` (:func:`fpn.config.build_train_config`)."""
    from fpn.config import build_train_config, flatten_tree, parse_sets, read_yaml_mapping

    flags = {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in vars(args).items()
             if v is not None and k not in _NOT_CONFIG}
    for item in args.model_args:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--model-arg expects KEY=VALUE, got {item!r}")
        flags[f"model.kwargs.{key}"] = _parse_value(value)
    task_keys: dict[str, Any] = {"task": task}
    task_keys["data.target"] = args.target if task == "pretrain" else "mask"
    file_layer = (flatten_tree(read_yaml_mapping(args.config_file, "config"))
                  if args.config_file else None)
    if file_layer is None and "data.store" not in flags:
        raise ValueError("--data STORE is required (or give it in --config)")
    return build_train_config(args.recipe, file_layer, flags, parse_sets(args.set), task_keys)


def _parse_value(text: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"{text!r} is not a YAML value: {exc}") from None


def _cmd_train(args: argparse.Namespace, task: str) -> int:
    from fpn.training.driver import run_training

    cfg = config_from_args(args, task)
    outcome = run_training(cfg)
    print(json.dumps({"run_name": outcome.run_name, "run_dir": outcome.run_dir,
                      "mlflow_run_id": outcome.mlflow_run_id, "model_uri": outcome.model_uri,
                      "best": dict(zip(outcome.best_checkpoints, outcome.best_scores)),
                      "score": outcome.score_name}, indent=2))
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from fpn.evaluation import evaluate

    summary = evaluate(args.model, args.data, split=args.split, out=args.out,
                       tracking_uri=args.mlflow, k=args.k, storage_options=None)
    print(json.dumps(summary, indent=2))
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from fpn.evaluation import predict

    rows = predict(args.model, out=args.out, store=args.data, split=args.split,
                   input_file=args.input, tracking_uri=args.mlflow, k=args.k,
                   spacing=tuple(args.spacing) if args.spacing else None)
    print(f"[fpn] wrote {len(rows)} prediction(s) and {args.out}/areas.csv")
    if any("area_px" in r for r in rows):
        print("[fpn] the input carries no spacing: areas are in pixels (--spacing S D W, in mm, "
              "gives mm^2)")
    return 0


def _cmd_growth(args: argparse.Namespace) -> int:
    from fpn.evaluation import growth

    summary = growth(args.model, args.data, out=args.out,
                     split=None if args.split == "all" else args.split, tracking_uri=args.mlflow,
                     k=args.k, threshold=args.threshold)
    print(json.dumps(summary, indent=2, default=str))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fpn", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("pretrain", help="inter-modal self-supervised pretraining")
    _add_training_options(p)
    p.add_argument("--target", choices=["inverted_faf", "faf", "slo"], default="inverted_faf")

    p = sub.add_parser("finetune", help="segmentation on a ratio of the labelled patients")
    _add_training_options(p)
    p.add_argument("--ratio", dest="data.ratio", type=float,
                   help="fraction of labelled training patients")
    p.add_argument("--init", dest="init",
                   help="pretrained checkpoint, run dir or models:/NAME@ALIAS")
    p.add_argument("--reinit-head", dest="reinit_head", action="store_const", const=True)
    p.add_argument("--pretrained-lr-scale", dest="optim.pretrained_lr_scale", type=float)

    helps = {"evaluate": "Dice/HD95 (or SSIM) per visit with the k-best ensemble, "
                         "patient-level intervals, area agreement with the graders",
             "predict": "masks, probability maps, overlays and areas.csv",
             "growth": "GA area and growth rate per eye across visits, with the ensemble's "
                       "spread and agreement with the graders"}
    for name, helptext in helps.items():
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--model", required=True, help="checkpoint, run dir or models:/NAME@ALIAS")
        p.add_argument("--data", help="store path or URL")
        p.add_argument("--split", default="test")
        p.add_argument("--mlflow", help="MLflow tracking URI")
        p.add_argument("--k", type=int, help="use only the k best members")
        if name == "evaluate":
            p.add_argument("--out", help="folder for the per-visit CSV (default: next to nothing)")
        elif name == "predict":
            p.add_argument("--input", help="one OCT file (any format data_prep reads)")
            p.add_argument("--spacing", type=float, nargs=3, metavar=("S", "D", "W"),
                           help="voxel spacing in mm of --input when the file carries none "
                           "(without it: areas in pixels)")
            p.add_argument("--out", required=True)
        else:
            p.add_argument("--out", required=True, help="folder for growth.csv and the plots")
            p.add_argument("--threshold", type=float, default=0.5,
                           help="on the mean probability (default %(default)s)")
    # everything after "registry" goes to fpn.registry_cli's own parser (list, promote, rollback)
    p = sub.add_parser("registry", help="list, promote (gated) and roll back registered models",
                       add_help=False)
    p.add_argument("registry_args", nargs=argparse.REMAINDER)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["registry"]:  # its own parser, so that `registry --help` and flags pass through
        from fpn.registry_cli import registry_main

        return registry_main(argv[1:])
    args = build_parser().parse_args(argv)
    from pydantic import ValidationError

    from fpn.data.readers import DataError
    from fpn.data.store import StoreError

    try:
        if args.command in ("pretrain", "finetune"):
            return _cmd_train(args, args.command)
        if args.command == "evaluate":
            if not args.data:
                raise ValueError("evaluate needs --data STORE")
            return _cmd_evaluate(args)
        if args.command == "growth":
            if not args.data:
                raise ValueError("growth needs --data STORE (its visits' days and eyes)")
            return _cmd_growth(args)
        if args.command == "predict":
            if bool(args.data) == bool(args.input):
                raise ValueError("predict needs exactly one of --data STORE or --input FILE")
            return _cmd_predict(args)
    except ValidationError as exc:  # a bad option value: the first problem, on one line
        from fpn.config import validation_problem

        print(f"error: {validation_problem(exc)}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError, StoreError, DataError) as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    return 2


if __name__ == "__main__":
    sys.exit(main())
