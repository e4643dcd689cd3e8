"""Look at a store: ``preview`` draws one visit to a PNG, ``summary`` prints what the store holds.

    python -m data_prep preview STORE [--visit KEY] --out visit.png
    python -m data_prep summary STORE
"""

from __future__ import annotations

import argparse
import os
import sys
import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np

from data_prep.convert import parse_storage_options
from fpn.data.store import SPLIT_PARTS, Store, StoreError, is_local_location, open_store

__all__ = ["draw_preview", "preview_main", "store_size_bytes", "store_summary", "summary_main"]


def _mask_runs(row: np.ndarray) -> list[tuple[int, int]]:
    """``(start, stop)`` index runs where a 1-D 0/1 row is set."""
    padded = np.concatenate([[0], (row > 0).astype(np.int8), [0]])
    edges = np.flatnonzero(np.diff(padded))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist()))


def draw_preview(store: Store, key: str, out: str) -> str:
    """Draw one visit and write it as a PNG (temporary name, then rename).

    Panels: the central B-scan ``(D, W)`` with the mask's extent along W marked under it; the
    en-face OCT projection (mean over depth, ``(S, W)``); each en-face image (FAF, SLO) with the
    mask outline. En-face panels use the physical aspect ratio (``spacing_s / spacing_w``) and mark
    the central B-scan's row.

    Returns:
        The path written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    info = store.visit(key)
    s_count, d_count, w_count = info.shape
    spacing_s, spacing_d, spacing_w = info.spacing_mm
    centre = s_count // 2
    oct_volume = store.read(key, "oct")
    mask = store.read(key, "mask") if "mask" in info.has else None
    enface = [(name, store.read(key, name)) for name in ("faf", "slo") if name in info.has]

    panels = 2 + len(enface)
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 4.4), squeeze=False)
    axes = axes[0]

    bscan = axes[0]
    # Depth is ~0.5 mm against ~6 mm of width: a physical aspect would flatten the B-scan to a
    # line, so it fills the panel instead (as OCT viewers do).
    bscan.imshow(oct_volume[centre], cmap="gray", aspect="auto", interpolation="nearest")
    bscan.set_title(f"B-scan {centre} of {s_count}")
    bscan.set_xlabel("A-scan (W)")
    bscan.set_ylabel("depth (D)")
    if mask is not None:
        for start, stop in _mask_runs(mask[centre]):
            bscan.axvspan(start - 0.5, stop - 0.5, ymin=0.0, ymax=0.04, color="red", alpha=0.9)
            bscan.axvspan(start - 0.5, stop - 0.5, color="red", alpha=0.12)

    def enface_panel(ax: Any, image: np.ndarray, title: str) -> None:
        ax.imshow(image, cmap="gray", aspect=spacing_s / spacing_w, interpolation="nearest")
        if mask is not None and mask.any() and min(mask.shape) > 1:
            ax.contour(mask, levels=[0.5], colors="red", linewidths=1.0)
        ax.axhline(centre, color="yellow", linewidth=0.8, linestyle="--")
        ax.set_title(title)
        ax.set_xlabel("A-scan (W)")
        ax.set_ylabel("B-scan (S)")

    enface_panel(axes[1], oct_volume.mean(axis=1), "OCT en-face (mean over depth)")
    for ax, (name, image) in zip(axes[2:], enface):
        enface_panel(ax, image, f"{name.upper()} + mask outline" if mask is not None
                     else name.upper())

    label = "labelled" if mask is not None else "unlabelled"
    fig.suptitle(f"{key}  ({info.split}, {label}; {s_count}x{d_count}x{w_count}, "
                 f"spacing {spacing_s:.4g}/{spacing_d:.4g}/{spacing_w:.4g} mm)")
    fig.tight_layout()
    out = os.fspath(out)
    directory = os.path.dirname(os.path.abspath(out))
    os.makedirs(directory, exist_ok=True)
    staging = os.path.join(directory, f".{os.path.basename(out)}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        fig.savefig(staging, format="png", dpi=100)
        os.replace(staging, out)
    finally:
        plt.close(fig)
        if os.path.exists(staging):
            os.remove(staging)
    return out


def store_size_bytes(store: Store) -> int:
    """Bytes the store takes on its filesystem (local path or fsspec URL)."""
    if is_local_location(store.location):
        return sum(os.path.getsize(os.path.join(root, name))
                   for root, _, files in os.walk(store.location) for name in files)
    import fsspec

    fs, path = fsspec.core.url_to_fs(store.location, **store.storage_options)
    return int(fs.du(path, total=True))


def _human(n_bytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n_bytes < 1024 or unit == "TiB":
            return f"{n_bytes:.1f} {unit}" if unit != "B" else f"{int(n_bytes)} B"
        n_bytes /= 1024
    return f"{n_bytes:.1f} TiB"


def store_summary(store: Store) -> str:
    """A human-readable description: path, version, fingerprint, split, visits, shapes, size."""
    visits = store.visits
    labelled = sum(v.labelled for v in visits)
    shapes = sorted({v.shape for v in visits})
    shape_text = ", ".join("x".join(map(str, s)) for s in shapes[:6])
    if len(shapes) > 6:
        shape_text += f", ... ({len(shapes)} shapes)"
    chunks = "-"
    stored_dtype = store.oct_dtype or "-"
    if visits:
        first = store.array(visits[0].key, "oct")
        chunks = "x".join(map(str, first.chunks))
        stored_dtype = str(first.dtype)
    arrays = {name: sum(name in v.has for v in visits) for name in ("faf", "slo", "mask")}
    lines = [
        f"store        {store.location}",
        f"format       fpn store v{store.format_version}",
        f"fingerprint  {store.fingerprint}",
        f"split        ({store.split_source or '-'}) " + ", ".join(
            f"{part} {len(store.split.get(part, []))}" for part in SPLIT_PARTS) + " patients",
        f"patients     {len(store.patients)}",
        f"visits       {len(visits)} ({labelled} labelled, {len(visits) - labelled} unlabelled); "
        + ", ".join(f"{name} {count}" for name, count in arrays.items()),
        f"oct shapes   {shape_text or '-'}  (S x D x W)",
        f"oct dtype    {stored_dtype}",
        f"oct chunks   {chunks}",
        f"size         {_human(store_size_bytes(store))}",
    ]
    if store.conversion and not store.conversion.get("complete", True):
        lines.append("warning      the last conversion did not finish; failed: "
                     + (", ".join(store.conversion.get("failed", [])) or "?"))
    return "\n".join(lines)


def _default_visit(store: Store) -> str:
    labelled = [v for v in store.visits if v.labelled]
    chosen = labelled or store.visits
    if not chosen:
        raise StoreError(f"{store.location}: the store has no visits")
    return chosen[0].key


def preview_main(argv: Sequence[str] | None = None) -> int:
    """CLI: draw one visit (default: the first labelled one) to a PNG."""
    parser = argparse.ArgumentParser(prog="python -m data_prep preview",
                                     description="Draw one visit of a store to a PNG.")
    parser.add_argument("store", help="store location (local path or fsspec URL)")
    parser.add_argument("--visit", default=None, help="visit key (default: first labelled visit)")
    parser.add_argument("--out", required=True, help="PNG file to write")
    parser.add_argument("--storage-option", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    try:
        storage_options = parse_storage_options(args.storage_option)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        store = open_store(args.store, storage_options)
        key = args.visit or _default_visit(store)
        path = draw_preview(store, key, args.out)
    except (StoreError, OSError) as exc:
        print(f"preview: {exc}", file=sys.stderr)
        return 1
    print(f"preview: visit {key} -> {path}")
    return 0


def summary_main(argv: Sequence[str] | None = None) -> int:
    """CLI: print the store summary."""
    parser = argparse.ArgumentParser(prog="python -m data_prep summary",
                                     description="Print what a store holds.")
    parser.add_argument("store", help="store location (local path or fsspec URL)")
    parser.add_argument("--storage-option", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    try:
        storage_options = parse_storage_options(args.storage_option)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        print(store_summary(open_store(args.store, storage_options)))
    except (StoreError, OSError) as exc:
        print(f"summary: {exc}", file=sys.stderr)
        return 1
    return 0
