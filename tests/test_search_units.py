"""Cheap unit tests of the search's pieces: the model reference of an MLflow 3 logged model, the
promotion step's refusal, the search's identity by store, shared pretraining per architecture,
inert knobs and the scratch-vs-pretrained table."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


@pytest.mark.unit
def test_source_run_id_of_an_mlflow3_logged_model(tmp_path):
    """``models:/m-<id>`` (what ``log_model`` returns) is a logged model, not ``NAME/VERSION``:
    its run is the logged model's ``source_run_id`` (it raised "Missing value for required
    parameter 'version'" before)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from fpn.evaluation import _source_run_id

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("e", artifact_location=str(tmp_path / "artifacts"))
    with mlflow.start_run(experiment_id=exp) as run:
        model = mlflow.initialize_logged_model(name="net")
    assert model.model_id.startswith("m-")
    assert _source_run_id(f"models:/{model.model_id}", uri) == run.info.run_id
    assert _source_run_id(f"runs:/{run.info.run_id}/model", uri) == run.info.run_id
    mv = mlflow.register_model(f"models:/{model.model_id}", "ga-fpn")
    assert _source_run_id(f"models:/ga-fpn/{mv.version}", uri) == run.info.run_id
    client_reg = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client_reg.set_registered_model_alias("ga-fpn", "champion", mv.version)
    assert _source_run_id("models:/ga-fpn@champion", uri) == run.info.run_id


@pytest.mark.unit
def test_a_refused_promotion_is_logged_and_the_search_goes_on(tmp_path, capsys):
    """``promote`` raises GateRefused (here: the candidate lacks the gate's metric): the search's
    promote step logs one line and says the promotion was refused, instead of failing."""
    import mlflow

    from fpn.registry import register_version
    from tune.config import load_search_config
    from tune.search import RatioResult, _promote

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    exp = mlflow.create_experiment("e", artifact_location=str(tmp_path / "artifacts"))
    with mlflow.start_run(experiment_id=exp) as run:
        model = mlflow.initialize_logged_model(name="net")
    mv = register_version(uri, "ga-fpn", f"models:/{model.model_id}", run.info.run_id,
                          tags={"ratio": "1"})  # no test_dice, no provenance: the gate refuses
    cfg = load_search_config(None, {"workdir": str(tmp_path), "mlflow": uri})
    result = RatioResult(1.0, "s", "p", 1, model_version=str(mv.version),
                         test={"dice_mean": 0.5})
    decision, refused = _promote(cfg, [result])
    assert refused and "refused" in decision
    assert "refused" in capsys.readouterr().out
