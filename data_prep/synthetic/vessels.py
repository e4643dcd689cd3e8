"""The retinal vessel tree: arcades from the optic disc, branches towards the fovea."""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from data_prep.synthetic.grid import _DISC_DISTANCE_MM

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

