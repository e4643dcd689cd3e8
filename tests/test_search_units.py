"""Cheap unit tests of the search's pieces: the model reference of an MLflow 3 logged model, the
promotion step's refusal, the search's identity by store, shared pretraining per architecture,
inert knobs and the scratch-vs-pretrained table."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


@pytest.mark.unit
def test_source_run_id_of_an_mlflow3_logged_model(tmp_path):
    """``models:/m-<id>`` (what ``log_model`` returns) is a logged model, not ``NAME/VERSION``:
    its run is the logged model's ``source_run_id`` (it raised "Missing value for required
    parameter 'version'" before)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from fpn.evaluation import _source_run_id

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.end_run()  # the fluent API is process-global: nothing of an earlier test's
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("e", artifact_location=str(tmp_path / "artifacts"))
    with mlflow.start_run(experiment_id=exp) as run:
        model = mlflow.initialize_logged_model(name="net")
    assert model.model_id.startswith("m-")
    assert _source_run_id(f"models:/{model.model_id}", uri) == run.info.run_id
    assert _source_run_id(f"runs:/{run.info.run_id}/model", uri) == run.info.run_id
    mv = mlflow.register_model(f"models:/{model.model_id}", "ga-fpn")
    assert _source_run_id(f"models:/ga-fpn/{mv.version}", uri) == run.info.run_id
    client_reg = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client_reg.set_registered_model_alias("ga-fpn", "champion", mv.version)
    assert _source_run_id("models:/ga-fpn@champion", uri) == run.info.run_id


@pytest.mark.unit
def test_a_refused_promotion_is_logged_and_the_search_goes_on(tmp_path, capsys):
    """``promote`` raises GateRefused (here: the candidate lacks the gate's metric): the search's
    promote step logs one line and says the promotion was refused, instead of failing."""
    import mlflow

    from fpn.registry import register_version
    from tune.config import load_search_config
    from tune.search_steps import RatioResult, _promote

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    exp = mlflow.create_experiment("e", artifact_location=str(tmp_path / "artifacts"))
    with mlflow.start_run(experiment_id=exp) as run:
        model = mlflow.initialize_logged_model(name="net")
    mv = register_version(uri, "ga-fpn", f"models:/{model.model_id}", run.info.run_id,
                          tags={"ratio": "1"})  # no test_dice, no provenance: the gate refuses
    cfg = load_search_config(None, {"workdir": str(tmp_path), "mlflow": uri})
    result = RatioResult(1.0, "s", "p", 1, model_version=str(mv.version),
                         test={"dice_mean": 0.5})
    decision, refused = _promote(cfg, [result])
    assert refused and "refused" in decision
    assert "refused" in capsys.readouterr().out


# -- shared pretraining per architecture ---------------------------------------------------------

def _pretrain_config(**kwargs):
    from fpn.config import build_train_config

    return build_train_config(None, {
        "task": "pretrain", "model.name": "fpn", "model.kwargs": {"width": 0.25, **kwargs},
        "data.store": "/x/store.zarr", "data.target": "inverted_faf", "epochs": 2, "seed": 0,
        "run_name": "ignored", "storage": "/elsewhere", "cpus_per_worker": 1.0})


@pytest.mark.unit
def test_pretraining_key_is_what_the_pretraining_is():
    from tune.pretraining import pretraining_config, pretraining_key

    base = _pretrain_config(depth_convs_offset=-1)
    a = pretraining_key(base, "f" * 64)
    assert a == pretraining_key(base.with_overrides({"storage": "s3://b", "cpus_per_worker": 0.5,
                                                     "run_name": "other"}), "f" * 64)
    assert a != pretraining_key(_pretrain_config(depth_convs_offset=0), "f" * 64)  # architecture
    assert a != pretraining_key(base, "e" * 64)  # store
    assert a != pretraining_key(base.with_overrides({"epochs": 3}), "f" * 64)
    assert a != pretraining_key(base.with_overrides({"data.target": "faf"}), "f" * 64)
    config = pretraining_config(_pretrain_config(), {"depth_convs_offset": -1})
    assert config.model.kwargs == {"width": 0.25, "depth_convs_offset": -1}


def _fake_training(counter: str):
    """A stand-in for run_training (slow enough for the other process to arrive meanwhile)."""
    import time
    from types import SimpleNamespace

    def train(config):
        with open(counter, "a") as fh:
            fh.write(config.run_name + "\n")
        time.sleep(3.0)
        return SimpleNamespace(run_dir=f"{config.storage}/{config.run_name}",
                               mlflow_run_id="r", best_checkpoints=["ckpt"])

    return train


