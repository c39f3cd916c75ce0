"""Fast-path events as the event log's JSON lines, built column by column.

A line is exactly what the event log writes for the event's dict: `json.dumps` of
`records.event_dict` without the internal table numbers (`device`, `peer_device`), with
`separators=(",", ":")`: the same keys in the same order, the same values. Lines come in the
drain's order. No dict per event: every distinct value of a column (a time, a flow number, an
address, a MAC) is written as JSON once a drain, the small codes that sit side by side in a
line (protocol, VLAN, verdict, orientation; rule, reason, field) once per distinct
combination, and a line is its event type's fragments joined.
"""

from __future__ import annotations

import json
from functools import partial
from typing import Any

import numpy as np

from appliance.common.eventarrays import (
    CODES,
    RuleName,
    address_texts,
    distinct_texts,
    mac_texts,
)
from fastpath import (
    DETAIL_NAMES,
    FLOW_END_NAMES,
    NO_RULE_INDEX,
    ORIENT_NAMES,
    REASON_NAMES,
    VERDICT_NAMES,
)

NEW_DEVICE, NEW_FLOW, VIOLATION, FLOW_END, MALFORMED = (CODES[k] for k in (
    "new_device", "new_flow", "violation", "flow_end", "malformed"))
KNOWN = np.array(sorted(CODES.values()), dtype=np.uint8)
_FLOW_TYPES = {NEW_FLOW: "new_flow", VIOLATION: "violation", FLOW_END: "flow_end"}
_ICMP = (1, 58)


def known(events: np.ndarray) -> bool:
    """Every event of a drain is of a type `event_lines` writes."""
    return bool(np.isin(events["type"], KNOWN).all())


def _quoted(text: str | None) -> str:
    return json.dumps(text)


def _reason(code: int) -> str:
    return _quoted(REASON_NAMES.get(code, "unknown"))


def _rule(index: int, rule_name: RuleName) -> str:
    return _quoted(None if index == NO_RULE_INDEX or rule_name is None
                   else rule_name(index))


def _timestamp(ns: int) -> str:
    return repr(ns / 1e9)          # what json.dumps writes for event_dict's ts / 1e9


def _join(parts: list[Any], rows: int) -> str:
    """Lines of `rows` rows from `parts` (a constant string, or a list of one text a row),
    interleaved row after row and joined: no string or tuple per row."""
    flat: list[Any] = [None] * (rows * len(parts))
    for i, part in enumerate(parts):
        flat[i::len(parts)] = [part] * rows if isinstance(part, str) else part
    return "".join(flat)


def event_lines(events: np.ndarray, rule_name: RuleName = None) -> str:
    """The event log's lines (each ending in a newline) for a drain whose types are all
    known (`KNOWN`)."""
    n = len(events)
    if not n:
        return ""
    kinds = events["type"]
    ends = kinds == FLOW_END
    # Times: a flow's new_flow, violation and flow_end `first` are mostly the same instant.
    times = distinct_texts(np.concatenate((events["ts_ns"], events["first_ns"][ends])),
                           _timestamp)
    ts, first = times[:n], times[n:]
    packet = distinct_texts(events["packet"], ',"packet":{}'.format)
    texts: dict[int, str] = {}
    flows = (kinds == NEW_FLOW) | (kinds == VIOLATION) | ends
    if flows.any():
        texts.update(_flow_lines(events[flows], ts[flows], first, packet[flows], rule_name))
    for code, build in ((NEW_DEVICE, _new_device_lines), (MALFORMED, _malformed_lines)):
        mask = kinds == code
        if mask.any():
            texts[code] = build(events[mask], ts[mask], packet[mask])
    if len(texts) == 1:
        return next(iter(texts.values()))
    ordered = np.empty(n, dtype=object)
    for code, text in texts.items():
        ordered[kinds == code] = text.split("\n")[:-1]
    return "\n".join(ordered.tolist()) + "\n"


