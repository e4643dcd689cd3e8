"""One-shot GPU check of the FPN training step (for a rented H100, ~6 minute budget).

Checks CUDA, then times FPN forward + backward + SGD step at batch 8 of 1 x 32 x 128 x 256 crops
(S x D x W) in fp32, bf16 autocast, bf16 + channels_last_3d and bf16 + channels_last_3d +
torch.compile (skipped if too little of the budget is left, and guarded), reporting ms/step,
crops/s, peak memory (``torch.cuda.max_memory_allocated``) and the speedup over the plain fp32
eager FPN (``PlainFPN`` from ``benchmarks/model_speed.py``). Also: the relative error of the
optimised FPN against the plain one (same weights, fp32) and of bf16 against fp32, and one bf16
line per baseline model (batch halved on out-of-memory). Prints a table; writes
``$OUT/gpu_check.json`` when ``OUT`` is set.

Usage::

    python benchmarks/gpu_check.py              # on the GPU machine
    python benchmarks/gpu_check.py --dry-run    # CPU, tiny sizes, 1 iteration: tests the script
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from model_speed import PlainFPN, copy_plain_weights, time_train_step

from fpn.models import create_model, list_models


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12))


def _row(label: str, times: list[float], batch: int, device: torch.device, base: float | None) -> dict:
    step = sorted(times)[len(times) // 2]
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else float("nan")
    return {"variant": label, "batch": batch, "ms_per_step": step * 1e3, "crops_per_s": batch / step,
            "peak_mib": peak, "speedup_vs_plain": (base / step) if base else 1.0}


def main(argv: list[str] | None = None) -> int:
    """Run the check; returns the process exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, 1 iteration")
    parser.add_argument("--budget-s", type=float, default=330.0,
                        help="skip torch.compile when less than 120 s of this would remain")
    parser.add_argument("--iters", type=int, default=10)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    report: dict = {"torch": torch.__version__, "cuda_available": torch.cuda.is_available()}
    if args.dry_run:
        device, batch, size, iters, warmup = torch.device("cpu"), 2, (8, 64, 32), 1, 0
        torch.set_num_threads(min(2, torch.get_num_threads()))
    elif not torch.cuda.is_available():
        print("CUDA is not available: nothing to check (use --dry-run on a CPU machine)")
        return 2
    else:
        device, batch, size, iters, warmup = torch.device("cuda"), 8, (32, 128, 256), args.iters, 3
        report["gpu"] = torch.cuda.get_device_name()
        torch.backends.cudnn.benchmark = True
    report.update(device=str(device), batch=batch, size=list(size))
    print(f"torch {torch.__version__} on {report.get('gpu', device)}; batch {batch} x 1 x {size}")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def reset_peak() -> None:
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    torch.manual_seed(0)
    x = torch.randn(batch, 1, *size, device=device)
    rows: list[dict] = []

    # --- correctness: optimised vs plain (fp32), bf16 vs fp32 (eval mode: deterministic BN)
    plain = PlainFPN().to(device)
    fast = create_model("fpn", channels_last=True).to(device)
    copy_plain_weights(plain, fast)
    with torch.no_grad():
        plain.eval(), fast.eval()
        ref = plain(x[:1])
        report["rel_err_fpn_vs_plain_fp32"] = _relative_error(fast(x[:1]), ref)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            report["rel_err_bf16_vs_fp32"] = _relative_error(fast(x[:1]), ref)
    del ref

    # --- timings
    reset_peak()
    base_times = time_train_step(plain, x, iters=iters, warmup=warmup)
    rows.append(_row("plain fp32 eager", base_times, batch, device, None))
    base = rows[0]["ms_per_step"] / 1e3
    del plain
    variants = [("fpn fp32", False, None, False), ("fpn bf16", False, torch.bfloat16, False),
                ("fpn bf16+cl3d", True, torch.bfloat16, False),
                ("fpn bf16+cl3d+compile", True, torch.bfloat16, True)]
    for label, channels_last, dtype, compiled in variants:
        if compiled:
            left = args.budget_s - (time.perf_counter() - start)
            if args.dry_run or left < 120:
                why = "dry run" if args.dry_run else f"only {left:.0f} s of the budget left"
                rows.append({"variant": label, "skipped": why})
                continue
        torch.manual_seed(0)
        model = create_model("fpn", channels_last=channels_last).to(device)
        reset_peak()
        try:
            step_fn = torch.compile(model) if compiled else None
            times = time_train_step(model, x, iters=iters, warmup=warmup, autocast_dtype=dtype,
                                    step_fn=step_fn)
            rows.append(_row(label, times, batch, device, base))
        except Exception as err:  # noqa: BLE001 - report the failed variant and go on
            rows.append({"variant": label, "error": f"{type(err).__name__}: {err}"[:400]})
        del model
        sync()

    # --- one bf16 line per baseline (channels_last_3d), batch halved on out-of-memory
    for name in [n for n in list_models() if n != "fpn"]:
        b = batch
        while b >= 1:
            torch.manual_seed(0)
            model = create_model(name, channels_last=True).to(device)
            reset_peak()
            try:
                times = time_train_step(model, x[:b], iters=max(1, iters // 2), warmup=min(1, warmup),
                                        autocast_dtype=torch.bfloat16)
                row = _row(f"{name} bf16+cl3d", times, b, device, None)
                row["speedup_vs_plain"] = (base / batch) / (row["ms_per_step"] / 1e3 / b)
                rows.append(row)
                break
            except torch.OutOfMemoryError:
                del model
                b //= 2
            finally:
                sync()
        else:
            rows.append({"variant": f"{name} bf16+cl3d", "error": "out of memory at batch 1"})

    report["rows"] = rows
    report["elapsed_s"] = time.perf_counter() - start
    print(f"{'variant':26s} {'batch':>5s} {'ms/step':>9s} {'crops/s':>8s} {'peak MiB':>9s} "
          f"{'x plain':>8s}")
    for r in rows:
        if "ms_per_step" in r:
            print(f"{r['variant']:26s} {r['batch']:5d} {r['ms_per_step']:9.1f} {r['crops_per_s']:8.2f} "
                  f"{r['peak_mib']:9.0f} {r['speedup_vs_plain']:8.2f}")
        else:
            print(f"{r['variant']:26s} {r.get('skipped') or r.get('error')}")
    print(f"rel. error FPN vs plain (fp32): {report['rel_err_fpn_vs_plain_fp32']:.2e}; "
          f"bf16 vs fp32: {report['rel_err_bf16_vs_fp32']:.2e}; elapsed {report['elapsed_s']:.0f} s")
    if os.environ.get("OUT"):
        path = Path(os.environ["OUT"]) / "gpu_check.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(report, indent=1))
        tmp.replace(path)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
