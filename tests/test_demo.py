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


def test_demo_fleet_gets_the_identified_inventory(tmp_path: Path) -> None:
    import json

    result = run_wardtap("demo", "--dir", str(tmp_path), "--packets", "5000", timeout=300)
    assert result.returncode == 0, result.stderr
    fleet = sqlite_utils.Database(tmp_path / "fleet.db")
    payload = json.loads(next(iter(fleet.table("inventory").rows))["payload"])
    classes = {d.get("class") for d in payload["devices"]}
    assert {"infusion pump", "patient monitor", "workstation"} <= classes
