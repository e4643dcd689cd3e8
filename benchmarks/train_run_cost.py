"""What one Ray Train run costs beyond its training, side by side in one run.

Question: the test suite, the search and the paper table start many short Ray Train runs. How much
CPU does one run of the tiny test recipe take, and how much of it is training? (On a 2-core
machine the suite's wall time is about its CPU time over two.)

Method: one local Ray instance (2 CPUs), a tiny synthetic store (the tests' shape), then
``--runs`` fine-tunings through :func:`fpn.training.driver.run_training` for each setting, one
after another: the machine's busy CPU time (``/proc/stat``, every process: driver, Train
controller, Ray Train's helper actors, workers, Ray itself) and the wall time per run. The first
run of each setting is left out (warm-up). Compares 1 epoch against 3 epochs (what training
adds) and 1 against 2 workers (what a worker adds). Linux only.

    python benchmarks/train_run_cost.py --runs 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path


def busy_cpu_s() -> float:
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3, help="measured runs per setting (+1 warm-up)")
    ap.add_argument("--work", help="working folder (default: a new temporary one)")
    args = ap.parse_args(argv)
    if args.runs < 1:
        ap.error(f"--runs must be >= 1, got {args.runs}")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

    from data_prep.convert import convert
    from data_prep.synthetic import make_synthetic_dataset
    from fpn.config import TrainConfig
    from fpn.training.driver import run_training
    from fpn.training.ray_connect import connect_ray

    work = Path(args.work or tempfile.mkdtemp(prefix="fpn-run-cost-"))
    work.mkdir(parents=True, exist_ok=True)
    connect_ray(num_cpus=2, log_to_driver=False)
    store = work / "store.zarr"
    if not (store / "zarr.json").is_file():
        make_synthetic_dataset(work / "source", patients=4, unlabelled=2, shape=(8, 64, 32),
                               visits=2, seed=0, overwrite=True)
        stats = convert(str(work / "source"), str(store), progress=False)
        if not stats.ok:  # e.g. Ray's workers cannot import data_prep: install the project
            raise SystemExit(f"{store}: {stats.summary_line()}")

    def cfg(epochs: int, workers: int) -> TrainConfig:
        return TrainConfig.model_validate({
            "task": "finetune", "run_name": f"r{time.time_ns()}",
            "data": {"store": str(store), "crop": [8, 32], "multiplier": 2, "loader_workers": 0},
            "model": {"name": "fpn", "kwargs": {"width": 0.25}}, "optim": {"lr": 0.01},
            "epochs": epochs, "batch_size": 2, "workers": workers, "threads_per_worker": 1,
            "storage": str(work / "runs"), "mlflow": f"sqlite:///{work / 'mlflow.db'}",
            "log_model": False, "keep_best": 1, "max_failures": 0})

    watcher = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"
    rows = {}
    for epochs, workers, watched in [(1, 1, False), (3, 1, False), (1, 2, False), (1, 1, True)]:
        walls, cpus = [], []
        if watched:
            os.environ[watcher] = "1"
        for i in range(args.runs + 1):
            t0, c0 = time.perf_counter(), busy_cpu_s()
            run_training(cfg(epochs, workers))
            if i:  # the first is the warm-up
                walls.append(time.perf_counter() - t0)
                cpus.append(busy_cpu_s() - c0)
        os.environ.pop(watcher, None)
        rows[(epochs, workers, watched)] = (statistics.median(walls), statistics.median(cpus))
    print("| epochs | workers | preemption watcher | wall s / run | CPU s / run |\n"
          "|---|---|---|---|---|")
    for (epochs, workers, watched), (wall, cpu) in rows.items():
        print(f"| {epochs} | {workers} | {'on' if watched else 'off'} | {wall:.1f} | {cpu:.1f} |")
    c1, c3, c2w = rows[(1, 1, False)][1], rows[(3, 1, False)][1], rows[(1, 2, False)][1]
    con = rows[(1, 1, True)][1]
    print(f"\ntwo more epochs add {c3 - c1:.1f} CPU s ({(c3 - c1) / 2 / c1:.0%} of a 1-epoch run "
          f"each); a second worker adds {c2w - c1:.1f} CPU s; the preemption watcher adds "
          f"{con - c1:.1f} CPU s (runs with it / without it: {con / c1:.2f})")
    return 0


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's fpn, data_prep
    raise SystemExit(main())
