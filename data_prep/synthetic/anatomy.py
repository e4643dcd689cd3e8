"""One eye's fixed anatomy: layers, vessels, choroid, drusen, the GA field, en-face backgrounds.

Each eye gets a fixed anatomy (layer thickness maps with a foveal pit, a retinal vessel tree
entering from the optic-disc side, a mottled choroid, optional reticular pseudodrusen and a
multifocal geographic-atrophy (GA) field); :mod:`render` draws a visit of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from data_prep.synthetic.grid import (
    _INNER_LAYERS,
    _MAX_RETINA_MM,
    _RPD_MAX_HEIGHT_MM,
    PhantomGrid,
    _sigmoid,
    _SmoothField,
)
from data_prep.synthetic.presets import DEFAULT_PRESET, PhantomPreset, resolve_preset
from data_prep.synthetic.vessels import _nearest_vessel, _vessel_segments

__all__ = ["EyeAnatomy", "make_eye_anatomy"]

# --- lesions and drusen -----------------------------------------------------------------------

def _lesion_field(rng: np.random.Generator, x: np.ndarray, y: np.ndarray,
                  preset: PhantomPreset) -> tuple[np.ndarray, float, float]:
    """A multifocal GA field: the lesion at a visit is ``field >= threshold(day)``.

    Each focus is a perturbed ellipse (``1 - normalised radius``); later foci start lower, so
    they appear at later visits. Lowering the threshold over time grows every focus, merges them
    and keeps each later mask a superset of the earlier ones.

    Args:
        x, y: ``(S, W)`` eye-local mm.
        preset: the number of foci and their size.

    Returns:
        ``(field (S, W) float32, threshold at day 0, threshold drop per year)``.
    """
    field = np.full(x.shape, -np.inf)
    for k in range(rng.choice(list(preset.foci_choices), p=list(preset.foci_p))):
        if k == 0:
            centre_r, a = rng.uniform(0.0, 1.0), rng.uniform(0.6, 1.6)
        else:
            centre_r, a = rng.uniform(0.5, 2.2), rng.uniform(0.3, 1.0)
        angle, tilt = rng.uniform(0, 2 * np.pi), rng.uniform(0, np.pi)
        a = a * preset.lesion_size
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
        preset: the difficulty preset it was drawn with (its per-visit knobs apply when
            rendering).
        rpe_loss: completeness of the RPE loss in GA on OCT (1: complete).
        faf_residual: GA autofluorescence as a fraction of the background (``None``: the easy
            phantom's near-black lesion).
        slo_strength: fraction of the easy phantom's SLO brightening in GA.
        rim_strength: amplitude of the FAF junctional rim.
        faf_confounder: hypo-autofluorescent patches (fraction of the FAF blocked), normal on
            OCT; ``None`` when there are none.
        oct_confounder: RPE-attenuation patches in ``[0, 1]`` (hypertransmission on OCT, intact
            ellipsoid zone, normal FAF); ``None`` when there are none.
        outline_offset_mm: how far out of the lesion (mm, negative: inside) the grader draws the
            outline, per pixel; ``None``: the mask is the rendered lesion.
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
    preset: PhantomPreset = field(default_factory=lambda: resolve_preset("easy"))
    rpe_loss: float = 1.0
    faf_residual: float | None = None
    slo_strength: float = 1.0
    rim_strength: float = 0.28
    faf_confounder: np.ndarray | None = None
    oct_confounder: np.ndarray | None = None
    outline_offset_mm: np.ndarray | None = None

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


def _choroid(rng: np.random.Generator, grid: PhantomGrid, x: np.ndarray, y: np.ndarray,
             level: float = 0.50) -> tuple[np.ndarray, np.ndarray]:
    """Choroid below BM: mottled stroma (mean reflectivity ``level``) with dark vessel lumens,
    then sclera.

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
    choroid = np.clip(level + 0.17 * texture, 0.08, 0.85)
    choroid = np.where(h > -0.012, 0.62, choroid)  # choriocapillaris
    sclera = 0.30 + 0.04 * texture
    reflectivity = np.zeros(grid.shape, np.float32)
    reflectivity[:, top:, :] = np.where(h > -thickness[:, None, :], choroid, sclera)
    return reflectivity, thickness


def _patches(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, count: int,
             radius_mm: tuple[float, float]) -> np.ndarray:
    """``count`` soft-edged, roughly elliptical patches anywhere in the scan: ``(S, W)`` in [0, 1].

    Args:
        x, y: ``(S, W)`` eye-local mm.
        radius_mm: range of the patches' mean radius.
    """
    out = np.zeros(x.shape)
    for _ in range(count):
        cx, cy = rng.uniform(-2.6, 2.6, size=2)
        a = rng.uniform(*radius_mm)
        b, tilt = a * rng.uniform(0.5, 1.0), rng.uniform(0, np.pi)
        dx, dy = x - cx, y - cy
        u = (dx * np.cos(tilt) + dy * np.sin(tilt)) / a
        v = (-dx * np.sin(tilt) + dy * np.cos(tilt)) / b
        out = np.maximum(out, _sigmoid((1.0 - np.hypot(u, v)) / 0.15))
    return out.astype(np.float32)


