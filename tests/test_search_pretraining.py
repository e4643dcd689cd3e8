"""End to end on CPU: a search with pretraining on two architectures at two ratios pretrains each
architecture drawn once, shared by every trial and ratio that draws it, and each trial fine-tunes
the pretrained network of the architecture it drew. One trial epoch, one pretraining epoch, the
tiny recipe: ~4 min on 2 loaded cores."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

ROOT = Path(__file__).resolve().parent.parent
SPACE = """params:
  model.kwargs.depth_convs_offset: {type: categorical, choices: [-1, 0]}
  optim.lr: {type: float, low: 0.01, high: 0.1, log: true}
fixed: {}
"""
pytestmark = [pytest.mark.slow, pytest.mark.integration]


def search_args(store: Path | str, work: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "tune.search", "--data", str(store), "--workdir", str(work),
            "--trials", "2", "--epochs", "1", "--pretrain-epochs", "1", "--num-cpus", "2",
            "--seed", "0", "--recipe", "tiny", *extra]


@pytest.fixture(scope="module")
def pretrained_search(synthetic_store, tmp_path_factory):
    work = tmp_path_factory.mktemp("pretrained-search")
    space = work / "space.yaml"
    space.write_text(SPACE)
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONPATH": str(ROOT)}
    run = subprocess.run(search_args(synthetic_store, work, "--ratios", "0.5", "1.0",
                                     "--space", str(space)),
                         cwd=work, env=env, capture_output=True, text=True, timeout=900,
                         check=False)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return work, run.stdout


def check_shared_pretraining(work: Path) -> None:
    """The assertions, on a finished search's workdir (callable on a search run by hand)."""
    from mlflow.tracking import MlflowClient

    from fpn.training.run_record import finished_run

    client = MlflowClient(tracking_uri=f"sqlite:///{work / 'mlflow.db'}")
    exp = client.get_experiment_by_name("fpn-search")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    pretrain_runs = [r for r in runs if r.data.tags.get("fpn.search_role") == "pretrain"]
    trials = [r for r in runs if r.data.tags.get("fpn.search_role") == "trial"]
    parents = [r for r in runs if r.data.tags.get("fpn.search_role") == "ratio"]
    assert len(parents) == 2 and len(trials) == 4

    records = {p.parent.name: json.loads(p.read_text())
               for p in (work / "ray" / "pretrain").glob("*/pretrained.json")}
    drawn = {json.loads(t.data.tags["fpn.trial_params"])["model.kwargs.depth_convs_offset"]
             for t in trials}
    # each architecture drawn is pretrained once: one record, one MLflow run each
    assert len(records) == len(drawn) == len(pretrain_runs)
    assert sorted(r["kwargs"]["depth_convs_offset"] for r in records.values()) == sorted(drawn)
    assert sorted(r.data.tags["fpn.pretraining_key"] for r in pretrain_runs) == sorted(records)
    # every trial fine-tuned the pretraining of the architecture it drew, and its network is it
    for t in trials:
        offset = json.loads(t.data.tags["fpn.trial_params"])["model.kwargs.depth_convs_offset"]
        key = t.data.tags["fpn.pretraining_key"]
        assert records[key]["kwargs"]["depth_convs_offset"] == offset
        record = finished_run(str(work / "ray" / "trials"), t.data.tags["fpn.run_name"])
        assert record is not None
        assert record.config["model"]["kwargs"]["depth_convs_offset"] == offset
        assert record.config["init"] == records[key]["run_dir"]
    # per ratio on the parent run: trained + reused = the ratio's trials; trained once overall
    trained = reused = 0
    for p in parents:
        trained += int(p.data.metrics["pretrain/trained"])
        reused += int(p.data.metrics["pretrain/reused"])
    assert trained == len(records) and trained + reused == len(trials)
    assert sum(t.data.tags["fpn.pretraining"] == "trained" for t in trials) == len(records)


def test_each_architecture_is_pretrained_once_and_every_trial_uses_its_own(pretrained_search):
    work, out = pretrained_search
    check_shared_pretraining(work)
    assert "pretraining(s) trained" in out and "reused" in out
    assert "| FPN (inverted_faf pretraining) |" in (work / "results" / "table.md").read_text()
