"""Format readers: OCT volumes to ``(S, D, W)`` float32, en-face images and masks to ``(S, W)``.

The format is chosen by extension (case-insensitive):

- OCT: ``.npy``, ``.nii``/``.nii.gz`` (nibabel), ``.tif``/``.tiff`` (tifffile), ``.dcm`` (pydicom),
  ``.vol`` (eyepy), ``.e2e`` (oct-converter, optional extra ``fpn[e2e]``).
- En-face images and masks: ``.png``, ``.tif``/``.tiff``, ``.npy``.

Axis order and orientation per format: ``docs/formats.md``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np

from fpn.data.readers._common import DataError, format_of, require_file
from fpn.data.readers.enface import (
    ENFACE_FORMATS,
    binarize_mask,
    mask_binary_problem,
    read_enface,
    read_image_raw,
    read_mask,
)
from fpn.data.readers.heidelberg import read_e2e_volume, read_vol_volume, resample_slo_to_oct_grid
from fpn.data.readers.volumes import (
    read_dicom_volume,
    read_nifti_volume,
    read_npy_volume,
    read_tiff_volume,
)

__all__ = [
    "ENFACE_FORMATS",
    "OCT_FORMATS",
    "SPACING_FORMATS",
    "DataError",
    "binarize_mask",
    "format_of",
    "mask_binary_problem",
    "read_enface",
    "read_image_raw",
    "read_mask",
    "read_oct",
    "resample_slo_to_oct_grid",
]

Spacing = tuple[float, float, float]
_OctReader = Callable[[str | os.PathLike], tuple[np.ndarray, Spacing | None, dict[str, Any]]]

_OCT_READERS: dict[str, tuple[str, _OctReader]] = {
    ".npy": ("NumPy", read_npy_volume),
    ".nii": ("NIfTI", read_nifti_volume),
    ".nii.gz": ("NIfTI", read_nifti_volume),
    ".tif": ("TIFF", read_tiff_volume),
    ".tiff": ("TIFF", read_tiff_volume),
    ".dcm": ("DICOM", read_dicom_volume),
    ".vol": ("Heidelberg VOL", read_vol_volume),
    ".e2e": ("Heidelberg E2E", read_e2e_volume),
}
OCT_FORMATS = tuple(_OCT_READERS)
# Formats whose header may state the voxel spacing (the others need it from the source).
SPACING_FORMATS = (".nii", ".nii.gz", ".tif", ".tiff", ".dcm", ".vol", ".e2e")


def read_oct(path: str | os.PathLike) -> tuple[np.ndarray, Spacing | None, dict[str, Any]]:
    """Read an OCT volume in any supported format.

    Args:
        path: the volume file; the extension picks the reader.

    Returns:
        ``(volume, spacing, extras)``: volume ``(S, D, W)`` float32 (values as stored, not
        rescaled); spacing ``(s, d, w)`` mm when the file carries it, else ``None``; extras, e.g.
        ``{"slo": ..., "bscan_positions": ..., "slo_scale_mm": ...}`` for ``.vol``.

    Raises:
        DataError: naming the file: not found, unknown format, unreadable/truncated, not 3-D.
    """
    fmt = format_of(path)
    if fmt not in _OCT_READERS:
        require_file(path)
        raise DataError(str(path), f"unknown format {fmt or '(no extension)'!r} for an OCT volume "
                                   f"(known: {', '.join(OCT_FORMATS)})")
    require_file(path)
    name, reader = _OCT_READERS[fmt]
    try:
        volume, spacing, extras = reader(path)
    except DataError:
        raise
    except Exception as exc:  # each library fails in its own way on a damaged file
        raise DataError(str(path), f"unreadable {name} file ({type(exc).__name__}: {exc})") \
            from exc
    if volume.ndim != 3 or min(volume.shape) == 0:
        raise DataError(str(path), f"expected a 3-D OCT volume (S, D, W), got shape {volume.shape}")
    return volume, spacing, extras
