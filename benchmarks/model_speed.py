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

from fpn.models import create_model, list_models  # noqa: E402

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
