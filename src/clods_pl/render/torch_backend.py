"""Pure-PyTorch tile-binned Gaussian rasterizer: the reference backend and the CPU path.

Semantics follow 3DGS/gsplat ("classic" mode): a Gaussian is evaluated at every pixel of every 16x16 tile its 3-sigma
box overlaps; per pixel, ``alpha = min(0.99, opacity * exp(-0.5 d^T Sigma2D^-1 d))``, contributions with
``alpha < 1/255`` are skipped, Gaussians are composited front to back by camera depth, and compositing stops
before the transmittance would fall below 1e-4. Work grows with the (tile, Gaussian) pairs, not pixels x
Gaussians: each Gaussian is duplicated into the 4x4-pixel compute blocks that lie inside its 16x16 tiles AND inside
the box where its alpha can reach 1/255 (so the result is exactly the 16x16-tile one), pairs are sorted by (block,
depth), and every block evaluates only its own Gaussians (padded to similar counts, in memory-bounded chunks). The
exponent log(opacity) - 0.5 d^T Sigma^-1 d is a quadratic in the pixel position, evaluated as one matmul.
Gradients come from autograd.
"""

from __future__ import annotations

import torch
from torch import Tensor

from clods_pl.render.conventions import TORCH, RasterConventions
from clods_pl.render.projection import Projected, num_tiles, project_gaussians, tile_bounds
from clods_pl.render.types import RenderOutput

TILE = 16  # 3DGS/gsplat tile: a Gaussian may touch every pixel of the 16x16 tiles its 3-sigma box overlaps
BLOCK = 4  # compute block: the same pixels, restricted to where its alpha can reach 1/255 (exact, less work)
ALPHA_MAX = TORCH.alpha_max
ALPHA_MIN = 1.0 / 255.0
T_MIN = 1e-4
CHUNK_ELEMENTS = 1 << 23  # pixels x Gaussians evaluated at once


