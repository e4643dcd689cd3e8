"""Logging the k-best ensemble as an MLflow pyfunc model (loadable without arbitrary pickle)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["PIP_REQUIREMENTS", "log_ensemble_model"]

# Explicit, installable pins: MLflow's inference is slow and writes an uninstallable "+cpu" pin.
PIP_REQUIREMENTS = [
    "torch==2.13.0", "numpy", "monai", "torchmetrics", "pydantic>=2", "pyyaml", "zarr>=3",
    "scipy", "matplotlib",
]


def log_ensemble_model(tracking_uri: str, run_id: str, member_files: Sequence[str | Path],
                       shape: tuple[int, int, int], name: str = "model") -> str:
    """Log the members as the pyfunc ``name`` of ``run_id``; returns the model URI."""
    import mlflow

    import fpn
    from fpn.inference import MODEL_FILE

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
                pip_requirements=PIP_REQUIREMENTS,
            )
    return info.model_uri
