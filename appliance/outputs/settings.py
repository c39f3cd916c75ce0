"""The MQTT reporter's settings: from a validated [broker] table or command-line options."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from appliance.contract.broker import BrokerSettings, check_id
from appliance.errors import WardtapError


@dataclass
class ReporterSettings:
    broker: BrokerSettings
    site: str
    appliance: str
    spool: str
    fleet_key: str | None = None
    stats_interval: float = 300.0
    inventory_interval: float = 300.0
    summary_window: float = 60.0
    per_group: int = 5
    inflight: int = 100
    batch: int = 100
    linger: float = 0.2
    min_interval: float = 10.0
    spool_max_rows: int = 200_000
    spool_max_bytes: int = 64 << 20
    min_free_bytes: int = 8 << 20
    spool_reserve_bytes: int = 4 << 20     # kept free to delete acknowledged rows on a full disk
    max_command_bytes: int = 256 * 1024
    drain_timeout: float = 5.0
    # PUBACK 0x10 "no matching subscribers" on events: keep them and retry (nobody got them)
    require_subscriber: bool = True

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> ReporterSettings:
        """From a validated [broker] table (appliance.system.config) or command-line options."""
        broker = BrokerSettings.from_options(
            options["url"], ca=options.get("ca"), cert=options.get("cert"),
            key=options.get("key"), username=options.get("username"),
            password_file=options.get("password_file"),
            keepalive=int(options.get("keepalive", 30)),
            reconnect_max=float(options.get("reconnect_max", 30.0)))
        if not options.get("spool"):
            raise WardtapError("the MQTT reporter needs a spool file ([store] path or "
                               "[broker] spool)")
        known = {f for f in cls.__dataclass_fields__} - {"broker"}
        values = {k: v for k, v in options.items() if k in known}
        settings = cls(broker=broker, **values)
        check_id(settings.site, "site")
        check_id(settings.appliance, "appliance")
        if not 1 <= settings.inflight <= 65000 or not 1 <= settings.batch <= 10000:
            raise WardtapError("inflight must be 1..65000 and batch 1..10000")
        return settings
