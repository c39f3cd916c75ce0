"""Differential test: `wardtap replay --packets-out` against the real tshark, packet by packet.

A pcapng with several interfaces (Ethernet, snaplen-cut Ethernet, SLL, SLL2, raw IP, raw
IPv4, raw IPv6) carries a broad mix of well-formed, truncated and malformed frames. For
every packet wardtap decodes, addresses, protocol, ports (or ICMP type/code), VLAN tags and
source MAC must agree with tshark's first occurrence of each field (outer header for
tunnels; the end of the IPv6 extension chain for the protocol). For every packet wardtap
calls malformed, tshark must also flag it (malformed, cut short, expert error) or fail to
decode that layer. IP reassembly is off in tshark, as wardtap does not reassemble.
The same comparison runs on the demo ward capture when `demoward.ward` provides it.
"""

from __future__ import annotations

import importlib.util
import json
import re
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from conftest import run_wardtap

import fastpath
from appliance.common.capwriter import (
    LINKTYPE_ETHERNET,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_RAW,
    PcapngWriter,
)
from demoward import frames as P

M1, M2, M3 = "02:00:5e:10:00:01", "02:00:5e:10:00:02", "00:1a:2b:00:00:07"
A4, B4, C4 = "10.4.1.10", "10.20.0.15", "192.168.7.1"
A6, B6 = "fd00:4::10", "fd00:20::15"
LL6 = "fe80::1a:2bff:fe00:7"

TSHARK_FIELDS = [
    "frame.number", "frame.protocols", "eth.src", "sll.src.eth", "vlan.id",
    "ip.src", "ip.dst", "ip.proto", "ipv6.src", "ipv6.dst", "ipv6.nxt",
    "ipv6.hopopts.nxt", "ipv6.routing.nxt", "ipv6.fraghdr.nxt", "ipv6.dstopts.nxt",
    "ah.next_header", "tcp.srcport", "tcp.dstport", "udp.srcport", "udp.dstport",
    "sctp.srcport", "sctp.dstport", "icmp.type", "icmp.code", "icmpv6.type", "icmpv6.code",
    "arp.src.proto_ipv4", "arp.dst.proto_ipv4",
    "_ws.malformed", "_ws.short", "_ws.expert.severity",
    "_ws.expert.message",  # last: free text, may hold the aggregator
]
IPV6_EXT_FIELD = {"ipv6.hopopts": "ipv6.hopopts.nxt", "ipv6.routing": "ipv6.routing.nxt",
                  "ipv6.fraghdr": "ipv6.fraghdr.nxt", "ipv6.dstopts": "ipv6.dstopts.nxt",
                  "ah": "ah.next_header"}
PORT_FIELDS = {6: "tcp", 17: "udp", 132: "sctp"}
SEVERITY_ERROR = 0x00800000
# tshark's malformed-packet label for the layers wardtap itself parses.
LOW_LAYER_MALFORMED = re.compile(
    r"Malformed Packet: (Ethernet|VLAN|IEEE 802\.1ad|ARP/RARP|IPv4|IPv6[^,\]]*|TCP|UDP|"
    r"UDP-Lite|ICMP|ICMPv6|SCTP|SLL)\b")
# wardtap's deliberate limits: frames tshark decodes happily but wardtap refuses.
DELIBERATE_LIMITS = {"vlan_too_deep", "ipv6_too_many_extensions"}
# The layer a malformed reason is about: tshark "could not decode it" when it is absent.
REASON_LAYER = {
    "ethernet_truncated": "eth", "sll_truncated": "sll", "vlan_truncated": "vlan",
    "raw_ip_bad_version": "ip", "arp_truncated": "arp", "ipv4_truncated": "ip",
    "ipv4_bad_version": "ip", "ipv4_bad_header_length": "ip",
    "ipv4_bad_total_length": "ip", "ipv6_truncated": "ipv6", "ipv6_bad_version": "ipv6",
    "tcp_truncated": "tcp", "tcp_bad_data_offset": "tcp", "udp_truncated": "udp",
    "udp_bad_length": "udp", "icmp_truncated": "icmp", "sctp_truncated": "sctp",
}


# --- the mixed capture ---------------------------------------------------------------------

Frame = tuple[str, str, bytes, str | None]   # name, interface, frame, expected malformed reason


