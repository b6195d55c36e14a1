"""Every experiment YAML (and every ablation on top of the tiny experiment) parses against the stage classes."""

from __future__ import annotations

from pathlib import Path

import pytest

from clods_pl.pipeline.experiment import build_parser

ROOT = Path(__file__).resolve().parents[1] / "experiments"
EXPERIMENTS = sorted(ROOT.glob("flag_*.yaml")) + sorted((ROOT / "gpu").glob("*.yaml"))
ABLATIONS = sorted((ROOT / "ablations").glob("*.yaml"))
OVERRIDES = sorted((ROOT / "overrides").glob("*.yaml"))


@pytest.fixture(scope="module")
def parser():
    return build_parser()


def test_there_are_configs() -> None:
    assert {p.name for p in EXPERIMENTS} >= {"flag_tiny.yaml", "flag_small.yaml", "flag_paper.yaml"}
    assert len(ABLATIONS) >= 8


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.name)
def test_experiment_parses(parser, path: Path) -> None:
    cfg = parser.parse_args(["--config", str(path)])
    assert cfg.dataset and cfg.stage1.model.opacity_mode in ("static", "world", "mesh", "dual")
    assert cfg.stage3.model.rollout_length == 8
    parser.dump(cfg)  # what --print_config prints


@pytest.mark.parametrize("path", ABLATIONS, ids=lambda p: p.name)
def test_ablation_overrides_parse(parser, path: Path) -> None:
    base = parser.parse_args(["--config", str(ROOT / "flag_tiny.yaml")])
    cfg = parser.parse_args(["--config", str(ROOT / "flag_tiny.yaml"), "--config", str(path)])
    assert cfg != base, f"{path.name} changes nothing"


@pytest.mark.parametrize("path", OVERRIDES, ids=lambda p: p.name)
def test_gpu_override_of_small_parses(parser, path: Path) -> None:
    base = parser.parse_args(["--config", str(ROOT / "flag_small.yaml")])
    cfg = parser.parse_args(["--config", str(ROOT / "flag_small.yaml"), "--config", str(path)])
    assert base.stage1.model.backend == "cpu" and base.stage2.model.backend == "cpu"
    assert cfg.stage1.model.backend == "gsplat" and cfg.stage2.model.backend == "gsplat"
    assert cfg.stage1.trainer.accelerator == "gpu" and cfg.stage3.trainer.accelerator == "gpu"
    assert cfg.stage3.sources == base.stage3.sources  # the same benchmark, on another device


def test_misspelt_key_is_rejected(parser, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("stage1:\n  model:\n    opacity_mod: dual\n")
    with pytest.raises(Exception, match="opacity_mod"):
        parser.parse_args(["--config", str(ROOT / "flag_tiny.yaml"), "--config", str(bad)])
