"""End to end on CPU: `python -m tune.search` on the tiny store, killed after its first finished
trial and run again; then the studies, MLflow runs, registered versions and the table. Two epochs
per trial, so that ASHA (not FIFO) schedules the trials and may stop some after epoch 1. Then one
search whose store, Ray storage and MLflow artifacts are all on an S3 endpoint on 127.0.0.1."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

RATIOS = ("0.5", "1.0")
TRIALS = 3
ROOT = Path(__file__).resolve().parent.parent
# ~5 min on 2 cores: two searches (one killed), 6 trials; then the S3 search, 2 trials
E2E = (pytest.mark.slow, pytest.mark.integration)


def _e2e(test):
    for mark in E2E:
        test = mark(test)
    return test


def _args(store: Path | str, work: Path, *, ratios: tuple[str, ...] = RATIOS,
          trials: int = TRIALS) -> list[str]:
    # the tiny recipe (fpn/recipes/tiny.yaml): 8 x 32 crops, one per visit, batch 4, 1 best
    return [sys.executable, "-m", "tune.search", "--data", str(store), "--workdir", str(work),
            "--ssl", "none", "--ratios", *ratios, "--trials", str(trials), "--epochs", "2",
            "--num-cpus", "2", "--seed", "0", "--recipe", "tiny"]


def _complete_trials(db: Path) -> dict[str, int]:
    import optuna

    if not db.is_file():
        return {}
    url = f"sqlite:///{db}"
    try:
        summaries = optuna.get_all_study_summaries(url)
    except Exception:  # noqa: BLE001 -- the database is being created (any error)
        return {}
    out = {}
    for s in summaries:
        study = optuna.load_study(study_name=s.study_name, storage=url)
        out[s.study_name] = sum(t.state.name == "COMPLETE" for t in study.trials)
    return out


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory) -> Path:
    """The conftest's tiny synthetic store, made with a Ray of our own (``address="local"``: a
    cluster that another job started on this machine must not be joined)."""
    import ray

    from data_prep.convert import convert
    from data_prep.synthetic import make_synthetic_dataset
    from tests.conftest import SYNTHETIC_SHAPE

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    root = tmp_path_factory.mktemp("tiny")
    make_synthetic_dataset(root / "source", patients=4, unlabelled=2, shape=SYNTHETIC_SHAPE,
                           visits=2, seed=0)
    stats = convert(str(root / "source"), str(root / "store.zarr"), progress=False)
    assert stats.ok, stats.summary_line()
    return root / "store.zarr"


@pytest.fixture(scope="module")
def searched(tiny_store, tmp_path_factory):
    """Run the search, SIGKILL it once a trial has finished, run it again to the end."""
    work = tmp_path_factory.mktemp("search")
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONPATH": str(ROOT)}
    first = subprocess.Popen(_args(tiny_store, work), cwd=work, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    deadline = time.monotonic() + 300
    before: dict[str, int] = {}
    while time.monotonic() < deadline and first.poll() is None:
        before = _complete_trials(work / "optuna.db")
        if sum(before.values()) >= 1:
            break
        time.sleep(2)
    os.killpg(first.pid, signal.SIGKILL)  # the search and the Ray it started
    first.wait()
    assert sum(before.values()) >= 1, "no trial finished before the kill"
    again = subprocess.run(_args(tiny_store, work), cwd=work, env=env, capture_output=True,
                           text=True, timeout=600, check=False)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    return work, before, again.stdout


@_e2e
def test_studies_hold_each_trial_once(searched):
    work, before, _ = searched
    after = _complete_trials(work / "optuna.db")
    import re

    assert len(after) == 2 and all(re.fullmatch(r"ga-fpn-none-[0-9a-f]{8}-r(0\.5|1)", s)
                                   for s in after), after
    assert all(n == TRIALS for n in after.values()), after
    for study, n in before.items():
        assert after[study] >= n


@_e2e
def test_mlflow_parent_and_child_runs_without_duplicates(searched):
    from mlflow.tracking import MlflowClient

    work, _, _ = searched
    client = MlflowClient(tracking_uri=f"sqlite:///{work / 'mlflow.db'}")
    exp = client.get_experiment_by_name("fpn-search")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    names = Counter(r.info.run_name for r in runs)
    assert all(n == 1 for n in names.values()), names  # the resumed search duplicated nothing
    parents = [r for r in runs if r.data.tags.get("fpn.search_role") == "ratio"]
    assert len(parents) == len(RATIOS)
    for p in parents:
        children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == p.info.run_id]
        assert len(children) == TRIALS
        assert "test/dice_mean" in p.data.metrics and "best/val_dice" in p.data.metrics
        artifacts = {a.path for a in client.list_artifacts(p.info.run_id)}
        assert {"study_summary.md", "val_dice_over_trials.png", "best_params.json"} <= artifacts
        assert p.data.tags["fpn.best_trial"] in {c.data.tags["fpn.trial_id"] for c in children}


@_e2e
def test_registered_versions_and_tags(searched):
    from mlflow.tracking import MlflowClient

    work, _, _ = searched
    uri = f"sqlite:///{work / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    versions = client.search_model_versions("name='ga-fpn'")
    assert sorted(v.tags["ratio"] for v in versions) == ["0.5", "1"]
    for v in versions:
        for tag in ("ssl", "val_dice", "test_dice", "store_fingerprint", "test_split", "study",
                    "trial", "git_revision"):
            assert v.tags.get(tag), (v.version, tag)
        assert "Data" in v.description and "Recipe" in v.description
    assert client.get_registered_model("ga-fpn").aliases.get("champion") is not None


@_e2e
def test_results_table(searched):
    work, _, out = searched
    table = (work / "results" / "table.md").read_text()
    assert "| Method | 0.5 | 1 |" in table and "| FPN |" in table and "±" in table
    assert (work / "results" / "table.csv").read_text().count("\n") == 1 + len(RATIOS)
    assert (work / "results" / "dice_vs_ratio.png").stat().st_size > 0
    assert "optuna-dashboard sqlite:///" in out and "mlflow ui --backend-store-uri" in out


@pytest.mark.unit
def test_search_efficiency_counts_trial_epochs_in_time_order(tmp_path, capsys):
    """The benchmark's measure on hand-made reports: every epoch of every trial counts, in the
    order they were reported, until one reaches the target."""
    import importlib.util
    import json

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "search_efficiency.py"
    spec = importlib.util.spec_from_file_location("search_efficiency", path)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)

    def rep(trial: int, epoch: int, score: float, t: float) -> dict:
        return {"trial": trial, "epoch": epoch, "val_score": score, "timestamp": t}

    fifo = [rep(0, 1, 0.5, 1), rep(1, 1, 0.6, 2), rep(0, 2, 0.8, 3), rep(1, 2, 0.90, 4)]
    asha = [rep(1, 1, 0.895, 5), rep(0, 1, 0.4, 1), rep(0, 2, 0.95, 9)]  # unordered on purpose
    assert bench.epochs_to_reach(fifo, 0.90) == 4
    assert bench.epochs_to_reach(asha, 0.90) == 3  # 0.4 at t=1, 0.895 at t=5, 0.95 at t=9
    assert bench.epochs_to_reach(asha, 0.89) == 2
    assert bench.epochs_to_reach(asha, 0.99) is None
    # the budget keeps the first reports in arrival order, whatever the list order
    assert [r["timestamp"] for r in bench.within_budget(asha, 2)] == [1, 5]

    saved = tmp_path / "search_efficiency.json"
    saved.write_text(json.dumps({"target": 0.90, "reports": {"fifo_random": fifo,
                                                              "asha_tpe": asha}}))
    assert bench.main(["--table-from", str(saved)]) == 0
    table = capsys.readouterr().out
    assert "| fifo_random | 2 | 4 | 0.9000 | 4 | 4 |" in table
    assert "| asha_tpe | 2 | 3 | 0.9500 | 3 | 2 |" in table


@_e2e
def test_search_on_s3_registers_a_version(s3_endpoint, synthetic_source, tmp_path):
    """``--data s3://``, ``--storage s3://`` and MLflow artifacts in the bucket: the trials'
    records are read from the bucket (they were looked for on local disk only before, and every
    ratio failed with "no trial finished with a checkpoint"), the best is evaluated and
    registered. DataLoader workers: 0 (the tiny recipe), see fpn/recipes/tiny.yaml."""
    import s3fs
    from mlflow.tracking import MlflowClient

    from data_prep.convert import convert
    from tests.conftest import S3_BUCKET

    store = f"s3://{S3_BUCKET}/search/store.zarr"
    options = {"endpoint_url": s3_endpoint, "key": "testing", "secret": "testing"}
    stats = convert(str(synthetic_source), store, progress=False, storage_options=options,
                    num_cpus=1)
    assert stats.ok, stats.summary_line()
    work = tmp_path / "work"
    work.mkdir()
    uri = f"sqlite:///{work / 'mlflow.db'}"
    # the experiment's artifacts in the bucket, as `mlflow server --artifacts-destination s3://`
    MlflowClient(uri).create_experiment("fpn-search", artifact_location=f"s3://{S3_BUCKET}/mlflow")
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONPATH": str(ROOT)}
    storage = f"s3://{S3_BUCKET}/search/ray"
    # one trial of one epoch: this test is about where things live, ASHA is tested above
    run = subprocess.run([*_args(store, work, ratios=("1.0",), trials=1), "--epochs", "1",
                          "--storage", storage],
                         cwd=work, env=env, capture_output=True, text=True, timeout=600,
                         check=False)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    versions = client.search_model_versions("name='ga-fpn'")
    assert len(versions) == 1 and versions[0].tags["ratio"] == "1"
    assert versions[0].source.startswith(f"s3://{S3_BUCKET}/mlflow/") or \
        versions[0].source.startswith("models:/")
    fs = s3fs.S3FileSystem()
    fs.invalidate_cache()
    records = fs.glob(f"{S3_BUCKET}/search/ray/trials/*/fpn_run.json")
    assert len(records) >= 1
    assert "| Method | 1 |" in (work / "results" / "table.md").read_text()
