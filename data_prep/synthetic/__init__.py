"""Synthetic OCT phantom written in the reference release's layout (``python -m data_prep synth``).

The package is split by job:

- :mod:`~data_prep.synthetic.grid`: the sampling grid and field of view (mm around the fovea);
- :mod:`~data_prep.synthetic.vessels` and :mod:`~data_prep.synthetic.anatomy`: one eye's fixed
  anatomy (layers, vessels, choroid, drusen, the GA field, and the hard preset's confounders);
- :mod:`~data_prep.synthetic.render`: one visit (OCT, FAF, SLO/IR, the rendered lesion and the
  grader's outline that is written as the mask);
- :mod:`~data_prep.synthetic.presets`: how hard the phantom is (``easy``: the original phantom;
  ``hard``, the default: more speckle and patient variability, smaller and fainter lesions,
  single-modality confounders, an imperfect grader);
- :mod:`~data_prep.synthetic.write` and :mod:`~data_prep.synthetic.cli`: the data set on disk.
"""

from data_prep.synthetic.anatomy import EyeAnatomy, make_eye_anatomy
from data_prep.synthetic.cli import synth_main
from data_prep.synthetic.grid import BM_DEPTH_FRACTION, FIELD_OF_VIEW_MM, SIZES, PhantomGrid
from data_prep.synthetic.presets import DEFAULT_PRESET, PRESETS, PhantomPreset
from data_prep.synthetic.render import VisitImages, render_visit
from data_prep.synthetic.write import SynthSummary, make_synthetic_dataset

__all__ = [
    "BM_DEPTH_FRACTION",
    "DEFAULT_PRESET",
    "FIELD_OF_VIEW_MM",
    "PRESETS",
    "SIZES",
    "EyeAnatomy",
    "PhantomGrid",
    "PhantomPreset",
    "SynthSummary",
    "VisitImages",
    "make_eye_anatomy",
    "make_synthetic_dataset",
    "render_visit",
    "synth_main",
]
