"""`wardtap run` on the tap datapath, in namespaces, with real traffic (monitor mode)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from conftest import ROOT, read_events, run_wardtap
from netns import UPLINK_IP, WARD_IP, Ward, wait_for

from appliance.common.control import request

POLICY = f"""
[policy]
name = "tap-test"
version = 1

[groups.ward-hosts]
ip = ["{WARD_IP}"]

[groups.servers]
ip = ["{UPLINK_IP}"]

[[rules]]
name = "ward-dns"
from = "ward-hosts"
to = "servers"
proto = "udp"
ports = [53]

[[rules]]
name = "ward-ping"
from = "ward-hosts"
to = "servers"
proto = "icmp"
icmp_types = [8]
"""

UDP_SEND = (
    "import socket, sys\n"
    "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
    "for port in map(int, sys.argv[2:]):\n"
    "    s.sendto(b'wardtap', (sys.argv[1], port))\n"
)



def test_tap_daemon_reports_violations_by_device_and_rule(tmp_path: Path) -> None:
    (tmp_path / "policy.toml").write_text(POLICY)
    (tmp_path / "wardtap.toml").write_text(
        '[appliance]\nmode = "monitor"\n[datapath]\ntype = "tap"\ninterface = "ward0"\n'
        '[policy]\nfile = "policy.toml"\n[events]\nlog = "events.jsonl"\n'
        '[control]\nsocket = "control.sock"\n[store]\npath = "wardtap.db"\n')
    log = tmp_path / "events.jsonl"
    with Ward() as ward:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        daemon = ward.popen(ward.appliance, [sys.executable, "-m", "appliance.cli", "run",
                                             "--config", str(tmp_path / "wardtap.toml")],
                            cwd=tmp_path, env=env, stderr=subprocess.PIPE)
        try:
            wait_for(lambda: any(e["type"] == "started" for e in read_events(log)),
                     timeout=20, what="the daemon to start")
            ward_mac = ward.mac(ward.ward)
            ward.exec(ward.ward, f"ping -c 2 -i 0.2 -W 1 {UPLINK_IP}")
            ward.exec(ward.ward, [sys.executable, "-c", UDP_SEND, UPLINK_IP, "53", "445", "161"])

            def violations() -> list[dict]:
                return [e for e in read_events(log)
                        if e["type"] == "violation" and e["proto"] == 17]

            wait_for(lambda: len(violations()) >= 2, timeout=10, what="two UDP violations")
            found = {(v["src"], v["dst"], v["dport"], v["reason"], v["nearest_rule"],
                      v.get("smac")) for v in violations()}
            assert found == {
                (WARD_IP, UPLINK_IP, 445, "port_not_allowed", "ward-dns", ward_mac),
                (WARD_IP, UPLINK_IP, 161, "port_not_allowed", "ward-dns", ward_mac)}
            flows = [e for e in read_events(log) if e["type"] == "new_flow" and e["src"] == WARD_IP]
            assert {(f["proto"], f["rule"]) for f in flows} >= {(17, "ward-dns"),
                                                                (1, "ward-ping")}
            devices = [e for e in read_events(log) if e["type"] == "new_device"]
            assert ward_mac in {d["mac"] for d in devices}
        finally:
            daemon.send_signal(signal.SIGTERM)
            try:
                code = daemon.wait(timeout=15)
            finally:
                if daemon.poll() is None:
                    daemon.kill()
        assert code == 0, daemon.stderr.read() if daemon.stderr else ""
    assert read_events(log)[-1]["type"] == "stopping"


def test_an_idle_daemon_answers_at_once_and_stops_at_once(tmp_path: Path) -> None:
    """The tap's blocks retire after 60 s of quiet (timeout_ms), so its poll returns only
    then: without the wake-up fd the loop would see a request a minute late, and the control
    socket gives up after 2 s with "busy". Status, a reload (answered when the policy worker
    is done) and SIGTERM all reach the loop at once."""
    (tmp_path / "policy.toml").write_text(POLICY)
    (tmp_path / "wardtap.toml").write_text(
        '[appliance]\nmode = "monitor"\n[datapath]\ntype = "tap"\ninterface = "ward0"\n'
        'timeout_ms = 60000\n[policy]\nfile = "policy.toml"\n[events]\nlog = "events.jsonl"\n'
        '[control]\nsocket = "control.sock"\n')
    log, sock = tmp_path / "events.jsonl", str(tmp_path / "control.sock")
    with Ward() as ward:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        daemon = ward.popen(ward.appliance, [sys.executable, "-m", "appliance.cli", "run",
                                             "--config", str(tmp_path / "wardtap.toml")],
                            cwd=tmp_path, env=env, stderr=subprocess.PIPE)
        try:
            wait_for(lambda: any(e["type"] == "started" for e in read_events(log)),
                     timeout=20, what="the daemon to start")
            for body in ({"cmd": "status"}, {"cmd": "reload"}, {"cmd": "status"}):
                answer = request(sock, body, timeout=30)
                assert answer["ok"], (body, answer)
            assert answer["policy"]["generation"] == 2
            drawn = run_wardtap("status", "--socket", sock)
            assert drawn.returncode == 0, drawn.stderr
            assert "monitor" in drawn.stdout and "tap-test v1" in drawn.stdout
        finally:
            daemon.send_signal(signal.SIGTERM)
            try:
                code = daemon.wait(timeout=30)      # a minute's poll would outlast this
            finally:
                if daemon.poll() is None:
                    daemon.kill()
        assert code == 0, daemon.stderr.read() if daemon.stderr else ""