def e4(src: str, dst: str, proto: int, payload: bytes, vlans: tuple[int, ...] = (),
       qinq: bool = False, smac: str = M1, **kw: Any) -> bytes:
    return P.ether(M2, smac, P.ETH_IPV4, P.ipv4(src, dst, proto, payload, **kw), vlans=vlans,
                   qinq=qinq)


def e6(src: str, dst: str, nh: int, payload: bytes, vlans: tuple[int, ...] = (),
       qinq: bool = False, smac: str = M1, **kw: Any) -> bytes:
    return P.ether(M2, smac, P.ETH_IPV6, P.ipv6(src, dst, nh, payload, **kw), vlans=vlans,
                   qinq=qinq)


def ah(next_words: int = 4) -> tuple[int, bytes]:
    return 51, struct.pack("!BBHII", 0, next_words, 0, 0x1000, 1) + bytes(4 * next_words - 4)


def mixed_frames() -> list[Frame]:
    t4 = lambda s, d, **kw: P.tcp(s, d, src=A4, dst=B4, **kw)  # noqa: E731
    t6 = lambda s, d, **kw: P.tcp(s, d, src=A6, dst=B6, **kw)  # noqa: E731
    u4 = lambda s, d, data=b"": P.udp(s, d, data, src=A4, dst=B4)  # noqa: E731
    u6 = lambda s, d, data=b"": P.udp(s, d, data, src=A6, dst=B6)  # noqa: E731
    echo6 = P.icmpv6(128, 0, struct.pack("!HH", 0x77, 1) + b"ping", src=A6, dst=B6)
    init = P.sctp_chunk(1, 0, struct.pack("!IIHHI", 1, 65535, 10, 10, 1))
    eight = [P.hop_by_hop()] + [P.dest_options()] * 6 + [P.routing()]
    good_tcp = P.tcp(40001, 40002)
    f: list[Frame] = [
        # transport over IPv4 and IPv6
        ("tcp4-syn", "eth", e4(A4, B4, 6, t4(49152, 443, options=P.tcp_syn_options())), None),
        ("tcp4-data", "eth", e4(B4, A4, 6, P.tcp(443, 49152, "PA", payload=b"\x17\x03\x03"
                                                 + bytes(40), src=B4, dst=A4)), None),
        ("udp4-ntp", "eth", e4(A4, B4, 17, u4(123, 123, bytes(48))), None),
        ("icmp4-echo", "eth", e4(A4, B4, 1, P.icmp(8, 0, 0x1234, 1, b"abcdefgh")), None),
        ("icmp4-unreach", "eth", e4(B4, A4, 1, P.icmp(3, 3, payload=P.ipv4(
            A4, B4, 17, P.udp(40000, 9, b"")))), None),
        ("icmp4-ttl", "eth", e4(C4, A4, 1, P.icmp(11, 0, payload=P.ipv4(
            A4, B4, 6, good_tcp)[:28])), None),
        ("sctp4-init", "eth", e4(A4, B4, 132, P.sctp(2905, 2905, init)), None),
        ("tcp6", "eth", e6(A6, B6, 6, t6(50000, 22, flags="S")), None),
        ("udp6", "eth", e6(A6, B6, 17, u6(546, 547, bytes(12))), None),
        ("icmp6-echo", "eth", e6(A6, B6, 58, echo6), None),
        ("icmp6-ns", "eth", P.ether(P.multicast_mac(P.solicited_node(B6)), M3, P.ETH_IPV6,
                                    P.ipv6(LL6, P.solicited_node(B6), 58, P.icmpv6(
                                        135, 0, P.nd_solicit(B6, M3), src=LL6,
                                        dst=P.solicited_node(B6)), hop_limit=255)), None),
        ("sctp6", "eth", e6(A6, B6, 132, P.sctp(3868, 3868, init)), None),
        ("udplite4", "eth", e4(A4, B4, 136, P.udp(7000, 7001, b"lite", length=0)), None),
        ("proto253", "eth", e4(A4, B4, 253, b"\x00" * 12), None),
        ("padded-udp4", "eth", P.ether(M2, M1, P.ETH_IPV4, P.ipv4(A4, B4, 17, u4(68, 67)),
                                       pad=True), None),
        # VLAN and QinQ
        ("vlan-tcp4", "eth", e4(A4, B4, 6, t4(40000, 8080), vlans=(104,)), None),
        ("vlan-prio-udp6", "eth", e6(A6, B6, 17, u6(5000, 5001), vlans=((6 << 13) | 7,)),
         None),
        ("qinq-udp6", "eth", e6(A6, B6, 17, u6(5353, 5353), vlans=(200, 104), qinq=True), None),
        ("qinq-icmp4", "eth", e4(A4, B4, 1, P.icmp(0, 0, 9, 9), vlans=(300, 5), qinq=True),
         None),
        ("double-8100", "eth", e4(A4, B4, 17, u4(1, 2), vlans=(11, 12)), None),
        ("vlan-arp", "eth", P.ether(P.BROADCAST_MAC, M1, P.ETH_ARP,
                                    P.arp(1, M1, A4, "00:00:00:00:00:00", C4), vlans=(104,)),
         None),
        # IPv6 extension headers
        ("v6-hbh-rt-dst", "eth", e6(A6, B6, 17, u6(521, 521), ext_headers=[
            P.hop_by_hop(P.router_alert()), P.routing([B6]), P.dest_options()]), None),
        ("v6-hbh-mld", "eth", e6(LL6, "ff02::16", 58, P.icmpv6(143, 0, bytes(4), src=LL6,
                                                                 dst="ff02::16"),
                                 ext_headers=[P.hop_by_hop(P.router_alert())]), None),
        ("v6-ah-tcp", "eth", e6(A6, B6, 6, t6(1000, 179), ext_headers=[ah()]), None),
        ("v6-dstopts-sctp", "eth", e6(A6, B6, 132, P.sctp(9, 10), ext_headers=[
            P.dest_options(b"\x01\x0c" + bytes(12))]), None),
        ("v6-eight-ext", "eth", e6(A6, B6, 58, echo6, ext_headers=eight), None),
        # IPv4 options
        ("v4-options-tcp", "eth", e4(A4, B4, 6, t4(33000, 443), options=b"\x94\x04\x00\x00"),
         None),
        ("v4-max-options-udp", "eth", e4(A4, B4, 17, u4(161, 162), options=b"\x01" * 40), None),
        # fragments
        ("v4-first-frag", "eth", e4(A4, B4, 17, u4(40010, 40011, b"F" * 32), ident=0x1111,
                                    more_fragments=True), None),
        ("v4-later-frag", "eth", e4(A4, B4, 17, b"G" * 24, ident=0x1111, frag_offset=5),
         None),
        ("v4-first-frag-tcp", "eth", e4(A4, B4, 6, t4(40012, 40013, payload=b"H" * 8),
                                        ident=0x2222, more_fragments=True), None),
        ("v4-later-frag-icmp", "eth", e4(A4, B4, 1, b"I" * 16, ident=0x3333, frag_offset=3),
         None),
        ("v6-first-frag", "eth", e6(A6, B6, 17, u6(40020, 40021, b"J" * 24), ext_headers=[
            P.fragment_header(0, True, 0xABCDEF)]), None),
        ("v6-later-frag", "eth", e6(A6, B6, 17, b"K" * 16, ext_headers=[
            P.fragment_header(4, False, 0xABCDEF)]), None),
        ("v6-frag-after-hbh", "eth", e6(A6, B6, 6, t6(40030, 40031), ext_headers=[
            P.hop_by_hop(), P.fragment_header(0, True, 5)]), None),
        ("v6-later-frag-ext", "eth", e6(A6, B6, 58, b"L" * 8, ext_headers=[
            P.routing([A6]), P.fragment_header(9, True, 6)]), None),
        # tunnels: wardtap reports the outer header
        ("gre-ipv4", "eth", e4(A4, C4, 47, P.gre(0x0800, P.ipv4(
            "172.16.0.1", "172.16.0.2", 6, P.tcp(1111, 2222)))), None),
        ("gre-key-ipv6", "eth", e4(A4, C4, 47, P.gre(0x86DD, P.ipv6(
            "fd99::1", "fd99::2", 17, P.udp(3333, 4444, b"", src="fd99::1", dst="fd99::2")),
            key=42)), None),
        ("gre-over-v6", "eth", e6(A6, B6, 47, P.gre(0x0800, P.ipv4(
            "172.16.0.3", "172.16.0.4", 1, P.icmp(8, 0, 1, 1)))), None),
        ("ipip", "eth", e4(A4, C4, 4, P.ipv4("172.16.1.1", "172.16.1.2", 17,
                                             P.udp(5555, 6666, b""))), None),
        ("6in4", "eth", e4(A4, C4, 41, P.ipv6("fd99::3", "fd99::4", 58,
                                              P.icmpv6(128, 0, bytes(4), src="fd99::3",
                                                                       dst="fd99::4"))), None),
        ("4in6", "eth", e6(A6, B6, 4, P.ipv4("172.16.2.1", "172.16.2.2", 6,
                                             P.tcp(7777, 8888))), None),
        # ARP and other link-layer traffic
        ("arp-request", "eth", P.ether(P.BROADCAST_MAC, M1, P.ETH_ARP, P.arp(
            1, M1, A4, "00:00:00:00:00:00", C4), pad=True), None),
        ("arp-reply", "eth", P.ether(M1, M3, P.ETH_ARP, P.arp(2, M3, C4, M1, A4)), None),
        ("lldp", "eth", P.ether("01:80:c2:00:00:0e", M3, P.ETH_LLDP,
                                b"\x02\x07\x04" + bytes.fromhex("001a2b000007")
                                + b"\x04\x03\x05\x31\x30\x06\x02\x00\x78\x00\x00"), None),
        # truncated by the snap length (orig_len kept): headers present -> decoded
        ("snap-tcp4", "eth64", e4(A4, B4, 6, t4(40100, 443, flags="A", payload=bytes(400))),
         None),
        ("snap-udp6", "eth64", e6(A6, B6, 17, u6(40101, 40102, bytes(300))), None),
        ("snap-icmp4", "eth64", e4(A4, B4, 1, P.icmp(8, 0, 3, 3, bytes(200))), None),
        # snap length cuts the headers themselves -> malformed
        ("snap-cut-tcp-header", "eth38", e4(A4, B4, 6, t4(40110, 443)), "tcp_truncated"),
        ("snap-cut-ipv6-header", "eth38", e6(A6, B6, 17, u6(1, 2)), "ipv6_truncated"),
        ("snap-cut-udp-header", "eth38", e4(A4, B4, 17, u4(40111, 40112, bytes(50)),
                                            options=b"\x01" * 4), "udp_truncated"),
        # malformed on the wire (captured whole)
        ("short-ethernet", "eth", bytes.fromhex("ffffffffffff0011"), "ethernet_truncated"),
        ("vlan-cut", "eth", P.ether(M2, M1, P.ETH_VLAN, b"\x00"), "vlan_truncated"),
        ("three-tags", "eth", e4(A4, B4, 17, u4(1, 2), vlans=(1, 2, 3), qinq=True),
         "vlan_too_deep"),
        ("nine-ext", "eth", e6(A6, B6, 58, echo6, ext_headers=eight + [P.dest_options()]),
         "ipv6_too_many_extensions"),
        ("arp-cut", "eth", P.ether(P.BROADCAST_MAC, M1, P.ETH_ARP, P.arp(
            1, M1, A4, M2, C4)[:20]), "arp_truncated"),
        ("ipv4-cut", "eth", P.ether(M2, M1, P.ETH_IPV4, P.ipv4(A4, B4, 6, good_tcp)[:16]),
         "ipv4_truncated"),
        ("ipv4-version-6", "eth", P.ether(M2, M1, P.ETH_IPV4, b"\x65" + P.ipv4(
            A4, B4, 6, good_tcp)[1:]), "ipv4_bad_version"),
        ("ipv4-ihl-4", "eth", P.ether(M2, M1, P.ETH_IPV4, b"\x44" + P.ipv4(
            A4, B4, 6, good_tcp)[1:]), "ipv4_bad_header_length"),
        ("ipv4-total-lt-ihl", "eth", e4(A4, B4, 6, good_tcp, total_length=12),
         "ipv4_bad_total_length"),
        ("ipv6-cut", "eth", P.ether(M2, M1, P.ETH_IPV6, P.ipv6(A6, B6, 17, u6(1, 2))[:30]),
         "ipv6_truncated"),
        ("ipv6-version-4", "eth", P.ether(M2, M1, P.ETH_IPV6, b"\x40" + P.ipv6(
            A6, B6, 17, u6(1, 2))[1:]), "ipv6_bad_version"),
        ("ipv6-ext-cut", "eth", e6(A6, B6, 17, b"", ext_headers=[P.routing([A6, B6])],
                                   payload_length=16)[:14 + 40 + 16],
         "ipv6_extension_truncated"),
        ("tcp-offset-3", "eth", e4(A4, B4, 6, good_tcp[:12] + b"\x30" + good_tcp[13:]),
         "tcp_bad_data_offset"),
        ("tcp-offset-past-ip", "eth", e4(A4, B4, 6, good_tcp[:12] + b"\xf0" + good_tcp[13:]),
         "tcp_bad_data_offset"),
        ("tcp-cut-in-ip", "eth", e4(A4, B4, 6, good_tcp[:12]), "tcp_truncated"),
        ("udp-length-4", "eth", e4(A4, B4, 17, P.udp(40200, 40201, b"", length=4)),
         "udp_bad_length"),
        ("udp-cut", "eth", e6(A6, B6, 17, b"\x9c\x48\x9c\x49"), "udp_truncated"),
        ("icmp-cut", "eth", e4(A4, B4, 1, b"\x08"), "icmp_truncated"),
        ("sctp-cut", "eth", e4(A4, B4, 132, P.sctp(40300, 40301)[:10]), "sctp_truncated"),
        # Linux cooked captures
        ("sll-udp4", "sll", P.sll(P.ipv4(A4, B4, 17, u4(40400, 53, b"")), P.ETH_IPV4, M1,
                                  pkttype=4), None),
        ("sll-tcp6", "sll", P.sll(P.ipv6(A6, B6, 6, t6(40401, 443)), P.ETH_IPV6, M3), None),
        ("sll-arp", "sll", P.sll(P.arp(2, M3, C4, M1, A4), P.ETH_ARP, M3), None),
        ("sll-vlan", "sll", P.sll(struct.pack("!HH", 104, 0x0800) + P.ipv4(
            A4, B4, 1, P.icmp(8, 0, 2, 2)), P.ETH_VLAN, M1), None),
        ("sll-short", "sll", P.sll(b"", P.ETH_IPV4, M1)[:12], "sll_truncated"),
        ("sll2-icmp4", "sll2", P.sll2(P.ipv4(A4, B4, 1, P.icmp(8, 0, 3, 4)), P.ETH_IPV4, M1,
                                      ifindex=2), None),
        ("sll2-udp6", "sll2", P.sll2(P.ipv6(A6, B6, 17, u6(40402, 40403)), P.ETH_IPV6, M3,
                                     ifindex=3, pkttype=4), None),
        ("sll2-sctp6", "sll2", P.sll2(P.ipv6(A6, B6, 132, P.sctp(40404, 40405)), P.ETH_IPV6,
                                      M1), None),
        ("sll2-short", "sll2", P.sll2(b"", P.ETH_IPV4, M1)[:19], "sll_truncated"),
        # raw IP link types
        ("raw-tcp4", "raw", P.ipv4(A4, B4, 6, t4(40500, 80)), None),
        ("raw-udp6", "raw", P.ipv6(A6, B6, 17, u6(40501, 40502)), None),
        ("raw-bad-version", "raw", b"\x50" + bytes(39), "raw_ip_bad_version"),
        ("raw4-icmp", "raw4", P.ipv4(A4, B4, 1, P.icmp(13, 0, 5, 5, bytes(12))), None),
        ("raw4-frag", "raw4", P.ipv4(A4, B4, 6, b"M" * 16, ident=9, frag_offset=7), None),
        ("raw6-icmp6", "raw6", P.ipv6(A6, B6, 58, echo6), None),
        ("raw6-ext-udp", "raw6", P.ipv6(A6, B6, 17, u6(40503, 40504), ext_headers=[
            P.dest_options()]), None),
    ]
    return f


