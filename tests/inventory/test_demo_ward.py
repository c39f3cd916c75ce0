"""The demo ward end to end through the real CLI: every device identified with its class,
the inventory in the store, `wardtap devices`, policy `class` selectors, the daemon."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, run_wardtap
from netns import wait_for

from appliance.common.control import request
from demoward.ward import DEMO_POLICY, DemoWard, write_demo_ward


@pytest.fixture(scope="module")
def ward(tmp_path_factory: pytest.TempPathFactory) -> DemoWard:
    return write_demo_ward(tmp_path_factory.mktemp("ward") / "ward.pcap", packets=20000)


@pytest.fixture(scope="module")
def replayed(ward: DemoWard, tmp_path_factory: pytest.TempPathFactory,
             tshark: str) -> tuple[Path, dict[str, Any]]:
    db = tmp_path_factory.mktemp("store") / "wardtap.db"
    r = run_wardtap("replay", ward.path, "--dissect", "--db", str(db), "--json", timeout=120)
    assert r.returncode == 0, r.stderr
    return db, json.loads(r.stdout)


def test_every_demo_device_identified_with_its_class(ward: DemoWard,
                                                     replayed: tuple[Path, dict[str, Any]]
                                                     ) -> None:
    _, out = replayed
    inventory = {d["mac"]: d for d in out["inventory"]}
    wrong = {d.name: (inventory.get(d.mac, {}).get("class"), d.device_class)
             for d in ward.devices + ward.unknown
             if inventory.get(d.mac, {}).get("class") != d.device_class}
    assert wrong == {}
    for d in ward.devices:
        got = inventory[d.mac]
        assert got["confidence"] >= 0.7, (d.name, got["confidence"])
        assert got["vendor"], d.name
    dissect = out["dissect"]
    assert dissect["chunks_dropped"] == 0 and dissect["chunks_failed"] == 0
    # about one packet per device reaches pyshark; the fast path marked a few hundred
    assert dissect["packets_to_pyshark"] <= 0.002 * out["packets"]
    assert dissect["marked"] <= 0.03 * out["packets"]     # 32 per device per hour


def test_inventory_in_the_store_and_the_devices_command(
        ward: DemoWard, replayed: tuple[Path, dict[str, Any]]) -> None:
    db, out = replayed
    r = run_wardtap("devices", "--db", str(db), "--json")
    assert r.returncode == 0, r.stderr
    stored = {d["mac"]: d for d in json.loads(r.stdout)}
    assert {m: d["class"] for m, d in stored.items()} == {
        d["mac"]: d["class"] for d in out["inventory"]}
    monitor = stored["00:09:fb:3c:41:01"]                      # mon-bed01, IPv4 and IPv6
    assert {"10.40.1.33", "fd00:40:1::33"} <= {i["ip"] for i in monitor["ips"]}
    assert monitor["names"][0] == "MX800"          # MSH-3: the application; MSH-4 is a place
    assert "tcp/2575 client" in monitor["protocols"]
    assert monitor["peers"][0]["ip"] in ("10.40.1.10", "fd00:40:1::10")
    assert monitor["bytes_sent"] > 0 and monitor["first_seen"] < monitor["last_seen"]
    hl7 = [e for e in monitor["evidence"] if e["key"] == "hl7.app"]
    assert hl7 and hl7[0]["source"] == "hl7 MSH-3 (sending application)"
    router = stored["00:26:cb:4a:10:01"]
    assert router["router"] and router["class"] == "network gear"
    assert not any(e["scope"] == "ip" for e in router["evidence"])

    table = run_wardtap("devices", "--db", str(db), "--wide").stdout.splitlines()
    assert table[0].split()[:4] == ["MAC", "VENDOR", "CLASS", "CONF"]
    assert len(table) == 1 + len(stored)
    assert any("infusion pump" in line and "B.Braun" in line for line in table)

    rows = list(csv.DictReader(io.StringIO(run_wardtap("devices", "--db", str(db),
                                                       "--csv").stdout)))
    assert {r["mac"]: r["class"] for r in rows} == {m: d["class"] for m, d in stored.items()}

    pumps = json.loads(run_wardtap("devices", "--db", str(db), "--json", "--class",
                                   "infusion pump").stdout)
    assert sorted(d["mac"] for d in pumps) == sorted(
        d.mac for d in ward.devices if d.device_class == "infusion pump")
    why = run_wardtap("devices", "--db", str(db), "--why", "00:12:21:5e:a0:11").stdout
    assert "because   infusion pump maker's MAC and TLS to a pump server" in why
    assert "tls.sni" in why and "pumpserver.hosp.example" in why

    missing = run_wardtap("devices", "--db", str(db.parent / "nope.db"))
    assert missing.returncode == 2 and "no such store" in missing.stderr


def test_second_run_adds_no_new_devices_and_keeps_classes(
        ward: DemoWard, replayed: tuple[Path, dict[str, Any]]) -> None:
    db, out = replayed
    with sqlite3.connect(db) as conn:
        new_before = conn.execute("SELECT count(*) FROM inventory_history WHERE "
                                  "event = 'inventory_new_device'").fetchone()[0]
        bytes_before = dict(conn.execute("SELECT mac, bytes_sent FROM inventory"))
    assert new_before == len(out["inventory"])
    again = run_wardtap("replay", ward.path, "--dissect", "--db", str(db), "--json",
                        timeout=120)
    assert again.returncode == 0, again.stderr
    second = json.loads(again.stdout)
    assert {d["mac"]: d["class"] for d in second["inventory"]} == {
        d["mac"]: d["class"] for d in out["inventory"]}
    with sqlite3.connect(db) as conn:
        new_after = conn.execute("SELECT count(*) FROM inventory_history WHERE "
                                 "event = 'inventory_new_device'").fetchone()[0]
        bytes_after = dict(conn.execute("SELECT mac, bytes_sent FROM inventory"))
    assert new_after == new_before
    assert all(bytes_after[m] == 2 * b for m, b in bytes_before.items())   # counters add up


def test_policy_class_selector_resolved_from_the_store(
        ward: DemoWard, replayed: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    db, _ = replayed
    by_class = DEMO_POLICY.replace(
        '[groups.pumps]          # infusion pumps: B. Braun, Baxter, BD Alaris, on their own VLAN\n'
        'oui = ["00:12:21", "58:42:e4", "00:d0:75"]\nvlan = [104]',
        '[groups.pumps]\nclass = ["infusion pump"]\nvlan = [104]')
    assert by_class != DEMO_POLICY
    policy = tmp_path / "by-class.toml"
    policy.write_text(by_class)
    demo = tmp_path / "demo.toml"
    demo.write_text(DEMO_POLICY)

    def violations(*args: str) -> list[tuple[str, str, int]]:
        r = run_wardtap("replay", ward.path, "--json", *args)
        assert r.returncode == 0, r.stderr
        return sorted((v["ip"], r, n) for v in json.loads(r.stdout)["violations_by_device"]
                      for r, n in v["reasons"].items())

    reference = violations("--policy", str(demo))
    # resolved from the inventory: the pumps are in the group, exactly as with their OUIs
    assert violations("--policy", str(policy), "--db", str(db)) == reference
    # no store: the class selects nobody, so every pump flow is a violation
    assert len(violations("--policy", str(policy))) > len(reference)
    check = run_wardtap("policy", "check", str(policy))
    assert check.returncode == 0, check.stderr
    policy.write_text(by_class.replace('"infusion pump"', '"infusion pumps"'))
    bad = run_wardtap("policy", "check", str(policy))
    assert bad.returncode == 2 and "groups.pumps.class" in bad.stderr
    assert "is not a device class" in bad.stderr


def test_daemon_builds_the_inventory(tmp_path: Path, tshark: str) -> None:
    write_demo_ward(str(tmp_path / "ward.pcap"), packets=5000)
    (tmp_path / "wardtap.toml").write_text(
        '[appliance]\nmode = "learn"\n'
        '[datapath]\ntype = "replay"\nfiles = ["ward.pcap"]\nstay = true\n'
        '[store]\npath = "wardtap.db"\n[events]\nlog = "events.jsonl"\n'
        '[control]\nsocket = "control.sock"\n')
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "appliance.cli", "run", "--config",
                             str(tmp_path / "wardtap.toml"), "--dissect"], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sock = str(tmp_path / "control.sock")
    try:
        def dissected() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"daemon exited: {proc.communicate()}")
            if not os.path.exists(sock):
                return False
            status = request(sock, {"cmd": "status"})
            return bool(status.get("ok")) and status.get("dissect", {}).get("runs", 0) >= 1
        wait_for(dissected, timeout=30, what="the daemon to dissect its first chunk")
        status = request(sock, {"cmd": "status"})
        assert status["dissect"]["worker_pid"] and status["dissect"]["chunks_failed"] == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    kinds = {e["type"] for e in events}
    assert {"inventory_new_device", "device_classified"} <= kinds
    with sqlite3.connect(tmp_path / "wardtap.db") as conn:
        classes = dict(conn.execute("SELECT mac, class FROM inventory"))
    assert classes["00:09:fb:3c:41:01"] == "patient monitor"
    assert classes["00:1e:f7:5c:88:30"] == "network gear"
