"""`wardtap replay` and `wardtap policy check` as a user runs them (a real process), and the
flow and device tables seen through the real classifier.

CLI tests run the real command (conftest.run_wardtap) on captures and policies written into
tmp_path and check stdout, stderr, the exit code, `--packets-out` and the SQLite store (opened
with sqlite-utils). Flow-table tests drive appliance.replay.runner.Replayer in-process over real
capture files and look at its events, counters and device records.
"""

from __future__ import annotations

import io
import json
import textwrap
from pathlib import Path
from typing import Any

import sqlite_utils
from conftest import run_wardtap
from policies import pumps_to_server

from appliance.common.capwriter import LINKTYPE_ETHERNET, PcapngWriter, PcapWriter
from appliance.policy.model import load_policy
from appliance.replay.runner import Replayer
from demoward.frames import (
    ARP_REQUEST,
    BROADCAST_MAC,
    ETH_ARP,
    ETH_IPV4,
    IPPROTO_ICMP,
    IPPROTO_TCP,
    IPPROTO_UDP,
    arp,
    ether,
    icmp,
    ipv4,
    tcp,
    udp,
)
from fastpath import Classifier

PUMP_MAC, PUMP_IP = "00:1a:2b:00:00:05", "10.4.1.5"
SERVER_MAC, SERVER_IP = "02:00:00:00:20:15", "10.20.0.15"
OTHER_MAC, OTHER_IP = "02:00:00:00:99:99", "10.9.9.9"
T0 = 1_700_000_000_000_000_000           # ns
MS = 1_000_000

POLICY = pumps_to_server("ward-test", 7, server=["10.20.0.15"])


def tcp4(smac: str, src: str, sport: int, dmac: str, dst: str, dport: int, flags: str = "S",
         payload: bytes = b"") -> bytes:
    return ether(dmac, smac, ETH_IPV4, ipv4(src, dst, IPPROTO_TCP,
                                            tcp(sport, dport, flags, payload=payload,
                                                src=src, dst=dst)))


def udp4(smac: str, src: str, sport: int, dmac: str, dst: str, dport: int,
         vlans: tuple[int, ...] = (), qinq: bool = False) -> bytes:
    return ether(dmac, smac, ETH_IPV4,
                 ipv4(src, dst, IPPROTO_UDP, udp(sport, dport, b"q", src=src, dst=dst)),
                 vlans=vlans, qinq=qinq)


def pump(sport: int, dport: int, flags: str = "S", payload: bytes = b"") -> bytes:
    return tcp4(PUMP_MAC, PUMP_IP, sport, SERVER_MAC, SERVER_IP, dport, flags, payload)


def server(sport: int, dport: int, flags: str) -> bytes:
    return tcp4(SERVER_MAC, SERVER_IP, sport, PUMP_MAC, PUMP_IP, dport, flags)


# The ward capture: (frame, verdict, reason, rule) in capture order.
WARD: list[tuple[bytes, str, str, str | None]] = [
    (pump(51000, 443, "S"), "allow", "rule", "pumps-to-server"),
    (server(443, 51000, "SA"), "allow", "rule", "pumps-to-server"),
    (pump(51000, 443, "A"), "allow", "rule", "pumps-to-server"),
    (pump(51000, 443, "PA", b"x" * 100), "allow", "rule", "pumps-to-server"),
    (pump(51000, 443, "FA"), "allow", "rule", "pumps-to-server"),
    (server(443, 51000, "FA"), "allow", "rule", "pumps-to-server"),
    (pump(51000, 443, "A"), "allow", "rule", "pumps-to-server"),          # late ACK
    (pump(51001, 22, "S"), "deny", "port_not_allowed", None),
    (tcp4(OTHER_MAC, OTHER_IP, 40000, SERVER_MAC, SERVER_IP, 443), "deny", "no_rule", None),
    (udp4(OTHER_MAC, OTHER_IP, 40001, SERVER_MAC, SERVER_IP, 53), "deny", "no_rule", None),
    (ether(BROADCAST_MAC, PUMP_MAC, ETH_ARP,
           arp(ARP_REQUEST, PUMP_MAC, PUMP_IP, "00:00:00:00:00:00", SERVER_IP)),
     "allow", "arp", None),
    (b"\x02\x00\x00\x00\x00\x01\x02\x00", "malformed", "ethernet_truncated", None),
    (ether(SERVER_MAC, PUMP_MAC, ETH_IPV4,
           ipv4(PUMP_IP, SERVER_IP, IPPROTO_ICMP, icmp(8, 0, 77, 1, b"ping"))),
     "deny", "proto_not_allowed", None),
    (udp4(OTHER_MAC, OTHER_IP, 40002, SERVER_MAC, SERVER_IP, 123, vlans=(10, 7), qinq=True),
     "deny", "no_rule", None),
]
FRAMES = [w[0] for w in WARD]
WARD_BYTES = sum(len(f) for f in FRAMES)