def _pairs(
    x0: Tensor, x1: Tensor, y0: Tensor, y1: Tensor, depth: Tensor, tiles_x: int, tiles_per_cam: int
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
    # one sort on the key (tile, depth rank): ranks are unique, so it equals a stable sort by depth then by tile
    rank = torch.empty(C * N, dtype=torch.long, device=x0.device)
    rank[torch.argsort(depth.detach().reshape(-1), stable=True)] = torch.arange(C * N, device=x0.device)
    order = torch.argsort(tile_id * (C * N) + rank[gid])
    return tile_id[order], gid[order]


def rasterize_torch(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    colors: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    background: Tensor | None = None,
    return_depth: bool = False,
    antialiased: bool = False,
    conventions: RasterConventions = TORCH,
) -> RenderOutput:
    """See :func:`clods_pl.render.rasterize`. colors: (N, 3) or (C, N, 3).

    ``conventions``: :data:`~clods_pl.render.conventions.TORCH` (the backend's own); ``GSPLAT_1_5`` or
    ``INRIA_3DGS`` reproduce those rasterizers exactly (parity tests)."""
    C, N = viewmats.shape[0], means.shape[0]
    dtype, device = means.dtype, means.device
    tiles_x, tiles_y = num_tiles(width, height, BLOCK)
    tiles_per_cam = tiles_x * tiles_y
    bg = torch.zeros(3, dtype=dtype, device=device) if background is None else background.to(means)
    p = project_gaussians(
        means, quats, scales, viewmats, Ks, width, height, near=conventions.near, antialiased=antialiased
    )
    opac = p.opacities(opacities)  # (C, N)
    tile_id, gid = _pairs(*_block_bounds(p, opac, width, height, conventions), p.depth, tiles_x, tiles_per_cam)
    n_tiles = C * tiles_per_cam
    counts = (
        torch.bincount(tile_id, minlength=n_tiles)
        if tile_id.numel()
        else torch.zeros(n_tiles, dtype=torch.long, device=device)
    )
    kmax = int(counts.max()) if counts.numel() else 0

    cols = colors if colors.ndim == 3 else colors.unsqueeze(0).expand(C, N, 3)
    feat_dim = 4 if return_depth else 3
    feats = torch.cat([cols, p.depth.unsqueeze(-1)], -1) if return_depth else cols
    feats = feats.reshape(C * N, feat_dim)
    log_opac = torch.log(opac.clamp_min(1e-30)).reshape(C * N, 1)
    attrs = torch.cat([p.mean2d.reshape(C * N, 2), p.conic.reshape(C * N, 3), log_opac, feats], -1)

    # pixel centres of one tile (tile-local coordinates)
    iy, ix = torch.meshgrid(torch.arange(BLOCK, device=device), torch.arange(BLOCK, device=device), indexing="ij")
    px, py = ix.reshape(-1).to(dtype) + 0.5, iy.reshape(-1).to(dtype) + 0.5
    local_pix = torch.stack([px * px, py * py, px * py, px, py, torch.ones_like(px)], -1)  # (P, 6) monomials

    out_feat = torch.zeros(n_tiles, BLOCK * BLOCK, feat_dim, dtype=dtype, device=device)
    out_T = torch.ones(n_tiles, BLOCK * BLOCK, dtype=dtype, device=device)
    busy = torch.nonzero(counts > 0).squeeze(-1)
    if kmax > 0 and busy.numel() > 0:
        offsets = torch.cumsum(counts, 0) - counts
        pos = torch.arange(tile_id.numel(), device=device) - offsets[tile_id]
        table = torch.full((n_tiles, kmax), -1, dtype=torch.long, device=device)
        table[tile_id, pos] = gid
        feats_list, T_list, order = [], [], []
        for tiles, k in _chunks(busy, counts[busy]):
            f, T = _shade_tiles(tiles, table[tiles, :k], local_pix, tiles_x, tiles_per_cam, attrs, conventions)
            feats_list.append(f)
            T_list.append(T)
            order.append(tiles)
        busy = torch.cat(order)
        out_feat = out_feat.index_put((busy,), torch.cat(feats_list))
        out_T = out_T.index_put((busy,), torch.cat(T_list))

    def to_image(x: Tensor) -> Tensor:  # (C*tiles, BLOCK*BLOCK, D) -> (C, H, W, D)
        D = x.shape[-1]
        img = x.reshape(C, tiles_y, tiles_x, BLOCK, BLOCK, D).permute(0, 1, 3, 2, 4, 5)
        return img.reshape(C, tiles_y * BLOCK, tiles_x * BLOCK, D)[:, :height, :width]

    feat_img = to_image(out_feat)
    T_img = to_image(out_T.unsqueeze(-1))
    alpha = 1.0 - T_img
    rgb = feat_img[..., :3] + T_img * bg
    depth = None
    if return_depth:
        depth = feat_img[..., 3:4] / alpha.clamp_min(1e-10)
    return RenderOutput(rgb=rgb, alpha=alpha, depth=depth)


def _block_bounds(
    p: Projected, opacities: Tensor, width: int, height: int, conventions: RasterConventions
) -> tuple[Tensor, ...]:
    """``opacities``: (C, N) as composited.

    BLOCK rectangles [x0, x1) x [y0, y1) per (camera, Gaussian): inside its 16-pixel tile rectangle (3DGS
    semantics; skipped when ``conventions.tile_coverage`` is False) and inside the box where
    ``opacity * exp(-0.5 d^T Sigma^-1 d) >= 1/255`` is possible, i.e. ``|d| <= sqrt(2 ln(255 opacity) lambda_max)``;
    every skipped pixel would have been skipped by the threshold."""
    bx, by = num_tiles(width, height, BLOCK)
    op = opacities.detach().to(p.mean2d.dtype)  # (C, N)
    reach = torch.sqrt(2.0 * torch.log((255.0 * op).clamp_min(1.0)))  # (C, N) Mahalanobis reach
    r = reach * p.radius.to(op.dtype) / 3.0 + 1e-3  # radius = ceil(3 sqrt(lambda_max)) >= 3 sqrt(lam)
    mx, my = p.mean2d[..., 0].detach(), p.mean2d[..., 1].detach()
    x0 = torch.clamp(torch.floor((mx - r) / BLOCK), 0, bx).long()
    x1 = torch.clamp(torch.ceil((mx + r) / BLOCK), 0, bx).long()
    y0 = torch.clamp(torch.floor((my - r) / BLOCK), 0, by).long()
    y1 = torch.clamp(torch.ceil((my + r) / BLOCK), 0, by).long()
    live = p.front & (255.0 * op >= 1.0)
    if conventions.tile_coverage:
        tiles_x, tiles_y = num_tiles(width, height, TILE)
        k = TILE // BLOCK
        tx0, tx1, ty0, ty1 = tile_bounds(p, TILE, tiles_x, tiles_y, conventions.integer_pixel_tile_rect)
        x0, x1 = torch.maximum(x0, tx0 * k), torch.minimum(x1, tx1 * k)
        y0, y1 = torch.maximum(y0, ty0 * k), torch.minimum(y1, ty1 * k)  # empty for a box off the screen
    x1 = torch.where(live & (x1 > x0), x1, x0)
    y1 = torch.where(live & (y1 > y0), y1, y0)
    return x0, x1, y0, y1


def _chunks(tiles: Tensor, counts: Tensor, slack: float = 0.5) -> list[tuple[Tensor, int]]:
    """Group busy tiles by their Gaussian count (descending) so padding to a group's maximum wastes little and a
    group evaluates at most CHUNK_ELEMENTS pixel-Gaussian pairs -> [(tile ids, K of the group)]."""
    order = torch.argsort(counts, descending=True)
    tiles, counts = tiles[order], counts[order].tolist()
    groups, start = [], 0
    per_tile = BLOCK * BLOCK
    while start < len(counts):
        k = counts[start]
        end = start + 1
        while end < len(counts) and counts[end] >= slack * k and (end + 1 - start) * k * per_tile <= CHUNK_ELEMENTS:
            end += 1
        groups.append((tiles[start:end], int(k)))
        start = end
    return groups


def _shade_tiles(
    tiles: Tensor,
    table: Tensor,
    local_pix: Tensor,
    tiles_x: int,
    tiles_per_cam: int,
    attrs: Tensor,
    conventions: RasterConventions = TORCH,
) -> tuple[Tensor, Tensor]:
    """Composite the sorted Gaussians ``table`` (B, K; -1 = padding) over the pixels of ``tiles`` (B,).

    attrs: (C*N, 6 + D) per projected Gaussian: mean2d (2), conic (3), log opacity (1), features (D).
    Returns (B, P, D) accumulated features and (B, P) final transmittance, P = BLOCK*BLOCK.
    """
    local = tiles % tiles_per_cam
    origin = torch.stack([local % tiles_x, local // tiles_x], -1).to(attrs.dtype) * BLOCK  # (B, 2)
    valid = table >= 0
    B, K = table.shape
    # one index_select (its backward is one index_add) instead of a gather per attribute
    g = attrs.index_select(0, table.clamp_min(0).reshape(-1)).view(B, K, -1)
    mx, my = (g[..., :2] - origin[:, None, :]).unbind(-1)  # (B, K) tile-local, keeps float32 well conditioned
    a, b, c, log_op = g[..., 2:6].unbind(-1)
    # log(opacity) - 0.5 d^T Sigma^-1 d is a quadratic in the pixel position: one batched matmul with the
    # per-pixel monomials [x^2, y^2, xy, x, y, 1] instead of ~20 elementwise passes over (B, P, K)
    const = -0.5 * a * mx * mx - 0.5 * c * my * my - b * mx * my + log_op
    coef = torch.stack([-0.5 * a, -0.5 * c, -b, a * mx + b * my, c * my + b * mx, const], 1)  # (B, 6, K)
    return _Composite.apply(coef, valid, g[..., 6:], local_pix, conventions.alpha_max, conventions.grad_through_clamp)


class _Composite(torch.autograd.Function):
    """Front-to-back compositing of K sorted Gaussians over the P pixels of B blocks, with a hand-written backward.

    forward(coef (B, 6, K), valid (B, K) bool, feats (B, K, D), local_pix (P, 6), alpha_max=0.99,
    grad_through_clamp=False) -> (out (B, P, D), T_final (B, P)),
    where ``log alpha = local_pix @ coef``, ``alpha = min(alpha_max, exp(min(log alpha, 0)))`` zeroed where invalid,
    below 1/255 or after the transmittance would fall below T_MIN, ``out = sum_k alpha_k T_k feats_k`` and
    ``T_k = prod_{j<k} (1 - alpha_j)``. The backward is the 3DGS one in closed form (one reverse cumulative sum)
    instead of autograd through cumprod, clamp and where: about half the time of the autograd graph on a CPU.
    """

    @staticmethod
    def forward(
        ctx,
        coef: Tensor,
        valid: Tensor,
        feats: Tensor,
        local_pix: Tensor,
        alpha_max: float = ALPHA_MAX,
        grad_through_clamp: bool = False,
    ) -> tuple[Tensor, Tensor]:
        # in-place ops on fresh tensors throughout: this runs without autograd and is memory-bound on a CPU
        alpha = torch.matmul(local_pix, coef).clamp_(max=0.0).exp_()  # (B, P, K)
        live = (alpha >= ALPHA_MIN).logical_and_(valid[:, None, :])
        # d alpha / d log alpha = alpha where neither clamp is active (alpha < alpha_max implies log alpha < 0).
        # 3DGS's backward ignores the alpha_max clamp (grad_through_clamp): there it is the unclamped alpha
        slope = live.clone() if grad_through_clamp else (alpha < alpha_max).logical_and_(live)
        raw = alpha * live if grad_through_clamp else None
        alpha.clamp_(max=alpha_max).mul_(live)
        T_incl = torch.cumprod(1.0 - alpha, dim=-1)
        if bool((T_incl[..., -1] < T_MIN).any()):
            # stop before transmittance drops below T_MIN (3DGS): monotone along the sorted axis
            alive = T_incl >= T_MIN
            alpha.mul_(alive)
            slope.logical_and_(alive)
            T_incl = torch.cumprod(1.0 - alpha, dim=-1)
        T_before = torch.cat([torch.ones_like(T_incl[..., :1]), T_incl[..., :-1]], dim=-1)
        w = alpha * T_before  # (B, P, K)
        out = torch.matmul(w, feats)
        T_final = T_incl[..., -1]
        # the backward multiplies by d alpha / d log alpha: alpha masked by slope, or the unclamped alpha
        ctx.save_for_backward(alpha, slope if raw is None else raw.mul_(slope), T_before, w, T_final, feats, local_pix)
        ctx.grad_through_clamp = raw is not None
        return out, T_final

    @staticmethod
    def backward(ctx, g_out: Tensor, g_T: Tensor) -> tuple[Tensor | None, None, Tensor | None, None, None, None]:
        alpha, slope, T_before, w, T_final, feats, local_pix = ctx.saved_tensors
        g_feats = torch.matmul(w.transpose(1, 2), g_out) if ctx.needs_input_grad[2] else None
        if not ctx.needs_input_grad[0]:
            return None, None, g_feats, None, None, None
        cg = torch.matmul(g_out, feats.transpose(1, 2))  # (B, P, K): feats_k . g
        contrib = w * cg
        # everything behind k, plus the final transmittance, scales with (1 - alpha_k)
        total = contrib.sum(-1, keepdim=True).add_((g_T * T_final)[..., None])
        behind = contrib.cumsum_(-1).neg_().add_(total)
        g_log_alpha = cg.mul_(T_before).sub_(behind.div_(1.0 - alpha))
        g_log_alpha = g_log_alpha.mul_(slope) if ctx.grad_through_clamp else g_log_alpha.mul_(alpha).mul_(slope)
        g_coef = torch.matmul(local_pix.t(), g_log_alpha)  # (B, 6, K)
        return g_coef, None, g_feats, None, None, None
