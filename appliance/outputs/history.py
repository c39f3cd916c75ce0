"""Reading the store back: violations, flows and a timeline of events, filtered.

`wardtap violations`, `wardtap flows` and `wardtap events` (appliance.cli.history) read the
store the daemon or `wardtap replay --db` wrote, read-only, so they can run beside a
daemon that is writing it. Filters: a time range, a device (a MAC in any form, or an
address), a rule, a reason, an event type. Times are the packets' times: a replayed
capture's violations carry the capture's times.
"""

from __future__ import annotations

import ipaddress
import json
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from appliance.errors import StoreError
from appliance.outputs.store import SCHEMA_VERSION

EVENT_TYPES = ("violation", "new_device", "device_classified", "command", "run")


@dataclass
class Filters:
    since: float | None = None
    until: float | None = None
    device: str | None = None          # a MAC (lower-case colon form) or an IP address
    rule: str | None = None
    reason: str | None = None
    types: list[str] = field(default_factory=list)
    verdict: str | None = None
    limit: int = 0                     # 0: all; else the most recent `limit`


@contextmanager
def open_store(path: str) -> Iterator[sqlite3.Connection]:
    """The store at `path`, read-only; StoreError when it is missing, not a store, or too
    old or new for this wardtap."""
    if not os.path.exists(path):
        raise StoreError(f"{path}: no such store (give --db, or write one with `wardtap "
                         "replay --db` or the daemon's [store] path)")
    try:
        conn = sqlite3.connect(f"file:{os.path.abspath(path)}?mode=ro", uri=True, timeout=10)
    except sqlite3.Error as exc:
        raise StoreError(f"{path}: cannot open the store: {exc}") from None
    try:
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{path}: not a wardtap store ({exc})") from None
        if version == 0:
            raise StoreError(f"{path}: not a wardtap store (no wardtap tables)")
        if version > SCHEMA_VERSION:
            raise StoreError(f"{path}: store schema {version} is newer than this wardtap "
                             f"({SCHEMA_VERSION}); upgrade wardtap")
        if version < SCHEMA_VERSION:
            raise StoreError(f"{path}: store schema {version} is older than this wardtap's "
                             f"({SCHEMA_VERSION}); the daemon or `wardtap replay --db` "
                             "upgrades it (a copy is kept)")
        conn.row_factory = sqlite3.Row
        yield conn
    finally:
        conn.close()


def _device_addresses(conn: sqlite3.Connection, device: str) -> tuple[str | None, set[str]]:
    """(MAC or None, the addresses it used) for a --device given as a MAC or an address."""
    if ":" in device and len(device) == 17 and device.count(":") == 5:
        ips = {r[0] for r in conn.execute("SELECT ip FROM inventory_ips WHERE mac = ?",
                                          (device,))}
        for row in conn.execute("SELECT ipv4, ipv6 FROM devices WHERE mac = ?", (device,)):
            ips |= {ip for ip in row if ip}
        return device, ips
    ip = str(ipaddress.ip_address(device))
    row = conn.execute("SELECT mac FROM inventory_ips WHERE ip = ? ORDER BY last_seen DESC",
                       (ip,)).fetchone()
    return (row[0] if row else None), {ip}


def _window(filters: Filters, column: str) -> tuple[list[str], list[Any]]:
    where, args = [], []
    if filters.since is not None:
        where.append(f"{column} >= ?")
        args.append(filters.since)
    if filters.until is not None:
        where.append(f"{column} <= ?")
        args.append(filters.until)
    return where, args


def _limited(rows: list[dict[str, Any]], limit: int, key: str) -> list[dict[str, Any]]:
    rows.sort(key=lambda r: (r.get(key) or 0))
    return rows[-limit:] if limit else rows


def _names(conn: sqlite3.Connection) -> dict[str, dict[str, Any]]:
    """MAC -> its class and first name in the inventory (for people reading violations)."""
    out = {}
    for mac, cls, names in conn.execute("SELECT mac, class, names FROM inventory"):
        try:
            first = (json.loads(names) or [None])[0] if names else None
        except ValueError:
            first = None
        out[mac] = {"class": cls, "name": first}
    return out


def violations(conn: sqlite3.Connection, filters: Filters) -> list[dict[str, Any]]:
    where, args = _window(filters, "ts")
    if filters.device:
        mac, ips = _device_addresses(conn, filters.device)
        parts = []
        if mac:
            parts.append("smac = ? OR dmac = ?")
            args += [mac, mac]
        if ips:
            marks = ", ".join("?" * len(ips))
            parts.append(f"src IN ({marks}) OR dst IN ({marks})")
            args += [*ips, *ips]
        where.append("(" + " OR ".join(parts) + ")")
    if filters.rule:
        where.append("nearest_rule = ?")
        args.append(filters.rule)
    if filters.reason:
        where.append("reason = ?")
        args.append(filters.reason)
    sql = ("SELECT ts, src, dst, proto, sport, dport, icmp_type, vlan, reason, nearest_rule, "
           "smac, dmac, run FROM violations"
           + (" WHERE " + " AND ".join(where) if where else "")
           + " ORDER BY ts DESC" + (f" LIMIT {int(filters.limit)}" if filters.limit else ""))
    names = _names(conn)
    rows = []
    for r in conn.execute(sql, args):
        row = dict(r)
        who = names.get(row["smac"] or "", {})
        row["device_class"] = who.get("class")
        row["device_name"] = who.get("name")
        rows.append(row)
    return _limited(rows, filters.limit, "ts")


