"""Markdown tables of rollout RMSE in the paper's layout (methods x {viewed, unviewed} x {interp., extrap.})."""

from __future__ import annotations

import math
from typing import Any

SPLIT_COLUMNS = (("test_viewed", "Viewed"), ("test_unviewed", "Unviewed"))
REGIME_COLUMNS = (("interpolation", "Interp."), ("extrapolation", "Extrap."))
RMSE_SCALE = 1e3  # tables show RMSE x 10^-3 (millimetres when positions are in metres)
_ORDER = ("const_vel", "gt", "gt:", "recovered", "mixed:")


def method_label(key: str) -> str:
    """Display name of a method key: ``gt`` -> MGN, ``gt:N`` -> MGN*, ``recovered`` -> CloDS, ``mixed:N``."""
    kind, _, n = key.partition(":")
    if key == "const_vel":
        return "Const. velocity"
    if kind == "gt":
        return f"MGN* ({n} GT traj.)" if n else "MGN"
    if kind == "recovered":
        return "CloDS"
    if kind == "mixed":
        return f"CloDS + {n} GT traj. (mixed)"
    return key


def method_rank(key: str) -> tuple[int, str]:
    for i, prefix in enumerate(_ORDER):
        if key == prefix or (prefix.endswith(":") and key.startswith(prefix)):
            return i, key
    return len(_ORDER), key


def _fmt(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value * RMSE_SCALE:.3f}"


def rollout_table_markdown(metrics: dict[str, Any]) -> str:
    """Markdown table from ``metrics["methods"][key]["splits"][split][regime]`` (RMSE, world units).

    Rows are ordered const. velocity, MGN, MGN*, CloDS, mixed; missing entries print ``-``; the best value of
    each column is bold.
    """
    methods = metrics.get("methods", {})
    keys = sorted(methods, key=method_rank)
    cols = [(s, r) for s, _ in SPLIT_COLUMNS for r, _ in REGIME_COLUMNS]

    def val(key: str, s: str, r: str) -> float | None:
        v = methods[key].get("splits", {}).get(s, {}).get(r)
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)

    best = {c: min((val(k, *c) for k in keys if val(k, *c) is not None), default=None) for c in cols}
    head = "| Method | " + " | ".join(f"{sl} {rl}" for _, sl in SPLIT_COLUMNS for _, rl in REGIME_COLUMNS) + " |"
    lines = [f"Rollout RMSE (x10^-3; interpolation = frames < {metrics.get('train_horizon', '?')}, extrapolation = "
             "the later frames)", "", head, "|---" * (len(cols) + 1) + "|"]
    for k in keys:
        cells = []
        for c in cols:
            v = val(k, *c)
            s = _fmt(v)
            cells.append(f"**{s}**" if v is not None and best[c] is not None and v == best[c] and len(keys) > 1 else s)
        lines.append(f"| {methods[k].get('label', method_label(k))} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
