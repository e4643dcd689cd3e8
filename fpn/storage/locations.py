"""Locations: a local path or an fsspec URL (``s3://...``), read and written alike, and local
files written whole or not at all.

- :func:`absolute_location` / :func:`absolute_tracking_uri`: a relative path means the folder a
  command runs in; Ray workers and Tune trials run in folders of their own, so paths are made
  absolute before they travel.
- :func:`atomic_file`: the one way a local file is written whole or not at all (a temporary
  sibling, then ``os.replace``), whatever writes it (text, ``torch.save``, a CSV writer, PIL).
- ``*_location`` helpers: a run directory's own small files on a path or a URL; on an object
  store one PUT, which the store makes visible whole or not at all. S3-compatible endpoints
  (MinIO, moto) come from ``AWS_ENDPOINT_URL``, which boto3, s3fs and pyarrow all honour.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["absolute_location", "absolute_tracking_uri", "append_location_line", "atomic_file",
           "is_remote", "join_location", "location_exists", "read_location_bytes",
           "read_location_text", "write_atomic", "write_location_bytes", "write_location_text"]

_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:/")  # s3://..., models:/NAME@ALIAS, runs:/...


def absolute_location(location: str) -> str:
    """A local path made absolute, a URL (``s3://``, ``models:/``) as it is: Ray workers and
    Tune trials run in other working directories, where a relative path names something else
    (or nothing)."""
    return location if _URL.match(location) else str(Path(location).expanduser().resolve())


def absolute_tracking_uri(uri: str) -> str:
    """A tracking (or Optuna storage) URI whose sqlite file is named by an absolute path, for
    the same reason: ``sqlite:///mlflow.db`` -> ``sqlite:////ABS/DIR/mlflow.db``; other URIs
    as they are."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        return uri
    path, sep, query = uri[len(prefix):].partition("?")
    if not path or path.startswith("/") or path == ":memory:":
        return uri
    return f"{prefix}{Path(path).expanduser().resolve()}{sep}{query}"


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """A temporary sibling of ``path`` to write; renamed over ``path`` when the block ends
    without an error, removed when it raises: readers see the old file or the whole new one.

    The temporary name keeps the suffix (PIL and numpy choose the format by it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: str | Path, data: str | bytes) -> None:
    """Write a whole local file (text or bytes) through :func:`atomic_file`."""
    with atomic_file(path) as tmp:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data)


def is_remote(location: str) -> bool:
    """True for an fsspec URL other than ``file://`` (``s3://``, ``gs://``, ``memory://``, ...)."""
    return "://" in str(location) and not str(location).startswith("file://")


def _local(location: str) -> Path:
    location = str(location)
    return Path(location.removeprefix("file://"))


def join_location(base: str, *parts: str) -> str:
    """``base/part/...`` for a path or a URL (URLs always join with ``/``)."""
    if is_remote(base):
        return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])
    return str(_local(base).joinpath(*parts))


def _fs(location: str) -> tuple[Any, str]:
    import fsspec

    fs, path = fsspec.core.url_to_fs(location)
    # another process (a Ray worker, a re-run) may have written here since fsspec cached a listing
    fs.invalidate_cache()
    return fs, path


def location_exists(location: str) -> bool:
    """Whether a file exists at a local path or an fsspec URL."""
    if not is_remote(location):
        return _local(location).is_file()
    fs, path = _fs(location)
    return bool(fs.isfile(path))


def read_location_text(location: str) -> str | None:
    """The text of a file at a path or URL, or None when it does not exist."""
    data = read_location_bytes(location)
    return None if data is None else data.decode()


def write_location_bytes(location: str, data: bytes) -> None:
    """Write a whole file: locally through :func:`atomic_file`; on an object store in one PUT,
    which the store makes visible whole or not at all."""
    if not is_remote(location):
        write_atomic(_local(location), data)
        return
    fs, path = _fs(location)
    fs.pipe_file(path, data)


def read_location_bytes(location: str) -> bytes | None:
    """The bytes of a file at a path or URL, or None when it does not exist."""
    if not is_remote(location):
        p = _local(location)
        return p.read_bytes() if p.is_file() else None
    fs, path = _fs(location)
    try:
        return fs.cat_file(path)
    except FileNotFoundError:
        return None


def write_location_text(location: str, text: str) -> None:
    """:func:`write_location_bytes` of UTF-8 text."""
    write_location_bytes(location, text.encode())


def append_location_line(location: str, line: str) -> None:
    """Append one line. Object stores cannot append, so there the file is read and rewritten:
    fine for the single writer (rank 0) of a small log such as ``attempts.jsonl``."""
    line = line.rstrip("\n") + "\n"
    if not is_remote(location):
        p = _local(location)
        p.parent.mkdir(parents=True, exist_ok=True)
        with p.open("a") as fh:
            fh.write(line)
        return
    write_location_text(location, (read_location_text(location) or "") + line)
