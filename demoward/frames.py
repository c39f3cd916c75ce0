"""Small composable frame builders for tests, demos and benchmarks.

Every builder returns ``bytes`` and takes the layer above it as ``payload``, so frames
are written inside out::

    ether(dst, src, ETH_IPV4, ipv4(a, b, IPPROTO_TCP, tcp(1234, 443, src=a, dst=b)))

Addresses are text: ``"10.0.0.1"``, ``"fd00::1"``, ``"00:11:22:33:44:55"``.

Checksums: the IPv4 header, ICMP and SCTP (CRC32c) checksums are always correct; GRE
carries none. TCP, UDP and ICMPv6 need the IP pseudo-header: pass ``src`` and ``dst``
(the text addresses given to :func:`ipv4` / :func:`ipv6`; with a Routing header, the
final destination) and the checksum is correct; without them it is left 0 (tshark does
not validate checksums by default; a UDP checksum of 0 over IPv4 means "none"). Lengths
(IPv4 total length, IPv6 payload length, UDP length) are computed unless overridden
where a parameter says so. Nothing else is validated, so malformed frames can be built
on purpose (slice the result to truncate it).
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Sequence
from functools import lru_cache

from appliance.common.records import mac_bytes

ETH_IPV4 = 0x0800
ETH_ARP = 0x0806
ETH_VLAN = 0x8100
ETH_QINQ = 0x88A8
ETH_IPV6 = 0x86DD
ETH_LLDP = 0x88CC

IPPROTO_HOPOPTS = 0
IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_ROUTING = 43
IPPROTO_FRAGMENT = 44
IPPROTO_GRE = 47
IPPROTO_ICMPV6 = 58
IPPROTO_NONE = 59
IPPROTO_DSTOPTS = 60
IPPROTO_SCTP = 132

ARP_REQUEST = 1
ARP_REPLY = 2

BROADCAST_MAC = "ff:ff:ff:ff:ff:ff"

_TCP_FLAGS = {"F": 0x01, "S": 0x02, "R": 0x04, "P": 0x08, "A": 0x10, "U": 0x20,
              "E": 0x40, "C": 0x80}


# --- addresses and checksums -------------------------------------------------------


def ip_bytes(addr: str) -> bytes:
    """An IPv4 or IPv6 address in text to 4 or 16 bytes."""
    return ipaddress.ip_address(addr).packed


def checksum(data: bytes) -> int:
    """RFC 1071 Internet checksum of ``data`` (odd lengths padded with a zero byte)."""
    if len(data) % 2:
        data += b"\x00"
    total = int.from_bytes(data, "big") % 0xFFFF  # 2**16 == 1 (mod 0xffff)
    if total == 0 and any(data):
        total = 0xFFFF
    return ~total & 0xFFFF


def pseudo_header(src: str, dst: str, proto: int, length: int) -> bytes:
    """The IPv4 or IPv6 pseudo-header for a TCP/UDP/ICMPv6 checksum."""
    s, d = ip_bytes(src), ip_bytes(dst)
    if len(s) != len(d):
        raise ValueError("src and dst must be of the same IP version")
    if len(s) == 4:
        return s + d + struct.pack("!BBH", 0, proto, length)
    return s + d + struct.pack("!IxxxB", length, proto)


def _l4_checksum(segment: bytes, off: int, proto: int, src: str | None,
                 dst: str | None, zero_is_ffff: bool = False) -> bytes:
    """Fill the 16-bit checksum at ``off`` of ``segment`` when src and dst are known."""
    if src is None or dst is None:
        return segment
    ck = checksum(pseudo_header(src, dst, proto, len(segment)) + segment)
    if ck == 0 and zero_is_ffff:
        ck = 0xFFFF
    return segment[:off] + struct.pack("!H", ck) + segment[off + 2:]


# --- link layer ----------------------------------------------------------------------


def ether(dst: str, src: str, ethertype: int, payload: bytes, vlans: Sequence[int] = (),
          qinq: bool = False, pad: bool = False) -> bytes:
    """Ethernet II frame (no FCS).

    ``vlans`` are 802.1Q tag control fields, outermost first (a plain VLAN id is a TCI with
    priority 0); with ``qinq`` the outer tag uses TPID 0x88a8. ``pad`` pads to the
    60-byte Ethernet minimum as a receiving NIC would capture it.
    """
    tags = b"".join(
        struct.pack("!HH", ETH_QINQ if (qinq and i == 0) else ETH_VLAN, tci & 0xFFFF)
        for i, tci in enumerate(vlans))
    frame = mac_bytes(dst) + mac_bytes(src) + tags + struct.pack("!H", ethertype) + payload
    if pad and len(frame) < 60:
        frame += bytes(60 - len(frame))
    return frame


def arp(op: int, sha: str, spa: str, tha: str, tpa: str) -> bytes:
    """ARP payload for Ethernet/IPv4 (28 bytes); op 1 = request, 2 = reply."""
    return (struct.pack("!HHBBH", 1, ETH_IPV4, 6, 4, op) + mac_bytes(sha) + ip_bytes(spa)
            + mac_bytes(tha) + ip_bytes(tpa))


def sll(payload: bytes, ethertype: int, src_mac: str, pkttype: int = 0,
        arphrd: int = 1) -> bytes:
    """Linux cooked capture v1 (LINKTYPE_LINUX_SLL, 16-byte header)."""
    addr = mac_bytes(src_mac)
    return (struct.pack("!HHH", pkttype, arphrd, len(addr)) + addr.ljust(8, b"\x00")
            + struct.pack("!H", ethertype) + payload)


def sll2(payload: bytes, ethertype: int, src_mac: str, ifindex: int = 1, pkttype: int = 0,
         arphrd: int = 1) -> bytes:
    """Linux cooked capture v2 (LINKTYPE_LINUX_SLL2, 20-byte header)."""
    addr = mac_bytes(src_mac)
    return (struct.pack("!HHIHBB", ethertype, 0, ifindex, arphrd, pkttype, len(addr))
            + addr.ljust(8, b"\x00") + payload)


# --- other link types and encapsulations (fastpath decode tests, docs/fastpath.md) ---------

ETH_PPPOE_SESSION = 0x8864
ETH_MPLS = 0x8847
ETH_VNTAG = 0x8926
ETH_NSH = 0x894F


def null_loopback(payload: bytes, family: int = 2, little_endian: bool = True) -> bytes:
    """LINKTYPE_NULL (0): the address family in the writing host's byte order."""
    return struct.pack("<I" if little_endian else "!I", family) + payload


