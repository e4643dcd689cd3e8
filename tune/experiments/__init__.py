"""Experiments that span many training runs: ``python -m tune.experiments paper-table``.

:func:`run_paper_table` trains every (network, pretraining, ratio, seed) of the poster's table on
Ray with a fixed recipe (:data:`tune.presets.PAPER_PRESETS`), evaluates each k-best ensemble on
the test split and writes the table (:mod:`tune.results`, shared with the search).
"""

from __future__ import annotations

from tune.experiments.paper_table import PaperTableResult, run_paper_table

__all__ = ["PaperTableResult", "run_paper_table"]
