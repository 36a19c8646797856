"""The live web console of a running appliance (``console:`` in the config; off by default).

What it is: a small HTTP server inside ``shadowtap appliance run`` (and the demo's engine) that
serves one self-contained page (``static/``: plain HTML, JS and CSS shipped in the package, no
CDN, no build step) and a JSON API over what the engine already has:

- the merged verdict and report the engine builds every ``verdict_every`` (``LiveEngine``),
- the capture and worker counters behind ``/metrics``,
- the **sanitised** exchange log the workers write (tailed into a bounded ring), never the
  pipe between capture and workers, never a raw pcap sink. With ``sanitise.enabled: false`` the
  exchange list is off.

Live updates are Server-Sent Events (``/api/events``). Every page and API call needs the token
(``Authorization: Bearer``, or the cookie ``/?token=...`` sets); without it: 401.

Marking a field as noise from the page adds a ``replay.compare.FieldRule`` that the engine's
merge applies from then on (in-process: the verdict is the merge of the workers' states, and
``ThreeWay.merge`` folds a key its rules cover into ``ruled``), and writes it to
``console.rules_file`` (the ``Rules`` YAML of ``shadowtap diff --rules``) so it survives a
restart. See ``server.py`` and ``state.py``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ConsoleConfig:
    listen: str = "127.0.0.1:9750"
    token_file: str | None = None
    """A file holding the token (one line, 16+ characters); none: a random token, printed."""
    exchanges: int = 50_000
    """How many recent exchanges the list keeps (a ring: memory stays bounded)."""
    rules_file: str | None = None
    """Where marks from the page are written (default: console-rules.yaml beside the report)."""
    canary_status: str | None = None
    """A canary's JSON status/report file to show (read-only), e.g. its state record."""
    canary_control: str | None = None
    """A canary controller's ``control.json`` (``canary run --control``): the page shows its
    live state and offers pause/resume/promote/abort through its control API (its token)."""


__all__ = ["ConsoleConfig"]
