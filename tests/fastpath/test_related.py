"""ICMP errors about a known flow share its verdict (reason "related"), like conntrack's
RELATED, instead of being reported as violations of their own."""

from __future__ import annotations

from array import array

from appliance.policy.model import compile_policy, parse_policy
from demoward import frames as P
from fastpath import REASON_NAMES, VERDICT_NAMES, Classifier

POLICY = """
[groups.ward]
ip = ["10.1.0.0/24", "fd01::/64"]
[[rules]]
name = "dns"
from = "ward"
to = "any"
proto = "udp"
ports = [53]
"""
HOST, SERVER, ROUTER = "10.1.0.5", "10.9.0.53", "10.1.0.1"
HOST6, SERVER6 = "fd01::5", "fd09::53"
MAC_H, MAC_R = "02:00:00:00:00:05", "02:00:00:00:00:01"


def eth4(src: str, dst: str, proto: int, l4: bytes, mac: str = MAC_H) -> bytes:
    return P.ether(MAC_R if mac == MAC_H else MAC_H, mac, 0x0800, P.ipv4(src, dst, proto, l4))


def run(frames: list[bytes]) -> list[tuple[str, str]]:
    clf = Classifier(flow_capacity=64, device_capacity=16, event_capacity=64, seed=3)
    clf.set_policy(compile_policy(parse_policy(POLICY)))
    clf.set_mode("enforce")
    n = len(frames)
    buf = b"".join(frames)
    offsets = array("q", [sum(len(f) for f in frames[:i]) for i in range(n)])
    verdicts, reasons, rules = array("B", bytes(n)), array("B", bytes(n)), array("H", [0] * n)
    clf.classify(buf, offsets, array("I", map(len, frames)), array("Q", range(1, n + 1)),
                 array("H", [1] * n), verdicts, reasons, rules)
    return [(VERDICT_NAMES[v], REASON_NAMES[r]) for v, r in zip(verdicts, reasons, strict=True)]


def quote(src: str, dst: str, l4: bytes, proto: int = 17) -> bytes:
    return P.ipv4(src, dst, proto, l4)[:28]     # IP header + first 8 bytes, as routers do


def test_port_unreachable_for_denied_flow_is_related_not_a_violation() -> None:
    request = P.udp(40000, 161, b"snmp")
    unreachable = P.icmp(3, 3, payload=quote(HOST, SERVER, request))
    frames = [eth4(HOST, SERVER, 17, request), eth4(SERVER, HOST, 1, unreachable, MAC_R)]
    assert run(frames) == [("deny", "port_not_allowed"), ("deny", "related")]


def test_ttl_exceeded_for_allowed_flow_is_allowed() -> None:
    request = P.udp(40001, 53, b"dns")
    exceeded = P.icmp(11, 0, payload=quote(HOST, SERVER, request))
    frames = [eth4(HOST, SERVER, 17, request), eth4(ROUTER, HOST, 1, exceeded, MAC_R)]
    assert run(frames) == [("allow", "rule"), ("allow", "related")]


def test_icmpv6_packet_too_big_is_related() -> None:
    request = P.udp(40002, 53, b"x" * 32, src=HOST6, dst=SERVER6)
    inner = P.ipv6(HOST6, SERVER6, 17, request)[:48]
    too_big = P.icmpv6(2, 0, b"\x00\x00\x05\x00" + inner, src=SERVER6, dst=HOST6)
    frames = [P.ether(MAC_R, MAC_H, 0x86DD, P.ipv6(HOST6, SERVER6, 17, request)),
              P.ether(MAC_H, MAC_R, 0x86DD, P.ipv6(SERVER6, HOST6, 58, too_big))]
    assert run(frames) == [("allow", "rule"), ("allow", "related")]


def test_error_about_unknown_flow_is_its_own_flow() -> None:
    stray = P.icmp(3, 1, payload=quote(HOST, "10.9.9.9", P.udp(1, 2, b"")))
    # The router is in the ward group, whose only rule is for UDP.
    assert run([eth4(ROUTER, HOST, 1, stray, MAC_R)]) == [("deny", "proto_not_allowed")]


def test_truncated_quote_is_not_related() -> None:
    request = P.udp(40003, 161, b"")
    short = P.icmp(3, 3, payload=quote(HOST, SERVER, request)[:22])   # ports cut
    frames = [eth4(HOST, SERVER, 17, request), eth4(SERVER, HOST, 1, short, MAC_R)]
    assert run(frames)[1] != ("deny", "related")
