"""One way to reach Ray: a ``ray start`` cluster recorded on the machine, dead or alive, never
captures a local run.

A real head node is started with ``ray start --head`` (its own port and its own ``RAY_TMPDIR``,
so that it records its address where only this test looks), then killed — its own processes, found by
that temp dir and its session (``tests/processes.py``), not ``ray stop``, which would stop every Ray
instance of this user on a shared machine.
Its address stays recorded, as after a cluster that went away. ``python -m fpn finetune --init``
must then start its own local instance and finish; before ``connect_ray`` it called ``ray.put``
first, which joined the recorded cluster and waited forever for its GCS.

A live recorded cluster: Ray's helpers inside a local job (Ray Train's placement-group cleaner)
must ask the job's own state API whether an actor lives; auto-detected, they asked the recorded
cluster's, which said "dead" of every live actor (this test fails that way without the pin in
``connect_ray``), and the cleaner removed the run's placement group.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.processes import end_cluster, free_port

ROOT = Path(__file__).resolve().parents[1]


def _member_file(path: Path) -> Path:
    from fpn.models import create_model
    from fpn.storage import save_member

    kwargs = {"in_channels": 1, "out_channels": 1, "width": 0.25}
    save_member(path, create_model("fpn", **kwargs), model_name="fpn", model_kwargs=kwargs,
                target="inverted_faf", zscore_eps=1e-6)
    return path


def _recorded_head(dashboard: bool) -> tuple[str, dict[str, str], int, int]:
    """``ray start --head`` in a ``RAY_TMPDIR`` of its own: (that dir, an environment that
    records it as the machine's cluster, its GCS port, the session its processes live in)."""
    tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's unix sockets live under it
    env = {**os.environ, "RAY_TMPDIR": tmp}
    env.pop("RAY_ADDRESS", None)
    port = free_port()
    proc = subprocess.Popen(
        [shutil.which("ray") or "ray", "start", "--head", f"--port={port}", "--num-cpus=1",
         *(["--dashboard-host=127.0.0.1", f"--dashboard-port={free_port()}"] if dashboard
           else ["--include-dashboard=false"])],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)
    out, err = proc.communicate(timeout=180)
    if proc.returncode != 0:
        end_cluster(tmp, {proc.pid})
    assert proc.returncode == 0, out[-2000:] + err[-2000:]
    assert (Path(tmp) / "ray" / "ray_current_cluster").is_file(), "ray start did not record it"
    return tmp, env, port, proc.pid


@pytest.fixture
def dead_recorded_cluster():
    """``RAY_TMPDIR`` whose ``ray_current_cluster`` names a head node that is gone."""
    tmp, env, port, session = _recorded_head(dashboard=False)
    # gone by process, not by port: on a busy machine another process may bind the freed port
    # (a full-suite run saw the head's GCS port answer again after its GCS was killed)
    left = end_cluster(tmp, {session})  # killed: a head that died, not one stopped
    assert not left, f"the head's processes are still running: {left}"
    recorded = Path(tmp) / "ray" / "ray_current_cluster"
    assert str(port) in recorded.read_text()  # still recorded: the stale cluster a user has
    yield env
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def live_recorded_cluster():
    """``RAY_TMPDIR`` whose ``ray_current_cluster`` names a head node that is up (another job's
    cluster on this machine), with the state API its dashboard serves."""
    tmp, env, _, session = _recorded_head(dashboard=True)
    yield env
    left = end_cluster(tmp, {session})
    shutil.rmtree(tmp, ignore_errors=True)
    assert not left, f"the head's processes are still running: {left}"


_ASK_OWN_STATE_API = """
import ray
from fpn.training.ray_connect import connect_ray
from ray.train.v2._internal.state.util import is_actor_alive

connect_ray(num_cpus=1, log_to_driver=False)

@ray.remote(num_cpus=0)
class Probe:
    def alive(self, actor_id):  # what Ray Train's placement-group cleaner asks, from inside
        return bool(is_actor_alive(actor_id=actor_id, timeout=30))

probe = Probe.remote()
print("alive" if ray.get(probe.alive.remote(probe._actor_id.hex())) else "dead", flush=True)
"""


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_local_instance_asks_its_own_state_api_despite_a_live_recorded_cluster(
        live_recorded_cluster):
    """Ray Train's placement-group cleaner asks the state API whether the run's controller is
    alive; auto-detected, that is the recorded cluster's, which answers "no such actor", and
    the cleaner removes the run's placement group. ``connect_ray`` pins it to its own."""
    env = {**live_recorded_cluster, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", _ASK_OWN_STATE_API], env=env,
                          capture_output=True, text=True, timeout=240, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "alive", proc.stdout[-2000:]


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
        "RAY_API_SERVER_ADDRESS": "http://127.0.0.1:8999", "A": "1",
        "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}  # one node: nothing drains it
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6390")
    assert ray_connect.connect_ray(num_cpus=2) == "cluster"
    assert calls[-1]["address"] == "127.0.0.1:6390" and "num_cpus" not in calls[-1]
