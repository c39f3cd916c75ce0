"""Event log output: one JSON line per event, appended and flushed per batch.

Lines are for people and log shippers: the fast path's internal table numbers (`device`,
`peer_device`: slots that are reused and mean nothing outside one process) are left out;
the MACs and addresses say who it was.
"""

from __future__ import annotations

import json
from typing import Any

from appliance.errors import WardtapError
from appliance.outputs.base import Output

INTERNAL_KEYS = frozenset({"device", "peer_device"})


def outside(event: dict[str, Any]) -> dict[str, Any]:
    """The event as it leaves the appliance (event log, syslog, EVE): no internal numbers."""
    return {k: v for k, v in event.items() if k not in INTERNAL_KEYS}


class EventLogOutput(Output):
    name = "eventlog"

    def __init__(self, path: str) -> None:
        try:
            self._fh: Any = open(path, "a", encoding="utf-8")  # noqa: SIM115
        except OSError as exc:
            raise WardtapError(f"{path}: cannot open the event log: {exc.strerror}") from None

    def publish(self, events: list[dict[str, Any]]) -> None:
        if self._fh is None or not events:
            return
        self._fh.write("".join(json.dumps(outside(e), separators=(",", ":"), default=str)
                               + "\n" for e in events))
        self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
