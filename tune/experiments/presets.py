"""The two fixed recipes of ``paper-table``: ``paper`` (the reference) and ``quick`` (a CPU check).

A preset is a recipe (``fpn/recipes/``, :class:`fpn.config.TrainConfig` values) shared by every run
(pretraining and fine-tuning alike) plus the default grid (models, pretraining targets, ratios,
seeds) used when the command line does not give one.

``paper``: the reference recipe, i.e. the TrainConfig defaults (SGD lr 0.1, momentum 0.9, weight
decay 1e-4, 40 epochs of 20 crops of 32 x 256 per volume, batch 8, full-width networks, the 5
best checkpoints), over every network, no / inverted-FAF / SLO pretraining, ratios 0.05, 0.1,
0.2 and 1.0, three seeds.

``quick``: the ``quick`` recipe (``fpn/recipes/quick.yaml``) for 2 CPU cores on the synthetic
store of ``python -m tune.demo`` (12 labelled + 4 unlabelled patients, 16 x 64 x 128, 3 visits):
half-width networks, 16 x 128 crops, 4 crops per volume per epoch, batch 4, AdamW lr 2e-3, 8
epochs, the 3 best checkpoints, no overlays and no logged pyfunc model; by default FPN and Lachinov et al., without and with
inverted-FAF pretraining, ratios 0.1 and 1.0, one seed: 2 pretrainings + 8 fine-tunings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fpn.recipes import recipe_overrides

__all__ = ["PRESETS", "Preset"]


@dataclass(frozen=True)
class Preset:
    """A fixed recipe and its default grid."""

    name: str
    recipe: str = "reference"
    models: tuple[str, ...] = ()
    ssl: tuple[str, ...] = ()
    ratios: tuple[float, ...] = ()
    seeds: int = 1

    @property
    def overrides(self) -> dict[str, Any]:
        """The recipe as dotted TrainConfig overrides."""
        return recipe_overrides(self.recipe)


PRESETS: dict[str, Preset] = {
    "paper": Preset(
        name="paper",
        recipe="reference",
        models=("ipn", "ipnv2", "lachinov", "resensnet", "fpn"),
        ssl=("none", "slo", "inverted_faf"),
        ratios=(0.05, 0.1, 0.2, 1.0),
        seeds=3,
    ),
    "quick": Preset(
        name="quick",
        recipe="quick",
        models=("lachinov", "fpn"),
        ssl=("none", "inverted_faf"),
        ratios=(0.1, 1.0),
        seeds=1,
    ),
}
