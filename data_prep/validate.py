"""``python -m data_prep validate SRC --layout reference|manifest``: list every problem of a source.

Nothing is written. Every visit's files are read and checked (in a thread pool: the readers spend
their time in I/O and in numpy/zlib, which release the GIL), then the visits are checked against
each other.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from data_prep.layouts import LAYOUTS, SPLIT_PARTS, check_visit, discover, load_visit, split_origin
from data_prep.sources import DataError, Problem, VisitSource
from data_prep.store_writer import OCT_DTYPES, oct_value_problems

__all__ = ["cross_visit_problems", "validate_main", "validate_source", "visit_problems"]


def cross_visit_problems(visits: Sequence[VisitSource], split: dict[str, list[str]] | None,
                         split_path: str | None = None) -> list[Problem]:
    """Problems that only show across visits.

    - duplicate visit: two records with the same store key (same patient, eye and day);
    - a patient in more than one split part (in the split or across the visits' ``split``).

    Args:
        visits: all visits of the source.
        split: the source's split (patient ids per part) or ``None``.
        split_path: the file that declares the split, for messages (else the visits' origin).
    """
    problems: list[Problem] = []
    by_key: dict[str, list[VisitSource]] = defaultdict(list)
    for v in visits:
        by_key[v.key].append(v)
    for key, same in by_key.items():
        if len(same) > 1:
            files = ", ".join(v.oct for v in same)
            problems.append(Problem(same[0].origin or same[0].oct,
                                    f"duplicate visit {key} (same patient, eye and day) declared "
                                    f"{len(same)} times: {files}", key))

    parts: dict[str, set[str]] = defaultdict(set)
    origin: dict[str, str] = {}
    for part, patients in (split or {}).items():
        for patient in patients:
            parts[str(patient)].add(part)
    for v in visits:
        if v.split:
            parts[v.patient_id].add(v.split)
            origin.setdefault(v.patient_id, v.origin or v.oct)
    order = {p: i for i, p in enumerate((*SPLIT_PARTS, "unlabelled"))}
    for patient in sorted(parts):
        if len(parts[patient]) > 1:
            named = ", ".join(sorted(parts[patient], key=lambda p: order.get(p, 99)))
            problems.append(Problem(split_path or origin.get(patient, "split"),
                                    f"patient {patient} is in more than one split part: {named}"))
    return problems


def visit_problems(v: VisitSource, oct_dtype: str | None = "float16") -> list[Problem]:
    """Every problem of one visit: its files (:func:`check_visit`), then its OCT values.

    The values are refused where the store would be quietly wrong: an all-zero OCT, a boolean
    (0/1-only) OCT, and with ``oct_dtype="float16"`` voxels that would underflow float16
    (:func:`data_prep.store_writer.oct_value_problems`); ``oct_dtype=None`` skips the dtype check.
    """
    try:
        arrays = load_visit(v)  # a clean visit is read once
    except DataError:
        return check_visit(v)  # ... a bad one again, to list all of its problems
    return [Problem(v.oct, message, v.key)
            for message in oct_value_problems(arrays.oct, oct_dtype or "float32")]


def validate_source(src: str | Path, layout: str, *, workers: int | None = None,
                    oct_dtype: str | None = "float16") -> tuple[list[VisitSource], list[Problem]]:
    """Discover a source and check every visit and the visits against each other.

    Args:
        src: source root folder (reference) or manifest CSV/folder (manifest).
        layout: ``"reference"`` or ``"manifest"``.
        workers: threads for the per-visit checks (default: up to 4, at most the CPU count).
        oct_dtype: the store's OCT dtype, whose range the values must fit (``convert``'s
            ``--dtype``; default float16 like convert's); None = no dtype check.

    Returns:
        ``(visits, problems)`` with every problem found: discovery, per visit (in visit order),
        then cross-visit.
    """
    visits, problems, split = discover(src, layout)
    workers = workers or max(1, min(4, os.cpu_count() or 1))
    if workers > 1 and len(visits) > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            per_visit = list(pool.map(lambda v: visit_problems(v, oct_dtype), visits))
    else:
        per_visit = [visit_problems(v, oct_dtype) for v in visits]
    for found in per_visit:
        problems.extend(found)
    problems.extend(cross_visit_problems(visits, split, split_origin(src, layout)))
    return visits, problems


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m data_prep validate",
        description="Check a data source and list every problem (file: cause). Writes nothing.")
    parser.add_argument("src", help="reference: root folder; manifest: CSV file or folder with "
                                    "manifest.csv")
    parser.add_argument("--layout", required=True, choices=LAYOUTS, help="source layout")
    parser.add_argument("--workers", type=int, default=None,
                        help="threads for reading visits (default: min(4, CPUs))")
    parser.add_argument("--dtype", choices=OCT_DTYPES, default="float16",
                        help="the OCT storage dtype convert will use: the values must fit it "
                             "(default float16, like convert)")
    return parser


def validate_main(argv: list[str] | None = None) -> int:
    """Command-line entry. Returns 0 when the source is clean, 1 with problems, 2 on usage errors."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # argparse exits 2 on usage errors, 0 on --help
        return int(stop.code or 0)
    if args.workers is not None and args.workers < 1:
        print(f"{parser.prog}: error: --workers must be >= 1", file=sys.stderr)
        return 2
    if not Path(args.src).exists():
        print(f"{parser.prog}: error: {args.src}: no such file or folder", file=sys.stderr)
        return 2
    visits, problems = validate_source(args.src, args.layout, workers=args.workers,
                                       oct_dtype=args.dtype)
    for problem in problems:
        print(problem)
    files = {p.path for p in problems}
    labelled = sum(v.mask is not None for v in visits)
    summary = (f"{len(visits)} visits ({labelled} with mask), {len(problems)} problem(s) in "
               f"{len(files)} file(s)")
    print(("FAILED: " if problems else "OK: ") + summary)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(validate_main())
