"""``python -m data_prep convert SRC OUT``: turn a source folder into an fpn store with Ray tasks.

Steps:
1. validate the source with the same checks as ``validate`` and refuse on any problem (exit 1,
   nothing written) unless ``--skip-invalid``, which converts the rest and lists what it skipped;
2. take the store's writer lease (``<store>/writer.lease``, :mod:`fpn.storage.lease`): a second
   writer is refused (exit 2, naming the holder) while this one runs, so no run's clean-up can
   delete another's visits or staging folders;
3. create (or reopen) the store root; refuse (exit 2) when the store holds visits of another
   source that this one would remove or replace, unless ``--overwrite``; say which visits are
   removed or replaced (also when the store's own source changed: the store mirrors it);
4. run one Ray task per visit: hash the source files, skip the visit when it is already stored
   complete from identical sources and settings, else load and write it
   (:func:`data_prep.store_writer.write_visit`);
5. write the root index (visits, split, fingerprint) last, then remove groups not in it; release
   the lease.

Ray: a local instance (``ray.init(num_cpus=...)``) unless ``RAY_ADDRESS`` names a cluster or Ray is
already initialised. ``memory://`` stores live in one process, so they are written in the driver.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from tqdm import tqdm

from data_prep.sources import Problem, VisitSource
from data_prep.store_writer import (
    DEFAULT_OCT_CHUNKS,
    FAULT_ENV,
    OCT_DTYPES,
    Encoding,
    existing_visit,
    hash_sources,
    init_store,
    lease_location,
    remove_unindexed,
    write_index,
    write_visit,
)
from fpn.data.store import StoreError, is_local_location, open_zarr_group
from fpn.storage.lease import Lease, LeaseError, LeaseHeld, LeaseLost, LeaseOwner

__all__ = ["ConvertStats", "OverwriteRefused", "convert", "convert_main", "parse_storage_options",
           "patient_split"]

LAYOUTS = ("reference", "manifest")
DEFAULT_FRACTIONS = (0.6, 0.2, 0.2)
# A writer whose heartbeat is older than this is presumed dead; its lease can be taken over.
DEFAULT_LEASE_TTL_S = 120.0
# Tests of concurrent writers: after taking the lease, wait until this file exists (at most 120 s).
HOLD_ENV = "FPN_CONVERT_HOLD_LEASE_UNTIL"


class OverwriteRefused(StoreError):
    """The store holds visits of another source that this conversion would remove or replace."""


@dataclass
class ConvertStats:
    """What a conversion did.

    Attributes:
        location: the store written.
        written: keys of visits written in this run.
        unchanged: keys of visits already stored from identical sources (skipped).
        failed: ``{key: message}`` of visits whose task failed (not in the index).
        skipped_invalid: keys of visits left out because validation found problems.
        problems: every validation problem found.
        fingerprint: the store fingerprint after the run (None when nothing was written).
        removed: visit groups or debris removed because they are not in the new index.
        dropped: visits the store held that this source does not produce (removed; needs
            ``overwrite`` when the store came from another source).
        replaced: visits the store held from other source files (rewritten; needs
            ``overwrite`` when the store came from another source).
        notes: warnings for the user (e.g. no writer lease on this kind of location).
    """

    location: str
    written: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    skipped_invalid: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    fingerprint: str | None = None
    removed: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.fingerprint is not None and not self.failed

    def summary_line(self) -> str:
        return (f"convert: {len(self.written)} visit(s) written, {len(self.unchanged)} unchanged "
                f"(skipped), {len(self.failed)} failed, {len(self.skipped_invalid)} invalid "
                f"(skipped); fingerprint {self.fingerprint or '-'}; store {self.location}")


# -- split ----------------------------------------------------------------------------------------
def _counts(n: int, fractions: Sequence[float]) -> list[int]:
    """Largest-remainder counts summing to ``n``; every part with a positive fraction gets at least
    one patient when there are enough patients."""
    raw = [f * n for f in fractions]
    counts = [int(x) for x in raw]
    order = sorted(range(len(raw)), key=lambda i: (-(raw[i] - counts[i]), i))
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    positive = [i for i, f in enumerate(fractions) if f > 0]
    if n >= len(positive):
        for i in positive:
            if counts[i] == 0:
                donor = max(range(len(counts)), key=lambda j: counts[j])
                counts[donor] -= 1
                counts[i] += 1
    return counts


def patient_split(
    labelled: Iterable[str],
    unlabelled: Iterable[str],
    seed: int,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
) -> dict[str, list[str]]:
    """Seeded patient-level split: labelled patients into train/val/test, the rest unlabelled.

    The order is a seeded hash of each patient id, so the split depends only on the seed and the
    set of patients (stable across re-runs, independent of the order visits were found in).

    Args:
        labelled: patients with a mask at one visit at least.
        unlabelled: patients without any mask.
        seed: split seed.
        fractions: train/val/test fractions, non-negative, summing to 1.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"split fractions must be 3 non-negative numbers summing to 1, "
                         f"got {list(fractions)}")
    ordered = sorted(set(labelled), key=lambda p: hashlib.sha256(f"{seed}:{p}".encode()).hexdigest())
    n_train, n_val, _ = _counts(len(ordered), fractions)
    return {
        "train": sorted(ordered[:n_train]),
        "val": sorted(ordered[n_train:n_train + n_val]),
        "test": sorted(ordered[n_train + n_val:]),
        "unlabelled": sorted(set(unlabelled) - set(labelled)),
    }


