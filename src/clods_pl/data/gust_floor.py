"""The error floor of unknown gusts on the built-in data: alternatives of a generated trajectory that are identical
up to frame 1 and then blow with gusts of other phases (``benchmarks/gust_floor.py`` scores them; docs/results.md).
And how a per-step error grows: replays by the exact simulator that err at every step like a one-step model
(:func:`perturbed_replays`), and the one-step error of the exact simulator that does not know the wind
(:func:`one_step_replay`; both scored by ``benchmarks/error_growth.py``).

The built-in generator's wind is a mean wind plus three sinusoidal gusts with random phases
(:func:`clods_pl.data.simulator.wind_at`). A rollout model sees frames 0 and 1; nothing in them tells it the phases
of the gusts to come, so even an exact simulator that knows the material, the mean wind and the state at frame 1
misses the ground truth by what other phases would do.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from clods_pl.data.generate import GenerateConfig
from clods_pl.data.simulator import ClothSimulator, FlagMesh, PhysicsParams, wind_at
from clods_pl.geometry import unique_edges


def regenerate(cfg: GenerateConfig, index: int, split: str) -> tuple[ClothSimulator, PhysicsParams, torch.Generator]:
    """The simulator, the physics and the generator state with which trajectory ``index`` starts its simulation
    (the same draws, in the same order, as ``clods_pl.data.generate``)."""
    mesh = FlagMesh.make(cfg.grid[0], cfg.grid[1], cfg.flag_size[0], cfg.flag_size[1], cfg.pole_bottom)
    sim = ClothSimulator(mesh, cfg.dt, cfg.substeps, cfg.iterations)
    params, g = cfg.physics(index, split)
    return sim, params, g


def _simulate(
    sim: ClothSimulator, params: PhysicsParams, frames: int, start: Tensor, wind: Any = None, state_hook: Any = None
) -> Tensor:
    g = torch.Generator()
    g.set_state(start)
    return sim.simulate(params, frames, g, num_threads=1, wind=wind, state_hook=state_hook)


def smooth_noise(edges: Tensor, free: Tensor, rms: float, rng: torch.Generator, passes: int = 4) -> Tensor:
    """(V, 3) a random displacement field, smooth over the mesh (``passes`` rounds of averaging each vertex with
    its neighbours along ``edges`` (E, 2)), zero where ``free`` (V, 1) is 0, scaled to an RMSE of ``rms`` (m) over
    all vertices and coordinates, as the evaluation measures a rollout's error."""
    V = free.shape[0]
    n = torch.randn(V, 3, generator=rng, dtype=torch.float64)
    deg = torch.zeros(V, dtype=torch.float64).index_add_(
        0, edges.reshape(-1), torch.ones(edges.numel(), dtype=torch.float64)
    )
    for _ in range(passes):
        nb = torch.zeros_like(n).index_add_(0, edges[:, 0], n[edges[:, 1]]).index_add_(0, edges[:, 1], n[edges[:, 0]])
        n = 0.5 * (n + nb / deg.clamp_min(1).unsqueeze(-1))
    n = n * free.double()
    return (n * (rms / float(n.pow(2).mean().sqrt().clamp_min(1e-12)))).float()


def perturbed_replays(
    cfg: GenerateConfig, index: int, split: str, frames: int, samples: int, rms: float, seed: int = 0
) -> Tensor:
    """``samples`` replays (samples, frames, V, 3) of trajectory ``index`` by the exact simulator, with its own wind,
    that err like a one-step model: from frame 2 on (the first a rollout predicts) every frame's positions get a
    fresh smooth displacement e (:func:`smooth_noise`, RMSE ``rms`` m) and the velocity e / dt
    that the error gives a model's next step (x_{t+1} - x_t). ``rms`` 0 gives the trajectory itself."""
    sim, params, g = regenerate(cfg, index, split)
    start = g.get_state()
    edges = unique_edges(sim.mesh.faces.long())
    out = []
    for s in range(samples):
        rng = torch.Generator().manual_seed(seed * 100_003 + index * 101 + s)

        def hook(k: int, x: Tensor, v: Tensor, rng: torch.Generator = rng) -> tuple[Tensor, Tensor]:
            if k < 2 or rms <= 0:
                return x, v
            e = smooth_noise(edges, sim.free, rms, rng).to(x.dtype)
            return x + e, v + e / cfg.dt

        out.append(_simulate(sim, params, frames, start, state_hook=hook))
    return torch.stack(out)


def gust_alternatives(
    cfg: GenerateConfig, index: int, split: str, frames: int, samples: int, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """Trajectory ``index`` of split ``split`` simulated again (``copy`` (frames, V, 3): equal to its ``gt.npz``), and
    ``samples`` alternatives (samples, frames, V, 3): the same up to frame 1, then gusts of other phases (uniform,
    drawn from ``seed``); the wind stays continuous at frame 1: w(t) = w_alt(t) - w_alt(t1) + w(t1)."""
    sim, params, g = regenerate(cfg, index, split)
    start = g.get_state()
    copy = _simulate(sim, params, frames, start)
    pre = int(round(params.preroll_s / cfg.dt))
    t1 = (pre + 1) * cfg.dt  # the time of frame 1, the last frame a model sees
    half_step = 0.5 * cfg.dt / cfg.substeps
    w1 = wind_at(params, t1)
    rng = np.random.default_rng(seed * 1000 + index)
    alts = []
    for _ in range(samples):
        alt = PhysicsParams(**{**params.to_dict(), "gust_phases": [float(p) for p in rng.uniform(0, 2 * math.pi, 3)]})
        w_alt1 = wind_at(alt, t1)

        def wind(t: float, alt: PhysicsParams = alt, w_alt1: Tensor = w_alt1) -> Tensor:
            return wind_at(params, t) if t < t1 - half_step else wind_at(alt, t) - w_alt1 + w1

        alts.append(_simulate(sim, params, frames, start, wind))
    return copy, torch.stack(alts)


WIND_FIELDS = ("wind_speed", "wind_azimuth_deg", "wind_elevation_deg", "gustiness", "gust_periods", "gust_phases",
               "lateral_swing_deg")  # fmt: skip


def one_step_replay(
    cfg: GenerateConfig, index: int, split: str, gt: Tensor, wind_of: PhysicsParams | None = None
) -> Tensor:
    """(T - 2, V, 3) the exact simulator's one-step predictions of frames 2..T-1 of trajectory ``index``: each from the
    ground-truth frame t (positions ``gt[t]``, velocity ``(gt[t] - gt[t-1]) / dt``, as a model sees it), with the
    trajectory's own material and, with ``wind_of``, that trajectory's wind (speed, direction, gusts) instead of its
    own: what knowing everything but the wind is worth on one step."""
    sim, params, g = regenerate(cfg, index, split)
    if wind_of is not None:
        params = PhysicsParams(**{**params.to_dict(), **{k: getattr(wind_of, k) for k in WIND_FIELDS}})
    preds: dict[int, Tensor] = {}

    def hook(k: int, x: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        if k >= 2:
            preds[k] = x.clone()
        if 1 <= k < gt.shape[0]:
            x, v = gt[k].to(x.dtype).clone(), ((gt[k] - gt[k - 1]) / cfg.dt).to(v.dtype)
        return x, v

    _simulate(sim, params, gt.shape[0], g.get_state(), state_hook=hook)
    return torch.stack([preds[k] for k in range(2, gt.shape[0])]).float()
