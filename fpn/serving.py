"""Logging the k-best ensemble as an MLflow pyfunc model (loadable without arbitrary pickle).

The pyfunc (``fpn/pyfunc_model.py``) takes one volume ``(S, D, W)`` or a batch ``(B, S, D, W)``;
it is logged without an inferred signature (a tensor schema fixes one rank, and inferring it runs
the model) and checks its input itself: rank, finite values, at most ``max_voxels`` voxels.
The size limit bounds what the model computes and holds; ``mlflow models serve`` has parsed the
request body by then, so a server open to untrusted clients also wants a body-size limit in the
reverse proxy in front of it (e.g. nginx ``client_max_body_size``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["DEFAULT_MAX_VOXELS", "MAX_VOXELS_ENV", "PIP_REQUIREMENTS", "checked_input",
           "log_ensemble_model", "max_voxels_from"]

# Explicit, installable pins: MLflow's inference is slow and writes an uninstallable "+cpu" pin.
PIP_REQUIREMENTS = [
    "torch==2.13.0", "numpy", "pydantic>=2", "pyyaml", "zarr>=3",
    "scipy", "matplotlib",
]

#: the request size limit unless configured: 2**26 voxels (256 MiB as float32), more than one
#: large Spectralis volume (97 x 496 x 1024 = 49 M voxels)
DEFAULT_MAX_VOXELS = 2**26
MAX_VOXELS_ENV = "FPN_SERVING_MAX_VOXELS"


def _refuse(message: str) -> Exception:
    """MLflow's INVALID_PARAMETER_VALUE: ``mlflow models serve`` answers it with HTTP 400."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def max_voxels_from(config: dict | None) -> int:
    """The size limit: ``$FPN_SERVING_MAX_VOXELS``, else ``config['max_voxels']``, else the default."""
    raw = os.environ.get(MAX_VOXELS_ENV) or (config or {}).get("max_voxels") or DEFAULT_MAX_VOXELS
    try:
        limit = int(raw)
    except (TypeError, ValueError):
        limit = 0
    if limit < 1:
        raise ValueError(f"{MAX_VOXELS_ENV} / max_voxels must be a positive integer, got {raw!r}")
    return limit


def checked_input(model_input, max_voxels: int) -> np.ndarray:
    """``model_input`` as float32 ``(S, D, W)`` or ``(B, S, D, W)``, or an MlflowException."""
    raw = model_input.to_numpy() if hasattr(model_input, "to_numpy") else model_input
    try:
        shape = np.shape(raw)
    except ValueError:
        raise _refuse("input is ragged: every volume of a batch must have the same (S, D, W) "
                      "and every B-scan the same (D, W)") from None
    if len(shape) not in (3, 4):
        raise _refuse(f"expected one OCT volume (S, D, W) or a batch (B, S, D, W), got shape "
                      f"{shape}")
    size = int(np.prod(shape, dtype=np.int64))
    if size > max_voxels:
        raise _refuse(f"request of {size} voxels (shape {shape}) exceeds the limit of "
                      f"{max_voxels} voxels; send fewer volumes per request, or raise "
                      f"{MAX_VOXELS_ENV} on the server")
    if size == 0:
        raise _refuse(f"empty input of shape {shape}")
    try:
        x = np.asarray(raw, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise _refuse(f"input must be numbers (OCT intensities): {exc}") from None
    finite = np.isfinite(x)
    if not finite.all():
        bad = np.argwhere(~finite)
        where = tuple(int(i) for i in bad[0])
        what = "volume" if x.ndim == 3 else f"volume {where[0]} of the batch"
        raise _refuse(f"input has {len(bad)} non-finite voxels (NaN or inf) in {what}, the "
                      f"first at index {where}; fill or mask them before the request")
    return x


def log_ensemble_model(tracking_uri: str, run_id: str, member_files: Sequence[str | Path],
                       shape: tuple[int, int, int], name: str = "model",
                       max_voxels: int | None = None) -> str:
    """Log the members as the pyfunc ``name`` of ``run_id``; returns the model URI.

    ``shape`` is the ``(S, D, W)`` of the saved input example; ``max_voxels`` the request size
    limit recorded in the model's config (default :data:`DEFAULT_MAX_VOXELS`; the
    serving machine may override it with ``FPN_SERVING_MAX_VOXELS``).
    """
    import mlflow

    import fpn
    from fpn.storage import MODEL_FILE

    mlflow.set_tracking_uri(tracking_uri)
    example = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        members = Path(tmp) / "members"
        for i, f in enumerate(member_files):
            (members / f"{i:02d}").mkdir(parents=True)
            shutil.copy2(f, members / f"{i:02d}" / MODEL_FILE)
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pyfunc.log_model(
                name=name,
                python_model=str(Path(__file__).with_name("pyfunc_model.py")),
                artifacts={"members": str(members)},
                code_paths=[str(Path(fpn.__file__).parent)],
                input_example=example,
                signature=False,  # both ranks are valid input; the pyfunc checks it
                model_config={"max_voxels": int(max_voxels or DEFAULT_MAX_VOXELS)},
                pip_requirements=PIP_REQUIREMENTS,
            )
    return info.model_uri
