"""Outputs behind one interface (appliance.outputs.base.Output)."""

from appliance.outputs.base import Output
from appliance.outputs.eventlog import EventLogOutput
from appliance.outputs.store import StoreOutput

__all__ = ["EventLogOutput", "Output", "StoreOutput"]
