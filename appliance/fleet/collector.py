"""`wardtap fleet collect`: keep the fleet's state in a database, scaled out by shared
subscription.

Events and stats (the volume) arrive through MQTT 5 shared subscriptions,
`$share/{group}/wardtap/v1/+/+/events`: the broker hands each message to exactly one of the
collectors in the group, so several collectors split the load, each a disjoint share.
State and inventory (retained, a message per appliance and change) are subscribed normally
by every collector, since shared subscriptions get no retained messages.

Each collector uses a persistent session (clean start off, a session expiry), so the broker
keeps its share while it is away. Messages are queued by the MQTT thread and written by one
writer thread, many per transaction (appliance.fleet.ingest); a message is acknowledged only
after its transaction committed (manual acks), so a collector that dies (kill -9) loses
nothing: the broker delivers the unacknowledged messages again, to it or to another member
of the group. Events are keyed by (site, appliance, id), so redeliveries and the appliances'
resends are stored and counted once. The database is SQLite (a path) or PostgreSQL (a
`postgresql://` URL, several collectors on several machines writing one database).

A message that cannot be read (not JSON, wrong shape, bad ids) is counted, sampled in the
`malformed` table and acknowledged; it never stops the collector. A database that is away
leaves messages unacknowledged; the writer reconnects and goes on.
"""

from __future__ import annotations

import json
import logging
import queue
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

from appliance.common.text import shown
from appliance.contract.broker import ROOT, BrokerSettings, make_client, start, stop
from appliance.fleet import ingest
from appliance.fleet.db import Database, DatabaseError, connect

log = logging.getLogger("wardtap.collector")


@dataclass
class _Message:
    topic: str
    payload: bytes
    mid: int
    qos: int