def loop(payload: bytes, family: int = 24) -> bytes:
    """LINKTYPE_LOOP (108, OpenBSD): the address family in network byte order."""
    return struct.pack("!I", family) + payload


def ppp(payload: bytes, protocol: int = 0x0021, hdlc: bool = True) -> bytes:
    """PPP (LINKTYPE_PPP 9 / PPP_HDLC 50): optional FF 03, then the protocol."""
    return (b"\xff\x03" if hdlc else b"") + struct.pack("!H", protocol) + payload


def pppoe_session(payload: bytes, protocol: int = 0x0021, session: int = 1) -> bytes:
    """PPPoE session header and PPP protocol (EtherType 0x8864's payload, LINKTYPE 51)."""
    return struct.pack("!BBHHH", 0x11, 0, session, len(payload) + 2, protocol) + payload


def cisco_hdlc(payload: bytes, ethertype: int = ETH_IPV4) -> bytes:
    """Cisco HDLC (LINKTYPE_C_HDLC 104): address 0x0F, control 0, EtherType."""
    return struct.pack("!BBH", 0x0F, 0, ethertype) + payload


def frame_relay(payload: bytes, nlpid: int = 0xCC, dlci: int = 16) -> bytes:
    """Frame Relay (LINKTYPE_FRELAY 107), RFC 2427: Q.922 address, UI, NLPID."""
    address = ((dlci >> 4) << 10) | ((dlci & 0xF) << 4) | 1
    return struct.pack("!HBB", address, 0x03, nlpid) + payload


def mpls(payload: bytes, labels: Sequence[int] = (100, 200)) -> bytes:
    """An MPLS label stack (EtherType 0x8847's payload), bottom of stack on the last."""
    return b"".join(struct.pack("!I", (label << 12) | (int(i == len(labels) - 1) << 8) | 64)
                    for i, label in enumerate(labels)) + payload


def vntag(payload: bytes, ethertype: int = ETH_IPV4) -> bytes:
    """VN-Tag (EtherType 0x8926's payload): 4 bytes of tag, then the next EtherType."""
    return struct.pack("!IH", 0x80010002, ethertype) + payload


