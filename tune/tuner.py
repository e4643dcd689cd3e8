"""The Tuner of one ratio: one named Optuna study (TPE, resumable), ASHA that stops trials
cooperatively (:mod:`tune.pruning`), one trial per Ray Train run (:func:`tune.trial.train_trial`).

Re-created or restored from its storage (``Tuner.can_restore``): a search killed and run again
resumes where it was; a study that already holds its trials runs nothing.
"""

from __future__ import annotations

from typing import Any

from fpn import tags as T
from fpn.storage import join_location
from tune.config import SearchConfig
from tune.console import SearchConsole, say
from tune.core import ResourcePlan, driver_resources
from tune.pruning import is_stopped
from tune.spaces import SearchSpace
from tune.trial import FINAL, TrialSpec

__all__ = ["TPE_STARTUP_TRIALS", "optuna_study", "run_tuner", "scheduler_for", "tidy_study"]

#: TPE's random start-up: the first trials of a study are drawn at random (Optuna's default)
TPE_STARTUP_TRIALS = 10


def _log(msg: str) -> None:
    say(f"[search] {msg}")


def _optuna_trial_finished(searcher: Any, trial_id: str) -> bool:
    ot_trial = searcher._ot_trials.get(trial_id)
    if ot_trial is None:
        return False
    return searcher._ot_study._storage.get_trial(ot_trial._trial_id).state.is_finished()


try:
    from ray.tune.search.optuna import OptunaSearch as _OptunaSearch

    class ResumableOptunaSearch(_OptunaSearch):
        """OptunaSearch that tells the study the truth:

        - every epoch's validation score is an intermediate value of the trial (the closing
          summary a trial reports, marked ``final``, is not an epoch);
        - a trial that ASHA stopped (:mod:`tune.pruning`) is PRUNED, not COMPLETE: TPE must not
          take a half-trained score for a final one;
        - a trial finished in the study but not in Tune's last experiment checkpoint (the
          search was killed in between) is run again by Tune (its Train run is found finished
          and only reports), and its result must not reach Optuna twice.
        """

        def on_trial_result(self, trial_id: str, result: dict) -> None:
            if result.get(FINAL) or _optuna_trial_finished(self, trial_id):
                return
            super().on_trial_result(trial_id, result)

        def on_trial_complete(self, trial_id: str, result: dict | None = None,
                              error: bool = False) -> None:
            if _optuna_trial_finished(self, trial_id):
                self._completed_trials.add(trial_id)
                return
            # a trial that trained to its end reports its closing summary, even when ASHA's
            # decision came after its last epoch; one that stopped early does not
            stopped_early = (not error and not (result or {}).get(FINAL)
                             and is_stopped(self._study_name, trial_id))
            if stopped_early and trial_id in self._ot_trials:
                import optuna

                self._ot_study.tell(self._ot_trials[trial_id],
                                    state=optuna.trial.TrialState.PRUNED)
                self._completed_trials.add(trial_id)
                return
            super().on_trial_complete(trial_id, result, error)
except ImportError:  # optuna missing: the search reports it when it runs
    pass


def _trial_name(trial: Any) -> str:
    return str(trial.trial_id)


def optuna_study(cfg: SearchConfig, study_name: str) -> Any:
    import optuna

    storage = optuna.storages.RDBStorage(cfg.study_url())
    try:
        return optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        return None


def tidy_study(study: Any) -> None:
    """Trials still RUNNING after the Tuner returned were asked by a killed search and never run."""
    import optuna

    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)
        study.set_user_attr(f"orphan_{t.number}", "asked by an interrupted search, never run")


def scheduler_for(cfg: SearchConfig, study_name: str) -> Any:
    """ASHA on validation Dice, never deciding at the last epoch (a trial that reached it runs
    to its end: checkpoints ranked, ensemble logged); FIFO when there is a single epoch."""
    from ray.tune.schedulers import FIFOScheduler

    from tune.pruning import CooperativeASHA

    epochs = cfg.train_epochs()
    if epochs < 2:
        return FIFOScheduler()
    return CooperativeASHA(study_name, time_attr="training_iteration", max_t=epochs - 1,
                           grace_period=min(cfg.asha_grace(), epochs - 1), reduction_factor=2,
                           stop_last_trials=False)


def run_tuner(cfg: SearchConfig, spec: TrialSpec, space: SearchSpace,
              resources: ResourcePlan) -> None:
    """Run (or resume) the study ``spec.study``: its trials train :func:`tune.trial.train_trial`
    with ``spec``; one console line per trial event and a step of the search's progress bar per
    trial that ends (:class:`tune.console.SearchConsole`)."""
    import optuna
    from ray import tune

    from tune.pruning import stop_board
    from tune.trial import train_trial

    study_name = spec.study
    storage = cfg.storage_path()
    exp_path = join_location(storage, study_name)
    driver = {k.lower() if k == "CPU" else k: v for k, v in driver_resources().items()}
    trainable = tune.with_resources(tune.with_parameters(train_trial, spec=spec), driver)
    board = stop_board(study_name)  # held here so that it lives as long as the search
    if tune.Tuner.can_restore(exp_path):
        _log(f"{study_name}: resuming the search in {exp_path}")
        tuner = tune.Tuner.restore(exp_path, trainable, resume_unfinished=True,
                                   restart_errored=True)
    else:
        existing = optuna_study(cfg, study_name)
        done = 0 if existing is None else sum(
            t.state.is_finished() for t in existing.get_trials(deepcopy=False))
        remaining = cfg.trials_per_ratio() - done
        if remaining <= 0:
            _log(f"{study_name}: the study already holds {done} finished trials")
            return
        # TPE, seeded: with fewer trials than its random start-up, every study of the search
        # draws the same configurations (a paired random search; the table's notes say so)
        sampler = optuna.samplers.TPESampler(seed=cfg.seed, n_startup_trials=TPE_STARTUP_TRIALS)
        searcher = ResumableOptunaSearch(space=space, metric=T.VAL_SCORE, mode="max",
                                         sampler=sampler,
                                         storage=optuna.storages.RDBStorage(cfg.study_url()),
                                         study_name=study_name)
        scheduler = scheduler_for(cfg, study_name)
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                metric=T.VAL_SCORE, mode="max", search_alg=searcher, scheduler=scheduler,
                num_samples=remaining, max_concurrent_trials=resources.concurrency,
                trial_name_creator=_trial_name, trial_dirname_creator=_trial_name),
            run_config=tune.RunConfig(name=study_name, storage_path=storage,
                                      failure_config=tune.FailureConfig(max_failures=1),
                                      callbacks=[SearchConsole(study_name, FINAL)],
                                      verbose=1 if cfg.verbose else 0),
        )
        _log(f"{study_name}: {remaining} trial(s), {resources.concurrency} at a time")
    grid = tuner.fit()
    del board
    errors = [r.error for r in grid if r.error is not None]
    if errors and len(errors) == len(grid):
        last = str(errors[0]).strip().splitlines()  # the error itself, not Ray's traceback
        raise RuntimeError(f"{study_name}: every trial failed; the first: "
                           f"{last[-1] if last else repr(errors[0])}")
