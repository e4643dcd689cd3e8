"""Inference: the k-best ensemble on whole volumes, on the native grid.

A trained model is one or more *members* (the checkpoint format of :mod:`fpn.storage.member`);
:func:`load_ensemble` finds them (:func:`fpn.storage.resolve_members`: a checkpoint file or
directory, a training run directory, a registered ``models:/NAME@ALIAS``, local or on an object
store) and averages their probabilities.
"""

from __future__ import annotations

from fpn.inference.ensemble import Ensemble, load_ensemble

__all__ = ["Ensemble", "load_ensemble"]
