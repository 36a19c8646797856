"""The demo's path: the default lab (under a private prefix), an in-process appliance on the
lab's mirror port, and exchanges taken live from the hand-off queue."""

from __future__ import annotations

from pathlib import Path

import pytest
from apphelpers import Server, check_exactly_once, run_load

from appliance.live import config
from appliance.live.daemon import Appliance
from netconfig import lab

pytestmark = pytest.mark.root
VIP = "10.77.100.10"


def test_appliance_on_the_lab_mirror_port_feeds_the_handoff_queue(running_lab: lab.LabSpec,
                                                                  tmp_path: Path) -> None:
    gw = running_lab.ns("gateway")
    cfg = config.parse({
        "source": {"interface": "cap0", "netns": gw, "filter": "tcp port 80"},
        "extract": {"port": 80},
        "pipeline": {"sanitise": {"enabled": False},
                     "sinks": [{"type": "handoff", "size": 5000},
                               {"type": "jsonl", "path": str(tmp_path / "ex.jsonl")}]},
        "metrics": {"listen": None}})
    app = Appliance(cfg).start()
    try:
        with Server(running_lab.ns("prod"), addr=VIP):
            load = run_load(running_lab.ns("client"), "lab", connections=20, per_conn=10,
                            addr=VIP)
        assert not load.failures
        assert app.handoff is not None
        got = []
        while len(got) < 200 and (ex := app.handoff.get(timeout=10)) is not None:
            got.append(ex)
    finally:
        app.stop()
    check_exactly_once(load, got)
    assert app.snapshots()[0]["kernel_drops"] == 0
