"""`wardtap policy test`: replay captures in monitor mode and report what a policy would
block, per device and per reason with the nearest rule."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from appliance.review.text import LIST, more

if TYPE_CHECKING:
    from appliance.policy.model import Policy


def would_block(policy: Policy, captures: Sequence[str]) -> dict[str, Any]:
    """Replay in monitor mode; every flow the policy would block, with the nearest rule."""
    from appliance.errors import WardtapError
    from appliance.policy.evaluate import Endpoint, Evaluator
    from appliance.replay.runner import Replayer

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
                      # a first payload that broke its rule: the rule and the field
                      "nearest_rule": v.get("nearest_rule") if v.get("field") else d.rule,
                      "field": v.get("field"), "src_groups": groups, "packets": v["packets"],
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
        ckey = (f["dst"], f["proto"], f["reason"], f["nearest_rule"], f["field"])
        conv = dev["conversations"].setdefault(ckey, {
            "dst": f["dst"], "proto": f["proto"], "reason": f["reason"],
            "nearest_rule": f["nearest_rule"], "field": f["field"], "ports": [], "flows": 0,
            "packets": 0})
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
    from appliance.policy.evaluate import proto_name

    p = proto_name(c["proto"])
    if c["ports"]:
        kind = "type" if c["proto"] in (1, 58) else "port"
        ports = [str(x) for x in c["ports"]]
        what = f"{p} {kind}{'s' if len(ports) > 1 else ''} {more(ports, LIST, ',')}"
    else:
        what = p
    near = f", nearest rule {c['nearest_rule']}" if c["nearest_rule"] else ""
    if c.get("field"):
        near += f", field {c['field']}"
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


