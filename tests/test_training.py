"""Ray Train end to end on a tiny synthetic store: real local Ray, real sqlite MLflow, real Zarr.

One module-scoped pretraining run, and one fine-tuning from it, feed the fine-tuning, prediction
and evaluation tests. A lost worker's restart is tested by the drills (``tests/test_drills.py``:
a node lost after an epoch's checkpoint) and the spot tests (``tests/test_spot_interruption.py``:
mid-epoch).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from fpn.config import TrainConfig, set_dotted
from fpn.data.splits import plan_visits, ratio_patients, subset_size
from fpn.data.store import open_store
from fpn.storage import MODEL_FILE, load_member_file

TINY_MODEL = {"width": 0.25}


def _cfg(store: Path, tmp: Path, task: str, **over) -> TrainConfig:
    tree = {
        "task": task,
        "data": {"store": str(store), "target": "inverted_faf" if task == "pretrain" else "mask",
                 "crop": [8, 32], "multiplier": 2, "loader_workers": 0},
        "model": {"name": "fpn", "kwargs": TINY_MODEL},
        "optim": {"lr": 0.01},
        "epochs": 2, "batch_size": 2, "workers": 2, "threads_per_worker": 1,
        "storage": str(tmp / "runs"), "mlflow": f"sqlite:///{tmp / 'mlflow.db'}",
        "log_model": False, "keep_best": 2, "max_failures": 0,
    }
    for k, v in over.items():
        set_dotted(tree, k, v)
    return TrainConfig.model_validate(tree)


def test_ratio_subsets_are_nested_seeded_and_sized():
    patients = [f"P{i:02d}" for i in range(40)]
    subsets = {r: ratio_patients(patients, r, seed=3) for r in (0.05, 0.1, 0.2, 1.0)}
    assert [len(subsets[r]) for r in (0.05, 0.1, 0.2, 1.0)] == [2, 4, 8, 40]
    assert set(subsets[0.05]) <= set(subsets[0.1]) <= set(subsets[0.2]) <= set(subsets[1.0])
    assert ratio_patients(patients, 0.1, seed=3) == subsets[0.1]
    assert ratio_patients(patients, 0.1, seed=4) != subsets[0.1]
    assert subset_size(3, 0.05) == 1  # never zero patients (the reference bug went the other way)
    with pytest.raises(ValueError):
        subset_size(10, 0.0)


def test_plan_keeps_patients_whole_and_splits_apart(synthetic_store):
    store = open_store(str(synthetic_store))
    parts = {p: set(ids) for p, ids in store.split.items()}
    for a, ids_a in parts.items():
        for b, ids_b in parts.items():
            assert a == b or not ids_a & ids_b
    plan = plan_visits(store, "mask", ratio=0.5, seed=0)
    chosen = set(plan.train_patients)
    assert chosen <= parts["train"] and len(chosen) >= 1
    # every labelled visit of a chosen patient, nothing else
    expected = {v.key for v in store.visits_for(splits="train", require="mask")
                if v.patient_id in chosen}
    assert set(plan.train_keys) == expected
    assert {store.visit(k).patient_id for k in plan.val_keys} <= parts["val"]
    ssl = plan_visits(store, "inverted_faf")
    assert {store.visit(k).split for k in ssl.train_keys} <= {"train", "unlabelled"}
    assert any(store.visit(k).split == "unlabelled" for k in ssl.train_keys)


@pytest.fixture(scope="module")
def pretrained(synthetic_store, ray_local, tmp_path_factory):
    from fpn.training.driver import run_training

    tmp = tmp_path_factory.mktemp("pretrain")
    cfg = _cfg(synthetic_store, tmp, "pretrain", run_name="pt")
    return cfg, run_training(cfg)


def test_pretraining_tracks_one_mlflow_run_with_every_epoch(pretrained):
    from mlflow.tracking import MlflowClient

    cfg, outcome = pretrained
    assert outcome.score_name == "val/ssim_mean" and len(outcome.best_checkpoints) == 2
    client = MlflowClient(cfg.tracking_uri())
    run = client.get_run(outcome.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["data.target"] == "inverted_faf"
    assert run.data.tags["fpn.store_fingerprint"] == open_store(cfg.data.store).fingerprint
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "val/ssim_mean")]
    assert sorted(steps) == [0, 1]
    # the optimizer steps each of the two workers took, every epoch: the budget as spent
    # (2 crops per visit, batch 2, two workers; BatchNorm recomputed and averaged over both)
    from fpn.training.budget import steps_per_epoch

    visits = len(plan_visits(open_store(cfg.data.store), cfg.data.target).train_keys)
    taken = [m.value for m in client.get_metric_history(run.info.run_id, "train/steps")]
    assert taken == [float(steps_per_epoch(cfg, visits, world=2))] * 2
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "learning_curves.png", "overlays"} <= artifacts


def test_a_local_instance_runs_no_preemption_watcher(pretrained):
    """connect_ray's local instance: Ray Train's own actors, but no preemption watcher (one
    node, which nothing drains; fpn/training/ray_connect.py)."""
    import ray
    from ray.util.state import list_actors

    # the instance's own state API, as connect_ray pins it for Ray's helpers
    api = ray.get_runtime_context().runtime_env["env_vars"]["RAY_API_SERVER_ADDRESS"]
    names = {a.class_name for a in list_actors(address=api, limit=1000)}
    assert {"TrainController", "RayTrainWorker"} <= names, names
    assert "PreemptionWatcher" not in names, names


@pytest.fixture(scope="module")
def finetuned(pretrained, synthetic_store, tmp_path_factory):
    """One epoch at lr 1e-3 from the pretraining: the fine-tuning, prediction and evaluation
    tests' run (one Ray Train run for all three)."""
    from fpn.training.driver import run_training

    _, pre = pretrained
    cfg = _cfg(synthetic_store, tmp_path_factory.mktemp("finetune"), "finetune", run_name="ft",
               seed=1, epochs=1, init=pre.run_dir, **{"optim.lr": 1e-3})
    return cfg, run_training(cfg)


