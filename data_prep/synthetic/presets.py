"""How hard the phantom is: the ``easy`` phantom of old and the ``hard`` default.

The easy phantom has large, high-contrast lesions, mild speckle and a mask that is exactly the
rendered lesion: two labelled visits are enough to reach ~99 % Dice, which leaves nothing for
pretraining to show. The hard preset keeps the imaging physics and adds what makes real GA
grading hard:

- **noise and variability**: fully developed speckle (exponential intensity), a higher noise
  floor, stronger per-eye and per-B-scan gains, per-eye choroidal pigmentation and
  incomplete RPE loss, per-visit media opacity (blurred, dimmer en-face images, lower OCT SNR);
- **smaller, fainter lesions**: more and smaller foci, a lesion that is less dark on FAF and less
  bright on SLO, with a per-eye residual autofluorescence;
- **confounders on one modality only** (never labelled): hypo-autofluorescent patches (pigment
  clumps, blocked autofluorescence) and per-visit floater shadows that are dark on FAF with a
  normal OCT, and patches of RPE attenuation (incomplete atrophy) that show hypertransmission on
  OCT with an intact ellipsoid zone and a normal FAF;
- **a grader's outline**: the written mask is the lesion as a grader draws it, not the rendered
  truth: offset outwards by a per-eye bias (graders include part of the junctional zone) with a
  smooth per-eye jitter, smoothed, and without foci too small to draw. The per-eye style keeps the
  outline monotone across visits, like the lesion itself.

The OCT still carries the GA signal (RPE loss with hypertransmission, photoreceptor loss, ONL
thinning) and the inverted FAF still lights up on GA, so pretraining to reconstruct it from the
OCT is useful: it also teaches which OCT hypertransmission is *not* atrophy.

Calibration (2026-11-30, seed 0, the main job's store: 12 + 4 patients, 2 visits, 16 x 64 x 128;
its CPU recipe: 16 x 64 crops, batch 4, SGD lr 0.1, 6 pretraining and 3 fine-tuning epochs,
2-best ensemble): test Dice at ratio 0.1 (one training patient) was 14.3 +- 12.8 from scratch
and 95.0 +- 1.8 after inverted-FAF pretraining (6 test visits).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_PRESET", "PRESETS", "PhantomPreset", "resolve_preset"]


@dataclass(frozen=True)
class PhantomPreset:
    """The knobs of the phantom's difficulty. ``easy`` values reproduce the original phantom.

    Attributes:
        name: ``"easy"`` or ``"hard"``.
        foci_choices, foci_p: number of GA foci per eye and their probabilities.
        lesion_size: factor on every focus's semi-axes.
        rpe_loss: ``(lo, hi)`` per-eye completeness of RPE loss in GA on OCT (1 = complete).
        faf_residual: ``(lo, hi)`` per-eye GA autofluorescence as a fraction of the background
            (``None``: the easy phantom's fixed near-black lesion).
        slo_strength: ``(lo, hi)`` per-eye fraction of the easy phantom's SLO lesion brightening.
        rim: ``(lo, hi)`` per-eye amplitude of the hyperautofluorescent junctional rim.
        choroid_level: ``(lo, hi)`` per-eye mean choroidal stroma reflectivity (pigmentation);
            ``None``: 0.50.
        gain: ``(lo, hi)`` per-visit OCT gain; ``bscan_gain_sigma``: per-B-scan log-gain sigma.
        speckle_shape: shape of the gamma speckle on the intensity (mean 1; 1 = fully developed).
        noise_floor: mean of the exponential noise floor added to the intensity.
        enface_noise: standard deviation of the Gaussian noise on the FAF and SLO images.
        media_opacity: largest per-visit media opacity (0: none).
        faf_patches: ``(lo, hi)`` hypo-autofluorescent, OCT-normal patches per eye.
        floaters: mean number of per-visit floater shadows on FAF.
        oct_patches: ``(lo, hi)`` OCT-only RPE-attenuation (hypertransmission) patches per eye.
        outline_bias_mm: ``(lo, hi)`` per-eye outward offset of the grader's outline.
        outline_jitter_mm: amplitude of the smooth per-eye jitter of that offset.
        outline_smoothing_mm: Gaussian smoothing of the outline (0: none).
        min_focus_mm2: foci smaller than this are not drawn by the grader.
    """

    name: str
    foci_choices: tuple[int, ...] = (1, 2, 3, 4)
    foci_p: tuple[float, ...] = (0.35, 0.3, 0.2, 0.15)
    lesion_size: float = 1.0
    rpe_loss: tuple[float, float] = (1.0, 1.0)
    faf_residual: tuple[float, float] | None = None
    slo_strength: tuple[float, float] = (1.0, 1.0)
    rim: tuple[float, float] = (0.28, 0.28)
    choroid_level: tuple[float, float] | None = None
    gain: tuple[float, float] = (0.85, 1.15)
    bscan_gain_sigma: float = 0.08
    speckle_shape: float = 2.0
    noise_floor: float = 0.002
    enface_noise: float = 0.015
    media_opacity: float = 0.0
    faf_patches: tuple[int, int] = (0, 0)
    floaters: float = 0.0
    oct_patches: tuple[int, int] = (0, 0)
    outline_bias_mm: tuple[float, float] = (0.0, 0.0)
    outline_jitter_mm: float = 0.0
    outline_smoothing_mm: float = 0.0
    min_focus_mm2: float = 0.0

    @property
    def graded(self) -> bool:
        """Whether the written mask is a grader's outline rather than the rendered lesion."""
        return (self.outline_bias_mm != (0.0, 0.0) or self.outline_jitter_mm > 0
                or self.outline_smoothing_mm > 0 or self.min_focus_mm2 > 0)


PRESETS: dict[str, PhantomPreset] = {
    "easy": PhantomPreset(name="easy"),
    "hard": PhantomPreset(
        name="hard",
        foci_choices=(1, 2, 3, 4, 5), foci_p=(0.2, 0.25, 0.25, 0.15, 0.15),
        lesion_size=0.7,
        rpe_loss=(0.6, 0.95),
        faf_residual=(0.25, 0.5),
        slo_strength=(0.3, 0.7),
        rim=(0.0, 0.2),
        choroid_level=(0.35, 0.6),
        gain=(0.6, 1.4), bscan_gain_sigma=0.2,
        speckle_shape=1.0, noise_floor=0.006, enface_noise=0.04,
        media_opacity=0.5,
        faf_patches=(1, 4), floaters=1.0,
        oct_patches=(1, 4),
        outline_bias_mm=(0.02, 0.1), outline_jitter_mm=0.04, outline_smoothing_mm=0.05,
        min_focus_mm2=0.03,
    ),
}
DEFAULT_PRESET = "hard"


def resolve_preset(preset: str | PhantomPreset) -> PhantomPreset:
    """A preset by name (``"easy"``, ``"hard"``) or as given.

    Raises:
        ValueError: an unknown name.
    """
    if isinstance(preset, PhantomPreset):
        return preset
    if preset not in PRESETS:
        raise ValueError(f"unknown phantom preset {preset!r}; expected one of {sorted(PRESETS)}")
    return PRESETS[preset]
