"""One command-line convention for the orchestration commands (``python tune/search.py``,
``python -m tune.experiments paper-table``, ``python -m tune.demo``), the same as ``python -m fpn``:

- the same spelling for the same thing: ``--data`` (the store), ``--mlflow`` (the tracking URI),
  ``--ratios`` (space- or comma-separated), ``--workers`` (Ray Train workers per run; the older
  ``--workers-per-trial`` / ``--workers-per-run`` still work), ``--gpus-per-worker``,
  ``--max-concurrent``, ``--num-cpus``, ``--recipe``, ``--set KEY=VALUE``;
- bad input exits 2 with one line naming the problem (argparse's own errors already do); a
  failure after the work started exits 1, also with one line; never a traceback for either.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["INPUT_ERRORS", "add_ratios", "add_set", "add_workers", "csv_list", "run_command"]


def _input_errors() -> tuple[type[BaseException], ...]:
    from fpn.data.readers import DataError
    from fpn.data.store import StoreError

    return (ValueError, FileNotFoundError, NotADirectoryError, StoreError, DataError)


INPUT_ERRORS = _input_errors()


def csv_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _flat(values: Sequence[Any] | None) -> list[Any] | None:
    if values is None:
        return None
    return [v for group in values for v in (group if isinstance(group, list) else [group])]


def _ratio_group(text: str) -> list[float]:
    try:
        return [float(t) for t in csv_list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"ratios must be numbers, got {text!r}") from None


class _FlattenAction(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None) -> None:
        setattr(namespace, self.dest, _flat(values))


def add_ratios(p: argparse.ArgumentParser, help_default: str) -> None:
    p.add_argument("--ratios", type=_ratio_group, nargs="+", action=_FlattenAction,
                   metavar="RATIO", help=f"labelled-data ratios, e.g. 0.1 1.0 or 0.1,1.0 "
                   f"(default {help_default})")


def add_list(p: argparse.ArgumentParser, flag: str, help_text: str) -> None:
    """A list option written space- or comma-separated (``--models fpn lachinov``)."""
    p.add_argument(flag, type=csv_list, nargs="+", action=_FlattenAction, help=help_text)


def add_workers(p: argparse.ArgumentParser, *aliases: str, default: int | None = None) -> None:
    p.add_argument("--workers", *aliases, dest="workers", type=int, default=default,
                   help="Ray Train workers per run" + (f" (default {default})" if default else ""))


def add_set(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="set", action="append", default=[], metavar="KEY=VALUE",
                   help="dotted TrainConfig override for every run, e.g. --set epochs=2 "
                   "--set data.crop=[32,256] (after the recipe)")


def run_command(prog: str, body: Callable[[], int]) -> int:
    """Run a command's body: input errors -> exit 2, failures -> exit 1, one line each."""
    try:
        return body()
    except INPUT_ERRORS as exc:
        print(f"{prog}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        print(f"{prog}: failed: {_one_line(exc)}", file=sys.stderr)
        return 1


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__
