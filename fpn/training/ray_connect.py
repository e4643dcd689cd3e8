"""The one way fpn reaches Ray: :func:`connect_ray`, called before any other Ray call.

``ray.init()`` without an address (and any Ray call that initialises Ray implicitly, such as
``ray.put``) joins whatever cluster ``ray start`` last recorded on this machine, and when that
cluster is gone waits forever for its GCS. Every entry point (``python -m fpn pretrain|finetune``,
the search, the paper table, the benchmarks) therefore connects through :func:`connect_ray`:
``RAY_ADDRESS`` when it is set (a cluster the user named), otherwise a fresh local instance
(``address="local"``), never the stale recorded cluster.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["connect_ray"]


def connect_ray(num_cpus: int | None = None, **init_kwargs: Any) -> str:
    """Connect to ``RAY_ADDRESS`` when set, else start a local Ray; nothing when already connected.

    Args:
        num_cpus: CPUs of a local instance (ignored when joining a cluster); ``None``: all.
        init_kwargs: more ``ray.init`` arguments (``log_to_driver``, ``include_dashboard``, ...).

    Returns:
        ``"existing"``, ``"cluster"`` or ``"local"``: what happened.
    """
    import ray

    if ray.is_initialized():
        return "existing"
    init_kwargs.setdefault("log_to_driver", True)
    address = os.environ.get("RAY_ADDRESS", "").strip()
    if address:
        ray.init(address=address, **init_kwargs)
        return "cluster"
    # the dashboard stays on: it serves the state API that Ray Train polls
    ray.init(address="local", num_cpus=num_cpus, **init_kwargs)
    return "local"
