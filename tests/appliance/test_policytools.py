"""`wardtap policy diff | test | import-mud | drift` through the real CLI on real captures.

Also the pure-Python policy evaluator (appliance.policy.evaluate) against the fast path, flow by
flow, since diff, drift and the nearest-rule reports rely on it.
"""

from __future__ import annotations

import copy
import json
import tomllib
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, run_wardtap
from wardcaptures import PUMP_SERVER, PUMPS, demo_captures, write_small_ward

from appliance.policy.evaluate import Endpoint, Evaluator
from appliance.policy.model import load_policy, parse_policy
from appliance.replay.runner import Replayer
from demoward.ward import DEMO_POLICY

MUD = ROOT / "tests" / "data" / "infusion-pump.mud.json"
FILLS = ["--fill", "pumpserver.hosp.example=10.40.104.0/24,10.20.0.15",
         "--fill", "urn:ietf:params:mud:dns=10.20.0.53",
         "--fill", "ntp-servers=10.20.0.123"]

OLD = """\
[policy]
name = "ward-1"
version = 3

[groups.pumps]
mac = ["00:12:21:00:00:01", "00:12:21:00:00:02"]
vlan = [20]

[groups.server]
ip = ["10.9.0.10"]

[[rules]]
name = "pumps-https"
from = "pumps"
to = "server"
proto = "tcp"
ports = [443]
"""

NEW = """\
# the same groups in another order, one renamed, one pump gone, one more port, ARP denied
[policy]
name = "ward-1"
version = 4
arp = "deny"

[groups.pump-server]
ip = ["10.9.0.10/32"]

[groups.pumps]
mac = ["00:12:21:00:00:01"]
vlan = [20]

[[rules]]
name = "pumps-https"
from = "pumps"
to = "pump-server"
proto = "tcp"
ports = [443, 8443]
"""

TEST_POLICY = """\
[policy]
name = "bench"
non_ip = "deny"

[groups.braun-pumps]
oui = ["00:12:21"]
vlan = [20]

[groups.pump-server]
ip = ["10.9.0.10"]

[groups.dns]
ip = ["10.9.0.53"]

[groups.spare]
mac = ["00:12:21:00:00:77"]

[[rules]]
name = "pumps-https"
from = "braun-pumps"
to = "pump-server"
proto = "tcp"
ports = [8443]

[[rules]]
name = "dns-to-pumps"
from = "dns"
to = "braun-pumps"
proto = "udp"
ports = [53]
"""


