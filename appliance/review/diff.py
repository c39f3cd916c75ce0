"""`wardtap policy diff`: what a policy change does, in words.

Compared by meaning (group members, rule endpoints, protocol, ports, initiator), so a renamed
group or a reordered file is not a change; then which conversations become allowed or denied.
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from appliance.review.text import more, ranges_text

if TYPE_CHECKING:
    from appliance.policy.model import Group, Policy, Rule


def _members(g: Group) -> dict[str, list[str]]:
    return {"mac": sorted(m.hex(":") for m in g.macs), "oui": sorted(o.hex(":") for o in g.ouis),
            "ip": sorted(str(n) for n in g.nets), "vlan": [str(v) for v in sorted(g.vlans)],
            "names": sorted(g.names), "class": sorted(g.classes), "role": sorted(g.roles),
            "maker": sorted(g.makers)}


def _identity(g: Group) -> tuple[tuple[str, ...], ...]:
    m = _members(g)
    return tuple(tuple(m[k]) for k in ("mac", "oui", "ip", "vlan", "names", "class", "role",
                                       "maker"))


def _canon_end(policy: Policy, item: str) -> Any:
    if item == "any":
        return "any"
    if item in policy.groups:
        return ("group", _identity(policy.groups[item]))
    return ("net", str(ipaddress.ip_network(item, strict=False)))


def _canon(policy: Policy, rule: Rule) -> tuple[Any, ...]:
    return (frozenset(_canon_end(policy, s) for s in rule.sources),
            frozenset(_canon_end(policy, d) for d in rule.destinations),
            rule.proto, tuple(sorted(rule.ports)), rule.either, rule.hl7, rule.dicom)


def _rule_fields(rule: Rule) -> dict[str, str]:
    from appliance.policy.evaluate import proto_name

    return {"from": ",".join(rule.sources), "to": ",".join(rule.destinations),
            "proto": proto_name(rule.proto), "ports": ranges_text(rule.ports) or "any",
            "initiate": "either" if rule.either else "from",
            "first payload": _condition(rule)}


def _condition(rule: Rule) -> str:
    cond = rule.hl7 or rule.dicom
    return cond.describe() if cond is not None else "any"


def diff_policies(old: Policy, new: Policy) -> dict[str, Any]:
    """Groups, rules, settings and conversations that differ between two policies."""
    out: dict[str, Any] = {"old": {"path": old.path, "name": old.name, "version": old.version},
                           "new": {"path": new.path, "name": new.name, "version": new.version}}
    settings = []
    for key in ("name", "version", "arp", "non_ip", "fragment_unmatched"):
        a, b = getattr(old, key), getattr(new, key)
        if a != b:
            if isinstance(a, bool):
                a, b = ("allow" if a else "deny"), ("allow" if b else "deny")
            settings.append({"setting": key, "old": a, "new": b})
    out["settings"] = settings

    groups: dict[str, list[Any]] = {"added": [], "removed": [], "changed": [], "renamed": []}
    only_old = {n: g for n, g in old.groups.items() if n not in new.groups}
    only_new = {n: g for n, g in new.groups.items() if n not in old.groups}
    for name in sorted(set(old.groups) & set(new.groups)):
        a, b = _members(old.groups[name]), _members(new.groups[name])
        if a != b:
            groups["changed"].append({
                "group": name,
                "added": {k: sorted(set(b[k]) - set(a[k])) for k in a if set(b[k]) - set(a[k])},
                "removed": {k: sorted(set(a[k]) - set(b[k])) for k in a
                            if set(a[k]) - set(b[k])}})
    by_identity = {_identity(g): n for n, g in sorted(only_new.items())}
    for name, g in sorted(only_old.items()):
        same = by_identity.pop(_identity(g), None)
        if same is not None:
            groups["renamed"].append({"old": name, "new": same})
            del only_new[same]
        else:
            groups["removed"].append({"group": name, "members": _members(g)})
    groups["added"] = [{"group": n, "members": _members(g)} for n, g in sorted(only_new.items())]
    out["groups"] = groups

    rules: dict[str, list[Any]] = {"added": [], "removed": [], "changed": [], "renamed": []}
    old_rules = {r.name: r for r in old.rules}
    new_rules = {r.name: r for r in new.rules}
    for name in [r.name for r in old.rules if r.name in new_rules]:
        a, b = old_rules[name], new_rules[name]
        if _canon(old, a) != _canon(new, b):
            fa, fb = _rule_fields(a), _rule_fields(b)
            rules["changed"].append({"rule": name, "fields": {
                k: {"old": fa[k], "new": fb[k]} for k in fa if fa[k] != fb[k]},
                "old": a.describe(), "new": b.describe()})
    gone = [r for r in old.rules if r.name not in new_rules]
    fresh = [r for r in new.rules if r.name not in old_rules]
    fresh_by_canon = {_canon(new, r): r for r in fresh}
    for r in gone:
        match = fresh_by_canon.pop(_canon(old, r), None)
        if match is not None:
            rules["renamed"].append({"old": r.name, "new": match.name, "rule": match.describe()})
            fresh.remove(match)
        else:
            rules["removed"].append({"rule": r.name, "describe": r.describe()})
    rules["added"] = [{"rule": r.name, "describe": r.describe()} for r in fresh]
    out["rules"] = rules
    allowed, denied = _conversations(old, new)
    out["newly_allowed"] = allowed
    out["newly_denied"] = denied
    return out


# Conversations. Endpoints are probed one selector at a time (a MAC, an OUI, an address
# block, "any other address"), on every VLAN the policies name and on any other VLAN.
# Probes that fall in the same groups of both policies behave alike, so they form one class;
# for each pair of classes and each protocol, the allowed port ranges of both policies are
# compared.

_OTHER_ADDRESSES = ("192.0.2.1", "198.51.100.1", "203.0.113.1", "100.64.0.1", "2001:db8::1",
                    "3fff::1")
_OTHER_PROTO = -1


@dataclass(frozen=True)
class _Probe:
    label: str
    mac: str | None
    ip: str | None


def _probes(policies: Sequence[Policy]) -> list[_Probe]:
    macs: set[str] = set()
    ouis: set[str] = set()
    nets: set[ipaddress.IPv4Network | ipaddress.IPv6Network] = set()
    for p in policies:
        for g in p.groups.values():
            macs |= {m.hex(":") for m in g.macs}
            ouis |= {o.hex(":") for o in g.ouis}
            nets |= set(g.nets)
        for r in p.rules:
            for item in r.sources + r.destinations:
                if item != "any" and item not in p.groups:
                    nets.add(ipaddress.ip_network(item, strict=False))
    out = [_Probe(m, m, None) for m in sorted(macs)]
    for o in sorted(ouis):
        suffix = next(s for s in range(1 << 24)
                      if f"{o}:{s >> 16:02x}:{s >> 8 & 255:02x}:{s & 255:02x}" not in macs)
        out.append(_Probe(f"{o}:* (other)" if any(m.startswith(o) for m in macs) else f"{o}:*",
                          f"{o}:{suffix >> 16:02x}:{suffix >> 8 & 255:02x}:{suffix & 255:02x}",
                          None))
    ordered = sorted(nets, key=lambda n: (n.version, n.network_address, n.prefixlen))
    for net in ordered:
        inner = [n for n in ordered if n != net and n.version == net.version
                 and n.subnet_of(net)]  # type: ignore[arg-type]
        ip = _address_outside(net, inner)
        label = str(net) if net.num_addresses > 1 else str(net.network_address)
        if ip is not None:
            out.append(_Probe(label + (" (other)" if inner else ""), None, ip))
    for addr in _OTHER_ADDRESSES:
        a = ipaddress.ip_address(addr)
        if not any(a in n for n in nets if n.version == a.version):
            out.append(_Probe(f"other IPv{a.version} addresses", None, addr))
    for name, addr in _name_probes(policies).items():
        out.append(_Probe(f"name {name}", None, addr))
    for tag, mac in _inventory_probes(policies).items():
        out.append(_Probe(tag.replace(":", " ", 1), mac, None))
    return out


def _inventory_probes(policies: Sequence[Policy]) -> dict[str, str]:
    """A MAC standing for "a device the inventory puts in this class / role / of this maker"
    ("role:DNS server"), for each such selector the policies use: locally administered
    MACs under 02:00:5e:aa, which no ward's devices use."""
    tags = sorted({f"{kind}:{value}" for p in policies for g in p.groups.values()
                   for kind, value in g.inventory()})
    return {t: f"02:00:5e:aa:{i >> 8:02x}:{i & 255:02x}" for i, t in enumerate(tags)}


