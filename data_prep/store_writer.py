"""Write an fpn store (format version 1, ``docs/store-format.md``): one visit at a time, index last.

The primitives here are what ``convert`` runs inside its Ray tasks:

- :func:`init_store` creates (or checks) the root group before any visit is written;
- :func:`write_visit` writes one visit's arrays, then its attributes, then ``complete: true`` last.
  On a local path it writes into a temporary sibling (``visits/.tmp-<key>-<id>``) and renames it
  into place, so a crash never leaves a half-written group under the visit's own name;
- :func:`existing_visit` tells whether a visit is already stored from identical sources;
- :func:`write_index` writes the root index (``visits``, ``fingerprint``, ``split``) at the end.

Only one writer at a time: ``convert`` holds the writer lease (:func:`lease_location`,
:mod:`fpn.storage.lease`) from before :func:`init_store` until after :func:`remove_unindexed`.

Axis convention: OCT ``(S, D, W)``; en-face images and masks ``(S, W)``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import uuid
import warnings
from dataclasses import dataclass
from typing import Any

import fsspec
import numpy as np
import zarr
from zarr.codecs import BloscCodec, BloscShuffle

from data_prep.sources import DataError, VisitArrays, VisitSource
from fpn.data.store import (
    ARRAY_NAMES,
    FORMAT_VERSION,
    LEASE_NAME,
    SPLIT_PARTS,
    StoreError,
    is_local_location,
    local_path,
    open_zarr_group,
    store_fingerprint,
)

__all__ = [
    "DEFAULT_OCT_CHUNKS",
    "FAULT_ENV",
    "OCT_DTYPES",
    "Encoding",
    "InjectedFault",
    "encode_oct",
    "existing_visit",
    "hash_sources",
    "init_store",
    "lease_location",
    "oct_value_problems",
    "remove_unindexed",
    "store_fingerprint",
    "write_index",
    "write_visit",
]

OCT_DTYPES = ("float16", "float32", "uint8")
# (S, D, W) chunk of the OCT arrays; None = the full extent of that axis. Chosen by
# benchmarks/store_io.py (see benchmarks/README.md): 8 B-scans x full depth x 256 A-scans serves
# random 32 x D x 256 training crops best at both flattened (D=128) and full (D=496) depth, and
# keeps whole-volume reads close to the fastest layout.
DEFAULT_OCT_CHUNKS: tuple[int | None, int | None, int | None] = (8, None, 256)
# Set to a visit key to make writing that visit fail right after its first array (tests of
# interrupted conversions; read by the convert driver and passed into the Ray tasks).
FAULT_ENV = "FPN_CONVERT_FAIL_AFTER_FIRST_ARRAY"
_FLOAT16_MAX = 60000.0  # below float16's 65504 so rounding cannot overflow
# float16's smallest normal number: below it values lose precision (subnormal) and then flush to 0
_FLOAT16_MIN_NORMAL = float(np.finfo(np.float16).tiny)  # 2**-14


class InjectedFault(RuntimeError):
    """Raised by :func:`write_visit` when asked to fail midway (tests only)."""


@dataclass(frozen=True)
class Encoding:
    """How the arrays are stored.

    Attributes:
        oct_dtype: ``float16`` (default), ``float32`` or ``uint8`` (linear quantisation with
            per-visit ``scale``/``offset`` attributes).
        oct_chunks: ``(S, D, W)`` chunk shape of the OCT; None = full extent of that axis.
        clevel: zstd level of the Blosc codec.
    """

    oct_dtype: str = "float16"
    oct_chunks: tuple[int | None, int | None, int | None] = DEFAULT_OCT_CHUNKS
    clevel: int = 5

    def __post_init__(self) -> None:
        if self.oct_dtype not in OCT_DTYPES:
            raise ValueError(f"oct_dtype must be one of {OCT_DTYPES}, got {self.oct_dtype!r}")
        if len(self.oct_chunks) != 3 or any(c is not None and c < 1 for c in self.oct_chunks):
            raise ValueError(f"oct_chunks must be 3 positive ints or None, got {self.oct_chunks}")

    def chunks_for(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The concrete OCT chunk shape for a volume of ``shape`` (clipped to it)."""
        return tuple(max(1, min(n, c or n)) for n, c in zip(shape, self.oct_chunks))

    def as_attrs(self) -> dict[str, Any]:
        return {"oct_dtype": self.oct_dtype, "oct_chunks": list(self.oct_chunks),
                "clevel": self.clevel}


