"""The MLflow pyfunc behind every logged fpn model (MLflow "models from code": no pickle).

Input: one OCT volume ``(S, D, W)`` or a batch ``(B, S, D, W)`` (raw intensities; the model
applies the per-B-scan z-score). Output: the en-face probability map ``(S, W)`` / ``(B, S, W)``,
the mean of the k best checkpoints' sigmoid outputs.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel


class FPNEnsembleModel(PythonModel):
    def load_context(self, context):
        from fpn.inference import MODEL_FILE, Ensemble, load_member_file

        paths = sorted(Path(context.artifacts["members"]).glob(f"*/{MODEL_FILE}"))
        self.ensemble = Ensemble([load_member_file(p) for p in paths])

    def predict(self, context, model_input, params=None):
        x = np.asarray(model_input.to_numpy() if hasattr(model_input, "to_numpy") else model_input,
                       dtype=np.float32)
        if x.ndim == 3:
            return self.ensemble.predict_volume(x)
        if x.ndim == 4:
            return np.stack([self.ensemble.predict_volume(v) for v in x])
        raise ValueError(f"expected (S, D, W) or (B, S, D, W), got shape {x.shape}")


mlflow.models.set_model(FPNEnsembleModel())
