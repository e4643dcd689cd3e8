"""IPN-V2 (Li et al.): projection learning modules with a learned depth-long skip, then a 2D
U-Net "plane perceptron".

One 3x3x3 conv, three projection learning modules (two 3x3x3 convs each, depth pools derived
from ``depth``: (8, 4, 4) for 128), a learned skip that sees the whole depth of the first
features in one ``(1, D, 1)`` kernel, concatenation, then a 2D U-Net (64 channels throughout,
four 2x2 downsamplings, nearest upsampling) and a 1x1 conv ``head``. Two convs per module puts
the network at the ~2.1 M parameters the poster reports. S and W are padded to multiples of 16
and cropped back; depth is padded up to ``max_depth`` (the product of the pools).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fpn.models._registry import register_model
from fpn.models.blocks import (
    Upsample2d,
    check_choice,
    check_io_channels,
    init_weights,
    make_norm,
    pad_volume,
    scale_channels,
    use_channels_last,
)
from fpn.models.ipn import ProjectionLearningModule, check_io, depth_pools

__all__ = ["IPNv2"]


def _double_conv(cin: int, cout: int, norm: str) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), make_norm(norm, cout, 2), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), make_norm(norm, cout, 2), nn.ReLU(inplace=True),
    )


@register_model("ipnv2")
class IPNv2(nn.Module):
    """IPN-V2, ``(B, C_in, S, D, W) -> (B, C_out, S, W)`` logits, D <= ``max_depth`` (padded up).

    Args:
        in_channels: input channels.
        out_channels: output channels.
        channels: ``(projection channels, plane perceptron channels)``, default (64, 64).
        width: channel width multiplier.
        norm: ``"batch"``, ``"instance"`` or ``"group"``.
        depth: the depth the pools and the skip kernel are derived from (default 128).
        levels: U-Net downsamplings (default 4).
        upsample: ``"nearest"`` or ``"transpose"``.
        init: ``"reference"`` or ``"default"``.
        channels_last: run in channels-last memory formats.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        channels: Sequence[int] = (64, 64),
        width: float = 1.0,
        norm: str = "batch",
        depth: int = 128,
        levels: int = 4,
        upsample: str = "nearest",
        init: str = "reference",
        channels_last: bool = True,
    ) -> None:
        super().__init__()
        check_io_channels(in_channels, out_channels)
        if len(channels) != 2:
            raise ValueError(f"channels must be (projection, plane perceptron), got {tuple(channels)!r}")
        if levels < 1:
            raise ValueError(f"levels must be >= 1, got {levels}")
        check_choice("norm", norm, ("batch", "instance", "group"))
        cproj, cplane = scale_channels(channels, width)
        self.pools = depth_pools(depth, 3)
        self.in_channels, self.out_channels, self.channels = in_channels, out_channels, (cproj, cplane)
        self.depth = int(depth)
        self.min_depth: int = 1
        self.max_depth: int = int(torch.tensor(self.pools).prod())
        self.multiple = 2**levels
        self.channels_last = channels_last

        self.stem = nn.Sequential(
            nn.Conv3d(in_channels, cproj, 3, padding=1, bias=False), make_norm(norm, cproj, 3),
            nn.ReLU(inplace=True),
        )
        self.plms = nn.ModuleList(
            ProjectionLearningModule(cproj, cproj, p, norm, convs=2) for p in self.pools
        )
        self.skip = nn.Sequential(
            nn.Conv3d(cproj, cproj, (1, self.max_depth, 1), bias=False), make_norm(norm, cproj, 3),
            nn.ReLU(inplace=True),
        )
        self.down = nn.ModuleList([_double_conv(2 * cproj, cplane, norm)])
        self.down.extend(_double_conv(cplane, cplane, norm) for _ in range(levels))
        self.ups = nn.ModuleList(Upsample2d(cplane, (2, 2), upsample) for _ in range(levels))
        self.up = nn.ModuleList(_double_conv(2 * cplane, cplane, norm) for _ in range(levels))
        self.head = nn.Conv2d(cplane, out_channels, 1)
        self.init_scheme = init
        init_weights(self, init)
        if channels_last:
            use_channels_last(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C_in, S, D, W) -> (B, C_out, S, W)``."""
        check_io(self, x)
        x, (s, w) = pad_volume(x, self.multiple, self.max_depth, self.multiple)
        fmt = torch.channels_last_3d if self.channels_last else torch.contiguous_format
        first = self.stem(x.contiguous(memory_format=fmt)).contiguous(memory_format=fmt)
        y = first
        for plm in self.plms:
            y = plm(y)
        y = torch.cat([y, self.skip(first)], dim=1).squeeze(3)
        skips = []
        for i, block in enumerate(self.down):
            if i > 0:
                skips.append(y)
                y = F.max_pool2d(y, 2)
            y = block(y)
        for up, block, skip in zip(self.ups, self.up, reversed(skips)):
            y = block(torch.cat([up(y), skip], dim=1))
        return self.head(y)[..., :s, :w]
