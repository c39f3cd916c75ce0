"""Each device's baseline from what it did: conversations, devices, and a resolved view.

A :class:`Baseline` takes the classifier's events (new_flow, flow_end, new_device) from any
source: a capture replayed in learn mode (:func:`learn`), or the daemon's live events in learn
mode. It keeps one record per *conversation* (initiator, responder, VLAN, protocol, responder
port), not per flow, so its memory follows the number of distinct conversations, not the
traffic. A :class:`View` resolves it into endpoints (a device on the ward is its MAC plus
every address it used; a MAC that carries several IPv4 addresses or IPv6 /64s is a router,
and the hosts behind it are their addresses; broadcast, multicast and unspecified addresses
stay literal addresses) and the conversations between them. appliance.review.propose turns a
baseline into a policy.
"""

from __future__ import annotations

import ipaddress
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from appliance.common.oui import vendors
from appliance.errors import WardtapError
from appliance.policy.model import ICMP, PORTED, PROTOCOL_NAMES
from appliance.policy.writer import iso

if TYPE_CHECKING:
    from appliance.inventory.dissector import DissectConfig

_SOLICITED = ipaddress.ip_network("ff02::1:ff00:0/104")
_UNSPECIFIED = {"0.0.0.0", "::"}

ConvKey = tuple[str | None, str, str | None, str, int, int, int]
"""(initiator MAC, initiator IP, responder MAC, responder IP, VLAN, protocol, port).

port: the responder's port for TCP/UDP/SCTP, the request type for ICMP, 0 otherwise."""


@dataclass
class Stats:
    flows: int = 0
    packets: int = 0
    bytes: int = 0
    first: float = math.inf
    last: float = 0.0

    def add(self, other: Stats) -> None:
        self.flows += other.flows
        self.packets += other.packets
        self.bytes += other.bytes
        self.first = min(self.first, other.first)
        self.last = max(self.last, other.last)

    def seen(self, ts: float) -> None:
        self.first = min(self.first, ts)
        self.last = max(self.last, ts)

    def as_dict(self) -> dict[str, Any]:
        return {"flows": self.flows, "packets": self.packets, "bytes": self.bytes,
                "first_seen": iso(self.first) if self.flows else None,
                "last_seen": iso(self.last) if self.flows else None}


def _mac(value: str | None) -> str | None:
    """None for a missing or all-zero MAC (link types without one)."""
    return value if value and value != "00:00:00:00:00:00" else None


def _port(event: dict[str, Any]) -> int:
    proto = event["proto"]
    if proto in ICMP:
        return int(event.get("icmp_type") or 0)
    if proto in PORTED:
        return int(event.get("dport") or 0)
    return 0


# Bounds for learning on live traffic: a port scan must not grow the baseline without limit.
MAX_CONVERSATIONS = 200_000
MAX_OPEN_FLOWS = 500_000


