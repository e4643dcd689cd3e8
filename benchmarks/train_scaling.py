"""Ray Train throughput with 1 and 2 CPU workers (one thread each), side by side in one run.

    python benchmarks/train_scaling.py [--store STORE] [--epochs 3] [--crop 16 128] [--width 0.5]

Both runs train the same config for the same epochs; the figure is the mean training crops/s of
the epochs after the first (start-up and first-epoch warm-up excluded), as reported by the
workers (all workers' crops / the slowest worker's epoch time). Makes a synthetic store in a
temporary folder when --store is not given.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def make_store(tmp: Path) -> str:
    from data_prep.convert import convert
    from data_prep.synthetic import make_synthetic_dataset

    make_synthetic_dataset(tmp / "src", patients=8, unlabelled=0, shape=(16, 64, 128), visits=2,
                           seed=0)
    stats = convert(str(tmp / "src"), str(tmp / "store.zarr"), progress=False)
    assert stats.ok, stats.summary_line()
    return str(tmp / "store.zarr")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--crop", type=int, nargs=2, default=[16, 128])
    ap.add_argument("--width", type=float, default=0.5)
    ap.add_argument("--multiplier", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=2)
    args = ap.parse_args()

    from mlflow.tracking import MlflowClient

    from fpn.config import TrainConfig
    from fpn.training.driver import run_training
    from fpn.training.ray_connect import connect_ray

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        store = args.store or make_store(tmp)
        connect_ray(num_cpus=os.cpu_count())
        results = {}
        for workers in (1, 2):
            cfg = TrainConfig.model_validate({
                "task": "finetune",
                "data": {"store": store, "crop": args.crop, "multiplier": args.multiplier,
                         "loader_workers": 0},
                "model": {"kwargs": {"width": args.width}},
                "optim": {"name": "adamw", "lr": 1e-3},
                "epochs": args.epochs, "batch_size": args.batch_size, "workers": workers,
                "threads_per_worker": 1, "storage": str(tmp / "runs"),
                "mlflow": f"sqlite:///{tmp / 'mlflow.db'}", "log_model": False,
                "run_name": f"scaling-{workers}w", "max_failures": 0,
            })
            outcome = run_training(cfg)
            hist = MlflowClient(cfg.tracking_uri()).get_metric_history(outcome.mlflow_run_id,
                                                                       "train/crops_per_s")
            rates = [m.value for m in sorted(hist, key=lambda m: m.step)][1:]
            results[workers] = sum(rates) / len(rates)
    print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    print(f"config: FPN width {args.width}, crop {args.crop}, batch {args.batch_size}/worker, "
          f"{args.epochs} epochs (first excluded), 1 thread per worker")
    print("| workers | crops/s | ratio |\n|---|---|---|")
    for w, r in results.items():
        print(f"| {w} | {r:.2f} | {r / results[1]:.2f}x |")


if __name__ == "__main__":
    main()
