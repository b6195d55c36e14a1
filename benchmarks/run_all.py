"""Run every benchmark for one device: ``python -m benchmarks.run_all --device cpu|cuda [--quick]``.

Results go to ``benchmarks/results/*_<device>.json``; BENCHMARKS.md quotes them with the machine named.
"""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys

BENCHES = ("benchmarks.bench_render", "benchmarks.bench_dynamics")
HAS_QUICK = {"benchmarks.bench_render"}
THREADED = {"benchmarks.bench_render"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--quick", action="store_true", help="small sizes only (minutes on 2 CPU cores)")
    args = parser.parse_args(argv)
    failed = []
    for mod in BENCHES:
        try:
            importlib.import_module(mod)
        except ImportError as exc:
            print(f"[bench] skipping {mod}: {exc}")
            continue
        quick = ["--quick"] if args.quick and mod in HAS_QUICK else []
        cmd = [sys.executable, "-m", mod, "--device", args.device] + quick
        # the rasterizer's CPU target is stated for 2 cores; the pipeline's default is one thread
        variants = [["--threads", "1"], ["--threads", "2"]] if mod in THREADED and args.device == "cpu" else [[]]
        for extra in variants:
            print(f"[bench] {' '.join(cmd + extra)}", flush=True)
            if subprocess.run(cmd + extra).returncode != 0:
                failed.append(mod)
    if failed:
        print(f"[bench] failed: {failed}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
