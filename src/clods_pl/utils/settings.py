"""Flat settings: nested config dicts as ``{"a.b.c": value}`` and one-line descriptions of what changed."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from clods_pl.errors import ClodsError


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> ``{"a.b.c": value}`` (lists and scalars are leaves)."""
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: obj}


def section(cfg: Any, key: str) -> dict[str, Any]:
    """A section of a parsed config (a jsonargparse ``Namespace``) as a plain dict (empty when absent)."""
    value = cfg.get(key) if hasattr(cfg, "get") else None
    if value is None:
        return {}
    return value.as_dict() if hasattr(value, "as_dict") else dict(value)


def config_changes(old: dict[str, Any], new: dict[str, Any], limit: int = 3) -> list[str]:
    """Human-readable differences between two flat configs, e.g. ``stage1.model.k changed from 2 to 4``."""
    changes = []
    for key in sorted(set(old) | set(new)):
        if key not in new:
            changes.append(f"{key} was removed (was {old[key]!r})")
        elif key not in old:
            changes.append(f"{key} was added ({new[key]!r})")
        elif json.dumps(old[key], sort_keys=True, default=str) != json.dumps(new[key], sort_keys=True, default=str):
            changes.append(f"{key} changed from {old[key]!r} to {new[key]!r}")
    if len(changes) > limit:
        changes = changes[:limit] + [f"and {len(changes) - limit} more"]
    return changes


# Ranges of numeric settings, checked by ``check_ranges``: a rule's words and its test.
Rule = tuple[str, Callable[[Any], bool]]
AT_LEAST_0 = (">= 0", lambda v: v >= 0)
AT_LEAST_1 = (">= 1", lambda v: v >= 1)
POSITIVE = ("> 0", lambda v: v > 0)
UNIT_INTERVAL = ("in [0, 1]", lambda v: 0 <= v <= 1)
OPEN_UNIT_INTERVAL = ("in (0, 1), exclusive", lambda v: 0 < v < 1)


def check_ranges(prefix: str, values: Mapping[str, Any], rules: Mapping[str, Rule]) -> None:
    """Raise a one-line ``ClodsError`` naming ``<prefix>.<name>`` for the first value outside its rule (None: unset,
    not checked); lists and tuples are checked element by element."""
    for name, (words, ok) in rules.items():
        value = values[name]
        if value is None:
            continue
        items = value if isinstance(value, (list, tuple)) else [value]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and ok(v) for v in items):
            raise ClodsError(f"{prefix}.{name}={value!r}; it must be {words}")
