"""IPN-V2 (Li et al.): projection learning modules with a learned depth-long skip, then a 2D
U-Net "plane perceptron"; as published (``ipnv2``) and our batch-norm variant (``ipnv2-bn``).

``ipnv2`` follows Li et al.'s public IPN-V2 design: one 3x3x3 conv (with bias, ReLU), three
projection learning modules that pool along depth first and then apply two 3x3x3 convs (depth
pools derived from ``depth``: (8, 4, 4) for 128), no normalisation anywhere; a separate skip
branch, one ``(1, D, 1)`` conv of stride D over the first features (with bias, no activation);
concatenation [skip, projection] and a 2D double conv 2C -> C (the skip branch's own block),
then the plane perceptron: a 2D U-Net (64 channels throughout, an input double conv, four
max-pool 2x2 downsamplings, bilinear upsampling with aligned corners, concatenation
[skip, upsampled], double convs) and a 1x1 conv ``head``. About 2.11 M parameters at defaults.

``ipnv2-bn`` is our earlier variant, kept for comparison: batch norm after every (bias-free)
conv, pooling after the convs, the skip branch with norm and ReLU merged into the U-Net's input
block (no separate double conv), nearest-neighbour upsampling (or transposed convs).

Both pad S and W to multiples of ``2 ** levels`` (16) and crop back; depth is padded up to
``max_depth`` (the product of the pools).
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

__all__ = ["IPNv2", "IPNv2BatchNorm"]


def _plain_double_conv(cin: int, cout: int) -> nn.Sequential:
    """(3x3 conv with bias, ReLU) x 2: the published design's 2D unit, no normalisation."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1), nn.ReLU(inplace=True),
    )


def _check_arguments(channels: Sequence[int], levels: int) -> None:
    if len(channels) != 2:
        raise ValueError(f"channels must be (projection, plane perceptron), got {tuple(channels)!r}")
    if levels < 1:
        raise ValueError(f"levels must be >= 1, got {levels}")


@register_model("ipnv2")
class IPNv2(nn.Module):
    """IPN-V2 as published, ``(B, C_in, S, D, W) -> (B, C_out, S, W)`` logits, D <=
    ``max_depth`` (padded up).

    Args:
        in_channels: input channels.
        out_channels: output channels.
        channels: ``(projection channels, plane perceptron channels)``, default (64, 64).
        width: channel width multiplier.
        depth: the depth the pools and the skip kernel are derived from (default 128).
        levels: U-Net downsamplings (default 4).
        init: ``"reference"`` or ``"default"``.
        channels_last: run in channels-last memory formats.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        channels: Sequence[int] = (64, 64),
        width: float = 1.0,
        depth: int = 128,
        levels: int = 4,
        init: str = "reference",
        channels_last: bool = True,
    ) -> None:
        super().__init__()
        check_io_channels(in_channels, out_channels)
        _check_arguments(channels, levels)
        cproj, cplane = scale_channels(channels, width)
        self.pools = depth_pools(depth, 3)
        self.in_channels, self.out_channels, self.channels = in_channels, out_channels, (cproj, cplane)
        self.depth = int(depth)
        self.min_depth: int = 1
        self.max_depth: int = int(torch.tensor(self.pools).prod())
        self.multiple = 2**levels
        self.channels_last = channels_last

        self.stem = nn.Sequential(nn.Conv3d(in_channels, cproj, 3, padding=1), nn.ReLU(inplace=True))
        self.plms = nn.ModuleList(
            ProjectionLearningModule(cproj, cproj, p, None, convs=2, pool_first=True)
            for p in self.pools
        )
        # the skip branch: one look at the whole depth of the first features, then its own block
        self.skip = nn.Conv3d(cproj, cproj, (1, self.max_depth, 1), stride=(1, self.max_depth, 1))
        self.skip_block = _plain_double_conv(2 * cproj, cproj)
        self.inc = _plain_double_conv(cproj, cplane)
        self.down = nn.ModuleList(_plain_double_conv(cplane, cplane) for _ in range(levels))
        self.up = nn.ModuleList(_plain_double_conv(2 * cplane, cplane) for _ in range(levels))
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
        y = self.skip_block(torch.cat([self.skip(first), y], dim=1).squeeze(3))
        y = self.inc(y)
        skips = []
        for block in self.down:
            skips.append(y)
            y = block(F.max_pool2d(y, 2))
        for block, skip in zip(self.up, reversed(skips)):
            up = F.interpolate(y, size=skip.shape[-2:], mode="bilinear", align_corners=True)
            y = block(torch.cat([skip, up], dim=1))
        return self.head(y)[..., :s, :w]


def _double_conv(cin: int, cout: int, norm: str) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), make_norm(norm, cout, 2), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), make_norm(norm, cout, 2), nn.ReLU(inplace=True),
    )


@register_model("ipnv2-bn")
class IPNv2BatchNorm(nn.Module):
    """Our IPN-V2 variant (batch norm, pooling after the convs, the skip merged into the U-Net's
    input block, nearest upsampling), ``(B, C_in, S, D, W) -> (B, C_out, S, W)`` logits, D <= ``max_depth`` (padded up).

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
        _check_arguments(channels, levels)
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
