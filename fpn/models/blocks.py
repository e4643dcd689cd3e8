"""Reusable building blocks shared by the networks in :mod:`fpn.models`.

Layout convention: every 3D tensor is ``(B, C, S, D, W)`` (B-scan index, depth, A-scan index),
the same order as the stored OCT volumes, so a model never permutes its input. "In-B-scan"
kernels are ``(1, 3, 3)``, "across-B-scan" kernels ``(3, 1, 1)``, depth kernels ``(1, k, 1)``.
2D (en-face) tensors are ``(B, C, S, W)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "INITS",
    "NORMS",
    "DecoderUnit",
    "EncoderUnitA",
    "EncoderUnitB",
    "FoldedConv3d",
    "SingleChannelConv3d",
    "Upsample2d",
    "check_choice",
    "check_io_channels",
    "init_weights",
    "make_norm",
    "pad_volume",
    "scale_channels",
    "use_channels_last",
]

NormName = Literal["batch", "instance", "group"]
NORMS: tuple[str, ...] = ("batch", "instance", "group")
INITS: tuple[str, ...] = ("reference", "default")


def check_io_channels(in_channels: int, out_channels: int) -> None:
    """The check every network's constructor starts with."""
    if in_channels < 1 or out_channels < 1:
        raise ValueError(
            f"in_channels and out_channels must be >= 1, got {in_channels}, {out_channels}")


