"""Flat settings: nested config dicts as ``{"a.b.c": value}`` and one-line descriptions of what changed."""

from __future__ import annotations

import json
from typing import Any


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
