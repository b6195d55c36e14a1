"""Rollout videos: predicted vs ground-truth cloth as orthographic wireframes (front and oblique views), one method
over GT, or GT and several methods side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import imageio.v2 as imageio
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.tri import Triangulation  # noqa: E402


def _oblique(azimuth_deg: float, elevation_deg: float) -> np.ndarray:
    """(2, 3) orthographic projection (screen right, screen up) of a camera at the given azimuth/elevation."""
    a, e = np.radians(azimuth_deg), np.radians(elevation_deg)
    forward = -np.array([np.cos(e) * np.sin(a), -np.cos(e) * np.cos(a), np.sin(e)])
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    return np.stack([right, np.cross(right, forward)])


# world up is +z; the flag extends towards +x from a pole along z
VIEWS = (("front (x-z)", np.array([[1.0, 0, 0], [0, 0, 1.0]])), ("oblique", _oblique(35.0, 25.0)))


def _padded_limits(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) (2,) of 2D ``points`` (..., 2) with a 5% margin."""
    lo, hi = points.reshape(-1, 2).min(0), points.reshape(-1, 2).max(0)
    pad = 0.05 * float((hi - lo).max() + 1e-9)
    return lo - pad, hi + pad


def _frame_axes(ax: Any, lo: np.ndarray, hi: np.ndarray) -> None:
    ax.set_xlim(lo[0], hi[0])
    ax.set_ylim(lo[1], hi[1])
    ax.set_aspect("equal")
    ax.set_xticks([]), ax.set_yticks([])


def _write_video(path: Path, frames: list[np.ndarray], fps: int) -> Path:
    """``.gif`` (no ffmpeg needed) or ``.mp4`` (needs imageio-ffmpeg)."""
    if path.suffix.lower() == ".gif":
        imageio.mimsave(path, frames, duration=1000.0 / fps, loop=0)  # milliseconds per frame (imageio >= 2.28)
    else:
        imageio.mimsave(path, frames, fps=fps)
    return path


def rollout_frames(
    pred: np.ndarray, gt: np.ndarray, faces: np.ndarray, title: str = "", max_frames: int = 60, size_px: int = 480
) -> list[np.ndarray]:
    """RGB frames (H, W, 3) uint8 of GT (grey) and prediction (red) for pred, gt: (T, V, 3), faces (F, 3)."""
    pred, gt, faces = np.asarray(pred), np.asarray(gt), np.asarray(faces)
    idx = np.unique(np.linspace(0, len(gt) - 1, min(len(gt), max_frames)).round().astype(int))
    proj = [(name, gt @ m.T, pred @ m.T) for name, m in VIEWS]  # (T, V, 2) each
    dpi = 80
    fig, axes = plt.subplots(1, 2, figsize=(2 * size_px / dpi / 1.5, size_px / dpi / 1.5), dpi=dpi)
    frames = []
    for t in idx:
        for ax, (name, g2, p2) in zip(axes, proj):
            ax.clear()
            ax.triplot(Triangulation(g2[t, :, 0], g2[t, :, 1], faces), color="0.55", lw=0.6)
            ax.triplot(Triangulation(p2[t, :, 0], p2[t, :, 1], faces), color="tab:red", lw=0.6)
            _frame_axes(ax, *_padded_limits(np.concatenate([g2, p2])))
            ax.set_title(name, fontsize=8)
        fig.suptitle(f"{title} frame {t}  (grey: GT, red: prediction)", fontsize=8)
        fig.canvas.draw()
        frames.append(np.asarray(fig.canvas.buffer_rgba())[..., :3].copy())
    plt.close(fig)
    return frames


def write_rollout_video(
    pred: np.ndarray,
    gt: np.ndarray,
    faces: np.ndarray,
    path: str | Path,
    fps: int = 10,
    title: str = "",
    max_frames: int = 60,
) -> Path:
    """Write ``path`` (``.gif``: no ffmpeg needed; ``.mp4``: needs imageio-ffmpeg) and return it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return _write_video(path, rollout_frames(pred, gt, faces, title or path.stem, max_frames), fps)


def comparison_frames(
    gt: np.ndarray,
    preds: dict[str, np.ndarray],
    faces: np.ndarray,
    title: str = "",
    max_frames: int = 60,
    panel_px: int = 220,
) -> list[np.ndarray]:
    """RGB frames (H, W, 3) uint8: columns GT | method 1 | method 2 ..., rows front and oblique view, every panel on
    the same axes so the methods compare at a glance; each method's panel shows GT in light grey underneath.

    gt: (T, V, 3); preds: label -> (T, V, 3); faces: (F, 3)."""
    gt, faces = np.asarray(gt), np.asarray(faces)
    preds = {k: np.asarray(v) for k, v in preds.items()}
    idx = np.unique(np.linspace(0, len(gt) - 1, min(len(gt), max_frames)).round().astype(int))
    cols = [("ground truth", gt)] + list(preds.items())
    dpi = 80
    fig, axes = plt.subplots(
        len(VIEWS), len(cols), figsize=(len(cols) * panel_px / dpi, len(VIEWS) * panel_px / dpi), dpi=dpi, squeeze=False
    )
    lims = [_padded_limits(np.concatenate([x @ m.T for _, x in cols])) for _, m in VIEWS]
    frames = []
    for t in idx:
        for r, (view, m) in enumerate(VIEWS):
            for c, (label, x) in enumerate(cols):
                ax = axes[r, c]
                ax.clear()
                if c > 0:
                    g2 = gt[t] @ m.T
                    ax.triplot(Triangulation(g2[:, 0], g2[:, 1], faces), color="0.8", lw=0.5)
                x2 = x[t] @ m.T
                ax.triplot(Triangulation(x2[:, 0], x2[:, 1], faces), color="0.35" if c == 0 else "tab:red", lw=0.6)
                _frame_axes(ax, *lims[r])
                if r == 0:
                    ax.set_title(label, fontsize=9)
                if c == 0:
                    ax.set_ylabel(view, fontsize=8)
        fig.suptitle(f"{title} frame {t}", fontsize=9)
        fig.canvas.draw()
        frames.append(np.asarray(fig.canvas.buffer_rgba())[..., :3].copy())
    plt.close(fig)
    return frames


def write_comparison_video(
    gt: np.ndarray,
    preds: dict[str, np.ndarray],
    faces: np.ndarray,
    path: str | Path,
    fps: int = 10,
    title: str = "",
    max_frames: int = 60,
) -> Path:
    """Write :func:`comparison_frames` to ``path`` (``.gif`` or ``.mp4``) and return it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return _write_video(path, comparison_frames(gt, preds, faces, title or path.stem, max_frames), fps)
