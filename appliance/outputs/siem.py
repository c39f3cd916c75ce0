"""Events in the formats a hospital's SIEM already reads: syslog (RFC 5424, with the event in
structured data), ArcSight CEF, and Suricata-EVE-like JSON.

Only the formatting lives here; appliance.outputs.syslog sends, appliance.outputs.eve
writes a file. Every format carries the same facts: when (the event's own time: a packet's
for violations), what (the event type, a severity), who (addresses, MACs, ports) and why
(reason, nearest rule). Internal table numbers never leave (eventlog.outside).

Escaping: the three small escape functions below follow each format's own rules (RFC 5424
6.3.3 for SD-PARAM values, the CEF guide for header and extension values). They are local
on purpose: a shared helper for escaping outside text is being built in appliance.common;
these should move onto it once it lands.
"""

from __future__ import annotations

import json
import os
import socket
from datetime import UTC, datetime
from typing import Any

from appliance import __version__
from appliance.outputs.eventlog import outside

# Severity (RFC 5424: 0 emergency .. 7 debug) per event type; unknown types are notices.
SEVERITY = {
    "violation": 4, "integrity_alarm": 2, "bypass_entered": 3, "policy_rejected": 3,
    "new_device": 5, "inventory_new_device": 5, "device_classified": 6, "mode_changed": 5,
    "policy_loaded": 5, "policy_proposed": 6, "started": 6, "stopping": 6, "malformed": 6,
}
FACILITIES = {"kern": 0, "user": 1, "daemon": 3, "auth": 4, "syslog": 5, "authpriv": 10,
              "security": 13, **{f"local{i}": 16 + i for i in range(8)}}
SD_ID = "wardtap@32473"     # 32473: the example enterprise number of RFC 5612
PROTOCOLS = {1: "ICMP", 6: "TCP", 17: "UDP", 58: "IPv6-ICMP", 132: "SCTP"}
CEF_SEVERITY = {2: 9, 3: 8, 4: 6, 5: 4, 6: 2}     # syslog severity -> CEF 0-10


