"""One way to reach Ray: a dead ``ray start`` cluster recorded on the machine never captures a
local run.

A real head node is started with ``ray start --head`` (its own port and its own ``RAY_TMPDIR``,
so that it records its address where only this test looks), then killed — its own processes, found by
that temp dir, not ``ray stop``, which would stop every Ray instance of this user on a shared machine.
Its address stays recorded, as after a cluster that went away. ``python -m fpn finetune --init``
must then start its own local instance and finish; before ``connect_ray`` it called ``ray.put``
first, which joined the recorded cluster and waited forever for its GCS.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _member_file(path: Path) -> Path:
    from fpn.inference import save_member
    from fpn.models import create_model

    kwargs = {"in_channels": 1, "out_channels": 1, "width": 0.25}
    save_member(path, create_model("fpn", **kwargs), model_name="fpn", model_kwargs=kwargs,
                target="inverted_faf", zscore_eps=1e-6)
    return path


def _processes_of(marker: str) -> list[int]:
    """PIDs whose command line names ``marker`` (this test's own temp dir), and their children."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline:
            pids.append(int(proc.name))
    children = []
    for proc in Path("/proc").iterdir():
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid in pids:
            children.append(int(proc.name))
    return sorted(set(pids + children))


@pytest.fixture
def dead_recorded_cluster():
    """``RAY_TMPDIR`` whose ``ray_current_cluster`` names a head node that is gone."""
    tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's unix sockets live under it
    env = {**os.environ, "RAY_TMPDIR": tmp}
    env.pop("RAY_ADDRESS", None)
    port = _free_port()
    recorded = Path(tmp) / "ray" / "ray_current_cluster"
    try:
        started = subprocess.run(
            [shutil.which("ray") or "ray", "start", "--head", f"--port={port}", "--num-cpus=1",
             "--include-dashboard=false"],
            env=env, capture_output=True, text=True, timeout=180, check=False)
        assert started.returncode == 0, started.stdout[-2000:] + started.stderr[-2000:]
        assert recorded.is_file(), "ray start --head did not record its address"
    finally:
        for pid in _processes_of(tmp):  # the head's processes only (never `ray stop`)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    deadline = time.time() + 30
    while _processes_of(tmp) and time.time() < deadline:
        time.sleep(0.5)
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0, "the head's GCS still answers"
    assert str(port) in recorded.read_text()  # still recorded: the stale cluster a user has
    yield env
    for pid in _processes_of(tmp):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_finetune_with_init_starts_local_ray_despite_a_dead_recorded_cluster(
        dead_recorded_cluster, synthetic_store, tmp_path):
    member = _member_file(tmp_path / "pretrained.pt")
    env = {**dead_recorded_cluster, "PYTHONPATH": str(ROOT), "MLFLOW_DISABLE_TELEMETRY": "true",
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "fpn", "finetune", "--data", str(synthetic_store),
           "--init", str(member), "--model", "fpn", "--model-arg", "width=0.25",
           "--epochs", "1", "--batch-size", "2", "--crop", "8", "32", "--multiplier", "1",
           "--threads-per-worker", "1", "--max-failures", "0", "--no-log-model",
           "--storage", str(tmp_path / "runs"), "--mlflow", f"sqlite:///{tmp_path / 'mlflow.db'}",
           "--run-name", "after-dead-cluster"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (tmp_path / "runs" / "after-dead-cluster" / "fpn_run.json").is_file()


def test_connect_ray_prefers_ray_address_and_never_the_recorded_cluster(monkeypatch):
    """Without a cluster to reach: which ``ray.init`` call each environment leads to."""
    import ray

    from fpn.training import ray_connect

    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(kw))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert ray_connect.connect_ray(num_cpus=2) == "local"
    assert calls[-1]["address"] == "local" and calls[-1]["num_cpus"] == 2
    # Ray's helpers inside the job ask this instance's own state API, not a recorded cluster's
    pinned = calls[-1]["runtime_env"]["env_vars"]["RAY_API_SERVER_ADDRESS"]
    assert pinned == f"http://127.0.0.1:{calls[-1]['dashboard_port']}"
    ray_connect.connect_ray(runtime_env={"env_vars": {"A": "1"}}, dashboard_port=8999)
    assert calls[-1]["runtime_env"]["env_vars"] == {
        "RAY_API_SERVER_ADDRESS": "http://127.0.0.1:8999", "A": "1"}
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6390")
    assert ray_connect.connect_ray(num_cpus=2) == "cluster"
    assert calls[-1]["address"] == "127.0.0.1:6390" and "num_cpus" not in calls[-1]
