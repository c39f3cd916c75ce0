"""Retention: events older than a configured age are pruned; their counts stay rolled up.

The per-hour rollup (`timeline_hour`) is what remains of old events: the timeline and
"violations per day" still show them after the events themselves are gone. Per-minute
rollups, stats, malformed samples and old log-in failures go with the events. The audit log
is kept (auditors need it; prune it by hand if policy says so). Deletion runs in bounded
batches, each its own short transaction, so a collector keeps ingesting meanwhile.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from appliance.fleet.db import Database

BATCH = 20_000


def prune(db: Database, max_age_s: float, hour_age_s: float | None = None,
          now: float | None = None, batch: int = BATCH,
          max_batches: int = 1000) -> dict[str, int]:
    """Delete what is older than `max_age_s` (hourly rollups: older than `hour_age_s`,
    default 10x); rows deleted per table. At most `max_batches` batches per table a call."""
    now = time.time() if now is None else now
    cutoff = now - max_age_s
    hour_cutoff = now - (hour_age_s if hour_age_s is not None else 10 * max_age_s)
    deleted: dict[str, int] = {}
    plans = [
        ("events", "(site, appliance, id)", "ts < ?", cutoff),
        ("stats", "(site, appliance, id)", "received < ?", cutoff),
        ("timeline_minute", "(site, appliance, bucket)", "bucket < ?", int(cutoff // 60)),
        ("timeline_hour", "(site, appliance, bucket)", "bucket < ?",
         int(hour_cutoff // 3600)),
        ("malformed", "(id)", "received < ?", cutoff),
        ("login_failures", "(id)", "ts < ?", cutoff),
    ]
    for table, key, cond, value in plans:
        total = 0
        for _ in range(max_batches):
            cols = key.strip("()")
            with db.transaction():
                n = len(db.query(f"DELETE FROM {table} WHERE {key} IN (SELECT {cols} FROM "
                                 f"{table} WHERE {cond} LIMIT ?) RETURNING 1",
                                 (value, batch)))
            total += n
            if n < batch:
                break
        deleted[table] = total
    with db.transaction():
        db.execute("DELETE FROM sessions WHERE expires < ?", (now,))
    return deleted
