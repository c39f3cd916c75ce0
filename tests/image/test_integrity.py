"""Integrity manifests (appliance/system/integrity.py): a changed, missing or added file is found;
the daemon raises the alarm (event to the outputs, audit entry, red double flash) and a
policy pushed through wardtap's own command updates the manifest instead of alarming."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import sqlite_utils
from conftest import ROOT, run_wardtap
from netns import wait_for

from appliance.common.control import request
from appliance.system import integrity
from demoward.ward import DEMO_POLICY, write_demo_ward


def test_manifest_finds_changed_missing_added_and_relinked(tmp_path: Path) -> None:
    opt = tmp_path / "opt"
    (opt / "lib").mkdir(parents=True)
    (opt / "lib" / "fastpath.py").write_text("fast = True\n")
    (opt / "bin").mkdir()
    (opt / "bin" / "python").symlink_to("/usr/bin/python3")
    (opt / "gone.txt").write_text("x")
    config = tmp_path / "wardtap.toml"
    config.write_text("[appliance]\n")
    manifest = tmp_path / "m.json"
    doc = integrity.build([str(opt), str(config)], exclude=["*.log"])
    integrity.write(doc, str(manifest))
    assert integrity.verify(str(manifest)).ok
    assert doc["files"][str(opt / "bin" / "python")] == {"link": "/usr/bin/python3"}

    (opt / "lib" / "fastpath.py").write_text("fast = False\n")   # same size, new content
    (opt / "gone.txt").unlink()
    (opt / "lib" / "evil.pth").write_text("import os\n")          # dropped into the root
    (opt / "debug.log").write_text("excluded\n")
    (opt / "bin" / "python").unlink()
    (opt / "bin" / "python").symlink_to("/tmp/python3")
    config.chmod(0o666)                                            # mode counts too
    found = integrity.verify(str(manifest))
    assert sorted(found.changed) == sorted([str(opt / "lib" / "fastpath.py"),
                                            str(opt / "bin" / "python"), str(config)])
    assert found.missing == [str(opt / "gone.txt")]
    assert found.added == [str(opt / "lib" / "evil.pth")]
    assert not found.ok and "3 changed, 1 missing, 1 added" in found.summary()

    integrity.accept(str(manifest), [str(config)])                 # a change wardtap made
    assert str(config) not in integrity.verify(str(manifest)).changed
    assert integrity.verify(str(tmp_path / "none.json")).error == "no such manifest"


def test_cli_write_verify(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.py").write_text("x = 1\n")
    out = tmp_path / "m.json"
    result = run_wardtap("integrity", "write", "--root", str(tmp_path / "a"), "-o", str(out))
    assert result.returncode == 0 and "1 files recorded" in result.stdout, result.stderr
    assert run_wardtap("integrity", "verify", str(out)).returncode == 0
    (tmp_path / "a" / "x.py").write_text("x = 2\n")
    result = run_wardtap("integrity", "verify", str(out))
    assert result.returncode == 1 and "MISMATCH" in result.stdout and "x.py" in result.stdout
    result = run_wardtap("integrity", "verify", "--json", str(out))
    assert json.loads(result.stdout)[0]["changed"] == [str(tmp_path / "a" / "x.py")]


def _events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_daemon_alarms_on_tampering_but_not_on_a_pushed_policy(tmp_path: Path) -> None:
    write_demo_ward(str(tmp_path / "ward.pcap"), packets=1000)
    policy = tmp_path / "policy.toml"
    policy.write_text(DEMO_POLICY)
    program = tmp_path / "opt"
    program.mkdir()
    (program / "daemon.py").write_text("# the installed program\n")
    manifest = tmp_path / "integrity.json"
    integrity.write(integrity.build([str(program), str(policy)]), str(manifest))
    (tmp_path / "wardtap.toml").write_text(
        '[appliance]\nmode = "monitor"\n[datapath]\ntype = "replay"\nfiles = ["ward.pcap"]\n'
        'stay = true\n[policy]\nfile = "policy.toml"\n[store]\npath = "wardtap.db"\n'
        '[events]\nlog = "events.jsonl"\n[control]\nsocket = "control.sock"\n'
        '[integrity]\nmanifests = ["integrity.json"]\ninterval = 0.2\n')
    sock = str(tmp_path / "control.sock")
    proc = subprocess.Popen([sys.executable, "-m", "appliance.cli", "run", "--config",
                             str(tmp_path / "wardtap.toml")], cwd=tmp_path,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)),
                            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "log", "w"))

    def status() -> dict[str, Any]:
        if proc.poll() is not None:
            raise AssertionError((tmp_path / "log").read_text())
        return request(sock, {"cmd": "status"}) if os.path.exists(sock) else {}

    def checks() -> int:
        return int(status().get("integrity", {}).get("checks", 0))

    try:
        wait_for(lambda: checks() >= 1, timeout=30, what="the first integrity check")
        assert status()["integrity"]["alarm"] is False

        # a policy pushed through wardtap's own command: the manifest follows it
        pushed = DEMO_POLICY.replace("version = 1", "version = 2", 1)
        assert pushed != DEMO_POLICY
        answer = request(sock, {"cmd": "policy", "policy": pushed})
        assert answer["ok"], answer
        entry = integrity.load(str(manifest))["files"][str(policy)]
        assert entry == integrity._entry(str(policy))
        seen = checks()
        wait_for(lambda: checks() >= seen + 2, timeout=10, what="two more checks")
        assert status()["integrity"]["alarm"] is False
        assert not [e for e in _events(tmp_path / "events.jsonl")
                    if e["type"] == "integrity_alarm"]

        # anything else is reported: a hand edit and a file dropped into the program
        policy.write_text(pushed + "\n# quietly edited\n")
        (program / "sitecustomize.py").write_text("import os\n")
        alarms = wait_for(lambda: [e for e in _events(tmp_path / "events.jsonl")
                                   if e["type"] == "integrity_alarm"], timeout=10,
                          what="the integrity alarm")
        assert isinstance(alarms, list)
        found = alarms[0]["manifests"][0]
        assert found["changed"] == [str(policy)]
        assert found["added"] == [str(program / "sitecustomize.py")]
        now = status()
        assert now["integrity"]["alarm"] is True
        assert now["leds"]["patterns"]["violation"] == "double flash"
        audit = list(sqlite_utils.Database(tmp_path / "wardtap.db").query(
            "SELECT * FROM audit WHERE source = 'integrity'"))
        assert audit and audit[0]["outcome"] == "alarm" and "sitecustomize.py" in \
            audit[0]["detail"]

        # put right again: restored (event, LED off again)
        policy.write_text(pushed)
        (program / "sitecustomize.py").unlink()
        wait_for(lambda: any(e["type"] == "integrity_restored"
                             for e in _events(tmp_path / "events.jsonl")), timeout=10,
                 what="integrity_restored")
        assert status()["leds"]["patterns"]["violation"] != "double flash"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
