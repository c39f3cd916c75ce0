"""`wardtap policy diff | test | import-mud | drift`: review and check allow-lists.

- diff: what a change does, compared by meaning (group members, rule endpoints, protocol,
  ports, initiator), so a renamed group or a reordered file is not a change; then which
  conversations become allowed or denied.
- test: replay captures in monitor mode and report what the policy would block, per device
  and per reason with the nearest rule.
- import-mud: an RFC 8520 MUD file as a policy (appliance.mud).
- drift: each device's learned baseline against a policy or a MUD file, both ways: traffic
  seen but not allowed, and rules that allow a device something never seen.

Every action prints text, or one JSON object with --json; exit 0, or 2 with one error line.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from appliance.learn import Baseline
    from appliance.policy import Group, Policy, Rule
    from appliance.policyeval import Evaluator

LIST = 8          # items shown per line before "and N more"


def _more(items: Sequence[str], limit: int = LIST, sep: str = ", ") -> str:
    shown = sep.join(items[:limit])
    return shown + (f"{sep}and {len(items) - limit} more" if len(items) > limit else "")


def _ranges(ranges: Iterable[tuple[int, int]]) -> str:
    return ",".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in ranges)


# --- diff -------------------------------------------------------------------------------------


def _members(g: Group) -> dict[str, list[str]]:
    return {"mac": sorted(m.hex(":") for m in g.macs), "oui": sorted(o.hex(":") for o in g.ouis),
            "ip": sorted(str(n) for n in g.nets), "vlan": [str(v) for v in sorted(g.vlans)]}


def _identity(g: Group) -> tuple[tuple[str, ...], ...]:
    m = _members(g)
    return tuple(tuple(m[k]) for k in ("mac", "oui", "ip", "vlan"))


def _canon_end(policy: Policy, item: str) -> Any:
    if item == "any":
        return "any"
    if item in policy.groups:
        return ("group", _identity(policy.groups[item]))
    return ("net", str(ipaddress.ip_network(item, strict=False)))


def _canon(policy: Policy, rule: Rule) -> tuple[Any, ...]:
    return (frozenset(_canon_end(policy, s) for s in rule.sources),
            frozenset(_canon_end(policy, d) for d in rule.destinations),
            rule.proto, tuple(sorted(rule.ports)), rule.either)


def _rule_fields(rule: Rule) -> dict[str, str]:
    from appliance.policyeval import proto_name

    return {"from": ",".join(rule.sources), "to": ",".join(rule.destinations),
            "proto": proto_name(rule.proto), "ports": _ranges(rule.ports) or "any",
            "initiate": "either" if rule.either else "from"}


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
    return out


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
    from appliance.policy import ICMP
    from appliance.policyeval import Endpoint, Evaluator

    ev = (Evaluator(old), Evaluator(new))
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
    from appliance.policyeval import proto_name

    return "other protocols" if p == _OTHER_PROTO else proto_name(p)


def _proto_ports(p: int, ranges: list[tuple[int, int]]) -> str:
    from appliance.policy import ICMP, PORTED

    if p in ICMP:
        return "any type" if ranges == [(0, 255)] else "type " + _ranges(ranges)
    if p in PORTED:
        return "any port" if ranges == [(0, 65535)] else _ranges(ranges)
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
    return "; ".join(f"{k} {_more(v, 4)}" for k, v in m.items() if v) or "(none)"


# --- test ---------------------------------------------------------------------------------------


def would_block(policy: Policy, captures: Sequence[str]) -> dict[str, Any]:
    """Replay in monitor mode; every flow the policy would block, with the nearest rule."""
    from appliance.errors import WardtapError
    from appliance.policyeval import Endpoint, Evaluator
    from appliance.replay import Replayer

    replayer = Replayer(policy, "monitor")
    denied: dict[int, dict[str, Any]] = {}

    def take(events: list[dict[str, Any]]) -> None:
        for e in events:
            if e["type"] == "violation":
                denied[e["flow"]] = dict(e, packets=0, bytes=0)
            elif e["type"] == "flow_end" and e["flow"] in denied:
                denied[e["flow"]].update(packets=e["packets"], bytes=e["bytes"],
                                         last=e["ts"])

    replayer.on_events = take
    summary = replayer.run(list(captures))
    if summary.errors:
        raise WardtapError(summary.errors[0])
    take([dict(f, type="flow_end") for f in replayer.active_flows()])
    routers = {d["mac"] for d in replayer.devices() if d["multi_ip"]}
    evaluator = Evaluator(policy)
    flows = []
    for v in sorted(denied.values(), key=lambda v: v["flow"]):
        proto = v["proto"]
        port = v.get("icmp_type") if proto in (1, 58) else v.get("dport")
        d = evaluator.decide(Endpoint(v.get("smac"), v["src"], v["vlan"]),
                             Endpoint(v.get("dmac"), v["dst"], v["vlan"]), proto, port or 0)
        groups = sorted(evaluator.groups(Endpoint(v.get("smac"), v["src"], v["vlan"]))
                        - {"any"})
        flows.append({"src": v["src"], "dst": v["dst"], "proto": proto, "dport": port,
                      "smac": v.get("smac"), "vlan": v["vlan"], "reason": v["reason"],
                      "nearest_rule": d.rule, "src_groups": groups, "packets": v["packets"],
                      "bytes": v["bytes"], "first_seen": v["ts"]})
    by_device: dict[tuple[str | None, str], dict[str, Any]] = {}
    for f in flows:
        mac = f["smac"] if f["smac"] not in routers else None
        key = (mac, f["src"] if mac is None else "")
        dev = by_device.setdefault(key, {"mac": mac, "ips": [], "groups": f["src_groups"],
                                         "flows": 0, "packets": 0, "bytes": 0,
                                         "conversations": {}})
        if f["src"] not in dev["ips"]:
            dev["ips"].append(f["src"])
        dev["flows"] += 1
        dev["packets"] += f["packets"]
        dev["bytes"] += f["bytes"]
        ckey = (f["dst"], f["proto"], f["reason"], f["nearest_rule"])
        conv = dev["conversations"].setdefault(ckey, {
            "dst": f["dst"], "proto": f["proto"], "reason": f["reason"],
            "nearest_rule": f["nearest_rule"], "ports": [], "flows": 0, "packets": 0})
        conv["flows"] += 1
        conv["packets"] += f["packets"]
        if f["dport"] is not None and f["dport"] not in conv["ports"]:
            conv["ports"].append(f["dport"])
    devices = sorted(by_device.values(), key=lambda d: (-d["flows"], d["mac"] or "",
                                                        d["ips"]))
    for dev in devices:
        dev["conversations"] = sorted(dev["conversations"].values(),
                                      key=lambda c: (-c["flows"], c["dst"], c["proto"]))
        for c in dev["conversations"]:
            c["ports"].sort()
    reasons: dict[tuple[str, str | None], dict[str, Any]] = {}
    for f in flows:
        r = reasons.setdefault((f["reason"], f["nearest_rule"]), {
            "reason": f["reason"], "nearest_rule": f["nearest_rule"], "flows": 0,
            "packets": 0})
        r["flows"] += 1
        r["packets"] += f["packets"]
    stats = replayer.classifier.stats()["reasons"]
    l2 = {"arp": stats.get("arp", 0) if not policy.arp else 0,
          "non_ip": stats.get("non_ip", 0) if not policy.non_ip else 0,
          "fragment_unmatched": stats.get("fragment_unmatched", 0)
          if not policy.fragment_unmatched else 0}
    return {
        "policy": {"path": policy.path, "name": policy.name, "version": policy.version},
        "captures": list(captures), "packets": summary.packets, "flows": summary.flows,
        "blocked": {"flows": len(flows), "packets": sum(f["packets"] for f in flows),
                    "bytes": sum(f["bytes"] for f in flows), "devices": len(devices),
                    "frames_not_in_flows": l2},
        "devices": devices,
        "reasons": sorted(reasons.values(), key=lambda r: (-r["flows"], r["reason"],
                                                           r["nearest_rule"] or "")),
        "violations": flows,
    }


def _conv_text(c: dict[str, Any]) -> str:
    from appliance.policyeval import proto_name

    p = proto_name(c["proto"])
    if c["ports"]:
        kind = "type" if c["proto"] in (1, 58) else "port"
        ports = [str(x) for x in c["ports"]]
        what = f"{p} {kind}{'s' if len(ports) > 1 else ''} {_more(ports, LIST, ',')}"
    else:
        what = p
    near = f", nearest rule {c['nearest_rule']}" if c["nearest_rule"] else ""
    return (f"-> {c['dst']} {what}: {c['flows']:,} flow{'s' if c['flows'] != 1 else ''} "
            f"({c['reason']}{near})")


def render_test(t: dict[str, Any]) -> str:
    p, b = t["policy"], t["blocked"]
    lines = [f"policy {p['path']} ({p['name']} v{p['version']}) on {len(t['captures'])} "
             f"capture(s): {t['packets']:,} packets, {t['flows']:,} flows",
             f"would be blocked: {b['flows']:,} flows ({b['packets']:,} packets) started by "
             f"{b['devices']} device(s)"]
    if t["devices"]:
        lines.append("by device")
        for d in t["devices"]:
            who = " ".join(x for x in (d["mac"], " ".join(d["ips"])) if x)
            groups = f" [{', '.join(d['groups'])}]" if d["groups"] else " [no group]"
            lines.append(f"  {who}{groups}: {d['flows']:,} flows, {d['packets']:,} packets")
            for c in d["conversations"][:LIST]:
                lines.append(f"      {_conv_text(c)}")
            if len(d["conversations"]) > LIST:
                lines.append(f"      ... and {len(d['conversations']) - LIST} more")
        lines.append("by reason and nearest rule")
        for r in t["reasons"]:
            lines.append(f"  {r['flows']:>8,} flows  {r['reason']:<18} "
                         f"{r['nearest_rule'] or '(no rule joins these groups)'}")
    l2 = b["frames_not_in_flows"]
    if any(l2.values()):
        lines.append("frames outside flows that would be dropped: " + ", ".join(
            f"{k} {v:,}" for k, v in l2.items() if v))
    return "\n".join(lines)


# --- drift ---------------------------------------------------------------------------------------


@dataclass
class _DeviceDrift:
    key: str
    mac: str | None
    ips: list[str]
    vendor: str | None
    groups: list[str]
    not_allowed: dict[tuple[Any, ...], dict[str, Any]] = field(default_factory=dict)
    never_seen: list[dict[str, Any]] = field(default_factory=list)


def drift(policy: Policy, baseline: Baseline, unchecked: Sequence[str] = (),
          only_group: str | None = None) -> dict[str, Any]:
    """Each device's baseline against the policy: seen but not allowed; allowed, never seen.

    `only_group`: report only the devices in that group (a MUD file's device)."""
    from appliance.learn import View
    from appliance.policyeval import Endpoint, Evaluator, service

    view = View(baseline)
    evaluator = Evaluator(policy)
    profiles = {p.key: p for p in view.profiles() if p.role != "router"}
    used: set[tuple[str, str]] = set()
    devices: dict[str, _DeviceDrift] = {}

    def device(key: tuple[str, str]) -> _DeviceDrift | None:
        p = profiles.get(key[1])
        if p is None:
            return None
        if p.key not in devices:
            devices[p.key] = _DeviceDrift(p.key, p.mac, p.ips, p.vendor,
                                          _groups_of(evaluator, p.mac, p.ips, p.vlans))
        return devices[p.key]

    for raw, stats in sorted(baseline.conversations.items(), key=lambda kv: repr(kv[0])):
        smac, src, dmac, dst, vlan, proto, port = raw
        d = evaluator.decide(Endpoint(smac, src, vlan), Endpoint(dmac, dst, vlan), proto, port)
        a, b = view.device_of(smac, src), view.device_of(dmac, dst)
        for key, direction, peer in ((a, "out", dst), (b, "in", src)):
            if key is None:
                continue
            dd = device(key)
            if dd is None:
                continue
            if d.allowed:
                used.add((dd.key, d.rule or ""))
                continue
            item = dd.not_allowed.setdefault((direction, peer, proto, port), {
                "direction": direction, "peer": peer, "service": service(proto, port),
                "reason": d.reason, "nearest_rule": d.rule, "flows": 0, "packets": 0,
                "first_seen": stats.first, "last_seen": stats.last})
            item["flows"] += stats.flows
            item["packets"] += stats.packets
            item["first_seen"] = min(item["first_seen"], stats.first)
            item["last_seen"] = max(item["last_seen"], stats.last)
    for pkey in sorted(profiles):
        p = profiles[pkey]
        dd = device((("mac" if p.mac else "ip"), pkey))
        if dd is None:
            continue
        member = set(dd.groups) | _literal_members(evaluator, p.ips, p.vlans)
        for rule in policy.rules:
            sides = [s for s, ends in (("from", rule.sources), ("to", rule.destinations))
                     if member & set(ends)]
            if sides and (dd.key, rule.name) not in used:
                dd.never_seen.append({"rule": rule.name, "as": "/".join(sides),
                                      "describe": rule.describe()})
    from appliance.policywriter import iso

    if only_group is not None:
        devices = {k: dd for k, dd in devices.items() if only_group in dd.groups}
    out_devices = []
    for dd in sorted(devices.values(), key=lambda d: (d.mac is None, d.key)):
        if not dd.not_allowed and not dd.never_seen:
            continue
        items = sorted(dd.not_allowed.values(), key=lambda i: (i["direction"], i["peer"],
                                                               i["service"]))
        for i in items:
            i["first_seen"], i["last_seen"] = iso(i["first_seen"]), iso(i["last_seen"])
        out_devices.append({"device": dd.key, "mac": dd.mac, "ips": dd.ips,
                            "vendor": dd.vendor, "groups": dd.groups,
                            "seen_not_allowed": items, "allowed_never_seen": dd.never_seen})
    return {"policy": {"path": policy.path, "name": policy.name, "version": policy.version},
            "captures": baseline.captures, "devices_checked": len(devices),
            "flows": sum(s.flows for s in baseline.conversations.values()),
            "devices": out_devices,
            "members_never_seen": _members_never_seen(policy, baseline, view),
            "unchecked_rules": list(unchecked)}


def _groups_of(evaluator: Evaluator, mac: str | None, ips: list[str],
               vlans: list[int]) -> list[str]:
    from appliance.policyeval import Endpoint

    names: set[str] = set()
    for vlan in vlans or [0]:
        for ip in ips or [None]:  # type: ignore[list-item]
            names |= evaluator.groups(Endpoint(mac, ip, vlan))
    return sorted(n for n in names if n in evaluator.policy.groups)


def _literal_members(evaluator: Evaluator, ips: list[str], vlans: list[int]) -> set[str]:
    """The addresses written in rules (not groups) that cover one of the device's IPs."""
    from appliance.policyeval import Endpoint

    names: set[str] = set()
    for vlan in vlans or [0]:
        for ip in ips:
            names |= evaluator.groups(Endpoint(None, ip, vlan))
    return {n for n in names if n != "any" and n not in evaluator.policy.groups}


def _members_never_seen(policy: Policy, baseline: Baseline, view: Any) -> list[dict[str, str]]:
    macs = {k[1] for k in view.entities if k[0] == "mac"} | set(baseline.devices)
    addrs = [ipaddress.ip_address(ip) for ent in view.entities.values() for ip in ent.ips]
    out = []
    for name, g in policy.groups.items():
        for m in g.macs:
            if m.hex(":") not in macs:
                out.append({"group": name, "member": f"mac {m.hex(':')}"})
        for o in g.ouis:
            if not any(x.startswith(o.hex(":")) for x in macs):
                out.append({"group": name, "member": f"oui {o.hex(':')}"})
        for n in g.nets:
            if not any(a in n for a in addrs if a.version == n.version):
                out.append({"group": name, "member": f"ip {n}"})
    return out


def render_drift(d: dict[str, Any]) -> str:
    p = d["policy"]
    lines = [f"drift: {p['path']} ({p['name']} v{p['version']}) against "
             f"{', '.join(d['captures'])}: {d['devices_checked']} devices and hosts, "
             f"{d['flows']:,} flows"]
    for dev in d["devices"]:
        who = " ".join(x for x in (dev["mac"], " ".join(dev["ips"][:3])) if x)
        vendor = f" ({dev['vendor']})" if dev["vendor"] else ""
        groups = f" [{', '.join(dev['groups'])}]" if dev["groups"] else " [no group]"
        lines.append(f"{who}{vendor}{groups}")
        if dev["seen_not_allowed"]:
            lines.append("  seen, not allowed:")
            for i in dev["seen_not_allowed"][:LIST * 2]:
                arrow = "->" if i["direction"] == "out" else "<-"
                near = f", nearest rule {i['nearest_rule']}" if i["nearest_rule"] else ""
                lines.append(f"    {arrow} {i['peer']} {i['service']}: {i['flows']:,} "
                             f"flow{'s' if i['flows'] != 1 else ''} ({i['reason']}{near}), "
                             f"last {i['last_seen']}")
            if len(dev["seen_not_allowed"]) > LIST * 2:
                lines.append(f"    ... and {len(dev['seen_not_allowed']) - LIST * 2} more")
        if dev["allowed_never_seen"]:
            lines.append("  allowed, never seen:")
            for r in dev["allowed_never_seen"]:
                lines.append(f"    rule {r['rule']} (device in {r['as']}): {r['describe']}")
    if d["members_never_seen"]:
        lines.append("policy members never seen: " + _more(
            [f"{m['member']} ({m['group']})" for m in d["members_never_seen"]], 12))
    for u in d["unchecked_rules"]:
        lines.append(f"not checked: {u}")
    drifting = sum(1 for dev in d["devices"] if dev["seen_not_allowed"])
    unused = sum(1 for dev in d["devices"] if dev["allowed_never_seen"])
    lines.append(f"summary: {drifting} device(s) with traffic the policy does not allow, "
                 f"{unused} with allowed conversations never seen, "
                 f"{d['devices_checked'] - len(d['devices'])} without drift")
    return "\n".join(lines)


# --- the command line ------------------------------------------------------------------------


def _add_device_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mac", action="append", default=[], help="the device's MAC (repeatable)")
    p.add_argument("--oui", action="append", default=[], help="the device's OUI (repeatable)")
    p.add_argument("--ip", action="append", default=[], help="the device's address or block")
    p.add_argument("--vlan", action="append", default=[], help="the device's VLAN")
    p.add_argument("--fill", action="append", default=[], metavar="NAME=ADDR[,ADDR]",
                   help="addresses for a placeholder group (a DNS name, controller...)")


def add_actions(sub: Any) -> None:
    """Add diff, test, import-mud and drift to `wardtap policy`'s subparsers."""
    p = sub.add_parser("diff", help="what a policy change allows and denies")
    p.add_argument("old")
    p.add_argument("new")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("test", help="replay captures: what would the policy block")
    p.add_argument("file")
    p.add_argument("captures", nargs="+", metavar="CAPTURE")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("import-mud", help="an RFC 8520 MUD file as a policy")
    p.add_argument("file", metavar="FILE.json")
    p.add_argument("-o", "--output", metavar="POLICY", help="default: standard output")
    p.add_argument("--name", help="the policy's name")
    _add_device_options(p)
    p = sub.add_parser("drift", help="devices' baselines against a policy or MUD file")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--policy", metavar="FILE")
    src.add_argument("--mud", metavar="FILE")
    p.add_argument("captures", nargs="+", metavar="CAPTURE")
    p.add_argument("--json", action="store_true")
    _add_device_options(p)


def _emit(data: dict[str, Any], as_json: bool, render: Callable[[dict[str, Any]], str]) -> int:
    print(json.dumps(data, indent=2, default=str) if as_json else render(data))
    return 0


def _run_diff(args: argparse.Namespace) -> int:
    from appliance.policy import load_policy

    old, new = load_policy(args.old), load_policy(args.new)
    return _emit(diff_policies(old, new), args.json, render_diff)


def _run_test(args: argparse.Namespace) -> int:
    from appliance.policy import compile_policy, load_policy

    policy = load_policy(args.file)
    compile_policy(policy)
    return _emit(would_block(policy, args.captures), args.json, render_test)


def _mud_policy(args: argparse.Namespace, profile: Any, baseline: Baseline | None = None
                ) -> tuple[str, list[str], list[str], str]:
    """(policy text, warnings, rules left out, device group) from --mud/FILE and the
    device options; with a baseline and no device options, every device seen is the MUD's
    device."""
    from appliance.mud import device_selectors, mud_draft, parse_fills
    from appliance.policywriter import render

    device = device_selectors(args.mac, args.oui, args.ip, args.vlan)
    fills = parse_fills(args.fill)
    if baseline is not None and device.empty:
        from appliance.learn import View

        device.mac = sorted(k[1] for k in View(baseline).entities if k[0] == "mac")
    draft = mud_draft(profile, device, fills, getattr(args, "name", None))
    placeholders = {g.name for g in draft.groups if g.placeholder}
    left_out = []
    for r in draft.rules:
        missing = sorted(placeholders & set(r.sources + r.destinations))
        if missing:
            left_out.append(f"rule {r.name} names placeholder group {', '.join(missing)} "
                            f"(fill it in with --fill NAME=ADDRESS): {r.comments[0]}")
    return render(draft), profile.warnings, left_out, profile.device_name


def _run_import_mud(args: argparse.Namespace) -> int:
    from appliance.mud import load_mud
    from appliance.policy import compile_policy, parse_policy
    from appliance.policywriter import write_text

    text, warnings, left_out, _ = _mud_policy(args, load_mud(args.file))
    compile_policy(parse_policy(text, args.output or "<import>"))
    for w in warnings:
        print(f"wardtap: warning: {w}", file=sys.stderr)
    write_text(args.output, text)
    if args.output:
        print(f"{args.file}: imported -> {args.output}"
              + (f" ({len(left_out)} rules commented out until placeholders are filled in, "
                 f"{len(warnings)} warnings)" if left_out or warnings else ""))
    return 0


def _run_drift(args: argparse.Namespace) -> int:
    from appliance.learn import learn
    from appliance.policy import compile_policy, load_policy, parse_policy

    if args.policy and (args.mac or args.oui or args.ip or args.vlan or args.fill):
        from appliance.errors import WardtapError

        raise WardtapError("--mac/--oui/--ip/--vlan/--fill go with --mud, not --policy")
    if args.policy:
        policy = load_policy(args.policy)
        compile_policy(policy)
        baseline = learn(args.captures)
        left_out: list[str] = []
        only = None
    else:
        from appliance.mud import load_mud

        profile = load_mud(args.mud)      # a broken MUD file fails before any replay
        baseline = learn(args.captures)
        text, warnings, left_out, only = _mud_policy(args, profile, baseline)
        for w in warnings:
            print(f"wardtap: warning: {w}", file=sys.stderr)
        policy = parse_policy(text, args.mud)
    return _emit(drift(policy, baseline, left_out, only), args.json, render_drift)


_ACTIONS: dict[str, Callable[[argparse.Namespace], int]] = {
    "diff": _run_diff, "test": _run_test, "import-mud": _run_import_mud, "drift": _run_drift,
}


def run(args: argparse.Namespace) -> int:
    return _ACTIONS[args.policy_command](args)


def handles(action: str) -> bool:
    return action in _ACTIONS

