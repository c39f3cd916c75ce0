"""The fleet contract both sides share: topics, broker connections, signed commands.

Imports: appliance.common.
"""
