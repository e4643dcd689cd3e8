"""The two source layouts a user can convert from, turned into :class:`VisitSource` records.

- ``reference``: the published method's folder tree (``data_info.json``, ``split.json``,
  ``<patient>_<Position>/<DayInStudy>/bscan_flat.<FileSetId>.npy`` ...).
- ``manifest``: a CSV naming each visit's files (any supported format).

Discovery only reads the declarations (JSON, CSV); the image files are read by
:func:`load_visit` / :func:`check_visit`.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from data_prep.sources import Problem, VisitSource
from data_prep.visit_files import check_visit, load_visit

__all__ = ["LAYOUTS", "SPLIT_PARTS", "check_visit", "discover", "load_visit", "split_origin"]

LAYOUTS = ("reference", "manifest")
SPLIT_PARTS = ("train", "val", "test")
MANIFEST_NAME = "manifest.csv"
MANIFEST_REQUIRED = ("patient_id", "eye", "day", "oct")
MANIFEST_OPTIONAL = ("faf", "slo", "mask", "spacing_s", "spacing_d", "spacing_w", "split")
_MANIFEST_SPLITS = (*SPLIT_PARTS, "unlabelled")
_EYES = ("OD", "OS")

Split = dict[str, list[str]]


def discover(src: str | Path, layout: str) -> tuple[list[VisitSource], list[Problem], Split | None]:
    """List the visits of a source.

    Args:
        src: reference: the root folder (with ``data_info.json`` and ``split.json``); manifest:
            the CSV file, or a folder holding ``manifest.csv``.
        layout: ``"reference"`` or ``"manifest"``.

    Returns:
        ``(visits, problems, split)``: the visits declared; the problems found in the
        declarations (missing/invalid JSON or CSV, bad rows); the source's split
        ``{"train": [...], "val": [...], "test": [...]}`` of patient ids (a manifest may add
        ``"unlabelled"``) or ``None`` when the source has none. ``VisitSource.split`` is the
        patient's part, ``None`` for patients outside the split.

    Raises:
        ValueError: unknown layout name.
    """
    if layout == "reference":
        return _discover_reference(Path(src))
    if layout == "manifest":
        return _discover_manifest(Path(src))
    raise ValueError(f"unknown layout {layout!r}; expected one of {', '.join(LAYOUTS)}")


def split_origin(src: str | Path, layout: str) -> str:
    """The file that declares a source's split (for problem messages)."""
    path = Path(src)
    if layout == "reference":
        return str(path / "split.json")
    return str(path / MANIFEST_NAME if path.is_dir() else path)


# --- reference layout --------------------------------------------------------------------------

def _load_json(path: Path, what: str, problems: list[Problem]) -> Any:
    if not path.is_file():
        problems.append(Problem(str(path), f"file not found (the reference layout needs {what})"))
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        problems.append(Problem(str(path), f"not valid JSON ({err})"))
        return None


def _read_split_json(path: Path, problems: list[Problem]) -> Split | None:
    raw = _load_json(path, "split.json with the train/val/test patient ids", problems)
    if raw is None:
        return None
    if not isinstance(raw, dict):
        problems.append(Problem(str(path), "expected an object {\"train\": [...], \"val\": [...], "
                                           "\"test\": [...]}"))
        return None
    split: Split = {part: [] for part in SPLIT_PARTS}
    for part, patients in raw.items():
        if part not in SPLIT_PARTS:
            problems.append(Problem(str(path), f"unknown split part {part!r} (expected "
                                               f"{', '.join(SPLIT_PARTS)})"))
            continue
        if not isinstance(patients, list):
            problems.append(Problem(str(path), f"split part {part!r} must be a list of patient ids"))
            continue
        split[part] = [str(p) for p in patients]
    return split


def _discover_reference(root: Path) -> tuple[list[VisitSource], list[Problem], Split | None]:
    problems: list[Problem] = []
    if not root.is_dir():
        return [], [Problem(str(root), "not a folder (the reference layout is a folder with "
                                       "data_info.json and split.json)")], None
    info_path = root / "data_info.json"
    info = _load_json(info_path, "data_info.json listing the visits", problems)
    split = _read_split_json(root / "split.json", problems)
    if info is None:
        return [], problems, split
    if not isinstance(info, dict):
        problems.append(Problem(str(info_path), "expected an object {patient_id: [visits]}"))
        return [], problems, split

    part_of: dict[str, str] = {}
    for part in SPLIT_PARTS:  # first part wins; validate reports a patient in two parts
        for patient in (split or {}).get(part, []):
            part_of.setdefault(patient, part)

    visits: list[VisitSource] = []
    for patient, entries in info.items():
        patient = str(patient)
        if not isinstance(entries, list):
            problems.append(Problem(str(info_path), f"patient {patient}: expected a list of visits"))
            continue
        for index, entry in enumerate(entries):
            visit = _reference_visit(root, info_path, patient, index, entry, part_of, problems)
            if visit is not None:
                visits.append(visit)

    if split is not None:
        declared = {str(p) for p in info}
        for part in SPLIT_PARTS:
            for patient in split[part]:
                if patient not in declared:
                    problems.append(Problem(str(root / "split.json"),
                                            f"patient {patient} ({part}) is not in data_info.json"))
    if not visits and not problems:
        problems.append(Problem(str(info_path), "no visits found"))
    return visits, problems, split


