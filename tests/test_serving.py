"""A registered version served by `mlflow models serve` answers with the ensemble's probabilities."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import torch

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

SHAPE = (8, 64, 32)  # (S, D, W)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _registered_champion(tmp_path) -> tuple[str, str]:
    """An (untrained) tiny FPN member logged as the pyfunc ensemble, registered, champion."""
    from fpn.inference import MODEL_FILE, save_member
    from fpn.models import create_model
    from fpn.registry import promote, register_version
    from fpn.serving import log_ensemble_model
    from fpn.tracking import client_for, ensure_experiment

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
    model_uri = log_ensemble_model(uri, run_id, [member], shape=SHAPE)
    register_version(uri, "ga-fpn", model_uri, run_id,
                     tags={"test_dice": "0.5", "store_fingerprint": "fp", "test_split": "test",
                           "test_keys_sha": "k"}, description="test model")
    assert promote(uri, "ga-fpn").promoted
    return uri, model_uri


def test_served_champion_matches_predict_volume(tmp_path):
    from fpn.inference import load_ensemble

    uri, model_uri = _registered_champion(tmp_path)
    volume = np.random.default_rng(1).normal(100, 20, size=SHAPE).astype(np.float32)
    expected = load_ensemble(model_uri, uri).predict_volume(volume)

    port = _free_port()
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
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=json.dumps({"inputs": volume.tolist()}).encode(),
            headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as r:
            answer = np.asarray(json.loads(r.read())["predictions"], dtype=np.float32)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
    assert answer.shape == (SHAPE[0], SHAPE[2])
    np.testing.assert_allclose(answer, expected, atol=1e-5)