def _final_split(
    index: dict[str, dict[str, Any]],
    source_split: dict[str, list[str]] | None,
    seed: int,
    fractions: Sequence[float],
) -> tuple[dict[str, list[str]], str]:
    patients = {e["patient_id"] for e in index.values()}
    labelled = {e["patient_id"] for e in index.values() if "mask" in e["has"]}
    if source_split is None:
        return patient_split(labelled, patients - labelled, seed, fractions), f"seeded:{seed}"
    split: dict[str, list[str]] = {"train": [], "val": [], "test": [], "unlabelled": []}
    part_of = {p: part for part in ("train", "val", "test") for p in source_split.get(part, [])}
    for patient in sorted(patients):
        # Patients the split does not name, or without any mask, can only serve pretraining.
        part = part_of.get(patient) if patient in labelled else None
        split[part or "unlabelled"].append(patient)
    return split, "source"


def _source_split(split: Any, visits: list[VisitSource]) -> dict[str, list[str]] | None:
    if split:
        return {str(part): [str(p) for p in patients] for part, patients in dict(split).items()}
    parts: dict[str, list[str]] = {}
    for visit in visits:
        if visit.split is not None:
            parts.setdefault(visit.split, []).append(visit.patient_id)
    return parts or None


# -- one visit (runs inside a Ray task) ------------------------------------------------------------
def convert_visit(
    source: VisitSource,
    location: str,
    encoding: Encoding,
    storage_options: dict[str, Any] | None = None,
    fail_after_first_array: bool = False,
    hashed: tuple[dict[str, dict[str, str]], str] | None = None,
) -> tuple[str, str, dict[str, Any]]:
    """Convert one visit unless it is already stored from identical sources.

    Args:
        hashed: :func:`hash_sources` of ``source`` when the driver computed it already.

    Returns:
        ``(key, status, index_entry)`` with status ``"written"`` or ``"unchanged"``.
    """
    from data_prep.layouts import load_visit

    sources, source_sha256 = hashed or hash_sources(source)
    entry = existing_visit(location, source.key, source_sha256, encoding, storage_options)
    if entry is not None:
        return source.key, "unchanged", entry
    arrays = load_visit(source)
    entry = write_visit(
        location, source.key, arrays, patient_id=source.patient_id, eye=source.eye,
        day=source.day, sources=sources, source_sha256=source_sha256, encoding=encoding,
        storage_options=storage_options, fail_after_first_array=fail_after_first_array,
    )
    return source.key, "written", entry


