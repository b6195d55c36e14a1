"""Opacity of the Gaussians: per-Gaussian (``static``, GaMeS) or an MLP of positional encodings of the world
position, the mesh (material) position, or both (``dual``: the CloDS dual-position opacity modulation)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

OPACITY_MODES = ("static", "world", "mesh", "dual")


def positional_encoding(x: Tensor, frequencies: int) -> Tensor:
    """NeRF-style encoding: ``[x, sin(2^k pi x), cos(2^k pi x)]`` for k < frequencies; (..., D) -> (..., D (1 + 2L))."""
    if frequencies == 0:
        return x
    freqs = (2.0 ** torch.arange(frequencies, device=x.device, dtype=x.dtype)) * math.pi
    xf = x.unsqueeze(-1) * freqs  # (N, D, L)
    return torch.cat([x, torch.sin(xf).flatten(-2), torch.cos(xf).flatten(-2)], dim=-1)


class OpacityField(nn.Module):
    """Opacity in (0, 1) for N Gaussians.

    Args:
        mode: static | world | mesh | dual. num_gaussians: N (static mode). frequencies: PE frequencies L.
        hidden, layers: MLP width and number of hidden layers. world_center, world_half: (3,) normalisation of
        world positions (first-frame bounding box). mesh_center, mesh_half: (2,) same for mesh positions.
        init_opacity: opacity every Gaussian starts with.
    """

    def __init__(
        self,
        mode: str,
        num_gaussians: int,
        frequencies: int,
        hidden: int,
        layers: int,
        world_center: Tensor,
        world_half: Tensor,
        mesh_center: Tensor,
        mesh_half: Tensor,
        init_opacity: float = 0.5,
    ) -> None:
        super().__init__()
        if mode not in OPACITY_MODES:
            raise ValueError(f"opacity_mode must be one of {OPACITY_MODES}, got '{mode}'")
        self.mode, self.frequencies = mode, frequencies
        self.register_buffer("world_center", world_center.float())
        self.register_buffer("world_half", world_half.float().clamp_min(1e-6))
        self.register_buffer("mesh_center", mesh_center.float())
        self.register_buffer("mesh_half", mesh_half.float().clamp_min(1e-6))
        init_logit = math.log(init_opacity / (1.0 - init_opacity))
        if mode == "static":
            self.logits = nn.Parameter(torch.full((num_gaussians,), init_logit))
            self.mlp = None
            return
        in_dim = (3 if mode in ("world", "dual") else 0) + (2 if mode in ("mesh", "dual") else 0)
        in_dim *= 1 + 2 * frequencies
        dims = [in_dim] + [hidden] * layers
        mods: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            mods += [nn.Linear(a, b), nn.ReLU()]
        last = nn.Linear(dims[-1], 1)
        nn.init.zeros_(last.weight)
        nn.init.constant_(last.bias, init_logit)
        self.mlp = nn.Sequential(*mods, last)

    def forward(self, mu_world: Tensor, mu_mesh: Tensor) -> Tensor:
        """mu_world: (..., N, 3) world centres; mu_mesh: (N, 2) rest-state material centres -> (..., N) opacities."""
        if self.mlp is None:
            return torch.sigmoid(self.logits).to(mu_world.dtype).expand(mu_world.shape[:-1])
        feats = []
        if self.mode in ("world", "dual"):
            w = (mu_world - self.world_center.to(mu_world)) / self.world_half.to(mu_world)
            feats.append(positional_encoding(w, self.frequencies))
        if self.mode in ("mesh", "dual"):
            m = (mu_mesh - self.mesh_center.to(mu_mesh)) / self.mesh_half.to(mu_mesh)
            feats.append(positional_encoding(m, self.frequencies).expand(*mu_world.shape[:-1], -1))
        x = torch.cat(feats, -1).to(next(self.mlp.parameters()).dtype)
        return torch.sigmoid(self.mlp(x)).squeeze(-1).to(mu_world.dtype)
