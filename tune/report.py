"""What a search reports: the study summary and trial plot of each ratio, the results table.

The main job's table (:func:`comparison_markdown`) compares the configurations of this search
(``FPN``, ``FPN (inverted_faf pretraining)``, ...; the first, the baseline, is the reference) on
the test split, one column per labelled-data ratio, at the patient level (:mod:`tune.results`,
:mod:`fpn.stats`): a cell is the test Dice in % as the mean over test patients of each
patient's mean over its visits, with a 95% bootstrap interval over patients; beside it, the
mean per-patient difference to the baseline with its interval and the Wilcoxon signed-rank p
over patients, Holm-corrected over the table's comparisons. The unit is the patient because
visits of one patient are not independent: the demo's test split of 6 visits of 2 patients is
n = 2, and the table says so (and that 2 patients cannot give p < 0.05) under it.

Without per-visit values (earlier searches, read back from the MLflow experiment), the summary
table (:func:`table_markdown`) prints each (configuration, ratio) as its run logged it: the
patient-level mean and interval where the run logged them (``test/dice_patient_*``), else the
poster's mean ± std over visits, and no test.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fpn import tags as T
from fpn.figures import save_figure
from tune import results
from tune.results import Cell, plain_cell

__all__ = [
    "PARENT_ROLE",
    "TableRow",
    "collect_rows",
    "comparison_csv",
    "comparison_markdown",
    "model_card",
    "plot_table",
    "plot_trials",
    "search_cells",
    "study_summary",
    "table_csv",
    "table_markdown",
]

#: tag value of ``fpn.search_role`` on a search's per-ratio parent run
PARENT_ROLE = T.ROLE_RATIO


@dataclass(frozen=True)
class TableRow:
    """One cell of the table: a configuration at a ratio."""

    configuration: str
    ratio: float
    dice_mean: float
    dice_std: float
    visits: int
    study: str
    patients: int = 0  #: test patients, when the run logged its patient-level summary
    patient_mean: float = math.nan  #: mean over patients of each patient's mean Dice
    ci_low: float = math.nan  #: its 95% bootstrap interval over patients
    ci_high: float = math.nan


def study_summary(study: Any) -> str:
    """Markdown: trial counts by state, the best value and its parameters."""
    from collections import Counter

    counts = Counter(t.state.name for t in study.trials)
    lines = [f"# Study `{study.study_name}`", "",
             "Trials: " + ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items())), ""]
    try:
        best = study.best_trial
    except ValueError:
        lines.append("No completed trial yet.")
        return "\n".join(lines) + "\n"
    lines += [f"Best trial: number {best.number}, validation Dice {best.value:.4f}", "",
              "| parameter | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in sorted(best.params.items())]
    return "\n".join(lines) + "\n"


def plot_trials(study: Any, path: str | Path) -> Path:
    """Validation Dice of each finished trial against its number, and the best so far."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [t for t in study.trials if t.value is not None]
    done.sort(key=lambda t: t.number)
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
    if done:
        xs = [t.number for t in done]
        ys = [t.value for t in done]
        best = [max(ys[: i + 1]) for i in range(len(ys))]
        ax.plot(xs, ys, "o", label="trial (last reported)")
        ax.step(xs, best, where="post", label="best so far")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_xlabel("trial number")
    ax.set_ylabel("validation Dice")
    ax.set_title(study.study_name, fontsize=9)
    ax.set_ylim(0, 1)
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)


def collect_rows(client: Any, experiment_id: str, task: str, model: str,
                 fingerprint: str | None = None) -> list[TableRow]:
    """The latest evaluated parent run of every (configuration, ratio) of ``task``/``model``
    (on the store ``fingerprint`` when given: numbers of other data never share a table)."""
    on_store = f" and tags.`{T.STORE_FINGERPRINT}` = '{fingerprint}'" if fingerprint else ""
    runs = client.search_runs(
        [experiment_id],
        filter_string=(f"tags.`{T.SEARCH_ROLE}` = '{PARENT_ROLE}' and tags.`{T.SEARCH_TASK}` = "
                       f"'{task}' and tags.`{T.MODEL}` = '{model}'{on_store}"),
        order_by=["attributes.start_time ASC"], max_results=1000)
    cells: dict[tuple[str, float], TableRow] = {}
    for run in runs:
        m, t = run.data.metrics, run.data.tags
        if "test/dice_mean" not in m:
            continue
        ratio = float(t.get(T.RATIO, "nan"))
        key = (t.get(T.CONFIGURATION, "?"), ratio)
        cells[key] = TableRow(key[0], ratio, m["test/dice_mean"], m.get("test/dice_std", math.nan),
                              int(m.get("test/visits", 0)), t.get(T.STUDY, ""),
                              int(m.get("test/patients", 0)),
                              m.get("test/dice_patient_mean", math.nan),
                              m.get("test/dice_patient_ci_low", math.nan),
                              m.get("test/dice_patient_ci_high", math.nan))
    return sorted(cells.values(), key=lambda r: (r.configuration, r.ratio))


