"""Stage-2 settings: ``RecoveryConfig`` (one frame step's optimisation), what a mesh cache records of them, and the
renderer contract stage 2 relies on."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from torch import Tensor

from clods_pl.errors import ClodsError
from clods_pl.utils.files import checkpoint_digest

INITS = ("previous", "velocity", "dynamics")


class RecoveryConfigError(ClodsError):
    """A stage-2 setting is invalid; the message names the setting."""


class Renderer(Protocol):
    """What stage 2 needs from the frozen SMGS."""

    def render(self, verts: Tensor, cameras: Any, background: Tensor, backend: str) -> Any:
        """verts (V, 3) world -> object with ``rgb (C, H, W, 3)`` (over ``background``) and ``alpha (C, H, W, 1)``."""


@runtime_checkable
class BatchRenderer(Protocol):
    """A renderer that also renders a batch of meshes at once (the SMGS: one set of torch ops for all of them)."""

    def render(self, verts: Tensor, cameras: Any, background: Tensor, backend: str) -> Any: ...

    def render_batch(self, verts: Tensor, cameras: Sequence[Any], background: Tensor, backend: str) -> Any:
        """verts (B, V, 3) -> the B outputs of :meth:`render`, mesh b in ``cameras[b]``, stacked: rgb (B, C, H, W, 3),
        alpha (B, C, H, W, 1)."""


@dataclass
class RecoveryConfig:
    """Optimisation settings of one frame step.

    Attributes:
        iterations: max Adam steps per frame. lr: Adam learning rate (metres per step scale).
        lr_final: the learning rate at the last iteration as a fraction of ``lr``, reached by exponential decay
            (``lr * lr_final ** (i / iterations)`` at step i; 1 = constant). Adam's steps are about ``lr`` long
            whatever the gradient's size, so a constant rate keeps jittering around the optimum by ~``lr``.
        gamma: weight of the edge-strain loss. alpha_weight: weight of the alpha L1 term (0 = off).
        init: the starting guess for frame t: ``previous`` (frame t-1), ``velocity`` (2 x_{t-1} - x_{t-2}) or
            ``dynamics`` (a stage-3 model's one-step prediction from the recovered frames t-2 and t-1; frame 1,
            with one frame known, starts from ``velocity``).
        extra_starts: more starting guesses (from the ``init`` choices) optimised for every frame next to ``init``,
            batched with it; the frame keeps the result with the lowest loss. A chain started from one guess can
            lock into a wrong pose after a hard frame and stay there; another start gets it out (docs/results.md).
            Each start costs as much as the first.
        dynamics_checkpoint: the stage-3 checkpoint for ``init: dynamics`` and the prior.
        prior_weight: weight of ``mean(((x - x_pred) / sigma_a)^2)`` over the free vertices, ``x_pred`` the model's
            prediction and ``sigma_a`` its output normaliser's per-axis acceleration scale (0 = off).
        smoothing: lambda of the "large steps" preconditioner (Nicolet et al. 2021): the displacements are
            ``(I + lambda L)^-1 u`` with ``L`` the mesh's graph Laplacian and Adam steps ``u``, so a step moves a
            smooth region of vertices together. Without it (0) Adam moves every vertex by about ``lr`` whatever its
            gradient, which on fine meshes (many vertices per pixel, edges a few ``lr`` long) strains the mesh more
            than the images improve: no step beats the initial guess (docs/results.md).
        plateau_patience: stop a trajectory after this many steps without relative improvement
            ``plateau_tol``. min_iterations: never stop before this many steps.
        background: (3,) colour both render and target are composited over. backend: rasterizer backend.
    """

    iterations: int = 150
    lr: float = 2e-3
    lr_final: float = 1.0
    gamma: float = 1.0
    alpha_weight: float = 1.0
    init: str = "velocity"
    extra_starts: tuple[str, ...] = ()
    dynamics_checkpoint: str | None = None
    prior_weight: float = 0.0
    smoothing: float = 0.0
    plateau_patience: int = 20
    plateau_tol: float = 1e-4
    min_iterations: int = 10
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)
    backend: str = "torch"

    def __post_init__(self) -> None:
        if self.iterations < 0 or self.min_iterations < 0 or self.plateau_patience < 1:
            raise RecoveryConfigError(
                "model.iterations and model.min_iterations must be >= 0 and model.plateau_patience >= 1"
            )
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise RecoveryConfigError(f"model.lr must be a positive number, got {self.lr}")
        if not 0 < self.lr_final <= 1:
            raise RecoveryConfigError(f"model.lr_final must be in (0, 1] (a fraction of model.lr), got {self.lr_final}")
        if self.gamma < 0 or self.alpha_weight < 0:
            raise RecoveryConfigError("model.gamma and model.alpha_weight must be >= 0")
        if self.init not in INITS:
            raise RecoveryConfigError(f"model.init={self.init!r}; choose one of {', '.join(INITS)}")
        bad = [s for s in self.extra_starts if s not in INITS]
        if bad:
            raise RecoveryConfigError(
                f"model.extra_starts={list(self.extra_starts)}: {bad[0]!r} is not a start; "
                f"choose from {', '.join(INITS)}"
            )
        # ``init`` and repeats add nothing: drop them (e.g. ``--model.init previous`` on a preset that adds it)
        self.extra_starts = tuple(dict.fromkeys(s for s in self.extra_starts if s != self.init))
        if not (self.smoothing >= 0 and math.isfinite(self.smoothing)):
            raise RecoveryConfigError(f"model.smoothing must be a number >= 0 (0 = off), got {self.smoothing}")
        if not self.prior_weight >= 0:
            raise RecoveryConfigError(f"model.prior_weight must be >= 0, got {self.prior_weight}")
        if ("dynamics" in (self.init, *self.extra_starts) or self.prior_weight > 0) and not self.dynamics_checkpoint:
            raise RecoveryConfigError(
                "model.init=dynamics and model.prior_weight > 0 need model.dynamics_checkpoint "
                "(a stage-3 checkpoint, e.g. runs/<name>/stage3/recovered.ckpt)"
            )
        if self.dynamics_checkpoint and not Path(self.dynamics_checkpoint).is_file():
            raise RecoveryConfigError(
                f"model.dynamics_checkpoint {self.dynamics_checkpoint} does not exist; run "
                "stage 3 first or fix the path"
            )
        if len(self.background) != 3:
            raise RecoveryConfigError(f"model.background must be 3 floats, got {self.background}")


def recovery_settings(config: RecoveryConfig, holdout_views: Sequence[int]) -> dict[str, Any]:
    """What determines a recovered frame, as stored in each mesh cache: every ``RecoveryConfig`` field and the
    held-out views (a resume with other settings would mix two recoveries in one sequence)."""
    out: dict[str, Any] = {
        f"model.{k}": (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(config).items()
    }
    if config.smoothing == 0:  # off: caches written before the setting existed stay valid
        del out["model.smoothing"]
    if config.dynamics_checkpoint:  # the model's weights decide the frames, not the file's name
        out["model.dynamics_checkpoint"] = checkpoint_digest(config.dynamics_checkpoint)
    out["data.holdout_views"] = sorted(int(v) for v in holdout_views)
    return out
