"""The phantom's own truth, for a data set already written: each eye's generator lesion.

:func:`make_synthetic_dataset` records its arguments in ``phantom.json``; :func:`replay_eyes`
draws the same eyes again from them (the same random streams, in the same order: each eye's
visits are rendered again, since rendering draws from the stream the next eye is drawn from), so
that a test can ask the generator for the true lesion (``EyeAnatomy.lesion_mask(day)``, the
``lesion_field >= lesion_threshold(day)`` rule) at any day, and compare it with the masks that
were written (the rendered lesion itself with ``easy``; a grader's outline of it with ``hard``).

It writes nothing and imports nothing from ``fpn`` (the growth rates are computed by the test).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_prep.synthetic.anatomy import EyeAnatomy, make_eye_anatomy
from data_prep.synthetic.grid import PhantomGrid
from data_prep.synthetic.presets import PRESETS, PhantomPreset
from data_prep.synthetic.render import render_visit
from data_prep.synthetic.write import _plan

__all__ = ["PhantomEye", "lesion_area_mm2", "replay_eyes"]


@dataclass(frozen=True)
class PhantomEye:
    """One eye of a written phantom, as the generator drew it.

    Attributes:
        patient_id, eye: the eye; labelled: whether its masks were written.
        days: its visit days; anatomy: what the generator drew (``anatomy.lesion_mask(day)``).
    """

    patient_id: str
    eye: str
    labelled: bool
    days: tuple[int, ...]
    anatomy: EyeAnatomy


def lesion_area_mm2(anatomy: EyeAnatomy, days: Iterable[int]) -> list[float]:
    """The generator's lesion area (mm^2) at each day: pixels of ``lesion_mask(day)`` x the
    en-face pixel area."""
    s_mm, _, w_mm = anatomy.grid.spacing_mm
    return [float(anatomy.lesion_mask(int(day)).sum()) * s_mm * w_mm for day in days]


def _preset(recipe: dict) -> PhantomPreset:
    params = recipe.get("preset_parameters")
    if not params:
        return PRESETS[recipe["preset"]]
    return PhantomPreset(**{k: tuple(v) if isinstance(v, list) else v for k, v in params.items()})


def replay_eyes(root: str | Path) -> list[PhantomEye]:
    """Every eye of the phantom written at ``root``, drawn again from its ``phantom.json``.

    Raises:
        ValueError: ``root`` has no readable ``phantom.json`` of this generator.
    """
    path = Path(root) / "phantom.json"
    try:
        recipe = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable phantom record ({exc})") from None
    if recipe.get("generator") != "data_prep.synthetic":
        raise ValueError(f"{path}: not written by data_prep.synthetic")
    preset = _preset(recipe)
    grid = PhantomGrid(tuple(int(n) for n in recipe["shape"]))  # type: ignore[arg-type]
    seed = int(recipe["seed"])
    plans, _ = _plan(int(recipe["patients"]), int(recipe["unlabelled"]), int(recipe["visits"]),
                     float(recipe["rpd_fraction"]), seed)
    eyes = []
    for plan in plans:  # the order and the streams of write._write_dataset
        rng = np.random.default_rng([seed, 1, plan.index])
        for eye in plan.eyes:
            anatomy = make_eye_anatomy(rng, grid, eye=eye, rpd=plan.rpd, preset=preset)
            for day in plan.days:
                render_visit(anatomy, day, rng)  # advances the stream as the writer did
            eyes.append(PhantomEye(plan.patient_id, eye, plan.labelled, plan.days, anatomy))
    return eyes
