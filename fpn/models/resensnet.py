"""ReSensNet (Seeboeck et al., Ophthalmology Retina 2022): FPN with a depth-spanning final kernel.

The released network is FPN with a ``(1, D/16, 1)`` final depth kernel instead of ``(1, 4, 1)``
plus mean, so it only works for the depth it was built for. Here that depth is a constructor
argument: ``depth`` is rounded up to a multiple of 16 (``max_depth``), each level's final kernel
spans exactly what is left of that depth after its strided depth convolutions, and shallower
inputs are padded up to ``max_depth`` (``min_depth`` is 1). Deeper inputs are rejected.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from fpn.models._registry import register_model
from fpn.models.fpn import FPN, REFERENCE_CHANNELS
from fpn.models.projection import depth_conv_counts

__all__ = ["ReSensNet"]


@register_model("resensnet")
class ReSensNet(FPN):
    """ReSensNet, ``(B, C_in, S, D, W) -> (B, C_out, S, W)`` logits, D <= ``depth`` (padded up).

    Args:
        depth: the input depth the final kernels are derived from (default 128, as released).
        final_relu: end in a ReLU like the original (off by default: the output is logits).
        Others: as :class:`~fpn.models.fpn.FPN` (no ``reduction``: the kernel covers depth).
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
        upsample: str = "nearest",
        init: str = "reference",
        channels_last: bool = True,
        depth: int = 128,
        final_relu: bool = False,
    ) -> None:
        if int(depth) != depth or depth < 16:
            raise ValueError(f"depth must be an integer >= 16, got {depth!r}")
        padded = -(-int(depth) // 16) * 16
        kernels = []
        for level, n in enumerate(depth_conv_counts(depth_convs_offset)):
            left = padded // 2**level
            for _ in range(n):
                left = (left + 1) // 2
            kernels.append(left)
        super().__init__(
            in_channels, out_channels, channels, width, norm, depth_convs_offset, depth_kernel,
            "none", upsample, init, channels_last, final_kernels=kernels,
        )
        self.depth = int(depth)
        self.final_relu = final_relu
        self.min_depth = 1
        self.max_depth = padded

    def _depth_target(self, depth: int) -> int:
        assert self.max_depth is not None
        return self.max_depth

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C_in, S, D, W) -> (B, C_out, S, W)``."""
        y = super().forward(x)
        return y.relu() if self.final_relu else y
