"""``clods-pl data generate``: the built-in synthetic multi-view flag benchmark.

Each trajectory draws its own physical conditions (:class:`PhysicsParams`: wind, gusts, stiffness, mass, damping,
pre-roll length and an initial ripple); ``test_unviewed`` trajectories draw their wind direction from a range no
training trajectory sees (``unviewed_azimuth_deg``), so their motion and initial states are out of distribution.
Every frame is rendered from a fixed ring of cameras by the independent mesh renderer. Seeds make the output
bit-for-bit reproducible.

Generation runs torch with ``num_threads`` intra-op threads (default 1): the tensors are small, so on a busy
machine extra threads mostly wait on each other (2 threads under load were ~7x slower than 1 when measured), and a
fixed thread count keeps the bytes identical from machine to machine.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field, fields, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import Tensor
from tqdm import tqdm

from clods_pl.data.format import DatasetInfo
from clods_pl.data.mesh_renderer import DIFFUSE, make_mesh_renderer
from clods_pl.data.simulator import ClothSimulator, FlagMesh, PhysicsParams, torch_threads
from clods_pl.data.splits import STANDARD_SPLITS
from clods_pl.data.writer import write_dataset_info, write_trajectory
from clods_pl.errors import ClodsError
from clods_pl.geometry import Cameras, NodeType, ring_cameras


@dataclass
class GenerateConfig:
    """Generator settings (presets: experiments/data/{tiny,small,paper}.yaml)."""

    name: str = "tiny"
    splits: dict[str, int] = field(default_factory=lambda: {"train": 2, "val": 0, "test_viewed": 1, "test_unviewed": 1})
    num_frames: int = 16
    test_num_frames: int | None = None  # test splits' frames (None: num_frames); longer: a true extrapolation regime
    num_views: int = 4
    resolution: int = 64
    grid: tuple[int, int] = (10, 8)
    flag_size: tuple[float, float] = (1.0, 0.7)
    pole_bottom: float = 0.3
    dt: float = 0.04
    substeps: int = 40  # many small substeps with few iterations each: stiffer cloth for the same cost
    iterations: int = 4
    camera_radius: float = 2.4
    camera_elevations_deg: list[float] = field(default_factory=lambda: [20.0, -5.0])
    camera_azimuth_offset_deg: float = 45.0
    camera_fov_deg: float = 50.0
    camera_target: tuple[float, float, float] = (0.4, 0.0, 0.5)
    viewed_azimuth_deg: tuple[float, float] = (-35.0, 35.0)
    unviewed_azimuth_deg: tuple[float, float] = (45.0, 70.0)
    gustiness: tuple[float, float] = (0.2, 0.6)  # range of the gusts' relative amplitude; (0, 0): no gusts
    lateral_swing_deg: tuple[float, float] = (5.0, 25.0)  # range of the wind direction's swing; (0, 0): none
    # every trajectory gets trajectory 0's conditions (wind, gusts, material; test_unviewed only its own wind
    # direction from unviewed_azimuth_deg) and differs only in how long it ran before frame 0: known conditions
    shared_conditions: bool = False
    supersample: int = 3
    diffuse: float = 0.65  # Lambert share of the light (the rest ambient); 0: no pose-dependent shading
    renderer: str = "auto"
    seed: int = 0
    num_threads: int = 1

    @property
    def num_trajectories(self) -> int:
        return sum(self.splits.values())

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GenerateConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ClodsError(f"unknown generator settings {unknown}; known: {sorted(known)}")
        d = dict(d)
        if "diffuse" in d and not 0.0 <= float(d["diffuse"]) <= 1.0:
            raise ClodsError(
                f"diffuse={d['diffuse']}; the Lambert share of the light must be in [0, 1] (0: no shading)"
            )
        if d.get("test_num_frames") is not None and int(d["test_num_frames"]) < 3:
            raise ClodsError(
                f"test_num_frames={d['test_num_frames']}; a test trajectory needs >= 3 frames "
                "(two inputs and one predicted frame)"
            )
        for key in ("gustiness", "lateral_swing_deg"):
            if key in d:
                lo, hi = (float(x) for x in d[key])
                if not 0.0 <= lo <= hi:
                    raise ClodsError(
                        f"{key}={list(d[key])}; give a range [low, high] with 0 <= low <= high "
                        "([0, 0] for a steady wind)"
                    )
        for key in (
            "grid",
            "flag_size",
            "camera_target",
            "viewed_azimuth_deg",
            "unviewed_azimuth_deg",
            "gustiness",
            "lateral_swing_deg",
        ):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d)

    def physics(self, index: int, split: str) -> tuple[PhysicsParams, torch.Generator]:
        """Trajectory ``index``'s physical conditions and the generator state its simulation starts from (its own
        seed; test_unviewed winds come from the unviewed azimuths, mirrored at random)."""
        g = torch.Generator().manual_seed(self.seed * 100_003 + index)
        az = self.unviewed_azimuth_deg if split == "test_unviewed" else self.viewed_azimuth_deg
        if split == "test_unviewed" and torch.rand((), generator=g) < 0.5:
            az = (-az[1], -az[0])
        draw = partial(
            PhysicsParams.sample, azimuth_range=az, gustiness_range=self.gustiness, swing_range=self.lateral_swing_deg
        )
        params = draw(g)
        if self.shared_conditions:  # trajectory 0's draws (its azimuth's place in this split's range), own start
            params = replace(draw(torch.Generator().manual_seed(self.seed * 100_003)), preroll_s=params.preroll_s)
        return params, g

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for k, v in out.items():
            if isinstance(v, tuple):
                out[k] = list(v)
        return out


PRESETS: dict[str, GenerateConfig] = {
    "tiny": GenerateConfig(splits={"train": 4, "val": 0, "test_viewed": 2, "test_unviewed": 2}, num_views=8),
    "small": GenerateConfig(
        name="small",
        splits={"train": 8, "val": 0, "test_viewed": 3, "test_unviewed": 3},
        num_frames=16,
        test_num_frames=32,
        num_views=8,
    ),
    "paper": GenerateConfig(
        name="paper",
        splits={"train": 40, "val": 2, "test_viewed": 4, "test_unviewed": 4},
        num_frames=100,
        num_views=8,
        resolution=256,
        grid=(40, 28),
        substeps=100,
        iterations=2,
        supersample=2,
    ),
}


def load_config(preset_or_path: str | GenerateConfig) -> GenerateConfig:
    """A preset name (tiny/small/paper) or a YAML file of :class:`GenerateConfig` fields."""
    if isinstance(preset_or_path, GenerateConfig):
        return preset_or_path
    if preset_or_path in PRESETS:
        return PRESETS[preset_or_path]
    path = Path(preset_or_path)
    if not path.is_file():
        raise ClodsError(f"'{preset_or_path}' is neither a preset ({', '.join(PRESETS)}) nor a YAML file")
    return GenerateConfig.from_dict(yaml.safe_load(path.read_text()) or {})


def default_cameras(
    verts: Tensor | np.ndarray,
    num_views: int,
    width: int,
    height: int,
    fov_deg: float = 45.0,
    elevations_deg: tuple[float, ...] = (20.0, -5.0),
    azimuth_offset_deg: float = 45.0,
    margin: float = 1.1,
) -> Cameras:
    """A ring of cameras framing every frame of ``verts`` ((T, V, 3) or (V, 3) world): each camera looks at the
    bounding-box centre from far enough that the bounding sphere (times ``margin``) fits the narrower field of view
    (``fov_deg`` is horizontal, as in :func:`ring_cameras`); world up +z."""
    v = torch.as_tensor(np.asarray(verts), dtype=torch.float32).reshape(-1, 3)
    lo, hi = v.min(0).values, v.max(0).values
    centre = (lo + hi) / 2
    r = float((v - centre).norm(dim=-1).max())
    half = np.arctan(np.tan(np.radians(fov_deg) / 2) * min(1.0, height / width))
    dist = margin * r / np.sin(half)
    return ring_cameras(
        num_views,
        dist,
        tuple(centre.tolist()),
        elevations_deg,
        fov_deg,
        width,
        height,
        azimuth_offset_deg=azimuth_offset_deg,
    )


def normalized_uv(mesh_pos: Tensor) -> Tensor:
    """Material coordinates scaled to [0, 1]^2 (texture coordinates)."""
    lo, hi = mesh_pos.min(0).values, mesh_pos.max(0).values
    return (mesh_pos - lo) / (hi - lo).clamp_min(1e-9)


def render_sequence(
    verts: Tensor | np.ndarray,
    faces: Tensor | np.ndarray,
    mesh_pos: Tensor | np.ndarray,
    cameras: Cameras,
    renderer: str = "auto",
    supersample: int = 3,
    progress: bool = True,
    num_threads: int | None = 1,
    diffuse: float = DIFFUSE,
) -> np.ndarray:
    """Render every frame of ``verts`` (T, V, 3) world with texture coordinates from ``mesh_pos`` (V, 2)
    -> (T, C, H, W, 4) uint8 RGBA (straight alpha = coverage)."""
    r = make_mesh_renderer(renderer, supersample, diffuse)
    verts_t = torch.as_tensor(np.asarray(verts), dtype=torch.float32)
    faces_t = torch.as_tensor(np.asarray(faces), dtype=torch.long)
    uv = normalized_uv(torch.as_tensor(np.asarray(mesh_pos), dtype=torch.float32))
    out = []
    with torch_threads(num_threads):
        for t in tqdm(range(verts_t.shape[0]), desc="render", disable=not progress, leave=False):
            img = r.render(verts_t[t], faces_t, uv, cameras)
            out.append((img.clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy())
    return np.stack(out)


def generate_dataset(
    config: str | GenerateConfig,
    out_dir: str | Path,
    seed: int | None = None,
    progress: bool = True,
    workers: int | None = None,
) -> Path:
    """Simulate, render and write a dataset; returns its folder. ``workers``: processes for the trajectories (None:
    ``CLODS_PL_WORKERS``, else the cores not busy now; see :mod:`clods_pl.utils.workers`): the bytes are the same
    with any number, since every trajectory draws from its own seed."""
    cfg = load_config(config)
    if seed is not None:
        cfg = GenerateConfig.from_dict({**cfg.to_dict(), "seed": seed})
    unknown = sorted(set(cfg.splits) - set(STANDARD_SPLITS))
    if unknown:
        raise ClodsError(f"generator splits {unknown} unknown; use {list(STANDARD_SPLITS)}")
    return _generate(cfg, Path(out_dir), progress, workers)


@dataclass(frozen=True)
class _TrajectoryJob:
    """One trajectory of the dataset: its split, its index (its seed and name) and where it goes."""

    cfg: GenerateConfig
    out: Path
    split: str
    index: int
    progress: bool

    @property
    def name(self) -> str:
        return f"traj_{self.index:04d}"


def _write_trajectory(job: _TrajectoryJob) -> str:
    """Simulate and render trajectory ``job.index`` from its own seed, write it; returns its name."""
    cfg = job.cfg
    with torch_threads(cfg.num_threads):
        mesh = FlagMesh.make(cfg.grid[0], cfg.grid[1], cfg.flag_size[0], cfg.flag_size[1], cfg.pole_bottom)
        sim = ClothSimulator(mesh, cfg.dt, cfg.substeps, cfg.iterations)
        cams = ring_cameras(
            cfg.num_views,
            cfg.camera_radius,
            cfg.camera_target,
            cfg.camera_elevations_deg,
            cfg.camera_fov_deg,
            cfg.resolution,
            cfg.resolution,
            azimuth_offset_deg=cfg.camera_azimuth_offset_deg,
        )
        params, g = cfg.physics(job.index, job.split)
        test = job.split.startswith("test") and cfg.test_num_frames
        frames_here = cfg.test_num_frames if test else cfg.num_frames
        verts = sim.simulate(params, frames_here, g, progress=job.progress, num_threads=None)
        frames = render_sequence(
            verts,
            mesh.faces,
            mesh.mesh_pos,
            cams,
            cfg.renderer,
            cfg.supersample,
            progress=job.progress,
            num_threads=None,
            diffuse=cfg.diffuse,
        )
        handles = mesh.node_type == int(NodeType.HANDLE)
        write_trajectory(
            job.out,
            job.name,
            cams,
            frames,
            mesh.faces,
            mesh.mesh_pos,
            mesh.node_type,
            verts[0],
            gt_verts=verts,
            handle_pos=verts[:, handles],
            physics={"split": job.split, **params.to_dict(), "dt": cfg.dt, "substeps": cfg.substeps},
        )
    return job.name


def _generate(cfg: GenerateConfig, out: Path, progress: bool, workers: int | None = None) -> Path:
    from clods_pl.utils.workers import WORKERS_ENV, plan_workers, run_jobs  # noqa: PLC0415  (keeps imports light)

    start = time.perf_counter()
    splits = [split for split in STANDARD_SPLITS for _ in range(cfg.splits.get(split, 0))]
    plan = plan_workers(workers, len(splits), cfg.num_threads, os.environ.get(WORKERS_ENV))
    inner = progress and plan.workers <= 1  # per-frame bars only when the trajectories run here, in turn
    jobs = [_TrajectoryJob(cfg, out, split, index, inner) for index, split in enumerate(splits)]
    if plan.workers > 1:
        if progress:
            print(plan.describe(f"generate {cfg.name}", f"{len(jobs)} trajectories"))
        names = run_jobs(_write_trajectory, jobs, plan)
    else:
        names = [_write_trajectory(job) for job in tqdm(jobs, desc=f"generate {cfg.name}", disable=not progress)]
    by_split: dict[str, list[str]] = {}
    for job, name in zip(jobs, names):
        by_split.setdefault(job.split, []).append(name)
    write_dataset_info(out, DatasetInfo(name=cfg.name, dt=cfg.dt, splits=by_split, extra={"generator": cfg.to_dict()}))
    if progress:
        print(f"[clods-pl] generated {len(jobs)} trajectories in {time.perf_counter() - start:.1f} s -> {out}")
    return out
