"""The standard dataset splits, and the trajectory names of several splits of a dataset."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

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
