"""Unit tests for every decode path of the fast path, through `fastpath.decode_batch`.

Frames come from demoward.frames; dpkt is only an independent reference. Every prefix of
representative frames must decode or give a malformed reason, also when the buffer ends
exactly at the frame's end (guard page, in a subprocess so a wild read is a failure, not a
crashed test run). Fragments are checked through the Classifier too.
"""

from __future__ import annotations

import ipaddress
import struct
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import dpkt
import numpy as np
import pytest

import fastpath
from demoward import frames as P

ROOT = Path(__file__).resolve().parents[2]

ETH, RAW, SLL, SLL2, RAW4, RAW6 = 1, 101, 113, 276, 228, 229
M1, M2 = "02:11:22:33:44:55", "02:66:77:88:99:aa"
A4, B4 = "10.4.1.10", "10.20.0.15"
A6, B6 = "fd00:4::10", "fd00:20::15"
REASON = {name: code for code, name in fastpath.REASON_NAMES.items()}


# --- helpers -------------------------------------------------------------------------------


def decode(frames: list[tuple[bytes, int]]) -> list[tuple[str, dict[str, Any]]]:
    """Decode (frame, linktype) pairs in one batch; [(reason name, record as a dict)]."""
    buf = b"".join(f for f, _ in frames)
    n = len(frames)
    offsets = np.zeros(n, np.int64)
    lengths = np.zeros(n, np.uint32)
    links = np.zeros(n, np.uint16)
    pos = 0
    for i, (frame, linktype) in enumerate(frames):
        offsets[i], lengths[i], links[i] = pos, len(frame), linktype
        pos += len(frame)
    out = np.zeros(n, fastpath.DECODED_DTYPE)
    reasons = np.full(n, 255, np.uint8)
    fastpath.decode_batch(buf, offsets, lengths, links, out.view(np.uint8), reasons)
    return [(fastpath.REASON_NAMES.get(int(reasons[i]), f"?{reasons[i]}"), record(out[i]))
            for i in range(n)]


def record(rec: np.void) -> dict[str, Any]:
    d: dict[str, Any] = {}
    for name in fastpath.DECODED_DTYPE.names:
        v = rec[name]
        d[name] = bytes(v) if isinstance(v, np.void) else int(v)
    for name in ("src", "dst"):
        raw = d[name]
        if raw[:12] == bytes(10) + b"\xff\xff":
            d[name + "_ip"] = str(ipaddress.IPv4Address(raw[12:]))
        else:
            d[name + "_ip"] = str(ipaddress.IPv6Address(raw)) if any(raw) else None
    d["src_mac_text"] = ":".join(f"{b:02x}" for b in d["src_mac"])
    d["dst_mac_text"] = ":".join(f"{b:02x}" for b in d["dst_mac"])
    return d


def one(frame: bytes, linktype: int = ETH) -> tuple[str, dict[str, Any]]:
    return decode([(frame, linktype)])[0]


def ok(frame: bytes, linktype: int = ETH) -> dict[str, Any]:
    reason, rec = one(frame, linktype)
    assert reason == "rule", f"expected a clean decode, got {reason}"
    return rec


def eth4(payload: bytes, proto: int, **kw: Any) -> bytes:
    return P.ether(M2, M1, P.ETH_IPV4, P.ipv4(A4, B4, proto, payload, **kw))


def eth6(payload: bytes, nh: int, **kw: Any) -> bytes:
    return P.ether(M2, M1, P.ETH_IPV6, P.ipv6(A6, B6, nh, payload, **kw))


def tcp4(sport: int = 40000, dport: int = 443, flags: str = "S", **kw: Any) -> bytes:
    return eth4(P.tcp(sport, dport, flags, src=A4, dst=B4, **kw), P.IPPROTO_TCP)


def udp6_payload(sport: int = 5353, dport: int = 53, data: bytes = b"q" * 12) -> bytes:
    return P.udp(sport, dport, data, src=A6, dst=B6)


def ah(length_words: int = 1, body: bytes | None = None) -> tuple[int, bytes]:
    """Authentication Header: next header (rewritten by ipv6()), payload length, SPI, seq, ICV."""
    icv = bytes(4 * length_words - 4) if body is None else body
    return 51, struct.pack("!BBHII", 0, length_words, 0, 0x1234, 1) + icv


# --- Ethernet and VLAN ---------------------------------------------------------------------


def test_ethernet_ii_tcp() -> None:
    rec = ok(tcp4(40000, 443, "S", options=P.tcp_syn_options()))
    assert rec["has_mac"] == 2
    assert rec["dst_mac_text"] == M2 and rec["src_mac_text"] == M1
    assert rec["ethertype"] == 0x0800 and rec["l3"] == 4 and rec["proto"] == 6
    assert (rec["src_ip"], rec["dst_ip"]) == (A4, B4)
    assert (rec["sport"], rec["dport"], rec["tcp_flags"]) == (40000, 443, 0x02)
    assert rec["vlan"] == 0 and rec["vlan_outer"] == 0 and rec["frag"] == 0
    assert rec["tunnel"] == 0 and rec["l4_off"] == 34


def test_ethernet_padding_is_not_payload() -> None:
    frame = P.ether(M2, M1, P.ETH_IPV4, P.ipv4(A4, B4, 17, P.udp(68, 67, b"")), pad=True)
    assert len(frame) == 60
    rec = ok(frame)
    assert (rec["proto"], rec["sport"], rec["dport"]) == (17, 68, 67)


def test_non_ip_frame() -> None:
    rec = ok(P.ether("01:80:c2:00:00:0e", M1, P.ETH_LLDP, b"\x02\x07\x04" + bytes(20)))
    assert rec["l3"] == 0 and rec["ethertype"] == P.ETH_LLDP and rec["has_mac"] == 2
    assert rec["src_ip"] is None and rec["dst_ip"] is None


def test_ethernet_too_short() -> None:
    frame = tcp4()
    for n in range(14):
        assert one(frame[:n])[0] == "ethernet_truncated"
    assert one(frame[:14])[0] == "ipv4_truncated"


def test_vlan_8021q_with_priority_bits() -> None:
    tci = (5 << 13) | 104
    rec = ok(P.ether(M2, M1, P.ETH_IPV4, P.ipv4(A4, B4, 17, P.udp(1000, 53, b"x")),
                     vlans=[tci]))
    assert rec["vlan"] == 104 and rec["vlan_outer"] == 0
    assert rec["ethertype"] == 0x0800 and rec["proto"] == 17 and rec["dport"] == 53
    assert rec["l4_off"] == 14 + 4 + 20


