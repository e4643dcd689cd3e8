"""``python -m data_prep synth``: the command line over :func:`make_synthetic_dataset`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from data_prep.synthetic.grid import SIZES
from data_prep.synthetic.presets import DEFAULT_PRESET, PRESETS
from data_prep.synthetic.write import make_synthetic_dataset

__all__ = ["synth_main"]

# --- command line ------------------------------------------------------------------------------

def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m data_prep synth",
        description="Write a synthetic OCT/FAF/SLO GA dataset in the reference layout "
                    "(data_info.json, split.json, <patient>_<eye>/<day>/...).")
    parser.add_argument("out", type=Path, help="dataset folder to create")
    parser.add_argument("--patients", type=int, default=12,
                        help="labelled patients, split 60/20/20 into train/val/test (default 12)")
    parser.add_argument("--unlabelled", type=int, default=4,
                        help="extra patients without masks, for pretraining only (default 4)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default=DEFAULT_PRESET,
                        help="how hard the phantom is: hard = speckle, variability, small faint "
                        "lesions, single-modality confounders, a grader's outline as the mask; "
                        f"easy = the original phantom (default {DEFAULT_PRESET})")
    parser.add_argument("--size", choices=sorted(SIZES), default="small",
                        help="volume shape: small = 16x64x128, realistic = 49x128x512 (S D W)")
    parser.add_argument("--shape", type=int, nargs=3, metavar=("S", "D", "W"),
                        help="volume shape (B-scans, depth, A-scans); overrides --size")
    parser.add_argument("--visits", type=int, default=3,
                        help="most visits per eye; each patient gets V-1 or V (default 3)")
    parser.add_argument("--rpd-fraction", type=float, default=0.25,
                        help="fraction of patients with reticular pseudodrusen (default 0.25)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT")
    return parser


def synth_main(argv: list[str] | None = None) -> int:
    """The ``synth`` subcommand: parse ``argv`` (without the subcommand name) and write.

    Returns:
        0 on success, 1 when OUT is occupied, 2 on bad arguments.
    """
    parser = _build_parser()
    args = parser.parse_args(argv)
    shape = tuple(args.shape) if args.shape else SIZES[args.size]
    try:
        summary = make_synthetic_dataset(
            args.out, patients=args.patients, unlabelled=args.unlabelled, shape=shape,
            visits=args.visits, seed=args.seed, rpd_fraction=args.rpd_fraction,
            overwrite=args.overwrite, preset=args.preset)
    except FileExistsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(summary.format())
    return 0