INTERFACES = {  # name: (linktype, snaplen)
    "eth": (LINKTYPE_ETHERNET, 262144), "eth64": (LINKTYPE_ETHERNET, 64),
    "eth38": (LINKTYPE_ETHERNET, 38), "sll": (LINKTYPE_LINUX_SLL, 262144),
    "sll2": (LINKTYPE_LINUX_SLL2, 262144), "raw": (LINKTYPE_RAW, 65535),
    "raw4": (LINKTYPE_IPV4, 65535), "raw6": (LINKTYPE_IPV6, 65535),
}


def write_mixed_capture(path: Path) -> list[Frame]:
    frames = mixed_frames()
    with open(path, "wb") as fh:
        w = PcapngWriter(fh)
        ids = {name: w.add_interface(lt, snaplen=snap, tsresol_ns=i % 2 == 0, name=name)
               for i, (name, (lt, snap)) in enumerate(INTERFACES.items())}
        t = 1_732_788_000 * 10**9
        for n, (_, iface, frame, _) in enumerate(frames):
            w.write(ids[iface], frame, t + n * 1_000_000)
    return frames


# --- running both tools --------------------------------------------------------------------


def run_tshark(tshark: str, capture: Path) -> list[dict[str, Any]]:
    cmd = [tshark, "-n", "-r", str(capture), "-o", "ip.defragment:FALSE",
           "-o", "ipv6.defragment:FALSE", "-T", "fields", "-E", "separator=/t",
           "-E", "occurrence=a", "-E", "aggregator=,"]
    for name in TSHARK_FIELDS:
        cmd += ["-e", name]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = []
    for line in proc.stdout.splitlines():
        parts = line.split("\t")
        assert len(parts) == len(TSHARK_FIELDS), line
        row: dict[str, Any] = {}
        for name, value in zip(TSHARK_FIELDS, parts, strict=True):
            if name in ("frame.protocols", "_ws.expert.message", "_ws.malformed", "_ws.short"):
                row[name] = value
            else:
                row[name] = value.split(",") if value else []
        rows.append(row)
    return rows


