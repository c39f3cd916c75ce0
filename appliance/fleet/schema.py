"""The fleet database's schema, as numbered migrations that only run forwards.

`migrate(db)` applies every step above the recorded version in one transaction, under a
lock (PostgreSQL: an advisory lock; SQLite: BEGIN IMMEDIATE), so collectors and
consoles that start together apply each step exactly once. A database newer than this
program is refused rather than guessed at. Steps are append-only: a released step is never
edited, a change is a new step.

Types are spelled so both engines agree: DOUBLE PRECISION (SQLite: REAL affinity), BIGINT
(SQLite: INTEGER affinity), TEXT; `{serial}` is an auto-numbered key.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, Protocol

from appliance.errors import WardtapError


class Database(Protocol):
    """What a migration needs of a connection (appliance.fleet.db.Database; not imported
    here, since db runs the migrations)."""

    postgres: bool

    def execute(self, sql: str, params: Any = ()) -> Any: ...

    def scalar(self, sql: str, params: Any = ()) -> Any: ...

    def transaction(self) -> AbstractContextManager[Any]: ...

_LOCK_ID = 0x77617264  # "ward": the advisory lock taken while migrating

Step = str | Callable[[Database], None]

MIGRATIONS: list[tuple[int, str, list[Step]]] = [
    (1, "fleet state, events, rollups, inventory, collectors", [
        """CREATE TABLE IF NOT EXISTS appliances (
            site TEXT NOT NULL, appliance TEXT NOT NULL, status TEXT, mode TEXT,
            policy_name TEXT, policy_version BIGINT, policy_sha256 TEXT, version TEXT,
            started DOUBLE PRECISION, last_seen DOUBLE PRECISION, state_ts DOUBLE PRECISION,
            spool_depth BIGINT, spool_overflow BIGINT, state TEXT, stats TEXT,
            stats_ts DOUBLE PRECISION, malformed BIGINT NOT NULL DEFAULT 0,
            PRIMARY KEY (site, appliance))""",
        # one row per event; (site, appliance, id) de-duplicates redeliveries and resends
        """CREATE TABLE IF NOT EXISTS events (
            site TEXT NOT NULL, appliance TEXT NOT NULL, id TEXT NOT NULL,
            ts DOUBLE PRECISION, type TEXT, count BIGINT, reason TEXT, rule TEXT, src TEXT,
            dst TEXT, proto BIGINT, dport BIGINT, smac TEXT, payload TEXT NOT NULL,
            received DOUBLE PRECISION NOT NULL, collector TEXT,
            PRIMARY KEY (site, appliance, id))""",
        "CREATE INDEX IF NOT EXISTS events_appliance_ts ON events (site, appliance, ts)",
        "CREATE INDEX IF NOT EXISTS events_type_ts ON events (type, ts)",
        # per-minute and per-hour counts: the timeline and the fleet's "violations last
        # hour / day" without scanning events
        """CREATE TABLE IF NOT EXISTS timeline_minute (
            site TEXT NOT NULL, appliance TEXT NOT NULL, bucket BIGINT NOT NULL,
            events BIGINT NOT NULL DEFAULT 0, violations BIGINT NOT NULL DEFAULT 0,
            allowed BIGINT NOT NULL DEFAULT 0, denied BIGINT NOT NULL DEFAULT 0,
            packets BIGINT NOT NULL DEFAULT 0, PRIMARY KEY (site, appliance, bucket))""",
        "CREATE INDEX IF NOT EXISTS timeline_minute_bucket ON timeline_minute (bucket)",
        """CREATE TABLE IF NOT EXISTS timeline_hour (
            site TEXT NOT NULL, appliance TEXT NOT NULL, bucket BIGINT NOT NULL,
            events BIGINT NOT NULL DEFAULT 0, violations BIGINT NOT NULL DEFAULT 0,
            allowed BIGINT NOT NULL DEFAULT 0, denied BIGINT NOT NULL DEFAULT 0,
            packets BIGINT NOT NULL DEFAULT 0, PRIMARY KEY (site, appliance, bucket))""",
        "CREATE INDEX IF NOT EXISTS timeline_hour_bucket ON timeline_hour (bucket)",
        """CREATE TABLE IF NOT EXISTS stats (
            site TEXT NOT NULL, appliance TEXT NOT NULL, id TEXT NOT NULL,
            ts DOUBLE PRECISION, payload TEXT NOT NULL, received DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (site, appliance, id))""",
        "CREATE INDEX IF NOT EXISTS stats_received ON stats (received)",
        """CREATE TABLE IF NOT EXISTS inventory (
            site TEXT NOT NULL, appliance TEXT NOT NULL, ts DOUBLE PRECISION, count BIGINT,
            received DOUBLE PRECISION, PRIMARY KEY (site, appliance))""",
        """CREATE TABLE IF NOT EXISTS devices (
            site TEXT NOT NULL, appliance TEXT NOT NULL, mac TEXT NOT NULL, vendor TEXT,
            class TEXT, confidence DOUBLE PRECISION, names TEXT, ipv4 TEXT, ipv6 TEXT,
            vlan BIGINT, first_seen DOUBLE PRECISION, last_seen DOUBLE PRECISION,
            violations BIGINT, search TEXT NOT NULL, payload TEXT NOT NULL,
            PRIMARY KEY (site, appliance, mac))""",
        """CREATE TABLE IF NOT EXISTS collectors (
            collector TEXT PRIMARY KEY, messages BIGINT NOT NULL DEFAULT 0,
            events_new BIGINT NOT NULL DEFAULT 0, events_duplicate BIGINT NOT NULL DEFAULT 0,
            malformed BIGINT NOT NULL DEFAULT 0, last_message DOUBLE PRECISION)""",
        """CREATE TABLE IF NOT EXISTS malformed (
            id {serial}, received DOUBLE PRECISION NOT NULL, collector TEXT, topic TEXT,
            site TEXT, appliance TEXT, error TEXT NOT NULL, sample TEXT)""",
        "CREATE INDEX IF NOT EXISTS malformed_received ON malformed (received)",
    ]),
    (2, "console: accounts, sessions, audit, policies, rollouts", [
        """CREATE TABLE IF NOT EXISTS users (
            username TEXT PRIMARY KEY, role TEXT NOT NULL, password_hash TEXT NOT NULL,
            created DOUBLE PRECISION NOT NULL, disabled BIGINT NOT NULL DEFAULT 0,
            last_login DOUBLE PRECISION)""",
        """CREATE TABLE IF NOT EXISTS sessions (
            token_hash TEXT PRIMARY KEY, username TEXT NOT NULL, csrf TEXT NOT NULL,
            created DOUBLE PRECISION NOT NULL, last_used DOUBLE PRECISION NOT NULL,
            expires DOUBLE PRECISION NOT NULL, client TEXT)""",
        """CREATE TABLE IF NOT EXISTS login_failures (
            id {serial}, ts DOUBLE PRECISION NOT NULL, username TEXT, client TEXT)""",
        "CREATE INDEX IF NOT EXISTS login_failures_ts ON login_failures (ts)",
        """CREATE TABLE IF NOT EXISTS audit (
            id {serial}, ts DOUBLE PRECISION NOT NULL, username TEXT, role TEXT,
            client TEXT, action TEXT NOT NULL, targets TEXT, detail TEXT, outcome TEXT,
            answers TEXT)""",
        "CREATE INDEX IF NOT EXISTS audit_ts ON audit (ts)",
        """CREATE TABLE IF NOT EXISTS policies (
            sha256 TEXT PRIMARY KEY, name TEXT, version BIGINT, text TEXT NOT NULL,
            source TEXT, first_seen DOUBLE PRECISION NOT NULL)""",
        """CREATE TABLE IF NOT EXISTS proposals (
            site TEXT NOT NULL, appliance TEXT NOT NULL, fetched DOUBLE PRECISION NOT NULL,
            learned_sha256 TEXT, current_sha256 TEXT, detail TEXT,
            PRIMARY KEY (site, appliance))""",
        """CREATE TABLE IF NOT EXISTS rollouts (
            id {serial}, site TEXT NOT NULL, pilot TEXT NOT NULL, sha256 TEXT NOT NULL,
            previous TEXT, stage TEXT NOT NULL, approved_by TEXT,
            approved DOUBLE PRECISION, updated DOUBLE PRECISION)""",
    ]),
    (3, "disk flags as a column; trigram index for device search (PostgreSQL)", [
        "ALTER TABLE appliances ADD COLUMN spool_disk BIGINT",
        lambda db: _trigram_index(db),
    ]),
]


def _trigram_index(db: Database) -> None:
    """A fleet-wide device search is a substring match: on PostgreSQL a trigram index
    (pg_trgm, a trusted extension shipped with the server) answers it without scanning every
    device. Skipped where the extension is not installed (the search still works)."""
    if not db.postgres or not db.scalar(
            "SELECT count(*) FROM pg_available_extensions WHERE name = 'pg_trgm'"):
        return
    db.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    db.execute("CREATE INDEX IF NOT EXISTS devices_search_trgm ON devices "
               "USING gin (search gin_trgm_ops)")

LATEST = MIGRATIONS[-1][0]


def _sql(db: Database, statement: str) -> str:
    serial = ("BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY" if db.postgres
              else "INTEGER PRIMARY KEY AUTOINCREMENT")
    return statement.replace("{serial}", serial)


def current_version(db: Database) -> int:
    db.execute("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT PRIMARY KEY, "
               "description TEXT, applied DOUBLE PRECISION)")
    return int(db.scalar("SELECT coalesce(max(version), 0) FROM schema_version") or 0)


def migrate(db: Database) -> int:
    """Apply the missing steps; the version the database is at afterwards."""
    with db.transaction():
        if db.postgres:
            db.execute("SELECT pg_advisory_xact_lock(?)", (_LOCK_ID,))
        version = current_version(db)
        if version > LATEST:
            raise WardtapError(f"the fleet database is at schema version {version}, newer "
                               f"than this wardtap ({LATEST}): upgrade wardtap")
        for number, description, statements in MIGRATIONS:
            if number <= version:
                continue
            for statement in statements:
                if callable(statement):
                    statement(db)
                else:
                    db.execute(_sql(db, statement))
            db.execute("INSERT INTO schema_version (version, description, applied) "
                       "VALUES (?, ?, ?)", (number, description, time.time()))
            version = number
    return version
