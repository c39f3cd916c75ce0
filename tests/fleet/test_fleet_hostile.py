"""Hostile fleet messages against a real daemon and a real mosquitto (TLS, ACL): each one is
a rejection that is audited and answered, the daemon keeps running on its policy, a restart
works, and its log has no traceback.

A deep-nesting policy as a correctly signed push; signed times that are NaN, Infinity or
1e999; a sequence number of 2^63-1; a policy version of 2^63-1 and one far above the running
one; a response topic with a wildcard; payloads nested 100,000 deep, not UTF-8, with
duplicate keys; identify beyond its bounds and repeated; a flood of bad requests.
"""

from __future__ import annotations

import base64
import json
import sqlite3
import time
from types import SimpleNamespace
from typing import Any

import pytest
from brokerkit import (
    ApplianceProcess,
    Watcher,
    fleet_settings,
    running_broker,
    wait_for,
    write_appliance,
)

from appliance.contract.broker import topic
from appliance.contract.signing import generate_keypair, key_id, load_private_key
from appliance.fleet.client import FleetClient, SequenceCounter, signed_request, unsigned_request
from demoward.ward import DEMO_POLICY

SITE, NAME = "st-marys", "ward4b-01"
TARGET = (SITE, NAME)
DEEP = "[policy]\nname = 'deep'\nversion = 9\nx = " + "[" * 3000 + "]" * 3000 + "\n"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    d = tmp_path_factory.mktemp("hostile")
    with running_broker(d / "broker") as broker:
        generate_keypair(str(d / "fleet.key"), str(d / "fleet.pub"))
        app = ApplianceProcess(write_appliance(d / "ap", broker, NAME, packets=3000,
                                               fleet_pub=str(d / "fleet.pub"), mode="enforce"))
        app.start()
        fc = FleetClient(fleet_settings(broker))
        fc.__enter__()
        try:
            wait_for(lambda: fc.appliances(SITE, NAME).get(TARGET, {}).get("state", {})
                     .get("status") == "online", timeout=30, what="the appliance online")
            yield SimpleNamespace(broker=broker, app=app, fc=fc, dir=d,
                                  key=load_private_key(str(d / "fleet.key")),
                                  counter=SequenceCounter(str(d / "fleet.key.seq")))
        finally:
            fc.close()
            app.close()


def ask(fleet: Any, payload: bytes, timeout: float = 20.0) -> dict[str, Any]:
    answer = fleet.fc.request([TARGET], lambda s, a: payload, timeout)[TARGET]
    assert answer is not None, f"no answer; daemon log:\n{fleet.app.log()[-3000:]}"
    return dict(answer)


def signed(fleet: Any, name: str, args: dict[str, Any]) -> bytes:
    return signed_request(fleet.key, fleet.counter, SITE, NAME, name, args)


def signed_raw(fleet: Any, body: bytes) -> bytes:
    """An envelope around exactly these body bytes, correctly signed."""
    return json.dumps({"v": 1, "key": key_id(fleet.key.public_key()),
                       "body": base64.b64encode(body).decode(),
                       "sig": base64.b64encode(fleet.key.sign(body)).decode()}).encode()


def body_with(fleet: Any, **fields: Any) -> dict[str, Any]:
    now = time.time()
    return {"v": 1, "cmd": "mode", "args": {"mode": "bypass"}, "target": f"{SITE}/{NAME}",
            "seq": fleet.counter.next(), "issued": now, "expires": now + 60, **fields}


def status(fleet: Any) -> dict[str, Any]:
    return ask(fleet, unsigned_request("status", {}))


def audit(fleet: Any) -> list[dict[str, Any]]:
    conn = sqlite3.connect(fleet.dir / "ap" / "wardtap.db", timeout=10)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM audit ORDER BY id")]
    finally:
        conn.close()


def test_signed_deep_policy_push_is_rejected_audited_and_restart_works(fleet: Any) -> None:
    before = status(fleet)
    answer = ask(fleet, signed(fleet, "policy", {"policy": DEEP}))
    assert answer["ok"] is False and answer["reason"] == "invalid_policy", answer
    assert "nested more than 32 levels deep" in answer["error"]
    row = [r for r in audit(fleet) if r["command"] == "policy"][-1]
    assert row["outcome"] == "rejected" and row["reason"] == "invalid_policy"
    assert "nested more than 32" in row["detail"] and row["finished"]
    after = status(fleet)
    assert after["policy"] == before["policy"] and after["mode"] == "enforce"
    assert "x = [[[" not in (fleet.dir / "ap" / "policy.toml").read_text()  # never written
    # a restart runs the policy it ran (the file was never replaced)
    assert fleet.app.terminate() == 0
    fleet.app.start()
    wait_for(lambda: fleet.fc.appliances(SITE, NAME).get(TARGET, {}).get("state", {})
             .get("status") == "online", timeout=30, what="the appliance back online")
    again = status(fleet)
    assert again["policy"]["sha256"] == before["policy"]["sha256"]
    assert again["policy_fault"] is None


