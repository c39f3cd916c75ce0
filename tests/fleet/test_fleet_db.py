"""The fleet database on SQLite and PostgreSQL: migrations, retention, de-duplication."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pgkit import Postgres, postgres  # noqa: F401

from appliance.errors import WardtapError
from appliance.fleet import ingest
from appliance.fleet.db import connect
from appliance.fleet.retention import prune
from appliance.fleet.schema import LATEST


@pytest.fixture(params=["sqlite", "postgres"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "fleet.db")
    pg: Postgres = request.getfixturevalue("postgres")
    return pg.create_database()


def _events(ids: range, ts: float) -> ingest.Parsed:
    body = {"v": 1, "events": [{"id": f"e-{i}", "type": "violation", "ts": ts, "count": 2}
                               for i in ids]}
    parsed = ingest.parse("wardtap/v1/s1/a1/events", json.dumps(body).encode())
    assert parsed is not None
    return parsed


def test_schema_is_versioned_and_a_newer_one_is_refused(target: str) -> None:
    db = connect(target)
    assert db.scalar("SELECT max(version) FROM schema_version") == LATEST
    db.close()
    db = connect(target)                          # again: nothing applied twice
    assert db.scalar("SELECT count(*) FROM schema_version") == LATEST
    db.execute("INSERT INTO schema_version (version, description, applied) "
               "VALUES (?, 'from the future', 0)", (LATEST + 1,))
    db.close()
    with pytest.raises(WardtapError, match="newer than this wardtap"):
        connect(target)


def test_events_counted_once_and_old_ones_pruned_but_kept_per_hour(target: str) -> None:
    db = connect(target)
    now = 1_800_000_000.0
    with db.transaction():
        r = ingest.write_batch(db, [_events(range(10), now - 40 * 86400),
                                    _events(range(10, 15), now - 60)], "c1", now)
    assert (r.events_new, r.events_duplicate) == (15, 0)
    with db.transaction():                       # redelivered: nothing new, nothing counted
        r = ingest.write_batch(db, [_events(range(5, 15), now - 60)], "c1", now)
    assert (r.events_new, r.events_duplicate) == (0, 10)
    assert db.scalar("SELECT sum(violations) FROM timeline_hour") == 30
    deleted = prune(db, 30 * 86400, now=now, batch=3)      # several bounded batches
    assert deleted["events"] == 10 and db.scalar("SELECT count(*) FROM events") == 5
    assert db.scalar("SELECT sum(violations) FROM timeline_minute") == 10
    assert db.scalar("SELECT sum(violations) FROM timeline_hour") == 30   # rolled up
    deleted = prune(db, 30 * 86400, hour_age_s=35 * 86400, now=now)
    assert deleted["timeline_hour"] == 1
    db.close()
