"""``paper-table``: the statistics on hand-made numbers, then one tiny grid end to end on real
local Ray, a real Zarr store and a real sqlite MLflow, run twice (the second run trains nothing)."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import pytest

from tune.results import (
    build_cells,
    cells_csv,
    paired_wilcoxon,
    stars_for,
    table_markdown,
)

VISITS = [f"v{i:02d}" for i in range(12)]


def _values(offsets: list[float], base: float = 0.8) -> dict[str, float]:
    return {v: base + o for v, o in zip(VISITS, offsets)}


# -- statistics ------------------------------------------------------------------------------

@pytest.mark.unit
def test_stars_thresholds():
    assert [stars_for(p) for p in (0.0005, 0.005, 0.03, 0.2, None, float("nan"))] == \
        ["***", "**", "*", "", "", ""]


@pytest.mark.unit
def test_clearly_worse_row_gets_three_stars_and_best_row_none():
    jitter = [0.001 * i for i in range(12)]
    good = _values(jitter)
    bad = {v: x - 0.1 - 0.002 * i for i, (v, x) in enumerate(good.items())}  # worse on every visit
    cells = build_cells({"A": {0.1: bad}, "B": {0.1: good}})
    by_row = {c.row: c for c in cells}
    assert by_row["B"].best and by_row["B"].stars == "" and by_row["B"].p_value is None
    assert not by_row["A"].best and by_row["A"].stars == "***"
    assert by_row["A"].p_value < 0.001
    md = table_markdown(cells, scale=100)
    assert "**80.55 ± 0.35**" in md          # bold lands on the best mean
    assert "| A | 69.45 ± 0.35 *** |" in md
    assert md.splitlines()[0] == "| Method | 0.1 |"


@pytest.mark.unit
def test_lower_is_better_and_ties_and_degenerate_tests():
    same = _values([0.0] * 12)
    # all paired differences zero: no test, no star
    assert paired_wilcoxon(same, dict(same)) is None
    # no shared visit: no test
    assert paired_wilcoxon({"a": 1.0}, {"b": 2.0}) is None
    # three visits cannot reach p < 0.05 (exact two-sided minimum 0.25): no star
    few = build_cells({"A": {1.0: {"a": 1.0, "b": 1.0, "c": 1.0}},
                       "B": {1.0: {"a": 0.5, "b": 0.4, "c": 0.3}}})
    assert [c.stars for c in few] == ["", ""] and few[0].best
    # HD95: lower is better; NaN visits are left out of the mean and the pairing
    hd = build_cells({"A": {0.5: {"a": 2.0, "b": float("nan")}}, "B": {0.5: {"a": 5.0, "b": 6.0}}},
                     higher_is_better=False)
    a, b = hd
    assert a.best and a.mean == 2.0 and a.visits == 1 and b.mean == 5.5


@pytest.mark.unit
def test_empty_cells_and_column_order():
    cells = build_cells({"A": {1.0: {"a": 0.9}, 0.1: {"a": 0.5}}, "B": {1.0: {"a": 0.8}}})
    assert [(c.row, c.ratio) for c in cells] == [("A", 0.1), ("A", 1.0), ("B", 1.0)]
    md = table_markdown(cells, scale=100)
    assert md.splitlines()[0] == "| Method | 0.1 | 1 |"
    assert md.splitlines()[3] == "| B |  | 80.00 ± 0.00 |"
    rows = list(csv.DictReader(cells_csv({"dice": cells}).splitlines()))
    assert len(rows) == 3 and rows[0]["metric"] == "dice" and rows[0]["best"] == "1"


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
    assert "3 runs (0 finished); still to train: 3 runs" in plan
    assert "| pretrain | inverted_faf | 1 | 0 | 1 |" in plan and "| finetune | ratio 1 | 2 | 0 |" in plan
    assert "run-hours of training" in plan
    assert not (tmp_path / "pt" / "runs").exists()  # a plan trains nothing

    first = run_paper_table(**kwargs)
    assert not first.failed, first.failed
    assert len(first.trained) == 3  # one pretraining, two fine-tunings
    out = tmp_path / "pt"
    for name in ("paper_table.md", "paper_table.csv", "per_visit.csv", "dice_vs_ratio.png"):
        assert (out / name).is_file(), name
    md = (out / "paper_table.md").read_text()
    for title in ("## Dice (%)", "## HD95 (mm)", "## GA-area error (mm²)"):
        assert title in md
    assert "| Method | 1 |" in md
    assert "\n| FPN | " in md and "\n| FPN (FAF) | " in md
    rows = list(csv.DictReader((out / "paper_table.csv").read_text().splitlines()))
    assert {(r["metric"], r["method"], r["ratio"]) for r in rows} == {
        (m, meth, "1") for m in ("dice", "hd95", "area_error_mm2") for meth in ("FPN", "FPN (FAF)")}
    assert sum(r["best"] == "1" for r in rows if r["metric"] == "dice") == 1
    visits = list(csv.DictReader((out / "per_visit.csv").read_text().splitlines()))
    assert visits and {r["method"] for r in visits} == {"FPN", "FPN (FAF)"}

    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    children = client.search_runs(
        [client.get_run(first.parent_run_id).info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{first.parent_run_id}'")
    assert len(children) == 3
    artifacts = {a.path for a in client.list_artifacts(first.parent_run_id)}
    assert {"paper_table.md", "paper_table.csv", "dice_vs_ratio.png"} <= artifacts

    attempts = _attempt_lines(out / "runs")
    assert len(attempts) == 3 and set(attempts.values()) == {1}
    evaluated = {p.parent.name: p.stat().st_mtime_ns
                 for p in (out / "evaluations").glob("*/evaluation.json")}

    replanned = plan_paper_table(**kwargs)
    assert "3 runs (3 finished); still to train: 0 runs, 0 training crops" in replanned

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
