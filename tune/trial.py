"""The Tune function trainable: one trial = one Ray Train run of :func:`fpn.training.driver.run_training`.

Ray Train V2 cannot run as ``Tuner(TorchTrainer)``; instead each trial's function builds the
:class:`fpn.config.TrainConfig` from the sampled parameters and launches the TorchTrainer itself.
Train workers report every epoch; :class:`TuneReportCallback` forwards those reports to Tune (so
that ASHA sees validation Dice per epoch). The Train run is named after the study and the trial
id: a trial restarted after a kill resumes its Train run and its MLflow run instead of starting
over, and a trial whose run already finished only reports its final metrics again.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from fpn import tags as T
from tune.pretraining import PRETRAINING_KEY_TAG

__all__ = ["PRETRAINING_KEY_TAG", "PRETRAINING_TAG", "TRIAL_STORAGE_DIR", "train_trial",
           "trial_model_kwargs", "trial_run_name", "trial_train_config", "with_pretrained"]

#: sub-folder of the search's storage holding the trials' Ray Train runs
TRIAL_STORAGE_DIR = "trials"


def trial_run_name(study: str, trial_id: str) -> str:
    """The Train and MLflow run name of a trial: stable across restarts of the trial."""
    return f"{study}-{trial_id}"


def trial_train_config(base: dict[str, Any], params: dict[str, Any], run_name: str) -> Any:
    """``base`` (a TrainConfig dump) with the trial's dotted ``params`` applied."""
    from fpn.config import TrainConfig, set_dotted

    tree = copy.deepcopy(base)
    for dotted, value in params.items():
        set_dotted(tree, dotted, value)
    tree["run_name"] = run_name
    return TrainConfig.model_validate(tree)


def _finished_run(cfg: Any) -> bool:
    """Whether this trial's Train run finished before (local storage or an object store): the
    same name on the same store with the same training config, not the name alone."""
    from fpn.data.store import open_store
    from fpn.training.identity import run_identity
    from fpn.training.run_record import finished_run

    store = open_store(cfg.data.store, storage_options=cfg.data.storage_options)
    identity = run_identity(cfg, store.fingerprint)
    return finished_run(cfg.storage_path(), cfg.resolved_run_name(),
                        store_fingerprint=identity.store_fingerprint,
                        config_hash=identity.config_hash) is not None


def _mark_stopped(cfg: Any, parent_run_id: str) -> None:
    """The MLflow run of a trial that ASHA stopped: tagged ``stopped``, status KILLED."""
    from fpn.tracking import RUN_NAME_TAG, client_for, ensure_experiment

    uri = cfg.tracking_uri()
    client = client_for(uri)
    exp = ensure_experiment(client, cfg.experiment, uri)
    for run in client.search_runs([exp], filter_string=f"tags.`{RUN_NAME_TAG}` = "
                                  f"'{cfg.resolved_run_name()}'", max_results=5):
        client.set_tag(run.info.run_id, T.STATUS, "stopped")
        client.set_terminated(run.info.run_id, status="KILLED")
    print(f"[search] {cfg.resolved_run_name()}: stopped early by ASHA", flush=True)


#: trial MLflow run tag: whether the trial trained the shared pretraining it fine-tuned
#: (``PRETRAINING_KEY_TAG`` says which) or reused it
PRETRAINING_TAG = "fpn.pretraining"  # "trained" or "reused"


def trial_model_kwargs(base: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """The network kwargs a trial draws: the base's, with its ``model.kwargs.*`` parameters."""
    kwargs = dict(base.get("model", {}).get("kwargs", {}))
    for dotted, value in params.items():
        if dotted.startswith("model.kwargs."):
            kwargs[dotted[len("model.kwargs."):]] = value
    return kwargs


def with_pretrained(context: dict[str, Any], params: dict[str, Any],
                    run_name: str) -> tuple[dict[str, Any], dict[str, str]]:
    """The trial's base config with ``init`` = the shared pretraining of the architecture it
    drew (trained here, waited for, or reused: :func:`tune.pretraining.ensure_pretrained`), and
    the tags saying which. Unchanged when the search does not pretrain."""
    spec = context.get("pretrain")
    if not spec:
        return context["base"], {}
    from tune.pretraining import ensure_pretrained, pretraining_tree

    tree = pretraining_tree(spec["base"], trial_model_kwargs(context["base"], params))
    pre = ensure_pretrained(spec["storage"], tree, spec["fingerprint"], requester=run_name,
                            tags=spec.get("tags"), log=lambda m: print(m, flush=True))
    base = copy.deepcopy(context["base"])
    base["init"] = pre.run_dir
    return base, {PRETRAINING_KEY_TAG: pre.key,
                  PRETRAINING_TAG: "reused" if pre.reused else "trained"}


def train_trial(config: dict[str, Any], context: dict[str, Any]) -> None:
    """Tune function trainable.

    Args:
        config: the trial's sampled parameters, dotted TrainConfig keys (from OptunaSearch).
        context: ``base`` (TrainConfig dump), ``study``, ``parent_run_id``, ``tags``, and
            ``pretrain`` when the configuration pretrains (the pretraining recipe, the search's
            storage and the store's fingerprint: :func:`with_pretrained`); bound with
            ``tune.with_parameters``.
    """
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from fpn.training.driver import run_training
    from tune.pruning import StopOnBoardCallback, is_stopped

    trial_id = tune.get_context().get_trial_id()
    run_name = trial_run_name(context["study"], trial_id)
    base, pretrain_tags = with_pretrained(context, config, run_name)
    cfg = trial_train_config(base, config, run_name)
    tags = {**context.get("tags", {}), T.TRIAL_ID: trial_id, T.STUDY: context["study"],
            T.TRIAL_PARAMS: json.dumps(config, sort_keys=True, default=str), **pretrain_tags}
    already = _finished_run(cfg)
    callbacks = None if already else [TuneReportCallback(),
                                      StopOnBoardCallback(context["study"], trial_id,
                                                          last_epoch=cfg.epochs - 1)]
    try:
        outcome = run_training(cfg, parent_run_id=context["parent_run_id"], extra_tags=tags,
                               ray_callbacks=callbacks)
    except Exception:
        if not is_stopped(context["study"], trial_id):
            raise
        _mark_stopped(cfg, context["parent_run_id"])
        return
    # The trial's final result: its best validation score. Also needed when Tune reran a trial
    # that had finished (or had reported its last epoch) before a kill: nothing was reported then.
    best = max(outcome.best_scores) if outcome.best_scores else float("nan")
    tune.report({**outcome.last_metrics, "val_score": best, "final": 1.0})