def _error_message(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None)  # ray.exceptions.RayTaskError keeps the original
    cause = cause if isinstance(cause, BaseException) else exc
    return f"{type(cause).__name__}: {cause}"


def _run_tasks(
    visits: list[VisitSource],
    location: str,
    encoding: Encoding,
    storage_options: dict[str, Any] | None,
    fault_visit: str | None,
    num_cpus: int | None,
    progress: bool,
    hashed: dict[str, tuple[dict[str, dict[str, str]], str]],
) -> tuple[dict[str, tuple[str, dict[str, Any]]], dict[str, str]]:
    results: dict[str, tuple[str, dict[str, Any]]] = {}
    failed: dict[str, str] = {}
    bar = tqdm(total=len(visits), unit="visit", desc="convert", disable=not progress,
               file=sys.stderr)
    in_driver = not is_local_location(location) and location.startswith("memory://")
    if in_driver:
        for visit in visits:
            try:
                key, status, entry = convert_visit(visit, location, encoding, storage_options,
                                                   visit.key == fault_visit,
                                                   hashed.get(visit.key))
                results[key] = (status, entry)
            except Exception as exc:  # noqa: BLE001 -- one bad visit must not stop the others
                failed[visit.key] = _error_message(exc)
            bar.update(1)
        bar.close()
        return results, failed

    import ray

    started_ray = False
    if not ray.is_initialized():
        if os.environ.get("RAY_ADDRESS"):
            ray.init(log_to_driver=False)
        else:
            ray.init(address="local", num_cpus=num_cpus or os.cpu_count() or 1,
                     include_dashboard=False, log_to_driver=False)
        started_ray = True
    try:
        task = ray.remote(num_cpus=1, max_retries=1)(convert_visit)
        pending = {
            task.remote(v, location, encoding, storage_options, v.key == fault_visit,
                        hashed.get(v.key)): v.key
            for v in visits
        }
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                key = pending.pop(ref)
                try:
                    _, status, entry = ray.get(ref)
                    results[key] = (status, entry)
                except Exception as exc:  # noqa: BLE001 -- RayTaskError wraps any task error
                    failed[key] = _error_message(exc)
                bar.update(1)
    finally:
        bar.close()
        if started_ray:
            ray.shutdown()
    return results, failed


# -- the job ----------------------------------------------------------------------------------------
def _problem_keys(problems: list[Problem], visits: list[VisitSource]) -> set[str]:
    """Keys of the visits a problem names (by key, or by one of the visit's files)."""
    by_path = {os.path.abspath(p): v.key for v in visits for p in v.paths().values()}
    keys = {v.key for v in visits}
    bad = set()
    for problem in problems:
        if problem.visit in keys:
            bad.add(problem.visit)
        elif problem.path and os.path.abspath(problem.path) in by_path:
            bad.add(by_path[os.path.abspath(problem.path)])
    return bad


