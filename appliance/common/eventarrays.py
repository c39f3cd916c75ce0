"""Fast-path events as a structured array (fastpath.EVENT_DTYPE), column by column.

`Classifier.drain_events` copies the ring's records into a buffer as they are; viewed as a
numpy structured array that is the whole hand-over, with no Python object per event. The
store's rows are built here from whole columns (one `tolist()` per column, then `zip`), and
only the events a person reads (violations) become dicts. numpy is imported by this module
only, so commands that never store events do not pay for it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from appliance.common.records import address, event_dict, mac
from fastpath import (
    DETAIL_NAMES,
    EVENT_BYTES,
    EVENT_DTYPE,
    EVENT_FIELDS,
    EVENT_NAMES,
    FLOW_END_NAMES,
    NO_RULE_INDEX,
    REASON_NAMES,
    VERDICT_NAMES,
)

CODES = {name: code for code, name in EVENT_NAMES.items()}


def _names_of(names: Mapping[int, str | None] | tuple[str, ...]) -> np.ndarray:
    """A uint8 code -> name table, for whole columns at once."""
    table = np.array(["unknown"] * 256, dtype=object)
    for code, name in (names.items() if isinstance(names, Mapping) else enumerate(names)):
        table[code] = name
    return table


_VERDICTS, _ENDS, _REASONS = (_names_of(n) for n in (VERDICT_NAMES, FLOW_END_NAMES,
                                                      REASON_NAMES))
_FIELDS = _names_of(DETAIL_NAMES)      # a first payload's field that broke the rule (0: None)
RuleName = Callable[[int], "str | None"] | None


class EventBuffer:
    """A reusable buffer that drains the ring into a structured array view."""

    def __init__(self, capacity: int = 8192) -> None:
        self.raw = bytearray(capacity * EVENT_BYTES)
        self.records = np.frombuffer(self.raw, EVENT_DTYPE)

    def drain(self, classifier: Any) -> np.ndarray:
        """Up to `capacity` events off the ring (a view, valid until the next drain)."""
        n = classifier.drain_events(self.raw)
        return self.records[:n]


def of_type(events: np.ndarray, kind: str) -> np.ndarray:
    return events[events["type"] == CODES[kind]]


def as_dicts(events: np.ndarray, rule_name: RuleName = None) -> list[dict[str, Any]]:
    """Events as the dicts `event_dict` makes from drain()'s tuples (for the few a person
    reads: violations, new devices)."""
    columns = [events[name].tolist() for name in EVENT_FIELDS]
    return [event_dict(rec, rule_name) for rec in zip(*columns, strict=True)]


def _names(codes: list[int], rule_name: RuleName) -> list[str | None]:
    cache: dict[int, str | None] = {NO_RULE_INDEX: None}
    for code in set(codes):
        if code not in cache:
            cache[code] = rule_name(code) if rule_name is not None else None
    return [cache[c] for c in codes]


def _endpoints(events: np.ndarray) -> tuple[list[Any], ...]:
    """src, dst, proto, sport, dport, icmp_type columns as the store keeps them."""
    l3 = events["l3"].tolist()
    src = list(map(address, events["src"].tolist(), l3))
    dst = list(map(address, events["dst"].tolist(), l3))
    proto = events["proto"].tolist()
    icmp = (events["proto"] == 1) | (events["proto"] == 58)
    ports = ~icmp
    sport = np.where(ports, events["sport"].astype(np.int32), -1).tolist()
    dport = np.where(ports, events["dport"].astype(np.int32), -1).tolist()
    itype = np.where(icmp, events["icmp_type"].astype(np.int32), -1).tolist()
    none = [None if v < 0 else v for v in sport], [None if v < 0 else v for v in dport], \
        [None if v < 0 else v for v in itype]
    return (src, dst, proto, *none)


def flow_rows(run: int, ends: np.ndarray, rule_name: RuleName = None) -> list[tuple[Any, ...]]:
    """Rows for the store's `flows` table (FLOW_COLUMNS order) from flow-end events."""
    if not len(ends):
        return []
    src, dst, proto, sport, dport, itype = _endpoints(ends)
    verdicts = _VERDICTS[ends["verdict"]].tolist()
    why = _ENDS[ends["reason"]].tolist()
    return list(zip(
        [run] * len(ends), ends["flow_id"].tolist(), (ends["first_ns"] / 1e9).tolist(),
        (ends["ts_ns"] / 1e9).tolist(), src, dst, proto, sport, dport, itype,
        ends["vlan"].tolist(), ends["pkts"].tolist(), ends["bytes"].tolist(), verdicts,
        _names(ends["rule"].tolist(), rule_name), why, strict=True))


def violation_rows(run: int, viol: np.ndarray, rule_name: RuleName = None
                   ) -> list[tuple[Any, ...]]:
    """Rows for the store's `violations` table (VIOLATION_COLUMNS order)."""
    if not len(viol):
        return []
    src, dst, proto, sport, dport, itype = _endpoints(viol)
    has = viol["has_mac"].tolist()
    smac = [mac(m) if h else None for m, h in zip(viol["smac"].tolist(), has, strict=True)]
    dmac = [mac(m) if h == 2 else None for m, h in zip(viol["dmac"].tolist(), has, strict=True)]
    reasons = _REASONS[viol["reason"]].tolist()
    return list(zip(
        [run] * len(viol), (viol["ts_ns"] / 1e9).tolist(), viol["flow_id"].tolist(), src, dst,
        proto, sport, dport, itype, viol["vlan"].tolist(), reasons,
        _names(viol["rule"].tolist(), rule_name), smac, dmac,
        _FIELDS[viol["detail"]].tolist(), strict=True))


FLOW_COLUMNS = ("run", "flow", "first", "last", "src", "dst", "proto", "sport", "dport",
                "icmp_type", "vlan", "packets", "bytes", "verdict", "rule", "end")
VIOLATION_COLUMNS = ("run", "ts", "flow", "src", "dst", "proto", "sport", "dport", "icmp_type",
                     "vlan", "reason", "nearest_rule", "smac", "dmac", "field")
