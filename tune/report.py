"""What a search reports: the study summary and trial plot of each ratio, the results table.

The table has the poster's format: one row per configuration (``FPN``, ``FPN (inverted_faf
pretraining)``, ...), one column per labelled-data ratio, cells ``mean ± std`` of the test Dice
in percent over test visits. It is built from every search parent run in the MLflow experiment,
so that searches run one after the other (with and without pretraining) fill one table.
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
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


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
                              int(m.get("test/visits", 0)), t.get(T.STUDY, ""))
    return sorted(cells.values(), key=lambda r: (r.configuration, r.ratio))


def search_cells(rows: Sequence[TableRow]) -> list[Cell]:
    """The rows as table cells, in the search table's order (shorter configuration names
    first, e.g. ``FPN`` before ``FPN (inverted_faf pretraining)``; ratios ascending)."""
    ordered = sorted(sorted(rows, key=lambda r: (r.configuration, r.ratio)),
                     key=lambda r: len(r.configuration))
    return [plain_cell(r.configuration, r.ratio, r.dice_mean, r.dice_std, r.visits)
            for r in ordered]


def table_markdown(rows: Sequence[TableRow]) -> str:
    """The poster's table: configurations x ratios, ``mean ± std`` test Dice in %."""
    return results.table_markdown(search_cells(rows), scale=100.0)


def comparison_cells(values: Mapping[str, Mapping[float, Mapping[str, float]]]) -> list[Cell]:
    """Cells of per-visit test Dice ``{row: {ratio: {visit: dice}}}``: mean ± std over the test
    visits, the best row of each ratio bold, the others starred by the paired Wilcoxon test."""
    return results.build_cells(values, higher_is_better=True)


def comparison_markdown(values: Mapping[str, Mapping[float, Mapping[str, float]]]) -> str:
    """The main job's table: one row per configuration (the baseline, e.g. from scratch,
    first), per ratio a column of test Dice in % (mean ± std over test visits) and a column
    ``Wilcoxon p (RATIO)``: the two-sided paired Wilcoxon signed-rank test (over the test
    visits) of the row against the first row; ``ref.`` on the first row, ``–`` when the test is
    undefined (no paired visit, or all differences zero). With one row, no test: the plain
    table."""
    cells = comparison_cells(values)
    rows = list(values)
    if len(rows) < 2:  # nothing to compare: no bold, no stars
        return results.table_markdown([plain_cell(c.row, c.ratio, c.mean, c.std, c.visits)
                                       for c in cells], scale=100.0)
    ratios = sorted({c.ratio for c in cells})
    by_key = {(c.row, c.ratio): c for c in cells}
    head = ["Method"]
    for r in ratios:
        head += [f"{r:g}", f"Wilcoxon p ({r:g})"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---|" * (2 * len(ratios))]
    baseline = rows[0] if rows else None
    for row in rows:
        texts = [row]
        for r in ratios:
            cell = by_key.get((row, r))
            texts.append("" if cell is None else results._cell_text(cell, 100.0, 2))
            if row == baseline:
                texts.append("ref.")
            elif cell is None or r not in values[baseline]:
                texts.append("")
            else:
                p = results.paired_wilcoxon(values[row][r], values[baseline][r])
                texts.append("–" if p is None else f"{p:.3g}{results.stars_for(p)}")
        lines.append("| " + " | ".join(texts) + " |")
    return "\n".join(lines) + "\n"


def comparison_csv(values: Mapping[str, Mapping[float, Mapping[str, float]]]) -> str:
    """One line per cell: configuration, ratio, mean, std (fractions), visits, the Wilcoxon p
    against the first row."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["configuration", "ratio", "dice_mean", "dice_std", "test_visits",
                "wilcoxon_p_vs_first_row"])
    rows = list(values)
    for c in comparison_cells(values):
        p = (None if c.row == rows[0] or c.ratio not in values[rows[0]] else
             results.paired_wilcoxon(values[c.row][c.ratio], values[rows[0]][c.ratio]))
        w.writerow([c.row, f"{c.ratio:g}", f"{c.mean:.6f}", f"{c.std:.6f}", c.visits,
                    "" if p is None else f"{p:.6g}"])
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
