"""`wardtap policy drift`: each device's learned baseline against a policy or a MUD file,
both ways: traffic seen but not allowed, and rules that allow a device something never seen."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from appliance.review.text import LIST, more

if TYPE_CHECKING:
    from appliance.policy.evaluate import Evaluator
    from appliance.policy.model import Policy
    from appliance.review.baseline import Baseline


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
    from appliance.policy.evaluate import Endpoint, Evaluator, service
    from appliance.review.baseline import View

    view = View(baseline)
    evaluator = Evaluator(policy, baseline.payloads.names_of)
    rules = {r.name: r for r in policy.rules}
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
            seen = baseline.payloads.by_conv.get((src, dst, port)) if proto == 6 else None
            broken = _clinical_misses(rules.get(d.rule or ""), seen) if d.allowed else {}
            if d.allowed and not broken:
                used.add((dd.key, d.rule or ""))
                continue
            item = dd.not_allowed.setdefault((direction, peer, proto, port), {
                "direction": direction, "peer": peer, "service": service(proto, port),
                "reason": "clinical_mismatch" if broken else d.reason,
                "nearest_rule": d.rule, "flows": 0, "packets": 0,
                "first_seen": stats.first, "last_seen": stats.last})
            if broken:
                item["not_allowed_values"] = broken       # field -> values seen, not allowed
            if seen is not None and seen.names and not d.allowed:
                item["names"] = sorted(seen.names)        # the server names asked for
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
    from appliance.policy.writer import iso

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


def _clinical_misses(rule: Any, seen: Any) -> dict[str, list[str]]:
    """What a conversation's first payloads said that its rule's HL7/DICOM condition does not
    allow: {field: values} (empty when nothing was seen, or all of it is allowed)."""
    if rule is None or seen is None:
        return {}
    from appliance.review.payloads import services_of

    out: dict[str, list[str]] = {}

    def check(field_name: str, values: set[str], allowed: tuple[str, ...],
              ok: Any = None) -> None:
        bad = sorted(v for v in values if not (ok(v) if ok else v in allowed))
        if allowed and bad:
            out[field_name] = bad

    if rule.hl7 is not None:
        types = rule.hl7.message_types
        check("hl7_message_type", seen.hl7_types, types, lambda v: v in types or any(
            t.endswith("^*") and (v == t[:-2] or v.startswith(t[:-1])) for t in types))
        check("hl7_sending_application", seen.hl7_sending, rule.hl7.sending)
        check("hl7_receiving_application", seen.hl7_receiving, rule.hl7.receiving)
    if rule.dicom is not None:
        check("dicom_calling_ae", seen.dicom_calling, rule.dicom.calling)
        check("dicom_called_ae", seen.dicom_called, rule.dicom.called)
        if rule.dicom.services or rule.dicom.sop_classes:
            allowed = set(rule.dicom.services) | set(rule.dicom.sop_classes)
            bad = [uid for uid in sorted(seen.dicom_sop)
                   if uid not in allowed and not set(services_of([uid])[0]) & allowed]
            if bad:
                out["dicom_service"] = bad
    return out


def _groups_of(evaluator: Evaluator, mac: str | None, ips: list[str],
               vlans: list[int]) -> list[str]:
    from appliance.policy.evaluate import Endpoint

    names: set[str] = set()
    for vlan in vlans or [0]:
        for ip in ips or [None]:  # type: ignore[list-item]
            names |= evaluator.groups(Endpoint(mac, ip, vlan))
    return sorted(n for n in names if n in evaluator.policy.groups)


def _literal_members(evaluator: Evaluator, ips: list[str], vlans: list[int]) -> set[str]:
    """The addresses written in rules (not groups) that cover one of the device's IPs."""
    from appliance.policy.evaluate import Endpoint

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
                for field_name, values in i.get("not_allowed_values", {}).items():
                    lines.append(f"      {field_name}: {', '.join(values[:LIST])}")
                if i.get("names"):
                    lines.append(f"      names asked for: {', '.join(i['names'][:LIST])}")
            if len(dev["seen_not_allowed"]) > LIST * 2:
                lines.append(f"    ... and {len(dev['seen_not_allowed']) - LIST * 2} more")
        if dev["allowed_never_seen"]:
            lines.append("  allowed, never seen:")
            for r in dev["allowed_never_seen"]:
                lines.append(f"    rule {r['rule']} (device in {r['as']}): {r['describe']}")
    if d["members_never_seen"]:
        lines.append("policy members never seen: " + more(
            [f"{m['member']} ({m['group']})" for m in d["members_never_seen"]], 12))
    for u in d["unchecked_rules"]:
        lines.append(f"not checked: {u}")
    drifting = sum(1 for dev in d["devices"] if dev["seen_not_allowed"])
    unused = sum(1 for dev in d["devices"] if dev["allowed_never_seen"])
    lines.append(f"summary: {drifting} device(s) with traffic the policy does not allow, "
                 f"{unused} with allowed conversations never seen, "
                 f"{d['devices_checked'] - len(d['devices'])} without drift")
    return "\n".join(lines)


