"""The fleet side of wardtap and the MQTT contract shared with the appliances.

- contract: topic layout, broker URLs and credentials, paho client set-up (both sides).
- client: the operator's view (list, watch, inventory, push-policy, command).
- collector: keeps fleet state in SQLite; scales out with MQTT 5 shared subscriptions.
- cli: the `wardtap fleet ...` commands.
- loadgen: a synthetic event source driving a real reporter (soak tests, benchmarks).

paho-mqtt and cryptography are imported where they are used, so `import appliance.fleet`
works without them.
"""
