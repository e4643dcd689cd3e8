"""``python -m fpn registry {list, promote, rollback} NAME ...``: the command line of
:mod:`fpn.registry` (the library); errors are one line, exit 2."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from fpn.registry import (
    DIRECTION_ALIASES,
    GATE_METRIC,
    champion_status,
    list_versions,
    promote,
    rollback,
)

__all__ = ["build_parser", "registry_main"]


def _format_rows(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(no versions)"
    cols = list(rows[0])
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    lines = ["  ".join(c.ljust(widths[c]) for c in cols)]
    lines += ["  ".join(str(r[c]).ljust(widths[c]) for c in cols) for r in rows]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fpn registry",
                                     description="List, promote and roll back registered models.")
    parser.add_argument("--mlflow", help="MLflow URI (default $MLFLOW_TRACKING_URI or ./mlflow.db)")
    sub = parser.add_subparsers(dest="action", required=True)
    p = sub.add_parser("list", help="versions, aliases and metrics; flags a champion alias "
                       "moved outside the gate")
    p.add_argument("name")
    p = sub.add_parser("promote", help="champion if it beats the champion, else challenger")
    p.add_argument("name")
    p.add_argument("--version", help="candidate version (default: the newest)")
    p.add_argument("--metric", default=GATE_METRIC,
                   help=f"version tag compared (default {GATE_METRIC}; another one needs --force)")
    p.add_argument("--direction", "--mode", dest="direction",
                   choices=sorted(DIRECTION_ALIASES), default=None,
                   help="which way is better; default: the metric's own (Dice higher, HD95 "
                   "lower); another one needs --force")
    p.add_argument("--force", action="store_true",
                   help="promote regardless of the gate (every override is recorded)")
    p = sub.add_parser("rollback", help="champion back to the gate's previous champion")
    p.add_argument("name")
    for p in sub.choices.values():
        p.add_argument("--mlflow", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


def registry_main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m fpn registry``: 0 on success (also when the candidate stays
    challenger), 2 with a one-line error when the gate refuses or the input is wrong."""
    from mlflow.exceptions import MlflowException

    args = build_parser().parse_args(argv)
    try:
        if args.action == "list":
            print(_format_rows(list_versions(args.mlflow, args.name)))
            if warning := champion_status(args.mlflow, args.name):
                print(f"WARNING: {warning}; `registry rollback` returns to the gate's record, "
                      "`registry promote --version N --force` records the move")
        elif args.action == "promote":
            print(promote(args.mlflow, args.name, args.version, metric=args.metric,
                          direction=args.direction, force=args.force).message())
        else:
            print(rollback(args.mlflow, args.name).message())
    except (ValueError, MlflowException) as exc:
        text = exc.message if isinstance(exc, MlflowException) else str(exc)
        print(f"error: {' '.join(text.split())}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(registry_main())