class Baseline:
    """What every device did, from classifier events. Feed :meth:`observe`; see :func:`learn`.

    Memory is bounded: at most MAX_CONVERSATIONS distinct conversations (more are counted in
    `counters`, not kept) and MAX_OPEN_FLOWS flows awaiting their end.
    """

    def __init__(self) -> None:
        from appliance.inventory.devices import Inventory

        self.conversations: dict[ConvKey, Stats] = {}
        self._open: dict[int, ConvKey] = {}
        self.devices: dict[str, dict[str, Any]] = {}   # MAC -> classifier device record
        self.l2_only: set[str] = set()                 # MACs seen first without IP
        self.captures: list[str] = []
        self.packets = 0
        self.bytes = 0
        self.counters: Counter[str] = Counter()
        # Who each device is, for the review (appliance.review.caution): the inventory fed
        # with the same events (vendor, ports: the fast path's evidence); `known` overrides
        # it with a better-informed inventory (deep dissection, or a store's) when there is one.
        self.inventory = Inventory()
        self.known: dict[str, dict[str, Any]] = {}
        self.identified_by = "the fast path (MAC vendor, ports)"
        # what first payloads said per conversation (HL7, DICOM, TLS names), when dissected
        from appliance.review.payloads import Payloads

        self.payloads = Payloads()

    # --- feeding -------------------------------------------------------------------------

    def observe(self, events: Iterable[dict[str, Any]]) -> None:
        """Take a batch of events (records.event_dict form); other event types are ignored."""
        events = events if isinstance(events, list) else list(events)
        self.inventory.observe_events(events)
        for e in events:
            kind = e["type"]
            if e.get("orient") == "unsolicited" and kind in ("new_flow", "flow_end"):
                # An answer no request explains (docs/fastpath.md): no conversation of anyone's.
                self.counters["unsolicited_answers"] += kind == "new_flow"
                continue
            if kind == "new_flow":
                key = (_mac(e.get("smac")), e["src"], _mac(e.get("dmac")), e["dst"],
                       int(e["vlan"]), int(e["proto"]), _port(e))
                if key not in self.conversations and len(self.conversations) >= MAX_CONVERSATIONS:
                    self.counters["conversations_over_limit"] += 1
                    continue
                if len(self._open) >= MAX_OPEN_FLOWS:   # their ends were lost: forget the oldest
                    del self._open[next(iter(self._open))]
                    self.counters["open_flows_forgotten"] += 1
                stats = self.conversations.setdefault(key, Stats())
                stats.flows += 1
                stats.seen(e["ts"])
                self._open[e["flow"]] = key
            elif kind == "flow_end":
                self._end(e)
            elif kind == "new_device" and e.get("mac") and e.get("ip") is None:
                self.l2_only.add(e["mac"])

    def _end(self, e: dict[str, Any]) -> None:
        key = self._open.pop(e["flow"], None)
        if e.get("end") == "reoriented":
            # Its initiator was a guess a later packet contradicted; the flow started again
            # the right way round (its own new_flow), so the guess is taken back.
            self.counters["flows_reoriented"] += 1
            if key is not None and key in self.conversations:
                self.conversations[key].flows -= 1
                if self.conversations[key].flows <= 0:
                    del self.conversations[key]
            return
        if key is None:   # its new_flow was lost (event ring overflow): addresses only
            key = (None, e["src"], None, e["dst"], int(e["vlan"]), int(e["proto"]), _port(e))
            stats = self.conversations.setdefault(key, Stats())
            stats.flows += 1
            stats.seen(e.get("first", e["ts"]))
            self.counters["flows_without_start"] += 1
        else:
            stats = self.conversations[key]
        stats.packets += int(e.get("packets", 0))
        stats.bytes += int(e.get("bytes", 0))
        stats.seen(e["ts"])

    def close(self, active_flows: Iterable[dict[str, Any]]) -> None:
        """Account the flows still open at the end (Replayer.active_flows())."""
        for f in active_flows:
            if f["flow"] in self._open:
                self._end(f)

    def add_devices(self, devices: Iterable[dict[str, Any]]) -> None:
        """Merge the classifier's device table (Replayer.devices()): counters per MAC."""
        devices = list(devices)
        self.inventory.observe_devices(devices)
        for d in devices:
            if not d.get("mac"):
                continue
            old = self.devices.get(d["mac"])
            if old is None:
                self.devices[d["mac"]] = dict(d)
            else:
                for k in ("packets_sent", "bytes_sent", "packets_received", "bytes_received",
                          "flows"):
                    old[k] += d[k]
                old["first_seen"] = min(old["first_seen"], d["first_seen"])
                old["last_seen"] = max(old["last_seen"], d["last_seen"])
                old["multi_ip"] = old["multi_ip"] or d["multi_ip"]

    # --- reading -------------------------------------------------------------------------

    def identities(self) -> dict[str, dict[str, Any]]:
        """MAC -> the inventory's entry (class, confidence, vendor, names...)."""
        self.inventory.classify()
        out = {d["mac"]: d for d in self.inventory.as_list()}
        out.update(self.known)
        return out

    def view(self) -> View:
        return View(self)

    def span(self) -> tuple[float, float]:
        firsts = [s.first for s in self.conversations.values()]
        lasts = [s.last for s in self.conversations.values()]
        return (min(firsts), max(lasts)) if firsts else (0.0, 0.0)

    def as_dict(self, view: View | None = None) -> dict[str, Any]:
        """The baseline as JSON-ready values: devices (with their conversations)."""
        view = view or self.view()
        first, last = self.span()
        return {
            "captures": self.captures, "packets": self.packets, "bytes": self.bytes,
            "first_seen": iso(first) if self.conversations else None,
            "last_seen": iso(last) if self.conversations else None,
            "conversations": len(self.conversations),
            "flows": sum(s.flows for s in self.conversations.values()),
            "devices": [p.as_dict() for p in view.profiles()],
            "counters": dict(self.counters),
        }


