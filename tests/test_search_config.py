"""The search's typed config, unit-tested (no Ray): recipes, the search space and its check
against TrainConfig, the command-line mapping and the exit codes of bad input."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.unit


def _space(tmp_path, text: str) -> str:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return str(path)


# -- recipes ------------------------------------------------------------------------------------

def test_every_shipped_recipe_is_a_valid_train_config():
    from fpn.config import TrainConfig, set_dotted
    from fpn.recipes import RECIPES, recipe_overrides

    for name in RECIPES:
        tree = {"data": {"store": "/x.zarr"}}
        for k, v in recipe_overrides(name).items():
            set_dotted(tree, k, v)
        TrainConfig.model_validate(tree)
    # the reference recipe is TrainConfig's defaults, spelled out where they set the budget
    defaults = TrainConfig.model_validate({"data": {"store": "/x.zarr"}}).flat_params()
    reference = recipe_overrides("reference")
    assert reference and all(defaults[k] == v for k, v in reference.items())
    for name in RECIPES:  # every recipe states its optimiser and its budget
        assert {"optim.name", "steps_per_epoch"} <= set(recipe_overrides(name)), name
    assert recipe_overrides("quick")["model.kwargs.width"] == 0.5


def test_recipe_errors_name_the_recipe_and_the_key(tmp_path):
    from fpn.recipes import load_recipe

    with pytest.raises(ValueError, match="unknown recipe 'fast'"):
        load_recipe("fast")
    bad = tmp_path / "mine.yaml"
    bad.write_text("optim:\n  lrate: 0.1\n")
    with pytest.raises(ValueError, match=r"mine.yaml.*optim.lrate"):
        load_recipe(str(bad))
    bad.write_text("task: pretrain\n")
    with pytest.raises(ValueError, match="'task' is chosen by the caller"):
        load_recipe(str(bad))


def test_demo_and_real_data_recipes():
    from tune.config import load_search_config
    from tune.presets import SEARCH_PRESETS

    demo = load_search_config(None, {})
    assert demo.preset is SEARCH_PRESETS["demo"]
    assert demo.recipe_name() == "cpu-small" and demo.train_config().data.crop == (16, 64)
    real = load_search_config(None, {"data": "/data/store.zarr", "train": {"optim.lr": 0.05}})
    assert real.preset is SEARCH_PRESETS["real"]
    assert real.recipe_name() == "reference" and real.train_config().optim.lr == 0.05
    assert real.train_config().data.crop == (32, 256)
    tiny = load_search_config(None, {"recipe": "tiny", "train": {"batch_size": 2}})
    assert tiny.train_config().data.crop == (8, 32) and tiny.train_config().batch_size == 2


def test_the_presets_are_the_defaults_and_their_help():
    """Every resolved default comes from tune/presets.py, and the help texts say it."""
    from tune.config import SearchConfig, load_search_config
    from tune.presets import SEARCH_PRESETS

    for name, data in (("demo", None), ("real", "/data/store.zarr")):
        preset, cfg = SEARCH_PRESETS[name], load_search_config(None, {"data": data})
        assert cfg.trials_per_ratio() == preset.trials and cfg.train_epochs() == preset.epochs
        assert cfg.pretraining_epochs() == preset.pretraining_epochs(preset.epochs)
        assert cfg.space_file() == preset.space and cfg.recipe_name() == preset.recipe
        assert (cfg.configurations() == ["none", "inverted_faf"]) == preset.baseline
    help_text = SearchConfig.model_fields["space"].description
    assert "tune/demo_space.yaml for the demo, else tune/default_space.yaml" in help_text
    assert f"{SEARCH_PRESETS['demo'].pretrain_epochs} for the demo" in (
        SearchConfig.model_fields["pretrain_epochs"].description)


def test_train_config_is_the_runs_config():
    from tune.config import load_search_config

    cfg = load_search_config(None, {"data": "s3://bucket/store.zarr", "storage": "s3://bucket/ray",
                                    "workers": 2, "train": {"epochs": 99}})
    tcfg = cfg.train_config(epochs=3, cpus_per_worker=0.5)
    assert tcfg.epochs == 3  # the search's epochs win over an override
    assert tcfg.storage == "s3://bucket/ray/trials" and tcfg.data.store == "s3://bucket/store.zarr"
    assert tcfg.workers == 2 and tcfg.cpus_per_worker == 0.5
    pre = cfg.train_config(task="pretrain", target="slo", storage_dir="pretrain")
    assert pre.task == "pretrain" and pre.data.target == "slo" and pre.epochs == 40
    assert load_search_config(None, {"workers_per_trial": 3}).workers == 3  # the old name


# -- the search space ---------------------------------------------------------------------------

def test_default_space_is_valid():
    from tune.config import load_search_config

    space = load_search_config(None, {}).search_space()
    assert "optim.lr" in space.params


@pytest.mark.parametrize(("text", "match"), [
    ("params:\n  optim.lrr: {type: float, low: 0.01, high: 0.1}\n", "'optim.lrr' is not a TrainConfig key"),
    ("params:\n  epochs.x: {type: int, low: 1, high: 2}\n", "'epochs.x' is not a TrainConfig key"),
    ("params:\n  optim.name: {type: categorical, choices: [sgd, adam]}\n", "optim.name = 'adam'"),
    ("params:\n  optim.lr: {type: float, low: 0.0, high: 0.1}\n", "optim.lr = 0.0"),
    ("params:\n  loss.dice_weight: {type: float, low: 0.2, high: 0.8, complement: loss.bce}\n",
     "'loss.bce' is not a TrainConfig key"),
    ("params:\n  optim.lr: {type: float, low: 0.01, high: 0.1}\nfixed:\n  optim.moment: 0.9\n",
     "'optim.moment' is not a TrainConfig key"),
    ("params:\n  optim.lr: {type: float, low: 0.2, high: 0.1}\n", "low <= high"),
])
def test_a_bad_space_fails_when_loaded_naming_file_and_key(tmp_path, text, match):
    from tune.config import load_search_config

    path = _space(tmp_path, text)
    with pytest.raises(ValueError, match=match) as err:
        load_search_config(None, {"space": path})
    assert path in str(err.value)


def test_a_bad_train_override_fails_when_loaded():
    from tune.config import load_search_config

    with pytest.raises(ValueError, match="'optim.lrr' is not a TrainConfig key"):
        load_search_config(None, {"train": {"optim.lrr": 0.1}})
    with pytest.raises(ValueError, match="'batch_size'"):
        load_search_config(None, {"train": {"batch_size": 0}})


def test_space_samples_with_complement_and_fixed(tmp_path):
    import optuna

    from tune.spaces import load_space

    space = load_space(_space(tmp_path, "params:\n  loss.dice_weight: {type: float, low: 0.2, "
                              "high: 0.8, complement: loss.bce_weight}\nfixed:\n  epochs: 2\n"))
    trial = optuna.create_study().ask()
    derived = space(trial)
    assert derived["epochs"] == 2
    assert derived["loss.bce_weight"] == pytest.approx(1 - trial.params["loss.dice_weight"])


def test_scheduler_is_asha_from_two_epochs_on():
    from ray.tune.schedulers import FIFOScheduler

    from tune.config import load_search_config
    from tune.pruning import CooperativeASHA
    from tune.tuner import scheduler_for

    assert isinstance(scheduler_for(load_search_config(None, {"epochs": 1}), "s"), FIFOScheduler)
    asha = scheduler_for(load_search_config(None, {"epochs": 2}), "s")
    # with 2 epochs ASHA decides after epoch 1 (never at the last one)
    assert isinstance(asha, CooperativeASHA) and asha._max_t == 1
    assert [milestone for milestone, _ in asha._brackets[0]._rungs] == [1]


# -- the command line ---------------------------------------------------------------------------

def test_command_line_maps_onto_the_config(tmp_path):
    from tune.search import build_parser, config_from_args

    args = build_parser().parse_args([
        "--data", "/s.zarr", "--ratios", "0.5,0.1", "1.0", "--workers-per-trial", "2",
        "--recipe", "tiny", "--set", "optim.lr=0.01", "--set", "data.crop=[8,16]",
        "--mlflow", "sqlite:////tmp/m.db", "--no-promote", "--epochs", "3"])
    cfg = config_from_args(args)
    assert cfg.ratios == [0.1, 0.5, 1.0] and cfg.workers == 2
    assert cfg.recipe == "tiny" and cfg.train == {"optim.lr": 0.01, "data.crop": [8, 16]}
    assert cfg.mlflow == "sqlite:////tmp/m.db" and not cfg.promote and cfg.epochs == 3
    same = config_from_args(build_parser().parse_args(["--workers", "2", "--ratios", "1"]))
    assert same.workers == 2 and same.ratios == [1.0]


def test_config_file_then_flags(tmp_path):
    from tune.search import build_parser, config_from_args

    f = tmp_path / "search.yaml"
    f.write_text("trials: 7\ntrain:\n  optim.lr: 0.02\n  batch_size: 2\n")
    cfg = config_from_args(build_parser().parse_args(["--config", str(f), "--set", "batch_size=3"]))
    assert cfg.trials == 7 and cfg.train == {"optim.lr": 0.02, "batch_size": 3}


def test_relative_paths_are_the_search_directorys(tmp_path, monkeypatch):
    """``--data store.zarr`` failed every trial: each trial runs in a folder of its own, where
    the relative path named nothing. Local paths and sqlite files are resolved where the search
    starts; URLs and registry URIs are kept as they are."""
    from fpn.config import TrainConfig
    from tune.search import build_parser, config_from_args

    monkeypatch.chdir(tmp_path)
    cfg = config_from_args(build_parser().parse_args([
        "--data", "store.zarr", "--pretrained", "runs/pre", "--storage", "ray",
        "--mlflow", "sqlite:///mlflow.db", "--study-db", "sqlite:///studies/o.db?timeout=30"]))
    assert cfg.data == str(tmp_path / "store.zarr")
    assert cfg.pretrained == str(tmp_path / "runs" / "pre")
    assert cfg.storage_path() == str(tmp_path / "ray")
    assert cfg.mlflow == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert cfg.study_db == f"sqlite:///{tmp_path / 'studies' / 'o.db'}?timeout=30"
    kept = config_from_args(build_parser().parse_args([
        "--data", "s3://bucket/store.zarr", "--pretrained", "models:/ga-fpn@champion",
        "--mlflow", "http://127.0.0.1:5000", "--study-db", "sqlite:////abs/o.db"]))
    assert (kept.data, kept.pretrained, kept.mlflow, kept.study_db) == (
        "s3://bucket/store.zarr", "models:/ga-fpn@champion", "http://127.0.0.1:5000",
        "sqlite:////abs/o.db")
    # a run's config (python -m fpn finetune): the same, and MLFLOW_TRACKING_URI too, since the
    # driver hands its tracking URI to the workers
    run = TrainConfig.model_validate({"data": {"store": "store.zarr"}, "init": "pre/run",
                                      "mlflow": "sqlite:///m.db"})
    assert run.data.store == str(tmp_path / "store.zarr") and run.init == str(tmp_path / "pre" / "run")
    assert run.tracking_uri() == f"sqlite:///{tmp_path / 'm.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///env.db")
    assert TrainConfig.model_validate({"data": {"store": "s"}}).tracking_uri() == (
        f"sqlite:///{tmp_path / 'env.db'}")


@pytest.mark.parametrize(("argv", "match"), [
    (["--ratios", "2"], "ratios must be in (0, 1]"),
    (["--set", "optim.lr"], "--set expects KEY=VALUE"),
    (["--set", "optim.lrr=1"], "'optim.lrr' is not a TrainConfig key"),
    (["--recipe", "nope"], "unknown recipe 'nope'"),
    (["--trials", "0"], "trials"),
])
def test_bad_input_exits_2_with_one_line_before_ray_starts(argv, match, capsys, tmp_path,
                                                           monkeypatch):
    import fpn.training.ray_connect
    from tune.search import main

    def no_ray(*args, **kwargs):  # another test's session Ray may be up: watch the call itself
        raise AssertionError("the search reached Ray before checking its input")

    monkeypatch.setattr(fpn.training.ray_connect, "connect_ray", no_ray)
    assert main([*argv, "--workdir", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err
    assert match in err and err.count("\n") == 1 and "Traceback" not in err


def test_space_typo_exits_2_naming_file_and_key(tmp_path, capsys):
    from tune.search import main

    path = _space(tmp_path, "params:\n  optim.lerning_rate: {type: float, low: 0.01, high: 0.1}\n")
    assert main(["--space", path, "--workdir", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err
    assert path in err and "optim.lerning_rate" in err
    assert not (tmp_path / "w").exists()  # nothing made


def test_fpn_command_line_bad_input_exits_2(capsys, tmp_path):
    from fpn.__main__ import main

    assert main(["finetune", "--data", str(tmp_path / "s.zarr"), "--epochs", "0"]) == 2
    assert "epochs" in capsys.readouterr().err
    assert main(["finetune", "--epochs", "2"]) == 2
    assert "--data STORE is required" in capsys.readouterr().err
    assert main(["finetune", "--data", "x", "--model-arg", "width"]) == 2
    with pytest.raises(SystemExit):  # the demo is orchestration: python -m tune.demo
        main(["demo"])


def test_a_run_at_its_last_epoch_is_never_stopped():
    """ASHA's decision reaches the Train run one report late; after the last epoch the run
    finishes whatever the board says (it would otherwise die before writing its record, and a
    study could end with no finished trial). No Ray needed: the callback returns first."""
    from tune.pruning import StopOnBoardCallback

    callback = StopOnBoardCallback("study", "t1", last_epoch=2)
    assert callback.after_report(None, [{"epoch": 2.0, "val_score": 0.5}], None) is None


@pytest.mark.integration
def test_a_presets_synthetic_store_lies_where_the_runs_config_names_it(tmp_path, ray_local,
                                                                       monkeypatch):
    """With no --data, the search makes its preset's store and every run's config names that
    store; a second search finds it whole and makes nothing again."""
    import dataclasses

    from tune import presets
    from tune.config import SearchConfig
    from tune.search_steps import ensure_store

    tiny = presets.SyntheticStore(shape=(4, 32, 32), visits=2, patients=5, unlabelled=1)
    monkeypatch.setitem(presets.SEARCH_PRESETS, "demo",
                        dataclasses.replace(presets.SEARCH_PRESETS["demo"], store=tiny))
    cfg = SearchConfig(workdir=str(tmp_path))
    made = ensure_store(cfg)
    assert made == cfg.store_path()
    assert made == str(tmp_path / "data" / tiny.folder_name(cfg.seed) / "store.zarr")
    stamp = (tmp_path / "data" / tiny.folder_name(cfg.seed) / "store.zarr" / "zarr.json").stat()
    assert ensure_store(cfg) == made
    again = (tmp_path / "data" / tiny.folder_name(cfg.seed) / "store.zarr" / "zarr.json").stat()
    assert again.st_mtime_ns == stamp.st_mtime_ns  # found whole, not converted again