def check_choice(name: str, value: object, choices: Sequence[object]) -> None:
    """Raise a ``ValueError`` naming the argument when ``value`` is not one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


def scale_channels(channels: Sequence[int], width: float) -> tuple[int, ...]:
    """Multiply a channel tuple by a width multiplier (rounded, at least 1 channel each).

    Raises:
        ValueError: on an empty tuple, a non-positive entry or a non-positive multiplier.
    """
    if len(channels) == 0 or any(int(c) != c or c < 1 for c in channels):
        raise ValueError(f"channels must be positive integers, got {tuple(channels)!r}")
    if not width > 0:
        raise ValueError(f"width must be > 0, got {width!r}")
    return tuple(max(1, round(c * width)) for c in channels)


def make_norm(norm: str, channels: int, dims: int) -> nn.Module:
    """Normalisation layer factory.

    Args:
        norm: ``"batch"``, ``"instance"`` (affine) or ``"group"`` (up to 8 groups that divide
            ``channels``).
        channels: number of channels.
        dims: 2 or 3, the spatial rank of the tensors it will see.
    """
    check_choice("norm", norm, NORMS)
    if norm == "batch":
        return nn.BatchNorm3d(channels) if dims == 3 else nn.BatchNorm2d(channels)
    if norm == "instance":
        cls = nn.InstanceNorm3d if dims == 3 else nn.InstanceNorm2d
        return cls(channels, affine=True)
    return nn.GroupNorm(math.gcd(channels, 8), channels)


def init_weights(module: nn.Module, scheme: str = "reference") -> None:
    """Initialise a module tree in place.

    ``"reference"``: Xavier-normal conv weights, zero biases, norm weights ~ N(1, 0.02) and zero
    norm biases (the released FPN's scheme). ``"default"``: leave PyTorch's defaults.
    """
    check_choice("init", scheme, INITS)
    if scheme == "default":
        return
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
            nn.init.xavier_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.modules.batchnorm._NormBase, nn.GroupNorm)):
            if getattr(m, "weight", None) is not None:
                nn.init.normal_(m.weight, 1.0, 0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)


def use_channels_last(module: nn.Module) -> None:
    """Store a module's 5D weights as ``channels_last_3d`` and 4D weights as ``channels_last``.

    With input and weights in the same channels-last format, oneDNN (CPU) and cuDNN (GPU) skip
    format conversions; on CPU the convolutions of these networks run 2-3x faster. Values are
    unchanged; ``load_state_dict`` copies into these tensors and keeps their layout.
    """
    for param in module.parameters():
        if param.ndim == 5:
            param.data = param.data.contiguous(memory_format=torch.channels_last_3d)
        elif param.ndim == 4:
            param.data = param.data.contiguous(memory_format=torch.channels_last)


def pad_volume(
    x: torch.Tensor, s_multiple: int, d_target: int, w_multiple: int
) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad ``(B, C, S, D, W)`` at the far end of S and W to multiples, and D up to ``d_target``.

    Replicate padding, so padded borders look like tissue rather than a black frame.

    Returns:
        The padded tensor (the input itself when nothing is needed) and the original ``(S, W)``
        to crop the en-face output back to.
    """
    s, d, w = x.shape[-3:]
    pad_s = -s % s_multiple
    pad_w = -w % w_multiple
    pad_d = max(0, d_target - d)
    if pad_s or pad_w or pad_d:
        x = F.pad(x, (0, pad_w, 0, pad_d, 0, pad_s), mode="replicate")
    return x, (s, w)


def _conv3d(cin: int, cout: int, kernel: tuple[int, int, int], stride: int | tuple = 1) -> nn.Conv3d:
    padding = tuple(k // 2 for k in kernel)
    return FoldedConv3d(cin, cout, kernel, stride=stride, padding=padding, bias=False)


class FoldedConv3d(nn.Conv3d):
    """A ``Conv3d`` whose kernel spans one or two of (S, D, W), run as a 2-D convolution.

    Every 3-D kernel of FPN is either in-B-scan ``(1, kd, kw)`` or across-B-scan ``(ks, 1, 1)``,
    so the volume can be seen as a batch of 2-D images without copying it: an in-B-scan kernel
    treats each B-scan as an image (S joins the batch axis: a view of a ``channels_last_3d``
    volume), an across-B-scan kernel treats (S, D*W) as the image.

    Why: for float32 on CPU, PyTorch sends 2-D convolutions of these sizes to oneDNN, but 3-D
    ones to its slow reference kernel for a batch of 1 (the small levels) and, single threaded,
    for ``(ks, 1, 1)`` and 1x1x1 kernels; that kernel also answers in the contiguous format,
    which sends the ReLU and BatchNorm around it down strided paths (benchmarks/README.md, "A
    faster CPU step"). Only that case is folded: bf16 (autocast) always reaches oneDNN's 3-D
    kernels (folding measured the same there), and GPUs keep cuDNN's 3-D path as measured.

    Same parameters, state-dict entry and numbers as the ``nn.Conv3d``; anything else (groups,
    dilation, other padding modes, an in-B-scan kernel on a contiguous volume, which would copy)
    runs the plain 3-D convolution.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (ks, kd, kw), (ss, sd, sw), padding = self.kernel_size, self.stride, self.padding
        if (x.device.type != "cpu" or x.dtype != torch.float32
                or torch.is_autocast_enabled("cpu") or self.groups != 1
                or self.padding_mode != "zeros" or isinstance(padding, str)
                or any(d != 1 for d in self.dilation) or x.dim() != 5):
            return super().forward(x)
        ps, pd, pw = padding
        in_bscan = ks == 1 and ss == 1 and ps == 0
        if in_bscan and x.is_contiguous(memory_format=torch.channels_last_3d):
            b, c, s, d, w = x.shape
            images = x.transpose(1, 2).reshape(b * s, c, d, w)  # a view: (B*S, C, D, W)
            y = F.conv2d(images, self.weight.squeeze(2), self.bias, (sd, sw), (pd, pw))
            return y.unflatten(0, (b, s)).transpose(1, 2)
        if kd == kw == 1 and sd == sw == 1 and pd == pw == 0:
            b, c, s, d, w = x.shape
            weight = self.weight.flatten(3)
            if not x.is_contiguous(memory_format=torch.channels_last_3d):
                y = F.conv2d(x.flatten(3), weight, self.bias, (ss, 1), (ps, 0))
                return y.unflatten(3, (d, w))
            # through the (B, S, D, W, C) memory order: x.flatten(3) would give a batch of one a
            # non-standard stride, which sends batch norm down a path 10x slower
            images = x.permute(0, 2, 3, 4, 1).reshape(b, s, d * w, c).permute(0, 3, 1, 2)
            y = F.conv2d(images, weight, self.bias, (ss, 1), (ps, 0))
            return y.permute(0, 2, 3, 1).reshape(b, y.shape[2], d, w, -1).permute(0, 4, 1, 2, 3)
        return super().forward(x)


class SingleChannelConv3d(nn.Conv3d):
    """Bias-free ``(1, kd, kw)`` conv of a one-channel volume, answered in ``channels_last_3d``.

    A one-channel input is both "contiguous" and "channels_last", so ``conv3d`` answers in the
    contiguous format (through a slow path on CPU) and the network then pays a format copy
    forwards and backwards at full resolution. Here the ``kd*kw`` shifted views of the input are
    stacked last and multiplied by the weight matrix, which writes (B, S, D, W, C) memory
    directly. Same parameters (and state-dict entry) as the ``nn.Conv3d`` it replaces.
    Shape: ``(B, 1, S, D, W) -> (B, cout, S, D, W)``.
    """

    def __init__(self, cout: int, kernel: tuple[int, int, int]) -> None:
        if kernel[0] != 1 or kernel[1] % 2 == 0 or kernel[2] % 2 == 0:
            raise ValueError(f"kernel must be (1, odd, odd), got {kernel}")
        super().__init__(1, cout, kernel, padding=(0, kernel[1] // 2, kernel[2] // 2), bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kd, kw = self.kernel_size[1:]
        depth, width = x.shape[-2:]
        volume = x[:, 0]
        if kd > 1 or kw > 1:
            volume = F.pad(volume, (kw // 2, kw // 2, kd // 2, kd // 2))
        taps = [volume[..., i:i + depth, j:j + width] for i in range(kd) for j in range(kw)]
        columns = torch.stack(taps, dim=-1) if len(taps) > 1 else volume.unsqueeze(-1)
        out = columns @ self.weight.reshape(self.out_channels, -1).t().to(columns.dtype)
        return out.permute(0, 4, 1, 2, 3)  # (B, S, D, W, C) memory = channels_last_3d


class EncoderUnitA(nn.Module):
    """In-B-scan residual unit: conv(1,3,3)-N-ReLU-conv(1,3,3)-N + shortcut, ReLU.

    The shortcut is a 1x1x1 conv + norm when the channel count changes, else identity.
    Shape: ``(B, cin, S, D, W) -> (B, cout, S, D, W)``.
    """

    def __init__(self, cin: int, cout: int, norm: str, *, channels_last: bool = False) -> None:
        super().__init__()
        # a one-channel input would pull a channels-last network into the contiguous format
        direct = channels_last and cin == 1
        self.conv1 = SingleChannelConv3d(cout, (1, 3, 3)) if direct else _conv3d(cin, cout, (1, 3, 3))
        self.norm1 = make_norm(norm, cout, 3)
        self.conv2 = _conv3d(cout, cout, (1, 3, 3))
        self.norm2 = make_norm(norm, cout, 3)
        projection = SingleChannelConv3d(cout, (1, 1, 1)) if direct else _conv3d(cin, cout, (1, 1, 1))
        self.shortcut: nn.Module = (
            nn.Sequential(projection, make_norm(norm, cout, 3)) if cin != cout else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.shortcut(x)
        y = F.relu(self.norm1(self.conv1(x)), inplace=True)
        y = self.norm2(self.conv2(y))
        return F.relu(y + shortcut, inplace=True)


class EncoderUnitB(nn.Module):
    """Residual unit that also mixes neighbouring B-scans.

    conv(1,3,3)-N-ReLU-conv(1,3,3)-N-ReLU-conv(3,1,1)-N + identity, ReLU.
    Shape: ``(B, C, S, D, W) -> (B, C, S, D, W)``.
    """

    def __init__(self, channels: int, norm: str) -> None:
        super().__init__()
        self.conv1 = _conv3d(channels, channels, (1, 3, 3))
        self.norm1 = make_norm(norm, channels, 3)
        self.conv2 = _conv3d(channels, channels, (1, 3, 3))
        self.norm2 = make_norm(norm, channels, 3)
        self.conv3 = _conv3d(channels, channels, (3, 1, 1))
        self.norm3 = make_norm(norm, channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.norm1(self.conv1(x)), inplace=True)
        y = F.relu(self.norm2(self.conv2(y)), inplace=True)
        y = self.norm3(self.conv3(y))
        return F.relu(y + x, inplace=True)


class DecoderUnit(nn.Module):
    """2D residual unit: conv3x3-N-ReLU-conv3x3-N + (1x1 conv + N) shortcut, ReLU.

    Shape: ``(B, cin, S, W) -> (B, cout, S, W)``.
    """

    def __init__(self, cin: int, cout: int, norm: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.norm1 = make_norm(norm, cout, 2)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.norm2 = make_norm(norm, cout, 2)
        self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), make_norm(norm, cout, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.norm1(self.conv1(x)), inplace=True)
        y = self.norm2(self.conv2(y))
        return F.relu(y + self.shortcut(x), inplace=True)


class Upsample2d(nn.Module):
    """En-face upsampling by integer factors ``(fs, fw)``: nearest neighbour or transposed conv.

    ``"nearest"`` has no parameters; ``"transpose"`` is a ``ConvTranspose2d`` with kernel = stride
    = factor (channels kept). Shape: ``(B, C, S, W) -> (B, C, S*fs, W*fw)``.
    """

    def __init__(self, channels: int, factor: tuple[int, int], mode: str) -> None:
        super().__init__()
        check_choice("upsample", mode, ("nearest", "transpose"))
        self.factor = factor
        self.mode = mode
        self.transpose = (
            nn.ConvTranspose2d(channels, channels, factor, stride=factor, bias=False)
            if mode == "transpose"
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.transpose is not None:
            return self.transpose(x)
        s, w = x.shape[-2:]
        return F.interpolate(x, size=(s * self.factor[0], w * self.factor[1]), mode="nearest")
