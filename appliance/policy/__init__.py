"""Allow-list policies: the model (load, validate, compile), the lint, the reference
evaluator, the writer people review, RFC 8520 MUD import.

Imports: appliance.common, appliance.inventory (device class names), fastpath.
"""