def _blosc(dtype: np.dtype, clevel: int) -> BloscCodec:
    # Bitshuffle groups the slowly varying exponent/high-mantissa bits of floats together, which
    # zstd then compresses well; bytes shuffle is the right choice for uint8 data.
    shuffle = BloscShuffle.bitshuffle if dtype.kind == "f" else BloscShuffle.shuffle
    return BloscCodec(cname="zstd", clevel=clevel, shuffle=shuffle)


def _float16_scale(volume: np.ndarray) -> tuple[float, int]:
    """Power-of-two scale that keeps a volume inside float16's normal range, and how many
    non-zero voxels still fall below it (lost to subnormal precision or to zero) at that scale.

    The scale is 1 when the values fit as they are; otherwise the peak is put just below
    ``_FLOAT16_MAX``, which lifts the small values as far as they can go. Powers of two make the
    rescaling exact: the only error left is float16's own rounding (relative 2**-11).
    """
    if not volume.size:
        return 1.0, 0
    magnitude = np.abs(volume)
    peak = float(magnitude.max())
    if peak == 0.0:
        return 1.0, 0
    smallest = float(np.min(magnitude, where=magnitude > 0, initial=np.inf))
    if peak <= _FLOAT16_MAX and smallest >= _FLOAT16_MIN_NORMAL:
        return 1.0, 0
    scale = float(2.0 ** math.ceil(math.log2(peak / _FLOAT16_MAX)))
    threshold = np.float32(_FLOAT16_MIN_NORMAL * scale)
    lost = int(np.count_nonzero((magnitude < threshold) & (magnitude > 0)))
    return scale, lost


def oct_value_problems(oct_volume: np.ndarray, dtype: str) -> list[str]:
    """What is wrong with an OCT volume's values for storing it as ``dtype`` (empty = fine).

    - all voxels zero: nothing to learn from (an export or a reader went wrong);
    - only the values 0 and 1: a boolean or mask volume given as the OCT;
    - ``float16``: non-zero voxels that would underflow (below float16's smallest normal number
      even after the exact power-of-two rescaling, i.e. values spanning more than float16 holds).
    """
    volume = np.asarray(oct_volume)
    if volume.dtype == np.bool_:
        return [(f"OCT is a boolean volume (dtype bool, shape {volume.shape}): a mask, "
                 "not OCT intensities")]
    if volume.size and not np.any(volume):
        return [f"OCT is all zeros (shape {volume.shape})"]
    if volume.size and np.all((volume == 0) | (volume == 1)):
        return [(f"OCT holds only the values 0 and 1 (shape {volume.shape}): a boolean or mask "
                 "volume, not OCT intensities")]
    if dtype == "float16":
        _, lost = _float16_scale(np.asarray(volume, dtype=np.float32))
        if lost:
            magnitude = np.abs(np.asarray(volume, dtype=np.float32))
            low = float(np.min(magnitude, where=magnitude > 0, initial=np.inf))
            return [(f"{lost} of {volume.size} OCT voxels would underflow float16 even after "
                     f"rescaling (|values| from {low:.3g} to {float(magnitude.max()):.3g} span "
                     "more than float16 holds); convert with --dtype float32")]
    return []


