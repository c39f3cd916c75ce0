"""Triage: which marked packets deep dissection should see. Plain Python, no tshark.

L2-L4 comes from the fast path's own decoder (appliance.common.records.decode_frames, one
call per chunk); triage reads only the payload. Only packets that can identify a device
are kept - DHCP, LLDP, CDP, mDNS, SSDP, NetBIOS, the first bytes of TLS handshakes, HTTP,
HL7/MLLP headers, DICOM associations and command sets - and of each only the ones that
would be new evidence within `ttl_s` of capture time: the dedupe key is what the packet
says (an HL7 header's applications, facilities and message type; a DICOM association's AE
titles, SOP classes and implementation; a DIMSE command; a DHCP request's options), never
just the pair of peers, so a second association or a renamed application is always seen.
"""

from __future__ import annotations

import zlib
from collections import Counter, OrderedDict
from collections.abc import Sequence
from typing import Any

from appliance.common.records import L3_IPV4, L3_IPV6, Decoded, decode_frames
from appliance.inventory.clinical import Association, Command, parse_msh, parse_pdu, pdu_header

_DISCOVERY_UDP = {67: "dhcp", 68: "dhcp", 546: "dhcpv6", 547: "dhcpv6", 5353: "mdns",
                  1900: "ssdp", 137: "nbns", 138: "nbdgm"}
_HTTP_METHODS = (b"GET ", b"POST ", b"HEAD ", b"PUT ", b"OPTIONS ", b"DELETE ", b"PATCH ")
_CDP_SNAP = b"\xaa\xaa\x03\x00\x00\x0c\x20\x00"
_TLS13 = b"\x00\x2b\x00\x02\x03\x04"        # supported_versions = TLS 1.3 in a ServerHello
_FOLLOW = 3                                  # continuation segments kept after a start
_DHCP_VOLATILE = {50, 51, 53, 54, 57, 61}    # requested address, lease, type...: not identity

Key = tuple[Any, ...]
Flow = tuple[bytes, int, bytes, int]


