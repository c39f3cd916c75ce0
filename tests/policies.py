"""Allow-lists the tests share. Each is the plain TOML a person would write (docs/policy.md),
so a test reads as what it checks."""

from __future__ import annotations

from collections.abc import Sequence


def pumps_to_server(name: str = "test", version: int = 1,
                    server: Sequence[str] = ("10.20.0.15", "fd00:20::15")) -> str:
    """Infusion pumps (by the maker's OUI) may open TLS and the 8000-8080 service range to
    their server; nothing else is allowed."""
    ips = ", ".join(f'"{ip}"' for ip in server)
    return f"""\
[policy]
name = "{name}"
version = {version}

[groups.pumps]
oui = ["00:1a:2b"]

[groups.server]
ip = [{ips}]

[[rules]]
name = "pumps-to-server"
from = "pumps"
to = "server"
proto = "tcp"
ports = [443, "8000-8080"]
"""


def ward_dns(name: str, ward_ip: str, server_ip: str, ping: bool = False) -> str:
    """The ward's host may ask the uplink's server for names (udp/53) and, with `ping`,
    ping it; nothing else."""
    return f"""\
[policy]
name = "{name}"
version = 1

[groups.ward-hosts]
ip = ["{ward_ip}"]

[groups.servers]
ip = ["{server_ip}"]

[[rules]]
name = "ward-dns"
from = "ward-hosts"
to = "servers"
proto = "udp"
ports = [53]
""" + ("""
[[rules]]
name = "ward-ping"
from = "ward-hosts"
to = "servers"
proto = "icmp"
icmp_types = [8]
""" if ping else "")


def clients_tls(name: str) -> str:
    """Clients in 10.40.0.0/24 may open TLS to the server 10.20.0.15; nothing else (the
    policy of the port-scan and scaling captures: their scans hit closed ports)."""
    return f"""\
[policy]
name = "{name}"
version = 1

[groups.clients]
ip = ["10.40.0.0/24"]

[groups.server]
ip = ["10.20.0.15"]

[[rules]]
name = "clients-tls"
from = "clients"
to = "server"
proto = "tcp"
ports = [443]
"""
