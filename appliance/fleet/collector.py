"""`wardtap fleet collect`: keep the fleet's state in SQLite, scaled out by shared subscription.

Events and stats (the volume) arrive through MQTT 5 shared subscriptions,
`$share/{group}/wardtap/v1/+/+/events`: the broker hands each message to exactly one of the
collectors in the group, so several collectors split the load, each a disjoint share.
State and inventory (retained, a message per appliance and change) are subscribed normally
by every collector, since shared subscriptions get no retained messages.

Each collector uses a persistent session (clean start off, a session expiry), so the broker
keeps its share while it is away; a message is acknowledged only after it is committed to
SQLite (manual acks), so a collector that dies loses nothing. Events are keyed by their id,
so redeliveries and the appliances' resends after an outage are counted once (and the
duplicates counted as such). Several collectors may write one database file (SQLite WAL)
or each its own.
"""

from __future__ import annotations

import json
import logging
import socket
import sqlite3
import threading
import time
from typing import Any

from appliance.common.bounded import BoundsError, load_json
from appliance.common.text import shown
from appliance.contract.broker import ROOT, BrokerSettings, make_client, split_topic, start
from appliance.errors import WardtapError
from appliance.fleet.client import MAX_MESSAGE_BYTES

log = logging.getLogger("wardtap.collector")

SCHEMA = """
CREATE TABLE IF NOT EXISTS appliances (
    site TEXT NOT NULL, appliance TEXT NOT NULL, status TEXT, mode TEXT, policy_name TEXT,
    policy_version INTEGER, policy_sha256 TEXT, version TEXT, started REAL, last_seen REAL,
    spool_depth INTEGER, spool_overflow INTEGER, state TEXT, stats TEXT,
    PRIMARY KEY (site, appliance));
CREATE TABLE IF NOT EXISTS events (
    id TEXT PRIMARY KEY, site TEXT NOT NULL, appliance TEXT NOT NULL, ts REAL, type TEXT,
    count INTEGER, payload TEXT NOT NULL, received REAL NOT NULL, collector TEXT);
CREATE INDEX IF NOT EXISTS events_ts ON events (ts);
CREATE INDEX IF NOT EXISTS events_appliance ON events (site, appliance, type, received);
CREATE TABLE IF NOT EXISTS stats (
    id TEXT PRIMARY KEY, site TEXT NOT NULL, appliance TEXT NOT NULL, ts REAL,
    payload TEXT NOT NULL, received REAL NOT NULL);
CREATE TABLE IF NOT EXISTS inventory (
    site TEXT NOT NULL, appliance TEXT NOT NULL, ts REAL, count INTEGER, payload TEXT,
    PRIMARY KEY (site, appliance));
CREATE TABLE IF NOT EXISTS collectors (
    collector TEXT PRIMARY KEY, messages INTEGER NOT NULL DEFAULT 0,
    events_new INTEGER NOT NULL DEFAULT 0, events_duplicate INTEGER NOT NULL DEFAULT 0,
    last_message REAL);
"""


def open_db(path: str) -> sqlite3.Connection:
    try:
        conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(SCHEMA)
    except sqlite3.Error as exc:
        raise WardtapError(f"{path}: cannot open the fleet database: {exc}") from None
    return conn


