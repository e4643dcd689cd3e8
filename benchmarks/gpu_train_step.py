"""The real training loop on a GPU: fp32 against bf16 autocast + channels_last, side by side.

    python benchmarks/gpu_train_step.py            # on the GPU machine
    python benchmarks/gpu_train_step.py --dry-run  # CPU, tiny sizes: tests the script

Where ``gpu_check.py`` times the network alone, this runs ``fpn.training.loop.train_epoch`` (the
function every Ray Train worker runs: device transfer, autocast, loss, backward, SGD step) on
in-memory crops of 32 x 128 x 256 at batch 8, for the segmentation loss and the SSIM
reconstruction loss, and whole-volume inference of a 49 x 128 x 512 volume through
``fpn.inference.Ensemble``. Prints crops/s and ratios against the fp32 path measured in the same
run; writes ``$OUT/gpu_train_step.json`` when OUT is set.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
from torch.utils.data import DataLoader, TensorDataset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--crops", type=int, default=96)
    args = ap.parse_args()

    from fpn.config import TrainConfig
    from fpn.inference import Ensemble
    from fpn.losses import build_loss
    from fpn.models import create_model
    from fpn.training.loop import build_optimizer, train_epoch

    cuda = torch.cuda.is_available() and not args.dry_run
    device = torch.device("cuda" if cuda else "cpu")
    crop, n, batch = ((32, 128, 256), args.crops, 8) if cuda else ((8, 64, 32), 4, 2)
    vol_shape = (49, 128, 512) if cuda else (9, 64, 40)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, *crop, generator=g)
    y_mask = (torch.rand(n, 1, crop[0], crop[2], generator=g) > 0.7).float()
    y_img = torch.rand(n, 1, crop[0], crop[2], generator=g)
    report: dict = {"device": torch.cuda.get_device_name() if cuda else "cpu",
                    "torch": torch.__version__, "crop": crop, "batch": batch, "rows": []}

    variants = [("fp32 eager, contiguous", False, False), ("bf16 autocast", True, False),
                ("bf16 autocast + channels_last_3d", True, True)]
    for task, target in (("finetune", y_mask), ("pretrain", y_img)):
        base = None
        for label, amp, cl in variants:
            cfg = TrainConfig.model_validate({
                "task": task, "data": {"store": "unused", "target":
                                       "mask" if task == "finetune" else "inverted_faf"},
                "amp": amp, "channels_last": cl, "batch_size": batch})
            torch.manual_seed(0)
            model = create_model("fpn", channels_last=cl).to(device)
            opt = build_optimizer(model, cfg.optim)
            loss_fn = build_loss(cfg.loss, cfg.is_ssl)
            loader = DataLoader(TensorDataset(x, target), batch_size=batch, shuffle=False,
                                pin_memory=cuda, drop_last=True)
            train_epoch(model, [next(iter(loader))], loss_fn, opt, device, cfg)  # warm-up
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            stats = train_epoch(model, loader, loss_fn, opt, device, cfg)
            if cuda:
                torch.cuda.synchronize()
            rate = stats["crops"] / stats["seconds"]
            base = base or rate
            row = {"task": task, "variant": label, "crops_per_s": rate, "vs_fp32": rate / base,
                   "loss": stats["loss"],
                   "peak_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else None}
            report["rows"].append(row)
            print(f"{task:<9} {label:<34} {rate:8.1f} crops/s  {rate / base:5.2f}x  "
                  f"peak {row['peak_mib'] or 0:7.0f} MiB  loss {stats['loss']:.4f}", flush=True)

    model = create_model("fpn")
    member = {"model_name": "fpn", "model_kwargs": {}, "state_dict": model.state_dict(),
              "target": "mask", "zscore_eps": 1e-6}
    ens = Ensemble([member] * (5 if cuda else 2), device=str(device))
    vol = torch.randn(1, 1, *vol_shape)
    ens.predict_normalised(vol)
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    reps = 3 if cuda else 1
    for _ in range(reps):
        p = ens.predict_normalised(vol)
    if cuda:
        torch.cuda.synchronize()
    sec = (time.perf_counter() - t0) / reps
    report["inference"] = {"volume": vol_shape, "members": len(ens), "seconds_per_volume": sec,
                           "output": list(p.shape)}
    print(f"inference: {len(ens)}-member ensemble on a {vol_shape} volume: {sec:.3f} s/volume, "
          f"output {tuple(p.shape)}")
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "gpu_train_step.json"), "w") as fh:
            json.dump(report, fh, indent=2)


if __name__ == "__main__":
    main()