def make_eye_anatomy(rng: np.random.Generator, grid: PhantomGrid, eye: str = "OD",
                     rpd: bool = False, preset: str | PhantomPreset = DEFAULT_PRESET
                     ) -> EyeAnatomy:
    """Draw one eye's fixed anatomy.

    Args:
        rng: the source of randomness (the same state gives the same eye).
        grid: sampling grid, ``(S, D, W)``.
        eye: ``"OD"`` or ``"OS"``; mirrors the anatomy so the disc is nasal.
        rpd: add reticular pseudodrusen (phenotype ``"GA+RPD"``).
        preset: ``"easy"``, ``"hard"`` or a :class:`PhantomPreset`; ``"easy"`` draws exactly the
            original phantom's eye from the same ``rng`` state.

    Returns:
        The :class:`EyeAnatomy`.
    """
    if eye not in ("OD", "OS"):
        raise ValueError(f"eye must be 'OD' or 'OS', got {eye!r}")
    preset = resolve_preset(preset)
    image_x, image_y = grid.enface_mm()
    fovea = rng.normal(0.0, 0.2, size=2)
    mirror = 1.0 if eye == "OD" else -1.0
    x = mirror * (image_x - fovea[0])  # eye-local: fovea at 0, disc towards +x
    y = image_y - fovea[1]

    offset, radius = _nearest_vessel(x, y, _vessel_segments(rng))
    vessel_profile = np.exp(-(offset / radius) ** 2)
    rpd_height = _rpd_heights(rng, x, y) if rpd else np.zeros(x.shape, np.float32)
    thickness = _layer_thickness(rng, x, y, rpd_height)
    lesion_field, threshold0, growth = _lesion_field(rng, x, y, preset)
    level = 0.50 if preset.choroid_level is None else rng.uniform(*preset.choroid_level)
    choroid, choroid_thickness = _choroid(rng, grid, x, y, level)

    r = np.hypot(x, y)
    vignette = 1.0 - 0.2 * ((image_x / 3.0) ** 2 + (image_y / 3.0) ** 2)
    rpd_dots = rpd_height / _RPD_MAX_HEIGHT_MM
    faf = (0.58 * (1.0 - 0.5 * np.exp(-(r / 0.75) ** 2))  # macular pigment absorbs at the fovea
           * vignette * (1.0 + 0.07 * _SmoothField(rng, 0.6)(x, y))
           * (1.0 - 0.6 * vessel_profile) * (1.0 - 0.35 * rpd_dots))
    slo = (0.45 * (1.0 - 0.15 * np.exp(-(r / 0.5) ** 2))
           * vignette * (1.0 + 0.08 * _SmoothField(rng, 0.5)(x, y))
           * (1.0 - 0.4 * vessel_profile) * (1.0 - 0.35 * rpd_dots))
    rim_texture = _SmoothField(rng, 0.3)(x, y).astype(np.float32)
    lesion_texture = _SmoothField(rng, 0.15)(x, y).astype(np.float32)
    anatomy = EyeAnatomy(
        grid=grid, eye=eye, phenotype="GA+RPD" if rpd else "GA", thickness_mm=thickness,
        vessel_profile=vessel_profile.astype(np.float32),
        vessel_offset_mm=offset.astype(np.float32), vessel_radius_mm=radius.astype(np.float32),
        rpd_height_mm=rpd_height, lesion_field=lesion_field, lesion_threshold0=threshold0,
        lesion_growth_per_year=growth, choroid_reflectivity=choroid,
        choroid_thickness_mm=choroid_thickness,
        faf_background=faf.astype(np.float32), slo_background=slo.astype(np.float32),
        rim_texture=rim_texture, lesion_texture=lesion_texture, preset=preset)
    if preset.name != "easy":  # the easy phantom draws nothing more (same eyes as before)
        _draw_style(rng, anatomy, x, y)
    return anatomy


def _draw_style(rng: np.random.Generator, anatomy: EyeAnatomy, x: np.ndarray, y: np.ndarray
                ) -> None:
    """Draw the preset's per-eye variability, confounders and grader's habit into ``anatomy``."""
    preset = anatomy.preset
    anatomy.rpe_loss = float(rng.uniform(*preset.rpe_loss))
    if preset.faf_residual is not None:
        anatomy.faf_residual = float(rng.uniform(*preset.faf_residual))
    anatomy.slo_strength = float(rng.uniform(*preset.slo_strength))
    anatomy.rim_strength = float(rng.uniform(*preset.rim))
    if preset.faf_patches[1] > 0:
        count = int(rng.integers(preset.faf_patches[0], preset.faf_patches[1] + 1))
        depth = rng.uniform(0.4, 0.7)  # as dark as a GA lesion with residual autofluorescence
        anatomy.faf_confounder = (depth * _patches(rng, x, y, count, (0.08, 0.35))
                                  ).astype(np.float32)
    if preset.oct_patches[1] > 0:
        count = int(rng.integers(preset.oct_patches[0], preset.oct_patches[1] + 1))
        anatomy.oct_confounder = (rng.uniform(0.5, 0.8)
                                  * _patches(rng, x, y, count, (0.15, 0.5))).astype(np.float32)
    if preset.graded:
        bias = rng.uniform(*preset.outline_bias_mm)
        jitter = _SmoothField(rng, 0.3)(x, y)
        anatomy.outline_offset_mm = (bias + preset.outline_jitter_mm * np.clip(jitter, -2, 2)
                                     ).astype(np.float32)
