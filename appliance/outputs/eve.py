"""Events as a Suricata-EVE-like JSON-lines file (appliance.outputs.siem.eve), for log
shippers that already read Suricata's eve.json (Filebeat's and Logstash's Suricata
parsers, Splunk's TA).

    [eve]
    path = "/var/log/wardtap/eve.json"
    flows = false        # true: also every flow end (event_type "flow"); the volume

Appended and flushed per batch of events; `logrotate` with copytruncate rotates it.
"""

from __future__ import annotations

import json
from typing import Any

from appliance.errors import WardtapError
from appliance.outputs.base import FASTPATH_EVENT_TYPES, Output
from appliance.outputs.siem import eve


class EveOutput(Output):
    name = "eve"

    def __init__(self, path: str, flows: bool = False, host: str | None = None) -> None:
        self.path = path
        self.flows = flows
        self.event_types = FASTPATH_EVENT_TYPES - (set() if flows else {"flow_end"})
        self.host = host
        try:
            self._fh: Any = open(path, "a", encoding="utf-8")  # noqa: SIM115
        except OSError as exc:
            raise WardtapError(f"{path}: cannot open the EVE log: {exc.strerror}") from None

    def publish(self, events: list[dict[str, Any]]) -> None:
        if self._fh is None:
            return
        lines = [json.dumps(eve(e, self.host), separators=(",", ":"), default=str) + "\n"
                 for e in events if self.flows or e.get("type") != "flow_end"]
        if lines:
            try:
                self._fh.write("".join(lines))
                self._fh.flush()
            except OSError as exc:
                raise WardtapError(f"{self.path}: cannot write the EVE log: "
                                   f"{exc.strerror}") from None

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