@pytest.mark.parametrize("qinq", [True, False], ids=["88a8+8100", "8100+8100"])
def test_qinq(qinq: bool) -> None:
    rec = ok(P.ether(M2, M1, P.ETH_IPV6, P.ipv6(A6, B6, 17, udp6_payload()),
                     vlans=[200, 104], qinq=qinq))
    assert (rec["vlan_outer"], rec["vlan"]) == (200, 104)
    assert rec["l3"] == 6 and rec["src_ip"] == A6 and rec["dport"] == 53


def test_9100_outer_tag() -> None:
    inner = struct.pack("!HH", 0x8100, 104) + struct.pack("!H", 0x0800)
    frame = (P.mac_bytes(M2) + P.mac_bytes(M1) + struct.pack("!HH", 0x9100, 300) + inner
             + P.ipv4(A4, B4, 1, P.icmp(8, 0, 1, 1)))
    rec = ok(frame)
    assert (rec["vlan_outer"], rec["vlan"], rec["icmp_type"]) == (300, 104, 8)


def test_third_vlan_tag_is_too_deep() -> None:
    frame = P.ether(M2, M1, P.ETH_IPV4, P.ipv4(A4, B4, 17, P.udp(1, 2, b"")),
                    vlans=[10, 20, 30], qinq=True)
    reason, rec = one(frame)
    assert reason == "vlan_too_deep"
    assert rec["src_mac_text"] == M1  # MACs were read before the tags


def test_vlan_truncated() -> None:
    frame = P.ether(M2, M1, P.ETH_IPV4, P.ipv4(A4, B4, 17, P.udp(1, 2, b"")), vlans=[7, 8],
                    qinq=True)
    assert one(frame[:16])[0] == "vlan_truncated"
    assert one(frame[:20])[0] == "vlan_truncated"
    assert one(frame[:22])[0] == "ipv4_truncated"


# --- ARP --------------------------------------------------------------------------------


@pytest.mark.parametrize("op", [P.ARP_REQUEST, P.ARP_REPLY])
def test_arp_addresses(op: int) -> None:
    tha = "00:00:00:00:00:00" if op == P.ARP_REQUEST else M2
    frame = P.ether(P.BROADCAST_MAC, M1, P.ETH_ARP, P.arp(op, M1, "10.4.1.10", tha, "10.4.1.1"),
                    pad=True)
    rec = ok(frame)
    assert rec["l3"] == 1 and rec["ethertype"] == 0x0806 and rec["proto"] == 0
    assert (rec["src_ip"], rec["dst_ip"]) == ("10.4.1.10", "10.4.1.1")
    assert rec["src_mac_text"] == M1


def test_arp_non_ethernet_ipv4_has_no_addresses() -> None:
    body = struct.pack("!HHBBH", 6, 0x0800, 6, 4, 1) + bytes(20)  # IEEE 802 hardware
    rec = ok(P.ether(P.BROADCAST_MAC, M1, P.ETH_ARP, body))
    assert rec["l3"] == 1 and rec["src_ip"] is None and rec["dst_ip"] is None


def test_arp_truncated() -> None:
    frame = P.ether(P.BROADCAST_MAC, M1, P.ETH_ARP,
                    P.arp(1, M1, "10.4.1.10", "00:00:00:00:00:00", "10.4.1.1"))
    assert one(frame[:14 + 7])[0] == "arp_truncated"
    assert one(frame[:14 + 27])[0] == "arp_truncated"
    assert one(frame[:14 + 28])[0] == "rule"


# --- IPv4 ------------------------------------------------------------------------------


def test_ipv4_with_options() -> None:
    opts = b"\x94\x04\x00\x00" + b"\x01" * 3 + b"\x00"  # router alert, NOPs, end
    rec = ok(eth4(P.tcp(33000, 8080, "PA", src=A4, dst=B4), 6, options=opts))
    assert (rec["sport"], rec["dport"], rec["tcp_flags"]) == (33000, 8080, 0x18)
    assert rec["l4_off"] == 14 + 28


def test_ipv4_max_options() -> None:
    rec = ok(eth4(P.udp(9, 10, b""), 17, options=b"\x01" * 40))
    assert rec["l4_off"] == 14 + 60 and (rec["sport"], rec["dport"]) == (9, 10)


def test_ipv4_first_fragment() -> None:
    rec = ok(eth4(P.udp(5000, 514, b"a" * 32), 17, ident=0xBEEF, more_fragments=True))
    assert rec["frag"] == 1 and rec["frag_id"] == 0xBEEF
    assert (rec["proto"], rec["sport"], rec["dport"]) == (17, 5000, 514)


def test_ipv4_later_fragment_has_no_ports() -> None:
    # Bytes that would look like ports must not be read as ports.
    rec = ok(eth4(b"\x13\x88\x02\x02" + b"b" * 20, 17, ident=0xBEEF, frag_offset=5))
    assert rec["frag"] == 2 and rec["frag_id"] == 0xBEEF and rec["proto"] == 17
    assert (rec["sport"], rec["dport"]) == (0, 0)
    assert (rec["src_ip"], rec["dst_ip"]) == (A4, B4)
    # The last fragment (MF clear, offset set) is a later fragment too.
    last = ok(eth4(b"c" * 8, 6, ident=1, frag_offset=100, more_fragments=True))
    assert last["frag"] == 2 and last["proto"] == 6


def test_ipv4_df_is_not_a_fragment() -> None:
    rec = ok(eth4(P.udp(1, 2, b""), 17, flags_df=True))
    assert rec["frag"] == 0 and rec["dport"] == 2


def test_ipv4_malformed_headers() -> None:
    good = P.ipv4(A4, B4, 6, P.tcp(1, 2))
    wrap = lambda ip: P.ether(M2, M1, P.ETH_IPV4, ip)  # noqa: E731
    assert one(wrap(b"\x45" + good[1:]))[0] == "rule"
    assert one(wrap(b"\x65" + good[1:]))[0] == "ipv4_bad_version"
    assert one(wrap(b"\x44" + good[1:]))[0] == "ipv4_bad_header_length"
    assert one(wrap(b"\x40" + good[1:]))[0] == "ipv4_bad_header_length"
    assert one(wrap(b"\x4f" + good[1:]))[0] == "ipv4_truncated"  # 60-byte header, 40 here
    assert one(wrap(P.ipv4(A4, B4, 6, P.tcp(1, 2), total_length=19)))[0] == \
        "ipv4_bad_total_length"
    # Total length 0: the sender's NIC fills it in (TCP segmentation offload, captured on
    # the sending host), as tshark reads it too: bounded by the frame.
    reason, rec = one(wrap(P.ipv4(A4, B4, 6, P.tcp(1, 2), total_length=0)))
    assert reason == "rule" and (rec["sport"], rec["dport"]) == (1, 2)
    assert one(wrap(good[:19]))[0] == "ipv4_truncated"


