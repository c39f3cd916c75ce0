"""Store output: flows and violations per event batch; device counters per interval."""

from __future__ import annotations

from typing import Any

from appliance.outputs.base import Output
from appliance.store import Store


class StoreOutput(Output):
    name = "store"

    def __init__(self, store: Store, run: int) -> None:
        self.store = store
        self.run = run
        self._written: dict[int, dict[str, Any]] = {}

    def publish(self, events: list[dict[str, Any]]) -> None:
        self.store.add_events(self.run, events)

    def snapshot(self, stats: dict[str, Any], devices: list[dict[str, Any]]) -> None:
        """Write each device's counters since the last snapshot (the store adds them up)."""
        deltas = []
        for device in devices:
            before = self._written.get(device["index"])
            delta = dict(device)
            if before is not None:
                for key in ("packets_sent", "bytes_sent", "packets_received",
                            "bytes_received", "flows", "violations"):
                    delta[key] = device[key] - before[key]
            deltas.append(delta)
            self._written[device["index"]] = device
        if deltas:
            self.store.merge_devices(deltas)
        self.store.finish_run(self.run, stats)
