"""Triage: which marked packets deep dissection should see. Plain Python, no tshark.

Only packets that can identify a device are kept - DHCP, LLDP, CDP, mDNS, SSDP, NetBIOS, the
first bytes of TLS handshakes, HTTP, HL7/MLLP, DICOM associations - and per evidence key only
the first few per `ttl_s` of capture time.
"""

from __future__ import annotations

import zlib
from collections import Counter, OrderedDict
from typing import Any

LINKTYPE_ETHERNET, LINKTYPE_RAW, LINKTYPE_SLL, LINKTYPE_SLL2 = 1, 101, 113, 276
LINKTYPE_IPV4, LINKTYPE_IPV6 = 228, 229

_DISCOVERY_UDP = {67: "dhcp", 68: "dhcp", 546: "dhcpv6", 547: "dhcpv6", 5353: "mdns",
                  1900: "ssdp", 137: "nbns", 138: "nbdgm"}
_HTTP_METHODS = (b"GET ", b"POST ", b"HEAD ", b"PUT ", b"OPTIONS ", b"DELETE ", b"PATCH ")
_CDP_SNAP = b"\xaa\xaa\x03\x00\x00\x0c\x20\x00"
_TLS13 = b"\x00\x2b\x00\x02\x03\x04"        # supported_versions = TLS 1.3 in a ServerHello
_FOLLOW = 3                                  # continuation segments kept after a start


