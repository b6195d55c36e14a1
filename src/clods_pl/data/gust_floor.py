"""The error floor of unknown gusts on the built-in data: alternatives of a generated trajectory that are identical
up to frame 1 and then blow with gusts of other phases (``benchmarks/gust_floor.py`` scores them; docs/results.md).

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


def regenerate(cfg: GenerateConfig, index: int, split: str) -> tuple[ClothSimulator, PhysicsParams, torch.Generator]:
    """The simulator, the physics and the generator state with which trajectory ``index`` starts its simulation
    (the same draws, in the same order, as ``clods_pl.data.generate``)."""
    mesh = FlagMesh.make(cfg.grid[0], cfg.grid[1], cfg.flag_size[0], cfg.flag_size[1], cfg.pole_bottom)
    sim = ClothSimulator(mesh, cfg.dt, cfg.substeps, cfg.iterations)
    params, g = cfg.physics(index, split)
    return sim, params, g


def _simulate(sim: ClothSimulator, params: PhysicsParams, frames: int, start: Tensor, wind: Any = None) -> Tensor:
    g = torch.Generator()
    g.set_state(start)
    return sim.simulate(params, frames, g, num_threads=1, wind=wind)


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
