"""Heidelberg Spectralis readers: ``.vol`` (via eyepy) and ``.e2e`` (via the optional oct-converter).

Besides the volume, a ``.vol`` file holds the SLO (near-infrared localizer) image and the
start/end point of every B-scan on it; :func:`resample_slo_to_oct_grid` uses them to put the SLO
on the OCT en-face grid ``(S, W)``.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from scipy import ndimage

from fpn.data.readers._common import DataError

__all__ = ["read_e2e_volume", "read_vol_volume", "resample_slo_to_oct_grid"]

Spacing = tuple[float, float, float]

# HEYEX marks voxels without data (outside the scanned area) with the largest float32.
_VOL_NO_DATA = np.finfo(np.float32).max


def read_vol_volume(path: str | os.PathLike) -> tuple[np.ndarray, Spacing | None, dict[str, Any]]:
    """Read a Heidelberg ``.vol`` file with ``eyepy.import_heyex_vol``.

    The volume is eyepy's ``raw_data``: shape ``(n_bscans, depth, width)`` = ``(S, D, W)``, B-scans
    in file order (``S = 0`` is the first B-scan stored), the raw linear reflectivity floats
    of the file, with the no-data marker (float32 max) replaced by 0. eyepy's display transform
    (log, to uint8) is not applied.

    Returns:
        volume ``(S, D, W)`` float32; spacing ``(distance, scale_y, scale_x)`` mm = eyepy's
        ``(scale_z, scale_y, scale_x)``; extras ``slo`` (uint8 ``(H, W_slo)``), ``slo_scale_mm``
        ``(row, column)`` mm per SLO pixel, ``bscan_positions`` float64 ``(S, 2, 2)`` =
        ``[[start_x, start_y], [end_x, end_y]]`` mm per B-scan, and ``laterality``.
    """
    import eyepy

    ev = eyepy.import_heyex_vol(str(path))
    data = np.asarray(ev.raw_data, dtype=np.float32)
    data = np.where(data == _VOL_NO_DATA, np.float32(0), data)
    meta = ev.meta
    spacing = (float(meta["scale_z"]), float(meta["scale_y"]), float(meta["scale_x"]))
    positions = np.array([[b["start_pos"], b["end_pos"]] for b in meta["bscan_meta"]],
                         dtype=np.float64).reshape(-1, 2, 2)
    localizer = ev.localizer
    extras = {
        "slo": np.asarray(localizer.raw_data),
        "slo_scale_mm": (float(localizer.meta["scale_y"]), float(localizer.meta["scale_x"])),
        "bscan_positions": positions,
        "laterality": str(meta.get("laterality", "")),
    }
    return np.ascontiguousarray(data), spacing, extras


def resample_slo_to_oct_grid(slo: np.ndarray, bscan_positions: np.ndarray,
                             slo_scale_mm: tuple[float, float], n_ascans: int) -> np.ndarray:
    """Sample the SLO along every B-scan line, giving an image on the OCT en-face grid.

    B-scan ``s`` runs from ``start = (x0, y0)`` to ``end = (x1, y1)`` (mm, SLO frame); A-scan
    ``w`` of it lies at ``start + w / (W - 1) * (end - start)``, i.e. SLO pixel
    ``(row, col) = (y / scale_row, x / scale_col)`` with pixel centres on integers. Values are
    interpolated bilinearly (``scipy.ndimage.map_coordinates``, order 1); points off the image take
    the nearest edge pixel.

    Args:
        slo: ``(H, W_slo)`` SLO image (uint8 0..255 or float in [0, 1]).
        bscan_positions: ``(S, 2, 2)`` = ``[[start_x, start_y], [end_x, end_y]]`` per B-scan, mm.
        slo_scale_mm: ``(row, column)`` size of one SLO pixel in mm.
        n_ascans: ``W``, A-scans per B-scan.

    Returns:
        ``(S, W)`` float32 in ``[0, 1]`` (uint8 input is divided by 255).
    """
    positions = np.asarray(bscan_positions, dtype=np.float64)
    if positions.ndim != 3 or positions.shape[1:] != (2, 2):
        raise ValueError(f"bscan_positions must have shape (S, 2, 2), got {positions.shape}")
    scale_row, scale_col = slo_scale_mm
    if not (scale_row > 0 and scale_col > 0):
        raise ValueError(f"SLO pixel size must be positive, got {slo_scale_mm}")
    image = np.asarray(slo, dtype=np.float32)
    if np.issubdtype(np.asarray(slo).dtype, np.integer):
        image = image / np.float32(255.0)
    t = np.linspace(0.0, 1.0, n_ascans) if n_ascans > 1 else np.zeros(1)
    start, end = positions[:, 0, :], positions[:, 1, :]               # (S, 2) as (x, y)
    points = start[:, None, :] + t[None, :, None] * (end - start)[:, None, :]  # (S, W, 2)
    rows = points[..., 1] / scale_row
    cols = points[..., 0] / scale_col
    sampled = ndimage.map_coordinates(image, [rows, cols], order=1, mode="nearest")
    return np.clip(sampled, 0.0, 1.0).astype(np.float32)


def read_e2e_volume(path: str | os.PathLike) -> tuple[np.ndarray, Spacing | None, dict[str, Any]]:
    """Read the one OCT volume of a Heidelberg ``.e2e`` file with oct-converter (optional extra).

    oct-converter returns each B-scan as a ``(depth, width)`` image, already display-transformed
    (``256 * x ** (1 / 2.4)``); they are stacked in its order to ``(S, D, W)``. Spacing is read from
    its ``pixel_spacing`` (taken as ``[w, d, s]`` mm) where the installed version provides it.

    Raises:
        DataError: oct-converter is not installed, or the file holds no or several volumes.
    """
    try:
        from oct_converter.readers import E2E
    except ImportError as exc:
        raise DataError(str(path), "reading .e2e files needs the optional extra oct-converter: "
                                   "pip install fpn[e2e]") from exc
    volumes = E2E(str(path)).read_oct_volume()
    # An .e2e often also holds single line scans beside the volume; keep the volumes only.
    candidates = [v for v in volumes if len(v.volume) > 1] or list(volumes)
    if len(candidates) != 1:
        raise DataError(str(path), f".e2e file holds {len(candidates)} OCT volumes; export one "
                                   "volume per file (or convert it to .vol/DICOM)")
    found = candidates[0]
    data = np.stack([np.asarray(b, dtype=np.float32) for b in found.volume], axis=0)
    spacing: Spacing | None = None
    raw_spacing = getattr(found, "pixel_spacing", None)
    if raw_spacing is not None and len(raw_spacing) == 3:
        spacing = (float(raw_spacing[2]), float(raw_spacing[1]), float(raw_spacing[0]))
    return data, spacing, {"laterality": getattr(found, "laterality", None)}
