"""A flood of new flows (a port scan) must not starve allowed flows or grow memory."""

from __future__ import annotations

from array import array

from appliance.policy.model import compile_policy, parse_policy
from demoward import frames as P
from fastpath import REASON_NAMES, VERDICT_NAMES, Classifier

POLICY = """
[groups.pumps]
ip = ["10.40.1.0/24"]
[groups.server]
ip = ["10.20.0.15"]
[[rules]]
name = "pump-tls"
from = "pumps"
to = "server"
proto = "tcp"
ports = [443]
"""
PUMP, SERVER, SCANNER = "10.40.1.10", "10.20.0.15", "10.40.9.66"
PUMP_MAC, ROUTER_MAC, SCAN_MAC = "00:1a:2b:00:00:01", "00:00:0c:00:00:fe", "02:66:66:00:00:01"


def frame(src_mac: str, src: str, dst: str, sport: int, dport: int, flags: str) -> bytes:
    return P.ether(ROUTER_MAC, src_mac, 0x0800,
                   P.ipv4(src, dst, 6, P.tcp(sport, dport, flags=flags)))


def test_scan_does_not_starve_an_allowed_flow() -> None:
    clf = Classifier(flow_capacity=1024, device_capacity=64, event_capacity=256, seed=7)
    clf.set_policy(compile_policy(parse_policy(POLICY)))
    clf.set_mode("enforce")
    memory = clf.memory_bytes
    allowed = frame(PUMP_MAC, PUMP, SERVER, 40000, 443, "A")
    # 50 batches: each has 1000 scan SYNs to new ports/hosts, then one packet of the pump flow.
    pump_verdicts = []
    for batch in range(50):
        frames = [frame(SCAN_MAC, SCANNER, f"10.20.{(batch * 1000 + i) // 60000}.{i % 250}",
                        50000, 1 + (batch * 1000 + i) % 65000, "S") for i in range(1000)]
        frames.append(allowed)
        buf = b"".join(frames)
        offsets = array("q", [0] * len(frames))
        pos = 0
        for i, f in enumerate(frames):
            offsets[i] = pos
            pos += len(f)
        n = len(frames)
        verdicts, reasons, rules = array("B", bytes(n)), array("B", bytes(n)), array("H", [0] * n)
        clf.classify(buf, offsets, array("I", [len(f) for f in frames]),
                     array("Q", [10**18 + batch * 10**6 + i for i in range(n)]),
                     array("H", [1] * n), verdicts, reasons, rules)
        clf.drain(1 << 20)
        pump_verdicts.append((VERDICT_NAMES[verdicts[-1]], REASON_NAMES[reasons[-1]]))
        assert all(VERDICT_NAMES[v] == "deny" for v in verdicts[:-1])
    assert set(pump_verdicts) == {("allow", "rule")}
    stats = clf.stats()
    assert stats["flows_created"] >= 50_000 and stats["flows_evicted"] > 40_000
    assert stats["flows_active"] <= clf.flow_capacity
    # The 256-event ring overflowed during the scan: counted, never blocking the datapath.
    assert stats["events_dropped"] > 0 and stats["pending_events"] == 0
    assert clf.memory_bytes == memory
