"""``clods-pl refine`` on a generated mini dataset with the real stages (shortened): round 2 recovers the meshes
again from the round-1 model, trains and evaluates; the manifest records the round; a rerun skips it; the report
shows the rounds; bad settings are one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from clods_pl.data.generate import GenerateConfig, generate_dataset
from clods_pl.pipeline.cli import main
from clods_pl.stages.mesh_cache import MeshCache
from clods_pl.stages.run_dir import RunDir, seeded_key
from clods_pl.utils.files import checkpoint_digest

ROOT = Path(__file__).resolve().parents[1]
MINI = GenerateConfig(
    name="mini",
    splits={"train": 2, "test_viewed": 1, "test_unviewed": 1},
    num_frames=5,
    num_views=4,
    resolution=24,
    grid=(6, 5),
    substeps=3,
    iterations=10,
    supersample=2,
)
SHORT = {
    "stage1": {"model": {"gaussians_per_face": 4}, "trainer": {"max_epochs": 1}, "data": {"steps_per_epoch": 3}},
    "stage2": {"model": {"iterations": 6, "min_iterations": 6}},
    "stage3": {
        "sources": ["recovered"],
        "seeds": [1, 0],  # seed 1 first: round 2 starts from the first listed seed's model, not the first in name order
        "model": {"latent": 8, "blocks": 1, "normalizer_steps": 1, "rollout_length": 2},
        "data": {"rollout_length": 2},
        "trainer": {"max_steps": 3},
    },
    "eval": {"videos": 0, "train_horizon": 3, "novel_views": {"enabled": False}},
}


@pytest.mark.slow
def test_refine_round_two(tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    data = generate_dataset(MINI, tmp_path / "ds", progress=False)
    (tmp_path / "short.yaml").write_text(yaml.safe_dump({**SHORT, "dataset": str(data)}))
    run = tmp_path / "run"
    base = [
        "--config",
        str(ROOT / "experiments" / "flag_tiny.yaml"),
        "--config",
        str(tmp_path / "short.yaml"),
        "--run_dir",
        str(run),
    ]
    assert main(["refine", *base]) == 2  # stages 1-3 first
    assert "run `clods-pl pipeline`" in capsys.readouterr().err
    assert main(["pipeline", *base]) == 0
    # stage3.seeds: one model per seed, one table row of mean +- std over them
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert set(metrics["methods"]) == {"const_vel", "recovered@seed0", "recovered@seed1"}
    a, b = (metrics["methods"][f"recovered@seed{s}"]["splits"]["test_viewed"]["interpolation"] for s in (0, 1))
    cell = metrics["by_source"]["recovered"]["splits"]["test_viewed"]["interpolation"]
    assert a != b and cell["n"] == 2 and cell["mean"] == pytest.approx((a + b) / 2)
    assert cell["std"] == pytest.approx(abs(a - b) / 2**0.5)
    row = next(r for r in (run / "eval" / "rollout_table.md").read_text().splitlines() if r.startswith("| CloDS"))
    assert row.startswith("| CloDS (2 seeds) | ") and f"{1e3 * (a + b) / 2:.3f} ± {1e3 * cell['std']:.3f}" in row
    assert main(["refine", *base, "--refine.rounds", "2", "--refine.prior_weight", "1e-4"]) == 0
    out = capsys.readouterr().out
    assert "refine round 2: stage 2 from the round-1 model" in out and "refine round 2: stage 3" in out
    summary = json.loads((run / "refine" / "summary.json").read_text())
    assert [r["round"] for r in summary["rounds"]] == [1, 2]
    assert summary["rounds"][1]["iterations_per_frame"] == pytest.approx(6.0)
    assert summary["rounds"][1]["rollout"]["test_viewed"]["interpolation"] > 0
    cache = MeshCache.load(run / "refine" / "round2" / "stage2" / "meshes" / "traj_0000.npz")
    assert cache.complete and cache.settings["model.init"] == "dynamics"
    assert cache.settings["model.dynamics_checkpoint"] != str(run / "stage3" / "recovered.ckpt")  # its digest
    stages = json.loads((run / "manifest.json").read_text())["stages"]
    assert all(stages[f"refine2.{s}"]["status"] == "done" for s in ("stage2", "stage3", "eval"))
    # round 2 trains one model per stage-3 seed, as round 1 does, and its row is their mean
    round2 = json.loads((run / "refine" / "round2" / "eval" / "metrics.json").read_text())
    assert set(round2["methods"]) == {"const_vel", "recovered@seed0", "recovered@seed1"}
    assert round2["by_source"]["recovered"]["splits"]["test_viewed"]["interpolation"]["n"] == 2
    assert summary["rounds"][1]["rollout"]["test_viewed"]["interpolation"] == pytest.approx(
        round2["by_source"]["recovered"]["splits"]["test_viewed"]["interpolation"]["mean"]
    )
    assert stages["refine2.stage2"]["config"]["refine.prior_weight"] == 1e-4
    assert "| 2 |" in (run / "refine" / "refine_table.md").read_text()
    assert "Closing the loop" in (run / "report.md").read_text()
    # up to date: nothing runs again
    assert main(["refine", *base, "--refine.rounds", "2", "--refine.prior_weight", "1e-4"]) == 0
    assert "refine round 2" not in capsys.readouterr().out
    # another prior: round 2 runs again, naming nothing else
    assert main(["refine", *base, "--refine.rounds", "2", "--refine.prior_weight", "0.0"]) == 0
    assert "refine round 2: stage 2" in capsys.readouterr().out
    assert main(["refine", *base, "--refine.rounds", "0"]) == 2
    assert "refine.rounds=0" in capsys.readouterr().err
    first = RunDir(run).stage3_checkpoints()[seeded_key("recovered", 1)]
    assert cache.settings["model.dynamics_checkpoint"] == checkpoint_digest(first)
    # stage 3 rerun with another setting after eval: refine and the report refuse the stale round-1 row
    assert main(["stage3", *base, "--stage3.model.lr", "5e-4"]) == 0
    capsys.readouterr()
    assert main(["refine", *base, "--stage3.model.lr", "5e-4"]) == 2
    assert "round 1 is the pipeline's eval, which is out of date" in capsys.readouterr().err
    assert main(["report", "--run_dir", str(run)]) == 2
    assert "eval used stage3:checkpoint:recovered@seed" in capsys.readouterr().err
    # the pipeline brings eval up to date; refine's table, made on the old models, is not shown until rerun
    assert main(["pipeline", *base, "--stage3.model.lr", "5e-4"]) == 0
    report = (run / "report.md").read_text()
    assert "Not shown: refine/summary.json was made on an earlier run" in report and "| 2 |" not in report
    # a refine cut short records its round as failed (not 'running' forever), and the report still builds
    from clods_pl.stages import recovery_stage

    def killed(*args, **kwargs):
        raise RuntimeError("killed")

    monkeypatch.setattr(recovery_stage, "recover_meshes", killed)
    with pytest.raises(RuntimeError, match="killed"):
        main(["refine", *base, "--stage3.model.lr", "5e-4", "--refine.rounds", "2"])
    assert json.loads((run / "manifest.json").read_text())["stages"]["refine2.stage2"]["status"] == "failed"
    assert main(["report", "--run_dir", str(run)]) == 0
