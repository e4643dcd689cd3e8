"""Experiments that span many training runs: ``python -m tune.experiments paper-table``.

:func:`run_paper_table` trains every (network, pretraining, ratio, seed) of the poster's table on
Ray with a fixed recipe (:mod:`tune.experiments.presets`), evaluates each k-best ensemble on the
test split and writes the table with paired Wilcoxon stars (:mod:`tune.results`, shared with the search).
"""

from __future__ import annotations

from tune.experiments.paper_table import PaperTableResult, row_label, run_paper_table
from tune.experiments.presets import PRESETS, Preset

__all__ = ["PRESETS", "PaperTableResult", "Preset", "row_label", "run_paper_table"]
