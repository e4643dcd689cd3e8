"""The logged pyfunc ensemble and a registered version served by `mlflow models serve`.

One model is logged and registered per module (logging is the slow part); the pyfunc is loaded
with ``mlflow.pyfunc.load_model`` exactly as a client does, and the scoring server is the real
one on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch

from tests.processes import free_port

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

SHAPE = (8, 64, 32)  # (S, D, W)
MAX_VOXELS = 3 * 8 * 64 * 32  # a batch of three volumes of SHAPE, no more


@pytest.fixture(scope="module")
def champion(tmp_path_factory) -> tuple[str, str, object]:
    """An (untrained) tiny FPN member logged as the pyfunc ensemble (size limit MAX_VOXELS),
    registered, champion; returns (tracking URI, model URI, the folder)."""
    from fpn.models import create_model
    from fpn.registry import promote, register_version
    from fpn.serving import log_ensemble_model
    from fpn.storage import MODEL_FILE, save_member
    from fpn.tracking import client_for, ensure_experiment

    tmp_path = tmp_path_factory.mktemp("serving")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    torch.manual_seed(0)
    kwargs = {"in_channels": 1, "out_channels": 1, "width": 0.25}
    member = tmp_path / MODEL_FILE
    save_member(member, create_model("fpn", **kwargs).eval(), model_name="fpn",
                model_kwargs=kwargs, target="mask", zscore_eps=1e-6)
    client = client_for(uri)
    cwd = os.getcwd()
    os.chdir(tmp_path)  # the experiment's artifacts land in tmp_path/mlartifacts
    try:
        exp = ensure_experiment(client, "serving", uri)
    finally:
        os.chdir(cwd)
    run_id = client.create_run(exp, run_name="serving").info.run_id
    model_uri = log_ensemble_model(uri, run_id, [member], shape=SHAPE, max_voxels=MAX_VOXELS)
    register_version(uri, "ga-fpn", model_uri, run_id,
                     tags={"test_dice": "0.5", "store_fingerprint": "fp", "test_split": "test",
                           "test_keys_sha": "k"}, description="test model")
    assert promote(uri, "ga-fpn").promoted
    return uri, model_uri, tmp_path


@pytest.fixture(scope="module")
def pyfunc(champion):
    import mlflow

    uri, model_uri, _ = champion
    mlflow.set_tracking_uri(uri)
    return mlflow.pyfunc.load_model(model_uri)


def _volume(seed: int = 1, shape=SHAPE) -> np.ndarray:
    return np.random.default_rng(seed).normal(100, 20, size=shape).astype(np.float32)


def test_pyfunc_takes_a_volume_and_a_batch(champion, pyfunc):
    from fpn.inference import load_ensemble

    uri, model_uri, _ = champion
    ensemble = load_ensemble(model_uri, uri)
    volumes = np.stack([_volume(1), _volume(2)])
    single = pyfunc.predict(volumes[0])
    assert single.shape == (SHAPE[0], SHAPE[2])
    np.testing.assert_allclose(single, ensemble.predict_volume(volumes[0]), atol=1e-5)
    batch = pyfunc.predict(volumes)  # the documented (B, S, D, W)
    assert batch.shape == (2, SHAPE[0], SHAPE[2])
    np.testing.assert_allclose(batch[1], ensemble.predict_volume(volumes[1]), atol=1e-5)
    # float64 (what a JSON request parses to) is accepted as well
    np.testing.assert_allclose(pyfunc.predict(volumes[0].astype(np.float64)), single, atol=1e-5)


def test_loading_a_registered_model_leaves_no_copy_behind(champion, tmp_path, monkeypatch):
    """``models:/`` is downloaded to a temporary folder that goes once the members are loaded
    (each load left a copy of the model in the temp dir until 2026-12-04)."""
    import tempfile

    from fpn.inference import load_ensemble
    from fpn.storage import resolve_members

    uri, _, _ = champion
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # this test's temp dir only
    assert len(load_ensemble("models:/ga-fpn@champion", uri)) == 1
    assert not list(tmp_path.glob("fpn-model-*"))
    with pytest.raises(ValueError, match="holds no fpn member"), resolve_members(
            "models:/ga-fpn@champion", uri) as members:
        raise ValueError(f"{members[0]} holds no fpn member")  # an error inside the block
    assert not list(tmp_path.glob("fpn-model-*"))


def test_pyfunc_refuses_non_finite_input(pyfunc):
    from mlflow.exceptions import MlflowException

    volume = _volume()
    volume[3, 10, 5] = np.nan  # one voxel
    with pytest.raises(MlflowException, match=r"1 non-finite voxels .* index \(3, 10, 5\)"):
        pyfunc.predict(volume)
    batch = np.stack([_volume(), _volume()])
    batch[1, 0, 0, 0] = np.inf
    with pytest.raises(MlflowException, match="volume 1 of the batch"):
        pyfunc.predict(batch)


def test_pyfunc_refuses_a_request_over_the_size_limit(champion, pyfunc, monkeypatch):
    import mlflow
    from mlflow.exceptions import MlflowException

    assert pyfunc.predict(np.stack([_volume()] * 3)).shape[0] == 3  # at the limit
    with pytest.raises(MlflowException, match=f"exceeds the limit of {MAX_VOXELS} voxels"):
        pyfunc.predict(np.stack([_volume()] * 4))
    with pytest.raises(MlflowException, match=r"expected one OCT volume .* got shape \(64, 32\)"):
        pyfunc.predict(_volume()[0])
    # the serving machine's own limit wins over the logged one
    monkeypatch.setenv("FPN_SERVING_MAX_VOXELS", str(SHAPE[0] * SHAPE[1] * SHAPE[2] - 1))
    small = mlflow.pyfunc.load_model(champion[1])
    with pytest.raises(MlflowException, match="exceeds the limit"):
        small.predict(_volume())


def _post(port: int, payload: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations", data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_served_champion(champion):
    """`mlflow models serve` on the champion: a volume, a batch, a NaN and an oversized request."""
    from fpn.inference import load_ensemble

    uri, model_uri, tmp_path = champion
    volume = _volume()
    expected = load_ensemble(model_uri, uri).predict_volume(volume)

    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_DISABLE_TELEMETRY": "true"}
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/ga-fpn@champion",
         "--env-manager", "local", "-p", str(port), "-h", "127.0.0.1"],
        env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, server.stderr.read().decode()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            assert time.monotonic() < deadline, "mlflow models serve did not come up in 120 s"
            time.sleep(1)
        status, answer = _post(port, {"inputs": volume.tolist()})
        assert status == 200, answer
        single = np.asarray(answer["predictions"], dtype=np.float32)
        status, answer = _post(port, {"inputs": np.stack([volume, _volume(2)]).tolist()})
        assert status == 200, answer
        batch = np.asarray(answer["predictions"], dtype=np.float32)
        with_nan = volume.tolist()
        with_nan[0][0][0] = float("nan")  # JSON's NaN, as Python's json writes it
        nan_status, nan_answer = _post(port, {"inputs": with_nan})
        big_status, big_answer = _post(port, {"inputs": np.stack([volume] * 4).tolist()})
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
    assert single.shape == (SHAPE[0], SHAPE[2])
    np.testing.assert_allclose(single, expected, atol=1e-5)
    assert batch.shape == (2, SHAPE[0], SHAPE[2])
    np.testing.assert_allclose(batch[0], expected, atol=1e-5)
    assert nan_status == 400 and "non-finite voxels" in nan_answer["message"], nan_answer
    assert big_status == 400 and "exceeds the limit" in big_answer["message"], big_answer
