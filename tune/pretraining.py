"""Self-supervised pretraining per architecture, shared by every trial and ratio of a search.

A trial that draws projection-block knobs fine-tunes the pretrained network *of that
architecture*. Each distinct pretraining (:func:`pretraining_key`: network name and kwargs, SSL
target, store fingerprint and a hash of the pretraining recipe) is trained once, by whichever
trial needs it first, and reused by every later trial and ratio that draws it:

- ``<storage>/pretrain/<key>/pretrained.json``: the finished pretraining's record (its run
  directory, MLflow run, what it is and which trial trained it). Present = done, for good.
- ``<storage>/pretrain/<key>/.lease``: a :class:`fpn.storage.lease.Lease` (owner + heartbeat) held
  while one trial pretrains; every other trial needing that key waits for the record. A holder
  that died (the search was killed) stops refreshing its heartbeat, so after ``ttl_s`` the next
  trial takes the lease over and its pretraining run resumes from its last checkpoint; at once
  when the holder ran on the same machine and its process is gone (a killed search restarted
  where it ran: :meth:`fpn.storage.lease.LeaseOwner.gone`).

The storage is the search's (local disk or ``s3://``), so this works across the nodes of a
cluster and across a restart of the search.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from fpn import tags as T
from fpn.config import TrainConfig
from fpn.storage import join_location, read_location_text, write_location_text

__all__ = [
    "PRETRAIN_DIR",
    "Pretrained",
    "ensure_pretrained",
    "pretraining_config",
    "pretraining_key",
    "read_pretrained",
]

#: sub-folder of the search's storage holding the shared pretrainings (records, leases, runs)
PRETRAIN_DIR = "pretrain"
RECORD_FILE = "pretrained.json"
LEASE_FILE = ".lease"


@dataclass(frozen=True)
class Pretrained:
    """A finished shared pretraining."""

    key: str
    run_dir: str  #: what fine-tuning loads (``init``): a path or a URL
    mlflow_run_id: str
    model: str
    kwargs: dict[str, Any]
    target: str
    store_fingerprint: str
    trained_by: str  #: the run name of the trial that trained it
    reused: bool = False  #: False when the caller trained it just now


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str, separators=(",", ":"))


def pretraining_config(base: TrainConfig, model_kwargs: Mapping[str, Any]) -> TrainConfig:
    """The pretraining's config: ``base`` (the search's pretraining recipe) with the trial's
    architecture, and no ``init``."""
    return base.with_overrides({"model.kwargs": {**base.model.kwargs, **model_kwargs},
                                "init": None})


def pretraining_key(config: TrainConfig, fingerprint: str) -> str:
    """What a pretraining is: the store's fingerprint and the hash of everything in its config
    that changes what it learns (network and kwargs, SSL target, epochs, crops, optimiser,
    seed, ...; :func:`fpn.training.identity.run_identity`, the same hash that identifies a
    run): 16 hex digits."""
    from fpn.training.identity import run_identity

    identity = run_identity(config, fingerprint)
    return hashlib.sha256(_canonical({"store": fingerprint, "config": identity.config_hash})
                          .encode()).hexdigest()[:16]


def _folder(storage: str, key: str) -> str:
    return join_location(storage, PRETRAIN_DIR, key)


def read_pretrained(storage: str, key: str) -> Pretrained | None:
    """The finished pretraining ``key`` in the search's ``storage``, or None."""
    text = read_location_text(join_location(_folder(storage, key), RECORD_FILE))
    if not text:
        return None
    raw = json.loads(text)
    raw.pop("reused", None)
    return Pretrained(**raw)


def _write_record(storage: str, record: Pretrained) -> None:
    raw = asdict(record)
    raw.pop("reused")
    write_location_text(join_location(_folder(storage, record.key), RECORD_FILE),
                        json.dumps(raw, indent=2, sort_keys=True))


def ensure_pretrained(storage: str, config: TrainConfig, fingerprint: str, *, requester: str,
                      train: Callable[[TrainConfig], Any] | None = None,
                      ttl_s: float = 120.0, poll_s: float = 2.0,
                      storage_options: dict[str, Any] | None = None,
                      tags: Mapping[str, str] | None = None,
                      log: Callable[[str], None] = print) -> Pretrained:
    """The pretrained network of ``config``'s architecture: found, waited for, or trained here.

    Args:
        storage: the search's storage (path or URL); records and leases go under
            ``<storage>/pretrain/<key>/``.
        config: the pretraining's config (:func:`pretraining_config`).
        fingerprint: the store's fingerprint.
        requester: who asks (the trial's run name): recorded as ``trained_by`` when it trains.
        train: trains a config and returns its :class:`~fpn.storage.RunRecord` (default:
            :func:`fpn.training.driver.run_training`); it runs under the run name
            ``pretrain-<key>``, stored in ``<storage>/pretrain``.
        ttl_s: the lease's time to live (a holder silent for longer is presumed dead; long
            enough that a starved heartbeat thread on a loaded node is not taken for dead, as
            two trainings of one run would collide; a restarted search waits at most this).
        poll_s: how often a waiting trial looks for the record.
        tags: more MLflow tags of the pretraining run (the default ``train`` only).
    """
    from fpn.storage.lease import Lease, LeaseHeld

    key = pretraining_key(config, fingerprint)
    folder = _folder(storage, key)
    waited = False
    while True:
        done = read_pretrained(storage, key)
        if done is not None:
            if waited:
                log(f"[pretrain] {requester}: pretraining {key} finished by {done.trained_by}; "
                    "reusing it")
            return Pretrained(**{**asdict(done), "reused": done.trained_by != requester})
        lease = Lease(join_location(folder, LEASE_FILE), ttl_s=ttl_s,
                      storage_options=storage_options)
        try:
            lease.acquire()
        except LeaseHeld as held:
            if not waited:
                log(f"[pretrain] {requester}: waiting for pretraining {key} ({held})")
            waited = True
            time.sleep(poll_s)
            continue
        try:
            done = read_pretrained(storage, key)  # finished between our look and the lease
            if done is not None:
                continue
            record = _train(storage, config, key, fingerprint, requester, train, tags or {}, log)
            lease.check()  # never publish a record after losing the lease to a takeover
            _write_record(storage, record)
            return record
        finally:
            lease.release()


def _train(storage: str, config: TrainConfig, key: str, fingerprint: str, requester: str,
           train: Callable[[TrainConfig], Any] | None, tags: Mapping[str, str],
           log: Callable[[str], None]) -> Pretrained:
    config = config.with_overrides({"run_name": f"pretrain-{key}",
                                    "storage": join_location(storage, PRETRAIN_DIR)})
    log(f"[pretrain] {requester}: pretraining {key} ({config.model.name} "
        f"{_canonical(config.model.kwargs)}, target {config.data.target}, "
        f"{config.epochs} epochs)")
    if train is None:
        from fpn.training.driver import run_training

        record = run_training(config, extra_tags={**tags, T.SEARCH_ROLE: T.ROLE_PRETRAIN,
                                                  T.PRETRAINING_KEY: key})
    else:
        record = train(config)
    if not record.best_checkpoints:
        raise RuntimeError(f"pretraining {key} ({record.run_dir}) left no checkpoint")
    return Pretrained(key=key, run_dir=record.run_dir, mlflow_run_id=record.mlflow_run_id,
                      model=config.model.name, kwargs=dict(config.model.kwargs),
                      target=config.data.target, store_fingerprint=fingerprint,
                      trained_by=requester, reused=False)
