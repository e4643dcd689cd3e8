"""Early checks before Ray or MLflow start (issue 13): model name, minimum depth, ``--init``
exists and fits the architecture, run name. (That no MLflow run is left RUNNING by an error after
the run exists is tested with a real run in ``tests/test_run_identity.py``.)"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from fpn.config import TrainConfig, set_dotted


def _cfg(store: Path, tmp: Path, **over) -> TrainConfig:
    tree = {
        "task": "finetune",
        "data": {"store": str(store), "crop": [8, 32], "multiplier": 1, "loader_workers": 0},
        "model": {"name": "fpn", "kwargs": {"width": 0.25}},
        "epochs": 1, "batch_size": 2, "workers": 1, "storage": str(tmp / "runs"),
        "mlflow": f"sqlite:///{tmp / 'mlflow.db'}", "log_model": False, "max_failures": 0,
    }
    for k, v in over.items():
        set_dotted(tree, k, v)
    return TrainConfig.model_validate(tree)


def _no_tracking_no_run_dir(tmp: Path) -> None:
    assert not (tmp / "mlflow.db").exists()  # MLflow never started
    assert not (tmp / "runs").exists()  # nothing written under the storage


def test_unknown_model_refused_before_ray_or_mlflow(synthetic_store, tmp_path):
    from fpn.training.driver import run_training

    with pytest.raises(ValueError, match=r"unknown model 'nope'.*available"):
        run_training(_cfg(synthetic_store, tmp_path, **{"model.name": "nope"}))
    _no_tracking_no_run_dir(tmp_path)


def test_store_shallower_than_the_models_minimum_depth_is_refused(synthetic_store, tmp_path):
    from fpn.training.driver import run_training

    cfg = _cfg(synthetic_store, tmp_path, **{"model.kwargs.final_kernels": [8, 8, 8, 8, 8]})
    with pytest.raises(ValueError, match=r"depth 64; model 'fpn'.*needs depth >= 128"):
        run_training(cfg)
    _no_tracking_no_run_dir(tmp_path)


def test_missing_init_is_refused_and_leaves_no_running_mlflow_run(synthetic_store, tmp_path):
    from fpn.training.driver import run_training

    with pytest.raises(ValueError, match="/nonexistent: no such checkpoint"):
        run_training(_cfg(synthetic_store, tmp_path, init="/nonexistent"))
    _no_tracking_no_run_dir(tmp_path)


def test_init_of_another_architecture_names_both(synthetic_store, tmp_path):
    from fpn.models import create_model
    from fpn.storage import save_member
    from fpn.training.driver import run_training

    member = tmp_path / "other.pt"
    save_member(member, create_model("fpn", in_channels=1, out_channels=1, width=0.5),
                model_name="fpn", model_kwargs={"in_channels": 1, "out_channels": 1, "width": 0.5},
                target="inverted_faf", zscore_eps=1e-6)
    with pytest.raises(ValueError) as err:
        run_training(_cfg(synthetic_store, tmp_path, init=str(member)))
    msg = str(err.value)
    assert "'width': 0.5" in msg and "'width': 0.25" in msg and "differing arguments: width" in msg
    _no_tracking_no_run_dir(tmp_path)
    ipn = tmp_path / "ipn.pt"
    save_member(ipn, create_model("ipn", in_channels=1, out_channels=1), model_name="ipn",
                model_kwargs={"in_channels": 1, "out_channels": 1}, target="mask",
                zscore_eps=1e-6)
    with pytest.raises(ValueError, match=r"architecture ipn\(.*config's fpn\("):
        run_training(_cfg(synthetic_store, tmp_path, init=str(ipn)))


@pytest.mark.parametrize("name", ["it's", "a/b", 'say"hi"', "a b", "../up"])
def test_unsafe_run_name_is_one_line_exit_2(synthetic_store, tmp_path, capsys, name):
    from fpn.__main__ import main

    rc = main(["finetune", "--data", str(synthetic_store), "--run-name", name,
               "--storage", str(tmp_path / "runs"), "--mlflow", f"sqlite:///{tmp_path / 'mlflow.db'}"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: invalid run name") and "\n" not in err
    _no_tracking_no_run_dir(tmp_path)
