"""broker/wardtap.acl on a real mosquitto: an appliance cannot publish or listen as another."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from brokerkit import Broker, Watcher, broker, fleet_settings, wait_for  # noqa: F401

from appliance.contract.broker import BrokerSettings, connect_and_wait, make_client, topic
from appliance.fleet.client import unsigned_request
from appliance.outputs.mqtt import MqttOutput, ReporterSettings


class Client:
    """A raw MQTT 5 client holding one appliance's certificate."""

    def __init__(self, b: Broker, cn: str) -> None:
        o = b.client_cert(cn)
        self.settings = BrokerSettings.from_options(b.tls_url, ca=o["ca"], cert=o["cert"],
                                                    key=o["key"])
        self.client = make_client(self.settings, f"raw-{cn}")
        self.acks: dict[int, Any] = {}
        self.received: list[str] = []
        self.lock = threading.Lock()
        self.client.on_publish = lambda c, u, mid, rc, p: self.acks.__setitem__(mid, rc)
        self.client.on_message = lambda c, u, m: self.received.append(m.topic)
        connect_and_wait(self.client, self.settings)

    def publish(self, name: str, payload: bytes = b"{}") -> Any:
        info = self.client.publish(name, payload, qos=1)
        return wait_for(lambda: self.acks.get(info.mid), what=f"PUBACK for {name}")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_an_appliance_publishes_only_under_its_own_id(broker: Broker) -> None:  # noqa: F811
    watcher = Watcher(fleet_settings(broker), ["wardtap/v1/#"])
    ap1 = Client(broker, "ward4b-01")
    try:
        for leaf in ("events", "state", "stats", "inventory", "response/x"):
            assert not ap1.publish(topic("st-marys", "ward4b-01", leaf)).is_failure
            refused = ap1.publish(topic("st-marys", "ward4b-02", leaf))
            assert refused.is_failure and refused.value == 0x87, refused   # Not authorized
        for name in (topic("st-marys", "ward4b-02", "cmd"), topic("st-marys", "ward4b-01", "cmd"),
                     "wardtap/v1/st-marys/ward4b-01/other", "wardtap/v2/x/ward4b-01/events"):
            assert ap1.publish(name).is_failure
        # a barrier: mosquitto forwards one client's messages in order, so once this
        # last allowed message is in, any refused one would have been delivered before it
        ap1.publish(topic("st-marys", "ward4b-01", "events"), b'"marker"')
        wait_for(lambda: any(m.payload == b'"marker"' for m in watcher.poll()),
                 what="the barrier message")
        seen = {m.topic for m in watcher.poll()}
        assert all("/ward4b-01/" in t for t in seen) and len(seen) == 5, seen
    finally:
        ap1.close()
        watcher.close()


def test_an_appliance_reads_only_its_own_commands(broker: Broker) -> None:  # noqa: F811
    ap1 = Client(broker, "ward4b-01")
    fleet = Client(broker, "fleet")
    try:
        for name in (topic("st-marys", "ward4b-01", "cmd"), topic("st-marys", "ward4b-02", "cmd"),
                     "wardtap/v1/#"):
            ap1.client.subscribe(name, qos=1)
        for target in ("ward4b-02", "ward4b-01"):      # ours last: when it arrives, all did
            assert not fleet.publish(topic("st-marys", target, "cmd"),
                                     unsigned_request("status", {})).is_failure
        wait_for(lambda: topic("st-marys", "ward4b-01", "cmd") in ap1.received,
                 what="our own command")
        assert set(ap1.received) == {topic("st-marys", "ward4b-01", "cmd")}
        # the fleet identity may command, but never speak as an appliance
        assert fleet.publish(topic("st-marys", "ward4b-01", "events")).is_failure
    finally:
        ap1.close()
        fleet.close()


def test_a_reporter_with_the_wrong_identity_keeps_its_events(broker: Broker,  # noqa: F811
                                                              tmp_path: Path) -> None:
    """Certificate ward4b-01 configured as ward4b-02: refused PUBACKs, nothing deleted."""
    o = broker.client_cert("ward4b-01")
    out = MqttOutput(ReporterSettings.from_options({
        "url": broker.tls_url, "site": "st-marys", "appliance": "ward4b-02", **o,
        "spool": str(tmp_path / "spool.db"), "linger": 0.01, "min_interval": 0.05,
        "drain_timeout": 0}),
        mode="monitor")
    try:
        out.publish([{"type": "violation", "ts": 1.0, "src": "10.0.0.1", "dst": "10.0.0.2",
                      "proto": 6, "dport": 22, "reason": "no_rule", "vlan": None}])
        wait_for(lambda: out.counters["refused_by_broker"] >= 1, what="the refusal")
        assert out.spool.depth() == 1 and out.counters["acknowledged"] == 0
    finally:
        out.close()


def test_no_certificate_no_connection(broker: Broker) -> None:  # noqa: F811
    from appliance.contract.broker import ContractError

    assert broker.ca is not None
    settings = BrokerSettings.from_options(broker.tls_url, ca=str(broker.ca.ca_path))
    client = make_client(settings, "anonymous")
    try:
        connect_and_wait(client, settings, timeout=2)
    except ContractError:
        return
    finally:
        client.loop_stop()
    raise AssertionError("connected without a client certificate")


def test_stats_and_state_payloads_are_json_objects(broker: Broker,  # noqa: F811
                                                    tmp_path: Path) -> None:
    o = broker.client_cert("ward4b-01")
    out = MqttOutput(ReporterSettings.from_options({
        "url": broker.tls_url, "site": "st-marys", "appliance": "ward4b-01", **o,
        "spool": str(tmp_path / "spool.db"), "stats_interval": 0}), mode="learn")
    watcher = Watcher(fleet_settings(broker), [topic("st-marys", "ward4b-01", "#")])
    try:
        wait_for(out.connected.is_set, what="the connection")
        out.snapshot({"packets": 5}, [])
        wait_for(lambda: out.spool.depth() == 0 and watcher.last(
            topic("st-marys", "ward4b-01", "stats")), what="stats")
        for msg in watcher.poll():
            body = json.loads(msg.payload)
            assert body["v"] == 1 and body["site"] == "st-marys"
    finally:
        watcher.close()
        out.close()