def _few(keys: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def _source_identity(src: str, layout: str) -> dict[str, str]:
    return {"location": src if "://" in src else os.path.abspath(src), "layout": layout}


def _take_lease(out: str, storage_options: dict[str, Any] | None, ttl_s: float, src: str,
                stats: ConvertStats) -> Lease | None:
    """The store's writer lease, acquired; None (with a note) where no lease can be kept."""
    try:
        lease = Lease(lease_location(out), ttl_s=ttl_s, storage_options=storage_options,
                      owner=LeaseOwner.current(f"data_prep convert {src} {out}"))
    except LeaseError as exc:
        if out.startswith("memory://"):
            return None  # one process's memory: nobody else can write it
        stats.notes.append(f"no writer lease ({exc}); make sure no other convert writes this "
                           "store at the same time")
        return None
    lease.acquire()  # LeaseHeld: another writer is at work
    if lease.took_over is not None:
        stats.notes.append(f"took over the stale writer lease of {lease.took_over.describe()}")
    return lease


def _hold_for_tests() -> None:
    hold = os.environ.get(HOLD_ENV)
    if hold:
        deadline = time.monotonic() + 120
        while not os.path.exists(hold) and time.monotonic() < deadline:
            time.sleep(0.05)


def _conflicts(
    out: str,
    visits: list[VisitSource],
    storage_options: dict[str, Any] | None,
) -> tuple[list[str], list[str], dict[str, Any], dict[str, tuple[dict[str, dict[str, str]], str]]]:
    """What converting ``visits`` into the store would remove or replace.

    Returns:
        ``(dropped, replaced, recorded_source, hashed)``: indexed visits the source does not
        produce; indexed visits whose stored sources differ from the new ones; the store's
        recorded source; :func:`hash_sources` of the visits already in the store (reused by
        the tasks, so no file is hashed twice).
    """
    root = open_zarr_group(out, "r", storage_options)
    old_index: dict[str, Any] = dict(root.attrs.get("visits") or {})
    recorded = dict(root.attrs.get("source") or {})
    by_key = {v.key: v for v in visits}
    dropped = sorted(set(old_index) - set(by_key))
    replaced: list[str] = []
    common = sorted(set(old_index) & set(by_key))
    # hashing is I/O and hashlib, which release the GIL: threads, like validate's reads
    with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1))) as pool:
        hashed = dict(zip(common, pool.map(lambda key: hash_sources(by_key[key]), common)))
    for key in common:
        try:
            stored_sha = root[f"visits/{key}"].attrs.get("source_sha256")
        except KeyError:
            stored_sha = None  # indexed but gone: nothing of it left to lose
        if stored_sha is not None and stored_sha != hashed[key][1]:
            replaced.append(key)
    return dropped, replaced, recorded, hashed


