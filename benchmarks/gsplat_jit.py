"""Compile gsplat's CUDA kernels (gsplat 1.5.3 JIT-compiles them on first use, ~80 s) with one tiny render.

python -m benchmarks.gsplat_jit      # benchmarks/gpu.sh runs it first, so no timing includes the compile
"""

from __future__ import annotations

import time

import torch


def main() -> None:
    import gsplat  # noqa: PLC0415  (optional dependency)

    t0 = time.perf_counter()
    z = torch.zeros(1, 3, device="cuda")
    out, alpha, _ = gsplat.rasterization(
        z,
        torch.tensor([[1.0, 0.0, 0.0, 0.0]], device="cuda"),
        z + 0.1,
        torch.ones(1, device="cuda"),
        z,
        torch.eye(4, device="cuda")[None],
        torch.eye(3, device="cuda")[None],
        8,
        8,
    )
    torch.cuda.synchronize()
    print(f"gsplat {gsplat.__version__}: kernels ready in {time.perf_counter() - t0:.1f} s, image {tuple(out.shape)}")


if __name__ == "__main__":
    main()
