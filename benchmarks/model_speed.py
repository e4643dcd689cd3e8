"""Training-step speed and peak memory of every model, against a plain fp32 eager FPN.

Times forward + backward (+ an SGD step's worth of zero_grad) per 32 x 128 x 256 crop
(S x D x W) at batch 1 and 2 on CPU, and on a GPU when one is available (fp32, bf16 autocast,
channels_last_3d, torch.compile). Ratios are against ``PlainFPN``: the released FPN design written
plainly (depth-last (S, W, D) layout, contiguous NCDHW, 3D convs everywhere, upsampling by index
gathering, fp32, eager), kept here as the yardstick.

CPU peak memory is the rise of the process's resident set high-water mark (``resource``
``ru_maxrss``) over the run of one configuration, measured in a fresh subprocess per
configuration so that earlier runs do not hide it. GPU peak memory is
``torch.cuda.max_memory_allocated``.

Usage::

    python benchmarks/model_speed.py --quick                 # small sizes, few iterations
    python benchmarks/model_speed.py --models fpn lachinov --threads 2
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

from fpn.models import create_model, list_models

__all__ = ["PlainFPN", "copy_plain_weights", "time_train_step"]

# ----------------------------------------------------------------------------------- yardstick


class _PlainUnitA(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(cin, cout, (1, 3, 3), padding=(0, 1, 1), bias=False)
        self.bn1 = nn.BatchNorm3d(cout)
        self.conv2 = nn.Conv3d(cout, cout, (1, 3, 3), padding=(0, 1, 1), bias=False)
        self.bn2 = nn.BatchNorm3d(cout)
        self.shortcut = (
            nn.Sequential(nn.Conv3d(cin, cout, 1, bias=False), nn.BatchNorm3d(cout))
            if cin != cout
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class _PlainUnitB(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(c, c, (1, 3, 3), padding=(0, 1, 1), bias=False)
        self.bn1 = nn.BatchNorm3d(c)
        self.conv2 = nn.Conv3d(c, c, (1, 3, 3), padding=(0, 1, 1), bias=False)
        self.bn2 = nn.BatchNorm3d(c)
        self.conv3 = nn.Conv3d(c, c, (3, 1, 1), padding=(1, 0, 0), bias=False)
        self.bn3 = nn.BatchNorm3d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        return F.relu(self.bn3(self.conv3(y)) + x)


class _PlainProjection(nn.Module):
    def __init__(self, c: int, n: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(n):
            layers += [nn.Conv3d(c, c, (1, 1, 3), stride=(1, 1, 2), padding=(0, 0, 1), bias=False),
                       nn.BatchNorm3d(c)]
            if i < n - 1:
                layers.append(nn.ReLU())
        self.depth_convs = nn.Sequential(*layers)
        self.shortcut = (
            nn.Sequential(nn.Conv3d(c, c, 1, stride=(1, 1, 2**n), bias=False), nn.BatchNorm3d(c))
            if n > 0
            else None
        )
        self.final_conv = nn.Conv3d(c, c, (1, 1, 4), bias=False)
        self.final_norm = nn.BatchNorm3d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.shortcut is not None:
            x = F.relu(self.depth_convs(x) + self.shortcut(x))
        x = F.relu(self.final_norm(self.final_conv(x)))
        return x.mean(dim=-1, keepdim=True)


class _PlainDecoderUnit(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(cin, cout, (3, 3, 1), padding=(1, 1, 0), bias=False)
        self.bn1 = nn.BatchNorm3d(cout)
        self.conv2 = nn.Conv3d(cout, cout, (3, 3, 1), padding=(1, 1, 0), bias=False)
        self.bn2 = nn.BatchNorm3d(cout)
        self.shortcut = nn.Sequential(nn.Conv3d(cin, cout, 1, bias=False), nn.BatchNorm3d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


def _gather_upsample(x: torch.Tensor, factors: tuple[int, int]) -> torch.Tensor:
    """Nearest upsampling of (B, C, S, W, 1) by index gathering, as the reference release does."""
    for dim, f in zip((2, 3), factors):
        if f > 1:
            index = torch.arange(x.shape[dim] * f, device=x.device) // f
            x = x.index_select(dim, index)
    return x


class PlainFPN(nn.Module):
    """The reference FPN written plainly: (B, 1, S, D, W) -> (B, 1, S, W), fp32 eager yardstick.

    Works on (S, W, D) internally like the release. S must be a multiple of 4, W of 16, D >= 64
    and a multiple of 16 (no padding: the benchmark feeds aligned crops).
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 1,
                 channels: tuple[int, ...] = (16, 32, 64, 128, 256)) -> None:
        super().__init__()
        self.encoder = nn.ModuleList()
        self.projections = nn.ModuleList()
        cin = in_channels
        for c, n in zip(channels, (4, 3, 2, 1, 0)):
            self.encoder.append(nn.Sequential(_PlainUnitA(cin, c), _PlainUnitB(c)))
            self.projections.append(_PlainProjection(c, n))
            cin = c
        self.decoder = nn.ModuleList(
            _PlainDecoderUnit(channels[i + 1] + channels[i], channels[i]) for i in (3, 2, 1, 0)
        )
        self.head = nn.Conv3d(channels[0], out_channels, 1)
        self.pools = ((1, 2, 2), (1, 2, 2), (2, 2, 2), (2, 2, 2))
        self.up_factors = ((2, 2), (2, 2), (1, 2), (1, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 1, 2, 4, 3)  # (B, C, S, D, W) -> (B, C, S, W, D)
        skips = []
        for level, (stage, project) in enumerate(zip(self.encoder, self.projections)):
            x = stage(x)
            skips.append(project(x))
            if level < 4:
                x = F.max_pool3d(x, self.pools[level])
        y = skips[-1]
        for unit, skip, f in zip(self.decoder, reversed(skips[:-1]), self.up_factors):
            y = unit(torch.cat([_gather_upsample(y, f), skip], dim=1))
        return self.head(y)[..., 0]


def copy_plain_weights(plain: PlainFPN, model: nn.Module) -> None:
    """Copy PlainFPN's weights into an ``fpn.models.FPN`` (same channels, reference options).

    Both register parameters and buffers in the same order; (S, W, D) kernels are transposed to
    (S, D, W), and the decoder's (3, 3, 1) kernels lose their unit depth axis.
    """
    src, dst = plain.state_dict(), model.state_dict()
    if len(src) != len(dst):
        raise ValueError(f"state dicts differ in length: {len(src)} vs {len(dst)}")
    converted = {}
    for (ks, vs), (kd, vd) in zip(src.items(), dst.items()):
        if vs.ndim == 5 and vd.ndim == 5:
            vs = vs.transpose(-1, -2)
        elif vs.ndim == 5 and vd.ndim == 4:
            vs = vs[..., 0]
        if vs.shape != vd.shape:
            raise ValueError(f"{ks} {tuple(vs.shape)} does not fit {kd} {tuple(vd.shape)}")
        converted[kd] = vs
    model.load_state_dict(converted)


# ------------------------------------------------------------------------------------ timing

PLAIN = "plain-fpn"


def build(name: str, device: str = "cpu", channels_last: bool = True) -> nn.Module:
    """The yardstick (``"plain-fpn"``) or a registered model at its defaults."""
    if name == PLAIN:
        return PlainFPN().to(device)
    return create_model(name, channels_last=channels_last).to(device)


def time_train_step(
    model: nn.Module,
    batch: torch.Tensor,
    *,
    iters: int,
    warmup: int = 1,
    autocast_dtype: torch.dtype | None = None,
    step_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> list[float]:
    """Seconds per training step (zero_grad, forward, BCE loss, backward, SGD step), per iteration.

    Args:
        model: the network (train mode is set here).
        batch: ``(B, C, S, D, W)`` input on the model's device.
        iters: timed iterations; ``warmup`` untimed ones run first.
        autocast_dtype: run forward and loss under ``torch.autocast`` with this dtype.
        step_fn: what to call instead of ``model`` (e.g. a compiled model).
    """
    model.train()
    forward = step_fn if step_fn is not None else model
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    device = batch.device
    target = (torch.rand(batch.shape[0], 1, batch.shape[2], batch.shape[4], device=device) > 0.5).float()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    for i in range(warmup + iters):
        sync()
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32,
                            enabled=autocast_dtype is not None):
            logits = forward(batch)
            loss = F.binary_cross_entropy_with_logits(logits.float(), target)
        loss.backward()
        optimizer.step()
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def _maxrss_mib() -> float:
    # ru_maxrss is KiB on Linux, bytes on macOS
    scale = 1 if platform.system() == "Darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def _cpu_worker(name: str, batch: int, size: tuple[int, int, int], iters: int, threads: int) -> dict:
    """One CPU measurement (runs in its own process so ru_maxrss starts fresh)."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build(name)
    x = torch.randn(batch, 1, *size)
    before = _maxrss_mib()
    times = time_train_step(model, x, iters=iters, warmup=1)
    return {"model": name, "batch": batch, "size": list(size), "threads": threads,
            "step_s": sorted(times)[len(times) // 2], "min_step_s": min(times),
            "peak_rss_delta_mib": _maxrss_mib() - before}


def run_cpu(names: list[str], batches: list[int], size: tuple[int, int, int], iters: int,
            threads: int) -> list[dict]:
    """CPU rows, one subprocess per (model, batch), models interleaved per batch."""
    rows = []
    for batch in batches:
        for name in names:
            cmd = [sys.executable, __file__, "--_worker", name, str(batch), *map(str, size),
                   str(iters), str(threads)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if out.returncode != 0:
                print(f"  {name} batch {batch}: failed: {out.stderr.strip().splitlines()[-1:]}")
                continue
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            r = rows[-1]
            print(f"  {name:10s} b={batch}  {r['min_step_s'] / batch * 1e3:9.1f} ms/crop  "
                  f"rss +{r['peak_rss_delta_mib']:7.0f} MiB", flush=True)
    return rows


def run_gpu(names: list[str], batches: list[int], size: tuple[int, int, int], iters: int,
            compile_models: bool) -> list[dict]:
    """GPU rows: fp32, bf16 autocast, bf16 + channels_last_3d, and (optionally) + torch.compile."""
    rows = []
    variants = [("fp32", None, False, False), ("bf16", torch.bfloat16, False, False),
                ("bf16+cl", torch.bfloat16, True, False)]
    if compile_models:
        variants.append(("bf16+cl+compile", torch.bfloat16, True, True))
    for batch in batches:
        x = torch.randn(batch, 1, *size, device="cuda")
        for name in names:
            for label, dtype, cl, comp in variants if name != PLAIN else variants[:1]:
                torch.manual_seed(0)
                model = build(name, "cuda", channels_last=cl)
                step_fn = torch.compile(model) if comp else None
                torch.cuda.reset_peak_memory_stats()
                try:
                    times = time_train_step(model, x, iters=iters, warmup=3 if comp else 1,
                                            autocast_dtype=dtype, step_fn=step_fn)
                except Exception as err:  # noqa: BLE001 - a failed variant is reported, not fatal
                    print(f"  {name} {label} b={batch}: {type(err).__name__}: {err}"[:300])
                    continue
                step = sorted(times)[len(times) // 2]
                rows.append({"model": name, "variant": label, "batch": batch, "step_s": step,
                             "peak_mib": torch.cuda.max_memory_allocated() / 2**20})
                print(f"  {name:10s} {label:16s} b={batch} {step / batch * 1e3:8.2f} ms/crop  "
                      f"peak {rows[-1]['peak_mib']:8.0f} MiB", flush=True)
                del model, step_fn
                torch.cuda.empty_cache()
    return rows


def _ratios(rows: list[dict], key: str) -> None:
    base = {r["batch"]: r[key] for r in rows if r["model"] == PLAIN and r.get("variant", "fp32") == "fp32"}
    for r in rows:
        if r["batch"] in base:
            r["speedup_vs_plain"] = base[r["batch"]] / r[key]


def main(argv: list[str] | None = None) -> int:
    """Command line entry: see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="16x64x128 crops, 2 iterations")
    parser.add_argument("--models", nargs="+", default=None,
                        help=f"subset of {[PLAIN, *list_models()]} (default: all)")
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--iters", type=int, default=None)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile on GPU")
    parser.add_argument("--json", type=Path, default=None, help="write the rows here")
    parser.add_argument("--_worker", nargs=7, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._worker:
        name, batch, s, d, w, iters, threads = args._worker
        print(json.dumps(_cpu_worker(name, int(batch), (int(s), int(d), int(w)), int(iters), int(threads))))
        return 0
    names = args.models or [PLAIN, *list_models()]
    unknown = set(names) - {PLAIN, *list_models()}
    if unknown:
        parser.error(f"unknown models {sorted(unknown)}; choose from {[PLAIN, *list_models()]}")
    if PLAIN not in names:
        names = [PLAIN, *names]
    size = (16, 64, 128) if args.quick else (32, 128, 256)
    iters = args.iters or (2 if args.quick else 4)
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"threads {args.threads}, crop {size}, iters {iters}")
    print("CPU: best-of-N seconds per training step (the machine may be shared; medians are in "
          "--json); memory = ru_maxrss rise during the steps, one fresh process per row")
    report: dict = {"torch": torch.__version__, "size": size, "cpu": run_cpu(names, args.batches, size, iters, args.threads)}
    _ratios(report["cpu"], "min_step_s")
    if torch.cuda.is_available():
        print(f"GPU: {torch.cuda.get_device_name()}")
        report["gpu"] = run_gpu(names, args.batches, size, iters * 4, not args.no_compile)
        _ratios(report["gpu"], "step_s")
    for device in ("cpu", "gpu"):
        for r in report.get(device, []):
            step = r["min_step_s" if device == "cpu" else "step_s"]
            print(f"{device} {r['model']:10s} {r.get('variant', 'fp32'):16s} b={r['batch']} "
                  f"{step / r['batch'] * 1e3:9.1f} ms/crop  "
                  f"x{r.get('speedup_vs_plain', float('nan')):5.2f} vs plain fp32 eager FPN")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
