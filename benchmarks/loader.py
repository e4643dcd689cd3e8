"""Is the loader the bottleneck? Time per training crop from the store against the training step.

    python benchmarks/loader.py [--store STORE] [--crop 32 256] [--width 1.0] [--threads 1]

Loader: ``CropDataset.__getitem__`` in one process (read the crop from Zarr, decode, per-B-scan
z-score with cached statistics, augment). Step: FPN forward + backward + SGD step on a batch of
such crops, per crop, with the given torch threads. Prints the ratio and the number of loader
processes that keeps one training worker fed: ``ceil(loader time / step time)``.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store")
    ap.add_argument("--shape", type=int, nargs=3, default=[32, 128, 256])
    ap.add_argument("--crop", type=int, nargs=2, default=[32, 256])
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--crops", type=int, default=40)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from fpn.config import DataConfig
    from fpn.data.dataset import CropDataset
    from fpn.data.store import open_store
    from fpn.models import create_model

    with tempfile.TemporaryDirectory() as tmp_name:
        store = args.store
        if store is None:
            from data_prep.convert import convert
            from data_prep.synthetic import make_synthetic_dataset

            tmp = Path(tmp_name)
            make_synthetic_dataset(tmp / "src", patients=4, unlabelled=0,
                                   shape=tuple(args.shape), visits=1, seed=0)
            convert(str(tmp / "src"), str(tmp / "store.zarr"), progress=False, num_cpus=1)
            store = str(tmp / "store.zarr")
        keys = [v.key for v in open_store(store).visits_for(require="mask")]
        ds = CropDataset(DataConfig(store=store, crop=tuple(args.crop), multiplier=1000), keys)
        for k in keys:  # B-scan statistics are cached per process in training too
            ds._handle.stats(k)
        t0 = time.perf_counter()
        for i in range(args.crops):
            x, _ = ds[i]
        loader_s = (time.perf_counter() - t0) / args.crops

        model = create_model("fpn", width=args.width)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        batch = torch.stack([ds[i][0] for i in range(args.batch_size)])
        target = torch.stack([ds[i][1] for i in range(args.batch_size)])
        loss_fn = torch.nn.BCEWithLogitsLoss()
        times = []
        for _ in range(4):
            t0 = time.perf_counter()
            loss = loss_fn(model(batch), target)
            opt.zero_grad()
            loss.backward()
            opt.step()
            times.append(time.perf_counter() - t0)
        step_s = min(times[1:]) / args.batch_size
    print(f"crop {tuple(x.shape[1:])} from a {args.shape} volume; FPN width {args.width}, "
          f"{args.threads} thread(s); {os.cpu_count()} cores")
    print(f"loader: {1000 * loader_s:.1f} ms/crop   step: {1000 * step_s:.1f} ms/crop   "
          f"loader/step = {loader_s / step_s:.3f}")
    print(f"loader processes needed per training worker: {max(1, math.ceil(loader_s / step_s))}")


if __name__ == "__main__":
    main()
