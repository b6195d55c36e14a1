"""`make demo`'s wall clock, old code and new code in one run (issue 13's last row), per stage.

    python -m benchmarks.bench_demo --old 8baa4b6 [--cases old_code old_workload demo] [--out benchmarks/results]

Cases, each from a fresh run folder and its own data (data generation is timed apart from the pipeline):

* ``old_code``: the commit ``--old`` (a git worktree of it, run with this virtual environment) doing what its
  `make demo` did: its own `tiny` data preset and `experiments/flag_tiny.yaml`;
* ``old_workload``: this code doing the same work: ``experiments/bench/data_tiny_8baa4b6.yaml`` and
  ``experiments/bench/demo_8baa4b6.yaml`` (8baa4b6's presets in today's keys, today's `cpu` rasterizer);
* ``old_workload_batch2``: the same with ``--stage2.data.batch_size 2`` (two batches, one per core; the meshes
  differ from one batch of four in the last bits, as any change of batching does);
* ``demo``: this code's `make demo` (today's presets: twice the trajectories and views, Table 2, ...).

Each pipeline runs as `make` runs it (OMP_NUM_THREADS=1, the CLI's default workers). The stage times are the
manifest's start/finish stamps (1 s resolution). Writes ``bench_demo.json``; prints a Markdown table and ``uptime``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("stage1", "stage2", "stage3", "eval")


def _run(cmd: list[str], cwd: Path, env: dict[str, str], log: Path) -> float:
    """Run ``cmd`` (output to ``log``); its wall-clock seconds; stops the benchmark with the log's tail on failure."""
    start = time.perf_counter()
    with log.open("a") as out:
        rc = subprocess.run(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        sys.exit(f"{' '.join(cmd)} failed ({rc}); see {log}:\n" + "".join(log.read_text().splitlines(True)[-20:]))
    return time.perf_counter() - start


def _stage_seconds(run_dir: Path) -> dict[str, float]:
    stages = json.loads((run_dir / "manifest.json").read_text())["stages"]
    out = {}
    for name in STAGES:
        rec = stages.get(name, {})
        if rec.get("started") and rec.get("finished"):
            t0, t1 = (datetime.fromisoformat(rec[k]) for k in ("started", "finished"))
            out[name] = (t1 - t0).total_seconds()
    return out


def _case(name: str, code: Path, data_args: list[str], config: str, work: Path, extra: list[str] = ()) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    env["PYTHONPATH"] = str(code / "src")
    env.pop("CLODS_PL_WORKERS", None)
    python = sys.executable
    data, run, log = work / f"{name}_data", work / f"{name}_run", work / f"{name}.log"
    for path in (data, run, log):
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    load = os.getloadavg()[0]
    gen = _run([python, "-m", "clods_pl", "data", "generate", *data_args, "--out", str(data)], code, env, log)
    cmd = [python, "-m", "clods_pl", "pipeline", "--config", config, "--run_dir", str(run), "--dataset", str(data)]
    cmd += list(extra)
    wall = _run(cmd, code, env, log)
    row = {"case": name, "code": str(code), "data_s": gen, "pipeline_s": wall, "load_before": load}
    row.update(_stage_seconds(run))
    row["load_after"] = os.getloadavg()[0]
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", default="8baa4b6", help="the old commit (issue 13 was measured at 8baa4b6)")
    ap.add_argument("--cases", nargs="+", default=["old_code", "old_workload", "old_workload_batch2", "demo"])
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "bench_demo")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    rows = []
    for case in args.cases:
        if case == "old_code":
            tree = args.work / f"worktree_{args.old}"
            if not tree.exists():
                subprocess.run(["git", "worktree", "add", "--detach", str(tree), args.old], cwd=ROOT, check=True)
            rows.append(_case(case, tree, ["--preset", "tiny"], "experiments/flag_tiny.yaml", args.work))
        elif case == "old_workload":
            data = ["--config", "experiments/bench/data_tiny_8baa4b6.yaml"]
            rows.append(_case(case, ROOT, data, "experiments/bench/demo_8baa4b6.yaml", args.work))
        elif case == "old_workload_batch2":  # the same, stage 2 in two batches of two: one per core
            data = ["--config", "experiments/bench/data_tiny_8baa4b6.yaml"]
            extra = ["--stage2.data.batch_size", "2"]
            rows.append(_case(case, ROOT, data, "experiments/bench/demo_8baa4b6.yaml", args.work, extra))
        elif case == "demo":
            rows.append(_case(case, ROOT, ["--preset", "tiny"], "experiments/flag_tiny.yaml", args.work))
        else:
            sys.exit(f"--cases: unknown case {case!r}; choose from old_code, old_workload, old_workload_batch2, demo")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_demo.json").write_text(json.dumps(rows, indent=1))
    print("\n| case | data (s) | stage 1 | stage 2 | stage 3 | eval | pipeline (s) | load before/after |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        cells = " | ".join(f"{r.get(s, float('nan')):.0f}" for s in STAGES)
        print(
            f"| {r['case']} | {r['data_s']:.0f} | {cells} | {r['pipeline_s']:.0f} | "
            f"{r['load_before']:.2f}/{r['load_after']:.2f} |"
        )
    print(subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())


if __name__ == "__main__":
    main()
