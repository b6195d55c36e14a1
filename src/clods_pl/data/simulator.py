"""A torch cloth simulator for the synthetic benchmark: a flag on a pole in gusty wind.

Position-based dynamics (Jacobi PBD with averaging) on a triangulated rectangle:

* stretch/shear: distance constraints on every mesh edge (stiffness ``stretch``);
* bending: distance constraints between the two vertices opposite each interior edge (stiffness ``bend``);
* long-range attachments (Kim, Chentanez & Mueller 2012): no vertex may get further from a pinned vertex than its
  rest (material) distance. Jacobi PBD alone converges ever more slowly as the grid gets finer (measured at 40x28:
  mean edge strain 5.7 %, max 119 %); these unilateral constraints carry the load straight to the pole;
* gravity (-z), per-vertex mass from ``density``, linear velocity damping;
* wind: a mean velocity with smooth random gusts (a few sinusoids with random phases and a random lateral swing);
  aerodynamic force on every face ``F = 0.5 rho_air c area ((w - v) . n) n`` shared by its three vertices, so the
  flag flaps;
* the column of vertices at material x = 0 is pinned (node type HANDLE) along the pole (world z axis, x = y = 0).

Several substeps per frame keep it stable at the frame time step; a random pre-roll gives random initial states.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from clods_pl.geometry import NodeType, grid_mesh, unique_edges

GRAVITY = 9.81
RHO_AIR = 1.2


@contextmanager
def torch_threads(num_threads: int | None) -> Iterator[None]:
    """Run the block with ``num_threads`` torch intra-op threads (None: leave as is), then restore the old count.

    The simulator and the mesh renderer work on small tensors: on a busy machine extra threads mostly wait on each
    other (2 threads on a loaded 2-core box: ~7x slower than 1, measured), and a fixed count keeps results
    bit-identical from machine to machine.
    """
    old = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@dataclass
class FlagMesh:
    """A flag: faces (F, 3), mesh_pos (V, 2) material coords (metres), rest world positions (V, 3), node types."""

    faces: Tensor
    mesh_pos: Tensor
    rest: Tensor
    node_type: Tensor

    @classmethod
    def make(cls, nx: int, ny: int, width: float, height: float, pole_bottom: float = 0.0) -> FlagMesh:
        mesh_pos, faces = grid_mesh(nx, ny, width, height)
        rest = torch.stack([mesh_pos[:, 0], torch.zeros(nx * ny), pole_bottom + mesh_pos[:, 1]], -1)
        node_type = torch.full((nx * ny,), int(NodeType.NORMAL), dtype=torch.long)
        node_type[mesh_pos[:, 0] <= 1e-9] = int(NodeType.HANDLE)
        return cls(faces, mesh_pos, rest, node_type)


@dataclass
class PhysicsParams:
    """One trajectory's physical conditions (written to physics.json; never read by the pipeline)."""

    wind_speed: float = 6.0  # m/s, mean
    wind_azimuth_deg: float = 0.0  # 0 = along +x (away from the pole)
    wind_elevation_deg: float = 0.0
    gustiness: float = 0.4  # relative amplitude of the gusts
    gust_periods: list[float] = field(default_factory=lambda: [1.3, 0.7, 0.37])  # seconds
    gust_phases: list[float] = field(default_factory=lambda: [0.0, 1.0, 2.0])
    lateral_swing_deg: float = 15.0
    drag: float = 1.0  # aerodynamic coefficient
    stretch: float = 0.9  # PBD stiffness per iteration in (0, 1]
    bend: float = 0.05
    density: float = 0.25  # kg/m^2
    damping: float = 0.3  # 1/s
    preroll_s: float = 1.0  # simulated before the first recorded frame

    @classmethod
    def sample(
        cls,
        g: torch.Generator,
        azimuth_range: tuple[float, float] = (-40.0, 40.0),
        speed_range: tuple[float, float] = (3.0, 9.0),
        gustiness_range: tuple[float, float] = (0.2, 0.6),
        swing_range: tuple[float, float] = (5.0, 25.0),
    ) -> PhysicsParams:
        """Random "unknown conditions"; ``azimuth_range`` lets test splits use winds never seen in training;
        ``gustiness_range`` and ``swing_range`` (0, 0) give a steady wind. The draws are the same whatever the
        ranges, so changing one range changes no other parameter."""

        def u(a: float, b: float) -> float:
            return float(a + (b - a) * torch.rand((), generator=g))

        return cls(
            wind_speed=u(*speed_range),
            wind_azimuth_deg=u(*azimuth_range),
            wind_elevation_deg=u(-10, 10),
            gustiness=u(*gustiness_range),
            gust_periods=[u(0.8, 2.0), u(0.4, 0.8), u(0.2, 0.45)],
            gust_phases=[u(0, 2 * math.pi) for _ in range(3)],
            lateral_swing_deg=u(*swing_range),
            drag=u(0.8, 1.4),
            stretch=u(0.85, 1.0),
            bend=u(0.02, 0.2),
            density=u(0.15, 0.4),
            damping=u(0.1, 0.6),
            preroll_s=u(0.5, 2.0),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def wind_at(p: PhysicsParams, t: float) -> Tensor:
    """(3,) wind velocity at time t (mean direction, gusts, lateral swing)."""
    gust = (
        1.0 + p.gustiness * sum(math.sin(2 * math.pi * t / T + ph) for T, ph in zip(p.gust_periods, p.gust_phases)) / 2
    )
    az = math.radians(p.wind_azimuth_deg + p.lateral_swing_deg * math.sin(2 * math.pi * t / (3 * p.gust_periods[0])))
    el = math.radians(p.wind_elevation_deg)
    d = torch.tensor([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)])
    return p.wind_speed * max(gust, 0.0) * d