def write_pcap(path: Path, frames: list[bytes], start: int = T0, step: int = MS) -> Path:
    with open(path, "wb") as fh:
        writer = PcapWriter(fh)
        for i, frame in enumerate(frames):
            writer.write(frame, start + i * step)
    return path


def write_pcapng(path: Path, frames: list[bytes], start: int = T0) -> Path:
    with open(path, "wb") as fh:
        writer = PcapngWriter(fh)
        writer.add_interface(LINKTYPE_ETHERNET, tsresol_ns=True)
        for i, frame in enumerate(frames):
            writer.write(0, frame, start + i * MS)
    return path


def ward(tmp_path: Path) -> tuple[Path, Path]:
    capture = write_pcap(tmp_path / "ward.pcap", FRAMES)
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY, encoding="utf-8")
    return capture, policy


def json_out(result: Any) -> dict[str, Any]:
    assert "Traceback" not in result.stderr, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


# --- the replay command ------------------------------------------------------------------------


def test_replay_json_summary(tmp_path: Path) -> None:
    capture, policy = ward(tmp_path)
    result = run_wardtap("replay", str(capture), "--policy", str(policy), "--json")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    s = json_out(result)
    assert s["captures"] == [str(capture)]
    assert s["mode"] == "monitor"
    assert (s["policy"]["name"], s["policy"]["version"]) == ("ward-test", 7)
    assert (s["packets"], s["bytes"]) == (len(WARD), WARD_BYTES)
    assert (s["allowed"], s["denied"], s["malformed"]) == (8, 5, 1)
    assert (s["flows"], s["devices"], s["violations"]) == (6, 3, 5)
    assert s["violations_by_reason"] == {"port_not_allowed": 1, "no_rule": 3,
                                         "proto_not_allowed": 1}
    by_device = sorted((d["mac"], d["ip"], d["violations"], d["reasons"])
                       for d in s["violations_by_device"])
    assert by_device == [
        (PUMP_MAC, PUMP_IP, 2, {"port_not_allowed": 1, "proto_not_allowed": 1}),
        (OTHER_MAC, OTHER_IP, 3, {"no_rule": 3}),
    ]
    assert s["malformed_by_reason"] == {"ethernet_truncated": 1}
    assert s["packets_per_second"] > 0
    assert s["counters"]["flows_active"] == 5          # all but the FIN-closed one
    assert s["counters"]["flows_ended"] == 1
    assert s["errors"] == []


def test_replay_human_summary(tmp_path: Path) -> None:
    capture, policy = ward(tmp_path)
    result = run_wardtap("replay", str(capture), "--policy", str(policy))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"captures   {capture}" in out
    assert "mode       monitor    policy ward-test v7" in out
    assert f"packets    {len(WARD)}  ({WARD_BYTES:,} bytes)" in out
    assert "verdicts   allowed 8   denied 5   malformed 1" in out
    assert "flows      6   devices 3   violations 5" in out
    assert "violations by reason" in out
    for line in ("       3  no_rule", "       1  port_not_allowed", "       1  proto_not_allowed",
                 f"       3  {OTHER_MAC} {OTHER_IP}  (no_rule 3)", "       1  ethernet_truncated"):
        assert line in out, out
    assert "limits" not in out                         # nothing evicted, dropped or untracked


