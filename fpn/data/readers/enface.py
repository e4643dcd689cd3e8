"""En-face image and mask readers (PNG, TIFF, ``.npy``), on the OCT en-face grid ``(S, W)``.

Rows are B-scans (``S``), columns are A-scans (``W``): row ``s`` of an en-face image lies under
B-scan ``s`` of the volume. Nothing is flipped or resampled here.
"""

from __future__ import annotations

import os

import numpy as np

from fpn.data.readers._common import DataError, format_of, read_npy, require_file

__all__ = [
    "ENFACE_FORMATS",
    "binarize_mask",
    "mask_binary_problem",
    "read_enface",
    "read_image_raw",
    "read_mask",
]

ENFACE_FORMATS = (".png", ".tif", ".tiff", ".npy")


def read_image_raw(path: str | os.PathLike) -> np.ndarray:
    """Read a 2-D single-channel image in its stored dtype.

    Grey images saved as RGB/RGBA with equal colour channels are accepted (the first channel is
    kept); a grey+alpha PNG keeps its grey channel. Palette PNGs give their palette indices.

    Args:
        path: ``.png``, ``.tif``/``.tiff`` or ``.npy`` (case-insensitive).

    Returns:
        ``(S, W)`` array, dtype as stored (uint8, uint16, bool, float, ...).

    Raises:
        DataError: missing file, unknown format, unreadable file, or not a single-channel 2-D image.
    """
    fmt = format_of(path)
    if fmt not in ENFACE_FORMATS:
        require_file(path)
        raise DataError(str(path), f"unknown format {fmt or '(no extension)'!r} for an en-face "
                                   f"image (known: {', '.join(ENFACE_FORMATS)})")
    if fmt == ".npy":
        image = read_npy(path)
    else:
        require_file(path)
        try:
            image = _read_png(path) if fmt == ".png" else _read_tiff(path)
        except DataError:
            raise
        except Exception as exc:
            raise DataError(str(path), f"unreadable {fmt} image ({type(exc).__name__}: {exc})") \
                from exc
    return _single_channel(path, image)


def _read_png(path: str | os.PathLike) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        img.load()
        mode = img.mode
        image = np.asarray(img)
    if mode == "LA":
        image = image[..., 0]
    elif mode.startswith("I") and image.dtype != np.uint16 and image.size \
            and image.min() >= 0 and image.max() <= 65535:
        # Pillow may hand 16-bit grey PNGs over as int32 ("I"); they are uint16 on disk.
        image = image.astype(np.uint16)
    return image


def _read_tiff(path: str | os.PathLike) -> np.ndarray:
    import tifffile

    return tifffile.imread(str(path))


def _single_channel(path: str | os.PathLike, image: np.ndarray) -> np.ndarray:
    if image.ndim == 3 and image.shape[-1] in (3, 4):
        colour = image[..., :3]
        if not (np.array_equal(colour[..., 0], colour[..., 1])
                and np.array_equal(colour[..., 0], colour[..., 2])):
            raise DataError(str(path), f"expected a single-channel (grey) image, got colour "
                                       f"image of shape {image.shape}")
        image = image[..., 0]
    if image.ndim != 2:
        raise DataError(str(path), f"expected a 2-D en-face image (S, W), got shape {image.shape}")
    if min(image.shape) == 0:
        raise DataError(str(path), f"empty image, shape {image.shape}")
    if not (np.issubdtype(image.dtype, np.number) or image.dtype == np.bool_) \
            or np.issubdtype(image.dtype, np.complexfloating):
        raise DataError(str(path), f"pixels must be real numbers, got dtype {image.dtype}")
    return image


def read_enface(path: str | os.PathLike) -> np.ndarray:
    """Read an en-face image (FAF, SLO) scaled to ``[0, 1]``.

    uint8 is divided by 255, uint16 by 65535, bool becomes 0/1; floats are kept when they lie in
    ``[0, 1]``. Masks go through :func:`read_mask` instead.

    Returns:
        ``(S, W)`` float32 in ``[0, 1]``.

    Raises:
        DataError: as :func:`read_image_raw`, or NaN/inf, float values outside ``[0, 1]``, or an
            integer dtype other than uint8/uint16.
    """
    image = read_image_raw(path)
    if image.dtype == np.uint8:
        return image.astype(np.float32) / np.float32(255)
    if image.dtype == np.uint16:
        return image.astype(np.float32) / np.float32(65535)
    if image.dtype == np.bool_:
        return image.astype(np.float32)
    if np.issubdtype(image.dtype, np.floating):
        _require_finite(path, image)
        lo, hi = float(image.min()), float(image.max())
        if lo < 0.0 or hi > 1.0:
            raise DataError(str(path), f"float image values must lie in [0, 1], found "
                                       f"[{lo:.4g}, {hi:.4g}]")
        return image.astype(np.float32)
    raise DataError(str(path), f"unsupported en-face dtype {image.dtype} (use uint8, uint16 or "
                               "float in [0, 1])")


def _require_finite(path: str | os.PathLike, image: np.ndarray) -> None:
    bad = int(np.count_nonzero(~np.isfinite(image)))
    if bad:
        raise DataError(str(path), f"contains NaN or inf ({bad} of {image.size} values)")


def mask_binary_problem(raw: np.ndarray) -> str | None:
    """Why a mask as stored is not binary, or ``None`` when it is.

    Binary means bool, or values within ``{0, 1}``, within ``{0, 255}``, or (uint16) within
    ``{0, 65535}``. Anything else, e.g. anti-aliased grey levels 0/100/255, is reported.

    Args:
        raw: ``(S, W)`` mask in its stored dtype (:func:`read_image_raw`).
    """
    if raw.dtype == np.bool_:
        return None
    if np.issubdtype(raw.dtype, np.floating) and not np.isfinite(raw).all():
        return "mask contains NaN or inf"
    values = np.unique(raw)
    allowed = [{0, 1}, {0, 255}] + ([{0, 65535}] if raw.dtype == np.uint16 else [])
    found = {float(v) for v in values}
    if any(found <= {float(a) for a in ok} for ok in allowed):
        return None
    shown = ", ".join(f"{v:g}" for v in values[:8]) + (", ..." if len(values) > 8 else "")
    return (f"mask is not binary: {len(values)} distinct values ({shown}); expected {{0, 1}} or "
            "{0, 255}")


def binarize_mask(raw: np.ndarray) -> np.ndarray:
    """Turn a stored mask into ``{0, 1}``.

    Masks whose values stay within ``[0, 1]`` are thresholded at 0.5; others at 128 (the
    reference's rule: GA where the uint8 mask is ``>= 128``).

    Returns:
        ``(S, W)`` uint8 in ``{0, 1}``.
    """
    if raw.dtype == np.bool_:
        return raw.astype(np.uint8)
    values = np.nan_to_num(raw.astype(np.float64, copy=False), nan=0.0)
    threshold = 0.5 if values.max(initial=0.0) <= 1.0 else 128.0
    return (values >= threshold).astype(np.uint8)


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """Read a GA mask as ``(S, W)`` uint8 ``{0, 1}`` (see :func:`binarize_mask`).

    A mask that is not binary is still thresholded here; ``check_visit`` reports it as a problem
    (:func:`mask_binary_problem`).
    """
    return binarize_mask(read_image_raw(path))
