"""``python -m data_prep`` (console script ``fpn-data``): the data preparation commands.

    synth     write a synthetic source in the reference layout
    validate  list every problem of a source (nothing written)
    convert   source -> fpn store (Ray tasks, idempotent)
    preview   draw one visit of a store to a PNG
    summary   print what a store holds
    demo      synth (if missing) -> convert (if not complete) -> summary

Each subcommand is a thin wrapper over a ``*_main(argv) -> int`` function; exit codes: 0 = done,
1 = bad input / failed, 2 = usage error; ``convert`` also exits 2 when another convert holds the
store's writer lease, or when the store holds another source's visits and ``--overwrite`` is not
given (nothing written in either case).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

__all__ = ["COMMANDS", "demo_main", "main"]


def _synth(argv: Sequence[str]) -> int:
    from data_prep.synthetic import synth_main

    return synth_main(list(argv))


def _validate(argv: Sequence[str]) -> int:
    from data_prep.validate import validate_main

    return validate_main(list(argv))


def _convert(argv: Sequence[str]) -> int:
    from data_prep.convert import convert_main

    return convert_main(list(argv))


def _preview(argv: Sequence[str]) -> int:
    from data_prep.preview import preview_main

    return preview_main(list(argv))


def _summary(argv: Sequence[str]) -> int:
    from data_prep.preview import summary_main

    return summary_main(list(argv))


def demo_main(argv: Sequence[str] | None = None) -> int:
    """Synthetic source -> store -> summary, each step only if its output is not there yet.

    Writes ``OUT/source`` (reference layout) and ``OUT/store.zarr``.
    """
    parser = argparse.ArgumentParser(prog="python -m data_prep demo",
                                     description="synth -> convert -> summary on synthetic data")
    parser.add_argument("--out", default="fpn_data", help="folder for the source and the store")
    parser.add_argument("--patients", type=int, default=8, help="labelled patients")
    parser.add_argument("--unlabelled", type=int, default=4, help="unlabelled patients")
    parser.add_argument("--shape", type=int, nargs=3, default=[32, 128, 256],
                        metavar=("S", "D", "W"))
    parser.add_argument("--visits", type=int, default=2, help="visits per patient")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-cpus", type=int, default=None)
    args = parser.parse_args(argv)

    from data_prep.convert import convert
    from data_prep.preview import store_summary
    from data_prep.synthetic import make_synthetic_dataset
    from fpn.data.store import StoreError, open_store

    source = os.path.join(args.out, "source")
    store_path = os.path.join(args.out, "store.zarr")
    if os.path.exists(os.path.join(source, "data_info.json")):
        print(f"demo: synthetic source already at {source}")
    else:
        print(f"demo: writing a synthetic source to {source}")
        make_synthetic_dataset(source, patients=args.patients, unlabelled=args.unlabelled,
                               shape=tuple(args.shape), visits=args.visits, seed=args.seed)
    try:
        store = open_store(store_path)
        complete = bool(store.visits) and store.conversion.get("complete", False)
    except StoreError:
        complete = False
    if complete:
        print(f"demo: store already complete at {store_path}")
    else:
        from data_prep.convert import OverwriteRefused
        from fpn.storage.lease import LeaseHeld

        try:
            stats = convert(source, store_path, seed=args.seed, num_cpus=args.num_cpus)
        except (LeaseHeld, OverwriteRefused) as exc:
            print(f"demo: nothing written: {exc}", file=sys.stderr)
            return 2
        print(stats.summary_line())
        if not stats.ok:
            for problem in stats.problems:
                print(f"  {problem}", file=sys.stderr)
            for key, message in stats.failed.items():
                print(f"  visit {key}: {message}", file=sys.stderr)
            return 1
        store = open_store(store_path)
    print(store_summary(store))
    return 0


COMMANDS: dict[str, tuple[Callable[[Sequence[str]], int], str]] = {
    "synth": (_synth, "write a synthetic source in the reference layout"),
    "validate": (_validate, "list every problem of a source (nothing written)"),
    "convert": (_convert, "convert a source into an fpn store"),
    "preview": (_preview, "draw one visit of a store to a PNG"),
    "summary": (_summary, "print what a store holds"),
    "demo": (demo_main, "synth -> convert -> summary on synthetic data"),
}


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch ``python -m data_prep COMMAND ...`` to the command's ``*_main(argv)``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="python -m data_prep",
        description="Data preparation for fpn: synthetic data, validation, conversion to a store.",
        epilog="Run 'python -m data_prep COMMAND --help' for a command's options.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_, help_text) in COMMANDS.items():
        # Each command parses its own arguments; the top level only picks the command.
        subparsers.add_parser(name, help=help_text, add_help=False)
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help() if argv else parser.print_usage(sys.stderr)
        return 0 if argv else 2
    if argv[0] not in COMMANDS:
        parser.parse_args(argv[:1])  # prints the usage error and exits 2
    command, rest = argv[0], argv[1:]
    return COMMANDS[command][0](rest)


if __name__ == "__main__":
    raise SystemExit(main())