class Collector:
    def __init__(self, db_path: str, settings: BrokerSettings, group: str = "wardtap",
                 collector_id: str | None = None, session_expiry: int = 86400) -> None:
        self.db_path = db_path
        self.db = open_db(db_path)
        self.lock = threading.Lock()
        self.settings = settings
        self.group = group
        self.id = collector_id or f"wardtap-collector-{socket.gethostname()}"
        self.session_expiry = session_expiry
        self.client = make_client(settings, self.id, manual_ack=True)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.counts = {"messages": 0, "events_new": 0, "events_duplicate": 0}
        self._sub_mids: set[int] = set()
        self.client.on_subscribe = self._on_subscribe

    def start(self) -> None:
        start(self.client, self.settings, clean_start=False,
              session_expiry=self.session_expiry)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        with self.lock:
            self.db.close()

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any,
                    props: Any) -> None:
        if reason.is_failure:
            log.error("collector: the broker refused the connection: %s", reason)
            return
        self.connected.set()
        shared = f"$share/{self.group}/{ROOT}/+/+"
        subs = [(f"{shared}/events", 1), (f"{shared}/stats", 1),
                (f"{ROOT}/+/+/state", 1), (f"{ROOT}/+/+/inventory", 1)]
        rc, mid = client.subscribe(subs)
        self._sub_mids.add(mid)
        log.info("collector %s connected (session present: %s)", self.id,
                 getattr(flags, "session_present", None))

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, codes: Any,
                      props: Any) -> None:
        failed = [str(c) for c in codes if getattr(c, "is_failure", False)]
        if failed:
            log.error("collector: subscriptions refused: %s", ", ".join(failed))
        if mid in self._sub_mids:
            self.subscribed.set()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        try:
            self.store(msg.topic, bytes(msg.payload))
        except sqlite3.Error as exc:
            # not acknowledged: the broker delivers it again after a reconnection
            log.error("collector: cannot store a message (%s); not acknowledged", exc)
            return
        except BoundsError as exc:   # an unusable message is said so and acknowledged
            log.warning("collector: unreadable message on %s: %s", shown(msg.topic), exc)
        except Exception as exc:  # noqa: BLE001  (a bad message is logged and acknowledged)
            log.error("collector: unreadable message on %s: %s: %s", shown(msg.topic),
                      type(exc).__name__, exc)
        if msg.qos:
            client.ack(msg.mid, msg.qos)

    def store(self, name: str, payload: bytes) -> None:
        parts = split_topic(name)
        if parts is None:
            return
        site, appliance, leaf = parts
        now = time.time()
        body = load_json(payload, max_bytes=MAX_MESSAGE_BYTES) if payload else None
        with self.lock:
            db = self.db
            db.execute("BEGIN IMMEDIATE")
            try:
                if leaf == "events" and isinstance(body, dict):
                    rows = [(e.get("id"), site, appliance, e.get("ts"), e.get("type"),
                             int(e.get("count") or 1), json.dumps(e, separators=(",", ":")),
                             now, self.id)
                            for e in body.get("events", []) if isinstance(e, dict)]
                    before = db.total_changes
                    db.executemany("INSERT OR IGNORE INTO events (id, site, appliance, ts, "
                                   "type, count, payload, received, collector) "
                                   "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
                    new = db.total_changes - before
                    self.counts["events_new"] += new
                    self.counts["events_duplicate"] += len(rows) - new
                    db.execute("UPDATE appliances SET last_seen = ? WHERE site = ? AND "
                               "appliance = ?", (now, site, appliance))
                elif leaf == "stats" and isinstance(body, dict):
                    db.execute("INSERT OR IGNORE INTO stats (id, site, appliance, ts, payload, "
                               "received) VALUES (?, ?, ?, ?, ?, ?)",
                               (body.get("id"), site, appliance, body.get("ts"),
                                payload.decode(), now))
                    self._upsert(site, appliance, {
                        "stats": payload.decode(), "last_seen": now,
                        "spool_depth": (body.get("spool") or {}).get("depth")})
                elif leaf == "state" and isinstance(body, dict):
                    policy = body.get("policy") or {}
                    spool = body.get("spool") or {}
                    values: dict[str, Any] = {
                        "status": body.get("status"), "state": payload.decode(),
                        "version": body.get("version")}
                    if body.get("status") == "online":
                        values.update(mode=body.get("mode"), policy_name=policy.get("name"),
                                      policy_version=policy.get("version"),
                                      policy_sha256=policy.get("sha256"),
                                      started=body.get("started"), last_seen=now,
                                      spool_depth=spool.get("depth"),
                                      spool_overflow=int(bool(spool.get("overflow"))))
                    self._upsert(site, appliance, values)
                elif leaf == "inventory" and isinstance(body, dict):
                    db.execute("INSERT INTO inventory (site, appliance, ts, count, payload) "
                               "VALUES (?, ?, ?, ?, ?) ON CONFLICT (site, appliance) DO UPDATE "
                               "SET ts = excluded.ts, count = excluded.count, "
                               "payload = excluded.payload",
                               (site, appliance, body.get("ts"), body.get("count"),
                                payload.decode()))
                self.counts["messages"] += 1
                db.execute("INSERT INTO collectors (collector, messages, events_new, "
                           "events_duplicate, last_message) VALUES (?, ?, ?, ?, ?) "
                           "ON CONFLICT (collector) DO UPDATE SET messages = excluded.messages, "
                           "events_new = excluded.events_new, "
                           "events_duplicate = excluded.events_duplicate, "
                           "last_message = excluded.last_message",
                           (self.id, self.counts["messages"], self.counts["events_new"],
                            self.counts["events_duplicate"], now))
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise

    def _upsert(self, site: str, appliance: str, values: dict[str, Any]) -> None:
        cols = ", ".join(values)
        sets = ", ".join(f"{k} = excluded.{k}" for k in values)
        self.db.execute(f"INSERT INTO appliances (site, appliance, {cols}) VALUES (?, ?, "
                        f"{', '.join('?' * len(values))}) ON CONFLICT (site, appliance) "
                        f"DO UPDATE SET {sets}", (site, appliance, *values.values()))


def fleet_rows(db_path: str, now: float | None = None) -> list[dict[str, Any]]:
    """`fleet list --db`: one row per appliance, with violations in the last hour."""
    now = time.time() if now is None else now
    conn = open_db(db_path)
    try:
        cur = conn.execute(
            "SELECT a.site, a.appliance, a.status, a.mode, a.policy_name, a.policy_version, "
            "a.last_seen, a.spool_depth, a.spool_overflow, "
            "(SELECT coalesce(sum(e.count), 0) FROM events e WHERE e.site = a.site AND "
            " e.appliance = a.appliance AND e.type = 'violation' AND e.ts >= ?) "
            "FROM appliances a ORDER BY a.site, a.appliance", (now - 3600,))
        names = ["site", "appliance", "status", "mode", "policy_name", "policy_version",
                 "last_seen", "spool_depth", "spool_overflow", "violations_last_hour"]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
    finally:
        conn.close()
