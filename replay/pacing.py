"""When to send each replayed request: pacing as pure arithmetic (sans-I/O).

The replayer asks ``Schedule.due(i)`` for the offset (seconds from the start of the run) at which
item ``i`` should leave, and sleeps until then. Keeping this free of clocks and sockets lets the
tests check pacing exactly, and lets the I/O layer stay a thin loop. Three modes:

* ``speed`` F: keep the capture's own rhythm, scaled: item i leaves at (ts_i - ts_0) / F. This is
  what makes a replay look like production (bursts, lulls, diurnal shape) at F times the pace.
* ``rate`` N: ignore the capture's timing and send N per second, evenly spaced (i / N). Useful for
  load tests and for captures without trustworthy timestamps (HAR, hand-made files).
* ``max``: no schedule at all; the concurrency cap is the only limit.

``--loop N`` repeats the sequence; each pass starts where the previous one ended (for ``speed``:
the capture's span plus one mean gap, so the last request of a pass and the first of the next are
not sent together).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class PacingError(ValueError):
    """A pacing option that cannot be honoured (negative speed, zero rate...)."""


@dataclass(frozen=True, slots=True)
class Pacing:
    """How to pace: exactly one of ``speed`` / ``rate`` is set, or neither for ``max``."""

    speed: float | None = None
    rate: float | None = None

    @property
    def is_max(self) -> bool:
        return self.speed is None and self.rate is None

    @classmethod
    def parse(cls, speed: str | None, rate: float | None) -> Pacing:
        """From the CLI's ``--speed F|max`` and ``--rate N`` (mutually exclusive)."""
        if speed is not None and rate is not None:
            raise PacingError("--speed and --rate are mutually exclusive; give one")
        if rate is not None:
            if not rate > 0:
                raise PacingError(f"--rate must be a positive number of requests/s, not {rate}")
            return cls(rate=float(rate))
        if speed is None or speed.strip().lower() in ("max", "inf", "unlimited"):
            return cls()
        try:
            f = float(speed)
        except ValueError:
            raise PacingError(f"--speed must be a number or 'max', not {speed!r}") from None
        if not f > 0 or f != f or f == float("inf"):
            raise PacingError(f"--speed must be a positive number or 'max', not {speed!r}")
        return cls(speed=f)

    def describe(self) -> str:
        if self.rate is not None:
            return f"rate {self.rate:g}/s"
        if self.speed is not None:
            return f"speed ×{self.speed:g}"
        return "max"


class Schedule:
    """Send offsets for ``n`` items × ``loops`` passes.

    ``timestamps`` are the capture's request start times (None where unknown: such an item leaves
    together with the previous known one). Only used in ``speed`` mode.
    """

    __slots__ = ("_offsets", "_pass_span", "loops", "n", "pacing")

    def __init__(self, pacing: Pacing, timestamps: Sequence[float | None], loops: int = 1) -> None:
        if loops < 1:
            raise PacingError(f"--loop must be at least 1, not {loops}")
        self.pacing = pacing
        self.n = len(timestamps)
        self.loops = loops
        self._offsets: list[float] = []
        self._pass_span = 0.0
        if pacing.speed is not None and self.n:
            rel = _relative(timestamps)
            self._offsets = [t / pacing.speed for t in rel]
            span = self._offsets[-1]
            gap = span / (self.n - 1) if self.n > 1 else 0.0
            self._pass_span = span + gap
        elif pacing.rate is not None:
            self._pass_span = self.n / pacing.rate

    @property
    def total(self) -> int:
        return self.n * self.loops

    def due(self, i: int) -> float | None:
        """Offset in seconds from the start for global item ``i`` (None: send now)."""
        p = self.pacing
        if p.rate is not None:
            return i / p.rate
        if p.speed is not None:
            k, j = divmod(i, self.n)
            return k * self._pass_span + self._offsets[j]
        return None

    @property
    def duration(self) -> float | None:
        """How long the whole schedule takes (None for ``max``)."""
        if self.pacing.is_max:
            return None
        if self.pacing.rate is not None:
            return max(self.total - 1, 0) / self.pacing.rate
        return (self.loops - 1) * self._pass_span + (self._offsets[-1] if self._offsets else 0.0)

    @property
    def target_rate(self) -> float | None:
        """The request rate the schedule asks for (requests/s), or None for ``max``."""
        if self.pacing.rate is not None:
            return self.pacing.rate
        d = self.duration
        if d is None or d <= 0:
            return None
        return max(self.total - 1, 0) / d


def _relative(timestamps: Sequence[float | None]) -> list[float]:
    """Seconds since the first known timestamp, never decreasing (unknown = previous)."""
    first = next((t for t in timestamps if t is not None), None)
    out: list[float] = []
    prev = 0.0
    for t in timestamps:
        if t is not None and first is not None:
            prev = max(prev, t - first)
        out.append(prev)
    return out


def order_by_time(items: Sequence, key) -> list:
    """Items sorted by capture time (stable; items without a time keep their place after the
    previous timed one). Captures list exchanges per connection, not in wire order, and the
    ``speed`` schedule needs wire order."""
    last = float("-inf")
    keyed = []
    for idx, it in enumerate(items):
        t = key(it)
        if t is not None:
            last = t
        keyed.append((last, idx, it))
    keyed.sort(key=lambda x: (x[0], x[1]))
    return [it for _, _, it in keyed]
