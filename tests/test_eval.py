"""Rollout evaluation: RMSE splits on hand-made cases, constant-velocity baseline, end-to-end outputs."""

from __future__ import annotations

import json

import imageio.v2 as imageio
import lightning as L
import numpy as np
import pytest
import torch

from clods_pl.dynamics.synthetic import InMemoryDataset, InMemoryTrajectory, flag_wave_trajectory, wave_dataset
from clods_pl.errors import ManifestError
from clods_pl.report import build_report, rollout_table_markdown
from clods_pl.stages.dynamics import DynamicsModule
from clods_pl.stages.evaluation import evaluate_rollouts, run_evaluation


def _offset_predictor(x0, x1, steps, mesh_pos, node_type, graph, prescribed):
    """GT (via prescribed) plus 0.01 * t on every coordinate of frame t = k + 2."""
    t = torch.arange(2, steps + 2, dtype=prescribed.dtype)[:, None, None]
    return prescribed + 0.01 * t


def test_rmse_split_into_viewed_unviewed_and_interp_extrap_by_hand():
    ds = InMemoryDataset(
        {"v": flag_wave_trajectory(frames=10), "u": flag_wave_trajectory(frames=14, phase=1.0)},
        {"test_viewed": ["v"], "test_unviewed": ["u"]},
    )
    res = evaluate_rollouts(_offset_predictor, ds, train_horizon=6)
    err = lambda ts: float(np.sqrt(np.mean((0.01 * np.asarray(ts, dtype=float)) ** 2)))  # noqa: E731
    s = res["splits"]
    assert s["test_viewed"]["interpolation"] == pytest.approx(err(range(2, 6)))
    assert s["test_viewed"]["extrapolation"] == pytest.approx(err(range(6, 10)))
    assert s["test_unviewed"]["extrapolation"] == pytest.approx(err(range(6, 14)))
    assert s["all"]["extrapolation"] == pytest.approx(err(list(range(6, 10)) + list(range(6, 14))))
    assert s["all"]["num_trajectories"] == 2
    curve = res["per_step_rmse"]["all"]
    assert curve[:2] == [None, None] and curve[12] == pytest.approx(0.12) and len(curve) == 14
    # a horizon beyond every trajectory leaves extrapolation empty
    assert evaluate_rollouts(_offset_predictor, ds, train_horizon=50)["splits"]["all"]["extrapolation"] is None


def test_constant_velocity_baseline_exact_on_linear_motion_not_on_waves():
    wave = flag_wave_trajectory(frames=12)
    v = np.random.default_rng(0).normal(0, 0.01, size=wave.gt_verts.shape[1:]).astype(np.float32)
    lin = wave.gt_verts[0][None] + np.arange(12, dtype=np.float32)[:, None, None] * v
    ds = InMemoryDataset(
        {"lin": InMemoryTrajectory(wave.faces, wave.mesh_pos, wave.node_type, lin), "wave": wave},
        {"test_viewed": ["lin"], "test_unviewed": ["wave"]},
    )
    s = evaluate_rollouts(None, ds, train_horizon=6)["splits"]
    assert s["test_viewed"]["all"] < 1e-6
    assert s["test_unviewed"]["all"] > 1e-3


