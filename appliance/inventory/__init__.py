"""The device inventory: devices and their evidence, deep dissection off the hot path
(triage, the tshark worker), device classes, identification inside a datapath loop.

Imports: appliance.common, appliance.outputs (the store).
"""
