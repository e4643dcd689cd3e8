"""A run directory's own files (``fpn_run.json``, ``attempts.jsonl``) on a local path or an
fsspec URL alike. S3-compatible endpoints (MinIO, moto) come from ``AWS_ENDPOINT_URL``, which
boto3, s3fs and pyarrow all honour.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = ["RUN_FILE", "append_location_line", "is_remote", "join_location", "location_exists",
           "read_location_text", "write_location_text"]

RUN_FILE = "fpn_run.json"


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
    if not is_remote(location):
        p = _local(location)
        return p.read_text() if p.is_file() else None
    fs, path = _fs(location)
    try:
        return fs.cat_file(path).decode()
    except FileNotFoundError:
        return None


def write_location_text(location: str, text: str) -> None:
    """Write a whole file: locally to a temporary name then renamed; on an object store in one
    PUT, which the store makes visible whole or not at all."""
    if not is_remote(location):
        p = _local(location)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
        tmp.write_text(text)
        os.replace(tmp, p)
        return
    fs, path = _fs(location)
    fs.pipe_file(path, text.encode())


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
