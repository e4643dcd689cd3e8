"""Object storage for real: an S3 endpoint (moto's server, on 127.0.0.1 only) holds the store, the
Ray Train run (checkpoints, ``fpn_run.json``, ``attempts.jsonl``) and the MLflow artifacts.

``data_prep convert`` writes ``s3://fpn-test/store.zarr``; one tiny epoch trains from it with
``storage="s3://fpn-test/runs"``; evaluation and prediction read the ensemble from the s3 run dir.
The endpoint reaches the Ray workers through the driver's forwarded environment
(``fpn.training.driver.FORWARDED_ENV``): the session's Ray was started without it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

pytest.importorskip("s3fs", reason="s3fs is in the 'cloud' extra")
pytest.importorskip("moto.server", reason="moto[server] is in the 'dev' extra")

from tests.conftest import S3_BUCKET as BUCKET


@pytest.fixture(scope="module")
def s3_store(s3_endpoint, synthetic_source, ray_local) -> str:
    """The synthetic source converted straight to the bucket by ``data_prep convert``."""
    from data_prep.convert import convert

    url = f"s3://{BUCKET}/store.zarr"
    # convert's Ray tasks run in workers of the session's Ray, which lacks the endpoint variables:
    # storage_options carry it (what `--storage-option endpoint_url=...` does on the CLI)
    options = {"endpoint_url": s3_endpoint, "key": "testing", "secret": "testing"}
    stats = convert(str(synthetic_source), url, progress=False, storage_options=options)
    assert stats.ok, stats.summary_line()
    return url


def test_store_written_to_s3_reads_back_like_a_local_one(s3_store, synthetic_store):
    import s3fs

    from fpn.data.store import open_store

    remote, local = open_store(s3_store), open_store(str(synthetic_store))
    assert [v.key for v in remote.visits] == [v.key for v in local.visits]
    assert remote.fingerprint == local.fingerprint  # same content, whatever the location
    key = remote.visits[0].key
    np.testing.assert_array_equal(remote.read(key, "oct"), local.read(key, "oct"))
    assert s3fs.S3FileSystem().exists(f"{BUCKET}/store.zarr/zarr.json")


@pytest.fixture(scope="module")
def s3_run(s3_store, ray_local, tmp_path_factory):
    from mlflow.tracking import MlflowClient

    from fpn.config import TrainConfig
    from fpn.training.driver import run_training

    tmp = tmp_path_factory.mktemp("s3run")
    tracking = f"sqlite:///{tmp / 'mlflow.db'}"
    # the experiment's artifacts in the bucket, as `mlflow server --artifacts-destination s3://`
    MlflowClient(tracking).create_experiment("fpn-s3", artifact_location=f"s3://{BUCKET}/mlflow")
    cfg = TrainConfig.model_validate({
        "task": "finetune",
        # the defaults a user gets: loader_workers 2, forked DataLoader workers reading s3://
        "data": {"store": s3_store, "crop": [8, 32], "multiplier": 2},
        "model": {"name": "fpn", "kwargs": {"width": 0.25}},
        "optim": {"lr": 0.01}, "epochs": 1, "batch_size": 2, "workers": 1,
        "threads_per_worker": 1, "storage": f"s3://{BUCKET}/runs", "mlflow": tracking,
        "experiment": "fpn-s3", "run_name": "s3-ft", "log_model": False, "keep_best": 1,
        "overlay_every": 1, "max_failures": 0,
    })
    return cfg, run_training(cfg)


def test_training_checkpoints_and_run_files_land_in_the_bucket(s3_run):
    import s3fs
    from mlflow.tracking import MlflowClient

    cfg, outcome = s3_run
    fs = s3fs.S3FileSystem()
    fs.invalidate_cache()
    assert outcome.run_dir == f"s3://{BUCKET}/runs/s3-ft"
    assert outcome.best_checkpoints and all(
        c.startswith(f"s3://{BUCKET}/runs/s3-ft/") for c in outcome.best_checkpoints)
    assert fs.isfile(outcome.best_checkpoints[0][len("s3://"):] + "/model.pt")
    run_info = json.loads(fs.cat_file(f"{BUCKET}/runs/s3-ft/fpn_run.json"))
    assert run_info["finished"] and run_info["best_checkpoints"] == outcome.best_checkpoints
    attempts = fs.cat_file(f"{BUCKET}/runs/s3-ft/attempts.jsonl").decode().splitlines()
    assert [json.loads(a)["start_epoch"] for a in attempts] == [0]
    # the worker's artifacts (overlays) and the driver's went to s3 through boto3
    client = MlflowClient(cfg.tracking_uri())
    run = client.get_run(outcome.mlflow_run_id)
    assert run.info.artifact_uri.startswith(f"s3://{BUCKET}/mlflow/")
    assert {"config.yaml", "overlays"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
    assert fs.glob(f"{BUCKET}/mlflow/**/overlays/*.png")


def test_rerun_reads_the_finished_marker_from_s3(s3_run):
    from fpn.training.driver import run_training

    cfg, outcome = s3_run
    again = run_training(cfg)  # returns from fpn_run.json in the bucket, trains nothing
    assert again.best_checkpoints == outcome.best_checkpoints
    assert again.mlflow_run_id == outcome.mlflow_run_id


def test_evaluate_and_predict_from_the_s3_run_dir(s3_run, s3_store, tmp_path):
    from fpn.evaluation import evaluate, predict
    from fpn.inference import load_ensemble
    from fpn.storage import resolve_members

    cfg, outcome = s3_run
    with resolve_members(outcome.run_dir) as members:
        assert len(members) == 1 and members[0].is_file()  # downloaded to a local temp dir
        with resolve_members(outcome.best_checkpoints[0]) as best:
            assert best[0].read_bytes() == members[0].read_bytes()
    assert not members[0].exists()  # the download is gone with the block
    with pytest.raises(ValueError, match="no such checkpoint"), resolve_members(
            f"s3://{BUCKET}/runs/not-there"):
        pass
    assert len(load_ensemble(outcome.run_dir)) == 1
    rows = predict(outcome.run_dir, out=str(tmp_path / "pred"), store=s3_store, split="test",
                   tracking_uri=cfg.tracking_uri())
    assert rows and (tmp_path / "pred" / "areas.csv").is_file()
    mask = np.load(tmp_path / "pred" / f"{rows[0]['visit']}_prob.npy")
    assert mask.ndim == 2
    summary = evaluate(outcome.run_dir, s3_store, split="test", out=str(tmp_path / "eval"),
                       tracking_uri=cfg.tracking_uri())
    assert summary["visits"] >= 1 and Path(summary["csv"]).is_file()
    assert summary["mlflow_run_id"] == outcome.mlflow_run_id  # logged to the training's own run
