"""Writing a figure: the one way every plot of the project reaches disk.

Training overlays and learning curves, the growth and Bland-Altman plots, the tables' plots:
each is saved through :func:`save_figure`, whole or not at all (:func:`fpn.storage.atomic_file`),
and its figure closed (matplotlib keeps every open figure in memory).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fpn.storage.locations import atomic_file

__all__ = ["save_figure"]


def save_figure(fig: Any, path: str | Path, *, dpi: int = 110, **savefig: Any) -> Path:
    """Save ``fig`` to ``path`` (the format from its suffix) atomically, then close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    try:
        with atomic_file(path) as tmp:
            fig.savefig(tmp, dpi=dpi, **savefig)
    finally:
        plt.close(fig)
    return path
