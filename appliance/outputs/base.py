"""The interface every output fills (store, event log, later MQTT).

Outputs receive events in batches (never per packet) and one counter snapshot per
interval; a slow or failing output must not stop the others or the datapath.
"""

from __future__ import annotations

from typing import Any


class Output:
    name = ""

    def publish(self, events: list[dict[str, Any]]) -> None:
        """Take a batch of events (dicts from appliance.common.records.event_dict)."""

    def snapshot(self, stats: dict[str, Any], devices: list[dict[str, Any]]) -> None:
        """Take the periodic counters and device table."""

    def alive(self) -> bool:
        """False when a thread this output depends on has died (the systemd watchdog
        stops being fed, so the service is restarted)."""
        return True

    def close(self) -> None:
        """Flush and release; safe to call twice."""
