"""`wardtap learn`: baselines and proposed policies from real captures, through the real CLI.

The acceptance test: a policy learned from the demo ward's clean traffic allows all of it
(zero violations when the same capture is replayed), and flags exactly the injected flows
when the attacked capture is replayed.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest
from conftest import run_wardtap
from wardcaptures import (
    CENTRAL,
    FILES,
    MONITOR,
    NEWCOMER,
    PRINTER,
    PUMP_SERVER,
    PUMPS,
    ROUTER,
    WS,
    demo_captures,
    write_small_ward,
)

from appliance.policy.model import load_policy
from appliance.policy.writer import render
from appliance.replay.runner import Replayer
from appliance.review.baseline import Baseline, learn
from appliance.review.propose import propose

ISO = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("small")
    ward = write_small_ward(d / "small.pcap")
    policy, baseline = d / "learned.toml", d / "baseline.json"
    # the hand-built frames say nothing of who the devices are: flagged conversations are
    # allowed here (--allow-flagged) so these tests see every grouping decision
    result = run_wardtap("learn", ward.path, "-o", str(policy), "--name", "ward-1",
                         "--baseline", str(baseline), "--allow-flagged")
    assert result.returncode == 0, result.stderr
    return {"capture": ward.path, "policy": str(policy), "baseline": str(baseline),
            "dir": str(d), "stdout": result.stdout}


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    d = tmp_path_factory.mktemp("demo")
    clean, attacked, ward = demo_captures(d)
    policy = d / "learned.toml"
    result = run_wardtap("learn", clean, "-o", str(policy), "--name", "ward-4b")
    assert result.returncode == 0, result.stderr
    return {"clean": clean, "attacked": attacked, "ward": ward, "policy": str(policy)}


def _doc(path: str) -> dict[str, object]:
    with open(path, "rb") as fh:
        return tomllib.load(fh)


def _group_of(doc: dict, mac: str) -> str:
    names = [n for n, g in doc["groups"].items() if mac in g.get("mac", [])]
    assert len(names) == 1, (mac, names)
    return names[0]


def _rules(doc: dict, **match: object) -> list[dict]:
    return [r for r in doc["rules"] if all(r.get(k) == v for k, v in match.items())]


# --- the acceptance test ------------------------------------------------------------------


def test_learned_policy_allows_its_own_traffic_and_flags_exactly_the_attacks(
        demo: dict) -> None:
    clean = run_wardtap("replay", demo["clean"], "--policy", demo["policy"], "--json")
    assert clean.returncode == 0, clean.stderr
    summary = json.loads(clean.stdout)
    assert summary["violations"] == 0
    assert summary["denied"] == 0
    assert summary["flows"] > 200

    attacked = run_wardtap("policy", "test", demo["policy"], demo["attacked"], "--json")
    assert attacked.returncode == 0, attacked.stderr
    report = json.loads(attacked.stdout)
    proto = {"tcp": 6, "udp": 17}
    want = {(v.initiator, v.responder, proto[v.proto], v.dport) for v in demo["ward"].violations}
    got = {(v["src"], v["dst"], v["proto"], v["dport"]) for v in report["violations"]}
    assert got == want
    assert len(report["violations"]) == len(demo["ward"].violations)


@pytest.fixture(scope="module")
def attacked(demo: dict, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Learned on the demo capture with its attacks in it, as a real ward is learned."""
    policy = tmp_path_factory.mktemp("attacked") / "learned.toml"
    result = run_wardtap("learn", demo["attacked"], "-o", str(policy), "--name", "ward-4b")
    assert result.returncode == 0, result.stderr
    return {"policy": str(policy), "stdout": result.stdout}


def _injected(demo: dict) -> set[tuple[str, str, int, int]]:
    proto = {"tcp": 6, "udp": 17}
    return {(v.initiator, v.responder, proto[v.proto], v.dport)
            for v in demo["ward"].violations}


