"""The output head of every network, and its prior.

Every network of :mod:`fpn.models` exposes its output convolution as ``model.head`` (a conv with
a bias, one output channel per class). :func:`set_output_prior` sets that bias so that the
network starts by predicting the foreground fraction it is told (the "prior probability"
initialisation of Lin et al., Focal Loss, 2017): a fresh head with bias 0 marks 20-40% of the
pixels positive at initialisation where GA covers about 5%. The models never read configs or
files: the caller computes the fraction (the training worker, from the training split's masks).
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["output_head", "prior_logit", "set_output_prior"]

#: the fraction is clipped to [EPS, 1 - EPS]: a training split without GA must not give -inf
EPS = 1e-4


def output_head(model: nn.Module) -> nn.Module:
    """``model.head`` (also through DDP's or ``torch.compile``'s wrapper): the output conv.

    Raises:
        ValueError: the model has no ``head`` conv with a bias.
    """
    inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None) or model
    head = getattr(inner, "head", None)
    if not isinstance(head, nn.modules.conv._ConvNd) or head.bias is None:
        raise ValueError(f"{type(inner).__name__} has no output conv `head` with a bias")
    return head


def prior_logit(fraction: float) -> float:
    """``log(p / (1 - p))`` of the foreground fraction ``p``, clipped to ``[EPS, 1 - EPS]``.

    Raises:
        ValueError: ``fraction`` is not a number in [0, 1].
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"a foreground fraction must be in [0, 1], got {fraction}")
    p = min(max(float(fraction), EPS), 1.0 - EPS)
    return math.log(p / (1.0 - p))


@torch.no_grad()
def set_output_prior(model: nn.Module, fraction: float) -> float:
    """Set every output bias of ``model.head`` to :func:`prior_logit` of ``fraction`` (in place);
    returns the bias."""
    bias = prior_logit(fraction)
    output_head(model).bias.fill_(bias)
    return bias
