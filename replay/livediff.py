"""Live comparison: captured exchanges in, a running three-way verdict out (for the appliance).

The appliance captures production traffic as it happens; each complete exchange already holds
production's answer (the primary). ``LiveDiff`` hands it to a ``Replayer`` (candidate, and a
secondary when there is one) without ever blocking the capture path (``offer`` drops and counts
when the bounded queue is full), feeds every result to a ``ThreeWay`` judge, and can produce a
verdict or a full report at any moment. It is the same engine and the same judge as
``shadowtap diff``; only the source of exchanges differs.

    async with LiveDiff("http://candidate:8080", secondary="http://secondary:8080") as live:
        for ex in captured():            # in the event loop's thread
            live.offer(ex)
        ...
        doc = live.report(fail_on=0.01)  # same shape as `shadowtap diff --report x.json`
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from replay.compare import Rules, ThreeWay, Verdict
from replay.model import NO_ANSWER, Exchange
from replay.replayer import Replayer, Results
from replay.rewrite import Rewrite, skip_reason


class LiveDiff:
    """Replays offered exchanges to a candidate (and a secondary) and judges the answers.

    ``queue_size`` bounds what waits to be replayed; ``concurrency`` what is in flight. Rules,
    alpha and min_samples are as for ``shadowtap diff`` (docs/replay.md).
    """

    def __init__(self, candidate: str, *, secondary: str | None = None,
                 rules: Rules | None = None, alpha: float = 0.05, min_samples: int = 10,
                 concurrency: int = 64, queue_size: int = 4096, timeout: float = 10.0,
                 rewrite: Rewrite | None = None) -> None:
        targets = [candidate] + ([secondary] if secondary else [])
        self.replayer = Replayer(targets, concurrency=concurrency, queue_size=queue_size,
                                 timeout=timeout, rewrite=rewrite, on_result=self._on_result)
        self.candidate = self.replayer.targets[0].url
        self.secondary = self.replayer.targets[1].url if secondary else None
        self.judge = ThreeWay(rules or Rules(), alpha=alpha, min_samples=min_samples,
                              three_way=secondary is not None)
        self.skipped: Counter = Counter()

    async def __aenter__(self) -> LiveDiff:
        await self.replayer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.replayer.close()

    def offer(self, ex: Exchange) -> bool:
        """Queue a captured exchange; False when it cannot be compared (counted by reason) or
        the queue is full (counted in ``replayer.stats.dropped``). Never waits."""
        why = skip_reason(ex, need_response=True)
        if why is not None:
            self.skipped[why] += 1
            return False
        return self.replayer.offer(ex)

    async def drain(self) -> None:
        """Wait until everything offered so far has been replayed and judged."""
        await self.replayer.drain()

    def _on_result(self, ex: Exchange, results: Results) -> None:
        c = results[self.candidate]
        s = results.get(self.secondary) if self.secondary else None
        assert ex.request is not None and ex.response is not None
        self.judge.add(
            ex.id, ex.request, ex.response,
            c.response if isinstance(c, Exchange) and c.response is not None
            else getattr(c, "kind", NO_ANSWER),
            None if s is None
            else s.response if isinstance(s, Exchange) and s.response is not None
            else getattr(s, "kind", NO_ANSWER),
        )

    def verdict(self) -> Verdict:
        """The judgement of everything compared so far (cheap enough to call every few s)."""
        return self.judge.verdict()

    def report(self, *, fail_on: float = 0.0, source: str = "live") -> dict[str, Any]:
        """A report document of the same shape as ``shadowtap diff --report FILE.json``."""
        from replay.report import build_report

        return build_report(self.verdict(), self.replayer.stats, input_path=source,
                            candidate=self.candidate, secondary=self.secondary,
                            fail_on=fail_on, skipped=dict(self.skipped))
