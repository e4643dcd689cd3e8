"""A search is known by its store: two searches in one workdir on two different stores keep
separate studies, Tune experiments, parent runs, evaluations and registered versions (before,
the second reused the first's trials and cached test Dice, and re-tagged its registered version
with the new store's fingerprint). One trial of one epoch per search, the tiny recipe."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.slow, pytest.mark.integration]


@pytest.fixture(scope="module")
def two_stores(tmp_path_factory):
    import ray

    from data_prep.convert import convert
    from data_prep.synthetic import make_synthetic_dataset
    from tests.conftest import SYNTHETIC_SHAPE

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    root = tmp_path_factory.mktemp("stores")
    stores = []
    for seed in (0, 1):
        make_synthetic_dataset(root / f"source{seed}", patients=4, unlabelled=2,
                               shape=SYNTHETIC_SHAPE, visits=2, seed=seed)
        stats = convert(str(root / f"source{seed}"), str(root / f"store{seed}.zarr"),
                        progress=False)
        assert stats.ok, stats.summary_line()
        stores.append(root / f"store{seed}.zarr")
    return stores


def _search(store: Path, work: Path) -> str:
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-m", "tune.search", "--data", str(store),
                          "--workdir", str(work), "--ssl", "none", "--ratios", "1.0",
                          "--trials", "1", "--epochs", "1", "--num-cpus", "2", "--seed", "0",
                          "--recipe", "tiny"],
                         cwd=work, env=env, capture_output=True, text=True, timeout=600,
                         check=False)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return run.stdout


def test_a_search_on_another_store_in_the_same_workdir_is_its_own(two_stores, tmp_path):
    import optuna
    from mlflow.tracking import MlflowClient

    from fpn.data.store import open_store

    work = tmp_path / "work"
    work.mkdir()
    fps = [open_store(str(s)).fingerprint for s in two_stores]
    assert fps[0] != fps[1]
    _search(two_stores[0], work)
    out = _search(two_stores[1], work)
    assert "already holds" not in out  # the second search ran its own trial

    studies = sorted(s.study_name for s in optuna.get_all_study_summaries(
        f"sqlite:///{work / 'optuna.db'}"))
    assert studies == sorted(f"ga-fpn-none-{fp[:8]}-r1" for fp in fps)
    assert all((work / "ray" / name).is_dir() for name in studies)  # two Tune experiments

    uri = f"sqlite:///{work / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp = client.get_experiment_by_name("fpn-search")
    parents = client.search_runs([exp.experiment_id],
                                 filter_string="tags.`fpn.search_role` = 'ratio'")
    assert sorted(p.data.tags["fpn.store_fingerprint"] for p in parents) == sorted(fps)
    assert all("test/dice_mean" in p.data.metrics for p in parents)
    versions = client.search_model_versions("name='ga-fpn'")
    assert sorted(v.tags["store_fingerprint"] for v in versions) == sorted(fps)
    assert len({v.tags["mlflow_run_id"] for v in versions}) == 2
    # the second search's table is its own store's
    assert (work / "results" / "table.md").read_text().count("| FPN |") == 1
