"""`wardtap fleet collect`: shared subscriptions split the events between collectors.

Every test runs twice: on SQLite files and on a real PostgreSQL 15 (pgkit).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from brokerkit import ROOT, Broker, broker, fleet_env, fleet_settings, wait_for  # noqa: F401
from pgkit import Postgres, postgres  # noqa: F401

from appliance.fleet.collector import Collector
from appliance.fleet.db import DatabaseError, connect
from appliance.outputs.mqtt import MqttOutput, ReporterSettings

NewDb = Callable[[str], str]


@pytest.fixture(params=["sqlite", "postgres"])
def new_db(request: pytest.FixtureRequest, tmp_path: Path) -> NewDb:
    """Makes an empty fleet database (a file, or a fresh PostgreSQL database) per name."""
    if request.param == "sqlite":
        return lambda name: str(tmp_path / f"{name}.db")
    pg: Postgres = request.getfixturevalue("postgres")
    return lambda name: pg.create_database()


def _query(target: str, sql: str) -> list[tuple[Any, ...]]:
    try:
        db = connect(target, migrate=False)
    except DatabaseError:
        return []
    try:
        return db.query(sql)
    except db.errors:                       # the collector has not created its schema yet
        return []
    finally:
        db.close()


def _ids(target: str) -> set[str]:
    return {r[0] for r in _query(target, "SELECT id FROM events")}


def _output(broker: Broker, tmp_path: Path, name: str, **extra: Any) -> MqttOutput:  # noqa: F811
    o = broker.client_cert(name)
    return MqttOutput(ReporterSettings.from_options({
        "url": broker.tls_url, "site": "st-marys", "appliance": name, **o,
        "spool": str(tmp_path / f"{name}.db"), "batch": 10, "linger": 0.01,
        "min_interval": 0.05, "summary_window": 0, **extra}), mode="monitor")


def test_collectors_in_a_group_each_get_a_disjoint_share(broker: Broker,  # noqa: F811
                                                          tmp_path: Path, new_db: NewDb) -> None:
    targets = [new_db(f"fleet{i}") for i in range(3)]
    collectors = []
    for i, target in enumerate(targets):
        c = Collector(target, fleet_settings(broker, "collector"), group="g1",
                      collector_id=f"collector-{i}")
        c.start()
        collectors.append(c)
    outputs = []
    try:
        for c in collectors:
            wait_for(c.subscribed.is_set, what="the collectors' subscriptions")
        outputs = [_output(broker, tmp_path, name) for name in ("ward4b-01", "ward4b-02")]
        for k in range(30):
            for out in outputs:
                out.publish([{"type": "violation", "ts": 1e9 + k, "src": f"10.0.{k}.{j}",
                              "dst": "10.20.0.40", "proto": 6, "dport": 443,
                              "reason": "no_rule", "vlan": None} for j in range(20)])
        total = 2 * 30 * 20
        wait_for(lambda: sum(c.counts["events_new"] for c in collectors) >= total,
                 timeout=30, what="every event collected")
        shares = [_ids(t) for t in targets]
        assert all(shares), [len(s) for s in shares]          # everyone got some
        assert sum(len(s) for s in shares) == len(set().union(*shares)) == total  # disjoint
        # state (retained, not shared) reaches every collector
        for t in targets:
            wait_for(lambda t=t: _query(t, "SELECT count(*) FROM appliances WHERE "
                                           "status = 'online'") == [(2,)],
                     what="both appliances in every collector")
    finally:
        for out in outputs:
            out.close()
        for c in collectors:
            c.close()


def test_collect_command_and_fleet_list_from_its_database(broker: Broker,  # noqa: F811
                                                          tmp_path: Path, new_db: NewDb) -> None:
    db = new_db("fleet")
    env = fleet_env(broker)
    o = broker.client_cert("collector")
    env.update(WARDTAP_TLS_CERT=o["cert"], WARDTAP_TLS_KEY=o["key"])
    proc = subprocess.Popen([sys.executable, "-m", "appliance.cli", "fleet", "collect",
                             "--db", db, "--id", "c-cli"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = _output(broker, tmp_path, "ward4b-01", summary_window=60)
    try:
        # the retained state arrives with the same SUBSCRIBE as the shared event filter:
        # once it is stored, the collector's share of the events is being delivered
        wait_for(lambda: _query(db, "SELECT status FROM appliances") == [("online",)],
                 timeout=20, what="the collector to subscribe")
        now = time.time()
        out.publish([{"type": "violation", "ts": now, "src": "10.40.1.68", "dst": "10.20.0.40",
                      "proto": 6, "dport": p, "reason": "no_rule", "vlan": None}
                     for p in range(1, 31)])
        out.close()        # flushes the summary of the 25 folded ports
        wait_for(lambda: len(_ids(db)) == 6, timeout=20,
                 what="the collector to store the events")
        r = subprocess.run([sys.executable, "-m", "appliance.cli", "fleet", "list", "--db",
                            db], cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=30)
        assert r.returncode == 0, r.stderr
        line = next(x for x in r.stdout.splitlines() if "ward4b-01" in x)
        # closed cleanly: "stopped" (a lost connection would say "offline")
        assert "stopped" in line and "monitor" in line and " 30 " in line, r.stdout
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def test_malformed_messages_are_counted_and_never_stop_the_collector(
        broker: Broker, tmp_path: Path, new_db: NewDb) -> None:  # noqa: F811
    db = new_db("fleet")
    c = Collector(db, fleet_settings(broker, "collector"), collector_id="c-bad")
    c.start()
    hostile = [b"not json", b"[1, 2]", b'{"events": "nope"}', b'{"events": [{"no": "id"}]}',
               b'{"events": [{"id": "\\u0000x"}]}', b"\xff\xfe",
               json.dumps({"events": [{"id": "big-1", "type": "violation", "count": 10**40,
                                       "ts": 1e308, "src": "x" * 10000}]}).encode()]
    try:
        wait_for(c.subscribed.is_set, what="the collector to subscribe")
        # the plain loopback listener (no ACL), as a misbehaving client on the broker would
        from appliance.contract.broker import BrokerSettings, connect_and_wait, make_client

        settings = BrokerSettings.from_options(broker.url)
        client = make_client(settings, "hostile")
        connect_and_wait(client, settings)
        for payload in hostile:
            client.publish("wardtap/v1/st-marys/ward4b-09/events", payload, qos=1
                           ).wait_for_publish(5)
        client.publish("wardtap/v1/st-marys/ward4b-09/events", json.dumps(
            {"events": [{"id": "ok-1", "type": "violation", "ts": time.time()}]}).encode(),
            qos=1).wait_for_publish(5)
        client.disconnect()
        client.loop_stop()
        wait_for(lambda: "ok-1" in _ids(db), timeout=20, what="the good event after the bad")
        assert c.counts["malformed"] == 6, c.counts
        assert "big-1" in _ids(db)          # oversized values clamped, not refused
        rows = _query(db, "SELECT appliance, error FROM malformed ORDER BY id")
        assert len(rows) == 6 and all(r[0] in ("ward4b-09", None) for r in rows), rows
        assert _query(db, "SELECT malformed FROM appliances WHERE appliance = 'ward4b-09'") \
            == [(6,)]
    finally:
        c.close()


def _collect_proc(broker: Broker, db: str, cid: str, log: Path) -> subprocess.Popen[str]:  # noqa: F811
    env = fleet_env(broker)
    o = broker.client_cert("collector")
    env.update(WARDTAP_TLS_CERT=o["cert"], WARDTAP_TLS_KEY=o["key"])
    fh = open(log, "w")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "appliance.cli", "fleet", "collect",
                             "--db", db, "--id", cid, "--group", "g2"], cwd=ROOT, env=env,
                            stdout=fh, stderr=subprocess.STDOUT, text=True)
    fh.close()
    return proc


def test_two_collectors_one_postgres_lose_and_double_count_nothing_across_kill9(
        broker: Broker, tmp_path: Path, postgres: Postgres) -> None:  # noqa: F811
    db = postgres.create_database()
    procs = [_collect_proc(broker, db, f"c{i}", tmp_path / f"c{i}.log") for i in range(2)]
    outputs: list[MqttOutput] = []
    total = 4 * 1500
    try:
        wait_for(lambda: len(_query(db, "SELECT collector FROM collectors")) == 0 and
                 _query(db, "SELECT 1 FROM schema_version") != [], timeout=20,
                 what="the collectors' schema")
        outputs = [_output(broker, tmp_path, f"ward4b-0{i}") for i in range(1, 5)]
        wait_for(lambda: _query(db, "SELECT count(*) FROM appliances WHERE status = 'online'")
                 == [(4,)], timeout=20, what="both collectors subscribed")
        killed = False
        for k in range(30):
            for out in outputs:
                out.publish([{"type": "violation", "ts": 1.7e9 + k, "n": k * 50 + j,
                              "src": "10.0.0.1", "dst": "10.20.0.40", "proto": 6,
                              "dport": 443, "reason": "no_rule"} for j in range(50)])
            if k == 10 and not killed:
                # collector c0 dies mid-stream (kill -9), then comes back
                wait_for(lambda: _query(db, "SELECT count(*) FROM collectors")[0][0] == 2,
                         timeout=20, what="both collectors writing")
                procs[0].send_signal(signal.SIGKILL)
                procs[0].wait(timeout=10)
                killed = True
            if k == 20:
                procs[0] = _collect_proc(broker, db, "c0", tmp_path / "c0-again.log")
        wait_for(lambda: _query(db, "SELECT count(*) FROM events")[0][0] >= total
                 and all(o.spool.depth() == 0 for o in outputs), timeout=60,
                 what="every event committed and acknowledged")
        assert _query(db, "SELECT count(*), count(DISTINCT site || appliance || id) "
                          "FROM events") == [(total, total)]
        # rollups and collector counters grew once per event: nothing counted twice
        assert _query(db, "SELECT sum(events), sum(violations) FROM timeline_minute") == \
            [(total, total)]
        assert _query(db, "SELECT sum(events) FROM timeline_hour") == [(total,)]
        assert _query(db, "SELECT sum(events_new) FROM collectors") == [(total,)]
        by = dict(_query(db, "SELECT collector, count(*) FROM events GROUP BY collector"))
        assert by.get("c1", 0) > 0 and by.get("c0", 0) > 0, by
    finally:
        for out in outputs:
            out.close()
        for p in procs:
            if p.poll() is None:
                p.terminate()
                p.wait(timeout=15)
