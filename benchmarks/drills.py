"""Fault drills on a multi-node Ray cluster on one machine: what a lost spot node costs a run.

``python benchmarks/drills.py node-loss``: a head (the driver resource, no CPUs for training) and
two worker nodes, each with its own raylet and one CPU, run a tiny 2-worker training; right after
the checkpoint of ``--kill-after`` is persisted, the node of one worker is removed
(``ray.cluster_utils.Cluster.remove_node``, processes killed, as a spot reclaim does). Then:

- default (fixed 2 workers): a replacement node joins (what the autoscaler does on a cloud) and
  Ray Train restarts both workers from the last checkpoint (``FailureConfig(max_failures)``);
- ``--elastic`` (``workers_min=1``, ``ScalingConfig(num_workers=(1, 2))``): no replacement; the
  run goes on with the one worker left.

It prints, from ``attempts.jsonl`` (one line per (re)start, written by rank 0) and MLflow: the
attempts and their world sizes, the epochs repeated, the time lost (from the last checkpoint
before the loss to the restarted run's next checkpoint, less one normal epoch) and whether MLflow
holds every epoch exactly once. ``--json PATH`` writes the same figures (the test reads them).

The search driver's kill-and-resume drill lives with the search (``tune/``): re-submitting the
same ``python tune/search.py ...`` resumes the study without repeating finished trials.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

__all__ = ["main", "node_loss_drill"]

SHAPE = (8, 64, 32)  # (S, D, W): tiny volumes, the drill measures recovery, not learning


def _make_store(work: Path) -> str:
    from data_prep.convert import convert
    from data_prep.synthetic import make_synthetic_dataset

    source = work / "source"
    if not source.exists():
        make_synthetic_dataset(source, patients=4, unlabelled=0, shape=SHAPE, visits=1, seed=0)
    store = work / "store.zarr"
    stats = convert(str(source), str(store), progress=False)
    if not stats.ok:
        raise RuntimeError(stats.summary_line())
    return str(store)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:  # other Ray instances on this machine may hold 8265
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _checkpoint_epochs(run_dir: Path) -> set[int]:
    return {int(p.name.split("_")[1]) for p in run_dir.glob("epoch_*") if p.is_dir()}


def _attempts(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "attempts.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def node_loss_drill(work: Path, *, elastic: bool = False, epochs: int = 4, kill_after: int = 0,
                    multiplier: int = 40, replace_after_s: float = 2.0,
                    settle_s: float = 1.0) -> dict[str, Any]:
    """Run the node-loss drill in ``work`` and return its figures (see the module docstring)."""
    import ray
    from mlflow.tracking import MlflowClient
    from ray.cluster_utils import Cluster

    from fpn.config import TrainConfig
    from fpn.training.driver import run_training

    if not 0 <= kill_after < epochs - 1:
        raise ValueError(f"--kill-after must be in [0, epochs - 2], got {kill_after}")
    work.mkdir(parents=True, exist_ok=True)
    # faster failure detection than the default 2 s poll; Ray Train forwards it to its controller
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    # the cluster's address is recorded in a private RAY_TMPDIR: recorded in the default one,
    # it would become "the" cluster that Ray's auto-detection finds for every other Ray job on
    # this machine while the drill runs (see fpn.training.ray_connect)
    ray_tmp = os.environ["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="dr", dir="/tmp")  # short
    # the head: drivers only (the driver resource, as on the cluster's on-demand head)
    cluster = Cluster(initialize_head=True, connect=False,
                      head_node_args={"num_cpus": 0, "resources": {"fpn_driver": 1},
                                      "include_dashboard": True,
                                      "dashboard_port": _free_port()})
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    events: dict[str, float] = {}
    try:
        store = _make_store(work)
        name = "drill-elastic" if elastic else "drill-fixed"
        cfg = TrainConfig.model_validate({
            "task": "finetune",
            "data": {"store": store, "crop": [8, 32], "multiplier": multiplier,
                     "loader_workers": 0},
            "model": {"name": "fpn", "kwargs": {"width": 0.25}},
            "optim": {"lr": 0.01}, "epochs": epochs, "batch_size": 2, "workers": 2,
            "workers_min": 1 if elastic else None,
            "threads_per_worker": 1, "storage": str(work / "runs"),
            "mlflow": f"sqlite:///{work / 'mlflow.db'}", "experiment": "drills",
            "run_name": name, "log_model": False, "keep_best": epochs, "overlay_every": 0,
            "max_failures": 2,
        })
        run_dir = work / "runs" / name

        def kill_a_node() -> None:
            while kill_after not in _checkpoint_epochs(run_dir):
                if events.get("done"):
                    return
                time.sleep(0.2)
            # let the Train controller collect that report (it polls workers every
            # RAY_TRAIN_HEALTH_CHECK_INTERVAL_S) so the loss hits the next epoch
            time.sleep(settle_s)
            events["kill"] = time.time()
            events["last_checkpoint"] = max(_checkpoint_epochs(run_dir))
            cluster.remove_node(workers[1], allow_graceful=False)
            print(f"[drill] removed a worker node after the checkpoint of epoch {kill_after}",
                  flush=True)
            if not elastic:
                time.sleep(replace_after_s)  # the autoscaler's replacement spot node
                cluster.add_node(num_cpus=1)
                events["replaced"] = time.time()
                print("[drill] a replacement node joined", flush=True)

        result: dict[str, Any] = {}

        def train() -> None:
            try:
                result["outcome"] = run_training(cfg)
            except BaseException as exc:  # noqa: BLE001 -- re-raised in the main thread
                result["error"] = exc
            finally:
                events["done"] = time.time()

        # training in a thread, the node surgery in the main thread (Ray starts nodes there only)
        t0 = time.time()
        trainer = threading.Thread(target=train, daemon=True)
        trainer.start()
        kill_a_node()
        trainer.join()
        if "error" in result:
            raise result["error"]
        outcome = result["outcome"]
        return _figures(cfg, outcome, run_dir, events, t0, elastic,
                        MlflowClient(cfg.tracking_uri()))
    finally:
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(ray_tmp, ignore_errors=True)


def _figures(cfg: Any, outcome: Any, run_dir: Path, events: dict[str, float], t0: float,
             elastic: bool, client: Any) -> dict[str, Any]:
    attempts = _attempts(run_dir)
    kill_after = int(events.get("last_checkpoint", -1))  # the last checkpoint saved before the loss
    history = client.get_metric_history(outcome.mlflow_run_id, "val/dice_mean")
    steps = sorted(m.step for m in history)
    logged_at = {m.step: m.timestamp / 1000.0 for m in history}
    # the epoch time without failures: the mean gap between consecutive logged epochs, taken
    # over the epochs before the loss (both workers, no restart in between)
    before = [logged_at[e] - logged_at[e - 1] for e in range(1, kill_after + 1) if e in logged_at]
    after = [logged_at[e] - logged_at[e - 1] for e in range(kill_after + 3, cfg.epochs)
             if e in logged_at and e - 1 in logged_at]
    epoch_s = (sum(before) / len(before)) if before else (sum(after) / len(after) if after else 0.0)
    restart = attempts[1] if len(attempts) > 1 else None
    resumed_from = restart["start_epoch"] if restart else None
    # the last epoch that completed (reported, checkpointed and logged) before the restart: the
    # node goes right after the checkpoint of ``kill_after``, but on a loaded machine the
    # surviving rank can still finish the next epoch's report before the controller notices
    completed = [e for e, t in logged_at.items() if restart and t <= restart["time"]]
    last_completed = max(completed, default=kill_after)
    in_progress = last_completed + 1  # the epoch being trained when the node went
    lost_s = (logged_at.get(in_progress, 0.0) - logged_at.get(last_completed, 0.0) - epoch_s
              if restart else 0.0)
    return {
        "mode": "elastic (workers 1..2)" if elastic else "fixed (2 workers, replacement node)",
        "epochs": cfg.epochs,
        "killed_after_checkpoint_of_epoch": kill_after,
        "attempts": attempts,
        "world_sizes": [a["world_size"] for a in attempts],
        "resumed_from_epoch": resumed_from,
        "last_epoch_completed_before_restart": last_completed if restart else None,
        # completed epochs trained twice (0 when the restart picks up at the last checkpoint)
        "epochs_repeated": (last_completed + 1 - resumed_from) if restart else 0,
        # the interrupted epoch's work is discarded as well: partial, counted in time_lost_s
        "partial_epochs_discarded": 1 if restart else 0,
        "epoch_s": round(epoch_s, 2),
        "time_lost_s": round(lost_s, 2),
        "detect_and_restart_s": round(restart["time"] - events["kill"], 2)
        if restart and "kill" in events else None,
        "total_s": round(events["done"] - t0, 2),
        "mlflow_epochs_logged": steps,
        "mlflow_each_epoch_once": steps == list(range(cfg.epochs)),
        "best_checkpoints": len(outcome.best_checkpoints),
    }


def _print(fig: dict[str, Any]) -> None:
    print(f"\nnode-loss drill, {fig['mode']}: {fig['epochs']} epochs, a worker node removed "
          f"after the checkpoint of epoch {fig['killed_after_checkpoint_of_epoch']}")
    for i, a in enumerate(fig["attempts"]):
        print(f"  attempt {i}: start epoch {a['start_epoch']}, {a['world_size']} worker(s)")
    print(f"  resumed from epoch {fig['resumed_from_epoch']}; completed epochs repeated: "
          f"{fig['epochs_repeated']}; partial epochs discarded: {fig['partial_epochs_discarded']}")
    print(f"  normal epoch {fig['epoch_s']} s; time lost {fig['time_lost_s']} s "
          f"(node loss -> restarted workers: {fig['detect_and_restart_s']} s); "
          f"total {fig['total_s']} s")
    print(f"  MLflow epochs {fig['mlflow_epochs_logged']} (each once: "
          f"{fig['mlflow_each_epoch_once']})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/drills.py",
                                     description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="drill", required=True)
    p = sub.add_parser("node-loss", help="remove a worker node mid-run")
    p.add_argument("--elastic", action="store_true", help="workers 1..2, no replacement node")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--kill-after", type=int, default=0,
                   help="remove the node after this epoch's checkpoint")
    p.add_argument("--multiplier", type=int, default=40,
                   help="crops per volume per epoch: epochs must outlast the controller's poll")
    p.add_argument("--work", help="working folder (default: a temporary one)")
    p.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    with tempfile.TemporaryDirectory(prefix="fpn-drill-") as tmp:
        work = Path(args.work) if args.work else Path(tmp)
        fig = node_loss_drill(work, elastic=args.elastic, epochs=args.epochs,
                              kill_after=args.kill_after, multiplier=args.multiplier)
    _print(fig)
    if args.json:
        Path(args.json).write_text(json.dumps(fig, indent=2))
    ok = fig["mlflow_each_epoch_once"] and len(fig["attempts"]) >= 2
    return 0 if ok else 1


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
