"""Every environment variable a shadowtap command reads, in one list.

Knobs that exist only in the environment are invisible unless written down; this list is
rendered into ``--help`` (the root command and the image/shadow groups) and is checked against
the sources and the README's table by ``tests/images/test_docs_env.py``, so a new variable
cannot stay undocumented.
"""

from __future__ import annotations

from typing import NamedTuple


class EnvVar(NamedTuple):
    name: str
    default: str
    meaning: str


ENV_VARS: tuple[EnvVar, ...] = (
    EnvVar("SHADOWTAP_HOME", "/var/lib/shadowtap",
           "image snapshots, lab shadows' trees, pool.json, history, artefacts, metrics"),
    EnvVar("SHADOWTAP_STATE_DIR", "/run/shadowtap",
           "records of labs, mirrors, the Vagrant lab and locks (tmpfs, like namespaces)"),
    EnvVar("SHADOWTAP_POOL_PREFIX", "stp-",
           "namespace prefix of a new shadow pool (kept in pool.json afterwards)"),
    EnvVar("SHADOWTAP_PURE_PYTHON", "unset",
           "1: do not use the compiled hot paths (pure Python, slower)"),
    EnvVar("SHADOWTAP_VAGRANT_CACHE", "/var/cache/shadowtap-vagrant",
           "Vagrant lab: box, .deb cache, Vagrant's home, wheelhouse, work files"),
    EnvVar("SHADOWTAP_LAB_NODES", "all nodes",
           "Vagrant lab: nodes to boot when --nodes is not given"),
    EnvVar("SHADOWTAP_LAB_BOOT_TIMEOUT", "600",
           "Vagrant lab: seconds Vagrant waits for each VM to boot"),
)


def help_epilog(names: tuple[str, ...] | None = None) -> str:
    """A short block for ``--help``: one variable per paragraph (typer reflows lines)."""
    rows = [v for v in ENV_VARS if names is None or v.name in names]
    body = "\n\n".join(f"{v.name} (default {v.default}): {v.meaning}" for v in rows)
    return f"Environment (README.md, 'Environment variables'):\n\n{body}"
