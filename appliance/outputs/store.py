"""The local store: one SQLite file (sqlite-utils) with devices, flows, violations and runs,
and `StoreOutput`, the daemon's output that writes event batches and counters into it.

One file, several connections (this store, the spool, the audit log, each on its own thread):
every write transaction starts with BEGIN IMMEDIATE, so it takes the file's write lock before
it reads anything and waits its turn (the busy timeout) instead of failing with "database is
locked" when another connection wrote in between (SQLite cannot upgrade a read snapshot that
went stale). A write that still finds the file busy is retried; `StoreOutput` keeps a batch
it could not write and writes it with the next one, so no batch is lost to contention. Each
write is one transaction, so a failed write (a full disk) leaves what was stored before
intact. The schema is versioned (PRAGMA user_version) and upgraded step by step, with a copy
of the file taken before an upgrade.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import sqlite3
import time
from collections.abc import Callable, Generator, Iterable
from typing import Any

import sqlite_utils

from appliance.common.ratelog import RateLimitedLog
from appliance.errors import StoreError
from appliance.outputs.base import Output

log = logging.getLogger("wardtap.store")

BUSY_TIMEOUT_S = 30.0        # how long one statement waits for another connection's write
WRITE_ATTEMPTS = 3           # a write that still finds the file busy is tried again
HELD_EVENTS = 200_000        # StoreOutput: events kept in memory while the store cannot write
# add_event_array: rows per INSERT statement. One statement of many rows costs about a quarter
# less than executemany of one-row statements (bench/bench_scale.py store); 200 rows of 16
# values stay far under SQLite's limit of 32,766 values a statement.
ROWS_PER_INSERT = 200


def is_busy(exc: sqlite3.Error) -> bool:
    """SQLITE_BUSY or SQLITE_LOCKED: another connection holds the file; try again later."""
    return isinstance(exc, sqlite3.OperationalError) and (
        getattr(exc, "sqlite_errorcode", 0) & 0xFF in (5, 6)
        or "locked" in str(exc) or "busy" in str(exc))


def is_full(exc: sqlite3.Error) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and (
        getattr(exc, "sqlite_errorcode", 0) & 0xFF == 13 or "full" in str(exc))


class _Database(sqlite_utils.Database):
    """sqlite-utils with write transactions that take the write lock first (BEGIN IMMEDIATE)."""

    @contextlib.contextmanager
    def atomic(self) -> Generator[sqlite_utils.Database, None, None]:
        if self.conn.in_transaction:
            with super().atomic() as db:      # nested: a savepoint
                yield db
            return
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self
        except BaseException:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")


def _v1(db: sqlite_utils.Database) -> None:
    db.table("runs").create({
        "id": int, "started": float, "finished": float, "kind": str, "sources": str,
        "mode": str, "policy_name": str, "policy_version": int, "policy_digest": str,
        "packets": int, "bytes": int, "allowed": int, "denied": int, "malformed": int,
    }, pk="id")
    db.table("devices").create({
        "key": str, "mac": str, "ipv4": str, "ipv6": str, "vlan": int, "multi_ip": int,
        "first_seen": float, "last_seen": float, "packets_sent": int, "bytes_sent": int,
        "packets_received": int, "bytes_received": int, "flows": int, "violations": int,
    }, pk="key")
    db.table("flows").create({
        "id": int, "run": int, "flow": int, "first": float, "last": float, "src": str,
        "dst": str, "proto": int, "sport": int, "dport": int, "icmp_type": int, "vlan": int,
        "packets": int, "bytes": int, "verdict": str, "rule": str, "end": str,
    }, pk="id", foreign_keys=[("run", "runs", "id")])
    db.table("violations").create({
        "id": int, "run": int, "ts": float, "flow": int, "src": str, "dst": str, "proto": int,
        "sport": int, "dport": int, "icmp_type": int, "vlan": int, "reason": str,
        "smac": str, "dmac": str,
    }, pk="id", foreign_keys=[("run", "runs", "id")])
    db.table("violations").create_index(["ts"])
    db.table("flows").create_index(["src", "dst"])


def _v2_spool_audit(db: sqlite_utils.Database) -> None:
    """MQTT reporting: the outbound spool, the command audit log, pushed policies.

    spool: every event and stats message waits here until the broker acknowledges it
    (appliance.outputs.spool); AUTOINCREMENT so an id is never reused (ids are the events' ids).
    meta: small persistent values (spool epoch, drop counters, last command sequence).
    """
    db.execute("CREATE TABLE spool (id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, "
               "priority INTEGER NOT NULL, created REAL NOT NULL, bytes INTEGER NOT NULL, "
               "payload TEXT NOT NULL)")
    db.execute("CREATE INDEX spool_priority ON spool (priority, id)")
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
    db.table("audit").create({
        "id": int, "ts": float, "source": str, "command": str, "request_id": str, "seq": int,
        "signed": int, "key_id": str, "issuer": str, "target": str, "outcome": str,
        "reason": str, "detail": str, "request_sha256": str, "response": str,
        "finished": float,
    }, pk="id")
    db.table("audit").create_index(["ts"])
    db.table("policy_history").create({
        "id": int, "ts": float, "source": str, "name": str, "version": int, "sha256": str,
        "text": str,
    }, pk="id")


def _v3_inventory(db: sqlite_utils.Database) -> None:
    """Device inventory (appliance.inventory.devices): one row per MAC, its addresses over time, the
    evidence behind its identity (source protocol/field, first and last seen) and a history
    of new devices and class changes."""
    db.execute("CREATE TABLE inventory (mac TEXT PRIMARY KEY, vendor TEXT, randomized INTEGER, "
               "class TEXT, confidence REAL, reasons TEXT, names TEXT, vlan INTEGER, "
               "router INTEGER, first_seen REAL, last_seen REAL, packets_sent INTEGER, "
               "bytes_sent INTEGER, packets_received INTEGER, bytes_received INTEGER, "
               "peers TEXT, updated REAL)")
    db.execute("CREATE INDEX inventory_class ON inventory (class)")
    db.execute("CREATE TABLE inventory_ips (mac TEXT NOT NULL, ip TEXT NOT NULL, source TEXT, "
               "first_seen REAL, last_seen REAL, PRIMARY KEY (mac, ip))")
    db.execute("CREATE TABLE evidence (mac TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, "
               "source TEXT, scope TEXT, first_seen REAL, last_seen REAL, count INTEGER, "
               "PRIMARY KEY (mac, key, value))")
    db.execute("CREATE TABLE inventory_history (id INTEGER PRIMARY KEY, ts REAL, mac TEXT, "
               "event TEXT, class TEXT, confidence REAL, detail TEXT)")
    db.execute("CREATE INDEX inventory_history_mac ON inventory_history (mac, ts)")


# Numbered migrations: MIGRATIONS[n] takes the schema from version n to n + 1.
def _v4_nearest_rule(db: sqlite_utils.Database) -> None:
    """Violations name the rule that came closest to allowing them."""
    db.table("violations").add_column("nearest_rule", str)


def _v5_identity(db: sqlite_utils.Database) -> None:
    """Make, model and software version, server roles, data flows and advisory matches per
    device (appliance.inventory.devices); imported CSAF advisories
    (appliance.inventory.advisories)."""
    for column, kind in (("make", str), ("model", str), ("software_version", str),
                         ("identity", str), ("roles", str), ("data_flows", str),
                         ("unencrypted_patient_data", int), ("advisories", str)):
        db.table("inventory").add_column(column, kind)
    db.execute("CREATE TABLE advisories (id TEXT PRIMARY KEY, title TEXT, released TEXT, "
               "url TEXT, source TEXT, document TEXT NOT NULL, imported REAL)")


def _v6_violation_field(db: sqlite_utils.Database) -> None:
    """A violation by a flow's first payload names the field that did not match
    (docs/policy.md: HL7, DICOM, TLS server name)."""
    db.table("violations").add_column("field", str)


def _v7_flows_unindexed(db: sqlite_utils.Database) -> None:
    """Flows lose the (src, dst) index: no reader used it (`wardtap flows --device` asks for
    src OR dst, which scans the table either way) and it cost a third of every insert."""
    db.execute("DROP INDEX IF EXISTS idx_flows_src_dst")


MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = [
    _v1, _v2_spool_audit, _v3_inventory, _v4_nearest_rule, _v5_identity, _v6_violation_field,
    _v7_flows_unindexed]
SCHEMA_VERSION = len(MIGRATIONS)

_DEVICE_COLUMNS = ("key", "mac", "ipv4", "ipv6", "vlan", "multi_ip", "first_seen", "last_seen",
                   "packets_sent", "bytes_sent", "packets_received", "bytes_received", "flows",
                   "violations")


class Store:
    """The appliance's SQLite store. A context manager; close() is idempotent."""

    def __init__(self, path: str) -> None:
        self.path = path
        directory = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(directory):
            raise StoreError(f"{path}: directory {directory} does not exist")
        conn: sqlite3.Connection | None = None
        try:
            existed = os.path.exists(path) and os.path.getsize(path) > 0
            conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S)
            self.db = _Database(conn)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.execute("PRAGMA foreign_keys=ON")
            self._migrate(existed)
        except (sqlite3.DatabaseError, StoreError) as exc:
            if conn is not None:
                conn.close()          # a store that cannot be opened holds no file open
            self.db = None  # type: ignore[assignment]
            if isinstance(exc, StoreError):
                raise
            raise StoreError(f"{path}: cannot open the store: {exc}") from None

    def _migrate(self, existed: bool) -> None:
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(f"{self.path}: store schema {version} is newer than this "
                             f"wardtap ({SCHEMA_VERSION}); upgrade wardtap")
        if version < SCHEMA_VERSION and existed:
            shutil.copy2(self.path, f"{self.path}.schema{version}.bak")
        while version < SCHEMA_VERSION:
            with self.db.atomic():
                MIGRATIONS[version](self.db)
                version += 1
                self.db.execute(f"PRAGMA user_version = {version}")

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        db = getattr(self, "db", None)
        if db is not None:
            db.conn.close()
            self.db = None  # type: ignore[assignment]

    def _write(self, work: Callable[[], Any]) -> Any:
        """Run `work` in one transaction (tried again while the file is busy); a failure
        rolls it back and says why."""
        for attempt in range(1, WRITE_ATTEMPTS + 1):
            try:
                with self.db.atomic():
                    return work()
            except sqlite3.OperationalError as exc:
                if is_full(exc):
                    raise StoreError(f"{self.path}: disk full; this write was rolled back, "
                                     "earlier data is intact") from None
                if not is_busy(exc) or attempt == WRITE_ATTEMPTS:
                    raise StoreError(f"{self.path}: write failed: {exc}") from None
                time.sleep(0.05 * attempt)
        raise AssertionError("not reached")

    def start_run(self, kind: str, sources: Iterable[str], mode: str,
                  policy: Any = None) -> int:
        row = {"started": time.time(), "kind": kind, "sources": "\n".join(sources),
               "mode": mode, "policy_name": getattr(policy, "name", None),
               "policy_version": getattr(policy, "version", None),
               "policy_digest": getattr(policy, "digest", None)}
        return int(self._write(lambda: self.db.table("runs").insert(row).last_pk))

    def finish_run(self, run: int, counts: dict[str, int]) -> None:
        row: dict[str, float] = {k: counts.get(k, 0) for k in ("packets", "bytes", "allowed",
                                                                "denied", "malformed")}
        row["finished"] = time.time()
        self._write(lambda: self.db.table("runs").update(run, row))

    def add_events(self, run: int, events: list[dict[str, Any]]) -> None:
        """Store flow ends and violations from one drain, in one transaction."""
        flows = [_flow_row(run, e) for e in events if e["type"] == "flow_end"]
        violations = [_violation_row(run, e) for e in events if e["type"] == "violation"]

        def work() -> None:
            if flows:
                self.db.table("flows").insert_all(flows, batch_size=500)
            if violations:
                self.db.table("violations").insert_all(violations, batch_size=500)
        if flows or violations:
            self._write(work)

    def add_event_array(self, run: int, events: Any,
                        rule_name: Callable[[int], str | None] | None = None) -> int:
        """Store the flow ends and violations of a structured event array (as drained by
        appliance.common.eventarrays.EventBuffer) in one transaction, built column by
        column, ROWS_PER_INSERT rows a statement; returns the rows written."""
        from appliance.common import eventarrays as ea

        flows = ea.flow_columns(run, ea.of_type(events, "flow_end"), rule_name)
        violations = ea.violation_columns(run, ea.of_type(events, "violation"), rule_name)

        def work() -> None:
            for table, names, columns in (("flows", ea.FLOW_COLUMNS, flows),
                                          ("violations", ea.VIOLATION_COLUMNS, violations)):
                rows = len(columns[0]) if columns else 0
                for start in range(0, rows, ROWS_PER_INSERT):
                    stop = min(rows, start + ROWS_PER_INSERT)
                    self.db.conn.execute(_insert(table, names, stop - start),
                                         _interleaved(columns, start, stop))
        written = (len(flows[0]) if flows else 0) + (len(violations[0]) if violations else 0)
        if written:
            self._write(work)
        return written

    def merge_devices(self, devices: list[dict[str, Any]]) -> None:
        """Add a run's device counters to the stored ones (first/last seen widened)."""
        rows = [[_device_key(d)] + [d.get(c) for c in _DEVICE_COLUMNS[1:]] for d in devices]
        sql = (
            f"INSERT INTO devices ({', '.join(_DEVICE_COLUMNS)}) "
            f"VALUES ({', '.join('?' * len(_DEVICE_COLUMNS))}) ON CONFLICT(key) DO UPDATE SET "
            "ipv4 = coalesce(devices.ipv4, excluded.ipv4), "
            "ipv6 = coalesce(devices.ipv6, excluded.ipv6), "
            "multi_ip = max(devices.multi_ip, excluded.multi_ip), "
            "first_seen = min(devices.first_seen, excluded.first_seen), "
            "last_seen = max(devices.last_seen, excluded.last_seen), "
            + ", ".join(f"{c} = devices.{c} + excluded.{c}" for c in _DEVICE_COLUMNS[8:])
        )
        self._write(lambda: self.db.conn.executemany(sql, rows))

    def devices(self) -> list[dict[str, Any]]:
        return list(self.db.table("devices").rows_where(order_by="first_seen"))

    def violations(self, run: int | None = None) -> list[dict[str, Any]]:
        where = "run = ?" if run is not None else None
        args = [run] if run is not None else None
        return list(self.db.table("violations").rows_where(where, args, order_by="ts"))