class Triage:
    """Decide, per marked packet, whether pyshark should see it. Plain Python, no tshark.

    Keeps only packets that carry identifying content, and per evidence key (device, kind,
    peer) only `per_key` of them per `ttl_s` of capture time. TCP segments continuing a kept
    TLS server flight (TLS 1.2 and older: the certificate is in clear), HL7 message or DICOM
    association (up to 3 segments) are kept too, so tshark can reassemble them. All state is
    bounded (LRU dictionaries).
    """

    def __init__(self, ttl_s: float = 3600.0, per_key: int = 1, max_keys: int = 65536) -> None:
        self.ttl_ns = int(ttl_s * 1e9)
        self.per_key = per_key
        self.max_keys = max_keys
        self._seen: OrderedDict[tuple[Any, ...], list[int]] = OrderedDict()
        self._follow: OrderedDict[tuple[bytes, int, bytes, int], int] = OrderedDict()
        self.kept: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()

    def keep(self, ts: int, linktype: int, frame: bytes) -> bool:
        try:
            kind, key, follow = self._classify(linktype, frame)
        except (IndexError, ValueError):
            kind, key, follow = "undecodable", None, None
        if key is None:
            self.dropped[kind] += 1
            return False
        if kind != "continuation" and not self._admit(key, ts):
            self.dropped["duplicate"] += 1
            return False
        if follow is not None:
            self._follow[follow] = _FOLLOW
            self._follow.move_to_end(follow)
            if len(self._follow) > 4096:
                self._follow.popitem(last=False)
        self.kept[kind] += 1
        return True

    def _admit(self, key: tuple[Any, ...], ts: int) -> bool:
        seen = self._seen.get(key)
        if seen is None or ts - seen[0] >= self.ttl_ns or ts < seen[0]:
            self._seen[key] = [ts, 1]
            self._seen.move_to_end(key)
            if len(self._seen) > self.max_keys:
                self._seen.popitem(last=False)
            return True
        if seen[1] < self.per_key:
            seen[1] += 1
            return True
        return False

    def _classify(self, linktype: int, f: bytes) -> tuple[str, tuple[Any, ...] | None,
                                                          tuple[bytes, int, bytes, int] | None]:
        """(kind, dedupe key or None to drop, TCP flow whose next segments to keep)."""
        smac = b""
        if linktype == LINKTYPE_ETHERNET:
            smac, off = f[6:12], 14
            et = int.from_bytes(f[12:14], "big")
            for _ in range(2):
                if et not in (0x8100, 0x88A8, 0x9100):
                    break
                et = int.from_bytes(f[off + 2:off + 4], "big")
                off += 4
            if et < 0x0600 and f[off:off + 8] == _CDP_SNAP:      # CDP: content sans TTL
                return "cdp", ("cdp", smac, zlib.crc32(f[off + 12:])), None
        elif linktype == LINKTYPE_SLL:
            smac, et, off = f[6:12], int.from_bytes(f[14:16], "big"), 16
        elif linktype == LINKTYPE_SLL2:
            smac, et, off = f[12:18], int.from_bytes(f[0:2], "big"), 20
        elif linktype in (LINKTYPE_RAW, LINKTYPE_IPV4, LINKTYPE_IPV6):
            et, off = (0x86DD if f[0] >> 4 == 6 else 0x0800), 0
        else:
            return "linktype", None, None
        if et == 0x88CC:
            return "lldp", ("lldp", smac, zlib.crc32(f[off:])), None
        if et == 0x0800:
            ihl = (f[off] & 15) * 4
            if (int.from_bytes(f[off + 6:off + 8], "big") & 0x1FFF) or ihl < 20:
                return "fragment", None, None
            proto = f[off + 9]
            src, dst = f[off + 12:off + 16], f[off + 16:off + 20]
            end = min(len(f), off + int.from_bytes(f[off + 2:off + 4], "big"))
            l4 = off + ihl
        elif et == 0x86DD:
            proto, src, dst = f[off + 6], f[off + 8:off + 24], f[off + 24:off + 40]
            end = min(len(f), off + 40 + int.from_bytes(f[off + 4:off + 6], "big"))
            l4 = off + 40
            for _ in range(4):
                if proto in (0, 43, 60):
                    proto, l4 = f[l4], l4 + (f[l4 + 1] + 1) * 8
                elif proto == 44:
                    if int.from_bytes(f[l4 + 2:l4 + 4], "big") >> 3:
                        return "fragment", None, None
                    proto, l4 = f[l4], l4 + 8
                else:
                    break
        else:
            return "not_ip", None, None
        who = smac or src
        sport = int.from_bytes(f[l4:l4 + 2], "big")
        dport = int.from_bytes(f[l4 + 2:l4 + 4], "big")
        if proto == 17:
            service = _DISCOVERY_UDP.get(dport) or _DISCOVERY_UDP.get(sport)
            if service is None:
                return "udp_other", None, None
            payload = f[l4 + 8:end]
            if service == "dhcp":
                # a client's DISCOVER and REQUEST say the same; of the replies only the ACK
                # (the address given) matters
                if payload[:1] == b"\x02" and _dhcp_type(payload) != 5:
                    return "dhcp_offer", None, None
                return "dhcp", ("dhcp", who, payload[28:34], payload[:1]), None
            if service == "dhcpv6":
                return "dhcpv6", ("dhcpv6", who, payload[:1]), None
            # mDNS, SSDP, NetBIOS: the same announcement again is a duplicate (id ignored)
            return service, (service, who, zlib.crc32(payload[2:])), None
        if proto != 6:
            return "other_proto", None, None
        payload = f[l4 + (f[l4 + 12] >> 4) * 4:end]
        if not payload:
            return "no_payload", None, None
        flow = (src, sport, dst, dport)
        head = payload[:8]
        if head[:2] == b"\x16\x03" and len(payload) > 5 and payload[5] in (1, 2):
            if payload[5] == 1:
                return "tls_client_hello", ("tls_ch", who, dst, dport), None
            if _TLS13 in payload[:400]:
                return "tls13_server_hello", None, None     # the certificate is encrypted
            return "tls_server_hello", ("tls_sh", who, src, sport), flow
        if head.startswith(_HTTP_METHODS):
            return "http_request", ("http_rq", who, dst, dport), None
        if head.startswith(b"HTTP/1."):
            return "http_response", ("http_rs", who, src, sport), None
        if head[:4] == b"\x0bMSH":                               # HL7 v2 over MLLP
            fields = payload[1:400].split(b"|", 9)
            msg_type = fields[8][:20] if len(fields) > 8 else b""
            if msg_type.startswith(b"ACK"):      # says nothing the acknowledged message did not
                return "hl7_ack", None, None
            return "hl7", ("hl7", who, msg_type), None if b"\x1c" in payload else flow
        if (len(payload) >= 74 and payload[0] in (1, 2) and payload[1] == 0
                and payload[6:8] == b"\x00\x01"):                # DICOM A-ASSOCIATE-RQ/AC
            whole = int.from_bytes(payload[2:6], "big") + 6 <= len(payload)
            return "dicom", ("dicom", who, payload[0], payload[10:42]), None if whole else flow
        left = self._follow.get(flow)
        if left:                                                 # continuation segment
            if left > 1:
                self._follow[flow] = left - 1
            else:
                del self._follow[flow]
            return "continuation", ("continuation",), None
        return "tcp_other", None, None


def _dhcp_type(payload: bytes) -> int:
    """DHCP message type (option 53), 0 when absent or unreadable."""
    i = 240
    if payload[236:240] != b"\x63\x82\x53\x63":
        return 0
    while i + 1 < len(payload):
        code = payload[i]
        if code == 255:
            break
        if code == 0:
            i += 1
            continue
        length = payload[i + 1]
        if code == 53 and length >= 1 and i + 2 < len(payload):
            return payload[i + 2]
        i += 2 + length
    return 0


