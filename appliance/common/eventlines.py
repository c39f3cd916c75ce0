"""Fast-path events as the event log's JSON lines, built column by column.

A line is exactly what the event log writes for the event's dict: `json.dumps` of
`records.event_dict` without the internal table numbers (`device`, `peer_device`), with
`separators=(",", ":")`: the same keys in the same order, the same values. Lines come in the
drain's order. No dict per event: every distinct value of a column (a time, a flow number, an
address, a MAC) is written as JSON once a drain, the small codes that sit side by side in a
line (protocol, VLAN, verdict, orientation; rule, reason, field) once per distinct
combination; every line is twelve fragments, and a drain's lines are one join.
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
    rows,
)
from fastpath import (
    DETAIL_NAMES,
    EVENT_NAMES,
    FLOW_END_NAMES,
    NO_RULE_INDEX,
    ORIENT_NAMES,
    REASON_NAMES,
    VERDICT_NAMES,
)

NEW_DEVICE, NEW_FLOW, VIOLATION, FLOW_END, MALFORMED = (CODES[k] for k in (
    "new_device", "new_flow", "violation", "flow_end", "malformed"))
KNOWN = np.array(sorted(CODES.values()), dtype=np.uint8)
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


def _times(ns: np.ndarray) -> np.ndarray:
    """Times in ns as json.dumps writes event_dict's `ns / 1e9` (numpy divides the same
    way: the integer rounded to a double, then divided), each distinct one once."""
    unique, inverse = np.unique(ns, return_inverse=True)
    return np.array(list(map(repr, (unique / 1e9).tolist())), dtype=object)[inverse]


def _join(parts: list[Any], count: int) -> str:
    """Lines of `count` rows from `parts` (each a constant string, or one text a row),
    interleaved row after row and joined: no string or tuple per row."""
    flat: list[Any] = [None] * (count * len(parts))
    for i, part in enumerate(parts):
        flat[i::len(parts)] = [part] * count if isinstance(part, str) else part.tolist()
    return "".join(flat)


# Every line is SLOTS fragments (a new device's and a malformed packet's last ones empty), so
# a drain's lines are joined in its order in one go:
#   new_flow, violation  type+ts flow src dst middle sport dport tail packet smac  dmac+}
#   flow_end             type+ts flow src dst middle sport dport tail first  packets bytes+}
#   new_device           type+ts mac ip vlan+}
#   malformed            type+ts reason packet mac+}
SLOTS = 12
_PREFIX = np.array([f'{{"type":"{EVENT_NAMES.get(code)}","ts":' for code in range(256)],
                   dtype=object)


def event_lines(events: np.ndarray, rule_name: RuleName = None) -> str:
    """The event log's lines (each ending in a newline) for a drain whose types are all
    known (`known`)."""
    n = len(events)
    if not n:
        return ""
    kinds = events["type"]
    ends = kinds == FLOW_END
    # Times: a flow's new_flow, violation and flow_end `first` are mostly the same instant.
    times = _times(np.concatenate((events["ts_ns"], events["first_ns"][ends])))
    packet = distinct_texts(events["packet"], ',"packet":{}'.format)
    columns: list[Any] = [_PREFIX[kinds], times[:n]]
    flows = (kinds == NEW_FLOW) | (kinds == VIOLATION) | ends
    if flows.all():                       # a drain of flows only (a port scan's)
        return _join(columns + _flow_columns(events, ends, times[n:], packet, rule_name), n)
    columns += [np.full(n, "", dtype=object) for _ in range(SLOTS - 2)]
    for mask, build in ((flows, None), (kinds == NEW_DEVICE, _device_columns),
                        (kinds == MALFORMED, _malformed_columns)):
        if not mask.any():
            continue
        some = rows(events, mask)
        built = (_flow_columns(some, ends[mask], times[n:], packet[mask], rule_name)
                 if build is None else build(some, packet[mask]))
        for column, values in zip(columns[2:], built, strict=False):
            column[mask] = values
    return _join(columns, n)


def _flow_columns(ev: np.ndarray, ends: np.ndarray, first: np.ndarray, packet: np.ndarray,
                  rule_name: RuleName) -> list[np.ndarray]:
    """Slots 2.. of new flows, violations and flow ends (`first`: the flow ends' times)."""
    kinds, l3, proto, has = ev["type"], ev["l3"], ev["proto"], ev["has_mac"]
    icmp = (proto == _ICMP[0]) | (proto == _ICMP[1])
    key = (proto.astype(np.uint64) | ev["vlan"].astype(np.uint64) << 8
           | ev["verdict"].astype(np.uint64) << 24 | ev["orient"].astype(np.uint64) << 32
           | np.where(icmp, ev["icmp_type"], 0).astype(np.uint64) << 40
           | icmp.astype(np.uint64) << 48)
    dport = distinct_texts(ev["dport"], ',"dport":{}'.format)
    if icmp.any():
        dport[icmp] = ""
    rules = (ev["rule"].astype(np.uint64) | ev["reason"].astype(np.uint64) << 16
             | ev["detail"].astype(np.uint64) << 24 | kinds.astype(np.uint64) << 32)
    others = ~ends
    last3 = [packet.copy(), mac_texts(ev["smac"], (has != 0) & others, _smac, ""),
             mac_texts(ev["dmac"], (has == 2) & others, _dmac, "}\n")]
    if ends.any():
        last3[0][ends] = first
        last3[1][ends] = distinct_texts(ev["pkts"][ends], ',"packets":{}'.format)
        last3[2][ends] = distinct_texts(ev["bytes"][ends], ',"bytes":{}}}\n'.format)
    return [distinct_texts(ev["flow_id"], ',"flow":{}'.format),
            address_texts(ev["src"], l3, lambda a: ',"src":' + _quoted(a)),
            address_texts(ev["dst"], l3, lambda a: ',"dst":' + _quoted(a)),
            distinct_texts(key, _middle),                # proto .. "sport": / "icmp_id":
            distinct_texts(ev["sport"], str), dport,
            distinct_texts(rules, partial(_tail, rule_name=rule_name)), *last3]


def _smac(text: str) -> str:
    return ',"smac":' + _quoted(text)


def _dmac(text: str) -> str:
    return ',"dmac":' + _quoted(text) + "}\n"


def _middle(key: int) -> str:
    """proto, vlan, verdict, orient and the first port's key, from `_flow_columns`' key."""
    proto, vlan, verdict = key & 0xFF, key >> 8 & 0xFFFF, key >> 24 & 0xFF
    orient, icmp_type, icmp = key >> 32 & 0xFF, key >> 40 & 0xFF, key >> 48
    ports = f'"icmp_type":{icmp_type},"icmp_id":' if icmp else '"sport":'
    return (f',"proto":{proto},"vlan":{vlan},"verdict":{_quoted(VERDICT_NAMES[verdict])},'
            f'"orient":{_quoted(ORIENT_NAMES.get(orient))},{ports}')


def _tail(key: int, rule_name: RuleName) -> str:
    """rule (or nearest_rule), then reason and field, or end; up to the next value's key."""
    kind, reason, detail = key >> 32, key >> 16 & 0xFF, key >> 24 & 0xFF
    rule = _rule(key & 0xFFFF, rule_name)
    if kind == FLOW_END:
        return f',"rule":{rule},"end":{_quoted(FLOW_END_NAMES.get(reason, "unknown"))},"first":'
    field = f',"field":{_quoted(DETAIL_NAMES.get(detail, "unknown"))}' if detail else ""
    # A violation: no rule matched; the one that came closest (as records.event_dict).
    rules = f',"rule":null,"nearest_rule":{rule}' if kind == VIOLATION else f',"rule":{rule}'
    return f'{rules},"reason":{_reason(reason)}{field}'


def _device_columns(ev: np.ndarray, packet: np.ndarray) -> list[Any]:
    l3 = ev["l3"]
    ip = address_texts(ev["src"], l3, lambda a: ',"ip":' + _quoted(a))
    if not l3.all():
        ip[l3 == 0] = ',"ip":null'                   # event_dict: no address without an l3
    return [mac_texts(ev["smac"], ev["has_mac"] != 0, lambda m: ',"mac":' + _quoted(m),
                      ',"mac":null'),
            ip, distinct_texts(ev["vlan"], ',"vlan":{}}}\n'.format)]


def _malformed_columns(ev: np.ndarray, packet: np.ndarray) -> list[Any]:
    return [distinct_texts(ev["reason"], lambda r: ',"reason":' + _reason(r)), packet,
            mac_texts(ev["smac"], ev["has_mac"] != 0, lambda m: ',"mac":' + _quoted(m) + "}\n",
                      ',"mac":null}\n')]