def _contender(storage: str, counter: str, name: str, out: str) -> None:
    import json

    from tune.pretraining import ensure_pretrained

    pre = ensure_pretrained(storage, _pretrain_config(depth_convs_offset=-1), "f" * 64,
                            requester=name, train=_fake_training(counter), poll_s=0.2,
                            log=lambda m: None)
    with open(out, "w") as fh:
        json.dump({"run_dir": pre.run_dir, "reused": pre.reused, "by": pre.trained_by}, fh)


@pytest.mark.unit
def test_two_trials_needing_one_architecture_at_once_pretrain_it_once(tmp_path):
    """Two processes (two trials) ask for the same not-yet-pretrained architecture at the same
    time: one trains it under the lease, the other waits and reuses it; a third, later, finds
    the record without waiting."""
    import json
    import multiprocessing as mp

    from tune.pretraining import ensure_pretrained, pretraining_key

    storage, counter = str(tmp_path / "ray"), str(tmp_path / "trained.txt")
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_contender, args=(storage, counter, f"trial-{i}",
                                                  str(tmp_path / f"out{i}.json")))
             for i in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    key = pretraining_key(_pretrain_config(depth_convs_offset=-1), "f" * 64)
    assert Path(counter).read_text().split() == [f"pretrain-{key}"]  # trained once
    outs = [json.loads((tmp_path / f"out{i}.json").read_text()) for i in range(2)]
    assert outs[0]["run_dir"] == outs[1]["run_dir"]
    assert sorted(o["reused"] for o in outs) == [False, True]
    later = ensure_pretrained(storage, _pretrain_config(depth_convs_offset=-1), "f" * 64,
                              requester="trial-9", train=_fake_training(counter))
    assert later.reused and Path(counter).read_text().count("\n") == 1
    assert (tmp_path / "ray" / "pretrain" / key / "pretrained.json").is_file()
    assert not (tmp_path / "ray" / "pretrain" / key / ".lease").exists()  # released


@pytest.mark.unit
def test_a_dead_pretrainer_is_taken_over(tmp_path):
    """A search killed while pretraining leaves a stale lease and no record: after its TTL the
    next trial takes the lease over and pretrains (across a restart of the search)."""
    from fpn.storage.lease import Lease, LeaseOwner
    from tune.pretraining import ensure_pretrained, pretraining_key

    storage, counter = str(tmp_path / "ray"), str(tmp_path / "trained.txt")
    key = pretraining_key(_pretrain_config(), "f" * 64)
    dead = Lease(str(tmp_path / "ray" / "pretrain" / key / ".lease"), ttl_s=1.0,
                 owner=LeaseOwner.current("killed search"))
    dead.acquire()
    dead._stop.set()  # the holder died: no more heartbeats
    pre = ensure_pretrained(storage, _pretrain_config(), "f" * 64, requester="trial-1",
                            train=_fake_training(counter), poll_s=0.2, log=lambda m: None)
    assert not pre.reused and Path(counter).read_text().count("\n") == 1


# -- network knobs checked at the store's depth --------------------------------------------------

@pytest.mark.unit
def test_an_inert_knob_is_dropped_with_a_message_or_refused():
    """At depth 64 every FPN level reaches depth 1 before its reduction unless one fewer strided
    conv is drawn: with offset 0 (and +1, which cannot take depth 64) only, ``reduction`` cannot
    change the network; with -1 in the space it can."""
    from tune.space_check import InertKnob, check_model_knobs
    from tune.spaces import ParamSpec, SearchSpace

    space = SearchSpace(params={
        "model.kwargs.reduction": ParamSpec(type="categorical", choices=["mean", "max"]),
        "model.kwargs.depth_convs_offset": ParamSpec(type="int", low=0, high=1),
        "optim.lr": ParamSpec(type="float", low=0.01, high=0.1)})
    messages: list[str] = []
    checked = check_model_knobs(space, {"width": 0.5}, "fpn", [64], log=messages.append)
    assert "model.kwargs.reduction" not in checked.params
    assert checked.params["model.kwargs.depth_convs_offset"].choices == [0]
    assert checked.params["optim.lr"] == space.params["optim.lr"]
    text = "\n".join(messages)
    assert "model.kwargs.reduction cannot change the network at the store's depth 64" in text
    assert "every level has depth 1 before the reduction" in text
    assert "depth_convs_offset = 1 cannot take the store's depth 64" in text
    with pytest.raises(InertKnob, match="model.kwargs"):
        check_model_knobs(space, {}, "fpn", [64], strict=True, log=lambda m: None)

    live = SearchSpace(params={
        "model.kwargs.reduction": ParamSpec(type="categorical", choices=["mean", "max"]),
        "model.kwargs.depth_convs_offset": ParamSpec(type="categorical", choices=[-1, 0])})
    messages.clear()
    kept = check_model_knobs(live, {}, "fpn", [64], log=messages.append)
    assert set(kept.params) == set(live.params) and not messages
    # on GPUs the reference width joins the choices
    wide = SearchSpace(params={"model.kwargs.width": ParamSpec(type="categorical",
                                                               choices=[0.25, 0.5])})
    assert check_model_knobs(wide, {}, "fpn", [64], gpus_per_worker=1.0,
                             log=lambda m: None).params["model.kwargs.width"].choices == [
        0.25, 0.5, 1.0]
    assert check_model_knobs(wide, {}, "fpn", [64], log=lambda m: None).params[
        "model.kwargs.width"].choices == [0.25, 0.5]


