"""The interface every output fills (store, event log, later MQTT).

Outputs receive events in batches (never per packet) and one counter snapshot per
interval; a slow or failing output must not stop the others or the datapath.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# The fast path's event types (fastpath.EVENT_NAMES). The daemon builds a dict only for the
# types some reader names (appliance.daemon.events); the daemon's own events (started,
# mode_changed, policy_loaded, ...) reach every output's `publish` always.
FASTPATH_EVENT_TYPES = frozenset({"new_device", "new_flow", "violation", "flow_end",
                                  "malformed"})


class Output:
    name = ""
    # The fast-path event types this output reads from `publish`; None: every one.
    event_types: frozenset[str] | None = None
    # The fast-path event types this output takes as a structured array (`publish_array`).
    array_types: frozenset[str] = frozenset()

    def publish(self, events: list[dict[str, Any]]) -> None:
        """Take a batch of events (dicts from appliance.common.records.event_dict)."""

    def publish_array(self, events: Any,
                      rule_name: Callable[[int], str | None] | None = None) -> None:
        """Take a drain of fast-path events as a structured array (fastpath.EVENT_DTYPE),
        a view valid during this call only; `rule_name` names its rule indexes."""

    def snapshot(self, stats: dict[str, Any], devices: list[dict[str, Any]]) -> None:
        """Take the periodic counters and device table."""

    def alive(self) -> bool:
        """False when a thread this output depends on has died (the systemd watchdog
        stops being fed, so the service is restarted)."""
        return True

    def close(self) -> None:
        """Flush and release; safe to call twice."""