BAD_TIMES = {
    "nan": b'"issued": NaN, "expires": NaN',
    "infinity": b'"issued": -Infinity, "expires": Infinity',
    "overflow": b'"issued": 1e999, "expires": 1e999',
}


@pytest.mark.parametrize("case", list(BAD_TIMES))
def test_signed_commands_with_non_finite_times_are_rejected(fleet: Any, case: str) -> None:
    mode = status(fleet)["mode"]
    body = (b'{"v": 1, "cmd": "mode", "args": {"mode": "bypass"}, "target": "'
            + f"{SITE}/{NAME}".encode() + b'", "seq": '
            + str(fleet.counter.next()).encode() + b", " + BAD_TIMES[case] + b"}")
    answer = ask(fleet, signed_raw(fleet, body))
    assert answer["ok"] is False and answer["error"] == "malformed", answer
    assert "finite" in answer["detail"]
    assert status(fleet)["mode"] == mode != "bypass"
    assert audit(fleet)[-2]["outcome"] == "rejected"      # [-1] is the status just above


def test_sequence_numbers_far_beyond_the_clock_are_refused_and_block_nothing(
        fleet: Any) -> None:
    answer = ask(fleet, signed_raw(fleet, json.dumps(body_with(fleet, seq=2**63 - 1)).encode()))
    assert answer["ok"] is False and answer["error"] == "malformed"
    assert "block every later command" in answer["detail"]
    ok = ask(fleet, signed(fleet, "mode", {"mode": "enforce"}))
    assert ok["ok"], ok                                  # the next real command still works


def test_lone_surrogates_are_refused_answered_and_audited(fleet: Any) -> None:
    """Valid JSON, but text no file or database can hold: refused before anything else."""
    count = len(audit(fleet))
    answer = ask(fleet, b'{"cmd": "status", "args": {}, "id": "x\\ud800"}')
    assert answer == {**answer, "ok": False, "error": "malformed"}
    assert "lone surrogate" in answer["detail"]
    answer = ask(fleet, signed(fleet, "policy", {"policy": DEMO_POLICY + "# \ud800\n"}))
    assert answer["ok"] is False and "lone surrogate" in answer["detail"], answer
    assert [r["outcome"] for r in audit(fleet)[count:]] == ["rejected", "rejected"]


def test_policy_versions_are_bounded_and_jumps_need_allow_jump(fleet: Any) -> None:
    running = status(fleet)["policy"]["version"]
    huge = DEMO_POLICY.replace("version = 1", f"version = {2**63 - 1}")
    answer = ask(fleet, signed(fleet, "policy", {"policy": huge}))
    assert answer["ok"] is False and "policy.version" in answer["error"]
    far = DEMO_POLICY.replace("version = 1", f"version = {running + 5000}")
    answer = ask(fleet, signed(fleet, "policy", {"policy": far}))
    assert answer["ok"] is False and answer["reason"] == "version_jump", answer
    assert status(fleet)["policy"]["version"] == running
    answer = ask(fleet, signed(fleet, "policy", {"policy": far, "allow_jump": True}))
    assert answer["ok"] and answer["policy"]["version"] == running + 5000, answer
    nxt = DEMO_POLICY.replace("version = 1", f"version = {running + 5001}")
    assert ask(fleet, signed(fleet, "policy", {"policy": nxt}))["ok"]


