"""Model registry: ``create_model(name, **kwargs)``, ``list_models()``, head and weight helpers."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import torch
from torch import nn

__all__ = ["create_model", "list_models", "load_pretrained", "register_model", "reset_head"]

_MODELS: dict[str, Callable[..., nn.Module]] = {}
_T = TypeVar("_T", bound=Callable[..., nn.Module])
# wrappers that prefix state-dict keys: DDP / DataParallel, torch.compile
_WRAPPER_PREFIXES: tuple[str, ...] = ("module.", "_orig_mod.")


def register_model(name: str) -> Callable[[_T], _T]:
    """Class decorator that registers a network under ``name``."""

    def add(cls: _T) -> _T:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is already registered")
        _MODELS[name] = cls
        return cls

    return add


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`, sorted."""
    return sorted(_MODELS)


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered network; ``None`` kwargs are dropped so that model defaults apply.

    Raises:
        ValueError: unknown ``name`` or an argument the network rejects.
    """
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; available: {list_models()}")
    return _MODELS[name](**{k: v for k, v in kwargs.items() if v is not None})


def _head(model: nn.Module) -> nn.Module:
    head = getattr(model, "head", None)
    if not isinstance(head, nn.Module):
        raise ValueError(f"{type(model).__name__} has no `head` module")  # noqa: TRY004 (a bad argument)
    return head


def reset_head(model: nn.Module) -> None:
    """Re-initialise ``model.head`` with the model's own init scheme (in place)."""
    from fpn.models.blocks import init_weights

    head = _head(model)
    scheme = getattr(model, "init_scheme", "reference")
    for m in head.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()  # type: ignore[operator]
    init_weights(head, scheme)


def _strip_wrappers(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix):], True
    return key


def load_pretrained(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], reinit_head: bool
) -> list[str]:
    """Load a (self-supervised) state dict into a model of the same architecture.

    ``module.`` and ``_orig_mod.`` key prefixes (DDP, ``torch.compile``) are stripped. With
    ``reinit_head`` the head's entries are not loaded and the head is re-initialised, so a head of
    a different output size is fine; without it, everything must match.

    Returns:
        The model keys that were loaded, sorted.

    Raises:
        ValueError: missing or unexpected keys, or a shape mismatch (all listed).
    """
    head_prefix = next(name for name, m in model.named_modules() if m is _head(model)) + "."
    source = {_strip_wrappers(k): v for k, v in state_dict.items()}
    target = model.state_dict()
    wanted = {k for k in target if not (reinit_head and k.startswith(head_prefix))}
    given = {k for k in source if not (reinit_head and k.startswith(head_prefix))}
    problems = [f"missing: {k}" for k in sorted(wanted - given)]
    problems += [f"unexpected: {k}" for k in sorted(given - wanted)]
    problems += [
        f"shape of {k}: model {tuple(target[k].shape)} vs state dict {tuple(source[k].shape)}"
        for k in sorted(wanted & given)
        if target[k].shape != source[k].shape
    ]
    if problems:
        raise ValueError(
            f"state dict does not fit {type(model).__name__}: " + "; ".join(problems[:20])
            + (f"; ... ({len(problems)} problems)" if len(problems) > 20 else "")
        )
    loaded = sorted(wanted)
    model.load_state_dict({k: source[k] for k in loaded}, strict=not reinit_head)
    if reinit_head:
        reset_head(model)
    return loaded
