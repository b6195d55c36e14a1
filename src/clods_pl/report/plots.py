"""RMSE over rollout steps, one line per method (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from clods_pl.report.tables import RMSE_SCALE, method_label, method_rank  # noqa: E402
from clods_pl.stages.run_dir import source_of  # noqa: E402


def plot_rmse_over_steps(metrics: dict[str, Any], path: str | Path, split: str = "all") -> Path:
    """Plot ``metrics["methods"][key]["per_step_rmse"][split]`` (list over frame index; None = no data).

    A dashed vertical line marks ``metrics["train_horizon"]`` (interpolation | extrapolation). Returns ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7.6, 3.6), dpi=110)
    keys = sorted(metrics.get("methods", {}), key=method_rank)
    sources = list(dict.fromkeys(source_of(k) for k in keys))  # one colour per method, one line style per seed
    colours = plt.get_cmap("tab10").colors
    seen: dict[str, int] = {}
    for key in keys:
        m = metrics["methods"][key]
        curve = m.get("per_step_rmse", {}).get(split, [])
        pts = [(t, v * RMSE_SCALE) for t, v in enumerate(curve) if v is not None and t >= 2]
        if pts:
            source = source_of(key)
            nth = seen[source] = seen.get(source, -1) + 1
            style = ("-", "--", ":", "-.")[nth % 4]
            colour = colours[sources.index(source) % len(colours)]
            ax.plot(*zip(*pts), label=m.get("label", method_label(key)), lw=1.5, color=colour, ls=style)
    if metrics.get("train_horizon"):
        ax.axvline(metrics["train_horizon"] - 0.5, color="k", ls="--", lw=0.8)
    ax.set_xlabel("frame (rollout from frames 0 and 1)")
    ax.set_ylabel("RMSE (x10^-3)")
    ax.set_title(f"Rollout RMSE over time ({split})")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # beside the axes: it hid the interpolation frames
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
