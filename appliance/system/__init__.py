"""The appliance as a system service: its configuration, first-boot provisioning, integrity
manifests, sd_notify.

Imports: appliance.common, appliance.contract, appliance.outputs, appliance.policy,
appliance.panel.
"""
