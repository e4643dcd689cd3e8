"""Lachinov et al. (MICCAI 2021): 3D encoder with projective skip connections, decoder at the
bottleneck depth.

The encoder never downsamples across B-scans: each level strides (1, 2, 2) over (S, D, W). Skip
connections average-pool encoder features along depth down to the bottleneck depth; the decoder
keeps that depth and restores the A-scan axis only; a mean over depth and a 1x1 conv ``head``
finish. Bottleneck residual blocks (1x1x1 reduce to C/4, 3x3x3, 1x1x1 expand, identity) with
instance norm; channels 32/64/128/256; three decoder levels (none unused).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import nn

from fpn.models._registry import register_model
from fpn.models.blocks import (
    check_choice,
    check_io_channels,
    init_weights,
    make_norm,
    pad_volume,
    scale_channels,
    use_channels_last,
)

__all__ = ["BottleneckBlock", "Lachinov"]


class BottleneckBlock(nn.Module):
    """Residual bottleneck ``(B, C, S, D, W) -> (B, C, S, D, W)``: 1x1x1 (C/4), 3x3x3, 1x1x1 (C)."""

    def __init__(self, channels: int, norm: str) -> None:
        super().__init__()
        mid = max(1, channels // 4)
        self.body = nn.Sequential(
            nn.Conv3d(channels, mid, 1, bias=False), make_norm(norm, mid, 3), nn.ReLU(inplace=True),
            nn.Conv3d(mid, mid, 3, padding=1, bias=False), make_norm(norm, mid, 3),
            nn.ReLU(inplace=True),
            nn.Conv3d(mid, channels, 1, bias=False), make_norm(norm, channels, 3),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + x)


@register_model("lachinov")
class Lachinov(nn.Module):
    """Lachinov et al.'s 3D-to-2D network, ``(B, C_in, S, D, W) -> (B, C_out, S, W)`` logits.

    D and W are padded to multiples of ``2 ** (levels - 1)`` (8 at defaults) and cropped back.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        channels: channels per level (default 32, 64, 128, 256), before ``width``.
        width: channel width multiplier.
        norm: ``"instance"`` (published), ``"batch"`` or ``"group"``.
        upsample: ``"nearest"`` or ``"transpose"`` (A-scan axis only).
        init: ``"reference"`` or ``"default"``.
        channels_last: run in ``channels_last_3d``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        channels: Sequence[int] = (32, 64, 128, 256),
        width: float = 1.0,
        norm: str = "instance",
        upsample: str = "nearest",
        init: str = "reference",
        channels_last: bool = True,
    ) -> None:
        super().__init__()
        check_io_channels(in_channels, out_channels)
        if len(channels) < 2:
            raise ValueError(f"channels needs at least 2 levels, got {tuple(channels)!r}")
        check_choice("upsample", upsample, ("nearest", "transpose"))
        chans = scale_channels(channels, width)
        self.in_channels, self.out_channels, self.channels = in_channels, out_channels, chans
        self.factor = 2 ** (len(chans) - 1)
        self.min_depth: int = self.factor
        self.max_depth: int | None = None
        self.channels_last = channels_last

        self.stem = nn.Sequential(
            nn.Conv3d(in_channels, chans[0], 3, padding=1, bias=False),
            make_norm(norm, chans[0], 3), nn.ReLU(inplace=True),
        )
        self.encoder = nn.ModuleList([BottleneckBlock(chans[0], norm)])
        for cin, cout in pairwise(chans):
            self.encoder.append(nn.Sequential(
                nn.Conv3d(cin, cout, 3, stride=(1, 2, 2), padding=1, bias=False),
                make_norm(norm, cout, 3), nn.ReLU(inplace=True), BottleneckBlock(cout, norm),
            ))
        self.upsamples = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for cdeep, cskip in zip(reversed(chans[1:]), reversed(chans[:-1])):
            if upsample == "transpose":
                up: nn.Module = nn.ConvTranspose3d(cdeep, cskip, (1, 1, 2), stride=(1, 1, 2), bias=False)
            else:
                up = nn.Sequential(nn.Upsample(scale_factor=(1, 1, 2), mode="nearest"),
                                   nn.Conv3d(cdeep, cskip, 1, bias=False))
            self.upsamples.append(nn.Sequential(up, make_norm(norm, cskip, 3)))
            self.decoder.append(BottleneckBlock(cskip, norm))
        self.head = nn.Conv2d(chans[0], out_channels, 1)
        self.init_scheme = init
        init_weights(self, init)
        if channels_last:
            use_channels_last(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C_in, S, D, W) -> (B, C_out, S, W)``."""
        if x.ndim != 5 or x.shape[1] != self.in_channels:
            raise ValueError(f"Lachinov expects (B, {self.in_channels}, S, D, W), got {tuple(x.shape)}")
        if x.shape[3] < self.min_depth:
            raise ValueError(f"Lachinov needs depth >= {self.min_depth}, got {x.shape[3]}")
        x, (s, w) = pad_volume(x, 1, -(-x.shape[3] // self.factor) * self.factor, self.factor)
        fmt = torch.channels_last_3d if self.channels_last else torch.contiguous_format
        x = self.stem(x.contiguous(memory_format=fmt)).contiguous(memory_format=fmt)
        features = []
        for stage in self.encoder:
            x = stage(x)
            features.append(x)
        y = features[-1]
        bottleneck_depth = y.shape[3]
        for up, unit, skip in zip(self.upsamples, self.decoder, reversed(features[:-1])):
            # projective skip: average the encoder features down to the bottleneck depth
            pooled = F.avg_pool3d(skip, (1, skip.shape[3] // bottleneck_depth, 1))
            y = unit(F.relu(up(y) + pooled))
        return self.head(y.mean(dim=3))[..., :s, :w]
