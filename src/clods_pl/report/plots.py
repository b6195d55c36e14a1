"""RMSE over rollout steps, one line per method (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from clods_pl.report.tables import RMSE_SCALE, method_label, method_rank  # noqa: E402


def plot_rmse_over_steps(metrics: dict[str, Any], path: str | Path, split: str = "all") -> Path:
    """Plot ``metrics["methods"][key]["per_step_rmse"][split]`` (list over frame index; None = no data).

    A dashed vertical line marks ``metrics["train_horizon"]`` (interpolation | extrapolation). Returns ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6.0, 3.6), dpi=110)
    for key in sorted(metrics.get("methods", {}), key=method_rank):
        m = metrics["methods"][key]
        curve = m.get("per_step_rmse", {}).get(split, [])
        pts = [(t, v * RMSE_SCALE) for t, v in enumerate(curve) if v is not None and t >= 2]
        if pts:
            ax.plot(*zip(*pts), label=m.get("label", method_label(key)), lw=1.5)
    if metrics.get("train_horizon"):
        ax.axvline(metrics["train_horizon"] - 0.5, color="k", ls="--", lw=0.8)
    ax.set_xlabel("frame (rollout from frames 0 and 1)")
    ax.set_ylabel("RMSE (x10^-3)")
    ax.set_title(f"Rollout RMSE over time ({split})")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
