"""Read and check all files of one visit: :func:`load_visit` and :func:`check_visit`.

Both run the same inspection, so that ``validate`` reports exactly what ``convert`` would refuse:
``check_visit`` returns every problem, ``load_visit`` raises on the first one.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from data_prep.sources import DataError, Problem, VisitArrays, VisitSource
from fpn.data.readers import (
    SPACING_FORMATS,
    binarize_mask,
    format_of,
    mask_binary_problem,
    read_enface,
    read_image_raw,
    read_oct,
    resample_slo_to_oct_grid,
)
from fpn.data.readers._common import read_npy

__all__ = ["check_visit", "inspect_visit", "load_visit"]


class _Collector:
    """Problems of one visit, each tagged with the visit key."""

    def __init__(self, visit: VisitSource):
        self.key = visit.key
        self.problems: list[Problem] = []

    def add(self, path: str | Path | None, message: str) -> None:
        self.problems.append(Problem(str(path), message, self.key))

    def add_error(self, error: DataError) -> None:
        self.add(error.path, error.reason)


def inspect_visit(v: VisitSource) -> tuple[VisitArrays | None, list[Problem]]:
    """Read every file of a visit and collect all problems.

    Args:
        v: the visit's source record.

    Returns:
        ``(arrays, problems)``; ``arrays`` is ``None`` when there are problems.
    """
    found = _Collector(v)
    extra: dict[str, Any] = {"oct_format": format_of(v.oct)}

    volume, file_spacing, oct_extras = None, None, {}
    try:
        volume, file_spacing, oct_extras = read_oct(v.oct)
    except DataError as err:
        found.add_error(err)
    if volume is not None:
        bad = int(volume.size - np.count_nonzero(np.isfinite(volume)))
        if bad:
            found.add(v.oct, f"OCT contains NaN or inf ({bad} of {volume.size} voxels)")
    grid = (volume.shape[0], volume.shape[2]) if volume is not None else None

    spacing = _resolve_spacing(v, volume is not None, file_spacing, found, extra)

    images: dict[str, np.ndarray | None] = {"faf": None, "slo": None}
    for role in ("faf", "slo"):
        path = getattr(v, role)
        if path is None:
            continue
        try:
            image = read_enface(path)
        except DataError as err:
            found.add_error(err)
            continue
        if _check_grid(found, path, role, image.shape, grid, v.oct):
            images[role] = image

    if v.slo is None and volume is not None and "slo" in oct_extras \
            and "bscan_positions" in oct_extras:
        try:
            images["slo"] = resample_slo_to_oct_grid(
                oct_extras["slo"], oct_extras["bscan_positions"], oct_extras["slo_scale_mm"],
                volume.shape[2])
            extra["slo_source"] = "resampled from the SLO stored in the OCT file"
        except ValueError as err:
            found.add(v.oct, f"cannot resample the stored SLO onto the OCT grid: {err}")

    mask = None
    if v.mask is not None:
        try:
            raw = read_image_raw(v.mask)
        except DataError as err:
            found.add_error(err)
        else:
            not_binary = mask_binary_problem(raw)
            if not_binary:
                found.add(v.mask, not_binary)
            if _check_grid(found, v.mask, "mask", raw.shape, grid, v.oct) and not not_binary:
                mask = binarize_mask(raw)

    if found.problems or volume is None or spacing is None:
        return None, found.problems
    for key in ("laterality", "bscan_positions", "slo_scale_mm"):
        if key in oct_extras:
            extra[key] = oct_extras[key]
    return VisitArrays(oct=volume, spacing_mm=spacing, faf=images["faf"], slo=images["slo"],
                       mask=mask, extra=extra), []


def _check_grid(found: _Collector, path: str, role: str, shape: tuple[int, ...],
                grid: tuple[int, int] | None, oct_path: str) -> bool:
    """Report an en-face image whose shape is not the OCT's ``(S, W)``; True when it fits."""
    if grid is None:
        return False  # OCT unreadable: nothing to compare with (its problem is reported already)
    if tuple(shape) != grid:
        found.add(path, f"{role} shape {tuple(shape)} does not match the OCT en-face grid "
                        f"(S, W) = {grid} of {oct_path}")
        return False
    return True


def _resolve_spacing(v: VisitSource, oct_read: bool, file_spacing: tuple | None,
                     found: _Collector, extra: dict[str, Any]) -> tuple[float, float, float] | None:
    """Spacing by precedence: source columns, then the spacing file, then the OCT header."""
    if v.spacing_mm is not None:
        spacing, where, source = v.spacing_mm, v.origin or v.oct, "source"
    elif v.spacing_file is not None:
        where, source = v.spacing_file, "spacing_file"
        try:
            spacing = tuple(np.asarray(read_npy(v.spacing_file), dtype=np.float64).ravel())
        except DataError as err:
            found.add_error(err)
            return None
        except (TypeError, ValueError) as err:
            found.add(v.spacing_file, f"spacing is not numeric ({err})")
            return None
        if len(spacing) != 3:
            found.add(v.spacing_file, f"spacing must hold 3 values (s, d, w) in mm, "
                                      f"found {len(spacing)}")
            return None
    elif file_spacing is not None:
        spacing, where, source = file_spacing, v.oct, "file"
    else:
        if oct_read or format_of(v.oct) not in SPACING_FORMATS:
            fmt = format_of(v.oct) or "(no extension)"
            carried = ("this file states none" if fmt in SPACING_FORMATS
                       else f"{fmt} files do not carry it")
            found.add(v.oct, f"missing spacing: no spacing_s/spacing_d/spacing_w given by the "
                             f"source and {carried}")
        return None
    values = tuple(float(x) for x in spacing)
    if len(values) != 3 or not all(math.isfinite(x) and x > 0 for x in values):
        given_by = {"source": " given by the spacing_s/spacing_d/spacing_w columns",
                    "spacing_file": " in the spacing file", "file": " stated by the file"}[source]
        found.add(where, f"non-positive or non-finite spacing {values} (mm, (s, d, w)){given_by}")
        return None
    extra["spacing_source"] = source
    return values  # type: ignore[return-value]


def check_visit(v: VisitSource) -> list[Problem]:
    """All problems of one visit (reads every file of it).

    Reported: missing/unreadable file, truncated array, unknown format, NaN/inf, en-face or mask
    shape != ``(S, W)``, non-binary mask, missing or non-positive spacing.
    """
    return inspect_visit(v)[1]


def load_visit(v: VisitSource) -> VisitArrays:
    """Read and check one visit.

    When ``v.slo`` is ``None`` and the OCT is a ``.vol``, the SLO stored in the file is resampled
    onto the OCT en-face grid and returned as ``slo``.

    Returns:
        VisitArrays: oct ``(S, D, W)`` float32, spacing ``(s, d, w)`` mm, faf/slo ``(S, W)`` float32
        in ``[0, 1]`` or ``None``, mask ``(S, W)`` uint8 ``{0, 1}`` or ``None``.

    Raises:
        DataError: naming the file and the cause of the first problem (and how many more).
    """
    arrays, problems = inspect_visit(v)
    if problems:
        first = problems[0]
        more = f" (and {len(problems) - 1} more problem(s) in visit {v.key})" \
            if len(problems) > 1 else ""
        raise DataError(first.path, first.message + more)
    assert arrays is not None
    return arrays