def flows(conn: sqlite3.Connection, filters: Filters) -> list[dict[str, Any]]:
    where, args = _window(filters, "last")
    if filters.device:
        _, ips = _device_addresses(conn, filters.device)
        if not ips:
            return []
        marks = ", ".join("?" * len(ips))
        where.append(f"(src IN ({marks}) OR dst IN ({marks}))")
        args += [*ips, *ips]
    if filters.rule:
        where.append("rule = ?")
        args.append(filters.rule)
    if filters.verdict:
        where.append("verdict = ?")
        args.append(filters.verdict)
    sql = ("SELECT first, last, src, dst, proto, sport, dport, icmp_type, vlan, packets, "
           "bytes, verdict, rule, \"end\", run FROM flows"
           + (" WHERE " + " AND ".join(where) if where else "")
           + " ORDER BY last DESC" + (f" LIMIT {int(filters.limit)}" if filters.limit else ""))
    return _limited([dict(r) for r in conn.execute(sql, args)], filters.limit, "last")


def events(conn: sqlite3.Connection, filters: Filters) -> list[dict[str, Any]]:
    """One timeline: violations, devices that appeared or changed class, commands (the
    audit log), runs started and finished. Each row: ts, type, device, summary, detail."""
    types = set(filters.types or EVENT_TYPES)
    out: list[dict[str, Any]] = []
    if "violation" in types:
        for v in violations(conn, Filters(filters.since, filters.until, filters.device,
                                          filters.rule, filters.reason, limit=filters.limit)):
            out.append({"ts": v["ts"], "type": "violation", "device": v["smac"] or v["src"],
                        "summary": f"{v['src']} -> {v['dst']} {_service(v)} {v['reason']}",
                        "detail": v})
    if filters.rule or filters.reason:          # only violations carry those
        return _limited(out, filters.limit, "ts")
    mac = None
    if filters.device:
        mac, _ = _device_addresses(conn, filters.device)
    if types & {"new_device", "device_classified"}:
        where, args = _window(filters, "ts")
        if filters.device:
            where.append("mac = ?")
            args.append(mac or "")
        for r in conn.execute("SELECT ts, mac, event, class, confidence, detail FROM "
                              "inventory_history" + (" WHERE " + " AND ".join(where)
                                                     if where else ""), args):
            kind = "new_device" if r["event"] == "inventory_new_device" else \
                "device_classified"
            if kind not in types:
                continue
            detail = _json(r["detail"])
            summary = (f"{r['mac']} appeared ({detail.get('vendor') or 'unknown vendor'}"
                       f"{', ' + detail['ip'] if detail.get('ip') else ''})"
                       if kind == "new_device" else
                       f"{r['mac']} classified: {r['class']} (confidence "
                       f"{r['confidence'] or 0:.2f})")
            out.append({"ts": r["ts"], "type": kind, "device": r["mac"], "summary": summary,
                        "detail": detail})
    if "command" in types and not filters.device:
        where, args = _window(filters, "ts")
        for r in conn.execute("SELECT ts, source, command, outcome, reason, issuer, detail "
                              "FROM audit" + (" WHERE " + " AND ".join(where) if where else ""),
                              args):
            who = f" by {r['issuer']}" if r["issuer"] else ""
            why = f": {r['reason']}" if r["reason"] else ""
            out.append({"ts": r["ts"], "type": "command", "device": None,
                        "summary": f"{r['command']} from {r['source']}{who}: "
                                   f"{r['outcome']}{why}", "detail": dict(r)})
    if "run" in types and not filters.device:
        where, args = _window(filters, "started")
        for r in conn.execute("SELECT * FROM runs" + (" WHERE " + " AND ".join(where)
                                                       if where else ""), args):
            policy = f"{r['policy_name']} v{r['policy_version']}" if r["policy_name"] else \
                "no policy"
            out.append({"ts": r["started"], "type": "run", "device": None,
                        "summary": f"{r['kind']} in {r['mode']} mode, {policy}: "
                                   f"{r['packets'] or 0:,} packets, {r['denied'] or 0:,} "
                                   f"denied ({', '.join((r['sources'] or '').splitlines())})",
                        "detail": dict(r)})
    return _limited(out, filters.limit, "ts")


def _json(text: str | None) -> dict[str, Any]:
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


PROTOCOLS = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6", 132: "sctp"}


def _service(row: dict[str, Any]) -> str:
    proto = row.get("proto")
    name = PROTOCOLS.get(proto, str(proto)) if isinstance(proto, int) else str(proto)
    if row.get("dport") is not None:
        return f"{name}/{row['dport']}"
    if row.get("icmp_type") is not None:
        return f"{name} type {row['icmp_type']}"
    return name


service = _service
