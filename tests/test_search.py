"""End to end on CPU: `python -m tune.search` with shared pretraining on the tiny store, killed
after its first finished trial and run again; then the studies, MLflow runs, registered versions,
the shared pretrainings and the table. Two epochs per trial, so that ASHA (not FIFO) schedules the
trials and may stop some after epoch 1; two architectures drawn at two ratios, so that each is
pretrained once and reused across trials, ratios and the restart. Then a second search on another
store in the same workdir, which must be its own (identity by the store's fingerprint).

One search serves all of these (it was three modules with a search each): the suite's time is
mostly Ray and Tune starting up, not training. The search whose store (``--data s3://``), Ray
storage (``--storage s3://``) and MLflow artifacts are all on an S3 endpoint on 127.0.0.1 (moto's
server), and which must register a version from the trials' records in the bucket, is step 4 of
``tests/test_local_cluster.py`` (the docs/cluster.md sequence, a real two-node cluster and an
``mlflow server``); this module ran a second copy of it on a local Ray until 2026-12-04."""

from __future__ import annotations

import json
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
TRIALS = 2  # per ratio: ASHA has two to compare, and the two architectures can both be drawn
ROOT = Path(__file__).resolve().parent.parent
# two architectures (two shared pretrainings) and the learning rate
SPACE = """optimizer: sgd  # the tiny recipe's (fpn/recipes/tiny.yaml)
params:
  model.kwargs.depth_convs_offset: {type: categorical, choices: [-1, 0]}
  optim.lr: {type: float, low: 0.01, high: 0.1, log: true}
fixed: {}
"""
E2E = (pytest.mark.slow, pytest.mark.integration)


def _e2e(test):
    for mark in E2E:
        test = mark(test)
    return test


def _args(store: Path | str, work: Path, *, ratios: tuple[str, ...] = RATIOS,
          trials: int = TRIALS, ssl: str = "none", epochs: int = 2) -> list[str]:
    """Run in ``work``, with the store and the tracking database named relative to it, as a
    user types them (each trial runs in a folder of its own: the search resolves them)."""
    # the tiny recipe (fpn/recipes/tiny.yaml): 8 x 32 crops, one per visit, batch 4, 1 best
    return [sys.executable, "-m", "tune.search", "--data", os.path.relpath(store, work),
            "--mlflow", "sqlite:///mlflow.db", "--workdir", str(work),
            "--ssl", ssl, "--ratios", *ratios, "--trials", str(trials), "--epochs", str(epochs),
            "--pretrain-epochs", "1", "--num-cpus", "2", "--seed", "0", "--recipe", "tiny"]


def _pretrained_args(store: Path | str, work: Path, **kw) -> list[str]:
    space = work / "space.yaml"
    space.write_text(SPACE)
    return [*_args(store, work, ssl="inverted_faf", **kw), "--space", str(space)]


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
        # finished: trained to the end, or pruned by ASHA
        out[s.study_name] = sum(t.state.name in ("COMPLETE", "PRUNED") for t in study.trials)
    return out


def _tiny_store(root: Path, seed: int) -> Path:
    """The conftest's tiny synthetic store (another ``seed``: another store), converted on the
    session's local Ray (the ``ray_local`` fixture: never a cluster another job started here)."""
    from data_prep.convert import convert
    from data_prep.synthetic import make_synthetic_dataset
    from tests.conftest import SYNTHETIC_SHAPE

    make_synthetic_dataset(root / f"source{seed}", patients=4, unlabelled=2,
                           shape=SYNTHETIC_SHAPE, visits=2, seed=seed)
    stats = convert(str(root / f"source{seed}"), str(root / f"store{seed}.zarr"), progress=False)
    assert stats.ok, stats.summary_line()
    return root / f"store{seed}.zarr"


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory, ray_local) -> Path:
    return _tiny_store(tmp_path_factory.mktemp("tiny"), seed=0)


