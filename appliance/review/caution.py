"""What a careful reviewer would not allow without looking, found in a learned baseline.

A ward is never clean while it is learned, so a proposal is where an attack becomes policy.
:func:`assess` flags, with the reason in words, every conversation of a
:class:`~appliance.review.baseline.View` that an engineer should look at before it is
allowed. appliance.review.propose leaves flagged conversations out of the proposal: they
are written as rules with ``enabled = false`` and their reasons above them, so allowing one
is a one-line change after a look.

| flag | what it means |
| --- | --- |
| internet | one side is a public (internet) address; worded more strongly for medical devices |
| unexplained | two ward devices talk, unexplained by their classes (a workstation serving SMB) |
| unknown-device | a device on the ward that could not be identified (class "unknown") |
| new-device | a device first seen in the last fifth of the learning window |
| scan | one host tried more than MANY_PORTS ports of another, with probe-sized flows |
| sweep | one host tried the same port on SWEEP_HOSTS or more hosts, with probe-sized flows |
| once | a protocol and port seen in a single flow in the whole window (plumbing aside) |
| late | a service of a host first used in the last tenth of the learning window |

Classes come from the inventory (appliance.inventory): what the fast path saw (vendor,
ports) and, with deep dissection or a store's inventory, what the devices said (DHCP, LLDP,
HL7, DICOM, TLS). The table EXPLAINED lists the device-to-device conversations that classes
explain.
"""

from __future__ import annotations

import ipaddress
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from appliance.review.baseline import Conv, Key, View, ip_order, proto_label, service

ConvId = tuple[Key, Key, int, int]

MANY_PORTS = 16          # more distinct ports than this from one host to another: a scan
SWEEP_HOSTS = 10         # this many hosts tried on one port by one host: a sweep
PROBE_PACKETS = 4        # a flow of at most this many packets (on average) is a probe
NEW_DEVICE_FRACTION = 0.2   # first seen in the last fifth of the window: a new device
LATE_FRACTION = 0.1      # first used in the last tenth of the window: too little history
UNKNOWN_CLASS = "unknown"
MEDICAL = frozenset({"infusion pump", "patient monitor", "central station",
                     "imaging modality"})

# Network plumbing every device needs; never "seen once" or "unexplained" by itself.
PLUMBING = frozenset({
    *((58, t) for t in (130, 131, 132, 133, 134, 135, 136, 137, 143)),   # ND, MLD
    (17, 67), (17, 68), (17, 546), (17, 547),                            # DHCP, DHCPv6
})
ANY_PEER = "*"

# Device-to-device conversations the classes of the two devices explain:
# (initiator class, responder class) -> services ("tcp/9100", "icmp/8"; "*" any service).
# Anything else between two devices on the ward is flagged "unexplained".
EXPLAINED: dict[tuple[str, str], frozenset[str]] = {
    ("patient monitor", "central station"): frozenset({ANY_PEER}),
    ("central station", "patient monitor"): frozenset({ANY_PEER}),
    ("workstation", "printer"): frozenset({"tcp/9100", "tcp/631", "tcp/515", "tcp/80",
                                           "tcp/443", "udp/161"}),
    ("workstation", "central station"): frozenset({"tcp/80", "tcp/443"}),
    ("workstation", "imaging modality"): frozenset({"tcp/104", "tcp/11112"}),
    ("imaging modality", "workstation"): frozenset({"tcp/104", "tcp/11112"}),
    (ANY_PEER, "network gear"): frozenset({"icmp/8", "icmpv6/128", "udp/67", "udp/547"}),
    ("network gear", ANY_PEER): frozenset({"udp/161", "icmp/8", "icmpv6/128", "udp/68",
                                           "udp/546"}),
}

TITLES = {
    "internet": "internet address", "unexplained": "device-to-device, not explained",
    "unknown-device": "unknown device", "new-device": "newly appeared device",
    "scan": "port scan", "sweep": "sweep", "once": "seen once",
    "late": "only at the end of learning",
}


@dataclass(frozen=True)
class Flag:
    kind: str          # a key of TITLES
    why: str           # the reason, in words, for the person reviewing


@dataclass
class Caution:
    """Flags per conversation (View.convs key) and per device (entity key)."""

    convs: dict[ConvId, list[Flag]] = field(default_factory=dict)
    devices: dict[Key, list[Flag]] = field(default_factory=dict)
    classes: dict[str, str] = field(default_factory=dict)      # MAC -> class used
    leave_out: bool = True        # False (--allow-flagged): allowed, marked REVIEW

    def left_out(self, conv_id: ConvId) -> bool:
        return self.leave_out and bool(self.convs.get(conv_id))

    def counts(self) -> Counter[str]:
        """Flagged conversations, by the first reason given for each."""
        return Counter(flags[0].kind for flags in self.convs.values() if flags)


