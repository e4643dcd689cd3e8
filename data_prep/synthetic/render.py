"""One visit of an eye: the OCT volume, FAF and SLO/IR images and the GA mask.

The OCT is flattened to Bruch's membrane (BM): BM lies at the top edge of row
``PhantomGrid.bm_row`` (70 % of the depth), retinal layers above it, choroid below it. Each
voxel's reflectivity is the partial-volume mix of the layers crossing it; the signal follows
Beer-Lambert attenuation along depth (so vessels cast shadows and loss of the RPE gives
hypertransmission), times multiplicative gamma speckle and per-B-scan gains. FAF and SLO/IR
en-face images on the (S, W) grid share the vessels, the fovea, the lesion and the drusen, which
is what inter-modal pretraining learns from.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from data_prep.synthetic.anatomy import EyeAnatomy, _patches
from data_prep.synthetic.grid import (
    _CHOROID_ATTENUATION,
    _LAYERS,
    _PHOTORECEPTOR_LAYERS,
    _RPD_MAX_HEIGHT_MM,
    _SCLERA_ATTENUATION,
    _VESSEL_OPTICAL_DEPTH,
    _VESSEL_REFLECTIVITY,
    _VITREOUS_REFLECTIVITY,
    _sigmoid,
)

__all__ = ["VisitImages", "grader_outline", "render_visit"]

# --- one visit ---------------------------------------------------------------------------------

@dataclass
class VisitImages:
    """One rendered visit.

    Attributes:
        oct: ``(S, D, W)`` float32 flattened OCT (display-like scale, roughly 0..1.5).
        faf: ``(S, W)`` uint8 fundus autofluorescence.
        slo: ``(S, W)`` uint8 SLO/IR reflectance.
        lesion: ``(S, W)`` bool GA mask: the rendered truth.
        outline: ``(S, W)`` bool GA mask as a grader draws it (what is written as the mask);
            the rendered truth itself for the easy preset.
    """

    oct: np.ndarray
    faf: np.ndarray
    slo: np.ndarray
    lesion: np.ndarray
    outline: np.ndarray


def _ramp(t: np.ndarray) -> np.ndarray:
    """Fraction of a voxel above a boundary at ``t`` voxels below its centre (in place)."""
    t += 0.5
    return np.clip(t, 0.0, 1.0, out=t)


def _as_plane(value: np.ndarray | float) -> np.ndarray:
    """A scalar or an ``(S, W)`` map as an array that broadcasts against ``(S, D, W)``."""
    value = np.asarray(value, np.float32)
    return value[:, None, :] if value.ndim == 2 else value


def _render_oct(anatomy: EyeAnatomy, lesion: np.ndarray, ez_loss: np.ndarray,
                atrophy: np.ndarray, rng: np.random.Generator, signal: float = 1.0
                ) -> np.ndarray:
    """The ``(S, D, W)`` float32 OCT of one visit.

    Args:
        anatomy: the eye.
        lesion: ``(S, W)`` soft RPE loss in [0, 1] (>= 0.5 on the GA mask).
        ez_loss: ``(S, W)`` soft photoreceptor (EZ) loss, reaching a little beyond the lesion.
        atrophy: ``(S, W)`` soft outer-retinal thinning, with a gentler margin.
        rng: randomness for gains and speckle.
        signal: fraction of the light that gets through the media (1: clear).
    """
    grid, preset = anatomy.grid, anatomy.preset
    dz = grid.spacing_mm[1]
    h = grid.height_mm()[None, :, None]
    rpd_dots = anatomy.rpd_height_mm / _RPD_MAX_HEIGHT_MM

    thickness = dict(anatomy.thickness_mm)
    reflectivity: dict[str, np.ndarray | float] = {name: b for name, b, _ in _LAYERS}
    attenuation: dict[str, np.ndarray | float] = {name: mu for name, _, mu in _LAYERS}
    # GA: the RPE goes (and with it its attenuation: hypertransmission), photoreceptors are lost
    # a little beyond it (junctional zone), the ONL thins and the inner retina sinks. The hard
    # preset's RPE loss may be incomplete, and its RPE-attenuation patches (incomplete atrophy)
    # transmit light with the photoreceptors intact.
    rpe_loss = lesion * anatomy.rpe_loss
    if anatomy.oct_confounder is not None:
        rpe_loss = np.maximum(rpe_loss, anatomy.oct_confounder)
    thickness["rpe"] = thickness["rpe"] * (1.0 - 0.4 * rpe_loss)
    reflectivity["rpe"] = 0.95 * (1.0 - rpe_loss) + 0.22 * rpe_loss
    attenuation["rpe"] = attenuation["rpe"] * (1.0 - rpe_loss) + 1.5 * rpe_loss
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
    gain = (rng.uniform(*preset.gain)
            * rng.lognormal(0.0, preset.bscan_gain_sigma, size=(n_s, 1, 1))
            * (1.0 - 0.2 * x * x)[None, None, :]).astype(np.float32)
    if signal != 1.0:
        gain = gain * np.float32(signal)
    shape = preset.speckle_shape
    speckle = rng.gamma(shape, 1.0 / shape, size=grid.shape).astype(np.float32)
    floor = rng.exponential(preset.noise_floor, size=grid.shape).astype(np.float32)
    return np.sqrt(linear * gain * speckle + floor).astype(np.float32)


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)


def grader_outline(anatomy: EyeAnatomy, lesion: np.ndarray) -> np.ndarray:
    """The GA mask a grader draws around the rendered ``lesion`` (``(S, W)`` bool).

    The outline lies ``anatomy.outline_offset_mm`` outside the lesion (inside where negative),
    is smoothed by the preset's ``outline_smoothing_mm`` and leaves out foci smaller than its
    ``min_focus_mm2``. Each step is monotone, so a growing lesion gets a growing outline.
    Without a grader (the easy preset) it is ``lesion`` itself.
    """
    preset, offset = anatomy.preset, anatomy.outline_offset_mm
    if offset is None or not lesion.any():
        return lesion
    s_mm, _, w_mm = anatomy.grid.spacing_mm
    outside = ndimage.distance_transform_edt(~lesion, sampling=(s_mm, w_mm))
    inside = ndimage.distance_transform_edt(lesion, sampling=(s_mm, w_mm))
    outline = np.where(lesion, inside > -offset, outside <= offset)
    if preset.outline_smoothing_mm > 0:
        sigma = (preset.outline_smoothing_mm / s_mm, preset.outline_smoothing_mm / w_mm)
        outline = ndimage.gaussian_filter(outline.astype(np.float32), sigma) >= 0.5
    if preset.min_focus_mm2 > 0:
        labels, count = ndimage.label(outline)
        if count:
            area = np.bincount(labels.ravel(), minlength=count + 1) * (s_mm * w_mm)
            keep = area >= preset.min_focus_mm2
            keep[0] = False
            outline = keep[labels]
    return outline


def _enface_opacity(image: np.ndarray, opacity: float, spacing: tuple[float, float]
                    ) -> np.ndarray:
    """Media opacity on an en-face image: blurred and dimmer (``opacity`` in [0, 1))."""
    sigma = tuple(0.12 * opacity / d for d in spacing)
    return ndimage.gaussian_filter(image, sigma) * (1.0 - 0.4 * opacity)


def render_visit(anatomy: EyeAnatomy, day: int, rng: np.random.Generator) -> VisitImages:
    """Render one visit of an eye at ``day`` (days in study since baseline).

    Args:
        anatomy: the eye, from :func:`make_eye_anatomy`.
        day: day in study; the GA lesion at a later day contains the one at an earlier day.
        rng: randomness for speckle, gains and image noise (and, with the hard preset, media
            opacity and floater shadows).

    Returns:
        The :class:`VisitImages`: OCT ``(S, D, W)``, FAF/SLO ``(S, W)`` uint8, the rendered
        lesion and the grader's outline ``(S, W)``.
    """
    preset = anatomy.preset
    opacity = float(rng.uniform(0.0, preset.media_opacity)) if preset.media_opacity > 0 else 0.0
    threshold = anatomy.lesion_threshold(day)
    excess = anatomy.lesion_field - threshold
    lesion_mask = excess >= 0
    lesion = _sigmoid(excess / 0.012).astype(np.float32)  # >= 0.5 exactly on the mask
    ez_loss = _sigmoid((excess + 0.07) / 0.025).astype(np.float32)
    atrophy = _sigmoid((excess + 0.03) / 0.035).astype(np.float32)
    oct_volume = _render_oct(anatomy, lesion, ez_loss, atrophy, rng, signal=1.0 - 0.6 * opacity)

    # FAF: atrophy is dark, its junctional zone hyperautofluorescent.
    rim = np.exp(-((excess + 0.06) / 0.05) ** 2) * (excess < 0)
    # The hard preset leaves some autofluorescence in the lesion (a fraction of the background).
    residual = (0.06 if anatomy.faf_residual is None
                else anatomy.faf_residual * anatomy.faf_background)
    faf = (anatomy.faf_background * (1.0 - lesion)
           + lesion * (residual + 0.02 * anatomy.lesion_texture)
           + anatomy.rim_strength * rim * (0.7 + 0.3 * anatomy.rim_texture))
    if anatomy.faf_confounder is not None:  # blocked autofluorescence; the OCT is normal there
        faf = faf * (1.0 - anatomy.faf_confounder)
    # SLO/IR: atrophy is bright, with the choroidal pattern showing through.
    slo_lesion = lesion * anatomy.slo_strength
    slo = (anatomy.slo_background * (1.0 - slo_lesion)
           + slo_lesion * (0.72 + 0.08 * anatomy.lesion_texture)
           * (1.0 - 0.3 * anatomy.vessel_profile))
    shape = lesion.shape
    faf = faf * rng.uniform(0.9, 1.1) + rng.normal(0.0, preset.enface_noise, size=shape)
    slo = slo * rng.uniform(0.9, 1.1) + rng.normal(0.0, preset.enface_noise, size=shape)
    if preset.floaters > 0:  # vitreous floaters shadow the FAF where the OCT sees nothing
        image_x, image_y = anatomy.grid.enface_mm()
        count = int(rng.poisson(preset.floaters))
        faf = faf * (1.0 - rng.uniform(0.25, 0.5) * _patches(rng, image_x, image_y, count,
                                                              (0.25, 0.7)))
    if opacity > 0:
        spacing = (anatomy.grid.spacing_mm[0], anatomy.grid.spacing_mm[2])
        faf, slo = (_enface_opacity(image, opacity, spacing) for image in (faf, slo))
    return VisitImages(oct=oct_volume, faf=_to_uint8(faf), slo=_to_uint8(slo), lesion=lesion_mask,
                       outline=grader_outline(anatomy, lesion_mask))

