"""Build hook: compiles the per-exchange hot modules with Cython, unchanged.

Why: the comparator and the sanitiser run once or twice per exchange, and their cost is mostly
the interpreter's own (attribute lookups, calls, branches) around C-level work (regex, orjson,
msgspec). Cython compiles the same ``.py`` files to C extension modules, which removes much of
that overhead (about 10 % here) without a second source to keep in step: the Python files stay
the only source, readable and testable as they are.

The build is optional twice over: without Cython or a C compiler, or with
``SHADOWTAP_PURE_PYTHON=1`` in the environment, the package installs as pure Python and works
the same (slower). A compiled module older than its ``.py`` (an edit after the install) is
ignored at import time (see ``replay/_native.py``), so an edit is never shadowed by a stale build.
"""

from __future__ import annotations

import os
import runpy

from setuptools import Extension, setup

_LISTS = runpy.run_path("replay/_native.py")
NATIVE = [m.replace(".", "/") + ".py" for m in _LISTS["NATIVE"]]
NATIVE += [m.replace(".", "/") + ".pyx" for m in _LISTS["PYX"]]


def native_modules() -> list:
    if os.environ.get("SHADOWTAP_PURE_PYTHON"):
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        print("shadowtap: Cython not available; installing as pure Python")
        return []
    exts = cythonize(
        NATIVE,
        compiler_directives={
            "language_level": 3,
            # The annotations are documentation, not C types: keep Python's semantics
            # (a subclass of list is a list, an int never overflows).
            "annotation_typing": False,
        },
        quiet=True,
    )
    exts += [Extension(m, [m.replace(".", "/") + ".c"], extra_compile_args=["-O2"])
             for m in _LISTS["C_EXT"]]
    for e in exts:
        e.optional = True  # a failed compile leaves the pure-Python module in place
    return exts


setup(ext_modules=native_modules())
