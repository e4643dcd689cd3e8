"""One typed config for every training run, built in one place.

:func:`build_train_config` is the one way a run's :class:`TrainConfig` is made: a recipe
(``fpn/recipes/``) and layers of dotted overrides (``{"optim.lr": 0.002}``), applied in order.
Every entry point calls it: ``python -m fpn pretrain|finetune`` (its flags and ``--config`` are
layers), the search (its ``--set`` values, then each trial's draws through
:meth:`TrainConfig.with_overrides`), the paper table (a preset's per-network values) and the
demo. The config then flows unchanged down to every Ray Train worker; it becomes a dict once, at
the Ray boundary. The resolved config is logged to MLflow as the run's parameters and as
``config.yaml``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fpn.storage.locations import absolute_location, absolute_tracking_uri

__all__ = [
    "SSL_TARGETS",
    "DataConfig",
    "LossConfig",
    "ModelConfig",
    "OptimConfig",
    "Overrides",
    "TrainConfig",
    "build_train_config",
    "default_mlflow_uri",
    "flatten_tree",
    "parse_sets",
    "read_yaml_mapping",
    "set_dotted",
    "validation_problem",
]

#: one layer of a run's config: dotted TrainConfig keys and their values, ``{"optim.lr": 0.002}``
Overrides = Mapping[str, Any]

SSL_TARGETS = ("inverted_faf", "faf", "slo")
Target = Literal["mask", "inverted_faf", "faf", "slo"]

class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Section):
    """Where the data is and how training crops are drawn from it."""

    store: str = Field(description="store path or fsspec URL written by data_prep convert")
    storage_options: dict[str, Any] = Field(default_factory=dict)
    target: Target = "mask"
    ratio: float = Field(1.0, gt=0.0, le=1.0, description="fraction of training patients labelled")
    subset_seed: int = 0
    crop: tuple[int, int] = (32, 256)
    multiplier: int = Field(20, ge=1, description="crops per volume per epoch, when "
                            "TrainConfig.steps_per_epoch is None (the reference's budget: 20)")
    foreground_fraction: float = Field(
        0.0, ge=0.0, le=1.0, description="segmentation: this fraction of training crops is "
        "drawn around a GA pixel of its visit (nnU-Net forces a third); the rest uniformly. "
        "0: uniform crops only (the reference)")
    augment: bool = True
    noise_std: float = Field(0.0, ge=0.0, description="per-voxel Gaussian noise on the z-scored OCT")
    offset_std: float = Field(0.2, ge=0.0, description="std of one additive offset per crop; 0: off")
    loader_workers: int = Field(2, ge=0, le=16)
    zscore_eps: float = 1e-6

    @field_validator("store")
    @classmethod
    def _absolute_local_store(cls, v: str) -> str:
        return absolute_location(v)

    @field_validator("crop")
    @classmethod
    def _positive_crop(cls, v: tuple[int, int]) -> tuple[int, int]:
        if min(v) < 1:
            raise ValueError(f"crop must be positive, got {v}")
        return v


class ModelConfig(_Section):
    """Which network and its constructor arguments (passed to ``fpn.models.create_model``)."""

    name: str = "fpn"
    kwargs: dict[str, Any] = Field(default_factory=dict)


class LossConfig(_Section):
    """Segmentation: ``dice_weight * softDice + bce_weight * BCE``; reconstruction:
    ``-SSIM + l1_weight * L1``."""

    dice_weight: float = Field(0.5, ge=0.0)
    bce_weight: float = Field(0.5, ge=0.0)
    ssim_window: int = Field(11, ge=3)
    ssim_sigma: float = Field(1.5, gt=0.0)
    l1_weight: float = Field(0.0, ge=0.0)

    @model_validator(mode="after")
    def _some_segmentation_term(self) -> LossConfig:
        if self.dice_weight + self.bce_weight <= 0:
            raise ValueError("dice_weight + bce_weight must be > 0")
        if self.ssim_window % 2 == 0:
            raise ValueError(f"ssim_window must be odd, got {self.ssim_window}")
        return self


class OptimConfig(_Section):
    """The reference's SGD by default; AdamW, cosine schedule and warm-up as options."""

    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.1, gt=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(1e-4, ge=0.0)
    schedule: Literal["none", "cosine"] = "none"
    warmup_epochs: int = Field(0, ge=0)
    pretrained_lr_scale: float = Field(
        1.0, gt=0.0, le=1.0, description="lr factor for weights loaded from --init"
    )
    grad_clip: float | None = Field(None, gt=0.0)


