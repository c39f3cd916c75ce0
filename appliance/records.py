"""Turn the fast path's binary records (events, devices, decoded packets) into plain values.

Only events and devices reach here, never every packet (except `--packets-out`, a debugging
and testing aid).
"""

from __future__ import annotations

import ipaddress
from typing import Any

import numpy as np

from fastpath import (
    EVENT_NAMES,
    FLOW_END_NAMES,
    NO_DEVICE_INDEX,
    NO_RULE_INDEX,
    REASON_NAMES,
    VERDICT_NAMES,
)

L3_ARP, L3_IPV4, L3_IPV6 = 1, 4, 6
_V4_PREFIX = b"\0" * 10 + b"\xff\xff"


def address(raw: bytes, l3: int) -> str | None:
    """A 16-byte fast-path address as text, the way tshark prints it."""
    if l3 in (L3_IPV4, L3_ARP) or (l3 == 0 and raw[:12] == _V4_PREFIX):
        return str(ipaddress.IPv4Address(raw[12:16]))
    if l3 == L3_IPV6:
        return str(ipaddress.IPv6Address(raw))
    return None


def any_address(raw: bytes) -> str | None:
    """An address of unknown family: IPv4-mapped form means IPv4; all zero means none."""
    if not any(raw):
        return None
    if raw[:12] == _V4_PREFIX:
        return str(ipaddress.IPv4Address(raw[12:16]))
    return str(ipaddress.IPv6Address(raw))


def mac(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def event_dict(rec: np.void, rule_name: Any = None) -> dict[str, Any]:
    """One event record as JSON-ready values. `rule_name(index)` names a rule."""
    kind = EVENT_NAMES.get(int(rec["type"]), "unknown")
    out: dict[str, Any] = {"type": kind, "ts": int(rec["ts_ns"]) / 1e9}
    l3 = int(rec["l3"])
    if kind == "new_device":
        out.update(device=int(rec["device"]), mac=mac(bytes(rec["smac"])) if rec["has_mac"]
                   else None, ip=address(bytes(rec["src"]), l3) if l3 else None,
                   vlan=int(rec["vlan"]))
        return out
    if kind == "malformed":
        out.update(reason=REASON_NAMES.get(int(rec["reason"]), "unknown"),
                   packet=int(rec["packet"]),
                   mac=mac(bytes(rec["smac"])) if rec["has_mac"] else None)
        return out
    proto = int(rec["proto"])
    out.update(
        flow=int(rec["flow_id"]),
        src=address(bytes(rec["src"]), l3), dst=address(bytes(rec["dst"]), l3),
        proto=proto, vlan=int(rec["vlan"]),
        verdict=VERDICT_NAMES[int(rec["verdict"])],
        device=_index(rec["device"]), peer_device=_index(rec["peer_device"]),
    )
    if proto in (1, 58):
        out.update(icmp_type=int(rec["icmp_type"]), icmp_id=int(rec["sport"]))
    else:
        out.update(sport=int(rec["sport"]), dport=int(rec["dport"]))
    rule = int(rec["rule"])
    out["rule"] = None if rule == NO_RULE_INDEX or rule_name is None else rule_name(rule)
    if kind == "flow_end":
        out.update(end=FLOW_END_NAMES.get(int(rec["reason"]), "unknown"),
                   first=int(rec["first_ns"]) / 1e9, packets=int(rec["pkts"]),
                   bytes=int(rec["bytes"]))
    else:
        out["reason"] = REASON_NAMES.get(int(rec["reason"]), "unknown")
        out["packet"] = int(rec["packet"])
        if rec["has_mac"]:
            out["smac"] = mac(bytes(rec["smac"]))
            if rec["has_mac"] == 2:
                out["dmac"] = mac(bytes(rec["dmac"]))
    return out


def device_dict(rec: np.void) -> dict[str, Any]:
    return {
        "index": int(rec["index"]),
        "mac": mac(bytes(rec["mac"])) if rec["has_mac"] else None,
        "ipv4": any_address(bytes(rec["ip4"])),
        "ipv6": any_address(bytes(rec["ip6"])),
        "multi_ip": bool(rec["multi_ip"]),
        "vlan": int(rec["vlan"]),
        "first_seen": int(rec["first_ns"]) / 1e9,
        "last_seen": int(rec["last_ns"]) / 1e9,
        "packets_sent": int(rec["pkts_tx"]),
        "bytes_sent": int(rec["bytes_tx"]),
        "packets_received": int(rec["pkts_rx"]),
        "bytes_received": int(rec["bytes_rx"]),
        "flows": int(rec["flows"]),
        "violations": int(rec["violations"]),
    }


def _index(value: Any) -> int | None:
    value = int(value)
    return None if value == NO_DEVICE_INDEX else value
