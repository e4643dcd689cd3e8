"""What a training run *is*: its store (by fingerprint) and its training-relevant config (by hash).

A run directory is found again by its name, but it is reused only when it is the same run: the
same store fingerprint and the same config hash. :func:`run_identity` computes both;
:func:`check_reuse` compares them with what a run directory recorded in its ``fpn_run.json``.

On a mismatch: a name the user chose (``--run-name`` / ``run_name``) is refused with a
:class:`RunIdentityError` naming both fingerprints and the differing config fields (the CLI exits
2); a derived name (no ``run_name`` given) moves to ``<name>-<identity[:8]>``, so that the same
command on another store trains a new run instead of returning the first store's result.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from fpn.config import TrainConfig
from fpn.storage.run_record import RunRecord

__all__ = ["NOT_TRAINING_RELEVANT", "RunIdentity", "RunIdentityError", "check_reuse",
           "config_differences", "run_identity", "training_relevant", "validate_run_name"]

#: TrainConfig fields that do not change what a run learns: where it runs and is tracked, how
#: many workers (DDP is synchronous), how it is logged, drills, and where the store is (the
#: store is known by its fingerprint, not its path).
NOT_TRAINING_RELEVANT = frozenset({
    "run_name", "workers", "workers_min", "gpus_per_worker", "cpus_per_worker",
    "threads_per_worker", "max_failures", "storage", "mlflow", "experiment", "overlay_every",
    "log_model", "tags", "fail_at_epoch", "fail_at_step", "compile", "compile_backend",
    "checkpoint_every_steps", "spot_notice_url",
    "data.store", "data.storage_options", "data.loader_workers",
})

# Characters that are safe in an MLflow filter string, a Ray run name and a path segment.
_RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=@,-]{0,199}")


class RunIdentityError(ValueError):
    """A run name is taken by a different run (other store or config); bad input for the CLI."""


@dataclass(frozen=True)
class RunIdentity:
    store_fingerprint: str
    config_hash: str

    @property
    def key(self) -> str:
        """One hash of both: the MLflow tag ``fpn.run_identity`` and the derived-name suffix."""
        return hashlib.sha256(f"{self.store_fingerprint}:{self.config_hash}".encode()).hexdigest()


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict) and tree:
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: tree}


def training_relevant(config: dict[str, Any]) -> dict[str, Any]:
    """A config dump (``model_dump(mode="json")``) flattened to dotted keys, without
    :data:`NOT_TRAINING_RELEVANT` ones; ``model.kwargs`` stays one value (its keys vary)."""
    flat: dict[str, Any] = {}
    for k, v in config.items():
        if k == "model" and isinstance(v, dict):
            flat["model.name"] = v.get("name")
            flat["model.kwargs"] = v.get("kwargs") or {}
        else:
            flat.update(_flat(v, k))
    return {k: v for k, v in flat.items() if k not in NOT_TRAINING_RELEVANT}


def run_identity(cfg: TrainConfig, store_fingerprint: str) -> RunIdentity:
    relevant = training_relevant(cfg.model_dump(mode="json"))
    text = json.dumps(relevant, sort_keys=True, separators=(",", ":"), default=str)
    return RunIdentity(store_fingerprint, hashlib.sha256(text.encode()).hexdigest())


def config_differences(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``key: recorded -> current`` for every training-relevant field that differs."""
    a, b = training_relevant(recorded), training_relevant(current)
    return [f"{k}: {a.get(k, '<unset>')!r} -> {b.get(k, '<unset>')!r}"
            for k in sorted(set(a) | set(b)) if a.get(k, "<unset>") != b.get(k, "<unset>")]


def validate_run_name(name: str) -> str:
    """The name, or a one-line ``ValueError``: it becomes a path segment, a Ray run name and a
    value inside MLflow filter strings, so quotes, slashes, spaces and the like are refused."""
    if not _RUN_NAME.fullmatch(name):
        raise ValueError(
            f"invalid run name {name!r}: use letters, digits and . _ + = @ , - (at most 200, "
            "starting with a letter or digit); no quotes, slashes or spaces")
    return name


def check_reuse(record: RunRecord | None, identity: RunIdentity, cfg: TrainConfig,
                run_dir: str) -> bool:
    """Whether ``run_dir``'s record (its ``fpn_run.json``, finished or not) belongs to
    this run. True: same store and config (reuse or resume); False: no record (a new run).

    Raises:
        RunIdentityError: the record is another run's; names both fingerprints and the fields.
    """
    if record is None:
        return False
    rec_fp, rec_hash = record.store_fingerprint, record.config_hash
    if rec_fp == identity.store_fingerprint and rec_hash == identity.config_hash:
        return True
    problems = []
    if rec_fp != identity.store_fingerprint:
        problems.append(f"store fingerprint {rec_fp[:12] or '<not recorded>'} (recorded) vs "
                        f"{identity.store_fingerprint[:12]} ({cfg.data.store})")
    if rec_hash != identity.config_hash:
        diffs = config_differences(record.config, cfg.model_dump(mode="json"))
        problems.append("config differs: " + ("; ".join(diffs[:8]) if diffs else
                                              "<no config hash recorded>")
                        + (f"; ... ({len(diffs)} fields)" if len(diffs) > 8 else ""))
    state = "finished" if record.finished else "unfinished"
    raise RunIdentityError(
        f"{run_dir}: run name {record.run_name!r} belongs to another {state} run: "
        + "; ".join(problems) + ". Choose another --run-name (or remove that run directory)")
