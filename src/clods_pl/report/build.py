"""``report.md`` and a self-contained ``report.html`` of a run directory, from the files its stages wrote.

One list of :class:`Section` s is built from ``eval/`` (rollout metrics, novel-view table, plots, videos, the
renders of recovered meshes), ``stage1/summary.json``, ``stage2/summary.json`` and ``stage2/plots``, and the
dataset's preview; it is written twice: as Markdown (images linked) and as HTML with every image and video inlined
(base64), so the HTML opens from disk, from an e-mail or from a laptop without network.
"""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clods_pl.errors import ManifestError
from clods_pl.pipeline.manifest import STATUS_DONE, Manifest
from clods_pl.report.tables import rollout_table_markdown
from clods_pl.stages.novel_views import NOVEL_VIEWS_FILE as NOVEL_VIEWS
from clods_pl.stages.novel_views import NOVEL_VIEWS_TABLE, RECOVERED_RENDERS
from clods_pl.stages.recovery_cli import recovery_plot_path
from clods_pl.stages.run_dir import MESH_CACHE_DIR, ROUND1_EVAL_KEY, RunDir
from clods_pl.utils.files import atomic_write_text

ROLLOUT_METRICS = "metrics.json"
MIME = {".png": "image/png", ".gif": "image/gif", ".mp4": "video/mp4"}


@dataclass
class Section:
    """A report section: a title, then blocks in order, each ``("text", str)``, ``("table", markdown)`` or
    ``("media", (path, caption))``."""

    title: str
    blocks: list[tuple[str, Any]] = field(default_factory=list)

    def text(self, s: str) -> Section:
        self.blocks.append(("text", s))
        return self

    def table(self, markdown: str) -> Section:
        self.blocks.append(("table", markdown.strip()))
        return self

    def media(self, path: Path, caption: str) -> Section:
        if path.is_file():
            self.blocks.append(("media", (path, caption)))
        return self


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def _worst(per_traj: dict[str, Any]) -> str:
    """A trajectory's worst-frame error in percent and the frame ("-" in summaries that predate it)."""
    worst, frame = per_traj.get("worst_rel_rmse"), per_traj.get("worst_frame")
    return _pct(worst) if frame is None else f"{_pct(worst)} (frame {frame})"


def training_words(recipe: dict[str, Any]) -> str:
    """One sentence on how the stage-3 models were trained (``stage3_training`` of ``eval/metrics.json``)."""
    steps, warm, length = (
        recipe.get("optimizer_steps"),
        recipe.get("one_step_warmup") or 0,
        recipe.get("rollout_length"),
    )
    words = f"Each model: {steps} optimiser steps of {recipe.get('windows_per_step')} training windows"
    if warm and steps is not None and warm >= steps:
        words += ", all on one-step predictions"
    elif warm:
        words += f", the first {warm} on one-step predictions, then {length}-step rollouts"
    else:
        words += f" on {length}-step rollouts"
    if recipe.get("yaw_augment"):
        words += "; each training window turned by a random angle about the up axis"
    seeds = recipe.get("seeds")
    if seeds:
        words += f"; {len(seeds)} seeds per method (mean ± std)"
    return words + ". "


