"""``python -m tune.demo``: the whole vertical slice on synthetic data, on a laptop CPU.

synthetic source -> Zarr store -> inverted-FAF pretraining -> fine-tuning (with and without the
pretraining) -> test evaluation -> predicted masks. Every step is skipped when its output is
already there, so a re-run only does what is missing. Its defaults (the ``quick`` recipe, the
paper table's, with a DataLoader worker, overlays and a logged model; epochs, ratio, store) are
:data:`tune.presets.DEMO_SLICE`. It lives on the orchestration side: it makes data
(``data_prep``) and trains (``fpn``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from fpn.config import TrainConfig, build_train_config
from tune.presets import DEMO_SLICE

__all__ = ["demo_config", "demo_main"]


def demo_config(store: str, out: Path, task: str, **over) -> TrainConfig:
    """A run of the demo: :data:`tune.presets.DEMO_SLICE`'s recipe and values, its store and
    folder, then ``over`` (dotted keys)."""
    where = {"task": task, "data.store": store,
             "data.target": "inverted_faf" if task == "pretrain" else "mask",
             "model.name": "fpn", "workers": 1, "storage": str(out / "runs"),
             "mlflow": f"sqlite:///{(out / 'mlflow.db').resolve()}"}
    return build_train_config(DEMO_SLICE.recipe, DEMO_SLICE.overrides, where, over)


def demo_main(argv: Sequence[str] | None = None) -> int:
    from tune.cli import add_workers, run_command

    parser = argparse.ArgumentParser(prog="python -m tune.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", "--workdir", dest="out", default="fpn_demo",
                        help="folder for data, runs and MLflow")
    parser.add_argument("--epochs", type=int, default=DEMO_SLICE.epochs,
                        help="epochs of each run (default %(default)s)")
    parser.add_argument("--ratio", type=float, default=DEMO_SLICE.ratio,
                        help="labelled-data ratio of the fine-tunings (default %(default)s)")
    add_workers(parser, default=1)
    args = parser.parse_args(argv)
    return run_command("demo", lambda: _demo(args))


def _demo(args: argparse.Namespace) -> int:
    from fpn.evaluation import evaluate, predict
    from fpn.training.driver import run_training
    from tune.core import make_synthetic_store

    if not 0 < args.ratio <= 1 or args.epochs < 1 or args.workers < 1:
        raise ValueError("--ratio must be in (0, 1], --epochs and --workers >= 1")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    store = make_synthetic_store(out / "data", DEMO_SLICE.store)
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
    sys.exit(demo_main())
