"""The appliance's YAML configuration: parsed and validated completely before anything starts.

Why so strict: a daemon that starts with a typo'd key silently ignored captures the wrong thing
for days. Every problem raises ``ConfigError`` with the key's dotted path, what is wrong and how
to fix it, e.g. ``pipeline.sinks[0].max_size: '10 parsecs' is not a size; use bytes or a number
with KiB/MiB/GiB (e.g. 256MiB)``. Unknown keys are errors, with a suggestion when one is close.

The schema (every key optional unless marked; see docs/appliance.md for the full reference)::

    source:                      # exactly one of interface / vxlan / file
      interface: cap0
      netns: st-gateway          # capture inside this network namespace
      filter: "tcp port 80"      # pcap filter language, compiled by tcpdump, run in the kernel
      skip_bare_acks: false      # true: payload-less ACKs stay in the kernel (faster; worse under loss)
      ring: {block_size: 1MiB, block_count: 64, retire_ms: 10}
      rcvbuf: 64MiB
      workers: 1                 # >1: processes sharing the port by PACKET_FANOUT_HASH
      fanout_group: auto
      vxlan: {listen: 0.0.0.0, port: 4789, vnis: [4242]}
      file: capture.pcap
      keylog: /var/lib/nginx/sslkeys.log   # NSS key log(s) the servers append to (TLS)
    extract: {port: 80, idle_timeout: 120s, max_connections: 100000, max_buffer: 4MiB}
    pipeline:
      workers: auto              # processes for sanitise, sinks, shadowing (cores - 1; 0: none)
      handoff_budget: 64MiB      # per worker, waiting in the capture before it sheds
      sample: {percent: 100}
      filters: [{host: ["*.example.com"], method: [GET], path: "^/api/", port: [80],
                 exclude: false}]
      sanitise: {enabled: true, policy: null, key_file: null, key_env: null}
      sinks:
        - {type: jsonl, path: /var/lib/shadowtap/exchanges.jsonl, max_size: 256MiB,
           max_age: 1h, keep: 24}
        - {type: pcap, path: /var/lib/shadowtap/capture.pcap, raw_unsanitised: true}
        - {type: handoff, size: 10000}
    metrics: {listen: "127.0.0.1:9617"}
    console:                     # the live web console (off unless this section is given)
      listen: "127.0.0.1:9750"   # loopback unless you say otherwise
      token_file: null           # a file holding the token; none: a random one, printed at start
      exchanges: 50000           # recent exchanges the list keeps (a bounded ring)
      rules_file: null           # noise marks from the page (default: beside shadowing.report)
      canary_status: null        # a canary's JSON status file to show (read-only)
      canary_control: null       # a canary controller's control.json: live state + pause/promote/abort
    shadowing:                   # live replay to shadows + three-way comparison (in workers)
      candidate: http://10.77.12.2:8080     # required: the build under test
      secondary: http://10.77.11.2:8080     # production's build: what differs there is noise
      concurrency: 32
      timeout: 5s
      connect_timeout: 1s
      verdict_every: 5s
      min_samples: 8
      allow_extra_fields: true   # a new field in the candidate is not a regression
      down_after: 3              # failures in a row before a shadow is marked down
      max_in_flight: 2048        # beyond: the hand-off queue fills and counts its overflow
      max_lag: 500ms             # comparisons stay this close behind capture (new connections shed)
      drain_timeout: 30s         # at stop, how long taken exchanges may still wait to be replayed
      report: /var/lib/shadowtap/report.json   # rewritten at every verdict (+ .html)
    bus:                         # scale-out: publish sanitised exchanges to Redis Streams
      url: redis://10.0.0.5:6379/0            # consumed by `shadowtap worker` anywhere
      stream: shadowtap          # streams shadowtap:0..shards-1, states in shadowtap:state
      shards: 4
      maxlen: 1000000            # entries kept per shard stream (the oldest go first)
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import strictconf
from appliance.live.capture import RingConfig, SourceSpec
from appliance.live.shadowing import ShadowingConfig, ShadowTarget


class ConfigError(Exception):
    """A configuration mistake; the message starts with the key's path and says the fix."""


