"""FPN: 3D residual encoder, one feature projection block per level, 2D residual decoder."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fpn.models._registry import register_model
from fpn.models.blocks import (
    DecoderUnit,
    EncoderUnitA,
    EncoderUnitB,
    Upsample2d,
    check_choice,
    check_io_channels,
    init_weights,
    pad_volume,
    scale_channels,
    use_channels_last,
)
from fpn.models.projection import ProjectionBlock, depth_conv_counts

__all__ = ["FPN", "REFERENCE_CHANNELS"]

REFERENCE_CHANNELS: tuple[int, ...] = (16, 32, 64, 128, 256)
# pooling after levels 0..3, as (S, D, W) factors; the last two also pool across B-scans
_POOLS: tuple[tuple[int, int, int], ...] = ((1, 2, 2), (1, 2, 2), (2, 2, 2), (2, 2, 2))


@register_model("fpn")
class FPN(nn.Module):
    """Feature projection network (the proposed method), ``(B, C_in, S, D, W) -> (B, C_out, S, W)``.

    Five encoder levels of two residual units (in-B-scan convs, then a unit that also mixes
    neighbouring B-scans), max-pools (1,2,2), (1,2,2), (2,2,2), (2,2,2) over (S, D, W), a
    :class:`~fpn.models.projection.ProjectionBlock` per level that reduces its depth to 1, and a
    2D decoder (nearest upsampling, concatenation, residual unit) with a 1x1 conv ``head``.
    Outputs logits (no sigmoid) on the input's own (S, W) grid: S is padded to a multiple of 4,
    W to a multiple of 16 and D to a multiple of 16 internally, then the output is cropped back.

    Args:
        in_channels: input channels.
        out_channels: output channels (logits).
        channels: encoder channels per level (five entries), before ``width``.
        width: channel width multiplier applied to ``channels``.
        norm: ``"batch"``, ``"instance"`` or ``"group"``.
        depth_convs_offset: added to the reference depth-conv counts (4, 3, 2, 1, 0), clipped at 0.
        depth_kernel: kernel of the strided depth convs, 3 or 5.
        reduction: ``"mean"`` (reference), ``"max"`` or ``"attention"``.
        upsample: ``"nearest"`` (reference) or ``"transpose"``.
        init: ``"reference"`` (Xavier-normal convs, BN weight ~ N(1, 0.02)) or ``"default"``.
        channels_last: run in ``channels_last_3d`` memory format (about 3x faster convolutions on
            CPU; also what cuDNN prefers for bf16). Numerically the same network.
        final_kernels: per-level final depth kernel overriding 4 (ReSensNet uses this with
            ``reduction="none"``).

    Attributes:
        min_depth: smallest input depth accepted (64 for the reference design).
        max_depth: largest input depth accepted (None: unbounded).
        head: the output convolution.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        channels: Sequence[int] = REFERENCE_CHANNELS,
        width: float = 1.0,
        norm: str = "batch",
        depth_convs_offset: int = 0,
        depth_kernel: int = 3,
        reduction: str = "mean",
        upsample: str = "nearest",
        init: str = "reference",
        channels_last: bool = True,
        *,
        final_kernels: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        check_io_channels(in_channels, out_channels)
        if len(channels) != 5:
            raise ValueError(f"channels must have 5 entries (one per level), got {tuple(channels)!r}")
        check_choice("upsample", upsample, ("nearest", "transpose"))
        if final_kernels is None:
            check_choice("reduction", reduction, ("mean", "max", "attention"))
            final_kernels = (4,) * 5
        elif len(final_kernels) != 5:
            raise ValueError(f"final_kernels must have 5 entries, got {tuple(final_kernels)!r}")
        chans = scale_channels(channels, width)
        n_convs = depth_conv_counts(depth_convs_offset)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.channels = chans
        self.channels_last = channels_last
        # depth at level l is D / 2**l; the block halves it n_l times and needs final_kernel left
        need = max(k * 2 ** (level + n) for level, (k, n) in enumerate(zip(final_kernels, n_convs)))
        self.min_depth: int = -(-need // 16) * 16
        self.max_depth: int | None = None

        self.encoder = nn.ModuleList()
        self.projections = nn.ModuleList()
        cin = in_channels
        for c, n, k in zip(chans, n_convs, final_kernels):
            self.encoder.append(nn.Sequential(
                EncoderUnitA(cin, c, norm, channels_last=channels_last), EncoderUnitB(c, norm)
            ))
            self.projections.append(
                ProjectionBlock(c, n, depth_kernel=depth_kernel, final_kernel=k,
                                reduction=reduction, norm=norm)
            )
            cin = c
        self.upsamples = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for level in (3, 2, 1, 0):
            deeper, skip = chans[level + 1], chans[level]
            factor = (_POOLS[level][0], _POOLS[level][2])
            self.upsamples.append(Upsample2d(deeper, factor, upsample))
            self.decoder.append(DecoderUnit(deeper + skip, skip, norm))
        self.head = nn.Conv2d(chans[0], out_channels, 1)
        self.init_scheme = init
        init_weights(self, init)
        if channels_last:
            use_channels_last(self)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 5 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"{type(self).__name__} expects (B, {self.in_channels}, S, D, W), got {tuple(x.shape)}"
            )
        depth = x.shape[3]
        if depth < self.min_depth or (self.max_depth is not None and depth > self.max_depth):
            bound = f"<= {self.max_depth}" if self.max_depth is not None else "unbounded"
            raise ValueError(
                f"{type(self).__name__} needs depth >= {self.min_depth} (max {bound}), got {depth}"
            )

    def _depth_target(self, depth: int) -> int:
        """Depth the input is padded to: the next multiple of 16 (pooling needs it)."""
        return -(-depth // 16) * 16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C_in, S, D, W) -> (B, C_out, S, W)`` logits."""
        self._check_input(x)
        x, (s, w) = pad_volume(x, 4, self._depth_target(x.shape[3]), 16)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        skips: list[torch.Tensor] = []
        for level, (stage, project) in enumerate(zip(self.encoder, self.projections)):
            x = stage(x)
            skips.append(project(x))
            if level < len(_POOLS):
                x = F.max_pool3d(x, _POOLS[level])
        y = skips[-1]
        for up, unit, skip in zip(self.upsamples, self.decoder, reversed(skips[:-1])):
            y = unit(torch.cat([up(y), skip], dim=1))
        return self.head(y)[..., :s, :w]