def search_cells(rows: Sequence[TableRow]) -> list[Cell]:
    """The rows as table cells, in the search table's order (shorter configuration names
    first, e.g. ``FPN`` before ``FPN (inverted_faf pretraining)``; ratios ascending). A row
    whose run logged the patient-level summary carries its patients and interval."""
    ordered = sorted(sorted(rows, key=lambda r: (r.configuration, r.ratio)),
                     key=lambda r: len(r.configuration))
    return [plain_cell(r.configuration, r.ratio,
                       r.patient_mean if r.patients else r.dice_mean,
                       r.dice_std, r.visits, patients=r.patients, ci_low=r.ci_low,
                       ci_high=r.ci_high)
            for r in ordered]


def table_markdown(rows: Sequence[TableRow]) -> str:
    """The summary table of every search of this task, model and store, read back from MLflow:
    configurations x ratios, test Dice in %: the patient-level mean and 95% interval where the
    run logged them, else mean ± std over visits; no tests (no per-visit values here); the n
    line under it."""
    return results.table_markdown(search_cells(rows), scale=100.0)


#: ``{configuration: {ratio: {visit: test Dice}}}``: the search's per-visit values
SearchValues = Mapping[str, Mapping[float, Mapping[str, float]]]


def comparison_cells(values: SearchValues, patients: Mapping[str, str]) -> list[Cell]:
    """Cells of per-visit test Dice at the patient level (:mod:`tune.results`): each row
    compared with the first row (the baseline) of its ratio, Holm over the table.

    Args:
        values: ``{row: {ratio: {visit: dice}}}``, the baseline row first.
        patients: ``{visit: patient id}`` of the test split.
    """
    return results.build_cells(values, patients, higher_is_better=True, reference="first")


