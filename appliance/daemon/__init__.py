"""`wardtap run`: the appliance daemon and the commands it serves.

Imports: every package above it (common, contract, sources, outputs, inventory, policy,
panel, replay, review, system); nothing imports it but the command line.
"""
