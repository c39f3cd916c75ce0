"""Outputs behind one interface (appliance.outputs.base.Output): the local store, the event
log, the MQTT reporter (with its spool, sender, summarizer and fleet commands), the audit log.

Imports: appliance.common, appliance.contract.
"""

from appliance.outputs.base import Output
from appliance.outputs.eventlog import EventLogOutput
from appliance.outputs.store import StoreOutput

__all__ = ["EventLogOutput", "Output", "StoreOutput"]
