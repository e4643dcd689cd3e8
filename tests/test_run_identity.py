"""A run is known by its store and config (issue 13): a finished run is reused only when both
match; a chosen name taken by another run is refused (exit 2), a derived one moves aside; a
finished MLflow run is never reopened (which would drop the new run's metrics). And a run's first
try that fails after its MLflow run exists leaves that run FAILED, not RUNNING; the next try
continues it (one Ray Train run serves both stories: ``run_x``)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from fpn.config import TrainConfig, set_dotted
from fpn.data.store import open_store
from tests.conftest import SYNTHETIC_SHAPE


def _cfg(store: Path, tmp: Path, **over) -> TrainConfig:
    tree = {
        "task": "finetune",
        "data": {"store": str(store), "crop": [8, 32], "multiplier": 1, "loader_workers": 0},
        "model": {"name": "fpn", "kwargs": {"width": 0.25}},
        "optim": {"lr": 0.01},
        "epochs": 1, "batch_size": 2, "workers": 1, "threads_per_worker": 1,
        "storage": str(tmp / "runs"), "mlflow": f"sqlite:///{tmp / 'mlflow.db'}",
        "log_model": False, "max_failures": 0, "overlay_every": 0,
    }
    for k, v in over.items():
        set_dotted(tree, k, v)
    return TrainConfig.model_validate(tree)


@pytest.fixture(scope="module")
def other_store(tmp_path_factory, ray_local) -> Path:
    """A second tiny store with other visits: another fingerprint."""
    from data_prep.convert import convert
    from data_prep.synthetic import make_synthetic_dataset

    tmp = tmp_path_factory.mktemp("other")
    make_synthetic_dataset(tmp / "source", patients=4, unlabelled=0, shape=SYNTHETIC_SHAPE,
                           visits=1, seed=7)
    out = tmp / "other.zarr"
    assert convert(str(tmp / "source"), str(out), progress=False).ok
    return out


def test_identity_covers_what_the_run_learns_not_where_it_runs(synthetic_store, tmp_path):
    from fpn.training.identity import config_differences, run_identity

    base = _cfg(synthetic_store, tmp_path)
    same = _cfg(synthetic_store, tmp_path / "elsewhere", workers=2, run_name="x", max_failures=5)
    other = _cfg(synthetic_store, tmp_path, **{"optim.lr": 0.02})
    assert run_identity(base, "fp") == run_identity(same, "fp")
    assert run_identity(base, "fp") != run_identity(base, "fp2")
    assert run_identity(base, "fp").config_hash != run_identity(other, "fp").config_hash
    diffs = config_differences(base.model_dump(mode="json"), other.model_dump(mode="json"))
    assert diffs == ["optim.lr: 0.01 -> 0.02"]


def test_a_finished_mlflow_run_is_never_reopened(tmp_path):
    from fpn import tags as T
    from fpn.tracking import client_for, ensure_experiment, find_or_create_run

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = client_for(uri)
    exp = ensure_experiment(client, "fpn", uri)
    first, resumed = find_or_create_run(client, exp, "r", {}, identity="A", reopen_finished=False)
    assert not resumed and client.get_run(first).data.tags[T.RUN_IDENTITY] == "A"
    again, resumed = find_or_create_run(client, exp, "r", {}, identity="A", reopen_finished=False)
    assert (again, resumed) == (first, True)  # unfinished, same identity: continued
    other, resumed = find_or_create_run(client, exp, "r", {}, identity="B", reopen_finished=False)
    assert other != first and not resumed  # another store/config: never its run
    client.set_terminated(first, "FINISHED")
    new, resumed = find_or_create_run(client, exp, "r", {}, identity="A", reopen_finished=False)
    assert new not in (first, other) and not resumed


def test_derived_name_moves_aside_chosen_name_is_refused(synthetic_store, other_store, tmp_path):
    from fpn.training.identity import RunIdentityError, run_identity
    from fpn.training.preflight import preflight

    derived = _cfg(synthetic_store, tmp_path)
    name = derived.resolved_run_name()
    fp_a = open_store(str(synthetic_store)).fingerprint
    ident = run_identity(derived, fp_a)
    run_dir = tmp_path / "runs" / name
    run_dir.mkdir(parents=True)
    (run_dir / "fpn_run.json").write_text(json.dumps({
        "run_name": name, "run_dir": str(run_dir), "finished": True, "best_checkpoints": ["x"],
        "store_fingerprint": ident.store_fingerprint, "config_hash": ident.config_hash,
        "config": derived.model_dump(mode="json")}))
    assert preflight(derived).finished  # same store and config: reused
    on_b = _cfg(other_store, tmp_path)
    pf = preflight(on_b)
    key = run_identity(on_b, open_store(str(other_store)).fingerprint).key
    assert pf.name == f"{name}-{key[:8]}" and not pf.finished
    with pytest.raises(RunIdentityError, match=f"store fingerprint {fp_a[:12]}"):
        preflight(_cfg(other_store, tmp_path, run_name=name))


@pytest.fixture(scope="module")
def run_x(synthetic_store, ray_local, tmp_path_factory) -> dict:
    """Run "X", whose first try fails after its MLflow run exists (Ray is not reachable: the
    first step after the run is created), then run again once the cause is gone. One Ray Train
    run for the tests below: what the failure left, and the finished run's identity."""
    from mlflow.tracking import MlflowClient

    from fpn.training import driver

    def broken() -> None:
        raise RuntimeError("the Ray cluster went away")

    tmp = tmp_path_factory.mktemp("run-x")
    cfg = _cfg(synthetic_store, tmp, run_name="X")
    client = MlflowClient(cfg.tracking_uri())
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(driver, "connect_ray", broken)
        with pytest.raises(RuntimeError, match="went away"):
            driver.run_training(cfg)
    failed = client.search_runs([client.get_experiment_by_name(cfg.experiment).experiment_id])
    return {"tmp": tmp, "cfg": cfg, "failed": [(r.info.run_id, r.info.status,
                                                 r.data.tags.get("fpn.status")) for r in failed],
            "outcome": driver.run_training(cfg)}


