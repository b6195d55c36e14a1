"""The stage-1 -> stage-2 hand-off: an SMGS inside a stage-1 checkpoint, written and read strictly.

``smgs_record(smgs, background, backend)`` is what stage 1 stores under ``SMGS_KEY`` in its checkpoint: the mesh
topology, every ``SMGS`` constructor option and the rendering settings it was fitted with. ``load_smgs(path)``
rebuilds exactly that SMGS from the checkpoint's ``state_dict`` (the ``smgs.`` entries, loaded strictly: a
missing or unexpected tensor is an error, not a silently fresh parameter) without importing stage-1 code, and
returns the rendering settings with it so stage 2 renders as stage 1 did.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from clods_pl.errors import ClodsError
from clods_pl.smgs.model import SMGS

SMGS_KEY = "smgs_topology"  # the checkpoint key (its name predates the options and settings it now also holds)
PREFIX = "smgs."  # the SMGS's entries in the LightningModule's state_dict


@dataclass(frozen=True)
class RenderSettings:
    """How stage 1 rendered the SMGS it fitted: ``background`` (3,) RGB and the rasterizer ``backend``."""

    background: tuple[float, float, float]
    backend: str


def smgs_record(smgs: SMGS, background: Any, backend: str) -> dict[str, Any]:
    """The checkpoint entry for ``smgs``: topology (CPU tensors), constructor options, rendering settings."""
    return {
        "faces": smgs.faces.cpu(),
        "mesh_pos": smgs.mesh_pos.cpu(),
        "verts0": smgs.verts0.cpu(),
        "options": dict(smgs.options),
        "render": {"background": [float(v) for v in torch.as_tensor(background).flatten()], "backend": backend},
    }


def load_smgs(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> tuple[SMGS, RenderSettings]:
    """The fitted SMGS of a stage-1 checkpoint (eval mode, no gradients) and how stage 1 rendered it.

    Checkpoints written before the options were stored fall back to the stage-1 hyper-parameters that name them.
    """
    path = Path(path)
    if not path.is_file():
        raise ClodsError(f"stage-1 checkpoint {path} does not exist; run `clods-pl stage1` first")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:
        raise ClodsError(f"stage-1 checkpoint {path} cannot be read ({type(exc).__name__}); rerun stage 1") from exc
    if not isinstance(ckpt, dict) or SMGS_KEY not in ckpt:
        raise ClodsError(f"{path} is not a stage-1 (SMGS) checkpoint: no '{SMGS_KEY}'")
    rec, hparams = ckpt[SMGS_KEY], dict(ckpt.get("hyper_parameters", {}))
    accepted = set(inspect.signature(SMGS.__init__).parameters) - {"self", "faces", "mesh_pos", "verts0"}
    options = dict(rec.get("options") or {k: v for k, v in hparams.items() if k in accepted})
    options.setdefault("antialiased", False)  # fitted before the option existed: classic rasterization
    smgs = SMGS(rec["faces"], rec["mesh_pos"], rec["verts0"], **options)
    state = {k[len(PREFIX) :]: v for k, v in ckpt.get("state_dict", {}).items() if k.startswith(PREFIX)}
    try:
        smgs.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ClodsError(
            f"{path}: its SMGS weights do not fit the SMGS its options describe "
            f"({str(exc).splitlines()[0][:160]}); rerun stage 1"
        ) from None
    render = rec.get("render") or {
        "background": hparams.get("background", (1.0, 1.0, 1.0)),
        "backend": hparams.get("backend", "torch"),
    }
    settings = RenderSettings(tuple(float(v) for v in render["background"]), str(render["backend"]))
    smgs.fitted_with = settings
    return smgs.eval().requires_grad_(False), settings
