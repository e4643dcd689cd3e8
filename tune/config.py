"""``SearchConfig``: every option of ``python tune/search.py``, typed, from the CLI or ``--config``.

A search config holds the base of every run's :class:`fpn.config.TrainConfig` (a recipe shipped
in ``fpn/recipes/`` plus ``train`` overrides) and the search space, both checked against
TrainConfig when the config is made: a typo in a space file or a ``--set`` key fails here, naming
the key and the file, before Ray starts or anything pretrains.

With no ``data`` the search makes a small synthetic data set in ``workdir`` and uses the
``cpu-small`` recipe; with real data the ``reference`` recipe (TrainConfig's defaults).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from fpn.config import (
    TrainConfig,
    absolute_location,
    absolute_tracking_uri,
    read_yaml_mapping,
    set_dotted,
    validation_problem,
)
from fpn.recipes import recipe_overrides
from tune.spaces import DEFAULT_SPACE_FILE, SearchSpace, load_space

__all__ = ["DEMO_RECIPE", "DEMO_SHAPE", "SearchConfig", "load_search_config"]

SSL = Literal["inverted_faf", "faf", "slo", "none"]

#: (S, D, W) of the demo's synthetic volumes
DEMO_SHAPE: tuple[int, int, int] = (16, 64, 128)
#: the search space of the demo search: two architectures, shared pretrainings
DEMO_SPACE_FILE = Path(__file__).with_name("demo_space.yaml")
#: the recipe (fpn/recipes/) of the demo search: within ~15 minutes on 2 CPU cores
DEMO_RECIPE = "cpu-small"


class SearchConfig(BaseModel):
    """One search: which data, which network and pretraining, which ratios, how many trials."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
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
                               "(default: 3 for the demo, else 4)")
    baseline: bool | None = Field(
        None, description="also search the network from scratch (ssl none), the table's "
        "baseline row, compared with the pretrained row per ratio (default: on for the demo)")
    strict_space: bool = Field(False, description="refuse (instead of dropping with a warning) "
                               "a network knob that cannot change the network at the store's "
                               "depth")
    max_concurrent: int | None = Field(None, ge=1, description="default: from the resources")
    workers_per_trial: int = Field(1, ge=1)
    gpus_per_worker: float = Field(0.0, ge=0.0)
    cpus_per_worker: float | None = Field(None, gt=0.0, description="default: fill the CPUs")
    epochs: int | None = Field(None, ge=1, description="default: 3 for the demo, else 40")
    pretrain_epochs: int | None = Field(None, ge=1, description="default: 6 for the demo, else epochs")
    grace_period: int | None = Field(
        None, ge=1, description="ASHA: epochs before a trial can be stopped (default: half the "
        "epochs; earlier validation Dice ranks trials poorly, benchmarks/README.md)")
    space: str | None = Field(None, description="YAML search space (default tune/default_space.yaml)")
    storage: str | None = Field(None, description="Ray storage path or URL (default workdir/ray)")
    mlflow: str | None = Field(None, description="MLflow URI (default sqlite in workdir)")
    study_db: str | None = Field(None, description="Optuna storage URL (default sqlite in workdir)")
    experiment: str = "fpn-search"
    seed: int = 0
    recipe: str | None = Field(None, description="training recipe: a name in fpn/recipes/ or a "
                               "YAML file (default: cpu-small for the demo, else reference)")
    train: dict[str, Any] | None = Field(None, description="TrainConfig overrides, dotted keys")
    promote: bool = Field(True, description="promote the best version with the registry gate")
    min_crops_per_epoch: int | None = Field(
        None, ge=1, description="raise data.multiplier at scarce ratios so that an epoch has at "
        "least this many crops (default: 48 for the demo, none otherwise: the reference recipe "
        "draws multiplier x volumes crops, which at ratio 0.1 of a small store is a handful)")
    num_cpus: int | None = Field(None, ge=1, description="local Ray CPUs (default: all)")

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

    # -- resolved values -----------------------------------------------------------------------
    @property
    def is_demo(self) -> bool:
        return self.data is None

    def work_path(self) -> Path:
        return Path(self.workdir).expanduser().resolve()

    def store_path(self) -> str:
        return self.data if self.data else str(self.work_path() / "data" / "store.zarr")

    def storage_path(self) -> str:
        return absolute_location(self.storage) if self.storage else str(self.work_path() / "ray")

    def tracking_uri(self) -> str:
        return self.mlflow or f"sqlite:///{self.work_path() / 'mlflow.db'}"

    def study_url(self) -> str:
        return self.study_db or f"sqlite:///{self.work_path() / 'optuna.db'}"

    def crops_floor(self) -> int | None:
        return self.min_crops_per_epoch or (48 if self.is_demo else None)

    def pretraining_epochs(self) -> int:
        return self.pretrain_epochs or (4 if self.is_demo else self.train_epochs())

    def trials_per_ratio(self) -> int:
        return self.trials or (3 if self.is_demo else 4)

    def configurations(self) -> list[str]:
        """The SSL targets searched, one table row each: from scratch first when it is the
        baseline of a pretrained search."""
        with_baseline = self.baseline if self.baseline is not None else self.is_demo
        if self.ssl == "none" or self.pretrained or not with_baseline:
            return [self.ssl]
        return ["none", self.ssl]

    def space_file(self) -> Path:
        if self.space:
            return Path(self.space)
        return DEMO_SPACE_FILE if self.is_demo else DEFAULT_SPACE_FILE

    def train_epochs(self) -> int:
        return self.epochs or (3 if self.is_demo else 40)

    def asha_grace(self) -> int:
        return self.grace_period or max(1, self.train_epochs() // 2)

    def recipe_name(self) -> str:
        return self.recipe or (DEMO_RECIPE if self.is_demo else "reference")

    def train_overrides(self) -> dict[str, Any]:
        """The recipe's values, then ``train``'s (dotted keys)."""
        return {**recipe_overrides(self.recipe_name()), **(self.train or {})}

    def train_tree(self, *, task: str, target: str, epochs: int, storage_dir: str,
                   cpus_per_worker: float, threads: int, store: str | None = None,
                   ) -> dict[str, Any]:
        """The TrainConfig tree of a run of this search (its recipe, overrides and resources);
        ``task``, ``target`` and ``epochs`` are the search's, whatever the overrides say."""
        storage = self.storage_path()
        tree: dict[str, Any] = {
            "task": task,
            "data": {"store": store or self.store_path(), "target": target,
                     "subset_seed": self.seed},
            "model": {"name": self.model, "kwargs": {}}, "epochs": epochs, "seed": self.seed,
            "workers": self.workers_per_trial, "gpus_per_worker": self.gpus_per_worker,
            "cpus_per_worker": cpus_per_worker, "threads_per_worker": threads,
            "storage": f"{storage.rstrip('/')}/{storage_dir}" if "://" in storage
            else str(Path(storage) / storage_dir),
            "mlflow": self.tracking_uri(), "experiment": self.experiment,
        }
        for dotted, value in self.train_overrides().items():
            set_dotted(tree, dotted, value)
        tree["task"], tree["data"]["target"], tree["epochs"] = task, target, epochs
        return tree

    def search_space(self) -> SearchSpace:
        """The search space, loaded and checked against TrainConfig when the config was made."""
        assert self._space is not None
        return self._space

    @model_validator(mode="after")
    def _check_train_and_space(self) -> SearchConfig:
        tree = self.train_tree(task="finetune", target="mask", epochs=self.train_epochs(),
                               storage_dir="trials", cpus_per_worker=1.0, threads=1)
        try:
            TrainConfig.model_validate(tree)
        except ValidationError as exc:
            raise ValueError(f"train settings (recipe {self.recipe_name()!r}, then --set/train): "
                             f"{validation_problem(exc)}") from None
        space_file = self.space_file()
        space = load_space(space_file)
        space.check_against(tree, where=str(space_file))
        self._space = space
        return self

    def registered_name(self) -> str:
        return f"{self.task}-{self.model}"

    def ssl_label(self) -> str:
        return "none" if self.ssl == "none" else self.ssl

    def study_name(self, ratio: float, fingerprint: str, ssl: str | None = None) -> str:
        """The Optuna study, Tune experiment and parent run of one ratio on one store: keyed by
        the store's fingerprint, so a search on other data never reuses this one's trials."""
        return f"{self.task}-{self.model}-{ssl or self.ssl}-{fingerprint[:8]}-r{ratio:g}"

    def configuration_label(self) -> str:
        """The table's row name, e.g. ``FPN`` or ``FPN (inverted_faf pretraining)``."""
        base = self.model.upper() if self.model in ("fpn", "ipn") else self.model
        if self.ssl == "none":
            return base
        return f"{base} ({'pretrained' if self.pretrained else self.ssl} pretraining)"


def load_search_config(path: str | Path | None, overrides: dict[str, Any]) -> SearchConfig:
    """``--config`` YAML (optional) with the flags that were given applied on top."""
    raw: dict[str, Any] = read_yaml_mapping(path, "search config") if path else {}
    given = {k: v for k, v in overrides.items() if v is not None}
    if isinstance(raw.get("train"), dict) and "train" in given:  # --set adds to the file's
        given["train"] = {**raw["train"], **given["train"]}
    raw.update(given)
    try:
        return SearchConfig.model_validate(raw)
    except ValidationError as exc:
        where = f"{path}: " if path else ""
        problems = "; ".join(
            (f"{'.'.join(str(p) for p in e['loc'])}: " if e["loc"] else "")
            + str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())
        raise ValueError(f"{where}invalid search options: {problems}") from None