def dynamics_section(eval_dir: Path) -> Section | None:
    path = eval_dir / ROLLOUT_METRICS
    if not path.is_file():
        return None
    m = json.loads(path.read_text())
    h, n_train = m.get("train_horizon"), m.get("num_train_trajectories")
    sec = Section("Dynamics: rollout error against ground-truth meshes (paper Table 1)")
    sec.table(rollout_table_markdown(m))
    words = (
        f"Each model starts from the ground-truth frames 0 and 1 of a test trajectory and predicts every later "
        f"frame from its own predictions. RMSE over all vertices, the three coordinates and the predicted frames "
        f"(per coordinate, as in MeshGraphNets: a vertex's distance error reads 1.73x larger), in units of 10^-3 "
        f"of the world unit (mm for metres). Interpolation: frames before {h}; extrapolation: frames {h} and later. "
    )
    if m.get("train_sequence_frames") and m.get("test_sequence_frames"):
        tr, te = m["train_sequence_frames"], m["test_sequence_frames"]
        words += f"Training sequences have {tr} frames and test sequences {te}" + (
            ", so extrapolation is beyond the training length. "
            if te > tr and h >= tr
            else "; here the split is by time within the training length. "
        )
    if n_train:
        words += f"Stage 3 trained on {n_train} trajectories. "
    if m.get("stage3_training"):
        words += training_words(m["stage3_training"])
    words += (
        "Rows: constant velocity (x_t+1 = 2 x_t - x_t-1); MGN trained on the ground-truth meshes of every training "
        "trajectory; MGN* on those of N of them only; CloDS + N GT (mixed) on N ground-truth trajectories and the "
        "recovered meshes of the rest; CloDS (the paper's CloDS**) on the meshes stage 2 recovered from the videos "
        "alone. Columns: viewed test trajectories start like the training ones (their wind from the training "
        "range); unviewed ones blow in wind directions no training trajectory has (not camera views). "
    )
    if (m.get("stage3_training") or {}).get("seeds"):
        words += "Bold marks the lowest mean; where the ± spans overlap, the seeds do not separate the rows. "
    sec.text(words)
    for split in ("all", *m.get("splits", [])):
        sec.media(eval_dir / f"rmse_over_steps_{split}.png", f"RMSE over time, {split.replace('_', ' ')}")
    sec.media(eval_dir / "rmse_over_steps.png", "RMSE over time")
    one_seed = " (each method's first seed)" if (m.get("stage3_training") or {}).get("seeds") else ""
    for video in m.get("videos", []):
        sec.media(eval_dir / video, f"{Path(video).stem}: ground truth | each model{one_seed} (red), same axes")
    return sec


def novel_view_section(eval_dir: Path) -> Section | None:
    path = eval_dir / NOVEL_VIEWS
    if not path.is_file():
        return None
    result = json.loads(path.read_text())
    sec = Section("Appearance: novel views of the test trajectories (paper Table 2)")
    table = eval_dir / NOVEL_VIEWS_TABLE
    if table.is_file():
        sec.table(table.read_text())
    sec.text(
        f"{result.get('definition', '')} Held-out views: {result.get('holdout_views')}; trajectories: "
        f"{', '.join(result.get('trajectories', []))}. The per-frame 3DGS row is a reference fit, scored on its own "
        "frames only (its 'frames' column): compare it with the last column, every model row on those same frames. "
        "It is started from the SMGS and fitted for a fixed number of steps, so a model row may beat it."
    )
    sec.media(
        eval_dir / RECOVERED_RENDERS,
        "Per row: a trajectory stage 2 recovered (a training trajectory) in one view (first a training view, then "
        "the held-out view); per pair, left to right: the input image, then the SMGS render of the mesh stage 2 "
        "recovered for that frame (frames 1, the middle and the last)",
    )
    return sec


def stage_sections(run_dir: Path) -> list[Section]:
    out = []
    s1 = run_dir / "stage1" / "summary.json"
    if s1.is_file():
        held = json.loads(s1.read_text()).get("held_out_views", {})
        rows = [("PSNR (dB)", held.get("val/psnr")), ("SSIM", held.get("val/ssim")), ("LPIPS", held.get("val/lpips"))]
        table = "| metric | value |\n|---|---|\n" + "\n".join(f"| {k} | {v:.4g} |" for k, v in rows if v is not None)
        out.append(Section("Stage 1: appearance fitted on frame 0 (views never trained on)").table(table))
    s2 = run_dir / "stage2" / "summary.json"
    if s2.is_file():
        summary = json.loads(s2.read_text())
        per = summary.get("trajectories", {})
        lines = [
            "| trajectory | mean error (%) | frame 1 (%) | last frame (%) | worst frame (%) | drift (last / frame 1) |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {n} | {_pct(v.get('mean_rel_rmse'))} | {_pct(v.get('first_rel_rmse'))} | "
            f"{_pct(v.get('last_rel_rmse'))} | {_worst(v)} | {v.get('drift_last_over_first', float('nan')):.2f} |"
            for n, v in per.items()
        ]
        if "mean_rel_rmse" in summary:
            lines.append(
                f"| **all** | **{_pct(summary['mean_rel_rmse'])}** | | | | "
                f"max {summary.get('max_drift_last_over_first', float('nan')):.2f} |"
            )
        sec = Section("Stage 2: meshes recovered from the videos, against ground truth (evaluation only)")
        sec.table("\n".join(lines))
        sec.text(
            "Error: root mean square over vertices of each vertex's distance to its ground-truth position "
            "(per vertex, unlike the per-coordinate rollout RMSE), in percent of the "
            "flag size (the larger side of its rest shape), averaged over frames 1..T-1. Worst frame: the largest "
            "error of any frame (a wrong fold mid-sequence that the two ends do not show). Drift: last-frame "
            "error over frame-1 error."
        )
        cache_dir = run_dir / "stage2" / MESH_CACHE_DIR
        for name in per:  # this run's trajectories only: a plot of one since dropped from the data stays on disk
            sec.media(recovery_plot_path(cache_dir, name), f"{name}: recovery error per frame")
        out.append(sec)
    return out