class TrainConfig(_Section):
    """Everything one training run needs; one instance per run, shared by every worker."""

    task: Literal["pretrain", "finetune"] = "finetune"
    data: DataConfig
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    epochs: int = Field(40, ge=1)
    steps_per_epoch: int | None = Field(
        None, ge=1, description="the budget in optimizer steps: every epoch is this many steps "
        "per worker whatever the number of training visits (the crops cycle over the visits), "
        "the same at every ratio; None: data.multiplier crops per visit (the reference)")
    batch_size: int = Field(8, ge=1)
    seed: int = 0
    init: str | None = Field(None, description="checkpoint path, run dir or models:/NAME@ALIAS")
    reinit_head: bool = False
    head_prior: bool = Field(
        True, description="segmentation: a fresh head (from scratch, or reinit_head) starts "
        "with its output bias at the logit of the training split's GA fraction; False: bias 0 "
        "(the reference)")
    bn_recompute_batches: int = Field(
        8, ge=0, description="recompute BatchNorm running statistics on this many training "
        "batches before every validation and checkpoint (averaged over workers); 0: off (the "
        "reference: the running averages of training)")
    selection: Literal["pooled_dice", "mean_dice"] = Field(
        "pooled_dice", description="segmentation: the validation score that ranks checkpoints, "
        "trials and ASHA's stops: pooled_dice (Dice over every pixel of the split: a model "
        "that predicts nothing scores 0 where the split has GA) or mean_dice (the reference: "
        "the mean of per-visit Dice, an empty prediction on an empty mask scoring 1)")
    keep_best: int = Field(5, ge=1)
    run_name: str | None = None
    workers: int = Field(1, ge=1)
    workers_min: int | None = Field(
        None, ge=1, description="elastic training: at least this many workers; workers is then "
        "the maximum (Ray Train restarts with fewer when nodes go away)")
    gpus_per_worker: float = Field(0.0, ge=0.0)
    cpus_per_worker: float = Field(1.0, gt=0.0)
    threads_per_worker: int | None = Field(None, ge=1)
    max_failures: int = Field(1, ge=-1)
    storage: str = "runs"
    mlflow: str | None = None
    experiment: str = "fpn"
    amp: bool = Field(True, description="bf16 autocast on GPU (on CPU only with cpu_amp)")
    cpu_amp: bool = Field(
        False, description="also bf16 autocast on CPUs with AMX (Intel Xeon Sapphire Rapids or "
        "later; detected at run time, ignored elsewhere and when amp is off): 1.8-2x faster "
        "steps of the demo recipes, the same losses (benchmarks/README.md, 'A faster CPU step')")
    channels_last: bool = Field(True, description="channels_last_3d on GPU (ignored on CPU)")
    compile: bool = Field(
        False, description="torch.compile the training model (eager fallback with a message "
        "where compilation fails); off by default until benchmarks/device_check.py has "
        "measured it on a GPU")
    compile_backend: str = Field(
        "inductor", description="torch.compile backend ('eager' traces without code generation: "
        "the CPU device check uses it)")
    overlay_every: int = Field(5, ge=0, description="log validation overlays every N epochs")
    log_model: bool = True
    tags: dict[str, str] = Field(default_factory=dict)
    fail_at_epoch: int | None = Field(
        None, ge=0, description="fault drill: the epoch of fail_at_step (default 0) (tests and "
        "drills only)")
    fail_at_step: int | None = Field(
        None, ge=1, description="fault drill: one worker process dies once after this many "
        "optimizer steps of epoch fail_at_epoch (default 0) (tests and drills only)")
    checkpoint_every_steps: int | None = Field(
        None, ge=1, description="also checkpoint every N optimizer steps within an epoch, so "
        "that a lost node (a spot reclaim) costs at most N steps; None: per epoch only")
    spot_notice_url: str | None = Field(
        None, description="poll this EC2 spot interruption notice URL (on EC2: http://"
        "169.254.169.254/latest/meta-data/spot/instance-action) and checkpoint at the next step "
        "on a notice; None: $FPN_SPOT_NOTICE_URL, else off")

    @field_validator("init")
    @classmethod
    def _absolute_local_init(cls, v: str | None) -> str | None:
        return absolute_location(v) if v else v

    @model_validator(mode="after")
    def _elastic_range(self) -> TrainConfig:
        if self.workers_min is not None and self.workers_min > self.workers:
            raise ValueError(f"workers_min ({self.workers_min}) must be <= workers ({self.workers})")
        return self

    @model_validator(mode="after")
    def _drill_has_a_step(self) -> TrainConfig:
        if self.fail_at_epoch is not None and self.fail_at_step is None:
            raise ValueError("fail_at_epoch is the epoch of fail_at_step; set fail_at_step too")
        return self

    @model_validator(mode="after")
    def _task_matches_target(self) -> TrainConfig:
        if self.task == "pretrain" and self.data.target == "mask":
            raise ValueError(f"pretraining needs an SSL target {SSL_TARGETS}, got 'mask'")
        if self.task == "finetune" and self.data.target != "mask":
            raise ValueError(f"fine-tuning trains on 'mask', got target {self.data.target!r}")
        return self

    @property
    def is_ssl(self) -> bool:
        return self.task == "pretrain"

    def resolved_run_name(self) -> str:
        if self.run_name:
            return self.run_name
        what = self.data.target if self.is_ssl else f"r{self.data.ratio:g}"
        return f"{self.task}-{self.model.name}-{what}-s{self.seed}"

    def tracking_uri(self) -> str:
        """What ``--mlflow`` (or ``MLFLOW_TRACKING_URI``) names, a sqlite file by its absolute
        path: the driver hands this URI to the workers, which run in another directory."""
        return absolute_tracking_uri(self.mlflow or os.environ.get("MLFLOW_TRACKING_URI")
                                     or default_mlflow_uri())

    def storage_path(self) -> str:
        """Ray storage path, made absolute when local (Ray workers have another cwd)."""
        return absolute_location(self.storage)

    def flat_params(self) -> dict[str, Any]:
        """The config as flat ``section.key`` params for MLflow."""
        out: dict[str, Any] = {}

        def walk(prefix: str, obj: Any) -> None:
            if isinstance(obj, dict):
                for k, v in obj.items():
                    walk(f"{prefix}.{k}" if prefix else str(k), v)
            else:
                out[prefix] = obj

        walk("", self.model_dump(mode="json"))
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def with_overrides(self, overrides: Overrides) -> TrainConfig:
        """This config with dotted ``overrides`` applied (a trial's draws, a job's seed and
        ratio): a new, validated config; this one is unchanged."""
        tree = self.model_dump(mode="json")
        for dotted, value in overrides.items():
            set_dotted(tree, dotted, value)
        return TrainConfig.model_validate(tree)