@pytest.fixture(scope="module")
def searched(tiny_store, tmp_path_factory):
    """Run the search, SIGKILL it once a trial has finished, run it again to the end."""
    work = tmp_path_factory.mktemp("search")
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONPATH": str(ROOT)}
    first = subprocess.Popen(_pretrained_args(tiny_store, work), cwd=work, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    deadline = time.monotonic() + 600  # a loaded machine: two pretrainings come first
    before: dict[str, int] = {}
    while time.monotonic() < deadline and first.poll() is None:
        before = _complete_trials(work / "optuna.db")
        if sum(before.values()) >= 1:
            break
        time.sleep(2)
    os.killpg(first.pid, signal.SIGKILL)  # the search and the Ray it started
    first.wait()
    assert sum(before.values()) >= 1, "no trial finished before the kill"
    again = subprocess.run(_pretrained_args(tiny_store, work), cwd=work, env=env,
                           capture_output=True, text=True, timeout=600, check=False)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    return work, before, again.stdout + again.stderr


@_e2e
def test_studies_hold_each_trial_once(searched):
    work, before, _ = searched
    after = _complete_trials(work / "optuna.db")
    import re

    assert len(after) == 2 and all(re.fullmatch(r"ga-fpn-inverted_faf-[0-9a-f]{8}-r(0\.5|1)", s)
                                   for s in after), after
    assert all(n == TRIALS for n in after.values()), after
    for study, n in before.items():
        assert after[study] >= n


@_e2e
def test_optuna_is_told_the_truth(searched):
    """A trial ASHA stopped is PRUNED in its study (with the epochs it ran as intermediate
    values), never COMPLETE; one that trained to its end is COMPLETE with its best score."""
    import optuna
    from mlflow.tracking import MlflowClient

    work, _, _ = searched
    url = f"sqlite:///{work / 'optuna.db'}"
    client = MlflowClient(tracking_uri=f"sqlite:///{work / 'mlflow.db'}")
    exp = client.get_experiment_by_name("fpn-search")
    stopped = {r.data.tags["fpn.trial_id"] for r in client.search_runs([exp.experiment_id])
               if r.data.tags.get("fpn.status") == "stopped"}
    for summary in optuna.get_all_study_summaries(url):
        study = optuna.load_study(study_name=summary.study_name, storage=url)
        for t in study.trials:
            assert t.state.name in ("COMPLETE", "PRUNED"), (t.number, t.state)
            assert t.intermediate_values, t.number  # every epoch reported
            assert len(t.intermediate_values) <= 2  # the epochs, not the closing summary
    pruned = [t for s in optuna.get_all_study_summaries(url)
              for t in optuna.load_study(study_name=s.study_name, storage=url).trials
              if t.state.name == "PRUNED"]
    assert len(pruned) == len(stopped)


@_e2e
def test_the_console_is_for_people(searched):
    """The restarted search's console: a line per trial event and the progress bar; no
    traceback for ASHA's stops, no worker epoch lines, no Ray Train noise, no line twice."""
    _, _, out = searched
    lines = [ln.strip() for ln in out.replace("\r", "\n").splitlines() if ln.strip()]
    text = "\n".join(lines)
    for noise in ("Traceback", "TrialStopped", "Reporting training result", "[fpn] epoch",
                  "Add type hints"):
        assert noise not in text, noise
    events = [ln for ln in lines if "fine-tunings" not in ln]  # tqdm redraws its bar
    repeated = {ln: n for ln, n in Counter(events).items() if n > 1 and set(ln) != {"-"}}
    assert not repeated, repeated
    assert len(events) < 80, len(events)


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
    assert "| Method | 0.5 | 1 |" in table
    assert "test patients" in table and "bootstrap CI over patients" in table  # patient level
    assert "| FPN (FAF pretraining) |" in table
    assert "pruned by ASHA" in table  # the notes say what the searches were
    assert (work / "results" / "table.csv").read_text().count("\n") == 1 + len(RATIOS)
    assert (work / "results" / "dice_vs_ratio.png").stat().st_size > 0
    assert "optuna-dashboard sqlite:///" in out and "mlflow ui --backend-store-uri" in out


def check_shared_pretraining(work: Path, *, ratios: int, trials_per_ratio: int) -> None:
    """Each architecture drawn is pretrained once and every trial fine-tunes the pretraining of
    the architecture it drew (callable on a search run by hand)."""
    from mlflow.tracking import MlflowClient

    from fpn.storage.run_record import finished_run

    client = MlflowClient(tracking_uri=f"sqlite:///{work / 'mlflow.db'}")
    exp = client.get_experiment_by_name("fpn-search")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    pretrain_runs = [r for r in runs if r.data.tags.get("fpn.search_role") == "pretrain"]
    trials = [r for r in runs if r.data.tags.get("fpn.search_role") == "trial"]
    parents = [r for r in runs if r.data.tags.get("fpn.search_role") == "ratio"]
    assert len(parents) == ratios and len(trials) == ratios * trials_per_ratio

    records = {p.parent.name: json.loads(p.read_text())
               for p in (work / "ray" / "pretrain").glob("*/pretrained.json")}
    drawn = {json.loads(t.data.tags["fpn.trial_params"])["model.kwargs.depth_convs_offset"]
             for t in trials}
    # each architecture drawn is pretrained once: one record, one MLflow run each
    assert len(records) == len(drawn) == len(pretrain_runs)
    assert sorted(r["kwargs"]["depth_convs_offset"] for r in records.values()) == sorted(drawn)
    assert sorted(r.data.tags["fpn.pretraining_key"] for r in pretrain_runs) == sorted(records)
    # every trial fine-tuned the pretraining of the architecture it drew, and its network is it
    # (a trial that ASHA stopped has no finished record: its tags still say what it loaded)
    finished = 0
    for t in trials:
        offset = json.loads(t.data.tags["fpn.trial_params"])["model.kwargs.depth_convs_offset"]
        key = t.data.tags["fpn.pretraining_key"]
        assert records[key]["kwargs"]["depth_convs_offset"] == offset
        record = finished_run(str(work / "ray" / "trials"), t.data.tags["fpn.run_name"])
        if record is None:
            assert t.data.tags.get("fpn.status") == "stopped", t.data.tags
            continue
        finished += 1
        assert record.config["model"]["kwargs"]["depth_convs_offset"] == offset
        assert record.config["init"] == records[key]["run_dir"]
    assert finished >= ratios  # at least each ratio's best
    # per ratio on the parent run: trained + reused = the ratio's trials; trained once overall
    trained = reused = 0
    for p in parents:
        trained += int(p.data.metrics["pretrain/trained"])
        reused += int(p.data.metrics["pretrain/reused"])
    assert trained == len(records) and trained + reused == len(trials)
    assert sum(t.data.tags["fpn.pretraining"] == "trained" for t in trials) == len(records)


@_e2e
def test_each_architecture_is_pretrained_once_and_every_trial_uses_its_own(searched):
    """Across both ratios and the kill and restart: no pretraining is trained twice."""
    work, _, out = searched
    check_shared_pretraining(work, ratios=len(RATIOS), trials_per_ratio=TRIALS)
    assert "pretraining(s) trained" in out and "reused" in out


@pytest.fixture(scope="module")
def searched_again_on_another_store(searched, tmp_path_factory, ray_local):
    """The same search (one trial, one epoch, ratio 1.0) on another store in the same workdir.
    It changes the workdir: the tests of the first search come before the tests using it."""
    work, _, _ = searched
    other = _tiny_store(tmp_path_factory.mktemp("other"), seed=1)
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONPATH": str(ROOT)}
    run = subprocess.run(_pretrained_args(other, work, ratios=("1.0",), trials=1, epochs=1),
                         cwd=work, env=env, capture_output=True, text=True, timeout=600,
                         check=False)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return work, other, run.stdout


@_e2e
def test_a_search_on_another_store_in_the_same_workdir_is_its_own(
        tiny_store, searched_again_on_another_store):
    """Before, the second search reused the first's trials and cached test Dice, and re-tagged
    its registered version with the new store's fingerprint."""
    import optuna
    from mlflow.tracking import MlflowClient

    from fpn.data.store import open_store

    work, other, out = searched_again_on_another_store
    fp, fp_other = (open_store(str(s)).fingerprint for s in (tiny_store, other))
    assert fp != fp_other
    assert "already holds" not in out  # the second search ran its own trial

    studies = sorted(s.study_name for s in optuna.get_all_study_summaries(
        f"sqlite:///{work / 'optuna.db'}"))
    assert studies == sorted([f"ga-fpn-inverted_faf-{fp[:8]}-r0.5",
                              f"ga-fpn-inverted_faf-{fp[:8]}-r1",
                              f"ga-fpn-inverted_faf-{fp_other[:8]}-r1"])
    assert all((work / "ray" / name).is_dir() for name in studies)  # own Tune experiments

    uri = f"sqlite:///{work / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp = client.get_experiment_by_name("fpn-search")
    parents = client.search_runs([exp.experiment_id],
                                 filter_string="tags.`fpn.search_role` = 'ratio'")
    assert sorted(p.data.tags["fpn.store_fingerprint"] for p in parents) == sorted(
        [fp, fp, fp_other])
    assert all("test/dice_mean" in p.data.metrics for p in parents)
    versions = client.search_model_versions("name='ga-fpn'")
    # the first search's versions keep their store; the second registered its own
    assert sorted(v.tags["store_fingerprint"] for v in versions) == sorted([fp, fp, fp_other])
    assert len({v.tags["mlflow_run_id"] for v in versions}) == 3
    # a pretraining is known by its store too: the other store's was trained, not reused
    stores = sorted(json.loads(p.read_text())["store_fingerprint"]
                    for p in (work / "ray" / "pretrain").glob("*/pretrained.json"))
    assert stores.count(fp_other) == 1 and fp in stores
    # the second search's table is its own store's
    assert (work / "results" / "table.md").read_text().count("| FPN (FAF pretraining)") == 1


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
