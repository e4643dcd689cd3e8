"""The phantom's sampling grid, field of view and smooth random fields (all in millimetres).

Everything is defined in millimetres around the fovea, so the same seed gives the same anatomy
at any grid shape; the field of view is about 6 x 0.5 x 6 mm whatever the shape.

Axes: OCT ``(S, D, W)`` = (B-scan index, depth from the top, A-scan index); en-face ``(S, W)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["BM_DEPTH_FRACTION", "FIELD_OF_VIEW_MM", "MIN_SHAPE", "SIZES", "PhantomGrid"]

SIZES: dict[str, tuple[int, int, int]] = {"small": (16, 64, 128), "realistic": (49, 128, 512)}
#: (slow, depth, fast) extent in mm; Spectralis-like: 49 x 0.1224, 128 x 0.0039, 512 x 0.0114.
FIELD_OF_VIEW_MM: tuple[float, float, float] = (6.0, 0.4992, 5.84)
BM_DEPTH_FRACTION = 0.7
MIN_SHAPE: tuple[int, int, int] = (1, 16, 8)

# Retinal layers from BM upwards: (name, display reflectivity, attenuation per mm of the linear
# intensity). The RPE's melanin attenuates strongly; losing it lets light reach the choroid.
_LAYERS: tuple[tuple[str, float, float], ...] = (
    ("rpe", 0.95, 55.0),
    ("rpd", 0.72, 6.0),  # subretinal drusenoid deposit (zero thickness unless RPD)
    ("iz", 0.62, 4.0),  # interdigitation zone
    ("os", 0.34, 3.0),  # photoreceptor outer segments
    ("ez", 0.85, 4.0),  # ellipsoid zone
    ("myoid", 0.30, 2.0),
    ("elm", 0.55, 2.0),
    ("onl", 0.17, 1.5),
    ("opl", 0.55, 3.0),
    ("inl", 0.27, 1.5),
    ("ipl", 0.50, 2.5),
    ("gcl", 0.42, 2.5),
    ("rnfl", 0.80, 5.0),
)
_PHOTORECEPTOR_LAYERS = ("iz", "os", "ez", "myoid", "elm")
_INNER_LAYERS = ("opl", "inl", "ipl", "gcl", "rnfl")
_VITREOUS_REFLECTIVITY = 0.03
_MAX_RETINA_MM = 0.325  # stays below the 0.35 mm between the crop's top and BM
_CHOROID_ATTENUATION, _SCLERA_ATTENUATION = 10.0, 5.0
_VESSEL_REFLECTIVITY = 0.70
_VESSEL_OPTICAL_DEPTH = 2.2  # along a vessel's centre line, whatever its calibre
_RPD_MAX_HEIGHT_MM = 0.035
_DISC_DISTANCE_MM = 4.4  # optic disc centre from the fovea, nasal (just outside a 6 mm scan)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


# --- grid ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PhantomGrid:
    """The sampling grid of a phantom volume.

    Attributes:
        shape: ``(S, D, W)`` voxels.
    """

    shape: tuple[int, int, int]

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        """``(s, d, w)`` spacing in mm: the fixed field of view divided by the shape."""
        s, d, w = (fov / n for fov, n in zip(FIELD_OF_VIEW_MM, self.shape))
        return (s, d, w)

    @property
    def bm_row(self) -> int:
        """Row whose top edge is Bruch's membrane (rows above it are retina and vitreous)."""
        return round(BM_DEPTH_FRACTION * self.shape[1])

    def height_mm(self) -> np.ndarray:
        """``(D,)`` float32 height of each row's centre above BM in mm (negative: choroid)."""
        dz = self.spacing_mm[1]
        return ((self.bm_row - np.arange(self.shape[1]) - 0.5) * dz).astype(np.float32)

    def enface_mm(self) -> tuple[np.ndarray, np.ndarray]:
        """``(x, y)``, each ``(S, W)`` float64: en-face pixel centres in mm from the scan centre.

        ``x`` runs along the A-scans (W), ``y`` along the B-scans (S).
        """
        s_mm, _, w_mm = self.spacing_mm
        n_s, _, n_w = self.shape
        y = (np.arange(n_s) + 0.5) * s_mm - FIELD_OF_VIEW_MM[0] / 2
        x = (np.arange(n_w) + 0.5) * w_mm - FIELD_OF_VIEW_MM[2] / 2
        return np.broadcast_to(x[None, :], (n_s, n_w)), np.broadcast_to(y[:, None], (n_s, n_w))


class _SmoothField:
    """A smooth random field with about unit variance, as a sum of random plane waves in mm.

    Defined on continuous coordinates, so it does not depend on the sampling grid.
    """

    def __init__(self, rng: np.random.Generator, scale_mm: float, n_waves: int = 24):
        self._k = rng.normal(0.0, 1.0 / scale_mm, size=(n_waves, 2))
        self._phase = rng.uniform(0.0, 2 * np.pi, size=n_waves)

    def __call__(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        x, y = np.broadcast_arrays(np.asarray(x, float), np.asarray(y, float))
        expand = (-1,) + (1,) * x.ndim
        arg = (np.multiply.outer(self._k[:, 0], x) + np.multiply.outer(self._k[:, 1], y)
               + self._phase.reshape(expand))
        return np.sqrt(2.0 / len(self._phase)) * np.cos(arg).sum(axis=0)