def test_run_evaluation_writes_metrics_table_plot_video_and_report(tmp_path):
    ds = wave_dataset(train=2, test_viewed=1, test_unviewed=1, frames=8, test_frames=12)
    module = DynamicsModule(latent=8, blocks=1, rollout_length=2, normalizer_steps=0)
    trainer = L.Trainer(max_steps=0, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.strategy.connect(module)
    ckpt = tmp_path / "recovered.ckpt"
    trainer.save_checkpoint(ckpt)
    eval_dir = tmp_path / "run" / "eval"
    metrics = run_evaluation("in-memory", {"recovered": ckpt, "gt": ckpt}, eval_dir, dataset=ds, videos=1)
    assert metrics["train_horizon"] == 8
    assert set(metrics["methods"]) == {"const_vel", "recovered", "gt"}
    on_disk = json.loads((eval_dir / "metrics.json").read_text())
    assert on_disk["methods"]["gt"]["splits"]["test_viewed"]["extrapolation"] > 0
    table = (eval_dir / "rollout_table.md").read_text()
    assert "| CloDS |" in table and "| MGN |" in table and "| Const. velocity |" in table
    for split in ("all", "test_viewed", "test_unviewed"):
        assert (eval_dir / f"rmse_over_steps_{split}.png").stat().st_size > 1000
    assert metrics["train_sequence_frames"] == 8 and metrics["test_sequence_frames"] == 12
    assert metrics["num_train_trajectories"] == 2
    assert metrics["videos"] == ["videos/compare_test_viewed_002.gif"]
    gif = eval_dir / metrics["videos"][0]
    frames = imageio.mimread(gif)
    assert len(frames) == 12 and frames[0].shape[-1] in (3, 4)
    assert frames[0].shape[1] / frames[0].shape[0] == pytest.approx(3 / 2)  # GT | MGN | CloDS x 2 views
    from PIL import Image

    with Image.open(gif) as im:  # 10 fps: 100 ms per frame (it was written with a delay of 0)
        assert im.info["duration"] == 100
    report = build_report(tmp_path / "run")
    text = report.read_text()
    assert "Rollout RMSE" in text and "eval/rmse_over_steps_test_unviewed.png" in text
    assert "eval/videos/compare_test_viewed_002.gif" in text
    assert "Training sequences have 8 frames and test sequences 12, so extrapolation is beyond" in text
    page = (tmp_path / "run" / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 3 and page.count("data:image/gif;base64,") == 1
    assert "src='eval" not in page and "http" not in page  # self-contained: nothing to fetch
    assert "<td>CloDS</td>" in page and "<th>Method</th>" in page
    with pytest.raises(ManifestError, match="clods-pl eval"):
        build_report(tmp_path / "empty_run")


def test_table_marks_best_and_handles_missing_values():
    m = {
        "train_horizon": 5,
        "methods": {
            "recovered": {"splits": {"test_viewed": {"interpolation": 0.002, "extrapolation": None}}},
            "gt:3": {"splits": {"test_viewed": {"interpolation": 0.004, "extrapolation": 0.01}}},
        },
    }
    table = rollout_table_markdown(m)
    rows = [r for r in table.splitlines() if r.startswith("| ") and "Method" not in r]
    assert rows[0].startswith("| MGN* (3 GT traj.)") and rows[1].startswith("| CloDS")
    assert "**2.000**" in rows[1] and "| - |" in rows[1] and "**10.000**" in rows[0]
    # with stage-3 seeds the rows keep the paper's order: MGN, MGN*, mixed, CloDS**
    cell = {"splits": {"test_viewed": {"interpolation": 0.003}}}
    keys = [f"{s}@seed{k}" for s in ("recovered", "mixed:4", "gt", "gt:4") for k in (0, 1)]
    table = rollout_table_markdown({"methods": dict.fromkeys(keys, cell)})
    labels = [r.split(" |")[0][2:] for r in table.splitlines() if r.startswith("| ") and "Method" not in r]
    assert labels == [
        "MGN (2 seeds)",
        "MGN* (4 GT traj.) (2 seeds)",
        "CloDS + 4 GT traj. (mixed) (2 seeds)",
        "CloDS (2 seeds)",
    ]


def test_report_says_how_stage3_trained():
    from clods_pl.report.build import training_words

    recipe = dict(optimizer_steps=900, windows_per_step=4, one_step_warmup=800, rollout_length=8)
    assert training_words({**recipe, "yaw_augment": True, "seeds": [0, 1, 2]}) == (
        "Each model: 900 optimiser steps of 4 training windows, the first 800 on one-step predictions, then 8-step "
        "rollouts; each training window turned by a random angle about the up axis; 3 seeds per method (mean ± std). "
    )
    plain = training_words({**recipe, "one_step_warmup": 0, "yaw_augment": False, "seeds": None})
    assert plain == "Each model: 900 optimiser steps of 4 training windows on 8-step rollouts. "
    assert "all on one-step" in training_words({**recipe, "optimizer_steps": 2})
