"""Writing appliance messages into the fleet database, a batch per transaction.

`parse` turns one MQTT message into a `Parsed` record or raises `Malformed` (counted and
kept as a sample, never a crash); `write_batch` stores many of them in one transaction:

- events: inserted with ON CONFLICT DO NOTHING on (site, appliance, id); only the rows that
  were really new (RETURNING) add to the per-minute and per-hour rollups, so a redelivery or
  a resend after an outage is never counted twice, even with several collectors;
- stats: the same, adding allowed / denied / packets to the rollups;
- state and inventory (retained, seen by every collector): idempotent upserts, the
  inventory replaced only by a newer one.

Rows are written in a fixed order (rollups and appliances sorted by key) so two collectors
writing one PostgreSQL database cannot deadlock on each other.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from appliance.common.bounded import BoundsError, load_json
from appliance.contract.broker import split_topic
from appliance.fleet.client import MAX_MESSAGE_BYTES

if TYPE_CHECKING:
    from appliance.fleet.db import Database

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_MAX_TEXT = 512
_MAX_INT = 2**62
CHUNK = 400          # rows per INSERT statement (SQLite allows 32766 parameters)


class Malformed(Exception):
    """A message that cannot be stored: why, and where it came from."""

    def __init__(self, error: str, site: str | None = None,
                 appliance: str | None = None) -> None:
        super().__init__(error)
        self.error, self.site, self.appliance = error, site, appliance


@dataclass
class Parsed:
    site: str
    appliance: str
    leaf: str
    body: dict[str, Any]
    raw: str


@dataclass
class Result:
    events_new: int = 0
    events_duplicate: int = 0
    malformed: int = 0
    new_ids: list[tuple[str, str, str]] = field(default_factory=list)


def _text(value: Any, limit: int = _MAX_TEXT) -> str | None:
    if value is None:
        return None
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return text[:limit].replace("\x00", "")      # PostgreSQL text cannot hold NUL


def _int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return max(-_MAX_INT, min(_MAX_INT, int(value)))


def _time(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) and 0 <= value < 1e11 else None


def parse(topic_name: str, payload: bytes) -> Parsed | None:
    """A message the collector stores; None for topics it does not keep (cmd, response)."""
    parts = split_topic(topic_name)
    if parts is None:
        raise Malformed("topic outside wardtap/v1/{site}/{appliance}/...")
    site, appliance, leaf = parts
    if not (_ID.match(site) and _ID.match(appliance)):
        raise Malformed("bad site or appliance id in the topic")
    if leaf not in ("events", "stats", "state", "inventory"):
        return None
    if not payload:
        if leaf in ("state", "inventory"):
            return None                    # a retained message being cleared
        raise Malformed(f"empty {leaf} message", site, appliance)
    try:
        body = load_json(payload, max_bytes=MAX_MESSAGE_BYTES)
    except BoundsError as exc:           # too big, too deep, not JSON, not UTF-8
        raise Malformed(f"{leaf}: {exc}", site, appliance) from None
    if not isinstance(body, dict):
        raise Malformed(f"{leaf}: not a JSON object", site, appliance)
    if leaf == "events":
        events = body.get("events")
        if not isinstance(events, list) or not all(isinstance(e, dict) for e in events):
            raise Malformed("events: \"events\" must be a list of objects", site, appliance)
        if not all(isinstance(e.get("id"), str) and 0 < len(e["id"]) <= 128
                   and "\x00" not in e["id"] for e in events):
            raise Malformed("events: every event needs a string \"id\"", site, appliance)
    elif leaf == "stats" and not (isinstance(body.get("id"), str) and len(body["id"]) <= 128
                                  and "\x00" not in body["id"]):
        raise Malformed("stats: no string \"id\"", site, appliance)
    elif leaf == "inventory" and not isinstance(body.get("devices", []), list):
        raise Malformed("inventory: \"devices\" must be a list", site, appliance)
    return Parsed(site, appliance, leaf, body, payload.decode("utf-8"))


def _obj(body: dict[str, Any], key: str) -> dict[str, Any]:
    value = body.get(key)
    return value if isinstance(value, dict) else {}


def _list(body: dict[str, Any], key: str) -> list[Any]:
    value = body.get(key)
    return value if isinstance(value, list) else []


def _values(n_rows: int, n_cols: int) -> str:
    row = "(" + ", ".join("?" * n_cols) + ")"
    return ", ".join([row] * n_rows)


class _Rollup:
    """Counts to add per (table, site, appliance, bucket), written sorted."""

    COLS = ("events", "violations", "allowed", "denied", "packets")

    def __init__(self) -> None:
        self.add: dict[tuple[str, str, int], list[int]] = defaultdict(lambda: [0] * 5)

    def count(self, site: str, appliance: str, ts: float | None, **values: int) -> None:
        if ts is None:
            return
        minute = int(ts // 60)
        for key in ((site, appliance, minute),):
            row = self.add[key]
            for i, col in enumerate(self.COLS):
                row[i] += values.get(col, 0)

    def write(self, db: Database) -> None:
        hours: dict[tuple[str, str, int], list[int]] = defaultdict(lambda: [0] * 5)
        for (site, appliance, minute), row in self.add.items():
            h = hours[(site, appliance, minute // 60)]
            for i in range(5):
                h[i] += row[i]
        for table, rows in (("timeline_minute", self.add), ("timeline_hour", hours)):
            items = sorted(rows.items())
            sets = ", ".join(f"{c} = {table}.{c} + excluded.{c}" for c in self.COLS)
            for i in range(0, len(items), CHUNK):
                chunk = items[i:i + CHUNK]
                params = [v for key, row in chunk for v in (*key, *row)]
                db.execute(f"INSERT INTO {table} (site, appliance, bucket, "
                           f"{', '.join(self.COLS)}) VALUES {_values(len(chunk), 8)} "
                           f"ON CONFLICT (site, appliance, bucket) DO UPDATE SET {sets}",
                           params)


def _event_row(m: Parsed, e: dict[str, Any], now: float, collector: str) -> tuple[Any, ...]:
    return (m.site, m.appliance, e["id"], _time(e.get("ts")), _text(e.get("type"), 64),
            _int(e.get("count")) or 1, _text(e.get("reason"), 64), _text(e.get("rule"), 128),
            _text(e.get("src"), 64), _text(e.get("dst"), 64), _int(e.get("proto")),
            _int(e.get("dport", e.get("icmp_type"))), _text(e.get("smac"), 32),
            json.dumps(e, separators=(",", ":")), now, collector)


_EVENT_COLS = ("site, appliance, id, ts, type, count, reason, rule, src, dst, proto, dport, "
               "smac, payload, received, collector")


def write_batch(db: Database, messages: list[Parsed], collector: str,
                now: float | None = None) -> Result:
    """Store `messages` in one transaction (the caller opens it); what was new."""
    now = time.time() if now is None else now
    result = Result()
    rollup = _Rollup()
    appliance_updates: dict[tuple[str, str], dict[str, Any]] = {}
    by_id: dict[tuple[str, str, str], tuple[Parsed, dict[str, Any]]] = {}
    stats_msgs: list[Parsed] = []
    for m in sorted(messages, key=lambda m: (m.site, m.appliance)):
        key = (m.site, m.appliance)
        if m.leaf == "events":
            for e in m.body["events"]:
                by_id.setdefault((m.site, m.appliance, e["id"]), (m, e))
            result.events_duplicate += len(m.body["events"])
            appliance_updates.setdefault(key, {})["last_seen"] = now
        elif m.leaf == "stats":
            stats_msgs.append(m)
        elif m.leaf == "state":
            appliance_updates.setdefault(key, {}).update(_state_values(m, now))
        elif m.leaf == "inventory":
            _write_inventory(db, m, now)
    rows = [_event_row(m, e, now, collector) for _, (m, e) in sorted(by_id.items())]
    for i in range(0, len(rows), CHUNK):
        chunk = rows[i:i + CHUNK]
        new = db.query(f"INSERT INTO events ({_EVENT_COLS}) VALUES {_values(len(chunk), 16)} "
                       "ON CONFLICT (site, appliance, id) DO NOTHING "
                       "RETURNING site, appliance, id", [v for r in chunk for v in r])
        for site, appliance, event_id in new:
            _, e = by_id[(site, appliance, event_id)]
            violation = e.get("type") == "violation"
            rollup.count(site, appliance, _time(e.get("ts")), events=1,
                         violations=(_int(e.get("count")) or 1) if violation else 0)
            result.new_ids.append((site, appliance, event_id))
    result.events_new = len(result.new_ids)
    result.events_duplicate -= result.events_new
    for m in stats_msgs:
        body = m.body
        new_stats = db.query("INSERT INTO stats (site, appliance, id, ts, payload, received) "
                             "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (site, appliance, id) "
                             "DO NOTHING RETURNING id",
                             (m.site, m.appliance, body["id"], _time(body.get("ts")), m.raw,
                              now))
        counters = _obj(body, "counters")
        if new_stats:
            rollup.count(m.site, m.appliance, _time(body.get("ts")),
                         allowed=_int(counters.get("allowed")) or 0,
                         denied=_int(counters.get("denied")) or 0,
                         packets=_int(counters.get("packets")) or 0)
        spool = _obj(body, "spool")
        appliance_updates.setdefault((m.site, m.appliance), {}).update(
            stats=m.raw, stats_ts=_time(body.get("ts")), last_seen=now,
            spool_depth=_int(spool.get("depth")),
            spool_disk=int(bool(spool.get("disk_full") or spool.get("low_disk"))))
    rollup.write(db)
    for (site, appliance), values in sorted(appliance_updates.items()):
        _upsert_appliance(db, site, appliance, values)
    return result


def _state_values(m: Parsed, now: float) -> dict[str, Any]:
    body = m.body
    policy = _obj(body, "policy")
    spool = _obj(body, "spool")
    values: dict[str, Any] = {"status": _text(body.get("status"), 32), "state": m.raw,
                              "version": _text(body.get("version"), 64),
                              "state_ts": _time(body.get("ts"))}
    if body.get("status") != "online" and _int(spool.get("depth")) is not None:
        values["spool_depth"] = _int(spool.get("depth"))       # what a clean stop left
    if body.get("status") == "online":
        values.update(mode=_text(body.get("mode"), 32), policy_name=_text(policy.get("name")),
                      policy_version=_int(policy.get("version")),
                      policy_sha256=_text(policy.get("sha256"), 64),
                      started=_time(body.get("started")), last_seen=now,
                      spool_depth=_int(spool.get("depth")),
                      spool_overflow=int(bool(spool.get("overflow"))),
                      spool_disk=int(bool(spool.get("disk_full") or spool.get("low_disk"))))
    return values


def _upsert_appliance(db: Database, site: str, appliance: str,
                      values: dict[str, Any]) -> None:
    cols = list(values)
    sets = ", ".join(f"{c} = excluded.{c}" for c in cols if c != "last_seen")
    if "last_seen" in values:
        latest = ("CASE WHEN appliances.last_seen IS NULL OR appliances.last_seen < "
                  "excluded.last_seen THEN excluded.last_seen ELSE appliances.last_seen END")
        sets = ", ".join(x for x in (sets, f"last_seen = {latest}") if x)
    db.execute(f"INSERT INTO appliances (site, appliance, {', '.join(cols)}) VALUES "
               f"({', '.join('?' * (len(cols) + 2))}) ON CONFLICT (site, appliance) "
               f"DO UPDATE SET {sets}", (site, appliance, *values.values()))


def device_search_text(d: dict[str, Any]) -> str:
    """What a fleet-wide device search matches: names, MAC, addresses, vendor, class."""
    names = _list(d, "names")
    parts = [d.get("mac"), d.get("ipv4"), d.get("ipv6"), d.get("vendor"), d.get("class"),
             *names, d.get("make"), d.get("model")]
    return " ".join(str(p) for p in parts if p).lower()[:2048]


def _write_inventory(db: Database, m: Parsed, now: float) -> None:
    ts = _time(m.body.get("ts")) or now
    newer = db.query("INSERT INTO inventory (site, appliance, ts, count, received) "
                     "VALUES (?, ?, ?, ?, ?) ON CONFLICT (site, appliance) DO UPDATE SET "
                     "ts = excluded.ts, count = excluded.count, received = excluded.received "
                     "WHERE inventory.ts IS NULL OR inventory.ts < excluded.ts "
                     "RETURNING site", (m.site, m.appliance, ts,
                                        _int(m.body.get("count")), now))
    if not newer:
        return                              # another collector stored this one (or newer)
    db.execute("DELETE FROM devices WHERE site = ? AND appliance = ?", (m.site, m.appliance))
    rows: dict[str, tuple[Any, ...]] = {}
    for d in m.body.get("devices", []):
        mac = _text(d.get("mac"), 32) if isinstance(d, dict) else None
        if not isinstance(d, dict) or not isinstance(d.get("mac"), str) or not mac:
            continue
        names = _list(d, "names")
        confidence = d.get("class_confidence", d.get("confidence"))
        rows[mac] = (
            m.site, m.appliance, mac, _text(d.get("vendor")), _text(d.get("class")),
            float(confidence) if isinstance(confidence, (int, float)) else None,
            _text(json.dumps([str(n) for n in names][:32]), 2048), _text(d.get("ipv4"), 64),
            _text(d.get("ipv6"), 64), _int(d.get("vlan")), _time(d.get("first_seen")),
            _time(d.get("last_seen")), _int(d.get("violations")), device_search_text(d),
            json.dumps(d, separators=(",", ":")))
    values = sorted(rows.values())
    for i in range(0, len(values), CHUNK):
        chunk = values[i:i + CHUNK]
        db.execute("INSERT INTO devices (site, appliance, mac, vendor, class, confidence, "
                   "names, ipv4, ipv6, vlan, first_seen, last_seen, violations, search, "
                   f"payload) VALUES {_values(len(chunk), 15)}",
                   [v for r in chunk for v in r])


def record_malformed(db: Database, collector: str, topic_name: str, exc: Malformed,
                     payload: bytes, now: float | None = None) -> None:
    """Count a malformed message (collector and appliance) and keep a short sample."""
    now = time.time() if now is None else now
    db.execute("INSERT INTO malformed (received, collector, topic, site, appliance, error, "
               "sample) VALUES (?, ?, ?, ?, ?, ?, ?)",
               (now, collector, topic_name[:256], exc.site, exc.appliance, exc.error[:256],
                payload[:200].decode("utf-8", "replace")))
    if exc.site and exc.appliance:
        db.execute("INSERT INTO appliances (site, appliance, malformed) VALUES (?, ?, 1) "
                   "ON CONFLICT (site, appliance) DO UPDATE SET "
                   "malformed = appliances.malformed + 1", (exc.site, exc.appliance))


def record_collector(db: Database, collector: str, messages: int, result: Result,
                     now: float) -> None:
    db.execute("INSERT INTO collectors (collector, messages, events_new, events_duplicate, "
               "malformed, last_message) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (collector) "
               "DO UPDATE SET messages = collectors.messages + excluded.messages, "
               "events_new = collectors.events_new + excluded.events_new, "
               "events_duplicate = collectors.events_duplicate + excluded.events_duplicate, "
               "malformed = collectors.malformed + excluded.malformed, "
               "last_message = excluded.last_message",
               (collector, messages, result.events_new, result.events_duplicate,
                result.malformed, now))