def run_replay(capture: Path, tmp_path: Path) -> list[dict[str, Any]]:
    out = tmp_path / (capture.stem + ".packets.jsonl")
    proc = run_wardtap("replay", str(capture), "--packets-out", str(out))
    assert proc.returncode == 0, f"wardtap replay failed:\n{proc.stdout}\n{proc.stderr}"
    lines = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    assert [p["i"] for p in lines] == list(range(len(lines)))
    return lines


def decode_capture(capture: Path) -> tuple[np.ndarray, np.ndarray]:
    """Every packet through the capture scanner and decode_batch (for ARP addresses)."""
    data = capture.read_bytes()
    scanner = fastpath.CaptureScanner(data)
    n = 1 << 16
    offsets, lengths = np.empty(n, np.int64), np.empty(n, np.uint32)
    wire, stamps, links = np.empty(n, np.uint32), np.empty(n, np.uint64), np.empty(n, np.uint16)
    count = scanner.next_batch(offsets, lengths, wire, stamps, links)
    assert scanner.error == 0 and count < n
    out = np.zeros(count, fastpath.DECODED_DTYPE)
    reasons = np.zeros(count, np.uint8)
    fastpath.decode_batch(data, offsets[:count], lengths[:count], links[:count],
                          out.view(np.uint8), reasons)
    return out, reasons


