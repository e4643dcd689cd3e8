"""Read an fpn store (format version 1, see ``docs/store-format.md``): the only way code reads data.

A store is one Zarr v3 group on a local path or an fsspec URL (``s3://bucket/store.zarr``). The
root's ``visits`` attribute is the index; a visit is part of the store only when it is in the
index *and* its group says ``complete: true`` with the indexed ``content_sha256`` (so a visit that
an interrupted re-run was rewriting is never served half-written).

Axis convention: OCT ``(S, D, W)`` = (B-scan index, depth, A-scan index); en-face images and masks
``(S, W)`` on the OCT en-face grid.

Example::

    store = open_store("fpn_data/store.zarr")
    for info in store.visits_for(splits="train", require="mask"):
        oct = store.read(info.key, "oct", region=(slice(0, 32), slice(None), slice(0, 256)))
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr

__all__ = [
    "ARRAY_NAMES",
    "ENFACE_NAMES",
    "FORMAT_VERSION",
    "LEASE_NAME",
    "SPLIT_PARTS",
    "Store",
    "StoreError",
    "VisitInfo",
    "is_local_location",
    "local_path",
    "open_store",
    "open_zarr_group",
    "store_fingerprint",
]

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
ARRAY_NAMES = ("oct", "faf", "slo", "mask")
ENFACE_NAMES = ("faf", "slo")
SPLIT_PARTS = ("train", "val", "test", "unlabelled")
# The writer lease (fpn.storage.lease) that data_prep's convert holds while it writes the store.
LEASE_NAME = "writer.lease"


def store_fingerprint(index: Mapping[str, Mapping[str, Any]],
                      split: Mapping[str, Iterable[str]]) -> str:
    """What a store is: sha256 hex over its visits' content and its split.

    Args:
        index: ``{key: {"content_sha256": ..., ...}}`` (the root ``visits`` attribute).
        split: ``{part: [patient ids]}``; parts not given count as empty.

    The digest covers the sorted ``key:content_sha256`` lines, then one line per split part
    (``train``, ``val``, ``test``, ``unlabelled``, in that order) with its sorted patient ids, so
    moving one patient from train to test changes it: results computed on a store (pretraining,
    fine-tuning, test Dice) are reused only for the same data *and* the same split.
    """
    digest = hashlib.sha256()
    for key in sorted(index):
        digest.update(f"{key}:{index[key].get('content_sha256', '')}\n".encode())
    for part in SPLIT_PARTS:
        patients = sorted(str(p) for p in split.get(part, []))
        digest.update(f"split:{part}:{json.dumps(patients)}\n".encode())
    return digest.hexdigest()


class StoreError(ValueError):
    """The location is not a readable fpn store, or a requested visit/array is not in it."""


def is_local_location(location: str) -> bool:
    """True for a plain filesystem path (no ``scheme://``); ``file://`` URLs count as fsspec URLs."""
    return "://" not in str(location)


def local_path(location: str) -> str:
    """The filesystem path of a local location or a ``file://`` URL, else raise :class:`StoreError`."""
    location = str(location)
    if is_local_location(location):
        return location
    if location.startswith("file://"):
        return location[len("file://"):]
    raise StoreError(f"{location}: not a local path")


def open_zarr_group(
    location: str, mode: str = "r", storage_options: dict[str, Any] | None = None
) -> zarr.Group:
    """Open a Zarr v3 group at a local path or fsspec URL.

    Args:
        location: filesystem path or fsspec URL (``s3://``, ``file://``, ``memory://``, ...).
        mode: zarr open mode (``"r"``, ``"r+"``, ``"a"``, ``"w"``).
        storage_options: fsspec options for URLs (ignored for plain paths and ``file://``).
    """
    kwargs: dict[str, Any] = {"mode": mode, "zarr_format": 3}
    if str(location).startswith("file://"):
        # Local files go through zarr's LocalStore (creates folders, atomic-enough writes).
        location = local_path(location)
    elif not is_local_location(location) and storage_options:
        kwargs["storage_options"] = storage_options
    return zarr.open_group(str(location), **kwargs)


@dataclass(frozen=True)
class VisitInfo:
    """What the store's index says about one visit.

    Attributes:
        key: store key ``<patient>_<eye>_<day>`` (:func:`data_prep.sources.visit_key`).
        patient_id: patient identifier (the unit of every split).
        eye: ``"OD"`` or ``"OS"``.
        day: day in study.
        spacing_mm: ``(s, d, w)`` voxel spacing in mm.
        shape: OCT shape ``(S, D, W)``; en-face arrays are ``(S, W)``.
        has: names of the arrays present (``oct`` always; ``faf``, ``slo``, ``mask`` optional).
        split: the patient's split part: ``train``, ``val``, ``test`` or ``unlabelled``.
        content_sha256: hash of the stored arrays' bytes.
    """

    key: str
    patient_id: str
    eye: str
    day: int
    spacing_mm: tuple[float, float, float]
    shape: tuple[int, int, int]
    has: frozenset[str]
    split: str
    content_sha256: str = ""

    @property
    def labelled(self) -> bool:
        return "mask" in self.has


def _as_set(value: str | Iterable[str] | None) -> frozenset[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return frozenset([value])
    return frozenset(value)


class Store:
    """An opened fpn store; use :func:`open_store` to get one.

    Picklable (it re-opens its Zarr group lazily after unpickling), so it can be handed to
    DataLoader workers or Ray tasks.
    """

    def __init__(self, location: str, storage_options: dict[str, Any] | None = None):
        self.location = str(location)
        self.storage_options = dict(storage_options or {})
        self._root: zarr.Group | None = None
        try:
            root = self._group()
        except (FileNotFoundError, zarr.errors.GroupNotFoundError, KeyError) as exc:
            raise StoreError(f"{self.location}: no Zarr group here ({exc})") from exc
        attrs = dict(root.attrs)
        version = attrs.get("fpn_store_version")
        if version is None:
            raise StoreError(f"{self.location}: not an fpn store (no fpn_store_version attribute)")
        if version != FORMAT_VERSION:
            raise StoreError(
                f"{self.location}: store format version {version}, this reader reads {FORMAT_VERSION}"
            )
        self.format_version: int = int(version)
        self.split_source: str = str(attrs.get("split_source", ""))
        self.oct_dtype: str = str(attrs.get("oct_dtype", ""))
        self.conversion: dict[str, Any] = dict(attrs.get("conversion", {}))
        split = {part: sorted(attrs.get("split", {}).get(part, [])) for part in SPLIT_PARTS}
        self.split: dict[str, list[str]] = split
        index: dict[str, dict[str, Any]] = dict(attrs.get("visits", {}))
        # Known by what it is: the fingerprint is recomputed from the index and the split, so a
        # store written before the fingerprint covered the split (or whose split attribute was
        # edited) still gets the identity of what it holds.
        recorded = str(attrs.get("fingerprint", ""))
        self.fingerprint: str = store_fingerprint(index, split) if index else recorded
        if recorded and recorded != self.fingerprint:
            log.warning("%s: recorded fingerprint %s... does not match the index and split "
                        "(%s...; written before the fingerprint covered the split?); using the "
                        "recomputed one", self.location, recorded[:12], self.fingerprint[:12])
        part_of = {p: part for part, patients in split.items() for p in patients}
        self._visits: dict[str, VisitInfo] = {}
        skipped: list[str] = []
        for key in sorted(index):
            entry = index[key]
            if not self._visit_is_complete(key, entry.get("content_sha256")):
                skipped.append(key)
                continue
            self._visits[key] = VisitInfo(
                key=key,
                patient_id=str(entry["patient_id"]),
                eye=str(entry["eye"]),
                day=int(entry["day"]),
                spacing_mm=tuple(float(x) for x in entry["spacing_mm"]),  # type: ignore[arg-type]
                shape=tuple(int(x) for x in entry["shape"]),  # type: ignore[arg-type]
                has=frozenset(entry["has"]),
                split=part_of.get(str(entry["patient_id"]), "unlabelled"),
                content_sha256=str(entry.get("content_sha256", "")),
            )
        if skipped:
            log.warning("%s: %d indexed visit(s) are not complete and are left out: %s",
                        self.location, len(skipped), ", ".join(skipped))
        if self.conversion and not self.conversion.get("complete", True):
            log.warning("%s: the last conversion did not finish (failed: %s); re-run convert",
                        self.location, ", ".join(self.conversion.get("failed", [])) or "?")
        self.patients: list[str] = sorted(attrs.get("patients", []))

    # -- zarr access -------------------------------------------------------------------------
    def _group(self) -> zarr.Group:
        if self._root is None:
            self._root = open_zarr_group(self.location, "r", self.storage_options)
        return self._root

    def _visit_is_complete(self, key: str, content_sha256: str | None) -> bool:
        try:
            group = self._group()[f"visits/{key}"]
        except KeyError:
            return False
        attrs = group.attrs
        if attrs.get("complete") is not True:
            return False
        return content_sha256 is None or attrs.get("content_sha256") == content_sha256

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_root"] = None
        return state

    # -- index -------------------------------------------------------------------------------
    @property
    def visits(self) -> list[VisitInfo]:
        """Every visit of the store, sorted by key."""
        return list(self._visits.values())

    def visit(self, key: str) -> VisitInfo:
        """The :class:`VisitInfo` of one visit; :class:`StoreError` if it is not in the store."""
        try:
            return self._visits[key]
        except KeyError:
            raise StoreError(f"{self.location}: no visit {key!r} in the store") from None

    def visits_for(
        self,
        splits: str | Iterable[str] | None = None,
        require: str | Iterable[str] | None = None,
        patients: Iterable[str] | None = None,
    ) -> list[VisitInfo]:
        """Visits filtered by split part(s), required arrays and patient ids, sorted by key.

        Args:
            splits: part name(s) among ``train``, ``val``, ``test``, ``unlabelled``; None = all.
            require: array name(s) the visit must have (e.g. ``"mask"``, ``("faf",)``); None = any.
            patients: keep only these patient ids; None = all.
        """
        wanted_splits = _as_set(splits)
        if wanted_splits is not None and not wanted_splits <= set(SPLIT_PARTS):
            raise ValueError(f"unknown split part(s) {sorted(wanted_splits - set(SPLIT_PARTS))}; "
                             f"expected some of {SPLIT_PARTS}")
        required = _as_set(require) or frozenset()
        if not required <= set(ARRAY_NAMES):
            raise ValueError(f"unknown array name(s) {sorted(required - set(ARRAY_NAMES))}; "
                             f"expected some of {ARRAY_NAMES}")
        wanted_patients = None if patients is None else frozenset(patients)
        return [
            v for v in self._visits.values()
            if (wanted_splits is None or v.split in wanted_splits)
            and required <= v.has
            and (wanted_patients is None or v.patient_id in wanted_patients)
        ]

    # -- arrays ------------------------------------------------------------------------------
    def array(self, key: str, name: str) -> zarr.Array:
        """The lazy ``zarr.Array`` of one visit (stored dtype, not decoded)."""
        info = self.visit(key)
        if name not in info.has:
            raise StoreError(f"{self.location}: visit {key!r} has no {name!r} array "
                             f"(it has {sorted(info.has)})")
        return self._group()[f"visits/{key}/{name}"]  # type: ignore[return-value]

    def read(self, key: str, name: str, region: tuple[slice, ...] | None = None) -> np.ndarray:
        """Read (part of) one array, decoded.

        Args:
            key: visit key.
            name: ``oct`` -> float32 ``(S, D, W)`` (stored * scale + offset); ``faf``/``slo`` ->
                float32 ``(S, W)`` in ``[0, 1]``; ``mask`` -> uint8 ``(S, W)`` in ``{0, 1}``.
            region: a tuple of slices (or ints) into the array; None = all of it.
        """
        arr = self.array(key, name)
        data = np.asarray(arr[region if region is not None else ...])
        if name == "oct":
            scale = float(arr.attrs.get("scale", 1.0))
            offset = float(arr.attrs.get("offset", 0.0))
            data = data.astype(np.float32, copy=False)
            if scale != 1.0 or offset != 0.0:
                data = data * np.float32(scale) + np.float32(offset)
            return data
        if name in ENFACE_NAMES:
            return data.astype(np.float32) / np.float32(255.0)
        return data.astype(np.uint8, copy=False)

    def __repr__(self) -> str:
        return (f"Store({self.location!r}, visits={len(self._visits)}, "
                f"fingerprint={self.fingerprint[:12]!r})")


def open_store(location: str, storage_options: dict[str, Any] | None = None) -> Store:
    """Open an fpn store for reading.

    Args:
        location: local path or fsspec URL of the store's root group.
        storage_options: fsspec options for URLs (e.g. ``{"anon": False}`` for s3).

    Raises:
        StoreError: no Zarr group there, not an fpn store, or an unknown format version.
    """
    return Store(location, storage_options)