_SIZE_T = (int, str)
_DUR_T = (int, float, str)
_TARGET_T = (str, {"url": str, "name": str, "label": str})
SCHEMA: dict[str, Any] = {
    "source": {
        "interface": str, "netns": str, "filter": str, "skip_bare_acks": bool,
        "ring": {"block_size": _SIZE_T, "block_count": int, "retire_ms": int},
        "rcvbuf": _SIZE_T, "workers": int, "fanout_group": (int, str),
        "vxlan": {"listen": str, "port": int, "vnis": (int, [int])},
        "file": str, "keylog": (str, [str]),
    },
    "extract": {"port": int, "idle_timeout": _DUR_T, "max_connections": int,
                "max_buffer": _SIZE_T},
    "pipeline": {
        "workers": (int, str), "handoff_budget": _SIZE_T,
        "sample": ({"percent": float}, float),
        "filters": [{"host": (str, [str]), "method": (str, [str]), "path": str,
                     "port": (int, [int]), "exclude": bool}],
        "sanitise": {"enabled": bool, "policy": str, "key_file": str, "key_env": str},
        "sinks": [{"type": str, "path": str, "max_size": _SIZE_T, "max_age": _DUR_T,
                   "keep": int, "size": int, "raw_unsanitised": bool}],
    },
    "metrics": {"listen": str},
    "console": {"listen": str, "token_file": str, "exchanges": int, "rules_file": str,
                "canary_status": str, "canary_control": str},
    "shadowing": {
        "candidate": _TARGET_T, "secondary": _TARGET_T, "concurrency": int, "timeout": _DUR_T,
        "connect_timeout": _DUR_T, "verdict_every": _DUR_T, "min_samples": int,
        "allow_extra_fields": bool, "down_after": int, "max_in_flight": int,
        "max_lag": _DUR_T, "drain_timeout": _DUR_T, "report": str,
    },
    "bus": {"url": str, "stream": str, "shards": int, "maxlen": int, "backlog": int},
}
"""Every key the appliance config knows (``strictconf``): checked before anything else, so a
typo'd section (``sourse:``) is reported as itself, not as the section it left empty."""


@dataclass
class FilterConfig:
    host: list[str] = field(default_factory=list)
    method: list[str] = field(default_factory=list)
    path: str | None = None
    port: list[int] = field(default_factory=list)
    exclude: bool = False


@dataclass
class SanitiseConfig:
    enabled: bool = True
    policy: str | None = None
    key_file: str | None = None
    key_env: str | None = None


@dataclass
class SinkConfig:
    type: str
    path: str | None = None
    max_size: int = 256 << 20
    max_age: float = 3600.0
    keep: int = 24
    size: int = 10_000
    raw_unsanitised: bool = False


@dataclass
class PipelineConfig:
    sample_percent: float = 100.0
    filters: list[FilterConfig] = field(default_factory=list)
    sanitise: SanitiseConfig = field(default_factory=SanitiseConfig)
    sinks: list[SinkConfig] = field(default_factory=list)
    workers: int | None = None
    """Worker processes for sanitise, sinks and shadowing (``None``: auto = cores - 1, at
    least 1; 0: everything in the capture process, as a log-only pipeline always runs)."""
    handoff_budget: int = 64 << 20
    """Bytes of exchanges that may wait in the capture process per worker before new
    connections are shed."""

    def resolved_workers(self) -> int:
        if self.workers is not None:
            return self.workers
        import os

        return max(1, len(os.sched_getaffinity(0)) - 1)


@dataclass
class ExtractConfig:
    port: int | None = None
    idle_timeout: float = 120.0
    max_connections: int = 100_000
    max_buffer: int = 4 << 20


@dataclass
class ApplianceConfig:
    source: SourceSpec
    workers: int = 1
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    metrics_listen: str | None = "127.0.0.1:9617"
    path: str | None = None
    netns_override: str | None = None
    """``--netns`` from the command line: wins over the file's source.netns, also on reload."""
    shadowing: ShadowingConfig | None = None
    bus: Any = None
    """``appliance.live.bus.BusConfig``: publish sanitised exchanges to Redis Streams."""
    console: Any = None
    """``appliance.console.ConsoleConfig``: the live web console (None: off)."""


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B?|B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "ki": 1024, "m": 10**6, "mb": 10**6,
          "mib": 1 << 20, "mi": 1 << 20, "g": 10**9, "gb": 10**9, "gib": 1 << 30, "gi": 1 << 30,
          "t": 10**12, "tb": 10**12, "tib": 1 << 40, "ti": 1 << 40}
