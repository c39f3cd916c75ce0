"""Turn the fast path's binary records (events, devices, decoded packets) into plain values.

Only events and devices reach here, never every packet (except `--packets-out`, a debugging
and testing aid).
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any, NamedTuple

from fastpath import (
    DETAIL_NAMES,
    EVENT_FIELDS,
    EVENT_NAMES,
    FLOW_END_NAMES,
    NO_DEVICE_INDEX,
    NO_RULE_INDEX,
    ORIENT_NAMES,
    REASON_NAMES,
    VERDICT_NAMES,
)

L3_ARP, L3_IPV4, L3_IPV6 = 1, 4, 6
_V4_PREFIX = b"\0" * 10 + b"\xff\xff"


@lru_cache(maxsize=4096)
def address(raw: bytes, l3: int) -> str | None:
    """A 16-byte fast-path address as text, the way tshark prints it."""
    if l3 in (L3_IPV4, L3_ARP) or (l3 == 0 and raw[:12] == _V4_PREFIX):
        return socket.inet_ntop(socket.AF_INET, raw[12:16])
    if l3 == L3_IPV6:
        return socket.inet_ntop(socket.AF_INET6, raw)
    return None


def any_address(raw: bytes) -> str | None:
    """An address of unknown family: IPv4-mapped form means IPv4; all zero means none."""
    if not any(raw):
        return None
    return address(raw, L3_IPV4 if raw[:12] == _V4_PREFIX else L3_IPV6)


@lru_cache(maxsize=4096)
def mac(raw: bytes) -> str:
    return raw.hex(":")


def mac_bytes(text: str) -> bytes:
    """``"00:11:22:33:44:55"`` to 6 bytes, in any case, with ``:``, ``-``, ``.``, space or no
    separators (``DC-A6-32-7E-5B-19``, ``dca6.327e.5b19``, ``dca6327e5b19``)."""
    digits = "".join(c for c in str(text).strip() if c not in ":-. ")
    if len(digits) != 12:
        raise ValueError(f"not a MAC address: {text!r}")
    try:
        return bytes.fromhex(digits)
    except ValueError:
        raise ValueError(f"not a MAC address: {text!r}") from None


_E = {name: i for i, name in enumerate(EVENT_FIELDS)}
_T, _TS, _FLOW, _PKTS, _BYTES, _PACKET, _FIRST = (_E[k] for k in (
    "type", "ts_ns", "flow_id", "pkts", "bytes", "packet", "first_ns"))
_SRC, _DST, _SMAC, _DMAC, _SPORT, _DPORT, _VLAN, _RULE = (_E[k] for k in (
    "src", "dst", "smac", "dmac", "sport", "dport", "vlan", "rule"))
_DEV, _PEER, _REASON, _VERDICT, _PROTO, _L3, _HASMAC, _ICMPT = (_E[k] for k in (
    "device", "peer_device", "reason", "verdict", "proto", "l3", "has_mac", "icmp_type"))
_ORIENT, _DETAIL = _E["orient"], _E["detail"]


def event_dict(rec: Sequence[Any], rule_name: Callable[[int], str | None] | None = None,
               ) -> dict[str, Any]:
    """One event (a tuple from Classifier.drain) as JSON-ready values."""
    kind = EVENT_NAMES.get(rec[_T], "unknown")
    out: dict[str, Any] = {"type": kind, "ts": rec[_TS] / 1e9}
    l3 = rec[_L3]
    if kind == "new_device":
        out.update(device=rec[_DEV], mac=mac(rec[_SMAC]) if rec[_HASMAC] else None,
                   ip=address(rec[_SRC], l3) if l3 else None, vlan=rec[_VLAN])
        return out
    if kind == "malformed":
        out.update(reason=REASON_NAMES.get(rec[_REASON], "unknown"), packet=rec[_PACKET],
                   mac=mac(rec[_SMAC]) if rec[_HASMAC] else None)
        return out
    proto = rec[_PROTO]
    out.update(flow=rec[_FLOW], src=address(rec[_SRC], l3), dst=address(rec[_DST], l3),
               proto=proto, vlan=rec[_VLAN], verdict=VERDICT_NAMES[rec[_VERDICT]],
               device=_index(rec[_DEV]), peer_device=_index(rec[_PEER]),
               orient=ORIENT_NAMES.get(rec[_ORIENT]))   # how the initiator (src) was decided
    if proto in (1, 58):
        out.update(icmp_type=rec[_ICMPT], icmp_id=rec[_SPORT])
    else:
        out.update(sport=rec[_SPORT], dport=rec[_DPORT])
    rule = rec[_RULE]
    name = None if rule == NO_RULE_INDEX or rule_name is None else rule_name(rule)
    if kind == "violation":
        # No rule matched; this is the one that came closest ("reason" says how it failed).
        out["rule"] = None
        out["nearest_rule"] = name
    else:
        out["rule"] = name
    if kind == "flow_end":
        out.update(end=FLOW_END_NAMES.get(rec[_REASON], "unknown"), first=rec[_FIRST] / 1e9,
                   packets=rec[_PKTS], bytes=rec[_BYTES])
    else:
        out["reason"] = REASON_NAMES.get(rec[_REASON], "unknown")
        if rec[_DETAIL]:
            # A first payload broke the rule: the field that did not match.
            out["field"] = DETAIL_NAMES.get(rec[_DETAIL], "unknown")
        out["packet"] = rec[_PACKET]
        if rec[_HASMAC]:
            out["smac"] = mac(rec[_SMAC])
            if rec[_HASMAC] == 2:
                out["dmac"] = mac(rec[_DMAC])
    return out


def device_dict(rec: Sequence[Any]) -> dict[str, Any]:
    """One device (a tuple from Classifier.device_list) as JSON-ready values."""
    (index, raw_mac, ip4, ip6, multi_ip, vlan, first_ns, last_ns, pkts_tx, bytes_tx, pkts_rx,
     bytes_rx, flows, violations) = rec
    return {
        "index": index,
        "mac": mac(raw_mac) if raw_mac is not None else None,
        "ipv4": any_address(ip4),
        "ipv6": any_address(ip6),
        "multi_ip": bool(multi_ip),
        "vlan": vlan,
        "first_seen": first_ns / 1e9,
        "last_seen": last_ns / 1e9,
        "packets_sent": pkts_tx,
        "bytes_sent": bytes_tx,
        "packets_received": pkts_rx,
        "bytes_received": bytes_rx,
        "flows": flows,
        "violations": violations,
    }


def _index(value: Any) -> int | None:
    value = int(value)
    return None if value == NO_DEVICE_INDEX else value


class Decoded(NamedTuple):
    """One frame's L2-L4 as the fast path decodes it (fastpath.decode_batch)."""

    ok: bool                 # decoded (False: a malformed frame, by the fast path's reasons)
    smac: bytes              # b"" when the link has no MAC
    ethertype: int
    l3: int                  # L3_*; 0 for a non-IP frame
    proto: int
    later_fragment: bool     # a non-first fragment: no L4 header
    sport: int
    dport: int
    l4_off: int              # offset of the L4 header in the frame
    src: bytes               # 16-byte addresses (IPv4 as ::ffff:a.b.c.d)
    dst: bytes