# --- comparison ----------------------------------------------------------------------------


def first(row: dict[str, Any], field: str) -> str | None:
    values = row[field]
    return values[0] if values else None


def as_int(value: str | None) -> int | None:
    if value is None:
        return None
    return int(value, 16) if value.startswith("0x") else int(value)


def tshark_l3(layers: list[str]) -> tuple[str | None, int]:
    for i, name in enumerate(layers):
        if name in ("ip", "ipv6"):
            return name, i
    return None, -1


def tshark_proto(row: dict[str, Any], layers: list[str], l3: str, idx: int) -> int | None:
    """The outer packet's protocol after its extension headers, from header fields."""
    if l3 == "ip":
        return as_int(first(row, "ip.proto"))
    j = idx + 1
    while j < len(layers) and layers[j] in IPV6_EXT_FIELD:
        j += 1
    if j == idx + 1:
        return as_int(first(row, "ipv6.nxt"))
    last = layers[j - 1]
    nth = layers[idx + 1:j].count(last) - 1
    values = row[IPV6_EXT_FIELD[last]]
    return as_int(values[nth]) if nth < len(values) else None


def tshark_flagged(row: dict[str, Any]) -> list[str]:
    why = []
    if row["_ws.malformed"]:
        why.append("malformed")
    if row["_ws.short"]:
        why.append("short")
    if any(as_int(s) == SEVERITY_ERROR for s in row["_ws.expert.severity"]):
        why.append("expert error")
    return why