_DUR = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DUR_UNITS = {None: 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


class _Reader:
    """Reads one mapping, remembering which keys were used so leftovers can be reported."""

    def __init__(self, data: Any, where: str) -> None:
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(f"{where or 'config'}: expected a mapping (key: value), "
                              f"got {type(data).__name__}")
        self.d = data
        self.where = where
        self.used: set[str] = set()

    def key(self, k: str) -> str:
        return f"{self.where}.{k}" if self.where else k

    def get(self, k: str, default: Any = None) -> Any:
        self.used.add(k)
        return self.d.get(k, default)

    def has(self, k: str) -> bool:
        return k in self.d

    def done(self) -> None:
        for k in self.d:
            if k not in self.used:
                raise ConfigError(strictconf.unknown_key_message(self.key(str(k)), k, self.used))

    def str_(self, k: str, default: str | None = None) -> str | None:
        v = self.get(k, default)
        if v is not None and not isinstance(v, str):
            raise ConfigError(f"{self.key(k)}: expected a string, got {v!r}")
        return v

    def bool_(self, k: str, default: bool) -> bool:
        v = self.get(k, default)
        if not isinstance(v, bool):
            raise ConfigError(f"{self.key(k)}: expected true or false, got {v!r}")
        return v

    def int_(self, k: str, default: int | None, lo: int | None = None,
             hi: int | None = None) -> int | None:
        v = self.get(k, default)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, int):
            raise ConfigError(f"{self.key(k)}: expected a whole number, got {v!r}")
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            rng = f"{lo}..{hi}" if hi is not None else f">= {lo}"
            raise ConfigError(f"{self.key(k)}: {v} is out of range; use {rng}")
        return v

    def size(self, k: str, default: int) -> int:
        v = self.get(k, default)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
        m = _SIZE.match(str(v)) if isinstance(v, str) else None
        if not m:
            raise ConfigError(f"{self.key(k)}: {v!r} is not a size; use bytes or a number with "
                              "KiB/MiB/GiB (e.g. 256MiB)")
        n = int(float(m.group(1)) * _UNITS[(m.group(2) or "").lower()])
        if n <= 0:
            raise ConfigError(f"{self.key(k)}: size must be positive")
        return n

    def duration(self, k: str, default: float) -> float:
        v = self.get(k, default)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0:
            return float(v)
        m = _DUR.match(v) if isinstance(v, str) else None
        if not m or float(m.group(1)) <= 0:
            raise ConfigError(f"{self.key(k)}: {v!r} is not a duration; use seconds or a number "
                              "with ms/s/m/h/d (e.g. 30s, 1h)")
        return float(m.group(1)) * _DUR_UNITS[m.group(2)]

    def list_(self, k: str, kind: type) -> list[Any]:
        v = self.get(k, [])
        if v is None:
            return []
        if isinstance(v, (str, int)) and not isinstance(v, bool):
            v = [v]
        if not isinstance(v, list) or not all(isinstance(x, kind) and not isinstance(x, bool)
                                               for x in v):
            raise ConfigError(f"{self.key(k)}: expected a list of {kind.__name__}s, got {v!r}")
        return list(v)

    def sub(self, k: str) -> _Reader:
        return _Reader(self.get(k), self.key(k))