def nsh(payload: bytes, next_protocol: int = 1) -> bytes:
    """Network Service Header, MD type 2 with no context (8 bytes); next protocol 1 IPv4,
    2 IPv6, 3 Ethernet (EtherType 0x894F's payload)."""
    return struct.pack("!HBBI", (63 << 6) | 2, 2, next_protocol, (7 << 8) | 255) + payload


def llc_snap(payload: bytes, ethertype: int = ETH_IPV4) -> bytes:
    """802.2 LLC with SNAP (an 802.3 frame's payload): AA AA 03, OUI 0, EtherType."""
    return b"\xaa\xaa\x03\x00\x00\x00" + struct.pack("!H", ethertype) + payload


def ether_8023(dst: str, src: str, payload: bytes) -> bytes:
    """An 802.3 frame: the length field instead of an EtherType."""
    return mac_bytes(dst) + mac_bytes(src) + struct.pack("!H", len(payload)) + payload


def slip(payload: bytes) -> bytes:
    """LINKTYPE_SLIP (8): a 16-byte direction and compression header."""
    return bytes(16) + payload


def pflog(payload: bytes, family: int = 2) -> bytes:
    """OpenBSD pflog (LINKTYPE_PFLOG 117): a 61-byte header padded to 64."""
    return bytes([61, family]) + bytes(62) + payload


def nflog(payload: bytes, family: int = 2) -> bytes:
    """Linux NFLOG (LINKTYPE_NFLOG 239): header, a prefix TLV, the payload TLV (type 9)."""
    prefix = b"wardtap\x00"
    return (struct.pack("!BBH", family, 0, 0)
            + struct.pack("<HH", 4 + len(prefix), 10) + prefix
            + struct.pack("<HH", 4 + len(payload), 9) + payload)


def dot11_data(payload: bytes, bssid: str, src: str, dst: str, to_ds: bool = True,
               qos: bool = False, ethertype: int = ETH_IPV4) -> bytes:
    """An unprotected 802.11 data frame (LINKTYPE_IEEE802_11 105) with LLC/SNAP."""
    fc0 = 0x88 if qos else 0x08
    if to_ds:
        a1, a2, a3 = bssid, src, dst
    else:
        a1, a2, a3 = dst, bssid, src
    header = (struct.pack("!BBH", fc0, 0x01 if to_ds else 0x02, 0) + mac_bytes(a1)
              + mac_bytes(a2) + mac_bytes(a3) + b"\x00\x00" + (b"\x00\x00" if qos else b""))
    return header + llc_snap(payload, ethertype)


def radiotap(frame_80211: bytes) -> bytes:
    """LINKTYPE_IEEE802_11_RADIOTAP (127): a minimal 8-byte radiotap header."""
    return struct.pack("<BBHI", 0, 0, 8, 0) + frame_80211


# --- network layer ---------------------------------------------------------------------


def ipv4(src: str, dst: str, proto: int, payload: bytes, ttl: int = 64, ident: int = 0,
         flags_df: bool = False, more_fragments: bool = False, frag_offset: int = 0,
         options: bytes = b"", total_length: int | None = None, tos: int = 0) -> bytes:
    """IPv4 packet with a correct header checksum.

    ``frag_offset`` is in 8-byte units; ``options`` are zero-padded to a 4-byte multiple;
    ``total_length`` overrides the computed length (for malformed-packet tests).
    """
    if len(options) % 4:
        options += bytes(4 - len(options) % 4)
    ihl = 5 + len(options) // 4
    if ihl > 15:
        raise ValueError("IPv4 options longer than 40 bytes")
    length = ihl * 4 + len(payload) if total_length is None else total_length
    frag = (0x4000 if flags_df else 0) | (0x2000 if more_fragments else 0) | (
        frag_offset & 0x1FFF)
    header = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, tos, length, ident & 0xFFFF, frag,
                         ttl, proto, 0, ip_bytes(src), ip_bytes(dst)) + options
    return header[:10] + struct.pack("!H", checksum(header)) + header[12:] + payload


