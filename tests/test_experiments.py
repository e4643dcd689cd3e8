"""``paper-table``: the table's statistics (patient level, :mod:`tune.results`) on hand-made
numbers, then one tiny grid end to end on real local Ray, a real Zarr store and a real sqlite
MLflow, run twice (the second run trains nothing)."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import pytest

from fpn.stats import holm
from tune.results import (
    build_cells,
    cells_csv,
    paired_wilcoxon,
    stars_for,
    table_markdown,
)

VISITS = [f"v{i:02d}" for i in range(12)]
#: 6 patients of two visits each: v00 and v01 are P0's, ...
TWO_VISITS_EACH = {v: f"P{i // 2}" for i, v in enumerate(VISITS)}


def _values(offsets: list[float], base: float = 0.8) -> dict[str, float]:
    return {v: base + o for v, o in zip(VISITS, offsets)}


# -- statistics ------------------------------------------------------------------------------

@pytest.mark.unit
def test_stars_thresholds():
    assert [stars_for(p) for p in (0.0005, 0.005, 0.03, 0.2, None, float("nan"))] == \
        ["***", "**", "*", "", "", ""]


@pytest.mark.unit
def test_a_worse_row_is_tested_over_patients_not_visits():
    jitter = [0.001 * i for i in range(12)]
    good = _values(jitter)
    bad = {v: x - 0.1 - 0.002 * i for i, (v, x) in enumerate(good.items())}  # worse on every visit
    cells = build_cells({"A": {0.1: bad}, "B": {0.1: good}}, TWO_VISITS_EACH)
    by_row = {c.row: c for c in cells}
    a, b = by_row["A"], by_row["B"]
    assert b.best and b.stars == "" and b.p_value is None and b.reference is None
    # 12 visits but 6 patients, every one worse: the exact p is 2 / 2^6, not 2 / 2^12
    assert not a.best and a.reference == "B" and a.p_value == pytest.approx(2 / 2 ** 6)
    assert a.p_holm == a.p_value and a.family == 1 and a.stars == "*"
    assert (a.patients, a.visits, b.patients) == (6, 12, 6)
    assert b.mean == pytest.approx(0.8055) and a.mean == pytest.approx(0.6945)
    assert b.ci_low < b.mean < b.ci_high and b.ci_method == "percentile"
    assert a.comparison.difference == pytest.approx(-0.111)
    md = table_markdown(cells, scale=100)
    assert md.splitlines()[0] == "| Method | 0.1 |"
    assert f"| B | **{100 * b.mean:.1f} [{100 * b.ci_low:.1f}, {100 * b.ci_high:.1f}]** |" in md
    assert f"| A | {100 * a.mean:.1f} [{100 * a.ci_low:.1f}, {100 * a.ci_high:.1f}] * |" in md
    assert "n: 6 test patients, 12 visits per cell." in md
    assert "Holm-corrected over the 1 comparison of this table" in md


@pytest.mark.unit
def test_lower_is_better_and_ties_and_degenerate_tests():
    same = _values([0.0] * 12)
    # all paired differences zero: no test, no star
    assert paired_wilcoxon(same, dict(same), TWO_VISITS_EACH) is None
    # no shared visit: no test
    assert paired_wilcoxon({"v00": 1.0}, {"v02": 2.0}, TWO_VISITS_EACH) is None
    # three patients cannot reach p < 0.05 (exact two-sided minimum 0.25): no star, and the
    # note under the table says so
    three = {"a": "P1", "b": "P2", "c": "P3"}
    few = build_cells({"A": {1.0: {"a": 1.0, "b": 1.0, "c": 1.0}},
                       "B": {1.0: {"a": 0.5, "b": 0.4, "c": 0.3}}}, three)
    assert [c.stars for c in few] == ["", ""] and few[0].best
    assert few[1].p_value == pytest.approx(0.25) and few[1].min_p == pytest.approx(0.25)
    assert "With 3 patients a test cannot give p below 0.25" in table_markdown(few)
    # HD95: lower is better; NaN visits are left out of the mean and the pairing
    hd = build_cells({"A": {0.5: {"a": 2.0, "b": float("nan")}}, "B": {0.5: {"a": 5.0, "b": 6.0}}},
                     three, higher_is_better=False)
    a, b = hd
    assert a.best and a.mean == 2.0 and a.visits == 1 and a.patients == 1 and b.mean == 5.5
    assert b.comparison.n_patients == 1 and b.p_value is None  # one common patient: no test
    with pytest.raises(ValueError, match="no patient for visit 'zz'"):
        build_cells({"A": {1.0: {"zz": 1.0}}}, three)


@pytest.mark.unit
def test_empty_cells_and_column_order():
    cells = build_cells({"A": {1.0: {"a": 0.9}, 0.1: {"a": 0.5}}, "B": {1.0: {"a": 0.8}}},
                        {"a": "P1"})
    assert [(c.row, c.ratio) for c in cells] == [("A", 0.1), ("A", 1.0), ("B", 1.0)]
    md = table_markdown(cells, scale=100)
    assert md.splitlines()[0] == "| Method | 0.1 | 1 |"
    assert md.splitlines()[3] == "| B |  | 80.0 [–] |"  # one patient: no interval
    assert "[–]: one patient, no interval." in md
    rows = list(csv.DictReader(cells_csv({"dice": cells}).splitlines()))
    assert len(rows) == 3 and rows[0]["metric"] == "dice" and rows[0]["best"] == "1"
    assert rows[0]["patients"] == "1" and rows[0]["ci_method"] == "undefined"


@pytest.mark.unit
def test_holm_family_is_the_whole_table():
    """Every comparison of the table (all columns) is one family; stars from the corrected p."""
    eight = {f"u{i}": f"P{i}" for i in range(8)}
    best = {u: 0.9 for u in eight}
    below = {u: 0.8 - 0.01 * i for i, u in enumerate(eight)}          # below on every patient
    mixed = {u: 0.9 + (0.02 if i % 2 else -0.03) for i, u in enumerate(eight)}
    cells = build_cells({"A": {0.1: best, 1.0: best}, "B": {0.1: below, 1.0: below},
                         "C": {0.1: mixed, 1.0: below}}, eight)
    compared = [c for c in cells if c.comparison is not None]
    assert len(compared) == 4 and {c.family for c in compared} == {4}
    assert [c.p_holm for c in compared] == pytest.approx(list(holm([c.p_value for c in compared])))
    b = next(c for c in cells if (c.row, c.ratio) == ("B", 0.1))
    assert b.p_value == pytest.approx(2 / 2 ** 8) and b.p_holm == pytest.approx(4 * 2 / 2 ** 8)
    assert b.stars == "*"  # "**" before the correction
    assert "Holm-corrected over the 4 comparisons of this table" in table_markdown(cells)


# -- seeds -----------------------------------------------------------------------------------

# Two seeds, four test visits of three patients (P1 has two). A's two models are equally good on
# average but wrong on opposite visits; B is below A on every (seed, visit) pair, by distinct
# amounts 0.05 ... 0.40.
PATIENTS = {"v0": "P1", "v1": "P1", "v2": "P2", "v3": "P3"}
A_SEEDS = {0: {"v0": 0.9, "v1": 0.7, "v2": 0.8, "v3": 0.6},     # P1 0.8, P2 0.8, P3 0.6
           1: {"v0": 0.6, "v1": 0.8, "v2": 0.7, "v3": 0.9}}     # P1 0.7, P2 0.7, P3 0.9
B_SEEDS = {0: {"v0": 0.8, "v1": 0.5, "v2": 0.5, "v3": 0.2},     # P1 0.65, P2 0.5, P3 0.2
           1: {"v0": 0.55, "v1": 0.65, "v2": 0.45, "v3": 0.55}}  # P1 0.6, P2 0.45, P3 0.55


@pytest.mark.unit
def test_two_seeds_by_hand():
    from tune.results import build_seed_cells, seed_table_markdown

    a, b = build_seed_cells({"A": {0.1: A_SEEDS}, "B": {0.1: B_SEEDS}}, PATIENTS)
    # A: seed means over patients 2.2 / 3 and 2.3 / 3; every patient's seed average is 0.75
    assert [s for s, _, _ in a.per_seed] == [0, 1]
    assert [m for _, m, _ in a.per_seed] == pytest.approx([2.2 / 3, 2.3 / 3])
    assert (a.mean, a.std) == pytest.approx((0.75, 0.0))
    assert (a.ci_low, a.ci_high) == pytest.approx((0.75, 0.75))  # identical patients: collapsed
    assert a.seed_sd == pytest.approx(0.1 / 3 / 2 ** 0.5)
    assert (a.seed_min, a.seed_max) == pytest.approx((2.2 / 3, 2.3 / 3))
    # B: seed means 1.35 / 3 = 0.45 and 1.6 / 3; patients P1 0.625, P2 0.475, P3 0.375
    assert [m for _, m, _ in b.per_seed] == pytest.approx([0.45, 1.6 / 3])
    assert b.mean == pytest.approx((0.625 + 0.475 + 0.375) / 3)
    assert dict(b.summary.patient_values) == pytest.approx({"P1": 0.625, "P2": 0.475,
                                                            "P3": 0.375})
    assert (a.patients, a.visits, a.seeds) == (3, 4, 2) == (b.patients, b.visits, b.seeds)
    # the poster's numbers stay at hand: mean over seeds of each seed's mean and std over visits
    assert (a.visit_mean, a.visit_std) == pytest.approx((0.75, 0.0125 ** 0.5))
    assert b.per_seed_visits[0][1:] == pytest.approx((0.5, 0.045 ** 0.5))
    # paired over patients, seed s with seed s: B - A per patient, averaged over the seeds:
    # P1 (-0.15 - 0.1) / 2, P2 (-0.3 - 0.25) / 2, P3 (-0.4 - 0.35) / 2; 3 patients, all
    # negative: p = 2 / 2^3 = 0.25, no star (over the 8 (seed, visit) pairs it was 2 / 2^8)
    assert a.best and a.p_value is None and a.stars == ""
    assert dict(b.comparison.differences) == pytest.approx(
        {"P1": -0.125, "P2": -0.275, "P3": -0.375})
    assert b.comparison.n_seeds == 2
    assert b.p_value == pytest.approx(0.25) and b.stars == ""
    md = table_markdown([a, b], scale=100)
    assert "| A | **75.0 [75.0, 75.0]**<br>seeds: sd 2.4 (73.3–76.7) |" in md
    assert f"| B | 49.2 [{100 * b.ci_low:.1f}, {100 * b.ci_high:.1f}]<br>seeds: sd 5.9 " \
           "(45.0–53.3) |" in md
    assert "n: 3 test patients, 4 visits, 2 seeds per cell." in md
    assert "the interval is over patients only" in md
    per_seed = seed_table_markdown([a, b], scale=100)
    assert "| B | s0: 45.0 [" in per_seed and "<br>s1: 53.3 [" in per_seed
    row = next(csv.DictReader(cells_csv({"dice": [a, b]}).splitlines()))
    assert (row["seeds"], row["seed_ids"], row["seed_means"]) == ("2", "0;1", "0.733333;0.766667")
    assert (row["visit_mean"], row["seed_visit_means"]) == ("0.75", "0.75;0.75")


@pytest.mark.unit
def test_seeds_pair_only_with_the_same_seed_and_missing_seeds_drop_out():
    from tune.results import build_seed_cells

    # C ran seed 1 only: its cell is that seed's; it pairs with A's seed-1 model alone, and its
    # NaN visit (HD95 of an empty mask, say) leaves P3 out: 2 patients, p 0.5 at best.
    c_seed1 = {**B_SEEDS[1], "v3": float("nan")}
    a, c = build_seed_cells({"A": {1.0: A_SEEDS}, "C": {1.0: {1: c_seed1}}}, PATIENTS)
    assert a.best and a.seeds == 2
    assert c.seeds == 1 and c.visits == 3 and c.patients == 2 and c.mean == pytest.approx(0.525)
    assert math.isnan(c.seed_sd)
    assert c.comparison.n_seeds == 1 and c.comparison.n_patients == 2
    assert dict(c.comparison.differences) == pytest.approx({"P1": -0.1, "P2": -0.25})
    assert c.p_value == pytest.approx(0.5) and c.min_p == pytest.approx(0.5) and c.stars == ""
    # lower is better (HD95): the best row flips, and the rule is the same
    hd = {c.row: c for c in build_seed_cells({"A": {1.0: A_SEEDS}, "B": {1.0: B_SEEDS}},
                                             PATIENTS, higher_is_better=False)}
    assert hd["B"].best and hd["A"].reference == "B" and hd["A"].p_value == pytest.approx(0.25)


@pytest.mark.unit
def test_paper_table_keeps_each_seeds_model_apart():
    from tune.experiments.paper_table import Job, seed_values
    from tune.results import build_seed_cells

    jobs, done = [], {}
    for row, model, per_seed in (("A", "fpn", A_SEEDS), ("B", "lachinov", B_SEEDS)):
        for seed, visits in per_seed.items():
            name = f"{model}-s{seed}"
            jobs.append(Job(name, {}, evaluate=True, model=model, ratio=0.1, seed=seed))
            done[name] = {"records": [{"visit": v, "patient_id": PATIENTS[v], "dice": x,
                                       "hd95": None} for v, x in visits.items()]}
    jobs.append(Job("pretrain", {}, model="fpn", ssl="inverted_faf"))  # not evaluated: left out
    values = seed_values(jobs, done, "dice")
    assert values == {"FPN": {0.1: A_SEEDS}, "Lachinov et al.": {0.1: B_SEEDS}}
    fpn, lachinov = build_seed_cells(values, PATIENTS)
    assert fpn.best and fpn.mean == pytest.approx(0.75)
    assert lachinov.p_value == pytest.approx(0.25) and lachinov.stars == ""
    assert all(math.isnan(x) for x in seed_values(jobs, done, "hd95")["FPN"][0.1][0].values())


# -- the faithful recipe and the per-network recipes ----------------------------------------

FAITHFUL = {"amp": False, "compile": False, "optim.name": "sgd", "optim.lr": 0.1,
            "optim.momentum": 0.9, "optim.weight_decay": 1e-4, "optim.schedule": "none",
            "optim.warmup_epochs": 0, "optim.pretrained_lr_scale": 1.0, "optim.grad_clip": None,
            "epochs": 40, "data.multiplier": 20, "data.crop": (32, 256), "batch_size": 8,
            "keep_best": 5, "data.offset_std": 0.2, "data.noise_std": 0.0, "data.augment": True,
            "loss.dice_weight": 0.5, "loss.bce_weight": 0.5, "loss.ssim_window": 11,
            "loss.ssim_sigma": 1.5, "loss.l1_weight": 0.0, "reinit_head": False,
            "model.kwargs": {}}


def _get(cfg, dotted):
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


@pytest.mark.unit
@pytest.mark.parametrize("switch", [["--faithful"], ["--recipe", "faithful"]])
def test_one_switch_gives_exactly_the_reference_recipe(switch, tmp_path):
    from fpn.__main__ import build_parser, config_from_args

    for task, extra in (("finetune", ["--ratio", "0.1"]), ("pretrain", ["--target", "slo"])):
        args = build_parser().parse_args([task, *switch, "--data", str(tmp_path), *extra])
        cfg = config_from_args(args, task)
        assert {k: _get(cfg, k) for k in FAITHFUL} == FAITHFUL
        assert cfg.task == task


@pytest.mark.unit
def test_recipe_then_config_then_flags(tmp_path):
    from fpn.__main__ import build_parser, config_from_args, main

    config = tmp_path / "mine.yaml"
    config.write_text(f"data:\n  store: {tmp_path}\n  offset_std: 0.1\noptim:\n  lr: 0.05\n"
                      "model:\n  kwargs:\n    width: 0.5\n")
    args = build_parser().parse_args(["finetune", "--faithful", "--config", str(config),
                                      "--lr", "0.02", "--model-arg", "reduction=mean"])
    cfg = config_from_args(args, "finetune")
    assert cfg.optim.lr == 0.02 and cfg.data.offset_std == 0.1 and cfg.epochs == 40
    assert cfg.model.kwargs == {"width": 0.5, "reduction": "mean"} and cfg.amp is False
    args = build_parser().parse_args(["finetune", "--data", str(tmp_path), "--offset-std", "0"])
    assert config_from_args(args, "finetune").data.offset_std == 0.0
    assert main(["finetune", "--recipe", "fast", "--data", str(tmp_path)]) == 2


@pytest.mark.unit
def test_paper_preset_is_faithful_and_trains_the_ipns_with_adam(tmp_path):
    from tune.experiments.paper_table import plan_jobs
    from tune.presets import PAPER_PRESETS

    paper = PAPER_PRESETS["paper"]
    assert paper.recipe == "faithful"
    shared = {"data.store": str(tmp_path), "storage": str(tmp_path / "runs"),
              "mlflow": "sqlite:///x.db", "experiment": "e", "workers": 1,
              "cpus_per_worker": 1.0}

    def configs(overrides):
        jobs = plan_jobs(paper, shared=shared, overrides=overrides, prefix="pt",
                         models=paper.models, ssl=("none", "slo"), ratios=(0.1,), seeds=1,
                         depth=64)
        return {(j.model, j.config.task): j.config for j in jobs}

    cfgs = configs({})
    for (model, _task), cfg in cfgs.items():
        want = dict(FAITHFUL)
        if model in ("ipn", "ipnv2"):  # Li et al.: Adam, lr 1e-4, no weight decay
            want.update({"optim.name": "adamw", "optim.lr": 1e-4, "optim.weight_decay": 0.0})
        got = {k: _get(cfg, k) for k in want if k != "model.kwargs"}
        assert got == {k: v for k, v in want.items() if k != "model.kwargs"}, (model, _task)
    assert len(cfgs) == 10  # five networks, one pretraining and one fine-tuning each
    # an explicit --set wins for every network, the IPNs included
    forced = configs({"optim.lr": 0.01})
    assert forced[("ipn", "finetune")].optim.lr == 0.01
    assert forced[("ipn", "finetune")].optim.name == "adamw"
    assert forced[("fpn", "finetune")].optim.lr == 0.01
    # the quick preset: the same recipe for every network
    assert PAPER_PRESETS["quick"].model_overrides("ipn") == {}


@pytest.mark.unit
def test_a_run_trained_with_another_recipe_is_not_reused(tmp_path):
    from fpn.config import TrainConfig
    from tune.experiments.paper_table import Job, _check_reuse, recipe_mismatch

    wanted = TrainConfig.model_validate({"data": {"store": str(tmp_path)},
                                         "optim": {"name": "adamw", "lr": 1e-4},
                                         "run_name": "r"})
    recorded = wanted.with_overrides({"optim.name": "sgd", "optim.lr": 0.1, "workers": 4,
                                      "storage": "/elsewhere"}).model_dump(mode="json")
    diff = recipe_mismatch(recorded, wanted)
    assert diff == ["optim.lr: 0.1 -> 0.0001", "optim.name: 'sgd' -> 'adamw'"]
    same = wanted.with_overrides({"workers": 4}).model_dump(mode="json")
    assert recipe_mismatch(same, wanted) == []  # where and how fast it trained do not count
    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    (run / "fpn_run.json").write_text(json.dumps({"run_name": "r", "run_dir": str(run),
                                                  "finished": True, "config": recorded}))
    with pytest.raises(ValueError, match=r"runs/r: finished with another recipe \(optim.lr"):
        _check_reuse([Job("r", wanted)], str(tmp_path / "runs"))
    _check_reuse([Job("r", wanted.with_overrides({"optim.name": "sgd", "optim.lr": 0.1}))],
                 str(tmp_path / "runs"))


# -- end to end ------------------------------------------------------------------------------

TINY = {"model.kwargs.width": 0.25, "epochs": 1, "data.crop": [8, 32], "data.multiplier": 1,
        "data.loader_workers": 0, "batch_size": 2, "keep_best": 1, "max_failures": 0}


def _attempt_lines(runs: Path) -> dict[str, int]:
    return {d.name: len((d / "attempts.jsonl").read_text().splitlines())
            for d in sorted(runs.iterdir()) if (d / "attempts.jsonl").is_file()}


@pytest.mark.integration
def test_paper_table_end_to_end_and_rerun_skips(synthetic_store, ray_local, tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    from tune.experiments import run_paper_table
    from tune.experiments.__main__ import main
    from tune.experiments.paper_table import plan_paper_table

    kwargs = {"out": tmp_path / "pt", "store": str(synthetic_store), "preset": "quick",
              "models": ["fpn"], "ssl": ["none", "inverted_faf"], "ratios": [1.0], "seeds": 1,
              "overrides": TINY}
    plan_args = ["paper-table", "--plan", "--data", str(synthetic_store), "--out",
                 str(tmp_path / "pt"), "--models", "fpn", "--ssl", "none,inverted_faf",
                 "--ratios", "1.0", "--seeds", "1", "--crops-per-second", "2"]
    plan_args += [a for k, v in TINY.items() for a in ("--set", f"{k}={json.dumps(v)}")]
    assert main(plan_args) == 0
    plan = capsys.readouterr().out
    assert "4 runs (0 finished); still to train: 4 runs" in plan
    assert "| pretrain | inverted_faf | 1 | 0 | 1 |" in plan and "| finetune | ratio 1 | 3 | 0 |" in plan
    assert "run-hours of training" in plan
    assert not (tmp_path / "pt" / "runs").exists()  # a plan trains nothing

    first = run_paper_table(**kwargs)
    assert not first.failed, first.failed
    # one pretraining, two fine-tunings and the scratch run for the pretraining's steps too
    assert len(first.trained) == 4
    out = tmp_path / "pt"
    for name in ("paper_table.md", "paper_table.csv", "per_visit.csv", "dice_vs_ratio.png"):
        assert (out / name).is_file(), name
    md = (out / "paper_table.md").read_text()
    for title in ("## Dice (%)", "## HD95 (mm)", "## GA-area error (mm²)"):
        assert title in md
    assert "| Method | 1 |" in md
    assert "\n| FPN | " in md and "\n| FPN (FAF pretraining) | " in md
    assert "\n| FPN (scratch, matched steps) | " in md
    assert "## Dice (%) of each seed's model" in md and "| FPN | s0: " in md
    rows = list(csv.DictReader((out / "paper_table.csv").read_text().splitlines()))
    assert {(r["metric"], r["method"], r["ratio"]) for r in rows} == {
        (m, meth, "1") for m in ("dice", "hd95", "area_error_mm2")
        for meth in ("FPN", "FPN (FAF pretraining)", "FPN (scratch, matched steps)")}
    assert sum(r["best"] == "1" for r in rows if r["metric"] == "dice") == 1
    assert {(r["seeds"], r["seed_ids"]) for r in rows if r["metric"] == "dice"} == {("1", "0")}
    visits = list(csv.DictReader((out / "per_visit.csv").read_text().splitlines()))
    assert visits and {r["method"] for r in visits} == {"FPN", "FPN (FAF pretraining)",
                                                        "FPN (scratch, matched steps)"}

    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    children = client.search_runs(
        [client.get_run(first.parent_run_id).info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{first.parent_run_id}'")
    assert len(children) == 4
    artifacts = {a.path for a in client.list_artifacts(first.parent_run_id)}
    assert {"paper_table.md", "paper_table.csv", "dice_vs_ratio.png"} <= artifacts

    attempts = _attempt_lines(out / "runs")
    assert len(attempts) == 4 and set(attempts.values()) == {1}
    evaluated = {p.parent.name: p.stat().st_mtime_ns
                 for p in (out / "evaluations").glob("*/evaluation.json")}

    replanned = plan_paper_table(**kwargs)
    assert "4 runs (4 finished); still to train: 0 runs, 0 training crops" in replanned

    again = run_paper_table(**kwargs)
    assert again.trained == [] and not again.failed
    assert again.parent_run_id == first.parent_run_id
    assert _attempt_lines(out / "runs") == attempts  # nothing trained again
    assert {p.parent.name: p.stat().st_mtime_ns
            for p in (out / "evaluations").glob("*/evaluation.json")} == evaluated
    assert again.markdown == first.markdown
    cached = out / "evaluations" / next(iter(evaluated)) / "evaluation.json"
    assert json.loads(cached.read_text())["records"]


@pytest.mark.unit
def test_bad_grid_is_refused_before_anything_runs(tmp_path):
    from tune.experiments.__main__ import main

    assert main(["paper-table", "--data", str(tmp_path / "nope.zarr"), "--models", "unet",
                 "--out", str(tmp_path / "o")]) == 2
    assert not (tmp_path / "o").exists()


@pytest.mark.unit
def test_missing_store_is_refused_with_its_name(tmp_path, capsys):
    from tune.experiments.__main__ import main

    missing = tmp_path / "nope.zarr"
    assert main(["paper-table", "--data", str(missing), "--out", str(tmp_path / "o")]) == 2
    assert str(missing) in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.unit
def test_crops_per_second_needs_plan(tmp_path, capsys):
    from tune.experiments.__main__ import main

    assert main(["paper-table", "--crops-per-second", "5", "--out", str(tmp_path / "o")]) == 2
    assert "--plan" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.integration
def test_the_matched_row_trains_the_pretrainings_steps_too(synthetic_store):
    """The compute-matched control: from scratch, for the pretraining's optimiser steps plus
    the fine-tuning's; with a budget in steps per epoch that is one epoch per epoch, with the
    reference's crops per visit it converts the pretraining's steps (more visits: every train
    and unlabelled visit) into fine-tuning epochs."""
    import math

    from fpn.config import build_train_config
    from fpn.data.store import open_store
    from tune.core import compute_matched_config, run_steps

    store = open_store(str(synthetic_store))
    common = {"data.store": str(synthetic_store), "batch_size": 2, "seed": 0}
    ft = build_train_config("tiny", common, {"task": "finetune", "data.target": "mask",
                                             "epochs": 3, "init": "/somewhere/pretrained"})
    pre = build_train_config("tiny", common, {"task": "pretrain", "data.target": "inverted_faf",
                                              "epochs": 2})
    stepped = {"steps_per_epoch": 5}
    matched = compute_matched_config(ft.with_overrides(stepped), pre.with_overrides(stepped),
                                     store)
    assert matched.epochs == 3 + 2 and matched.init is None
    (_, ft_steps), (_, pre_steps) = run_steps(ft, store), run_steps(pre, store)
    assert pre_steps > ft_steps  # the pretraining sees more visits per epoch here
    assert compute_matched_config(ft, pre, store).epochs == 3 + math.ceil(2 * pre_steps / ft_steps)