def parse(data: Any, path: str | None = None) -> ApplianceConfig:
    """Validate a parsed YAML document; raises ConfigError naming the first bad key."""
    strictconf.check(data, SCHEMA, error=ConfigError)
    top = _Reader(data, "")
    src, workers = _source(top.sub("source"))
    ext = _extract(top.sub("extract"))
    pipe = _pipeline(top.sub("pipeline"), src)
    m = top.sub("metrics")
    listen = m.get("listen", "127.0.0.1:9617")
    if listen is not None and (not isinstance(listen, str) or not _hostport(listen)):
        raise ConfigError(f"metrics.listen: {listen!r} is not HOST:PORT; use e.g. "
                          "127.0.0.1:9617 (or null to turn metrics off)")
    m.done()
    shadowing = _shadowing(top.sub("shadowing")) if top.get("shadowing") is not None else None
    bus = _bus(top.sub("bus")) if top.get("bus") is not None else None
    console = _console(top.sub("console")) if top.get("console") is not None else None
    top.done()
    if workers > 1 and src.kind == "file":
        raise ConfigError("source.workers: a capture file is read by one worker; set workers: 1")
    if shadowing is not None:
        if workers > 1:
            raise ConfigError("shadowing: the live engine takes one capture process; scale the "
                              "comparison with pipeline.workers instead; set source.workers: 1")
        if not any(sk.type == "handoff" for sk in pipe.sinks):
            pipe.sinks.append(SinkConfig(type="handoff"))  # what shadowing consumes
    if bus is not None and (workers > 1 or pipe.workers == 0):
        raise ConfigError("bus: exchanges are published by the worker processes; set "
                          "source.workers: 1 and pipeline.workers to auto or a count")
    return ApplianceConfig(source=src, workers=workers, extract=ext, pipeline=pipe,
                           metrics_listen=listen, path=path, shadowing=shadowing, bus=bus,
                           console=console)


def _console(r: _Reader) -> Any:
    from appliance.console import ConsoleConfig

    c = ConsoleConfig()
    listen = r.str_("listen", c.listen) or c.listen
    if not _hostport(listen):
        raise ConfigError(f"console.listen: {listen!r} is not HOST:PORT; use e.g. "
                          "127.0.0.1:9750")
    c.listen = listen
    c.token_file = r.str_("token_file")
    if c.token_file is not None and not Path(c.token_file).is_file():
        raise ConfigError(f"console.token_file: {c.token_file!r} is not a readable file; put "
                          "a token of 16 or more characters in it, or leave the key out for a "
                          "random token printed at start")
    c.exchanges = r.int_("exchanges", c.exchanges, 100, 10_000_000) or c.exchanges
    c.rules_file = r.str_("rules_file")
    if c.rules_file is not None:
        parent = Path(c.rules_file).parent
        if parent.exists() and not parent.is_dir():
            raise ConfigError(f"console.rules_file: {parent} is not a directory")
    c.canary_status = r.str_("canary_status")
    c.canary_control = r.str_("canary_control")
    r.done()
    return c


def _bus(r: _Reader) -> Any:
    from appliance.live.bus import BusConfig

    url = r.str_("url")
    if not url or not url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(f"bus.url: {url!r}; use redis://HOST:PORT/DB or unix:///path/to/sock")
    b = BusConfig(url=url)
    b.stream = r.str_("stream", "shadowtap") or "shadowtap"
    b.shards = r.int_("shards", 4, 1, 1024) or 4
    b.maxlen = r.int_("maxlen", 1_000_000, 1000, 10**9) or 1_000_000
    b.backlog = r.int_("backlog", 100_000, 100, 10**8) or 100_000
    r.done()
    return b


def _shadow_target(r: _Reader, role: str, required: bool) -> ShadowTarget | None:
    from replay.errors import InputError
    from replay.rewrite import Target

    v = r.get(role)
    if v is None:
        if required:
            raise ConfigError(f"shadowing.{role}: required; the URL of the shadow running the "
                              "build under test, e.g. http://10.77.12.2:8080")
        return None
    name = "shadow-2" if role == "candidate" else "shadow-1"
    label = ""
    if isinstance(v, dict):
        tr = _Reader(v, r.key(role))
        url = tr.str_("url")
        name = tr.str_("name", name) or name
        label = tr.str_("label", "") or ""
        tr.done()
    else:
        url = v
    if not isinstance(url, str) or not url:
        raise ConfigError(f"shadowing.{role}: expected a URL (http://HOST:PORT) or "
                          "{url: ..., name: ...}")
    try:
        t = Target.parse(url)
    except InputError as e:
        raise ConfigError(f"shadowing.{role}: {str(e).replace('--target ', '')}") from None
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name):
        raise ConfigError(f"shadowing.{role}.name: {name!r}; use letters, digits, . _ -")
    return ShadowTarget(name=name, url=t.url, role=role, label=label or role)


