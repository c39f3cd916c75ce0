"""The fleet sees what identification found: make, model, roles, data flows, advisories in
the retained inventory, and the alerts for patient data in the clear and new advisory
matches, from a replay of the real-implementation ward reported to a real mosquitto."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from brokerkit import ROOT, Broker, Watcher, broker  # noqa: F401

from appliance.contract.broker import BrokerSettings

CSAF = ROOT / "tests" / "data" / "csaf"
MONITOR, PUMP, ENGINE = "00:09:fb:61:00:50", "00:d0:75:61:00:60", "00:50:56:61:00:40"


def _wardtap(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "appliance.cli", *args], capture_output=True,
                          text=True, timeout=180, cwd=ROOT)


def test_identity_data_flows_and_advisories_reach_the_fleet(
        broker: Broker, tmp_path: Path, tshark: str) -> None:  # noqa: F811
    db = str(tmp_path / "w.db")
    r = _wardtap("advisories", "import", str(CSAF / "icsma-20-317-01.json"), "--db", db)
    assert r.returncode == 0, r.stderr
    watcher = Watcher(BrokerSettings.from_options(broker.url), ["wardtap/v1/#"])
    try:
        r = _wardtap("replay", str(ROOT / "tests" / "data" / "realward.pcap"), "--dissect",
                     "--db", db, "--broker", broker.url, "--site", "lab",
                     "--appliance", "ward61")
        assert r.returncode == 0, r.stderr
        msgs = watcher.poll()
        events = [e for m in msgs if m.topic.endswith("/events")
                  for e in json.loads(m.payload)["events"]]
        clear = {(e["mac"], e["protocol"]) for e in events
                 if e["type"] == "patient_data_unencrypted"}
        assert (MONITOR, "HL7") in clear
        matches = [e for e in events if e["type"] == "advisory_match"]
        assert [(e["mac"], e["advisory"], e["status"]) for e in matches] == [
            (PUMP, "ICSMA-20-317-01", "possibly affected (version unknown)")]
        inventory = [json.loads(m.payload) for m in msgs if m.topic.endswith("/inventory")][-1]
        devices = {d["mac"]: d for d in inventory["devices"]}
        pump, monitor, engine = devices[PUMP], devices[MONITOR], devices[ENGINE]
        assert (pump["make"], pump["model"], pump["class"]) == (
            "BD", "Alaris 8015 PC unit", "infusion pump")
        assert pump["advisories"][0]["id"] == "ICSMA-20-317-01"
        assert monitor["unencrypted_patient_data"] is True
        assert {"direction": "sends", "peer": "10.61.0.40", "protocol": "HL7",
                "encrypted": True, "patient_data": True,
                "what": ["HL7 over TLS (port 2576)"]} in monitor["data_flows"]
        assert engine["roles"] == ["HL7 interface engine"]
    finally:
        watcher.close()