def test_replay_learn_mode_without_policy(tmp_path: Path) -> None:
    capture, _ = ward(tmp_path)
    result = run_wardtap("replay", str(capture), "--json")
    assert result.returncode == 0, result.stderr
    s = json_out(result)
    assert (s["mode"], s["policy"]) == ("learn", None)
    assert (s["allowed"], s["denied"], s["malformed"], s["violations"]) == (13, 0, 1, 0)
    assert "none (learning)" in run_wardtap("replay", str(capture)).stdout


def test_packets_out_lines_in_capture_order(tmp_path: Path) -> None:
    capture, policy = ward(tmp_path)
    out = tmp_path / "packets.jsonl"
    result = run_wardtap("replay", str(capture), "--policy", str(policy), "--packets-out",
                         str(out))
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["i"] for line in lines] == list(range(len(WARD)))
    assert [(line["verdict"], line["reason"], line["rule"]) for line in lines] == [
        w[1:] for w in WARD]
    # each line carries its capture time (seconds, microseconds kept)
    assert [line.pop("ts") for line in lines] == [
        round((T0 + i * MS) / 1e9, 6) for i in range(len(WARD))]
    assert lines[0] == {"i": 0, "verdict": "allow", "reason": "rule",
                        "rule": "pumps-to-server", "vlan": None, "src": PUMP_IP,
                        "dst": SERVER_IP, "proto": 6, "smac": PUMP_MAC, "sport": 51000,
                        "dport": 443}
    assert lines[1]["src"] == SERVER_IP and lines[1]["sport"] == 443
    udp_line = lines[9]
    assert (udp_line["proto"], udp_line["sport"], udp_line["dport"]) == (17, 40001, 53)
    arp_line = lines[10]
    assert (arp_line["src"], arp_line["dst"], arp_line["proto"]) == (None, None, None)
    assert arp_line["smac"] == PUMP_MAC
    bad = lines[11]
    assert (bad["verdict"], bad["src"], bad["proto"]) == ("malformed", None, None)
    ping = lines[12]
    assert (ping["proto"], ping["icmp_type"], ping["icmp_code"]) == (1, 8, 0)
    assert "sport" not in ping
    tagged = lines[13]
    assert (tagged["vlan"], tagged["vlan_outer"], tagged["dport"]) == (7, 10, 123)


def test_db_holds_devices_flows_and_violations(tmp_path: Path) -> None:
    capture, policy = ward(tmp_path)
    db_path = tmp_path / "ward.db"
    for _ in range(2):                                  # the second run adds to the devices
        result = run_wardtap("replay", str(capture), "--policy", str(policy), "--db",
                             str(db_path))
        assert result.returncode == 0, result.stderr
        db = sqlite_utils.Database(db_path)
        try:
            runs = list(db["runs"].rows_where(order_by="id"))
            n = len(runs)
            assert runs[-1]["packets"] == len(WARD)
            assert (runs[-1]["mode"], runs[-1]["policy_name"], runs[-1]["policy_version"]) == (
                "monitor", "ward-test", 7)
            assert runs[-1]["kind"] == "replay" and runs[-1]["sources"] == str(capture)
            assert runs[-1]["finished"] >= runs[-1]["started"]
            devices = {d["key"]: d for d in db["devices"].rows}
            assert set(devices) == {PUMP_MAC, SERVER_MAC, OTHER_MAC}
            pump = devices[PUMP_MAC]
            pump_frames = [f for f in FRAMES if f[6:12] == bytes.fromhex("001a2b000005")]
            assert (pump["ipv4"], pump["mac"]) == (PUMP_IP, PUMP_MAC)
            assert pump["packets_sent"] == n * len(pump_frames) == n * 8
            assert pump["bytes_sent"] == n * sum(len(f) for f in pump_frames)
            assert pump["packets_received"] == n * 2          # the server's SYN-ACK and FIN
            assert (pump["flows"], pump["violations"]) == (n * 3, n * 2)
            other = devices[OTHER_MAC]
            assert (other["packets_sent"], other["flows"], other["violations"]) == (
                n * 3, n * 3, n * 3)
            assert devices[SERVER_MAC]["packets_sent"] == n * 2
            assert pump["first_seen"] == T0 / 1e9
            assert pump["last_seen"] == (T0 + 12 * MS) / 1e9
            flows = list(db["flows"].rows_where("run = ?", [runs[-1]["id"]]))
            ends = sorted(f["end"] for f in flows)
            assert ends == ["active"] * 5 + ["fin"]
            (fin,) = [f for f in flows if f["end"] == "fin"]
            assert (fin["src"], fin["dst"], fin["sport"], fin["dport"], fin["proto"]) == (
                PUMP_IP, SERVER_IP, 51000, 443, 6)
            assert (fin["packets"], fin["bytes"]) == (6, sum(len(f) for f in FRAMES[:6]))
            assert (fin["verdict"], fin["rule"]) == ("allow", "pumps-to-server")
            violations = list(db["violations"].rows_where("run = ?", [runs[-1]["id"]],
                                                          order_by="id"))
            assert [(v["reason"], v["src"], v["dst"], v["smac"]) for v in violations] == [
                ("port_not_allowed", PUMP_IP, SERVER_IP, PUMP_MAC),
                ("no_rule", OTHER_IP, SERVER_IP, OTHER_MAC),
                ("no_rule", OTHER_IP, SERVER_IP, OTHER_MAC),
                ("proto_not_allowed", PUMP_IP, SERVER_IP, PUMP_MAC),
                ("no_rule", OTHER_IP, SERVER_IP, OTHER_MAC),
            ]
            assert [v["dport"] for v in violations] == [22, 443, 53, None, 123]
            assert violations[3]["icmp_type"] == 8
            assert violations[4]["vlan"] == 7
        finally:
            db.close()
    assert n == 2


