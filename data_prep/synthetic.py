"""Synthetic OCT phantom written in the reference release's layout (``python -m data_prep synth``).

Each eye gets a fixed anatomy (layer thickness maps with a foveal pit, a retinal vessel tree
entering from the optic-disc side, a mottled choroid, optional reticular pseudodrusen and a
multifocal geographic-atrophy (GA) field); each visit renders that anatomy at its day in study:
the GA lesion grows monotonically, and speckle, gains and en-face image noise are drawn anew.

The OCT is flattened to Bruch's membrane (BM): BM lies at the top edge of row
``PhantomGrid.bm_row`` (70 % of the depth), retinal layers above it, choroid below it. Each
voxel's reflectivity is the partial-volume mix of the layers crossing it; the signal follows
Beer-Lambert attenuation along depth (so vessels cast shadows and loss of the RPE gives
hypertransmission), times multiplicative gamma speckle and per-B-scan gains. FAF and SLO/IR
en-face images on the (S, W) grid share the vessels, the fovea, the lesion and the drusen, which
is what inter-modal pretraining learns from.

Everything is defined in millimetres around the fovea, so the same seed gives the same anatomy
at any grid shape; the field of view is about 6 x 0.5 x 6 mm whatever the shape.

Axes: OCT ``(S, D, W)`` = (B-scan index, depth from the top, A-scan index); en-face ``(S, W)``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage
from scipy.spatial import cKDTree

__all__ = [
    "BM_DEPTH_FRACTION",
    "FIELD_OF_VIEW_MM",
    "PRESETS",
    "EyeAnatomy",
    "PhantomGrid",
    "SynthSummary",
    "VisitImages",
    "make_eye_anatomy",
    "make_synthetic_dataset",
    "render_visit",
    "synth_main",
]

PRESETS: dict[str, tuple[int, int, int]] = {"small": (16, 64, 128), "realistic": (49, 128, 512)}
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


# --- vessels -------------------------------------------------------------------------------------

def _polyline_segments(points: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """``(N, 2)`` points and ``(N,)`` radii -> ``(N-1, 5)`` segments ``x0, y0, x1, y1, radius``."""
    if len(points) < 2:
        return np.zeros((0, 5))
    return np.column_stack([points[:-1], points[1:], 0.5 * (radii[:-1] + radii[1:])])


def _grow_branch(rng: np.random.Generator, start: np.ndarray, heading: float, radius: float,
                 level: int, out: list[np.ndarray]) -> None:
    """Random-walk a vessel branch (eye-local mm, fovea at the origin) towards the fovea.

    It stops at the foveal avascular zone, at its length budget, or when too thin; it may spawn
    thinner side branches (up to two levels deep).
    """
    step, faz = 0.04, rng.uniform(0.35, 0.55)
    max_length = rng.uniform(1.0, 2.6)
    point = np.asarray(start, float)
    points, radii = [point], [radius]
    length = 0.0
    while length < max_length and radius > 0.012:
        to_fovea = np.arctan2(-point[1], -point[0])
        pull = 0.06 if level == 0 else 0.02
        heading += 0.1 * rng.standard_normal() + pull * np.angle(np.exp(1j * (to_fovea - heading)))
        point = point + step * np.array([np.cos(heading), np.sin(heading)])
        length += step
        radius *= 0.993
        if np.hypot(*point) < faz or np.abs(point).max() > 4.5:
            break
        points.append(point)
        radii.append(radius)
        if level < 2 and rng.random() < 0.035:
            side = rng.choice([-1.0, 1.0])
            _grow_branch(rng, point, heading + side * rng.uniform(0.5, 1.0), radius * 0.7,
                         level + 1, out)
    out.append(_polyline_segments(np.array(points), np.array(radii)))


def _vessel_segments(rng: np.random.Generator) -> np.ndarray:
    """The retinal vessel tree as ``(N, 5)`` segments in eye-local mm (fovea 0, disc at +x).

    Superior and inferior temporal arcades (an artery and a vein each) leave the disc and curve
    around the fovea near the scan's edges; branches leave them towards the fovea, and a few
    small macular vessels run straight from the disc.
    """
    out: list[np.ndarray] = []
    for side in (1.0, -1.0):
        for base_radius in (0.055, 0.07):
            theta_end = rng.uniform(2.0, 2.5)
            theta = np.arange(0.0, theta_end, 0.03)
            r_apex = rng.uniform(2.3, 3.0)
            freq, phase = rng.uniform(3.0, 7.0), rng.uniform(0, 2 * np.pi)
            # Leaves the disc, passes above/below the fovea, then fans out temporally.
            radial = (r_apex + (_DISC_DISTANCE_MM - r_apex) * np.exp(-theta / 0.5)
                      + rng.uniform(0.4, 1.0) * np.maximum(theta - 1.5, 0.0) ** 2
                      + 0.08 * np.sin(freq * theta + phase))
            points = np.column_stack([radial * np.cos(theta), side * radial * np.sin(theta)])
            radii = base_radius * (1.0 - 0.5 * theta / theta_end)
            out.append(_polyline_segments(points, radii))
            for i in range(5, len(theta), 12):  # a branch candidate every ~0.35 rad of arc
                if rng.random() < 0.45:
                    inward = np.arctan2(-points[i, 1], -points[i, 0]) + rng.uniform(-0.6, 0.6)
                    _grow_branch(rng, points[i], inward, 0.55 * radii[i], 0, out)
    for _ in range(rng.integers(2, 5)):
        start = np.array([rng.uniform(3.0, 3.8), rng.uniform(-0.8, 0.8)])
        _grow_branch(rng, start, np.pi + 0.2 * rng.standard_normal(), rng.uniform(0.025, 0.04),
                     0, out)
    return np.concatenate([s for s in out if len(s)])


def _nearest_vessel(x: np.ndarray, y: np.ndarray, segments: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
    """For each point, the dominant vessel: the one with the smallest distance / radius.

    The centre lines are sampled every 5 um and searched with a k-d tree, among the few nearest
    samples (vessels further than 0.5 mm do not matter).

    Args:
        x, y: ``(S, W)`` eye-local mm.
        segments: ``(N, 5)`` from :func:`_vessel_segments`.

    Returns:
        ``(offset_mm, radius_mm)``, each ``(S, W)``: lateral distance to that vessel's centre
        line (``inf`` when none is near) and its radius.
    """
    start, stop = segments[:, 0:2], segments[:, 2:4]
    counts = np.maximum(1, np.ceil(np.hypot(*(stop - start).T) / 0.005).astype(int))
    owner = np.repeat(np.arange(len(segments)), counts)
    t = (np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)) / counts[owner]
    samples = start[owner] + t[:, None] * (stop - start)[owner]
    radii = np.append(segments[owner, 4], 1.0)  # the extra entry answers "nothing near"
    pixels = np.column_stack([x.ravel(), y.ravel()])
    near = (np.abs(samples - pixels.mean(axis=0)) < np.ptp(pixels, axis=0) / 2 + 0.6).all(axis=1)
    samples, radii = samples[near], np.append(radii[:-1][near], 1.0)
    if len(samples) == 0:
        return np.full(x.shape, np.inf), np.full(x.shape, 0.05)
    dist, index = cKDTree(samples).query(pixels, k=min(8, len(samples)),
                                         distance_upper_bound=0.5)
    dist, index = dist.reshape(len(pixels), -1), index.reshape(len(pixels), -1)
    pick = np.argmin(dist / radii[index], axis=1)
    rows = np.arange(len(pixels))
    offset, radius = dist[rows, pick], radii[index[rows, pick]]
    radius = np.where(np.isfinite(offset), radius, 0.05)
    return offset.reshape(x.shape), radius.reshape(x.shape)


# --- lesions and drusen -----------------------------------------------------------------------

def _lesion_field(rng: np.random.Generator, x: np.ndarray, y: np.ndarray
                  ) -> tuple[np.ndarray, float, float]:
    """A multifocal GA field: the lesion at a visit is ``field >= threshold(day)``.

    Each focus is a perturbed ellipse (``1 - normalised radius``); later foci start lower, so
    they appear at later visits. Lowering the threshold over time grows every focus, merges them
    and keeps each later mask a superset of the earlier ones.

    Args:
        x, y: ``(S, W)`` eye-local mm.

    Returns:
        ``(field (S, W) float32, threshold at day 0, threshold drop per year)``.
    """
    field = np.full(x.shape, -np.inf)
    for k in range(rng.choice([1, 2, 3, 4], p=[0.35, 0.3, 0.2, 0.15])):
        if k == 0:
            centre_r, a = rng.uniform(0.0, 1.0), rng.uniform(0.6, 1.6)
        else:
            centre_r, a = rng.uniform(0.5, 2.2), rng.uniform(0.3, 1.0)
        angle, tilt = rng.uniform(0, 2 * np.pi), rng.uniform(0, np.pi)
        b = a * rng.uniform(0.55, 1.0)
        dx, dy = x - centre_r * np.cos(angle), y - centre_r * np.sin(angle)
        u = (dx * np.cos(tilt) + dy * np.sin(tilt)) / a
        v = (-dx * np.sin(tilt) + dy * np.cos(tilt)) / b
        polar = np.arctan2(v, u)
        harmonics = np.arange(2, 6)
        wobble = rng.uniform(0.0, 0.1, size=4)
        phases = rng.uniform(0, 2 * np.pi, size=4)
        boundary = 1.0 + np.tensordot(wobble, np.cos(np.multiply.outer(harmonics, polar)
                                                      + phases[:, None, None]), axes=1)
        onset = 0.0 if k == 0 else rng.uniform(0.0, 0.5)
        field = np.maximum(field, 1.0 - np.hypot(u, v) / boundary - onset)
    field = field + 0.06 * _SmoothField(rng, 0.25)(x, y)
    if rng.random() < 0.4:  # foveal sparing
        field = field - 0.5 * np.exp(-(np.hypot(x, y) / 0.35) ** 2)
    threshold0, growth = 0.0, rng.uniform(0.12, 0.35)
    if rng.random() < 0.1:  # incipient GA: nothing at baseline, fast growth afterwards
        threshold0, growth = float(field.max()) + 0.02, rng.uniform(0.5, 0.8)
    return field.astype(np.float32), threshold0, growth


def _rpd_heights(rng: np.random.Generator, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Reticular pseudodrusen: ``(S, W)`` mound heights (mm) above the RPE.

    Dots on a jittered hexagonal lattice, mostly perifoveal and superior, in patches.
    """
    pitch = rng.uniform(0.16, 0.24)
    cols = np.arange(-3.6, 3.6, pitch)
    rows = np.arange(-3.6, 3.6, pitch * np.sqrt(3) / 2)
    lx = cols[None, :] + 0.5 * pitch * (np.arange(len(rows)) % 2)[:, None]
    ly = np.broadcast_to(rows[:, None], lx.shape)
    dots_x = lx.ravel() + 0.25 * pitch * rng.standard_normal(lx.size)
    dots_y = ly.ravel() + 0.25 * pitch * rng.standard_normal(lx.size)
    superior = rng.choice([-1.0, 1.0])
    weight = (_sigmoid((np.hypot(dots_x, dots_y) - 1.1) / 0.25)
              * (0.3 + 0.7 * _sigmoid(superior * dots_y / 0.7))
              * (_SmoothField(rng, 0.8)(dots_x, dots_y) > -0.4))
    keep = (rng.random(lx.size) < 0.9 * weight)
    keep &= (np.abs(dots_x) < np.abs(x).max() + 0.2) & (np.abs(dots_y) < np.abs(y).max() + 0.2)
    dots_x, dots_y = dots_x[keep], dots_y[keep]
    dot_radius = rng.uniform(0.035, 0.065, size=keep.sum())
    dot_height = rng.uniform(0.015, _RPD_MAX_HEIGHT_MM, size=keep.sum())
    px, py = x.ravel()[:, None], y.ravel()[:, None]
    heights = np.zeros(px.shape[0])
    chunk = max(1, 2_000_000 // max(1, px.shape[0]))
    for start in range(0, len(dots_x), chunk):
        part = slice(start, start + chunk)
        d2 = (px - dots_x[None, part]) ** 2 + (py - dots_y[None, part]) ** 2
        mound = dot_height[None, part] * np.exp(-d2 / dot_radius[None, part] ** 2)
        heights = np.maximum(heights, mound.max(axis=1))
    return heights.reshape(x.shape).astype(np.float32)


# --- one eye -----------------------------------------------------------------------------------

@dataclass
class EyeAnatomy:
    """What stays fixed across an eye's visits. All maps are ``(S, W)`` float32 unless stated.

    Attributes:
        grid: the sampling grid.
        eye: ``"OD"`` or ``"OS"`` (the optic disc is nasal: +x for OD, -x for OS).
        phenotype: ``"GA"`` or ``"GA+RPD"``.
        thickness_mm: healthy thickness of each layer of ``_LAYERS`` (mm).
        vessel_profile: en-face vessel profile in ``[0, 1]`` (1 on a centre line).
        vessel_offset_mm, vessel_radius_mm: distance to and radius of the dominant vessel.
        rpd_height_mm: reticular pseudodrusen mound heights (zeros without RPD).
        lesion_field: the GA field; the lesion is ``lesion_field >= lesion_threshold(day)``.
        lesion_threshold0, lesion_growth_per_year: the threshold at day 0 and its yearly drop.
        choroid_reflectivity: ``(S, D, W)`` display reflectivity below BM (0 above it).
        choroid_thickness_mm: choroid thickness; below it is sclera.
        faf_background, slo_background: en-face images of the eye without GA, in ``[0, 1]``.
        rim_texture, lesion_texture: smooth fields (about N(0, 1)) for the FAF junctional rim
            and the choroidal pattern seen through the lesion on SLO.
    """

    grid: PhantomGrid
    eye: str
    phenotype: str
    thickness_mm: dict[str, np.ndarray]
    vessel_profile: np.ndarray
    vessel_offset_mm: np.ndarray
    vessel_radius_mm: np.ndarray
    rpd_height_mm: np.ndarray
    lesion_field: np.ndarray
    lesion_threshold0: float
    lesion_growth_per_year: float
    choroid_reflectivity: np.ndarray
    choroid_thickness_mm: np.ndarray
    faf_background: np.ndarray
    slo_background: np.ndarray
    rim_texture: np.ndarray
    lesion_texture: np.ndarray

    def lesion_threshold(self, day: int) -> float:
        """The GA threshold at ``day``; it only decreases, so lesions only grow."""
        return self.lesion_threshold0 - self.lesion_growth_per_year * max(day, 0) / 365.0

    def lesion_mask(self, day: int) -> np.ndarray:
        """``(S, W)`` bool GA mask at ``day``."""
        return self.lesion_field >= self.lesion_threshold(day)


def _layer_thickness(rng: np.random.Generator, x: np.ndarray, y: np.ndarray,
                     rpd_height: np.ndarray) -> dict[str, np.ndarray]:
    """Healthy layer thickness maps (mm) in eye-local coordinates, with a foveal pit."""
    r = np.hypot(x, y)
    pit = 1.0 - np.exp(-(r / 0.6) ** 2)  # the inner retina vanishes at the foveal centre
    outer = 1.0 + 0.05 * _SmoothField(rng, 1.5)(x, y)
    inner = 1.0 + 0.07 * _SmoothField(rng, 1.2)(x, y)
    gcl_ring = (1.0 + 0.35 * np.exp(-((r - 1.0) / 0.6) ** 2)) * (1.0 - 0.25 * _sigmoid((r - 2.3) / 0.4))
    thickness = {
        "rpe": 0.022 * outer,
        "rpd": rpd_height.astype(float),
        "iz": 0.008 * outer,
        "os": (0.018 + 0.010 * np.exp(-(r / 0.5) ** 2)) * outer,  # longer cone outer segments
        "ez": 0.012 * outer,
        "myoid": 0.012 * outer,
        "elm": 0.005 * outer,
        # Henle fibres pile up at the fovea; drusen push into the ONL, not the inner retina.
        "onl": np.maximum((0.060 + 0.035 * np.exp(-(r / 0.55) ** 2)) * outer - rpd_height,
                          0.02),
        "opl": 0.022 * pit * inner,
        "inl": 0.030 * pit * inner,
        "ipl": 0.035 * pit * inner,
        "gcl": 0.042 * pit * gcl_ring * inner,
        "rnfl": pit * (0.010 + 0.020 * _sigmoid((x - 0.8) / 0.9)) * inner,  # thicker nasally
    }
    outer_total = sum(t for name, t in thickness.items() if name not in _INNER_LAYERS)
    inner_total = sum(thickness[name] for name in _INNER_LAYERS)
    squeeze = np.clip((_MAX_RETINA_MM - outer_total) / np.maximum(inner_total, 1e-9), 0.0, 1.0)
    for name in _INNER_LAYERS:
        thickness[name] = thickness[name] * squeeze
    return {name: t.astype(np.float32) for name, t in thickness.items()}


def _choroid(rng: np.random.Generator, grid: PhantomGrid, x: np.ndarray, y: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray]:
    """Choroid below BM: mottled stroma with dark vessel lumens, then sclera.

    Returns:
        ``(reflectivity (S, D, W) float32, zero above BM; thickness (S, W) float32 mm)``.
    """
    n_s, n_d, n_w = grid.shape
    s_mm, d_mm, w_mm = grid.spacing_mm
    thickness = (rng.uniform(0.12, 0.25) * (1.0 + 0.15 * _SmoothField(rng, 2.0)(x, y))).astype(np.float32)
    top = max(grid.bm_row - 1, 0)
    noise = rng.standard_normal((n_s, n_d - top, n_w), dtype=np.float32)
    texture = ndimage.gaussian_filter(noise, sigma=(0.05 / s_mm, 0.018 / d_mm, 0.05 / w_mm))
    texture /= texture.std() + 1e-6
    h = grid.height_mm()[top:][None, :, None]
    choroid = np.clip(0.50 + 0.17 * texture, 0.08, 0.85)
    choroid = np.where(h > -0.012, 0.62, choroid)  # choriocapillaris
    sclera = 0.30 + 0.04 * texture
    reflectivity = np.zeros(grid.shape, np.float32)
    reflectivity[:, top:, :] = np.where(h > -thickness[:, None, :], choroid, sclera)
    return reflectivity, thickness


def make_eye_anatomy(rng: np.random.Generator, grid: PhantomGrid, eye: str = "OD",
                     rpd: bool = False) -> EyeAnatomy:
    """Draw one eye's fixed anatomy.

    Args:
        rng: the source of randomness (the same state gives the same eye).
        grid: sampling grid, ``(S, D, W)``.
        eye: ``"OD"`` or ``"OS"``; mirrors the anatomy so the disc is nasal.
        rpd: add reticular pseudodrusen (phenotype ``"GA+RPD"``).

    Returns:
        The :class:`EyeAnatomy`.
    """
    if eye not in ("OD", "OS"):
        raise ValueError(f"eye must be 'OD' or 'OS', got {eye!r}")
    image_x, image_y = grid.enface_mm()
    fovea = rng.normal(0.0, 0.2, size=2)
    mirror = 1.0 if eye == "OD" else -1.0
    x = mirror * (image_x - fovea[0])  # eye-local: fovea at 0, disc towards +x
    y = image_y - fovea[1]

    offset, radius = _nearest_vessel(x, y, _vessel_segments(rng))
    vessel_profile = np.exp(-(offset / radius) ** 2)
    rpd_height = _rpd_heights(rng, x, y) if rpd else np.zeros(x.shape, np.float32)
    thickness = _layer_thickness(rng, x, y, rpd_height)
    lesion_field, threshold0, growth = _lesion_field(rng, x, y)
    choroid, choroid_thickness = _choroid(rng, grid, x, y)

    r = np.hypot(x, y)
    vignette = 1.0 - 0.2 * ((image_x / 3.0) ** 2 + (image_y / 3.0) ** 2)
    rpd_dots = rpd_height / _RPD_MAX_HEIGHT_MM
    faf = (0.58 * (1.0 - 0.5 * np.exp(-(r / 0.75) ** 2))  # macular pigment absorbs at the fovea
           * vignette * (1.0 + 0.07 * _SmoothField(rng, 0.6)(x, y))
           * (1.0 - 0.6 * vessel_profile) * (1.0 - 0.35 * rpd_dots))
    slo = (0.45 * (1.0 - 0.15 * np.exp(-(r / 0.5) ** 2))
           * vignette * (1.0 + 0.08 * _SmoothField(rng, 0.5)(x, y))
           * (1.0 - 0.4 * vessel_profile) * (1.0 - 0.35 * rpd_dots))
    return EyeAnatomy(
        grid=grid, eye=eye, phenotype="GA+RPD" if rpd else "GA", thickness_mm=thickness,
        vessel_profile=vessel_profile.astype(np.float32),
        vessel_offset_mm=offset.astype(np.float32), vessel_radius_mm=radius.astype(np.float32),
        rpd_height_mm=rpd_height, lesion_field=lesion_field, lesion_threshold0=threshold0,
        lesion_growth_per_year=growth, choroid_reflectivity=choroid,
        choroid_thickness_mm=choroid_thickness,
        faf_background=faf.astype(np.float32), slo_background=slo.astype(np.float32),
        rim_texture=_SmoothField(rng, 0.3)(x, y).astype(np.float32),
        lesion_texture=_SmoothField(rng, 0.15)(x, y).astype(np.float32))


# --- one visit ---------------------------------------------------------------------------------

@dataclass
class VisitImages:
    """One rendered visit.

    Attributes:
        oct: ``(S, D, W)`` float32 flattened OCT (display-like scale, roughly 0..1.5).
        faf: ``(S, W)`` uint8 fundus autofluorescence.
        slo: ``(S, W)`` uint8 SLO/IR reflectance.
        lesion: ``(S, W)`` bool GA mask.
    """

    oct: np.ndarray
    faf: np.ndarray
    slo: np.ndarray
    lesion: np.ndarray


def _ramp(t: np.ndarray) -> np.ndarray:
    """Fraction of a voxel above a boundary at ``t`` voxels below its centre (in place)."""
    t += 0.5
    return np.clip(t, 0.0, 1.0, out=t)


def _as_plane(value: np.ndarray | float) -> np.ndarray:
    """A scalar or an ``(S, W)`` map as an array that broadcasts against ``(S, D, W)``."""
    value = np.asarray(value, np.float32)
    return value[:, None, :] if value.ndim == 2 else value


def _render_oct(anatomy: EyeAnatomy, lesion: np.ndarray, ez_loss: np.ndarray,
                atrophy: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The ``(S, D, W)`` float32 OCT of one visit.

    Args:
        anatomy: the eye.
        lesion: ``(S, W)`` soft RPE loss in [0, 1] (>= 0.5 on the GA mask).
        ez_loss: ``(S, W)`` soft photoreceptor (EZ) loss, reaching a little beyond the lesion.
        atrophy: ``(S, W)`` soft outer-retinal thinning, with a gentler margin.
        rng: randomness for gains and speckle.
    """
    grid = anatomy.grid
    dz = grid.spacing_mm[1]
    h = grid.height_mm()[None, :, None]
    rpd_dots = anatomy.rpd_height_mm / _RPD_MAX_HEIGHT_MM

    thickness = dict(anatomy.thickness_mm)
    reflectivity: dict[str, np.ndarray | float] = {name: b for name, b, _ in _LAYERS}
    attenuation: dict[str, np.ndarray | float] = {name: mu for name, _, mu in _LAYERS}
    # GA: the RPE goes (and with it its attenuation: hypertransmission), photoreceptors are lost
    # a little beyond it (junctional zone), the ONL thins and the inner retina sinks.
    thickness["rpe"] = thickness["rpe"] * (1.0 - 0.4 * lesion)
    reflectivity["rpe"] = 0.95 * (1.0 - lesion) + 0.22 * lesion
    attenuation["rpe"] = attenuation["rpe"] * (1.0 - lesion) + 1.5 * lesion
    thickness["rpd"] = thickness["rpd"] * (1.0 - ez_loss)
    for name in _PHOTORECEPTOR_LAYERS:
        thickness[name] = thickness[name] * (1.0 - 0.75 * atrophy)
        reflectivity[name] = reflectivity[name] * (1.0 - ez_loss) + 0.2 * ez_loss
    reflectivity["ez"] = reflectivity["ez"] * (1.0 - 0.45 * rpd_dots)  # EZ disrupted over RPD
    thickness["onl"] = thickness["onl"] * (1.0 - 0.5 * atrophy)

    bm_above = _ramp(h / dz)  # (1, D, 1): fraction of each row above BM (BM is flat)
    refl = anatomy.choroid_reflectivity * (1.0 - bm_above)
    mu = np.where(h > -anatomy.choroid_thickness_mm[:, None, :],
                  _CHOROID_ATTENUATION, _SCLERA_ATTENUATION).astype(np.float32) * (1.0 - bm_above)
    # Partial volume: each voxel mixes the layers by how much of its depth extent they cover.
    top = np.zeros(lesion.shape, np.float32)
    previous = bm_above
    for name, _, _ in _LAYERS:
        top = top + thickness[name]
        upper = _ramp((h - top[:, None, :]) / dz)
        fraction = previous - upper
        refl += _as_plane(reflectivity[name]) * fraction
        mu += _as_plane(attenuation[name]) * fraction
        previous = upper
    refl += _VITREOUS_REFLECTIVITY * previous

    # Vessels: tubes in the inner retina that scatter and absorb, shadowing everything below.
    radius = anatomy.vessel_radius_mm[:, None, :]
    centre = top - np.maximum(anatomy.vessel_radius_mm + 0.004, 0.5 * thickness["rnfl"])
    tube = np.exp(-(anatomy.vessel_offset_mm[:, None, :] ** 2 + (h - centre[:, None, :]) ** 2)
                  / radius ** 2)
    refl = refl * (1.0 - tube) + _VESSEL_REFLECTIVITY * tube
    mu += (_VESSEL_OPTICAL_DEPTH / (radius * np.sqrt(np.pi))) * tube

    # Beer-Lambert along depth (optical depth to each voxel's centre), then gains and speckle.
    optical_depth = np.cumsum(mu, axis=1) * dz - 0.5 * dz * mu
    linear = refl * refl * np.exp(-optical_depth)
    n_s, _, n_w = grid.shape
    x = np.linspace(-1.0, 1.0, n_w, dtype=np.float32)
    gain = (rng.uniform(0.85, 1.15) * rng.lognormal(0.0, 0.08, size=(n_s, 1, 1))
            * (1.0 - 0.2 * x * x)[None, None, :]).astype(np.float32)
    speckle = rng.gamma(2.0, 0.5, size=grid.shape).astype(np.float32)
    floor = rng.exponential(0.002, size=grid.shape).astype(np.float32)
    return np.sqrt(linear * gain * speckle + floor).astype(np.float32)


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)


def render_visit(anatomy: EyeAnatomy, day: int, rng: np.random.Generator) -> VisitImages:
    """Render one visit of an eye at ``day`` (days in study since baseline).

    Args:
        anatomy: the eye, from :func:`make_eye_anatomy`.
        day: day in study; the GA lesion at a later day contains the one at an earlier day.
        rng: randomness for speckle, gains and image noise.

    Returns:
        The :class:`VisitImages`: OCT ``(S, D, W)``, FAF/SLO ``(S, W)`` uint8, mask ``(S, W)``.
    """
    threshold = anatomy.lesion_threshold(day)
    excess = anatomy.lesion_field - threshold
    lesion_mask = excess >= 0
    lesion = _sigmoid(excess / 0.012).astype(np.float32)  # >= 0.5 exactly on the mask
    ez_loss = _sigmoid((excess + 0.07) / 0.025).astype(np.float32)
    atrophy = _sigmoid((excess + 0.03) / 0.035).astype(np.float32)
    oct_volume = _render_oct(anatomy, lesion, ez_loss, atrophy, rng)

    # FAF: atrophy is dark, its junctional zone hyperautofluorescent.
    rim = np.exp(-((excess + 0.06) / 0.05) ** 2) * (excess < 0)
    faf = (anatomy.faf_background * (1.0 - lesion)
           + lesion * (0.06 + 0.02 * anatomy.lesion_texture)
           + 0.28 * rim * (0.7 + 0.3 * anatomy.rim_texture))
    # SLO/IR: atrophy is bright, with the choroidal pattern showing through.
    slo = (anatomy.slo_background * (1.0 - lesion)
           + lesion * (0.72 + 0.08 * anatomy.lesion_texture)
           * (1.0 - 0.3 * anatomy.vessel_profile))
    shape = lesion.shape
    faf = faf * rng.uniform(0.9, 1.1) + rng.normal(0.0, 0.015, size=shape)
    slo = slo * rng.uniform(0.9, 1.1) + rng.normal(0.0, 0.015, size=shape)
    return VisitImages(oct=oct_volume, faf=_to_uint8(faf), slo=_to_uint8(slo), lesion=lesion_mask)


# --- the dataset -------------------------------------------------------------------------------

@dataclass(frozen=True)
class SynthSummary:
    """What :func:`make_synthetic_dataset` wrote.

    Attributes:
        root: the dataset folder.
        shape: ``(S, D, W)`` of every volume; spacing_mm: ``(s, d, w)``.
        patients, labelled_patients, unlabelled_patients, rpd_patients: patient counts.
        eyes: eyes over all patients; visits: all visits; labelled_visits: visits with a mask.
        lesion_visits: labelled visits whose mask is not empty.
        mean_lesion_fraction: mean fraction of en-face pixels in GA over labelled visits.
        split: ``{"train", "val", "test"}`` patient ids (labelled patients only).
    """

    root: Path
    shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    patients: int
    labelled_patients: int
    unlabelled_patients: int
    rpd_patients: int
    eyes: int
    visits: int
    labelled_visits: int
    lesion_visits: int
    mean_lesion_fraction: float
    split: dict[str, list[str]]

    def format(self) -> str:
        """A few human-readable lines."""
        parts = ", ".join(f"{k} {len(v)}" for k, v in self.split.items())
        spacing = ", ".join(f"{v:.4f}" for v in self.spacing_mm)
        return "\n".join([
            f"wrote {self.root}",
            (f"  patients {self.patients} ({self.labelled_patients} labelled: {parts}; "
             f"{self.unlabelled_patients} unlabelled; {self.rpd_patients} with RPD)"),
            (f"  eyes {self.eyes}, visits {self.visits} ({self.labelled_visits} labelled, "
             f"{self.lesion_visits} with GA)"),
            f"  volume {self.shape} (S, D, W), spacing {spacing} mm",
            f"  mean lesion fraction {self.mean_lesion_fraction:.3f}",
        ])


@dataclass(frozen=True)
class _PatientPlan:
    patient_id: str
    index: int
    labelled: bool
    rpd: bool
    eyes: tuple[str, ...]
    days: tuple[int, ...]


def _plan(patients: int, unlabelled: int, visits: int, rpd_fraction: float, seed: int
          ) -> tuple[list[_PatientPlan], dict[str, list[str]]]:
    """Who is labelled, eyes, visit days, phenotype and the 60/20/20 patient split."""
    rng = np.random.default_rng([seed, 0])
    total = patients + unlabelled
    width = max(3, len(str(total)))
    unlabelled_idx = set(rng.choice(total, size=unlabelled, replace=False).tolist())
    plans = []
    for index in range(total):
        if rng.random() < 0.25:
            eyes: tuple[str, ...] = ("OD", "OS")
        else:
            eyes = (str(rng.choice(["OD", "OS"])),)
        n_visits = int(rng.integers(max(1, visits - 1), visits + 1))
        days = [0] + [int(180 * k + rng.integers(-14, 15)) for k in range(1, n_visits)]
        plans.append(_PatientPlan(
            patient_id=f"P{index + 1:0{width}d}", index=index,
            labelled=index not in unlabelled_idx, rpd=bool(rng.random() < rpd_fraction),
            eyes=eyes, days=tuple(days)))
    labelled = [p.patient_id for p in plans if p.labelled]
    order = [labelled[i] for i in rng.permutation(len(labelled))]
    n = len(order)
    n_test = max(1, round(0.2 * n)) if n >= 2 else 0
    n_val = max(1, round(0.2 * n)) if n >= 3 else 0
    split = {"train": sorted(order[n_test + n_val:]), "val": sorted(order[n_test:n_test + n_val]),
             "test": sorted(order[:n_test])}
    return plans, split


def _save_png(path: Path, image: np.ndarray) -> None:
    Image.fromarray(np.ascontiguousarray(image)).save(path, format="PNG")


def _write_dataset(root: Path, grid: PhantomGrid, plans: list[_PatientPlan],
                   split: dict[str, list[str]], seed: int) -> SynthSummary:
    data_info: dict[str, list[dict[str, str]]] = {}
    spacing = np.asarray(grid.spacing_mm, dtype=np.float64)
    eyes = visits = labelled_visits = lesion_visits = 0
    lesion_fractions: list[float] = []
    for plan in plans:
        rng = np.random.default_rng([seed, 1, plan.index])  # independent of other patients
        entries: list[dict[str, str]] = []
        for eye in plan.eyes:
            eyes += 1
            anatomy = make_eye_anatomy(rng, grid, eye=eye, rpd=plan.rpd)
            for day in plan.days:
                file_set = f"{len(entries) + 1:02d}"
                entries.append({"FileSetId": file_set, "Position": eye, "DayInStudy": str(day),
                                "Phenotype": anatomy.phenotype})
                visit = render_visit(anatomy, day, rng)
                folder = root / f"{plan.patient_id}_{eye}" / str(day)
                images = folder / "preprocessed_images"
                images.mkdir(parents=True)
                np.save(folder / f"bscan_flat.{file_set}.npy", visit.oct)
                np.save(folder / f"spacing.{file_set}.npy", spacing)
                _save_png(images / f"bscan_size.faf.{file_set}.png", visit.faf)
                _save_png(images / f"bscan_size.slo.{file_set}.png", visit.slo)
                visits += 1
                if plan.labelled:
                    mask = np.where(visit.lesion, 255, 0).astype(np.uint8)
                    _save_png(images / f"bscan_size.mask_faf.{file_set}.png", mask)
                    labelled_visits += 1
                    lesion_visits += int(visit.lesion.any())
                    lesion_fractions.append(float(visit.lesion.mean()))
        data_info[plan.patient_id] = entries
    (root / "data_info.json").write_text(json.dumps(data_info, indent=2) + "\n", encoding="utf-8")
    (root / "split.json").write_text(json.dumps(split, indent=2) + "\n", encoding="utf-8")
    return SynthSummary(
        root=root, shape=grid.shape, spacing_mm=grid.spacing_mm, patients=len(plans),
        labelled_patients=sum(p.labelled for p in plans),
        unlabelled_patients=sum(not p.labelled for p in plans),
        rpd_patients=sum(p.rpd for p in plans), eyes=eyes, visits=visits,
        labelled_visits=labelled_visits, lesion_visits=lesion_visits,
        mean_lesion_fraction=float(np.mean(lesion_fractions)) if lesion_fractions else 0.0,
        split=split)


def _check_arguments(patients: int, unlabelled: int, shape: tuple[int, int, int], visits: int,
                     rpd_fraction: float) -> None:
    if patients < 0 or unlabelled < 0 or patients + unlabelled < 1:
        raise ValueError(f"need at least one patient (got {patients} labelled, "
                         f"{unlabelled} unlabelled)")
    if len(shape) != 3 or any(int(n) < lo for n, lo in zip(shape, MIN_SHAPE)):
        raise ValueError(f"shape (S, D, W) must be at least {MIN_SHAPE}, got {tuple(shape)}")
    if visits < 1:
        raise ValueError(f"visits must be >= 1, got {visits}")
    if not 0.0 <= rpd_fraction <= 1.0:
        raise ValueError(f"rpd_fraction must be in [0, 1], got {rpd_fraction}")


def make_synthetic_dataset(out: Path | str, patients: int = 12, unlabelled: int = 4,
                           shape: tuple[int, int, int] = PRESETS["small"], visits: int = 3,
                           seed: int = 0, rpd_fraction: float = 0.25,
                           overwrite: bool = False) -> SynthSummary:
    """Write a synthetic GA dataset in the reference layout.

    The whole tree is written to a temporary sibling folder and renamed to ``out`` at the end,
    so ``out`` is never half-written. The same arguments give byte-identical files.

    Args:
        out: the dataset folder to create.
        patients: labelled patients (masks at every visit; split 60/20/20 into train/val/test).
        unlabelled: extra patients without masks (in ``data_info.json``, in no split part).
        shape: ``(S, D, W)`` of every OCT volume; the field of view stays ~6 x 0.5 x 6 mm.
        visits: the most visits per eye; each patient gets ``visits - 1`` or ``visits`` visits
            (at least 1), about 180 days apart.
        seed: seed of everything.
        rpd_fraction: probability that a patient's eyes also have reticular pseudodrusen.
        overwrite: replace a non-empty ``out``.

    ``data_info.json`` entries carry an extra key ``"Phenotype"`` (``"GA"`` or ``"GA+RPD"``);
    unlabelled patients are listed there but in no part of ``split.json`` and have no masks.

    Returns:
        A :class:`SynthSummary`.

    Raises:
        FileExistsError: ``out`` exists, is not an empty folder, and ``overwrite`` is false.
        ValueError: bad counts, shape or fraction.
    """
    out = Path(out)
    shape = tuple(int(n) for n in shape)  # type: ignore[assignment]
    _check_arguments(patients, unlabelled, shape, visits, rpd_fraction)
    occupied = out.exists() and (not out.is_dir() or any(out.iterdir()))
    if occupied and not overwrite:
        what = "is not a folder" if not out.is_dir() else "is not empty"
        raise FileExistsError(f"{out}: exists and {what}; pass --overwrite to replace it")
    grid = PhantomGrid(shape)  # type: ignore[arg-type]
    plans, split = _plan(patients, unlabelled, visits, rpd_fraction, seed)

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        summary = _write_dataset(staging, grid, plans, split, seed)
        if out.exists() or out.is_symlink():
            trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, trash / "old")
            os.replace(staging, out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return dataclasses.replace(summary, root=out)


# --- command line ------------------------------------------------------------------------------

def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m data_prep synth",
        description="Write a synthetic OCT/FAF/SLO GA dataset in the reference layout "
                    "(data_info.json, split.json, <patient>_<eye>/<day>/...).")
    parser.add_argument("out", type=Path, help="dataset folder to create")
    parser.add_argument("--patients", type=int, default=12,
                        help="labelled patients, split 60/20/20 into train/val/test (default 12)")
    parser.add_argument("--unlabelled", type=int, default=4,
                        help="extra patients without masks, for pretraining only (default 4)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small",
                        help="volume shape: small = 16x64x128, realistic = 49x128x512 (S D W)")
    parser.add_argument("--shape", type=int, nargs=3, metavar=("S", "D", "W"),
                        help="volume shape (B-scans, depth, A-scans); overrides --preset")
    parser.add_argument("--visits", type=int, default=3,
                        help="most visits per eye; each patient gets V-1 or V (default 3)")
    parser.add_argument("--rpd-fraction", type=float, default=0.25,
                        help="fraction of patients with reticular pseudodrusen (default 0.25)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT")
    return parser


def synth_main(argv: list[str] | None = None) -> int:
    """The ``synth`` subcommand: parse ``argv`` (without the subcommand name) and write.

    Returns:
        0 on success, 1 when OUT is occupied, 2 on bad arguments.
    """
    parser = _build_parser()
    args = parser.parse_args(argv)
    shape = tuple(args.shape) if args.shape else PRESETS[args.preset]
    try:
        summary = make_synthetic_dataset(
            args.out, patients=args.patients, unlabelled=args.unlabelled, shape=shape,
            visits=args.visits, seed=args.seed, rpd_fraction=args.rpd_fraction,
            overwrite=args.overwrite)
    except FileExistsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(summary.format())
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(synth_main())