def out_of_date(run_dir: Path) -> str | None:
    """Why the run's recorded results do not fit together (one line), or None: a stage that did not finish, or one
    that consumed an upstream output since replaced (e.g. ``clods-pl stage3`` rerun with a new setting after eval).
    Read from ``manifest.json`` alone, so the report needs no config; a run without one is not checked."""
    manifest = Manifest(run_dir)
    if not manifest.path.is_file():
        return None
    stages = manifest.read()["stages"]
    for name, rec in stages.items():
        if "." in name:  # refine's rounds (refine<k>.stage2, ...): the refine section checks its own table
            continue
        if rec.get("status") != STATUS_DONE:
            return f"{name} is '{rec.get('status')}'"
        for key, digest in rec.get("consumed", {}).items():
            up, _, output = key.partition(":")
            if up not in stages:  # not a stage's output (refine's starting model: checked through round 1's eval)
                continue
            entry = stages[up].get("outputs", {}).get(output)
            if entry is None or entry.get("content", entry.get("sha256")) != digest:
                return f"{name} used {key}, which {up} has replaced since"
    return None


def refine_section(run_dir: Path) -> Section | None:
    table = run_dir / "refine" / "refine_table.md"
    summary = run_dir / "refine" / "summary.json"
    if not (table.is_file() and summary.is_file()):
        return None
    data = json.loads(summary.read_text())
    settings = data.get("settings", {})
    manifest = Manifest(run_dir)
    if manifest.path.is_file():
        try:
            current = manifest.verified_outputs("eval")
        except ManifestError:
            current = None
        if data.get(ROUND1_EVAL_KEY) != current:
            return Section("Closing the loop (`clods-pl refine`)").text(
                "Not shown: refine/summary.json was made on an earlier run of stages 1-3 and eval; run `clods-pl "
                "refine` again for a table of this run."
            )
    return (
        Section("Closing the loop: recovery started from the dynamics model (`clods-pl refine`)")
        .table(table.read_text())
        .text(
            f"Round 1 is the pipeline's plain stage 2 and stage 3. Each later round recovers the training meshes "
            f"again, starting every frame from the previous round's CloDS model (init: {settings.get('init')}, "
            f"prior weight {settings.get('prior_weight')}), then trains and evaluates stage 3 on them. No "
            "ground truth is used except to measure."
        )
    )


def other_sections(eval_dir: Path) -> list[Section]:
    out = []
    for path in sorted(eval_dir.glob("*.json")):
        if path.name in (ROLLOUT_METRICS, NOVEL_VIEWS):
            continue
        data = json.loads(path.read_text())
        rows = [(k, v) for k, v in data.items() if isinstance(v, (int, float, str, bool))]
        if rows:
            out.append(
                Section(path.stem.replace("_", " ")).table(
                    "| metric | value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)
                )
            )
    return out


def collect_sections(run_dir: Path) -> list[Section]:
    eval_dir = run_dir / "eval"
    jsons = sorted(eval_dir.glob("*.json")) if eval_dir.is_dir() else []
    if not jsons:
        raise ManifestError(f"{eval_dir} holds no metrics (*.json); run `clods-pl eval --run_dir {run_dir}` first")
    sections = [s for s in (dynamics_section(eval_dir), novel_view_section(eval_dir)) if s is not None]
    sections += [s for s in (refine_section(run_dir),) if s is not None]
    sections += stage_sections(run_dir) + other_sections(eval_dir)
    ds = RunDir(run_dir).dataset()
    if ds is not None and (ds / "preview.png").is_file():
        sections.append(
            Section("Data")
            .text(f"Dataset {ds}: views (rows) x frames (columns) of a trajectory.")
            .media(ds / "preview.png", "data preview")
        )
    return sections