def test_error_after_the_mlflow_run_exists_marks_it_failed(run_x):
    """No MLflow run is left RUNNING by an error; run again, the same MLflow run goes on and
    finishes."""
    from mlflow.tracking import MlflowClient

    assert [status for _, status, _ in run_x["failed"]] == ["FAILED"]
    run_id, _, tag = run_x["failed"][0]
    assert tag == "failed"
    outcome = run_x["outcome"]
    assert outcome.mlflow_run_id == run_id
    client = MlflowClient(run_x["cfg"].tracking_uri())
    run = client.get_run(outcome.mlflow_run_id)
    assert run.info.status == "FINISHED" and run.data.tags["fpn.status"] == "finished"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [0]


def test_a_run_name_on_another_store_or_config_is_refused(run_x, synthetic_store, other_store,
                                                         capsys):
    from fpn.__main__ import main
    from fpn.training.driver import run_training
    from fpn.training.identity import RunIdentityError

    cfg, first, tmp_path = run_x["cfg"], run_x["outcome"], run_x["tmp"]
    record = json.loads((Path(first.run_dir) / "fpn_run.json").read_text())
    fp_a, fp_b = (open_store(str(s)).fingerprint for s in (synthetic_store, other_store))
    assert record["store_fingerprint"] == fp_a and record["config_hash"]
    from mlflow.tracking import MlflowClient

    tags = MlflowClient(cfg.tracking_uri()).get_run(first.mlflow_run_id).data.tags
    assert tags["fpn.store_fingerprint"] == fp_a
    assert tags["fpn.config_hash"] == record["config_hash"] and tags["fpn.run_identity"]

    # the old code returned the first store's result here ("already finished")
    with pytest.raises(RunIdentityError) as err:
        run_training(_cfg(other_store, tmp_path, run_name="X"))
    assert fp_a[:12] in str(err.value) and fp_b[:12] in str(err.value)
    with pytest.raises(RunIdentityError, match=r"optim.lr: 0.01 -> 0.02"):
        run_training(_cfg(synthetic_store, tmp_path, run_name="X", **{"optim.lr": 0.02}))
    rc = main(["finetune", "--data", str(other_store), "--run-name", "X", "--model-arg",
               "width=0.25", "--storage", str(tmp_path / "runs"),
               "--mlflow", cfg.tracking_uri()])
    err_line = capsys.readouterr().err.strip().splitlines()[-1]  # after MLflow's own log lines
    assert rc == 2 and err_line.startswith("error: ") and "belongs to another finished run" in err_line
    # the same store and config: reused, not trained again
    again = run_training(_cfg(synthetic_store, tmp_path, run_name="X", workers=1))
    assert again.best_checkpoints == first.best_checkpoints
    assert len((Path(first.run_dir) / "attempts.jsonl").read_text().splitlines()) == 1


def test_finished_run_checks_identity_when_asked(tmp_path):
    from fpn.storage.run_record import finished_run

    run_dir = tmp_path / "r"
    run_dir.mkdir()
    (run_dir / "fpn_run.json").write_text(json.dumps({
        "run_name": "r", "run_dir": str(run_dir), "finished": True,
        "store_fingerprint": "A", "config_hash": "h"}))
    assert finished_run(str(tmp_path), "r") is not None
    assert finished_run(str(tmp_path), "r", store_fingerprint="A", config_hash="h") is not None
    assert finished_run(str(tmp_path), "r", store_fingerprint="B") is None
    assert finished_run(str(tmp_path), "r", store_fingerprint="A", config_hash="g") is None
