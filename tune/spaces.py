"""Search spaces: a YAML list of parameters, turned into an Optuna define-by-run function.

A space file maps dotted :class:`fpn.config.TrainConfig` keys to distributions::

    params:
      model.kwargs.reduction: {type: categorical, choices: [mean, max, attention]}
      optim.lr: {type: float, low: 0.01, high: 0.2, log: true}
      loss.dice_weight: {type: float, low: 0.2, high: 0.8, complement: loss.bce_weight}
    fixed:
      optim.momentum: 0.9

``complement: KEY`` also sets ``KEY = 1 - value`` (the Dice vs BCE balance), and ``fixed`` values
are applied to every trial unchanged. :class:`SearchSpace` is picklable (Ray Tune checkpoints the
searcher with it) and is called with an Optuna trial (TPE samples define-by-run spaces).

One optimiser per comparison: a learning rate means nothing without its optimiser (AdamW's
2e-3 is SGD's 50x too small), and a search's pretraining and its fine-tunings, scratch and
pretrained arms alike, train with the recipe's optimiser. So a space that searches optimiser
knobs (``optim.*``) says which optimiser its ranges are for (``optimizer: sgd``), and
:meth:`SearchSpace.check_against` refuses it, naming the key, before anything trains, when the
runs' optimiser (the recipe's, or ``--set optim.name``) is another one, when the space searches
``optim.name`` or fixes another one than the runs', or when a range leaves what is plausible for
that optimiser (:data:`PLAUSIBLE`, a second guard).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

__all__ = ["PLAUSIBLE", "ParamSpec", "SearchSpace", "load_space"]

Optimizer = Literal["sgd", "adamw"]

#: what each optimiser's knobs may plausibly be, ``{optimizer: {key: (low, high)}}``; a knob
#: missing here (momentum under AdamW, which has none) cannot be searched or fixed for it.
#: SGD with momentum 0.9: the reference trains at lr 0.1, and below 1e-3 a short run barely
#: moves; AdamW: 1e-4 to 1e-2 is the usual range, its decoupled weight decay up to 0.1 or so.
PLAUSIBLE: dict[str, dict[str, tuple[float, float]]] = {
    "sgd": {"optim.lr": (1e-3, 1.0), "optim.momentum": (0.0, 0.99),
            "optim.weight_decay": (0.0, 1e-2)},
    "adamw": {"optim.lr": (1e-5, 2e-2), "optim.weight_decay": (0.0, 0.5)},
}
#: knobs whose meaning does not depend on the optimiser
_OPTIMISER_FREE = frozenset({"optim.schedule", "optim.warmup_epochs", "optim.pretrained_lr_scale",
                             "optim.grad_clip"})


class ParamSpec(BaseModel):
    """One searched parameter: a categorical, float or int distribution."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["categorical", "float", "int"]
    choices: list[Any] | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    complement: str | None = Field(None, description="dotted key set to 1 - value")

    @model_validator(mode="after")
    def _complete(self) -> ParamSpec:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("a categorical parameter needs non-empty 'choices'")
        elif self.low is None or self.high is None or self.low > self.high:
            raise ValueError(f"a {self.type} parameter needs low <= high, got {self.low}, {self.high}")
        if self.log and self.type != "categorical" and (self.low or 0) <= 0:
            raise ValueError("a log-scaled parameter needs low > 0")
        if self.complement and self.type != "float":
            raise ValueError("'complement' only applies to float parameters")
        return self


