"""Experiment loggers: CSV (default, always offline) and Weights & Biases (never blocks without a network).

``build_loggers(kind, save_dir, name)`` returns the Lightning loggers a stage's Trainer gets. W&B runs offline
(files under ``<save_dir>/wandb/offline-run-*``, upload later with ``wandb sync``) when ``offline=True``, when
``WANDB_MODE`` is ``offline``/``dryrun``, or when no API key is configured (``WANDB_API_KEY`` or a ``~/.netrc``
entry for the W&B host) -- so a compute node without internet never waits on a login prompt.

``log_images`` writes PNG files next to the CSV logs and sends them to W&B (stage 1's renders);
``log_manifest_artifact`` uploads the run's ``manifest.json`` as a W&B artifact (type ``manifest``): the runner
does so after every stage that logged to W&B.
"""

from __future__ import annotations

import netrc
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from urllib.parse import urlparse

import imageio.v3 as iio
import numpy as np
from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from clods_pl.errors import ClodsError

LOGGER_KINDS = ("csv", "wandb", "both")
DEFAULT_PROJECT = "clods-pl"
OFFLINE_MODES = ("offline", "dryrun")
DEFAULT_WANDB_HOST = "https://api.wandb.ai"
MANIFEST_ARTIFACT_TYPE = "manifest"
MEDIA_DIR = "media"


class LoggerConfigError(ClodsError):
    """The ``logger`` setting of an experiment config is invalid; the message names the setting."""


def wandb_api_key_available(env: dict[str, str] | None = None) -> bool:
    """True when W&B could authenticate without a prompt: ``WANDB_API_KEY`` or a netrc entry for ``WANDB_BASE_URL``."""
    env = dict(os.environ) if env is None else env
    if env.get("WANDB_API_KEY"):
        return True
    host = urlparse(env.get("WANDB_BASE_URL", DEFAULT_WANDB_HOST)).hostname or ""
    path = Path(env.get("NETRC", Path(env.get("HOME", str(Path.home()))) / ".netrc"))
    try:
        return path.is_file() and netrc.netrc(str(path)).authenticators(host) is not None
    except (netrc.NetrcParseError, OSError):
        return False


def wandb_offline(offline: bool | None, env: dict[str, str] | None = None) -> bool:
    """Whether W&B must run offline: explicit ``offline``, else ``WANDB_MODE``, else "no API key configured"."""
    env = dict(os.environ) if env is None else env
    if offline is not None:
        return offline
    if env.get("WANDB_MODE", "").lower() in OFFLINE_MODES:
        return True
    return not wandb_api_key_available(env)


def build_loggers(
    kind: str,
    save_dir: str | os.PathLike,
    name: str,
    project: str = DEFAULT_PROJECT,
    entity: str | None = None,
    offline: bool | None = None,
    tags: Sequence[str] | None = None,
) -> list[Logger]:
    """Loggers for one stage's Trainer.

    Args:
        kind: ``csv`` | ``wandb`` | ``both``.
        save_dir: folder for the logs (e.g. ``<run>/<stage>/logs``); CSV writes ``<save_dir>/<name>/version_*``,
            W&B ``<save_dir>/wandb/``.
        name: run name (e.g. ``demo-stage2``). project / entity / tags: W&B run settings.
        offline: force W&B offline (True) or online (False); None decides from ``WANDB_MODE`` and the API key.
    """
    if kind not in LOGGER_KINDS:
        raise LoggerConfigError(f"logger={kind!r} is not one of {LOGGER_KINDS}; fix the experiment config's logger")
    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    loggers: list[Logger] = []
    if kind in ("csv", "both"):
        loggers.append(CSVLogger(save_dir=str(save_dir), name=name))
    if kind in ("wandb", "both"):
        is_offline = wandb_offline(offline)
        if not is_offline and not wandb_api_key_available():
            raise LoggerConfigError(
                "logger offline=false but no W&B API key is configured; run `wandb login`, "
                "set WANDB_API_KEY, or set the logger's offline option to true"
            )
        loggers.append(
            WandbLogger(
                name=name,
                save_dir=str(save_dir),
                project=project,
                entity=entity,
                offline=is_offline,
                tags=list(tags) if tags else None,
                log_model=False,
            )
        )
    return loggers


def _wandb_loggers(loggers: Iterable[Logger]) -> list[WandbLogger]:
    return [lg for lg in loggers if isinstance(lg, WandbLogger)]


def finish_wandb_runs(loggers: Iterable[Logger]) -> None:
    """End the W&B runs of ``loggers`` that started, so the next Trainer's W&B logger starts its own run (W&B
    otherwise hands it the one in progress: every stage would log into stage 1's run)."""
    for logger in _wandb_loggers(loggers):
        if getattr(logger, "_experiment", None) is not None:
            logger.experiment.finish()


def _media_dir(logger: Logger) -> Path | None:
    log_dir = getattr(logger, "log_dir", None)
    return None if log_dir is None else Path(log_dir) / MEDIA_DIR


def _safe(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", key).strip("_") or "media"


def _to_uint8(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype == np.uint8:
        return images
    return (np.clip(images, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


@rank_zero_only
def log_images(
    loggers: Sequence[Logger],
    key: str,
    images: Sequence[np.ndarray] | np.ndarray,
    step: int | None = None,
    captions: Sequence[str] | None = None,
) -> list[Path]:
    """Log images ``(N, H, W, 3)`` float in [0, 1] or uint8: PNGs under ``<log_dir>/media/``, W&B ``Image``s.

    Returns the PNG paths written for the file-based loggers.
    """

    frames = [_to_uint8(im) for im in images]
    written: list[Path] = []
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            extra = {"caption": list(captions)} if captions else {}
            logger.log_image(key=key, images=frames, step=step, **extra)
        elif (media := _media_dir(logger)) is not None:
            media.mkdir(parents=True, exist_ok=True)
            for i, frame in enumerate(frames):
                path = media / f"{_safe(key)}_{'' if step is None else f'{step:06d}_'}{i}.png"
                iio.imwrite(path, frame)
                written.append(path)
    return written


@rank_zero_only
def log_manifest_artifact(loggers: Sequence[Logger], manifest_path: str | os.PathLike, name: str | None = None) -> int:
    """Upload ``manifest.json`` as a W&B artifact of type ``manifest`` to every W&B logger's run.

    The artifact is named ``manifest-<run dir name>`` unless ``name`` is given; offline runs keep it for
    ``wandb sync``. Returns the number of runs it was logged to (0 without W&B loggers).
    """
    path = Path(manifest_path)
    if not path.is_file():
        raise LoggerConfigError(f"manifest {path} does not exist; run a stage first (clods-pl stage1 ...)")
    wandb_loggers = _wandb_loggers(loggers)
    if not wandb_loggers:
        return 0
    import wandb  # noqa: PLC0415  (optional: only with a W&B logger)

    art_name = _safe(name or f"manifest-{path.parent.name}")
    for logger in wandb_loggers:
        artifact = wandb.Artifact(art_name, type=MANIFEST_ARTIFACT_TYPE)
        artifact.add_file(str(path), name="manifest.json")
        logger.experiment.log_artifact(artifact)
    return len(wandb_loggers)
