"""The audit log: every command and its outcome, the command sequence, policy history.

Three tables of the store file (appliance.outputs.store): `audit` (one row per request,
local or from the fleet, with who sent it, whether it was signed, and what came of it),
`meta` (the last accepted command sequence, so a replayed command is refused after a
restart) and `policy_history` (every policy applied, with its text).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from typing import TYPE_CHECKING, Any

from appliance.errors import StoreError
from appliance.outputs.store import Store

if TYPE_CHECKING:
    from appliance.contract.commands import Command


class AuditLog:
    """The `audit`, `meta` (command sequence) and `policy_history` tables of a store file."""

    def __init__(self, path: str) -> None:
        Store(path).close()          # creates or upgrades the schema these tables live in
        self.path = path
        self.lock = threading.Lock()
        try:
            self.conn: sqlite3.Connection | None = sqlite3.connect(
                path, timeout=30, isolation_level=None, check_same_thread=False)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")
        except sqlite3.Error as exc:
            raise StoreError(f"{path}: cannot open the audit log: {exc}") from None

    def _db(self) -> sqlite3.Connection:
        if self.conn is None:
            raise StoreError(f"{self.path}: the audit log is closed")
        return self.conn

    def last_seq(self) -> int:
        with self.lock:
            row = self._db().execute("SELECT value FROM meta WHERE key = 'command.seq'"
                                     ).fetchone()
        return int(row[0]) if row else 0

    def accept_seq(self, seq: int) -> int | None:
        """Record `seq` if it is above the last accepted one; else return that last one."""
        with self.lock:
            db = self._db()
            db.execute("BEGIN IMMEDIATE")
            try:
                row = db.execute("SELECT value FROM meta WHERE key = 'command.seq'").fetchone()
                last = int(row[0]) if row else 0
                if seq <= last:
                    db.execute("ROLLBACK")
                    return last
                db.execute("INSERT INTO meta (key, value) VALUES ('command.seq', ?) "
                           "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (str(seq),))
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        return None

    def record(self, source: str, command: Command | None, outcome: str,
               reason: str | None = None, detail: str | None = None,
               request_sha256: str = "", name: str | None = None) -> int:
        row = (time.time(), source, command.name if command else name,
               command.request_id if command else None, command.seq if command else None,
               int(command.signed) if command else None, command.key_id if command else None,
               command.issuer if command else None, command.target if command else None,
               outcome, reason, detail, request_sha256 or (command.sha256 if command else ""))
        row = tuple(_storable(v) for v in row)
        with self.lock:
            cur = self._db().execute(
                "INSERT INTO audit (ts, source, command, request_id, seq, signed, key_id, "
                "issuer, target, outcome, reason, detail, request_sha256) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
            return int(cur.lastrowid or 0)

    def finish(self, audit_id: int, outcome: str, response: dict[str, Any],
               reason: str | None = None, detail: str | None = None) -> None:
        text = json.dumps(response, separators=(",", ":"), default=str)[:4096]
        reason, detail = _storable(reason), _storable(detail)
        with self.lock:
            self._db().execute("UPDATE audit SET outcome = ?, reason = coalesce(?, reason), "
                               "detail = coalesce(?, detail), response = ?, finished = ? "
                               "WHERE id = ?",
                               (outcome, reason, detail, text, time.time(), audit_id))

    def policy_applied(self, source: str, policy: dict[str, Any], text: str) -> None:
        with self.lock:
            self._db().execute(
                "INSERT INTO policy_history (ts, source, name, version, sha256, text) "
                "VALUES (?, ?, ?, ?, ?, ?)", (time.time(), source, policy.get("name"),
                                              policy.get("version"), policy.get("sha256"), text))

    def rows(self) -> list[dict[str, Any]]:
        with self.lock:
            cur = self._db().execute("SELECT * FROM audit ORDER BY id")
            names = [d[0] for d in cur.description]
            return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

    def close(self) -> None:
        with self.lock:
            if self.conn is not None:
                self.conn.close()
                self.conn = None


def _storable(value: Any) -> Any:
    """Text as SQLite can store it: a lone surrogate (JSON allows "\ud800") as an escape;
    everything else as given."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value