class SearchSpace(BaseModel):
    """The searched parameters (dotted TrainConfig keys) and fixed overrides."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    params: dict[str, ParamSpec]
    fixed: dict[str, Any] = Field(default_factory=dict)
    #: the optimiser the space's ``optim.*`` ranges are for; required when it has any
    optimizer: Optimizer | None = None

    def __call__(self, trial: Any) -> dict[str, Any]:
        """Optuna define-by-run: sample every parameter on ``trial``; return the derived and
        fixed values (Ray's OptunaSearch merges them into the trial's config)."""
        derived: dict[str, Any] = dict(self.fixed)
        for name, spec in self.params.items():
            if spec.type == "categorical":
                value = trial.suggest_categorical(name, list(spec.choices or []))
            elif spec.type == "float":
                value = trial.suggest_float(name, float(spec.low), float(spec.high),  # type: ignore[arg-type]
                                            log=spec.log, step=spec.step)
            else:
                value = trial.suggest_int(name, int(spec.low), int(spec.high),  # type: ignore[arg-type]
                                          log=spec.log, step=int(spec.step or 1))
            if spec.complement:
                derived[spec.complement] = round(1.0 - float(value), 12)
        return derived

    def check_against(self, base: dict[str, Any], *, where: str) -> None:
        """Every key of the space names a TrainConfig field, and every value the space can
        give (each choice, both bounds, the complements, the fixed values) makes ``base`` (a
        TrainConfig tree) a valid TrainConfig.

        Raises:
            ValueError: naming ``where`` (the space file), the key and the problem.
        """
        from fpn.config import TrainConfig, set_dotted

        def check(key: str, value: Any, extra: dict[str, Any] | None = None) -> None:
            tree = copy.deepcopy(base)
            for k, v in {key: value, **(extra or {})}.items():
                node = tree
                *parents, _ = k.split(".")
                for part in parents:  # a key through a non-section ("epochs.x") is unknown
                    if part in node and not isinstance(node[part], dict):
                        raise ValueError(f"{where}: {k!r} is not a TrainConfig key")
                    node = node.setdefault(part, {})
                set_dotted(tree, k, v)
            try:
                TrainConfig.model_validate(tree)
            except ValidationError as exc:
                first = exc.errors()[0]
                loc = ".".join(str(p) for p in first["loc"])
                if first["type"] == "extra_forbidden":
                    raise ValueError(f"{where}: {loc!r} is not a TrainConfig key") from None
                raise ValueError(f"{where}: {key} = {value!r}: {loc}: {first['msg']}") from None

        for key, value in self.fixed.items():
            check(key, value)
        for key, spec in self.params.items():
            values = (list(spec.choices or []) if spec.type == "categorical"
                      else [spec.low, spec.high])
            for value in values:
                if spec.type == "int":
                    value = int(value)
                extra = ({spec.complement: round(1.0 - float(value), 12)}
                         if spec.complement else None)
                check(key, value, extra)
        self._check_optimizer(base, where)

    def _check_optimizer(self, base: dict[str, Any], where: str) -> None:
        """The space's optimiser knobs are for the optimiser the runs train with (see the
        module's docstring).

        Raises:
            ValueError: naming ``where``, the key and the problem.
        """
        runs = str(base.get("optim", {}).get("name", "sgd"))
        if "optim.name" in self.params:
            raise ValueError(
                f"{where}: 'optim.name' is searched, but pretraining and fine-tuning, scratch and "
                "pretrained alike, train with one optimiser: the recipe's (or --set optim.name)")
        fixed_name = self.fixed.get("optim.name")
        if fixed_name is not None and fixed_name != runs:
            raise ValueError(
                f"{where}: 'optim.name' is fixed to {fixed_name!r} for the fine-tunings, but the "
                f"runs (pretraining included) train with {runs!r}: set the optimiser in the "
                f"recipe or with --set optim.name={fixed_name}")
        knobs = {k: v for k, v in {**self.fixed, **self.params}.items()
                 if k.startswith("optim.") and k != "optim.name" and k not in _OPTIMISER_FREE}
        if not knobs:
            return
        first = next(iter(knobs))
        if self.optimizer is None:
            raise ValueError(
                f"{where}: {first!r} is searched, but the space does not say which optimiser its "
                f"range is for: add `optimizer: {runs}` (or the optimiser it was made for)")
        if self.optimizer != runs:
            raise ValueError(
                f"{where}: {first!r} is a range for {self.optimizer}, but the runs train with "
                f"{runs} (the recipe's optimiser, or --set optim.name): a range for one is no "
                f"range for the other; use a space for {runs} or train with {self.optimizer}")
        plausible = PLAUSIBLE[runs]
        for key, value in knobs.items():
            if key not in plausible:
                raise ValueError(f"{where}: {key!r} has no meaning for {runs}")
            low, high = plausible[key]
            values = ([value] if not isinstance(value, ParamSpec)
                      else list(value.choices or []) if value.type == "categorical"
                      else [value.low, value.high])
            for v in values:
                if not isinstance(v, (int, float)) or not low <= float(v) <= high:
                    raise ValueError(
                        f"{where}: {key} = {v!r} is not a plausible value for {runs} "
                        f"(expected {low:g} to {high:g})")

    def describe(self) -> str:
        """One line per parameter, for logs and model cards."""
        lines = [f"optimizer: {self.optimizer}"] if self.optimizer else []
        for name, s in self.params.items():
            what = (f"one of {s.choices}" if s.type == "categorical"
                    else f"{s.type} in [{s.low:g}, {s.high:g}]{' (log)' if s.log else ''}")
            lines.append(f"{name}: {what}" + (f"; {s.complement} = 1 - it" if s.complement else ""))
        lines += [f"{k} = {v!r} (fixed)" for k, v in self.fixed.items()]
        return "\n".join(lines)


def load_space(path: str | Path) -> SearchSpace:
    """Read a YAML search space.

    Raises:
        ValueError: unreadable file or an invalid space (the message names the file).
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: cannot read search space: {exc}") from exc
    if not isinstance(raw, dict) or "params" not in raw:
        raise ValueError(f"{path}: a search space is a mapping with a 'params' section")
    try:
        return SearchSpace.model_validate(raw)
    except ValidationError as exc:
        raise ValueError(f"{path}: invalid search space: {exc}") from exc