def encode_oct(oct_volume: np.ndarray, dtype: str) -> tuple[np.ndarray, float, float]:
    """Convert a float OCT volume to its storage dtype.

    Args:
        oct_volume: ``(S, D, W)`` float array, finite.
        dtype: ``float16``, ``float32`` or ``uint8``.

    Returns:
        ``(stored, scale, offset)`` with ``decoded = stored * scale + offset``. float16 uses a
        power-of-two ``scale`` only when the values would overflow float16 or fall below its
        smallest normal number (exact rescaling; ``scale`` is recorded per visit).

    Raises:
        ValueError: float16 cannot hold the volume's range (some voxels would underflow).
    """
    volume = np.asarray(oct_volume, dtype=np.float32)
    if dtype == "float32":
        return volume, 1.0, 0.0
    if dtype == "float16":
        scale, lost = _float16_scale(volume)
        if lost:
            raise ValueError(oct_value_problems(volume, "float16")[0])
        return (volume / np.float32(scale)).astype(np.float16), scale, 0.0
    if dtype == "uint8":
        low, high = (float(volume.min()), float(volume.max())) if volume.size else (0.0, 0.0)
        scale = (high - low) / 255.0 if high > low else 1.0
        stored = np.clip(np.rint((volume - np.float32(low)) / np.float32(scale)), 0, 255)
        return stored.astype(np.uint8), scale, low
    raise ValueError(f"unknown OCT storage dtype {dtype!r}; expected one of {OCT_DTYPES}")


def _sha256_file(path: str) -> str:
    with fsspec.open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def hash_sources(source: VisitSource) -> tuple[dict[str, dict[str, str]], str]:
    """Hash a visit's source files.

    Returns:
        ``(sources, source_sha256)``: ``{role: {"path", "sha256"}}`` for each file, and the sha256
        over the sorted role/sha pairs plus any spacing the source states outside a file.
    """
    sources = {role: {"path": str(path), "sha256": _sha256_file(path)}
               for role, path in sorted(source.paths().items())}
    digest = hashlib.sha256()
    for role, entry in sources.items():
        digest.update(f"{role}:{entry['sha256']}\n".encode())
    if source.spacing_mm is not None:
        digest.update(f"spacing_mm:{list(map(float, source.spacing_mm))}\n".encode())
    return sources, digest.hexdigest()


def _content_sha256(stored: dict[str, np.ndarray], oct_scale: float, oct_offset: float) -> str:
    digest = hashlib.sha256()
    for name in sorted(stored):
        arr = np.ascontiguousarray(stored[name])
        digest.update(f"{name}:{arr.dtype.str}:{list(arr.shape)}\n".encode())
        digest.update(arr.tobytes())
    digest.update(f"oct_scale:{oct_scale!r}:oct_offset:{oct_offset!r}\n".encode())
    return digest.hexdigest()


def _ome_metadata(key: str, spacing_mm: tuple[float, float, float]) -> dict[str, Any]:
    """OME-Zarr 0.5 ``ome`` attribute describing the ``oct`` array as a single-scale image."""
    axes = [{"name": axis, "type": "space", "unit": "millimeter"} for axis in ("s", "d", "w")]
    return {
        "version": "0.5",
        "multiscales": [{
            "name": key,
            "axes": axes,
            "datasets": [{
                "path": "oct",
                "coordinateTransformations": [{"type": "scale", "scale": list(spacing_mm)}],
            }],
        }],
    }


