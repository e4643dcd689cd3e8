"""Cooperative early stopping: ASHA decides in the Tune driver, the Train run stops itself.

When Tune stops a trial it kills the trial's actor; a Ray Train V2 run started inside it then
leaves its workers' placement group behind (it is job-scoped, and V2's cleaner needs the state
API), so the CPUs it held never come back and the next trials wait forever. Here ASHA's STOP is
turned into a note on a :class:`StopBoard` (a CPU-less named actor) and the trial continues; a
Train :class:`StopOnBoardCallback` reads the board after each report and ends the run with an
error, which makes Train shut its worker group down properly. The trial function then records
the trial as stopped and returns.
"""

from __future__ import annotations

from typing import Any

import ray
from ray.train.v2.api.callback import UserCallback
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

__all__ = ["CooperativeASHA", "StopBoard", "StopOnBoardCallback", "TrialStopped", "stop_board"]


class TrialStopped(RuntimeError):
    """Raised in the Train controller to end a trial that ASHA stopped."""


@ray.remote(num_cpus=0)
class StopBoard:
    """Trial ids that the scheduler wants stopped."""

    def __init__(self) -> None:
        self._stopped: set[str] = set()

    def stop(self, trial_id: str) -> None:
        self._stopped.add(trial_id)

    def is_stopped(self, trial_id: str) -> bool:
        return trial_id in self._stopped


def stop_board(study: str) -> Any:
    """The board of ``study`` (created on first use, shared by the driver and the trials)."""
    return StopBoard.options(name=f"fpn-stop-board-{study}", get_if_exists=True).remote()


class CooperativeASHA(ASHAScheduler):
    """ASHA whose STOP decisions are posted on the study's :class:`StopBoard` instead of killing
    the trial (see the module docstring).

    A stopped trial ends at its next report, so it still reports once after the decision; that
    late result is not recorded in ASHA's rungs (it would raise the cutoff that the other trials
    are measured against with a trial already out of the race)."""

    def __init__(self, study: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._study = study
        self._posted: set[str] = set()

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        if trial.trial_id in self._posted:
            return TrialScheduler.CONTINUE
        decision = super().on_trial_result(tune_controller, trial, result)
        if decision == TrialScheduler.STOP:
            self._posted.add(trial.trial_id)
            ray.get(stop_board(self._study).stop.remote(trial.trial_id))
            return TrialScheduler.CONTINUE
        return decision


class StopOnBoardCallback(UserCallback):
    """Train callback: after each report, end the run if the board says so, except after the
    last epoch: a run that has trained all its epochs finishes (its checkpoints ranked, its
    record written), whenever the decision to stop it arrived."""

    def __init__(self, study: str, trial_id: str, last_epoch: int | None = None) -> None:
        self.study = study
        self.trial_id = trial_id
        self.last_epoch = last_epoch  #: 0-based, as the workers report ``epoch``

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]],
                     checkpoint: Any) -> None:
        epochs = [m.get("epoch") for m in metrics if m and m.get("epoch") is not None]
        if self.last_epoch is not None and epochs and max(epochs) >= self.last_epoch:
            return
        if ray.get(stop_board(self.study).is_stopped.remote(self.trial_id)):
            raise TrialStopped(f"trial {self.trial_id} stopped early by ASHA")


def is_stopped(study: str, trial_id: str) -> bool:
    return bool(ray.get(stop_board(study).is_stopped.remote(trial_id)))