def test_ipv4_total_length_bounds_l4() -> None:
    # Total length says 20 + 8: the TCP header then has only 8 bytes in the IP packet.
    frame = P.ether(M2, M1, P.ETH_IPV4, P.ipv4(A4, B4, 6, P.tcp(1, 2), total_length=28))
    assert one(frame)[0] == "tcp_truncated"


def test_ipv4_snapped_frame_still_decodes_headers() -> None:
    frame = tcp4(41000, 22, "A", payload=b"z" * 200)
    rec = ok(frame[:14 + 20 + 20])  # cut right after the TCP header
    assert (rec["sport"], rec["dport"]) == (41000, 22)


# --- IPv6 and its extension headers ----------------------------------------------------


def test_ipv6_udp() -> None:
    rec = ok(eth6(udp6_payload(5353, 53), 17, flow_label=0x12345, traffic_class=0xb8))
    assert rec["ethertype"] == 0x86DD and rec["l3"] == 6
    assert (rec["src_ip"], rec["dst_ip"]) == (A6, B6)
    assert (rec["proto"], rec["sport"], rec["dport"]) == (17, 5353, 53)
    assert rec["l4_off"] == 54


@pytest.mark.parametrize("exts,expected_off", [
    ([P.hop_by_hop(P.router_alert())], 8),
    ([P.routing([B6])], 24),
    ([P.dest_options(b"\x01\x0c" + bytes(12))], 16),
    ([P.hop_by_hop(), P.routing([A6, B6]), P.dest_options()], 8 + 40 + 8),
], ids=["hop-by-hop", "routing", "destination-options", "all-three"])
def test_ipv6_extension_headers(exts: list[tuple[int, bytes]], expected_off: int) -> None:
    rec = ok(eth6(P.tcp(50000, 443, "S", src=A6, dst=B6), 6, ext_headers=exts))
    assert (rec["proto"], rec["sport"], rec["dport"]) == (6, 50000, 443)
    assert rec["l4_off"] == 54 + expected_off and rec["frag"] == 0


def test_ipv6_first_fragment() -> None:
    rec = ok(eth6(udp6_payload(7000, 161), 17,
                  ext_headers=[P.hop_by_hop(), P.fragment_header(0, True, 0xCAFEBABE)]))
    assert rec["frag"] == 1 and rec["frag_id"] == 0xCAFEBABE
    assert (rec["proto"], rec["sport"], rec["dport"]) == (17, 7000, 161)


def test_ipv6_later_fragment() -> None:
    rec = ok(eth6(b"\x1b\x58\x00\xa1" + bytes(28), 17,
                  ext_headers=[P.fragment_header(4, True, 0xCAFEBABE)]))
    assert rec["frag"] == 2 and rec["frag_id"] == 0xCAFEBABE
    assert rec["proto"] == 17 and (rec["sport"], rec["dport"]) == (0, 0)
    last = ok(eth6(bytes(8), 6, ext_headers=[P.fragment_header(9, False, 3)]))
    assert last["frag"] == 2 and last["proto"] == 6


def test_ipv6_atomic_fragment_is_not_a_fragment() -> None:
    rec = ok(eth6(udp6_payload(1, 2), 17, ext_headers=[P.fragment_header(0, False, 5)]))
    assert rec["frag"] == 0 and (rec["sport"], rec["dport"]) == (1, 2)


def test_ipv6_ah() -> None:
    rec = ok(eth6(udp6_payload(4500, 4500), 17, ext_headers=[ah(4)]))  # 24 bytes of AH
    assert rec["proto"] == 17 and rec["dport"] == 4500 and rec["l4_off"] == 54 + 24


def test_ipv6_eight_extension_headers_is_the_limit() -> None:
    eight = [P.hop_by_hop()] + [P.dest_options()] * 6 + [P.routing()]
    rec = ok(eth6(P.icmpv6(128, 0, struct.pack("!HH", 9, 1), src=A6, dst=B6), 58,
                  ext_headers=eight))
    assert (rec["proto"], rec["icmp_type"], rec["icmp_id"]) == (58, 128, 9)
    nine = eight + [P.dest_options()]
    assert one(eth6(P.icmpv6(128, 0, bytes(4)), 58, ext_headers=nine))[0] == \
        "ipv6_too_many_extensions"


def test_ipv6_malformed() -> None:
    good = eth6(udp6_payload(), 17)
    assert one(good[:14 + 39])[0] == "ipv6_truncated"
    assert one(good[:14] + b"\x40" + good[15:])[0] == "ipv6_bad_version"
    hop = eth6(udp6_payload(), 17, ext_headers=[P.hop_by_hop(bytes(12))])  # 16-byte header
    assert one(hop[:54 + 7])[0] == "ipv6_extension_truncated"
    assert one(hop[:54 + 12])[0] == "ipv6_extension_truncated"
    assert one(hop[:54 + 16])[0] == "udp_truncated"
    # The payload length, not the frame, bounds the extension chain.
    assert one(eth6(udp6_payload(), 17, ext_headers=[P.hop_by_hop(bytes(12))],
                    payload_length=8))[0] == "ipv6_extension_truncated"


def test_ipv6_payload_length_zero_uses_frame() -> None:
    rec = ok(eth6(udp6_payload(1, 2), 17, payload_length=0))
    assert (rec["sport"], rec["dport"]) == (1, 2)


def test_ipv6_no_next_header() -> None:
    rec = ok(eth6(b"", P.IPPROTO_NONE, ext_headers=[P.dest_options()]))
    assert rec["proto"] == 59 and rec["l3"] == 6


# --- transport -------------------------------------------------------------------------


def test_tcp_flags_and_offset() -> None:
    rec = ok(tcp4(1, 2, "FA"))
    assert rec["tcp_flags"] == 0x11
    good = P.tcp(1, 2)
    bad = good[:12] + bytes([0x40]) + good[13:]  # data offset 4 words
    assert one(eth4(bad, 6))[0] == "tcp_bad_data_offset"
    long = good[:12] + bytes([0xF0]) + good[13:]  # 60-byte header in a 20-byte segment
    assert one(eth4(long, 6))[0] == "tcp_bad_data_offset"
    assert one(eth4(good[:19], 6))[0] == "tcp_truncated"


