"""Networks mapping an OCT volume ``(B, C, S, D, W)`` to en-face logits ``(B, K, S, W)``.

``create_model(name, **kwargs)`` builds one of ``list_models()``: ``fpn`` (the proposed feature
projection network), ``resensnet``, ``lachinov``, ``ipn``, ``ipnv2`` (as published) and
``ipn-bn``, ``ipnv2-bn`` (our batch-norm variants). Every model exposes
``head`` (its output conv), ``min_depth``/``max_depth`` and pads/crops internally so that the
output lies on the input's en-face grid. See docs/models.md.
"""

from __future__ import annotations

from fpn.models._registry import create_model, list_models, load_pretrained, reset_head
from fpn.models.fpn import FPN
from fpn.models.ipn import IPN, IPNBatchNorm
from fpn.models.ipnv2 import IPNv2, IPNv2BatchNorm
from fpn.models.lachinov import Lachinov
from fpn.models.projection import ProjectionBlock
from fpn.models.resensnet import ReSensNet

__all__ = [
    "FPN",
    "IPN",
    "IPNBatchNorm",
    "IPNv2",
    "IPNv2BatchNorm",
    "Lachinov",
    "ProjectionBlock",
    "ReSensNet",
    "create_model",
    "list_models",
    "load_pretrained",
    "reset_head",
]