def test_several_captures_in_one_run(tmp_path: Path) -> None:
    _, policy = ward(tmp_path)
    first = write_pcap(tmp_path / "first.pcap", FRAMES[:7])
    second = write_pcapng(tmp_path / "second.pcapng", FRAMES[7:], start=T0 + 7 * MS)
    result = run_wardtap("replay", str(first), str(second), "--policy", str(policy), "--json")
    assert result.returncode == 0, result.stderr
    s = json_out(result)
    assert s["captures"] == [str(first), str(second)]
    assert (s["packets"], s["bytes"], s["allowed"], s["denied"], s["malformed"]) == (
        len(WARD), WARD_BYTES, 8, 5, 1)
    assert (s["flows"], s["devices"], s["violations"]) == (6, 3, 5)


def test_corrupt_capture_counts_earlier_packets_and_names_the_offset(tmp_path: Path) -> None:
    capture, policy = ward(tmp_path)
    data = capture.read_bytes()
    last = len(data) - 16 - len(FRAMES[-1])
    broken = tmp_path / "broken.pcap"
    broken.write_bytes(data[:-5])                       # cut inside the last record
    db_path = tmp_path / "ward.db"
    result = run_wardtap("replay", str(capture), str(broken), "--policy", str(policy), "--json",
                         "--db", str(db_path))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [
        f"wardtap: error: {broken} at byte {last}: truncated: a packet record runs past the "
        f"end of the file (after {len(WARD) - 1} good packets)"]
    s = json_out(result)
    assert s["packets"] == 2 * len(WARD) - 1
    assert s["errors"] == [result.stderr.splitlines()[0].removeprefix("wardtap: error: ")]
    db = sqlite_utils.Database(db_path)
    try:
        assert [r["packets"] for r in db["runs"].rows] == [2 * len(WARD) - 1]
    finally:
        db.close()
    human = run_wardtap("replay", str(broken))
    assert human.returncode == 2
    assert f"error      {broken} at byte {last}: truncated" in human.stdout
    assert len(human.stderr.splitlines()) == 1


def test_nonexistent_capture(tmp_path: Path) -> None:
    capture, _ = ward(tmp_path)
    missing = tmp_path / "missing.pcap"
    result = run_wardtap("replay", str(missing), str(capture), "--json")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"wardtap: error: {missing}: no such file"]
    assert json_out(result)["packets"] == len(WARD)