def _interleaved(columns: list[list[Any]], start: int, stop: int) -> list[Any]:
    """Rows start..stop of `columns` as one flat list of values, row after row (an INSERT's
    parameters), without a tuple per row."""
    flat: list[Any] = [None] * ((stop - start) * len(columns))
    for i, column in enumerate(columns):
        flat[i::len(columns)] = column[start:stop]
    return flat


@functools.lru_cache(maxsize=8)
def _insert(table: str, columns: tuple[str, ...], rows: int) -> str:
    """One INSERT of `rows` rows (eventarrays rows, in which ABSENT stands for NULL)."""
    from appliance.common.eventarrays import ABSENT

    one = ", ".join(f"NULLIF(?, {ABSENT[c]!r})" if c in ABSENT else "?" for c in columns)
    return (f"INSERT INTO {table} ({', '.join(columns)}) VALUES "
            + ", ".join([f"({one})"] * rows))


def _device_key(d: dict[str, Any]) -> str:
    return d["mac"] or d["ipv4"] or d["ipv6"] or f"device-{d['index']}"


def _flow_row(run: int, e: dict[str, Any]) -> dict[str, Any]:
    return {"run": run, "flow": e["flow"], "first": e["first"], "last": e["ts"],
            "src": e["src"], "dst": e["dst"], "proto": e["proto"], "sport": e.get("sport"),
            "dport": e.get("dport"), "icmp_type": e.get("icmp_type"), "vlan": e["vlan"],
            "packets": e["packets"], "bytes": e["bytes"], "verdict": e["verdict"],
            "rule": e["rule"], "end": e["end"]}


