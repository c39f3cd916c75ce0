"""The inventory in the store (appliance.outputs.store, migrations v3 and v5): devices,
their addresses, evidence, identity, data flows and advisory matches, the history of
inventory events, and imported CSAF advisories."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from appliance.errors import StoreError
from appliance.inventory.advisories import Advisory, AdvisoryError, parse_csaf
from appliance.inventory.classes import UNKNOWN, ClassRules
from appliance.inventory.dataflows import DataFlows
from appliance.inventory.devices import (
    MAX_EVIDENCE,
    Device,
    Inventory,
    brief_advisories,
    brief_flows,
)

if TYPE_CHECKING:
    from appliance.outputs.store import Store

COUNTERS = ("packets_sent", "bytes_sent", "packets_received", "bytes_received")
HISTORY_EVENTS = ("inventory_new_device", "device_classified", "device_name_changed",
                  "patient_data_unencrypted", "advisory_match")


def load_inventory(inv: Inventory, store: Store) -> None:
    db = store.db
    if not db["inventory"].exists():
        return
    for row in db.query("SELECT * FROM inventory"):
        dev = Device(row["mac"], row["first_seen"] or 0.0, row["last_seen"] or 0.0,
                     row["vendor"], False, bool(row["randomized"]), row["vlan"],
                     bool(row["router"]))
        dev.cls = row["class"] or UNKNOWN
        dev.confidence = row["confidence"] or 0.0
        dev.reasons = json.loads(row["reasons"] or "{}")
        dev.base = {k: int(row[k] or 0) for k in COUNTERS}
        dev.peers = {ip: [p[0], p[1], p[2], set(p[3])]
                     for ip, p in json.loads(row["peers"] or "{}").items()}
        dev.identity = json.loads(row.get("identity") or "null")
        dev.roles = json.loads(row.get("roles") or "[]")
        dev.flows = DataFlows.from_list(json.loads(row.get("data_flows") or "[]"))
        dev.advisories = json.loads(row.get("advisories") or "[]")
        dev.stored = True
        dev.dirty = False
        inv.devices[dev.mac] = dev
    for row in db.query("SELECT * FROM evidence"):
        found = inv.devices.get(row["mac"])
        if found is not None and len(found.evidence) < MAX_EVIDENCE:
            found.evidence[(row["key"], row["value"])] = [
                row["source"], row["scope"], row["first_seen"], row["last_seen"],
                row["count"], False]
    for row in db.query("SELECT * FROM inventory_ips"):
        found = inv.devices.get(row["mac"])
        if found is not None:
            found.ips[row["ip"]] = [row["first_seen"], row["last_seen"], row["source"]]
    for dev in inv.devices.values():
        dev.known_names = {k: set(v) for k, v in dev.name_values().items()}


def save_inventory(inv: Inventory, store: Store, events: Sequence[dict[str, Any]] = ()) -> int:
    """Write changed devices (and the events' history) in one transaction."""
    dirty = [d for d in inv.devices.values() if d.dirty]
    if not dirty and not events:
        return 0
    now = time.time()
    rows, ev_rows, ip_rows = [], [], []
    for dev in dirty:
        total = {k: dev.base[k] + dev.run[k] for k in COUNTERS}
        ident = dev.identity or {}
        rows.append((dev.mac, dev.vendor, int(dev.randomized), dev.cls, dev.confidence,
                     json.dumps(dev.reasons), json.dumps(dev.names()), dev.vlan,
                     int(dev.router), dev.first_seen, dev.last_seen,
                     total["packets_sent"], total["bytes_sent"],
                     total["packets_received"], total["bytes_received"],
                     json.dumps({ip: [p[0], p[1], p[2], sorted(p[3])]
                                 for ip, p in dev.peers.items()}), now,
                     ident.get("make"), ident.get("model"), ident.get("software_version"),
                     json.dumps(dev.identity), json.dumps(dev.roles),
                     json.dumps(dev.flows.as_list()),
                     int(dev.flows.unencrypted_patient_data), json.dumps(dev.advisories)))
        for (key, value), e in dev.evidence.items():
            if e[5]:
                ev_rows.append((dev.mac, key, value, e[0], e[1], e[2], e[3], e[4]))
        ip_rows += [(dev.mac, ip, v[2], v[0], v[1]) for ip, v in dev.ips.items()]
    history = [(e["ts"], e["mac"], e["type"], e.get("class"), e.get("confidence"),
                json.dumps({k: v for k, v in e.items()
                            if k not in ("ts", "mac", "type", "class", "confidence")}))
               for e in events if e.get("type") in HISTORY_EVENTS]
    conn = store.db.conn
    try:
        with store.db.atomic():
            conn.executemany(
                "INSERT OR REPLACE INTO inventory (mac, vendor, randomized, class, "
                "confidence, reasons, names, vlan, router, first_seen, last_seen, "
                "packets_sent, bytes_sent, packets_received, bytes_received, peers, "
                "updated, make, model, software_version, identity, roles, data_flows, "
                "unencrypted_patient_data, advisories) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
            if any(d.router for d in dirty):
                # a router keeps only link-local evidence and addresses (see _become_router)
                for dev in (d for d in dirty if d.router):
                    conn.execute("DELETE FROM evidence WHERE mac = ? AND scope != 'link'",
                                 (dev.mac,))
                    conn.execute("DELETE FROM inventory_ips WHERE mac = ?", (dev.mac,))
            conn.executemany(
                "INSERT INTO evidence (mac, key, value, source, scope, first_seen, "
                "last_seen, count) VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(mac, key, value) "
                "DO UPDATE SET last_seen = excluded.last_seen, count = excluded.count",
                ev_rows)
            conn.executemany(
                "INSERT INTO inventory_ips (mac, ip, source, first_seen, last_seen) "
                "VALUES (?,?,?,?,?) ON CONFLICT(mac, ip) DO UPDATE SET "
                "last_seen = max(inventory_ips.last_seen, excluded.last_seen)", ip_rows)
            conn.executemany(
                "INSERT INTO inventory_history (ts, mac, event, class, confidence, detail) "
                "VALUES (?,?,?,?,?,?)", history)
    except Exception as exc:     # sqlite3 errors: one line, earlier data intact
        raise StoreError(f"{store.path}: inventory write failed: {exc}") from None
    for dev in dirty:
        dev.dirty = False
        dev.stored = True
        for e in dev.evidence.values():
            e[5] = False
    return len(dirty)


# --- advisories ------------------------------------------------------------------------------


def advisories_stamp(store: Store) -> tuple[Any, ...]:
    """Changes when advisories are imported (a running daemon rematches then)."""
    if not store.db["advisories"].exists():
        return (0, None)
    row = store.db.execute("SELECT count(*), max(imported) FROM advisories").fetchone()
    return tuple(row)


def stored_advisories(store: Store) -> list[Advisory]:
    out: list[Advisory] = []
    if not store.db["advisories"].exists():
        return out
    for row in store.db.query("SELECT id, source, document FROM advisories ORDER BY id"):
        try:
            out.append(parse_csaf(json.loads(row["document"]), row["source"] or row["id"]))
        except (ValueError, AdvisoryError):
            continue                     # checked at import; a damaged row is skipped
    return out


def load_advisories(inv: Inventory, store: Store) -> None:
    stamp = advisories_stamp(store)
    if stamp != inv.advisories_stamp:
        inv.set_advisories(stored_advisories(store), stamp)


def import_advisory(store: Store, advisory: Advisory, text: str, source: str) -> bool:
    """Store one advisory; True when it is new or a newer release of one already stored."""
    db = store.db
    old = db.execute("SELECT released FROM advisories WHERE id = ?",
                     (advisory.id,)).fetchone()
    if old is not None and (old[0] or "") >= advisory.released:
        return False
    try:
        with db.atomic():
            db.execute("INSERT OR REPLACE INTO advisories (id, title, released, url, source, "
                       "document, imported) VALUES (?,?,?,?,?,?,?)",
                       (advisory.id, advisory.title, advisory.released, advisory.url, source,
                        text, time.time()))
    except Exception as exc:
        raise StoreError(f"{store.path}: advisory not stored: {exc}") from None
    return True


class _NoRules(ClassRules):
    """Reading the store needs no rule file."""

    def __init__(self) -> None:
        super().__init__([], {UNKNOWN: ""})


def inventory_list(store: Store, brief: bool = False) -> list[dict[str, Any]]:
    """The stored inventory as JSON-ready dicts, oldest device first.

    For the retained MQTT inventory message (appliance.outputs.mqtt) `brief=True` leaves out
    the evidence lists and keeps the names of the rules behind each class.
    """
    inv = Inventory(_NoRules())
    load_inventory(inv, store)
    devices = inv.as_list()
    return [brief_dict(d) for d in devices] if brief else devices


def brief_dict(device: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in device.items() if k not in ("evidence", "contradicting",
                                                         "identity")}
    out["class_reasons"] = [r["rule"] for r in device.get("class_reasons", [])]
    out["peers"] = device["peers"][:8]
    out["data_flows"] = brief_flows(device.get("data_flows") or [])
    out["advisories"] = brief_advisories(device.get("advisories") or [])
    return out
