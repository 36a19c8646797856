"""What the sanitiser did: ``SanitiseReport`` (counts per rule and location, samples, fallbacks)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

_SAMPLES = 3


@dataclass
class SanitiseReport:
    """What the sanitiser did: counts per (rule, location), pseudonym samples, fallbacks.

    Samples are pseudonyms (or the mask), never originals, so the report is safe to share."""

    counts: dict[tuple[str, str], int] = field(default_factory=dict)
    samples: dict[str, list[str]] = field(default_factory=dict)
    fallbacks: dict[str, int] = field(default_factory=dict)
    exchanges_in: int = 0
    exchanges_out: int = 0
    exchanges_dropped: int = 0
    bodies_rewritten: int = 0
    key_id: str = ""
    _rec: list[tuple[str, str, bytes | None]] | None = field(default=None, repr=False)
    """While set, every count is also appended here (the sanitiser memoises whole results)."""
    _full: set[str] = field(default_factory=set, repr=False)
    """Rules that have all their samples (the common case after the first few exchanges)."""

    def count(self, rule: str, loc: str, sample: bytes | None) -> None:
        if self._rec is not None:
            self._rec.append((rule, loc, sample))
        k = (rule, loc)
        counts = self.counts
        counts[k] = counts.get(k, 0) + 1
        if sample is not None and rule not in self._full:
            s = self.samples.get(rule)
            if s is None:
                s = self.samples[rule] = []
            txt = sample[:80].decode("latin-1")
            if txt not in s:
                s.append(txt)
                if len(s) >= _SAMPLES:
                    self._full.add(rule)

    def replay(self, recorded: tuple[tuple[str, str, bytes | None], ...]) -> None:
        """Count again what a memoised step counted the first time."""
        for rule, loc, sample in recorded:
            self.count(rule, loc, sample)

    def fallback(self, reason: str) -> None:
        self.fallbacks[reason] = self.fallbacks.get(reason, 0) + 1

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def by_rule(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for (rule, _loc), n in self.counts.items():
            out[rule] = out.get(rule, 0) + n
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (for ``--report FILE`` and the appliance metrics)."""
        return {
            "exchanges": {
                "in": self.exchanges_in,
                "out": self.exchanges_out,
                "dropped": self.exchanges_dropped,
            },
            "bodies_rewritten": self.bodies_rewritten,
            "redactions": [
                {"rule": r, "location": loc, "count": n}
                for (r, loc), n in sorted(self.counts.items())
            ],
            "samples": {k: list(v) for k, v in sorted(self.samples.items())},
            "fallbacks": dict(sorted(self.fallbacks.items())),
            "key_id": self.key_id,
        }
