"""The one place that imports DGL. Every other module gets dgl from :func:`import_dgl`.

Why a shim: PyPI's newest DGL for CPython 3.11/3.12 is 2.1.0 (CPU-only) and ``import dgl`` fails on a current
torch (2.13) in three ways, none of which touch the message passing this project uses:

1. ``dgl`` does ``from setuptools.extern.packaging import version``; current setuptools removed
   ``setuptools.extern``. We alias ``setuptools.extern`` / ``setuptools.extern.packaging`` to ``packaging``.
2. ``dgl.distributed`` imports ``dgl.graphbolt``, whose C++ library ships only for torch <= 2.2.1
   (``FileNotFoundError: Cannot find DGL C++ graphbolt library``). We register an empty stub module
   ``dgl.graphbolt`` in ``sys.modules`` before the first ``import dgl``; graph sampling for GNN training on
   huge graphs (graphbolt's job) is not used here.
3. DGL needs ``pandas`` at import time; it is a declared dependency of clods-pl.

With the shim, ``update_all`` with ``dgl.function`` builtins and autograd match an ``index_add_`` reference
exactly (``tests/test_dgl_compat.py``). We do not pin an old torch for DGL's sake.
"""

from __future__ import annotations

import importlib
import os
import sys
import types
from types import ModuleType

from clods_pl.errors import BackendUnavailableError

_STUB_NAME = "dgl.graphbolt"


def _alias_setuptools_extern() -> None:
    """Make ``setuptools.extern.packaging`` importable (removed from setuptools >= 71)."""
    try:
        importlib.import_module("setuptools.extern.packaging")
        return
    except Exception:
        pass
    import packaging  # noqa: PLC0415  (only needed when the alias must be made)
    import packaging.version  # noqa: PLC0415  (only when the alias is made)

    extern = sys.modules.get("setuptools.extern")
    if extern is None:
        extern = types.ModuleType("setuptools.extern")
        extern.__path__ = []  # type: ignore[attr-defined]
        sys.modules["setuptools.extern"] = extern
    extern.packaging = packaging  # type: ignore[attr-defined]
    sys.modules["setuptools.extern.packaging"] = packaging
    sys.modules["setuptools.extern.packaging.version"] = packaging.version
    try:
        import setuptools  # noqa: PLC0415  (optional: the alias in sys.modules suffices without it)

        setuptools.extern = extern  # type: ignore[attr-defined]
    except Exception:  # setuptools itself missing: the alias in sys.modules is enough
        pass


def _stub_graphbolt() -> None:
    """Register an empty ``dgl.graphbolt`` so ``dgl.distributed`` imports without its C++ library."""
    if _STUB_NAME in sys.modules:
        return
    stub = types.ModuleType(_STUB_NAME)
    stub.__doc__ = "clods-pl stub: graphbolt's C++ library does not exist for this torch; not used."
    stub.__path__ = []  # type: ignore[attr-defined]
    sys.modules[_STUB_NAME] = stub


def import_dgl() -> ModuleType:
    """Import and return ``dgl`` on a current torch.

    Raises:
        BackendUnavailableError: DGL is not installed or still fails to import; the message says what to do.
    """
    if "dgl" in sys.modules and hasattr(sys.modules["dgl"], "graph"):
        return sys.modules["dgl"]
    os.environ.setdefault("DGLBACKEND", "pytorch")  # else DGL writes ~/.dgl/config.json and warns
    _alias_setuptools_extern()
    _stub_graphbolt()
    try:
        import dgl  # noqa: PLC0415  (the one sanctioned import site)
    except ImportError as exc:
        raise BackendUnavailableError(
            f"message_passing=dgl needs DGL ({exc}); run `pip install dgl pandas` or use message_passing=native"
        ) from exc
    except Exception as exc:  # DGL raises FileNotFoundError/OSError for missing C++ libraries
        raise BackendUnavailableError(
            f"DGL is installed but fails to import on torch ({type(exc).__name__}: {exc}); use message_passing=native"
        ) from exc
    return dgl


def dgl_available() -> bool:
    """True when :func:`import_dgl` succeeds."""
    try:
        import_dgl()
        return True
    except BackendUnavailableError:
        return False
