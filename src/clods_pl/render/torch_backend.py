"""Pure-PyTorch tile-binned Gaussian rasterizer: the reference backend and the CPU path.

Semantics follow 3DGS/gsplat ("classic" mode): a Gaussian is evaluated at every pixel of every 16x16 tile its 3-sigma
box overlaps; per pixel, ``alpha = min(0.99, opacity * exp(-0.5 d^T Sigma2D^-1 d))``, contributions with
``alpha < 1/255`` are skipped, Gaussians are composited front to back by camera depth, and compositing stops
before the transmittance would fall below 1e-4. Work grows with the (tile, Gaussian) pairs, not pixels x
Gaussians: each Gaussian is duplicated into the tiles it overlaps, pairs are sorted by (tile, depth), and every tile
evaluates only its own Gaussians (padded to the busiest tile, processed in memory-bounded chunks of tiles).
Gradients come from autograd.
"""

from __future__ import annotations

import torch
from torch import Tensor

from clods_pl.render.projection import num_tiles, project_gaussians, tile_bounds
from clods_pl.render.types import RenderOutput

TILE = 16
ALPHA_MAX = 0.99
ALPHA_MIN = 1.0 / 255.0
T_MIN = 1e-4
CHUNK_ELEMENTS = 1 << 23  # pixels x Gaussians evaluated at once


def _pairs(x0: Tensor, x1: Tensor, y0: Tensor, y1: Tensor, depth: Tensor, tiles_x: int, tiles_per_cam: int
           ) -> tuple[Tensor, Tensor]:
    """All (tile, gaussian) pairs sorted by tile then depth -> (tile ids (P,), flat Gaussian ids (P,))."""
    C, N = x0.shape
    w, h = (x1 - x0).reshape(-1), (y1 - y0).reshape(-1)
    counts = w * h
    gid = torch.repeat_interleave(torch.arange(C * N, device=x0.device), counts)
    if gid.numel() == 0:
        return gid, gid
    starts = torch.cumsum(counts, 0) - counts
    local = torch.arange(gid.numel(), device=x0.device) - starts[gid]
    tx = x0.reshape(-1)[gid] + local % w[gid]
    ty = y0.reshape(-1)[gid] + local // w[gid]
    cam = gid // N
    tile_id = cam * tiles_per_cam + ty * tiles_x + tx
    order = torch.argsort(depth.detach().reshape(-1)[gid], stable=True)
    tile_id, gid = tile_id[order], gid[order]
    order = torch.argsort(tile_id, stable=True)
    return tile_id[order], gid[order]


def rasterize_torch(means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, colors: Tensor,
                    viewmats: Tensor, Ks: Tensor, width: int, height: int, background: Tensor | None = None,
                    return_depth: bool = False) -> RenderOutput:
    """See :func:`clods_pl.render.rasterize`. colors: (N, 3) or (C, N, 3)."""
    C, N = viewmats.shape[0], means.shape[0]
    dtype, device = means.dtype, means.device
    tiles_x, tiles_y = num_tiles(width, height, TILE)
    tiles_per_cam = tiles_x * tiles_y
    bg = torch.zeros(3, dtype=dtype, device=device) if background is None else background.to(dtype)
    p = project_gaussians(means, quats, scales, viewmats, Ks, width, height)
    tile_id, gid = _pairs(*tile_bounds(p, TILE, tiles_x, tiles_y), p.depth, tiles_x, tiles_per_cam)
    n_tiles = C * tiles_per_cam
    counts = torch.bincount(tile_id, minlength=n_tiles) if tile_id.numel() else torch.zeros(n_tiles, dtype=torch.long)
    kmax = int(counts.max()) if counts.numel() else 0

    cols = colors if colors.ndim == 3 else colors.unsqueeze(0).expand(C, N, 3)
    feat_dim = 4 if return_depth else 3
    feats = torch.cat([cols, p.depth.unsqueeze(-1)], -1) if return_depth else cols
    feats = feats.reshape(C * N, feat_dim)
    mean2d = p.mean2d.reshape(C * N, 2)
    conic = p.conic.reshape(C * N, 3)
    opac = opacities.unsqueeze(0).expand(C, N).reshape(C * N)

    # pixel centres of one tile, (TILE*TILE, 2)
    iy, ix = torch.meshgrid(torch.arange(TILE, device=device), torch.arange(TILE, device=device), indexing="ij")
    local_pix = torch.stack([ix.reshape(-1), iy.reshape(-1)], -1).to(dtype) + 0.5

    out_feat = torch.zeros(n_tiles, TILE * TILE, feat_dim, dtype=dtype, device=device)
    out_T = torch.ones(n_tiles, TILE * TILE, dtype=dtype, device=device)
    busy = torch.nonzero(counts > 0).squeeze(-1)
    if kmax > 0 and busy.numel() > 0:
        offsets = torch.cumsum(counts, 0) - counts
        pos = torch.arange(tile_id.numel(), device=device) - offsets[tile_id]
        table = torch.full((n_tiles, kmax), -1, dtype=torch.long, device=device)
        table[tile_id, pos] = gid
        feats_list, T_list, order = [], [], []
        for tiles, k in _chunks(busy, counts[busy]):
            f, T = _shade_tiles(tiles, table[tiles, :k], local_pix, tiles_x, tiles_per_cam, mean2d, conic, opac,
                                feats)
            feats_list.append(f)
            T_list.append(T)
            order.append(tiles)
        busy = torch.cat(order)
        out_feat = out_feat.index_put((busy,), torch.cat(feats_list))
        out_T = out_T.index_put((busy,), torch.cat(T_list))

    def to_image(x: Tensor) -> Tensor:  # (C*tiles, TILE*TILE, D) -> (C, H, W, D)
        D = x.shape[-1]
        img = x.reshape(C, tiles_y, tiles_x, TILE, TILE, D).permute(0, 1, 3, 2, 4, 5)
        return img.reshape(C, tiles_y * TILE, tiles_x * TILE, D)[:, :height, :width]

    feat_img = to_image(out_feat)
    T_img = to_image(out_T.unsqueeze(-1))
    alpha = 1.0 - T_img
    rgb = feat_img[..., :3] + T_img * bg
    depth = None
    if return_depth:
        depth = feat_img[..., 3:4] / alpha.clamp_min(1e-10)
    return RenderOutput(rgb=rgb, alpha=alpha, depth=depth)


