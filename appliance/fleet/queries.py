"""Reading the fleet database: what the console's pages and `fleet list --db` show.

Every query is parameterised (user input never becomes SQL), bounded by a LIMIT, and served
by an index or a rollup table, so pages stay fast with millions of events:
"violations in the last hour / day" come from the per-minute / per-hour rollups, the
timeline from the rollup matching the zoom, recent events from (site, appliance, ts).
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from appliance.fleet.db import Database

STALE_AFTER_S = 900.0        # three missed stats intervals (300 s) and the view is stale
FLEET_SORTS = ("site", "appliance", "status", "mode", "policy_name", "spool_depth",
               "last_seen", "violations_last_hour", "violations_last_day")
DEVICE_FIELDS = ("any", "name", "mac", "ip", "vendor", "class")


def like_pattern(text: str) -> str:
    """`text` as a LIKE pattern matching it anywhere, its own % and _ taken literally."""
    escaped = text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def derive_status(row: dict[str, Any], now: float, stale_after: float = STALE_AFTER_S) -> str:
    """online / offline / bypass / degraded / stale, from the stored state and its age."""
    status = row.get("status") or "unknown"
    if status != "online":
        return status
    if row.get("last_seen") is None or now - row["last_seen"] > stale_after:
        return "stale"
    if row.get("mode") == "bypass":
        return "bypass"
    if row.get("spool_overflow") or row.get("spool_disk"):
        return "degraded"
    return "online"


def _json(text: Any) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def fleet_overview(db: Database, now: float | None = None, site: str | None = None,
                   sort: str = "site", descending: bool = False,
                   stale_after: float = STALE_AFTER_S) -> list[dict[str, Any]]:
    """One row per appliance: status, mode, policy, spool, last seen, violations 1 h / 1 d."""
    now = time.time() if now is None else now
    where = ""
    params: list[Any] = [int((now - 3600) // 60), int((now - 86400) // 3600)]
    if site:
        where = "WHERE a.site = ?"
        params.append(site)
    rows = db.rows(
        "SELECT a.site, a.appliance, a.status, a.mode, a.policy_name, a.policy_version, "
        "a.policy_sha256, a.last_seen, a.spool_depth, a.spool_overflow, a.spool_disk, "
        "a.malformed, "
        "coalesce(h.v, 0) AS violations_last_hour, coalesce(d.v, 0) AS violations_last_day "
        "FROM appliances a "
        "LEFT JOIN (SELECT site, appliance, sum(violations) AS v FROM timeline_minute "
        "  WHERE bucket >= ? GROUP BY site, appliance) h "
        "  ON h.site = a.site AND h.appliance = a.appliance "
        "LEFT JOIN (SELECT site, appliance, sum(violations) AS v FROM timeline_hour "
        "  WHERE bucket >= ? GROUP BY site, appliance) d "
        "  ON d.site = a.site AND d.appliance = a.appliance "
        f"{where} ORDER BY a.site, a.appliance", params)
    for r in rows:
        r["reported_status"] = r["status"]
        r["status"] = derive_status(r, now, stale_after)
        r["stale"] = r["status"] == "stale" or (
            r["last_seen"] is not None and now - r["last_seen"] > stale_after)
        r["violations_last_hour"] = int(r["violations_last_hour"] or 0)
        r["violations_last_day"] = int(r["violations_last_day"] or 0)
    key = sort if sort in FLEET_SORTS else "site"
    rows.sort(key=lambda r: (r[key] is None, r[key] if r[key] is not None else 0,
                             r["site"], r["appliance"]), reverse=descending)
    return rows


def sites(db: Database) -> list[str]:
    return [r[0] for r in db.query("SELECT DISTINCT site FROM appliances ORDER BY site")]


def appliance(db: Database, site: str, name: str,
              now: float | None = None) -> dict[str, Any] | None:
    now = time.time() if now is None else now
    rows = db.rows("SELECT * FROM appliances WHERE site = ? AND appliance = ?", (site, name))
    if not rows:
        return None
    row = rows[0]
    row["status_derived"] = derive_status(row, now)
    row["state_body"] = _json(row.pop("state"))
    row["stats_body"] = _json(row.pop("stats"))
    inv = db.rows("SELECT ts, count, received FROM inventory WHERE site = ? AND appliance = ?",
                  (site, name))
    row["inventory"] = inv[0] if inv else None
    return row


def data_span(db: Database, site: str, name: str) -> tuple[int, int] | None:
    """(first, last) second with anything in the appliance's timeline; the last is that of
    the newest events when there are any (a replayed capture keeps its own clock, its stats
    are stamped when they were sent)."""
    where = "WHERE site = ? AND appliance = ?"
    row = db.query(f"SELECT min(bucket), max(bucket) FROM timeline_hour {where}", (site, name))
    if not row or row[0][0] is None:
        return None
    last = db.query(f"SELECT max(bucket) FROM timeline_minute {where} AND events > 0",
                    (site, name))
    end = int(last[0][0]) * 60 + 59 if last and last[0][0] is not None else \
        int(row[0][1]) * 3600 + 3599
    return int(row[0][0]) * 3600, end


def timeline(db: Database, site: str, name: str, start: float, end: float,
             step: str) -> list[dict[str, Any]]:
    """Buckets between start and end (Unix s): violations, events, allowed, denied."""
    table, size = ("timeline_hour", 3600) if step == "hour" else ("timeline_minute", 60)
    return db.rows(f"SELECT bucket, events, violations, allowed, denied, packets FROM {table} "
                   "WHERE site = ? AND appliance = ? AND bucket >= ? AND bucket <= ? "
                   "ORDER BY bucket", (site, name, int(start // size), int(end // size)))


def recent_events(db: Database, site: str, name: str, limit: int = 50,
                  before: float | None = None) -> list[dict[str, Any]]:
    params: list[Any] = [site, name]
    cond = ""
    if before is not None:
        cond = "AND ts <= ? "
        params.append(before)
    rows = db.rows("SELECT id, ts, type, count, reason, rule, src, dst, proto, dport, smac, "
                   f"payload FROM events WHERE site = ? AND appliance = ? {cond}"
                   "ORDER BY ts DESC LIMIT ?", (*params, limit))
    for r in rows:
        r["body"] = _json(r.pop("payload"))
    return rows


def devices_of(db: Database, site: str, name: str, limit: int = 2000) -> list[dict[str, Any]]:
    rows = db.rows("SELECT * FROM devices WHERE site = ? AND appliance = ? "
                   "ORDER BY first_seen, mac LIMIT ?", (site, name, limit))
    return [_device(r) for r in rows]


def _device(r: dict[str, Any]) -> dict[str, Any]:
    r["body"] = _json(r.pop("payload"))
    r.pop("search", None)
    try:
        r["names"] = json.loads(r["names"] or "[]")
    except ValueError:
        r["names"] = []
    return r


def search_devices(db: Database, q: str = "", field: str = "any", site: str | None = None,
                   limit: int = 200, offset: int = 0) -> list[dict[str, Any]]:
    """Devices across the fleet whose name, MAC, address, vendor or class contains `q`."""
    conds: list[str] = []
    params: list[Any] = []
    if q:
        column = {"name": "names", "mac": "mac", "vendor": "vendor",
                  "class": "class"}.get(field)
        pattern = like_pattern(q)
        if column is None and field != "ip":
            # already lower case, and on PostgreSQL served by a trigram index
            conds.append("search LIKE ? ESCAPE '\\'")
            params.append(pattern)
        elif field == "ip":
            conds.append("(lower(ipv4) LIKE ? ESCAPE '\\' OR lower(ipv6) LIKE ? ESCAPE '\\')")
            params += [pattern, pattern]
        else:
            conds.append(f"lower({column}) LIKE ? ESCAPE '\\'")
            params.append(pattern)
    if site:
        conds.append("site = ?")
        params.append(site)
    where = ("WHERE " + " AND ".join(conds)) if conds else ""
    rows = db.rows(f"SELECT * FROM devices {where} ORDER BY site, appliance, mac "
                   "LIMIT ? OFFSET ?", (*params, limit, offset))
    return [_device(r) for r in rows]


def violation_groups(db: Database, since: float, site: str | None = None,
                     name: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
    """Violations since `since`, grouped by appliance, device, rule and reason."""
    conds: list[str] = ["type = 'violation'", "ts >= ?"]
    params: list[Any] = [since]
    if site:
        conds.append("site = ?")
        params.append(site)
    if name:
        conds.append("appliance = ?")
        params.append(name)
    rows = db.rows(
        "SELECT site, appliance, coalesce(smac, src, '') AS device, coalesce(rule, '') AS rule, "
        "coalesce(reason, '') AS reason, sum(count) AS violations, count(*) AS flows, "
        "min(ts) AS first_ts, max(ts) AS last_ts FROM events "
        f"WHERE {' AND '.join(conds)} "
        "GROUP BY site, appliance, coalesce(smac, src, ''), coalesce(rule, ''), "
        "coalesce(reason, '') ORDER BY sum(count) DESC, site, appliance LIMIT ?",
        (*params, limit))
    macs = {(r["site"], r["appliance"], r["device"]) for r in rows}
    names: dict[tuple[str, str, str], dict[str, Any]] = {}
    for s, a in {(k[0], k[1]) for k in macs}:
        wanted = [k[2] for k in macs if k[0] == s and k[1] == a]
        for i in range(0, len(wanted), 400):
            chunk = wanted[i:i + 400]
            for d in db.rows("SELECT site, appliance, mac, class, vendor, names FROM devices "
                             f"WHERE site = ? AND appliance = ? AND mac IN "
                             f"({', '.join('?' * len(chunk))})", (s, a, *chunk)):
                names[(d["site"], d["appliance"], d["mac"])] = d
    for r in rows:
        found = names.get((r["site"], r["appliance"], r["device"]))
        r["device_class"] = found["class"] if found else None
        r["device_vendor"] = found["vendor"] if found else None
        r["violations"] = int(r["violations"] or 0)
    return rows


def violation_flows(db: Database, site: str, name: str, device: str, rule: str, reason: str,
                    since: float, limit: int = 200) -> list[dict[str, Any]]:
    """The violation events behind one group (the flows, newest first)."""
    rows = db.rows(
        "SELECT id, ts, count, src, dst, proto, dport, smac, payload FROM events "
        "WHERE site = ? AND appliance = ? AND type = 'violation' AND ts >= ? "
        "AND coalesce(smac, src, '') = ? AND coalesce(rule, '') = ? "
        "AND coalesce(reason, '') = ? ORDER BY ts DESC LIMIT ?",
        (site, name, since, device, rule, reason, limit))
    for r in rows:
        r["body"] = _json(r.pop("payload"))
    return rows


def malformed_recent(db: Database, limit: int = 20, site: str | None = None,
                     name: str | None = None) -> list[dict[str, Any]]:
    if site and name:
        return db.rows("SELECT * FROM malformed WHERE site = ? AND appliance = ? "
                       "ORDER BY id DESC LIMIT ?", (site, name, limit))
    return db.rows("SELECT * FROM malformed ORDER BY id DESC LIMIT ?", (limit,))


def collectors(db: Database) -> list[dict[str, Any]]:
    return db.rows("SELECT * FROM collectors ORDER BY collector")


def malformed_total(db: Database) -> int:
    return int(db.scalar("SELECT coalesce(sum(malformed), 0) FROM collectors") or 0)
