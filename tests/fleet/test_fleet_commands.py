"""Signed fleet commands against a real daemon and a real mosquitto (TLS, ACL).

Forged, replayed, expired, unsigned, wrong-appliance, oversized and malformed requests are
rejected with a reason, never applied, and audited; a pushed policy is validated and never
rolled back silently; the `wardtap fleet` command line shows each appliance's result.
"""

from __future__ import annotations

import base64
import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from brokerkit import (
    ROOT,
    ApplianceProcess,
    fleet_env,
    fleet_settings,
    running_broker,
    wait_for,
    write_appliance,
)

from appliance.contract.broker import topic
from appliance.contract.signing import generate_keypair, load_private_key
from appliance.fleet.client import (
    FleetClient,
    SequenceCounter,
    signed_request,
    unsigned_request,
)
from demoward.ward import DEMO_POLICY

SITE, NAME = "st-marys", "ward4b-01"
TARGET = (SITE, NAME)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    d = tmp_path_factory.mktemp("commands")
    with running_broker(d / "broker") as broker:
        generate_keypair(str(d / "fleet.key"), str(d / "fleet.pub"))
        generate_keypair(str(d / "rogue.key"), str(d / "rogue.pub"))
        app = ApplianceProcess(write_appliance(d / "ap", broker, NAME,
                                               fleet_pub=str(d / "fleet.pub")))
        app.start()
        fc = FleetClient(fleet_settings(broker))
        fc.__enter__()
        try:
            wait_for(lambda: fc.appliances(SITE, NAME).get(TARGET, {}).get("state", {})
                     .get("status") == "online", timeout=20, what="the appliance online")
            yield SimpleNamespace(broker=broker, app=app, fc=fc, dir=d,
                                  key=load_private_key(str(d / "fleet.key")),
                                  rogue=load_private_key(str(d / "rogue.key")),
                                  counter=SequenceCounter(str(d / "fleet.key.seq")))
        finally:
            fc.close()
            app.close()


def ask(fleet: Any, payload: bytes, timeout: float = 10.0) -> dict[str, Any]:
    answer = fleet.fc.request([TARGET], lambda s, a: payload, timeout)[TARGET]
    assert answer is not None, f"no answer; daemon log:\n{fleet.app.log()[-3000:]}"
    return dict(answer)


def signed(fleet: Any, name: str, args: dict[str, Any], target: tuple[str, str] = TARGET,
           key: Any = None, validity: float = 60.0) -> bytes:
    return signed_request(key or fleet.key, fleet.counter, target[0], target[1], name, args,
                          validity=validity)


def status(fleet: Any) -> dict[str, Any]:
    return ask(fleet, unsigned_request("status", {}))


def audit(fleet: Any) -> list[dict[str, Any]]:
    conn = sqlite3.connect(fleet.dir / "ap" / "wardtap.db", timeout=10)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM audit ORDER BY id")]
    finally:
        conn.close()


def test_signed_mode_change_is_applied_answered_and_audited(fleet: Any) -> None:
    answer = ask(fleet, signed(fleet, "mode", {"mode": "enforce"}))
    assert answer["ok"] and answer["mode"] == "enforce" and answer["cmd"] == "mode"
    assert answer["appliance"] == NAME and answer["seq"] > 0
    assert status(fleet)["mode"] == "enforce"
    row = [r for r in audit(fleet) if r["command"] == "mode"][-1]
    assert row["outcome"] == "applied" and row["signed"] == 1 and row["seq"] == answer["seq"]
    assert row["target"] == f"{SITE}/{NAME}" and row["key_id"] and row["finished"]


def _altered(payload: bytes) -> bytes:
    envelope = json.loads(payload)
    body = json.loads(base64.b64decode(envelope["body"]))
    body["args"]["mode"] = "bypass"
    envelope["body"] = base64.b64encode(json.dumps(body).encode()).decode()
    return json.dumps(envelope).encode()


