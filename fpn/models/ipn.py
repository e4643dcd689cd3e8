"""IPN, the image projection network (Li et al., IEEE TMI 2020), and our batch-norm variant.

``ipn`` is the published design: five projection learning modules (PLMs), each three 3x3x3
convs (64 channels, with bias, ReLU, no normalisation) and then a max-pool along depth only; the
pools multiply to the (padded) depth so that depth reaches 1; no en-face downsampling, so the
output grid is the input grid. A 3x3 conv ``head`` finishes (the published 3x3x3 head on a
depth-1 map, without its taps that would only see zero padding; the publication's ReLU on the
output is left out because the head gives logits). ``ipn-bn`` is the same network with a
normalisation (batch norm by default) after every conv, whose convs are then bias-free.

Depth is a constructor argument (``depth``, default 128): pools are derived from it (powers of
two, spread from the first module on: [4, 4, 2, 2, 2] for 128, [4, 2, 2, 2, 2] for 64) and
inputs up to their product (``max_depth``) are padded to it; deeper inputs are rejected.
"""

from __future__ import annotations

from collections.abc import Sequence

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

__all__ = ["IPN", "IPNBatchNorm", "ProjectionLearningModule", "depth_pools"]


def depth_pools(depth: int, modules: int) -> tuple[int, ...]:
    """Depth pooling factors, powers of two, whose product is the next power of two >= depth.

    Factors of two are dealt round-robin from the first module, e.g. (128, 5) -> (4, 4, 2, 2, 2),
    (128, 3) -> (8, 4, 4).
    """
    if int(depth) != depth or depth < 1 or modules < 1:
        raise ValueError(f"depth and modules must be positive integers, got {depth!r}, {modules!r}")
    exponent = (int(depth) - 1).bit_length()
    return tuple(2 ** (exponent // modules + (i < exponent % modules)) for i in range(modules))


class ProjectionLearningModule(nn.Module):
    """``convs`` x (3x3x3 conv, [norm], ReLU) and a max-pool ``(1, pool, 1)`` along depth.

    ``norm=None`` is the published module: convs with bias, no normalisation. ``pool_first``
    pools before the convs (IPN-V2's public code) instead of after them (IPN's).
    Shape: ``(B, cin, S, D, W) -> (B, cout, S, D / pool, W)``.
    """

    def __init__(self, cin: int, cout: int, pool: int, norm: str | None, convs: int = 3,
                 *, pool_first: bool = False) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(convs):
            layers.append(nn.Conv3d(cin if i == 0 else cout, cout, 3, padding=1, bias=norm is None))
            if norm is not None:
                layers.append(make_norm(norm, cout, 3))
            layers.append(nn.ReLU(inplace=True))
        self.convs = nn.Sequential(*layers)
        self.pool = pool
        self.pool_first = pool_first
        # set by the owner when a one-channel input must not pull the module out of its format
        self.output_format: torch.memory_format | None = None

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool3d(x, (1, self.pool, 1)) if self.pool > 1 else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool_first:
            x = self._pool(x)
        for i, layer in enumerate(self.convs):
            x = layer(x)
            if i == 0 and self.output_format is not None:
                x = x.contiguous(memory_format=self.output_format)
        return x if self.pool_first else self._pool(x)


def check_io(model: nn.Module, x: torch.Tensor) -> None:
    """Shared input check of the depth-bound models: (B, C_in, S, D, W) with D <= max_depth."""
    name = type(model).__name__
    if x.ndim != 5 or x.shape[1] != model.in_channels:
        raise ValueError(f"{name} expects (B, {model.in_channels}, S, D, W), got {tuple(x.shape)}")
    if x.shape[3] > model.max_depth:
        raise ValueError(
            f"{name} was built for depth <= {model.max_depth}, got {x.shape[3]}; "
            f"construct it with depth={x.shape[3]}"
        )


@register_model("ipn")
class IPN(nn.Module):
    """IPN as published, ``(B, C_in, S, D, W) -> (B, C_out, S, W)`` logits, D <= ``max_depth``
    (padded up).

    Args:
        in_channels: input channels.
        out_channels: output channels.
        channels: channels per module: an int (all five) or a sequence (one per module).
        width: channel width multiplier.
        norm: ``None`` (published: no normalisation, convs with bias), ``"batch"``,
            ``"instance"`` or ``"group"``.
        depth: the depth the pools are derived from (default 128).
        init: ``"reference"`` or ``"default"``.
        channels_last: run in ``channels_last_3d``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        channels: int | Sequence[int] = 64,
        width: float = 1.0,
        norm: str | None = None,
        depth: int = 128,
        init: str = "reference",
        channels_last: bool = True,
    ) -> None:
        super().__init__()
        check_io_channels(in_channels, out_channels)
        check_choice("norm", norm, (None, "batch", "instance", "group"))
        chans = scale_channels((channels,) * 5 if isinstance(channels, int) else channels, width)
        self.pools = depth_pools(depth, len(chans))
        self.in_channels, self.out_channels, self.channels = in_channels, out_channels, chans
        self.depth = int(depth)
        self.min_depth: int = 1
        self.max_depth: int = int(torch.tensor(self.pools).prod())
        self.channels_last = channels_last
        cins = (in_channels, *chans[:-1])
        self.plms = nn.ModuleList(
            ProjectionLearningModule(ci, co, p, norm) for ci, co, p in zip(cins, chans, self.pools)
        )
        self.head = nn.Conv2d(chans[-1], out_channels, 3, padding=1)
        self.init_scheme = init
        init_weights(self, init)
        if channels_last:
            use_channels_last(self)
            self.plms[0].output_format = torch.channels_last_3d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C_in, S, D, W) -> (B, C_out, S, W)``."""
        check_io(self, x)
        x, _ = pad_volume(x, 1, self.max_depth, 1)
        fmt = torch.channels_last_3d if self.channels_last else torch.contiguous_format
        x = x.contiguous(memory_format=fmt)
        for plm in self.plms:
            x = plm(x)
        return self.head(x.squeeze(3))


@register_model("ipn-bn")
class IPNBatchNorm(IPN):
    """Our IPN variant: :class:`IPN` with batch norm after every (bias-free) conv.

    Same arguments as :class:`IPN`; only ``norm`` defaults to ``"batch"``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        channels: int | Sequence[int] = 64,
        width: float = 1.0,
        norm: str | None = "batch",
        depth: int = 128,
        init: str = "reference",
        channels_last: bool = True,
    ) -> None:
        super().__init__(in_channels, out_channels, channels, width, norm, depth, init,
                         channels_last)