_DECODED_FIELDS = ("has_mac", "src_mac", "ethertype", "l3", "proto", "frag", "sport", "dport",
                   "l4_off", "src", "dst")


def decode_frames(frames: Sequence[tuple[int, bytes]]) -> list[Decoded]:
    """Decode (link type, frame) pairs with the fast path's own decoder, in one call.

    The slow path reads what the hot path decoded instead of parsing L2-L4 again: one
    buffer, one `decode_batch` (no GIL held while it runs), columns read out once.
    """
    n = len(frames)
    if n == 0:
        return []
    import numpy as np

    from fastpath import DECODED_DTYPE, decode_batch

    buf = b"".join(f for _, f in frames)
    lengths = np.fromiter((len(f) for _, f in frames), np.uint32, n)
    offsets = np.zeros(n, np.int64)
    np.cumsum(lengths[:-1], out=offsets[1:])
    links = np.fromiter((lt for lt, _ in frames), np.uint16, n)
    out = np.zeros(n, DECODED_DTYPE)
    reasons = np.empty(n, np.uint8)
    decode_batch(buf, offsets, lengths, links, out.view(np.uint8), reasons)
    cols = {name: out[name].tolist() for name in _DECODED_FIELDS}
    ok = (reasons == 0).tolist()
    return [Decoded(ok[i], cols["src_mac"][i] if cols["has_mac"][i] else b"",
                    cols["ethertype"][i], cols["l3"][i], cols["proto"][i],
                    cols["frag"][i] == _FRAG_LATER, cols["sport"][i], cols["dport"][i],
                    cols["l4_off"][i], cols["src"][i], cols["dst"][i]) for i in range(n)]


_FRAG_LATER = 2              # fastpath/core.pxd FRAG_LATER
