"""The one way fpn reaches Ray: :func:`connect_ray`, called before any other Ray call.

``ray.init()`` without an address (and any Ray call that initialises Ray implicitly, such as
``ray.put``) joins whatever cluster ``ray start`` last recorded on this machine, and when that
cluster is gone waits forever for its GCS. Every entry point (``python -m fpn pretrain|finetune``,
the search, the paper table, the benchmarks) therefore connects through :func:`connect_ray`:
``RAY_ADDRESS`` when it is set (a cluster the user named), otherwise a fresh local instance
(``address="local"``), never the stale recorded cluster.

A local instance also pins Ray's own helpers inside the job to itself. Ray Train's
placement-group cleaner asks the state API whether the run's controller is alive, and finds "the"
API server by auto-detection: with several Ray instances on the machine that is the cluster
``ray start`` last recorded, not this instance, which does not know the controller, so the
cleaner removes the run's placement group and the run dies. The job's runtime environment
therefore carries ``RAY_API_SERVER_ADDRESS`` of this instance's own dashboard.

It also turns Ray Train's preemption watcher off (``RAY_TRAIN_ENABLE_PREEMPTION_WATCHER=0``, Ray's
own switch): the watcher is one more actor process per training run that polls whether a node is
being drained, and a local instance is one node that no autoscaler drains. It cost 6 s of CPU
per short run, a quarter of the run (``benchmarks/train_run_cost.py``). On a cluster
(``RAY_ADDRESS``) it stays on.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["LOCAL_TRAIN_ENV", "connect_ray"]

#: Ray Train settings of a local instance (its jobs' runtime environment)
LOCAL_TRAIN_ENV = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}


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
    port = init_kwargs.pop("dashboard_port", None) or _free_port()
    runtime_env = dict(init_kwargs.pop("runtime_env", None) or {})
    runtime_env["env_vars"] = {"RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{port}",
                               **LOCAL_TRAIN_ENV, **runtime_env.get("env_vars", {})}
    init_kwargs.setdefault("dashboard_host", "127.0.0.1")
    ray.init(address="local", num_cpus=num_cpus, dashboard_port=port, runtime_env=runtime_env,
             **init_kwargs)
    return "local"


def _free_port() -> int:
    import socket

    with socket.socket() as sock:  # another Ray instance on this machine may hold 8265
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
