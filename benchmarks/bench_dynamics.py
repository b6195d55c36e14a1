"""MeshGraphNets forward+backward time: ``dgl`` vs ``native`` message passing on a flag-sized graph.

    python -m benchmarks.bench_dynamics --device cpu      # -> benchmarks/results/dynamics_cpu.json
    python -m benchmarks.bench_dynamics --device cuda     # native only unless DGL has CUDA

The graph is a 40 x 40 grid (1600 vertices, close to MGN FlagSimple's 1579), batched 1 and 4 times as one
disjoint graph; the model is MGN's size (latent 128, 15 blocks) unless told otherwise. One timed iteration =
one model step forward + backward of the squared output.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from clods_pl.dynamics import MeshGraphNet, batch_graphs, graph_from_faces
from clods_pl.errors import BackendUnavailableError
from clods_pl.geometry import NodeType, grid_mesh

RESULTS = Path(__file__).resolve().parent / "results"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_one(backend: str, batch: int, device: torch.device, latent: int, blocks: int, grid: int,
              warmup: int, repeats: int) -> dict:
    """Median seconds of forward+backward for one (backend, batch) on ``device``."""
    mesh_pos, faces = grid_mesh(grid, grid)
    v = grid * grid
    graph = batch_graphs([graph_from_faces(faces, v)] * batch).to(device)
    mesh_pos = mesh_pos.repeat(batch, 1).to(device)
    node_type = torch.zeros(v, dtype=torch.int64)
    node_type[mesh_pos[:v, 0].cpu() == 0] = int(NodeType.HANDLE)
    node_type = node_type.repeat(batch).to(device)
    gen = torch.Generator().manual_seed(0)
    x0 = torch.cat([mesh_pos, torch.zeros(v * batch, 1, device=device)], -1)
    x1 = x0 + 0.01 * torch.randn(x0.shape, generator=gen).to(device)
    torch.manual_seed(0)
    model = MeshGraphNet(latent, blocks, message_passing=backend).to(device)
    times = []
    for i in range(warmup + repeats):
        model.zero_grad(set_to_none=True)
        _sync(device)
        t0 = time.perf_counter()
        out = model(x0, x1, mesh_pos, node_type, graph)
        (out ** 2).mean().backward()
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return {"backend": backend, "batch": batch, "nodes": v * batch, "edges": graph.num_edges,
            "median_s": statistics.median(times), "min_s": min(times), "repeats": repeats}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--latent", type=int, default=128)
    p.add_argument("--blocks", type=int, default=15)
    p.add_argument("--grid", type=int, default=40)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/dynamics_<device>.json)")
    a = p.parse_args(argv)
    device = torch.device(a.device)
    rows = []
    for batch in a.batches:
        for backend in ("native", "dgl"):
            try:
                row = bench_one(backend, batch, device, a.latent, a.blocks, a.grid, a.warmup, a.repeats)
            except BackendUnavailableError as exc:
                row = {"backend": backend, "batch": batch, "unavailable": str(exc)}
            print(json.dumps(row))
            rows.append(row)
    result = {"device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
              else platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads(),
              "torch": torch.__version__, "latent": a.latent, "blocks": a.blocks, "results": rows}
    out = Path(a.out) if a.out else RESULTS / f"dynamics_{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
