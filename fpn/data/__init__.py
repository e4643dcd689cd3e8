"""Data access: the store (``open_store``), datasets, transforms and patient-level splits."""

from __future__ import annotations

from typing import Any

__all__ = ["Store", "StoreError", "VisitInfo", "open_store"]


def __getattr__(name: str) -> Any:
    # lazy, so that inference-only code (fpn.data.transforms) does not need zarr installed
    if name in __all__:
        from fpn.data import store

        return getattr(store, name)
    raise AttributeError(name)
