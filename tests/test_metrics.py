"""The losses and metrics written in :mod:`fpn.losses` and :mod:`fpn.metrics` against the
libraries they stand in for (MONAI, torchmetrics; both in the ``dev`` extra): the same numbers on
random masks and images, empty and identical cases included."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.unit

monai_metrics = pytest.importorskip("monai.metrics", reason="MONAI is the oracle (dev extra)")
tm_image = pytest.importorskip("torchmetrics.functional.image",
                               reason="torchmetrics is the oracle (dev extra)")


def _blobs(rng: np.random.Generator, shape: tuple[int, int], n: int) -> np.ndarray:
    """``n`` random ellipses, some touching the grid's edge."""
    s, w = np.mgrid[: shape[0], : shape[1]]
    mask = np.zeros(shape, bool)
    for _ in range(n):
        cs, cw = rng.uniform(-2, shape[0] + 2), rng.uniform(-2, shape[1] + 2)
        rs, rw = rng.uniform(1, shape[0] / 3), rng.uniform(1, shape[1] / 3)
        mask |= ((s - cs) / rs) ** 2 + ((w - cw) / rw) ** 2 <= 1
    return mask


def _pairs():
    rng = np.random.default_rng(0)
    for i in range(24):
        shape = (int(rng.integers(5, 49)), int(rng.integers(5, 97)))
        a = _blobs(rng, shape, int(rng.integers(1, 4)))
        b = a.copy() if i % 6 == 0 else _blobs(rng, shape, int(rng.integers(1, 4)))
        if i % 5 == 0:
            b |= rng.random(shape) < 0.02  # speckle: isolated one-pixel islands
        yield a, b, (float(rng.uniform(0.01, 0.2)), float(rng.uniform(0.005, 0.05)))


def _t(mask: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(mask, dtype=torch.float32)[None, None]


def test_dice_equals_monai():
    from fpn.metrics import dice

    for a, b, _ in _pairs():
        want = float(monai_metrics.compute_dice(_t(a), _t(b), include_background=True,
                                                ignore_empty=False).item())
        assert dice(a, b) == pytest.approx(want, abs=1e-6)
    empty = np.zeros((6, 9), bool)
    assert dice(empty, empty) == 1.0
    assert dice(empty | (np.arange(9) == 3), empty) == 0.0


def test_hd95_equals_monai_with_anisotropic_spacing():
    from fpn.metrics import hd95

    for a, b, spacing in _pairs():
        if not a.any() or not b.any():
            continue
        want = float(monai_metrics.compute_hausdorff_distance(
            _t(a), _t(b), include_background=True, percentile=95, spacing=list(spacing)).item())
        assert hd95(a, b, spacing) == pytest.approx(want, rel=1e-5, abs=1e-6), spacing
    a = next(_pairs())[0]
    assert hd95(a, a, (0.1, 0.02)) == 0.0
    assert math.isnan(hd95(a, np.zeros_like(a), (1.0, 1.0)))


# torchmetrics (1.9) sizes its Gaussian window from sigma alone, 2 * int(3.5 sigma + 0.5) + 1,
# whatever kernel_size says: these pairs are windows it really uses
@pytest.mark.parametrize("window,sigma", [(11, 1.5), (9, 1.0), (7, 0.8), (5, 0.5)])
def test_ssim_and_its_gradient_equal_torchmetrics(window, sigma):
    from fpn.losses import structural_similarity

    gen = torch.Generator().manual_seed(window)
    target = torch.rand(3, 1, 24, 40, generator=gen)
    base = (0.6 * target + 0.4 * torch.rand(3, 1, 24, 40, generator=gen)).clamp(0, 1)
    mine, theirs = base.clone().requires_grad_(), base.clone().requires_grad_()
    ours = structural_similarity(mine, target, kernel_size=window, sigma=sigma)
    ref = tm_image.structural_similarity_index_measure(
        theirs, target, gaussian_kernel=True, sigma=sigma, kernel_size=window, data_range=1.0)
    assert float(ours.detach()) == pytest.approx(float(ref.detach()), abs=1e-5)
    ours.backward()
    ref.backward()
    torch.testing.assert_close(mine.grad, theirs.grad, rtol=1e-4, atol=1e-7)


def test_soft_dice_loss_equals_monai_dice_loss_over_the_batch():
    from monai.losses import DiceLoss

    from fpn.losses import SegmentationLoss

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 1, 16, 32, generator=gen)
    target = (torch.rand(4, 1, 16, 32, generator=gen) < 0.2).float()
    target[1] = 0  # a crop without lesion
    ref = DiceLoss(sigmoid=True, squared_pred=True, batch=True)(logits, target)
    ours = SegmentationLoss(dice_weight=1.0, bce_weight=0.0)(logits, target)
    assert float(ours) == pytest.approx(float(ref), abs=1e-6)
    both = SegmentationLoss(0.5, 0.5)(logits, target)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
    assert float(both) == pytest.approx(float(0.5 * ref + 0.5 * bce), abs=1e-6)


def test_training_modules_do_not_import_monai_or_torchmetrics():
    """What every Ray Train worker imports stays free of the two slow imports."""
    import subprocess
    import sys

    code = ("import sys, fpn.training.worker, fpn.evaluation; "
            "print(sorted(m for m in ('monai', 'torchmetrics') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"
