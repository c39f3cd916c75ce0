"""The fleet side: the operator's view of many appliances over the shared contract.

- client: the operator's connection (list, watch, inventory, push-policy, command).
- collector: keeps fleet state in SQLite; scales out with MQTT 5 shared subscriptions.
- listing: the fleet's appliances as rows and a table.

paho-mqtt and cryptography are imported where they are used, so `import appliance.fleet`
works without them. Imports: appliance.common, appliance.contract, appliance.policy,
appliance.review (a policy change in words).
"""