# --- the resolved view: endpoints, devices, conversations between them ------------------

Key = tuple[str, str]
"""An endpoint: ("mac", MAC) a device on the ward, ("ip", address) a host known by its
address, ("lit", text) a broadcast/multicast/unspecified address written as is."""


@dataclass
class Conv:
    """Conversations between two endpoints on one protocol and responder port."""

    initiator: Key
    responder: Key
    proto: int
    port: int
    stats: Stats = field(default_factory=Stats)
    vlans: set[int] = field(default_factory=set)
    via: Counter[str] = field(default_factory=Counter)    # devices behind literal initiators


@dataclass
class Entity:
    key: Key
    mac: str | None = None
    ips: set[str] = field(default_factory=set)
    vlans: set[int] = field(default_factory=set)
    stats: Stats = field(default_factory=Stats)


@dataclass
class DeviceProfile:
    """One device's baseline: who it talks to, how, which ports it serves, who starts."""

    key: str
    mac: str | None
    vendor: str | None
    role: str                          # device, host (known by address), router
    ips: list[str]
    vlans: list[int]
    stats: Stats
    initiated: int                     # flows it started
    answered: int                      # flows it answered
    peers: list[str]
    protocols: list[str]
    server_ports: list[str]            # "tcp/443": what it answered on
    conversations: list[dict[str, Any]]
    counters: dict[str, int]           # from the classifier's device table (MAC devices)

    def as_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out.update(self.stats.as_dict())
        del out["stats"]
        return out


def literal_of(ip: str, l2: str | None) -> str | None:
    """The literal for an address that is no single host, else None."""
    if ip in _UNSPECIFIED:
        return ip
    addr = ipaddress.ip_address(ip)
    if addr.is_multicast:
        if addr in _SOLICITED:
            return str(_SOLICITED)
        return ip
    if ip == "255.255.255.255" or (l2 is not None and int(l2[:2], 16) & 1):
        return ip        # broadcast (limited, or directed: a group MAC on a unicast-looking IP)
    return None


def _is_router(ips: set[str]) -> bool:
    v4 = {ip for ip in ips if ":" not in ip}
    v6 = {ipaddress.ip_network(f"{ip}/64", strict=False) for ip in ips
          if ":" in ip and not ipaddress.ip_address(ip).is_link_local}
    return len(v4) > 1 or len(v6) > 1


