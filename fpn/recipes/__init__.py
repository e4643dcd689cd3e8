"""Training recipes shipped with the package: named YAML files of :class:`fpn.config.TrainConfig`
values (no store: the store is the caller's). Each states its optimiser and its budget (optimizer
steps per epoch, or the reference's crops per volume), and its comment says what it does.

- ``faithful``: exactly the reference's training, every value spelled out: fp32 (no bf16
  autocast, no compile), SGD lr 0.1 / momentum 0.9 / weight decay 1e-4, 40 epochs of 20 crops of
  32 x 256 per volume (the reference's budget: the steps follow the number of training
  volumes), batch 8, the per-crop offset N(0, 0.2), the 5 best checkpoints by the mean of
  per-visit Dice, running BatchNorm statistics, head bias 0. The way to reproduce the poster
  (``python -m fpn finetune --recipe faithful``, the ``paper`` preset of ``paper-table``).
- ``reference``: TrainConfig's defaults: the faithful recipe's optimiser and budget, with bf16
  autocast on GPU (a speed option; identical on CPU) and the evaluation fixes (BatchNorm
  statistics recomputed before validation, Dice pooled over the validation pixels ranks the
  checkpoints, a fresh head starts at the training split's GA fraction).
- ``cpu-small``: the search's recipe on the synthetic demo store (``python tune/search.py`` with
  no ``--data``): SGD lr 0.1, 20 optimizer steps per epoch at every ratio, a half-width FPN;
  about 15 minutes on 2 CPU cores.
- ``quick``: the demo's and the ``quick`` paper table's recipe: half-width networks, AdamW lr
  2e-3, 16 optimizer steps per epoch at every ratio, 8 epochs.
- ``tiny``: the tests' recipe: the smallest crops and batches that still train (SGD, one crop
  per visit per epoch).

A recipe is the first layer of :func:`fpn.config.build_train_config`; the caller's overrides go over it.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

__all__ = ["RECIPES", "load_recipe", "recipe_overrides"]

RECIPES = ("faithful", "reference", "cpu-small", "quick", "tiny")


def load_recipe(name: str) -> dict[str, Any]:
    """The recipe ``name`` (one of :data:`RECIPES`) or a YAML file path, as a nested mapping.

    Raises:
        ValueError: unknown name, unreadable file or a key TrainConfig does not have (the
            message names the recipe and the key).
    """
    from fpn.config import read_yaml_mapping

    if name in RECIPES:
        with resources.as_file(resources.files(__package__) / f"{name}.yaml") as path:
            tree = read_yaml_mapping(path, "recipe")
    elif name.endswith((".yaml", ".yml")) and Path(name).is_file():
        tree = read_yaml_mapping(name, "recipe")
    else:
        raise ValueError(f"unknown recipe {name!r}; expected one of {list(RECIPES)} or a YAML file")
    _check(tree, name)
    return tree


def recipe_overrides(name: str) -> dict[str, Any]:
    """The recipe as dotted keys (``{"optim.lr": 0.002, ...}``): the first layer of
    :func:`fpn.config.build_train_config`."""
    from fpn.config import flatten_tree

    tree = load_recipe(name)
    return {k: v for k, v in flatten_tree(tree).items() if v != {}}


def _check(tree: dict[str, Any], name: str) -> None:
    from pydantic import ValidationError

    from fpn.config import TrainConfig, validation_problem

    candidate = {**tree, "data": {**tree.get("data", {}), "store": "recipe-check"}}
    if "task" in tree:
        raise ValueError(f"recipe {name}: 'task' is chosen by the caller, not the recipe")
    try:
        TrainConfig.model_validate(candidate)
    except ValidationError as exc:
        raise ValueError(f"recipe {name}: {validation_problem(exc)}") from None