def _sd_value(value: object) -> str:
    """RFC 5424 PARAM-VALUE: '"', '\\' and ']' escaped with a backslash."""
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def _cef_header(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _cef_ext(value: object) -> str:
    return (str(value).replace("\\", "\\\\").replace("=", "\\=").replace("\r", "\\r")
            .replace("\n", "\\n"))


def rfc3339(ts: float | None) -> str:
    if not ts:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def summary(event: dict[str, Any]) -> str:
    """One line in words for people reading the SIEM."""
    kind = event.get("type", "event")
    if kind == "violation":
        port = event.get("dport")
        what = (f"{_proto(event)}/{port}" if port is not None else
                f"{_proto(event)} type {event.get('icmp_type')}")
        rule = event.get("nearest_rule")
        return (f"violation: {event.get('src')} -> {event.get('dst')} {what} "
                f"({event.get('reason')}{', nearest rule ' + rule if rule else ''}"
                f"{', verdict ' + str(event.get('verdict')) if event.get('verdict') else ''})")
    if kind in ("new_device", "inventory_new_device"):
        return (f"new device {event.get('mac')} {event.get('ip') or ''} "
                f"{event.get('vendor') or ''}").strip()
    if kind == "device_classified":
        return f"device {event.get('mac')} classified {event.get('class')}"
    if kind == "mode_changed":
        return f"mode {event.get('previous')} -> {event.get('mode')}"
    rest = {k: v for k, v in event.items() if k not in ("type", "ts", "id")}
    return f"{kind}: {json.dumps(rest, separators=(',', ':'), default=str)[:300]}"


def _proto(event: dict[str, Any]) -> str:
    proto = event.get("proto")
    return PROTOCOLS.get(proto, str(proto)).lower() if isinstance(proto, int) else str(proto)


class SyslogFormatter:
    """RFC 5424 messages (`rfc5424`, the event in structured data) or CEF in a syslog
    message (`cef`)."""

    def __init__(self, fmt: str = "rfc5424", facility: str = "local0",
                 hostname: str | None = None, app_name: str = "wardtap") -> None:
        if fmt not in ("rfc5424", "cef"):
            raise ValueError(f"unknown syslog format {fmt!r} (rfc5424 or cef)")
        if facility not in FACILITIES:
            raise ValueError(f"unknown facility {facility!r} ({', '.join(FACILITIES)})")
        self.fmt = fmt
        self.facility = FACILITIES[facility]
        self.hostname = (hostname or socket.gethostname() or "-")[:255].replace(" ", "_")
        self.app_name = app_name[:48]
        self.procid = str(os.getpid())

    def format(self, event: dict[str, Any]) -> bytes:
        event = outside(event)
        kind = str(event.get("type", "event"))
        severity = SEVERITY.get(kind, 5)
        head = (f"<{self.facility * 8 + severity}>1 {rfc3339(event.get('ts'))} "
                f"{self.hostname} {self.app_name} {self.procid} {_msgid(kind)}")
        if self.fmt == "cef":
            return f"{head} - {cef(event, severity, self.hostname)}".encode()
        params = " ".join(f'{_sd_name(k)}="{_sd_value(v)}"' for k, v in event.items()
                          if v is not None and not isinstance(v, dict | list))
        return f"{head} [{SD_ID} {params}] \ufeff{summary(event)}".encode()


def _msgid(kind: str) -> str:
    return "".join(c for c in kind if 33 <= ord(c) <= 126)[:32] or "-"


def _sd_name(key: str) -> str:
    return "".join(c for c in str(key) if 33 <= ord(c) <= 126 and c not in '= ]"')[:32] or "x"


def cef(event: dict[str, Any], severity: int, host: str) -> str:
    """ArcSight Common Event Format: header fields, then key=value extensions."""
    kind = str(event.get("type", "event"))
    ext: dict[str, Any] = {
        "rt": int((event.get("ts") or 0) * 1000), "dvchost": host,
        "src": event.get("src") or event.get("ip"), "dst": event.get("dst"),
        "spt": event.get("sport"), "dpt": event.get("dport"),
        "proto": PROTOCOLS.get(int(event["proto"]), event["proto"])
        if isinstance(event.get("proto"), int) else None,
        "smac": event.get("smac") or event.get("mac"), "dmac": event.get("dmac"),
        "act": {"deny": "blocked", "allow": "allowed"}.get(str(event.get("verdict")),
                                                          event.get("verdict")),
        "cs1Label": "reason", "cs1": event.get("reason"),
        "cs2Label": "nearestRule", "cs2": event.get("nearest_rule"),
        "cs3Label": "vlan", "cs3": event.get("vlan") or None,
        "msg": summary(event),
    }
    if ext["cs1"] is None:
        del ext["cs1Label"]
    if ext["cs2"] is None:
        del ext["cs2Label"]
    if ext["cs3"] is None:
        del ext["cs3Label"]
    pairs = " ".join(f"{k}={_cef_ext(v)}" for k, v in ext.items() if v is not None)
    name = {"violation": "Policy violation", "new_device": "New device",
            "inventory_new_device": "New device"}.get(kind, kind.replace("_", " "))
    return (f"CEF:0|wardtap|wardtap|{_cef_header(__version__)}|{_cef_header(kind)}|"
            f"{_cef_header(name)}|{CEF_SEVERITY.get(severity, 3)}|{pairs}")


def eve(event: dict[str, Any], host: str | None = None) -> dict[str, Any]:
    """A Suricata-EVE-like record: violations as `alert`, flow ends as `flow`, the rest as
    `wardtap` (with the event under its own key), so log shippers' Suricata parsers read the
    addresses, ports and alert fields as they do Suricata's."""
    event = outside(event)
    kind = str(event.get("type", "event"))
    ts = event.get("ts")
    out: dict[str, Any] = {
        "timestamp": (datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f+0000")
                      if ts else None),
        "event_type": {"violation": "alert", "flow_end": "flow"}.get(kind, "wardtap"),
        "host": host or socket.gethostname(),
    }
    if event.get("flow") is not None:
        out["flow_id"] = event["flow"]
    if event.get("vlan"):
        out["vlan"] = [event["vlan"]]
    for ours, theirs in (("src", "src_ip"), ("sport", "src_port"), ("dst", "dest_ip"),
                         ("dport", "dest_port")):
        if event.get(ours) is not None:
            out[theirs] = event[ours]
    if event.get("proto") is not None:
        out["proto"] = PROTOCOLS.get(event["proto"], str(event["proto"]))
    if event.get("icmp_type") is not None:
        out["icmp_type"] = event["icmp_type"]
    if event.get("smac") or event.get("dmac"):
        out["ether"] = {k: v for k, v in (("src_mac", event.get("smac")),
                                          ("dest_mac", event.get("dmac"))) if v}
    if kind == "violation":
        out["alert"] = {
            "action": "blocked" if event.get("verdict") == "deny" else "allowed",
            "gid": 1, "signature_id": 0, "rev": 1,
            "signature": f"wardtap {event.get('reason')}: not allowed by the policy"
                         + (f" (nearest rule {event['nearest_rule']})"
                            if event.get("nearest_rule") else ""),
            "category": "Policy violation", "severity": 2,
            "metadata": {"reason": [event.get("reason")],
                         "nearest_rule": [event.get("nearest_rule")]},
        }
    elif kind == "flow_end":
        out["flow"] = {"pkts_toserver": event.get("packets"), "bytes_toserver": event.get("bytes"),
                       "start": (datetime.fromtimestamp(event["first"], UTC).strftime(
                           "%Y-%m-%dT%H:%M:%S.%f+0000") if event.get("first") else None),
                       "end": out["timestamp"], "reason": event.get("end"),
                       "action": event.get("verdict"), "rule": event.get("rule")}
    else:
        out["wardtap"] = event
    return out
