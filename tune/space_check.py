"""The network knobs of a search space, checked against the store being searched.

A projection-block knob changes the network only at some input depths: at the synthetic store's
depth 64 every FPN level already reaches depth 1 before its final reduction (unless
``depth_convs_offset = -1`` is drawn too), so ``reduction`` then changes nothing; ``depth_kernel``
is unused at a level without strided depth convolutions. Searching an inert knob wastes trials
and, with shared pretraining, pretrains identical networks twice.

:func:`check_model_knobs` makes every ``model.kwargs.*`` knob categorical (TPE then treats the
architecture as categorical, and each distinct draw is one shared pretraining), adds the
reference width 1.0 on GPUs, drops choices no network can take at the store's depth, and drops
(or, strict, refuses) a knob none of whose choices changes the network, with a one-line message
naming the knob and the depth. What a network *is* is read from the built network itself
(:class:`fpn.models.projection.ProjectionBlock`'s counts, kernel, reduction and
``output_depth``), not from its kwargs.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

from tune.spaces import ParamSpec, SearchSpace

__all__ = ["REFERENCE_WIDTH", "InertKnob", "check_model_knobs", "level_depths", "network_signature"]

MODEL_PREFIX = "model.kwargs."
#: the reference channel width (16..256 channels), added to the width choices on GPUs
REFERENCE_WIDTH = 1.0


class InertKnob(ValueError):
    """A knob of the space cannot change the network at the store's depth (strict mode)."""


