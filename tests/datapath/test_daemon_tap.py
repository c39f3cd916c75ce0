"""`wardtap run` on the tap datapath, in namespaces, with real traffic (monitor mode)."""

from __future__ import annotations

import sys
from pathlib import Path

from conftest import read_events, run_wardtap
from inlinekit import tap_daemon
from netns import UPLINK_IP, WARD_IP, Ward, wait_for
from policies import ward_dns

from appliance.common.control import request

POLICY = ward_dns("tap-test", WARD_IP, UPLINK_IP, ping=True)
TAP = ('[appliance]\nmode = "monitor"\n[datapath]\ntype = "tap"\ninterface = "ward0"\n{datapath}'
       '[policy]\nfile = "policy.toml"\n[events]\nlog = "events.jsonl"\n'
       '[control]\nsocket = "control.sock"\n{more}')

UDP_SEND = (
    "import socket, sys\n"
    "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
    "for port in map(int, sys.argv[2:]):\n"
    "    s.sendto(b'wardtap', (sys.argv[1], port))\n"
)



def test_tap_daemon_reports_violations_by_device_and_rule(tmp_path: Path) -> None:
    (tmp_path / "policy.toml").write_text(POLICY)
    log = tmp_path / "events.jsonl"
    with Ward() as ward, tap_daemon(
            ward, tmp_path, TAP.format(datapath="", more='[store]\npath = "wardtap.db"\n')
    ) as daemon:
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
    assert daemon.returncode == 0, daemon.stderr.read() if daemon.stderr else ""
    assert read_events(log)[-1]["type"] == "stopping"


def test_an_idle_daemon_answers_at_once_and_stops_at_once(tmp_path: Path) -> None:
    """The tap's blocks retire after 60 s of quiet (timeout_ms), so its poll returns only
    then: without the wake-up fd the loop would see a request a minute late, and the control
    socket gives up after 2 s with "busy". Status, a reload (answered when the policy worker
    is done) and SIGTERM all reach the loop at once."""
    (tmp_path / "policy.toml").write_text(POLICY)
    sock = str(tmp_path / "control.sock")
    # a minute's poll would outlast the 30 s it is given to stop
    with Ward() as ward, tap_daemon(
            ward, tmp_path, TAP.format(datapath="timeout_ms = 60000\n", more=""),
            stop_timeout=30) as daemon:
        for body in ({"cmd": "status"}, {"cmd": "reload"}, {"cmd": "status"}):
            answer = request(sock, body, timeout=30)
            assert answer["ok"], (body, answer)
        assert answer["policy"]["generation"] == 2
        drawn = run_wardtap("status", "--socket", sock)
        assert drawn.returncode == 0, drawn.stderr
        assert "monitor" in drawn.stdout and "tap-test v1" in drawn.stdout
    assert daemon.returncode == 0, daemon.stderr.read() if daemon.stderr else ""
