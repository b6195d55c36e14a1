"""The standard dataset splits, the trajectory names of several splits of a dataset, and the split of a
trajectory's cameras into fitted and held-out views."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from clods_pl.errors import ClodsError

STANDARD_SPLITS = ("train", "val", "test_viewed", "test_unviewed")


def names_in_splits(dataset: Any, splits: Sequence[str]) -> list[str]:
    """Trajectory names of ``splits`` of ``dataset`` (a :class:`clods_pl.data.format.Dataset`), in order, without
    repeats. A standard split the dataset does not have (e.g. ``tiny`` has no ``val``) is skipped; any other split
    it lacks raises the dataset's one-line error."""
    available = getattr(getattr(dataset, "info", None), "splits", None)
    names: dict[str, None] = {}
    for split in splits:
        if available is not None and split not in available and split in STANDARD_SPLITS:
            continue
        names.update(dict.fromkeys(dataset.names(split)))
    return list(names)


def training_views(num_views: int, holdout_views: Sequence[int], setting: str) -> list[int]:
    """The camera indices a stage fits to: all ``num_views`` except ``holdout_views``, which must name existing
    views and leave at least one; ``setting`` (e.g. ``stage1.data.holdout_views``) is named in the error."""
    held = {int(v) for v in holdout_views}
    bad = sorted(v for v in held if not 0 <= v < num_views)
    if bad:
        raise ClodsError(f"{setting} {bad} out of range for {num_views} views (0..{num_views - 1}); fix {setting}")
    views = [v for v in range(num_views) if v not in held]
    if not views:
        raise ClodsError(f"{setting} holds out all {num_views} views; keep at least one for fitting")
    return views
