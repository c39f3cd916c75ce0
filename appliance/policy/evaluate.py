"""A pure-Python reference of the fast path's policy evaluation (fastpath/policytable.pxi).

The slow path needs verdicts without replaying packets: `policy diff` (which conversations a
change allows or denies), `policy drift` (a learned baseline against a policy) and
`policy test` (the nearest rule of a denied flow). Membership and rule order follow the C
code exactly (IPv4 as ``::ffff:a.b.c.d``, "any of mac/oui/ip, and a listed VLAN"); the
tests compare this evaluator with the fast path flow by flow.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from appliance.common.records import mac_bytes
from appliance.policy.model import ICMP, PROTOCOL_NAMES, Group, Policy

REASON_RANK = {"no_rule": 2, "wrong_initiator": 3, "proto_not_allowed": 4,
               "port_not_allowed": 5}

_V4_MAPPED = 0xFFFF << 32


def addr16(ip: str | ipaddress.IPv4Address | ipaddress.IPv6Address) -> int:
    """An address as the fast path's 128-bit form (IPv4 mapped into ::ffff:0:0/96)."""
    addr = ipaddress.ip_address(ip) if isinstance(ip, str) else ip
    return _V4_MAPPED | int(addr) if addr.version == 4 else int(addr)


def net16(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> tuple[int, int]:
    """(value, prefix) of a network in the 128-bit form."""
    if net.version == 4:
        return _V4_MAPPED | int(net.network_address), 96 + net.prefixlen
    return int(net.network_address), net.prefixlen


@dataclass(frozen=True)
class Endpoint:
    """One side of a flow as the classifier sees it: MAC (if the frame had one), IP, VLAN."""

    mac: str | None
    ip: str | None
    vlan: int = 0


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str            # "rule" when allowed, else the most specific reason
    rule: str | None       # the rule that allowed it, or the nearest rule that did not


class _Set:
    """The selectors of one group (or of an address written in a rule's from/to)."""

    __slots__ = ("macs", "ouis", "nets", "vlans", "open", "names", "tags")

    def __init__(self, group: Group) -> None:
        self.macs = frozenset(group.macs)
        self.ouis = frozenset(group.ouis)
        self.nets = tuple(net16(n) for n in group.nets)
        self.vlans = frozenset(group.vlans)
        self.names = group.names
        # "role:DNS server": the inventory's selectors, for devices that stand for them
        self.tags = frozenset(f"{kind}:{value}" for kind, value in group.inventory())
        # a class/role/maker group that selects nobody yet is empty, not open (as compiled)
        self.open = not (group.macs or group.ouis or group.nets or group.names or self.tags)

    def named(self, names: Iterable[str]) -> bool:
        """Whether one of `names` (lower case) is one of the group's (exact, or `*.suffix`)."""
        for name in names:
            for own in self.names:
                if name == own or (own.startswith("*.") and name.endswith(own[1:])):
                    return True
        return False

    def contains(self, mac: bytes | None, ip: int | None, vlan: int,
                 names: Iterable[str] = (), tags: frozenset[str] = frozenset()) -> bool:
        if self.vlans and vlan not in self.vlans:
            return False
        if self.open:
            return True
        if self.names and names and self.named(names):
            return True
        if self.tags & tags:
            return True
        if mac is not None and (mac in self.macs or mac[:3] in self.ouis):
            return True
        if ip is not None:
            for value, prefix in self.nets:
                if prefix == 0 or (ip ^ value) >> (128 - prefix) == 0:
                    return True
        return False


@dataclass(frozen=True)
class Entry:
    """One compiled rule entry (a rule with several port ranges has several)."""

    index: int
    name: str
    sources: frozenset[str]
    destinations: frozenset[str]
    proto: int
    lo: int
    hi: int
    either: bool


class Evaluator:
    """Decides flows against one validated policy, as the fast path would."""

    def __init__(self, policy: Policy,
                 names_of: Callable[[str], Iterable[str]] | None = None,
                 tags_of: Callable[[str], frozenset[str]] | None = None) -> None:
        """`names_of(ip)`: the DNS names an address stands for (bindings, or server names
        seen), for groups that list names; without it no address is in such a group.
        `tags_of(mac)`: the inventory selectors a MAC stands for ("role:DNS server"), for
        `policy diff`; without it only the MACs resolved at load are in such a group."""
        self.policy = policy
        self.names_of = names_of
        self.tags_of = tags_of
        self.sets: dict[str, _Set] = {name: _Set(g) for name, g in policy.groups.items()}
        self.entries: list[Entry] = []
        for index, rule in enumerate(policy.rules):
            for item in rule.sources + rule.destinations:
                if item != "any" and item not in self.sets:
                    net = ipaddress.ip_network(item, strict=False)
                    self.sets[item] = _Set(Group(item, nets=(net,)))
            top = 255 if rule.proto in ICMP else 65535
            for lo, hi in rule.ports or ((0, top),):
                self.entries.append(Entry(index, rule.name, frozenset(rule.sources),
                                          frozenset(rule.destinations), rule.proto, lo, hi,
                                          rule.either))

    def groups(self, ep: Endpoint) -> frozenset[str]:
        """Names of the groups (and rule addresses) the endpoint is in, plus "any"."""
        mac = mac_bytes(ep.mac) if ep.mac else None
        ip = addr16(ep.ip) if ep.ip else None
        names = self.names_of(ep.ip) if self.names_of is not None and ep.ip else ()
        tags = self.tags_of(ep.mac) if self.tags_of is not None and ep.mac else frozenset()
        return frozenset([n for n, s in self.sets.items()
                          if s.contains(mac, ip, ep.vlan, names, tags)] + ["any"])

    def decide(self, initiator: Endpoint, responder: Endpoint, proto: int,
               port: int) -> Decision:
        """Verdict of a flow; `port` is the responder's port (ICMP: the request type)."""
        return self.decide_groups(self.groups(initiator), self.groups(responder), proto, port)

    def decide_groups(self, gi: frozenset[str], gr: frozenset[str], proto: int,
                      port: int) -> Decision:
        best, nearest = "no_rule", None
        for e in self.entries:
            forward = bool(e.sources & gi) and bool(e.destinations & gr)
            reverse = bool(e.sources & gr) and bool(e.destinations & gi)
            if not forward and not (reverse and e.either):
                if reverse and e.proto in (0, proto) and REASON_RANK[best] < 3:
                    best, nearest = "wrong_initiator", e.name
                continue
            if e.proto not in (0, proto):
                if REASON_RANK[best] < 4:
                    best, nearest = "proto_not_allowed", e.name
                continue
            if not e.lo <= port <= e.hi:
                if REASON_RANK[best] < 5:
                    best, nearest = "port_not_allowed", e.name
                continue
            return Decision(True, "rule", e.name)
        return Decision(False, best, nearest)


def proto_name(proto: int) -> str:
    return PROTOCOL_NAMES.get(proto, str(proto)) if proto else "any"


def service(proto: int, port: int | None) -> str:
    """"tcp/443", "icmp type 8", "gre" for reports."""
    name = proto_name(proto)
    if port is None:
        return name
    if proto in ICMP:
        return f"{name} type {port}"
    if proto in (6, 17, 132):
        return f"{name}/{port}"
    return name
