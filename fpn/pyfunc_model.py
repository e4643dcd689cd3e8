"""The MLflow pyfunc behind every logged fpn model (MLflow "models from code": no pickle).

Input: one OCT volume ``(S, D, W)`` or a batch ``(B, S, D, W)`` (raw intensities; the model
applies the per-B-scan z-score). Output: the en-face probability map ``(S, W)`` / ``(B, S, W)``,
the mean of the k best checkpoints' sigmoid outputs.

The model is logged without an input schema (``signature=False``): a tensor schema has one rank,
and both ranks are part of the interface. So the checks (``fpn.serving.checked_input``) run here,
before any computation, and
fail with MLflow's ``INVALID_PARAMETER_VALUE`` (HTTP 400 from ``mlflow models serve``):

- the rank (3 or 4) and a numeric type;
- the size: at most ``max_voxels`` voxels per request (``model_config`` at logging time, default
  ``fpn.serving.DEFAULT_MAX_VOXELS``; the serving machine overrides it with the environment variable
  ``FPN_SERVING_MAX_VOXELS``, or ``mlflow.pyfunc.load_model(..., model_config=...)``);
- every voxel finite: a single NaN would otherwise spread through the per-B-scan z-score to the
  whole output, which would be returned as a success.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel

from fpn.serving import checked_input, max_voxels_from


class FPNEnsembleModel(PythonModel):
    def load_context(self, context):
        from fpn.inference import Ensemble
        from fpn.storage import MODEL_FILE, load_member_file

        paths = sorted(Path(context.artifacts["members"]).glob(f"*/{MODEL_FILE}"))
        self.ensemble = Ensemble([load_member_file(p) for p in paths])
        self.max_voxels = max_voxels_from(getattr(context, "model_config", None))

    # an ndarray hint: MLflow infers no schema from it (both ranks are the interface) and stops
    # warning, at every import, that the hint is missing
    def predict(self, context, model_input: np.ndarray, params=None):
        x = checked_input(model_input, self.max_voxels)
        if x.ndim == 3:
            return self.ensemble.predict_volume(x)
        return np.stack([self.ensemble.predict_volume(v) for v in x])


mlflow.models.set_model(FPNEnsembleModel())
