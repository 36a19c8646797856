"""Which modules are compiled at install (``setup.py``), and a guard against stale builds.

The compiled modules are the same ``.py`` files run through Cython (see ``setup.py``). Python
prefers an extension module to a source file of the same name, so after an edit to one of these
files the old build would silently keep running. ``install()`` puts a finder in front of the
import system that loads the source instead whenever it is newer than its build, and says so
once. ``SHADOWTAP_PURE_PYTHON=1`` loads every one of them from source (for debugging, and for
the tests that compare the two).

No project imports here: ``setup.py`` reads ``NATIVE`` from this file before anything is built.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
from types import ModuleType
from typing import Any

NATIVE = (
    "replay.compare",
    "replay.sanitise.core",
    "replay.sanitise.detectors",
    "replay.sanitise.bodies",
    "replay.sanitise.pseudonym",
    "replay.sanitise.checksums",
    "replay.sanitise.cache",
    "replay.sanitise.report",
    "replay.sanitise.values",
    "replay.sanitise.headers",
    "replay.sanitise.url",
    "replay.sanitise.form",
    "replay.sanitise.jsonbody",
    "replay.sanitise.multipart",
    "replay.sanitise.message",
)
"""Modules compiled when the project is installed (per exchange, interpreter-bound)."""

PYX = ("replay.sanitise._keyscan",)
"""Helpers written in Cython itself (``.pyx``, C types), each with a pure-Python equivalent
in the module that loads it (``load_pyx``)."""

_warned: set[str] = set()


class _SourceIfStale:
    """Find one of ``NATIVE``: its build when that is at least as new as its source (or the
    default finders' answer when there is no build), else the source.

    A meta path finder needs only ``find_spec``; not subclassing ``importlib.abc.MetaPathFinder``
    keeps ``importlib.abc`` (which imports ``importlib.resources``, ``tempfile``, ``random``...:
    ~4 ms) out of every command's start-up."""

    def find_spec(self, fullname: str, path: object = None, target: ModuleType | None = None
                  ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in NATIVE:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)  # type: ignore[arg-type]
        if spec is None or spec.origin is None or spec.origin.endswith(".py"):
            return spec
        src = os.path.join(os.path.dirname(spec.origin), fullname.rpartition(".")[2] + ".py")
        if not os.path.exists(src):
            return spec  # no source next to the build (an installed wheel): the build
        # Pure Python asked for: no stale-build notice (nothing compiled is used anyway).
        if not (os.environ.get("SHADOWTAP_PURE_PYTHON") or _stale(fullname, src, spec.origin)):
            return spec
        return importlib.util.spec_from_file_location(fullname, src)


C_EXT = ("replay._fastpath", "replay.h2._hpack", "replay._compare")
"""Extension modules written in C (``.c``), each optional: the Python code they speed up is
the definition and runs when they are not built."""


def load_c(module: str, attr: str) -> Any:
    """``module.attr`` from a C extension module; None as for ``load_pyx``."""
    return load_pyx(module, attr, ".c")


def load_pyx(module: str, attr: str, suffix: str = ".pyx") -> Any:
    """``module.attr`` from a compiled ``.pyx`` helper, or None (the caller's pure-Python
    equivalent is used) when it is not built, is older than its ``.pyx``, or
    ``SHADOWTAP_PURE_PYTHON`` is set."""
    if os.environ.get("SHADOWTAP_PURE_PYTHON"):
        return None
    try:
        mod = importlib.import_module(module)
    except ImportError:
        return None
    origin = getattr(mod, "__file__", None) or ""
    src = os.path.join(os.path.dirname(origin), module.rpartition(".")[2] + suffix)
    if _stale(module, src, origin):
        return None
    return getattr(mod, attr, None)


def _stale(module: str, src: str, build: str) -> bool:
    """Whether ``src`` is newer than its ``build`` (False when either is missing: an installed
    wheel has no source beside it); says so on stderr once per module."""
    try:
        stale = os.path.getmtime(src) > os.path.getmtime(build)
    except OSError:
        return False
    if stale and module not in _warned:
        _warned.add(module)
        print(f"shadowtap: {src} is newer than its compiled build; using the pure-Python code "
              "(slower). Rebuild with: pip install -e . (or bash scripts/setup.sh)",
              file=sys.stderr)
    return stale


def install() -> None:
    """Put the finder first in ``sys.meta_path`` (once)."""
    if not any(isinstance(f, _SourceIfStale) for f in sys.meta_path):
        sys.meta_path.insert(0, _SourceIfStale())


def compiled(module: ModuleType) -> bool:
    """Whether ``module`` was loaded from a compiled build."""
    return not (getattr(module, "__file__", None) or "").endswith(".py")
