"""The device check's own test: ``benchmarks/device_check.py --device cpu`` runs every step (the
CLIs as a user runs them) at toy size, so the script that is run on a GPU cannot rot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_device_check_runs_every_step_on_cpu(tmp_path):
    out = tmp_path / "device_check.txt"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_DISABLE_TELEMETRY": "true",
           "OMP_NUM_THREADS": "1"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "device_check.py"), "--device", "cpu",
         "--work", str(tmp_path / "work"), "--out", str(out)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1150, check=False)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    report = json.loads(out.with_suffix(".json").read_text())
    steps = {s["name"]: s["ok"] for s in report["steps"]}
    for name in ("synth", "convert", "pre", "ft-bf16", "ft-bf16-compile", "ft-fp32",
                 "evaluate-bf16", "evaluate-fp32", "predict-full-volume", "ensemble-timing",
                 "search-one-card", "bare-loop"):
        assert steps.get(name), f"step {name} missing or failed: {steps}"
    fig = report["figures"]
    # (the busy fraction needs samples between two epoch lines, which Ray's log forwarding may
    # deliver together on a loaded machine; the sampler itself must have run)
    for key in ("ray_train_vs_bare_loop", "compile_vs_eager", "dice_bf16_minus_fp32_points",
                "peak_memory_mib", "ensemble_s_per_volume"):
        assert fig.get(key) is not None, f"{key} not measured: {fig}"
    assert fig["ensemble_members"] == 2  # keep_best = the CPU check's epochs
    text = out.read_text()
    assert "ray_train_vs_bare_loop" in text and "goal" in text
    assert (tmp_path / "work" / "pred" / "areas.csv").is_file()
