"""`wardtap fleet collect`: shared subscriptions split the events between collectors."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

from brokerkit import ROOT, Broker, broker, fleet_env, fleet_settings, wait_for  # noqa: F401

from appliance.fleet.collector import Collector
from appliance.outputs.mqtt import MqttOutput, ReporterSettings


def _query(db: Path, sql: str) -> list[tuple]:
    if not db.exists():
        return []
    conn = sqlite3.connect(db, timeout=10)
    try:
        return conn.execute(sql).fetchall()
    except sqlite3.OperationalError:       # the collector has not created its schema yet
        return []
    finally:
        conn.close()


def _ids(db: Path) -> set[str]:
    return {r[0] for r in _query(db, "SELECT id FROM events")}


def test_collectors_in_a_group_each_get_a_disjoint_share(broker: Broker,  # noqa: F811
                                                          tmp_path: Path) -> None:
    collectors = []
    for i in range(3):
        settings = fleet_settings(broker, "collector")
        c = Collector(str(tmp_path / f"fleet{i}.db"), settings, group="g1",
                      collector_id=f"collector-{i}")
        c.start()
        collectors.append(c)
    outputs = []
    try:
        for c in collectors:
            wait_for(c.subscribed.is_set, what="the collectors' subscriptions")
        for name in ("ward4b-01", "ward4b-02"):
            o = broker.client_cert(name)
            outputs.append(MqttOutput(ReporterSettings.from_options({
                "url": broker.tls_url, "site": "st-marys", "appliance": name, **o,
                "spool": str(tmp_path / f"{name}.db"), "batch": 10, "linger": 0.01,
                "min_interval": 0.05, "summary_window": 0}), mode="monitor"))
        for k in range(30):
            for out in outputs:
                out.publish([{"type": "violation", "ts": 1e9 + k, "src": f"10.0.{k}.{j}",
                              "dst": "10.20.0.40", "proto": 6, "dport": 443,
                              "reason": "no_rule", "vlan": None} for j in range(20)])
        total = 2 * 30 * 20
        wait_for(lambda: sum(c.counts["events_new"] for c in collectors) >= total,
                 timeout=30, what="every event collected")
        shares = [_ids(tmp_path / f"fleet{i}.db") for i in range(3)]
        assert all(shares), [len(s) for s in shares]          # everyone got some
        assert sum(len(s) for s in shares) == len(set().union(*shares)) == total  # disjoint
        # state (retained, not shared) reaches every collector
        for i in range(3):
            conn = sqlite3.connect(tmp_path / f"fleet{i}.db")
            try:
                wait_for(lambda conn=conn: conn.execute(
                    "SELECT count(*) FROM appliances WHERE status = 'online'").fetchone()[0]
                    == 2, what="both appliances in every collector")
            finally:
                conn.close()
    finally:
        for out in outputs:
            out.close()
        for c in collectors:
            c.close()


def test_collect_command_and_fleet_list_from_its_database(broker: Broker,  # noqa: F811
                                                          tmp_path: Path) -> None:
    db = tmp_path / "fleet.db"
    env = fleet_env(broker)
    o = broker.client_cert("collector")
    env.update(WARDTAP_TLS_CERT=o["cert"], WARDTAP_TLS_KEY=o["key"])
    proc = subprocess.Popen([sys.executable, "-m", "appliance.cli", "fleet", "collect",
                             "--db", str(db), "--id", "c-cli"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    a = broker.client_cert("ward4b-01")
    out = MqttOutput(ReporterSettings.from_options({
        "url": broker.tls_url, "site": "st-marys", "appliance": "ward4b-01", **a,
        "spool": str(tmp_path / "ap.db"), "linger": 0.01, "min_interval": 0.05}), mode="enforce")
    try:
        import time

        # the retained state arrives with the same SUBSCRIBE as the shared event filter:
        # once it is stored, the collector's share of the events is being delivered
        wait_for(lambda: _query(db, "SELECT status FROM appliances") == [("online",)],
                 timeout=20, what="the collector to subscribe")
        now = time.time()
        out.publish([{"type": "violation", "ts": now, "src": "10.40.1.68", "dst": "10.20.0.40",
                      "proto": 6, "dport": p, "reason": "no_rule", "vlan": None}
                     for p in range(1, 31)])
        out.close()        # flushes the summary of the 25 folded ports
        wait_for(lambda: db.exists() and len(_ids(db)) == 6, timeout=20,
                 what="the collector to store the events")
        r = subprocess.run([sys.executable, "-m", "appliance.cli", "fleet", "list", "--db",
                            str(db)], cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=30)
        assert r.returncode == 0, r.stderr
        line = next(x for x in r.stdout.splitlines() if "ward4b-01" in x)
        # closed cleanly: "stopped" (a lost connection would say "offline")
        assert "stopped" in line and "enforce" in line and " 30 " in line, r.stdout
    finally:
        proc.terminate()
        proc.wait(timeout=15)