def _reference_visit(root: Path, info_path: Path, patient: str, index: int, entry: Any,
                     part_of: dict[str, str], problems: list[Problem]) -> VisitSource | None:
    where = f"patient {patient}, visit {index}"
    if not isinstance(entry, dict):
        problems.append(Problem(str(info_path), f"{where}: expected an object with FileSetId, "
                                                "Position, DayInStudy"))
        return None
    missing = [k for k in ("FileSetId", "Position", "DayInStudy") if k not in entry]
    if missing:
        problems.append(Problem(str(info_path), f"{where}: missing {', '.join(missing)}"))
        return None
    position, day_text, file_set = str(entry["Position"]), str(entry["DayInStudy"]), \
        str(entry["FileSetId"])
    eye = position.strip().upper()
    day = _parse_day(day_text)
    if eye not in _EYES:
        problems.append(Problem(str(info_path), f"{where}: Position {position!r} is not OD or OS"))
        return None
    if day is None:
        problems.append(Problem(str(info_path), f"{where}: DayInStudy {day_text!r} is not an "
                                                "integer"))
        return None
    folder = root / f"{patient}_{position}" / day_text
    images = folder / "preprocessed_images"

    def optional(name: str) -> str | None:
        path = images / f"bscan_size.{name}.{file_set}.png"
        return str(path) if path.exists() else None

    return VisitSource(
        patient_id=patient, eye=eye, day=day,
        oct=str(folder / f"bscan_flat.{file_set}.npy"),
        faf=optional("faf"), slo=optional("slo"), mask=optional("mask_faf"),
        spacing_file=str(folder / f"spacing.{file_set}.npy"),
        split=part_of.get(patient), origin=str(info_path))


def _parse_day(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        try:
            value = float(text)
        except ValueError:
            return None
        return int(value) if value.is_integer() else None


# --- manifest layout ---------------------------------------------------------------------------

def _discover_manifest(src: Path) -> tuple[list[VisitSource], list[Problem], Split | None]:
    csv_path = src / MANIFEST_NAME if src.is_dir() else src
    if not csv_path.is_file():
        return [], [Problem(str(csv_path), "file not found (the manifest layout needs a CSV with "
                                           "columns " + ", ".join(MANIFEST_REQUIRED) + ", ...)")], None
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as fh:
            table = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        return [], [Problem(str(csv_path), f"unreadable CSV ({err})")], None
    if not table:
        return [], [Problem(str(csv_path), "empty CSV: no header row")], None
    header = [name.strip().lower() for name in table[0]]
    rows = [[value.strip() for value in row] for row in table[1:]]

    problems: list[Problem] = []
    missing = [c for c in MANIFEST_REQUIRED if c not in header]
    if missing:
        return [], [Problem(str(csv_path), f"missing column(s): {', '.join(missing)}")], None
    has_spacing = [c in header for c in ("spacing_s", "spacing_d", "spacing_w")]
    if any(has_spacing) and not all(has_spacing):
        problems.append(Problem(str(csv_path), "spacing columns must come together: spacing_s, "
                                               "spacing_d, spacing_w"))

    visits: list[VisitSource] = []
    for line, values in enumerate(rows, start=2):  # line 1 is the header
        record = {name: (values[i] if i < len(values) else "") for i, name in enumerate(header)}
        if not any(record.values()):
            continue  # blank line
        visit = _manifest_visit(csv_path, line, record, all(has_spacing), problems)
        if visit is not None:
            visits.append(visit)

    split: Split | None = None
    if "split" in header and any(v.split for v in visits):
        split = {part: [] for part in SPLIT_PARTS}
        for v in visits:
            if v.split and v.patient_id not in split.setdefault(v.split, []):
                split[v.split].append(v.patient_id)
        split = {part: sorted(patients) for part, patients in split.items()}
    if not visits and not problems:
        problems.append(Problem(str(csv_path), "no visits found"))
    return visits, problems, split


def _manifest_visit(csv_path: Path, line: int, record: dict[str, str], spacing_columns: bool,
                    problems: list[Problem]) -> VisitSource | None:
    def bad(message: str) -> None:
        problems.append(Problem(str(csv_path), f"row {line}: {message}"))

    patient, eye_text, day_text, oct_text = (record.get(c, "") for c in MANIFEST_REQUIRED)
    if not patient:
        bad("empty patient_id")
        return None
    eye = eye_text.upper()
    if eye not in _EYES:
        bad(f"eye {eye_text!r} is not OD or OS")
        return None
    day = _parse_day(day_text)
    if day is None:
        bad(f"day {day_text!r} is not an integer")
        return None
    if not oct_text:
        bad("empty oct path")
        return None

    def resolve(text: str) -> str | None:
        if not text:
            return None
        path = Path(text).expanduser()
        return str(path if path.is_absolute() else csv_path.parent / path)

    spacing = None
    if spacing_columns:
        texts = [record.get(c, "") for c in ("spacing_s", "spacing_d", "spacing_w")]
        if any(texts):
            if not all(texts):
                bad("spacing_s, spacing_d, spacing_w must be all given or all empty")
                return None
            try:
                spacing = (float(texts[0]), float(texts[1]), float(texts[2]))
            except ValueError:
                bad(f"spacing {texts} is not numeric")
                return None

    part = record.get("split", "").lower() or None
    if part is not None and part not in _MANIFEST_SPLITS:
        bad(f"split {part!r} is not one of {', '.join(_MANIFEST_SPLITS)}")
        part = None

    return VisitSource(
        patient_id=patient, eye=eye, day=day, oct=resolve(oct_text) or "",
        faf=resolve(record.get("faf", "")), slo=resolve(record.get("slo", "")),
        mask=resolve(record.get("mask", "")), spacing_mm=spacing, split=part,
        origin=str(csv_path))
