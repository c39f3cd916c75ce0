"""The fleet's appliances as rows and as a table (`wardtap fleet list`, the demo)."""

from __future__ import annotations

import time
from typing import Any

from appliance.common.table import Column
from appliance.common.table import render as render_columns
from appliance.common.when import age

__all__ = ["age", "render", "rows_from_broker", "status_word"]


def rows_from_broker(found: dict[tuple[str, str], dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows from the retained state and stats topics (FleetClient.appliances)."""
    rows = []
    for (site, appliance), parts in sorted(found.items()):
        state, stats = parts.get("state", {}), parts.get("stats", {})
        policy = state.get("policy") or {}
        last = max(stats.get("ts") or 0, state.get("ts") or 0) or None
        newer = stats if (stats.get("ts") or 0) > (state.get("ts") or 0) else state
        rows.append({"site": site, "appliance": appliance, "status": state.get("status"),
                     "reason": state.get("reason"),
                     "mode": state.get("mode") or stats.get("mode"),
                     "policy_name": policy.get("name"),
                     "policy_version": policy.get("version"), "last_seen": last,
                     "spool_depth": (newer.get("spool") or {}).get("depth"),
                     "spool_overflow": state.get("spool_overflow"),
                     "violations_last_hour": stats.get("violations_last_hour")})
    return rows


def status_word(row: dict[str, Any]) -> str:
    """online; stopped (a clean stop: shutdown, a replay that finished); offline (the broker
    lost it: the last will)."""
    status = row.get("status")
    if status == "offline" and row.get("reason") not in (None, "connection lost"):
        return "stopped"
    return str(status or "?")


COLUMNS = (Column("APPLIANCE", wrap=True, min_width=16), Column("STATUS"), Column("MODE", 2),
           Column("POLICY", 3, wrap=True, min_width=12), Column("LAST SEEN", 1),
           Column("VIOL/1h", 4, align=">"), Column("SPOOL", 5, align=">"))


def render(rows: list[dict[str, Any]], now: float | None = None, width: int | None = None,
           wide: bool = False) -> str:
    """One line per appliance: status, mode, policy, last seen, violations in the last hour,
    spool depth (! when it overflowed). Ages are against the wall clock: the fleet is live."""
    if not rows:
        return "no appliances known"
    now = time.time() if now is None else now
    table = []
    for r in rows:
        policy = f"{r['policy_name']} v{r['policy_version']}" if r["policy_name"] else "-"
        viol, spool = r["violations_last_hour"], r["spool_depth"]
        table.append((f"{r['site']}/{r['appliance']}", status_word(r), r["mode"] or "-",
                      policy, age(r["last_seen"], now), "-" if viol is None else viol,
                      ("-" if spool is None else str(spool))
                      + ("!" if r.get("spool_overflow") else "")))
    return render_columns(COLUMNS, table, width, wide)