def test_learned_on_the_attacked_ward_allows_no_attack_and_all_clean_traffic(
        demo: dict, attacked: dict) -> None:
    clean = run_wardtap("replay", demo["clean"], "--policy", attacked["policy"], "--json")
    assert clean.returncode == 0, clean.stderr
    summary = json.loads(clean.stdout)
    assert (summary["denied"], summary["violations"]) == (0, 0)     # the bar: 0 denied
    report = json.loads(run_wardtap("policy", "test", attacked["policy"], demo["attacked"],
                                    "--json").stdout)
    got = {(v["src"], v["dst"], v["proto"], v["dport"]) for v in report["violations"]}
    assert _injected(demo) <= got                                    # the bar: 0 allowed
    assert "left out for review: " in attacked["stdout"]


def test_every_left_out_rule_says_why_and_is_one_line_from_allowed(
        demo: dict, attacked: dict, tmp_path: Path) -> None:
    text = Path(attacked["policy"]).read_text()
    doc = tomllib.loads(text)
    left = [r for r in doc["rules"] if r.get("enabled") is False]
    assert len(left) >= 4
    blocks = text.split("[[rules]]")
    for rule in left:
        before = next(b for b in blocks[1:] if f'name = "{rule["name"]}"' in b)
        # the comment block above a rule ends the previous block
        head = blocks[blocks.index(before) - 1].rsplit("\n\n", 1)[-1]
        assert "LEFT OUT FOR REVIEW (" in head, rule["name"]
    why = "\n".join(line for line in text.splitlines() if line.startswith("#   "))
    assert "a medical device (infusion pump), called the internet address 93.184.216.34" in why
    assert "a port scan" in why
    assert "nothing explains a workstation talking to a workstation over tcp/445" in why
    assert "dc:a6:32:7e:5b:19" in why and "could not be identified" in why
    # groups never put an internet address beside internal servers
    for name, group in doc["groups"].items():
        ips = group.get("ip", [])
        if "93.184.216.34" in ips:
            assert ips == ["93.184.216.34"] and name.startswith("internet-"), (name, ips)
    # one line enables one: the pump's call home
    [rule] = [r for r in left if "93.184.216.34" in r["to"] or "internet-" in str(r["to"])]
    enabled = tmp_path / "enabled.toml"
    lines = text.splitlines()
    at = lines.index(f'name = "{rule["name"]}"')
    end = next(i for i in range(at, len(lines)) if lines[i].startswith("enabled = false"))
    lines[end] = "enabled = true"
    enabled.write_text("\n".join(lines) + "\n")
    report = json.loads(run_wardtap("policy", "test", str(enabled), demo["attacked"],
                                    "--json").stdout)
    got = {(v["src"], v["dst"]) for v in report["violations"]}
    assert ("10.40.104.13", "93.184.216.34") not in got
    assert ("10.40.1.68", "10.40.1.65") in got                 # the others stay out


def test_demo_groups_follow_behaviour_not_vendor(demo: dict) -> None:
    doc = _doc(demo["policy"])
    ward = demo["ward"]
    pumps = [d for d in ward.devices if d.device_class == "infusion pump"]
    # pumps of three vendors that did the same things share a group, on their VLAN
    groups = {_group_of(doc, d.mac) for d in pumps}
    assert len(groups) <= 2, groups   # one pump may lack the optional DNS lookup
    main = max(groups, key=lambda g: len(doc["groups"][g]["mac"]))
    assert doc["groups"][main]["vlan"] == [104]
    assert len({m[:8] for m in doc["groups"][main]["mac"]}) == 3
    # servers behind the router are matched by address; the router's MAC is in no group
    router = next(d for d in ward.devices if d.name == "core-rtr").mac
    assert all(router not in g.get("mac", []) for g in doc["groups"].values())
    servers = {d.name: d.ip for d in ward.servers}
    [server_group] = [n for n, g in doc["groups"].items()
                      if g.get("ip") == [servers["pump-server"]]]
    assert _rules(doc, **{"from": main, "to": server_group, "proto": "tcp", "ports": [443]})
    # the injected traffic was removed before learning: nothing talks to the internet
    text = Path(demo["policy"]).read_text()
    assert "93.184.216.34" not in text and "dc:a6:32" not in text


