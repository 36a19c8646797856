"""The image manifest's ``ignore`` patterns, with one meaning everywhere they are used.

A pattern decides four things: what a snapshot leaves out (``rsync --exclude``), which build
writes do not trigger a push (the watcher), what a shadow's tree hash leaves out (``find``
pruning, on the appliance and on every shadow), and which run-time files of a running release
are the service's rather than the image's (kept out of verification, protected from rsync's
``--delete``, carried into the next release). If these disagreed, a file the snapshot skipped
could count on the shadow (a false "drifted"), or a shipped file could escape verification.

So the patterns follow rsync's rules, and the other three are derived from them: a POSIX
extended regular expression (GNU ``find -regextype posix-extended -regex``, matched against
``./path``) and the same expression in Python. ``tests/images/test_runtime_writes.py`` checks
the derived forms against rsync itself.

rsync's rules, as used here:

* ``name`` (no ``/``): any entry with that name, at any depth; an excluded directory takes its
  whole content with it. ``*`` and ``?`` do not match ``/``; ``[...]`` is a character class.
* ``name/``: only directories of that name (and so everything inside them).
* ``a/b`` (a ``/`` inside) or anything with ``**``: matched against the end of the path, from
  the image root or from after any ``/``; ``**`` matches ``/`` too.
* ``/a/b``: anchored at the image root.
* ``dir/***``: the directory and everything in it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property

NEVER = "^$"  # find -regex matches whole paths, which start with "./": this never matches


class IgnoreError(ValueError):
    """A pattern that cannot be used; the message names it."""


def _lit(c: str) -> str:
    """A literal character, escaped the same way for GNU EREs and Python's re."""
    return "\\" + c if c in ".[]()*+?{}|^$\\" else c


def _glob_to_ere(glob: str) -> str:
    """One rsync wildcard pattern (no anchoring) as an ERE fragment, same in Python's re."""
    out = []
    i = 0
    n = len(glob)
    while i < n:
        c = glob[i]
        if c == "*":
            j = i
            while j < n and glob[j] == "*":
                j += 1
            out.append("[^/]*" if j - i == 1 else ".*")
            i = j
            continue
        if c == "?":
            out.append("[^/]")
        elif c == "[":
            j = i + 1
            if j < n and glob[j] in "!^":
                j += 1
            if j < n and glob[j] == "]":
                j += 1
            while j < n and glob[j] != "]":
                j += 1
            if j >= n:  # no closing bracket: a literal '['
                out.append(r"\[")
            else:
                body = glob[i + 1:j]
                neg = body[:1] in ("!", "^")
                if neg:
                    body = body[1:]
                body = body.replace("\\", "")  # POSIX brackets have no escapes
                out.append("[" + ("^/" if neg else "") + body + "]")
                i = j + 1
                continue
        elif c == "\\" and i + 1 < n:
            i += 1
            out.append(_lit(glob[i]))
        else:
            out.append(_lit(c))
        i += 1
    return "".join(out)


@dataclass(frozen=True)
class IgnoreRules:
    """A manifest's ``ignore`` list, checked once, in every form its users need."""

    patterns: tuple[str, ...] = ()

    @classmethod
    def parse(cls, patterns: Iterable[str], where: str = "ignore") -> IgnoreRules:
        """Validate patterns (one line each, not rsync's list-clearing ``!``)."""
        out = []
        for p in patterns:
            p = str(p)
            if not p.strip() or "\n" in p or "\0" in p or p.strip() == "!":
                raise IgnoreError(f"{where}: bad pattern {p!r}: one rsync exclude pattern per "
                                  "entry, e.g. '__pycache__/', '*.log', '/uploads/'")
            out.append(p)
        return cls(tuple(out))

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def rsync_args(self) -> list[str]:
        """``--exclude=`` options: what a snapshot leaves out and ``--delete`` leaves alone."""
        return [f"--exclude={p}" for p in self.patterns]

    def lines(self) -> str:
        """The patterns one per line (how the shell snippets on a shadow receive them)."""
        return "\n".join(self.patterns)

    def _parts(self) -> tuple[list[str], list[str]]:
        dirs, any_ = [], []
        for p in self.patterns:
            dir_only = p.endswith("/")
            body = p.rstrip("/") if dir_only else p
            anchored = body.startswith("/")
            body = body.lstrip("/") if anchored else body
            tail = ""
            if body.endswith("/***"):  # the directory and everything in it
                body, tail = body[:-4], "(/.*)?"
            rx = ("^\\./" if anchored else "^\\./(.*/)?") + _glob_to_ere(body) + tail + "$"
            (dirs if dir_only else any_).append(rx)
        return dirs, any_

    def find_regexes(self) -> tuple[str, str]:
        """(directories only, any type): for ``find . -regextype posix-extended -regex``.

        Paths under an excluded directory need no expression of their own: ``-prune`` stops
        find from descending, as rsync does not descend into an excluded directory.
        """
        dirs, any_ = self._parts()
        join = lambda xs: "|".join(f"({x})" for x in xs) if xs else NEVER  # noqa: E731
        return join(dirs), join(any_)

    @cached_property
    def _compiled(self) -> tuple[re.Pattern[str] | None, re.Pattern[str] | None]:
        dirs, any_ = self._parts()
        return (re.compile("|".join(dirs), re.S) if dirs else None,
                re.compile("|".join(any_), re.S) if any_ else None)

    def matches(self, rel: str, is_dir: bool | None = None) -> bool:
        """Is ``rel`` (relative to the image root) ignored, by itself or through a parent?

        ``is_dir=None`` (a path that is gone, so its type is unknown) lets directory-only
        patterns match too: a watcher would rather miss a deleted cache dir than push for it.
        """
        rx_dir, rx_any = self._compiled
        parts = rel.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            path = "./" + "/".join(parts[:i])
            last = i == len(parts)
            if rx_any is not None and rx_any.fullmatch(path):
                return True
            if rx_dir is not None and (not last or is_dir is not False) and rx_dir.fullmatch(path):
                return True
        return False