def comparison_markdown(values: SearchValues, patients: Mapping[str, str]) -> str:
    """The main job's table, at the patient level.

    One row per configuration (the baseline, e.g. from scratch, first); per ratio a column of
    test Dice in % (mean over patients of each patient's mean over its test visits, with its
    95% bootstrap interval over patients) and a column ``Δ vs BASELINE (RATIO)``: the mean over
    patients of the per-patient difference to the first row with its interval, and the
    two-sided Wilcoxon signed-rank p over patients, Holm-corrected over the comparisons of the
    table (stars from it); ``ref.`` on the first row, ``–`` when the test is undefined. Under
    it the n line (test patients, visits) and the legend, which says when the number of
    patients cannot give p < 0.05. With one row: the cells and the n line, no comparison.

    Args:
        values: ``{row: {ratio: {visit: dice}}}``, the baseline row first.
        patients: ``{visit: patient id}`` of the test split.
    """
    cells = comparison_cells(values, patients)
    rows = list(values)
    if len(rows) < 2:  # nothing to compare: no bold, no stars
        return results.table_markdown(cells, scale=100.0, bold_best=False)
    ratios = sorted({c.ratio for c in cells})
    by_key = {(c.row, c.ratio): c for c in cells}
    baseline = rows[0]
    head = ["Method"]
    for r in ratios:
        head += [f"{r:g}", f"Δ vs {baseline} ({r:g})"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---|" * (2 * len(ratios))]
    # each column's reference: the first row with values there (the baseline, unless it lacks it)
    references = {r: next((row for row in rows if (row, r) in by_key
                           and by_key[(row, r)].patients > 0), None) for r in ratios}
    for row in rows:
        texts = [row]
        for r in ratios:
            cell = by_key.get((row, r))
            texts.append("" if cell is None else
                         results.cell_text(cell, scale=100.0, stars=False, bold_best=False))
            texts.append(_difference_text(cell, is_reference=row == references.get(r)))
        lines.append("| " + " | ".join(texts) + " |")
    notes = results.table_notes(cells, reference=f"the first row ({baseline})")
    return "\n".join(lines) + "\n\n" + notes


def _difference_text(cell: Cell | None, *, is_reference: bool) -> str:
    """``+69.8 [59.1, 80.0], p 0.0625 (Holm 0.125)``; ``ref.`` on the reference row."""
    if cell is None:
        return ""
    if is_reference:
        return "ref."
    if cell.comparison is None:
        return ""
    cmp = cell.comparison
    ci = results.interval_text(cmp.interval.low, cmp.interval.high, 100.0, 1)
    if cell.p_value is None:
        return f"{100.0 * cmp.difference:+.1f} {ci}, p –"
    return (f"{100.0 * cmp.difference:+.1f} {ci}, p {cell.p_value:.3g} "
            f"(Holm {cell.p_holm:.3g}){cell.stars}")


def comparison_csv(values: SearchValues, patients: Mapping[str, str]) -> str:
    """One line per cell, fractions: configuration, ratio, the patient-level mean, sd and
    interval with the n's, the difference to the first row with its interval, the Wilcoxon p
    over patients (raw and Holm), the smallest p the test could give, and the poster's mean ±
    std over visits."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["configuration", "ratio", "dice_mean", "dice_sd", "dice_ci_low", "dice_ci_high",
                "test_patients", "test_visits", "diff_vs_first_row", "diff_ci_low",
                "diff_ci_high", "wilcoxon_p_vs_first_row", "wilcoxon_p_holm", "holm_family",
                "min_attainable_p", "dice_visit_mean", "dice_visit_std"])
    for c in comparison_cells(values, patients):
        cmp = c.comparison
        w.writerow([c.row, f"{c.ratio:g}", f"{c.mean:.6f}", f"{c.std:.6f}", f"{c.ci_low:.6f}",
                    f"{c.ci_high:.6f}", c.patients, c.visits,
                    "" if cmp is None else f"{cmp.difference:.6f}",
                    "" if cmp is None else f"{cmp.interval.low:.6f}",
                    "" if cmp is None else f"{cmp.interval.high:.6f}",
                    "" if c.p_value is None else f"{c.p_value:.6g}",
                    "" if c.p_holm is None else f"{c.p_holm:.6g}", c.family,
                    "" if c.min_p is None else f"{c.min_p:.6g}",
                    f"{c.visit_mean:.6f}", f"{c.visit_std:.6f}"])
    return buf.getvalue()


def table_csv(rows: Sequence[TableRow]) -> str:
    """One line per cell: configuration, ratio, dice_mean, dice_std (fractions), visits, study."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["configuration", "ratio", "dice_mean", "dice_std", "test_visits", "study"])
    for r in rows:
        w.writerow([r.configuration, f"{r.ratio:g}", f"{r.dice_mean:.6f}", f"{r.dice_std:.6f}",
                    r.visits, r.study])
    return buf.getvalue()


def plot_table(rows: Sequence[TableRow], path: str | Path) -> Path:
    """Test Dice (mean ± std) against the labelled-data ratio, one line per configuration."""
    return results.plot_cells(search_cells(rows), path)


def model_card(*, name: str, store: Any, tags: dict[str, str], config: dict[str, Any],
               train_patients: Sequence[str], test: dict[str, Any], study_url: str) -> str:
    """The Markdown model card of a registered version: what data and recipe produced it."""
    import yaml

    data = config.get("data", {})
    lines = [
        f"# {name}: en-face segmentation ensemble",
        "",
        ("Input: one OCT volume `(S, D, W)` (B-scans, depth, A-scans; raw intensities) or a batch "
         "`(B, S, D, W)`. Output: the en-face probability map `(S, W)` / `(B, S, W)`, the mean of "
         f"the {config.get('keep_best', 'k')} best checkpoints' sigmoid outputs; "
         "threshold at 0.5 for the mask."),
        "",
        "## Data",
        f"- store: `{store.location}` (fingerprint `{store.fingerprint}`)",
        (f"- labelled-data ratio {tags.get('ratio')}: {len(train_patients)} training patient(s) "
         f"(subset seed {data.get('subset_seed', '?')})"),
        (f"- test split `{tags.get('test_split')}`: {int(float(test.get('visits', 0)))} "
         f"visit(s), keys sha `{tags.get('test_keys_sha')}`"),
        "",
        "## Results",
        f"- validation Dice (best checkpoint): {float(tags.get('val_dice', 'nan')):.4f}",
        (f"- test Dice: {float(tags.get('test_dice', 'nan')):.4f} ± "
         f"{float(tags.get('test_dice_std', 'nan')):.4f} (mean ± std over test visits)"),
        "",
        "## Recipe",
        f"- self-supervised pretraining: {tags.get('ssl')}"
        + (f" (from `{config.get('init')}`)" if config.get("init") else ""),
        f"- search: Optuna study `{tags.get('study')}` in `{study_url}`, trial `{tags.get('trial')}`",
        f"- MLflow run `{tags.get('mlflow_run_id')}`, git revision `{tags.get('git_revision')}`",
        "",
        "```yaml",
        yaml.safe_dump(config, sort_keys=False).rstrip(),
        "```",
        "",
    ]
    return "\n".join(lines)
