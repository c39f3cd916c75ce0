"""The fleet's appliances as rows and as a table (`wardtap fleet list`, the demo)."""

from __future__ import annotations

import time
from typing import Any

from appliance.common.text import shown


def rows_from_broker(found: dict[tuple[str, str], dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows from the retained state and stats topics (FleetClient.appliances)."""
    rows = []
    for (site, appliance), parts in sorted(found.items()):
        state, stats = parts.get("state", {}), parts.get("stats", {})
        policy = state.get("policy") or {}
        last = max(stats.get("ts") or 0, state.get("ts") or 0) or None
        newer = stats if (stats.get("ts") or 0) > (state.get("ts") or 0) else state
        rows.append({"site": site, "appliance": appliance, "status": state.get("status"),
                     "mode": state.get("mode") or stats.get("mode"),
                     "policy_name": policy.get("name"),
                     "policy_version": policy.get("version"), "last_seen": last,
                     "spool_depth": (newer.get("spool") or {}).get("depth"),
                     "spool_overflow": state.get("spool_overflow"),
                     "violations_last_hour": stats.get("violations_last_hour")})
    return rows


def age(ts: float | None, now: float) -> str:
    if not ts:
        return "-"
    age = max(0.0, now - ts)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if age >= size:
            return f"{age / size:.0f}{unit} ago"
    return f"{age:.0f}s ago"



def render(rows: list[dict[str, Any]], now: float | None = None) -> str:
    """One line per appliance: status, mode, policy, last seen, violations, spool depth."""
    if not rows:
        return "no appliances known"
    now = time.time() if now is None else now
    lines = [f"{'APPLIANCE':32} {'STATUS':8} {'MODE':8} {'POLICY':24} {'LAST SEEN':10} "
             f"{'VIOL/1h':>7} {'SPOOL':>6}"]
    for r in rows:
        policy = f"{r['policy_name']} v{r['policy_version']}" if r["policy_name"] else "-"
        flag = "!" if r.get("spool_overflow") else ""
        viol = r["violations_last_hour"]
        spool = r["spool_depth"]
        lines.append(f"{r['site'] + '/' + r['appliance']:32} {r['status'] or '?':8} "
                     f"{r['mode'] or '-':8} {policy[:24]:24} {age(r['last_seen'], now):10} "
                     f"{viol if viol is not None else '-':>7}"
                     f" {spool if spool is not None else '-':>5}{flag}")
    return "\n".join(shown(line) for line in lines)