def _violation_row(run: int, e: dict[str, Any]) -> dict[str, Any]:
    return {"run": run, "ts": e["ts"], "flow": e["flow"], "src": e["src"], "dst": e["dst"],
            "proto": e["proto"], "sport": e.get("sport"), "dport": e.get("dport"),
            "icmp_type": e.get("icmp_type"), "vlan": e["vlan"], "reason": e["reason"],
            "nearest_rule": e.get("nearest_rule"), "smac": e.get("smac"),
            "dmac": e.get("dmac"), "field": e.get("field")}


class StoreOutput(Output):
    """The daemon's store output: flow ends and violations, taken as structured arrays
    (`publish_array`, no Python object per event) and written with `Store.add_event_array`.
    A batch the store cannot take now (the file busy beyond the retries, the disk full) is
    kept in memory, in order, and written before the next one (at most HELD_EVENTS events;
    beyond that the oldest are counted as lost and said so)."""

    name = "store"
    event_types: frozenset[str] | None = frozenset()     # no dicts: the arrays carry it all
    array_types = frozenset({"flow_end", "violation"})

    def __init__(self, store: Store, run: int) -> None:
        self.store = store
        self.run = run
        self._written: dict[int, dict[str, Any]] = {}
        # batches not written yet, oldest first: (flow ends and violations, rule names)
        self.held: list[tuple[Any, Callable[[int], str | None] | None]] = []
        self.lost = 0
        self.failures = RateLimitedLog(log)

    @property
    def held_events(self) -> int:
        return sum(len(events) for events, _ in self.held)

    def publish_array(self, events: Any,
                      rule_name: Callable[[int], str | None] | None = None) -> None:
        from appliance.common.eventarrays import of_types

        if not self.held:       # the usual case: written from the drain's view, no copy
            try:
                self.store.add_event_array(self.run, events, rule_name)
            except StoreError as exc:
                self._hold(of_types(events, self.array_types), rule_name)
                self._failed(exc)
            return
        self._hold(of_types(events, self.array_types), rule_name)   # a copy: the drain's
        self._write_held()                                          # view is reused

    def _hold(self, events: Any, rule_name: Callable[[int], str | None] | None) -> None:
        if len(events):
            self.held.append((events, rule_name))

    def _failed(self, exc: StoreError) -> None:
        self._bound()
        self.failures.error("write", f"store: {self.held_events:,} events wait in memory "
                            f"for the next write ({exc})" + (
                                f"; {self.lost:,} lost so far" if self.lost else ""))

    def _write_held(self) -> None:
        waited = self.held_events if len(self.held) > 1 else 0
        while self.held:
            events, rule_name = self.held[0]
            try:
                self.store.add_event_array(self.run, events, rule_name)
            except StoreError as exc:
                self._failed(exc)
                return
            self.held.pop(0)
        if waited:
            log.warning("store: %d events that waited in memory are written", waited)

    def _bound(self) -> None:
        """Keep at most HELD_EVENTS events, dropping (and counting) the oldest."""
        over = self.held_events - HELD_EVENTS
        while over > 0:
            events, rule_name = self.held[0]
            if len(events) <= over:
                self.held.pop(0)
                self.lost += len(events)
                over -= len(events)
            else:
                self.held[0] = (events[over:], rule_name)
                self.lost += over
                over = 0

    def snapshot(self, stats: dict[str, Any], devices: list[dict[str, Any]]) -> None:
        """Write each device's counters since the last write (the store adds them up)."""
        deltas = []
        for device in devices:
            before = self._written.get(device["index"])
            delta = dict(device)
            if before is not None:
                for key in ("packets_sent", "bytes_sent", "packets_received",
                            "bytes_received", "flows", "violations"):
                    delta[key] = device[key] - before[key]
            deltas.append(delta)
        self._write_held()                   # events kept from a failed write go first
        try:
            if deltas:
                self.store.merge_devices(deltas)
            self.store.finish_run(self.run, stats)
        except StoreError as exc:           # the deltas are taken again next time
            self.failures.error("snapshot", f"store: counters not written, kept for the "
                                f"next snapshot ({exc})")
            return
        for device in devices:
            self._written[device["index"]] = device

    def close(self) -> None:
        if self.held:
            self._write_held()
        if self.held:
            log.error("store: %d events could not be written and are lost", self.held_events)
            self.held = []
