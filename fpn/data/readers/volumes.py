"""OCT volume readers for the open formats: ``.npy``, NIfTI, multi-page TIFF and DICOM.

Every reader returns the volume as ``(S, D, W)`` float32 = (B-scan, depth, A-scan), the spacing
``(s, d, w)`` in mm when the file carries it (else ``None``) and a dict of extras. The axis order
each format is read with is documented in ``docs/formats.md`` and pinned by tests that use
volumes whose values encode their index.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from fpn.data.readers._common import DataError, read_npy

__all__ = ["read_dicom_volume", "read_nifti_volume", "read_npy_volume", "read_tiff_volume"]

Spacing = tuple[float, float, float]

# Length units a file may state, as a factor to millimetres.
_UNIT_TO_MM = {"mm": 1.0, "millimeter": 1.0, "micron": 1e-3, "um": 1e-3, "\u00b5m": 1e-3,
               "\\u00b5m": 1e-3, "meter": 1e3, "m": 1e3, "cm": 10.0, "centimeter": 10.0}


def _as_volume(path: str | os.PathLike, data: np.ndarray) -> np.ndarray:
    """Check that ``data`` is a non-empty 3-D real array and return it as C-ordered float32."""
    if data.ndim != 3:
        raise DataError(str(path), f"expected a 3-D OCT volume (S, D, W), got shape {data.shape}")
    if min(data.shape) == 0:
        raise DataError(str(path), f"empty OCT volume, shape {data.shape}")
    if not (np.issubdtype(data.dtype, np.number) or data.dtype == np.bool_) \
            or np.issubdtype(data.dtype, np.complexfloating):
        raise DataError(str(path), f"OCT voxels must be real numbers, got dtype {data.dtype}")
    return np.ascontiguousarray(data, dtype=np.float32)


def read_npy_volume(path: str | os.PathLike) -> tuple[np.ndarray, Spacing | None, dict[str, Any]]:
    """Read an ``(S, D, W)`` ``.npy`` volume as stored; ``.npy`` carries no spacing."""
    return _as_volume(path, read_npy(path)), None, {}


def read_nifti_volume(path: str | os.PathLike) -> tuple[np.ndarray, Spacing | None, dict[str, Any]]:
    """Read a NIfTI volume whose voxel axes ``(i, j, k)`` are ``(W, D, S)``.

    That is the order DICOM-to-NIfTI converters give an OCT series (columns = A-scans on ``i``,
    rows = depth on ``j``, frames = B-scans on ``k``). The voxel order is used as stored: the
    affine is ignored and nothing is flipped. Scale slope/intercept are applied. Trailing
    singleton axes (a 4-D file with one time point) are dropped.

    Returns:
        ``(S, D, W)`` float32, spacing ``(zoom_k, zoom_j, zoom_i)`` converted to mm, extras
        with the affine. Spacing is ``None`` when the file states no unit and all zooms are 1
        (nibabel's default, i.e. nobody set them).
    """
    import nibabel as nib

    img = nib.load(str(path))
    data = np.asarray(img.get_fdata(dtype=np.float32))
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise DataError(str(path), f"expected a 3-D NIfTI volume (W, D, S), got shape {data.shape}")
    volume = _as_volume(path, data.transpose(2, 1, 0))

    zooms = [float(z) for z in img.header.get_zooms()[:3]]
    unit = img.header.get_xyzt_units()[0] if hasattr(img.header, "get_xyzt_units") else "unknown"
    spacing: Spacing | None
    if unit == "unknown" and all(z == 1.0 for z in zooms):
        spacing = None
    else:
        # NIfTI-1 unit code 0 ("unknown") is read as mm, as most tools do.
        factor = _UNIT_TO_MM.get(unit, 1.0)
        spacing = (zooms[2] * factor, zooms[1] * factor, zooms[0] * factor)
    return volume, spacing, {"affine": np.asarray(img.affine)}


def read_tiff_volume(path: str | os.PathLike) -> tuple[np.ndarray, Spacing | None, dict[str, Any]]:
    """Read a multi-page TIFF: pages = B-scans, page rows = depth, page columns = A-scans.

    Spacing is taken only from ImageJ metadata that states a length unit (``unit`` = mm or
    micron): ``w = 1 / XResolution``, ``d = 1 / YResolution``, ``s = spacing``. Plain TIFF
    resolution tags (inch/cm, usually a screen DPI) are not trusted.
    """
    import tifffile

    with tifffile.TiffFile(str(path)) as tif:
        data = tif.series[0].asarray()
        spacing = _imagej_spacing(tif)
    if data.ndim == 2:
        raise DataError(str(path), f"single-page TIFF {data.shape}: an OCT volume needs one page "
                                   "per B-scan")
    return _as_volume(path, data), spacing, {}


def _imagej_spacing(tif: Any) -> Spacing | None:
    meta = tif.imagej_metadata or {}
    factor = _UNIT_TO_MM.get(str(meta.get("unit", "")).strip().lower())
    if factor is None or "spacing" not in meta:
        return None
    tags = tif.pages[0].tags
    try:
        x_num, x_den = tags["XResolution"].value
        y_num, y_den = tags["YResolution"].value
    except KeyError:
        return None
    if not (x_num and y_num):
        return None
    return (float(meta["spacing"]) * factor, y_den / y_num * factor, x_den / x_num * factor)


def read_dicom_volume(path: str | os.PathLike) -> tuple[np.ndarray, Spacing | None, dict[str, Any]]:
    """Read a (multi-frame) DICOM OCT: frames = B-scans, rows = depth, columns = A-scans.

    Rescale slope/intercept (top level or the shared Pixel Value Transformation) are applied.
    Spacing comes from the Pixel Measures of the shared functional groups, else of the first
    per-frame functional group, else the top-level attributes: ``PixelSpacing`` = (row spacing,
    column spacing) = ``(d, w)``; ``s`` = ``SpacingBetweenSlices``, else ``SliceThickness``.
    """
    import pydicom

    ds = pydicom.dcmread(str(path))
    if "PixelData" not in ds:
        raise DataError(str(path), "DICOM file has no pixel data")
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise DataError(str(path), "DICOM OCT must be single-channel (SamplesPerPixel = 1)")
    data = np.asarray(ds.pixel_array)
    if int(ds.get("NumberOfFrames", 1) or 1) == 1 and data.ndim == 2:
        data = data[np.newaxis]
    slope, intercept = _dicom_rescale(ds)
    volume = _as_volume(path, data)
    if slope != 1.0 or intercept != 0.0:
        volume = volume * np.float32(slope) + np.float32(intercept)
    extras = {"sop_class_uid": str(ds.get("SOPClassUID", ""))}
    return volume, _dicom_spacing(ds), extras


def _first_item(ds: Any, keyword: str) -> Any:
    seq = ds.get(keyword)
    return seq[0] if seq else None


def _dicom_rescale(ds: Any) -> tuple[float, float]:
    source = ds
    if "RescaleSlope" not in ds:
        shared = _first_item(ds, "SharedFunctionalGroupsSequence")
        pvt = _first_item(shared, "PixelValueTransformationSequence") if shared else None
        source = pvt if pvt is not None else ds
    return float(source.get("RescaleSlope", 1.0)), float(source.get("RescaleIntercept", 0.0))


def _dicom_spacing(ds: Any) -> Spacing | None:
    candidates = []
    for group in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        item = _first_item(ds, group)
        measures = _first_item(item, "PixelMeasuresSequence") if item is not None else None
        if measures is not None:
            candidates.append(measures)
    candidates.append(ds)
    pixel_spacing = next((c.PixelSpacing for c in candidates if c.get("PixelSpacing")), None)
    between = next((c.SpacingBetweenSlices for c in candidates if c.get("SpacingBetweenSlices")),
                   None)
    if between is None:
        between = next((c.SliceThickness for c in candidates if c.get("SliceThickness")), None)
    if pixel_spacing is None or between is None or len(pixel_spacing) != 2:
        return None
    return (float(between), float(pixel_spacing[0]), float(pixel_spacing[1]))