def test_live_events_give_the_same_proposal_as_the_cli(demo: dict, tmp_path: Path) -> None:
    """Baseline is fed batch by batch from on_events, as a live source would."""
    baseline = Baseline()
    replayer = Replayer(None, "learn")
    replayer.on_events = baseline.observe
    summary = replayer.run([demo["clean"]])
    baseline.close(replayer.active_flows())
    baseline.add_devices(replayer.devices())
    baseline.packets, baseline.bytes = summary.packets, summary.bytes
    text = render(propose(baseline, "ward-4b", [demo["clean"]]))
    cli = tmp_path / "fast-path-only.toml"        # the same evidence: no tshark
    result = run_wardtap("learn", demo["clean"], "-o", str(cli), "--name", "ward-4b",
                         "--no-dissect")
    assert result.returncode == 0, result.stderr
    assert text == cli.read_text()


# --- what the proposal contains (the small hand-built ward) -----------------------------


def test_small_ward_replays_clean_and_policy_checks(small: dict) -> None:
    check = run_wardtap("policy", "check", small["policy"])
    assert check.returncode == 0, check.stderr
    result = run_wardtap("replay", small["capture"], "--policy", small["policy"], "--json")
    summary = json.loads(result.stdout)
    assert (summary["violations"], summary["denied"]) == (0, 0)
    assert "-> " + small["policy"] in small["stdout"]
    policy = load_policy(small["policy"])
    assert policy.name == "ward-1" and policy.version == 1


def test_devices_that_behave_alike_are_one_group_with_macs_ips_and_vlan(small: dict) -> None:
    doc = _doc(small["policy"])
    name = _group_of(doc, PUMPS[0][0])
    group = doc["groups"][name]
    assert group["mac"] == sorted(m for m, _ in PUMPS)          # two vendors, one group
    assert group["ip"] == [ip for _, ip in PUMPS]
    assert group["vlan"] == [20]
    assert name == "https-clients"                              # mixed vendors: behaviour
    assert _group_of(doc, PRINTER[0]) == "hp-jetdirect-server"  # one vendor: its name
    # every group has what was seen above it
    text = Path(small["policy"]).read_text()
    assert re.search(rf"# seen {ISO} \.\. {ISO}: 18 flows, 81 packets", text)


def test_servers_are_recognised_and_client_ports_never_appear(small: dict) -> None:
    doc = _doc(small["policy"])
    pumps = _group_of(doc, PUMPS[0][0])
    [server] = [n for n, g in doc["groups"].items() if g.get("ip") == [PUMP_SERVER]]
    [rule] = _rules(doc, **{"from": pumps, "to": server})
    assert (rule["proto"], rule["ports"]) == ("tcp", [443])
    ports = {p for r in doc["rules"] for p in r.get("ports", []) if isinstance(p, int)}
    assert ports == {53, 67, 68, 161, 443, 2575, 5353, 9100}  # no client port anywhere
    # a TCP connection caught without its SYN: the ephemeral side is the client
    mon, central = _group_of(doc, MONITOR[0]), _group_of(doc, CENTRAL[0])
    assert _rules(doc, **{"from": mon, "to": central, "proto": "tcp", "ports": [2575]})


def test_conversations_started_from_both_sides_allow_either(small: dict) -> None:
    doc = _doc(small["policy"])
    ws, printer = _group_of(doc, WS[0]), _group_of(doc, PRINTER[0])
    [rule] = [r for r in doc["rules"] if r["proto"] == "udp" and r["ports"] == [161]]
    assert {rule["from"], rule["to"]} == {ws, printer}
    assert rule["initiate"] == "either"
    assert "<->" in Path(small["policy"]).read_text()


def test_ephemeral_responder_ports_become_a_range_marked_for_review(small: dict) -> None:
    doc = _doc(small["policy"])
    ws = _group_of(doc, WS[0])
    [files] = [n for n, g in doc["groups"].items() if g.get("ip") == [FILES]]
    [rule] = _rules(doc, **{"from": files, "to": ws})
    assert rule["ports"] == ["49152-65535"]
    text = Path(small["policy"]).read_text()
    block = text[:text.index(f'name = "{rule["name"]}"')].rsplit("\n\n", 1)[-1]
    assert "REVIEW" in block and "50400..50594" in block