def test_udp() -> None:
    rec = ok(eth4(P.udp(5060, 5061, b"INVITE", src=A4, dst=B4), 17))
    assert (rec["proto"], rec["sport"], rec["dport"]) == (17, 5060, 5061)
    assert one(eth4(P.udp(1, 2, b"", length=7), 17))[0] == "udp_bad_length"
    assert one(eth4(P.udp(1, 2, b"")[:7], 17))[0] == "udp_truncated"


def test_udp_length_past_the_ip_payload() -> None:
    """A UDP length beyond the IP payload is as malformed as one below 8 (tshark: "Bad
    length value > IP payload length"), unless the frame was cut by the snap length."""
    assert one(eth4(P.udp(1, 2, b"", length=100), 17))[0] == "udp_bad_length"
    assert one(eth6(P.udp(1, 2, b"abcd", length=13), 17))[0] == "udp_bad_length"
    snapped = eth4(P.udp(1, 2, bytes(100)), 17)[:14 + 20 + 8]
    assert one(snapped)[0] == "rule"
    assert one(eth4(P.udp(1, 2, b"abcd", length=10), 17))[0] == "rule"  # shorter: trailer


def test_udplite() -> None:
    rec = ok(eth4(P.udp(1, 2, b"", length=0), 136))  # coverage 0: whole datagram
    assert (rec["proto"], rec["sport"], rec["dport"]) == (136, 1, 2)


def test_icmp_echo() -> None:
    rec = ok(eth4(P.icmp(8, 0, ident=0x4242, seq=7, payload=b"ping"), 1))
    assert (rec["proto"], rec["icmp_type"], rec["icmp_code"], rec["icmp_id"]) == \
        (1, 8, 0, 0x4242)
    assert (rec["sport"], rec["dport"]) == (0, 0)
    unreach = ok(eth4(P.icmp(3, 3, payload=P.ipv4(B4, A4, 17, P.udp(53, 9, b""))), 1))
    assert (unreach["icmp_type"], unreach["icmp_code"]) == (3, 3)
    assert one(eth4(b"\x08\x00\x00", 1))[0] == "icmp_truncated"
    snapped = ok(eth4(P.icmp(8, 0, 5, 5, bytes(64)), 1)[:14 + 20 + 8])
    assert (snapped["icmp_type"], snapped["icmp_id"]) == (8, 5)


def test_icmpv4_header_is_eight_bytes() -> None:
    """RFC 792: every ICMP message starts with 8 bytes (type, code, checksum, 4 more);
    tshark calls a shorter one malformed. wardtap accepts 4..7 bytes (icmp_id then 0)."""
    for n in range(4, 8):
        assert one(eth4(P.icmp(8, 0, 7, 7)[:n], 1))[0] == "icmp_truncated", n
    icmp6 = ok(eth6(P.icmpv6(1, 4, b""), 58))  # ICMPv6's common header is 4 bytes
    assert (icmp6["icmp_type"], icmp6["icmp_code"]) == (1, 4)


def test_icmpv6() -> None:
    rec = ok(eth6(P.icmpv6(129, 0, struct.pack("!HH", 77, 1), src=A6, dst=B6), 58))
    assert (rec["proto"], rec["icmp_type"], rec["icmp_code"], rec["icmp_id"]) == (58, 129, 0, 77)
    ns = ok(eth6(P.icmpv6(135, 0, P.nd_solicit(B6, M1), src=A6, dst=B6), 58))
    assert ns["icmp_type"] == 135


def test_sctp() -> None:
    init = P.sctp_chunk(1, 0, struct.pack("!IIHHI", 1, 65535, 10, 10, 1))
    rec = ok(eth4(P.sctp(2905, 2905, init), 132))
    assert (rec["proto"], rec["sport"], rec["dport"]) == (132, 2905, 2905)
    rec6 = ok(eth6(P.sctp(3868, 3869), 132))
    assert (rec6["sport"], rec6["dport"]) == (3868, 3869)
    assert one(eth4(P.sctp(1, 2)[:11], 132))[0] == "sctp_truncated"


def test_unknown_ip_protocol_decodes_without_ports() -> None:
    rec = ok(eth4(b"\x01\x02\x03\x04" * 4, 253))
    assert rec["proto"] == 253 and (rec["sport"], rec["dport"]) == (0, 0) and rec["tunnel"] == 0


# --- tunnels ---------------------------------------------------------------------------


TUNNEL = {name: code for code, name in fastpath.TUNNEL_NAMES.items()}


@pytest.mark.parametrize(("frame", "kind"), [
    (eth4(P.gre(0x0800, P.ipv4("192.168.0.1", "192.168.0.2", 6, P.tcp(1, 2))), 47), "gre"),
    (eth4(P.gre(0x86DD, P.ipv6("fd99::1", "fd99::2", 17, P.udp(3, 4, b"")), key=7), 47),
     "gre"),
    (eth4(P.ipv4("192.168.0.1", "192.168.0.2", 1, P.icmp(8, 0, 1, 1)), 4), "ipip"),
    (eth4(P.ipv6("fd99::1", "fd99::2", 58, P.icmpv6(128, 0, bytes(4))), 41), "6in4"),
], ids=["gre-ipv4", "gre-ipv6-key", "ipip", "6in4"])
def test_tunnels_report_outer_header(frame: bytes, kind: str) -> None:
    rec = ok(frame)
    assert rec["tunnel"] == TUNNEL[kind] and rec["l3"] == 4
    assert (rec["src_ip"], rec["dst_ip"]) == (A4, B4)
    assert (rec["sport"], rec["dport"], rec["icmp_type"]) == (0, 0, 0)


def test_tunnels_over_ipv6() -> None:
    for proto, inner in [(47, P.gre(0x0800, P.ipv4("1.1.1.1", "2.2.2.2", 6, P.tcp(1, 2)))),
                         (4, P.ipv4("1.1.1.1", "2.2.2.2", 17, P.udp(1, 2, b""))),
                         (41, P.ipv6("fd99::1", "fd99::2", 59, b""))]:
        rec = ok(eth6(inner, proto, ext_headers=[P.dest_options()]))
        assert rec["tunnel"] == {47: TUNNEL["gre"], 4: TUNNEL["ipip"], 41: TUNNEL["6in4"]}[proto]
        assert rec["proto"] == proto and rec["src_ip"] == A6


