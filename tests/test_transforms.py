"""Tests of fpn.data.transforms' augmentations, above all the reference's per-crop offset."""

from __future__ import annotations

import numpy as np
import pytest

from fpn.data.transforms import augment


def _expected(oct_crop: np.ndarray, target: np.ndarray, seed: int, offset_std: float,
              contrast: tuple[float, float] = (0.9, 1.1),
              shift: tuple[float, float] = (-0.2, 0.2)) -> tuple[np.ndarray, np.ndarray]:
    """The reference recipe written out step by step with a twin generator: rotation, flips,
    then (crop + offset) * contrast + shift, drawn in that order."""
    rng = np.random.default_rng(seed)
    if rng.random() < 0.5:
        oct_crop, target = oct_crop[::-1, :, ::-1], target[::-1, ::-1]
    if rng.random() < 0.5:
        oct_crop, target = oct_crop[::-1], target[::-1]
    if rng.random() < 0.5:
        oct_crop, target = oct_crop[:, :, ::-1], target[:, ::-1]
    offset = rng.normal(0.0, offset_std) if offset_std > 0 else 0.0
    scale, add = rng.uniform(*contrast), rng.uniform(*shift)
    return (oct_crop + offset) * scale + add, target


@pytest.mark.parametrize("offset_std", [0.0, 0.2, 1.5])
def test_augment_follows_the_reference_order(offset_std: float) -> None:
    source = np.random.default_rng(99)
    oct_crop = source.normal(size=(4, 6, 5)).astype(np.float32)
    target = (source.random((4, 5)) > 0.5).astype(np.float32)
    for seed in range(8):  # covers every rotation / flip combination in practice
        got_oct, got_target = augment(oct_crop, target, np.random.default_rng(seed),
                                      offset_std=offset_std)
        want_oct, want_target = _expected(oct_crop, target, seed, offset_std)
        np.testing.assert_allclose(got_oct, want_oct, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(got_target, want_target)
        assert got_oct.dtype == np.float32 and got_oct.flags.c_contiguous


def test_offset_is_one_number_per_crop_drawn_from_n_0_std() -> None:
    zeros = np.zeros((3, 4, 5), np.float32)
    target = np.zeros((3, 5), np.float32)
    offsets = []
    for seed in range(2000):
        out, _ = augment(zeros, target, np.random.default_rng(seed), offset_std=0.2,
                         contrast=(1.0, 1.0), shift=(0.0, 0.0))
        assert np.ptp(out) == 0  # the same value on every voxel: an offset, not noise
        offsets.append(float(out.flat[0]))
    offsets = np.asarray(offsets)
    assert abs(offsets.mean()) < 0.02 and 0.18 < offsets.std() < 0.22
    assert len(np.unique(offsets)) == len(offsets)  # a new number for every crop


def test_offset_comes_before_the_contrast() -> None:
    zeros = np.zeros((2, 3, 4), np.float32)
    target = np.zeros((2, 4), np.float32)
    plain, _ = augment(zeros, target, np.random.default_rng(5), offset_std=0.2,
                       contrast=(1.0, 1.0), shift=(0.0, 0.0))
    doubled, _ = augment(zeros, target, np.random.default_rng(5), offset_std=0.2,
                         contrast=(2.0, 2.0), shift=(0.3, 0.3))
    # (0 + o) * 2 + 0.3, not 0 * 2 + 0.3 + o
    np.testing.assert_allclose(doubled, 2 * plain + 0.3, rtol=1e-6)


def test_zero_offset_draws_nothing_and_negative_is_rejected() -> None:
    oct_crop = np.random.default_rng(0).normal(size=(2, 3, 4)).astype(np.float32)
    target = np.zeros((2, 4), np.float32)
    off, _ = augment(oct_crop, target, np.random.default_rng(7), offset_std=0.0)
    default, _ = augment(oct_crop, target, np.random.default_rng(7))
    np.testing.assert_array_equal(off, default)  # runs without the offset keep their crops
    with pytest.raises(ValueError, match="offset_std"):
        augment(oct_crop, target, np.random.default_rng(7), offset_std=-0.1)


def test_reference_recipe_has_the_offset_on_and_crops_apply_it_only_when_augmenting(
        synthetic_store) -> None:
    from fpn.config import DataConfig
    from fpn.data.dataset import CropDataset, select_visits
    from fpn.data.store import open_store

    assert DataConfig(store=str(synthetic_store)).offset_std == 0.2
    keys = select_visits(open_store(str(synthetic_store)), "mask", "train")[:2]

    def crop(**fields) -> np.ndarray:
        cfg = DataConfig(store=str(synthetic_store), crop=(4, 16), multiplier=1,
                         loader_workers=0, **fields)
        return CropDataset(cfg, keys, seed=3)[0][0].numpy()

    np.testing.assert_array_equal(crop(augment=False, offset_std=0.2),
                                  crop(augment=False, offset_std=0.0))
    with_offset, without = crop(offset_std=0.2), crop(offset_std=0.0)
    assert not np.allclose(with_offset, without)
