"""Command-line and configuration: keygen, watch, replay --broker, passwords, [broker]."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from brokerkit import ROOT, Broker, Watcher, broker, fleet_env, wait_for  # noqa: F401

from appliance.contract.broker import (
    BrokerSettings,
    ContractError,
    connect_and_wait,
    make_client,
    topic,
)
from appliance.outputs.mqtt import MqttOutput, ReporterSettings
from appliance.system.config import ConfigError, load_config
from demoward.ward import DEMO_POLICY, write_demo_ward


def _wardtap(*args: str, env: dict[str, str] | None = None,
             timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "appliance.cli", *args], cwd=ROOT,
                          env=env or dict(os.environ, PYTHONPATH=str(ROOT)),
                          capture_output=True, text=True, timeout=timeout)


def test_keygen_writes_a_private_key_only_the_owner_reads(tmp_path: Path) -> None:
    r = _wardtap("fleet", "keygen", "--dir", str(tmp_path / "keys"))
    assert r.returncode == 0 and "fleet signing key" in r.stdout, r.stderr
    private = tmp_path / "keys" / "fleet.key"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert b"PUBLIC KEY" in (tmp_path / "keys" / "fleet.pub").read_bytes()
    again = _wardtap("fleet", "keygen", "--dir", str(tmp_path / "keys"))
    assert again.returncode == 2 and "refusing to overwrite" in again.stderr


@pytest.mark.parametrize("table, message", [
    ('url = "mqtt://ward:secret@broker:1883"\nsite = "s"\nappliance = "a"',
     "a password does not belong in a URL"),
    ('url = "http://broker"\nsite = "s"\nappliance = "a"', "use mqtt://HOST:PORT"),
    ('url = "mqtt://broker"\nsite = "s"\nappliance = "ward/4b"', "no spaces, '/'"),
    ('url = "mqtt://broker"\nsite = "s"', "[broker] needs appliance"),
    ('url = "mqtt://broker"\nsite = "s"\nappliance = "a"\ninflight = "many"',
     "must be int"),
])
def test_broker_table_errors_name_the_line(tmp_path: Path, table: str, message: str) -> None:
    path = tmp_path / "wardtap.toml"
    path.write_text('[appliance]\nmode = "learn"\n[datapath]\ntype = "tap"\n'
                    'interface = "eth1"\n[store]\npath = "w.db"\n[broker]\n' + table + "\n")
    with pytest.raises(ConfigError) as err:
        load_config(str(path))
    assert message in str(err.value) and str(path) in str(err.value)


def test_broker_table_defaults(tmp_path: Path) -> None:
    path = tmp_path / "wardtap.toml"
    path.write_text('[appliance]\nmode = "learn"\nname = "ward4b-01"\n[datapath]\n'
                    'type = "tap"\ninterface = "eth1"\n[store]\npath = "w.db"\n'
                    '[broker]\nurl = "mqtts://broker:8883"\nsite = "st-marys"\n'
                    'fleet_key = "keys/fleet.pub"\n')
    broker_options = load_config(str(path)).broker
    assert broker_options is not None
    assert broker_options["appliance"] == "ward4b-01"
    assert broker_options["spool"] == str(tmp_path / "w.db")
    assert broker_options["fleet_key"] == str(tmp_path / "keys" / "fleet.pub")


def test_username_and_password_from_a_file_or_the_environment(
        broker: Broker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    assert broker.ca is not None
    ca = str(broker.ca.ca_path)
    secret = tmp_path / "password"
    secret.write_text(broker.passwords["ward4b-01"] + "\n")
    settings = ReporterSettings.from_options({
        "url": broker.password_url, "site": "st-marys", "appliance": "ward4b-01", "ca": ca,
        "username": "ward4b-01", "password_file": str(secret),
        "spool": str(tmp_path / "s.db"), "linger": 0.01, "min_interval": 0.05})
    assert "pw-" not in repr(settings)                     # never printed
    fleet_pw = tmp_path / "fleet-password"
    fleet_pw.write_text(broker.passwords["fleet"])
    fleet = BrokerSettings.from_options(broker.password_url, ca=ca, username="fleet",
                                        password_file=str(fleet_pw))
    watcher = Watcher(fleet, ["wardtap/v1/#"])
    out = MqttOutput(settings, mode="monitor")
    try:
        out.publish([{"type": "new_device", "ts": 1.0, "mac": "00:12:21:00:00:01",
                      "ip": "10.1.1.1", "vlan": None}])
        wait_for(lambda: out.spool.depth() == 0 and watcher.last(
            topic("st-marys", "ward4b-01", "events")), what="delivery with a password")
    finally:
        out.close()
        watcher.close()
    # the same password from the environment; a wrong one is refused
    monkeypatch.setenv("WARDTAP_MQTT_PASSWORD", broker.passwords["ward4b-01"])
    env_settings = BrokerSettings.from_options(broker.password_url, ca=ca,
                                               username="ward4b-01")
    client = make_client(env_settings, "env-check")
    connect_and_wait(client, env_settings)
    client.disconnect()
    client.loop_stop()
    monkeypatch.setenv("WARDTAP_MQTT_PASSWORD", "wrong")
    wrong = BrokerSettings.from_options(broker.password_url, ca=ca, username="ward4b-01")
    client = make_client(wrong, "wrong-password")
    with pytest.raises(ContractError, match="refused"):
        connect_and_wait(client, wrong)


def test_replay_reports_to_the_broker(broker: Broker, tmp_path: Path) -> None:  # noqa: F811
    write_demo_ward(str(tmp_path / "ward.pcap"), packets=5000)
    (tmp_path / "policy.toml").write_text(DEMO_POLICY)
    watcher = Watcher(BrokerSettings.from_options(broker.url), ["wardtap/v1/#"])
    try:
        r = _wardtap("replay", str(tmp_path / "ward.pcap"), "--policy",
                     str(tmp_path / "policy.toml"), "--db", str(tmp_path / "w.db"),
                     "--broker", broker.url, "--site", "lab", "--appliance", "bench-1")
        assert r.returncode == 0, r.stderr
        assert "messages acknowledged" in r.stderr and "still in the spool" not in r.stderr
        msgs = watcher.poll()
        events = [e for m in msgs if m.topic.endswith("/events")
                  for e in json.loads(m.payload)["events"]]
        assert sum(e["type"] == "new_device" for e in events) == 22
        violations = [e for e in events if e["type"] == "violation"]
        assert violations and all(e["id"] for e in events)
        leaves = {m.topic.rsplit("/", 1)[1] for m in msgs}
        assert leaves == {"state", "events", "inventory", "stats"}
    finally:
        watcher.close()


def test_fleet_watch_prints_live_events(broker: Broker, tmp_path: Path) -> None:  # noqa: F811
    env = fleet_env(broker)
    watch = subprocess.Popen([sys.executable, "-m", "appliance.cli", "fleet", "watch",
                              "--json", "--count", "3", "--timeout", "30"], cwd=ROOT, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    o = broker.client_cert("ward4b-01")
    out = MqttOutput(ReporterSettings.from_options({
        "url": broker.tls_url, "site": "st-marys", "appliance": "ward4b-01", **o,
        "spool": str(tmp_path / "s.db"), "linger": 0.01, "min_interval": 0.01,
        "summary_window": 0, "drain_timeout": 0}), mode="monitor")
    try:
        deadline = time.monotonic() + 30
        k = 0
        while watch.poll() is None and time.monotonic() < deadline:
            # keep events coming until the watcher has subscribed and printed three
            out.publish([{"type": "violation", "ts": time.time(), "src": f"10.0.0.{k % 250}",
                          "dst": "10.20.0.40", "proto": 6, "dport": 22, "reason": "no_rule",
                          "vlan": None}])
            k += 1
            try:
                watch.wait(timeout=0.2)
            except subprocess.TimeoutExpired:
                pass
        stdout, stderr = watch.communicate(timeout=10)
        assert watch.returncode == 0, stderr
        lines = [json.loads(x) for x in stdout.splitlines() if x.strip()]
        events = [x for x in lines if x.get("type") == "violation"]
        assert len(events) == 3 and all(e["appliance"] == "st-marys/ward4b-01" for e in events)
    finally:
        if watch.poll() is None:
            watch.kill()
        out.close()
