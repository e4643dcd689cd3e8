"""Feature projection blocks: collapse the depth axis of 3D features to an en-face map.

A block takes one encoder level's features ``(B, C, S, D, W)`` and returns ``(B, C, S, W)``:

1. ``n`` strided depth convolutions (kernel ``(1, k, 1)``, stride 2 along depth, norm, ReLU except
   after the last) with a residual shortcut (1x1x1 conv with depth stride ``2**n`` + norm), ReLU.
   Skipped when ``n == 0``.
2. A depth convolution ``(1, final_kernel, 1)`` without padding, norm, ReLU.
3. A reduction over what is left of depth: ``mean`` (the reference), ``max``, ``attention`` (a
   learned 1x1x1 conv scores each depth position; softmax over depth; weighted sum) or ``none``
   (the final kernel already spans the whole depth, as in ReSensNet).

The searchable family, as exposed by :class:`fpn.models.FPN` (measured parameter counts, one
output channel; ``python -m fpn.models`` prints them; offsets: (3, 2, 1, 0, 0) and
(5, 4, 3, 2, 1) depth convolutions per level):

=================================  ==========  =========
FPN variant                        parameters  min_depth
=================================  ==========  =========
reference (offset 0, k 3, mean)     4,369,553         64
``reduction="max"``                 4,369,553         64
``reduction="attention"``           4,370,049         64
``depth_kernel=5``                  4,426,897         64
``depth_convs_offset=-1``           4,287,153         64
``depth_convs_offset=+1``           4,698,481        128
``upsample="transpose"``            4,707,473         64
``width=0.5``                       1,094,857         64
``norm="group"`` / ``"instance"``   4,369,553         64
=================================  ==========  =========

``reduction="attention"`` needs more than one depth position left after the final kernel to
learn anything (at the minimum depth its softmax sees one position).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fpn.models.blocks import FoldedConv3d, check_choice, make_norm

__all__ = ["REDUCTIONS", "REFERENCE_DEPTH_CONVS", "ProjectionBlock", "depth_conv_counts"]

REDUCTIONS: tuple[str, ...] = ("mean", "max", "attention", "none")
REFERENCE_DEPTH_CONVS: tuple[int, ...] = (4, 3, 2, 1, 0)


def depth_conv_counts(offset: int = 0, reference: Sequence[int] = REFERENCE_DEPTH_CONVS) -> tuple[int, ...]:
    """Strided depth convolutions per level: the reference counts plus ``offset``, clipped at 0."""
    if int(offset) != offset:
        raise ValueError(f"depth_convs_offset must be an integer, got {offset!r}")
    return tuple(max(0, n + int(offset)) for n in reference)


class ProjectionBlock(nn.Module):
    """One level's feature projection ``(B, C, S, D, W) -> (B, C, S, W)``.

    Args:
        channels: feature channels (kept).
        n_depth_convs: number of stride-2 depth convolutions (0 = none, no shortcut either).
        depth_kernel: their kernel size along depth (odd: 3 or 5).
        final_kernel: the unpadded depth kernel applied after them.
        reduction: ``"mean"``, ``"max"``, ``"attention"`` or ``"none"`` (depth must be 1 by then).
        norm: ``"batch"``, ``"instance"`` or ``"group"``.
    """

    def __init__(
        self,
        channels: int,
        n_depth_convs: int,
        *,
        depth_kernel: int = 3,
        final_kernel: int = 4,
        reduction: str = "mean",
        norm: str = "batch",
    ) -> None:
        super().__init__()
        check_choice("reduction", reduction, REDUCTIONS)
        check_choice("depth_kernel", depth_kernel, (3, 5))
        if n_depth_convs < 0 or final_kernel < 1:
            raise ValueError(
                f"n_depth_convs must be >= 0 and final_kernel >= 1, got {n_depth_convs}, {final_kernel}"
            )
        self.n_depth_convs = n_depth_convs
        self.final_kernel = final_kernel
        self.reduction = reduction
        layers: list[nn.Module] = []
        for i in range(n_depth_convs):
            layers.append(
                FoldedConv3d(channels, channels, (1, depth_kernel, 1), stride=(1, 2, 1),
                             padding=(0, depth_kernel // 2, 0), bias=False)
            )
            layers.append(make_norm(norm, channels, 3))
            if i < n_depth_convs - 1:
                layers.append(nn.ReLU(inplace=True))
        self.depth_convs = nn.Sequential(*layers)
        self.shortcut = (
            nn.Sequential(
                FoldedConv3d(channels, channels, 1, stride=(1, 2**n_depth_convs, 1), bias=False),
                make_norm(norm, channels, 3),
            )
            if n_depth_convs > 0
            else None
        )
        self.final_conv = FoldedConv3d(channels, channels, (1, final_kernel, 1), bias=False)
        self.final_norm = make_norm(norm, channels, 3)
        # bias-free: a constant offset cancels in the softmax and would never get a gradient
        self.attention = (
            FoldedConv3d(channels, 1, 1, bias=False) if reduction == "attention" else None
        )

    def output_depth(self, depth: int) -> int:
        """Depth left after the strided and the final convolution, for an input ``depth``."""
        for _ in range(self.n_depth_convs):
            depth = (depth + 1) // 2
        return depth - self.final_kernel + 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.shortcut is not None:
            x = F.relu(self.depth_convs(x) + self.shortcut(x), inplace=True)
        x = F.relu(self.final_norm(self.final_conv(x)), inplace=True)
        enface = self._reduce(x)
        if x.is_contiguous(memory_format=torch.channels_last_3d) and not x.is_contiguous():
            # a reduction answers in the contiguous format; the decoder's weights are channels
            # last, and mixing the two sends its elementwise ops (and their backward) down
            # PyTorch's strided paths
            enface = enface.contiguous(memory_format=torch.channels_last)
        return enface

    def _reduce(self, x: torch.Tensor) -> torch.Tensor:
        """Collapse what is left of depth (dim 3): ``(B, C, S, D', W) -> (B, C, S, W)``."""
        if self.reduction == "mean":
            return x.mean(dim=3)
        if self.reduction == "max":
            return x.amax(dim=3)
        if self.reduction == "attention":
            assert self.attention is not None
            weights = torch.softmax(self.attention(x), dim=3)
            return (x * weights).sum(dim=3)
        if x.shape[3] != 1:
            raise ValueError(f"reduction='none' needs depth 1 after the final kernel, got {x.shape[3]}")
        return x.squeeze(3)
