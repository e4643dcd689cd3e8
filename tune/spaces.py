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
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

__all__ = ["ParamSpec", "SearchSpace", "load_space"]


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

    def describe(self) -> str:
        """One line per parameter, for logs and model cards."""
        lines = []
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