def level_depths(model: Any, depth: int) -> list[int]:
    """The depth each encoder level of ``model`` sees for an input ``depth`` (padded to the
    network's multiple, then halved by every pooling)."""
    target = model._depth_target(depth) if hasattr(model, "_depth_target") else depth
    return [target // 2**level for level in range(len(model.projections))]


def network_signature(name: str, kwargs: dict[str, Any], depth: int) -> tuple | None:
    """What the network ``name(**kwargs)`` computes at input ``depth``, as a hashable value:
    per level the strided depth convs, their kernel (when there is one), and the reduction (when
    more than one depth position is left to reduce); plus every non-projection kwarg as given.
    None when the network cannot take that depth (or cannot be built). Networks without
    projection blocks are described by their kwargs alone."""
    from fpn.models import create_model

    try:
        model = create_model(name, **{**kwargs, "width": 0.0625, "channels_last": False}) \
            if "width" in _params_of(name) else create_model(name, **kwargs)
    except (TypeError, ValueError):
        return None
    if getattr(model, "min_depth", 0) > depth or (
            getattr(model, "max_depth", None) is not None and depth > model.max_depth):
        return None
    projections = getattr(model, "projections", None)
    projection_kwargs = ("reduction", "depth_kernel", "depth_convs_offset", "final_kernels")
    rest = tuple(sorted((k, repr(v)) for k, v in kwargs.items()
                        if projections is None or k not in projection_kwargs))
    if projections is None:
        return rest
    levels = []
    for block, d in zip(projections, level_depths(model, depth)):
        left = block.output_depth(d)
        levels.append((block.n_depth_convs,
                       block.depth_convs[0].kernel_size[1] if block.n_depth_convs > 0 else None,
                       block.final_kernel,
                       block.reduction if left > 1 else None))
    return (tuple(levels), rest)


def _params_of(name: str) -> set[str]:
    import inspect

    from fpn.models._registry import _MODELS  # type: ignore[attr-defined]

    return set(inspect.signature(_MODELS[name]).parameters)


def _as_categorical(spec: ParamSpec) -> ParamSpec:
    if spec.type == "categorical":
        return spec
    if spec.type == "int":
        step = int(spec.step or 1)
        return ParamSpec(type="categorical",
                         choices=list(range(int(spec.low), int(spec.high) + 1, step)))
    raise ValueError("a float network knob cannot be searched as categorical")


def check_model_knobs(space: SearchSpace, base_kwargs: dict[str, Any], model: str,
                      depths: Sequence[int], *, gpus_per_worker: float = 0.0,
                      strict: bool = False, log: Callable[[str], None] = print) -> SearchSpace:
    """The space with its ``model.kwargs.*`` knobs made categorical and checked at ``depths``
    (the store's OCT depths).

    Raises:
        InertKnob: ``strict`` and a knob (or one of its choices) cannot change the network.
        ValueError: a float network knob (the architecture must be a finite set).
    """
    params = dict(space.params)
    knobs = [k for k in params if k.startswith(MODEL_PREFIX)]
    for k in knobs:
        try:
            params[k] = _as_categorical(params[k])
        except ValueError as exc:
            raise ValueError(f"{k}: {exc}") from None
    width_key = f"{MODEL_PREFIX}width"
    if gpus_per_worker > 0 and width_key in params and \
            REFERENCE_WIDTH not in (params[width_key].choices or []):
        params[width_key] = ParamSpec(type="categorical",
                                      choices=[*params[width_key].choices, REFERENCE_WIDTH])
        log(f"{width_key}: the search runs on GPUs; the reference width {REFERENCE_WIDTH:g} "
            "is one of the choices")
    depth_text = "/".join(str(d) for d in sorted(set(depths)))

    def refuse_or_warn(message: str) -> None:
        if strict:
            raise InertKnob(f"{message} (--strict-space)")
        log(f"warning: {message}; not searching it")

    def signatures(choices: dict[str, list[Any]]) -> dict[tuple, tuple | None]:
        names = list(choices)
        out = {}
        for combo in itertools.product(*(choices[n] for n in names)):
            kwargs = {**base_kwargs, **{n[len(MODEL_PREFIX):]: v for n, v in zip(names, combo)}}
            sigs = tuple(network_signature(model, kwargs, d) for d in depths)
            out[combo] = None if any(s is None for s in sigs) else sigs
        return out

    choices = {k: list(params[k].choices or []) for k in knobs}
    if knobs:
        sigs = signatures(choices)
        # choices no network can take at this depth
        for i, k in enumerate(knobs):
            bad = [c for c in choices[k]
                   if all(s is None for combo, s in sigs.items() if combo[i] == c)]
            if bad and len(bad) < len(choices[k]):
                message = (f"{k} = {', '.join(map(repr, bad))} cannot take the store's depth "
                           f"{depth_text}")
                if strict:
                    raise InertKnob(f"{message} (--strict-space)")
                log(f"warning: {message}; not searching {'them' if len(bad) > 1 else 'it'}")
                choices[k] = [c for c in choices[k] if c not in bad]
            elif bad:
                raise ValueError(f"{k}: no choice of {choices[k]} makes a {model} network that "
                                 f"takes the store's depth {depth_text}")
        sigs = signatures(choices)
        # knobs none of whose choices changes the network, whatever the other knobs draw
        for k in list(knobs):
            i = list(choices).index(k)
            others: dict[tuple, set] = {}
            for combo, s in sigs.items():
                if s is not None:
                    others.setdefault(combo[:i] + combo[i + 1:], set()).add(s)
            if len(choices[k]) > 1 and all(len(v) == 1 for v in others.values()):
                what = ("every level has depth 1 before the reduction" if k.endswith("reduction")
                        else "no level has a strided depth convolution"
                        if k.endswith("depth_kernel") else "every choice builds the same network")
                refuse_or_warn(f"{k} cannot change the network at the store's depth "
                               f"{depth_text} ({what}, for every architecture in the space)")
                del choices[k]
                knobs.remove(k)
                sigs = signatures(choices)
        for k in [k for k in params if k.startswith(MODEL_PREFIX)]:
            if k not in choices:
                del params[k]
            else:
                params[k] = ParamSpec(type="categorical", choices=choices[k])
    return space.model_copy(update={"params": params, "fixed": dict(space.fixed)})
