"""Frame builders (demoward.frames): parsed back with dpkt and with the real tshark."""

from __future__ import annotations

import io
import struct
import subprocess

import dpkt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.common.capwriter import LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2, PcapWriter
from demoward import frames as p

A4, B4 = "10.40.1.33", "10.20.0.15"
A6, B6 = "fd00:40:1::33", "fd00:40:1::10"
MAC_A, MAC_B = "00:09:fb:3c:41:01", "00:26:cb:4a:10:01"


def valid_l4(src: str, dst: str, proto: int, segment: bytes) -> bool:
    """A correct TCP/UDP/ICMPv6 checksum sums to zero with its pseudo-header."""
    return p.checksum(p.pseudo_header(src, dst, proto, len(segment)) + segment) == 0


# --- link layer ---


def test_ether_plain_and_padding() -> None:
    frame = p.ether(MAC_B, MAC_A, p.ETH_ARP, b"x" * 10)
    assert len(frame) == 24
    eth = dpkt.ethernet.Ethernet(frame)
    assert eth.dst == bytes.fromhex("0026cb4a1001") and eth.src == bytes.fromhex("0009fb3c4101")
    assert eth.type == p.ETH_ARP
    padded = p.ether(MAC_B, MAC_A, p.ETH_ARP, b"x" * 10, pad=True)
    assert len(padded) == 60 and padded[:24] == frame and padded[24:] == bytes(36)
    assert len(p.ether(MAC_B, MAC_A, p.ETH_IPV4, b"y" * 100, pad=True)) == 114


def test_ether_vlan_and_qinq() -> None:
    one = p.ether(MAC_B, MAC_A, p.ETH_IPV4, b"", vlans=(104,))
    assert one[12:18] == struct.pack("!HHH", 0x8100, 104, 0x0800)
    assert dpkt.ethernet.Ethernet(one).vlan_tags[0].id == 104
    two = p.ether(MAC_B, MAC_A, p.ETH_IPV6, b"", vlans=(300, 104), qinq=True)
    assert two[12:22] == struct.pack("!HHHHH", 0x88A8, 300, 0x8100, 104, 0x86DD)
    tags = dpkt.ethernet.Ethernet(two).vlan_tags
    assert [t.id for t in tags] == [300, 104]
    # without qinq every tag is 802.1Q; a TCI keeps its priority bits
    prio = p.ether(MAC_B, MAC_A, p.ETH_IPV4, b"", vlans=(5 << 13 | 7, 8))
    assert prio[12:20] == struct.pack("!HHHH", 0x8100, 0xA007, 0x8100, 8)


def test_arp() -> None:
    body = p.arp(p.ARP_REQUEST, MAC_A, A4, "00:00:00:00:00:00", "10.40.1.1")
    assert len(body) == 28
    a = dpkt.arp.ARP(body)
    assert (a.hrd, a.pro, a.hln, a.pln, a.op) == (1, 0x0800, 6, 4, 1)
    assert a.sha == p.mac_bytes(MAC_A) and a.spa == bytes((10, 40, 1, 33))
    assert a.tpa == bytes((10, 40, 1, 1))


def test_sll_and_sll2() -> None:
    inner = p.ipv4(A4, B4, 17, p.udp(5, 6, b"hi"))
    one = p.sll(inner, p.ETH_IPV4, MAC_A)
    assert len(one) == 16 + len(inner)
    s = dpkt.sll.SLL(one)
    assert (s.type, s.hrd, s.hlen, s.ethtype) == (0, 1, 6, 0x0800)
    assert s.hdr[:6] == p.mac_bytes(MAC_A) and isinstance(s.data, dpkt.ip.IP)
    two = p.sll2(inner, p.ETH_IPV4, MAC_A, ifindex=3, pkttype=4)
    assert len(two) == 20 + len(inner)
    proto, _, ifindex, hatype, pkttype, alen = struct.unpack("!HHIHBB", two[:12])
    assert (proto, ifindex, hatype, pkttype, alen) == (0x0800, 3, 1, 4, 6)
    assert two[12:18] == p.mac_bytes(MAC_A) and two[20:] == inner


# --- network layer ---


def test_ipv4_header_and_checksum() -> None:
    pkt = p.ipv4(A4, B4, 6, b"z" * 20, ttl=127, ident=0x1234, flags_df=True)
    assert p.checksum(pkt[:20]) == 0
    ip = dpkt.ip.IP(pkt)
    assert (ip.v, ip.hl, ip.len, ip.ttl, ip.id, ip.p) == (4, 5, 40, 127, 0x1234, 6)
    assert ip.df and not ip.mf and ip.offset == 0
    assert ip.src == bytes((10, 40, 1, 33)) and ip.dst == bytes((10, 20, 0, 15))