def duration(seconds: float) -> str:
    """A length of time in words: "42 s", "5 min 42 s", "3 h 10 min", "2 d 4 h"."""
    if seconds < 1:
        return "under a second"
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s" if s % 60 else f"{s // 60} min"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def is_public(address: str) -> bool:
    """An internet address: globally routable unicast (not private, shared or reserved)."""
    try:
        addr = ipaddress.ip_address(address.split("/")[0])
    except ValueError:
        return False
    return bool(addr.is_global) and not addr.is_multicast


def assess(view: View, tokens: dict[ConvId, int], identities: dict[str, dict[str, Any]],
           window: tuple[float, float]) -> Caution:
    """Flag what a reviewer must look at. `tokens`: each conversation's port as it goes into a
    rule (appliance.review.propose: the port, or -1 for an ephemeral one); `identities`:
    MAC -> {"class", "vendor", ...} from the inventory; `window`: first and last seen."""
    out = Caution(classes={m: str(i.get("class") or UNKNOWN_CLASS)
                           for m, i in identities.items()})
    names = _Names(view, identities)
    first, last = window
    span = max(0.0, last - first)
    for key, ent in view.entities.items():
        if key[0] != "mac":
            continue
        flags = out.devices.setdefault(key, [])
        cls = out.classes.get(key[1], UNKNOWN_CLASS)
        if cls == UNKNOWN_CLASS:
            flags.append(Flag("unknown-device", f"{names.of(key)} could not be identified: "
                              "nothing it showed fits a device class (`wardtap devices "
                              f"--why {key[1]}`)"))
        seen_first = min(ent.stats.first, _device_first(view, key[1]))
        if span > 0 and seen_first >= last - NEW_DEVICE_FRACTION * span:
            flags.append(Flag("new-device", f"{names.of(key)} first appeared "
                              f"{duration(last - seen_first)} before the end of the "
                              f"{duration(span)} learned: too little history to trust"))
        if not flags:
            del out.devices[key]
    scans = _scans(view, names)
    sweeps = _sweeps(view, names)
    service_flows: Counter[tuple[int, int]] = Counter()
    service_first: dict[tuple[Key, int, int], float] = {}
    for k, conv in view.convs.items():
        service_flows[(conv.proto, tokens[k])] += conv.stats.flows
        sk = (conv.responder, conv.proto, tokens[k])
        service_first[sk] = min(service_first.get(sk, conv.stats.first), conv.stats.first)
    for k, conv in view.convs.items():
        flags = []
        token = tokens[k]
        ini, res = conv.initiator, conv.responder
        what = _service(conv.proto, conv.port)
        flags += _internet(conv, what, names, out.classes)
        for side in (ini, res):
            flags += [f for f in out.devices.get(side, ())]
        if ini[0] == "mac" and res[0] == "mac" and not _explained(
                out.classes.get(ini[1], UNKNOWN_CLASS), out.classes.get(res[1], UNKNOWN_CLASS),
                conv.proto, conv.port):
            ci, cr = out.classes.get(ini[1], UNKNOWN_CLASS), out.classes.get(res[1],
                                                                               UNKNOWN_CLASS)
            flags.append(Flag("unexplained", f"{names.of(ini)} started {what} to "
                              f"{names.of(res)}: nothing explains a {ci} talking to a {cr} "
                              f"over {what}"))
        if k in scans:
            flags.append(scans[k])
        if k in sweeps:
            flags.append(sweeps[k])
        if (token >= 0 and (conv.proto, conv.port) not in PLUMBING
                and service_flows[(conv.proto, token)] == 1):
            flags.append(Flag("once", f"{what} was seen once in the {duration(span)} learned "
                              f"(one flow, {conv.stats.packets:,} packets, from "
                              f"{names.of(ini)}): nothing shows it is regular"))
        begun = service_first[(res, conv.proto, token)]
        if span > 0 and begun >= last - LATE_FRACTION * span:
            flags.append(Flag("late", f"{what} to {names.of(res)} was first used "
                              f"{duration(last - begun)} before the end of the "
                              f"{duration(span)} learned: too little history to call it "
                              "normal"))
        if any(f.kind in ("scan", "sweep") for f in flags):
            flags = [f for f in flags if f.kind not in ("once", "late")]   # said already
        if flags:
            out.convs[k] = _dedupe(flags)
    return out


def _dedupe(flags: list[Flag]) -> list[Flag]:
    seen: set[Flag] = set()
    return [f for f in flags if not (f in seen or seen.add(f))]  # type: ignore[func-returns-value]


def _device_first(view: View, mac: str) -> float:
    device = view.baseline.devices.get(mac)
    return float(device["first_seen"]) if device else float("inf")


def _service(proto: int, port: int) -> str:
    return service(proto, port)


def _explained(ini_cls: str, res_cls: str, proto: int, port: int) -> bool:
    if (proto, port) in PLUMBING:
        return True
    if UNKNOWN_CLASS in (ini_cls, res_cls):
        return False     # flagged as an unknown device instead
    label = f"{proto_label(proto)}/{port}"
    for pair in ((ini_cls, res_cls), (ANY_PEER, res_cls), (ini_cls, ANY_PEER)):
        allowed = EXPLAINED.get(pair)
        if allowed and (ANY_PEER in allowed or label in allowed):
            return True
    return False


def _internet(conv: Conv, what: str, names: _Names, classes: dict[str, str]) -> list[Flag]:
    ini, res = conv.initiator, conv.responder
    public_res = names.public(res)
    public_ini = names.public(ini)
    if not (public_res or public_ini):
        return []
    if public_res:
        cls = classes.get(ini[1], "") if ini[0] == "mac" else ""
        if cls in MEDICAL:
            why = (f"{names.of(ini)}, a medical device ({cls}), called the internet address "
                   f"{public_res} over {what}: medical devices should talk only to their "
                   "servers inside the hospital; this is how data leaves a ward and how "
                   "malware calls home")
        else:
            why = (f"{names.of(ini)} called the internet address {public_res} over {what}: "
                   "allow internet destinations only when you know who needs them and why")
    else:
        why = (f"the internet address {public_ini} started {what} to {names.of(res)}: "
               "nothing on a ward should answer the internet")
    return [Flag("internet", why)]


def _scans(view: View, names: _Names) -> dict[ConvId, Flag]:
    """Probe-sized conversations of a host that tried more than MANY_PORTS ports of one
    other host."""
    by_pair: dict[tuple[Key, Key, int], list[tuple[ConvId, Conv]]] = defaultdict(list)
    for k, conv in view.convs.items():
        if conv.initiator[0] != "lit" and conv.responder[0] != "lit" and conv.proto in (6, 17,
                                                                                        132):
            by_pair[(conv.initiator, conv.responder, conv.proto)].append((k, conv))
    out: dict[ConvId, Flag] = {}
    for (ini, res, proto), convs in by_pair.items():
        ports = {c.port for _, c in convs}
        if len(ports) <= MANY_PORTS:
            continue
        probes = [(k, c) for k, c in convs if _probe(c)]
        first = min(c.stats.first for _, c in convs)
        last = max(c.stats.last for _, c in convs)
        why = (f"{names.of(ini)} tried {len(ports)} {proto_label(proto)} ports of "
               f"{names.of(res)} within {duration(last - first)}, {len(probes)} of them with a "
               "few packets only: a port scan")
        for k, _ in probes:
            out[k] = Flag("scan", why)
    return out


def _sweeps(view: View, names: _Names) -> dict[ConvId, Flag]:
    """Probe-sized conversations of a host that tried one port on SWEEP_HOSTS or more hosts."""
    by_port: dict[tuple[Key, int, int], list[tuple[ConvId, Conv]]] = defaultdict(list)
    for k, conv in view.convs.items():
        if conv.initiator[0] != "lit" and conv.responder[0] != "lit":
            by_port[(conv.initiator, conv.proto, conv.port)].append((k, conv))
    out: dict[ConvId, Flag] = {}
    for (ini, proto, port), convs in by_port.items():
        probes = [(k, c) for k, c in convs if _probe(c)]
        hosts = {c.responder for _, c in probes}
        if len(hosts) < SWEEP_HOSTS or len(probes) * 2 < len(convs):
            continue
        why = (f"{names.of(ini)} tried {service(proto, port)} on {len(hosts)} hosts with a "
               "few packets each: a sweep looking for something to attack")
        for k, _ in probes:
            out[k] = Flag("sweep", why)
    return out


def _probe(conv: Conv) -> bool:
    flows = max(1, conv.stats.flows)
    return conv.stats.packets <= PROBE_PACKETS * flows


class _Names:
    """Endpoints in words: "00:12:21:5e:a0:2c (10.40.104.13, infusion pump, B.Braun)"."""

    def __init__(self, view: View, identities: dict[str, dict[str, Any]]) -> None:
        self.view = view
        self.identities = identities

    def of(self, key: Key) -> str:
        kind, value = key
        if kind != "mac":
            return value
        ent = self.view.entities.get(key)
        ips = sorted(ent.ips, key=ip_order) if ent else []
        ip = next((i for i in ips if ":" not in i), ips[0] if ips else "")
        ident = self.identities.get(value, {})
        cls = ident.get("class")
        extra = [x for x in (ip, cls if cls and cls != UNKNOWN_CLASS else "",
                             ident.get("vendor") or "") if x]
        return f"{value} ({', '.join(extra)})" if extra else value

    def public(self, key: Key) -> str | None:
        """The endpoint's internet address, if it has one."""
        kind, value = key
        if kind == "lit":
            return None
        if kind == "ip":
            return value if is_public(value) else None
        ent = self.view.entities.get(key)
        return next((ip for ip in sorted(ent.ips, key=ip_order) if is_public(ip)), None) \
            if ent else None