def test_wildcard_response_topic_is_rejected_and_answered_on_the_base_topic(
        fleet: Any) -> None:
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    base = topic(SITE, NAME, "response")
    watcher = Watcher(fleet_settings(fleet.broker), [base])
    try:
        for requested in (f"{base}/#", f"{base}/+/x", f"{base}/x/#"):
            count = len(audit(fleet))
            props = Properties(PacketTypes.PUBLISH)
            props.ResponseTopic = requested
            props.CorrelationData = b"corr-" + requested[-3:].encode()
            fleet.fc.client.publish(topic(SITE, NAME, "cmd"),
                                    signed(fleet, "mode", {"mode": "learn"}), qos=1,
                                    properties=props).wait_for_publish(5)
            rows = wait_for(lambda c=count: audit(fleet)[c:], what="the audit record")
            assert rows[0]["outcome"] == "rejected" and "wildcards" in rows[0]["detail"]
            reply = wait_for(lambda: watcher.last(base), what="the answer on the base topic")
            assert json.loads(reply.payload)["error"] == "malformed"
            watcher.seen.clear()
        assert status(fleet)["mode"] != "learn"
    finally:
        watcher.close()


HOSTILE_PAYLOADS = {
    "deep-json": b'{"cmd": "status", "args": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "deep-object": b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
    "not-utf8": b'{"cmd": "status\xff\xfe"}',
    "duplicate-keys": b'{"cmd": "status", "cmd": "mode", "args": {"mode": "bypass"}}',
    "huge-int": b'{"cmd": "identify", "args": {"seconds": 1' + b"0" * 5000 + b"}}",
    "nan-seconds": b'{"cmd": "identify", "args": {"seconds": NaN}}',
    "array": b"[1, 2, 3]",
    "empty": b"",
    "trailing-backslash": b'\xb2t", \\',
    "identify-hour": unsigned_request("identify", {"seconds": 3600}),
    "envelope-without-body": b'{"v": 1, "key": "k", "sig": "AAAA"}',
    "lone-surrogate-id": b'{"cmd": "identify", "args": {"seconds": 0}, "id": "\\ud800"}',
}


@pytest.mark.parametrize("case", list(HOSTILE_PAYLOADS))
def test_hostile_payloads_are_rejected_answered_and_audited(fleet: Any, case: str) -> None:
    count = len(audit(fleet))
    answer = ask(fleet, HOSTILE_PAYLOADS[case])
    assert answer["ok"] is False and answer["error"] in (
        "malformed", "invalid_args", "oversized", "no_fleet_key"), answer
    rows = audit(fleet)[count:]
    assert rows and rows[0]["outcome"] == "rejected" and rows[0]["request_sha256"]


def test_identify_is_bounded_and_cannot_be_repeated_for_long(fleet: Any) -> None:
    answers = [ask(fleet, unsigned_request("identify", {"seconds": 600})) for _ in range(3)]
    assert answers[0]["ok"] and answers[0]["leds"] is True
    assert any(a.get("reason") == "rate_limited" for a in answers[1:]), answers
    leds = status(fleet)["leds"]["patterns"]
    assert leds["health"] == "identify" and leds["bypass"] == "off"
    assert leds["violation"] != "identify"


def test_a_flood_of_bad_requests_is_audited_and_logged_sparingly(fleet: Any) -> None:
    count = len(audit(fleet))
    log_before = fleet.app.log().count("command rejected")
    for i in range(150):
        fleet.fc.client.publish(topic(SITE, NAME, "cmd"), b"{not json " + str(i).encode(),
                                qos=1).wait_for_publish(5)
    wait_for(lambda: len(audit(fleet)) >= count + 150, timeout=30, what="150 audit rows")
    assert all(r["outcome"] == "rejected" for r in audit(fleet)[count:count + 150])
    assert fleet.app.log().count("command rejected") - log_before <= 3
    assert status(fleet)["ok"]


def test_no_traceback_in_the_daemon_log(fleet: Any) -> None:
    log = fleet.app.log()
    assert "Traceback" not in log and "command handling failed" not in log, log[-3000:]


def test_response_topics_are_checked_without_a_broker() -> None:
    """What a broker may deliver or not: NUL and over-long topics are refused too."""
    from appliance.outputs.fleetcommands import FleetCommands

    base = topic(SITE, NAME, "response")
    commands = FleetCommands(SimpleNamespace(topics={"response": base}), None,  # type: ignore[arg-type]
                             None, None)  # type: ignore[arg-type]
    assert commands._reply_topic(None) == commands._reply_topic("") == base
    assert commands._reply_topic(f"{base}/abc") == f"{base}/abc"
    for bad in (f"{base}/#", f"{base}/+", f"{base}/a\0b", f"{base}/" + "x" * 2000,
                "wardtap/v1/other/x/response", f"{base}x", 7, b"bytes"):
        assert commands._reply_topic(bad) is None, bad
