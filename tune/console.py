"""What a person sees while a search runs: one line per trial event and one progress bar.

The search's console shows, per trial, one line when it starts, one when ASHA stops it (with the
score and epoch it was stopped at) or it ends (with its best validation score), and one when it
fails (with where its error is logged); and one progress bar (tqdm) over all the search's
fine-tunings with its ETA. Everything else (the Train workers' epoch lines, Ray Train's and
Tune's own logging, the tracebacks Ray Train's controller logs when a trial is stopped on
purpose) goes to Ray's log files, whose folder :func:`log_folder` names; ``--verbose`` brings it
all back to the console.

:class:`SearchConsole` is a Tune callback: it runs in the search's own process, whatever node
the trials run on.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any

from ray.tune import Callback

from fpn import tags as T

__all__ = ["SearchConsole", "close_progress_bar", "log_folder", "progress_bar", "quiet_logging", "say"]


def quiet_logging() -> None:
    """The search's own process keeps libraries' chatter off the console: loggers to warnings
    (Ray's start-up, MLflow's database migrations, Optuna's per-trial lines), Tune's legacy
    reporter at verbosity 0 (its newer one prints each experiment's configuration box and a
    TensorBoard hint whatever the verbosity), MLflow's event stream ("Created version 3 of
    model ...") off."""
    for name in ("ray", "ray.tune", "ray.train", "mlflow", "alembic", "optuna"):
        logging.getLogger(name).setLevel(logging.WARNING)
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    import optuna
    from mlflow.utils.logging_utils import disable_logging

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    disable_logging()


def log_folder() -> str | None:
    """The folder of this Ray session's log files (workers, trials, Train runs), or None."""
    try:
        import ray._private.worker as ray_worker

        node = ray_worker._global_node
        return f"{node.get_session_dir_path()}/logs" if node is not None else None
    except Exception:  # noqa: BLE001 -- only a hint for the user
        return None


#: the progress bar of the search running in this process (a Tune callback is pickled with
#: the Tuner's state, so it finds the bar here instead of holding it)
_BAR: list[Any] = []


def progress_bar(total: int, *, desc: str = "fine-tunings", enabled: bool = True) -> Any:
    """The command's one progress bar over its runs (tqdm, on stderr), made current for every
    :class:`SearchConsole` and :func:`say` of this process; :func:`close_progress_bar` when
    the command ends."""
    from tqdm import tqdm

    bar = tqdm(total=total, desc=desc, unit="run", disable=not enabled,
               dynamic_ncols=True, leave=True)
    _BAR[:] = [bar]
    return bar


def step_progress_bar(*_: Any) -> None:
    """One more run ended (any arguments are ignored: a callback)."""
    bar = _current_bar()
    if bar is not None:
        bar.update(1)


def close_progress_bar() -> None:
    """Close the search's progress bar; lines print plainly again."""
    if _BAR:
        _BAR.pop().close()


def _current_bar() -> Any:
    bar = _BAR[0] if _BAR else None
    return None if bar is None or getattr(bar, "disable", False) else bar


def say(line: str) -> None:
    """Print one console line above the search's progress bar (or plainly, without one)."""
    bar = _current_bar()
    if bar is not None:
        bar.write(line)
    else:
        print(line, flush=True)


def _score(value: Any) -> str:
    try:
        return f"{float(value):.4f}" if math.isfinite(float(value)) else "nan"
    except (TypeError, ValueError):
        return "nan"


class SearchConsole(Callback):
    """One line per trial event of one study, and a step of the search's progress bar per trial
    that ends (picklable: it holds names only).

    Args:
        study: the study's name (the lines start with it; its stop board says which trials ASHA
            stopped, :func:`tune.pruning.is_stopped`).
        final_key: the key of a trial's closing report (:data:`tune.trial.FINAL`).
    """

    def __init__(self, study: str, final_key: str) -> None:
        self.study = study
        self.final_key = final_key
        self._last: dict[str, dict[str, Any]] = {}

    def _write(self, text: str) -> None:
        say(f"[search] {self.study} {text}")

    def _step(self) -> None:
        step_progress_bar()

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        params = ", ".join(f"{k.split('.')[-1]}={v:.3g}" if isinstance(v, float)
                           else f"{k.split('.')[-1]}={v}" for k, v in trial.config.items())
        self._write(f"trial {trial.trial_id} started ({params})")

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:
        self._last[trial.trial_id] = result

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        from tune.pruning import is_stopped

        last = self._last.get(trial.trial_id, {})
        if not last.get(self.final_key) and is_stopped(self.study, trial.trial_id):
            epoch = last.get("epoch")
            at = f"epoch {int(epoch) + 1}" if epoch is not None else "its last report"
            self._write(f"trial {trial.trial_id} pruned by ASHA after {at} "
                        f"(val score {_score(last.get(T.VAL_SCORE))})")
        else:
            self._write(f"trial {trial.trial_id} finished: best val score "
                        f"{_score(last.get(T.VAL_SCORE))}")
        self._step()

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        where = getattr(trial, "error_file", None) or getattr(trial, "path", "")
        self._write(f"trial {trial.trial_id} FAILED (its error: {where})")
        self._step()
