"""The demo recipe on CPU: how much faster is a training epoch, and does bf16 learn like fp32?

Two checks on a small synthetic store like the main job's (12 labelled patients, 2 visits,
16 x 64 x 128; made once under ``--workdir``), with the ``cpu-small`` recipe's training step
(crops 16 x 64, batch 4, loader in the training process, SGD lr 0.1 momentum 0.9, Dice + BCE):

``timing``: epochs of ``--steps`` optimiser steps through ``fpn.training.loop.train_epoch`` (the
loop every Ray Train worker runs, with the store, the crop loader and the device policy), arms
taking turns in one process: FPN of git revision ``--against`` (fp32), this tree's FPN (fp32),
this tree's FPN under the CPU bf16 policy, and the same with one DataLoader worker process.
Reports the median epoch seconds and the ratio to the first arm.

``quality``: from the same initial weights and the same crops, ``--steps`` steps in fp32 and in
bf16 autocast, per seed; then BatchNorm statistics recomputed on 8 training batches and the
validation split scored whole-volume: Dice pooled over the split's pixels and the mean of
per-visit Dice (n = the split's patients and visits, printed).

Usage::

    python benchmarks/cpu_recipe.py timing --width 0.5 --rounds 3
    python benchmarks/cpu_recipe.py quality --steps 120 --seeds 0 1
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import torch

_ROOT = Path(__file__).resolve().parents[1]
for _p in (str(_ROOT), str(_ROOT / "benchmarks")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from cpu_step import fpn_at_revision

from fpn.config import TrainConfig
from fpn.data.dataset import CropDataset, VolumeDataset, select_visits
from fpn.data.store import open_store
from fpn.device import DevicePolicy, device_policy
from fpn.losses import build_loss
from fpn.models import create_model
from fpn.training.loop import build_optimizer, train_epoch

__all__ = ["demo_store", "main"]


def demo_store(workdir: Path) -> str:
    """A store like the main job's demo store (made once): 12 labelled patients, 2 visits."""
    store = workdir / "store.zarr"
    if not store.exists():
        from data_prep.convert import convert
        from data_prep.synthetic import make_synthetic_dataset

        make_synthetic_dataset(workdir / "src", patients=12, unlabelled=0, shape=(16, 64, 128),
                               visits=2, seed=0)
        convert(str(workdir / "src"), str(store), progress=False, num_cpus=1)
    return str(store)


def _config(store: str) -> TrainConfig:
    return TrainConfig.model_validate({
        "data": {"store": store, "crop": [16, 64], "loader_workers": 0}, "batch_size": 4,
        "optim": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4}})


def _policy(bf16: bool) -> DevicePolicy:
    # the CPU policy as a recipe with cpu_amp would get it on an AMX machine
    return device_policy("cpu", SimpleNamespace(amp=True, cpu_amp=bf16), amx=bf16)


def timing(args: argparse.Namespace, store: str) -> None:
    """Epoch seconds of each arm, arms taking turns."""
    cfg = _config(store)
    train = select_visits(open_store(store), "mask", "train")
    old_fpn = fpn_at_revision(args.against)

    def arm(name: str) -> Callable[[int], float]:
        torch.manual_seed(0)
        old = name.startswith("fpn@")
        model = old_fpn(width=args.width) if old else create_model("fpn", width=args.width)
        policy = _policy("bf16" in name)
        data = CropDataset(cfg.data, train, seed=0, length=args.steps * cfg.batch_size)
        loader = torch.utils.data.DataLoader(data, batch_size=cfg.batch_size, drop_last=True,
                                             num_workers=1 if "loader" in name else 0)
        opt = build_optimizer(model, cfg.optim)
        loss = build_loss(cfg.loss, False)

        def epoch(e: int) -> float:
            data.set_epoch(e)
            return train_epoch(model, loader, loss, opt, torch.device("cpu"), cfg,
                               policy)["seconds"]

        return epoch

    names = [f"fpn@{args.against} fp32", "fpn fp32", "fpn bf16", "fpn bf16, 1 loader process"]
    arms = {n: arm(n) for n in names}
    for epoch in arms.values():
        epoch(0)  # warm-up
    seconds: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.rounds):
        for n in names[r % len(names):] + names[:r % len(names)]:
            seconds[n].append(arms[n](r + 1))
        print(f"round {r + 1} (load {os.getloadavg()[0]:.1f}): " + "  ".join(
            f"{n} {seconds[n][-1]:.1f} s" for n in names), flush=True)
    first = statistics.median(seconds[names[0]])
    print(f"\n{args.steps} steps of batch 4, width {args.width:g}, {torch.get_num_threads()} "
          "thread(s)\n| arm | s/epoch (median) | ms/step | x first | best s |")
    print("|---|---:|---:|---:|---:|")
    for n in names:
        m = statistics.median(seconds[n])
        print(f"| {n} | {m:.1f} | {m / args.steps * 1e3:.0f} | {first / m:.2f} | "
              f"{min(seconds[n]):.1f} |")