def _enface_to_uint8(image: np.ndarray) -> np.ndarray:
    """``(S, W)`` float in [0, 1] (or already uint8) -> uint8 0..255."""
    if image.dtype == np.uint8:
        return image
    return np.clip(np.rint(np.asarray(image, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)


def lease_location(location: str) -> str:
    """Where the writer lease of the store at ``location`` lives (inside the store)."""
    return f"{str(location).rstrip('/')}/{LEASE_NAME}"


def _check_arrays(key: str, arrays: VisitArrays, origin: str, oct_dtype: str) -> None:
    if arrays.oct.ndim != 3:
        raise DataError(origin, f"visit {key}: OCT must be (S, D, W), got shape {arrays.oct.shape}")
    if not np.all(np.isfinite(arrays.oct)):
        raise DataError(origin, f"visit {key}: OCT contains NaN or infinite values")
    s, _, w = arrays.oct.shape
    for name in ("faf", "slo", "mask"):
        image = getattr(arrays, name)
        if image is not None and image.shape != (s, w):
            raise DataError(origin, f"visit {key}: {name} shape {image.shape} does not match the "
                                    f"OCT en-face grid {(s, w)}")
    if len(arrays.spacing_mm) != 3 or not all(float(x) > 0 for x in arrays.spacing_mm):
        raise DataError(origin, f"visit {key}: spacing must be 3 positive numbers, "
                                f"got {arrays.spacing_mm}")
    for problem in oct_value_problems(arrays.oct, oct_dtype):
        raise DataError(origin, f"visit {key}: {problem}")


def init_store(location: str, storage_options: dict[str, Any] | None = None) -> None:
    """Create the root group (``fpn_store_version``, empty index) and ``visits`` group if new.

    Raises:
        StoreError: the location holds something that is not an fpn store, or another version.
    """
    if is_local_location(location) and os.path.exists(location):
        if not os.path.isdir(location):
            raise StoreError(f"{location}: exists and is not a directory")
        content = set(os.listdir(location)) - {LEASE_NAME}
        if content and not os.path.exists(os.path.join(location, "zarr.json")):
            raise StoreError(f"{location}: exists, is not empty and is not a Zarr store; "
                             "refusing to write into it")
    root = open_zarr_group(location, "a", storage_options)
    version = root.attrs.get("fpn_store_version")
    if version is None:
        with warnings.catch_warnings():
            # the writer lease sits in the root and is not a Zarr node; zarr says so, harmlessly
            warnings.filterwarnings("ignore", message=f"Object at {LEASE_NAME} ")
            members = list(root.keys())
        if members or root.attrs.get("visits") is not None:
            raise StoreError(f"{location}: a Zarr group that is not an fpn store; "
                             "refusing to write into it")
        root.attrs.update({"fpn_store_version": FORMAT_VERSION, "visits": {},
                           "conversion": {"complete": False, "failed": []}})
    elif version != FORMAT_VERSION:
        raise StoreError(f"{location}: store format version {version}, this writer writes "
                         f"{FORMAT_VERSION}")
    if "visits" not in root:
        root.create_group("visits")


def existing_visit(
    location: str,
    key: str,
    source_sha256: str,
    encoding: Encoding,
    storage_options: dict[str, Any] | None = None,
) -> dict[str, Any] | None:
    """The index entry of a visit already stored complete from identical sources and encoding.

    Returns None when the visit is absent, half-written, or from other sources/settings.
    """
    try:
        group = open_zarr_group(location, "r", storage_options)[f"visits/{key}"]
    except (KeyError, FileNotFoundError):
        return None
    attrs = dict(group.attrs)
    if (attrs.get("complete") is not True or attrs.get("source_sha256") != source_sha256
            or attrs.get("encoding") != encoding.as_attrs()):
        return None
    return _index_entry(attrs, group)


def _index_entry(attrs: dict[str, Any], group: zarr.Group) -> dict[str, Any]:
    oct_array = group["oct"]
    return {
        "patient_id": attrs["patient_id"],
        "eye": attrs["eye"],
        "day": int(attrs["day"]),
        "shape": list(oct_array.shape),
        "spacing_mm": list(attrs["spacing_mm"]),
        "has": sorted(name for name in ARRAY_NAMES if name in group),
        "content_sha256": attrs["content_sha256"],
    }


def write_visit(
    location: str,
    key: str,
    arrays: VisitArrays,
    *,
    patient_id: str,
    eye: str,
    day: int,
    sources: dict[str, dict[str, str]] | None = None,
    source_sha256: str = "",
    encoding: Encoding | None = None,
    storage_options: dict[str, Any] | None = None,
    fail_after_first_array: bool = False,
) -> dict[str, Any]:
    """Write one visit group: arrays, then attributes, then ``complete: true`` last.

    Args:
        location: store root (local path or fsspec URL); :func:`init_store` must have run.
        key: visit key (``data_prep.sources.visit_key``).
        arrays: OCT ``(S, D, W)`` float, optional FAF/SLO ``(S, W)`` in [0, 1] (or uint8) and mask
            ``(S, W)`` in {0, 1}, spacing ``(s, d, w)`` mm.
        patient_id, eye, day: identify the visit.
        sources: ``{role: {"path", "sha256"}}`` of the source files (from :func:`hash_sources`).
        source_sha256: the idempotency key of the sources.
        encoding: storage dtype, chunking and compression level (default: ``Encoding()``).
        storage_options: fsspec options for URL locations.
        fail_after_first_array: raise :class:`InjectedFault` after writing the OCT (tests).

    Returns:
        The visit's index entry (``patient_id, eye, day, shape, spacing_mm, has, content_sha256``).

    Raises:
        DataError: the arrays are inconsistent (shape, NaN, spacing); nothing is left behind.
    """
    encoding = encoding or Encoding()
    origin = (sources or {}).get("oct", {}).get("path", key)
    _check_arrays(key, arrays, origin, encoding.oct_dtype)
    stored_oct, scale, offset = encode_oct(arrays.oct, encoding.oct_dtype)
    stored: dict[str, np.ndarray] = {"oct": stored_oct}
    for name in ("faf", "slo"):
        image = getattr(arrays, name)
        if image is not None:
            stored[name] = _enface_to_uint8(image)
    if arrays.mask is not None:
        stored["mask"] = (np.asarray(arrays.mask) > 0).astype(np.uint8)
    spacing = [float(x) for x in arrays.spacing_mm]
    attrs: dict[str, Any] = {
        "patient_id": str(patient_id),
        "eye": str(eye),
        "day": int(day),
        "spacing_mm": spacing,
        "sources": sources or {},
        "source_sha256": source_sha256,
        "content_sha256": _content_sha256(stored, scale, offset),
        "encoding": encoding.as_attrs(),
        "ome": _ome_metadata(key, tuple(spacing)),  # type: ignore[arg-type]
    }

    if is_local_location(location) or location.startswith("file://"):
        visits_dir = os.path.join(local_path(location), "visits")
        final = os.path.join(visits_dir, key)
        staging = os.path.join(visits_dir, f".tmp-{key}-{uuid.uuid4().hex[:8]}")
        try:
            _write_group(staging, key, stored, attrs, scale, offset, encoding, None,
                         fail_after_first_array)
        except BaseException:
            if not fail_after_first_array:  # an injected fault leaves the debris on purpose
                shutil.rmtree(staging, ignore_errors=True)
            raise
        _swap_into_place(staging, final, key)
        group = zarr.open_group(final, mode="r", zarr_format=3)
    else:
        target = f"{location.rstrip('/')}/visits/{key}"
        _write_group(target, key, stored, attrs, scale, offset, encoding, storage_options,
                     fail_after_first_array)
        group = open_zarr_group(target, "r", storage_options)
    return _index_entry(dict(group.attrs), group)


def _write_group(
    target: str,
    key: str,
    stored: dict[str, np.ndarray],
    attrs: dict[str, Any],
    scale: float,
    offset: float,
    encoding: Encoding,
    storage_options: dict[str, Any] | None,
    fail_after_first_array: bool,
) -> None:
    # mode="w" removes whatever an earlier, interrupted run left at this name.
    group = open_zarr_group(target, "w", storage_options)
    for name in ("oct", "faf", "slo", "mask"):
        if name not in stored:
            continue
        data = stored[name]
        chunks = encoding.chunks_for(data.shape) if name == "oct" else data.shape
        array = group.create_array(
            name, shape=data.shape, dtype=data.dtype, chunks=chunks,
            compressors=[_blosc(data.dtype, encoding.clevel)], fill_value=0,
            dimension_names=("s", "d", "w") if data.ndim == 3 else ("s", "w"),
            attributes={"scale": scale, "offset": offset} if name == "oct" else {},
        )
        array[...] = data
        if name == "oct" and fail_after_first_array:
            raise InjectedFault(f"visit {key}: injected failure after writing the OCT array")
    group.attrs.update(attrs)
    # Written last, on its own: a group without it is half-written and never read.
    group.attrs["complete"] = True


def _swap_into_place(staging: str, final: str, key: str) -> None:
    if os.path.exists(final):
        retired = os.path.join(os.path.dirname(final), f".old-{key}-{uuid.uuid4().hex[:8]}")
        os.rename(final, retired)
        os.rename(staging, final)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.rename(staging, final)


def write_index(
    location: str,
    index: dict[str, dict[str, Any]],
    split: dict[str, list[str]],
    split_source: str,
    encoding: Encoding,
    *,
    failed: list[str] | None = None,
    source: dict[str, str] | None = None,
    storage_options: dict[str, Any] | None = None,
) -> str:
    """Write the root attributes that make visits part of the store; returns the fingerprint.

    The fingerprint covers the visits' content and the split (:func:`store_fingerprint`).
    ``source`` (``{"location", "layout"}``) records where the visits came from.
    On a local path the root ``zarr.json`` is replaced atomically (temporary file + rename).
    """
    for part in split:
        if part not in SPLIT_PARTS:
            raise ValueError(f"unknown split part {part!r}")
    full_split = {part: sorted(split.get(part, [])) for part in SPLIT_PARTS}
    fingerprint = store_fingerprint(index, full_split)
    patients = sorted({entry["patient_id"] for entry in index.values()})
    new_attrs = {
        "fpn_store_version": FORMAT_VERSION,
        "fingerprint": fingerprint,
        "patients": patients,
        "split": full_split,
        "split_source": split_source,
        "visits": {key: index[key] for key in sorted(index)},
        "oct_dtype": encoding.oct_dtype,
        "conversion": {"complete": not failed, "failed": sorted(failed or [])},
    }
    if source is not None:
        new_attrs["source"] = dict(source)
    if is_local_location(location) or location.startswith("file://"):
        meta_path = os.path.join(local_path(location), "zarr.json")
        with open(meta_path, encoding="utf-8") as handle:
            meta = json.load(handle)
        meta.setdefault("attributes", {}).update(new_attrs)
        staging = f"{meta_path}.tmp-{uuid.uuid4().hex[:8]}"
        with open(staging, "w", encoding="utf-8") as handle:
            json.dump(meta, handle, indent=2)
        os.replace(staging, meta_path)
    else:
        open_zarr_group(location, "r+", storage_options).attrs.update(new_attrs)
    return fingerprint


def remove_unindexed(
    location: str, keep: set[str], storage_options: dict[str, Any] | None = None
) -> list[str]:
    """Delete visit groups and staging debris that are not in ``keep``; returns what was removed.

    Run after :func:`write_index`, so that no indexed visit is ever removed.
    """
    if is_local_location(location) or location.startswith("file://"):
        visits_dir = os.path.join(local_path(location), "visits")
        removed = []
        for name in sorted(os.listdir(visits_dir)) if os.path.isdir(visits_dir) else []:
            path = os.path.join(visits_dir, name)
            if name not in keep and os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(name)
        return removed
    fs, root_path = fsspec.core.url_to_fs(location, **(storage_options or {}))
    visits_dir = f"{root_path.rstrip('/')}/visits"
    removed = []
    for entry in fs.ls(visits_dir, detail=True):
        name = entry["name"].rstrip("/").rsplit("/", 1)[-1]
        if entry["type"] == "directory" and name not in keep:
            fs.rm(entry["name"], recursive=True)
            removed.append(name)
    return removed
