"""Self-supervised pretraining per architecture, shared by every trial and ratio of a search.

A trial that draws projection-block knobs fine-tunes the pretrained network *of that
architecture*. Each distinct pretraining (:func:`pretraining_key`: network name and kwargs, SSL
target, store fingerprint and a hash of the pretraining recipe) is trained once, by whichever
trial needs it first, and reused by every later trial and ratio that draws it:

- ``<storage>/pretrain/<key>/pretrained.json``: the finished pretraining's record (its run
  directory, MLflow run, what it is and which trial trained it). Present = done, for good.
- ``<storage>/pretrain/<key>/.lease``: a :class:`fpn.data.lease.Lease` (owner + heartbeat) held
  while one trial pretrains; every other trial needing that key waits for the record. A holder
  that died (the search was killed) stops refreshing its heartbeat, so after ``ttl_s`` the next
  trial takes the lease over and its pretraining run resumes from its last checkpoint; at once
  when the holder ran on the same machine and its process is gone (a killed search restarted
  where it ran: :meth:`fpn.data.lease.LeaseOwner.gone`).

The storage is the search's (local disk or ``s3://``), so this works across the nodes of a
cluster and across a restart of the search.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from fpn.inference import join_location, read_location_text

__all__ = [
    "PRETRAIN_DIR",
    "Pretrained",
    "ensure_pretrained",
    "pretraining_key",
    "pretraining_tree",
    "read_pretrained",
]

#: sub-folder of the search's storage holding the shared pretrainings (records, leases, runs)
PRETRAIN_DIR = "pretrain"
RECORD_FILE = "pretrained.json"
LEASE_FILE = ".lease"
#: MLflow tag of a pretraining run (and of the trials that fine-tune it): its key
PRETRAINING_KEY_TAG = "fpn.pretraining_key"
#: TrainConfig keys that say where and on what a run executes, not what it learns
_NOT_RECIPE = ("run_name", "storage", "mlflow", "experiment", "cpus_per_worker",
               "threads_per_worker", "gpus_per_worker", "init")


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


def pretraining_tree(base: dict[str, Any], model_kwargs: dict[str, Any]) -> dict[str, Any]:
    """The pretraining's TrainConfig tree: ``base`` (the search's pretraining recipe) with the
    trial's architecture."""
    tree = copy.deepcopy(base)
    tree.setdefault("model", {})["kwargs"] = {**tree["model"].get("kwargs", {}), **model_kwargs}
    tree.pop("init", None)
    return tree


def pretraining_key(tree: dict[str, Any], fingerprint: str) -> str:
    """What a pretraining is: network name + kwargs, SSL target, store fingerprint and the hash
    of the rest of its recipe (epochs, crops, optimiser, seed, ...): 16 hex digits."""
    recipe = {k: v for k, v in tree.items() if k not in _NOT_RECIPE}
    data = {k: v for k, v in recipe.get("data", {}).items()
            if k not in ("store", "storage_options", "loader_workers")}
    what = {"model": tree["model"]["name"], "kwargs": tree["model"].get("kwargs", {}),
            "target": data.get("target"), "store": fingerprint,
            "recipe": hashlib.sha256(_canonical({**recipe, "data": data}).encode()).hexdigest()}
    return hashlib.sha256(_canonical(what).encode()).hexdigest()[:16]


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
    from fpn.inference.locations import write_location_text

    raw = asdict(record)
    raw.pop("reused")
    write_location_text(join_location(_folder(storage, record.key), RECORD_FILE),
                        json.dumps(raw, indent=2, sort_keys=True))


def ensure_pretrained(storage: str, tree: dict[str, Any], fingerprint: str, *, requester: str,
                      train: Callable[[dict[str, Any]], Any] | None = None,
                      ttl_s: float = 120.0, poll_s: float = 2.0,
                      storage_options: dict[str, Any] | None = None,
                      tags: dict[str, str] | None = None,
                      log: Callable[[str], None] = print) -> Pretrained:
    """The pretrained network of ``tree``'s architecture: found, waited for, or trained here.

    Args:
        storage: the search's storage (path or URL); records and leases go under
            ``<storage>/pretrain/<key>/``.
        tree: the pretraining's TrainConfig tree (:func:`pretraining_tree`).
        fingerprint: the store's fingerprint.
        requester: who asks (the trial's run name): recorded as ``trained_by`` when it trains.
        train: trains a TrainConfig tree and returns a :class:`~fpn.training.driver.TrainingOutcome`
            (default: :func:`fpn.training.driver.run_training` under the run name
            ``pretrain-<key>``, stored in ``<storage>/pretrain``).
        ttl_s: the lease's time to live (a holder silent for longer is presumed dead; long
            enough that a starved heartbeat thread on a loaded node is not taken for dead, as
            two trainings of one run would collide; a restarted search waits at most this).
        poll_s: how often a waiting trial looks for the record.
        tags: more MLflow tags of the pretraining run (the default ``train`` only).
    """
    from fpn.data.lease import Lease, LeaseHeld

    key = pretraining_key(tree, fingerprint)
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
            record = _train(storage, tree, key, fingerprint, requester, train, tags or {}, log)
            lease.check()  # never publish a record after losing the lease to a takeover
            _write_record(storage, record)
            return record
        finally:
            lease.release()


def _train(storage: str, tree: dict[str, Any], key: str, fingerprint: str, requester: str,
           train: Callable[[dict[str, Any]], Any] | None, tags: dict[str, str],
           log: Callable[[str], None]) -> Pretrained:
    tree = copy.deepcopy(tree)
    tree["run_name"] = f"pretrain-{key}"
    tree["storage"] = join_location(storage, PRETRAIN_DIR)
    log(f"[pretrain] {requester}: pretraining {key} ({tree['model']['name']} "
        f"{_canonical(tree['model'].get('kwargs', {}))}, target {tree['data']['target']}, "
        f"{tree.get('epochs')} epochs)")
    if train is None:
        from fpn import tags as T
        from fpn.config import TrainConfig
        from fpn.training.driver import run_training

        outcome = run_training(TrainConfig.model_validate(tree),
                               extra_tags={**tags, T.SEARCH_ROLE: T.ROLE_PRETRAIN,
                                           PRETRAINING_KEY_TAG: key})
    else:
        outcome = train(tree)
    if not outcome.best_checkpoints:
        raise RuntimeError(f"pretraining {key} ({outcome.run_dir}) left no checkpoint")
    return Pretrained(key=key, run_dir=outcome.run_dir, mlflow_run_id=outcome.mlflow_run_id,
                      model=tree["model"]["name"], kwargs=tree["model"].get("kwargs", {}),
                      target=tree["data"]["target"], store_fingerprint=fingerprint,
                      trained_by=requester, reused=False)
