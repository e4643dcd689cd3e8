"""What the defaults are: every preset of the orchestration commands, side by side.

"What does the default search search, with which recipe?" is answered here and nowhere else:

- :data:`SEARCH_PRESETS`: ``python tune/search.py`` with no ``--data`` runs the ``demo`` preset
  (a synthetic store it makes, the ``cpu-small`` recipe, ``tune/demo_space.yaml``, scratch and
  pretrained rows); with ``--data`` the ``real`` preset (the ``reference`` recipe,
  ``tune/default_space.yaml``, the pretrained row only). A flag or ``--config`` value wins over
  the preset.
- :data:`PAPER_PRESETS`: ``python -m tune.experiments paper-table --preset quick|paper``.
- :data:`DEMO_SLICE`: ``python -m tune.demo``.

Recipes (:mod:`fpn.recipes`) say how a run trains; presets say which runs a command makes and
on what data. The help texts of the commands are generated from these values, so they cannot
drift from them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "AUTHORS_OPTIMISER",
    "DEMO_SLICE",
    "DEMO_STORE",
    "PAPER_PRESETS",
    "SEARCH_PRESETS",
    "DemoSlicePreset",
    "PaperPreset",
    "SearchPreset",
    "SyntheticStore",
    "search_preset_help",
]

_HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class SyntheticStore:
    """A synthetic data set made (once) by a command that is given no ``--data``
    (:func:`tune.core.make_synthetic_store`), on the default ``hard`` phantom."""

    shape: tuple[int, int, int] = (16, 64, 128)  #: (S, D, W) of every volume
    visits: int = 3  #: the most visits per eye (each eye gets this many or one fewer)
    patients: int = 40  #: labelled patients, split 60/20/20 into train/val/test
    unlabelled: int = 4  #: patients without masks (pretraining only)

    def folder_name(self, seed: int) -> str:
        """The data set's own folder: what it is, so that another spec never reuses it."""
        s, d, w = self.shape
        return (f"synthetic-{self.patients}p{self.unlabelled}u-{self.visits}v-{s}x{d}x{w}"
                f"-seed{seed}")

    def store_path(self, folder: str | Path, seed: int) -> Path:
        """Where the data set's store lies under ``folder``: its own folder, then
        ``store.zarr`` (its source data beside it, in ``source``)."""
        return Path(folder) / self.folder_name(seed) / "store.zarr"


#: the demo data of every command (the search, the paper table, the demo slice): 40 labelled
#: patients give 24 training, 8 validation and 8 test patients (20 test visits with 3 visits an
#: eye), so that patient-level intervals and tests can answer (a paired Wilcoxon test over 8
#: patients can reach p = 0.0078; over the 2 test patients of a 12-patient store, 0.5), and
#: eyes with 2-3 visits have a growth rate; with step budgets, training costs the same whatever
#: the number of training patients
DEMO_STORE = SyntheticStore()


@dataclass(frozen=True)
class SearchPreset:
    """The defaults of one kind of search (``python tune/search.py``)."""

    name: str
    recipe: str  #: the training recipe (fpn/recipes/) of every trial and pretraining
    space: Path  #: the search space file
    trials: int  #: trials per ratio and configuration
    epochs: int  #: fine-tuning epochs per trial (ASHA's max_t)
    pretrain_epochs: int | None  #: None: as many as ``epochs``
    baseline: bool  #: also search the network from scratch, the table's baseline row
    #: raise crops per visit at scarce ratios so that an epoch has at least this many crops
    min_crops_per_epoch: int | None = None
    store: SyntheticStore | None = None  #: the data it makes when given no ``--data``
    #: with the baseline row, also the scratch row's best configuration trained for the
    #: pretraining's steps plus the fine-tuning's (the compute-matched row)
    compute_matched: bool = False

    def pretraining_epochs(self, epochs: int) -> int:
        return self.pretrain_epochs or epochs


SEARCH_PRESETS: dict[str, SearchPreset] = {
    # the main job: the poster's question on a synthetic store, within ~15 minutes on 2 cores
    "demo": SearchPreset(
        name="demo", recipe="cpu-small", space=_HERE / "demo_space.yaml", trials=3, epochs=4,
        pretrain_epochs=3, baseline=True, store=DEMO_STORE, compute_matched=True),
    # real data (--data): the reference recipe and the full space, the pretrained row
    "real": SearchPreset(
        name="real", recipe="reference", space=_HERE / "default_space.yaml", trials=4,
        epochs=40, pretrain_epochs=None, baseline=False),
}


