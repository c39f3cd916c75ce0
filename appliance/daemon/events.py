"""The daemon's event path: the fast path's event ring to the outputs, with Python per event
only where someone reads the event.

Each drain copies up to EVENT_DRAIN events off the ring into one structured array
(appliance.common.eventarrays.EventBuffer). Outputs that take arrays (the store: flow ends
and violations; the event log: every type, its lines built column by column) get it whole,
with no Python object per event. Dicts (appliance.common.records.event_dict) are built only
for the types a reader names:

- each output's `event_types` (appliance.outputs.base.Output): MQTT violations, new devices
  and malformed packets (flows are in its stats), syslog and EVE what they are configured
  to send;
- identification ([dissect]): new devices, new flows and flow ends (a device's evidence
  comes from every flow it starts or answers);
- the baseline in learn mode: new devices, new flows and flow ends (every conversation).

Violations are always queued: the console's count and the panel's LED take them from the
array, and only the last RECENT_VIOLATIONS of a drain become dicts for `wardtap status`.
Types no one reads, as a dict or an array, are not queued at all: the classifier counts
them (`set_events`; stats `events_counted_only`). So a new-flow flood on a ward whose daemon
has a store and a broker costs no Python per new flow, and one array a drain for the flow
ends. The cost per event, measured: bench/bench_scale.py --only daemon (bench/README.md).
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

from appliance.common.eventarrays import CODES, EventBuffer, as_dicts, of_type, rows
from appliance.errors import WardtapError
from appliance.outputs.base import FASTPATH_EVENT_TYPES, Output

log = logging.getLogger("wardtap")

EVENT_DRAIN = 8192                 # events a drain: one array, one store transaction
ALWAYS_QUEUED = frozenset({"violation"})   # the console's count and recent ones, the LED
IDENTIFICATION_TYPES = frozenset({"new_device", "new_flow", "flow_end"})
BASELINE_TYPES = frozenset({"new_device", "new_flow", "flow_end"})
RuleName = Callable[[int], "str | None"] | None
RECENT_VIOLATIONS = 20             # the console (wardtap status/top): the last violations
VIOLATION_FIELDS = ("ts", "src", "dst", "proto", "sport", "dport", "icmp_type", "vlan",
                    "reason", "verdict", "rule", "smac")


def dict_types(outputs: Iterable[Output], identifying: bool, learning: bool) -> frozenset[str]:
    """The fast-path event types someone reads as dicts."""
    wanted: set[str] = set()
    for output in outputs:
        wanted |= FASTPATH_EVENT_TYPES if output.event_types is None else output.event_types
    if identifying:
        wanted |= IDENTIFICATION_TYPES
    if learning:
        wanted |= BASELINE_TYPES
    return frozenset(wanted & FASTPATH_EVENT_TYPES)


class EventPump:
    """Drains the classifier's ring: arrays to the outputs that take them, dicts for the
    types someone reads (`route` says which; call it again when the readers change)."""

    def __init__(self, classifier: Any, violations: RecentViolations,
                 capacity: int = EVENT_DRAIN) -> None:
        self.classifier = classifier
        self.violations = violations
        self.on_violation: Callable[[], None] | None = None     # the panel's LED
        self.buffer = EventBuffer(capacity)
        self.array_outputs: list[Output] = []
        self.dict_codes: np.ndarray | None = None      # None: every type
        self.dicts: frozenset[str] = FASTPATH_EVENT_TYPES

    def route(self, outputs: list[Output], identifying: bool, learning: bool) -> None:
        self.array_outputs = [o for o in outputs if o.array_types]
        self.dicts = dict_types(outputs, identifying, learning)
        self.dict_codes = (None if self.dicts == FASTPATH_EVENT_TYPES else
                           np.array(sorted(CODES[t] for t in self.dicts), dtype=np.uint8))
        queued = set(self.dicts) | ALWAYS_QUEUED
        for output in self.array_outputs:
            queued |= output.array_types
        self.classifier.set_events(sorted(queued))
        log.debug("events: dicts for %s; queued %s", sorted(self.dicts), sorted(queued))

    def drain(self, rule_name: RuleName) -> Iterator[list[dict[str, Any]]]:
        """Empty the ring, a drain at a time: each goes whole to the array outputs, then
        its events someone reads come out as dicts."""
        while True:
            events = self.buffer.drain(self.classifier)
            if not len(events):
                return
            for output in self.array_outputs:
                try:
                    output.publish_array(events, rule_name)
                except WardtapError as exc:
                    log.error("output %s failed, events kept by the others: %s",
                              output.name, exc)
            violations = of_type(events, "violation")
            if len(violations):
                self.violations.add_array(violations, rule_name)
                if self.on_violation is not None:
                    self.on_violation()
            read = (events if self.dict_codes is None
                    else rows(events, np.isin(events["type"], self.dict_codes)))
            if len(read):
                yield as_dicts(read, rule_name)


class RecentViolations:
    """The console's view of violations: how many were seen, and the last ones."""

    def __init__(self) -> None:
        self.seen = 0
        self.recent: collections.deque[dict[str, Any]] = collections.deque(
            maxlen=RECENT_VIOLATIONS)

    def add_array(self, violations: np.ndarray, rule_name: RuleName) -> None:
        """Count a drain's violations; only the last ones become dicts."""
        self.seen += len(violations)
        self.recent.extend({k: e[k] for k in VIOLATION_FIELDS if k in e}
                           for e in as_dicts(violations[-RECENT_VIOLATIONS:], rule_name))

    def status(self) -> dict[str, Any]:
        return {"seen": self.seen, "recent": list(reversed(self.recent))}
