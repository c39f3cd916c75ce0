"""`wardtap top` at 80 to 100 columns: every label whole, values cut with an ellipsis."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from appliance.panel import console as c

ANSWER = {
    "ok": True, "pid": 812, "mode": "enforce", "datapath": "inline", "uptime_s": 5230.4,
    "policy": {"name": "demo-ward-4b", "version": 3, "sha256": "ab" * 32, "generation": 7},
    "counters": {"packets": 123456789, "bytes": 98765432100, "allowed": 123000000,
                 "denied": 456789, "malformed": 12, "flows_active": 1234,
                 "flows_created": 456789, "devices": 42},
    "source": {"kernel_drops": 0},
    "rate": {"packets_per_s": 12345.6, "bytes_per_s": 9876543.2, "window_s": 5.0,
             "history": [1.0, 2.0, 3.0] * 20},
    "broker": {"configured": True, "connected": True, "spool_depth": 0,
               "url": "mqtts://broker.a-long-hospital-name.example:8883"},
    "violations": {"seen": 84, "recent": []},
}


@pytest.mark.parametrize("width", [80, 90, 100])
def test_top_keeps_its_labels(width: int) -> None:
    buf = io.StringIO()
    console = Console(file=buf, width=width, height=30, color_system=None)
    console.print(c.dashboard(c.Snapshot("ok", c.view(ANSWER)), console, "/run/x.sock"))
    text = buf.getvalue()
    for label in ("packets/s", "kernel drops", "malformed", "health", "policy", "datapath",
                  "uptime", "broker", "violations"):
        assert f"{label} " in text, (label, text)
    assert max(len(line) for line in text.splitlines()) <= width
