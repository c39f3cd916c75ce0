"""The SQLite store: schema version and migrations (with a backup), refusal of a newer
schema, WAL mode, and a full disk that loses only the write that did not fit.

Real files in tmp_path; a full disk is simulated with `PRAGMA max_page_count` on the store's
own connection (mounting a small tmpfs needs privileges the test run may not have).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
import sqlite_utils

from appliance.errors import StoreError, WardtapError
from appliance.outputs.store import SCHEMA_VERSION, Store

TABLES = {"runs", "devices", "flows", "violations"}


def flow_end(i: int, **kw: Any) -> dict[str, Any]:
    event = {"type": "flow_end", "flow": i, "first": 100.0 + i, "ts": 200.0 + i,
             "src": "10.4.1.5", "dst": "10.20.0.15", "proto": 6, "sport": 40000 + i,
             "dport": 443, "vlan": 0, "packets": 10, "bytes": 1500, "verdict": "allow",
             "rule": "pumps-to-server", "end": "fin"}
    event.update(kw)
    return event


def violation(i: int, **kw: Any) -> dict[str, Any]:
    event = {"type": "violation", "flow": i, "ts": 300.0 + i, "src": "10.9.9.9",
             "dst": "10.20.0.15", "proto": 17, "sport": 5000, "dport": 53, "vlan": 7,
             "reason": "no_rule", "smac": "02:00:00:00:99:99", "dmac": "02:00:00:00:20:15"}
    event.update(kw)
    return event


def device(mac: str | None, **kw: Any) -> dict[str, Any]:
    d = {"index": 3, "mac": mac, "ipv4": "10.4.1.5", "ipv6": None, "vlan": 0,
         "multi_ip": False, "first_seen": 10.0, "last_seen": 20.0, "packets_sent": 5,
         "bytes_sent": 500, "packets_received": 4, "bytes_received": 400, "flows": 2,
         "violations": 1}
    d.update(kw)
    return d


def user_version(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])
    finally:
        conn.close()


def tables(path: Path) -> set[str]:
    conn = sqlite3.connect(path)
    try:
        return {r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
    finally:
        conn.close()


def count(store: Store, table: str) -> int:
    return int(store.db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


# --- schema and migrations -------------------------------------------------------------------


def test_new_store_has_the_current_schema_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    with Store(str(path)) as store:
        assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert store.db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert set(store.db.table_names()) >= TABLES
        assert {"mac", "packets_sent", "bytes_received", "violations"} <= set(
            store.db["devices"].columns_dict)
        assert store.db["devices"].pks == ["key"]
    assert user_version(path) == SCHEMA_VERSION >= 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.db"]   # no backup, WAL gone
    conn = sqlite3.connect(path)                        # WAL is a property of the file
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()


def test_empty_file_is_migrated_without_a_backup(tmp_path: Path) -> None:
    path = tmp_path / "empty.db"
    path.write_bytes(b"")
    Store(str(path)).close()
    assert user_version(path) == SCHEMA_VERSION
    assert tables(path) >= TABLES
    assert not list(tmp_path.glob("*.bak"))


def test_reopening_keeps_data_and_makes_no_backup(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with Store(str(path)) as store:
        run = store.start_run("replay", ["a.pcap", "b.pcap"], "monitor")
        store.add_events(run, [flow_end(1), violation(2)])
        store.finish_run(run, {"packets": 12, "bytes": 3400, "allowed": 10, "denied": 2})
    with Store(str(path)) as store:
        (row,) = store.db["runs"].rows
        assert (row["sources"], row["packets"], row["malformed"]) == ("a.pcap\nb.pcap", 12, 0)
        assert row["finished"] >= row["started"]
        assert count(store, "flows") == 1 and count(store, "violations") == 1
        assert store.violations(run)[0]["smac"] == "02:00:00:00:99:99"
        assert store.violations(run + 1) == []
    assert not list(tmp_path.glob("*.bak"))


def test_upgrading_an_older_file_makes_a_backup_first(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)                        # a version-0 file with data in it
    conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")
    conn.executemany("INSERT INTO notes (text) VALUES (?)", [("bed 4",), ("pump 7",)])
    conn.commit()
    conn.close()
    original = path.read_bytes()
    with Store(str(path)) as store:
        assert [r["text"] for r in store.db["notes"].rows] == ["bed 4", "pump 7"]
        assert set(store.db.table_names()) >= TABLES | {"notes"}
    backup = tmp_path / "old.db.schema0.bak"
    assert backup.exists()
    assert user_version(backup) == 0
    assert tables(backup) == {"notes"}
    db = sqlite_utils.Database(backup)
    try:
        assert [r["text"] for r in db["notes"].rows] == ["bed 4", "pump 7"]
    finally:
        db.close()
    assert len(original) > 0
    assert user_version(path) == SCHEMA_VERSION


def test_failed_upgrade_changes_nothing(tmp_path: Path) -> None:
    """A migration is one transaction: if it fails half-way, no table of it is left behind
    (so the next attempt fails the same way, instead of on a half-migrated file)."""
    path = tmp_path / "clash.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE violations (legacy TEXT)")    # clashes with the v1 schema
    conn.execute("INSERT INTO violations VALUES ('kept')")
    conn.commit()
    conn.close()
    messages = []
    for _ in range(2):
        with pytest.raises(StoreError) as info:
            Store(str(path))
        messages.append(str(info.value))
    assert messages[0] == messages[1]
    assert messages[0].startswith(f"{path}: cannot open the store: ")
    assert "violations" in messages[0]
    assert tables(path) == {"violations"}
    assert user_version(path) == 0
    assert (tmp_path / "clash.db.schema0.bak").exists()


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE future_things (x)")
    conn.execute("PRAGMA user_version = 99")
    conn.commit()
    conn.close()
    before = path.read_bytes()
    with pytest.raises(StoreError) as info:
        Store(str(path))
    assert isinstance(info.value, WardtapError)
    assert str(info.value) == (f"{path}: store schema 99 is newer than this wardtap "
                               f"({SCHEMA_VERSION}); upgrade wardtap")
    assert user_version(path) == 99
    assert tables(path) == {"future_things"}
    assert not list(tmp_path.glob("*.bak"))
    assert path.read_bytes()[:16] == before[:16]


def test_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("this is not a database\n" * 100)
    with pytest.raises(StoreError) as info:
        Store(str(path))
    assert str(info.value).startswith(f"{path}: cannot open the store: ")
    assert path.read_text() == "this is not a database\n" * 100


def test_missing_directory(tmp_path: Path) -> None:
    path = tmp_path / "no" / "such" / "dir" / "s.db"
    with pytest.raises(StoreError, match="does not exist"):
        Store(str(path))


# --- writes ----------------------------------------------------------------------------------


def test_disk_full_is_a_store_error_and_keeps_earlier_rows(tmp_path: Path) -> None:
    path = tmp_path / "full.db"
    store = Store(str(path))
    try:
        run = store.start_run("replay", ["ward.pcap"], "monitor")
        store.add_events(run, [flow_end(i) for i in range(20)] + [violation(i) for i in range(5)])
        store.merge_devices([device("00:1a:2b:00:00:05")])
        pages = store.db.execute("PRAGMA page_count").fetchone()[0]
        store.db.execute(f"PRAGMA max_page_count = {pages + 4}")   # the disk is nearly full
        # The flows of this write would fit; its violations do not.
        big = [flow_end(100 + i) for i in range(20)]
        big += [violation(100 + i, smac="m" * 200) for i in range(1000)]
        with pytest.raises(StoreError) as info:
            store.add_events(run, big)
        assert str(info.value) == (f"{path}: disk full; this write was rolled back, earlier "
                                   "data is intact")
        # Nothing of the failed write (flows and violations are one transaction) is stored.
        assert (count(store, "flows"), count(store, "violations")) == (20, 5)
        many = [device(f"02:00:00:{i // 65536:02x}:{i // 256 % 256:02x}:{i % 256:02x}",
                       ipv4=f"10.{i // 65536}.{i // 256 % 256}.{i % 256}") for i in range(3000)]
        with pytest.raises(StoreError, match="disk full"):
            store.merge_devices(many)
        assert count(store, "devices") == 1
        # Room again: the store works on.
        store.db.execute("PRAGMA max_page_count = 1073741823")
        store.add_events(run, [flow_end(999)])
        store.finish_run(run, {"packets": 1})
        assert count(store, "flows") == 21
    finally:
        store.close()
        store.close()                                   # idempotent
    with Store(str(path)) as again:
        assert count(again, "flows") == 21 and count(again, "violations") == 5
        assert again.db["runs"].get(run)["packets"] == 1


def test_merge_devices_adds_counters(tmp_path: Path) -> None:
    with Store(str(tmp_path / "d.db")) as store:
        store.merge_devices([device("00:1a:2b:00:00:05"), device(None, ipv4="10.9.9.9")])
        store.merge_devices([device("00:1a:2b:00:00:05", first_seen=5.0, last_seen=15.0,
                                    ipv4="10.4.1.99", ipv6="fd00:4::5", multi_ip=True)])
        rows = {d["key"]: d for d in store.devices()}
    assert set(rows) == {"00:1a:2b:00:00:05", "10.9.9.9"}
    pump = rows["00:1a:2b:00:00:05"]
    assert (pump["packets_sent"], pump["bytes_sent"], pump["packets_received"],
            pump["bytes_received"], pump["flows"], pump["violations"]) == (10, 1000, 8, 800, 4, 2)
    assert (pump["first_seen"], pump["last_seen"]) == (5.0, 20.0)
    assert (pump["ipv4"], pump["ipv6"], pump["multi_ip"]) == ("10.4.1.5", "fd00:4::5", 1)
    assert rows["10.9.9.9"]["mac"] is None


def test_wal_lets_a_reader_see_committed_rows_while_open(tmp_path: Path) -> None:
    path = tmp_path / "wal.db"
    with Store(str(path)) as store:
        run = store.start_run("replay", ["x.pcap"], "learn")
        store.add_events(run, [violation(1)])
        assert (tmp_path / "wal.db-wal").exists()
        reader = sqlite3.connect(path, timeout=0)
        try:
            assert reader.execute("SELECT count(*) FROM violations").fetchone()[0] == 1
            store.add_events(run, [violation(2)])       # a writer while a reader is open
            assert reader.execute("SELECT count(*) FROM violations").fetchone()[0] == 2
        finally:
            reader.close()


def test_schema_6_store_keeps_its_flows_and_drops_the_unused_index(tmp_path: Path) -> None:
    """Schema 7 drops the flows' (src, dst) index; `wardtap flows --device` (src OR dst)
    reads the table either way and finds the same rows."""
    from appliance.outputs import store as store_module
    from appliance.outputs.history import Filters, flows, open_store

    path = tmp_path / "v6.db"
    db = sqlite_utils.Database(path)
    for migrate in store_module.MIGRATIONS[:6]:
        migrate(db)
    db.execute("PRAGMA user_version = 6")
    db["runs"].insert({"id": 1, "kind": "daemon"})
    db["flows"].insert_all([{"run": 1, "flow": 1, "first": 1.0, "last": 2.0, "src": "10.4.1.5",
                             "dst": "10.20.0.15", "proto": 1, "icmp_type": 8, "vlan": 0,
                             "packets": 2, "bytes": 196, "verdict": "allow", "rule": "ping",
                             "end": "idle"}])
    db.conn.commit()
    db.close()
    with Store(str(path)) as store:
        assert "idx_flows_src_dst" not in {i.name for i in store.db["flows"].indexes}
        store.add_events(1, [flow_end(2, src="10.20.0.15", dst="10.4.1.5")])
    assert (tmp_path / "v6.db.schema6.bak").exists()
    with open_store(str(path)) as conn:
        rows = flows(conn, Filters(device="10.4.1.5"))
    assert [(r["src"], r["sport"], r["icmp_type"]) for r in rows] == [
        ("10.4.1.5", None, 8), ("10.20.0.15", 40002, None)]