def compare(wardtap: list[dict[str, Any]], tshark: list[dict[str, Any]],
            decoded: tuple[np.ndarray, np.ndarray],
            names: Callable[[int], str] = str) -> tuple[list[str], dict[str, int]]:
    """Every disagreement as a line of text; and counts of what was compared."""
    problems: list[str] = []
    counts = {"decoded": 0, "malformed": 0, "ports": 0, "icmp": 0, "vlan": 0, "arp": 0,
              "limits": 0}
    if len(wardtap) != len(tshark):
        problems.append(f"packet count: wardtap {len(wardtap)}, tshark {len(tshark)}")
    recs, reasons = decoded
    for w, t in zip(wardtap, tshark, strict=False):
        i = w["i"]
        layers = t["frame.protocols"].split(":")
        where = f"packet {i} ({names(i)}), tshark layers {t['frame.protocols']}"

        def bad(what: str, ours: Any, theirs: Any) -> None:
            problems.append(f"{where}: {what}: wardtap {ours!r} vs tshark {theirs!r} "  # noqa: B023
                            f"[wardtap line {json.dumps(w)}]")  # noqa: B023

        if w["verdict"] == "malformed":
            counts["malformed"] += 1
            reason = w["reason"]
            if reason in DELIBERATE_LIMITS:
                counts["limits"] += 1
                continue
            flagged = tshark_flagged(t)
            missing = REASON_LAYER.get(reason) not in layers
            if not flagged and not missing:
                bad("malformed, tshark decoded it without complaint", reason,
                    t["_ws.expert.message"] or "no expert info")
            continue
        counts["decoded"] += 1
        low = LOW_LAYER_MALFORMED.search(t["_ws.malformed"])
        if low and not w.get("tunnel"):
            bad("decoded, but tshark finds a malformed header wardtap parsed", w["reason"],
                low.group(0) + "; " + t["_ws.expert.message"])
        # source MAC (Ethernet, SLL with an Ethernet address)
        tmac = first(t, "eth.src") or first(t, "sll.src.eth")
        if w.get("smac") != tmac:
            bad("source MAC", w.get("smac"), tmac)
        # VLAN tags: wardtap has the innermost and (QinQ) the outer one
        tags = [int(v) for v in t["vlan.id"]]
        if tags:
            counts["vlan"] += 1
        ours = [w.get("vlan_outer") or 0, w["vlan"] or 0] if len(tags) == 2 else \
            [w["vlan"] or 0] if tags else []
        if tags != ours:
            bad("VLAN ids", ours, tags)
        l3, idx = tshark_l3(layers)
        if w["src"] is None:
            if l3 is not None and "arp" not in layers:
                bad("not IP for wardtap", None, l3)
            if int(recs[i]["l3"]) == 1 and reasons[i] == 0 and t["arp.src.proto_ipv4"]:
                counts["arp"] += 1
                src = ".".join(str(b) for b in bytes(recs[i]["src"])[12:])
                dst = ".".join(str(b) for b in bytes(recs[i]["dst"])[12:])
                theirs = (first(t, "arp.src.proto_ipv4"), first(t, "arp.dst.proto_ipv4"))
                if (src, dst) != theirs:
                    bad("ARP addresses", (src, dst), theirs)
            continue
        if l3 is None:
            bad("IP for wardtap, no IP layer in tshark", w["src"], None)
            continue
        addr = (first(t, f"{l3}.src"), first(t, f"{l3}.dst"))
        if (w["src"], w["dst"]) != addr:
            bad("addresses", (w["src"], w["dst"]), addr)
        proto = tshark_proto(t, layers, l3, idx)
        if w["proto"] != proto:
            bad("protocol", w["proto"], proto)
        if w["proto"] in PORT_FIELDS and w.get("sport") is not None:
            name = PORT_FIELDS[w["proto"]]
            theirs = (as_int(first(t, f"{name}.srcport")), as_int(first(t, f"{name}.dstport")))
            counts["ports"] += 1
            if (w["sport"], w["dport"]) != theirs:
                bad("ports", (w["sport"], w["dport"]), theirs)
        elif w["proto"] in (1, 58) and w.get("icmp_type") is not None:
            name = "icmp" if w["proto"] == 1 else "icmpv6"
            theirs = (as_int(first(t, f"{name}.type")), as_int(first(t, f"{name}.code")))
            counts["icmp"] += 1
            if (w["icmp_type"], w["icmp_code"]) != theirs:
                bad("ICMP type/code", (w["icmp_type"], w["icmp_code"]), theirs)
        elif w.get("sport") is None and w.get("icmp_type") is None and not w.get("tunnel"):
            # a later fragment or an unported protocol: tshark must not see a transport
            # header there either
            transport = {"tcp", "udp", "sctp", "icmp", "icmpv6"} & set(layers[idx + 1:])
            if transport and int(recs[i]["frag"]) == 2:
                bad("later fragment, tshark decoded a transport header", None, transport)
    return problems, counts