@pytest.mark.unit
def test_the_default_and_demo_spaces_have_only_live_categorical_network_knobs():
    from tune.presets import SEARCH_PRESETS
    from tune.space_check import check_model_knobs
    from tune.spaces import load_space

    demo_space = load_space(SEARCH_PRESETS["demo"].space)
    for space in (load_space(SEARCH_PRESETS["real"].space), demo_space):
        messages: list[str] = []
        checked = check_model_knobs(space, {"width": 0.5}, "fpn", [64], strict=True,
                                    log=messages.append)
        assert all(s.type == "categorical" for k, s in checked.params.items()
                   if k.startswith("model."))
        assert not messages
    knobs = [s for k, s in demo_space.params.items() if k.startswith("model.kwargs.")]
    assert math.prod(len(s.choices) for s in knobs) == 2  # two architectures


# -- the main job's table ------------------------------------------------------------------------

@pytest.mark.unit
def test_the_comparison_table_is_over_patients_against_the_baseline():
    import csv

    from tune.report import comparison_csv, comparison_markdown

    visits = [f"v{i}" for i in range(10)]
    patients = {v: f"P{i // 2}" for i, v in enumerate(visits)}  # 5 patients, 2 visits each
    scratch = {0.1: {v: 0.70 + 0.01 * i for i, v in enumerate(visits)},
               1.0: {v: 0.90 + 0.001 * i for i, v in enumerate(visits)}}
    pretrained = {0.1: {v: 0.80 + 0.012 * i for i, v in enumerate(visits)},
                  1.0: {v: 0.90 + 0.001 * i for i, v in enumerate(visits)}}
    values = {"FPN": scratch, "FPN (inverted_faf pretraining)": pretrained}
    table = comparison_markdown(values, patients)
    lines = table.splitlines()
    assert lines[0] == "| Method | 0.1 | Δ vs FPN (0.1) | 1 | Δ vs FPN (1) |"
    assert lines[2].startswith("| FPN | 74.5 [") and lines[2].endswith("| ref. |")
    assert "**" not in lines[2] + lines[3]  # the reference is the baseline, not the best row
    # per patient +10.1 ... +10.9 (all one sign): 5 patients give p = 2 / 2^5 = 0.0625 at best,
    # one comparison in the family (ratio 1 is identical: no test)
    assert lines[3].startswith("| FPN (inverted_faf pretraining) | 85.4 [")
    assert "| +10.9 [" in lines[3] and "], p 0.0625 (Holm 0.0625) |" in lines[3]
    assert lines[3].endswith(", p – |")
    assert "n: 5 test patients, 10 visits per cell." in table
    assert "Holm-corrected over the 1 comparison of this table" in table
    assert "With 5 patients a test cannot give p below 0.0625" in table
    rows = list(csv.DictReader(comparison_csv(values, patients).splitlines()))
    assert len(rows) == 4 and "wilcoxon_p_vs_first_row" in rows[0]
    tested = rows[1] if rows[1]["wilcoxon_p_vs_first_row"] else rows[2]
    assert (tested["ratio"], tested["test_patients"], tested["test_visits"]) == ("0.1", "5", "10")
    assert float(tested["wilcoxon_p_vs_first_row"]) == pytest.approx(0.0625)
    assert float(tested["diff_vs_first_row"]) == pytest.approx(0.109)
    with pytest.raises(ValueError, match="no patient for visit 'v0'"):
        comparison_markdown(values, {})
    alone = comparison_markdown({"FPN": scratch}, patients)  # one row: cells, no comparison
    assert alone.splitlines()[2].startswith("| FPN | 74.5 [") and "**" not in alone
    assert "No comparisons" in alone