def search_preset_help(attribute: str) -> str:
    """``(default: 3 for the demo, else 4)``-style help text of a search preset value."""
    demo, real = (getattr(SEARCH_PRESETS[k], attribute) for k in ("demo", "real"))

    def text(v: Any) -> str:
        if isinstance(v, Path):
            return f"tune/{v.name}"
        if isinstance(v, bool):
            return "on" if v else "off"
        return "none" if v is None else str(v)

    return f"(default: {text(demo)} for the demo, else {text(real)})"


#: Li et al. trained IPN (TMI 2020) and IPN-V2 with Adam at lr 1e-4 (their public code; see
#: docs/models.md). Adam without weight decay is AdamW with weight decay 0. The published,
#: norm-free IPNs do not train under the reference's SGD lr 0.1 (docs/models.md: `ipn` stalls,
#: `ipnv2` diverges), so the poster's IPN rows cannot have come from it. Lachinov et al. and
#: ReSensNet rows were trained with the reference recipe itself (the authors' release), and our
#: `-bn` variants train under it: no override for them.
AUTHORS_OPTIMISER: dict[str, dict[str, Any]] = {
    model: {"optim.name": "adamw", "optim.lr": 1e-4, "optim.weight_decay": 0.0}
    for model in ("ipn", "ipnv2")
}


@dataclass(frozen=True)
class PaperPreset:
    """The paper table's fixed recipe and default grid.

    A preset is a recipe (``fpn/recipes/``) shared by every run (pretraining and fine-tuning
    alike), per-network overrides over it (``per_model``, under the caller's ``--set``: an
    explicit ``--set`` wins for every network) and the grid used when the command line gives
    none."""

    name: str
    recipe: str = "reference"
    models: tuple[str, ...] = ()
    ssl: tuple[str, ...] = ()
    ratios: tuple[float, ...] = ()
    seeds: int = 1
    #: dotted TrainConfig overrides for one network's runs: ``{model: {dotted key: value}}``
    per_model: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    store: SyntheticStore = DEMO_STORE
    #: also train each network from scratch for its pretraining's steps plus the fine-tuning's
    #: (the row ``<network> (scratch, matched steps)``), beside the same-fine-tuning-steps row
    compute_matched: bool = True

    def model_overrides(self, model: str, given: Mapping[str, Any] = ()) -> dict[str, Any]:
        """``model``'s own overrides, less the keys the caller set (``given``)."""
        return {k: v for k, v in self.per_model.get(model, {}).items() if k not in given}


PAPER_PRESETS: dict[str, PaperPreset] = {
    # the poster's recipe exactly (fpn/recipes/faithful.yaml) over every network and ratio;
    # the IPNs as their authors trained them
    "paper": PaperPreset(
        name="paper", recipe="faithful", models=("ipn", "ipnv2", "lachinov", "resensnet", "fpn"),
        ssl=("none", "slo", "inverted_faf"), ratios=(0.05, 0.1, 0.2, 1.0), seeds=3,
        per_model=AUTHORS_OPTIMISER),
    # a CPU check of the machinery (fpn/recipes/quick.yaml) on the demo's synthetic store; every
    # network, the IPNs included, gets the same AdamW: not a replication
    "quick": PaperPreset(
        name="quick", recipe="quick", models=("lachinov", "fpn"), ssl=("none", "inverted_faf"),
        ratios=(0.1, 1.0), seeds=1),
}


@dataclass(frozen=True)
class DemoSlicePreset:
    """``python -m tune.demo``: one pretraining and two fine-tunings on a synthetic store."""

    recipe: str = "quick"
    epochs: int = 8
    ratio: float = 0.25
    #: over the recipe: a DataLoader worker, overlays every 5 epochs and a logged model
    overrides: Mapping[str, Any] = field(default_factory=lambda: {
        "data.loader_workers": 1, "overlay_every": 5, "log_model": True})
    store: SyntheticStore = DEMO_STORE


DEMO_SLICE = DemoSlicePreset()
