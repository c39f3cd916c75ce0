"""`wardtap run`: the appliance daemon and the commands it serves.

Imports: appliance.common, appliance.contract, appliance.sources, appliance.outputs,
appliance.inventory, appliance.policy, appliance.panel, appliance.replay, appliance.review,
appliance.system, fastpath. Nothing imports it but the command line.
"""
