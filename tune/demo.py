"""``python -m fpn demo``: the whole vertical slice on synthetic data, on a laptop CPU.

synthetic source -> Zarr store -> inverted-FAF pretraining -> fine-tuning (with and without the
pretraining) -> test evaluation -> predicted masks. Every step is skipped when its output is
already there, so a re-run only does what is missing.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path

from fpn.config import TrainConfig, set_dotted

__all__ = ["demo_config", "demo_main"]


def demo_config(store: str, out: Path, task: str, **over) -> TrainConfig:
    """A small CPU recipe: half-width FPN, (16, 128) crops, AdamW."""
    tree = {
        "task": task,
        "data": {"store": store, "target": "inverted_faf" if task == "pretrain" else "mask",
                 "crop": [16, 128], "multiplier": 4, "loader_workers": 1},
        "model": {"name": "fpn", "kwargs": {"width": 0.5}},
        "optim": {"name": "adamw", "lr": 2e-3, "weight_decay": 1e-4},
        "epochs": 8, "batch_size": 4, "workers": 1, "keep_best": 3,
        "storage": str(out / "runs"), "mlflow": f"sqlite:///{(out / 'mlflow.db').resolve()}",
    }
    for k, v in over.items():
        set_dotted(tree, k, v)
    return TrainConfig.model_validate(tree)


def demo_main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fpn demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="fpn_demo", help="folder for data, runs and MLflow")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--ratio", type=float, default=0.25)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)

    from data_prep.__main__ import demo_main as data_demo
    from fpn.evaluation import evaluate, predict
    from fpn.training.driver import run_training

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    rc = data_demo(["--out", str(out / "data"), "--patients", "12", "--unlabelled", "4",
                    "--shape", "16", "64", "128", "--visits", "3"])
    if rc:
        return rc
    store = str(out / "data" / "store.zarr")
    # a laptop run uses every core: each worker gets its share of CPUs (and as many threads)
    common = {"epochs": args.epochs, "workers": args.workers,
              "cpus_per_worker": max(1.0, float((os.cpu_count() or 1) // args.workers))}
    pre = run_training(demo_config(store, out, "pretrain", run_name="demo-pretrain", **common))
    results = {}
    for label, init in (("FPN", None), ("FPN + inverted-FAF SSL", pre.run_dir)):
        name = "demo-finetune-" + ("ssl" if init else "scratch")
        ft = run_training(demo_config(store, out, "finetune", run_name=name, init=init,
                                      **{"data.ratio": args.ratio}, **common))
        results[label] = evaluate(ft.run_dir, store, split="test",
                                  tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    predict(ft.run_dir, out=str(out / "predictions"), store=store, split="test",
            tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    print(f"\nTest Dice at ratio {args.ratio:g} (mean ± std over test visits):")
    for label, s in results.items():
        print(f"  {label:<24} {100 * s['dice_mean']:.2f} ± {100 * s['dice_std']:.2f}  "
              f"(HD95 {s.get('hd95_mean', float('nan')):.3f} mm)")
    print(f"\nPredicted masks and areas: {out / 'predictions'}/areas.csv")
    print(f"MLflow UI: mlflow ui --backend-store-uri sqlite:///{out / 'mlflow.db'}")
    (out / "demo_results.json").write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    os.sys.exit(demo_main())
