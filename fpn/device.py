"""Every decision that depends on the device, in one place, with the device type as an argument.

The training worker, the driver and the ensemble ask :func:`device_policy` what to do on a device
instead of testing ``device.type`` themselves, so that the CUDA branch can be run (and tested) on a
CPU: ``device_policy("cuda", cfg)`` gives the GPU's choices, and its :meth:`DevicePolicy.prepare_model`
and :meth:`DevicePolicy.prepare_input` work on any device. What stays device-bound is only the
hardware itself (the bf16 autocast kernels, NCCL, pinned memory).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = ["CompiledWithFallback", "DevicePolicy", "cpu_has_amx_bf16", "device_policy",
           "to_channels_last"]


@dataclass(frozen=True)
class DevicePolicy:
    """What training and inference do on one device type.

    Attributes:
        device_type: ``"cuda"`` or ``"cpu"``.
        channels_last: weights (5-D ``channels_last_3d``, 4-D ``channels_last``) and 5-D inputs
            in channels-last memory formats (cuDNN's fast 3-D convolutions want them).
        autocast_dtype: the autocast dtype, or ``None`` for plain fp32.
        compile: wrap the training model in ``torch.compile`` (with an eager fallback).
        compile_backend: ``torch.compile``'s backend.
        pin_memory: DataLoaders pin host memory, so that copies can be asynchronous.
        non_blocking: host-to-device copies do not wait.
        ddp_backend: the ``torch.distributed`` backend of the Ray Train worker group.
        gpus_per_worker: GPUs each Ray Train worker holds; fractions share a card between
            workers (the trials of a search on one GPU).
    """

    device_type: str
    channels_last: bool
    autocast_dtype: torch.dtype | None
    compile: bool
    pin_memory: bool
    non_blocking: bool
    ddp_backend: str
    gpus_per_worker: float
    compile_backend: str = "inductor"

    def autocast(self) -> torch.autocast:
        """The autocast context for the forward pass (disabled when ``autocast_dtype`` is None)."""
        dtype = self.autocast_dtype or torch.float32
        return torch.autocast(self.device_type, dtype=dtype, enabled=self.autocast_dtype is not None)

    def prepare_model(self, model: nn.Module, device: torch.device | str) -> nn.Module:
        """Move ``model`` to ``device`` in this policy's memory format (in place; returns it)."""
        model = model.to(device)
        if self.channels_last:
            to_channels_last(model)
        return model

    def prepare_input(self, x: torch.Tensor, device: torch.device | str) -> torch.Tensor:
        """Copy a batch to ``device``; 5-D volumes in ``channels_last_3d`` when asked."""
        x = x.to(device, non_blocking=self.non_blocking)
        if self.channels_last and x.dim() == 5:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        return x

    def wrap_for_training(self, model: nn.Module) -> nn.Module:
        """The module the training loop calls: compiled (falling back to eager) or as is."""
        return CompiledWithFallback(model, backend=self.compile_backend) if self.compile else model

    def resources_per_worker(self, cpus_per_worker: float) -> dict[str, float]:
        """Ray resources of one training worker."""
        res = {"CPU": float(cpus_per_worker)}
        if self.gpus_per_worker > 0:
            res["GPU"] = float(self.gpus_per_worker)
        return res


def cpu_has_amx_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (Intel AMX: Xeon Sapphire Rapids
    and later), where oneDNN's bf16 convolutions are several times faster than fp32 ones.

    Elsewhere bf16 is emulated or runs on narrower units, and nothing was measured there, so
    the CPU policy keeps fp32 (benchmarks/README.md, "A faster CPU step").
    """
    check = getattr(torch.cpu, "_is_amx_tile_supported", None)  # torch's own CPUID probe
    try:
        return bool(check()) if check is not None else False
    except Exception:  # noqa: BLE001 - a probe that fails means: no AMX
        return False


def device_policy(device_type: str, cfg: Any = None, *, amx: bool | None = None) -> DevicePolicy:
    """The policy for ``device_type`` (``"cuda"``/``"cpu"``) under a :class:`~fpn.config.TrainConfig`.

    ``cfg`` may be ``None`` (inference): then the GPU defaults apply (bf16 autocast, channels
    last, no compile) and the CPU runs fp32. Its ``amp``, ``channels_last`` and ``compile``
    fields switch those off or on. On CPU, channels-last stays off (the models already keep
    their own weights in the format oneDNN likes) and so does pinned memory; bf16 autocast is on
    only where the config asks for it with both ``amp`` and ``cpu_amp`` and the CPU has AMX
    (``amx``: None detects it, :func:`cpu_has_amx_bf16`; tests pass True or False).
    """
    device_type = str(device_type).split(":")[0]
    if device_type not in ("cuda", "cpu"):
        raise ValueError(f"unsupported device type {device_type!r}; expected 'cuda' or 'cpu'")
    cuda = device_type == "cuda"
    amp = getattr(cfg, "amp", True)
    cpu_bf16 = (not cuda and cfg is not None and bool(amp) and bool(getattr(cfg, "cpu_amp", False))
                and (cpu_has_amx_bf16() if amx is None else amx))
    channels_last = getattr(cfg, "channels_last", True)
    compile_ = bool(getattr(cfg, "compile", False))
    gpus = float(getattr(cfg, "gpus_per_worker", 1.0 if cuda else 0.0)) if cuda else 0.0
    return DevicePolicy(
        device_type=device_type,
        channels_last=cuda and channels_last,
        autocast_dtype=torch.bfloat16 if (cuda and amp) or cpu_bf16 else None,
        compile=compile_,
        pin_memory=cuda,
        non_blocking=cuda,
        ddp_backend="nccl" if cuda else "gloo",
        gpus_per_worker=gpus,
        compile_backend=str(getattr(cfg, "compile_backend", "inductor")),
    )


def to_channels_last(model: nn.Module) -> nn.Module:
    """Parameters and buffers in channels-last formats by rank: 5-D ``channels_last_3d``, 4-D
    ``channels_last``, others untouched (in place; returns ``model``).

    ``model.to(memory_format=torch.channels_last_3d)`` cannot do this: it raises for any module
    that also holds 4-D (Conv2d) weights, which every registered network does.
    """
    formats = {5: torch.channels_last_3d, 4: torch.channels_last}
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            fmt = formats.get(t.dim())
            if fmt is not None:
                t.data = t.data.contiguous(memory_format=fmt)
    return model


class CompiledWithFallback(nn.Module):
    """Calls ``torch.compile(module)``; where compilation fails, says so in one line and runs the
    module eagerly from then on (the failed call is re-run eagerly, so no step is lost).

    ``module`` stays the registered child: parameters, ``train()``/``eval()`` and the state dict
    are the eager module's (a checkpoint never holds ``_orig_mod.`` keys). ``backend`` and
    ``mode`` go to ``torch.compile``.
    """

    def __init__(self, module: nn.Module, backend: Any = "inductor", mode: str | None = None):
        super().__init__()
        self.module = module
        self.compiled_ok: bool | None = None  # None: not called yet
        try:
            compiled = torch.compile(module, backend=backend, mode=mode)
        except Exception as exc:  # noqa: BLE001 - any failure means: run eagerly
            self._give_up(exc)
            compiled = None
        # not a registered submodule: the compiled wrapper shares the module's parameters
        object.__setattr__(self, "_compiled", compiled)

    def _give_up(self, exc: BaseException) -> None:
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        print(f"[fpn] torch.compile failed ({type(exc).__name__}: {first}); training eagerly",
              file=sys.stderr, flush=True)
        self.compiled_ok = False

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        compiled = self._compiled
        if compiled is None:
            return self.module(*args, **kwargs)
        try:
            out = compiled(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - a real error raises again in the eager call
            object.__setattr__(self, "_compiled", None)
            self._give_up(exc)
            return self.module(*args, **kwargs)
        self.compiled_ok = True
        return out
