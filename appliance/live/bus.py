"""Scale-out over Redis Streams: capture nodes publish sanitised exchanges, workers anywhere
consume them, and one verdict merges every worker's state.

Why Redis Streams: consumer groups give exactly what a fleet of workers needs (each entry to
one consumer, acknowledged when done, pending entries kept for a consumer that died), with a
bounded length (``MAXLEN ~``), from Debian's ``redis-server``: a real broker, not a home-made
one. The layout:

- ``<stream>:<shard>`` (``shards`` streams): an exchange's JSONL line goes to the shard its
  connection hashes to (the hand-off's hash), so one connection's exchanges stay in order in
  one stream. A worker ``i`` of ``n`` consumes the shards ``s`` with ``s % n == i``, as the
  stable consumer ``worker-i``: restarted after a kill, it first takes back its own pending
  entries (those it had read but not acknowledged), then new ones, so a killed worker loses
  nothing.
- ``<stream>:state`` (a hash): each worker's mergeable comparison state under its name; the
  verdict (``merged_report``) is computed from all of them, by any worker or by
  ``shadowtap worker --report-only``. Entries are acknowledged only after the state that
  covers them is written, so a killed worker's restart compares them again and the verdict
  counts each exchange once.

Only sanitised exchanges are published: the publishing sink runs in the capture node's worker
processes after the sanitise stage, like the logs. A broker that goes away is survived: the
publisher keeps a bounded backlog (and counts what it must drop), the consumer retries; both
say so in the log, once, with the address.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any

import orjson

from appliance.live.handoff import conn_hash

log = logging.getLogger("shadowtap.bus")


@dataclass
class BusConfig:
    url: str
    stream: str = "shadowtap"
    shards: int = 4
    maxlen: int = 1_000_000
    """Entries kept per shard stream (approximately: ``MAXLEN ~``); the oldest go first."""
    backlog: int = 100_000
    """Exchanges a publisher keeps while the broker is unreachable, then drops (counted)."""

    def key(self, shard: int) -> str:
        return f"{self.stream}:{shard}"

    @property
    def state_key(self) -> str:
        return f"{self.stream}:state"


def connect(url: str) -> Any:
    import redis

    return redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=2)


class BusSink:
    """The worker pipeline's publishing sink (after sanitise): lines to the shard streams,
    in batches, never blocking for long; a lost broker costs a bounded backlog, counted."""

    name = "bus"

    def __init__(self, cfg: BusConfig, stats: Any) -> None:
        from replay.formats.jsonl import exchange_line

        self.cfg = cfg
        self.stats = stats
        self.r = connect(cfg.url)
        self.buf: list[tuple[int, bytes]] = []
        self.published = 0
        self.down_since: float | None = None
        self.retry_at = 0.0
        self._line = exchange_line

    def process(self, ex: Any) -> Any:
        cid = ex.id.rpartition(".")[0].encode()
        self.buf.append((conn_hash(cid) % self.cfg.shards, self._line(ex)))
        if len(self.buf) >= 500 and self.down_since is None:
            self.flush()
        elif len(self.buf) > self.cfg.backlog:
            drop = len(self.buf) - self.cfg.backlog
            del self.buf[:drop]
            self.stats.drop("bus_unreachable", drop)
        return ex

    def flush(self) -> None:
        if not self.buf or (self.down_since is not None and time.monotonic() < self.retry_at):
            return
        import redis

        p = self.r.pipeline(transaction=False)
        for shard, line in self.buf:
            p.xadd(self.cfg.key(shard), {b"x": line}, maxlen=self.cfg.maxlen,
                   approximate=True)
        try:
            p.execute()
        except redis.RedisError as e:  # down, timed out, out of memory...
            if len(self.buf) > self.cfg.backlog:
                drop = len(self.buf) - self.cfg.backlog
                del self.buf[:drop]
                self.stats.drop("bus_unreachable", drop)
            if self.down_since is None:
                self.down_since = time.monotonic()
                log.error("bus: redis at %s unreachable (%s); keeping up to %d exchanges "
                          "until it is back", self.cfg.url, e, self.cfg.backlog)
            self.retry_at = time.monotonic() + 1.0
            return
        if self.down_since is not None:
            log.warning("bus: redis at %s is back after %.0f s; %d exchanges published",
                        self.cfg.url, time.monotonic() - self.down_since, len(self.buf))
            self.down_since = None
        self.published += len(self.buf)
        self.buf = []

    def tick(self, now: float) -> None:
        self.flush()

    def close(self) -> None:
        for _ in range(20):
            self.flush()
            if not self.buf:
                return
            time.sleep(0.25)
        self.stats.drop("bus_unreachable", len(self.buf))
        log.error("bus: %d exchanges could not be published at stop", len(self.buf))


class BusConsumer:
    """One ``shadowtap worker``: its shards of the bus -> ``Shadower`` -> state in the bus.

    ``group`` is the consumer group (one per independent verdict); ``index``/``of`` pick the
    shards. Runs in an event loop; redis calls go to a thread so the loop keeps replaying.
    """

    def __init__(self, cfg: BusConfig, shadowing: Any, *, index: int = 0, of: int = 1,
                 group: str = "shadowtap-workers", batch: int = 500) -> None:
        from appliance.live.shadowing import Shadower

        self.cfg = cfg
        self.index = index
        self.of = of
        self.group = group
        self.name = f"worker-{index}"
        self.shards = [s for s in range(cfg.shards) if s % of == index]
        self.batch = batch
        self.shadowing = shadowing
        self.shadower = Shadower(shadowing, shard=index)
        self.r = connect(cfg.url)
        self.consumed = 0
        self.acked = 0
        self.reclaimed = 0
        self.stop = asyncio.Event()
        self._down_since: float | None = None
        self._unacked: dict[bytes, list[bytes]] = {}
        self.state_key = f"{cfg.state_key}:{group}"
        self._field = f"{self.name}@{int(time.time() * 1000)}"
        """One hash field per run of this worker: a restart adds its own, the states of earlier
        runs (their comparisons, all acknowledged) stay in the verdict."""

    def _groups(self) -> None:
        import redis

        for s in self.shards:
            try:
                self.r.xgroup_create(self.cfg.key(s), self.group, id="0", mkstream=True)
            except redis.ResponseError as e:
                if "BUSYGROUP" not in str(e):
                    raise

    def _read(self, pending: bool) -> list[tuple[bytes, list[tuple[bytes, dict]]]]:
        if pending:
            return self._pending()
        streams = {self.cfg.key(s): ">" for s in self.shards}
        return self.r.xreadgroup(self.group, self.name, streams, count=self.batch,
                                 block=500) or []

    def _pending(self) -> list[tuple[bytes, list[tuple[bytes, dict]]]]:
        """Every entry delivered to this consumer and not acknowledged (a previous run's),
        page by page."""
        out = []
        for s in self.shards:
            key = self.cfg.key(s)
            last = "0"
            items: list[tuple[bytes, dict]] = []
            while True:
                got = self.r.xreadgroup(self.group, self.name, {key: last}, count=1000)
                page = got[0][1] if got else []
                if not page:
                    break
                items.extend(page)
                last = page[-1][0]
            if items:
                out.append((key.encode(), items))
        return out

    def _call(self, fn: Any, *a: Any) -> Any:
        """A redis call with the broker-down story told once."""
        import redis

        try:
            out = fn(*a)
        except (redis.ConnectionError, redis.TimeoutError) as e:
            if self._down_since is None:
                self._down_since = time.monotonic()
                log.error("worker %d: redis at %s unreachable (%s); retrying", self.index,
                          self.cfg.url, e)
            raise
        if self._down_since is not None:
            log.warning("worker %d: redis at %s is back after %.0f s", self.index,
                        self.cfg.url, time.monotonic() - self._down_since)
            self._down_since = None
        return out

    async def _take(self, entries: list[tuple[bytes, list[tuple[bytes, dict]]]]) -> None:
        from replay.formats.jsonl import exchange_from_record

        sh = self.shadower
        for stream, items in entries:
            ids = self._unacked.setdefault(stream, [])
            for eid, fields in items:
                line = fields.get(b"x") if fields else None  # None: trimmed by MAXLEN
                if line:
                    try:
                        ex = exchange_from_record(orjson.loads(line))
                    except Exception:
                        sh._skip("bad_record")
                    else:
                        sh.take(ex)
                        self.consumed += 1
                ids.append(eid)
        await sh.settle()

    def publish_state(self, st: dict[str, Any] | None = None) -> None:
        """This worker's state to the bus, then the acknowledgement of every entry it covers:
        a kill before the state is written leaves those entries pending, and the restarted
        worker compares them again (nothing lost, nothing counted twice). ``st``: the
        shadower's ``state()``, taken on the loop's thread by a caller that publishes from
        another (the state is the loop's)."""
        if st is None:
            st = self.shadower.state()
        st["bus"] = {"consumed": self.consumed, "acked": self.acked,
                     "reclaimed": self.reclaimed, "shards": self.shards}
        # The state and the acknowledgements in one transaction: all or nothing.
        p = self.r.pipeline(transaction=True)
        p.hset(self.state_key, self._field, orjson.dumps(st, default=str))
        n = 0
        for stream, ids in self._unacked.items():
            for k in range(0, len(ids), 1000):
                p.xack(stream, self.group, *ids[k:k + 1000])
            n += len(ids)
        self._call(p.execute)
        self.acked += n
        self._unacked = {}

    async def run(self, *, until_idle: float | None = None) -> None:
        """Consume until ``stop`` is set (or, with ``until_idle``, until the shards have been
        empty that long: for tests and catch-up runs)."""
        sh = await self.shadower.start()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._call, self._groups)
        pend = await asyncio.to_thread(self._call, self._read, True)
        n = sum(len(i) for _, i in pend)
        if n:
            self.reclaimed += n
            log.info("worker %d: taking back %d pending exchanges of a previous run",
                     self.index, n)
            await self._take(pend)
        last_state = 0.0
        idle_since = time.monotonic()
        while not self.stop.is_set():
            try:
                got = await asyncio.to_thread(self._call, self._read, False)
            except Exception as e:
                if "NOGROUP" in str(e):  # a broker restarted empty: make the groups again
                    with contextlib.suppress(Exception):
                        await asyncio.to_thread(self._call, self._groups)
                await asyncio.sleep(1.0)
                continue
            if got:
                idle_since = time.monotonic()
                await self._take(got)
            elif until_idle is not None and time.monotonic() - idle_since > until_idle:
                break
            sh.adapt()
            if time.monotonic() - last_state > self.shadowing.verdict_every:
                last_state = time.monotonic()
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(self.publish_state, sh.state())
        await sh.drain(self.shadowing.drain_timeout)
        await sh.close()
        with contextlib.suppress(Exception):
            await asyncio.to_thread(self.publish_state, sh.state())


def merged_report(cfg: BusConfig, shadowing: Any, *, group: str = "shadowtap-workers",
                  source: str = "bus") -> tuple[dict, Any]:
    """One report from every worker's state in the bus (one consumer group)."""
    from appliance.live.shadowing import live_report

    r = connect(cfg.url)
    states = [orjson.loads(v) for v in r.hgetall(f"{cfg.state_key}:{group}").values()]
    doc, v = live_report(shadowing, states, source=source)
    doc["bus"] = {"workers": len(states), "stream": cfg.stream, "shards": cfg.shards,
                  "consumed": sum(s.get("bus", {}).get("consumed", 0) for s in states),
                  "reclaimed": sum(s.get("bus", {}).get("reclaimed", 0) for s in states)}
    return doc, v
