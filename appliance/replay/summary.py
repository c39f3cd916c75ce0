"""Human-readable rendering of a replay summary (the JSON form is ReplaySummary.as_dict)."""

from __future__ import annotations

from appliance.replay.runner import ReplaySummary


def _n(value: float) -> str:
    return f"{value:,.0f}"


def render(s: ReplaySummary, top: int = 10) -> str:
    lines = [f"captures   {', '.join(s.captures)}"]
    policy = f"{s.policy['name']} v{s.policy['version']}" if s.policy else "none (learning)"
    lines.append(f"mode       {s.mode}    policy {policy}")
    lines.append(f"packets    {_n(s.packets)}  ({_n(s.bytes)} bytes)  in {s.elapsed_s:.3f} s  "
                 f"= {_n(s.packets_per_second)} packets/s")
    lines.append(f"verdicts   allowed {_n(s.allowed)}   denied {_n(s.denied)}   "
                 f"malformed {_n(s.malformed)}")
    lines.append(f"flows      {_n(s.flows)}   devices {_n(s.devices)}   "
                 f"violations {_n(s.violations)}")
    c = s.counters
    if c.get("flows_evicted") or c.get("events_dropped") or c.get("device_table_full"):
        lines.append(f"limits     flows evicted {_n(c['flows_evicted'])}   events dropped "
                     f"{_n(c['events_dropped'])}   devices not tracked "
                     f"{_n(c['device_table_full'])}")
    if c.get("payloads_judged") or c.get("payloads_missed") or c.get("bindings_learned"):
        # rules by name and by clinical protocol (docs/policy.md, "Names", "Clinical rules")
        lines.append(f"content    first payloads judged {_n(c.get('payloads_judged', 0))} "
                     f"(met mid-stream {_n(c.get('payloads_missed', 0))})   name bindings "
                     f"{_n(c.get('bindings_learned', 0))}")
    if s.violations_by_reason:
        lines.append("violations by reason")
        for reason, count in sorted(s.violations_by_reason.items(), key=lambda kv: -kv[1]):
            lines.append(f"  {count:>8,}  {reason}")
    if s.violations_by_rule:
        lines.append("violations by nearest rule")
        for rule, count in sorted(s.violations_by_rule.items(), key=lambda kv: -kv[1]):
            lines.append(f"  {count:>8,}  {rule}")
    if s.violations_by_device:
        lines.append("violations by device")
        for d in s.violations_by_device[:top]:
            who = " ".join(x for x in (d["mac"], d["ip"]) if x)
            why = ", ".join(f"{r} {n}" for r, n in d["reasons"].items())
            lines.append(f"  {d['violations']:>8,}  {who}  ({why})")
        if len(s.violations_by_device) > top:
            lines.append(f"  ... and {len(s.violations_by_device) - top} more devices")
    if s.malformed_by_reason:
        lines.append("malformed by reason")
        for reason, count in sorted(s.malformed_by_reason.items(), key=lambda kv: -kv[1]):
            lines.append(f"  {count:>8,}  {reason}")
    for error in s.errors:
        lines.append(f"error      {error}")
    return "\n".join(lines)