def test_dhcp_broadcast_multicast_icmp_and_ipv6(small: dict) -> None:
    doc = _doc(small["policy"])
    assert _rules(doc, **{"from": "0.0.0.0", "to": "255.255.255.255", "proto": "udp",
                          "ports": [67]})
    [reply] = _rules(doc, **{"to": "255.255.255.255", "ports": [68]})
    assert doc["groups"][reply["from"]]["ip"] == ["10.1.1.1"]    # the relay, by address
    ws = _group_of(doc, WS[0])
    assert _rules(doc, **{"from": ws, "to": "224.0.0.251", "proto": "udp", "ports": [5353]})
    [ping] = _rules(doc, **{"from": ws, "proto": "icmp"})
    assert ping["icmp_types"] == [8]
    assert _rules(doc, **{"from": "::", "to": "ff02::16", "proto": "icmpv6",
                          "icmp_types": [143]})
    mon = _group_of(doc, MONITOR[0])
    assert _rules(doc, **{"from": mon, "to": "ff02::1:ff00:0/104", "icmp_types": [135]})
    assert _rules(doc, **{"from": _group_of(doc, CENTRAL[0]), "to": mon,
                          "icmp_types": [136]})
    # link-local addresses belong to their device's group
    assert any(ip.startswith("fe80::") for ip in doc["groups"][mon]["ip"])
    # ARP is allowed; non-IP is allowed because the switch sent LLDP (and says so)
    text = Path(small["policy"]).read_text()
    assert re.search(r'non_ip = "allow"  # seen from 00:1e:f7:00:00:02', text)
    assert 'arp = "allow"' in text


def test_every_rule_says_what_was_seen(small: dict) -> None:
    text = Path(small["policy"]).read_text()
    blocks = [b for b in text.split("\n\n") if "[[rules]]" in b]
    assert len(blocks) == len(_doc(small["policy"])["rules"]) == 17
    for block in blocks:
        assert re.search(r"# \S+ (->|<->) \S+ .*: [\d,]+ flows?, [\d,]+ packets?, [\d,]+ bytes?",
                         block)
        assert re.search(rf"#   first seen {ISO}, last seen {ISO}", block), block
        assert "#   started by: " in block, block
    dhcp = next(b for b in blocks if 'from = "0.0.0.0"' in b)
    assert NEWCOMER[0] in dhcp and "DHCP" in dhcp
    assert ROUTER in text.split("[policy]")[0]                 # the router, in the header


def test_output_is_deterministic(small: dict, tmp_path: Path) -> None:
    again = tmp_path / "again.toml"
    result = run_wardtap("learn", small["capture"], "-o", str(again), "--name", "ward-1",
                         "--baseline", str(tmp_path / "b.json"), "--allow-flagged")
    assert result.returncode == 0, result.stderr
    assert again.read_bytes() == Path(small["policy"]).read_bytes()
    assert (tmp_path / "b.json").read_bytes() == Path(small["baseline"]).read_bytes()
    # standard output when -o is left out; the summary goes to stderr then
    stdout = run_wardtap("learn", small["capture"], "--name", "ward-1", "--allow-flagged")
    assert stdout.stdout == again.read_text()
    assert "learned" in stdout.stderr


def test_baseline_per_device(small: dict) -> None:
    doc = json.loads(Path(small["baseline"]).read_text())
    devices = {d["key"]: d for d in doc["devices"]}
    pump = devices[PUMPS[0][0]]
    assert pump["role"] == "device" and pump["vendor"].startswith("B.Braun")
    assert pump["peers"] == [PUMP_SERVER, "10.9.0.53"]
    assert pump["protocols"] == ["tcp", "udp"] and pump["server_ports"] == []
    assert (pump["initiated"], pump["answered"], pump["flows"]) == (6, 0, 6)
    assert pump["vlans"] == [20] and pump["ips"] == [PUMPS[0][1]]
    assert re.fullmatch(ISO, pump["first_seen"]) and re.fullmatch(ISO, pump["last_seen"])
    assert pump["counters"]["packets_sent"] > 0
    https = next(c for c in pump["conversations"] if c["service"] == "tcp/443")
    assert (https["direction"], https["flows"], https["packets"]) == ("out", 3, 21)
    printer = devices[PRINTER[0]]
    assert printer["server_ports"] == ["tcp/9100", "udp/161"]
    assert (printer["initiated"], printer["answered"]) == (1, 4)
    assert devices[ROUTER]["role"] == "router"
    assert devices[PUMP_SERVER]["role"] == "host"
    newcomer = devices[NEWCOMER[0]]            # DHCP from 0.0.0.0 belongs to its MAC
    assert any(c["peer"] == "255.255.255.255" for c in newcomer["conversations"])