def build_train_config(recipe: str | None, *layers: Overrides | None,
                       where: str = "") -> TrainConfig:
    """The one way a run's config is made: the recipe's values, then each layer of dotted
    overrides in order (a later layer wins; ``None`` layers are skipped).

    Args:
        recipe: a recipe name (``fpn/recipes/``) or a recipe YAML file; None: ``reference``
            (TrainConfig's defaults).
        layers: dotted overrides, e.g. a ``--config`` file (:func:`flatten_tree`), the command
            line's flags, ``--set`` values, a preset's per-network values, a job's ratio and seed.
        where: names the source in an error (``"search settings"``).

    Raises:
        ValueError: an unknown recipe or key, or a value TrainConfig refuses; one line naming the
            dotted key (and ``where``).
    """
    from pydantic import ValidationError

    from fpn.recipes import recipe_overrides

    tree: dict[str, Any] = {}
    for layer in (recipe_overrides(recipe or "reference"), *layers):
        for dotted, value in (layer or {}).items():
            set_dotted(tree, dotted, value)
    try:
        return TrainConfig.model_validate(tree)
    except ValidationError as exc:
        prefix = f"{where}: " if where else ""
        raise ValueError(f"{prefix}{validation_problem(exc)}") from None


def flatten_tree(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested mapping (a YAML config or recipe) as dotted keys, leaves only: sections merge
    key by key with the other layers instead of replacing them; an empty mapping is kept as a
    leaf (``model.kwargs: {}`` means "no kwargs")."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, Mapping) and v:
            out.update(flatten_tree(v, key))
        else:
            out[key] = v
    return out


def default_mlflow_uri() -> str:
    """A sqlite file in the working directory, as an absolute URI (workers have another cwd)."""
    return f"sqlite:///{Path('mlflow.db').resolve()}"


def parse_sets(items: Sequence[str]) -> dict[str, Any]:
    """Command-line overrides ``["optim.lr=0.01", "data.crop=[32,256]"]`` as a layer
    ``{"optim.lr": 0.01, "data.crop": [32, 256]}``; values are YAML (numbers, lists, booleans)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ValueError(f"--set {item!r}: not a YAML value: {exc}") from None
    return out


def read_yaml_mapping(path: str | Path, what: str = "config") -> dict[str, Any]:
    """A YAML file that must hold a mapping; a clear ``ValueError`` naming the file otherwise."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: cannot read {what}: {exc}") from exc
    if not isinstance(raw, dict):
        # ValueError, not TypeError: the CLIs report ValueError as bad input with its file
        raise ValueError(f"{path}: a {what} must be a mapping, got {type(raw).__name__}")  # noqa: TRY004
    return raw


def set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``tree["a"]["b"] = value`` for ``dotted = "a.b"``, creating sections as needed."""
    node = tree
    *parents, leaf = dotted.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = value


def validation_problem(exc: Any) -> str:
    """The first problem of a pydantic ``ValidationError`` on one line, naming the dotted key:
    ``'optim.lrr' is not a TrainConfig key`` or ``'optim.lr': Input should be greater than 0``."""
    first = exc.errors()[0]
    loc = ".".join(str(p) for p in first["loc"])
    if first["type"] == "extra_forbidden":
        return f"{loc!r} is not a TrainConfig key"
    msg = str(first["msg"]).removeprefix("Value error, ")
    more = len(exc.errors()) - 1
    return (f"{loc!r}: {msg}" if loc else msg) + (f" (and {more} more)" if more else "")