def _shadowing(r: _Reader) -> ShadowingConfig:
    cand = _shadow_target(r, "candidate", True)
    assert cand is not None
    sec = _shadow_target(r, "secondary", False)
    if sec is not None and (sec.url == cand.url or sec.name == cand.name):
        raise ConfigError("shadowing.secondary: must be another shadow than the candidate "
                          "(its own URL and name)")
    c = ShadowingConfig(candidate=cand, secondary=sec)
    c.concurrency = r.int_("concurrency", 32, 1, 4096) or 32
    c.timeout = r.duration("timeout", 5.0)
    c.connect_timeout = r.duration("connect_timeout", 1.0)
    c.verdict_every = r.duration("verdict_every", 5.0)
    c.min_samples = r.int_("min_samples", 8, 1, 1_000_000) or 8
    c.allow_extra_fields = r.bool_("allow_extra_fields", True)
    c.down_after = r.int_("down_after", 3, 1, 1000) or 3
    c.max_in_flight = r.int_("max_in_flight", 2048, 1, 1_000_000) or 2048
    c.max_lag = r.duration("max_lag", 0.5)
    if c.max_lag <= 0:
        raise ConfigError("shadowing.max_lag: must be above 0 (e.g. 500ms): how far behind "
                          "the capture comparisons may fall before new connections are shed")
    c.drain_timeout = r.duration("drain_timeout", 30.0)
    c.report = r.str_("report")
    if c.report is not None:
        parent = Path(c.report).parent
        if parent.exists() and not parent.is_dir():
            raise ConfigError(f"shadowing.report: {parent} is not a directory")
    r.done()
    return c


def _hostport(s: str) -> bool:
    host, sep, port = s.rpartition(":")
    return bool(sep) and port.isdigit() and 0 <= int(port) < 65536 and bool(host)


def _source(r: _Reader) -> tuple[SourceSpec, int]:
    kinds = [k for k in ("interface", "vxlan", "file") if r.has(k)]
    if len(kinds) != 1:
        raise ConfigError("source: give exactly one of interface (a mirror port), vxlan (a "
                          f"VXLAN collector) or file (a capture file); found {kinds or 'none'}")
    spec = SourceSpec(kind=kinds[0])
    spec.netns = r.str_("netns")
    if spec.netns is not None and not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", spec.netns):
        raise ConfigError(f"source.netns: {spec.netns!r} is not a namespace name")
    spec.bpf = r.str_("filter")
    spec.keylog = r.list_("keylog", str)
    for p in spec.keylog:
        if not p or "\0" in p:
            raise ConfigError(f"source.keylog: {p!r} is not a path")
    skip = r.get("skip_bare_acks")
    if skip is not None and not isinstance(skip, bool):
        raise ConfigError(f"source.skip_bare_acks: expected true or false, got {skip!r}")
    spec.skip_bare_acks = bool(skip)
    spec.rcvbuf = r.size("rcvbuf", 64 << 20)
    workers = r.int_("workers", 1, 1, 64) or 1
    fg = r.get("fanout_group", "auto")
    if fg != "auto" and (isinstance(fg, bool) or not isinstance(fg, int) or not 0 <= fg < 65536):
        raise ConfigError(f"source.fanout_group: {fg!r} must be auto or 0..65535")
    ring = r.sub("ring")
    spec.ring = RingConfig(block_size=ring.size("block_size", 1 << 20),
                           block_count=ring.int_("block_count", 64, 2, 1 << 16) or 64,
                           retire_ms=ring.int_("retire_ms", 10, 1, 10_000) or 10)
    ring.done()
    if spec.kind == "interface":
        spec.interface = r.str_("interface")
        if not spec.interface or len(spec.interface) > 15 or "/" in spec.interface:
            raise ConfigError(f"source.interface: {spec.interface!r} is not an interface name "
                              "(at most 15 characters, e.g. cap0)")
        from appliance.live.capture import CaptureError

        try:
            spec.ring.validate()
        except CaptureError as e:
            raise ConfigError(f"source.ring: {e}") from None
        if workers > 1:
            spec.fanout_group = (hash_group(spec.netns, spec.interface) if fg == "auto"
                                 else int(fg))
        if spec.bpf:
            from appliance.live.capture import CaptureError, check_live_filter, compile_bpf

            try:
                check_live_filter(spec.bpf)
                compile_bpf(spec.bpf)
            except CaptureError as e:
                raise ConfigError(f"source.filter: {e}") from None
    elif spec.kind == "vxlan":
        v = r.sub("vxlan")
        spec.listen = v.str_("listen", "0.0.0.0") or "0.0.0.0"
        spec.port = v.int_("port", 4789, 1, 65535) or 4789
        spec.vnis = v.list_("vnis", int)
        for n in spec.vnis:
            if not 0 <= n < 1 << 24:
                raise ConfigError(f"source.vxlan.vnis: {n} is not a VNI (0..16777215)")
        v.done()
        if spec.bpf:
            raise ConfigError("source.filter: a kernel filter applies to interfaces only; for "
                              "VXLAN use vxlan.vnis and pipeline.filters")
    else:
        spec.path = r.str_("file")
        if not spec.path or not Path(spec.path).is_file():
            raise ConfigError(f"source.file: {spec.path!r} is not a readable file")
    r.done()
    return spec, workers


