"""En-face overlay figures: the OCT projection with the target and the prediction."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fpn.figures import save_figure

__all__ = ["enface_projection", "save_learning_curves", "save_overlay"]


def enface_projection(oct_volume: np.ndarray) -> np.ndarray:
    """Mean over depth, ``(S, D, W) -> (S, W)``, scaled to ``[0, 1]`` for display."""
    p = np.asarray(oct_volume, np.float32).mean(axis=1)
    lo, hi = np.percentile(p, [1, 99])
    return np.clip((p - lo) / max(hi - lo, 1e-6), 0, 1)


def save_overlay(out: str | Path, projection: np.ndarray, prob: np.ndarray,
                 target: np.ndarray | None, *, ssl: bool, title: str = "",
                 spacing_sw: tuple[float, float] = (1.0, 1.0)) -> Path:
    """Segmentation: contours of target (green) and prediction (red) on the projection.
    Reconstruction: projection, prediction and target side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    aspect = spacing_sw[0] / spacing_sw[1]
    if ssl:
        fig, axes = plt.subplots(1, 3, figsize=(10, 3.2))
        for ax, img, name in zip(axes, (projection, prob, target), ("OCT projection",
                                                                   "predicted", "target")):
            if img is not None:
                ax.imshow(img, cmap="gray", vmin=0, vmax=1, aspect=aspect)
            ax.set_title(name)
            ax.axis("off")
    else:
        fig, ax = plt.subplots(figsize=(5, 4))
        ax.imshow(projection, cmap="gray", aspect=aspect)
        if target is not None and target.max() > 0:
            ax.contour(target, levels=[0.5], colors="lime", linewidths=1)
        if prob.max() >= 0.5:
            ax.contour(prob, levels=[0.5], colors="red", linewidths=1)
        ax.set_title("target (green), prediction (red)" if target is not None
                     else "prediction (red)")
        ax.axis("off")
    fig.suptitle(title)
    return save_figure(fig, out, bbox_inches="tight")


def save_learning_curves(out: str | Path, history: dict[str, list[tuple[int, float]]]) -> Path:
    """One panel per metric, x = epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    names = sorted(history)
    fig, axes = plt.subplots(1, max(1, len(names)), figsize=(4 * max(1, len(names)), 3))
    axes = np.atleast_1d(axes)
    for ax, name in zip(axes, names):
        steps, vals = zip(*sorted(history[name])) if history[name] else ((), ())
        ax.plot(steps, vals, marker="o", ms=3)
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    return save_figure(fig, out, bbox_inches="tight")
