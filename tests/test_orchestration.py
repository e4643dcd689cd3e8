"""The orchestration core (tune/core.py, tune/results.py, tune/cli.py, fpn/training/run_record.py):
resource planning, the run record on disk and on S3, the results table, the command-line helpers."""

from __future__ import annotations

import json

import pytest

# -- resource planning (unit) --------------------------------------------------------------------


@pytest.mark.unit
@pytest.mark.parametrize(("kwargs", "expected"), [
    # 2 CPUs, 1 worker per run: two runs at once, 0.95 CPU each (the 2-core CI machine)
    ({"cpus": 2, "gpus": 0, "workers": 1, "runs": 3}, (2, 0.95, 1)),
    ({"cpus": 2, "gpus": 0, "workers": 1, "max_concurrent": 1}, (1, 1.95, 1)),
    ({"cpus": 2, "gpus": 0, "workers": 1, "runs": 1}, (1, 1.95, 1)),
    ({"cpus": 16, "gpus": 0, "workers": 2, "max_concurrent": 3}, (3, 2.642, 2)),
    # fixed CPUs per worker: fewer runs at once so that they fit
    ({"cpus": 4, "gpus": 0, "workers": 1, "cpus_per_worker": 1.5}, (2, 1.5, 1)),
    # GPUs decide the concurrency; CPUs are shared among those runs
    ({"cpus": 8, "gpus": 2, "workers": 1, "gpus_per_worker": 1.0}, (2, 3.95, 3)),
])
def test_plan_resources(kwargs, expected):
    from tune.core import plan_resources

    cpus, gpus = kwargs.pop("cpus"), kwargs.pop("gpus")
    plan = plan_resources(cpus, gpus, **kwargs)
    assert (plan.concurrency, plan.cpus_per_worker, plan.threads_per_worker) == expected


@pytest.mark.unit
def test_plan_resources_refuses_what_cannot_fit():
    from tune.core import DRIVER_CPU, plan_resources

    with pytest.raises(ValueError, match="a run needs 2 GPUs; the cluster has 1"):
        plan_resources(8, 1, workers=2, gpus_per_worker=1.0)
    with pytest.raises(ValueError, match=f"a run needs {DRIVER_CPU + 4:g} CPUs; the cluster has 2"):
        plan_resources(2, 0, workers=1, cpus_per_worker=4.0)


@pytest.mark.unit
def test_the_search_and_the_paper_table_plan_alike():
    """Both front-ends call the one planner: same cluster, same workers -> same plan."""
    import inspect

    from tune import core, search_steps
    from tune.experiments import paper_table

    assert "plan_resources" in inspect.getsource(search_steps.plan_resources)
    assert "plan_resources(" in inspect.getsource(paper_table.run_paper_table)
    assert not hasattr(paper_table, "plan_concurrency")
    assert paper_table.DRIVER_CPU is core.DRIVER_CPU


# -- the run record (unit: local; integration: S3) ------------------------------------------------

def _record(run_dir: str, config: dict):
    from fpn.storage import RunRecord

    return RunRecord(run_name="r", run_dir=run_dir, mlflow_run_id="abc",
                     best_checkpoints=[f"{run_dir}/checkpoint_1"], best_scores=[0.7],
                     score_name="val/dice_mean", train_patients=["P1"], finished=True,
                     config=config)


@pytest.mark.unit
def test_run_record_local(tmp_path):
    from fpn.storage import RUN_FILE
    from fpn.storage.run_record import finished_run, read_run_record, write_run_record

    run_dir = str(tmp_path / "runs" / "r")
    assert read_run_record(run_dir) is None and finished_run(str(tmp_path / "runs"), "r") is None
    write_run_record(_record(run_dir, {"epochs": 2}))
    record = finished_run(str(tmp_path / "runs"), "r")
    assert record is not None and record.usable and record.best_score == 0.7
    assert record.config == {"epochs": 2} and record.train_patients == ["P1"]
    (tmp_path / "runs" / "r" / RUN_FILE).write_text("{not json")
    with pytest.raises(ValueError, match=RUN_FILE):
        read_run_record(run_dir)
    assert finished_run(str(tmp_path / "runs"), "r") is None  # trained again, rewritten
    unfinished = {**json.loads(_record(run_dir, {}).to_json()), "finished": False}
    (tmp_path / "runs" / "r" / RUN_FILE).write_text(json.dumps(unfinished))
    assert finished_run(str(tmp_path / "runs"), "r") is None


@pytest.mark.integration
def test_run_record_on_s3(s3_endpoint):
    """The reader the search uses for ``--storage s3://...`` (it read local paths only before)."""
    from fpn.storage.run_record import finished_run, write_run_record
    from tests.conftest import S3_BUCKET

    storage = f"s3://{S3_BUCKET}/orchestration/trials"
    assert finished_run(storage, "r") is None
    write_run_record(_record(f"{storage}/r", {}))
    record = finished_run(storage, "r")
    assert record is not None and record.usable and record.run_dir == f"{storage}/r"
    # a trial restarted on S3 storage finds its record the same way (tune/trial.py adds the
    # run's identity: tests/test_run_identity.py)
    assert finished_run(storage, "r", store_fingerprint=record.store_fingerprint,
                        config_hash=record.config_hash) is not None