def test_broken_policy_writes_nothing(tmp_path: Path) -> None:
    capture, _ = ward(tmp_path)
    bad = tmp_path / "bad.toml"
    bad.write_text(POLICY.replace('ports = [443, "8000-8080"]', 'ports = [443, "8080-8000"]'),
                   encoding="utf-8")
    line = POLICY.splitlines().index('ports = [443, "8000-8080"]') + 1
    db_path = tmp_path / "new.db"
    out = tmp_path / "packets.jsonl"
    result = run_wardtap("replay", str(capture), "--policy", str(bad), "--db", str(db_path),
                         "--packets-out", str(out))
    assert result.returncode == 2
    assert result.stdout == ""
    (message,) = result.stderr.splitlines()
    assert message.startswith(f"wardtap: error: {bad}:{line} [rules.pumps-to-server.ports]: ")
    assert not db_path.exists() and not out.exists()
    # An existing store is left as it was.
    assert run_wardtap("replay", str(capture), "--db", str(db_path)).returncode == 0
    before = db_path.read_bytes()
    result = run_wardtap("replay", str(capture), "--policy", str(bad), "--db", str(db_path))
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1
    assert db_path.read_bytes() == before


def test_mode_enforce_needs_a_policy(tmp_path: Path) -> None:
    capture, _ = ward(tmp_path)
    for mode in ("enforce", "monitor"):
        result = run_wardtap("replay", str(capture), "--mode", mode)
        assert result.returncode == 2
        assert result.stderr == f"wardtap: error: --mode {mode} needs --policy\n"
        assert result.stdout == ""


def test_policy_check(tmp_path: Path) -> None:
    _, policy = ward(tmp_path)
    result = run_wardtap("policy", "check", str(policy))
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{policy}: ok: policy 'ward-test' v7, 2 groups, 1 rules\n"
    bad = tmp_path / "bad.toml"
    bad.write_text(POLICY.replace('from = "pumps"', 'from = "pump"'), encoding="utf-8")
    line = POLICY.splitlines().index('from = "pumps"') + 1
    result = run_wardtap("policy", "check", str(bad))
    assert result.returncode == 2
    assert result.stdout == ""
    (message,) = result.stderr.splitlines()
    assert message.startswith(f"wardtap: error: {bad}:{line} [rules.pumps-to-server.from]: "
                              "unknown group 'pump'")
    result = run_wardtap("policy", "check", str(tmp_path / "none.toml"))
    assert (result.returncode, result.stderr) == (
        2, f"wardtap: error: {tmp_path / 'none.toml'}: no such file\n")


def test_tiny_flow_table_through_the_cli(tmp_path: Path) -> None:
    frames = [tcp4(OTHER_MAC, OTHER_IP, 1000 + i, SERVER_MAC, SERVER_IP, 80) for i in range(20)]
    capture = write_pcap(tmp_path / "many.pcap", frames)
    result = run_wardtap("replay", str(capture), "--flows", "8", "--json")
    assert result.returncode == 0, result.stderr
    s = json_out(result)
    assert (s["flows"], s["counters"]["flows_evicted"], s["counters"]["flows_active"]) == (
        20, 12, 8)
    human = run_wardtap("replay", str(capture), "--flows", "8")
    assert "limits     flows evicted 12   events dropped 0   devices not tracked 0" in (
        human.stdout)


# --- the flow and device tables through the classifier -------------------------------------


class Run:
    """A Replayer whose events are all kept; each feed() is one capture file."""

    def __init__(self, tmp_path: Path, policy_text: str | None = None,
                 classifier: Classifier | None = None, **kw: Any) -> None:
        self.tmp_path = tmp_path
        policy = None
        if policy_text is not None:
            path = tmp_path / "run-policy.toml"
            path.write_text(textwrap.dedent(policy_text), encoding="utf-8")
            policy = load_policy(str(path))
        self.replayer = Replayer(policy, "monitor" if policy else "learn", seed=3, **kw)
        if classifier is not None:                    # other sizes than Replayer offers
            classifier.set_mode(self.replayer.mode)
            self.replayer.classifier = classifier
        self.events: list[dict[str, Any]] = []
        self.replayer.on_events = self.events.extend
        self.files = 0

    def feed(self, frames: list[bytes], start: int = T0, step: int = MS) -> Any:
        self.files += 1
        path = write_pcap(self.tmp_path / f"feed{self.files}.pcap", frames, start, step)
        out = io.StringIO()
        summary = self.replayer.run([str(path)], packets_out=out)
        assert summary.errors == []
        self.lines = [json.loads(line) for line in out.getvalue().splitlines() if line]
        return summary

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == kind]

    @property
    def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = self.replayer.classifier.stats()
        return stats

    def device(self, mac: str) -> dict[str, Any]:
        (found,) = [d for d in self.replayer.devices() if d["mac"] == mac]
        return found


