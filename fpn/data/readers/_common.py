"""Helpers shared by the format readers: extension dispatch and a careful ``.npy`` reader."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


class DataError(ValueError):
    """Bad input data; the message names the file and the cause."""

    def __init__(self, path: str, message: str):
        super().__init__(f"{path}: {message}")
        self.path = str(path)
        self.reason = message


__all__ = ["DataError", "format_of", "read_npy", "require_file"]

# Double extensions first, so that ``scan.nii.gz`` is NIfTI and not "gzip".
_DOUBLE_SUFFIXES = (".nii.gz",)


def format_of(path: str | os.PathLike) -> str:
    """Lower-case extension of ``path`` (``.nii.gz`` counts as one extension).

    Args:
        path: a file path.

    Returns:
        e.g. ``".npy"``, ``".nii.gz"``, ``".tif"``; ``""`` when the name has no extension.
    """
    name = Path(path).name.lower()
    for suffix in _DOUBLE_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return Path(name).suffix


def require_file(path: str | os.PathLike) -> Path:
    """Return ``path`` as a Path, or raise DataError when it is not an existing file."""
    p = Path(path)
    if not p.exists():
        raise DataError(str(path), "file not found")
    if not p.is_file():
        raise DataError(str(path), "not a file")
    return p


def read_npy(path: str | os.PathLike) -> np.ndarray:
    """Read a ``.npy`` array, telling a truncated file apart from an otherwise unreadable one.

    Args:
        path: the ``.npy`` file.

    Returns:
        The array as stored (any dtype except object).

    Raises:
        DataError: file missing, truncated (fewer data bytes than the header promises) or not
            a valid ``.npy`` file.
    """
    p = require_file(path)
    try:
        return np.load(p, allow_pickle=False)
    except Exception as exc:  # numpy raises ValueError/EOFError/OSError depending on the damage
        truncated = _truncation_message(p)
        if truncated:
            raise DataError(str(path), truncated) from exc
        raise DataError(str(path), f"unreadable .npy file ({type(exc).__name__}: {exc})") from exc


def _truncation_message(p: Path) -> str | None:
    """Describe the truncation of a ``.npy`` whose header parses but whose data is short."""
    fmt = np.lib.format
    try:
        with open(p, "rb") as fh:
            version = fmt.read_magic(fh)
            if version == (1, 0):
                shape, _, dtype = fmt.read_array_header_1_0(fh)
            else:
                shape, _, dtype = fmt.read_array_header_2_0(fh)
            data_start = fh.tell()
    except (OSError, ValueError, EOFError):
        return None
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    found = p.stat().st_size - data_start
    if found < expected:
        return (f"truncated .npy file: header says shape {tuple(shape)} {dtype}, "
                f"which needs {expected} data bytes, but the file holds {found}")
    return None