class View:
    """A baseline resolved into endpoints and the conversations between them."""

    def __init__(self, baseline: Baseline) -> None:
        self.baseline = baseline
        carried: dict[str, set[str]] = defaultdict(set)
        for (smac, src, dmac, dst, _vlan, _proto, _port) in baseline.conversations:
            for mac, ip in ((smac, src), (dmac, dst)):
                if mac and not int(mac[:2], 16) & 1 and literal_of(ip, mac) is None:
                    carried[mac].add(ip)
        self.routers = {m for m, ips in carried.items() if _is_router(ips)}
        self.routers |= {m for m, d in baseline.devices.items() if d.get("multi_ip")}
        owners: dict[str, set[str]] = defaultdict(set)
        for mac, ips in carried.items():
            if mac not in self.routers:
                for ip in ips:
                    owners[ip].add(mac)
        self.owner = {ip: next(iter(m)) for ip, m in owners.items() if len(m) == 1}
        self.carried = carried
        self.entities: dict[Key, Entity] = {}
        self.convs: dict[tuple[Key, Key, int, int], Conv] = {}
        self.raw: dict[ConvKey, tuple[Key, Key]] = {}
        for raw, stats in sorted(baseline.conversations.items(), key=_raw_order):
            smac, src, dmac, dst, vlan, proto, port = raw
            ikey, rkey = self.resolve(smac, src), self.resolve(dmac, dst)
            self.raw[raw] = (ikey, rkey)
            conv = self.convs.get((ikey, rkey, proto, port))
            if conv is None:
                conv = self.convs[(ikey, rkey, proto, port)] = Conv(ikey, rkey, proto, port)
            conv.stats.add(stats)
            conv.vlans.add(vlan)
            if ikey[0] == "lit" and smac:
                conv.via[smac] += stats.flows
            for key, ip in ((ikey, src), (rkey, dst)):
                if key[0] == "lit":
                    continue
                ent = self.entities.get(key)
                if ent is None:
                    ent = self.entities[key] = Entity(key, key[1] if key[0] == "mac" else None)
                ent.ips.add(ip)
                ent.vlans.add(vlan)
                ent.stats.add(stats)

    def resolve(self, mac: str | None, ip: str) -> Key:
        special = literal_of(ip, mac)
        if special is not None:
            return ("lit", special)
        if mac and mac not in self.routers and not int(mac[:2], 16) & 1:
            return ("mac", mac)
        owner = self.owner.get(ip)
        return ("mac", owner) if owner else ("ip", ip)

    def device_of(self, mac: str | None, ip: str) -> Key | None:
        """The device a conversation belongs to, literal addresses included (DHCP from
        0.0.0.0 belongs to the MAC that sent it)."""
        key = self.resolve(mac, ip)
        if key[0] != "lit":
            return key
        if mac and mac not in self.routers and not int(mac[:2], 16) & 1:
            return ("mac", mac)
        return None

    def profiles(self) -> list[DeviceProfile]:
        """Every device and host, sorted: devices by MAC, then hosts by address."""
        names = vendors([m for k, m in self.entities if k == "mac"]
                        + sorted(self.routers | set(self.baseline.devices)))
        per: dict[Key, list[tuple[str, Key, ConvKey, Stats]]] = defaultdict(list)
        for raw, stats in self.baseline.conversations.items():
            ikey, rkey = self.raw[raw]
            smac, src, dmac, dst = raw[:4]
            a, b = self.device_of(smac, src), self.device_of(dmac, dst)
            if a is not None:
                per[a].append(("out", rkey, raw, stats))
            if b is not None:
                per[b].append(("in", ikey, raw, stats))
        keys = set(per) | {("mac", m) for m in self.baseline.devices}
        out = []
        for key in sorted(keys, key=key_order):
            out.append(self._profile(key, per.get(key, []), names))
        return out

    def _profile(self, key: Key, convs: list[tuple[str, Key, ConvKey, Stats]],
                 names: dict[str, str]) -> DeviceProfile:
        kind, value = key
        mac = value if kind == "mac" else None
        router = mac in self.routers
        ent = self.entities.get(key)
        device = self.baseline.devices.get(mac or "")
        stats = Stats()
        merged: dict[tuple[str, Key, int, int], Stats] = defaultdict(Stats)
        ips: set[str] = set(ent.ips) if ent else set()
        vlans: set[int] = set(ent.vlans) if ent else set()
        for direction, peer, raw, s in convs:
            stats.add(s)
            merged[(direction, peer, raw[5], raw[6])].add(s)
            vlans.add(raw[4])
        if router:
            ips = set(self.carried.get(value, ()))
        if device:
            stats.first = min(stats.first, device["first_seen"])
            stats.last = max(stats.last, device["last_seen"])
            for field_name in ("ipv4", "ipv6"):
                if device.get(field_name) and device[field_name] not in _UNSPECIFIED:
                    ips.add(device[field_name])
        conversations = []
        for (direction, peer, proto, port), s in sorted(merged.items(), key=_merged_order):
            conversations.append({"direction": direction, "peer": peer[1], "proto": proto,
                                  "service": service(proto, port), "port": port,
                                  **s.as_dict()})
        initiated = sum(c["flows"] for c in conversations if c["direction"] == "out")
        answered = sum(c["flows"] for c in conversations if c["direction"] == "in")
        served = sorted({c["service"] for c in conversations if c["direction"] == "in"})
        counters = {k: device[k] for k in ("packets_sent", "bytes_sent", "packets_received",
                                           "bytes_received")} if device else {}
        return DeviceProfile(
            key=value, mac=mac, vendor=names.get(mac[:8]) if mac else None,
            role="router" if router else ("device" if kind == "mac" else "host"),
            ips=sorted(ips, key=ip_order), vlans=sorted(vlans), stats=stats,
            initiated=initiated, answered=answered,
            peers=sorted({c["peer"] for c in conversations}),
            protocols=sorted({proto_label(c["proto"]) for c in conversations}),
            server_ports=served, conversations=conversations, counters=counters)