HANDSHAKE = [pump(51000, 443, "S"), server(443, 51000, "SA"), pump(51000, 443, "A"),
             pump(51000, 443, "PA", b"y" * 50), server(443, 51000, "A")]


def test_both_directions_are_one_flow(tmp_path: Path) -> None:
    run = Run(tmp_path)
    run.feed(HANDSHAKE)
    (flow,) = run.of("new_flow")
    assert (flow["src"], flow["dst"], flow["sport"], flow["dport"]) == (
        PUMP_IP, SERVER_IP, 51000, 443)
    assert (run.stats["flows_created"], run.stats["flows_active"]) == (1, 1)
    (active,) = run.replayer.active_flows()
    assert (active["packets"], active["bytes"], active["end"]) == (
        5, sum(len(f) for f in HANDSHAKE), "active")


def test_fin_and_rst_end_flows(tmp_path: Path) -> None:
    run = Run(tmp_path)
    fin = HANDSHAKE + [pump(51000, 443, "FA"), server(443, 51000, "FA"),
                       pump(51000, 443, "A")]
    rst = [pump(51001, 443, "S"), server(443, 51001, "RA")]
    run.feed(fin + rst)
    ends = run.of("flow_end")
    assert [(e["end"], e["sport"], e["packets"], e["bytes"]) for e in ends] == [
        ("fin", 51000, 7, sum(len(f) for f in fin[:7])),
        ("rst", 51001, 2, sum(len(f) for f in rst)),
    ]
    assert ends[0]["ts"] == (T0 + 6 * MS) / 1e9 and ends[0]["first"] == T0 / 1e9
    assert (run.stats["flows_created"], run.stats["flows_ended"],
            run.stats["flows_active"]) == (2, 2, 0)
    assert [line["verdict"] for line in run.lines] == ["allow"] * 10   # late ACK: same flow
    # A new SYN on the closed connection's ports starts a new flow.
    run.feed([pump(51000, 443, "S")], start=T0 + 20 * MS)
    assert len(run.of("new_flow")) == 3


def test_idle_flows_expire_by_protocol_timeout(tmp_path: Path) -> None:
    run = Run(tmp_path, flow_capacity=64, batch_size=1)    # 8 buckets, one swept per batch
    run.feed([udp4(OTHER_MAC, OTHER_IP, 5000, SERVER_MAC, SERVER_IP, 53),
              udp4(SERVER_MAC, SERVER_IP, 53, OTHER_MAC, OTHER_IP, 5000),
              pump(51000, 443, "S"),
              ether(SERVER_MAC, PUMP_MAC, ETH_IPV4,
                    ipv4(PUMP_IP, SERVER_IP, IPPROTO_ICMP, icmp(8, 0, 9, 1)))])
    assert run.of("flow_end") == []
    # 61 s later (capture time): ARP only, so no flow can land in a used bucket; each batch
    # sweeps one bucket, so 8 batches reach them all.
    arp_frame = ether(BROADCAST_MAC, PUMP_MAC, ETH_ARP,
                      arp(ARP_REQUEST, PUMP_MAC, PUMP_IP, "00:00:00:00:00:00", SERVER_IP))
    run.feed([arp_frame] * 8, start=T0 + 61_000 * MS)
    ends = sorted((e["proto"], e["end"], e["packets"], e["ts"]) for e in run.of("flow_end"))
    assert ends == [(1, "idle", 1, (T0 + 3 * MS) / 1e9),       # ICMP: 30 s
                    (17, "idle", 2, (T0 + MS) / 1e9)]          # UDP: 60 s; TCP (3600 s) stays
    assert (run.stats["flows_ended"], run.stats["flows_active"]) == (2, 1)
    (tcp_flow,) = run.replayer.active_flows()
    assert tcp_flow["proto"] == 6


