"""The Tune function trainable: one trial = one Ray Train run of :func:`fpn.training.driver.run_training`.

Ray Train V2 cannot run as ``Tuner(TorchTrainer)``; instead each trial's function builds its
:class:`fpn.config.TrainConfig` from its :class:`TrialSpec` (the ratio's base config and the
rest of what a trial needs, one frozen object) and the parameters Optuna drew, and launches the
TorchTrainer itself. Train workers report every epoch; :class:`TuneReportCallback` forwards those
reports to Tune (so that ASHA sees validation Dice per epoch). The Train run is named after the
study and the trial id: a trial restarted after a kill resumes its Train run and its MLflow run
instead of starting over, and a trial whose run already finished only reports its final metrics
again.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fpn import tags as T
from fpn.config import TrainConfig

__all__ = ["FINAL", "PretrainingSpec", "TrialSpec", "train_trial", "trial_config", "trial_model_kwargs",
           "trial_run_name", "with_pretrained"]


#: the key that marks a trial's closing report (its best score), which is not an epoch
FINAL = "final"


@dataclass(frozen=True)
class PretrainingSpec:
    """How a trial finds (or trains) the shared pretraining of the architecture it draws
    (:func:`tune.pretraining.ensure_pretrained`)."""

    config: TrainConfig  #: the pretraining's config; the trial's architecture goes over it
    storage: str  #: the search's storage (records and leases under ``<storage>/pretrain``)
    store_fingerprint: str
    tags: Mapping[str, str] = field(default_factory=dict)  #: of the pretraining's MLflow run


@dataclass(frozen=True)
class TrialSpec:
    """Everything a trial of one study needs besides its drawn parameters."""

    base: TrainConfig  #: the fine-tuning config at this ratio; the draws go over it
    study: str  #: the Optuna study (and Tune experiment) name
    parent_run_id: str  #: the ratio's parent MLflow run
    tags: Mapping[str, str] = field(default_factory=dict)  #: of every trial's MLflow run
    pretraining: PretrainingSpec | None = None  #: None: the configuration does not pretrain


def trial_run_name(study: str, trial_id: str) -> str:
    """The Train and MLflow run name of a trial: stable across restarts of the trial."""
    return f"{study}-{trial_id}"


def trial_config(base: TrainConfig, params: Mapping[str, Any], run_name: str) -> TrainConfig:
    """``base`` with the trial's dotted ``params`` (its draws) and its run name."""
    return base.with_overrides({**params, "run_name": run_name})


def _finished_run(cfg: TrainConfig) -> bool:
    """Whether this trial's Train run finished before (local storage or an object store): the
    same name on the same store with the same training config, not the name alone."""
    from fpn.data.store import open_store
    from fpn.storage import finished_run
    from fpn.training.identity import run_identity

    store = open_store(cfg.data.store, storage_options=cfg.data.storage_options)
    identity = run_identity(cfg, store.fingerprint)
    return finished_run(cfg.storage_path(), cfg.resolved_run_name(),
                        store_fingerprint=identity.store_fingerprint,
                        config_hash=identity.config_hash) is not None


def _mark_stopped(cfg: TrainConfig) -> None:
    """The MLflow run of a trial that ASHA stopped: tagged ``stopped``, status KILLED."""
    from fpn.tracking import client_for, ensure_experiment

    uri = cfg.tracking_uri()
    client = client_for(uri)
    exp = ensure_experiment(client, cfg.experiment, uri)
    for run in client.search_runs([exp], filter_string=f"tags.`{T.RUN_NAME}` = "
                                  f"'{cfg.resolved_run_name()}'", max_results=5):
        client.set_tag(run.info.run_id, T.STATUS, T.STATUS_STOPPED)
        client.set_terminated(run.info.run_id, status="KILLED")
    print(f"[search] {cfg.resolved_run_name()}: stopped early by ASHA", flush=True)


def trial_model_kwargs(base: TrainConfig, params: Mapping[str, Any]) -> dict[str, Any]:
    """The network kwargs a trial draws: the base's, with its ``model.kwargs.*`` parameters."""
    kwargs = dict(base.model.kwargs)
    for dotted, value in params.items():
        if dotted.startswith("model.kwargs."):
            kwargs[dotted[len("model.kwargs."):]] = value
    return kwargs


def with_pretrained(spec: TrialSpec, params: Mapping[str, Any],
                    run_name: str) -> tuple[TrainConfig, dict[str, str]]:
    """The trial's base config with ``init`` = the shared pretraining of the architecture it
    drew (trained here, waited for, or reused: :func:`tune.pretraining.ensure_pretrained`), and
    the tags saying which. Unchanged when the search does not pretrain."""
    pre_spec = spec.pretraining
    if pre_spec is None:
        return spec.base, {}
    from tune.pretraining import ensure_pretrained, pretraining_config

    config = pretraining_config(pre_spec.config, trial_model_kwargs(spec.base, params))
    pre = ensure_pretrained(pre_spec.storage, config, pre_spec.store_fingerprint,
                            requester=run_name, tags=dict(pre_spec.tags),
                            log=lambda m: print(m, flush=True))
    return spec.base.with_overrides({"init": pre.run_dir}), {
        T.PRETRAINING_KEY: pre.key,
        T.PRETRAINING: T.PRETRAINING_REUSED if pre.reused else T.PRETRAINING_TRAINED}


def train_trial(config: dict[str, Any], spec: TrialSpec) -> None:
    """Tune function trainable.

    Args:
        config: the trial's sampled parameters, dotted TrainConfig keys (from OptunaSearch).
        spec: the study's :class:`TrialSpec`, bound with ``tune.with_parameters``.
    """
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from fpn.training.driver import run_training
    from tune.pruning import StopOnBoardCallback, is_stopped

    trial_id = tune.get_context().get_trial_id()
    run_name = trial_run_name(spec.study, trial_id)
    base, pretrain_tags = with_pretrained(spec, config, run_name)
    cfg = trial_config(base, config, run_name)
    tags = {**spec.tags, T.TRIAL_ID: trial_id, T.STUDY: spec.study,
            T.TRIAL_PARAMS: json.dumps(config, sort_keys=True, default=str), **pretrain_tags}
    already = _finished_run(cfg)
    callbacks = None if already else [TuneReportCallback(),
                                      StopOnBoardCallback(spec.study, trial_id,
                                                          last_epoch=cfg.epochs - 1)]
    try:
        record = run_training(cfg, parent_run_id=spec.parent_run_id, extra_tags=tags,
                              ray_callbacks=callbacks)
    except Exception:
        if not is_stopped(spec.study, trial_id):
            raise
        _mark_stopped(cfg)
        return
    # The trial's final result: its best validation score. Also needed when Tune reran a trial
    # that had finished (or had reported its last epoch) before a kill: nothing was reported then.
    tune.report({**record.last_metrics, T.VAL_SCORE: record.best_score, FINAL: 1.0})
