"""The daemon's configuration file (TOML), validated as a whole with line-naming errors.

```toml
[appliance]
mode = "monitor"            # learn | monitor | enforce | bypass

[datapath]
type = "inline"             # replay | tap | inline
interface = "eth1"          # tap: the mirror-port interface
bridge = "br0"              # inline: the bridge joining the ward and uplink ports
queue = 0                   # inline: NFQUEUE number
max_len = 4096              # inline: queue length; a full queue fails open
stall_ms = 500              # inline: no answer this long -> stop queueing (fail open)
files = ["ward.pcap"]       # replay: capture files
stay = false                # replay: keep running after the files (demo, tests)

[policy]
file = "policy.toml"        # relative paths are relative to this file

[store]
path = "wardtap.db"

[events]
log = "events.jsonl"        # optional: one JSON line per event

[control]
socket = "/run/wardtap/control.sock"

[tables]
flows = 65536               # flow slots, 128 bytes each
devices = 4096
udp_timeout = 60            # seconds a UDP flow stays without packets; also how long an
                            # answer may come without its request seen (docs/fastpath.md)

[broker]                    # optional: report to the fleet over MQTT (docs/mqtt.md)
url = "mqtts://broker.hosp.example:8883"
site = "st-marys"
appliance = "ward4b-01"     # default: [appliance] name; must match the certificate CN
ca = "ca.pem"
cert = "ward4b-01.pem"
key = "ward4b-01.key"
fleet_key = "fleet.pub"     # Ed25519 public key that signs enforcement commands
# spool_reserve_bytes = 4194304   # kept allocated to delete sent rows on a full disk

[integrity]                 # optional: verify SHA-256 manifests (appliance.system.integrity)
manifests = ["/usr/share/wardtap/install.manifest.json", "integrity.json"]
interval = 900              # seconds between checks (the first one at start)

[syslog]                    # optional: events to the SIEM (appliance.outputs.syslog)
url = "tls://siem.hosp.example:6514"   # udp://, tcp:// or tls://
format = "rfc5424"          # or "cef"

[eve]                       # optional: a Suricata-EVE-like JSON file (appliance.outputs.eve)
path = "eve.json"

[mud.controllers]           # optional: RFC 8520 my-controller, per MUD URL (policy import-mud),
"https://mud.pumpvendor.example/infusion/lvp-7.json" = ["10.20.0.16"]
"urn:ietf:params:mud:gateway" = ["10.40.104.1"]    # and controller classes, by their URI
[mud.devices]               # optional: another maker (its MUD URL authority) or model (MUD URL)
"otherman.example" = ["00:50:56"]                  # OUIs, MACs or addresses
```

conf/wardtap.toml in the source tree is a sample with every key explained.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from typing import Any

from appliance.common.bounded import BoundsError, load_toml
from appliance.common.control import DEFAULT_CONTROL  # noqa: F401  (re-exported)
from appliance.common.tomlfile import TomlLines
from appliance.errors import WardtapError

MODES = ("learn", "monitor", "enforce", "bypass")
DATAPATHS = ("replay", "tap", "inline")
MAX_CONFIG_BYTES = 256 << 10


class ConfigError(WardtapError):
    def __init__(self, path: str, message: str, line: int | None = None,
                 field_name: str | None = None) -> None:
        loc = f":{line}" if line else ""
        what = f" [{field_name}]" if field_name else ""
        super().__init__(f"{path}{loc}{what}: {message}")


@dataclass
class Config:
    path: str
    mode: str = "monitor"
    datapath: str = "replay"
    datapath_options: dict[str, Any] = field(default_factory=dict)
    policy: str | None = None
    store: str | None = None
    event_log: str | None = None
    control_socket: str | None = DEFAULT_CONTROL
    flows: int = 65536
    devices: int = 4096
    udp_timeout: float = 60.0
    learn_output: str | None = None
    learn_interval: int = 0
    panel: bool = True            # LEDs, button, relay heartbeat (simulated off a Pi)
    # [broker]: validated options for appliance.outputs.mqtt (paths made absolute)
    broker: dict[str, Any] | None = None
    # [integrity]: {"manifests": [absolute paths], "interval": seconds}
    integrity: dict[str, Any] | None = None
    # [syslog], [eve]: (output name, options) for appliance.outputs.make_output
    outputs: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    # [mud.controllers]: MUD URL -> the addresses of the controllers this ward uses for it
    mud_controllers: dict[str, list[str]] = field(default_factory=dict)
    # [mud.devices]: a MUD URL authority or MUD URL -> OUIs, MACs or addresses
    mud_devices: dict[str, list[str]] = field(default_factory=dict)


_SCHEMA: dict[str, dict[str, type | tuple[type, ...]]] = {
    "appliance": {"mode": str, "name": str},
    # Datapath options go to the source as they are (appliance/sources/*.py document them).
    "datapath": {"type": str, "interface": str, "bridge": str, "queue": int,
                 "files": list, "batch_size": int, "stay": bool,
                 # tap (AF_PACKET ring)
                 "block_size": int, "block_count": int, "frame_size": int, "snaplen": int,
                 "timeout_ms": int, "fanout": int, "fanout_mode": str, "promiscuous": bool,
                 # inline (NFQUEUE)
                 "max_len": int, "idle_interval": (int, float), "mark_mask": int,
                 "stall_ms": (int, float), "watchdog": bool, "keep_rules": bool},
    "policy": {"file": str},
    "store": {"path": str},
    "events": {"log": str},
    "control": {"socket": str},
    "tables": {"flows": int, "devices": int, "udp_timeout": (int, float)},
    "learn": {"output": str, "interval": int},
    "panel": {"enabled": bool},
    "broker": {"url": str, "site": str, "appliance": str, "ca": str, "cert": str, "key": str,
               "username": str, "password_file": str, "fleet_key": str, "spool": str,
               "keepalive": int, "reconnect_max": (int, float),
               "stats_interval": (int, float), "inventory_interval": (int, float),
               "summary_window": (int, float), "per_group": int, "inflight": int,
               "batch": int, "linger": (int, float), "min_interval": (int, float),
               "spool_max_rows": int, "spool_max_bytes": int, "min_free_bytes": int,
               "spool_reserve_bytes": int,
               "max_command_bytes": int, "require_subscriber": bool},
    "integrity": {"manifests": list, "interval": (int, float)},
    "syslog": {"url": str, "format": str, "facility": str, "ca": str, "cert": str, "key": str,
               "types": list, "hostname": str},
    "eve": {"path": str, "flows": bool},
    "mud": {"controllers": dict, "devices": dict},
}
_BROKER_PATHS = ("ca", "cert", "key", "password_file", "fleet_key", "spool")


_DATAPATH_OPTIONS = {
    "replay": {"files", "batch_size", "stay"},
    "tap": {"interface", "block_size", "block_count", "frame_size", "snaplen", "timeout_ms",
            "fanout", "fanout_mode", "promiscuous"},
    "inline": {"bridge", "queue", "max_len", "snaplen", "batch_size", "idle_interval",
               "mark_mask", "stall_ms", "watchdog", "keep_rules"},
}


def load_config(path: str) -> Config:
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_CONFIG_BYTES + 1)
        if len(raw) > MAX_CONFIG_BYTES:
            raise ConfigError(path, f"more than the {MAX_CONFIG_BYTES:,} bytes allowed for a "
                              "configuration file")
        text = raw.decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(path, "no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(path, f"cannot read: {exc}") from None
    try:
        doc = load_toml(text, max_bytes=MAX_CONFIG_BYTES)
    except BoundsError as exc:
        raise ConfigError(path, str(exc)) from None
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"line (\d+)", str(exc))
        raise ConfigError(path, f"TOML syntax: {exc}",
                          int(match.group(1)) if match else None) from None
    lines = TomlLines(text)
    for table, values in doc.items():
        if table not in _SCHEMA or not isinstance(values, dict):
            raise ConfigError(path, f"unknown table (expected: {', '.join(_SCHEMA)})",
                              lines.table(f"[{table}]"), table)
        for key, value in values.items():
            expected = _SCHEMA[table].get(key)
            where = f"{table}.{key}"
            if expected is None:
                raise ConfigError(path, f"unknown field (expected: "
                                  f"{', '.join(_SCHEMA[table])})",
                                  lines.key(f"[{table}]", key), where)
            if not isinstance(value, expected) or (isinstance(value, bool)
                                                    and expected is not bool):
                kinds = expected if isinstance(expected, tuple) else (expected,)
                raise ConfigError(path, f"must be {' or '.join(k.__name__ for k in kinds)}",
                                  lines.key(f"[{table}]", key), where)
    base = os.path.dirname(os.path.abspath(path))

    def rel(value: str | None) -> str | None:
        return None if value is None else os.path.join(base, value)

    get = lambda table, key, default=None: doc.get(table, {}).get(key, default)  # noqa: E731
    mode = get("appliance", "mode", "monitor")
    if mode not in MODES:
        raise ConfigError(path, f"must be one of {', '.join(MODES)}",
                          lines.key("[appliance]", "mode"), "appliance.mode")
    datapath = get("datapath", "type", "replay")
    if datapath not in DATAPATHS:
        raise ConfigError(path, f"must be one of {', '.join(DATAPATHS)}",
                          lines.key("[datapath]", "type"), "datapath.type")
    options = {k: v for k, v in doc.get("datapath", {}).items() if k != "type"}
    for key in options:
        if key not in _DATAPATH_OPTIONS[datapath]:
            raise ConfigError(path, f"not an option of the {datapath} datapath (its options: "
                              f"{', '.join(sorted(_DATAPATH_OPTIONS[datapath]))})",
                              lines.key("[datapath]", key), f"datapath.{key}")
    if datapath == "replay":
        files = options.get("files") or []
        if not files or not all(isinstance(f, str) for f in files):
            raise ConfigError(path, "replay needs files = [\"capture.pcap\", ...]",
                              lines.key("[datapath]", "files"), "datapath.files")
        options["files"] = [rel(f) for f in files]
    elif datapath == "tap" and "interface" not in options:
        raise ConfigError(path, "tap needs interface = \"eth1\"", lines.table("[datapath]"),
                          "datapath.interface")
    elif datapath == "inline" and "bridge" not in options:
        raise ConfigError(path, "inline needs bridge = \"br0\"", lines.table("[datapath]"),
                          "datapath.bridge")
    if mode in ("monitor", "enforce") and get("policy", "file") is None:
        raise ConfigError(path, f"mode {mode} needs a policy: [policy] file = \"...\"",
                          lines.key("[appliance]", "mode"), "policy.file")
    udp_timeout = get("tables", "udp_timeout", 60)
    if not 1 <= udp_timeout <= 3600:
        raise ConfigError(path, "must be between 1 and 3600 seconds",
                          lines.key("[tables]", "udp_timeout"), "tables.udp_timeout")
    broker = _broker(path, lines, doc, rel, get("store", "path"))
    integrity = None
    if "integrity" in doc:
        manifests = get("integrity", "manifests") or []
        if not manifests or not all(isinstance(m, str) for m in manifests):
            raise ConfigError(path, "needs manifests = [\"install.manifest.json\", ...]",
                              lines.table("[integrity]"), "integrity.manifests")
        interval = get("integrity", "interval", 900)
        if not interval > 0:
            raise ConfigError(path, "must be above 0 seconds",
                              lines.key("[integrity]", "interval"), "integrity.interval")
        integrity = {"manifests": [rel(m) for m in manifests], "interval": float(interval)}
    outputs = _siem(path, lines, doc, rel)
    for name in options.get("files", []) if datapath == "replay" else []:
        if not os.path.isfile(name):            # found now, not after "running"
            raise ConfigError(path, f"capture {name}: no such file",
                              lines.key("[datapath]", "files"), "datapath.files")
    return Config(
        path=path, mode=mode, outputs=outputs, datapath=datapath, datapath_options=options,
        broker=broker,
        policy=rel(get("policy", "file")), store=rel(get("store", "path")),
        event_log=rel(get("events", "log")),
        control_socket=rel(get("control", "socket", DEFAULT_CONTROL)),
        flows=get("tables", "flows", 65536), devices=get("tables", "devices", 4096),
        udp_timeout=float(udp_timeout), learn_output=rel(get("learn", "output")),
        learn_interval=get("learn", "interval", 0),
        panel=get("panel", "enabled", True), integrity=integrity,
        mud_controllers=_mud_controllers(path, lines, get("mud", "controllers", {})),
        mud_devices=_mud_devices(path, lines, get("mud", "devices", {})),
    )


def _mud_controllers(path: str, lines: TomlLines, table: dict[str, Any]
                     ) -> dict[str, list[str]]:
    """[mud.controllers]: "MUD URL or controller class URI" = ["address or CIDR", ...]."""
    import ipaddress

    out: dict[str, list[str]] = {}
    for url, addresses in table.items():
        line = lines.key("[mud.controllers]", url)
        where = f"mud.controllers.{url}"
        if not url.startswith(("https://", "http://", "urn:")):
            raise ConfigError(path, "must be a MUD URL (https://...) or a controller class "
                              "URI (urn:... or https://...)", line, where)
        if not isinstance(addresses, list) or not addresses:
            raise ConfigError(path, "must be a list of addresses", line, where)
        for a in addresses:
            try:
                ipaddress.ip_network(a, strict=False)
            except (ValueError, TypeError):
                raise ConfigError(path, f"{a!r} is not an address or CIDR block", line,
                                  where) from None
        out[url] = [str(a) for a in addresses]
    return out


def _mud_devices(path: str, lines: TomlLines, table: dict[str, Any]) -> dict[str, list[str]]:
    """[mud.devices]: "MUD URL authority or MUD URL" = ["OUI, MAC or address", ...]."""
    import ipaddress
    import re

    hexes = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){2}((:[0-9a-f]{2}){3})?")
    out: dict[str, list[str]] = {}
    for key, members in table.items():
        line = lines.key("[mud.devices]", key)
        where = f"mud.devices.{key}"
        if not key or any(c.isspace() for c in key):
            raise ConfigError(path, "must be a MUD URL authority (host) or a MUD URL", line,
                              where)
        if not isinstance(members, list) or not members:
            raise ConfigError(path, "must be a list of OUIs, MACs or addresses", line, where)
        for m in members:
            if isinstance(m, str) and hexes.fullmatch(m.lower()):
                continue
            try:
                ipaddress.ip_network(m, strict=False)
            except (ValueError, TypeError):
                raise ConfigError(path, f"{m!r} is not an OUI (aa:bb:cc), a MAC or an "
                                  "address", line, where) from None
        out[key] = [str(m).lower() for m in members]
    return out


def _broker(path: str, lines: TomlLines, doc: dict[str, Any], rel: Any,
            store: str | None) -> dict[str, Any] | None:
    """The [broker] table: url, site and appliance required; the spool defaults to the store."""
    from appliance.contract.broker import ContractError, check_id, parse_url

    table = doc.get("broker")
    if table is None:
        return None
    options = dict(table)
    options.setdefault("appliance", doc.get("appliance", {}).get("name"))
    for key in ("url", "site", "appliance"):
        if not options.get(key):
            hint = " (or [appliance] name)" if key == "appliance" else ""
            raise ConfigError(path, f"[broker] needs {key} = \"...\"{hint}",
                              lines.table("[broker]"), f"broker.{key}")
    try:
        parse_url(options["url"])
    except ContractError as exc:
        raise ConfigError(path, str(exc), lines.key("[broker]", "url"), "broker.url") from None
    for key in ("site", "appliance"):
        try:
            check_id(options[key], key)
        except ContractError as exc:
            line = (lines.key("[broker]", key) if key in table
                    else lines.key("[appliance]", "name"))
            raise ConfigError(path, str(exc), line, f"broker.{key}") from None
    for key in _BROKER_PATHS:
        if key in options:
            options[key] = rel(options[key])
    if "spool" not in options:
        if store is None:
            raise ConfigError(path, "[broker] needs a spool file: set [store] path or "
                              "[broker] spool", lines.table("[broker]"), "broker.spool")
        options["spool"] = rel(store)
    return options


def _siem(path: str, lines: TomlLines, doc: dict[str, Any], rel: Any
          ) -> list[tuple[str, dict[str, Any]]]:
    """[syslog] and [eve]: checked here, so a typo stops the start, not the first event."""
    from appliance.outputs.siem import FACILITIES
    from appliance.outputs.syslog import SyslogError, parse_syslog_url

    out: list[tuple[str, dict[str, Any]]] = []
    if "syslog" in doc:
        options = dict(doc["syslog"])
        if "url" not in options:
            raise ConfigError(path, 'needs url = "udp://HOST:514" (or tcp://, tls://)',
                              lines.table("[syslog]"), "syslog.url")
        try:
            parse_syslog_url(options["url"])
        except SyslogError as exc:
            raise ConfigError(path, str(exc), lines.key("[syslog]", "url"),
                              "syslog.url") from None
        if options.get("format", "rfc5424") not in ("rfc5424", "cef"):
            raise ConfigError(path, 'must be "rfc5424" or "cef"',
                              lines.key("[syslog]", "format"), "syslog.format")
        if options.get("facility", "local0") not in FACILITIES:
            raise ConfigError(path, f"must be one of {', '.join(FACILITIES)}",
                              lines.key("[syslog]", "facility"), "syslog.facility")
        if not all(isinstance(t, str) for t in options.get("types", [])):
            raise ConfigError(path, "must list event types as strings",
                              lines.key("[syslog]", "types"), "syslog.types")
        for key in ("ca", "cert", "key"):
            if key in options:
                options[key] = rel(options[key])
                if not os.path.isfile(options[key]):
                    raise ConfigError(path, f"{options[key]}: no such file",
                                      lines.key("[syslog]", key), f"syslog.{key}")
        out.append(("syslog", options))
    if "eve" in doc:
        options = dict(doc["eve"])
        if "path" not in options:
            raise ConfigError(path, 'needs path = "eve.json"', lines.table("[eve]"),
                              "eve.path")
        options["path"] = rel(options["path"])
        out.append(("eve", options))
    return out