def test_ipv4_options_fragments_and_bad_length() -> None:
    pkt = p.ipv4(A4, B4, 17, b"d" * 16, options=b"\x94\x04\x00", more_fragments=True,
                 frag_offset=185, tos=0xB8)
    ip = dpkt.ip.IP(pkt)
    assert ip.hl == 6 and ip.opts == b"\x94\x04\x00\x00" and ip.tos == 0xB8
    assert ip.mf and not ip.df and struct.unpack("!H", pkt[6:8])[0] == 0x2000 | 185
    assert p.checksum(pkt[:24]) == 0
    short = p.ipv4(A4, B4, 17, b"d" * 16, total_length=9999)
    assert struct.unpack("!H", short[2:4])[0] == 9999 and p.checksum(short[:20]) == 0
    with pytest.raises(ValueError):
        p.ipv4(A4, B4, 17, b"", options=bytes(41))


def walk_ipv6(pkt: bytes) -> tuple[list[tuple[int, int]], int, bytes]:
    """(type, length) of each extension header, the final next header, the payload."""
    nxt, off, seen = pkt[6], 40, []
    while nxt in (0, 43, 44, 60):
        length = 8 if nxt == 44 else (pkt[off + 1] + 1) * 8
        seen.append((nxt, length))
        nxt, off = pkt[off], off + length
    return seen, nxt, pkt[off:]


def test_ipv6_extension_chain() -> None:
    payload = p.udp(1000, 53, b"q", src=A6, dst=B6)
    exts = [p.hop_by_hop(p.router_alert()), p.dest_options(),
            p.routing(["fd00::9", "fd00::a"], routing_type=0), p.fragment_header(0, True, 77)]
    pkt = p.ipv6(A6, B6, 17, payload, hop_limit=1, ext_headers=exts, flow_label=0xABCDE)
    assert struct.unpack("!I", pkt[:4])[0] == (6 << 28) | 0xABCDE
    assert struct.unpack("!H", pkt[4:6])[0] == len(pkt) - 40 and pkt[7] == 1
    seen, nxt, rest = walk_ipv6(pkt)
    assert seen == [(0, 8), (60, 8), (43, 40), (44, 8)]
    assert nxt == 17 and rest == payload
    routing_hdr = pkt[56:96]
    assert routing_hdr[2:4] == b"\x00\x02"  # type 0, segments left 2
    frag = pkt[96:104]
    assert struct.unpack("!HI", frag[2:8]) == (1, 77)  # offset 0, M set, ident
    ip6 = dpkt.ip6.IP6(pkt)
    assert ip6.p == 17 and set(ip6.extension_hdrs) >= {0, 60, 43, 44}


def test_ipv6_without_extensions_and_override() -> None:
    pkt = p.ipv6(A6, B6, 59, b"", payload_length=200)
    assert pkt[6] == 59 and struct.unpack("!H", pkt[4:6])[0] == 200 and len(pkt) == 40


@given(st.binary(max_size=64))
def test_option_headers_padded_to_8(opts: bytes) -> None:
    for kind, (htype, header) in ((0, p.hop_by_hop(opts)), (60, p.dest_options(opts))):
        assert htype == kind
        assert len(header) % 8 == 0 and (header[1] + 1) * 8 == len(header)
        assert header[2:2 + len(opts)] == opts
        pad = header[2 + len(opts):]
        if len(pad) == 1:
            assert pad == b"\x00"  # Pad1
        elif pad:
            assert pad[0] == 1 and pad[1] == len(pad) - 2 and not any(pad[2:])  # PadN


def test_fragment_header_fields() -> None:
    htype, body = p.fragment_header(1000, False, 0xDEADBEEF)
    assert htype == 44 and len(body) == 8
    assert struct.unpack("!HI", body[2:]) == (1000 << 3, 0xDEADBEEF)


# --- transport layer ---


@settings(max_examples=50)
@given(st.binary(max_size=300), st.integers(0, 65535), st.integers(0, 65535),
       st.integers(0, 2**32 - 1))
def test_tcp_udp_checksums(payload: bytes, sport: int, dport: int, seq: int) -> None:
    for src, dst in ((A4, B4), (A6, B6)):
        seg = p.tcp(sport, dport, "PA", seq, 7, payload, p.tcp_syn_options(), src=src, dst=dst)
        assert valid_l4(src, dst, 6, seg)
        dg = p.udp(sport, dport, payload, src=src, dst=dst)
        assert valid_l4(src, dst, 17, dg) and dg[6:8] != b"\x00\x00"


