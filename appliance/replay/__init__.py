"""`wardtap replay`: classify capture files through the fast path and summarise.

Imports: appliance.common, appliance.sources, appliance.outputs, appliance.inventory,
appliance.policy, fastpath.
"""