def _tags_of(policies: Sequence[Policy]) -> Any:
    by_mac = {mac: frozenset([tag]) for tag, mac in _inventory_probes(policies).items()}
    return lambda mac: by_mac.get(mac, frozenset())


def _name_probes(policies: Sequence[Policy]) -> dict[str, str]:
    """An address standing for each DNS name the policies list (a binding, for the diff):
    IPv6 documentation addresses under 3fff:0:0:aa::/64, which no ward uses."""
    names = sorted({n for p in policies for g in p.groups.values() for n in g.names})
    return {n: f"3fff:0:0:aa::{i + 1:x}" for i, n in enumerate(names)}


def _names_of(policies: Sequence[Policy]) -> Any:
    by_addr = {addr: [n.replace("*.", "any.", 1)]
               for n, addr in _name_probes(policies).items()}
    return lambda ip: by_addr.get(ip, ())


def _address_outside(net: Any, inner: list[Any]) -> str | None:
    """An address in `net` outside every block in `inner`, if there is one (bounded)."""
    candidates = [net.network_address, net.broadcast_address]
    for n in inner:
        candidates += [n.network_address - 1, n.broadcast_address + 1]
    for c in candidates:
        try:
            if c in net and not any(c in n for n in inner):
                return str(c)
        except (ValueError, TypeError):
            continue
    return None


