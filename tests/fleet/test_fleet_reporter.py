"""The appliance's MQTT reporter against a real mosquitto: birth, last will, shutdown, stats."""

from __future__ import annotations

import json
from pathlib import Path

from brokerkit import (
    ApplianceProcess,
    Watcher,
    broker,  # noqa: F401  (fixture)
    fleet_settings,
    wait_for,
    write_appliance,
)

from appliance.contract.broker import BrokerSettings, topic
from appliance.outputs.mqtt import MqttOutput, ReporterSettings
from appliance.outputs.summarizer import Summarizer

STATE = topic("st-marys", "ward4b-01", "state")


def _state(w: Watcher) -> dict | None:
    msg = w.last(STATE)
    return json.loads(msg.payload) if msg is not None else None


def test_birth_then_last_will_on_kill9(broker, tmp_path: Path) -> None:  # noqa: F811
    app = ApplianceProcess(write_appliance(tmp_path / "ap", broker, "ward4b-01"))
    w = Watcher(fleet_settings(broker), [STATE, topic("st-marys", "ward4b-01", "inventory")])
    try:
        app.start()
        birth = wait_for(lambda: (s := _state(w)) and s["status"] == "online" and s,
                         timeout=20, what="the retained birth message")
        assert isinstance(birth, dict)
        assert birth["mode"] == "monitor" and birth["version"]
        assert birth["policy"]["name"] == "demo-ward-4b" and birth["policy"]["version"] == 1
        assert len(birth["policy"]["sha256"]) == 64
        assert birth["spool_overflow"] is False and "depth" in birth["spool"]
        assert birth["uptime_s"] >= 0
        app.kill9()
        will = wait_for(lambda: (s := _state(w)) and s["status"] == "offline" and s,
                        timeout=10, what="the last will")
        assert isinstance(will, dict) and will["reason"] == "connection lost"
        # retained: a subscriber arriving later sees the appliance offline at once
        late = Watcher(fleet_settings(broker), [STATE])
        try:
            msg = wait_for(lambda: late.last(STATE), what="the retained state")
            assert msg.retain and json.loads(msg.payload)["status"] == "offline"
        finally:
            late.close()
    finally:
        w.close()
        app.close()


def test_clean_shutdown_publishes_offline_itself(broker, tmp_path: Path) -> None:  # noqa: F811
    app = ApplianceProcess(write_appliance(tmp_path / "ap", broker, "ward4b-01"))
    w = Watcher(fleet_settings(broker), ["wardtap/v1/#"])
    try:
        app.start()
        wait_for(lambda: (s := _state(w)) and s["status"] == "online", timeout=20,
                 what="the birth message")
        wait_for(lambda: w.last(topic("st-marys", "ward4b-01", "events")), timeout=20,
                 what="the first events")
        assert app.terminate() == 0
        state = wait_for(lambda: (s := _state(w)) and s["status"] == "offline" and s,
                         timeout=10, what="the offline message")
        assert isinstance(state, dict) and state["reason"] == "shutdown" and state["ts"]
    finally:
        w.close()
        app.close()


def test_starts_while_broker_is_down_then_delivers(broker, tmp_path: Path) -> None:  # noqa: F811
    broker.stop()
    settings = ReporterSettings.from_options({
        "url": broker.url, "site": "s1", "appliance": "a1", "spool": str(tmp_path / "s.db"),
        "linger": 0.01, "min_interval": 0.05, "stats_interval": 0, "reconnect_max": 1})
    out = MqttOutput(settings, mode="monitor")
    try:
        out.publish([{"type": "new_device", "ts": 1.0, "mac": "00:12:21:00:00:01",
                      "ip": "10.1.1.1", "vlan": None}])
        out.snapshot({"packets": 100, "allowed": 90, "denied": 10}, [])
        assert out.spool.depth() == 2 and not out.connected.is_set()
        broker.start()
        w = Watcher(BrokerSettings.from_options(broker.url), [topic("s1", "a1", "#")])
        try:
            wait_for(lambda: out.spool.depth() == 0, timeout=15, what="the spool to drain")
            stats = json.loads(wait_for(lambda: w.last(topic("s1", "a1", "stats")),
                                        what="stats").payload)
            assert stats["counters"]["packets"] == 100 and stats["counters"]["denied"] == 10
            assert stats["id"].startswith(out.spool.epoch)
            out.snapshot({"packets": 250, "allowed": 230, "denied": 20}, [])
            wait_for(lambda: json.loads(w.last(topic("s1", "a1", "stats")).payload)
                     ["counters"]["packets"] == 150, what="the second interval's delta")
        finally:
            w.close()
    finally:
        out.close()


def test_repeated_violations_of_one_flow_are_summarised() -> None:
    s = Summarizer(window=60.0, per_group=5, clock=lambda: 1000.0)
    base = {"type": "violation", "src": "10.40.1.68", "dst": "10.20.0.40", "proto": 6,
            "vlan": None, "reason": "no_rule"}
    out = []
    for i in range(100):                                     # a port scan: 100 ports
        out += s.add({**base, "ts": 100.0 + i * 0.01, "dport": i + 1})
    for _ in range(50):                                      # the same flow, 50 more times
        out += s.add({**base, "ts": 102.0, "dport": 1})
    assert len(out) == 5 and all(e["count"] == 1 for e in out)
    out += s.add({**base, "ts": 170.0, "dport": 7})          # the window has closed
    summary = [e for e in out if e.get("summary")]
    assert len(summary) == 1 and summary[0]["count"] == 95 + 50
    assert summary[0]["ports"][:3] == [6, 7, 8] and len(summary[0]["ports"]) == 64  # capped
    assert summary[0]["first_ts"] == 100.05 and summary[0]["ts"] == 102.0
    assert sum(e["count"] for e in out) == 151              # every violation is counted
    out += s.flush()
    assert sum(e["count"] for e in out) == 151
    other = s.add({**base, "src": "10.40.1.99", "ts": 171.0, "dport": 1})
    assert other and other[0]["count"] == 1                  # another host: sent at once
