"""Stage-2 losses: photometric L1 (colour over the background, optional alpha), edge strain, and their sum for
one trajectory at one frame."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from clods_pl.render.types import composite
from clods_pl.stages.recovery_config import BatchRenderer, RecoveryConfig, Renderer


def rest_edge_lengths(verts0: Tensor, edges: Tensor) -> Tensor:
    """(E,) rest lengths of ``edges (E, 2)`` on ``verts0 (V, 3)``, floored to avoid division by zero."""
    return (verts0[edges[:, 0]] - verts0[edges[:, 1]]).norm(dim=-1).clamp_min(1e-8)


def edge_strain_loss(verts: Tensor, edges: Tensor, rest: Tensor) -> Tensor:
    """Mean squared relative edge strain ``((|e| - |e_rest|) / |e_rest|)^2``.

    Args:
        verts: (..., V, 3) world. edges: (E, 2) int64. rest: (..., E) or (E,) rest lengths.
    Returns:
        (...,) loss, zero at rest.
    """
    d = verts[..., edges[:, 0], :] - verts[..., edges[:, 1], :]
    length = (d.pow(2).sum(-1) + 1e-20).sqrt()
    return ((length - rest) / rest).pow(2).mean(-1)


def photometric_loss(
    rgb: Tensor, alpha: Tensor, target_rgba: Tensor, background: Tensor, alpha_weight: float
) -> Tensor:
    """L1 of render vs target, both over ``background``, plus optional alpha L1.

    Args:
        rgb: (..., C, H, W, 3) render over ``background``. alpha: (..., C, H, W, 1). target_rgba: (..., C, H, W, 4)
            in [0, 1].
    Returns:
        (...) loss per image set (a scalar for one set).
    """
    images = (-4, -3, -2, -1)
    loss = (rgb - composite(target_rgba, background)).abs().mean(images)
    if alpha_weight > 0:
        loss = loss + alpha_weight * (alpha - target_rgba[..., 3:4]).abs().mean(images)
    return loss


def smoothing_operator(edges: Tensor, num_verts: int, weight: float, dtype: torch.dtype = torch.float32) -> Tensor:
    """(V, V) ``(I + weight L)^-1``, ``L = D - A`` the uniform graph Laplacian of ``edges (E, 2)``: maps a step
    ``u`` (V, 3) to smooth displacements (the "large steps" parametrisation of Nicolet et al. 2021). Dense: one
    inverse per batch of frames, then one (V, V) x (V, 3) product per iteration (V ~ 1.5k: 9 MB, 7 MFLOP).
    Pinned vertices are part of the graph (their rows of the displacement are then replaced by their prescribed
    positions), so a very large ``weight`` moves the free vertices as one rigid shift away from the pins; anchoring
    the pins instead (the inverse over the free vertices only) gave the same errors at ``weight`` 2 (docs/results.md,
    "Fine meshes")."""
    i, j = edges[:, 0].cpu(), edges[:, 1].cpu()  # built on the CPU, in float64; the caller moves it
    lap = torch.zeros(num_verts, num_verts, dtype=torch.float64)
    lap.index_put_((i, j), torch.full_like(i, -1, dtype=torch.float64), accumulate=True)
    lap.index_put_((j, i), torch.full_like(i, -1, dtype=torch.float64), accumulate=True)
    lap -= torch.diag(lap.sum(1))
    return torch.linalg.inv(torch.eye(num_verts, dtype=torch.float64) + weight * lap).to(dtype)


def compose_verts(x_init: Tensor, dx: Tensor, pinned: Tensor, pinned_pos: Tensor) -> Tensor:
    """(..., V, 3) ``x_init + dx`` with the ``pinned (..., V)`` rows replaced by ``pinned_pos`` (no gradient there)."""
    return torch.where(pinned[..., None], pinned_pos, x_init + dx)


def frame_loss(
    renderer: Renderer,
    verts: Tensor,
    cameras: Any,
    target: Tensor,
    background: Tensor,
    edges: Tensor,
    rest: Tensor,
    config: RecoveryConfig,
) -> tuple[Tensor, Tensor, Tensor]:
    """Total loss of one trajectory at ``verts (V, 3)`` against ``target (C, H, W, 4)``.

    Returns:
        (total, photometric (detached), edge (detached)) scalars; total = photo + gamma * edge.
    """
    out = renderer.render(verts, cameras, background, config.backend)
    photo = photometric_loss(out.rgb, out.alpha, target, background, config.alpha_weight)
    edge = edge_strain_loss(verts, edges, rest)
    return photo + config.gamma * edge, photo.detach(), edge.detach()


def frame_losses(
    renderer: Renderer,
    verts: Tensor,
    cameras: Sequence[Any],
    targets: Sequence[Tensor] | Tensor,
    background: Tensor,
    edges: Tensor,
    rest: Tensor,
    config: RecoveryConfig,
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`frame_loss` of B trajectories at once: ``verts (B, V, 3)``, ``cameras`` and ``targets (C, H, W, 4)``
    one per trajectory (or ``targets`` stacked, (B, C, H, W, 4)), ``rest (B, E)``. A :class:`BatchRenderer`
    renders all B meshes together when their image sets have one shape.

    Returns:
        (total, photometric (detached), edge (detached)), each (B,).
    """
    one_shape = isinstance(targets, Tensor) or len({tuple(t.shape) for t in targets}) == 1
    if isinstance(renderer, BatchRenderer) and one_shape:
        out = renderer.render_batch(verts, cameras, background, config.backend)
        stacked = targets if isinstance(targets, Tensor) else torch.stack(list(targets))
        photo = photometric_loss(out.rgb, out.alpha, stacked, background, config.alpha_weight)
    else:
        outs = [renderer.render(v, c, background, config.backend) for v, c in zip(verts, cameras)]
        photo = torch.stack(
            [photometric_loss(o.rgb, o.alpha, t, background, config.alpha_weight) for o, t in zip(outs, targets)]
        )
    edge = edge_strain_loss(verts, edges, rest)
    return photo + config.gamma * edge, photo.detach(), edge.detach()
