"""No event lost or invented across broker stop/start and appliance kill -9, end to end.

The consumer is the real collector (persistent session, manual acks, de-duplication by
event id). Every spool row ever allocated has the id "<epoch>-<row id>" with row ids
1..N (AUTOINCREMENT); at the end the collector must hold exactly those ids: none missing
(lost), none extra (invented); resends are counted as duplicates and dropped.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

from brokerkit import (
    ROOT,
    ApplianceProcess,
    Broker,
    broker,  # noqa: F401
    fleet_settings,
    spool_facts,
    wait_for,
    write_appliance,
)

from appliance.fleet.collector import Collector


def _collector(b: Broker, db: Path, cid: str = "c1") -> Collector:
    settings = fleet_settings(b, "collector")
    settings.reconnect_max = 1
    c = Collector(str(db), settings, collector_id=cid)
    c.start()
    wait_for(c.subscribed.is_set, timeout=10, what="the collector to subscribe")
    return c


def _collected(db: Path) -> tuple[set[str], list[dict[str, Any]]]:
    conn = sqlite3.connect(db, timeout=10)
    try:
        events = [json.loads(p) for (p,) in conn.execute("SELECT payload FROM events")]
        stats = {i for (i,) in conn.execute("SELECT id FROM stats")}
    finally:
        conn.close()
    return {e["id"] for e in events} | stats, events


def test_daemon_kill9_and_broker_restarts_lose_and_invent_nothing(
        broker: Broker, tmp_path: Path) -> None:  # noqa: F811
    fleet_db = tmp_path / "fleet.db"
    collector = _collector(broker, fleet_db)
    ap_dir = write_appliance(tmp_path / "ap", broker, "ward4b-01", packets=5000)
    app = ApplianceProcess(ap_dir)
    store = ap_dir / "wardtap.db"
    try:
        broker.stop()                                     # 1. the broker is down
        app.start()                                       # run 1 spools, cannot send
        wait_for(lambda: store.exists() and spool_facts(store)[1] >= 20, timeout=20,
                 what="run 1 to spool events")
        app.kill9()
        first = spool_facts(store)
        app.start()                                       # run 2, broker still down
        wait_for(lambda: spool_facts(store)[1] >= 2 * first[1], timeout=20,
                 what="run 2 to spool its own events")
        broker.start()                                    # 2. back: everything drains
        wait_for(lambda: spool_facts(store)[2] == 0, timeout=30, what="the backlog to drain")
        app.kill9()                                       # 3. kill -9 while connected
        broker.restart()                                  # 4. a broker restart
        app.start()                                       # run 3
        wait_for(lambda: spool_facts(store)[1] >= 3 * first[1] and spool_facts(store)[2] == 0,
                 timeout=30, what="run 3 to report")
        assert app.terminate() == 0                       # 5. a clean stop
        epoch, last, depth = spool_facts(store)
        assert depth == 0
        expected = {f"{epoch}-{i}" for i in range(1, last + 1)}
        try:
            wait_for(lambda: len(_collected(fleet_db)[0]) >= len(expected), timeout=20,
                     what="the collector to catch up")
        except AssertionError:
            got = _collected(fleet_db)[0]
            missing = sorted(int(i.split("-")[1]) for i in expected - got)
            raise AssertionError(f"missing {len(missing)} of {len(expected)}: {missing[:50]} "
                                 f"first run {first}; counts {collector.counts}") from None
        got, events = _collected(fleet_db)
        assert got - expected == set(), "invented"
        assert expected - got == set(), "lost"
        # not invented, by content: every single event was produced by the classifier
        produced = {(e["type"], e["ts"], e.get("src") or e.get("mac"), e.get("dport"))
                    for e in map(json.loads,
                                 (ap_dir / "events.jsonl").read_text().splitlines())}
        for e in events:
            if e["type"] in ("violation", "new_device") and not e.get("summary"):
                assert (e["type"], e["ts"], e.get("src") or e.get("mac"),
                        e.get("dport")) in produced, e
        assert sum(e["type"] == "new_device" for e in events) == 3 * 22
    finally:
        app.close()
        collector.close()


def test_loadgen_kill9_and_broker_restarts_mid_stream(broker: Broker,  # noqa: F811
                                                      tmp_path: Path) -> None:
    total = 20_000
    fleet_db = tmp_path / "fleet.db"
    spool = tmp_path / "spool.db"
    collector = _collector(broker, fleet_db)
    args = [sys.executable, "-m", "demoward.loadgen", "--broker", broker.url, "--site",
            "soak", "--appliance", "gen-1", "--spool", str(spool), "--events", str(total),
            "--rate", "4000", "--reconnect-max", "1"]
    procs: list[subprocess.Popen[bytes]] = []

    def launch() -> None:
        log = open(tmp_path / f"loadgen-{len(procs)}.log", "wb")  # noqa: SIM115
        procs.append(subprocess.Popen(args, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT))
        log.close()

    def committed() -> int:
        return spool_facts(spool)[1] if spool.exists() else 0

    try:
        launch()
        wait_for(lambda: committed() >= 4000, timeout=20, what="4000 events")
        broker.restart()                                   # mid-stream, events in flight
        wait_for(lambda: committed() >= 8000, timeout=20, what="8000 events")
        procs[-1].kill()                                   # kill -9 mid-stream
        procs[-1].wait(timeout=10)
        launch()
        wait_for(lambda: committed() >= 12000, timeout=20, what="12000 events")
        broker.stop()                                      # down for a while
        wait_for(lambda: committed() >= 14000, timeout=20, what="spooling while down")
        broker.start()
        assert procs[-1].wait(timeout=60) == 0, (tmp_path / "loadgen-1.log").read_text()
        epoch, last, depth = spool_facts(spool)
        assert (last, depth) == (total, 0)
        wait_for(lambda: collector.counts["events_new"] >= total, timeout=30,
                 what="the collector to receive everything")
        got, events = _collected(fleet_db)
        assert got == {f"{epoch}-{i}" for i in range(1, total + 1)}
        assert sorted(e["n"] for e in events) == list(range(total))   # content intact
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        collector.close()
