"""Inference: the k-best ensemble, where its members come from, and prediction on volumes.

A trained model is one or more *members*: ``model.pt`` files written by the training workers
(``{"format", "model_name", "model_kwargs", "state_dict", "target", "zscore_eps", ...}``, plain
tensors and builtins, loaded with ``weights_only=True``). :func:`resolve_members` finds them from
a checkpoint file or directory, a training run directory (its ``fpn_run.json`` lists the k best),
or a registered MLflow model (``models:/NAME@ALIAS``, whose artifacts hold the same files).

Run directories and checkpoints may live in an object store (``s3://bucket/runs/<run>``, any
fsspec URL): the member files are then downloaded to a temporary folder. The small
``*_location`` helpers read and write a run directory's own files (``fpn_run.json``,
``attempts.jsonl``) on a local path or an fsspec URL alike; S3-compatible endpoints (MinIO, moto)
come from ``AWS_ENDPOINT_URL``, which boto3, s3fs and pyarrow all honour.
"""

from __future__ import annotations

from fpn.inference.ensemble import Ensemble, load_ensemble
from fpn.inference.locations import (
    RUN_FILE,
    append_location_line,
    is_remote,
    join_location,
    location_exists,
    read_location_text,
    write_location_text,
)
from fpn.inference.member import FORMAT, MODEL_FILE, build_member, load_member_file, save_member
from fpn.inference.resolve import load_members, resolve_members

__all__ = [
    "FORMAT",
    "MODEL_FILE",
    "RUN_FILE",
    "Ensemble",
    "append_location_line",
    "build_member",
    "is_remote",
    "join_location",
    "load_ensemble",
    "load_member_file",
    "load_members",
    "location_exists",
    "read_location_text",
    "resolve_members",
    "save_member",
    "write_location_text",
]