def _write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _json(*args: str) -> dict[str, Any]:
    result = run_wardtap(*args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _one_error(result: Any) -> str:
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("wardtap: error: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> str:
    return write_small_ward(tmp_path_factory.mktemp("small") / "small.pcap").path


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("demo")
    clean, attacked, ward = demo_captures(d)
    learned = d / "learned.toml"
    assert run_wardtap("learn", clean, "-o", str(learned)).returncode == 0
    demo_policy = d / "demo.toml"
    demo_policy.write_text(DEMO_POLICY)
    return {"clean": clean, "attacked": attacked, "ward": ward, "learned": str(learned),
            "demo_policy": str(demo_policy)}


# --- diff -----------------------------------------------------------------------------------


def test_diff_reports_meaning_not_text(tmp_path: Path) -> None:
    old, new = _write(tmp_path, "old.toml", OLD), _write(tmp_path, "new.toml", NEW)
    d = _json("policy", "diff", old, new)
    assert {(s["setting"], s["old"], s["new"]) for s in d["settings"]} == {
        ("version", 3, 4), ("arp", "allow", "deny")}
    assert d["groups"]["renamed"] == [{"old": "server", "new": "pump-server"}]
    assert d["groups"]["changed"] == [{"group": "pumps", "added": {},
                                       "removed": {"mac": ["00:12:21:00:00:02"]}}]
    assert not d["groups"]["added"] and not d["groups"]["removed"]
    [changed] = d["rules"]["changed"]
    assert changed["fields"] == {"to": {"old": "server", "new": "pump-server"},
                                 "ports": {"old": "443", "new": "443,8443"}}
    [allowed] = d["newly_allowed"]
    assert (allowed["from"], allowed["to"], allowed["proto"], allowed["ports"],
            allowed["vlans"]) == ("pumps", "pump-server", "tcp", "8443", [20])
    assert allowed["from_members"] == ["00:12:21:00:00:01"]
    [denied] = d["newly_denied"]
    assert (denied["from"], denied["to"], denied["ports"]) == ("pumps", "server", "443")
    assert denied["from_members"] == ["00:12:21:00:00:02"]

    text = run_wardtap("policy", "diff", old, new)
    assert text.returncode == 0
    assert "  ~ arp: allow -> deny" in text.stdout
    assert "  = server renamed pump-server (same members)" in text.stdout
    assert "  + pumps -> pump-server tcp/8443 on VLAN 20" in text.stdout
    assert "  - pumps -> server tcp/443 on VLAN 20" in text.stdout


def test_diff_of_a_policy_with_itself_and_a_reordered_copy(tmp_path: Path) -> None:
    old = _write(tmp_path, "old.toml", OLD)
    head, groups = OLD.split("[groups.pumps]")
    pumps, rest = groups.split("[groups.server]")
    shuffled = _write(tmp_path, "shuffled.toml",
                      head + "[groups.server]" + rest.split("[[rules]]")[0] + "[groups.pumps]"
                      + pumps + "[[rules]]" + rest.split("[[rules]]")[1])
    for other in (old, shuffled):
        result = run_wardtap("policy", "diff", old, other)
        assert result.returncode == 0
        assert result.stdout.strip().endswith("no differences in meaning")


def test_diff_of_learned_against_hand_written_demo_policy(demo: dict[str, Any]) -> None:
    d = _json("policy", "diff", demo["demo_policy"], demo["learned"])
    # the learned policy names pumps by MAC; the hand-written one by OUI on VLAN 104: a
    # new pump of those vendors would be denied now
    denied = {(c["from"], c["to"], c["ports"]) for c in d["newly_denied"]}
    assert ("pumps", "pump-server", "443") in denied
    # renamed groups are recognised by their members
    assert {"old": "pump-server", "new": "https-10.20.0.15"} in d["groups"]["renamed"]


# --- test -------------------------------------------------------------------------------------


def test_policy_test_reports_devices_reasons_and_nearest_rules(small: str,
                                                                 tmp_path: Path) -> None:
    policy = _write(tmp_path, "bench.toml", TEST_POLICY)
    t = _json("policy", "test", policy, small)
    flows = {(v["src"], v["dst"], v["proto"], v["dport"]): v for v in t["violations"]}
    braun = flows[(PUMPS[0][1], PUMP_SERVER, 6, 443)]
    assert (braun["reason"], braun["nearest_rule"]) == ("port_not_allowed", "pumps-https")
    assert braun["src_groups"] == ["braun-pumps"] and braun["packets"] == 7
    dns = flows[(PUMPS[0][1], "10.9.0.53", 17, 53)]
    assert (dns["reason"], dns["nearest_rule"]) == ("wrong_initiator", "dns-to-pumps")
    baxter = flows[(PUMPS[2][1], PUMP_SERVER, 6, 443)]
    assert (baxter["reason"], baxter["nearest_rule"], baxter["src_groups"]) == (
        "no_rule", None, [])
    reasons = {(r["reason"], r["nearest_rule"]): r["flows"] for r in t["reasons"]}
    assert reasons[("port_not_allowed", "pumps-https")] == 6
    assert reasons[("wrong_initiator", "dns-to-pumps")] == 6
    device = next(d for d in t["devices"] if d["mac"] == PUMPS[0][0])
    assert device["flows"] == 6 and device["groups"] == ["braun-pumps"]
    # Every flow in the capture: 44 since a conversation idle past its timeout is a new flow
    # when it resumes, swept or not (fastpath: "a flow idle past its timeout ends when its
    # next packet comes").
    assert t["blocked"]["flows"] == len(t["violations"]) == 44
    assert t["blocked"]["frames_not_in_flows"] == {"arp": 0, "non_ip": 1,
                                                    "fragment_unmatched": 0}
    text = run_wardtap("policy", "test", policy, small)
    assert text.returncode == 0
    assert f"  {PUMPS[0][0]} {PUMPS[0][1]} [braun-pumps]: 6 flows" in text.stdout
    assert ("-> 10.9.0.10 tcp port 443: 3 flows (port_not_allowed, nearest rule "
            "pumps-https)") in text.stdout
    assert "frames outside flows that would be dropped: non_ip 1" in text.stdout


def test_python_evaluator_agrees_with_the_fast_path(demo: dict[str, Any], small: str,
                                                    tmp_path: Path) -> None:
    cases = [(demo["demo_policy"], demo["attacked"]), (demo["learned"], demo["attacked"]),
             (_write(tmp_path, "bench.toml", TEST_POLICY), small)]
    checked = 0
    for path, capture in cases:
        policy = load_policy(path)
        evaluator = Evaluator(policy)
        events: list[dict[str, Any]] = []
        replayer = Replayer(policy, "monitor")
        replayer.on_events = events.extend
        replayer.run([capture])
        for e in events:
            if e["type"] != "new_flow":
                continue
            port = e["icmp_type"] if e["proto"] in (1, 58) else e["dport"]
            d = evaluator.decide(Endpoint(e.get("smac"), e["src"], e["vlan"]),
                                 Endpoint(e.get("dmac"), e["dst"], e["vlan"]), e["proto"],
                                 port)
            assert (d.reason, d.allowed) == (e["reason"], e["verdict"] == "allow"), e
            if d.allowed:
                assert d.rule == e["rule"], e
            checked += 1
    assert checked > 500


# --- import-mud -----------------------------------------------------------------------------


def test_import_mud_resolves_its_peers_without_a_hand_edit(tmp_path: Path) -> None:
    result = run_wardtap("policy", "import-mud", str(MUD), "--oui", "00:12:21", "--vlan", "104")
    assert result.returncode == 0, result.stderr
    policy = parse_policy(result.stdout, "mud.toml")
    assert policy.groups["lvp-7"].vlans == (104,)
    # every peer the appliance can resolve by itself is a live group; only my-controller,
    # which no configuration names here, waits for the operator, and says so in one line
    active = {(r.sources, r.destinations, r.proto, r.ports, r.either) for r in policy.rules}
    assert active == {
        (("lvp-7",), ("dns-pumpserver.hosp.example",), 6, ((443, 443),), False),
        (("lvp-7",), ("dns-servers",), 17, ((53, 53),), False),
        (("lvp-7",), ("ntp-servers",), 17, ((123, 123),), False),
        (("lvp-7",), ("local-networks",), 1, ((8, 8),), False),
        (("lvp-7",), ("same-manufacturer",), 17, ((47000, 47010),), False),
        (("lvp-7",), ("ff02::/16",), 58, (), True),
        (("lvp-7",), ("fe80::/10",), 58, (), True),
    }
    assert policy.groups["dns-pumpserver.hosp.example"].names == ("pumpserver.hosp.example",)
    assert policy.groups["dns-servers"].roles == ("DNS server",)
    assert policy.groups["ntp-servers"].roles == ("NTP server",)
    same = policy.groups["same-manufacturer"]
    assert same.ouis == (bytes.fromhex("001221"),) and same.makers == ("Example Medical",)
    assert '# from = "my-controller"' in result.stdout
    warnings = result.stderr.strip().splitlines()
    assert not any("dnsname" in w or "same-manufacturer" in w or "mud:dns" in w
                   for w in warnings)
    mine = [w for w in warnings if "my-controller" in w]
    assert len(mine) == 1 and "no controller configured for MUD URL " \
        "https://mud.pumpvendor.example/infusion/lvp-7.json" in mine[0]
    assert any("local-networks" in w and "10.0.0.0/8" in w for w in warnings)


def test_import_mud_filled_in_maps_directions(tmp_path: Path) -> None:
    out = tmp_path / "pump.toml"
    result = run_wardtap("policy", "import-mud", str(MUD), "-o", str(out), "--name", "lvp7",
                         "--mac", "00:12:21:5e:a0:11", *FILLS,
                         "--fill", "my-controller=10.20.0.16",
                         "--fill", "same-manufacturer=10.40.104.0/24")
    assert result.returncode == 0, result.stderr
    assert f"-> {out}" in result.stdout
    assert run_wardtap("policy", "check", str(out)).returncode == 0
    with out.open("rb") as fh:
        doc = tomllib.load(fh)
    rules = {(r["from"], r["to"], r["proto"], tuple(r.get("ports", r.get("icmp_types", []))),
              r.get("initiate", "from")) for r in doc["rules"]}
    assert rules == {
        # from-device + to-device halves of one TCP conversation fold into one rule
        ("lvp-7", "dns-pumpserver.hosp.example", "tcp", (443,), "from"),
        ("lvp-7", "dns-servers", "udp", (53,), "from"),
        ("lvp-7", "ntp-servers", "udp", (123,), "from"),
        ("lvp-7", "local-networks", "icmp", (8,), "from"),       # echo reply -> request
        ("my-controller", "lvp-7", "tcp", (8443,), "from"),      # direction-initiated
        ("lvp-7", "same-manufacturer", "udp", ("47000-47010",), "from"),
        ("lvp-7", "ff02::/16", "icmpv6", (), "either"),
        ("lvp-7", "fe80::/10", "icmpv6", (), "either"),
    }
    assert doc["groups"]["dns-pumpserver.hosp.example"]["ip"] == ["10.40.104.0/24",
                                                                   "10.20.0.15"]
    assert doc["groups"]["dns-pumpserver.hosp.example"]["names"] == ["pumpserver.hosp.example"]
    assert doc["policy"]["name"] == "lvp7"


def _mud_doc() -> dict[str, Any]:
    return json.loads(MUD.read_text())


def _ace(doc: dict[str, Any], acl: int = 0, ace: int = 0) -> dict[str, Any]:
    return doc["ietf-access-control-list:acls"]["acl"][acl]["aces"]["ace"][ace]


def _bad(mutate: Any) -> dict[str, Any]:
    doc = copy.deepcopy(_mud_doc())
    mutate(doc)
    return doc


ACE0 = "$.ietf-access-control-list:acls.acl[0].aces.ace[0]"
BAD_MUDS = {
    "not-mud": ({"something": 1}, "$.ietf-mud:mud: missing: not a MUD file"),
    "version": (_bad(lambda d: d["ietf-mud:mud"].update({"mud-version": 2})),
                "$.ietf-mud:mud.mud-version: only MUD version 1"),
    "unknown-acl": (_bad(lambda d: d["ietf-mud:mud"]["from-device-policy"]["access-lists"]
                         ["access-list"][0].update({"name": "nope"})),
                    "$.ietf-mud:mud.from-device-policy.access-lists.access-list[0].name: "
                    "names ACL 'nope'"),
    "proto-vs-udp": (_bad(lambda d: _ace(d)["matches"]["ipv4"].update({"protocol": 17})),
                     f"{ACE0}.matches.ipv4.protocol: contradictory: protocol 17 with a tcp"),
    "udp-direction": (_bad(lambda d: _ace(d, 0, 1)["matches"]["udp"].update(
        {"ietf-mud:direction-initiated": "from-device"})),
        "ace[1].matches.udp.ietf-mud:direction-initiated: contradictory"),
    "range": (_bad(lambda d: _ace(d, 0, 5)["matches"]["udp"]["destination-port"].update(
        {"lower-port": 47010, "upper-port": 47000})),
        "ace[5].matches.udp.destination-port: contradictory: lower-port 47010 above"),
    "port": (_bad(lambda d: _ace(d)["matches"]["tcp"]["destination-port"].update(
        {"port": 70000})), f"{ACE0}.matches.tcp.destination-port.port: must be a whole"),
    "eth": (_bad(lambda d: _ace(d)["matches"].update({"eth": {"ethertype": "0x86dd"}})),
            f"{ACE0}.matches.eth.ethertype: contradictory: ethertype 0x86dd with an ipv4"),
    "eth-field": (_bad(lambda d: _ace(d)["matches"].update({"eth": {"vlan": 5}})),
                  f"{ACE0}.matches.eth.vlan: unknown Ethernet match"),
    "local-public": (_bad(lambda d: _ace(d, 0, 3)["matches"]["ipv4"].update(
        {"destination-ipv4-network": "8.8.8.0/24"})),
        "ace[3].matches.ipv4.destination-ipv4-network: contradictory: 8.8.8.0/24 with "
        "local-networks (8.8.8.0/24 is not a local network)"),
    "both-acl-keys": (_bad(lambda d: d.update(
        {"ietf-access-control-list:access-lists": {"acl": []}})),
        "$.ietf-access-control-list:access-lists: contradictory: both"),
    "unknown-match": (_bad(lambda d: _ace(d)["matches"].update({"sctp": {}})),
                      f"{ACE0}.matches.sctp: unknown match"),
    "two-peers": (_bad(lambda d: _ace(d)["matches"].update(
        {"ietf-mud:mud": {"my-controller": [None]}})),
        f"{ACE0}.matches: contradictory: names more than one peer"),
    "acl-type": (_bad(lambda d: d["ietf-access-control-list:acls"]["acl"][0].update(
        {"type": "mpls-acl-type"})), "acl[0].type: ACL type 'mpls-acl-type' is not supported"),
    "family": (_bad(lambda d: d["ietf-access-control-list:acls"]["acl"][0].update(
        {"type": "ipv6-acl-type"})), f"{ACE0}.matches.ipv4: contradictory: ipv4 match in"),
    "action": (_bad(lambda d: _ace(d)["actions"].update({"forwarding": "maybe"})),
               f"{ACE0}.actions.forwarding: must be accept, drop or reject"),
    "network": (_bad(lambda d: _ace(d, 2)["matches"]["ipv6"].update(
        {"destination-ipv6-network": "10.0.0.0/8"})), "contradictory: 10.0.0.0/8 in an ipv6"),
    "duplicate-acl": (_bad(lambda d: d["ietf-access-control-list:acls"]["acl"][1].update(
        {"name": "mud-lvp7-v4fr"})), "acl[1].name: ACL name 'mud-lvp7-v4fr' is used twice"),
}


@pytest.mark.parametrize("case", sorted(BAD_MUDS))
def test_bad_mud_files_are_one_error_line_and_nothing_written(case: str,
                                                               tmp_path: Path) -> None:
    doc, expected = BAD_MUDS[case]
    mud = tmp_path / f"{case}.json"
    mud.write_text(json.dumps(doc))
    out = tmp_path / "out.toml"
    line = _one_error(run_wardtap("policy", "import-mud", str(mud), "-o", str(out)))
    assert line.startswith(f"wardtap: error: {mud}: ")
    assert expected in line, line
    assert not out.exists()


def test_invalid_json_and_unknown_fill(tmp_path: Path) -> None:
    mud = tmp_path / "broken.json"
    mud.write_text('{"ietf-mud:mud": {\n  "mud-version": 1,\n  oops\n}}')
    line = _one_error(run_wardtap("policy", "import-mud", str(mud)))
    assert f"{mud}: line 3 column 3: not valid JSON" in line
    line = _one_error(run_wardtap("policy", "import-mud", str(MUD), "--fill", "nope=10.0.0.1"))
    assert "--fill nope: no such group" in line and "my-controller" in line
    line = _one_error(run_wardtap("policy", "import-mud", str(MUD), "--fill", "my-controller"))
    assert "expected NAME=ADDRESS" in line
    line = _one_error(run_wardtap("policy", "import-mud", str(MUD), "--mac", "00:12"))
    assert "--mac: '00:12' is not a MAC address" in line


def test_drop_entries_and_ignored_fields_are_warnings(tmp_path: Path) -> None:
    doc = _mud_doc()
    _ace(doc, 0, 3)["actions"]["forwarding"] = "drop"
    _ace(doc, 0, 0)["matches"]["ipv4"]["dscp"] = 46
    mud = tmp_path / "warn.json"
    mud.write_text(json.dumps(doc))
    result = run_wardtap("policy", "import-mud", str(mud))
    assert result.returncode == 0, result.stderr
    assert f"{mud}: $.ietf-access-control-list:acls.acl[0].aces.ace[3].actions.forwarding: " \
           "'drop' entry not carried over" in result.stderr
    assert f"{ACE0}.matches.ipv4.dscp: not matched by wardtap" in result.stderr


# --- drift ------------------------------------------------------------------------------------


def test_drift_against_a_policy_both_ways(demo: dict[str, Any], small: str,
                                          tmp_path: Path) -> None:
    d = _json("policy", "drift", "--policy", demo["learned"], demo["attacked"])
    devices = {x["device"]: x for x in d["devices"]}
    ward = demo["ward"]
    pump3 = next(x for x in ward.devices if x.name == "pump-03")
    [item] = devices[pump3.mac]["seen_not_allowed"]
    assert (item["direction"], item["peer"], item["service"], item["reason"]) == (
        "out", "93.184.216.34", "tcp/443", "no_rule")
    rogue = devices["dc:a6:32:7e:5b:19"]
    assert rogue["groups"] == [] and rogue["seen_not_allowed"][0]["peer"] == "10.20.0.30"
    # the scanned server sees the scan as traffic to it that is not allowed
    assert len(devices["10.20.0.40"]["seen_not_allowed"]) == 80
    # a learned policy has nothing allowed that was never seen in its own capture
    d = _json("policy", "drift", "--policy", demo["learned"], demo["clean"])
    assert d["devices"] == [] and d["members_never_seen"] == []

    # the hand-written demo policy allows pumps to ping the gateway; none ever did
    d = _json("policy", "drift", "--policy", demo["demo_policy"], demo["clean"])
    assert all(not x["seen_not_allowed"] for x in d["devices"])
    pump1 = next(x for x in ward.devices if x.name == "pump-01")
    unused = {r["rule"] for r in {x["device"]: x for x in d["devices"]}[pump1.mac]
              ["allowed_never_seen"]}
    assert "ward-ping-gateway" in unused and "pumps-to-pump-server" not in unused

    bench = _write(tmp_path, "bench.toml", TEST_POLICY)
    d = _json("policy", "drift", "--policy", bench, small)
    assert {"group": "spare", "member": "mac 00:12:21:00:00:77"} in d["members_never_seen"]
    text = run_wardtap("policy", "drift", "--policy", bench, small)
    assert "  seen, not allowed:" in text.stdout and "policy members never seen:" in \
        text.stdout


def test_drift_against_a_mud_file(demo: dict[str, Any]) -> None:
    d = _json("policy", "drift", "--mud", str(MUD), demo["attacked"], "--oui", "00:12:21",
              "--vlan", "104", *FILLS)
    braun = sorted(x.mac for x in demo["ward"].devices if x.mac.startswith("00:12:21"))
    assert sorted(x["device"] for x in d["devices"]) == braun   # only the MUD's devices
    pump3 = next(x for x in demo["ward"].devices if x.name == "pump-03")
    devices = {x["device"]: x for x in d["devices"]}
    assert [(i["peer"], i["service"]) for i in devices[pump3.mac]["seen_not_allowed"]] == [
        ("93.184.216.34", "tcp/443")]
    for mac in braun:
        unused = {r["rule"] for r in devices[mac]["allowed_never_seen"]}
        assert "mud-lvp7-v4fr-ping0-frdev" in unused          # allowed, never pinged
        assert "mud-lvp7-v4fr-cl0-frdev" not in unused        # its pump server: seen
    assert len(d["unchecked_rules"]) == 1         # my-controller: none configured
    assert any("my-controller" in u for u in d["unchecked_rules"])


# --- bad policies ---------------------------------------------------------------------------


@pytest.mark.parametrize("action", ["diff", "test", "drift"])
def test_bad_policy_is_one_error_line(action: str, small: str, tmp_path: Path) -> None:
    bad = _write(tmp_path, "bad.toml", OLD.replace('to = "server"', 'to = "servers"'))
    good = _write(tmp_path, "good.toml", OLD)
    args = {"diff": ("diff", good, bad), "test": ("test", bad, small),
            "drift": ("drift", "--policy", bad, small)}[action]
    line = _one_error(run_wardtap("policy", *args))
    assert line == (f"wardtap: error: {bad}:15 [rules.pumps-https.to]: unknown group "
                    "'servers' (groups: pumps, server)")


def test_contradictory_policy_and_options(small: str, tmp_path: Path) -> None:
    bad = _write(tmp_path, "bad.toml", OLD.replace('proto = "tcp"', 'proto = "icmp"'))
    line = _one_error(run_wardtap("policy", "test", bad, small))
    assert "[rules.pumps-https.ports]: ports need proto tcp, udp or sctp" in line
    line = _one_error(run_wardtap("policy", "drift", "--policy", _write(
        tmp_path, "ok.toml", OLD), small, "--oui", "00:12:21"))
    assert "go with --mud" in line
    result = run_wardtap("policy", "drift", "--policy", bad, "--mud", str(MUD), small)
    assert result.returncode == 2 and "not allowed with argument" in result.stderr
