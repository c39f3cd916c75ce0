"""Event log output: one JSON line per event, appended and flushed per batch.

Lines are for people and log shippers: the fast path's internal table numbers (`device`,
`peer_device`: slots that are reused and mean nothing outside one process) are left out;
the MACs and addresses say who it was.

The fast path's events arrive as a drain's structured array (`publish_array`) and their
lines are built column by column (appliance.common.eventlines), the same lines `json.dumps`
makes of their dicts, with no dict per event; the daemon's own events (started,
mode_changed, policy_loaded, inventory events, ...) arrive as dicts (`publish`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from appliance.errors import WardtapError
from appliance.outputs.base import FASTPATH_EVENT_TYPES, Output

INTERNAL_KEYS = frozenset({"device", "peer_device"})


def outside(event: dict[str, Any]) -> dict[str, Any]:
    """The event as it leaves the appliance (event log, syslog, EVE): no internal numbers."""
    return {k: v for k, v in event.items() if k not in INTERNAL_KEYS}


def json_lines(events: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(outside(e), separators=(",", ":"), default=str) + "\n"
                   for e in events)


class EventLogOutput(Output):
    name = "eventlog"
    event_types: frozenset[str] | None = frozenset()     # fast-path events come as arrays
    array_types = FASTPATH_EVENT_TYPES                    # every type: a line per event

    def __init__(self, path: str) -> None:
        try:
            self._fh: Any = open(path, "a", encoding="utf-8")  # noqa: SIM115
        except OSError as exc:
            raise WardtapError(f"{path}: cannot open the event log: {exc.strerror}") from None

    def publish(self, events: list[dict[str, Any]]) -> None:
        """The daemon's own events (the fast path's come through `publish_array`)."""
        own = [e for e in events if e.get("type") not in FASTPATH_EVENT_TYPES]
        self._write(json_lines(own))

    def publish_array(self, events: Any,
                      rule_name: Callable[[int], str | None] | None = None) -> None:
        from appliance.common import eventarrays, eventlines

        if not len(events) or self._fh is None:
            return
        if eventlines.known(events):
            self._write(eventlines.event_lines(events, rule_name))
        else:       # a type this version does not know: the dicts say "unknown" for it
            self._write(json_lines(eventarrays.as_dicts(events, rule_name)))

    def _write(self, text: str) -> None:
        if self._fh is None or not text:
            return
        self._fh.write(text)
        self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