def hash_group(netns: str | None, interface: str) -> int:
    """A fanout group id derived from where we capture, so that workers of one appliance agree
    on it and two appliances on different ports never collide by accident."""
    import zlib

    return zlib.crc32(f"{netns}/{interface}".encode()) & 0xFFFF


def _extract(r: _Reader) -> ExtractConfig:
    e = ExtractConfig(
        port=r.int_("port", None, 1, 65535),
        idle_timeout=r.duration("idle_timeout", 120.0),
        max_connections=r.int_("max_connections", 100_000, 1) or 100_000,
        max_buffer=r.size("max_buffer", 4 << 20),
    )
    r.done()
    return e


def _pipeline(r: _Reader, src: SourceSpec) -> PipelineConfig:
    p = PipelineConfig()
    s = r.get("sample")
    if isinstance(s, dict):
        sr = _Reader(s, "pipeline.sample")
        pct = sr.get("percent", 100)
        sr.done()
    else:
        pct = 100 if s is None else s
    if isinstance(pct, bool) or not isinstance(pct, (int, float)) or not 0 < pct <= 100:
        raise ConfigError(f"pipeline.sample.percent: {pct!r} must be a number in (0, 100]")
    p.sample_percent = float(pct)
    w = r.get("workers", "auto")
    if w == "auto" or w is None:
        p.workers = None
    elif isinstance(w, bool) or not isinstance(w, int) or not 0 <= w <= 256:
        raise ConfigError(f"pipeline.workers: {w!r}; use auto, 0 (no worker processes) or a "
                          "count up to 256")
    else:
        p.workers = w
    p.handoff_budget = r.size("handoff_budget", 64 << 20)
    if p.handoff_budget < 1 << 20:
        raise ConfigError("pipeline.handoff_budget: at least 1MiB (e.g. 64MiB)")
    flist = r.get("filters", [])
    if not isinstance(flist, list):
        raise ConfigError("pipeline.filters: expected a list of filters, e.g. "
                          "[{method: [GET]}, {path: '^/api/'}]")
    for i, fd in enumerate(flist):
        fr = _Reader(fd, f"pipeline.filters[{i}]")
        f = FilterConfig(host=fr.list_("host", str), method=[m.upper() for m in
                                                             fr.list_("method", str)],
                         path=fr.str_("path"), port=fr.list_("port", int),
                         exclude=fr.bool_("exclude", False))
        if f.path is not None:
            try:
                re.compile(f.path)
            except re.error as e:
                raise ConfigError(f"pipeline.filters[{i}].path: bad regular expression "
                                  f"{f.path!r} ({e})") from None
        for port in f.port:
            if not 0 < port < 65536:
                raise ConfigError(f"pipeline.filters[{i}].port: {port} is not a port (1..65535)")
        fr.done()
        if not (f.host or f.method or f.path or f.port):
            raise ConfigError(f"pipeline.filters[{i}]: an empty filter; give host, method, "
                              "path or port")
        p.filters.append(f)
    sr = r.sub("sanitise")
    p.sanitise = SanitiseConfig(enabled=sr.bool_("enabled", True), policy=sr.str_("policy"),
                                key_file=sr.str_("key_file"), key_env=sr.str_("key_env"))
    sr.done()
    if p.sanitise.enabled:
        _check_sanitise(p.sanitise)
    sinks = r.get("sinks", [])
    if not isinstance(sinks, list) or not sinks:
        raise ConfigError("pipeline.sinks: give at least one sink, e.g. "
                          "[{type: jsonl, path: /var/lib/shadowtap/exchanges.jsonl}]")
    paths: set[str] = set()
    for i, sd in enumerate(sinks):
        sk = _Reader(sd, f"pipeline.sinks[{i}]")
        t = sk.str_("type")
        if t not in ("jsonl", "pcap", "handoff"):
            raise ConfigError(f"pipeline.sinks[{i}].type: {t!r}; use jsonl, pcap or handoff")
        c = SinkConfig(type=t)
        if t in ("jsonl", "pcap"):
            c.path = sk.str_("path")
            if not c.path:
                raise ConfigError(f"pipeline.sinks[{i}].path: a {t} sink needs a file path")
            if c.path in paths:
                raise ConfigError(f"pipeline.sinks[{i}].path: {c.path} is used by another sink")
            paths.add(c.path)
            problem = writable_problem(c.path)
            if problem:
                raise ConfigError(f"pipeline.sinks[{i}].path: cannot write {c.path}: {problem}")
            c.max_size = sk.size("max_size", 256 << 20)
            c.max_age = sk.duration("max_age", 3600.0)
            c.keep = sk.int_("keep", 24, 1, 100_000) or 24
        if t == "pcap":
            c.raw_unsanitised = sk.bool_("raw_unsanitised", False)
            if p.sanitise.enabled and not c.raw_unsanitised:
                raise ConfigError(
                    f"pipeline.sinks[{i}]: a pcap sink writes raw packets, which the sanitise "
                    "stage cannot mask; set raw_unsanitised: true to accept that, or remove it")
        if t == "handoff":
            c.size = sk.int_("size", 10_000, 1, 10_000_000) or 10_000
        sk.done()
        p.sinks.append(c)
    r.done()
    return p