def test_finetune_starts_from_pretrained_weights(pretrained, finetuned):
    from fpn.models import create_model

    _, pre = pretrained
    _, outcome = finetuned
    pre_sd = load_member_file(Path(pre.best_checkpoints[0]) / MODEL_FILE)["state_dict"]
    ft_sd = load_member_file(Path(outcome.best_checkpoints[0]) / MODEL_FILE)["state_dict"]
    torch.manual_seed(1)
    scratch = create_model("fpn", in_channels=1, out_channels=1, **TINY_MODEL).state_dict()
    weights = [k for k, v in pre_sd.items() if k.endswith("weight") and v.dim() > 1]

    def dist(a, b):
        return float(sum((a[k].float() - b[k].float()).norm() ** 2 for k in weights) ** 0.5)

    # one epoch at lr 1e-3 moves the weights a little; a fresh initialisation is far away
    assert dist(ft_sd, pre_sd) < 0.1 * dist(scratch, pre_sd)
    # checkpoints are ranked by Dice pooled over the validation pixels (TrainConfig's default)
    assert outcome.score_name == "val/dice_pooled"


def test_predict_and_evaluate_agree_with_written_pngs(finetuned, synthetic_store, tmp_path):
    from fpn.evaluation import evaluate, predict
    from fpn.metrics import dice

    cfg, outcome = finetuned
    store = open_store(str(synthetic_store))
    out = tmp_path / "pred"
    rows = predict(outcome.run_dir, out=str(out), store=str(synthetic_store), split="test",
                   tracking_uri=cfg.tracking_uri())
    assert rows and (out / "areas.csv").is_file()
    summary = evaluate(outcome.run_dir, str(synthetic_store), split="test", out=str(tmp_path),
                       tracking_uri=cfg.tracking_uri())
    by_visit = {}
    for row in rows:
        info = store.visit(row["visit"])
        png = np.asarray(Image.open(out / row["mask_png"]))
        assert png.dtype == np.uint8 and png.shape == (info.shape[0], info.shape[2])
        assert set(np.unique(png)) <= {0, 255}
        assert row["area_mm2"] == pytest.approx(
            (png > 0).sum() * info.spacing_mm[0] * info.spacing_mm[2])
        if "mask" in info.has:
            by_visit[row["visit"]] = dice(png > 0, store.read(row["visit"], "mask"))
    assert by_visit
    assert summary["visits"] == len(by_visit)
    assert summary["dice_mean"] == pytest.approx(np.mean(list(by_visit.values())), abs=1e-6)


def test_evaluate_growth_and_a_bare_volume(finetuned, synthetic_store, tmp_path, capsys):
    """``evaluate`` reports the patient-level mean and interval and the agreement of the areas
    with the graders; ``growth`` writes growth.csv, the plots and the MLflow entries; a bare
    .npy volume without spacing still gets its mask (area in pixels, one line saying why),
    and ``--spacing`` gives mm^2."""
    from mlflow.tracking import MlflowClient

    from fpn.__main__ import main
    from fpn.evaluation import evaluate

    cfg, outcome = finetuned
    summary = evaluate(outcome.run_dir, str(synthetic_store), split="test", out=str(tmp_path),
                       tracking_uri=cfg.tracking_uri())
    for key in ("patients", "dice_patient_mean", "dice_patient_ci_low", "area_bias_mm2",
                "area_loa_low_mm2", "area_icc", "growth_n_eyes"):
        assert key in summary, key
    assert (tmp_path / "growth.csv").is_file() and (tmp_path / "bland_altman.png").is_file()

    out = tmp_path / "growth"
    assert main(["growth", "--model", outcome.run_dir, "--data", str(synthetic_store),
                 "--split", "test", "--out", str(out), "--mlflow", cfg.tracking_uri()]) == 0
    printed = json.loads(capsys.readouterr().out)
    header = (out / "growth.csv").read_text().splitlines()[0]
    assert "rate_mm2_per_year" in header and "reason" in header
    assert (out / "growth.png").is_file() and printed["growth_n_eyes"] >= 1
    run = MlflowClient(tracking_uri=cfg.tracking_uri()).get_run(printed["mlflow_run_id"])
    assert "test/growth_n_eyes" in run.data.metrics

    store = open_store(str(synthetic_store))
    key = store.visits_for(splits="test")[0].key
    volume = tmp_path / "bare.npy"
    np.save(volume, store.read(key, "oct"))
    assert main(["predict", "--model", outcome.run_dir, "--input", str(volume),
                 "--out", str(tmp_path / "px"), "--mlflow", cfg.tracking_uri()]) == 0
    assert "no spacing" in capsys.readouterr().out
    assert "area_px" in (tmp_path / "px" / "areas.csv").read_text().splitlines()[0]
    assert (tmp_path / "px" / "bare_mask.png").is_file()
    assert main(["predict", "--model", outcome.run_dir, "--input", str(volume), "--spacing",
                 "0.1", "0.004", "0.05", "--out", str(tmp_path / "mm"),
                 "--mlflow", cfg.tracking_uri()]) == 0
    assert "area_mm2" in (tmp_path / "mm" / "areas.csv").read_text().splitlines()[0]