def to_markdown(title: str, sections: list[Section], base: Path) -> str:
    def rel(p: Path) -> str:
        try:
            return p.resolve().relative_to(base.resolve()).as_posix()
        except ValueError:
            return p.resolve().as_posix()

    lines = [f"# {title}", ""]
    for sec in sections:
        lines += [f"## {sec.title}", ""]
        for kind, value in sec.blocks:
            if kind == "media":
                path, caption = value
                lines += [f"![{caption}]({rel(path)})" if path.suffix != ".mp4" else f"- [{caption}]({rel(path)})", ""]
            else:
                lines += [value, ""]
    return "\n".join(lines)


def _md_table_to_html(markdown: str) -> str:
    rows = [r.strip().strip("|").split("|") for r in markdown.splitlines() if r.strip().startswith("|")]
    rows = [r for r in rows if not all(set(c.strip()) <= set("-:") for c in r)]
    if not rows:
        return f"<p>{html.escape(markdown)}</p>"

    def cell(c: str, tag: str) -> str:
        c = html.escape(c.strip())
        if c.startswith("**") and c.endswith("**") and len(c) > 4:
            c = f"<b>{c[2:-2]}</b>"
        return f"<{tag}>{c}</{tag}>"

    head = "".join(cell(c, "th") for c in rows[0])
    body = "".join("<tr>" + "".join(cell(c, "td") for c in r) + "</tr>" for r in rows[1:])
    lead = [html.escape(line) for line in markdown.splitlines() if line.strip() and not line.strip().startswith("|")]
    return "".join(f"<p>{t}</p>" for t in lead) + f"<table><tr>{head}</tr>{body}</table>"


def to_html(title: str, sections: list[Section]) -> str:
    css = (
        "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;margin:.8em 0}td,th{border:1px solid #ccc;padding:.25em .6em;"
        "text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}"
        "figure{display:inline-block;margin:.5em;vertical-align:top}figcaption{font-size:.85em;color:#555;"
        "max-width:560px}img,video{max-width:100%;image-rendering:pixelated}"
    )
    out = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{css}</style></head><body><h1>{html.escape(title)}</h1>"
    ]
    for sec in sections:
        out.append(f"<h2>{html.escape(sec.title)}</h2>")
        for kind, value in sec.blocks:
            if kind == "text":
                out.append(f"<p>{html.escape(value)}</p>")
            elif kind == "table":
                out.append(_md_table_to_html(value))
            else:
                path, caption = value
                data = base64.b64encode(path.read_bytes()).decode("ascii")
                src = f"data:{MIME.get(path.suffix.lower(), 'application/octet-stream')};base64,{data}"
                tag = (
                    f"<video controls loop src='{src}'></video>"
                    if path.suffix.lower() == ".mp4"
                    else f"<img alt='{html.escape(caption)}' src='{src}'>"
                )
                out.append(f"<figure>{tag}<figcaption>{html.escape(caption)}</figcaption></figure>")
    out.append("</body></html>")
    return "\n".join(out)


def build_report(run_dir: str | Path, out_path: str | Path | None = None) -> Path:
    """Write ``<run_dir>/report.md`` (or ``out_path``) and ``report.html`` next to it; return the Markdown path.

    Raises ManifestError when ``eval/`` holds no metrics, or when the manifest shows results that do not fit
    together (a stage unfinished, or one that read an output since replaced).
    """
    run_dir = Path(run_dir)
    out = Path(out_path) if out_path else run_dir / "report.md"
    stale = out_of_date(run_dir)
    if stale is not None:
        raise ManifestError(
            f"{run_dir}: {stale}, so its results do not fit together; run `clods-pl pipeline --config <your configs> "
            f"--run_dir {run_dir}` (it reruns what is out of date) before the report"
        )
    sections = collect_sections(run_dir)
    title = f"CloDS report: {run_dir.name}"
    atomic_write_text(out, to_markdown(title, sections, out.parent))
    atomic_write_text(out.with_suffix(".html"), to_html(title, sections))
    return out