# --- the tests -----------------------------------------------------------------------------


def test_mixed_capture_agrees_with_tshark(tmp_path: Path, tshark: str) -> None:
    capture = tmp_path / "mixed.pcapng"
    frames = write_mixed_capture(capture)
    wardtap = run_replay(capture, tmp_path)
    rows = run_tshark(tshark, capture)
    decoded = decode_capture(capture)
    problems, counts = compare(wardtap, rows, decoded, lambda i: frames[i][0])
    # The capture itself: each frame got the outcome it was built for.
    for (name, _, _, expected), w in zip(frames, wardtap, strict=True):
        got = w["reason"] if w["verdict"] == "malformed" else None
        if got != expected:
            problems.append(f"{name}: built to be {expected or 'decoded'}, wardtap says "
                            f"{w['verdict']}/{w['reason']}")
    assert not problems, f"{len(problems)} disagreement(s):\n" + "\n".join(problems)
    # The mix really covered what it claims.
    assert len(wardtap) == len(frames)
    assert counts["ports"] >= 20 and counts["icmp"] >= 8 and counts["vlan"] >= 7
    assert counts["arp"] >= 3 and counts["limits"] == 2
    assert counts["malformed"] == sum(1 for f in frames if f[3])
    for reason in REASON_LAYER:
        assert any(f[3] == reason for f in frames), f"no frame is {reason}"


