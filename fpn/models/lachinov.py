"""Lachinov et al. (MICCAI 2021) as the poster's authors' release builds it: a 3D encoder that
never downsamples across B-scans, projective skips averaged down to the bottleneck depth, a
decoder at that depth that restores the A-scan axis, a mean over depth and a (3,1,3) head.

Layout ``(B, C, S, D, W)`` (B-scan, depth, A-scan), the release's own order. Design (the facts
are in the reference notes, section "Baselines"):

- bottleneck residual blocks: 1x1x1 conv C -> C/8, norm, ReLU, one conv of the block's kernel
  (C/8 -> C/8), norm, ReLU, 1x1x1 conv C/8 -> C, norm, plus identity; no ReLU after the
  addition; every conv in a block is bias-free;
- encoder: channels 32, 64, 128, 256 with [1, 1, 2, 4] blocks of kernel (1, 3, 3) (depth x
  A-scan, never across B-scans); a (3, 1, 3) stem conv with bias and a norm before the first
  level's block; a bias-free (1, 2, 2) conv of stride (1, 2, 2) and no norm into every deeper
  level (depth and A-scans halve, S never);
- skips: each level's features before downsampling, average-pooled along depth by 8, 4, 2 (down
  to the bottleneck's depth);
- decoder, bottleneck up: trilinear upsampling of A-scans (x2), bias-free 1x1x1 conv to the
  skip's channels, concatenation [skip, upsampled], bias-free 3x3x3 conv 2C -> C, norm, then
  [1, 1, 2] blocks (top to third level) of kernel (3, 1, 3) (B-scan x A-scan);
- head: mean over depth, (3, 1, 3) conv with bias (logits; the sigmoid is the loss's).

1,513,697 parameters at defaults, the release's count without the fourth decoder stage it
builds but never calls.
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

__all__ = ["DECODER_KERNEL", "ENCODER_KERNEL", "BottleneckBlock", "Lachinov"]

ENCODER_KERNEL: tuple[int, int, int] = (1, 3, 3)  # depth x A-scan, inside a B-scan
DECODER_KERNEL: tuple[int, int, int] = (3, 1, 3)  # B-scan x A-scan, en face


def _same_padding(kernel: tuple[int, int, int]) -> tuple[int, int, int]:
    return (kernel[0] // 2, kernel[1] // 2, kernel[2] // 2)


class BottleneckBlock(nn.Module):
    """Residual bottleneck ``(B, C, S, D, W) -> (B, C, S, D, W)``, no ReLU after the addition.

    1x1x1 conv C -> C/``reduction``, norm, ReLU, ``kernel`` conv, norm, ReLU, 1x1x1 conv back to
    C, norm, plus identity. All convs bias-free (the norms carry the shifts).
    """

    def __init__(self, channels: int, kernel: tuple[int, int, int], norm: str,
                 reduction: int = 8) -> None:
        super().__init__()
        mid = max(1, channels // reduction)
        self.body = nn.Sequential(
            nn.Conv3d(channels, mid, 1, bias=False), make_norm(norm, mid, 3), nn.ReLU(inplace=True),
            nn.Conv3d(mid, mid, kernel, padding=_same_padding(kernel), bias=False),
            make_norm(norm, mid, 3), nn.ReLU(inplace=True),
            nn.Conv3d(mid, channels, 1, bias=False), make_norm(norm, channels, 3),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + x


def _blocks(channels: int, count: int, kernel: tuple[int, int, int], norm: str,
            reduction: int) -> list[nn.Module]:
    return [BottleneckBlock(channels, kernel, norm, reduction) for _ in range(count)]


class _UpStage(nn.Module):
    """One decoder stage: upsample A-scans x2, 1x1x1 conv to the skip's channels, concatenate
    [skip, upsampled], 3x3x3 conv 2C -> C, norm, then the stage's blocks."""

    def __init__(self, deeper: int, skip: int, blocks: int, norm: str, reduction: int,
                 mode: str) -> None:
        super().__init__()
        self.mode = mode
        self.reduce = nn.Conv3d(deeper, skip, 1, bias=False)
        self.fuse = nn.Sequential(nn.Conv3d(2 * skip, skip, 3, padding=1, bias=False),
                                  make_norm(norm, skip, 3))
        self.blocks = nn.Sequential(*_blocks(skip, blocks, DECODER_KERNEL, norm, reduction))

    def forward(self, y: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        size = (y.shape[2], y.shape[3], skip.shape[4])  # A-scans only: S and depth stay
        if self.mode == "trilinear":
            up = F.interpolate(y, size=size, mode="trilinear", align_corners=False)
        else:
            up = F.interpolate(y, size=size, mode="nearest")
        return self.blocks(self.fuse(torch.cat([skip, self.reduce(up)], dim=1)))


@register_model("lachinov")
class Lachinov(nn.Module):
    """Lachinov et al.'s 3D-to-2D network, ``(B, C_in, S, D, W) -> (B, C_out, S, W)`` logits.

    D and W are padded (replicate) to multiples of ``2 ** (levels - 1)`` (8 at defaults) and the
    output is cropped back to the input's (S, W); S is never resampled, so any S works.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        channels: channels per level (default 32, 64, 128, 256), before ``width``.
        width: channel width multiplier.
        norm: ``"instance"`` (affine; the release), ``"batch"`` or ``"group"``.
        blocks: encoder blocks per level (default 1, 1, 2, 4).
        decoder_blocks: decoder blocks per level from the top, one entry per level but the
            deepest (default 1, 1, 2).
        reduction: the blocks' channel reduction (C -> C / reduction inside; default 8).
        upsample: ``"trilinear"`` (the release) or ``"nearest"``; A-scans only.
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
        blocks: Sequence[int] = (1, 1, 2, 4),
        decoder_blocks: Sequence[int] = (1, 1, 2),
        reduction: int = 8,
        upsample: str = "trilinear",
        init: str = "reference",
        channels_last: bool = True,
    ) -> None:
        super().__init__()
        check_io_channels(in_channels, out_channels)
        if len(channels) < 2:
            raise ValueError(f"channels needs at least 2 levels, got {tuple(channels)!r}")
        if len(blocks) != len(channels) or any(int(b) != b or b < 0 for b in blocks):
            raise ValueError(f"blocks must give a count >= 0 for each of the {len(channels)} "
                             f"levels, got {tuple(blocks)!r}")
        if len(decoder_blocks) != len(channels) - 1 or any(
                int(b) != b or b < 0 for b in decoder_blocks):
            raise ValueError(f"decoder_blocks must give a count >= 0 for each of the "
                             f"{len(channels) - 1} upper levels, got {tuple(decoder_blocks)!r}")
        if int(reduction) != reduction or reduction < 1:
            raise ValueError(f"reduction must be a positive integer, got {reduction!r}")
        check_choice("upsample", upsample, ("trilinear", "nearest"))
        check_choice("norm", norm, ("instance", "batch", "group"))
        chans = scale_channels(channels, width)
        self.in_channels, self.out_channels, self.channels = in_channels, out_channels, chans
        self.factor = 2 ** (len(chans) - 1)
        self.min_depth: int = self.factor
        self.max_depth: int | None = None
        self.channels_last = channels_last

        self.stem = nn.Sequential(
            nn.Conv3d(in_channels, chans[0], DECODER_KERNEL, padding=_same_padding(DECODER_KERNEL)),
            make_norm(norm, chans[0], 3),
        )
        self.encoder = nn.ModuleList(
            [nn.Sequential(*_blocks(chans[0], int(blocks[0]), ENCODER_KERNEL, norm, reduction))]
        )
        for (cin, cout), count in zip(pairwise(chans), blocks[1:]):
            self.encoder.append(nn.Sequential(
                nn.Conv3d(cin, cout, (1, 2, 2), stride=(1, 2, 2), bias=False),
                *_blocks(cout, int(count), ENCODER_KERNEL, norm, reduction),
            ))
        self.decoder = nn.ModuleList(
            _UpStage(chans[level + 1], chans[level], int(decoder_blocks[level]), norm, reduction,
                     upsample)
            for level in reversed(range(len(chans) - 1))
        )
        self.head = nn.Conv3d(chans[0], out_channels, DECODER_KERNEL,
                              padding=_same_padding(DECODER_KERNEL))
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
        levels = len(self.encoder)
        skips: list[torch.Tensor] = []
        for level, stage in enumerate(self.encoder):
            x = stage(x)
            if level < levels - 1:
                # projective skip: average depth down to the bottleneck's depth
                pool = 2 ** (levels - 1 - level)
                skips.append(F.avg_pool3d(x, (1, pool, 1)))
        y = x
        for stage, skip in zip(self.decoder, reversed(skips)):
            y = stage(y, skip)
        return self.head(y.mean(dim=3, keepdim=True)).squeeze(3)[..., :s, :w]
