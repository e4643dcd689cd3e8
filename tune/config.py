"""``SearchConfig``: every option of ``python tune/search.py``, typed, from the CLI or ``--config``.

With no ``data`` the search makes a small synthetic data set in ``workdir`` and uses CPU-sized
training settings (:data:`DEMO_TRAIN`); with real data the training settings are
:class:`fpn.config.TrainConfig`'s defaults (the reference recipe) plus ``train`` overrides.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from fpn.config import read_yaml_mapping

__all__ = ["DEMO_SHAPE", "DEMO_TRAIN", "SearchConfig", "load_search_config"]

SSL = Literal["inverted_faf", "faf", "slo", "none"]

#: (S, D, W) of the demo's synthetic volumes
DEMO_SHAPE: tuple[int, int, int] = (16, 64, 128)
#: TrainConfig overrides (dotted keys) that keep the demo within ~15 minutes on 2 CPU cores
DEMO_TRAIN: dict[str, Any] = {
    "data.crop": [16, 64],
    "data.multiplier": 2,
    "data.loader_workers": 0,
    "batch_size": 4,
    "keep_best": 2,
    "overlay_every": 0,
    "threads_per_worker": 1,
}


class SearchConfig(BaseModel):
    """One search: which data, which network and pretraining, which ratios, how many trials."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    data: str | None = Field(None, description="store path/URL; None: a synthetic demo store")
    workdir: str = Field("fpn-search", description="demo data, results and default databases")
    task: str = Field("ga", description="names the registered model <task>-<model>")
    model: str = "fpn"
    ssl: SSL = "inverted_faf"
    pretrained: str | None = Field(None, description="checkpoint, run dir or models:/...; "
                                   "skips pretraining")
    ratios: list[float] = Field(default_factory=lambda: [0.1, 1.0])
    trials: int = Field(4, ge=1, description="trials per ratio")
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
    train: dict[str, Any] | None = Field(None, description="TrainConfig overrides, dotted keys")
    promote: bool = Field(True, description="promote the best version with the registry gate")
    min_crops_per_epoch: int | None = Field(
        None, ge=1, description="raise data.multiplier at scarce ratios so that an epoch has at "
        "least this many crops (default: 48 for the demo, none otherwise: the reference recipe "
        "draws multiplier x volumes crops, which at ratio 0.1 of a small store is a handful)")
    num_cpus: int | None = Field(None, ge=1, description="local Ray CPUs (default: all)")

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
        if self.storage and "://" in self.storage:
            return self.storage
        return str(Path(self.storage).expanduser().resolve() if self.storage
                   else self.work_path() / "ray")

    def tracking_uri(self) -> str:
        return self.mlflow or f"sqlite:///{self.work_path() / 'mlflow.db'}"

    def study_url(self) -> str:
        return self.study_db or f"sqlite:///{self.work_path() / 'optuna.db'}"

    def crops_floor(self) -> int | None:
        return self.min_crops_per_epoch or (48 if self.is_demo else None)

    def pretraining_epochs(self) -> int:
        return self.pretrain_epochs or (6 if self.is_demo else self.train_epochs())

    def train_epochs(self) -> int:
        return self.epochs or (3 if self.is_demo else 40)

    def asha_grace(self) -> int:
        return self.grace_period or max(1, self.train_epochs() // 2)

    def train_overrides(self) -> dict[str, Any]:
        if self.train is not None:
            return dict(DEMO_TRAIN, **self.train) if self.is_demo else dict(self.train)
        return dict(DEMO_TRAIN) if self.is_demo else {}

    def registered_name(self) -> str:
        return f"{self.task}-{self.model}"

    def ssl_label(self) -> str:
        return "none" if self.ssl == "none" else self.ssl

    def study_name(self, ratio: float) -> str:
        return f"{self.task}-{self.model}-{self.ssl}-r{ratio:g}"

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
        raise ValueError(f"{where}invalid search options: {exc}") from exc
