"""The CPU training step, side by side: our FPN against the authors' release design, and options.

Question (issue 25, "a faster CPU step"): how much faster is one training step (zero_grad,
forward, BCE loss, backward, SGD step with momentum) of ``fpn.models.FPN`` than of ``PlainFPN``
(the authors' release design written plainly, ``benchmarks/model_speed.py``) on this CPU, and
what do the CPU's options add: bf16 autocast (AMX), ``torch.compile`` (inductor), the
contiguous layout, and the FPN of an earlier git revision (``--against REV``)?

Every variant lives in one process and they take turns: each repeat runs ``--iters`` steps of
every variant, in an order that rotates from repeat to repeat, so that a machine shared with
other work slows them alike. Reported per variant: the median over repeats of the median step
time, its ratio to the first variant's (``x first``), the median of the per-repeat ratios
(``paired``), the best (least disturbed) repeat and its ratio, the process CPU seconds per
step (both threads) and the warm-up time (compilation, for ``compile``). Load averages before
and after are printed: on a shared machine, read the ratios, not the times.

Variants are ``BASE[+OPTION...]``: BASE is ``plain`` (the yardstick), ``fpn`` (this working
tree) or ``fpn@REV`` (``fpn/models/{blocks,projection,fpn}.py`` as of git revision REV, loaded
as a private package). OPTION is ``bf16`` (``torch.autocast("cpu", torch.bfloat16)``),
``onednn-bf16`` (fp32 tensors, oneDNN allowed to compute in bf16 inside:
``torch.backends.mkldnn.flags(fp32_precision="bf16")``), ``compile`` (``torch.compile``,
inductor) or ``contiguous`` (FPN built with ``channels_last=False``).
All variants start from the same weights (``copy_plain_weights``).

Usage::

    python benchmarks/cpu_step.py                                   # the issue's shape, 2 threads
    python benchmarks/cpu_step.py --variants plain fpn@97c190d fpn fpn+bf16 --repeats 9
    python benchmarks/cpu_step.py --shape 4 16 64 64 --width 0.5 --threads 1   # the demo recipe
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

_ROOT = Path(__file__).resolve().parents[1]
for _p in (str(_ROOT), str(_ROOT / "benchmarks")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from model_speed import PlainFPN, copy_plain_weights

from fpn.models import create_model
from fpn.models.fpn import REFERENCE_CHANNELS

__all__ = ["build_variant", "fpn_at_revision", "main", "run_interleaved"]

_OPTIONS = ("bf16", "onednn-bf16", "compile", "contiguous")
_MODEL_FILES = ("blocks", "projection", "fpn")


def fpn_at_revision(rev: str) -> type[nn.Module]:
    """The ``FPN`` class of git revision ``rev``, loaded from ``fpn/models/{blocks,projection,
    fpn}.py`` at that revision as a private package (the working tree's registry is untouched)."""
    pkg = f"_fpn_at_{abs(hash(rev))}"
    if pkg in sys.modules:
        return sys.modules[f"{pkg}.fpn"].FPN
    folder = Path(tempfile.mkdtemp(prefix="fpn_rev_"))
    package = types.ModuleType(pkg)
    package.__path__ = [str(folder)]
    sys.modules[pkg] = package
    for name in _MODEL_FILES:
        source = subprocess.run(["git", "-C", str(_ROOT), "show", f"{rev}:fpn/models/{name}.py"],
                                capture_output=True, text=True, check=True).stdout
        for dep in _MODEL_FILES:
            source = source.replace(f"fpn.models.{dep} import", f"{pkg}.{dep} import")
        # the old FPN must not register itself again under the working tree's name
        source = source.replace('@register_model("fpn")', "")
        path = folder / f"{name}.py"
        path.write_text(source)
        spec = importlib.util.spec_from_file_location(f"{pkg}.{name}", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[f"{pkg}.{name}"] = module
        spec.loader.exec_module(module)
    return sys.modules[f"{pkg}.fpn"].FPN


def _channels(width: float) -> tuple[int, ...]:
    return tuple(max(1, round(c * width)) for c in REFERENCE_CHANNELS)


def build_variant(name: str, width: float, plain_weights: PlainFPN,
                  x: torch.Tensor) -> Callable[[], float]:
    """One training step of variant ``name`` as a function returning its loss (see the module
    docstring for the names); the model and its SGD optimiser live in the closure."""
    base, *options = name.split("+")
    unknown = set(options) - set(_OPTIONS)
    if unknown:
        raise ValueError(f"variant {name!r}: unknown options {sorted(unknown)}; choose from "
                         f"{list(_OPTIONS)}")
    if base == "plain":
        if "contiguous" in options:
            raise ValueError(f"variant {name!r}: plain is contiguous already")
        model: nn.Module = PlainFPN(channels=_channels(width))
        model.load_state_dict(plain_weights.state_dict())
    elif base == "fpn" or base.startswith("fpn@"):
        cls = fpn_at_revision(base[4:]) if base.startswith("fpn@") else None
        kwargs = {"width": width, "channels_last": "contiguous" not in options}
        model = cls(**kwargs) if cls is not None else create_model("fpn", **kwargs)
        copy_plain_weights(plain_weights, model)
    else:
        raise ValueError(f"variant {name!r}: base must be plain, fpn or fpn@REV")
    forward = torch.compile(model) if "compile" in options else model
    if "bf16" in options:
        autocast: Callable[[], contextlib.AbstractContextManager] = \
            lambda: torch.autocast("cpu", dtype=torch.bfloat16)
    elif "onednn-bf16" in options:  # fp32 tensors, oneDNN free to compute in bf16 inside
        autocast = lambda: torch.backends.mkldnn.flags(enabled=True, fp32_precision="bf16")
    else:
        autocast = contextlib.nullcontext
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    target = (torch.rand(x.shape[0], 1, x.shape[2], x.shape[4], generator=g) > 0.5).float()
    model.train()

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            logits = forward(x)
        loss = F.binary_cross_entropy_with_logits(logits.float(), target)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    return step


def run_interleaved(steps: dict[str, Callable[[], float]], *, repeats: int, iters: int,
                    warmup: int, log: Callable[[str], None] = print) -> dict[str, dict]:
    """Warm every step up, then ``repeats`` rounds of ``iters`` steps of each, in rotating order.

    Returns per variant: ``wall`` (per-repeat median seconds per step), ``cpu`` (per-repeat
    median process CPU seconds per step) and ``warmup_s``.
    """
    out: dict[str, dict] = {n: {"wall": [], "cpu": [], "warmup_s": 0.0} for n in steps}
    for name, step in steps.items():
        t = time.perf_counter()
        for _ in range(warmup):
            step()
        out[name]["warmup_s"] = time.perf_counter() - t
        log(f"  warm-up {name}: {out[name]['warmup_s']:.1f} s")
    names = list(steps)
    for r in range(repeats):
        order = names[r % len(names):] + names[:r % len(names)]
        load = os.getloadavg()[0]
        for name in order:
            walls, cpus = [], []
            for _ in range(iters):
                c, t = time.process_time(), time.perf_counter()
                steps[name]()
                walls.append(time.perf_counter() - t)
                cpus.append(time.process_time() - c)
            out[name]["wall"].append(statistics.median(walls))
            out[name]["cpu"].append(statistics.median(cpus))
        log(f"  repeat {r + 1}/{repeats} (load {load:.1f}): " + "  ".join(
            f"{n} {out[n]['wall'][-1] * 1e3:.0f}" for n in names) + " ms")
    return out


def summarise(results: dict[str, dict], batch: int) -> list[dict]:
    """Rows: medians, the ratio to the first variant (of medians, and paired per repeat)."""
    names = list(results)
    first = results[names[0]]["wall"]
    rows = []
    for name in names:
        wall = results[name]["wall"]
        rows.append({
            "variant": name,
            "ms_per_step": statistics.median(wall) * 1e3,
            "ms_per_crop": statistics.median(wall) * 1e3 / batch,
            "best_ms_per_step": min(wall) * 1e3,
            "x_first_best": min(first) / min(wall),
            "x_first": statistics.median(first) / statistics.median(wall),
            "x_first_paired": statistics.median(a / b for a, b in zip(first, wall)),
            "x_first_range": (min(a / b for a, b in zip(first, wall)),
                              max(a / b for a, b in zip(first, wall))),
            "cpu_s_per_step": statistics.median(results[name]["cpu"]),
            "warmup_s": results[name]["warmup_s"],
        })
    return rows


def main(argv: list[str] | None = None) -> int:
    """Command line entry: see the module docstring."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", nargs="+", default=["plain", "fpn", "fpn+bf16"],
                   help="the first is the reference of the ratios (default: plain fpn fpn+bf16)")
    p.add_argument("--shape", nargs=4, type=int, default=[1, 16, 128, 128],
                   metavar=("B", "S", "D", "W"), help="input (B, 1, S, D, W); default 1 16 128 128")
    p.add_argument("--width", type=float, default=1.0, help="channel width of both networks")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--iters", type=int, default=2, help="steps per variant per repeat")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per variant first")
    p.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = p.parse_args(argv)
    if min(args.repeats, args.iters, args.threads) < 1 or args.warmup < 0:
        p.error("--repeats, --iters and --threads must be >= 1, --warmup >= 0")
    torch.set_num_threads(args.threads)
    b, s, d, w = args.shape
    torch.manual_seed(0)
    x = torch.randn(b, 1, s, d, w)
    plain = PlainFPN(channels=_channels(args.width))
    steps = {n: build_variant(n, args.width, plain, x) for n in args.variants}
    load0 = os.getloadavg()
    print(f"torch {torch.__version__}, {args.threads} threads, input {tuple(x.shape)}, width "
          f"{args.width:g}, {args.repeats} repeats x {args.iters} steps; load average "
          f"{load0[0]:.1f} {load0[1]:.1f} {load0[2]:.1f}", flush=True)
    results = run_interleaved(steps, repeats=args.repeats, iters=args.iters, warmup=args.warmup,
                              log=lambda m: print(m, flush=True))
    load1 = os.getloadavg()
    rows = summarise(results, b)
    print(f"load average after: {load1[0]:.1f} {load1[1]:.1f} {load1[2]:.1f}")
    print(f"| variant | ms/step | ms/crop | x {args.variants[0]} | paired (min-max) | best ms | "
          f"x {args.variants[0]}, best | CPU s/step | warm-up s |")
    print("|---|---:|---:|---:|---|---:|---:|---:|---:|")
    for r in rows:
        lo, hi = r["x_first_range"]
        print(f"| {r['variant']} | {r['ms_per_step']:.0f} | {r['ms_per_crop']:.0f} | "
              f"{r['x_first']:.2f} | {r['x_first_paired']:.2f} ({lo:.2f}-{hi:.2f}) | "
              f"{r['best_ms_per_step']:.0f} | {r['x_first_best']:.2f} | "
              f"{r['cpu_s_per_step']:.2f} | {r['warmup_s']:.1f} |")
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)},
                                         "torch": torch.__version__, "load_before": load0,
                                         "load_after": load1, "rows": rows,
                                         "raw": results}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
