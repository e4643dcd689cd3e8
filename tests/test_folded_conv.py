"""``FoldedConv3d`` is ``nn.Conv3d``: same outputs, gradients and memory format, whichever path.

The fold (a 3-D convolution run as a 2-D one on a view, for fp32 on CPU) is an implementation
detail of FPN's blocks; these tests hold it to the plain 3-D convolution for every kernel shape
FPN uses, on both memory formats, and check that it steps aside under bf16 autocast.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fpn.models import create_model
from fpn.models.blocks import FoldedConv3d
from fpn.models.projection import ProjectionBlock

pytestmark = pytest.mark.unit

CL3 = torch.channels_last_3d

# (kernel, stride, padding) of every 3-D convolution in FPN's encoder and projection blocks
KERNELS = [
    ((1, 3, 3), 1, (0, 1, 1)),  # in-B-scan
    ((1, 1, 1), 1, 0),  # shortcut of a residual unit
    ((3, 1, 1), 1, (1, 0, 0)),  # across B-scans
    ((1, 3, 1), (1, 2, 1), (0, 1, 0)),  # strided depth conv (kernel 3)
    ((1, 5, 1), (1, 2, 1), (0, 2, 0)),  # strided depth conv (kernel 5)
    ((1, 1, 1), (1, 4, 1), 0),  # projection shortcut
    ((1, 4, 1), 1, 0),  # final depth kernel, unpadded
]


def _pair(kernel, stride, padding, cin=6, cout=5, bias=False):
    torch.manual_seed(0)
    plain = nn.Conv3d(cin, cout, kernel, stride=stride, padding=padding, bias=bias)
    folded = FoldedConv3d(cin, cout, kernel, stride=stride, padding=padding, bias=bias)
    folded.load_state_dict(plain.state_dict())
    return plain, folded


@pytest.mark.parametrize("channels_last", [True, False], ids=["channels_last_3d", "contiguous"])
@pytest.mark.parametrize(("kernel", "stride", "padding"), KERNELS)
def test_folded_conv_equals_conv3d_forward_and_backward(kernel, stride, padding, channels_last):
    plain, folded = _pair(kernel, stride, padding, bias=True)
    if channels_last:
        for m in (plain, folded):
            m.weight.data = m.weight.data.contiguous(memory_format=CL3)
    x = torch.randn(2, 6, 4, 16, 8, generator=torch.Generator().manual_seed(1))
    if channels_last:
        x = x.contiguous(memory_format=CL3)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    want, got = plain(xa), folded(xb)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    if channels_last:
        assert got.is_contiguous(memory_format=CL3)
    g = torch.randn_like(want)
    want.backward(g)
    got.backward(g)
    torch.testing.assert_close(xb.grad, xa.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(folded.weight.grad, plain.weight.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(folded.bias.grad, plain.bias.grad, rtol=1e-4, atol=1e-5)


def test_folded_conv_keeps_the_conv3d_state_dict_and_class():
    plain, folded = _pair((1, 3, 3), 1, (0, 1, 1))
    assert isinstance(folded, nn.Conv3d)
    assert plain.state_dict().keys() == folded.state_dict().keys()


def test_folded_conv_runs_conv3d_under_bf16_autocast():
    """bf16 reaches oneDNN's 3-D kernels directly, so the fold steps aside (same numbers as
    the autocast conv3d, bitwise)."""
    plain, folded = _pair((1, 3, 3), 1, (0, 1, 1))
    x = torch.randn(1, 6, 4, 16, 8).contiguous(memory_format=CL3)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        want, got = plain(x), folded(x)
    assert got.dtype == want.dtype == torch.bfloat16
    assert torch.equal(got, want)


@pytest.mark.parametrize("reduction", ["mean", "max", "attention"])
def test_projection_answers_channels_last_for_a_channels_last_volume(reduction):
    block = ProjectionBlock(4, 2, reduction=reduction).eval()
    x = torch.randn(1, 4, 3, 16, 8)
    with torch.no_grad():
        a = block(x.contiguous(memory_format=CL3))
        b = block(x.contiguous())
    assert a.is_contiguous(memory_format=torch.channels_last) and b.is_contiguous()
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_channels_last_and_contiguous_fpn_train_alike():
    """The channels-last FPN (every 3-D conv folded) and the contiguous one (in-B-scan convs
    left 3-D), same weights, one training-mode pass: same loss, same gradients. Relative to the
    gradient's norm, as in test_models: train-mode batch statistics over the few deepest voxels
    amplify the two layouts' rounding differences (about 2e-3 here)."""
    torch.manual_seed(0)
    a = create_model("fpn", width=1 / 8)
    b = create_model("fpn", width=1 / 8, channels_last=False)
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 1, 8, 64, 32, generator=torch.Generator().manual_seed(2))
    target = (torch.rand(2, 1, 8, 32, generator=torch.Generator().manual_seed(3)) > 0.5).float()
    losses = []
    for m in (a, b):
        loss = nn.functional.binary_cross_entropy_with_logits(m(x), target)
        loss.backward()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert (pa.grad - pb.grad).norm() <= 1e-2 * pb.grad.norm() + 1e-8, name