def _vlans(policies: Sequence[Policy]) -> list[int]:
    named = sorted({v for p in policies for g in p.groups.values() for v in g.vlans})
    other = next((v for v in range(4096) if v not in named), None)
    return named if other is None else [*named, other]


def _subtract(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out = []
    for lo, hi in a:
        cur = lo
        for blo, bhi in b:
            if bhi < cur or blo > hi:
                continue
            if blo > cur:
                out.append((cur, blo - 1))
            cur = max(cur, bhi + 1)
            if cur > hi:
                break
        if cur <= hi:
            out.append((cur, hi))
    return out


def _union(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def _conversations(old: Policy, new: Policy) -> tuple[list[dict[str, Any]],
                                                      list[dict[str, Any]]]:
    from appliance.policy.evaluate import Endpoint, Evaluator
    from appliance.policy.model import ICMP

    names_of, tags_of = _names_of([old, new]), _tags_of([old, new])
    ev = (Evaluator(old, names_of, tags_of), Evaluator(new, names_of, tags_of))
    probes = _probes([old, new])
    vlans = _vlans([old, new])
    other_vlan = vlans[-1] if vlans and vlans[-1] not in {
        v for p in (old, new) for g in p.groups.values() for v in g.vlans} else None
    protos = sorted({e.proto for e in ev[0].entries + ev[1].entries if e.proto})
    if any(e.proto == 0 for e in ev[0].entries + ev[1].entries):
        protos.append(_OTHER_PROTO)
    found: dict[tuple[str, str, str, str, str], dict[str, Any]] = {}
    for vlan in vlans:
        classes: dict[tuple[frozenset[str], frozenset[str]], list[str]] = defaultdict(list)
        for pr in probes:
            ep = Endpoint(pr.mac, pr.ip, vlan)
            key = (ev[0].groups(ep), ev[1].groups(ep))
            if pr.label not in classes[key]:
                classes[key].append(pr.label)
        keys = list(classes)
        allowed: list[dict[tuple[int, int, int], list[tuple[int, int]]]] = []
        for side, evaluator in enumerate(ev):
            table: dict[tuple[int, int, int], list[tuple[int, int]]] = defaultdict(list)
            for e in evaluator.entries:
                srcs = [i for i, k in enumerate(keys) if e.sources & k[side]]
                dsts = [i for i, k in enumerate(keys) if e.destinations & k[side]]
                pairs = {(a, b) for a in srcs for b in dsts}
                if e.either:
                    pairs |= {(b, a) for a in srcs for b in dsts}
                for p in ([e.proto] if e.proto else protos):
                    top = 255 if p in ICMP else 65535
                    if e.lo > top:
                        continue
                    for a, b in pairs:
                        table[(a, b, p)].append((e.lo, min(e.hi, top)))
            allowed.append(table)
        for (a, b, p) in set(allowed[0]) | set(allowed[1]):
            was = _union(allowed[0].get((a, b, p), []))
            now = _union(allowed[1].get((a, b, p), []))
            for kind, side, ranges in (("allowed", 1, _subtract(now, was)),
                                       ("denied", 0, _subtract(was, now))):
                if not ranges:
                    continue
                # a newly allowed conversation is named by the new policy's groups, a newly
                # denied one by the old policy's
                li, lr = _label(keys[a][side]), _label(keys[b][side])
                text = _proto_ports(p, ranges)
                item = found.setdefault((kind, li, lr, str(p), text), {
                    "from": li, "to": lr, "proto": _proto_label(p), "ports": text,
                    "from_members": [], "to_members": [], "vlans": []})
                for k, members in (("from_members", classes[keys[a]]),
                                   ("to_members", classes[keys[b]])):
                    item[k] += [m for m in members if m not in item[k]]
                if vlan not in item["vlans"]:
                    item["vlans"].append(vlan)
    allowed_out: list[dict[str, Any]] = []
    denied_out: list[dict[str, Any]] = []
    for (kind, *_), item in sorted(found.items(), key=lambda kv: kv[0]):
        if len(item["vlans"]) == len(vlans):
            item["vlans"] = None     # on every VLAN
        elif other_vlan is not None and other_vlan in item["vlans"]:
            item["vlans"] = [v if v != other_vlan else "other" for v in item["vlans"]]
        (allowed_out if kind == "allowed" else denied_out).append(item)
    return allowed_out, denied_out


def _label(groups: frozenset[str]) -> str:
    return "+".join(sorted(groups - {"any"})) or "(no group)"


def _proto_label(p: int) -> str:
    from appliance.policy.evaluate import proto_name

    return "other protocols" if p == _OTHER_PROTO else proto_name(p)


def _proto_ports(p: int, ranges: list[tuple[int, int]]) -> str:
    from appliance.policy.model import ICMP, PORTED

    if p in ICMP:
        return "any type" if ranges == [(0, 255)] else "type " + ranges_text(ranges)
    if p in PORTED:
        return "any port" if ranges == [(0, 65535)] else ranges_text(ranges)
    return ""


def render_diff(d: dict[str, Any]) -> str:
    o, n = d["old"], d["new"]
    lines = [f"policy diff: {o['path']} ({o['name']} v{o['version']}) -> {n['path']} "
             f"({n['name']} v{n['version']})"]
    for s in d["settings"]:
        lines.append(f"  ~ {s['setting']}: {s['old']} -> {s['new']}")
    g = d["groups"]
    if any(g.values()):
        lines.append("groups")
        for x in g["added"]:
            lines.append(f"  + {x['group']}: {_members_text(x['members'])}")
        for x in g["removed"]:
            lines.append(f"  - {x['group']}: {_members_text(x['members'])}")
        for x in g["changed"]:
            parts = [f"+{k} {', '.join(v)}" for k, v in x["added"].items()]
            parts += [f"-{k} {', '.join(v)}" for k, v in x["removed"].items()]
            lines.append(f"  ~ {x['group']}: {'; '.join(parts)}")
        for x in g["renamed"]:
            lines.append(f"  = {x['old']} renamed {x['new']} (same members)")
    r = d["rules"]
    if any(r.values()):
        lines.append("rules")
        for x in r["added"]:
            lines.append(f"  + {x['rule']}: {x['describe']}")
        for x in r["removed"]:
            lines.append(f"  - {x['rule']}: {x['describe']}")
        for x in r["changed"]:
            fields = "; ".join(f"{k} {v['old']} -> {v['new']}" for k, v in x["fields"].items())
            lines.append(f"  ~ {x['rule']}: {fields or 'its groups changed'}")
        for x in r["renamed"]:
            lines.append(f"  = {x['old']} renamed {x['new']} (same meaning)")
    for key, title, mark in (("newly_allowed", "newly allowed conversations", "+"),
                             ("newly_denied", "newly denied conversations", "-")):
        if d[key]:
            lines.append(title)
            for c in d[key]:
                where = "" if not c["vlans"] else " on VLAN " + ",".join(map(str, c["vlans"]))
                ports = c["ports"]
                ports = ("/" if ports[:1].isdigit() else " ") + ports if ports else ""
                lines.append(f"  {mark} {c['from']} -> {c['to']} {c['proto']}{ports}{where}")
    if len(lines) == 1:
        lines.append("no differences in meaning")
    else:
        lines.append(f"summary: {len(d['newly_allowed'])} newly allowed, "
                     f"{len(d['newly_denied'])} newly denied conversation classes")
    return "\n".join(lines)


def _members_text(m: dict[str, list[str]]) -> str:
    return "; ".join(f"{k} {more(v, 4)}" for k, v in m.items() if v) or "(none)"