def convert(
    src: str,
    out: str,
    *,
    layout: str = "reference",
    encoding: Encoding | None = None,
    skip_invalid: bool = False,
    seed: int = 0,
    split_fractions: Sequence[float] = DEFAULT_FRACTIONS,
    storage_options: dict[str, Any] | None = None,
    num_cpus: int | None = None,
    progress: bool = True,
    fault_visit: str | None = None,
    overwrite: bool = False,
    lease_ttl_s: float = DEFAULT_LEASE_TTL_S,
) -> ConvertStats:
    """Convert the source folder ``src`` into the store ``out``.

    Args:
        src: source folder in ``layout``.
        out: store location (local path or fsspec URL).
        layout: ``reference`` or ``manifest``.
        encoding: OCT storage dtype, chunking, compression level (default: ``Encoding()``).
        skip_invalid: convert the valid visits when validation finds problems, instead of refusing.
        seed, split_fractions: the seeded patient-level split used when the source has none.
        storage_options: fsspec options for ``out``.
        num_cpus: CPUs of the local Ray instance (default: all); ignored on a cluster.
        progress: show a tqdm progress bar on stderr.
        fault_visit: make this visit's task fail after its first array (tests; also ``$FPN_CONVERT_FAIL_AFTER_FIRST_ARRAY``).
        overwrite: allow removing or replacing visits the store holds from another source (the
            store records its source's location and layout). What is removed or replaced is
            listed on stderr and in ``stats.dropped`` / ``stats.replaced``.
        lease_ttl_s: the writer lease's TTL: a writer silent for longer is presumed dead.

    Returns:
        :class:`ConvertStats`; ``fingerprint`` is None when validation refused the source (then
        nothing was written).

    Raises:
        LeaseHeld: another convert is writing this store (nothing was written).
        OverwriteRefused: the store holds visits of another source that this one would remove
            or replace and ``overwrite`` is False (nothing was written).
        LeaseLost: the lease was taken over mid-run (the index was not written).
    """
    from data_prep.layouts import discover
    from data_prep.validate import validate_source

    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    patient_split([], [], seed, split_fractions)  # checks the fractions before any work
    encoding = encoding or Encoding()
    out = str(out)
    stats = ConvertStats(location=out)
    visits, problems = validate_source(src, layout, oct_dtype=encoding.oct_dtype)
    stats.problems = list(problems)
    if problems:
        bad = _problem_keys(stats.problems, visits)
        if not skip_invalid:
            return stats
        stats.skipped_invalid = sorted(bad)
        visits = [v for v in visits if v.key not in bad]
    if not visits:
        return stats
    _, _, declared_split = discover(src, layout)
    source_split = _source_split(declared_split, visits)

    lease = _take_lease(out, storage_options, lease_ttl_s, src, stats)
    try:
        _hold_for_tests()
        init_store(out, storage_options)
        stats.dropped, stats.replaced, recorded, hashed = _conflicts(out, visits, storage_options)
        if stats.dropped or stats.replaced:
            # The store mirrors its own source (a re-run after editing it follows the edit);
            # content from any other source is only removed or replaced when asked to.
            same_source = recorded == _source_identity(src, layout)
            if not same_source and not overwrite:
                held = f"visits of {recorded['location']}" if recorded.get("location") else \
                    "visits from an unrecorded source"
                raise OverwriteRefused(
                    f"{out} holds {held}; converting {src} would remove {len(stats.dropped)} "
                    f"({_few(stats.dropped) or '-'}) and replace {len(stats.replaced)} "
                    f"({_few(stats.replaced) or '-'}); pass --overwrite to do so")
            why = "the source changed since the last conversion" if same_source else "--overwrite"
            print(f"convert: {why}: removing {len(stats.dropped)} visit(s) from {out}: "
                  f"{', '.join(stats.dropped) or '-'}; replacing {len(stats.replaced)}: "
                  f"{', '.join(stats.replaced) or '-'}", file=sys.stderr)
        fault_visit = fault_visit or os.environ.get(FAULT_ENV) or None
        results, stats.failed = _run_tasks(sorted(visits, key=lambda v: v.key), out, encoding,
                                           storage_options, fault_visit, num_cpus, progress,
                                           hashed)
        index = {key: entry for key, (_, entry) in results.items()}
        stats.written = sorted(k for k, (status, _) in results.items() if status == "written")
        stats.unchanged = sorted(k for k, (status, _) in results.items() if status == "unchanged")
        split, split_source = _final_split(index, source_split, seed, split_fractions)
        if lease is not None:
            lease.check()  # never publish an index (or clean up) without holding the store
        stats.fingerprint = write_index(out, index, split, split_source, encoding,
                                        failed=sorted(stats.failed),
                                        source=_source_identity(src, layout),
                                        storage_options=storage_options)
        if lease is not None:
            lease.check()
        stats.removed = remove_unindexed(out, set(index), storage_options)
    finally:
        if lease is not None:
            lease.release()
    return stats


def parse_storage_options(pairs: Iterable[str]) -> dict[str, Any]:
    """``["k=v", ...]`` -> dict; values are parsed as JSON when they can be (``true``, ``3``)."""
    options: dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise ValueError(f"storage option must be KEY=VALUE, got {pair!r}")
        try:
            options[name] = json.loads(value)
        except json.JSONDecodeError:
            options[name] = value
    return options


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """The ``convert`` argument parser (also used as a subparser by ``python -m data_prep``)."""
    parser = parser or argparse.ArgumentParser(prog="python -m data_prep convert",
                                               description=__doc__.splitlines()[0])
    parser.add_argument("src", help="source folder")
    parser.add_argument("out", help="store location: local path or fsspec URL")
    parser.add_argument("--layout", choices=LAYOUTS, default="reference")
    parser.add_argument("--dtype", choices=OCT_DTYPES, default="float16",
                        help="OCT storage dtype (uint8: linear quantisation, scale/offset attrs)")
    parser.add_argument("--chunks", type=int, nargs=3, metavar=("S", "D", "W"), default=None,
                        help="OCT chunk shape; 0 = full extent of that axis "
                             f"(default {list(DEFAULT_OCT_CHUNKS)}, None = full)")
    parser.add_argument("--skip-invalid", action="store_true",
                        help="convert the valid visits and list the skipped ones")
    parser.add_argument("--seed", type=int, default=0, help="seed of the patient-level split")
    parser.add_argument("--split-fractions", type=float, nargs=3, default=list(DEFAULT_FRACTIONS),
                        metavar=("TRAIN", "VAL", "TEST"))
    parser.add_argument("--storage-option", action="append", default=[], metavar="KEY=VALUE",
                        help="fsspec storage option for OUT (repeatable)")
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray instance")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--overwrite", action="store_true",
                        help="allow removing or replacing visits the store holds from another "
                             "source (lists them)")
    parser.add_argument("--lease-ttl", type=float, default=DEFAULT_LEASE_TTL_S, metavar="SECONDS",
                        help="a writer whose lease heartbeat is older than this is presumed dead "
                             f"and its lease may be taken over (default {DEFAULT_LEASE_TTL_S:g})")
    return parser