@pytest.mark.unit
def test_the_demo_searches_scratch_and_pretrained():
    from tune.config import load_search_config

    demo = load_search_config(None, {})
    assert demo.configurations() == ["none", "inverted_faf"]
    assert demo.trials_per_ratio() == 3 and demo.ratios == [0.1, 1.0]
    assert load_search_config(None, {"data": "/x"}).configurations() == ["inverted_faf"]
    assert load_search_config(None, {"ssl": "none"}).configurations() == ["none"]
    fp = "ab" * 32
    assert demo.study_name(0.1, fp) == "ga-fpn-inverted_faf-abababab-r0.1"
    scratch = demo.model_copy(update={"ssl": "none"})
    assert scratch.study_name(0.1, fp) != scratch.study_name(0.1, "cd" * 32)


@pytest.mark.integration
def test_shared_pretraining_on_s3_trains_once(s3_endpoint, tmp_path):
    """The same with the search's storage in a bucket (a cluster's): two trials at once (threads
    with their own leases), one pretraining; the record and the lease live in the bucket."""
    import threading

    import s3fs

    from tests.conftest import S3_BUCKET
    from tune.pretraining import ensure_pretrained, pretraining_key

    storage, counter = f"s3://{S3_BUCKET}/search/ray", str(tmp_path / "trained.txt")
    results = {}

    def trial(name: str) -> None:
        results[name] = ensure_pretrained(storage, _pretrain_config(), "f" * 64, requester=name,
                                          train=_fake_training(counter), poll_s=0.2,
                                          log=lambda m: None)

    threads = [threading.Thread(target=trial, args=(f"trial-{i}",)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert Path(counter).read_text().count("\n") == 1
    assert sorted(p.reused for p in results.values()) == [False, True]
    key = pretraining_key(_pretrain_config(), "f" * 64)
    fs = s3fs.S3FileSystem()
    fs.invalidate_cache()
    assert fs.exists(f"{S3_BUCKET}/search/ray/pretrain/{key}/pretrained.json")
    assert not fs.exists(f"{S3_BUCKET}/search/ray/pretrain/{key}/.lease")


@pytest.mark.integration
def test_a_stopped_trial_is_pruned_with_its_intermediate_values(tmp_path, ray_local):
    """The searcher the study sees: each epoch an intermediate value; a trial ASHA stopped is
    PRUNED (TPE must not read a half-trained score as final); a trial that trained to its end
    (its closing report marked ``final``, whenever ASHA's decision came) is COMPLETE with its
    best score; a finished trial reported again after a restart does not reach the study."""
    import optuna
    import ray

    from fpn import tags as T
    from tune.pruning import stop_board
    from tune.spaces import load_space
    from tune.trial import FINAL
    from tune.tuner import ResumableOptunaSearch

    space = load_space(_space_file(tmp_path))
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = "pruning-unit"
    board = stop_board(study)
    searcher = ResumableOptunaSearch(space=space, metric=T.VAL_SCORE, mode="max",
                                     storage=optuna.storages.RDBStorage(url), study_name=study)
    for trial_id in ("t1", "t2"):
        searcher.suggest(trial_id)
        for epoch, score in enumerate((0.2, 0.3)):
            searcher.on_trial_result(trial_id, {T.VAL_SCORE: score, "training_iteration":
                                                epoch + 1, "epoch": epoch})
    ray.get(board.stop.remote("t1"))
    searcher.on_trial_complete("t1", {T.VAL_SCORE: 0.3, "training_iteration": 2})
    ray.get(board.stop.remote("t2"))  # decided after t2's last epoch: it finishes anyway
    searcher.on_trial_result("t2", {T.VAL_SCORE: 0.35, "training_iteration": 3, FINAL: 1.0})
    searcher.on_trial_complete("t2", {T.VAL_SCORE: 0.35, "training_iteration": 3, FINAL: 1.0})
    searcher.on_trial_result("t2", {T.VAL_SCORE: 0.9, "training_iteration": 4})  # after a restart
    trials = optuna.load_study(study_name=study, storage=url).trials
    assert [t.state.name for t in trials] == ["PRUNED", "COMPLETE"]
    assert trials[0].intermediate_values == {1: 0.2, 2: 0.3}
    assert trials[1].intermediate_values == {1: 0.2, 2: 0.3} and trials[1].value == 0.35


def _space_file(tmp_path: Path) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text("params:\n  optim.lr: {type: float, low: 0.001, high: 0.01, log: true}\n")
    return path
