"""What a data source is, before it becomes a store: one record per visit, its arrays, and problems.

Every layout (``reference``, ``manifest``) turns a source folder into a list of
:class:`VisitSource`; :func:`data_prep.layouts.load_visit` turns one into :class:`VisitArrays`;
``validate`` reports :class:`Problem` records. The store writer only ever sees these types.

Axis convention everywhere: OCT volumes are ``(S, D, W)`` = (B-scan index, depth, A-scan index),
en-face images and masks are ``(S, W)`` on the OCT en-face grid.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from fpn.data.readers._common import DataError

__all__ = ["DataError", "Problem", "VisitArrays", "VisitSource", "visit_key"]

_KEY_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def visit_key(patient_id: str, eye: str, day: int) -> str:
    """Store key of a visit, e.g. ``P007_OD_120``; characters outside ``[A-Za-z0-9._-]`` become ``-``."""
    return "_".join(_KEY_SAFE.sub("-", str(p)) for p in (patient_id, eye, day))


@dataclass(frozen=True)
class VisitSource:
    """Where one visit's files are and what is known about it before reading them.

    Attributes:
        patient_id: patient identifier (the unit of every split).
        eye: ``"OD"`` or ``"OS"``.
        day: day in study (int, 0 for baseline).
        oct: path of the OCT volume file.
        faf, slo, mask: paths of the en-face images / GA mask, or ``None``.
        spacing_mm: ``(s, d, w)`` spacing in mm when the source states it (manifest columns),
            else ``None`` (then it comes from ``spacing_file`` or from the OCT file's header).
        spacing_file: a ``.npy`` holding ``(3,)`` spacing (reference layout), or ``None``.
        split: ``train``/``val``/``test``/``unlabelled`` when the source has a split, else ``None``.
        origin: the file that declared this visit (manifest CSV, ``data_info.json``), for messages.
    """

    patient_id: str
    eye: str
    day: int
    oct: str
    faf: str | None = None
    slo: str | None = None
    mask: str | None = None
    spacing_mm: tuple[float, float, float] | None = None
    spacing_file: str | None = None
    split: str | None = None
    origin: str | None = None

    @property
    def key(self) -> str:
        return visit_key(self.patient_id, self.eye, self.day)

    def paths(self) -> dict[str, str]:
        """The source files by role (``oct``, ``faf``, ``slo``, ``mask``, ``spacing``)."""
        out = {"oct": self.oct, "faf": self.faf, "slo": self.slo, "mask": self.mask,
               "spacing": self.spacing_file}
        return {k: v for k, v in out.items() if v is not None}


@dataclass
class VisitArrays:
    """The arrays of one visit as read from its source files.

    Attributes:
        oct: ``(S, D, W)`` float32.
        spacing_mm: ``(s, d, w)`` in mm, all positive.
        faf, slo: ``(S, W)`` float32 in ``[0, 1]`` or ``None``.
        mask: ``(S, W)`` uint8 in ``{0, 1}`` or ``None``.
    """

    oct: np.ndarray
    spacing_mm: tuple[float, float, float]
    faf: np.ndarray | None = None
    slo: np.ndarray | None = None
    mask: np.ndarray | None = None
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the source, named by file and cause."""

    path: str
    message: str
    visit: str | None = None

    def __str__(self) -> str:
        where = f"{self.path}" + (f" (visit {self.visit})" if self.visit else "")
        return f"{where}: {self.message}"