def _validate(model: torch.nn.Module, train_batches: list, volumes: list,
              bf16: bool) -> tuple[float, float]:
    """BatchNorm recomputed on 8 training batches, then (pooled Dice, mean per-visit Dice)."""
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over the batches
    model.train()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for x, _ in train_batches[:8]:
            model(x)
    model.eval()
    inter = total = 0.0
    per_visit = []
    with torch.no_grad():
        for vol, target, _ in volumes:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                pred = torch.sigmoid(model(vol[None]).float())[0, 0] > 0.5
            truth = target[0] > 0.5
            i, t = float((pred & truth).sum()), float(pred.sum() + truth.sum())
            inter, total = inter + i, total + t
            per_visit.append(2 * i / t if t else 1.0)
    return 2 * inter / max(total, 1.0), statistics.mean(per_visit)


def quality(args: argparse.Namespace, store: str) -> None:
    """Training loss and validation Dice of fp32 and bf16 runs from the same start."""
    cfg = _config(store)
    st = open_store(store)
    train = select_visits(st, "mask", "train")
    val = select_visits(st, "mask", "val")
    patients = len({v.patient_id for v in st.visits_for(splits="val", require="mask")})
    volumes = [VolumeDataset(cfg.data, val)[i] for i in range(len(val))]
    loss_fn = build_loss(cfg.loss, False)
    print(f"train: {len(train)} visits; validation: {patients} patients, {len(val)} visits; "
          f"{args.steps} steps of batch 4, width {args.width:g}")
    print("| seed | precision | loss, first quarter | loss, last quarter | val pooled Dice | "
          "val mean Dice | train s |\n|---|---|---:|---:|---:|---:|---:|")
    for seed in args.seeds:
        data = CropDataset(cfg.data, train, seed=seed, length=args.steps * cfg.batch_size)
        data.set_epoch(0)
        batches = list(torch.utils.data.DataLoader(data, batch_size=cfg.batch_size))
        for bf16 in (False, True):
            torch.manual_seed(seed)
            model = create_model("fpn", width=args.width)
            opt = build_optimizer(model, cfg.optim)
            model.train()
            losses, start = [], time.perf_counter()
            for x, y in batches:
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    logits = model(x)
                loss = loss_fn(logits.float(), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses.append(loss.item())
            seconds = time.perf_counter() - start
            pooled, mean = _validate(model, batches, volumes, bf16)
            q = max(1, len(losses) // 4)
            print(f"| {seed} | {'bf16' if bf16 else 'fp32'} | {statistics.mean(losses[:q]):.4f} | "
                  f"{statistics.mean(losses[-q:]):.4f} | {pooled:.4f} | {mean:.4f} | "
                  f"{seconds:.1f} |", flush=True)


def main(argv: list[str] | None = None) -> int:
    """Command line entry: see the module docstring."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("check", choices=["timing", "quality"])
    p.add_argument("--workdir", type=Path, default=Path("/tmp/fpn-cpu-recipe"))
    p.add_argument("--width", type=float, default=0.5)
    p.add_argument("--threads", type=int, default=1, help="torch threads (the main job: 1)")
    p.add_argument("--steps", type=int, default=None,
                   help="optimiser steps per epoch / run (default: 36 timing, 120 quality)")
    p.add_argument("--rounds", type=int, default=3, help="timing: timed epochs per arm")
    p.add_argument("--against", default="HEAD", help="timing: git revision of the first arm")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="quality: seeds")
    args = p.parse_args(argv)
    args.steps = args.steps or (36 if args.check == "timing" else 120)
    if min(args.steps, args.rounds, args.threads) < 1:
        p.error("--steps, --rounds and --threads must be >= 1")
    torch.set_num_threads(args.threads)
    args.workdir.mkdir(parents=True, exist_ok=True)
    store = demo_store(args.workdir)
    (timing if args.check == "timing" else quality)(args, store)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
