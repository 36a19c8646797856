"""A rollout controller as a process of its own, for the kill -9 tests.

The split is real (HAProxy's runtime API, read back and set by ``netconfig.haproxy`` in the
namespace the test's records name); the traffic is synthetic (exchanges whose backend follows
the live weight), so the process can be killed at any moment without a lab.

    python canaryctl_proc.py STATE_FILE POLICY_JSON [NETNS|-]
Exit 0 promoted, 1 rolled back (``canary run``'s codes).
"""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from appliance.canary import control as ctl
from appliance.canary import state as cstate
from appliance.canary.rollout import CanaryPolicy
from netconfig import haproxy


class Traffic:
    """``handoff.get``: ~``rate`` exchanges/s, each on the canary with the live weight's odds."""

    def __init__(self, ns: str | None, rate: float = 200.0) -> None:
        self.ns, self.gap, self.weight, self.read = ns, 1.0 / rate, 0.0, 0.0

    def get(self, timeout: float) -> Any:
        time.sleep(self.gap)
        now = time.monotonic()
        if now - self.read > 0.1:
            self.weight, self.read = haproxy.live_percent(self.ns), now
        b = "canary" if random.random() * 100 < self.weight else "prod"
        t = time.time()
        return SimpleNamespace(
            backend=b, conn=None, request=SimpleNamespace(method="GET", target="/x"),
            response=SimpleNamespace(status=200), ts_request_start=t, ts_request_end=t,
            ts_response_end=t + random.uniform(0.004, 0.006),
            completeness=SimpleNamespace(request_gaps=0, response_gaps=0))


def main() -> int:
    state_file, policy_json = sys.argv[1], sys.argv[2]
    ns = None if len(sys.argv) < 4 or sys.argv[3] == "-" else sys.argv[3]
    policy = CanaryPolicy(**json.loads(policy_json))
    rollout = ctl.ControlledRollout(policy, lambda pct: None)
    controller = ctl.Controller(rollout, name="test", store=cstate.StateStore(state_file),
                                split_get=lambda: haproxy.live_percent(ns),
                                split_set=lambda pct: haproxy.set_canary(ns, pct),
                                evidence_every=0.2)
    doc = controller.run(Traffic(ns), lambda ex: ex.backend, tick_every=0.2)
    print(json.dumps({"state": doc["state"], "restart": doc["restart"]}))
    return 0 if rollout.state == "promoted" else 1


if __name__ == "__main__":
    sys.exit(main())
