"""A live flood of new flows: `wardtap run` on the tap keeps its allowed conversations.

The daemon watches a real bridge in network namespaces with a small flow table (1,024
slots). Twenty allowed conversations (ward -> server udp/53, each from its own port) are
going when 20,000 new flows arrive (datagrams to 20,000 ports the policy does not allow).
The flood fills every bucket; the denied and single-packet flows must be the ones evicted:
each allowed conversation is one flow from its first packet to its last (never evicted, never
started again), allowed, with every packet the daemon saw of it counted in it. The 1M-flow
flood is bench/bench_scale.py's (docs/fastpath.md).
"""

from __future__ import annotations

import sys
from pathlib import Path

from conftest import read_events
from inlinekit import tap_daemon
from netns import UPLINK_IP, WARD_IP, Ward, wait_for
from policies import ward_dns

from appliance.common.control import request

POLICY = ward_dns("flood-test", WARD_IP, UPLINK_IP)

CONVERSATIONS = 20
FLOOD = 20_000
# Each allowed conversation: `rounds` datagrams from its own source port to udp/53; the
# flood (one datagram to each of FLOOD ports) goes out between round 2 and round 3.
SEND = (
    "import socket, sys\n"
    "dst, n, flood, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), 4\n"
    "socks = []\n"
    "for i in range(n):\n"
    "    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
    "    s.bind(('', 41000 + i))\n"
    "    socks.append(s)\n"
    "f = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
    "for r in range(rounds):\n"
    "    for s in socks:\n"
    "        s.sendto(b'allowed', (dst, 53))\n"
    "    if r == 1:\n"
    "        for port in range(flood):\n"
    "            f.sendto(b'flood', (dst, 1024 + port))\n"
)



def test_allowed_conversations_survive_a_flood_of_new_flows(tmp_path: Path) -> None:
    (tmp_path / "policy.toml").write_text(POLICY)
    config = ('[appliance]\nmode = "monitor"\n[datapath]\ntype = "tap"\ninterface = "ward0"\n'
              '[policy]\nfile = "policy.toml"\n[events]\nlog = "events.jsonl"\n'
              '[control]\nsocket = "control.sock"\n[tables]\nflows = 1024\n')
    log, sock = tmp_path / "events.jsonl", str(tmp_path / "control.sock")
    with Ward() as ward, tap_daemon(ward, tmp_path, config):
        ward.exec(ward.ward, [sys.executable, "-c", SEND, UPLINK_IP, str(CONVERSATIONS),
                              str(FLOOD)], timeout=60)
        expected = CONVERSATIONS * 4 + FLOOD

        last = [-1]

        def seen() -> dict:
            """The counters once every datagram is counted and nothing more arrives."""
            status = request(sock, {"cmd": "status"})
            counters = status["counters"]
            captured = counters["packets"] + status["source"].get("kernel_drops", 0)
            settled = captured == last[0]
            last[0] = captured
            return counters if captured >= expected and settled else {}

        counters = wait_for(seen, timeout=30, interval=0.5,
                            what="the daemon to see the flood")
        assert isinstance(counters, dict)
        flows = {e["flow"]: e for e in read_events(log) if e["type"] == "new_flow"}
        allowed = [f for f in flows.values() if f.get("dport") == 53]
        evicted = [e for e in read_events(log)
                   if e["type"] == "flow_end" and e["end"] == "evicted"]
    # The flood overflowed the table (nothing else ends a flow here: every flow beyond the
    # 1,024 slots pushed one out), and what it pushed out was the flood.
    assert counters["flows_created"] > 4 * 1024
    assert counters["flows_evicted"] >= counters["flows_created"] - 1024
    assert counters["flows_evicted_allowed"] == 0
    assert not [e for e in evicted if e.get("dport") == 53]
    # Each conversation is still the one flow it started as, allowed by its rule.
    assert len(allowed) == CONVERSATIONS
    assert {(f["src"], f["verdict"], f["rule"]) for f in allowed} == {
        (WARD_IP, "allow", "ward-dns")}
