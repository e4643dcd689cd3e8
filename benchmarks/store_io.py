"""Store I/O benchmark: which OCT chunk shape serves the training access pattern best?

Writes the same volumes as raw float32 ``.npy`` and as fpn stores with several OCT chunk shapes,
then measures, reading through :func:`fpn.data.open_store` (decode included):

- random training crops (32 B-scans x full depth x 256 A-scans, clipped to the volume) per second,
  against the same crops read from the ``.npy`` files with ``np.load(mmap_mode="r")``;
- whole-volume read time (validation reads whole volumes), against ``np.load``;
- store size relative to the raw float32 ``.npy`` files (target <= 0.55 with float16).

Warm page cache on a local disk: this compares decode and chunk over-read costs, not the disk.

    python benchmarks/store_io.py                      # (49, 128, 512) x 4 volumes, float16
    python benchmarks/store_io.py --shape 49 496 512 --dtype float16 --crops 100
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

from data_prep.sources import VisitArrays
from data_prep.store_writer import (
    DEFAULT_OCT_CHUNKS,
    Encoding,
    init_store,
    write_index,
    write_visit,
)
from fpn.data.store import open_store

CROP = (32, None, 256)  # B-scans, depth (None = full), A-scans


def _chunk_label(chunks) -> str:
    return "(" + ", ".join(str(c) if c else axis for c, axis in zip(chunks, "SDW")) + ")"


def phantom_volume(shape: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    """A flattened-retina-like float32 ``(S, D, W)`` volume: smooth layers under speckle noise.

    Real OCT is layered along depth and speckled (multiplicative, roughly Rayleigh/gamma); both
    matter for how well it compresses, so a plain random array would mislead.
    """
    s, d, w = shape
    depth = np.linspace(0.0, 1.0, d, dtype=np.float32)[None, :, None]
    ripple = 0.03 * np.sin(np.linspace(0, 6 * np.pi, w, dtype=np.float32))[None, None, :]
    slow = 0.02 * np.sin(np.linspace(0, 2 * np.pi, s, dtype=np.float32))[:, None, None]
    centre = 0.45 + ripple + slow
    layers = (np.exp(-((depth - centre) / 0.03) ** 2)            # bright RPE band
              + 0.6 * np.exp(-((depth - centre + 0.15) / 0.08) ** 2)  # inner retina
              + 0.1)
    speckle = rng.gamma(shape=2.0, scale=0.5, size=shape).astype(np.float32)
    return (layers * speckle).astype(np.float32)


def crop_regions(shapes: list[tuple[int, int, int]], n: int, rng: np.random.Generator):
    """``n`` random (volume index, region) pairs of the training crop, clipped to the volume."""
    out = []
    for _ in range(n):
        i = int(rng.integers(len(shapes)))
        s, d, w = shapes[i]
        cs, cw = min(CROP[0], s), min(CROP[2], w)
        s0, w0 = int(rng.integers(s - cs + 1)), int(rng.integers(w - cw + 1))
        out.append((i, (slice(s0, s0 + cs), slice(0, d), slice(w0, w0 + cw))))
    return out


def dir_size(path: str) -> int:
    return sum(os.path.getsize(os.path.join(root, f))
               for root, _, files in os.walk(path) for f in files)


def time_calls(fn, items, repeats: int) -> float:
    """Seconds for one pass of ``fn`` over ``items``: the fastest of ``repeats`` passes (the
    machine is shared, so the minimum is the figure least disturbed by other work)."""
    fn(items[0])  # warm-up (metadata caches, first decode)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for item in items:
            fn(item)
        best = min(best, time.perf_counter() - start)
    return best


def git_revision() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "uncommitted"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=[49, 128, 512],
                        metavar=("S", "D", "W"))
    parser.add_argument("--volumes", type=int, default=4)
    parser.add_argument("--crops", type=int, default=100)
    parser.add_argument("--dtype", default="float16", choices=["float16", "float32", "uint8"])
    parser.add_argument("--repeats", type=int, default=3, help="timed passes; the best is kept")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    shape = tuple(args.shape)
    candidates = {
        "default " + _chunk_label(DEFAULT_OCT_CHUNKS): DEFAULT_OCT_CHUNKS,
        "per B-scan (1, D, W)": (1, None, None),
        "(4, D, W)": (4, None, None),
        "(8, D, 256)": (8, None, 256),
        "(8, D, 128)": (8, None, 128),
        "(4, D, 128)": (4, None, 128),
        "whole (S, D, W)": (None, None, None),
    }
    seen: set = set()
    candidates = {label: chunks for label, chunks in candidates.items()
                  if not (chunks in seen or seen.add(chunks))}  # drop an alternative = default
    rng = np.random.default_rng(args.seed)
    work = tempfile.mkdtemp(prefix="fpn-store-io-")
    try:
        volumes = [phantom_volume(shape, rng) for _ in range(args.volumes)]
        raw_paths = []
        for i, volume in enumerate(volumes):
            path = os.path.join(work, f"raw_{i}.npy")
            np.save(path, volume)
            raw_paths.append(path)
        raw_bytes = sum(os.path.getsize(p) for p in raw_paths)
        regions = crop_regions([shape] * len(volumes), args.crops, rng)

        def raw_crop(item):
            i, region = item
            return np.array(np.load(raw_paths[i], mmap_mode="r")[region], dtype=np.float32)

        raw_crop_s = time_calls(raw_crop, regions, args.repeats)
        raw_whole_s = time_calls(lambda i: np.load(raw_paths[i]), list(range(len(volumes))),
                                 args.repeats)
        raw_whole_s /= len(volumes)

        print(f"# store_io: {len(volumes)} volumes {shape} float32 phantom -> {args.dtype}; "
              f"{args.crops} random crops {CROP[0]} x D x {CROP[2]}")
        print(f"# {platform.node()} {platform.processor() or platform.machine()}, "
              f"{os.cpu_count()} CPUs, python {platform.python_version()}, "
              f"{datetime.date.today().isoformat()}, rev {git_revision()}")
        print(f"raw .npy (mmap): crops {args.crops / raw_crop_s:8.1f}/s   "
              f"whole volume {raw_whole_s * 1e3:7.1f} ms   size 1.000")
        header = (f"{'chunks':30s} {'crops/s':>9s} {'vs raw':>7s} {'whole ms':>9s} "
                  f"{'vs raw':>7s} {'size':>6s}")
        print(header)
        for label, chunks in candidates.items():
            location = os.path.join(work, f"store_{abs(hash(label))}.zarr")
            encoding = Encoding(oct_dtype=args.dtype, oct_chunks=chunks)
            init_store(location)
            index = {}
            for i, volume in enumerate(volumes):
                key = f"P{i:03d}_OD_0"
                index[key] = write_visit(
                    location, key, VisitArrays(oct=volume, spacing_mm=(0.12, 0.0039, 0.0113)),
                    patient_id=f"P{i:03d}", eye="OD", day=0, encoding=encoding)
            write_index(location, index, {"unlabelled": [e["patient_id"] for e in index.values()]},
                        "seeded:0", encoding)
            store = open_store(location)
            keys = [v.key for v in store.visits]
            crop_s = time_calls(lambda item, store=store, keys=keys:
                                store.read(keys[item[0]], "oct", item[1]), regions,
                                args.repeats)
            whole_s = time_calls(lambda k, store=store: store.read(k, "oct"), keys,
                                 args.repeats) / len(keys)
            size = dir_size(os.path.join(location, "visits")) / raw_bytes
            print(f"{label:30s} {args.crops / crop_s:9.1f} {raw_crop_s / crop_s:7.2f} "
                  f"{whole_s * 1e3:9.1f} {raw_whole_s / whole_s:7.2f} {size:6.3f}")
        print("# vs raw = speed relative to raw .npy (>1 = faster); size = store / raw float32 .npy")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
