"""The device inventory: every MAC on the ward, what it is, and the evidence for it.

Inputs, all off the hot path:
- the fast path's events (`observe_events`): new devices, new flows (which ports a device
  serves and uses, its peers, its addresses), flow ends (bytes per peer);
- the fast path's device table (`observe_devices`): counters, first/last seen, and whether
  one MAC sends from many IPv4 addresses (a router);
- deep-dissection records (`observe_records`, from appliance.inventory.dissector): DHCP,
  LLDP, CDP, mDNS, SSDP, NetBIOS, HL7 MSH, DICOM associations, TLS, HTTP.

Every piece of evidence is kept with its source (protocol and field), first and last time
seen and a count. The vendor comes from the MAC's OUI (Wireshark's manuf file, via
appliance.common.oui); a locally administered MAC (often randomised) has none. Evidence
seen over a router says nothing about the router: a device routing for many addresses keeps only
link-local evidence (LLDP, CDP, DHCP, mDNS, SSDP, NetBIOS, router advertisements).

`classify()` decides each changed device's class with appliance.inventory.classes (rules,
confidence, hysteresis, server roles), its make, model and software version
(appliance.inventory.models), the security advisories that apply to it
(appliance.inventory.advisories), and returns inventory events: `inventory_new_device` for
a MAC the store had never seen, `device_classified` when a device's class is decided or
changes, `device_name_changed` when a name (AE title, HL7 application, host name...) is
replaced by another, `patient_data_unencrypted` when patient data is first seen crossing
the network in the clear (appliance.inventory.dataflows), `advisory_match` when an advisory
newly applies. appliance.inventory.persist writes and reads the store.

appliance.inventory.identify ties it to a datapath loop; appliance.inventory.render shows it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from appliance.inventory.advisories import Advisory, match_device
from appliance.inventory.classes import UNKNOWN, ClassRules
from appliance.inventory.dataflows import DataFlows, flows_in_record
from appliance.inventory.models import ModelCatalogue

MAX_EVIDENCE = 256        # distinct (key, value) pairs per device
MAX_IPS = 32
MAX_PEERS = 64
# names a device gives itself, most telling first (HL7 applications by their first
# component: "MX800^Philips" is the application MX800 of Philips; a facility is a place)
NAME_KEYS = ("dhcp.hostname", "dhcp.fqdn", "lldp.system_name", "cdp.device_id", "mdns.name",
             "netbios.name", "dicom.ae", "hl7.app", "mdns.instance")
APP_PROTOCOLS = {"dhcp": "dhcp", "lldp": "lldp", "cdp": "cdp", "mdns": "mdns", "ssdp": "ssdp",
                 "netbios": "netbios", "hl7": "hl7", "dicom": "dicom", "tls": "tls",
                 "http": "http"}
_PROTO_NAMES = {6: "tcp", 17: "udp", 132: "sctp", 1: "icmp", 58: "icmpv6"}
_COUNTER_KEYS = ("packets_sent", "bytes_sent", "packets_received", "bytes_received")


@dataclass
class Device:
    mac: str
    first_seen: float
    last_seen: float
    vendor: str | None = None
    vendor_checked: bool = False
    randomized: bool = False
    vlan: int | None = None
    router: bool = False
    ips: dict[str, list[Any]] = field(default_factory=dict)       # ip -> [first, last, source]
    evidence: dict[tuple[str, str], list[Any]] = field(default_factory=dict)
    # (key, value) -> [source, scope, first, last, count, dirty]
    peers: dict[str, list[Any]] = field(default_factory=dict)  # ip -> [flows, bytes, last, set]
    base: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_COUNTER_KEYS, 0))
    run: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_COUNTER_KEYS, 0))
    cls: str = UNKNOWN
    confidence: float = 0.0
    reasons: dict[str, Any] = field(default_factory=dict)
    stored: bool = False
    dirty: bool = True
    evidence_dropped: int = 0
    identity: dict[str, Any] | None = None     # make, model, software_version, evidence
    roles: list[str] = field(default_factory=list)
    flows: DataFlows = field(default_factory=DataFlows)
    advisories: list[dict[str, Any]] = field(default_factory=list)
    known_names: dict[str, set[str]] | None = None   # for name-change events

    def facts(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for key, value in self.evidence:
            out.setdefault(key, []).append(value)
        if self.vendor:
            out["vendor"] = [self.vendor]
        if self.randomized:
            out["mac.randomized"] = ["yes"]
        if self.router:
            out["role"] = ["router"]
        return out

    def name_values(self) -> dict[str, list[str]]:
        """Per name key, the names in the order they were first seen."""
        out: dict[str, list[str]] = {}
        for (key, value), _ in sorted(self.evidence.items(), key=lambda kv: kv[1][2]):
            if key in NAME_KEYS:
                name = value.split("^", 1)[0].strip() if key == "hl7.app" else value
                if name and name not in out.setdefault(key, []):
                    out[key].append(name)
        return out

    def names(self) -> list[str]:
        """Every name it sent, by key; within a key the newest first (the current one)."""
        by_key = self.name_values()
        found: list[str] = []
        for key in NAME_KEYS:
            recent = sorted(by_key.get(key, []), key=lambda n: -self._last_seen(key, n))
            found += [n for n in recent if n not in found]
        return found

    def _last_seen(self, key: str, name: str) -> float:
        return max((e[3] for (k, v), e in self.evidence.items()
                    if k == key and (v.split("^", 1)[0].strip() if k == "hl7.app" else v)
                    == name), default=0.0)

    def values_newest_first(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for (key, value), _ in sorted(self.evidence.items(), key=lambda kv: -kv[1][3]):
            out.setdefault(key, []).append(value)
        return out

    def protocols(self) -> list[str]:
        out = set()
        for key, value in self.evidence:
            if key in ("flow.client", "flow.server"):
                out.add(f"{value} {'client' if key == 'flow.client' else 'server'}")
            else:
                app = APP_PROTOCOLS.get(key.split(".")[0])
                if app:
                    out.add(app)
        return sorted(out)


class Inventory:
    """All devices in memory (bounded per device), persisted to the store."""

    def __init__(self, rules: ClassRules | None = None) -> None:
        self.rules = rules or ClassRules.load()
        self.models = ModelCatalogue(self.rules.doc)
        self.makers: dict[str, list[str]] = dict(self.rules.doc.get("makers", {}))
        self.tls_ports: dict[str, str] = dict(self.rules.doc.get("dataflows", {}))
        self.advisories: list[Advisory] = []
        self.advisories_stamp: tuple[Any, ...] | None = None
        self._rematch = False
        self._pending_events: list[dict[str, Any]] = []
        self.devices: dict[str, Device] = {}
        self._index: dict[int, str] = {}           # fast-path device index -> MAC
        self._new: list[str] = []                  # MACs first seen in this process
        self.stats = {"records": 0, "evidence": 0, "evidence_ignored_router": 0,
                      "evidence_dropped": 0}

    # -- devices --

    def _device(self, mac: str, ts: float) -> Device:
        dev = self.devices.get(mac)
        if dev is None:
            dev = self.devices[mac] = Device(mac, ts, ts)
            dev.randomized = bool(int(mac[:2], 16) & 0x02)
            self._new.append(mac)
        else:
            if ts and (ts < dev.first_seen or not dev.first_seen):
                dev.first_seen = ts
            if ts > dev.last_seen:
                dev.last_seen = ts
        return dev

    def _evidence(self, dev: Device, key: str, value: str, source: str, scope: str,
                  ts: float) -> None:
        if dev.router and scope != "link":
            self.stats["evidence_ignored_router"] += 1
            return
        entry = dev.evidence.get((key, value))
        if entry is None:
            if len(dev.evidence) >= MAX_EVIDENCE:
                dev.evidence_dropped += 1
                self.stats["evidence_dropped"] += 1
                return
            dev.evidence[(key, value)] = [source, scope, ts, ts, 1, True]
            dev.dirty = True
            self.stats["evidence"] += 1
            return
        entry[3] = max(entry[3], ts)
        entry[4] += 1
        entry[5] = True

    def _ip(self, dev: Device, ip: str | None, ts: float, source: str, scope: str) -> None:
        if not ip or ip in ("0.0.0.0", "::") or _multicast(ip) or (dev.router and scope != "link"):
            return
        entry = dev.ips.get(ip)
        if entry is None:
            if len(dev.ips) >= MAX_IPS:
                return
            dev.ips[ip] = [ts, ts, source]
            dev.dirty = True
        elif ts > entry[1]:
            entry[1] = ts

    def _become_router(self, dev: Device) -> None:
        """Drop what was learnt from routed traffic before the MAC showed itself a router."""
        dev.router = True
        dev.dirty = True
        dev.evidence = {k: v for k, v in dev.evidence.items() if v[1] == "link"}
        dev.ips = {ip: v for ip, v in dev.ips.items() if v[2] in _LINK_IP_SOURCES}
        dev.peers.clear()

    # -- inputs --

    def observe_events(self, events: Iterable[dict[str, Any]]) -> None:
        """Fast-path events (appliance.common.records.event_dict)."""
        for e in events:
            kind = e.get("type")
            if kind == "new_device":
                if e.get("mac") is None:
                    continue
                self._index[e["device"]] = e["mac"]
                dev = self._device(e["mac"], e["ts"])
                if e.get("vlan"):
                    dev.vlan = e["vlan"]
                self._ip(dev, e.get("ip"), e["ts"], "first packet", "ip")
            elif kind == "new_flow":
                self._flow(e)
            elif kind == "flow_end":
                self._flow_end(e)

    def _flow(self, e: dict[str, Any]) -> None:
        service, server_service = _services(e["proto"], e.get("icmp_type"), e.get("dport"))
        src, dst, ts = e["src"], e["dst"], e["ts"]
        link = _link_scope(src, dst)
        scope = "link" if link else "ip"
        ini = self._mac_of(e.get("device"))
        if ini is not None:
            dev = self._device(ini, ts)
            self._evidence(dev, "flow.client", service, "fast path: flows started", scope, ts)
            self._ip(dev, src, ts, "flow source", scope)
            if dst and not dev.router and not link:
                self._peer(dev, dst, service, ts)
        res = self._mac_of(e.get("peer_device"))
        if res is not None and server_service is not None:
            dev = self._device(res, ts)
            self._evidence(dev, "flow.server", server_service, "fast path: flows answered",
                           scope, ts)
            self._ip(dev, dst, ts, "flow destination", scope)
            if src and not dev.router and not link:
                self._peer(dev, src, server_service, ts)

    def _peer(self, dev: Device, ip: str, service: str, ts: float) -> None:
        peer = dev.peers.get(ip)
        if peer is None:
            if len(dev.peers) >= MAX_PEERS:
                return
            peer = dev.peers[ip] = [0, 0, ts, set()]
        peer[0] += 1
        peer[2] = max(peer[2], ts)
        if len(peer[3]) < 8:
            peer[3].add(service)
        dev.dirty = True

    def _flow_end(self, e: dict[str, Any]) -> None:
        for index, other in ((e.get("device"), e.get("dst")), (e.get("peer_device"),
                                                               e.get("src"))):
            mac = self._mac_of(index)
            dev = self.devices.get(mac) if mac else None
            if dev is not None and other in dev.peers:
                dev.peers[other][1] += int(e.get("bytes") or 0)

    def _mac_of(self, index: int | None) -> str | None:
        return None if index is None else self._index.get(index)

    def observe_devices(self, devices: Sequence[dict[str, Any]]) -> None:
        """The fast path's device table (appliance.common.records.device_dict): absolute counters of
        this run, first/last seen, first addresses, the multi-address (router) flag."""
        for d in devices:
            mac = d.get("mac")
            if not mac:
                continue
            self._index[d["index"]] = mac
            dev = self._device(mac, d["first_seen"])
            if d["last_seen"] > dev.last_seen:
                dev.last_seen = d["last_seen"]
            run = {k: int(d.get(k) or 0) for k in _COUNTER_KEYS}
            if run != dev.run:
                dev.run = run
                dev.dirty = True
            if d.get("vlan") and dev.vlan is None:
                dev.vlan = d["vlan"]
            if d.get("multi_ip") and not dev.router:
                self._become_router(dev)
            for key in ("ipv4", "ipv6"):
                if not dev.router:
                    self._ip(dev, d.get(key), d["first_seen"], "first packet", "ip")

    def observe_records(self, records: Iterable[dict[str, Any]]) -> None:
        """Evidence records from appliance.inventory.dissector."""
        for rec in records:
            self.stats["records"] += 1
            ts = float(rec.get("ts") or 0.0)
            link_src = False
            for item in rec.get("ev", ()):
                if len(item) != 5:
                    continue
                target, key, value, source, scope = item
                if target == "src":
                    mac, ip = rec.get("smac"), rec.get("src")
                elif target == "dst":
                    mac, ip = rec.get("dmac"), rec.get("dst")
                elif isinstance(target, str) and target.startswith("mac:"):
                    mac, ip = target[4:], None
                else:
                    continue
                if not mac or _group_mac(mac):
                    continue
                dev = self._device(mac, ts)
                if key in ("ip.assigned", "ip.own"):
                    self._ip(dev, value, ts, source, "link")
                    continue
                self._evidence(dev, key, value, source, scope, ts)
                if target == "src" and scope == "link":
                    link_src = True
                elif ip and key.startswith(("dicom.", "hl7.", "tls.", "http.")):
                    self._ip(dev, ip, ts, source, scope)
            smac = rec.get("smac")
            if link_src and smac and not _group_mac(smac):
                self._ip(self._device(smac, ts), rec.get("src"), ts, "discovery protocol",
                         "link")
            self._data_flows(rec, ts)

    def _data_flows(self, rec: dict[str, Any], ts: float) -> None:
        """Clinical data from src to dst, on both devices (appliance.inventory.dataflows)."""
        flows = flows_in_record(rec, self.tls_ports)
        if not flows:
            return
        smac, dmac, src, dst = rec.get("smac"), rec.get("dmac"), rec.get("src"), rec.get("dst")
        for protocol, what, encrypted in flows:
            for mac, direction, peer, peer_mac in ((smac, "sends", dst, dmac),
                                                   (dmac, "receives", src, smac)):
                dev = self.devices.get(mac) if mac and not _group_mac(mac) else None
                if dev is None or dev.router or not peer:
                    continue
                if dev.flows.add(direction, peer, peer_mac, protocol, what, encrypted, ts):
                    dev.dirty = True
                    if direction == "sends":
                        self._pending_events.append({
                            "type": "patient_data_unencrypted", "ts": ts, "mac": mac,
                            "peer": peer, "peer_mac": peer_mac, "protocol": protocol,
                            "what": what, "direction": "sends"})
                dev.dirty = True

    # -- decisions --

    def classify(self, now: float | None = None) -> list[dict[str, Any]]:
        """Decide the class of every changed device; return inventory events."""
        self._lookup_vendors()
        events: list[dict[str, Any]] = []
        stamp = time.time() if now is None else now
        for mac in self._new:
            dev = self.devices[mac]
            if not dev.stored:
                ip = next(iter(dev.ips), None)
                events.append({"type": "inventory_new_device", "ts": dev.first_seen,
                               "mac": mac, "vendor": dev.vendor, "ip": ip, "vlan": dev.vlan,
                               "randomized": dev.randomized})
        self._new.clear()
        events += self._pending_events
        self._pending_events = []
        rematch, self._rematch = self._rematch, False
        for dev in self.devices.values():
            if not dev.dirty and not rematch:
                continue
            if dev.dirty:
                decision = self.rules.decide(dev.facts(), dev.cls)
                reasons = {"rules": decision.matched, "contradicting": decision.contradicting,
                           "scores": decision.scores, "kept_by_hysteresis": decision.kept}
                if decision.cls != dev.cls:
                    events.append({"type": "device_classified", "ts": stamp, "mac": dev.mac,
                                   "class": decision.cls, "confidence": decision.confidence,
                                   "previous": dev.cls,
                                   "rules": [m["rule"] for m in decision.matched]})
                dev.cls, dev.confidence, dev.reasons = (decision.cls, decision.confidence,
                                                        reasons)
                dev.roles = decision.roles
                events += self._renamed(dev, stamp)
                found = self.models.identify(dev.values_newest_first())
                dev.identity = None if found is None else dict(
                    found.as_dict(), advisory_products=list(found.advisory_products),
                    cpe=found.cpe)
            events += self._match_advisories(dev, stamp)
        return events

    def _renamed(self, dev: Device, stamp: float) -> list[dict[str, Any]]:
        """A name key that gains a new value after having one: the device was renamed (also
        when both arrive in one batch, as in a replay: first seen order decides)."""
        now = dev.name_values()
        before, dev.known_names = dev.known_names or {}, {k: set(v) for k, v in now.items()}
        out = []
        for key, names in now.items():
            for previous, name in zip(names, names[1:], strict=False):
                if name not in before.get(key, set()):
                    out.append({"type": "device_name_changed", "ts": stamp, "mac": dev.mac,
                                "key": key, "name": name, "previous": previous})
        return out

    def _match_advisories(self, dev: Device, stamp: float) -> list[dict[str, Any]]:
        found = match_device(dev.identity or {}, self.advisories, self.makers) \
            if self.advisories else []
        before = {a["id"] for a in dev.advisories}
        if found != dev.advisories:
            dev.dirty = True
        dev.advisories = found
        return [{"type": "advisory_match", "ts": stamp, "mac": dev.mac, "advisory": a["id"],
                 "title": a["title"], "product": a["product"], "status": a["status"],
                 "cvss": a["cvss"], "make": (dev.identity or {}).get("make"),
                 "model": (dev.identity or {}).get("model"),
                 "software_version": (dev.identity or {}).get("software_version")}
                for a in found if a["id"] not in before]

    def set_advisories(self, advisories: list[Advisory], stamp: tuple[Any, ...] | None = None
                       ) -> None:
        """Advisories to match every device against (from the store); rematched at the next
        classify()."""
        self.advisories = advisories
        self.advisories_stamp = stamp
        self._rematch = True

    def _lookup_vendors(self) -> None:
        todo = [d for d in self.devices.values() if not d.vendor_checked]
        if not todo:
            return
        from appliance.common.oui import vendors

        found = vendors(d.mac for d in todo if not d.randomized)
        missing = [d.mac for d in todo if not d.randomized and d.mac[:8] not in found]
        longer = _long_prefix_vendors(missing) if missing else {}
        for dev in todo:
            dev.vendor_checked = True
            if dev.randomized:
                continue
            vendor = longer.get(dev.mac) or found.get(dev.mac[:8])
            if vendor and vendor != dev.vendor:
                dev.vendor = vendor
                dev.dirty = True

    # -- output --

    def as_list(self) -> list[dict[str, Any]]:
        return [_device_dict(dev) for dev in sorted(self.devices.values(),
                                                     key=lambda d: (d.first_seen, d.mac))]

    def class_members(self, cls: str) -> list[str]:
        return sorted(d.mac for d in self.devices.values() if d.cls == cls)


_LINK_IP_SOURCES = {"discovery protocol", "dhcp ACK (yiaddr)", "lldp management address"}


@lru_cache(maxsize=1024)
def _services(proto: int, icmp_type: int | None, dport: int | None) -> tuple[str, str | None]:
    """(what the initiator used, what the responder served): "tcp/443", "icmpv6/134"."""
    name = _PROTO_NAMES.get(proto or 0, str(proto))
    if icmp_type is not None:
        return f"{name}/{icmp_type}", None
    if dport is not None:
        return f"{name}/{dport}", f"{name}/{dport}"
    return name, None


@lru_cache(maxsize=4096)
def _multicast(ip: str) -> bool:
    if ":" in ip:
        return ip.lower().startswith("ff")
    first = ip.split(".", 1)[0]
    return (first.isdigit() and 224 <= int(first) <= 239) or ip == "255.255.255.255"


@lru_cache(maxsize=4096)
def _link_scope(src: str | None, dst: str | None) -> bool:
    """Traffic that never crosses a router: link-local sources, multicast or broadcast."""
    if src and src.lower().startswith("fe80:"):
        return True
    return bool(dst) and _multicast(str(dst))


def _group_mac(mac: str) -> bool:
    return bool(int(mac[:2], 16) & 0x01)


def _long_prefix_vendors(macs: Sequence[str]) -> dict[str, str]:
    """Vendors of MA-M (/28) and MA-S (/36) blocks, which appliance.common.oui leaves out."""
    from appliance.common.oui import _manuf_path

    path = _manuf_path()
    if path is None:
        return {}
    wanted = {m.lower().replace(":", ""): m for m in macs}
    prefixes = {h[:6] for h in wanted}
    out: dict[str, str] = {}
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if "/" not in line[:25] or line[:8].lower().replace(":", "") not in prefixes:
                    continue
                parts = line.rstrip("\n").split("\t")
                addr, _, bits = parts[0].partition("/")
                nibbles = int(bits) // 4
                prefix = addr.lower().replace(":", "")[:nibbles]
                for hexmac, mac in wanted.items():
                    if hexmac.startswith(prefix):
                        out[mac] = (parts[2] if len(parts) > 2 else parts[1]).strip()
    except (OSError, ValueError):
        return {}
    return out


def _device_dict(dev: Device) -> dict[str, Any]:
    total = {k: dev.base[k] + dev.run[k] for k in _COUNTER_KEYS}
    return {
        "mac": dev.mac,
        "vendor": dev.vendor,
        "randomized_mac": dev.randomized,
        "class": dev.cls,
        "confidence": dev.confidence,
        "class_reasons": dev.reasons.get("rules", []),
        "contradicting": dev.reasons.get("contradicting", []),
        "roles": list(dev.roles),
        "make": (dev.identity or {}).get("make"),
        "model": (dev.identity or {}).get("model"),
        "software_version": (dev.identity or {}).get("software_version"),
        "identity": dev.identity,
        "names": dev.names(),
        "ips": [{"ip": ip, "first_seen": v[0], "last_seen": v[1], "source": v[2]}
                for ip, v in sorted(dev.ips.items(), key=lambda kv: kv[1][0])],
        "vlan": dev.vlan,
        "router": dev.router,
        "protocols": dev.protocols(),
        "peers": [{"ip": ip, "flows": p[0], "bytes": p[1], "last_seen": p[2],
                   "services": sorted(p[3])}
                  for ip, p in sorted(dev.peers.items(), key=lambda kv: -kv[1][0])],
        "data_flows": dev.flows.as_list(),
        "unencrypted_patient_data": dev.flows.unencrypted_patient_data,
        "advisories": list(dev.advisories),
        "first_seen": dev.first_seen,
        "last_seen": dev.last_seen,
        **total,
        "evidence": [{"key": k, "value": v, "source": e[0], "scope": e[1],
                      "first_seen": e[2], "last_seen": e[3], "count": e[4]}
                     for (k, v), e in sorted(dev.evidence.items())],
    }


def annotate(devices: list[dict[str, Any]],
             inventory: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The classifier's device records with what identification found (class, confidence,
    names), for the retained MQTT inventory message."""
    found = {d["mac"]: d for d in inventory if d.get("mac")}
    out = []
    for device in devices:
        ident = found.get(device.get("mac") or "")
        if ident is not None:
            device = {**device, "class": ident.get("class"),
                      "class_confidence": ident.get("confidence"),
                      "names": ident.get("names") or [], "vendor": ident.get("vendor"),
                      "roles": ident.get("roles") or [], "make": ident.get("make"),
                      "model": ident.get("model"),
                      "software_version": ident.get("software_version"),
                      "unencrypted_patient_data": bool(ident.get("unencrypted_patient_data")),
                      "data_flows": brief_flows(ident.get("data_flows") or []),
                      "advisories": brief_advisories(ident.get("advisories") or [])}
        out.append(device)
    return out


def brief_flows(flows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Data flows without counters, for the fleet's inventory."""
    return [{k: f.get(k) for k in ("direction", "peer", "protocol", "encrypted",
                                    "patient_data", "what")} for f in flows[:16]]


def brief_advisories(found: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Advisory matches without their long texts, for the fleet's inventory."""
    return [{k: a.get(k) for k in ("id", "status", "cvss", "product", "url")}
            for a in found[:16]]