# --- Linux cooked captures, raw IP and link types ---------------------------------------


def test_sll_source_mac() -> None:
    rec = ok(P.sll(P.ipv4(A4, B4, 17, P.udp(1, 2, b"")), P.ETH_IPV4, M1, pkttype=4), SLL)
    assert rec["has_mac"] == 1 and rec["src_mac_text"] == M1
    assert rec["dst_mac"] == bytes(6)
    assert (rec["src_ip"], rec["dport"]) == (A4, 2)


def test_sll_non_ethernet_address_has_no_mac() -> None:
    frame = P.sll(P.ipv4(A4, B4, 17, P.udp(1, 2, b"")), P.ETH_IPV4, M1, arphrd=772)
    rec = ok(frame, SLL)
    assert rec["has_mac"] == 0 and rec["src_mac"] == bytes(6)


def test_sll_vlan_and_short() -> None:
    payload = struct.pack("!HH", 42, 0x86DD) + P.ipv6(A6, B6, 17, udp6_payload())
    rec = ok(P.sll(payload, P.ETH_VLAN, M1), SLL)
    assert rec["vlan"] == 42 and rec["l3"] == 6
    for n in range(16):
        assert one(P.sll(b"", 0x0800, M1)[:n], SLL)[0] == "sll_truncated"


def test_sll2_source_mac() -> None:
    frame = P.sll2(P.ipv6(A6, B6, 6, P.tcp(2000, 80, src=A6, dst=B6)), P.ETH_IPV6, M2,
                   ifindex=3)
    rec = ok(frame, SLL2)
    assert rec["has_mac"] == 1 and rec["src_mac_text"] == M2
    assert (rec["proto"], rec["sport"], rec["dport"]) == (6, 2000, 80)
    arp = ok(P.sll2(P.arp(2, M2, B4, M1, A4), P.ETH_ARP, M2), SLL2)
    assert (arp["l3"], arp["src_ip"], arp["dst_ip"]) == (1, B4, A4)
    for n in range(20):
        assert one(frame[:n], SLL2)[0] == "sll_truncated"


def test_sll2_non_ethernet_address_has_no_mac() -> None:
    frame = P.sll2(P.ipv4(A4, B4, 1, P.icmp(8, 0)), P.ETH_IPV4, M2, arphrd=65534)
    assert ok(frame, SLL2)["has_mac"] == 0


@pytest.mark.parametrize("linktype", [RAW, RAW4, RAW6])
def test_raw_ip(linktype: int) -> None:
    if linktype != RAW6:
        rec = ok(P.ipv4(A4, B4, 17, P.udp(1, 2, b"")), linktype)
        assert rec["l3"] == 4 and rec["has_mac"] == 0 and rec["l4_off"] == 20
        assert rec["src_mac"] == bytes(6) and rec["ethertype"] == 0x0800
    if linktype != RAW4:
        rec = ok(P.ipv6(A6, B6, 58, P.icmpv6(128, 0, bytes(4))), linktype)
        assert rec["l3"] == 6 and rec["icmp_type"] == 128 and rec["ethertype"] == 0x86DD
    for bad in (b"", b"\x50" + bytes(30), b"\x00" * 40, b"\xf6" + bytes(39)):
        assert one(bad, linktype)[0] == "raw_ip_bad_version"


def test_single_version_raw_link_types() -> None:
    """LINKTYPE_IPV4 (228) carries only IPv4 and LINKTYPE_IPV6 (229) only IPv6; tshark
    calls an IPv4 header on 229 "Bogus IPv6 version". wardtap decodes either on both."""
    assert one(P.ipv4(A4, B4, 17, P.udp(1, 2, b"")), RAW6)[0] == "raw_ip_bad_version"
    assert one(P.ipv6(A6, B6, 17, udp6_payload()), RAW4)[0] == "raw_ip_bad_version"


def test_unsupported_linktype() -> None:
    for linktype in (2, 106, 147, 65535):
        reason, rec = one(tcp4(), linktype)
        assert reason == "unsupported_linktype" and rec["l3"] == 0


def test_bad_offset_and_mixed_batch() -> None:
    frames = [(tcp4(), ETH), (P.ipv4(A4, B4, 1, P.icmp(0, 0, 5)), RAW), (b"\x01", ETH)]
    results = decode(frames)
    assert [r for r, _ in results] == ["rule", "rule", "ethernet_truncated"]
    assert results[1][1]["icmp_type"] == 0 and results[1][1]["icmp_id"] == 5
    out = np.zeros(2, fastpath.DECODED_DTYPE)
    reasons = np.zeros(2, np.uint8)
    buf = tcp4()
    fastpath.decode_batch(buf, np.array([-1, 10], np.int64), np.array([1, len(buf)], np.uint32),
                          np.array([ETH, ETH], np.uint16), out.view(np.uint8), reasons)
    assert [fastpath.REASON_NAMES[int(r)] for r in reasons] == ["bad_offset", "bad_offset"]


def test_decode_batch_rejects_short_arrays() -> None:
    """decode_batch must not read lengths/linktypes past their end (classify checks this)."""
    buf = tcp4() * 4
    out = np.zeros(4, fastpath.DECODED_DTYPE)
    reasons = np.zeros(4, np.uint8)
    offsets = np.arange(4, dtype=np.int64) * len(tcp4())
    with pytest.raises(ValueError):
        fastpath.decode_batch(buf, offsets, np.array([54], np.uint32),
                              np.array([ETH], np.uint16), out.view(np.uint8), reasons)
    with pytest.raises(ValueError):
        fastpath.decode_batch(buf, offsets, np.full(4, 54, np.uint32),
                              np.array([ETH, ETH], np.uint16), out.view(np.uint8), reasons)


HUGE_OFFSET_SCRIPT = textwrap.dedent("""
    import numpy as np
    import fastpath
    out = np.zeros(3, fastpath.DECODED_DTYPE)
    reasons = np.zeros(3, np.uint8)
    # offset + length overflows int64 to a negative number, which is "inside" the buffer
    fastpath.decode_batch(bytes(100), np.array([2**63 - 5, 2**63 - 1, 90], np.int64),
                          np.array([100, 4294967295, 20], np.uint32),
                          np.array([1, 1, 1], np.uint16), out.view(np.uint8), reasons)
    print([fastpath.REASON_NAMES[int(r)] for r in reasons])
""")


