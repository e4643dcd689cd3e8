"""``SearchConfig``: every option of ``python tune/search.py``, typed, from the CLI or ``--config``.

An option left unset takes its value from the search's preset (:mod:`tune.presets`: ``demo``
without ``--data``, ``real`` with it). A search config holds what every run of the search
starts from: the recipe (``fpn/recipes/``) and the ``train`` overrides (``--set``), built into a
:class:`fpn.config.TrainConfig` by :meth:`SearchConfig.train_config` (through
:func:`fpn.config.build_train_config`, as every entry point does), and the search space; both
are checked against TrainConfig when the config is made, so a typo in a space file or a
``--set`` key fails here, naming the key and the file, before Ray starts or anything pretrains.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from fpn.config import TrainConfig, build_train_config, read_yaml_mapping
from fpn.storage import absolute_location, absolute_tracking_uri, join_location
from tune.core import row_label
from tune.presets import SEARCH_PRESETS, SearchPreset, search_preset_help
from tune.spaces import SearchSpace, load_space

__all__ = ["SearchConfig", "load_search_config"]

SSL = Literal["inverted_faf", "faf", "slo", "none"]


class SearchConfig(BaseModel):
    """One search: which data, which network and pretraining, which ratios, how many trials."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)
    _space: SearchSpace | None = PrivateAttr(None)

    data: str | None = Field(None, description="store path/URL; None: a synthetic demo store")
    workdir: str = Field("fpn-search", description="demo data, results and default databases")
    task: str = Field("ga", description="names the registered model <task>-<model>")
    model: str = "fpn"
    ssl: SSL = "inverted_faf"
    pretrained: str | None = Field(None, description="checkpoint, run dir or models:/...; "
                                   "skips pretraining")
    ratios: list[float] = Field(default_factory=lambda: [0.1, 1.0])
    trials: int | None = Field(None, ge=1, description="trials per ratio and configuration "
                               + search_preset_help("trials"))
    baseline: bool | None = Field(
        None, description="also search the network from scratch (ssl none), the table's "
        "baseline row, compared with the pretrained row per ratio "
        + search_preset_help("baseline"))
    compute_matched: bool | None = Field(
        None, description="also train the scratch row's best configuration for the "
        "pretraining's steps plus the fine-tuning's, the table's compute-matched row "
        + search_preset_help("compute_matched"))
    strict_space: bool = Field(False, description="refuse (instead of dropping with a warning) "
                               "a network knob that cannot change the network at the store's "
                               "depth")
    max_concurrent: int | None = Field(None, ge=1, description="default: from the resources")
    workers: int = Field(1, ge=1, validation_alias=AliasChoices("workers", "workers_per_trial"),
                         description="Ray Train workers per trial")
    gpus_per_worker: float = Field(0.0, ge=0.0)
    cpus_per_worker: float | None = Field(None, gt=0.0, description="default: fill the CPUs")
    epochs: int | None = Field(None, ge=1, description="fine-tuning epochs per trial "
                               + search_preset_help("epochs"))
    pretrain_epochs: int | None = Field(None, ge=1, description="pretraining epochs "
                                        + search_preset_help("pretrain_epochs")
                                        + "; none: as many as epochs")
    grace_period: int | None = Field(
        None, ge=1, description="ASHA: epochs before a trial can be stopped (default: half the "
        "epochs, at least 2; earlier validation scores rank trials poorly, benchmarks/README.md)")
    space: str | None = Field(None, description="YAML search space "
                              + search_preset_help("space"))
    storage: str | None = Field(None, description="Ray storage path or URL (default workdir/ray)")
    mlflow: str | None = Field(None, description="MLflow URI (default sqlite in workdir)")
    study_db: str | None = Field(None, description="Optuna storage URL (default sqlite in workdir)")
    experiment: str = "fpn-search"
    seed: int = 0
    recipe: str | None = Field(None, description="training recipe: a name in fpn/recipes/ or a "
                               "YAML file " + search_preset_help("recipe"))
    train: dict[str, Any] | None = Field(None, description="TrainConfig overrides, dotted keys")
    promote: bool = Field(True, description="promote the best version with the registry gate")
    min_crops_per_epoch: int | None = Field(
        None, ge=1, description="raise data.multiplier at scarce ratios so that an epoch has at "
        "least this many crops " + search_preset_help("min_crops_per_epoch"))
    num_cpus: int | None = Field(None, ge=1, description="local Ray CPUs (default: all)")
    verbose: bool = Field(False, description="everything on the console: the Train workers' "
                          "epoch lines, Ray's and Tune's logging (default: one line per trial "
                          "event and a progress bar; the rest in Ray's log files)")

    @field_validator("data", "pretrained")
    @classmethod
    def _absolute_local_path(cls, v: str | None) -> str | None:
        # resolved here, in the search's own directory: each trial runs in a folder of its own
        return absolute_location(v) if v else v

    @field_validator("mlflow", "study_db")
    @classmethod
    def _absolute_sqlite(cls, v: str | None) -> str | None:
        return absolute_tracking_uri(v) if v else v

    @field_validator("ratios")
    @classmethod
    def _valid_ratios(cls, v: list[float]) -> list[float]:
        if not v or any(not 0.0 < r <= 1.0 for r in v):
            raise ValueError(f"ratios must be in (0, 1], got {v}")
        return sorted(set(v))

    # -- the preset and what it resolves -------------------------------------------------------
    @property
    def is_demo(self) -> bool:
        return self.data is None

    @property
    def preset(self) -> SearchPreset:
        """The defaults of this kind of search (:data:`tune.presets.SEARCH_PRESETS`)."""
        return SEARCH_PRESETS["demo" if self.is_demo else "real"]

    def work_path(self) -> Path:
        return Path(self.workdir).expanduser().resolve()

    def store_path(self) -> str:
        """``data``, or the preset's synthetic store in the workdir (where
        :func:`tune.core.make_synthetic_store` makes it)."""
        if self.data:
            return self.data
        spec = self.preset.store
        assert spec is not None, "a preset without a synthetic store needs data"
        return str(spec.store_path(self.work_path() / "data", self.seed))

    def storage_path(self) -> str:
        return absolute_location(self.storage) if self.storage else str(self.work_path() / "ray")

    def tracking_uri(self) -> str:
        return self.mlflow or f"sqlite:///{self.work_path() / 'mlflow.db'}"

    def study_url(self) -> str:
        return self.study_db or f"sqlite:///{self.work_path() / 'optuna.db'}"

    def crops_floor(self) -> int | None:
        return self.min_crops_per_epoch or self.preset.min_crops_per_epoch

    def train_epochs(self) -> int:
        return self.epochs or self.preset.epochs

    def pretraining_epochs(self) -> int:
        return self.pretrain_epochs or self.preset.pretraining_epochs(self.train_epochs())

    def trials_per_ratio(self) -> int:
        return self.trials or self.preset.trials

    def configurations(self) -> list[str]:
        """The SSL targets searched, one table row each: from scratch first when it is the
        baseline of a pretrained search."""
        with_baseline = self.baseline if self.baseline is not None else self.preset.baseline
        if self.ssl == "none" or self.pretrained or not with_baseline:
            return [self.ssl]
        return ["none", self.ssl]

    def with_matched_row(self) -> bool:
        """Whether the table also has the compute-matched scratch row (the scratch study's best
        configuration trained for the pretraining's steps plus the fine-tuning's)."""
        matched = self.compute_matched if self.compute_matched is not None else \
            self.preset.compute_matched
        return matched and self.configurations()[0] == "none" and len(self.configurations()) > 1

    def space_file(self) -> Path:
        return Path(self.space) if self.space else self.preset.space

    def asha_grace(self) -> int:
        """ASHA's grace period in epochs: half the budget and at least two reports (one report
        of a short run ranks trials by noise; benchmarks/README.md); never the last epoch."""
        epochs = self.train_epochs()
        return self.grace_period or max(1, min(epochs - 1, max(2, epochs // 2)))

    def recipe_name(self) -> str:
        return self.recipe or self.preset.recipe

    # -- the runs' config ------------------------------------------------------------------------
    def train_config(self, *, task: str = "finetune", target: str = "mask",
                     epochs: int | None = None, storage_dir: str = "trials",
                     cpus_per_worker: float = 1.0, threads: int = 1) -> TrainConfig:
        """The TrainConfig every run of this search starts from (:func:`build_train_config`):
        its recipe, then the search's own values (store, network, seed, workers, storage,
        tracking), then ``train`` (``--set``); ``task``, ``target`` and ``epochs`` (default:
        the fine-tuning epochs) are the search's, whatever the overrides say.

        Raises:
            ValueError: a bad recipe or override, naming the key.
        """
        search = {
            "data.store": self.store_path(), "data.subset_seed": self.seed,
            "model.name": self.model, "seed": self.seed, "workers": self.workers,
            "gpus_per_worker": self.gpus_per_worker, "cpus_per_worker": cpus_per_worker,
            "threads_per_worker": threads,
            "storage": join_location(self.storage_path(), storage_dir),
            "mlflow": self.tracking_uri(), "experiment": self.experiment,
        }
        fixed = {"task": task, "data.target": target, "epochs": epochs or self.train_epochs()}
        return build_train_config(self.recipe_name(), search, self.train, fixed,
                                  where=f"train settings (recipe {self.recipe_name()!r}, "
                                  "then --set/train)")

    def search_space(self) -> SearchSpace:
        """The search space, loaded and checked against TrainConfig when the config was made."""
        assert self._space is not None
        return self._space

    @model_validator(mode="after")
    def _check_train_and_space(self) -> SearchConfig:
        base = self.train_config()
        space_file = self.space_file()
        space = load_space(space_file)
        space.check_against(base.model_dump(mode="json"), where=str(space_file))
        self._space = space
        return self

    # -- names -----------------------------------------------------------------------------------
    def registered_name(self) -> str:
        return f"{self.task}-{self.model}"

    def study_name(self, ratio: float, fingerprint: str) -> str:
        """The Optuna study, Tune experiment and parent run of one ratio on one store: keyed by
        the store's fingerprint, so a search on other data never reuses this one's trials."""
        return f"{self.task}-{self.model}-{self.ssl}-{fingerprint[:8]}-r{ratio:g}"

    def configuration_label(self) -> str:
        """The table's row name (:func:`tune.core.row_label`), e.g. ``FPN (FAF pretraining)``."""
        return row_label(self.model, self.ssl, pretrained_from=self.pretrained)


def load_search_config(path: str | Path | None, overrides: dict[str, Any]) -> SearchConfig:
    """``--config`` YAML (optional) with the flags that were given applied on top."""
    raw: dict[str, Any] = read_yaml_mapping(path, "search config") if path else {}
    given = {k: v for k, v in overrides.items() if v is not None}
    if isinstance(raw.get("train"), dict) and "train" in given:  # --set adds to the file's
        given["train"] = {**raw["train"], **given["train"]}
    if "workers_per_trial" in raw and "workers" in given:  # the flag wins over the file's alias
        raw.pop("workers_per_trial")
    raw.update(given)
    try:
        return SearchConfig.model_validate(raw)
    except ValidationError as exc:
        where = f"{path}: " if path else ""
        problems = "; ".join(
            (f"{'.'.join(str(p) for p in e['loc'])}: " if e["loc"] else "")
            + str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())
        raise ValueError(f"{where}invalid search options: {problems}") from None
