"""Store-and-forward spool: every outbound message waits in SQLite until the broker acks it.

An event (or a stats snapshot) is committed to the `spool` table of the store *before* it is
published, and deleted only when the broker's PUBACK reports success. After a broker outage
or an appliance restart everything still in the table is sent again, so the fleet sees
every event at least once; each event carries `id` = "<spool epoch>-<row id>" (row ids are
AUTOINCREMENT, never reused) so consumers drop the duplicates.

Bounds and what gives way (docs/mqtt.md, "Spool"):
- The spool holds at most `max_rows` rows and `max_bytes` payload bytes. When a new batch
  does not fit, stored stats go first (oldest first), then stored informational events;
  alerts (violations, new devices, mode and policy changes, bypass) already stored are never
  evicted. Incoming messages that still do not fit are refused lowest priority first. Every
  drop is counted by priority, persisted, and shown in the state message (`spool.overflow`);
  once there is room again one `spool_overflow` event reports the counts.
- Disk: below `min_free_bytes` of free space, stats are refused (and said so: `low_disk`).
  When SQLite reports the disk full, the write is rolled back (nothing stored is lost),
  stats are refused, and the other messages are retried; if they still cannot be written
  they wait in memory (at most `memory_rows`, counted if even that overflows).
- Freeing space needs space: deleting acknowledged rows appends to SQLite's write-ahead log.
  So the spool keeps `reserve_bytes` allocated in `<spool>.reserve`; when a deletion finds
  the disk full, the reserve is given up, the deletion done, the log checkpointed and
  truncated, and the reserve taken again once there is room. `tend()` (the sender calls it
  every second) retries deletions, writes what waited in memory and reports an overflow, so
  delivery resumes by itself when the broker is back, without waiting for a new event.

Alerts are committed with synchronous=FULL (they survive a power cut); deletions after an
acknowledgement use NORMAL (a lost deletion only means a duplicate after a power cut).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from appliance.common.ratelog import RateLimitedLog
from appliance.errors import StoreError

log = logging.getLogger("wardtap.spool")

KIND_EVENT, KIND_STATS = "event", "stats"
PRIO_STATS, PRIO_INFO, PRIO_ALERT = 0, 1, 2
PRIORITY_NAMES = {PRIO_STATS: "stats", PRIO_INFO: "info", PRIO_ALERT: "alerts"}
DEFAULT_MAX_ROWS = 200_000
DEFAULT_MAX_BYTES = 64 << 20
DEFAULT_MIN_FREE = 8 << 20
DEFAULT_MEMORY_ROWS = 10_000
DEFAULT_RESERVE = 4 << 20   # enough to delete and checkpoint tens of thousands of rows
RESERVE_RETRY_S = 10.0      # how often to try taking the reserve again
REPORT_BELOW = 0.9          # report an overflow once the spool is below 90 % of its bounds
_CHUNK = 500


@dataclass(frozen=True)
class Item:
    kind: str               # KIND_EVENT or KIND_STATS
    priority: int           # PRIO_*
    payload: str            # one JSON object


@dataclass(frozen=True)
class Row:
    id: int
    kind: str
    created: float
    payload: str


def _is_full(exc: sqlite3.Error) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and (
        "full" in str(exc) or getattr(exc, "sqlite_errorcode", 0) == 13)


class Spool:
    """The spool table of a store file. Thread-safe (one connection behind a lock)."""

    def __init__(self, path: str, max_rows: int = DEFAULT_MAX_ROWS,
                 max_bytes: int = DEFAULT_MAX_BYTES, min_free_bytes: int = DEFAULT_MIN_FREE,
                 memory_rows: int = DEFAULT_MEMORY_ROWS,
                 reserve_bytes: int = DEFAULT_RESERVE,
                 clock: Callable[[], float] = time.time) -> None:
        from appliance.outputs.store import Store

        Store(path).close()            # creates the file / upgrades the schema (with backup)
        self.path = path
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self.min_free_bytes = min_free_bytes
        self.memory_rows = memory_rows
        self.reserve_bytes = reserve_bytes
        self.reserve_path = path + ".reserve"
        self.clock = clock
        self.lock = threading.RLock()
        self.logs = RateLimitedLog(log)
        try:
            self.conn: sqlite3.Connection | None = sqlite3.connect(
                path, timeout=30, isolation_level=None, check_same_thread=False)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA journal_size_limit=4194304")
            self.epoch = self._meta_get("spool.epoch")
            if self.epoch is None:
                self.epoch = secrets.token_hex(6)
                self._meta_set_now({"spool.epoch": self.epoch})
            self.dropped = {name: int(self._meta_get(f"spool.dropped.{name}") or 0)
                            for name in PRIORITY_NAMES.values()}
            since = self._meta_get("spool.dropped_since")
            self.dropped_since = float(since) if since else None
            self.rows, self.bytes = self._count()
        except sqlite3.Error as exc:
            raise StoreError(f"{path}: cannot open the spool: {exc}") from None
        self.disk_full = False
        self.low_disk = False
        self.held: list[Item] = []            # written when the disk has room again
        self.enqueued = 0
        self.deleted = 0
        self._pending_deletes: list[int] = []
        self._reserve_tried = float("-inf")
        self.reserve_held = False
        self._released = False
        self._take_reserve()

    # -- small helpers -----------------------------------------------------------------------

    def _db(self) -> sqlite3.Connection:
        if self.conn is None:
            raise StoreError(f"{self.path}: the spool is closed")
        return self.conn

    def _meta_get(self, key: str) -> str | None:
        row = self._db().execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def _meta_set_now(self, values: dict[str, str]) -> None:
        self._db().executemany("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) "
                               "DO UPDATE SET value = excluded.value", list(values.items()))

    def _count(self) -> tuple[int, int]:
        n, size = self._db().execute(
            "SELECT count(*), coalesce(sum(bytes), 0) FROM spool").fetchone()
        return int(n), int(size)

    def _free_bytes(self) -> int | None:
        try:
            st = os.statvfs(os.path.dirname(os.path.abspath(self.path)))
        except OSError:
            return None
        return st.f_bavail * st.f_frsize

    def _drop(self, item: Item, reason: str) -> None:
        name = PRIORITY_NAMES[item.priority]
        self.dropped[name] += 1
        if self.dropped_since is None:
            self.dropped_since = self.clock()
        if item.priority == PRIO_ALERT:
            self.logs.error("alert-refused", f"spool: an alert was refused ({reason}); "
                            "counted, and reported once there is room")

    # -- writing -----------------------------------------------------------------------------

    def put(self, items: Iterable[Item]) -> int:
        """Commit `items` (applying the bounds); return how many were stored."""
        with self.lock:
            batch = self.held + list(items)
            self.held = []
            drops_before = dict(self.dropped)
            batch = self._check_disk(batch)
            batch, evict = self._make_room(batch)
            report = self._overflow_report(batch, evict)
            if report is not None:
                batch.append(report)
            if not batch and not evict and self.dropped == drops_before:
                return 0
            if batch and not evict and not self._fits(batch):
                return self._hold([i for i in batch if i is not report])
            try:
                self._insert(batch, evict, reset_drops=report is not None)
            except sqlite3.Error as exc:
                if not _is_full(exc):
                    raise StoreError(f"{self.path}: spool write failed: {exc}") from None
                return self._on_disk_full([i for i in batch if i is not report])
            if self._tight():
                self._checkpoint()
            if report is not None:
                self.dropped = dict.fromkeys(self.dropped, 0)
                self.dropped_since = None
            if self.disk_full:
                free = self._free_bytes()
                if free is None or free >= self.min_free_bytes:
                    log.warning("spool: the disk has room again; stats are accepted again")
                    self.disk_full = False
            self._take_reserve()
            return len(batch)

    def _check_disk(self, batch: list[Item]) -> list[Item]:
        """Low disk or a full disk: stats are refused first (and said so)."""
        free = self._free_bytes()
        low = free is not None and free < self.min_free_bytes
        if low != self.low_disk:
            self.low_disk = low
            if low:
                self.logs.warning("low-disk", f"spool: less than {self.min_free_bytes} bytes "
                                  "free on the disk; stats are not spooled until there is room")
        if not (low or self.disk_full):
            return batch
        kept = []
        for item in batch:
            if item.priority == PRIO_STATS:
                self._drop(item, "low disk")
            else:
                kept.append(item)
        return kept

    def _make_room(self, batch: list[Item]) -> tuple[list[Item], list[tuple[int, int]]]:
        """Decide which stored rows to evict and which incoming items to refuse."""
        add_rows = len(batch)
        add_bytes = sum(len(i.payload) for i in batch)
        if self.rows + add_rows <= self.max_rows and self.bytes + add_bytes <= self.max_bytes:
            return batch, []
        self.rows, self.bytes = self._count()
        over_rows = self.rows + add_rows - self.max_rows
        over_bytes = self.bytes + add_bytes - self.max_bytes
        evict: list[tuple[int, int]] = []
        evicted_bytes = 0
        for priority in (PRIO_STATS, PRIO_INFO):
            last = 0
            while over_rows > 0 or over_bytes > 0:
                rows = self._db().execute(
                    "SELECT id, bytes FROM spool WHERE priority = ? AND id > ? ORDER BY id "
                    "LIMIT ?", (priority, last, _CHUNK)).fetchall()
                if not rows:
                    break
                for row_id, size in rows:
                    if over_rows <= 0 and over_bytes <= 0:
                        break
                    evict.append((priority, row_id))
                    over_rows -= 1
                    over_bytes -= size
                    evicted_bytes += size
                    last = row_id
                    self._drop(Item(KIND_EVENT, priority, ""), "spool full: evicted")
                if len(rows) < _CHUNK:
                    break
        if over_rows <= 0 and over_bytes <= 0:
            return batch, evict
        # Still too much: refuse incoming items, lowest priority first, newest first.
        room_rows = self.max_rows - (self.rows - len(evict))
        room_bytes = self.max_bytes - (self.bytes - evicted_bytes)
        order = sorted(range(len(batch)), key=lambda k: (-batch[k].priority, k))
        keep = set()
        for k in order:
            size = len(batch[k].payload)
            if room_rows >= 1 and room_bytes >= size:
                keep.add(k)
                room_rows -= 1
                room_bytes -= size
            else:
                self._drop(batch[k], "spool full: refused")
        return [batch[k] for k in sorted(keep)], evict

    def _overflow_report(self, batch: list[Item], evict: list[tuple[int, int]]) -> Item | None:
        """One `spool_overflow` event once drops happened and there is room again."""
        if not any(self.dropped.values()) or evict:
            return None
        rows = self.rows + len(batch)
        size = self.bytes + sum(len(i.payload) for i in batch)
        if rows >= self.max_rows * REPORT_BELOW or size >= self.max_bytes * REPORT_BELOW:
            return None
        if self.disk_full or self.low_disk:
            return None
        event = {"type": "spool_overflow", "ts": self.clock(), "since": self.dropped_since,
                 "dropped": dict(self.dropped)}
        return Item(KIND_EVENT, PRIO_ALERT, json.dumps(event, separators=(",", ":")))

    def _insert(self, batch: Sequence[Item], evict: list[tuple[int, int]],
                reset_drops: bool) -> None:
        db = self._db()
        now = self.clock()
        alerts = any(i.priority == PRIO_ALERT for i in batch)
        db.execute(f"PRAGMA synchronous={'FULL' if alerts else 'NORMAL'}")
        db.execute("BEGIN IMMEDIATE")
        try:
            removed_rows = removed_bytes = 0
            for k in range(0, len(evict), _CHUNK):
                ids = [row_id for _, row_id in evict[k:k + _CHUNK]]
                got = db.execute(f"DELETE FROM spool WHERE id IN ({','.join('?' * len(ids))}) "
                                 "RETURNING bytes", ids).fetchall()
                removed_rows += len(got)
                removed_bytes += sum(r[0] for r in got)
            db.executemany(
                "INSERT INTO spool (kind, priority, created, bytes, payload) "
                "VALUES (?, ?, ?, ?, ?)",
                [(i.kind, i.priority, now, len(i.payload), i.payload) for i in batch])
            meta = {f"spool.dropped.{n}": str(0 if reset_drops else v)
                    for n, v in self.dropped.items()}
            meta["spool.dropped_since"] = ("" if reset_drops or self.dropped_since is None
                                           else repr(self.dropped_since))
            self._meta_set_now(meta)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        self.rows += len(batch) - removed_rows
        self.bytes += sum(len(i.payload) for i in batch) - removed_bytes
        self.enqueued += len(batch)

    def _on_disk_full(self, batch: list[Item]) -> int:
        """The write was rolled back: refuse stats, retry the rest, else hold it in memory."""
        if not self.disk_full:
            self.logs.error("disk-full", "spool: the disk is full; the write was rolled back "
                            "(nothing stored is lost); stats are refused and other messages "
                            "wait in memory until there is room")
            self.disk_full = True
        kept = []
        for item in batch:
            if item.priority == PRIO_STATS:
                self._drop(item, "disk full")
            else:
                kept.append(item)
        if kept and self._fits(kept):
            try:
                self._insert(kept, [], reset_drops=False)
                return len(kept)
            except sqlite3.Error as exc:
                if not _is_full(exc):
                    raise StoreError(f"{self.path}: spool write failed: {exc}") from None
            finally:
                if self._tight():
                    self._checkpoint()
        return self._hold(kept)

    def _hold(self, items: list[Item]) -> int:
        """Keep items in memory (after what is held already), stats refused, at most
        memory_rows; return 0 (nothing was stored)."""
        if not self.disk_full:
            self.logs.error("disk-full", "spool: the disk is full; messages wait in memory "
                            "until there is room (nothing stored is lost)")
            self.disk_full = True
        room = self.memory_rows - len(self.held)
        for item in items:
            if item.priority == PRIO_STATS:
                self._drop(item, "disk full")
            elif room > 0:
                self.held.append(item)
                room -= 1
            else:
                self._drop(item, "disk full and memory buffer full")
        return 0

    def _tight(self) -> bool:
        """The reserve was given up to free space and could not be taken again: the file
        makes do with its own free pages, and the log is truncated after every write."""
        return self._released and not self.reserve_held

    def _fits(self, items: Sequence[Item]) -> bool:
        """Outside tight mode, always; in it, only when the file's free pages hold `items`
        twice over (a write then grows neither the file nor, truncated, the log)."""
        if not self._tight():
            return True
        need = 2 * sum(len(i.payload) + 64 for i in items)
        db = self._db()
        free = db.execute("PRAGMA freelist_count").fetchone()[0]
        page = db.execute("PRAGMA page_size").fetchone()[0]
        return bool(free * page >= need)

    # -- reading and acknowledging -----------------------------------------------------------

    def take(self, after: int, limit: int) -> list[Row]:
        """Rows with id > `after`, oldest first."""
        with self.lock:
            rows = self._db().execute(
                "SELECT id, kind, created, payload FROM spool WHERE id > ? ORDER BY id LIMIT ?",
                (after, limit)).fetchall()
        return [Row(*r) for r in rows]

    def take_ids(self, ids: Sequence[int]) -> list[Row]:
        out: list[Row] = []
        with self.lock:
            for k in range(0, len(ids), _CHUNK):
                part = list(ids[k:k + _CHUNK])
                out.extend(Row(*r) for r in self._db().execute(
                    "SELECT id, kind, created, payload FROM spool WHERE id IN "
                    f"({','.join('?' * len(part))}) ORDER BY id", part))
        return out

    def ack(self, ids: Sequence[int]) -> None:
        """The broker acknowledged these rows: delete them. A full disk gives up the reserve
        for it; anything else leaves them to be deleted by the next ack() or tend()."""
        with self.lock:
            todo = self._pending_deletes + list(ids)
            self._pending_deletes = []
            if not todo:
                return
            rest, exc = self._delete(todo)
            if exc is not None and _is_full(exc) and self._give_up_reserve():
                self._checkpoint()
                rest, exc = self._delete(rest)
            if exc is not None:
                self._keep_deletes(rest, exc)
                return
            if self.held:
                self._write_held()           # space was freed: what waited in memory goes in

    def _write_held(self) -> None:
        """Write what waited in memory, oldest first, one chunk per transaction (a nearly
        full disk takes a small transaction when it cannot take a large one)."""
        while self.held:
            chunk, rest = self.held[:_CHUNK], self.held[_CHUNK:]
            self.held = []
            self.put(chunk)                  # a failure puts the chunk back into self.held
            if self.held:
                self.held.extend(rest)
                return
            self.held = rest

    def _delete(self, todo: list[int]) -> tuple[list[int], sqlite3.Error | None]:
        """Delete rows a chunk per transaction (in tight mode the log is truncated after
        each); return what is left and the error that stopped it, if one did."""
        db = self._db()
        for k in range(0, len(todo), _CHUNK):
            part = todo[k:k + _CHUNK]
            try:
                db.execute("PRAGMA synchronous=NORMAL")
                db.execute("BEGIN IMMEDIATE")
                got = db.execute(
                    f"DELETE FROM spool WHERE id IN ({','.join('?' * len(part))}) "
                    "RETURNING bytes", part).fetchall()
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                return todo[k:], exc
            self.rows -= len(got)
            self.bytes -= sum(r[0] for r in got)
            self.deleted += len(got)
            if self._tight():
                self._checkpoint()
        return [], None

    def _keep_deletes(self, todo: list[int], exc: sqlite3.Error) -> None:
        # ids only (8 bytes each): an acknowledged row is at worst sent twice, never lost
        self._pending_deletes = todo
        self.logs.warning("delete", f"spool: could not delete {len(todo):,} acknowledged rows "
                          f"({exc}); retrying every second")

    def _checkpoint(self) -> None:
        """Write the log into the database file and truncate it (frees the disk space the
        log held); a reader holding it back only delays this to the next time."""
        try:
            self._db().execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:
            self.logs.warning("checkpoint", f"spool: checkpoint failed: {exc}")

    # -- the reserve -------------------------------------------------------------------------

    def _take_reserve(self) -> None:
        """Allocate `reserve_bytes` in the reserve file, when there is room to spare (at most
        every RESERVE_RETRY_S)."""
        if self.reserve_held or self.reserve_bytes <= 0:
            return
        now = time.monotonic()
        if now - self._reserve_tried < RESERVE_RETRY_S:
            return
        self._reserve_tried = now
        free = self._free_bytes()
        if free is not None and free < self.reserve_bytes + self.min_free_bytes:
            return
        try:
            fd = os.open(self.reserve_path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                os.posix_fallocate(fd, 0, self.reserve_bytes)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            self.logs.warning("reserve", f"spool: cannot reserve {self.reserve_bytes:,} bytes "
                              f"in {self.reserve_path}: {exc.strerror or exc}")
            return
        if self._released:
            log.warning("spool: the disk has room again; %d bytes reserved again in %s",
                        self.reserve_bytes, self.reserve_path)
            self._released = False
        self.reserve_held = True

    def _give_up_reserve(self) -> bool:
        """Delete the reserve file (the space it held is free at once); False without one."""
        try:
            os.unlink(self.reserve_path)
        except FileNotFoundError:
            return False
        except OSError as exc:
            log.error("spool: cannot release the reserve %s: %s", self.reserve_path, exc)
            return False
        self.reserve_held = False
        self._released = True
        self._reserve_tried = time.monotonic()
        log.warning("spool: the disk is full; the reserved space was released to delete "
                    "acknowledged rows (taken again once there is room)")
        return True

    def tend(self) -> None:
        """Every second from the sender: retry deletions, write what waited in memory, clear
        a full-disk state, report an overflow, take the reserve again."""
        with self.lock:
            if self.conn is None:
                return
            try:
                if self._pending_deletes:
                    self.ack([])
                if self.held:
                    self._write_held()
                if self.disk_full or any(self.dropped.values()):
                    self.put([])
            except StoreError as exc:
                self.logs.warning("tend", f"spool: {exc}")
            self._take_reserve()

    def depth(self) -> int:
        with self.lock:
            return self.rows

    def max_id(self) -> int:
        """The highest row id ever allocated (AUTOINCREMENT's sqlite_sequence)."""
        with self.lock:
            row = self._db().execute(
                "SELECT seq FROM sqlite_sequence WHERE name = 'spool'").fetchone()
        return int(row[0]) if row else 0

    def status(self) -> dict[str, Any]:
        with self.lock:
            return {"depth": self.rows, "bytes": self.bytes,
                    "overflow": any(self.dropped.values()), "dropped": dict(self.dropped),
                    "dropped_since": self.dropped_since, "disk_full": self.disk_full,
                    "low_disk": self.low_disk, "held_in_memory": len(self.held),
                    "pending_deletes": len(self._pending_deletes),
                    "reserve": self.reserve_held,
                    "max_rows": self.max_rows, "max_bytes": self.max_bytes}

    def event_id(self, row_id: int) -> str:
        return f"{self.epoch}-{row_id}"

    def close(self) -> None:
        with self.lock:
            if self.conn is None:
                return
            if self.held or self._pending_deletes:
                try:
                    self.put([])
                    self.ack([])
                except StoreError as exc:
                    log.error("spool: closing with %d messages only in memory: %s",
                              len(self.held), exc)
            if self.held:
                log.error("spool: %d messages could not be written (disk full) and are lost",
                          len(self.held))
            self.conn.close()
            self.conn = None

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
