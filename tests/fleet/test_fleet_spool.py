"""The spool's bounds: stats give way first, alerts never silently; a full disk loses nothing.

The disk-full test mounts a real 1 MiB tmpfs (root only) so SQLite meets a real ENOSPC.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import small_tmpfs

from appliance.outputs.spool import (
    KIND_EVENT,
    KIND_STATS,
    PRIO_ALERT,
    PRIO_INFO,
    PRIO_STATS,
    Item,
    Spool,
)


def _item(priority: int, n: int, size: int = 40) -> Item:
    kind = KIND_STATS if priority == PRIO_STATS else KIND_EVENT
    return Item(kind, priority, json.dumps({"type": "x", "n": n, "pad": "." * size}))


def _stored(spool: Spool) -> list[tuple[int, int]]:
    """(priority, n) of every stored row, oldest first."""
    assert spool.conn is not None
    return [(p, json.loads(payload)["n"]) for p, payload in
            spool.conn.execute("SELECT priority, payload FROM spool ORDER BY id")]


def test_bound_evicts_stats_then_info_and_never_an_alert(tmp_path: Path) -> None:
    db = str(tmp_path / "spool.db")
    spool = Spool(db, max_rows=10, min_free_bytes=0)
    spool.put([_item(PRIO_STATS, i) for i in range(4)] + [_item(PRIO_INFO, 10 + i)
                                                          for i in range(3)]
              + [_item(PRIO_ALERT, 20 + i) for i in range(3)])
    assert spool.depth() == 10 and not spool.status()["overflow"]
    spool.put([_item(PRIO_ALERT, 30), _item(PRIO_ALERT, 31)])     # two oldest stats go
    assert [n for p, n in _stored(spool) if p == PRIO_STATS] == [2, 3]
    spool.put([_item(PRIO_ALERT, 40 + i) for i in range(5)])      # stats, then info go
    assert all(p == PRIO_ALERT for p, _ in _stored(spool)) and spool.depth() == 10
    spool.put([_item(PRIO_ALERT, 50), _item(PRIO_INFO, 51), _item(PRIO_STATS, 52)])
    stored = [n for _, n in _stored(spool)]
    assert stored == [20, 21, 22, 30, 31, 40, 41, 42, 43, 44]     # alerts kept, oldest first
    status = spool.status()
    assert status["overflow"] is True
    assert status["dropped"] == {"stats": 5, "info": 4, "alerts": 1}
    spool.close()
    # persisted: a restart still knows what was dropped
    spool = Spool(db, max_rows=10, min_free_bytes=0)
    assert spool.status()["dropped"] == {"stats": 5, "info": 4, "alerts": 1}
    assert spool.conn is not None
    ids = [r for (r,) in spool.conn.execute("SELECT id FROM spool ORDER BY id LIMIT 5")]
    spool.ack(ids)                                                # the broker took five
    spool.put([])                                                 # room again: report once
    report = [json.loads(p) for (p,) in spool.conn.execute(
        "SELECT payload FROM spool WHERE payload LIKE '%spool_overflow%'")]
    assert len(report) == 1 and report[0]["dropped"] == {"stats": 5, "info": 4, "alerts": 1}
    assert report[0]["since"] and spool.status()["overflow"] is False
    spool.put([])
    assert spool.depth() == 6                                     # reported only once
    spool.close()


def test_byte_bound(tmp_path: Path) -> None:
    spool = Spool(str(tmp_path / "s.db"), max_rows=1000, max_bytes=1000, min_free_bytes=0)
    spool.put([_item(PRIO_STATS, i, size=100) for i in range(6)])
    spool.put([_item(PRIO_ALERT, 10 + i, size=100) for i in range(6)])
    assert spool.status()["bytes"] <= 1000
    assert [n for p, n in _stored(spool) if p == PRIO_ALERT] == list(range(10, 16))
    spool.close()


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    with small_tmpfs(tmp_path, "1m") as mnt:
        yield mnt


def test_full_disk_refuses_stats_first_and_loses_nothing_stored(tiny_disk: Path) -> None:
    db = tiny_disk / "spool.db"
    spool = Spool(str(db), min_free_bytes=200_000)
    spool.put([_item(PRIO_ALERT, i, 500) for i in range(50)])
    stored_before = _stored(spool)
    # fill the disk, leaving less than min_free_bytes: stats are refused, said so
    free = os.statvfs(tiny_disk).f_bavail * os.statvfs(tiny_disk).f_frsize
    filler = tiny_disk / "filler"
    filler.write_bytes(b"\0" * (free - 100_000))
    spool.put([_item(PRIO_STATS, 1000), _item(PRIO_ALERT, 1001, 500)])
    status = spool.status()
    assert status["low_disk"] and status["dropped"]["stats"] == 1
    assert (PRIO_ALERT, 1001) in _stored(spool)
    # now really full: SQLite's write fails; it is rolled back and the alerts wait in memory
    n = 2000
    while not spool.disk_full:
        spool.put([_item(PRIO_ALERT, n, 4000)])
        n += 1
        assert n < 3000, "the disk never filled"
    assert spool.status()["held_in_memory"] >= 1
    written = _stored(spool)
    assert written[:len(stored_before)] == stored_before        # nothing stored was lost
    # a reader sees an intact database
    check = sqlite3.connect(db)
    assert check.execute("PRAGMA quick_check").fetchone()[0] == "ok"
    check.close()
    # room again: what waited in memory is written, in order
    filler.unlink()
    spool.put([_item(PRIO_ALERT, 9999)])
    after = [v for p, v in _stored(spool) if v >= 2000]
    assert after == list(range(2000, n)) + [9999]
    status = spool.status()
    assert not spool.disk_full and not status["low_disk"] and status["held_in_memory"] == 0
    # and the refused stats are reported once, as an event, with the next write
    spool.put([])
    status = spool.status()
    assert status["dropped"] == {"stats": 0, "info": 0, "alerts": 0}
    assert spool.conn is not None
    (report,) = [json.loads(p) for (p,) in spool.conn.execute(
        "SELECT payload FROM spool WHERE payload LIKE '%spool_overflow%'")]
    assert report["dropped"]["stats"] == 1 and report["dropped"]["alerts"] == 0
    spool.close()