def _demo_writer() -> Callable[..., Any] | None:
    if importlib.util.find_spec("demoward.ward") is None:
        return None
    from demoward import ward as demo
    return getattr(demo, "write_demo_ward", None)


if _demo_writer() is not None:  # only when the demo exists; never a skipped test

    def test_demo_ward_agrees_with_tshark(tmp_path: Path, tshark: str) -> None:
        write_demo_ward = _demo_writer()
        assert write_demo_ward is not None
        capture = tmp_path / "ward.pcap"
        write_demo_ward(str(capture), packets=3000)
        wardtap = run_replay(capture, tmp_path)
        rows = run_tshark(tshark, capture)
        problems, counts = compare(wardtap, rows, decode_capture(capture))
        assert not problems, f"{len(problems)} disagreement(s) on the demo ward:\n" + \
            "\n".join(problems[:60])
        assert len(wardtap) == 3000 and counts["decoded"] > 2500 and counts["ports"] > 1000


def edge_frames() -> list[Frame]:
    """Frames where tshark calls a header wardtap parses malformed (or of another version)."""
    return [
        ("udp-length-past-ip-payload", "eth", e4(A4, B4, 17, P.udp(40600, 40601, b"", length=100)),
         "udp_bad_length"),
        ("icmp4-4-bytes", "eth", e4(A4, B4, 1, P.icmp(8, 0)[:4]), "icmp_truncated"),
        ("ipv4-on-raw-ipv6-link", "raw6", P.ipv4(A4, B4, 17, P.udp(40602, 40603, b"")),
         "raw_ip_bad_version"),
    ]


def test_edge_cases_agree_with_tshark(tmp_path: Path, tshark: str) -> None:
    capture = tmp_path / "edges.pcapng"
    frames = edge_frames()
    with open(capture, "wb") as fh:
        w = PcapngWriter(fh)
        ids = {name: w.add_interface(lt, snaplen=snap) for name, (lt, snap) in INTERFACES.items()}
        for n, (_, iface, frame, _) in enumerate(frames):
            w.write(ids[iface], frame, 10**18 + n * 1000)
    wardtap = run_replay(capture, tmp_path)
    rows = run_tshark(tshark, capture)
    problems, _ = compare(wardtap, rows, decode_capture(capture), lambda i: frames[i][0])
    for (name, _, _, expected), w in zip(frames, wardtap, strict=True):
        assert tshark_flagged(rows[w["i"]]), f"{name}: tshark should flag this frame"
        if w["reason"] != expected:
            problems.append(f"{name}: expected {expected}, wardtap says {w['verdict']}/"
                            f"{w['reason']}")
    assert not problems, f"{len(problems)} disagreement(s):\n" + "\n".join(problems)