def _chunks(tiles: Tensor, counts: Tensor, slack: float = 0.7) -> list[tuple[Tensor, int]]:
    """Group busy tiles by their Gaussian count (descending) so padding to a group's maximum wastes little and a
    group evaluates at most CHUNK_ELEMENTS pixel-Gaussian pairs -> [(tile ids, K of the group)]."""
    order = torch.argsort(counts, descending=True)
    tiles, counts = tiles[order], counts[order].tolist()
    groups, start = [], 0
    per_tile = TILE * TILE
    while start < len(counts):
        k = counts[start]
        end = start + 1
        while (end < len(counts) and counts[end] >= slack * k and (end + 1 - start) * k * per_tile <= CHUNK_ELEMENTS):
            end += 1
        groups.append((tiles[start:end], int(k)))
        start = end
    return groups


def _shade_tiles(tiles: Tensor, table: Tensor, local_pix: Tensor, tiles_x: int, tiles_per_cam: int, mean2d: Tensor,
                 conic: Tensor, opac: Tensor, feats: Tensor) -> tuple[Tensor, Tensor]:
    """Composite the sorted Gaussians ``table`` (B, K; -1 = padding) over the pixels of ``tiles`` (B,).

    Returns (B, P, D) accumulated features and (B, P) final transmittance, P = TILE*TILE.
    """
    local = tiles % tiles_per_cam
    origin = torch.stack([local % tiles_x, local // tiles_x], -1).to(mean2d.dtype) * TILE  # (B, 2)
    pix = origin[:, None, :] + local_pix[None]  # (B, P, 2)
    valid = table >= 0
    idx = table.clamp_min(0)
    m = mean2d[idx]  # (B, K, 2)
    cn = conic[idx]  # (B, K, 3)
    d = pix[:, :, None, :] - m[:, None, :, :]  # (B, P, K, 2)
    dx, dy = d[..., 0], d[..., 1]
    power = -0.5 * (cn[:, None, :, 0] * dx * dx + cn[:, None, :, 2] * dy * dy) - cn[:, None, :, 1] * dx * dy
    alpha = torch.clamp(opac[idx][:, None, :] * torch.exp(torch.clamp(power, max=0.0)), max=ALPHA_MAX)
    keep = valid[:, None, :] & (alpha >= ALPHA_MIN) & (power <= 0)
    alpha = torch.where(keep, alpha, torch.zeros_like(alpha))
    # stop before transmittance drops below T_MIN (3DGS): the condition is monotone along the sorted axis
    T_after = torch.cumprod(1.0 - alpha, dim=-1)
    alpha = torch.where(T_after.detach() >= T_MIN, alpha, torch.zeros_like(alpha))
    one_minus = 1.0 - alpha
    T_incl = torch.cumprod(one_minus, dim=-1)
    T_before = torch.cat([torch.ones_like(T_incl[..., :1]), T_incl[..., :-1]], dim=-1)
    w = alpha * T_before  # (B, P, K)
    f = torch.einsum("bpk,bkd->bpd", w, feats[idx])
    return f, T_incl[..., -1]
