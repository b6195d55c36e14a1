"""MeshGraphNets speed on a flag-sized graph: ``dgl`` vs ``native`` message passing, and training steps/s.

    python -m benchmarks.bench_dynamics --device cpu      # -> benchmarks/results/dynamics_cpu.json
    python -m benchmarks.bench_dynamics --device cuda     # native only unless DGL has CUDA

The graph is a 40 x 40 grid (1600 vertices, close to MGN FlagSimple's 1579), batched 1 and 4 times as one
disjoint graph; the model is MGN's size (latent 128, 15 blocks) unless told otherwise. ``results``: one timed
iteration = one model step forward + backward of the squared output. ``training``: full stage-3 training steps
(``DynamicsModule.rollout_loss`` with training noise, backward, Adam step) on one window of the 1600-node graph,
for rollout length 1 (single-step) and 8, reported as steps per second.
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


def bench_one(
    backend: str, batch: int, device: torch.device, latent: int, blocks: int, grid: int, warmup: int, repeats: int
) -> dict:
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
        (out**2).mean().backward()
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return {
        "backend": backend,
        "batch": batch,
        "nodes": v * batch,
        "edges": graph.num_edges,
        "median_s": statistics.median(times),
        "min_s": min(times),
        "repeats": repeats,
    }


def bench_training(
    rollout: int,
    device: torch.device,
    latent: int,
    blocks: int,
    grid: int,
    warmup: int,
    steps: int,
    backend: str = "native",
    compile_mode: str | None = None,
) -> dict:
    """Stage-3 training steps per second on one window of ``rollout + 2`` frames of a ``grid`` x ``grid`` flag."""
    from clods_pl.stages.dynamics import DynamicsModule  # noqa: PLC0415  (pulls in lightning)

    mesh_pos, faces = grid_mesh(grid, grid)
    v = grid * grid
    node_type = torch.zeros(v, dtype=torch.int64)
    node_type[mesh_pos[:, 0] == 0] = int(NodeType.HANDLE)
    gen = torch.Generator().manual_seed(0)
    x0 = torch.cat([mesh_pos, torch.zeros(v, 1)], -1)
    vel = 0.01 * torch.randn(v, 3, generator=gen)
    t = torch.arange(rollout + 2, dtype=torch.float32)[:, None, None]
    verts = x0 + t * vel + 0.5 * t**2 * 1e-3 * torch.randn(v, 3, generator=gen)
    batch = {
        "verts": verts.to(device),
        "mesh_pos": mesh_pos.to(device),
        "node_type": node_type.to(device),
        "graph": graph_from_faces(faces, v).to(device),
    }
    torch.manual_seed(0)
    module = DynamicsModule(
        latent, blocks, message_passing=backend, rollout_length=rollout, normalizer_steps=1, compile_mode=compile_mode
    ).to(device)
    module.rollout_loss(batch, noise=False, accumulate=True)  # normalizer statistics, as stage 3's first steps
    if compile_mode is not None:
        module.model.compile_core(compile_mode)
    opt = torch.optim.Adam(module.parameters(), lr=1e-4)
    times = []
    first = 0.0
    for i in range(warmup + steps):
        _sync(device)
        t0 = time.perf_counter()
        if module.model.compiled:
            torch.compiler.cudagraph_mark_step_begin()
        opt.zero_grad(set_to_none=True)
        loss, _ = module.rollout_loss(batch, noise=True, accumulate=False)
        loss.backward()
        opt.step()
        _sync(device)
        if i == 0:
            first = time.perf_counter() - t0
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return {
        "backend": backend,
        "compile_mode": compile_mode,
        "rollout_length": rollout,
        "nodes": v,
        "median_s": med,
        "steps_per_s": 1.0 / med,
        "first_step_s": first,
        "steps": steps,
        "final_loss": float(loss.detach()),
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--latent", type=int, default=128)
    p.add_argument("--blocks", type=int, default=15)
    p.add_argument("--grid", type=int, default=40)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--train_steps", type=int, default=20, help="timed training steps per rollout length (0: skip)")
    p.add_argument("--rollouts", type=int, nargs="+", default=[1, 8])
    p.add_argument(
        "--compile_modes",
        nargs="+",
        default=["none"],
        help="training rows per torch.compile mode: none (eager), default, reduce-overhead, ...",
    )
    p.add_argument("--skip_forward", action="store_true", help="only the training rows")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/dynamics_<device>.json)")
    a = p.parse_args(argv)
    device = torch.device(a.device)
    rows = []
    for batch in [] if a.skip_forward else a.batches:
        for backend in ("native", "dgl"):
            try:
                row = bench_one(backend, batch, device, a.latent, a.blocks, a.grid, a.warmup, a.repeats)
            except BackendUnavailableError as exc:
                row = {"backend": backend, "batch": batch, "unavailable": str(exc)}
            print(json.dumps(row))
            rows.append(row)
    training = []
    for mode in a.compile_modes if a.train_steps > 0 else []:
        for rollout in a.rollouts:
            cm = None if mode == "none" else mode
            try:
                row = bench_training(
                    rollout,
                    device,
                    a.latent,
                    a.blocks,
                    a.grid,
                    max(a.warmup, 2 if cm is None else 4),
                    a.train_steps,
                    compile_mode=cm,
                )
            except Exception as exc:  # a compile failure must not cost the other rows
                row = {"compile_mode": cm, "rollout_length": rollout, "error": f"{type(exc).__name__}: {exc}"[:400]}
            print(json.dumps(row), flush=True)
            training.append(row)
    result = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "latent": a.latent,
        "blocks": a.blocks,
        "results": rows,
        "training": training,
    }
    out = Path(a.out) if a.out else RESULTS / f"dynamics_{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