def test_tcp_fields() -> None:
    seg = p.tcp(49152, 443, "SA", seq=2**32 + 5, ack=9, options=b"\x02\x04\x05\xb4\x01",
                window=1024, payload=b"hello")
    t = dpkt.tcp.TCP(seg)
    assert (t.sport, t.dport, t.seq, t.ack, t.win) == (49152, 443, 5, 9, 1024)
    assert t.flags == dpkt.tcp.TH_SYN | dpkt.tcp.TH_ACK and t.off == 7
    assert t.opts == b"\x02\x04\x05\xb4\x01\x00\x00\x00" and t.data == b"hello"
    assert seg[16:18] == b"\x00\x00"  # no src/dst: checksum left 0
    assert p.tcp_flags("FSRPAUEC") == 0xFF


def test_udp_zero_checksum_becomes_ffff() -> None:
    base = p.udp(1, 2, b"\x00\x00", src=A4, dst=B4)
    word = (0xFFFF - (0xFFFF ^ struct.unpack("!H", base[6:8])[0])) & 0xFFFF
    dg = p.udp(1, 2, struct.pack("!H", word), src=A4, dst=B4)
    assert dg[6:8] == b"\xff\xff" and valid_l4(A4, B4, 17, dg)
    assert struct.unpack("!H", p.udp(1, 2, b"abc", length=4)[4:6])[0] == 4


def test_icmp_and_icmpv6() -> None:
    msg = p.icmp(8, 0, ident=0x4242, seq=7, payload=b"ping!")
    assert p.checksum(msg) == 0
    e = dpkt.icmp.ICMP(msg)
    assert (e.type, e.code, e.data.id, e.data.seq, e.data.data) == (8, 0, 0x4242, 7, b"ping!")
    ns = p.icmpv6(135, 0, p.nd_solicit(B6, MAC_A), src=A6, dst=p.solicited_node(B6))
    assert valid_l4(A6, p.solicited_node(B6), 58, ns)
    assert ns[8:24] == p.ip_bytes(B6) and ns[24:32] == b"\x01\x01" + p.mac_bytes(MAC_A)
    na = p.nd_advert(B6, MAC_B, router=True)
    assert struct.unpack("!I", na[:4])[0] == 0xE0000000 and na[20:22] == b"\x02\x01"


def test_sctp_crc32c_and_gre() -> None:
    assert p.crc32c(b"123456789") == 0xE3069283
    data = p.sctp_chunk(0, 3, struct.pack("!IHHI", 1, 0, 0, 46) + b"odd")  # DATA, TSN 1
    assert len(data) == 20 and struct.unpack("!H", data[2:4])[0] == 19 and data[19] == 0
    pkt = p.sctp(5000, 3868, data, vtag=0xCAFE)
    zeroed = pkt[:8] + bytes(4) + pkt[12:]
    assert struct.unpack("<I", pkt[8:12])[0] == p.crc32c(zeroed)  # CRC32c, little endian
    s = dpkt.sctp.SCTP(pkt)
    assert (s.sport, s.dport, s.vtag) == (5000, 3868, 0xCAFE)
    assert s.chunks[0].type == 0 and s.chunks[0].data.endswith(b"odd")
    inner = p.ipv4("1.1.1.1", "2.2.2.2", 1, p.icmp(8, 0))
    g = dpkt.gre.GRE(p.gre(p.ETH_IPV4, inner))
    assert g.p == p.ETH_IPV4 and bytes(g.data) == inner
    keyed = p.gre(p.ETH_IPV4, inner, key=0x1234)
    assert keyed[:8] == struct.pack("!HHI", 0x2000, 0x0800, 0x1234)


def test_ipv6_address_helpers() -> None:
    assert p.solicited_node("fd00:40:1::33") == "ff02::1:ff00:33"
    assert p.solicited_node("fe80::209:fbff:fe3c:4101") == "ff02::1:ff3c:4101"
    assert p.multicast_mac("ff02::1:ff3c:4101") == "33:33:ff:3c:41:01"
    assert p.link_local("00:09:fb:3c:41:01") == "fe80::209:fbff:fe3c:4101"
    with pytest.raises(ValueError):
        p.mac_bytes("00:11:22:33:44")


# --- the real tshark ---


