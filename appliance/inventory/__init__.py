"""The device inventory: devices and their evidence, deep dissection off the hot path
(triage on the fast path's decoded records, HL7/DICOM parsers, the tshark worker), device
classes and roles, make/model/version (models), clinical data flows, CSAF advisories and
their matching, the store (persist), identification inside a datapath loop.

Imports: appliance.common, appliance.outputs (the store).
"""