def bending_pairs(faces: Tensor) -> Tensor:
    """(B, 2) vertex pairs opposite each interior edge."""
    opp: dict[tuple[int, int], list[int]] = {}
    for tri in faces.tolist():
        for k in range(3):
            a, b, c = tri[k], tri[(k + 1) % 3], tri[(k + 2) % 3]
            opp.setdefault((min(a, b), max(a, b)), []).append(c)
    pairs = [(v[0], v[1]) for v in opp.values() if len(v) == 2]
    return torch.tensor(pairs, dtype=torch.long).reshape(-1, 2)


class ClothSimulator:
    """Simulates one flag; ``simulate`` returns the recorded frames."""

    def __init__(
        self,
        mesh: FlagMesh,
        dt: float = 0.04,
        substeps: int = 10,
        iterations: int = 20,
        relaxation: float = 1.6,
        long_range: bool = True,
    ) -> None:
        self.mesh, self.dt, self.substeps, self.iterations = mesh, dt, substeps, iterations
        self.relaxation = relaxation  # Jacobi over-relaxation (Macklin et al. 2014)
        edges = unique_edges(mesh.faces)
        bends = bending_pairs(mesh.faces)
        self.cons = torch.cat([edges, bends])
        rest = mesh.rest
        self.rest_len = (rest[self.cons[:, 0]] - rest[self.cons[:, 1]]).norm(dim=-1)
        self.is_bend = torch.cat([torch.zeros(len(edges), dtype=torch.bool), torch.ones(len(bends), dtype=torch.bool)])
        self.free = (mesh.node_type == int(NodeType.NORMAL)).to(rest.dtype).unsqueeze(-1)
        V = rest.shape[0]
        self.count = torch.zeros(V).index_add_(0, self.cons.reshape(-1), torch.ones(self.cons.numel())).clamp_min(1)
        v0, v1, v2 = (rest[mesh.faces[:, k]] for k in range(3))
        area = 0.5 * torch.linalg.cross(v1 - v0, v2 - v0, dim=-1).norm(dim=-1)
        self.vert_area = torch.zeros(V).index_add_(0, mesh.faces.reshape(-1), area.repeat_interleave(3) / 3)
        pinned = torch.nonzero(mesh.node_type != int(NodeType.NORMAL)).squeeze(-1)
        self.anchors = pinned if long_range else pinned[:0]
        # rest distance to every anchor: the flag rests flat, so material distance = geodesic distance
        self.anchor_len = torch.cdist(mesh.mesh_pos.double(), mesh.mesh_pos[self.anchors].double()).to(rest.dtype)

    def _attach(self, x: Tensor) -> Tensor:
        """Long-range attachments: pull each free vertex back onto the sphere of its most violated anchor."""
        if self.anchors.numel() == 0:
            return x
        d = x[:, None, :] - x[self.anchors][None]  # (V, P, 3)
        dist = d.norm(dim=-1)
        excess = (dist - self.anchor_len).clamp_min(0)  # (V, P)
        worst, j = excess.max(dim=1)
        dj = torch.gather(d, 1, j[:, None, None].expand(-1, 1, 3)).squeeze(1)
        distj = torch.gather(dist, 1, j[:, None]).clamp_min(1e-9)
        return x - self.free * (worst[:, None] * dj / distj)

    def _project(self, x: Tensor, k: Tensor) -> Tensor:
        i, j = self.cons[:, 0], self.cons[:, 1]
        d = x[i] - x[j]
        dist = d.norm(dim=-1, keepdim=True).clamp_min(1e-9)
        corr = 0.5 * k.unsqueeze(-1) * (dist - self.rest_len.unsqueeze(-1)) * d / dist
        delta = torch.zeros_like(x).index_add_(0, i, -corr).index_add_(0, j, corr)
        return x + self.free * (self.relaxation * delta / self.count.unsqueeze(-1))

    def simulate(
        self,
        params: PhysicsParams,
        num_frames: int,
        generator: torch.Generator | None = None,
        progress: bool = False,
        num_threads: int | None = 1,
        wind: Callable[[float], Tensor] | None = None,
        state_hook: Callable[[int, Tensor, Tensor], tuple[Tensor, Tensor]] | None = None,
    ) -> Tensor:
        """-> verts (num_frames, V, 3) float32, after ``params.preroll_s`` seconds of pre-roll. ``wind``: the wind
        velocity (3,) at time t (s, from the start of the pre-roll) instead of ``params``' own (:func:`wind_at`;
        ``benchmarks/gust_floor.py`` changes the gusts after a given frame). ``state_hook(k, x, v) -> (x, v)``: may
        change the state (positions (V, 3) m, velocities (V, 3) m/s) at output frame k before it is recorded and the
        simulation goes on from it (:func:`clods_pl.data.gust_floor.perturbed_replays`)."""
        with torch_threads(num_threads):
            return self._simulate(params, num_frames, generator, progress, wind, state_hook)

    def _simulate(
        self,
        params: PhysicsParams,
        num_frames: int,
        generator: torch.Generator | None,
        progress: bool,
        wind: Callable[[float], Tensor] | None = None,
        state_hook: Callable[[int, Tensor, Tensor], tuple[Tensor, Tensor]] | None = None,
    ) -> Tensor:
        mesh = self.mesh
        x = mesh.rest.clone()
        if generator is not None:  # a smooth random initial ripple (strain-free to first order)
            u = mesh.mesh_pos[:, 0] / mesh.mesh_pos[:, 0].max().clamp_min(1e-9)
            amp, phase = 0.03 * torch.rand((), generator=generator), 6.283 * torch.rand((), generator=generator)
            x[:, 1] += amp * u * torch.sin(6.283 * u + phase) * self.free[:, 0]
        v = torch.zeros_like(x)
        mass = (params.density * self.vert_area).clamp_min(1e-6).unsqueeze(-1)
        k = torch.where(self.is_bend, torch.tensor(params.bend), torch.tensor(params.stretch))
        h = self.dt / self.substeps
        pre = int(round(params.preroll_s / self.dt))
        frames, t = [], 0.0
        faces = mesh.faces
        for f in tqdm(range(pre + num_frames), desc="simulate", disable=not progress, leave=False):
            if f >= pre:
                if state_hook is not None:
                    x, v = state_hook(f - pre, x, v)
                frames.append(x.clone())
            for _ in range(self.substeps):
                w = wind_at(params, t) if wind is None else wind(t)
                v0, v1, v2 = x[faces[:, 0]], x[faces[:, 1]], x[faces[:, 2]]
                cr = torch.linalg.cross(v1 - v0, v2 - v0, dim=-1)
                area2 = cr.norm(dim=-1, keepdim=True).clamp_min(1e-12)
                n = cr / area2
                vf = (v[faces[:, 0]] + v[faces[:, 1]] + v[faces[:, 2]]) / 3
                rel = ((w - vf) * n).sum(-1, keepdim=True)
                force = 0.5 * RHO_AIR * params.drag * (0.5 * area2) * rel * rel.abs() * n
                fv = torch.zeros_like(x).index_add_(0, faces.reshape(-1), (force / 3).repeat_interleave(3, 0))
                acc = fv / mass - torch.tensor([0.0, 0.0, GRAVITY])
                v = (v + h * acc) * (1.0 - params.damping * h)
                xp = x + self.free * h * v
                for _ in range(self.iterations):
                    xp = self._attach(self._project(xp, k))
                v = (xp - x) / h
                x = xp
                t += h
        out = torch.stack(frames).float()
        if not torch.isfinite(out).all():
            raise FloatingPointError("cloth simulation diverged; lower dt or raise substeps")
        return out


def simulate(
    params: PhysicsParams,
    mesh: FlagMesh,
    num_frames: int,
    dt: float = 0.04,
    substeps: int = 10,
    generator: torch.Generator | None = None,
    iterations: int = 20,
    progress: bool = False,
) -> Tensor:
    """Simulate one flag trajectory -> verts (num_frames, V, 3) float32, world, metres.

    ``generator`` draws the random initial ripple (None: start flat at rest); ``params.preroll_s`` seconds are
    simulated before the first recorded frame.
    """
    return ClothSimulator(mesh, dt, substeps, iterations).simulate(params, num_frames, generator, progress)
