"""Errors netconfig raises for things the user can fix.

The CLI turns every :class:`NetconfigError` into a one-line ``error: ...`` and exit code 2, so a
typo in a spec never shows a traceback. Anything else escaping is a bug in shadowtap.
"""

from __future__ import annotations


class NetconfigError(Exception):
    """A user-facing failure: the message says what failed and what to do."""


class SpecError(NetconfigError):
    """The lab spec is invalid; raised before anything on the host is changed."""


class NotRootError(NetconfigError):
    """Namespaces, links, tc and nftables need CAP_NET_ADMIN; we ask for root outright."""


def require_root() -> None:
    """Fail early and clearly instead of halfway through with EPERM from netlink."""
    import os

    if os.geteuid() != 0:
        raise NotRootError("this command needs root (network namespaces, tc, nftables): run it with sudo")
