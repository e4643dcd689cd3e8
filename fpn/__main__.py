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

__all__ = ["config_from_args", "main"]


def _add_training_options(p: argparse.ArgumentParser) -> None:
    # default=None everywhere: only flags actually given override --config / model defaults
    p.add_argument("--data", help="store path or URL (data_prep convert output)")
    p.add_argument("--config", help="YAML file with any TrainConfig fields")
    p.add_argument("--recipe", help="a shipped recipe (faithful, reference, cpu-small, quick, "
                   "tiny; fpn/recipes/) or a recipe YAML file, under --config and the flags")
    p.add_argument("--faithful", action="store_const", const="faithful", dest="recipe",
                   help="the reference recipe exactly, fp32 (= --recipe faithful): the way to "
                   "reproduce the poster")
    p.add_argument("--model", help="network name (fpn, resensnet, lachinov, ipn, ipnv2)")
    p.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="constructor argument of the network, e.g. reduction=attention")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--crop", type=int, nargs=2, metavar=("S", "W"))
    p.add_argument("--multiplier", type=int, help="crops per volume per epoch")
    p.add_argument("--lr", type=float)
    p.add_argument("--optimizer", choices=["sgd", "adamw"])
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--schedule", choices=["none", "cosine"])
    p.add_argument("--warmup-epochs", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--run-name")
    p.add_argument("--workers", type=int, help="Ray Train workers (data-parallel)")
    p.add_argument("--workers-min", type=int,
                   help="elastic: train on as few as this many workers (--workers is the maximum)")
    p.add_argument("--gpus-per-worker", type=float)
    p.add_argument("--cpus-per-worker", type=float)
    p.add_argument("--threads-per-worker", type=int)
    p.add_argument("--loader-workers", type=int)
    p.add_argument("--keep-best", type=int)
    p.add_argument("--max-failures", type=int)
    p.add_argument("--checkpoint-every-steps", type=int, metavar="N",
                   help="also checkpoint every N optimizer steps (spot nodes: a reclaim then "
                   "costs at most N steps)")
    p.add_argument("--spot-notice-url", help="poll this EC2 spot interruption notice URL and "
                   "checkpoint at the next step on a notice (default: $FPN_SPOT_NOTICE_URL, else off)")
    p.add_argument("--storage", help="Ray storage path or URL for checkpoints")
    p.add_argument("--mlflow", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI or ./mlflow.db)")
    p.add_argument("--experiment", help="MLflow experiment name")
    p.add_argument("--noise-std", type=float)
    p.add_argument("--offset-std", type=float, help="std of one additive offset per crop; 0: off")
    p.add_argument("--no-augment", action="store_true", default=None)
    p.add_argument("--no-log-model", action="store_true", default=None)


def _parse_value(text: str) -> Any:
    import yaml

    return yaml.safe_load(text)


def config_from_args(args: argparse.Namespace, task: str) -> Any:
    """Build the TrainConfig: ``--config`` YAML, then every flag that was given."""
    from fpn.config import TrainConfig, load_config, set_dotted

    o: dict[str, Any] = {"task": task}
    if task == "pretrain":
        o["data.target"] = args.target
    else:
        o["data.target"] = "mask"
        if args.ratio is not None:
            o["data.ratio"] = args.ratio
        if args.init is not None:
            o["init"] = args.init
        if args.reinit_head:
            o["reinit_head"] = True
        if args.pretrained_lr_scale is not None:
            o["optim.pretrained_lr_scale"] = args.pretrained_lr_scale
    mapping = {
        "data": "data.store", "model": "model.name", "epochs": "epochs",
        "batch_size": "batch_size", "crop": "data.crop", "multiplier": "data.multiplier",
        "lr": "optim.lr", "optimizer": "optim.name", "weight_decay": "optim.weight_decay",
        "schedule": "optim.schedule", "warmup_epochs": "optim.warmup_epochs", "seed": "seed",
        "run_name": "run_name", "workers": "workers", "workers_min": "workers_min",
        "gpus_per_worker": "gpus_per_worker",
        "cpus_per_worker": "cpus_per_worker", "threads_per_worker": "threads_per_worker",
        "loader_workers": "data.loader_workers", "keep_best": "keep_best",
        "max_failures": "max_failures", "checkpoint_every_steps": "checkpoint_every_steps",
        "spot_notice_url": "spot_notice_url", "storage": "storage", "mlflow": "mlflow",
        "experiment": "experiment", "noise_std": "data.noise_std",
        "offset_std": "data.offset_std",
    }
    for attr, dotted in mapping.items():
        value = getattr(args, attr)
        if value is not None:
            o[dotted] = list(value) if isinstance(value, (list, tuple)) else value
    if args.no_augment:
        o["data.augment"] = False
    if args.no_log_model:
        o["log_model"] = False
    for item in args.model_arg:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--model-arg expects KEY=VALUE, got {item!r}")
        o[f"model.kwargs.{key}"] = _parse_value(value)
    if getattr(args, "recipe", None):  # the recipe first: --config and the flags go over it
        from fpn.recipes import recipe_overrides

        given = dict(o)
        if args.config:
            from fpn.config import read_yaml_mapping

            _flatten("", read_yaml_mapping(args.config, "config"), given)
        o = {**recipe_overrides(args.recipe), **given}
    elif args.config:
        return load_config(args.config, o)
    if "data.store" not in o:
        raise ValueError("--data STORE is required (or give it in --config)")
    tree: dict[str, Any] = {}
    for dotted, value in o.items():
        set_dotted(tree, dotted, value)
    return TrainConfig.model_validate(tree)


def _flatten(prefix: str, node: dict[str, Any], out: dict[str, Any]) -> None:
    """A --config tree as dotted keys, flags (already in ``out``) kept over it."""
    for k, v in node.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict):  # an empty mapping adds nothing
            _flatten(key, v, out)
        else:
            out.setdefault(key, v)


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
                   input_file=args.input, tracking_uri=args.mlflow, k=args.k)
    print(f"[fpn] wrote {len(rows)} prediction(s) and {args.out}/areas.csv")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fpn", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("pretrain", help="inter-modal self-supervised pretraining")
    _add_training_options(p)
    p.add_argument("--target", choices=["inverted_faf", "faf", "slo"], default="inverted_faf")

    p = sub.add_parser("finetune", help="segmentation on a ratio of the labelled patients")
    _add_training_options(p)
    p.add_argument("--ratio", type=float, help="fraction of labelled training patients")
    p.add_argument("--init", help="pretrained checkpoint, run dir or models:/NAME@ALIAS")
    p.add_argument("--reinit-head", action="store_true")
    p.add_argument("--pretrained-lr-scale", type=float)

    for name, helptext in (("evaluate", "Dice/HD95 (or SSIM) per visit with the k-best ensemble"),
                           ("predict", "masks, probability maps, overlays and areas.csv")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--model", required=True, help="checkpoint, run dir or models:/NAME@ALIAS")
        p.add_argument("--data", help="store path or URL")
        p.add_argument("--split", default="test")
        p.add_argument("--mlflow", help="MLflow tracking URI")
        p.add_argument("--k", type=int, help="use only the k best members")
        if name == "evaluate":
            p.add_argument("--out", help="folder for the per-visit CSV (default: next to nothing)")
        else:
            p.add_argument("--input", help="one OCT file (any format data_prep reads)")
            p.add_argument("--out", required=True)
    sub.add_parser("demo", help="moved: python -m tune.demo", add_help=False)
    # everything after "registry" goes to fpn.registry's own parser (list, promote, rollback)
    p = sub.add_parser("registry", help="list, promote (gated) and roll back registered models",
                       add_help=False)
    p.add_argument("registry_args", nargs=argparse.REMAINDER)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["registry"]:  # its own parser, so that `registry --help` and flags pass through
        from fpn.registry import registry_main

        return registry_main(argv[1:])
    if argv[:1] == ["demo"]:  # the library does not make data: the demo is orchestration
        print("error: the demo moved: python -m tune.demo " + " ".join(argv[1:]), file=sys.stderr)
        return 2
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
