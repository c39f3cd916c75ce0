"""The fleet database: one interface over SQLite (the default) and PostgreSQL.

`connect(target)` takes a file path (SQLite, WAL; one machine) or a `postgresql://` URL
(psycopg 3; several collectors on several machines and the console share it). SQL is
written once with `?` placeholders and the subset both engines speak (ON CONFLICT,
RETURNING, CTEs); `{serial}`-style differences live in appliance.fleet.schema. Migrations run
forwards on every start, under a lock, so collectors and consoles starting together apply
each step once.

psycopg is imported only when a PostgreSQL URL is given.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

from appliance.errors import WardtapError

log = logging.getLogger("wardtap.fleetdb")

Params = Sequence[Any]


class DatabaseError(WardtapError):
    """The fleet database cannot be reached."""


class QueryError(WardtapError):
    """The fleet database refused one statement (the database itself is fine)."""


def is_postgres(target: str) -> bool:
    return target.startswith(("postgresql://", "postgres://"))


def redact(target: str) -> str:
    """The target without a password (for messages and logs)."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", target)


class Database:
    """One connection. Not shared between threads: a Pool hands them out."""

    postgres = False

    def __init__(self, target: str) -> None:
        self.target = target

    # the engine's own exception types, for callers that retry or report
    errors: tuple[type[BaseException], ...] = (sqlite3.Error,)

    def execute(self, sql: str, params: Params = ()) -> Any:
        raise NotImplementedError

    def query(self, sql: str, params: Params = ()) -> list[tuple[Any, ...]]:
        return list(self.execute(sql, params).fetchall())

    def rows(self, sql: str, params: Params = ()) -> list[dict[str, Any]]:
        cur = self.execute(sql, params)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def scalar(self, sql: str, params: Params = ()) -> Any:
        row = self.execute(sql, params).fetchone()
        return row[0] if row else None

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Database]:
        raise NotImplementedError
        yield self

    def close(self) -> None:
        raise NotImplementedError

    def alive(self) -> bool:
        return True

    def is_transient(self, exc: BaseException) -> bool:
        """A lost connection, a deadlock or a lock timeout: worth trying again."""
        return False


class SQLiteDatabase(Database):
    def __init__(self, target: str) -> None:
        super().__init__(target)
        path = target.removeprefix("sqlite://")
        try:
            self.conn = sqlite3.connect(path, timeout=30, isolation_level=None,
                                        check_same_thread=False)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.Error as exc:
            raise DatabaseError(f"{path}: cannot open the fleet database: {exc}") from None

    def execute(self, sql: str, params: Params = ()) -> Any:
        return self.conn.execute(sql, tuple(params))

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Database]:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self
        except BaseException:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def close(self) -> None:
        self.conn.close()

    def is_transient(self, exc: BaseException) -> bool:
        return isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc)


_PLACEHOLDER = re.compile(r"\?")


class PostgresDatabase(Database):
    postgres = True

    def __init__(self, target: str, connect_timeout: float = 5.0) -> None:
        super().__init__(target)
        try:
            import psycopg
        except ImportError:
            raise DatabaseError("psycopg is not installed: pip install 'wardtap[console]'") \
                from None
        self.psycopg = psycopg
        self.errors = (psycopg.Error,)
        try:
            self.conn = psycopg.connect(target, autocommit=True,
                                        connect_timeout=max(1, int(connect_timeout)),
                                        application_name="wardtap")
        except psycopg.Error as exc:
            raise DatabaseError(f"{redact(target)}: cannot connect: "
                                f"{str(exc).strip().splitlines()[0]}") from None

    def execute(self, sql: str, params: Params = ()) -> Any:
        # `?` in our SQL never appears inside literals; psycopg wants %s
        return self.conn.execute(_PLACEHOLDER.sub("%s", sql), tuple(params), prepare=False)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Database]:
        with self.conn.transaction():
            yield self

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.close()

    def alive(self) -> bool:
        return not (self.conn.closed or self.conn.broken)

    def is_transient(self, exc: BaseException) -> bool:
        e = self.psycopg.errors
        return isinstance(exc, (self.psycopg.OperationalError, e.DeadlockDetected,
                                e.SerializationFailure, e.LockNotAvailable))


def connect(target: str, migrate: bool = True) -> Database:
    """A connection to `target` (a path or a postgresql:// URL), its schema brought up to
    date."""
    db: Database = PostgresDatabase(target) if is_postgres(target) else SQLiteDatabase(target)
    if migrate:
        from appliance.fleet.schema import migrate as run_migrations

        try:
            run_migrations(db)
        except db.errors as exc:
            db.close()
            raise DatabaseError(f"{redact(target)}: cannot bring the schema up to date: "
                                f"{exc}") from None
    return db


class Pool:
    """A few connections for a threaded server; a broken one is dropped, not reused.

    `health` says whether the last use worked, so every page can say when the database is
    gone; the next request tries again, so the console recovers on its own.
    """

    def __init__(self, target: str, size: int = 8) -> None:
        self.target = target
        self.size = size
        self._idle: list[Database] = []
        self._lock = threading.Lock()
        self._sem = threading.BoundedSemaphore(size)
        self.error: str | None = None
        self.error_since: float | None = None
        self._migrated = False

    @contextlib.contextmanager
    def connection(self) -> Iterator[Database]:
        if not self._sem.acquire(timeout=30):
            raise DatabaseError("the fleet database is busy (every connection in use)")
        db: Database | None = None
        try:
            with self._lock:
                db = self._idle.pop() if self._idle else None
            if db is not None and not db.alive():
                db.close()
                db = None
            if db is None:
                try:
                    db = connect(self.target, migrate=not self._migrated)
                except DatabaseError as exc:
                    self._failed(str(exc))
                    raise
                self._migrated = True
            try:
                yield db
            except db.errors as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
                if db.alive() and not db.is_transient(exc):
                    # the statement was refused, the database is fine
                    raise QueryError(f"the database refused the request: {first}") from None
                self._failed(f"{redact(self.target)}: {first}")
                db.close()
                db = None
                raise DatabaseError(self.error or "database error") from None
            self.error = self.error_since = None
            with self._lock:
                self._idle.append(db)
            db = None
        finally:
            if db is not None:
                db.close()
            self._sem.release()

    def _failed(self, message: str) -> None:
        if self.error is None:
            self.error_since = time.time()
        self.error = message
        log.warning("fleet database: %s", message)

    def close(self) -> None:
        with self._lock:
            for db in self._idle:
                db.close()
            self._idle.clear()
