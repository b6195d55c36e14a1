"""Markdown tables of rollout RMSE in the paper's layout (methods x {viewed, unviewed} x {interp., extrap.})."""

from __future__ import annotations

import math
from typing import Any

from clods_pl.stages.run_dir import SEED_MARK, source_of

SPLIT_COLUMNS = (("test_viewed", "Viewed"), ("test_unviewed", "Unviewed"))
REGIME_COLUMNS = (("interpolation", "Interp."), ("extrapolation", "Extrap."))
RMSE_SCALE = 1e3  # tables show RMSE x 10^-3 (millimetres when positions are in metres)
_ORDER = ("const_vel", "gt", "gt:", "mixed:", "recovered")  # paper Table 1: CloDS (mixed), then CloDS**


def method_label(key: str) -> str:
    """Display name of a method key: ``gt`` -> MGN, ``gt:N`` -> MGN*, ``recovered`` -> CloDS, ``mixed:N``; a
    ``<source>@seed<k>`` key adds the seed."""
    base = source_of(key)
    if base != key:
        return f"{method_label(base)} (seed {key[len(base) + len(SEED_MARK) :]})"
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


def by_source(metrics: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The methods of ``metrics`` grouped by source (seeds of one source together): ``{source: {"keys": [...],
    "splits": {split: {regime: {"mean", "std", "n"}}}}}`` (std over seeds, 0 for one run; None cells skipped)."""
    groups: dict[str, list[str]] = {}
    for key in sorted(metrics.get("methods", {}), key=method_rank):
        groups.setdefault(source_of(key), []).append(key)
    out: dict[str, dict[str, Any]] = {}
    for base, keys in groups.items():
        cells: dict[str, dict[str, Any]] = {}
        for split, _ in SPLIT_COLUMNS + (("all", "All"),):
            for regime in ("interpolation", "extrapolation", "all"):
                vals = [
                    v
                    for k in keys
                    if (v := metrics["methods"][k].get("splits", {}).get(split, {}).get(regime)) is not None
                    and not (isinstance(v, float) and math.isnan(v))
                ]
                if vals:
                    mean = sum(vals) / len(vals)
                    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
                    cells.setdefault(split, {})[regime] = {"mean": mean, "std": std, "n": len(vals)}
        out[base] = {"keys": keys, "splits": cells}
    return out


def method_rank(key: str) -> tuple[int, str]:
    """Sort key of a method key in the paper's row order; the seeds of one source stay together, in key order."""
    base = source_of(key)
    for i, prefix in enumerate(_ORDER):
        if base == prefix or (prefix.endswith(":") and base.startswith(prefix)):
            return i, key
    return len(_ORDER), key


def _fmt(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value * RMSE_SCALE:.3f}"


def rollout_table_markdown(metrics: dict[str, Any]) -> str:
    """Markdown table from ``metrics["methods"][key]["splits"][split][regime]`` (RMSE, world units).

    Rows are ordered const. velocity, MGN, MGN*, mixed, CloDS (the paper's Table 1); the seeds of one source
    (``stage3.seeds``) make one row of ``mean ± std`` over them (sample std, n - 1) with the number of seeds in its
    label; missing entries print ``-``; the best (mean) value of each column is bold.
    """
    groups = by_source(metrics)
    cols = [(s, r) for s, _ in SPLIT_COLUMNS for r, _ in REGIME_COLUMNS]

    def cell(base: str, s: str, r: str) -> dict[str, Any] | None:
        return groups[base]["splits"].get(s, {}).get(r)

    best = {c: min((x["mean"] for b in groups if (x := cell(b, *c)) is not None), default=None) for c in cols}
    seeded = any(len(g["keys"]) > 1 for g in groups.values())
    head = "| Method | " + " | ".join(f"{sl} {rl}" for _, sl in SPLIT_COLUMNS for _, rl in REGIME_COLUMNS) + " |"
    lines = [
        f"Rollout RMSE (x10^-3; interpolation = frames < {metrics.get('train_horizon', '?')}, extrapolation = "
        "the later frames" + ("; mean ± std over stage-3 seeds" if seeded else "") + ")",
        "",
        head,
        "|---" * (len(cols) + 1) + "|",
    ]
    for base, group in groups.items():
        cells = []
        for c in cols:
            x = cell(base, *c)
            if x is None:
                cells.append("-")
                continue
            text = _fmt(x["mean"]) + (f" ± {x['std'] * RMSE_SCALE:.3f}" if len(group["keys"]) > 1 else "")
            is_best = best[c] is not None and x["mean"] == best[c] and len(groups) > 1
            cells.append(f"**{text}**" if is_best else text)
        label = (
            metrics["methods"][group["keys"][0]].get("label", method_label(base))
            if len(group["keys"]) == 1
            else f"{method_label(base)} ({len(group['keys'])} seeds)"
        )
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
