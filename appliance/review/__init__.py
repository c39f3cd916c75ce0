"""Reviewing what was seen against policies: a device's baseline, a proposed policy, and
`policy diff`, `test` and `drift`.

Imports: appliance.common, appliance.inventory (who each device is), appliance.policy,
appliance.replay.
"""
