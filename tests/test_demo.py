"""The README's first command: `wardtap demo` on built-in defaults, as a real process."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import sqlite_utils
from conftest import run_wardtap


def test_demo_runs_the_ward_through_everything(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "100")             # a 100-column terminal
    result = run_wardtap("demo", "--dir", str(tmp_path), "--packets", "5000", timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    out, err = result.stdout, result.stderr
    assert "violations by reason" in out and "no_rule" in out
    assert "inventory (" in out and "infusion pump" in out and "patient monitor" in out
    assert "LEDs" in err and "violation (fast blink)" in err          # simulated LEDs
    assert "messages acknowledged" in err and "still in the spool" not in err
    fleet = [line for line in out.splitlines() if line.startswith("st-marys/ward-4b")]
    assert fleet and "monitor" in fleet[0] and "demo-ward-4b v1" in fleet[0]
    # right after every message was acknowledged: a clean stop, the hour's violations as
    # the appliance saw them (not by the capture's old clock), an empty spool
    violations = re.search(r"violations (\d+)", out.replace(",", ""))
    assert violations
    _, status, *_, viol, spool = fleet[0].split()
    assert (status, viol, spool) == ("stopped", violations.group(1), "0"), fleet[0]
    assert max(len(line) for line in out.splitlines() if str(tmp_path) not in line) <= 100
    db = sqlite_utils.Database(tmp_path / "wardtap.db")
    assert db.table("violations").count > 0 and db.table("devices").count > 10
    assert "Traceback" not in err


def test_demo_serve_keeps_the_fleet_console_running(tmp_path: Path) -> None:
    """`wardtap demo --serve`: the console on loopback shows the demo appliance, its
    identified devices, its violations and the learned-vs-running diff."""
    import os
    import re
    import subprocess
    import sys
    import threading

    import httpx
    from conftest import ROOT
    from netns import wait_for

    proc = subprocess.Popen([sys.executable, "-m", "appliance.cli", "demo", "--dir",
                             str(tmp_path), "--packets", "5000", "--serve"], cwd=ROOT,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)),
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")),
                              daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        found = wait_for(lambda: next((m for x in list(lines) if (m := re.search(
            r"the fleet console: (http://127\.0\.0\.1:\d+/)  \(log in as (\w+) / (\S+)\)",
            x))), None) or proc.poll() is not None, timeout=300, what="the console URL")
        assert proc.poll() is None and found is not True, "".join(lines)
        url, user, password = found.groups()  # type: ignore[union-attr]
        wait_for(lambda: "serving" in "".join(lines), timeout=30, what="the console")

        def up() -> bool:
            try:
                return httpx.get(url + "login", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False
        wait_for(up, timeout=30, what="the console to answer")
        client = httpx.Client(base_url=url, timeout=30)
        token = re.search(r'name="csrf" value="([^"]+)"', client.get("/login").text)
        assert token
        r = client.post("/login", data={"csrf": token.group(1), "username": user,
                                        "password": password}, headers={"Origin": url[:-1]})
        assert r.status_code == 303, r.text
        fleet = client.get("/").text
        assert "ward-4b" in fleet and "demo-ward-4b v1" in fleet
        devices = client.get("/devices", params={"q": "infusion pump"}).text
        assert devices.count("infusion pump") >= 3
        violations = client.get("/violations", params={"window": "all"}).text
        assert "no_rule" in violations
        policy = client.get("/policies/st-marys/ward-4b").text
        assert "policy diff: running (demo-ward-4b v1) -&gt; learned" in policy
        assert "newly" in policy
        db = sqlite_utils.Database(tmp_path / "fleet.db")
        classes = {row["class"] for row in db.table("devices").rows}
        assert {"infusion pump", "patient monitor", "workstation"} <= classes
    finally:
        proc.terminate()
        proc.wait(timeout=30)
