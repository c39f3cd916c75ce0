"""Policy lint: rules that are valid but that a careful reviewer would want pointed out.

A policy that passes validation can still allow far more than meant. `lint` names each such
rule and its line; `wardtap policy check`, `reload`, a fleet push and `learn` print the
findings as warnings, and `--strict` (or a signed `strict`) refuses the policy instead.

    any-any        a rule from "any" to "any"
    internet-wide  an endpoint or a group address block wider than /8 (IPv4) or /16 (IPv6)
                   that is not all private, link-local or multicast space (0.0.0.0/0, ::/0)
    all-ports      proto "any" (every protocol), or tcp/udp/sctp without `ports` (or with
                   ports that cover 1-65535)
    host-bits      an address block written with host bits set ("10.0.0.1/8" is 10.0.0.0/8)
    duplicate      the same endpoints, protocol, ports and direction as an earlier rule
    shadowed       another rule already allows everything this one does
    contradicts    this rule lets only `from` start a conversation; another rule lets either
                   side start the very same conversation
    no-rules       nothing is allowed (monitor and enforce refuse such a policy)
    inventory-only a group that selects only through the inventory (class, role, maker): it
                   holds no device until the inventory has put one there and the policy is
                   reloaded; what its rules allow waits for that

The cost is linear in the rules: rules are indexed by their endpoint pairs, and a rule is
compared only with rules that name one of its endpoint pairs (or "any"); a policy built to
defeat the index stops after LINT_BUDGET comparisons and says so (`lint-incomplete`).
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from dataclasses import dataclass

from appliance.policy.model import ICMP, PORTED, Group, Policy, Rule

LINT_BUDGET = 2_000_000
WIDE_V4, WIDE_V6 = 8, 16        # prefixes shorter than these are "internet-wide"
_INDEX_PAIRS = 64               # a rule with more endpoint pairs goes to the `wide` list
ANY = "any"


@dataclass(frozen=True)
class Finding:
    code: str
    where: str               # rules.NAME or groups.NAME
    line: int | None
    message: str

    def text(self, path: str) -> str:
        loc = f":{self.line}" if self.line else ""
        return f"{path}{loc} [{self.where}] {self.code}: {self.message}"


def lint(policy: Policy) -> list[Finding]:
    """Every finding, in the order of the file."""
    found: list[Finding] = []
    if not policy.rules:
        found.append(Finding("no-rules", "rules", None, "the policy allows nothing; monitor "
                             "and enforce refuse it"))
    for group in policy.groups.values():
        where = f"groups.{group.name}"
        for text in group.loose:
            found.append(Finding("host-bits", where, group.line, _host_bits(text)))
        for net in group.nets:
            if _wide(net):
                found.append(Finding("internet-wide", where, group.line, _wide_text(net)))
        if group.inventory() and not (group.ouis or group.nets or group.names
                                      or len(group.macs) > group.resolved):
            found.append(Finding("inventory-only", where, group.line, _inventory_text(group)))
    for rule in policy.rules:
        found.extend(_single(rule))
    found.extend(_pairs(policy.rules))
    found.sort(key=lambda f: (f.line or 0, f.where, f.code))
    return found


def _inventory_text(group: Group) -> str:
    what = ", ".join(f"{kind} {value!r}" for kind, value in group.inventory())
    held = f"{group.resolved} now" if group.resolved else "none known here"
    whom = ("the devices the inventory has put there" if not group.controllers else
            "what the inventory and the configuration's [mud.controllers] give")
    return (f"selects only by {what}: {whom} when the policy is loaded or reloaded ({held}); "
            "until then its rules allow nothing")


def _host_bits(text: str) -> str:
    net = ipaddress.ip_network(text, strict=False)
    return f"{text} has host bits set: it means {net}"


def _wide(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    """A block wider than /8 (/16) that is not all private, link-local, multicast or
    loopback space: it reaches the internet."""
    if net.prefixlen >= (WIDE_V4 if net.version == 4 else WIDE_V6):
        return False
    return not (net.is_private or net.is_link_local or net.is_multicast or net.is_loopback)


def _wide_text(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> str:
    return f"{net}: a /{net.prefixlen} block reaches much of the internet"


def _literal(endpoint: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    try:
        return ipaddress.ip_network(endpoint, strict=False)
    except ValueError:
        return None


def _single(rule: Rule) -> list[Finding]:
    where, line, out = f"rules.{rule.name}", rule.line, []
    if ANY in rule.sources and ANY in rule.destinations:
        out.append(Finding("any-any", where, line, "allows any endpoint to reach any endpoint"))
    for endpoint in rule.sources + rule.destinations:
        net = _literal(endpoint) if endpoint != ANY else None
        if net is None:
            continue
        if _wide(net):
            out.append(Finding("internet-wide", where, line, _wide_text(net)))
        if str(net) != endpoint and "/" in endpoint:
            out.append(Finding("host-bits", where, line, _host_bits(endpoint)))
    if rule.proto == 0:
        out.append(Finding("all-ports", where, line, 'proto "any": every protocol and port'))
    elif rule.proto in PORTED and _covers_all(rule.ports, 65535):
        out.append(Finding("all-ports", where, line, "every port (give `ports`)"))
    return out


def _covers_all(ranges: tuple[tuple[int, int], ...], top: int) -> bool:
    if not ranges:
        return True
    reach = 0 if top == 65535 else -1      # port 0 is never a real destination port
    for lo, hi in sorted(ranges):
        if lo > reach + 1:
            return False
        reach = max(reach, hi)
    return reach >= top


def _merge(ranges: tuple[tuple[int, int], ...]) -> list[tuple[int, int]]:
    """Port ranges sorted and joined where they touch."""
    merged: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if merged and lo <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return merged


def _ports_within(inner: tuple[tuple[int, int], ...], outer: list[tuple[int, int]],
                  top: int) -> bool:
    """Every port of `inner` (empty: all) is in the merged ranges `outer` (empty: all)."""
    if not outer:
        return True
    if not inner:
        return _covers_all(tuple(outer), top)
    return all(any(m_lo <= lo and hi <= m_hi for m_lo, m_hi in outer) for lo, hi in inner)


def _within(inner: tuple[str, ...], outer: tuple[str, ...]) -> bool:
    return ANY in outer or set(inner) <= set(outer)


def _allows(a: Rule, sources: tuple[str, ...], destinations: tuple[str, ...]) -> bool:
    """a lets `sources` start a conversation with `destinations` (endpoints only)."""
    if _within(sources, a.sources) and _within(destinations, a.destinations):
        return True
    return a.either and _within(sources, a.destinations) and _within(destinations, a.sources)


def _covers(a: Rule, a_ports: list[tuple[int, int]], b: Rule) -> bool:
    """Everything b allows, a (with its ports merged) allows too."""
    if a.proto not in (0, b.proto):
        return False
    if a.proto and not _ports_within(b.ports, a_ports, 255 if b.proto in ICMP else 65535):
        return False
    return (_allows(a, b.sources, b.destinations)
            and (not b.either or _allows(a, b.destinations, b.sources)))


def _key(rule: Rule) -> tuple[object, ...]:
    ends = (frozenset(rule.sources), frozenset(rule.destinations))
    if rule.either:
        ends = tuple(sorted(ends, key=sorted))  # type: ignore[assignment]
    return (*ends, rule.proto, frozenset(rule.ports), rule.either, rule.hl7, rule.dicom)


def _pairs(rules: tuple[Rule, ...]) -> list[Finding]:
    """duplicate, shadowed and contradicts: each rule against the rules sharing an endpoint
    pair with it (through an index), within LINT_BUDGET comparisons."""
    out: list[Finding] = []
    first: dict[tuple[object, ...], Rule] = {}
    index: dict[tuple[str, str], list[int]] = defaultdict(list)
    wide: list[int] = []
    for i, rule in enumerate(rules):
        pairs = {(s, d) for s in rule.sources for d in rule.destinations}
        if rule.either:
            pairs |= {(d, s) for s, d in pairs}
        if len(pairs) > _INDEX_PAIRS:
            wide.append(i)
        else:
            for pair in pairs:
                index[pair].append(i)
    budget = LINT_BUDGET
    keys = [_key(rule) for rule in rules]
    ports = [_merge(rule.ports) for rule in rules]
    for i, b in enumerate(rules):
        where = f"rules.{b.name}"
        earlier = first.setdefault(keys[i], b)
        if earlier is not b:
            out.append(Finding("duplicate", where, b.line, f"the same as rule {earlier.name}"
                               f"{_at(earlier)}"))
            continue
        s0, d0 = b.sources[0], b.destinations[0]
        candidates = set(wide)
        for pair in ((s0, d0), (s0, ANY), (ANY, d0), (ANY, ANY)):   # `either` rules are
            candidates.update(index.get(pair, ()))                    # indexed both ways
        candidates.discard(i)
        budget -= len(candidates)
        if budget < 0:
            out.append(Finding("lint-incomplete", where, b.line, f"stopped after {LINT_BUDGET:,} "
                               "comparisons: rules from here on were not checked for "
                               "shadowing"))
            break
        for j in sorted(candidates):
            a = rules[j]
            if keys[j] == keys[i] or not _covers(a, ports[j], b):
                continue
            if (a.either and not b.either and set(a.sources) == set(b.sources)
                    and set(a.destinations) == set(b.destinations)
                    and (a.proto, set(a.ports)) == (b.proto, set(b.ports))):
                out.append(Finding("contradicts", where, b.line, "initiate = \"from\" (only "
                                   f"{','.join(b.sources)} may start), but rule {a.name}"
                                   f"{_at(a)} lets either side start the same conversation"))
                break
            if j > i and _covers(b, ports[i], a):
                continue         # equal in effect: reported on the later of the two
            out.append(Finding("shadowed", where, b.line, f"adds nothing: rule {a.name}"
                               f"{_at(a)} already allows all of it"))
            break
    return out


def _at(rule: Rule) -> str:
    return f" (line {rule.line})" if rule.line else ""
