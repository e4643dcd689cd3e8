"""Pure array transforms of the training recipe: per-B-scan z-score, crops, augmentations.

All functions take and return numpy arrays; OCT is ``(S, D, W)``, en-face targets ``(S, W)``.
Randomness comes only from the ``numpy.random.Generator`` passed in, so a crop is a function of
its seed.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "augment",
    "bscan_stats",
    "crop_window",
    "crop_window_around",
    "target_from",
    "zscore",
]


def bscan_stats(oct_volume: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of each B-scan over depth and A-scans.

    Args:
        oct_volume: ``(S, D, W)``.

    Returns:
        ``(mean, std)``, each ``(S,)`` float32.
    """
    v = np.asarray(oct_volume, dtype=np.float32)
    return v.mean(axis=(1, 2)), v.std(axis=(1, 2))


def zscore(oct_volume: np.ndarray, mean: np.ndarray, std: np.ndarray, eps: float) -> np.ndarray:
    """Per-B-scan z-score. ``eps`` keeps a constant B-scan (std 0: padding, blank frames) finite,
    which the reference release does not guard against."""
    v = np.asarray(oct_volume, dtype=np.float32)
    return (v - mean[:, None, None]) / (std[:, None, None] + eps)


def crop_window(
    shape_sw: tuple[int, int], crop_sw: tuple[int, int], rng: np.random.Generator
) -> tuple[slice, slice]:
    """A random ``(S, W)`` window of size ``crop_sw``, clipped to the volume."""
    out = []
    for size, want in zip(shape_sw, crop_sw):
        c = min(size, want)
        start = int(rng.integers(0, size - c + 1))
        out.append(slice(start, start + c))
    return out[0], out[1]


def crop_window_around(
    shape_sw: tuple[int, int], crop_sw: tuple[int, int], point_sw: tuple[int, int],
    rng: np.random.Generator,
) -> tuple[slice, slice]:
    """A random ``(S, W)`` window of size ``crop_sw`` (clipped to the volume) that contains
    ``point_sw``: each start is uniform among those that keep the point inside (nnU-Net's
    foreground oversampling centres nothing either: the point may lie anywhere in the crop)."""
    out = []
    for size, want, at in zip(shape_sw, crop_sw, point_sw):
        if not 0 <= at < size:
            raise ValueError(f"point {tuple(point_sw)} lies outside the volume {tuple(shape_sw)}")
        c = min(size, want)
        low, high = max(0, at - c + 1), min(at, size - c)
        start = int(rng.integers(low, high + 1))
        out.append(slice(start, start + c))
    return out[0], out[1]


def augment(
    oct_crop: np.ndarray,
    target: np.ndarray,
    rng: np.random.Generator,
    *,
    offset_std: float = 0.0,
    contrast: tuple[float, float] = (0.9, 1.1),
    shift: tuple[float, float] = (-0.2, 0.2),
    noise_std: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """The reference augmentations on a z-scored crop and its en-face target.

    In the reference's order: a 180-degree en-face rotation (both S and W reversed), independent
    flips along S and W, then one additive offset ``+ N(0, offset_std)`` for the whole crop (a
    single number, not per-voxel noise; the reference recipe uses 0.2, and 0 draws nothing, so
    the other draws are those of a run without it), contrast ``x U(contrast)``, intensity shift
    ``+ U(shift)``, so ``(crop + offset) * contrast + shift``; and optionally real per-voxel
    Gaussian noise (not in the reference). Geometric ones apply to the OCT and the target alike;
    intensity ones to the OCT only.
    """
    if offset_std < 0:
        raise ValueError(f"offset_std must be >= 0, got {offset_std}")
    if rng.random() < 0.5:  # 180-degree rotation in the en-face plane
        oct_crop, target = oct_crop[::-1, :, ::-1], target[::-1, ::-1]
    if rng.random() < 0.5:
        oct_crop, target = oct_crop[::-1], target[::-1]
    if rng.random() < 0.5:
        oct_crop, target = oct_crop[:, :, ::-1], target[:, ::-1]
    if offset_std > 0:
        oct_crop = oct_crop + np.float32(rng.normal(0.0, offset_std))
    oct_crop = oct_crop * np.float32(rng.uniform(*contrast)) + np.float32(rng.uniform(*shift))
    if noise_std > 0:
        oct_crop = oct_crop + rng.normal(0.0, noise_std, oct_crop.shape).astype(np.float32)
    return np.ascontiguousarray(oct_crop, np.float32), np.ascontiguousarray(target, np.float32)


def target_from(name: str, image: np.ndarray) -> np.ndarray:
    """The training target for ``name`` from the stored en-face array.

    ``mask`` stays 0/1; ``faf``/``slo`` are already in ``[0, 1]``; ``inverted_faf`` is
    ``1 - faf`` so that the dark GA lesion becomes bright, like the mask.
    """
    image = np.asarray(image, dtype=np.float32)
    if name == "inverted_faf":
        return 1.0 - image
    return image
