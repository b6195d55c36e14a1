"""``report.md`` of a run directory, built from the metrics files under ``<run_dir>/eval/``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from clods_pl.errors import ManifestError
from clods_pl.report.tables import rollout_table_markdown
from clods_pl.utils.files import atomic_write_text

ROLLOUT_METRICS = "metrics.json"


def _flat(obj: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(obj, dict):
        return [kv for k, v in obj.items() for kv in _flat(v, f"{prefix}{k}.")]
    if isinstance(obj, (int, float, str, bool)) or obj is None:
        return [(prefix[:-1], obj)]
    return []  # lists (curves) are plotted, not tabulated


def build_report(run_dir: str | Path, out_path: str | Path | None = None) -> Path:
    """Write ``<run_dir>/report.md`` (or ``out_path``) and return its path.

    Contents: the rollout RMSE table (paper layout) from ``eval/metrics.json``, the RMSE-over-steps plot and
    rollout videos found under ``eval/``, and a key/value table of every other ``eval/*.json`` (e.g. PSNR/SSIM).
    Raises ManifestError when ``eval/`` holds no metrics.
    """
    run_dir = Path(run_dir)
    eval_dir = run_dir / "eval"
    out = Path(out_path) if out_path else run_dir / "report.md"
    jsons = sorted(eval_dir.glob("*.json")) if eval_dir.is_dir() else []
    if not jsons:
        raise ManifestError(f"{eval_dir} holds no metrics (*.json); run `clods-pl eval --run_dir {run_dir}` first")
    rel = lambda p: Path(p).resolve().relative_to(out.parent.resolve()).as_posix()  # noqa: E731
    lines = [f"# CloDS report: {run_dir.name}", ""]
    rollout = eval_dir / ROLLOUT_METRICS
    if rollout.is_file():
        metrics = json.loads(rollout.read_text())
        lines += ["## Dynamics: rollout RMSE", "", rollout_table_markdown(metrics), "",
                  f"RMSE definition: {metrics.get('definition', 'see docs/metrics.md')}", ""]
        for png in sorted(eval_dir.glob("*.png")):
            lines += [f"![{png.stem}]({rel(png)})", ""]
        videos = sorted(p for ext in ("gif", "mp4") for p in (eval_dir / "videos").glob(f"*.{ext}"))
        if videos:
            lines += ["### Rollout videos (grey: ground truth, red: prediction)", ""]
            lines += [f"- [{v.stem}]({rel(v)})" for v in videos] + [""]
    stage_summaries = [("Stage 1: appearance (held-out views)", run_dir / "stage1" / "summary.json"),
                       ("Stage 2: mesh recovery vs GT (relative to the flag size; evaluation only)",
                        run_dir / "stage2" / "summary.json")]
    for title, path in stage_summaries:
        if path.is_file():
            rows = _flat(json.loads(path.read_text()))
            lines += [f"## {title}", "", "| metric | value |", "|---|---|"]
            lines += [f"| {k} | {v:.5g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in rows] + [""]
    for path in jsons:
        if path.name == ROLLOUT_METRICS:
            continue
        rows = _flat(json.loads(path.read_text()))
        if rows:
            lines += [f"## {path.stem}", "", "| metric | value |", "|---|---|"]
            lines += [f"| {k} | {v:.5g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in rows] + [""]
    atomic_write_text(out, "\n".join(lines))
    return out