class Collector:
    def __init__(self, db_target: str, settings: BrokerSettings, group: str = "wardtap",
                 collector_id: str | None = None, session_expiry: int = 86400,
                 batch: int = 1000, linger: float = 0.02, retain_s: float = 0.0) -> None:
        self.db_target = db_target
        self.db: Database | None = connect(db_target)     # fails now, with one clear line
        self.settings = settings
        self.group = group
        self.id = collector_id or f"wardtap-collector-{socket.gethostname()}"
        self.session_expiry = session_expiry
        self.batch = batch
        self.linger = linger
        self.retain_s = retain_s
        self._next_prune = time.monotonic() + 60
        self.client = make_client(settings, self.id, manual_ack=True)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.counts = {"messages": 0, "events_new": 0, "events_duplicate": 0, "malformed": 0,
                       "db_errors": 0}
        self.db_error: str | None = None
        self._sub_mids: set[int] = set()
        self._queue: queue.Queue[_Message] = queue.Queue()
        self._stop = threading.Event()
        self._writer = threading.Thread(target=self._write_loop, name="collector-writer",
                                        daemon=True)

    def start(self) -> None:
        self._writer.start()
        start(self.client, self.settings, clean_start=False,
              session_expiry=self.session_expiry)

    def close(self) -> None:
        stop(self.client)
        self._stop.set()
        if self._writer.is_alive():
            self._writer.join(timeout=30)
        if self.db is not None:
            self.db.close()
            self.db = None

    # -- MQTT thread ---------------------------------------------------------------------

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
        self._queue.put(_Message(msg.topic, bytes(msg.payload), msg.mid, msg.qos))

    # -- writer thread -------------------------------------------------------------------

    def _take(self) -> list[_Message]:
        try:
            first = self._queue.get(timeout=0.2)
        except queue.Empty:
            return []
        batch = [first]
        deadline = time.monotonic() + self.linger
        while len(batch) < self.batch:
            try:
                batch.append(self._queue.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                break
        return batch

    def _write_loop(self) -> None:
        pending: list[_Message] = []
        while not (self._stop.is_set() and not pending and self._queue.empty()):
            if self.retain_s and time.monotonic() >= self._next_prune:
                self._prune()
            if not pending:
                pending = self._take()
                if not pending:
                    continue
            try:
                self.store_messages(pending)
            except DatabaseError as exc:
                # not acknowledged: kept and written once the database is back
                self.counts["db_errors"] += 1
                if self.db_error is None:
                    log.error("collector: cannot write to the database (%s); messages wait "
                              "unacknowledged", exc)
                self.db_error = str(exc)
                if self._stop.wait(1.0):
                    return
                continue
            for m in pending:
                if m.qos:
                    self.client.ack(m.mid, m.qos)
            pending = []

    def _prune(self) -> None:
        from appliance.fleet.retention import prune

        self._next_prune = time.monotonic() + 600
        try:
            deleted = prune(self._database(), self.retain_s, max_batches=50)
        except Exception as exc:  # noqa: BLE001  (pruning must never stop the collector)
            log.warning("collector: pruning failed (%s); next try in 10 minutes", exc)
            self._drop_db()
            return
        if any(deleted.values()):
            log.info("collector: pruned %s", ", ".join(f"{k} {v}" for k, v in deleted.items()))

    def _database(self) -> Database:
        if self.db is None:
            self.db = connect(self.db_target)
            log.info("collector: database reachable again")
            self.db_error = None
        return self.db

    def store(self, name: str, payload: bytes) -> None:
        """Store one message now (tests, tools)."""
        self.store_messages([_Message(name, payload, 0, 0)])

    def store_messages(self, messages: list[_Message]) -> None:
        """Write a batch in one transaction; malformed ones are counted, not stored."""
        parsed: list[ingest.Parsed] = []
        bad: list[tuple[_Message, ingest.Malformed]] = []
        for m in messages:
            try:
                p = ingest.parse(m.topic, m.payload)
            except ingest.Malformed as exc:
                bad.append((m, exc))
                continue
            if p is not None:
                parsed.append(p)
        for attempt in range(5):
            db = self._database()
            now = time.time()
            try:
                with db.transaction():
                    result = ingest.write_batch(db, parsed, self.id, now)
                    for m, why in bad:
                        ingest.record_malformed(db, self.id, m.topic, why, m.payload, now)
                    result.malformed = len(bad)
                    ingest.record_collector(db, self.id, len(messages), result, now)
                break
            except db.errors as exc:
                transient = db.is_transient(exc)
                if not transient or attempt == 4:
                    if not transient and len(parsed) > 1:
                        # one message the database refuses must not hold back the others
                        self._store_one_by_one(messages)
                        return
                    self._drop_db()
                    raise DatabaseError(f"{exc}".strip().splitlines()[0]) from None
                if db.postgres and not db.alive():
                    self._drop_db()
                time.sleep(0.05 * (attempt + 1))
        for exc_item in bad:
            log.warning("collector: malformed message on %s: %s", shown(exc_item[0].topic),
                        shown(exc_item[1].error))
        self.counts["messages"] += len(messages)
        self.counts["events_new"] += result.events_new
        self.counts["events_duplicate"] += result.events_duplicate
        self.counts["malformed"] += len(bad)

    def _store_one_by_one(self, messages: list[_Message]) -> None:
        for m in messages:
            try:
                self.store_messages([m])
            except DatabaseError as exc:
                # refused by the database on its own (not a lost connection): counted as
                # malformed and acknowledged, so it cannot hold the others back
                try:
                    db = self._database()
                    with db.transaction():
                        ingest.record_malformed(db, self.id, m.topic, ingest.Malformed(
                            f"refused by the database: {exc}"[:256]), m.payload)
                except Exception as again:  # noqa: BLE001  (the database itself is gone)
                    self._drop_db()
                    raise DatabaseError(str(again).strip().splitlines()[0]) from None
                self.counts["malformed"] += 1

    def _drop_db(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None


def fleet_rows(db_target: str, now: float | None = None) -> list[dict[str, Any]]:
    """`fleet list --db`: one row per appliance. Its violations in the last hour are counted
    by when the fleet received them, as the appliance counts them in its own stats (a
    replayed capture's events carry the capture's old times); the console's timeline uses
    the events' own times."""
    from appliance.fleet.queries import fleet_overview

    now = time.time() if now is None else now
    db = connect(db_target)
    try:
        rows = fleet_overview(db, now)
        received = {(site, name): int(n or 0) for site, name, n in db.query(
            "SELECT site, appliance, sum(count) FROM events WHERE type = 'violation' "
            "AND received >= ? GROUP BY site, appliance", (now - 3600,))}
        states = {(site, name): state for site, name, state in db.query(
            "SELECT site, appliance, state FROM appliances")}
        for r in rows:
            key = (r["site"], r["appliance"])
            r["violations_last_hour"] = received.get(key, 0)
            r["reason"] = _reason(states.get(key))
        return rows
    finally:
        db.close()


def _reason(state: str | None) -> str | None:
    """Why a stopped appliance went offline, from its last retained state."""
    try:
        body = json.loads(state) if state else {}
    except ValueError:
        return None
    return body.get("reason") if isinstance(body, dict) else None