def test_decode_batch_huge_offset_is_bad_offset() -> None:
    """offsets[i] + lengths[i] must not overflow into a pass of the bounds check."""
    proc = subprocess.run([sys.executable, "-c", HUGE_OFFSET_SCRIPT], capture_output=True,
                          text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, f"decode_batch crashed: rc={proc.returncode}\n{proc.stderr}"
    assert proc.stdout.strip() == "['bad_offset', 'bad_offset', 'bad_offset']"


def test_classify_huge_offset_is_bad_offset() -> None:
    clf = fastpath.Classifier(64, 16, 64, seed=3)
    verdicts, reasons, rules = np.zeros(3, np.uint8), np.zeros(3, np.uint8), np.zeros(3, np.uint16)
    clf.classify(bytes(100), np.array([2**63 - 5, -1, 101], np.int64),
                 np.array([100, 1, 0], np.uint32), np.ones(3, np.uint64),
                 np.ones(3, np.uint16), verdicts, reasons, rules)
    assert [fastpath.REASON_NAMES[int(r)] for r in reasons] == ["bad_offset"] * 3
    assert list(verdicts) == [3, 3, 3]


# --- dpkt as an independent reference ----------------------------------------------------


REFERENCE_FRAMES = [
    tcp4(40000, 443, "S", options=P.tcp_syn_options()),
    eth4(P.udp(5000, 514, b"syslog", src=A4, dst=B4), 17, options=b"\x01" * 4),
    eth4(P.icmp(8, 0, 9, 9), 1),
    eth6(udp6_payload(5353, 53), 17),
    eth6(P.tcp(1234, 22, "SA", src=A6, dst=B6), 6, ext_headers=[P.hop_by_hop(P.router_alert())]),
    eth6(P.icmpv6(128, 0, struct.pack("!HH", 3, 3), src=A6, dst=B6), 58,
         ext_headers=[P.routing([A6])]),
    P.ether(M2, M1, P.ETH_IPV4, P.ipv4(A4, B4, 17, P.udp(67, 68, b"")), vlans=[104]),
    eth4(P.sctp(2905, 2906), 132),
]


@pytest.mark.parametrize("frame", REFERENCE_FRAMES)
def test_agrees_with_dpkt(frame: bytes) -> None:
    rec = ok(frame)
    eth = dpkt.ethernet.Ethernet(frame)
    assert rec["src_mac"] == eth.src and rec["dst_mac"] == eth.dst
    assert rec["vlan"] == (eth.vlan_tags[-1].id if getattr(eth, "vlan_tags", None) else 0)
    ip = eth.data
    if isinstance(ip, dpkt.ip.IP):
        assert rec["src"][12:] == ip.src and rec["dst"][12:] == ip.dst
        proto, l4 = ip.p, ip.data
    else:
        assert rec["src"] == ip.src and rec["dst"] == ip.dst
        proto, l4 = ip.p, ip.data  # dpkt's .p is the upper-layer protocol after extensions
    assert rec["proto"] == proto
    if proto in (6, 17, 132):
        assert (rec["sport"], rec["dport"]) == (l4.sport, l4.dport)
    elif proto in (1, 58):
        assert (rec["icmp_type"], rec["icmp_code"]) == (l4.type, l4.code)


# --- truncation: every prefix decodes or is malformed, never reads past the end ----------


def _representative() -> list[tuple[str, bytes, int]]:
    return [
        ("tcp4-options", eth4(P.tcp(1, 2, "S", options=P.tcp_syn_options()), 6,
                              options=b"\x01" * 8), ETH),
        ("qinq-udp6", P.ether(M2, M1, P.ETH_IPV6, P.ipv6(A6, B6, 17, udp6_payload()),
                              vlans=[200, 104], qinq=True), ETH),
        ("ipv6-ext-frag", eth6(udp6_payload(), 17, ext_headers=[
            P.hop_by_hop(P.router_alert()), P.routing([A6]), ah(3),
            P.fragment_header(0, True, 1), P.dest_options()]), ETH),
        ("ipv6-later-frag", eth6(bytes(16), 6, ext_headers=[P.fragment_header(2, True, 1)]), ETH),
        ("ipv4-first-frag", eth4(P.udp(1, 2, b"x" * 16), 17, more_fragments=True), ETH),
        ("arp", P.ether(P.BROADCAST_MAC, M1, P.ETH_ARP, P.arp(1, M1, A4, M2, B4)), ETH),
        ("icmp4", eth4(P.icmp(8, 0, 1, 1, b"abcd"), 1), ETH),
        ("icmpv6", eth6(P.icmpv6(135, 0, P.nd_solicit(B6, M1)), 58), ETH),
        ("sctp4", eth4(P.sctp(1, 2, P.sctp_chunk(0, 3, b"data")), 132), ETH),
        ("gre", eth4(P.gre(0x0800, P.ipv4(A4, B4, 6, P.tcp(1, 2))), 47), ETH),
        ("sll-tcp6", P.sll(P.ipv6(A6, B6, 6, P.tcp(3, 4)), P.ETH_IPV6, M1), SLL),
        ("sll2-udp4", P.sll2(P.ipv4(A4, B4, 17, P.udp(5, 6, b"pp")), P.ETH_IPV4, M1), SLL2),
        ("raw-udp4", P.ipv4(A4, B4, 17, P.udp(5, 6, b"pp")), RAW),
        ("raw4-tcp", P.ipv4(A4, B4, 6, P.tcp(7, 8)), RAW4),
        ("raw6-icmpv6", P.ipv6(A6, B6, 58, P.icmpv6(128, 0, bytes(4))), RAW6),
        *((name, frame, linktype) for name, frame, linktype, _ in LINK_CASES),
    ]


def _tcp4() -> bytes:
    return P.ipv4(A4, B4, 6, P.tcp(1025, 11112, "A"))


def _udp6() -> bytes:
    return P.ipv6(A6, B6, 17, P.udp(5353, 53, b"q" * 12, src=A6, dst=B6))


# Link types and encapsulations other than Ethernet and SLL: (name, frame, link type,
# (l3, source MAC or None, VLAN)). Each carries a TCP/IPv4 or UDP/IPv6 packet.
LINK_CASES: list[tuple[str, bytes, int, tuple[int, str | None, int]]] = [
    ("null-ipv4", P.null_loopback(_tcp4()), 0, (4, None, 0)),
    ("null-ipv6-big-endian", P.null_loopback(_udp6(), 30, little_endian=False), 0,
     (6, None, 0)),
    ("null-bsdos-hdlc", P.cisco_hdlc(_tcp4()), 0, (4, None, 0)),
    ("loop-ipv6", P.loop(_udp6()), 108, (6, None, 0)),
    ("ppp-ipv4", P.ppp(_tcp4()), 9, (4, None, 0)),
    ("ppp-hdlc-ipv6", P.ppp(_udp6(), 0x0057), 50, (6, None, 0)),
    ("ppp-over-ethernet", P.pppoe_session(_tcp4()), 51, (4, None, 0)),
    ("cisco-hdlc", P.cisco_hdlc(_udp6(), P.ETH_IPV6), 104, (6, None, 0)),
    ("frame-relay", P.frame_relay(_tcp4()), 107, (4, None, 0)),
    ("slip", P.slip(_tcp4()), 8, (4, None, 0)),
    ("pflog", P.pflog(_udp6(), 24), 117, (6, None, 0)),
    ("nflog", P.nflog(_tcp4()), 239, (4, None, 0)),
    ("raw-bsd", _tcp4(), 12, (4, None, 0)),
    ("80211-to-ds", P.dot11_data(_tcp4(), M2, M1, "02:00:00:00:00:99"), 105, (4, M1, 0)),
    ("radiotap-qos-from-ds", P.radiotap(P.dot11_data(_udp6(), M2, M1, "02:00:00:00:00:99",
                                                       to_ds=False, qos=True,
                                                       ethertype=P.ETH_IPV6)), 127,
     (6, M1, 0)),
    ("pppoe-vlan", P.ether(M2, M1, P.ETH_PPPOE_SESSION, P.pppoe_session(_tcp4()),
                           vlans=[7]), ETH, (4, M1, 7)),
    ("mpls", P.ether(M2, M1, P.ETH_MPLS, P.mpls(_udp6())), ETH, (6, M1, 0)),
    ("vntag", P.ether(M2, M1, P.ETH_VNTAG, P.vntag(_tcp4())), ETH, (4, M1, 0)),
    ("nsh-ethernet", P.ether(M2, M1, P.ETH_NSH, P.nsh(P.ether(M1, M2, P.ETH_IPV4, _tcp4()),
                                                       3)), ETH, (4, M1, 0)),
    ("llc-snap", P.ether_8023(M2, M1, P.llc_snap(_tcp4())), ETH, (4, M1, 0)),
]


@pytest.mark.parametrize("name,frame,linktype,expected", LINK_CASES,
                         ids=[c[0] for c in LINK_CASES])
def test_link_types_and_encapsulations(name: str, frame: bytes, linktype: int,
                                       expected: tuple[int, str | None, int]) -> None:
    l3, smac, vlan = expected
    reason, rec = one(frame, linktype)
    assert reason == "rule", name
    assert (rec["l3"], rec["vlan"]) == (l3, vlan)
    assert (rec["src_mac_text"] if rec["has_mac"] else None) == smac
    if l3 == 4:
        assert (rec["src_ip"], rec["dst_ip"], rec["proto"]) == (A4, B4, 6)
        assert (rec["sport"], rec["dport"]) == (1025, 11112)
    else:
        assert (rec["src_ip"], rec["dst_ip"], rec["proto"]) == (A6, B6, 17)
        assert (rec["sport"], rec["dport"]) == (5353, 53)


def test_link_type_list_is_what_the_decoder_knows() -> None:
    assert len(fastpath.LINKTYPES) == 20
    for linktype in fastpath.LINKTYPES:
        reason, _ = one(b"", linktype)
        assert reason != "unsupported_linktype", linktype


def test_first_fragment_udp_length_covers_the_datagram() -> None:
    """A first fragment's UDP length is the whole datagram's, longer than the fragment."""
    whole = P.udp(40000, 53, b"a" * 200)
    reason, rec = one(eth4(whole[:64], 17, more_fragments=True))
    assert reason == "rule" and (rec["sport"], rec["dport"], rec["frag"]) == (40000, 53, 1)
    assert (rec["frag_off"], rec["more_frags"]) == (0, 1)
    reason, rec = one(eth4(whole[64:], 17, frag_offset=8))
    assert reason == "rule" and (rec["frag"], rec["frag_off"], rec["more_frags"]) == (2, 8, 0)
    # Not a fragment: the same length is a lie.
    assert one(eth4(whole[:64], 17))[0] == "udp_bad_length"


REPRESENTATIVE = _representative()


@pytest.mark.parametrize("name,frame,linktype", REPRESENTATIVE,
                         ids=[r[0] for r in REPRESENTATIVE])
def test_every_prefix_decodes_or_is_malformed(name: str, frame: bytes, linktype: int) -> None:
    full_reason, full = one(frame, linktype)
    assert full_reason == "rule", name
    results = decode([(frame[:n], linktype) for n in range(len(frame) + 1)])
    for n, (reason, rec) in enumerate(results):
        code = REASON[reason] if reason in REASON else -1
        assert code == 0 or code >= fastpath.MALFORMED_FIRST, (name, n, reason)
        if code:
            continue
        # A prefix that decodes must not invent anything the whole frame does not say.
        for field in ("l3", "proto", "sport", "dport", "icmp_type", "icmp_code", "vlan",
                      "vlan_outer", "src", "dst", "src_mac", "frag", "frag_id", "tunnel"):
            value = rec[field]
            assert value in (full[field], 0, bytes(len(value)) if isinstance(value, bytes)
                             else 0), (name, n, field, value, full[field])
    assert results[-1][0] == "rule"
    assert results[0][0] != "rule"


GUARD_SCRIPT = textwrap.dedent("""
    import ctypes, mmap, sys
    import numpy as np
    import fastpath
    sys.path.insert(0, sys.argv[1])
    from test_decode import REPRESENTATIVE

    page = mmap.PAGESIZE
    mem = mmap.mmap(-1, 2 * page)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(mem))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    assert libc.mprotect(addr + page, page, 0) == 0, ctypes.get_errno()  # PROT_NONE
    view = np.frombuffer(mem, np.uint8, count=page)   # the buffer ends at the guard page
    out = np.zeros(1, fastpath.DECODED_DTYPE).view(np.uint8)
    reasons = np.zeros(1, np.uint8)
    count = 0
    for name, frame, linktype in REPRESENTATIVE:
        for n in range(len(frame) + 1):
            start = page - n
            view[start:] = np.frombuffer(frame[:n], np.uint8)
            fastpath.decode_batch(view, np.array([start], np.int64), np.array([n], np.uint32),
                                  np.array([linktype], np.uint16), out, reasons)
            clf = fastpath.Classifier(64, 16, 16, seed=1)
            v = np.zeros(1, np.uint8); r = np.zeros(1, np.uint8); rl = np.zeros(1, np.uint16)
            clf.classify(view[start:], np.array([0], np.int64), np.array([n], np.uint32),
                         np.array([1], np.uint64), np.array([linktype], np.uint16), v, r, rl)
            count += 1
    print("ok", count)
""")


def test_prefixes_at_a_guard_page() -> None:
    """Frames that end exactly where readable memory ends: any over-read is a SIGSEGV."""
    proc = subprocess.run([sys.executable, "-c", GUARD_SCRIPT, str(Path(__file__).parent)],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, f"rc={proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert proc.stdout.startswith("ok ")


# --- fragments through the Classifier ----------------------------------------------------


def allow_udp_53_policy() -> fastpath.CompiledPolicy:
    """any -> any udp/53 allowed; everything else denied (unmatched fragments denied)."""
    return fastpath.CompiledPolicy([], [(1, 1, 17, 53, 53, 0, 0)], 0, 0,
                                   fragment_unmatched=False)


def classify(frames: list[bytes], clf: fastpath.Classifier,
             linktype: int = ETH) -> list[tuple[str, str]]:
    buf = b"".join(frames)
    n = len(frames)
    lengths = np.array([len(f) for f in frames], np.uint32)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    stamps = np.arange(1, n + 1, dtype=np.uint64) * 1_000_000
    links = np.full(n, linktype, np.uint16)
    verdicts = np.zeros(n, np.uint8)
    reasons = np.zeros(n, np.uint8)
    rules = np.zeros(n, np.uint16)
    clf.classify(buf, offsets, lengths, stamps, links, verdicts, reasons, rules)
    return [(fastpath.VERDICT_NAMES[int(v)], fastpath.REASON_NAMES[int(r)])
            for v, r in zip(verdicts, reasons, strict=True)]


def enforcing_classifier(flow_capacity: int = 1024) -> fastpath.Classifier:
    clf = fastpath.Classifier(flow_capacity, 64, 1024, seed=7)
    clf.set_policy(allow_udp_53_policy())
    clf.set_mode("enforce")
    return clf


def test_later_ipv4_fragment_gets_first_fragments_verdict() -> None:
    allowed_first = eth4(P.udp(5000, 53, b"a" * 16), 17, ident=11, more_fragments=True)
    allowed_later = eth4(b"b" * 16, 17, ident=11, frag_offset=3)
    denied_first = eth4(P.udp(5000, 99, b"a" * 16), 17, ident=12, more_fragments=True)
    denied_later = eth4(b"b" * 16, 17, ident=12, frag_offset=3)
    unmatched = eth4(b"c" * 16, 17, ident=13, frag_offset=3)
    other_proto = eth4(b"d" * 16, 6, ident=11, frag_offset=3)  # same id, other protocol
    clf = enforcing_classifier()
    got = classify([allowed_first, denied_first, allowed_later, denied_later, unmatched,
                    other_proto], clf)
    assert got == [("allow", "rule"), ("deny", "port_not_allowed"), ("allow", "fragment"),
                   ("deny", "fragment"), ("deny", "fragment_unmatched"),
                   ("deny", "fragment_unmatched")]
    stats = clf.stats()
    assert stats["fragments_attributed"] == 2 and stats["fragments_unmatched"] == 2


def test_unmatched_fragment_verdict_follows_policy_and_mode() -> None:
    later = eth4(b"c" * 16, 17, ident=99, frag_offset=3)
    learn = fastpath.Classifier(64, 16, 64, seed=1)
    assert classify([later], learn) == [("allow", "fragment_unmatched")]
    lenient = fastpath.Classifier(64, 16, 64, seed=1)
    lenient.set_policy(fastpath.CompiledPolicy([], [], 0, 0, fragment_unmatched=True))
    lenient.set_mode("enforce")
    assert classify([later], lenient) == [("allow", "fragment_unmatched")]


def test_later_ipv6_fragment_gets_first_fragments_verdict() -> None:
    first = eth6(udp6_payload(5000, 99), 17, ext_headers=[P.fragment_header(0, True, 77)])
    later = eth6(bytes(16), 17, ext_headers=[P.fragment_header(2, False, 77)])
    stray = eth6(bytes(16), 17, ext_headers=[P.fragment_header(2, False, 78)])
    assert classify([first, later, stray], enforcing_classifier()) == [
        ("deny", "port_not_allowed"), ("deny", "fragment"), ("deny", "fragment_unmatched")]


def test_later_ipv6_fragment_after_fragmentable_extension_header() -> None:
    """RFC 8200 puts Destination Options (and AH) after the Fragment header, in the
    fragmentable part: the later fragment's Fragment header then names 60, not UDP. IPv6
    fragments are identified by (src, dst, identification) only, so it is still the same
    packet and must get the first fragment's verdict."""
    first = eth6(udp6_payload(5000, 99), 17,
                 ext_headers=[P.fragment_header(0, True, 77), P.dest_options()])
    later = eth6(bytes(16), 60, ext_headers=[P.fragment_header(3, False, 77)])
    assert classify([first, later], enforcing_classifier()) == [
        ("deny", "port_not_allowed"), ("deny", "fragment")]


def test_later_fragment_of_an_evicted_flow_is_not_given_another_flows_verdict() -> None:
    """A first fragment's flow is evicted and its slot reused by an allowed flow; the
    later fragment must not inherit the new occupant's verdict (policy bypass)."""
    denied_first = eth4(P.udp(5000, 99, b"a" * 16), 17, ident=21, more_fragments=True)
    denied_later = eth4(b"b" * 16, 17, ident=21, frag_offset=3)
    # One bucket of 8 slots: 8 new allowed flows evict the denied one.
    fillers = [P.ether(M2, M1, P.ETH_IPV4, P.ipv4(f"10.9.0.{i}", B4, 17, P.udp(6000, 53, b"")))
               for i in range(1, 9)]
    clf = enforcing_classifier(flow_capacity=8)
    got = classify([denied_first, *fillers, denied_later], clf)
    assert clf.stats()["flows_evicted"] >= 1
    assert got[0] == ("deny", "port_not_allowed")
    assert got[-1] != ("allow", "fragment"), got