def test_sweep_expires_everything_idle(tmp_path: Path) -> None:
    run = Run(tmp_path)
    run.feed([udp4(OTHER_MAC, OTHER_IP, 5000 + i, SERVER_MAC, SERVER_IP, 53)
              for i in range(50)])
    run.replayer.classifier.sweep(T0 + 3600 * 10**9, everything=True)
    run.feed([])                                        # an empty capture: drains the ring
    assert len(run.of("flow_end")) == 50
    assert {e["end"] for e in run.of("flow_end")} == {"idle"}
    assert run.stats["flows_active"] == 0


def test_full_bucket_evicts_the_least_recently_seen_flow(tmp_path: Path) -> None:
    run = Run(tmp_path, flow_capacity=8)                # one bucket of 8 slots
    memory = run.replayer.classifier.memory_bytes
    flows = [tcp4(OTHER_MAC, OTHER_IP, 1000 + i, SERVER_MAC, SERVER_IP, 80) for i in range(8)]
    run.feed(flows)
    run.feed([flows[0]], start=T0 + 10 * MS)            # flow 0 is now the most recent
    run.feed([tcp4(OTHER_MAC, OTHER_IP, 2000, SERVER_MAC, SERVER_IP, 80)], start=T0 + 20 * MS)
    (evicted,) = run.of("flow_end")
    assert (evicted["end"], evicted["sport"], evicted["packets"]) == ("evicted", 1001, 1)
    assert evicted["ts"] == (T0 + 20 * MS) / 1e9
    assert (run.stats["flows_evicted"], run.stats["flows_ended"],
            run.stats["flows_active"]) == (1, 1, 8)
    # Its next packet is a new flow, which evicts the next oldest.
    summary = run.feed([tcp4(OTHER_MAC, OTHER_IP, 1001, SERVER_MAC, SERVER_IP, 80, "A")],
                       start=T0 + 30 * MS)
    assert [e["sport"] for e in run.of("flow_end")] == [1001, 1002]
    assert len(run.of("new_flow")) == 10
    assert summary.counters["flows_evicted"] == 2
    assert run.replayer.classifier.memory_bytes == memory == summary.memory_bytes
    assert len(run.replayer.active_flows()) == 8


def test_idle_flow_taken_over_by_a_new_flow_ends_once(tmp_path: Path) -> None:
    """A full bucket whose flows are all idle: the new flow takes an idle slot.

    docs/fastpath.md: "a new flow takes an idle-expired slot if there is one, else it evicts".
    fastpath/flowtable.pxi flow_find_or_add() ends the idle flow (END_IDLE) but leaves its
    state FLOW_ACTIVE, so the eviction check right after fires too: a second flow_end event
    ("evicted") for the same flow, flows_evicted + 1, and flows_active decremented twice (it
    wraps below zero once the remaining flows end).
    """
    run = Run(tmp_path, flow_capacity=8)
    run.feed([udp4(OTHER_MAC, OTHER_IP, 5000 + i, SERVER_MAC, SERVER_IP, 53) for i in range(8)])
    run.feed([udp4(OTHER_MAC, OTHER_IP, 6000, SERVER_MAC, SERVER_IP, 53)],
             start=T0 + 100_000 * MS)
    ends = run.of("flow_end")
    assert sorted(e["sport"] for e in ends) == list(range(5000, 5008))   # each old flow once
    assert {e["end"] for e in ends} == {"idle"}
    assert run.stats["flows_evicted"] == 0
    assert run.stats["flows_active"] == 1 == len(run.replayer.active_flows())


def test_device_table_full(tmp_path: Path) -> None:
    run = Run(tmp_path, device_capacity=16)             # holds 14 (7/8)
    frames = [tcp4(f"02:00:00:00:01:{i:02x}", f"10.1.0.{i}", 1000, SERVER_MAC, SERVER_IP, 80)
              for i in range(20)]
    summary = run.feed(frames)
    assert summary.devices == 14 == run.stats["devices"]
    assert run.stats["device_table_full"] > 0
    assert len(run.lines) == 20 and {line["verdict"] for line in run.lines} == {"allow"}
    assert run.stats["flows_created"] == 20             # still classified, as flows


