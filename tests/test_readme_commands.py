"""README's "step by step" command block, run as written on a fresh tiny dataset and run directory: every command
exits 0 (only the stages are shortened by one extra ``--config``). A README command that stops working fails here."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

from clods_pl.pipeline.cli import main

ROOT = Path(__file__).resolve().parents[1]
SHORT = {
    "stage1": {"trainer": {"max_epochs": 1}, "data": {"steps_per_epoch": 2}},
    "stage2": {"model": {"iterations": 2, "min_iterations": 1}},
    "stage3": {"model": {"latent": 8, "blocks": 1, "normalizer_steps": 1}, "trainer": {"max_steps": 2}},
    "eval": {
        "videos": 1,
        "novel_views": {
            "ablations": ["static"],
            "frame_stride": 8,
            "upper_bound_steps": 3,
            "upper_bound_frame_stride": 2,
        },
    },
}


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = text.split("The same steps with the command line directly:", 1)[1]
    block = re.search(r"```bash\n(.*?)```", block, re.S).group(1)
    return [line.split("#")[0].strip() for line in block.splitlines() if line.startswith("clods-pl ")]


@pytest.mark.slow
def test_readme_step_by_step_commands_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    commands = readme_commands()
    assert len(commands) >= 8 and commands[0].startswith("clods-pl data generate")
    assert len(set(commands)) < len(commands)  # the up-to-date rerun is there
    monkeypatch.chdir(tmp_path)  # data/ and runs/ of the README land in a fresh folder
    (tmp_path / "experiments").symlink_to(ROOT / "experiments")
    (tmp_path / "short.yaml").write_text(yaml.safe_dump(SHORT))
    seen: set[str] = set()
    for line in commands:
        args = shlex.split(line)[1:]
        rerun = line in seen  # the README runs stage 1 a second time to show that it is up to date
        seen.add(line)
        if args[0] in ("stage1", "stage2", "stage3", "eval", "pipeline", "recover", "refine"):
            args += ["--config", "short.yaml"]
        capsys.readouterr()
        try:
            code = main(args)
        except SystemExit as exc:  # --print_config prints and exits
            code = exc.code or 0
        out, err = capsys.readouterr()
        assert code == 0, (line, err[-2000:])
        if rerun:
            assert "stage1 is up to date" in out, out
    assert (tmp_path / "runs" / "demo" / "eval" / "metrics.json").is_file()
    report = (tmp_path / "runs" / "demo" / "report.md").read_text()
    assert "Each model: 2 optimiser steps of 4 training windows, all on one-step predictions; each training window" in (
        report
    )  # the stage-3 recipe of the config the run used (short.yaml over flag_tiny.yaml)
    refined = json.loads((tmp_path / "runs" / "demo" / "refine" / "summary.json").read_text())
    assert [r["round"] for r in refined["rounds"]] == [1, 2]
    views = json.loads((tmp_path / "runs" / "demo" / "eval" / "novel_views.json").read_text())
    assert set(views["rows"]) == {"upper_bound", "dual", "static"} and views["holdout_views"] == [1]
    assert views["rows"]["dual"]["frames"] == 4 * 2 and views["rows"]["upper_bound"]["frames"] == 4  # 4 test traj.
    page = (tmp_path / "runs" / "demo" / "report.html").read_text()
    assert "paper Table 2" in page and "GaMeS-style (static opacity)" in page and "data:image/gif;base64," in page
    # the fixes an error message suggests are commands that work: change a stage-2 setting, `stage2` refuses the
    # old caches naming the setting and both suggested commands, each of which then runs
    base = [
        "--config",
        "experiments/flag_tiny.yaml",
        "--run_dir",
        "runs/demo",
        "--config",
        "short.yaml",
        "--stage2.model.iterations",
        "3",
    ]
    assert main(["stage2", *base]) == 2
    err = capsys.readouterr().err
    assert "model.iterations changed from 2 to 3" in err and "Traceback" not in err
    assert "`clods-pl pipeline`" in err and "`clods-pl stage2 --stage2.model.overwrite true`" in err
    assert main(["stage2", *base, "--stage2.model.overwrite", "true"]) == 0
    assert main(["pipeline", *base]) == 0
    assert "stage2 is up to date" in capsys.readouterr().out
