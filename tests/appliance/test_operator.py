"""The operator's side: tables that fit, history read back, the inventory for the CMDB, the
configuration checked before anything starts. Real processes on the demo ward's store."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import tomllib
from pathlib import Path

import pytest
from conftest import ROOT, WARDTAP, run_wardtap

from demoward.ward import UNKNOWN, write_demo_policy, write_demo_ward

ROGUE = UNKNOWN[0]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("operator")
    capture, policy, db = d / "ward.pcap", d / "policy.toml", d / "wardtap.db"
    write_demo_ward(str(capture), packets=5000)
    write_demo_policy(str(policy))
    result = run_wardtap("replay", str(capture), "--policy", str(policy), "--db", str(db),
                         "--dissect")
    assert result.returncode == 0, result.stderr
    return {"dir": str(d), "capture": str(capture), "policy": str(policy), "db": str(db)}


def narrow(*args: str, columns: int = 100) -> str:
    """The command's output in a terminal of `columns` columns ($COLUMNS)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS=str(columns))
    result = subprocess.run([*WARDTAP, *args], capture_output=True, text=True, timeout=120,
                            cwd=ROOT, env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("command", ["devices", "violations", "flows", "events"])
def test_tables_fit_100_columns_and_wide_shows_all(store: dict, command: str) -> None:
    out = narrow(command, "--db", store["db"])
    assert max(len(line) for line in out.splitlines()) <= 100, out
    wide = narrow(command, "--db", store["db"], "--wide")
    assert "hidden" not in wide
    if command == "devices":          # vendors wrap, never cut: every word is there
        words = " ".join(out.split())
        assert all(w in words.split() for w in ("Raspberry", "Pi", "Trading", "Ltd")), out
        assert max(len(line) for line in wide.splitlines()) > 100
    assert re.search(r"\((UTC|[A-Z]{2,5}|[+-]\d{4})\)", wide.splitlines()[0])  # the zone


def test_violations_filters(store: dict) -> None:
    db = store["db"]
    every = json.loads(narrow("violations", "--db", db, "--json", "--limit", "0"))
    assert len(every) > 80
    rogue = json.loads(narrow("violations", "--db", db, "--json", "--device",
                              ROGUE.mac.upper().replace(":", "-")))
    assert rogue and all(v["smac"] == ROGUE.mac or v["src"] == ROGUE.ip for v in rogue)
    assert {v["device_class"] for v in rogue} == {"unknown"}
    by_ip = json.loads(narrow("violations", "--db", db, "--json", "--device", ROGUE.ip))
    assert [v["ts"] for v in by_ip] == [v["ts"] for v in rogue]
    first, last = every[0]["ts"], every[-1]["ts"]
    middle = first + (last - first) / 2
    since = json.loads(narrow("violations", "--db", db, "--json", "--limit", "0",
                              "--since", str(middle)))
    assert since and all(v["ts"] >= middle for v in since) and len(since) < len(every)
    text = narrow("violations", "--db", db, "--csv", "--reason", "no_rule", "--limit", "3")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == 3 and all(r["reason"] == "no_rule" for r in rows)
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d$", rows[0]["ts"])
    none = narrow("violations", "--db", db, "--rule", "no-such-rule")
    assert none.startswith("no violations in") and "matching the filters" in none


def test_events_and_flows(store: dict) -> None:
    db = store["db"]
    new = json.loads(narrow("events", "--db", db, "--json", "--type", "new_device",
                            "--limit", "0"))
    assert ROGUE.mac in {e["device"] for e in new}
    runs = json.loads(narrow("events", "--db", db, "--json", "--type", "run"))
    assert runs and "monitor mode" in runs[0]["summary"]
    denied = json.loads(narrow("flows", "--db", db, "--json", "--verdict", "deny",
                               "--device", ROGUE.ip))
    assert denied and all(ROGUE.ip in (f["src"], f["dst"]) for f in denied)


def test_devices_why_any_mac_form_and_fhir(store: dict) -> None:
    why = narrow("devices", "--db", store["db"], "--why", ROGUE.mac.upper().replace(":", "-"))
    assert why.startswith(ROGUE.mac)
    bundle = json.loads(narrow("devices", "--db", store["db"], "--fhir"))
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "collection"
    devices = [e["resource"] for e in bundle["entry"]]
    assert all(d["resourceType"] == "Device" and re.fullmatch(r"[A-Za-z0-9\-.]{1,64}", d["id"])
               for d in devices)
    pump = next(d for d in devices if d.get("type", {}).get("text") == "infusion pump")
    assert pump["identifier"][0]["type"]["coding"][0]["code"] == "ETHMAC"
    assert re.fullmatch(r"([0-9A-F]{2}-){5}[0-9A-F]{2}", pump["identifier"][0]["value"])
    assert pump["status"] == "active" and pump["manufacturer"]
    assert all(e["fullUrl"].startswith("urn:uuid:") for e in bundle["entry"])


def test_devices_says_why_it_has_nothing(tmp_path: Path, store: dict) -> None:
    empty = tmp_path / "empty.db"
    result = run_wardtap("replay", store["capture"], "--db", str(empty))   # no --dissect
    assert result.returncode == 0
    result = run_wardtap("devices", "--db", str(empty))
    assert result.returncode == 2 and "no inventory" in result.stderr and "--dissect" in \
        result.stderr
    result = run_wardtap("devices", "--db", store["db"], "--class", "pumpz")
    assert result.returncode == 2 and "not a device class" in result.stderr


def test_run_check_and_the_sample_configuration(store: dict, tmp_path: Path) -> None:
    from appliance.system.config import _SCHEMA, load_config

    sample = (ROOT / "conf" / "wardtap.toml").read_text()
    for table, keys in _SCHEMA.items():          # every key is in the sample, explained
        for key in keys:
            assert re.search(rf"^# ?{re.escape(key)} = |^{re.escape(key)} = ", sample, re.M), \
                f"{table}.{key}"
    assert load_config(str(ROOT / "conf" / "wardtap.toml")).datapath == "inline"
    config = tmp_path / "wardtap.toml"
    config.write_text(f'[appliance]\nmode = "enforce"\n[datapath]\ntype = "replay"\n'
                      f'files = ["{store["capture"]}"]\n[policy]\nfile = "{store["policy"]}"\n'
                      f'[store]\npath = "{tmp_path / "w.db"}"\n[control]\n'
                      f'socket = "{tmp_path / "c.sock"}"\n[eve]\npath = "eve.json"\n')
    result = run_wardtap("run", "--config", str(config), "--check")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ready to start" in result.stdout and "policy: demo-ward-4b v1" in result.stdout
    assert not (tmp_path / "w.db").exists() and not (tmp_path / "c.sock").exists()
    config.write_text(config.read_text().replace(store["capture"], "/nonexistent.pcap"))
    for args in (("--check",), ()):              # found before anything connects or runs
        result = run_wardtap("run", "--config", str(config), *args)
        assert result.returncode == 2 and "no such file" in result.stderr
        assert "running" not in result.stderr and "Traceback" not in result.stderr
    doc = tomllib.loads(sample)
    assert doc["datapath"]["type"] == "inline"


def test_learn_takes_who_the_devices_are_from_a_store(store: dict, tmp_path: Path) -> None:
    """--db: an inventory made before (here by replay --dissect) tells learn who is who,
    without tshark; the unknown device is still left out."""
    out = tmp_path / "learned.toml"
    result = run_wardtap("learn", store["capture"], "-o", str(out), "--no-dissect", "--db",
                         store["db"])
    assert result.returncode == 0, result.stderr
    assert "and a stored inventory" in result.stdout
    text = out.read_text()
    assert "could not be identified" in text and ROGUE.mac in text