REJECTED = {
    "unsigned": lambda f: unsigned_request("mode", {"mode": "bypass"}),
    "unknown_key": lambda f: signed(f, "mode", {"mode": "bypass"}, key=f.rogue),
    "bad_signature": lambda f: _altered(signed(f, "mode", {"mode": "learn"})),
    "expired": lambda f: signed(f, "mode", {"mode": "bypass"}, validity=-5),
    "wrong_appliance": lambda f: signed(f, "mode", {"mode": "bypass"}, (SITE, "ward4b-02")),
    "oversized": lambda f: signed(f, "policy", {"policy": "#" * 300_000}),
    "malformed": lambda f: b'{"cmd": "mode", "args": {"mode": "bypass"',
    "unknown_command": lambda f: signed(f, "stop", {}),
    "invalid_args": lambda f: signed(f, "mode", {"mode": "turbo"}),
}


@pytest.mark.parametrize("reason", list(REJECTED))
def test_bad_requests_are_rejected_with_a_reason_and_never_applied(fleet: Any,
                                                                   reason: str) -> None:
    before = status(fleet)
    answer = ask(fleet, REJECTED[reason](fleet))
    assert answer["ok"] is False and answer["error"] == reason, answer
    after = status(fleet)
    assert (after["mode"], after["policy"]) == (before["mode"], before["policy"])
    rows = [r for r in audit(fleet) if r["reason"] == reason]
    assert rows and rows[-1]["outcome"] == "rejected" and rows[-1]["request_sha256"]


def test_replayed_and_older_sequence_numbers_are_rejected(fleet: Any) -> None:
    first = signed(fleet, "mode", {"mode": "monitor"})
    older = signed(fleet, "mode", {"mode": "learn"})       # issued before `newer`
    newer = signed(fleet, "mode", {"mode": "monitor"})
    assert ask(fleet, first)["ok"]
    again = ask(fleet, first)                              # the very same bytes, resent
    assert again == {**again, "ok": False, "error": "replayed"}
    assert ask(fleet, newer)["ok"]
    late = ask(fleet, older)                               # valid signature, stale number
    assert late["error"] == "replayed" and status(fleet)["mode"] == "monitor"


def test_response_topic_outside_the_appliance_tree_is_refused(fleet: Any) -> None:
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = "wardtap/v1/elsewhere/ward9/response/x"
    props.CorrelationData = b"corr"
    count = len(audit(fleet))
    fleet.fc.client.publish(topic(SITE, NAME, "cmd"), signed(fleet, "mode", {"mode": "learn"}),
                            qos=1, properties=props).wait_for_publish(5)
    rows = wait_for(lambda: audit(fleet)[count:], what="the audit record")
    assert rows[0]["outcome"] == "rejected" and "response topic" in rows[0]["detail"]
    assert status(fleet)["mode"] != "learn"


def test_policy_push_is_validated_and_never_rolled_back_silently(fleet: Any) -> None:
    v2 = DEMO_POLICY.replace("version = 1", "version = 2", 1)
    answer = ask(fleet, signed(fleet, "policy", {"policy": v2}))
    assert answer["ok"] and answer["policy"]["version"] == 2, answer
    assert status(fleet)["policy"]["version"] == 2
    assert "version = 2" in (fleet.dir / "ap" / "policy.toml").read_text()  # survives restarts
    # an older version: refused unless the fleet signs allow_rollback
    back = ask(fleet, signed(fleet, "policy", {"policy": DEMO_POLICY}))
    assert not back["ok"] and "roll back from version 2 to 1" in back["error"]
    # the same version with other content: refused
    same = ask(fleet, signed(fleet, "policy", {"policy": v2 + "\n# edited\n"}))
    assert not same["ok"] and "raise the version" in same["error"]
    # an invalid policy: refused whole, with the line and field
    bad = v2.replace("version = 2", "version = 3").replace('from = "pumps"', 'from = "nobody"', 1)
    broken = ask(fleet, signed(fleet, "policy", {"policy": bad}))
    assert not broken["ok"] and broken["error"].startswith("invalid policy"), broken
    assert status(fleet)["policy"]["version"] == 2
    # identical to what runs: idempotent
    assert ask(fleet, signed(fleet, "policy", {"policy": v2}))["unchanged"]
    # on purpose, signed: allowed, audited, flagged
    rolled = ask(fleet, signed(fleet, "policy", {"policy": DEMO_POLICY,
                                                 "allow_rollback": True}))
    assert rolled["ok"] and rolled["rolled_back"] and status(fleet)["policy"]["version"] == 1
    conn = sqlite3.connect(fleet.dir / "ap" / "wardtap.db")
    try:
        history = conn.execute("SELECT version FROM policy_history ORDER BY id").fetchall()
    finally:
        conn.close()
    assert [v for (v,) in history] == [2, 1]


