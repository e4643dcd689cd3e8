"""What a training process pays to import its code, side by side in one run.

Question: every Ray Train worker, Tune trial and CLI process imports the training code afresh
(Ray starts a new Python process per actor). How much of that is the loss and metric code, and
what did computing the losses and metrics with MONAI and torchmetrics cost against writing them
in torch and scipy (``fpn/losses.py``, ``fpn/metrics.py``)?

Method: for each import set, ``--repeats`` fresh ``python -c`` processes, one after another; the
figure is the median wall time and the CPU time of the process (user + sys, as the kernel
counts it for the child). The baseline is ``import torch`` alone.

    python benchmarks/import_cost.py --repeats 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

SETS = {
    "torch": "import torch",
    "fpn.training.worker (what a Train worker imports)": "import fpn.training.worker",
    "monai.losses + monai.metrics (the old loss/metric imports)":
        "import torch, monai.losses, monai.metrics",
    "torchmetrics.functional.image (the old SSIM)":
        "import torch, torchmetrics.functional.image",
    "fpn.training.worker + monai + torchmetrics (the old worker)":
        "import fpn.training.worker, monai.losses, monai.metrics, torchmetrics.functional.image",
    "mlflow (rank 0 only since 2026-12-04)": "import mlflow",
}


def measure(code: str, repeats: int) -> tuple[float, float]:
    walls, cpus = [], []
    for _ in range(repeats):
        before = os.times()
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True,
                       env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"})
        walls.append(time.perf_counter() - t0)
        after = os.times()
        cpus.append((after.children_user - before.children_user)
                    + (after.children_system - before.children_system))
    return statistics.median(walls), statistics.median(cpus)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    rows = {name: measure(code, args.repeats) for name, code in SETS.items()}
    base_cpu = rows["torch"][1]
    print("| import | wall s | CPU s | CPU / torch alone |\n|---|---|---|---|")
    for name, (wall, cpu) in rows.items():
        print(f"| {name} | {wall:.2f} | {cpu:.2f} | {cpu / base_cpu:.2f} |")
    old = rows["fpn.training.worker + monai + torchmetrics (the old worker)"][1]
    new = rows["fpn.training.worker (what a Train worker imports)"][1]
    print(f"\nold worker imports / new: {old / new:.2f}x CPU ({old - new:.1f} s less per process)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