def test_device_table_full_counts_packets_once(tmp_path: Path) -> None:
    """docs/fastpath.md: device_table_full "counts packets from devices that could not be
    added". A flow's first packet is counted twice: _start_flow() and then _ip_packet()
    (fastpath/core.pyx) each call _touch_device() for the sender while its device slot is
    still unset, and each failed lookup adds one."""
    run = Run(tmp_path, device_capacity=16)
    frames = [tcp4(f"02:00:00:00:01:{i:02x}", f"10.1.0.{i}", 1000, SERVER_MAC, SERVER_IP, 80)
              for i in range(20)]
    run.feed(frames)
    assert run.stats["device_table_full"] == 6          # 20 senders, 14 tracked, 1 packet each


def test_event_ring_full_drops_and_counts(tmp_path: Path) -> None:
    run = Run(tmp_path, classifier=Classifier(event_capacity=16, seed=3))
    frames = [tcp4(f"02:00:00:00:02:{i:02x}", f"10.2.0.{i}", 1000, SERVER_MAC, SERVER_IP, 80)
              for i in range(50)]
    summary = run.feed(frames)                          # one batch: no drain in between
    # Per packet: new_device + new_flow = 100 events; the ring keeps 16.
    assert len(run.events) == 16
    assert summary.counters["events_dropped"] == 84
    assert (summary.packets, summary.flows, summary.devices) == (50, 50, 50)
    # Drained after the capture: room again for the next device and flow.
    run.feed([tcp4("02:00:00:00:03:01", "10.3.0.1", 1000, SERVER_MAC, SERVER_IP, 80)],
             start=T0 + 100 * MS)
    assert len(run.events) == 18
    assert [e["type"] for e in run.events[16:]] == ["new_device", "new_flow"]
    assert run.stats["events_dropped"] == 84


def test_per_device_counters(tmp_path: Path) -> None:
    run = Run(tmp_path, POLICY)
    frames = HANDSHAKE + [pump(51001, 22, "S"), pump(51002, 23, "S"),
                          tcp4(OTHER_MAC, OTHER_IP, 40000, SERVER_MAC, "10.9.9.10", 80)]
    run.feed(frames)
    p, s, o = run.device(PUMP_MAC), run.device(SERVER_MAC), run.device(OTHER_MAC)
    pump_sent = [frames[i] for i in (0, 2, 3, 5, 6)]
    server_sent = [frames[i] for i in (1, 4)]
    assert (p["packets_sent"], p["bytes_sent"]) == (5, sum(len(f) for f in pump_sent))
    assert (s["packets_sent"], s["bytes_sent"]) == (2, sum(len(f) for f in server_sent))
    assert (p["packets_received"], p["bytes_received"]) == (2, sum(len(f) for f in server_sent))
    assert (p["flows"], p["violations"]) == (3, 2)      # violations: denied flows it started
    # flows: every flow a device took part in, sent or was sent to (the scan targets too)
    assert (s["flows"], s["violations"]) == (4, 0)
    assert (o["flows"], o["violations"], o["packets_sent"]) == (1, 1, 1)
    assert (p["ipv4"], p["first_seen"], p["last_seen"]) == (PUMP_IP, T0 / 1e9,
                                                           (T0 + 6 * MS) / 1e9)
    assert not p["multi_ip"]


def test_per_device_received_counts_every_packet(tmp_path: Path) -> None:
    """Packets and bytes received: every packet sent to a tracked device.

    fastpath/core.pyx _ip_packet() adds to the peer's received counters only once the peer
    has sent on that flow (f.dev[1 - role] is unset before), so the first packet of every
    flow (the SYN) never counts as received by the responder, and a device that never
    answers receives nothing: here the server is counted 2 of the pump's 3 packets.
    """
    run = Run(tmp_path)
    run.feed(HANDSHAKE)
    s = run.device(SERVER_MAC)
    pump_sent = [HANDSHAKE[i] for i in (0, 2, 3)]
    assert (s["packets_received"], s["bytes_received"]) == (3, sum(len(f) for f in pump_sent))
    p = run.device(PUMP_MAC)
    total_sent = p["packets_sent"] + s["packets_sent"]
    assert p["packets_received"] + s["packets_received"] == total_sent
