"""A run's record, ``fpn_run.json``: the one description of a training run, at a path or a URL.

The training driver writes it when a run starts (``finished: false``, its identity:
``store_fingerprint`` and ``config_hash``, and the resolved config) and again when it finishes
(the k best checkpoints, their scores, the last metrics, ``finished: true``), and returns the
same :class:`RunRecord`. Everything that asks "is this run finished, and where are its best
checkpoints?" reads it here, through fsspec, so that a local run directory and one on an object
store (``s3://...``) are read the same way.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from fpn.storage.locations import join_location, read_location_text, write_location_text

__all__ = ["RUN_FILE", "RunRecord", "finished_run", "read_run_record", "write_run_record"]

RUN_FILE = "fpn_run.json"


@dataclass(frozen=True)
class RunRecord:
    """The content of ``fpn_run.json``: where a run lives, what it is and what it left."""

    run_name: str
    run_dir: str
    mlflow_run_id: str = ""
    best_checkpoints: list[str] = field(default_factory=list)  #: locations, best first
    best_scores: list[float] = field(default_factory=list)
    score_name: str = ""
    last_metrics: dict[str, float] = field(default_factory=dict)
    train_patients: list[str] = field(default_factory=list)
    model_uri: str | None = None
    finished: bool = False
    config: dict[str, Any] = field(default_factory=dict)
    #: the run's identity (see fpn.training.identity); empty in records older than it
    store_fingerprint: str = ""
    config_hash: str = ""

    @property
    def best_score(self) -> float:
        return max(self.best_scores) if self.best_scores else float("nan")

    @property
    def usable(self) -> bool:
        """Finished with at least one checkpoint: something to evaluate and register."""
        return self.finished and bool(self.best_checkpoints)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, where: str) -> RunRecord:
        try:
            raw = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"{where}: not a run record: {exc}") from exc
        if not isinstance(raw, dict) or "run_name" not in raw or "run_dir" not in raw:
            raise ValueError(f"{where}: not a run record (no run_name / run_dir)")
        return cls(**{k: raw[k] for k in cls.__dataclass_fields__ if k in raw})


def write_run_record(record: RunRecord) -> None:
    """Write ``record`` to its run directory's ``fpn_run.json``, whole or not at all."""
    write_location_text(join_location(record.run_dir, RUN_FILE), record.to_json())


def read_run_record(run_dir: str) -> RunRecord | None:
    """The record of the run in ``run_dir`` (a path or URL); None when it has none yet.

    Raises:
        ValueError: the file exists but is not a run record (the message names it).
    """
    location = join_location(run_dir, RUN_FILE)
    text = read_location_text(location)
    return None if text is None else RunRecord.from_json(text, location)


def finished_run(storage: str, run_name: str, *, store_fingerprint: str | None = None,
                 config_hash: str | None = None) -> RunRecord | None:
    """The record of run ``run_name`` under ``storage`` when it finished; else None (also for a
    record that cannot be read: the run is then trained again, which rewrites it).

    With ``store_fingerprint`` / ``config_hash`` (see :func:`fpn.training.identity.run_identity`)
    a record of another store or config is not this run's: None (``run_training`` then refuses
    the name, naming both).
    """
    try:
        record = read_run_record(join_location(storage, run_name))
    except ValueError:
        return None
    if record is None or not record.finished:
        return None
    if store_fingerprint is not None and record.store_fingerprint != store_fingerprint:
        return None
    if config_hash is not None and record.config_hash != config_hash:
        return None
    return record