def writable_problem(path: str | Path) -> str | None:
    """Why a file at ``path`` could not be created (None when it can), without creating it.

    The nearest existing ancestor must be a directory we may write into (missing directories
    below it are created when the sink opens)."""
    p = Path(path)
    if p.exists():
        if p.is_dir():
            return "it is a directory; give a file name"
        return None if os.access(p, os.W_OK) else "permission denied"
    parent = p.parent
    while not parent.exists():
        if parent == parent.parent:
            break
        parent = parent.parent
    if not parent.is_dir():
        return f"{parent} is not a directory"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"directory {parent} is not writable (permission denied)"
    import tempfile

    try:  # what the kernel says, also for root (read-only mounts, /proc, /sys, full disks)
        fd, probe = tempfile.mkstemp(prefix=".shadowtap-probe-", dir=parent)
    except OSError as e:
        return f"cannot create files in {parent} ({e.strerror or e})"
    os.close(fd)
    os.unlink(probe)
    return None


def _check_sanitise(s: SanitiseConfig) -> None:
    """Load the policy and key now, so a bad policy stops the start, not the first exchange."""
    from replay.errors import InputError
    from replay.sanitise import Policy, load_key

    try:
        pol = Policy.load(s.policy)
    except InputError as e:
        raise ConfigError(f"pipeline.sanitise.policy: {e}") from None
    if s.key_file or s.key_env:
        try:
            load_key(s.key_file, s.key_env)
        except InputError as e:
            key = "key_file" if s.key_file else "key_env"
            raise ConfigError(f"pipeline.sanitise.{key}: {e}") from None
    elif pol.needs_key and not (pol.key_file or pol.key_env):
        raise ConfigError("pipeline.sanitise: the policy makes pseudonyms and needs a key; set "
                          "pipeline.sanitise.key_file (a file of >= 16 random bytes) or key_env, "
                          "or enabled: false to keep exchanges unmasked")


def load(path: str | Path) -> ApplianceConfig:
    """Read and validate a config file."""
    p = Path(path)
    data = strictconf.load_yaml(p, what="config file", error=ConfigError)
    try:
        return parse(data, str(p))
    except ConfigError as e:
        raise ConfigError(f"{p}: {e}") from None
