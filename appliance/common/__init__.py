"""Shared by every package: reading a user's files and parsing outside input within bounds,
TOML positions, names shown escaped, rate-limited log lines, the single-instance lock, the
fast path's records, capture writing, MAC vendors, the local control socket's protocol, child
processes, tables that fit the terminal (table), times for people (when).

Imports: appliance.errors and fastpath only.
"""