def _raw_order(item: tuple[ConvKey, Stats]) -> tuple[Any, ...]:
    smac, src, dmac, dst, vlan, proto, port = item[0]
    return (smac or "", src, dmac or "", dst, vlan, proto, port)


def _merged_order(item: tuple[tuple[str, Key, int, int], Stats]) -> tuple[Any, ...]:
    direction, peer, proto, port = item[0]
    return (direction, key_order(peer), proto, port)


def ip_order(ip: str) -> tuple[int, int]:
    addr = ipaddress.ip_address(ip)
    return (addr.version, int(addr))


def key_order(key: Key) -> tuple[Any, ...]:
    kind, value = key
    rank = {"mac": 0, "ip": 1, "lit": 2}[kind]
    if kind == "mac":
        return (rank, 0, value)
    try:
        return (rank, *ip_order(value.split("/")[0]))
    except ValueError:
        return (rank, 9, value)


def proto_label(proto: int) -> str:
    return PROTOCOL_NAMES.get(proto, str(proto))


def service(proto: int, port: int) -> str:
    if proto in ICMP:
        return f"{proto_label(proto)} type {port}"
    if proto in PORTED:
        return f"{proto_label(proto)}/{port}"
    return proto_label(proto)



# --- learning from captures ------------------------------------------------------------------


def learn(paths: Sequence[str], flow_capacity: int = 65536,
          device_capacity: int = 4096, dissect: DissectConfig | None = None,
          known: Sequence[dict[str, Any]] = ()) -> Baseline:
    """Replay captures in learn mode and return the baseline; a damaged capture is an error.

    `dissect`: also identify devices with tshark on sampled packets (DHCP, LLDP, HL7, DICOM,
    TLS...), so the review knows what each device is; `known`: an inventory already made
    (`wardtap devices --json`, a store's), which wins over what this run finds."""
    from appliance.replay.runner import Replayer

    baseline = Baseline()
    replayer = Replayer(None, "learn", flow_capacity=flow_capacity,
                        device_capacity=device_capacity)
    replayer.on_events = baseline.observe
    ident = None
    if dissect is not None:
        from appliance.inventory.identify import Identification

        ident = Identification(dissect)
        ident.on_records = baseline.payloads.observe
        replayer.enable_identification(ident)
    try:
        summary = replayer.run(list(paths))
        if summary.errors:
            raise WardtapError(summary.errors[0])
        baseline.close(replayer.active_flows())
        baseline.add_devices(replayer.devices())
        if ident is not None:
            ident.finish(replayer.devices(), timeout=300)
            baseline.known = {d["mac"]: d for d in ident.inventory.as_list()}
            baseline.identified_by = "deep dissection (tshark on sampled packets)"
    finally:
        if ident is not None:
            ident.close()
    if known:
        baseline.known.update({d["mac"]: d for d in known if d.get("mac")})
        baseline.identified_by += " and a stored inventory"
    baseline.captures = list(paths)
    baseline.packets = summary.packets
    baseline.bytes = summary.bytes
    for k in ("events_dropped", "flows_evicted", "fragments_unmatched", "device_table_full"):
        if summary.counters.get(k):
            baseline.counters[k] = summary.counters[k]
    return baseline


