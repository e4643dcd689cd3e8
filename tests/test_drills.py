"""Node loss on a real multi-node Ray cluster on this machine (``benchmarks/drills.py``).

The drill runs in its own process: it starts its own three-node cluster (``ray.cluster_utils``),
which must not share a process with the session's local Ray. A worker node is removed right
after the first checkpoint; the run must finish from its last checkpoint, without repeating a
completed epoch, with MLflow holding every epoch once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _drill(tmp_path: Path, *extra: str) -> dict:
    out = tmp_path / "figures.json"
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONPATH": str(ROOT),
           "OMP_NUM_THREADS": "1"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "drills.py"), "node-loss", "--epochs", "3",
         "--work", str(tmp_path / "work"), "--json", str(out), *extra],
        check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.timeout(320)
def test_node_loss_resumes_from_the_last_checkpoint(tmp_path):
    fig = _drill(tmp_path)
    assert len(fig["attempts"]) == 2 and fig["world_sizes"] == [2, 2]
    killed_after = fig["killed_after_checkpoint_of_epoch"]
    last = fig["last_epoch_completed_before_restart"]
    assert killed_after <= last < fig["epochs"] - 1  # the node went before the run's end
    assert fig["resumed_from_epoch"] == last + 1  # nothing completed is trained again
    assert fig["epochs_repeated"] == 0
    assert fig["mlflow_each_epoch_once"] and fig["mlflow_epochs_logged"] == [0, 1, 2]
    assert fig["time_lost_s"] is not None and fig["detect_and_restart_s"] > 0