def test_identify_and_inventory_need_no_signature(fleet: Any) -> None:
    answer = ask(fleet, unsigned_request("identify", {"seconds": 5}))
    assert answer["ok"] and answer["seconds"] == 5 and answer["leds"] is True
    answer = ask(fleet, unsigned_request("inventory", {}))
    assert answer["ok"] and answer["devices"] == 22
    found = fleet.fc.retained([topic(SITE, NAME, "inventory")])
    body = json.loads(found[topic(SITE, NAME, "inventory")].payload)
    assert body["count"] == 22 and {d["mac"] for d in body["devices"]} >= {"00:12:21:5e:a0:11"}


def _wardtap(fleet: Any, *args: str) -> subprocess.CompletedProcess[str]:
    env = fleet_env(fleet.broker, key=str(fleet.dir / "fleet.key"))
    return subprocess.run([sys.executable, "-m", "appliance.cli", "fleet", *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=60)


def test_fleet_command_line(fleet: Any, tmp_path: Path) -> None:
    r = _wardtap(fleet, "command", "mode", "enforce", "--to", SITE)
    assert r.returncode == 0, r.stderr
    assert f"{SITE}/{NAME}" in r.stdout and "ok       mode enforce" in r.stdout
    policy = tmp_path / "v5.toml"
    policy.write_text(DEMO_POLICY.replace("version = 1", "version = 5", 1))
    r = _wardtap(fleet, "push-policy", str(policy), "--to", f"{SITE}/{NAME}")
    assert r.returncode == 0 and "applied demo-ward-4b v5" in r.stdout, r.stdout + r.stderr
    policy.write_text(DEMO_POLICY.replace("version = 1", "version = 4", 1))
    audit_db = str(tmp_path / "fleet-audit.db")
    r = _wardtap(fleet, "push-policy", str(policy), "--to", SITE, "--audit-db", audit_db)
    assert r.returncode == 1 and "FAILED   refusing to roll back" in r.stdout
    # the refused push is in the fleet database's audit log, with the appliance's answer
    from appliance.fleet.accounts import audit_rows
    from appliance.fleet.db import connect

    db = connect(audit_db)
    rows = audit_rows(db, action="policy")
    db.close()
    assert len(rows) == 1 and rows[0]["outcome"] == "failed"
    assert "refusing to roll back" in rows[0]["answers"][f"{SITE}/{NAME}"]["error"]
    r = _wardtap(fleet, "list")
    assert r.returncode == 0 and "online" in r.stdout and "demo-ward-4b v5" in r.stdout
    r = _wardtap(fleet, "inventory", f"{SITE}/{NAME}", "--refresh")
    assert r.returncode == 0 and "22 devices" in r.stdout and "Philips" in r.stdout
    r = _wardtap(fleet, "command", "mode", "enforce", "--to", f"{SITE}/ward4b-99")
    assert r.returncode == 1 and "unknown to the broker" in r.stdout
    r = _wardtap(fleet, "command", "mode", "enforce", "--to", SITE, "--unsigned")
    assert r.returncode == 2 and "always signed" in r.stderr