# -- the results table (unit) ---------------------------------------------------------------------

@pytest.mark.unit
def test_search_table_of_earlier_runs():
    """The search's summary table (runs read back from MLflow): shorter configuration names
    first, no bold or stars (one number per cell, no per-visit values), an empty cell where a
    ratio is missing; the patient-level mean and interval where the run logged them, else the
    poster's mean ± std over visits; and the n line under it, which says which."""
    from tune.report import TableRow, table_csv, table_markdown

    rows = [TableRow("FPN (inverted_faf pretraining)", 0.1, 0.61234, 0.1, 4, "s1"),
            TableRow("FPN", 1.0, 0.8, 0.05, 4, "s2"), TableRow("FPN", 0.1, 0.5, 0.2, 4, "s3")]
    assert table_markdown(rows) == (
        "| Method | 0.1 | 1 |\n|---|---|---|\n| FPN | 50.0 ± 20.0 | 80.0 ± 5.0 |\n"
        "| FPN (inverted_faf pretraining) | 61.2 ± 10.0 |  |\n\n"
        "n: 4 visits per cell. Cells: mean ± std over visits (the runs' per-visit summaries; no "
        "patient map, so no patient-level interval or test).\n")
    assert table_csv(rows).splitlines()[0] == \
        "configuration,ratio,dice_mean,dice_std,test_visits,study"
    logged = [TableRow("FPN", 0.1, 0.5, 0.2, 6, "s", patients=2, patient_mean=0.55,
                       ci_low=0.4, ci_high=0.7)]
    md = table_markdown(logged)
    assert "| FPN | 55.0 [40.0, 70.0] |" in md
    assert md.endswith("n: 2 test patients, 6 visits per cell. Cells: mean over patients of each "
                       "patient's mean over its visits [95% bootstrap CI over patients], as the "
                       "runs logged them; no tests (the per-visit values are not at hand).\n")


@pytest.mark.unit
def test_one_plot_for_both_tables(tmp_path):
    """Both tables' plot: the bootstrap interval over patients as error bars (± std over visits
    for a summary cell without one)."""
    from tune.report import TableRow, plot_table
    from tune.results import build_cells, plot_cells

    assert plot_table([TableRow("FPN", 0.1, 0.5, 0.1, 3, "")], tmp_path / "a.png").stat().st_size
    patients = {"v1": "P1", "v2": "P2", "v3": "P3"}
    cells = build_cells({"A": {0.1: {"v1": 0.5, "v2": 0.6, "v3": 0.9}, 1.0: {"v1": 0.9}},
                         "B": {0.1: {"v1": 0.4}}}, patients)
    assert plot_cells(cells, tmp_path / "b.png").stat().st_size


# -- command-line helpers (unit) ------------------------------------------------------------------

@pytest.mark.unit
def test_cli_helpers(capsys):
    from fpn.config import parse_sets
    from fpn.data.store import StoreError
    from tune.cli import run_command

    assert parse_sets(["a.b=1", "c=[1, 2]", "d=true"]) == {"a.b": 1, "c": [1, 2], "d": True}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_sets(["=1"])

    def bad_store() -> int:
        raise StoreError("/x.zarr: not an fpn store\n(details)")

    def failed() -> int:
        raise RuntimeError("every trial failed")

    assert run_command("search", bad_store) == 2
    assert capsys.readouterr().err == "search: error: /x.zarr: not an fpn store (details)\n"
    assert run_command("search", failed) == 1
    assert capsys.readouterr().err == "search: failed: every trial failed\n"


@pytest.mark.unit
def test_same_spelling_in_every_command():
    """--data, --mlflow, --ratios, --workers, --num-cpus, --max-concurrent, --set mean the same
    in the search and the paper table."""
    from tune.experiments.__main__ import build_parser as pt_parser
    from tune.search import build_parser as search_parser

    common = ["--data", "/s.zarr", "--mlflow", "sqlite:////m.db", "--ratios", "0.1,1.0",
              "--workers", "2", "--num-cpus", "2", "--max-concurrent", "1", "--set", "epochs=2"]
    s = search_parser().parse_args(common)
    p = pt_parser().parse_args(["paper-table", *common])
    for attr in ("data", "mlflow", "ratios", "workers", "num_cpus", "max_concurrent", "set"):
        assert getattr(s, attr) == getattr(p, attr), attr
    assert pt_parser().parse_args(["paper-table", "--workers-per-run", "3"]).workers == 3
    assert search_parser().parse_args(["--ratios", "0.1", "1"]).ratios == [0.1, 1.0]