def sample_frames() -> list[tuple[bytes, str]]:
    """(Ethernet frame, protocol tshark shows) for one of each builder."""
    e = p.ether
    ll = p.link_local(MAC_A)
    return [
        (e(MAC_B, MAC_A, p.ETH_IPV4, p.ipv4(A4, B4, 6, p.tcp(
            49200, 443, "S", 1, options=p.tcp_syn_options(), src=A4, dst=B4)),
           vlans=(104,)), "TCP"),
        (e(MAC_B, MAC_A, p.ETH_IPV4, p.ipv4(A4, B4, 17, p.udp(
            5353, 53, b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x01\x00\x01",
            src=A4, dst=B4)), vlans=(7, 104), qinq=True), "DNS"),
        (e(MAC_B, MAC_A, p.ETH_IPV4, p.ipv4(A4, "10.40.1.1", 1, p.icmp(
            8, 0, 1, 1, b"abcdefgh"), options=b"\x01\x01\x01\x00")), "ICMP"),
        (e(p.BROADCAST_MAC, MAC_A, p.ETH_ARP, p.arp(
            1, MAC_A, A4, "00:00:00:00:00:00", "10.40.1.1"), pad=True), "ARP"),
        (e(p.multicast_mac("ff02::16"), MAC_A, p.ETH_IPV6, p.ipv6(
            ll, "ff02::16", 58, p.icmpv6(143, 0, bytes(4), src=ll, dst="ff02::16"),
            hop_limit=1, ext_headers=[p.hop_by_hop(p.router_alert())])), "ICMPv6"),
        (e(MAC_B, MAC_A, p.ETH_IPV6, p.ipv6(A6, B6, 6, p.tcp(
            40000, 2575, "PA", 5, 6, b"\x0bMSH|^~\\&|A\r\x1c\r", src=A6, dst=B6),
            ext_headers=[p.dest_options()])), "HL7"),
        (e(MAC_B, MAC_A, p.ETH_IPV4, p.ipv4(A4, B4, 132, p.sctp(
            2905, 2905, p.sctp_chunk(1, 0, struct.pack("!IIHHI", 1, 65535, 1, 1, 1)), 0))),
         "SCTP"),
        (e(MAC_B, MAC_A, p.ETH_IPV4, p.ipv4(A4, B4, 47, p.gre(p.ETH_IPV4, p.ipv4(
            "1.1.1.1", "2.2.2.2", 17, p.udp(50123, 50124, b"x", src="1.1.1.1",
                                           dst="2.2.2.2"))))),
         "UDP"),
    ]


def tshark_fields(tshark: str, capture: bytes, *fields: str) -> list[list[str]]:
    args = [tshark, "-r", "-", "-o", "tcp.check_checksum:TRUE", "-o",
            "udp.check_checksum:TRUE", "-o", "ip.check_checksum:TRUE", "-o",
            "sctp.checksum:CRC-32C", "-T", "fields", "-E", "separator=|", "-E",
            "occurrence=a", "-E", "aggregator=,"]
    for f in fields:
        args += ["-e", f]
    out = subprocess.run(args, input=capture, capture_output=True, check=True, timeout=60)
    return [line.split("|") for line in out.stdout.decode().splitlines()]


def test_tshark_decodes_every_builder_with_good_checksums(tshark: str) -> None:
    frames = sample_frames()
    buf = io.BytesIO()
    w = PcapWriter(buf)
    for i, (frame, _) in enumerate(frames):
        w.write(frame, 1_700_000_000_000_000_000 + i * 1000)
    rows = tshark_fields(tshark, buf.getvalue(), "_ws.col.Protocol", "ip.checksum.status",
                         "tcp.checksum.status", "udp.checksum.status",
                         "icmp.checksum.status", "icmpv6.checksum.status",
                         "sctp.checksum.status", "_ws.malformed", "vlan.id", "ipv6.nxt",
                         "ipv6.hopopts.nxt", "ipv6.dstopts.nxt", "ipv6.opt.router_alert")
    assert [r[0] for r in rows] == [proto for _, proto in frames]
    for row in rows:
        statuses = ",".join(row[1:7]).replace(",", " ").split()
        assert set(statuses) == ({"1"} if row[0] != "ARP" else set()), row  # 1: good
        assert row[7] == "", row
    assert rows[0][8] == "104" and rows[1][8].endswith("104")
    assert rows[4][9:13] == ["0", "58", "", "0"]  # hop-by-hop, router alert: MLD
    assert rows[5][9:12] == ["60", "", "6"]


def test_tshark_reads_cooked_captures(tshark: str) -> None:
    inner = p.ipv4(A4, B4, 17, p.udp(1, 53, b"", src=A4, dst=B4))
    for linktype, frame in ((LINKTYPE_LINUX_SLL, p.sll(inner, p.ETH_IPV4, MAC_A)),
                            (LINKTYPE_LINUX_SLL2, p.sll2(inner, p.ETH_IPV4, MAC_A, 2))):
        buf = io.BytesIO()
        PcapWriter(buf, linktype=linktype).write(frame, 0)
        rows = tshark_fields(tshark, buf.getvalue(), "ip.src", "ip.dst", "sll.src.eth",
                             "udp.checksum.status")
        assert rows == [[A4, B4, MAC_A, "1"]]
