"""Where a run's files live, and how they are written: one home for training and inference.

- :mod:`fpn.storage.locations`: local paths and fsspec URLs (``s3://...``) read and written
  alike; relative paths made absolute; local files written whole or not at all (:func:`atomic_file`).
- :mod:`fpn.storage.lease`: one holder at a time (owner + heartbeat) on local disk or S3.
- :mod:`fpn.storage.run_record`: ``fpn_run.json``, the one :class:`RunRecord` the training
  driver writes and every reader (the search, the paper table, inference) uses.
- :mod:`fpn.storage.member`: the checkpoint member format (``model.pt``) training writes and
  inference loads; :mod:`fpn.storage.resolve` finds a model's members (a checkpoint, a run
  directory, ``models:/NAME@ALIAS``).

Both :mod:`fpn.training` and :mod:`fpn.inference` import this package; neither imports the other.
"""

from __future__ import annotations

from fpn.storage.locations import (
    absolute_location,
    absolute_tracking_uri,
    append_location_line,
    atomic_file,
    is_remote,
    join_location,
    location_exists,
    read_location_bytes,
    read_location_text,
    write_atomic,
    write_location_bytes,
    write_location_text,
)
from fpn.storage.member import FORMAT, MODEL_FILE, build_member, load_member_file, save_member
from fpn.storage.resolve import load_members, resolve_members
from fpn.storage.run_record import (
    RUN_FILE,
    RunRecord,
    finished_run,
    read_run_record,
    write_run_record,
)

__all__ = [
    "FORMAT",
    "MODEL_FILE",
    "RUN_FILE",
    "RunRecord",
    "absolute_location",
    "absolute_tracking_uri",
    "append_location_line",
    "atomic_file",
    "build_member",
    "finished_run",
    "is_remote",
    "join_location",
    "load_member_file",
    "load_members",
    "location_exists",
    "read_location_bytes",
    "read_location_text",
    "read_run_record",
    "resolve_members",
    "save_member",
    "write_atomic",
    "write_location_bytes",
    "write_location_text",
    "write_run_record",
]
