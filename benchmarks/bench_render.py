"""Rasterizer forward+backward time and peak memory per backend.

    python -m benchmarks.bench_render --device cpu --quick --threads 2  # torch, cpu -> results/render_cpu_2threads.json
    python -m benchmarks.bench_render --device cuda            # torch, gsplat, inria (when installed)
    # CUDA sizes: 10k / 100k / 1M Gaussians at 512 px (torch up to 100k)

Scene: N Gaussians uniformly in a 1 m cube (scales 1-3 cm, random rotations, opacities, colours) seen by 4 ring
cameras at 2.5 m; one timed iteration = rasterize all 4 views + backward of the summed image. Median of repeats.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from clods_pl.errors import BackendUnavailableError
from clods_pl.geometry import ring_cameras
from clods_pl.render import rasterize

RESULTS = Path(__file__).resolve().parent / "results"
FULL = [(n, s) for n in (1_000, 10_000, 100_000) for s in (64, 256, 512)]
QUICK = [(1_000, 64), (10_000, 64), (1_000, 256), (10_000, 256)]
CUDA = [(10_000, 512), (100_000, 512), (1_000_000, 512)]
TORCH_MAX_ON_CUDA = 100_000  # the pure-torch reference materialises every (block, Gaussian) pair: 1M needs >40 GB


def scene(n: int, device: torch.device, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    means = torch.rand(n, 3, generator=g) - 0.5
    quats = torch.randn(n, 4, generator=g)
    scales = torch.rand(n, 3, generator=g) * 0.02 + 0.01
    opac = torch.rand(n, generator=g) * 0.9 + 0.05
    cols = torch.rand(n, 3, generator=g)
    return [t.to(device).requires_grad_(True) for t in (means, quats, scales, opac, cols)]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench(backend: str, n: int, size: int, device: torch.device, repeats: int, antialiased: bool = False) -> dict:
    params = scene(n, device)
    cams = ring_cameras(4, 2.5, width=size, height=size).to(device)
    bg = torch.ones(3, device=device)
    times = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for i in range(repeats + 1):
        for p in params:
            p.grad = None
        _sync(device)
        t = time.perf_counter()
        out = rasterize(*params, cams.w2c, cams.K, size, size, bg, backend=backend, antialiased=antialiased)
        out.rgb.sum().backward()
        _sync(device)
        if i > 0:  # first call warms up (gsplat JIT-compiles on its first use)
            times.append(time.perf_counter() - t)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return {
        "backend": backend,
        "antialiased": antialiased,
        "gaussians": n,
        "size": size,
        "views": 4,
        "median_ms": 1e3 * statistics.median(times),
        "min_ms": 1e3 * min(times),
        "repeats": repeats,
        "peak_mib": peak,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--backends", nargs="+", default=None)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=None)
    ap.add_argument(
        "--antialiased",
        action="store_true",
        help="also time every size with antialiased=True (the SMGS default), next to classic",
    )
    ap.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads on the CPU (2 on a busy 2-core box: 10x slower)"
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    backends = args.backends or (["torch", "cpu"] if device.type == "cpu" else ["torch", "gsplat", "inria"])
    rows = []
    sizes = CUDA if device.type == "cuda" else QUICK if args.quick else FULL
    modes = (False, True) if args.antialiased else (False,)
    for backend in backends:
        for n, size in sizes:
            for aa in modes:
                if device.type == "cuda" and backend == "torch" and n > TORCH_MAX_ON_CUDA:
                    continue
                try:
                    row = bench(backend, n, size, device, args.repeats, aa)
                except BackendUnavailableError as exc:
                    print(f"skip {backend}: {exc}")
                    break
                except torch.OutOfMemoryError:
                    row = {"backend": backend, "gaussians": n, "size": size, "error": "out of memory"}
                rows.append(row)
                timing = f"{row['median_ms']:9.1f} ms" if "median_ms" in row else row["error"]
                print(
                    f"{backend:7s} N={n:>7d} {size:>4d}px {'antialiased' if aa else 'classic':11s} {timing}", flush=True
                )
    meta = {
        "device": args.device,
        "machine": torch.cuda.get_device_name(0)
        if device.type == "cuda"
        else f"{platform.machine()} CPU, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
    }
    suffix = f"cpu_{args.threads}threads" if device.type == "cpu" else args.device
    out = Path(args.out) if args.out else RESULTS / f"render_{suffix}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**meta, "results": rows}, indent=2))
    print(f"-> {out}")


if __name__ == "__main__":
    main()