def _exit_on_sigterm(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


def convert_main(argv: Sequence[str] | None = None) -> int:
    """CLI entry: 0 = store complete, 1 = invalid source or some visits failed, 2 = usage error,
    store busy (another writer holds the lease) or a different source without ``--overwrite``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        storage_options = parse_storage_options(args.storage_option)
        chunks = tuple(c or None for c in args.chunks) if args.chunks else DEFAULT_OCT_CHUNKS
        encoding = Encoding(oct_dtype=args.dtype, oct_chunks=chunks)  # type: ignore[arg-type]
        patient_split([], [], args.seed, args.split_fractions)
        if args.lease_ttl <= 0:
            raise ValueError(f"--lease-ttl must be positive, got {args.lease_ttl}")
    except ValueError as exc:
        parser.error(str(exc))
    # A scheduler's SIGTERM unwinds like Ctrl-C: Ray is shut down and the writer lease released.
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm) \
        if threading.current_thread() is threading.main_thread() else None
    try:
        stats = convert(
            args.src, args.out, layout=args.layout, encoding=encoding,
            skip_invalid=args.skip_invalid, seed=args.seed, split_fractions=args.split_fractions,
            storage_options=storage_options, num_cpus=args.num_cpus,
            progress=not args.no_progress, overwrite=args.overwrite, lease_ttl_s=args.lease_ttl,
        )
    except LeaseHeld as exc:
        print(f"convert: store busy, nothing written: {exc}", file=sys.stderr)
        return 2
    except OverwriteRefused as exc:
        print(f"convert: refusing, nothing written: {exc}", file=sys.stderr)
        return 2
    except LeaseLost as exc:
        print(f"convert: {exc}; the index was not written (re-run convert)", file=sys.stderr)
        return 1
    except (StoreError, LeaseError, OSError) as exc:
        print(f"convert: {exc}", file=sys.stderr)
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    for note in stats.notes:
        print(f"convert: {note}", file=sys.stderr)
    if stats.problems:
        verb = "skipped" if args.skip_invalid else "refusing to convert"
        print(f"convert: {len(stats.problems)} problem(s) in {args.src}; {verb}:", file=sys.stderr)
        for problem in stats.problems:
            print(f"  {problem}", file=sys.stderr)
        if not args.skip_invalid:
            print("convert: nothing written (fix the problems or pass --skip-invalid)",
                  file=sys.stderr)
            return 1
        print(f"convert: skipped invalid visits: {', '.join(stats.skipped_invalid) or '-'}",
              file=sys.stderr)
    if stats.fingerprint is None:
        print(f"convert: no visits to convert in {args.src}", file=sys.stderr)
        return 1
    for key, message in sorted(stats.failed.items()):
        print(f"convert: visit {key} failed: {message}", file=sys.stderr)
    print(stats.summary_line())
    if stats.failed:
        print("convert: the store lists only the visits that completed; re-run to finish",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(convert_main())
