"""Checks that run before Ray or MLflow start: a bad run fails in one line, leaving nothing behind.

:func:`preflight` is the driver's first step (``run_training`` calls it, so the CLI and a Tune
trial both get it): the model name is registered and accepts its arguments; every visit the run
reads is deep enough for the model; ``--init`` exists, is an fpn member and fits the config's
architecture (naming both); the run name is safe as a path, a Ray name and inside MLflow filter
strings; and the run directory, if it holds a record, belongs to this very run (store fingerprint
and config hash, see :mod:`fpn.training.identity`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fpn.config import TrainConfig
from fpn.data.splits import plan_visits
from fpn.data.store import open_store
from fpn.storage import RunRecord, join_location, load_members, read_run_record
from fpn.training.identity import (
    RunIdentity,
    RunIdentityError,
    check_reuse,
    run_identity,
    validate_run_name,
)

__all__ = ["Preflight", "check_init", "check_model_and_depth", "preflight"]


@dataclass
class Preflight:
    """What the checks found: the store and plan, the run's name, directory and identity, its
    record (None for a new run) and the ``--init`` member payload (None without ``--init``)."""

    store: Any
    plan: Any
    name: str
    run_dir: str
    identity: RunIdentity
    record: RunRecord | None
    init_payload: dict[str, Any] | None

    @property
    def finished(self) -> bool:
        return bool(self.record and self.record.finished)


def _kwargs(cfg: TrainConfig) -> dict[str, Any]:
    return {"in_channels": 1, "out_channels": 1, **cfg.model.kwargs}


def check_model_and_depth(cfg: TrainConfig, store: Any, keys: list[str]) -> Any:
    """Build the config's model (name registered, arguments accepted) and check every visit's
    depth against its ``min_depth``/``max_depth``; returns the model."""
    from fpn.models import create_model, list_models

    if cfg.model.name not in list_models():
        raise ValueError(f"unknown model {cfg.model.name!r}; available: {', '.join(list_models())}")
    try:
        model = create_model(cfg.model.name, **_kwargs(cfg))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"model {cfg.model.name!r} with {cfg.model.kwargs}: {exc}") from exc
    lo, hi = int(getattr(model, "min_depth", 1)), getattr(model, "max_depth", None)
    for key in keys:
        depth = store.visit(key).shape[1]
        if depth < lo or (hi is not None and depth > hi):
            bound = f">= {lo}" + (f" and <= {hi}" if hi is not None else "")
            raise ValueError(f"{cfg.data.store}: visit {key} has depth {depth}; model "
                             f"{cfg.model.name!r} ({cfg.model.kwargs}) needs depth {bound}")
    return model


def check_init(cfg: TrainConfig, model: Any, tracking_uri: str | None) -> dict[str, Any] | None:
    """The ``--init`` member payload, checked against the config's architecture."""
    if not cfg.init:
        return None
    from fpn.models import create_model, load_pretrained

    payload = load_members(cfg.init, tracking_uri, k=1)[0]  # ValueError naming it if missing
    name, kwargs = payload.get("model_name"), dict(payload.get("model_kwargs") or {})
    want = _kwargs(cfg)
    problem = None
    if name != cfg.model.name:
        problem = f"model {name!r} vs {cfg.model.name!r}"
    else:
        try:  # same name: the weights decide (kwargs equal to a default are fine)
            load_pretrained(create_model(cfg.model.name, **want), payload["state_dict"],
                            reinit_head=cfg.reinit_head)
        except ValueError as exc:
            problem = str(exc)[:300]
    if problem is None:
        return payload
    differ = sorted(k for k in set(kwargs) | set(want) if kwargs.get(k) != want.get(k))
    raise ValueError(
        f"--init {cfg.init}: its architecture {name}({kwargs}) does not match the config's "
        f"{cfg.model.name}({want}); differing arguments: {', '.join(differ) or 'none'} ({problem})")


def preflight(cfg: TrainConfig) -> Preflight:
    """Every check that needs neither Ray nor an MLflow run (see the module docstring).

    Raises:
        ValueError: bad input, one line naming the problem (RunIdentityError for a name taken
            by another run; the CLI exits 2 for both).
    """
    name = validate_run_name(cfg.resolved_run_name())
    store = open_store(cfg.data.store, storage_options=cfg.data.storage_options)
    plan = plan_visits(store, cfg.data.target, cfg.data.ratio, cfg.data.subset_seed)
    model = check_model_and_depth(cfg, store, [*plan.train_keys, *plan.val_keys])
    init_payload = check_init(cfg, model, cfg.tracking_uri())
    identity = run_identity(cfg, store.fingerprint)
    storage = cfg.storage_path()
    run_dir = join_location(storage, name)
    record = read_run_record(run_dir)
    try:
        reuse = check_reuse(record, identity, cfg, run_dir)
    except RunIdentityError:
        if cfg.run_name:  # the user chose this name: refuse rather than guess
            raise
        # a derived name: this run gets its own, keyed by what it is
        name = validate_run_name(f"{name}-{identity.key[:8]}")
        run_dir = join_location(storage, name)
        record = read_run_record(run_dir)
        reuse = check_reuse(record, identity, cfg, run_dir)
    return Preflight(store, plan, name, run_dir, identity, record if reuse else None, init_payload)
