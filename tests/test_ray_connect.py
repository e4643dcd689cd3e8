"""One way to reach Ray: a ``ray start`` cluster recorded on the machine, dead or alive, never
captures a local run.

A real head node is started with ``ray start --head`` (its own port and its own ``RAY_TMPDIR``,
so that it records its address where only this test looks), then killed — its own processes, found by
that temp dir, not ``ray stop``, which would stop every Ray instance of this user on a shared machine.
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


def _kill_head(tmp: str) -> None:
    for pid in _processes_of(tmp):  # the head's processes only (never `ray stop`)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _recorded_head(dashboard: bool) -> tuple[str, dict[str, str], int]:
    """``ray start --head`` in a ``RAY_TMPDIR`` of its own: (that dir, an environment that
    records it as the machine's cluster, its GCS port)."""
    tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's unix sockets live under it
    env = {**os.environ, "RAY_TMPDIR": tmp}
    env.pop("RAY_ADDRESS", None)
    port = _free_port()
    started = subprocess.run(
        [shutil.which("ray") or "ray", "start", "--head", f"--port={port}", "--num-cpus=1",
         *(["--dashboard-host=127.0.0.1", f"--dashboard-port={_free_port()}"] if dashboard
           else ["--include-dashboard=false"])],
        env=env, capture_output=True, text=True, timeout=180, check=False)
    if started.returncode != 0:
        _kill_head(tmp)
    assert started.returncode == 0, started.stdout[-2000:] + started.stderr[-2000:]
    assert (Path(tmp) / "ray" / "ray_current_cluster").is_file(), "ray start did not record it"
    return tmp, env, port


@pytest.fixture
def dead_recorded_cluster():
    """``RAY_TMPDIR`` whose ``ray_current_cluster`` names a head node that is gone."""
    tmp, env, port = _recorded_head(dashboard=False)
    _kill_head(tmp)
    deadline = time.time() + 30
    while _processes_of(tmp) and time.time() < deadline:
        time.sleep(0.5)
    # gone by process, not by port: on a busy machine another process may bind the freed port
    # (a full-suite run saw the head's GCS port answer again after its GCS was killed)
    assert not _processes_of(tmp), "the head's processes are still running"
    recorded = Path(tmp) / "ray" / "ray_current_cluster"
    assert str(port) in recorded.read_text()  # still recorded: the stale cluster a user has
    yield env
    _kill_head(tmp)
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def live_recorded_cluster():
    """``RAY_TMPDIR`` whose ``ray_current_cluster`` names a head node that is up (another job's
    cluster on this machine), with the state API its dashboard serves."""
    tmp, env, _ = _recorded_head(dashboard=True)
    yield env
    _kill_head(tmp)
    shutil.rmtree(tmp, ignore_errors=True)


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