def _pad_options(opts: bytes) -> bytes:
    """Pad an option area so that 2 + len is a multiple of 8 (Pad1 / PadN)."""
    need = -(2 + len(opts)) % 8
    if need == 1:
        return opts + b"\x00"
    if need:
        return opts + bytes((1, need - 2)) + bytes(need - 2)
    return opts


def _options_header(next_type: int, opts: bytes) -> tuple[int, bytes]:
    body = _pad_options(opts)
    return next_type, bytes((0, (2 + len(body)) // 8 - 1)) + body


def hop_by_hop(opts: bytes = b"") -> tuple[int, bytes]:
    """IPv6 Hop-by-Hop Options header; ``opts`` (TLVs) padded to an 8-byte multiple."""
    return _options_header(IPPROTO_HOPOPTS, opts)


def dest_options(opts: bytes = b"") -> tuple[int, bytes]:
    """IPv6 Destination Options header; ``opts`` (TLVs) padded to an 8-byte multiple."""
    return _options_header(IPPROTO_DSTOPTS, opts)


def router_alert(value: int = 0) -> bytes:
    """Router Alert option TLV (RFC 2711; 0 = MLD), for :func:`hop_by_hop`."""
    return struct.pack("!BBH", 5, 2, value)


def routing(addresses: Sequence[str] = (), routing_type: int = 0,
            segments_left: int | None = None) -> tuple[int, bytes]:
    """IPv6 Routing header with 4 reserved bytes then the given IPv6 addresses."""
    body = bytes(4) + b"".join(ip_bytes(a) for a in addresses)
    left = len(addresses) if segments_left is None else segments_left
    return IPPROTO_ROUTING, bytes((0, len(body) // 8, routing_type, left)) + body


def fragment_header(offset_units: int, more: bool, ident: int) -> tuple[int, bytes]:
    """IPv6 Fragment header; ``offset_units`` in 8-byte units."""
    return IPPROTO_FRAGMENT, struct.pack("!BBHI", 0, 0, (offset_units & 0x1FFF) << 3 | more,
                                         ident & 0xFFFFFFFF)


def ipv6(src: str, dst: str, next_header: int, payload: bytes, hop_limit: int = 64,
         ext_headers: Sequence[tuple[int, bytes]] = (), flow_label: int = 0,
         traffic_class: int = 0, payload_length: int | None = None) -> bytes:
    """IPv6 packet; ``ext_headers`` are (type, header) pairs from the helpers above.

    Each extension header's first byte is overwritten with the type of what follows, and
    the fixed header's next-header field names the first extension header, so the chain
    ends at ``next_header``. ``payload_length`` overrides the computed length.
    """
    types = [t for t, _ in ext_headers] + [next_header]
    chain = b"".join(bytes((types[i + 1],)) + body[1:] for i, (_, body) in
                     enumerate(ext_headers))
    length = len(chain) + len(payload) if payload_length is None else payload_length
    first = (6 << 28) | ((traffic_class & 0xFF) << 20) | (flow_label & 0xFFFFF)
    return (struct.pack("!IHBB", first, length, types[0], hop_limit) + ip_bytes(src)
            + ip_bytes(dst) + chain + payload)


# --- transport layer -------------------------------------------------------------------


def tcp_flags(flags: str) -> int:
    """``"SA"`` -> 0x12; letters F S R P A U E C."""
    return sum(_TCP_FLAGS[c] for c in set(flags.upper()))


def tcp(sport: int, dport: int, flags: str = "S", seq: int = 0, ack: int = 0,
        payload: bytes = b"", options: bytes = b"", window: int = 64240, urgent: int = 0,
        src: str | None = None, dst: str | None = None) -> bytes:
    """TCP segment; options zero-padded to 4 bytes; checksum set when src/dst given."""
    if len(options) % 4:
        options += bytes(4 - len(options) % 4)
    offset = (5 + len(options) // 4) << 12
    seg = struct.pack("!HHIIHHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF,
                      offset | tcp_flags(flags), window, 0, urgent) + options + payload
    return _l4_checksum(seg, 16, IPPROTO_TCP, src, dst)


def tcp_syn_options(mss: int = 1460, wscale: int | None = 7, sack: bool = True) -> bytes:
    """Typical SYN options: MSS, then NOP + window scale, then SACK-permitted."""
    opts = struct.pack("!BBH", 2, 4, mss)
    if wscale is not None:
        opts += struct.pack("!BBBB", 1, 3, 3, wscale)
    if sack:
        opts += b"\x01\x01\x04\x02"
    return opts


def udp(sport: int, dport: int, payload: bytes, src: str | None = None,
        dst: str | None = None, length: int | None = None) -> bytes:
    """UDP datagram; checksum set when src/dst given (0 becomes 0xffff)."""
    n = 8 + len(payload) if length is None else length
    dgram = struct.pack("!HHHH", sport, dport, n, 0) + payload
    return _l4_checksum(dgram, 6, IPPROTO_UDP, src, dst, zero_is_ffff=True)


def icmp(type: int, code: int, ident: int = 0, seq: int = 0, payload: bytes = b"") -> bytes:
    """ICMP (v4) message with a correct checksum; ident/seq fill the 4-byte rest field."""
    msg = struct.pack("!BBHHH", type, code, 0, ident, seq) + payload
    return msg[:2] + struct.pack("!H", checksum(msg)) + msg[4:]


def icmpv6(type: int, code: int, body: bytes, src: str | None = None,
           dst: str | None = None) -> bytes:
    """ICMPv6 message: type, code, checksum, then ``body`` (checksum set when src/dst)."""
    return _l4_checksum(struct.pack("!BBH", type, code, 0) + body, 2, IPPROTO_ICMPV6,
                        src, dst)


def nd_solicit(target: str, src_mac: str | None = None) -> bytes:
    """Neighbour Solicitation body (for :func:`icmpv6` type 135)."""
    opt = b"" if src_mac is None else b"\x01\x01" + mac_bytes(src_mac)
    return bytes(4) + ip_bytes(target) + opt


def nd_advert(target: str, target_mac: str | None = None, router: bool = False,
              solicited: bool = True, override: bool = True) -> bytes:
    """Neighbour Advertisement body (for :func:`icmpv6` type 136)."""
    flags = (router << 31) | (solicited << 30) | (override << 29)
    opt = b"" if target_mac is None else b"\x02\x01" + mac_bytes(target_mac)
    return struct.pack("!I", flags) + ip_bytes(target) + opt


def solicited_node(addr: str) -> str:
    """The solicited-node multicast address ff02::1:ffXX:XXXX of an IPv6 address."""
    low = int.from_bytes(ip_bytes(addr)[-3:], "big")
    return str(ipaddress.IPv6Address("ff02::1:ff00:0") + low)


def multicast_mac(addr: str) -> str:
    """Ethernet destination for an IPv6 multicast address (33:33 + low 32 bits)."""
    return ":".join(f"{b:02x}" for b in b"\x33\x33" + ip_bytes(addr)[-4:])


def link_local(mac: str) -> str:
    """The modified EUI-64 link-local IPv6 address (fe80::/64) of a MAC."""
    m = bytearray(mac_bytes(mac))
    m[0] ^= 0x02
    iid = bytes(m[:3]) + b"\xff\xfe" + bytes(m[3:])
    return str(ipaddress.IPv6Address(b"\xfe\x80" + bytes(6) + iid))


@lru_cache(maxsize=1)
def _crc32c_table() -> tuple[int, ...]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return tuple(table)


def crc32c(data: bytes) -> int:
    """CRC32c (Castagnoli), as SCTP uses it."""
    table = _crc32c_table()
    crc = 0xFFFFFFFF
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def sctp_chunk(chunk_type: int, flags: int, value: bytes) -> bytes:
    """One SCTP chunk (type, flags, length, value), padded to a 4-byte multiple."""
    chunk = struct.pack("!BBH", chunk_type, flags, 4 + len(value)) + value
    return chunk + bytes(-len(chunk) % 4)


def sctp(sport: int, dport: int, chunks: bytes = b"", vtag: int = 0) -> bytes:
    """SCTP packet: common header with a correct CRC32c, then ``chunks``."""
    pkt = struct.pack("!HHII", sport, dport, vtag, 0) + chunks
    return pkt[:8] + struct.pack("<I", crc32c(pkt)) + pkt[12:]


def gre(proto: int, payload: bytes, key: int | None = None) -> bytes:
    """GRE (RFC 2784/2890) header carrying ``proto`` (an ethertype), optional key."""
    if key is None:
        return struct.pack("!HH", 0, proto) + payload
    return struct.pack("!HHI", 0x2000, proto, key) + payload
