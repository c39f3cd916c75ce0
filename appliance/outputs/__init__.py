"""Outputs behind one interface (appliance.outputs.base.Output): the local store, the event
log, the MQTT reporter (with its spool, sender, summarizer and fleet commands), the audit log,
and for the hospital's SIEM: syslog (RFC 5424 or CEF over UDP, TCP, TLS) and an EVE file.
Also: reading the store back (history).

Adding an output is one module plus one entry in OUTPUTS (its configuration table).

Imports: appliance.common, appliance.contract.
"""

from __future__ import annotations

import importlib
from typing import Any

from appliance.outputs.base import Output
from appliance.outputs.eventlog import EventLogOutput
from appliance.outputs.store import StoreOutput

# configuration table -> "module:class"; the table's keys are the class's arguments
OUTPUTS = {
    "syslog": "appliance.outputs.syslog:SyslogOutput",
    "eve": "appliance.outputs.eve:EveOutput",
}


def make_output(kind: str, options: dict[str, Any]) -> Output:
    module, _, cls = OUTPUTS[kind].partition(":")
    return getattr(importlib.import_module(module), cls)(**options)  # type: ignore[no-any-return]


__all__ = ["OUTPUTS", "EventLogOutput", "Output", "StoreOutput", "make_output"]
