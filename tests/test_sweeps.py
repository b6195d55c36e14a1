"""W&B sweep files: valid sweep structure, `clods-pl` as the program, every parameter a valid override of its stage.

Each parameter ``model.X`` / ``data.X`` / ``trainer.X`` is parsed, with every value the sweep can produce, by a
jsonargparse parser built from the stage's classes (what LightningCLI builds); when the ``clods-pl`` CLI exists the
whole override set also goes through ``clods-pl <stage> ... --print_config``.
"""

from __future__ import annotations

import inspect
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from clods_pl.utils.loggers import LOGGER_KINDS

REPO = Path(__file__).resolve().parents[1]
SWEEPS = sorted((REPO / "experiments" / "sweeps").glob("*.yaml"))
METHODS = ("grid", "random", "bayes")
TOP_LEVEL = {"logger": LOGGER_KINDS}  # experiment-level settings a sweep may set, with their allowed values


def load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def sweep_values(spec: dict[str, Any]) -> list[Any]:
    """Values a parameter can take (the ends of a range for distributions)."""
    if "value" in spec:
        return [spec["value"]]
    if "values" in spec:
        return list(spec["values"])
    if "min" in spec and "max" in spec:
        return [spec["min"], spec["max"]]
    raise AssertionError(f"parameter spec {spec} has no value/values/min+max")


def stage_parser(stage: str):
    """jsonargparse parser with model/data/trainer groups of the stage's classes (skips if the stage is missing)."""
    from jsonargparse import ArgumentParser
    from lightning import Trainer

    from clods_pl.pipeline.experiment import default_stages

    spec = next(s for s in default_stages() if s.name == stage)
    parser = ArgumentParser(exit_on_error=False)
    required: list[str] = []
    for group, cls in (("model", spec.module), ("data", spec.datamodule), ("trainer", Trainer)):
        parser.add_class_arguments(cls, group)
        for name, par in inspect.signature(cls.__init__).parameters.items():
            if name != "self" and par.default is inspect.Parameter.empty and par.kind == par.POSITIONAL_OR_KEYWORD:
                required.append(f"--{group}.{name}=placeholder")
    return parser, required


def test_sweep_files_exist() -> None:
    names = [p.name for p in SWEEPS]
    assert "stage2_gamma_iters.yaml" in names  # the Makefile's default SWEEP
    assert any(n.startswith("stage3") for n in names)


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_sweep_structure(path: Path) -> None:
    sweep = load(path)
    assert sweep["program"] == "clods-pl"
    assert sweep["method"] in METHODS
    assert sweep["metric"]["goal"] in ("minimize", "maximize") and "/" in sweep["metric"]["name"]
    cmd = sweep["command"]
    assert cmd[:2] == ["${env}", "clods-pl"] and cmd[-1] == "${args}"
    assert cmd[2] in ("stage1", "stage2", "stage3")
    config = cmd[cmd.index("--config") + 1]
    assert config.endswith((".yaml", ".yml")) and not Path(config).is_absolute()
    assert cmd[cmd.index("--run_dir") + 1].startswith("runs/")
    assert sweep["parameters"], "a sweep without parameters"
    for key in sweep["parameters"]:
        assert key.split(".")[0] in ("model", "data", "trainer") or key in TOP_LEVEL, key
    if sweep["method"] == "grid":
        for key, spec in sweep["parameters"].items():
            assert "value" in spec or "values" in spec, f"grid sweep parameter {key} needs value(s)"


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_every_sweep_value_is_a_valid_override(path: Path) -> None:
    sweep = load(path)
    parser, required = stage_parser(sweep["command"][2])
    for key, spec in sweep["parameters"].items():
        for value in sweep_values(spec):
            if key in TOP_LEVEL:
                assert value in TOP_LEVEL[key], (key, value)
                continue
            arg = f"--{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"
            cfg = parser.parse_args(required + [arg])
            got = cfg[key]
            assert got == value or (isinstance(value, (int, float)) and float(got) == float(value)), (key, value, got)


def test_an_invalid_override_is_rejected() -> None:
    """The check above can fail: a misspelt key and a wrongly typed value are refused."""
    parser, required = stage_parser("stage3")
    from jsonargparse import ArgumentError

    with pytest.raises(ArgumentError):
        parser.parse_args(required + ["--model.noise_stdd=0.1"])
    with pytest.raises(ArgumentError):
        parser.parse_args(required + ["--model.rollout_length=many"])


@pytest.mark.slow
@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_sweep_overrides_through_the_cli(path: Path, tmp_path: Path) -> None:
    """The stage command with the sweep's first values prints its config without error (a sweep naming a config
    that does not exist fails: it used to skip)."""
    sweep = load(path)
    cmd = list(sweep["command"][1:-1])
    config = REPO / cmd[cmd.index("--config") + 1]
    assert config.is_file(), f"{path.name} names --config {config.relative_to(REPO)}, which does not exist"
    cmd[cmd.index("--run_dir") + 1] = str(tmp_path / "run")
    args = [f"--{k}={sweep_values(v)[0]}" for k, v in sweep["parameters"].items()]
    exe = shutil.which("clods-pl", path=str(Path(sys.executable).parent)) or "clods-pl"
    proc = subprocess.run(
        [exe, *cmd[1:], *args, "--print_config"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_a_sweep_scored_on_a_split_runs_on_data_that_has_it(path: Path) -> None:
    """Review (session 13): the stage-3 sweep scored `val/...` with `data.val_split: val` on the tiny data, which has
    no val split, so every trial failed at setup."""
    sweep = load(path)
    split = sweep["parameters"].get("data.val_split", {}).get("value")
    if split is None:
        return
    cmd = list(sweep["command"])
    config = yaml.safe_load((REPO / cmd[cmd.index("--config") + 1]).read_text())
    preset = yaml.safe_load((REPO / "experiments" / "data" / f"{Path(config['dataset']).name}.yaml").read_text())
    assert preset["splits"].get(split, 0) > 0, f"{path.name}: data.val_split={split} but {config['dataset']} has none"
