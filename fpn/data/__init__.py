"""Data access: the store (``open_store``), datasets, transforms and patient-level splits."""

from fpn.data.store import Store, StoreError, VisitInfo, open_store

__all__ = ["Store", "StoreError", "VisitInfo", "open_store"]