def _flow_lines(ev: np.ndarray, ts: np.ndarray, first: np.ndarray, packet: np.ndarray,
                rule_name: RuleName) -> dict[int, str]:
    """Lines of new flows, violations and flow ends (one text per type, in order)."""
    kinds, l3, proto = ev["type"], ev["l3"], ev["proto"]
    icmp = (proto == _ICMP[0]) | (proto == _ICMP[1])
    flow = distinct_texts(ev["flow_id"], ',"flow":{}'.format)
    src = address_texts(ev["src"], l3, lambda a: ',"src":' + _quoted(a))
    dst = address_texts(ev["dst"], l3, lambda a: ',"dst":' + _quoted(a))
    key = (proto.astype(np.uint64) | ev["vlan"].astype(np.uint64) << 8
           | ev["verdict"].astype(np.uint64) << 24 | ev["orient"].astype(np.uint64) << 32
           | np.where(icmp, ev["icmp_type"], 0).astype(np.uint64) << 40
           | icmp.astype(np.uint64) << 48)
    middle = distinct_texts(key, _middle)                  # proto .. "sport": / "icmp_id":
    sport = distinct_texts(ev["sport"], str)
    dport = distinct_texts(ev["dport"], ',"dport":{}'.format)
    if icmp.any():
        dport[icmp] = ""
    common = [ts, flow, src, dst, middle, sport, dport]
    out = {}
    for code in _FLOW_TYPES:
        mask = kinds == code
        if not mask.any():
            continue
        sub = ev[mask]
        parts: list[Any] = [f'{{"type":"{_FLOW_TYPES[code]}","ts":']
        parts += [column[mask].tolist() for column in common]
        rules = sub["rule"].astype(np.uint64) | sub["reason"].astype(np.uint64) << 16
        if code == FLOW_END:
            parts += [distinct_texts(rules, partial(_end_tail, rule_name=rule_name)).tolist(),
                      first.tolist(),
                      distinct_texts(sub["pkts"], ',"packets":{}'.format).tolist(),
                      distinct_texts(sub["bytes"], ',"bytes":{}}}\n'.format).tolist()]
        else:
            rules |= sub["detail"].astype(np.uint64) << 24
            tail = _violation_tail if code == VIOLATION else _new_flow_tail
            has = sub["has_mac"]
            parts += [distinct_texts(rules, partial(tail, rule_name=rule_name)).tolist(),
                      packet[mask].tolist(),
                      mac_texts(sub["smac"], has != 0, _smac, "").tolist(),
                      mac_texts(sub["dmac"], has == 2, _dmac, "}\n").tolist()]
        out[code] = _join(parts, len(sub))
    return out


def _smac(text: str) -> str:
    return ',"smac":' + _quoted(text)


def _dmac(text: str) -> str:
    return ',"dmac":' + _quoted(text) + "}\n"


def _middle(key: int) -> str:
    """proto, vlan, verdict, orient and the first port's key, from `_flow_lines`' key."""
    proto, vlan, verdict = key & 0xFF, key >> 8 & 0xFFFF, key >> 24 & 0xFF
    orient, icmp_type, icmp = key >> 32 & 0xFF, key >> 40 & 0xFF, key >> 48
    ports = f'"icmp_type":{icmp_type},"icmp_id":' if icmp else '"sport":'
    return (f',"proto":{proto},"vlan":{vlan},"verdict":{_quoted(VERDICT_NAMES[verdict])},'
            f'"orient":{_quoted(ORIENT_NAMES.get(orient))},{ports}')


def _detail(key: int) -> str:
    detail = key >> 24 & 0xFF
    return f',"field":{_quoted(DETAIL_NAMES.get(detail, "unknown"))}' if detail else ""


def _new_flow_tail(key: int, rule_name: RuleName) -> str:
    return (f',"rule":{_rule(key & 0xFFFF, rule_name)},"reason":{_reason(key >> 16 & 0xFF)}'
            + _detail(key))


def _violation_tail(key: int, rule_name: RuleName) -> str:
    # No rule matched; the one that came closest (as records.event_dict).
    return (f',"rule":null,"nearest_rule":{_rule(key & 0xFFFF, rule_name)},'
            f'"reason":{_reason(key >> 16 & 0xFF)}' + _detail(key))


def _end_tail(key: int, rule_name: RuleName) -> str:
    end = _quoted(FLOW_END_NAMES.get(key >> 16 & 0xFF, "unknown"))
    return f',"rule":{_rule(key & 0xFFFF, rule_name)},"end":{end},"first":'


def _new_device_lines(ev: np.ndarray, ts: np.ndarray, packet: np.ndarray) -> str:
    l3 = ev["l3"]
    ip = address_texts(ev["src"], l3, lambda a: ',"ip":' + _quoted(a))
    if not l3.all():
        ip[l3 == 0] = ',"ip":null'                   # event_dict: no address without an l3
    return _join(['{"type":"new_device","ts":', ts.tolist(),
                  mac_texts(ev["smac"], ev["has_mac"] != 0, lambda m: ',"mac":' + _quoted(m),
                            ',"mac":null').tolist(),
                  ip.tolist(), distinct_texts(ev["vlan"], ',"vlan":{}}}\n'.format).tolist()],
                 len(ev))


def _malformed_lines(ev: np.ndarray, ts: np.ndarray, packet: np.ndarray) -> str:
    return _join(['{"type":"malformed","ts":', ts.tolist(),
                  distinct_texts(ev["reason"], lambda r: ',"reason":' + _reason(r)).tolist(),
                  packet.tolist(),
                  mac_texts(ev["smac"], ev["has_mac"] != 0,
                            lambda m: ',"mac":' + _quoted(m) + "}\n", ',"mac":null}\n').tolist()],
                 len(ev))

