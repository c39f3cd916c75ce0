"""The daemon's event path under a port scan (appliance.daemon.events): the store takes the
ring's drains as arrays and holds every flow end and violation the classifier reported;
violations still reach the console and the event log with their fields; new flows that no
one reads are counted, not queued; a store that cannot write holds the arrays in order."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from capturekit import classify_captures
from conftest import ROOT, read_events, small_tmpfs
from netns import wait_for
from policies import clients_tls

from appliance.common.capwriter import PcapWriter
from appliance.common.control import request
from appliance.common.eventarrays import CODES, EventBuffer
from appliance.daemon.events import dict_types
from appliance.outputs import EventLogOutput, StoreOutput
from appliance.outputs import store as store_module
from appliance.outputs.base import FASTPATH_EVENT_TYPES, Output
from appliance.outputs.store import Store
from appliance.policy.model import compile_policy, parse_policy
from demoward.frames import ether, ipv4, tcp
from fastpath import Classifier

FLOWS = 6000
POLICY = clients_tls("scan")
SERVER_MAC = "00:00:0c:00:00:fe"


def write_scan(path: Path, flows: int = FLOWS) -> Path:
    """A port scan: each flow a SYN to 10.20.0.15 (every tenth to 443, allowed; the others
    to closed ports, denied) answered by the server's RST."""
    with open(path, "wb") as fh:
        out = PcapWriter(fh)
        for f in range(flows):
            client, cmac = f"10.40.0.{10 + f % 16}", f"02:00:00:00:00:{f % 16:02x}"
            sport, dport = 20000 + f // 16, 443 if f % 10 == 0 else 8000 + f % 500
            ts = 1_700_000_000_000_000_000 + f * 2000
            out.write(ether(SERVER_MAC, cmac, 0x0800, ipv4(client, "10.20.0.15", 6, tcp(
                sport, dport, "S", src=client, dst="10.20.0.15"))), ts)
            out.write(ether(cmac, SERVER_MAC, 0x0800, ipv4("10.20.0.15", client, 6, tcp(
                dport, sport, "RA", src="10.20.0.15", dst=client))), ts + 1000)
    return path


@pytest.mark.parametrize("event_log", [False, True], ids=["store", "store+eventlog"])
def test_a_scan_stores_every_flow_end_and_violation(tmp_path: Path, event_log: bool) -> None:
    write_scan(tmp_path / "scan.pcap")
    (tmp_path / "policy.toml").write_text(POLICY)
    (tmp_path / "wardtap.toml").write_text(
        '[appliance]\nmode = "monitor"\n'
        '[datapath]\ntype = "replay"\nfiles = ["scan.pcap"]\nstay = true\n'
        '[policy]\nfile = "policy.toml"\n[store]\npath = "wardtap.db"\n'
        + ('[events]\nlog = "events.jsonl"\n' if event_log else "")
        + '[control]\nsocket = "control.sock"\n')
    proc = subprocess.Popen([sys.executable, "-m", "appliance.cli", "run", "--config",
                             str(tmp_path / "wardtap.toml")], cwd=tmp_path,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sock = str(tmp_path / "control.sock")
    status: dict[str, Any] = {}

    def done() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"daemon exited: {proc.communicate()}")
        if not os.path.exists(sock):
            return False
        status.update(request(sock, {"cmd": "status"}))
        c = status["counters"]
        return c["packets"] == 2 * FLOWS and c["pending_events"] == 0

    try:
        wait_for(done, timeout=60, what="the daemon to replay the scan")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert proc.returncode == 0, err
    c = status["counters"]
    assert c["flows_created"] == c["flows_ended"] == FLOWS and c["events_dropped"] == 0
    denied = FLOWS - FLOWS // 10
    assert status["violations"]["seen"] == denied
    recent = status["violations"]["recent"][0]
    assert recent["dst"] == "10.20.0.15" and recent["dport"] >= 8000 and recent["reason"]
    with sqlite3.connect(tmp_path / "wardtap.db") as db:
        flows = db.execute("SELECT count(*), sum(packets), count(DISTINCT flow) FROM flows "
                           "WHERE end = 'rst'").fetchone()
        violations = db.execute("SELECT count(*), count(DISTINCT flow), min(dport), "
                                "count(smac), count(reason) FROM violations").fetchone()
    assert flows == (FLOWS, 2 * FLOWS, FLOWS)
    assert violations == (denied, denied, 8001, denied, denied)
    if not event_log:
        # nothing reads new flows or new devices as dicts: counted in C, never queued
        assert c["events_counted_only"] == FLOWS + c["devices"]
        return
    logged = read_events(tmp_path / "events.jsonl")
    kinds = [e["type"] for e in logged]
    assert kinds.count("new_flow") == kinds.count("flow_end") == FLOWS
    assert kinds.count("violation") == denied and c["events_counted_only"] == 0
    viol = next(e for e in logged if e["type"] == "violation")
    assert {"src", "dst", "dport", "sport", "reason", "smac", "flow", "ts"} <= viol.keys()


def test_dicts_are_built_for_the_readers_only(tmp_path: Path) -> None:
    class Mqttish(Output):
        event_types = frozenset({"violation", "new_device", "malformed"})

    log = EventLogOutput(str(tmp_path / "e.jsonl"))
    try:
        assert dict_types([Mqttish()], False, False) == {"violation", "new_device",
                                                          "malformed"}
        # the event log writes every type from the arrays: no dict for it
        assert dict_types([log], False, False) == set()
        assert log.array_types == FASTPATH_EVENT_TYPES
        assert dict_types([], False, False) == set()   # the console's from the arrays
        assert {"new_flow", "flow_end", "new_device"} <= dict_types([], True, False)
        assert {"new_flow", "flow_end", "new_device"} <= dict_types([], False, True)
    finally:
        log.close()


def _drains(capture: Path) -> list[np.ndarray]:
    """The scan's events, drain by drain (copies), as the daemon's ring hands them over."""
    clf = Classifier(flow_capacity=1 << 16, device_capacity=256)
    clf.set_policy(compile_policy(parse_policy(POLICY)))
    clf.set_mode("monitor")
    buf = EventBuffer(2048)
    out = []
    for _ in classify_captures(clf, [capture]):
        while len(events := buf.drain(clf)):
            out.append(events.copy())
    return out


def test_a_full_disk_holds_the_arrays_in_order_bounded_and_counted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    drains = _drains(write_scan(tmp_path / "scan.pcap"))
    stored = [CODES["violation"], CODES["flow_end"]]
    kept = sum(int(np.isin(d["type"], stored).sum()) for d in drains)
    monkeypatch.setattr(store_module, "HELD_EVENTS", 3000)
    with small_tmpfs(tmp_path, "2m") as disk:
        store = Store(str(disk / "wardtap.db"))
        run = store.start_run("daemon", ["scan"], "monitor")
        output = StoreOutput(store, run)
        output.publish_array(drains[0])
        free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
        (disk / "filler").write_bytes(b"\0" * free)
        for events in drains[1:-1]:
            output.publish_array(events)
        assert output.held and output.held_events <= 3000 and output.lost > 0
        (disk / "filler").unlink()
        output.publish_array(drains[-1])
        assert not output.held
        rows = store.db.conn.execute("SELECT flow FROM flows ORDER BY rowid").fetchall()
        viol = store.db.conn.execute("SELECT count(*) FROM violations").fetchone()[0]
        output.close()
        store.close()
    # what was stored plus what was counted lost is everything, and it went in in order
    assert len(rows) + viol + output.lost == kept
    assert [r[0] for r in rows] == sorted(r[0] for r in rows)
