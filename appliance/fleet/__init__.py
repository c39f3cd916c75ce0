"""The fleet side: the operator's view of many appliances over the shared contract.

- client: the operator's connection (list, watch, inventory, push-policy, command).
- collector: keeps fleet state in a database; scales out with MQTT 5 shared subscriptions.
- db, schema: one interface over SQLite and PostgreSQL; numbered forward migrations.
- ingest: appliance messages into the database, a batch per transaction.
- queries: what the console and `fleet list --db` read; retention: pruning old events.
- accounts: console users, sessions, log-in limits, the audit log.
- rollout: learned vs running policy, the diff, approval and the staged rollout.
- listing: the fleet's appliances as rows and a table.
- web/: `wardtap fleet serve`, the console (Starlette, Jinja2; no JavaScript).

paho-mqtt, cryptography, psycopg, argon2-cffi, starlette and jinja2 are imported where they
are used, so `import appliance.fleet` works without them. Imports: appliance.common,
appliance.contract, appliance.policy, appliance.review (a policy change in words).
"""