def test_learn_api_matches_baseline_counts(small: dict) -> None:
    baseline = learn([small["capture"]])
    # 44: the three pings of the workstation share an ICMP id, 70 s apart, past the ICMP
    # idle timeout (30 s): three flows
    assert sum(s.flows for s in baseline.conversations.values()) == 44
    assert baseline.packets == 201


# --- bad input: one line, exit 2, nothing written -----------------------------------------


def test_missing_capture(tmp_path: Path) -> None:
    out = tmp_path / "p.toml"
    result = run_wardtap("learn", str(tmp_path / "none.pcap"), "-o", str(out))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"wardtap: error: learn CAPTURE: {tmp_path / 'none.pcap'}: no such file"]
    assert not out.exists()


def test_damaged_capture_is_an_error(small: dict, tmp_path: Path) -> None:
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(Path(small["capture"]).read_bytes()[:-10])
    out = tmp_path / "p.toml"
    result = run_wardtap("learn", str(cut), "-o", str(out))
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert str(cut) in line and "truncated" in line and "Traceback" not in result.stderr
    assert not out.exists()


def test_capture_without_ip_flows(tmp_path: Path) -> None:
    from appliance.common.capwriter import PcapWriter
    from demoward import frames as p

    path = tmp_path / "arp.pcap"
    with path.open("wb") as f:
        PcapWriter(f).write(p.ether(p.BROADCAST_MAC, WS[0], p.ETH_ARP,
                                    p.arp(1, WS[0], WS[1], "00:00:00:00:00:00", "10.1.1.1")),
                            1_700_000_000 * 10**9)
    result = run_wardtap("learn", str(path), "-o", str(tmp_path / "p.toml"))
    assert result.returncode == 2
    assert "no IP flows seen" in result.stderr and len(result.stderr.splitlines()) == 1


def test_bad_name(small: dict, tmp_path: Path) -> None:
    result = run_wardtap("learn", small["capture"], "-o", str(tmp_path / "p.toml"),
                         "--name", "x" * 65)
    assert result.returncode == 2 and "--name" in result.stderr


def _flow(kind: str, flow: int, src: str, dst: str, dport: int, orient: str,
          **extra: object) -> dict:
    return {"type": kind, "ts": 1.0, "flow": flow, "src": src, "dst": dst, "proto": 17,
            "sport": 40000, "dport": dport, "vlan": 0, "orient": orient,
            "smac": "02:00:00:00:00:01", "dmac": "02:00:00:00:00:02", **extra}


def test_unsolicited_answers_and_taken_back_guesses_are_not_learned() -> None:
    """An answer no request explains is no conversation; a guess that a later packet
    contradicted is replaced by the flow started again the right way round."""
    baseline = Baseline()
    baseline.observe([
        _flow("new_flow", 1, "10.9.0.53", "10.1.0.5", 40000, "unsolicited"),
        _flow("flow_end", 1, "10.9.0.53", "10.1.0.5", 40000, "unsolicited", end="idle",
              packets=1, bytes=80),
        _flow("new_flow", 2, "10.9.0.10", "10.1.0.5", 40001, "lower_port"),
        _flow("flow_end", 2, "10.9.0.10", "10.1.0.5", 40001, "lower_port", end="reoriented",
              packets=1, bytes=60),
        _flow("new_flow", 3, "10.1.0.5", "10.9.0.10", 7400, "syn"),
    ])
    assert [(k[1], k[3], k[6]) for k in baseline.conversations] == [
        ("10.1.0.5", "10.9.0.10", 7400)]
    assert baseline.counters == {"unsolicited_answers": 1, "flows_reoriented": 1}