class Triage:
    """Decide, per marked packet, whether pyshark should see it. Plain Python, no tshark.

    Keeps only packets that carry identifying content, and per evidence key only `per_key`
    of them per `ttl_s` of capture time. TCP segments continuing a kept TLS server flight
    (TLS 1.2 and older: the certificate is in clear), HL7 message or DICOM association (up
    to 3 segments) are kept too, so tshark can reassemble them. All state is bounded (LRU
    dictionaries). Malformed HL7 and DICOM are counted by reason (`dropped`) and skipped.
    """

    def __init__(self, ttl_s: float = 3600.0, per_key: int = 1, max_keys: int = 65536) -> None:
        self.ttl_ns = int(ttl_s * 1e9)
        self.per_key = per_key
        self.max_keys = max_keys
        self._seen: OrderedDict[Key, list[int]] = OrderedDict()
        self._follow: OrderedDict[Flow, int] = OrderedDict()
        self.kept: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()

    def keep_chunk(self, chunk: Sequence[tuple[int, int, bytes]]) -> list[bool]:
        """One decision per (timestamp ns, link type, frame), in order."""
        decoded = decode_frames([(link, frame) for _, link, frame in chunk])
        return [self._decide(ts, frame, d) for (ts, _, frame), d in zip(chunk, decoded,
                                                                         strict=True)]

    def keep(self, ts: int, linktype: int, frame: bytes) -> bool:
        """One packet (tests and callers without a chunk)."""
        return self.keep_chunk([(ts, linktype, frame)])[0]

    def _decide(self, ts: int, frame: bytes, d: Decoded) -> bool:
        try:
            kind, key, follow = self._classify(frame, d)
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

    def _admit(self, key: Key, ts: int) -> bool:
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

    def _classify(self, f: bytes, d: Decoded) -> tuple[str, Key | None, Flow | None]:
        """(kind, dedupe key or None to drop, TCP flow whose next segments to keep)."""
        if not d.ok:
            return "undecodable", None, None
        if d.ethertype == 0x88CC:
            return "lldp", ("lldp", d.smac, zlib.crc32(f[14:])), None
        if d.ethertype < 0x0600:
            for off in (14, 18, 22):              # untagged, one or two VLAN tags
                if f[off:off + 8] == _CDP_SNAP:   # CDP: content without the TTL
                    return "cdp", ("cdp", d.smac, zlib.crc32(f[off + 12:])), None
            return "not_ip", None, None
        if d.l3 not in (L3_IPV4, L3_IPV6):
            return "not_ip", None, None
        if d.later_fragment:
            return "fragment", None, None
        who = d.smac or d.src
        l4 = d.l4_off
        if d.proto == 17:
            service = _DISCOVERY_UDP.get(d.dport) or _DISCOVERY_UDP.get(d.sport)
            if service is None:
                return "udp_other", None, None
            ulen = int.from_bytes(f[l4 + 4:l4 + 6], "big")
            payload = f[l4 + 8:l4 + max(8, ulen)]
            if service == "dhcp":
                return _dhcp_key(payload, who)
            if service == "dhcpv6":
                return "dhcpv6", ("dhcpv6", who, payload[:1], zlib.crc32(payload[4:])), None
            # mDNS, SSDP, NetBIOS: the same announcement again is a duplicate (id ignored)
            return service, (service, who, zlib.crc32(payload[2:])), None
        if d.proto != 6:
            return "other_proto", None, None
        payload = f[l4 + (f[l4 + 12] >> 4) * 4:]
        if len(payload) < 8 and not payload.strip(b"\x00"):
            return "no_payload", None, None      # none, or the Ethernet padding of a short frame
        flow = (d.src, d.sport, d.dst, d.dport)
        head = payload[:8]
        if head[:2] == b"\x16\x03" and len(payload) > 5 and payload[5] in (1, 2):
            if payload[5] == 1:
                return "tls_client_hello", ("tls_ch", who, d.dst, d.dport), None
            if _TLS13 in payload[:400]:
                return "tls13_server_hello", None, None     # the certificate is encrypted
            return "tls_server_hello", ("tls_sh", who, d.src, d.sport), flow
        if head.startswith(_HTTP_METHODS):
            return "http_request", ("http_rq", who, d.dst, d.dport), None
        if head.startswith(b"HTTP/1."):
            return "http_response", ("http_rs", who, d.src, d.sport), None
        if head[:1] == b"\x0b":                                   # HL7 v2 over MLLP
            msh, why = parse_msh(payload)
            if msh is None:
                return why, None, None
            return "hl7", ("hl7", who, *msh.key()), None if b"\x1c" in payload else flow
        if pdu_header(payload) is not None:
            return self._dicom(payload, who, flow)
        left = self._follow.get(flow)
        if left:                                                 # continuation segment
            if left > 1:
                self._follow[flow] = left - 1
            else:
                del self._follow[flow]
            return "continuation", ("continuation",), None
        return "tcp_other", None, None

    @staticmethod
    def _dicom(payload: bytes, who: bytes, flow: Flow) -> tuple[str, Key | None, Flow | None]:
        found, why = parse_pdu(payload)
        if isinstance(found, Association):
            whole = int.from_bytes(payload[2:6], "big") + 6 <= len(payload)
            key = ("dicom", who, found.pdu, found.calling, found.called, found.syntaxes,
                   found.implementation_uid, found.implementation_version)
            return "dicom_association", key, None if whole else flow
        if isinstance(found, Command):
            return "dicom_command", ("dicom_cmd", who, found.command, found.sop_class), None
        return why, None, None


def _dhcp_key(payload: bytes, who: bytes) -> tuple[str, Key | None, None]:
    """A DHCP message is new evidence when its identifying options change (12, 55, 60,
    81, 43...), not each time it is repeated; of the replies only the ACK matters."""
    if payload[236:240] != b"\x63\x82\x53\x63":
        return "dhcp_malformed", None, None
    options = _dhcp_options(payload)
    if options is None:
        return "dhcp_bad_option_length", None, None
    if payload[:1] == b"\x02":
        if options.get(53) != b"\x05":
            return "dhcp_offer", None, None
        return "dhcp", ("dhcp_ack", who, payload[28:34], payload[16:20]), None
    identity = b"".join(bytes((c,)) + v for c, v in sorted(options.items())
                        if c not in _DHCP_VOLATILE)
    return "dhcp", ("dhcp", who, zlib.crc32(identity)), None


def _dhcp_options(payload: bytes) -> dict[int, bytes] | None:
    """Options by code; None when an option's length runs past the end (bogus length)."""
    out: dict[int, bytes] = {}
    i = 240
    while i < len(payload):
        code = payload[i]
        if code == 255:
            break
        if code == 0:
            i += 1
            continue
        if i + 1 >= len(payload):
            return None
        length = payload[i + 1]
        if i + 2 + length > len(payload):
            return None
        out[code] = out.get(code, b"") + payload[i + 2:i + 2 + length]
        i += 2 + length
    return out
