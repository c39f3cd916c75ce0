"""MUD peers the appliance resolves by itself: the well-known DNS and NTP controllers (the
inventory's server roles), same-manufacturer (the device's OUIs and maker), my-controller
(the appliance configuration's [mud.controllers]).

Every MUD file in the tests imports with no placeholder left; the imported policy then
decides flows through the real fast path with `role` and `maker` groups resolved from a real
SQLite store, and `policy test --db`, `policy diff` and `policy check` say what those groups
mean. (A DNS server whose role the appliance learns from dnsmasq's answers, inline:
tests/datapath/test_names_clinical.py.)
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import ROOT, run_wardtap

import fastpath
from appliance.common.capwriter import PcapWriter
from appliance.daemon.policyload import policy_members
from appliance.inventory.identify import class_members
from appliance.outputs.store import Store
from appliance.policy.evaluate import Endpoint, Evaluator
from appliance.policy.model import compile_policy, load_policy, parse_policy
from demoward import frames as P

PUMP, PUMP_IP = "00:12:21:5e:a0:11", "10.40.104.11"
DNS, DNS_IP = "00:26:cb:4a:10:53", "10.20.0.53"           # the inventory: DNS server
NTP, NTP_IP = "00:26:cb:4a:11:23", "10.20.0.123"          # the inventory: NTP server (a role)
ROGUE, ROGUE_IP = "00:26:cb:4a:66:66", "10.20.0.66"       # seen, but serves nothing
PEER, PEER_IP = "00:50:56:aa:00:02", "10.40.104.12"       # another Example Medical device
STRANGER, STRANGER_IP = "00:50:56:aa:00:99", "10.40.104.99"
CONTROLLER_IP = "10.20.0.16"
URL = "https://mud.pumpvendor.example/infusion/lvp-7.json"


def mud_files() -> list[Path]:
    """Every MUD file the tests hold, except the fuzzer's mutated regressions (broken on
    purpose, each kept for the crash it once caused)."""
    found = [p for p in sorted((ROOT / "tests").rglob("*.json"))
             if "ietf-mud:mud" in p.read_text(errors="replace")
             and not p.name.startswith("regression-")]
    assert len(found) >= 2, found
    return found


def config(tmp_path: Path, controllers: dict[str, list[str]]) -> Path:
    lines = ['[appliance]\nmode = "learn"\n[datapath]\ntype = "inline"\nbridge = "br0"\n',
             "[mud.controllers]"]
    lines += [f'"{url}" = {json.dumps(addrs)}' for url, addrs in controllers.items()]
    path = tmp_path / "wardtap.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def import_mud(tmp_path: Path, mud: Path, *extra: str) -> tuple[Path, str]:
    out = tmp_path / f"{mud.stem}.toml"
    url = json.loads(mud.read_text())["ietf-mud:mud"]["mud-url"]
    cfg = config(tmp_path, {url: [CONTROLLER_IP]})
    result = run_wardtap("policy", "import-mud", str(mud), "--oui", "00:12:21", "--config",
                         str(cfg), "-o", str(out), *extra)
    assert result.returncode == 0, result.stderr
    return out, result.stdout + result.stderr


@pytest.mark.parametrize("mud", mud_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_mud_file_in_the_tests_imports_with_no_placeholder_left(
        tmp_path: Path, mud: Path) -> None:
    out, said = import_mud(tmp_path, mud)
    text = out.read_text()
    commented = [line for line in text.splitlines()
                 if line.startswith("# [groups.") or line.startswith("# [[rules]]")]
    assert commented == [], commented
    assert "FILL IN" not in text and "placeholder" not in said
    # my-controller is read from the configuration at load, not written into the policy
    assert "mud_controller = [" in text and CONTROLLER_IP not in text.split(
        "[groups.my-controller]")[1].split("[")[0]
    policy = load_policy(str(out), classes=policy_members(None, str(tmp_path / "wardtap.toml")))
    assert len(policy.rules) == 8 and not policy.disabled
    assert policy.groups["my-controller"].nets[0].exploded == f"{CONTROLLER_IP}/32"
    assert run_wardtap("policy", "check", str(out)).returncode == 0


def test_my_controller_not_configured_is_one_line_naming_the_mud_url(tmp_path: Path) -> None:
    mud = ROOT / "tests" / "data" / "infusion-pump.mud.json"
    cfg = config(tmp_path, {"https://other.example/x.json": ["10.9.9.9"]})
    result = run_wardtap("policy", "import-mud", str(mud), "--oui", "00:12:21", "--config",
                         str(cfg), "-o", str(tmp_path / "p.toml"))
    assert result.returncode == 0, result.stderr
    lines = [w for w in result.stderr.splitlines() if "my-controller" in w]
    assert lines == [f"wardtap: warning: {mud}: my-controller: no controller configured for "
                     f"MUD URL {URL}; its rules stay commented out until it is (appliance "
                     "configuration [mud.controllers] with --config, or --fill "
                     "my-controller=ADDR)"]
    assert "(2 rules commented out until placeholders are filled in" not in result.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text('[appliance]\nmode = "learn"\n[datapath]\ntype = "inline"\nbridge = "br0"\n'
                   f'[mud.controllers]\n"{URL}" = ["not-an-address"]\n')
    result = run_wardtap("policy", "import-mud", str(mud), "--config", str(bad))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"wardtap: error: {bad}:7 [mud.controllers.{URL}]: 'not-an-address' is not an "
        "address or CIDR block"]


# --- the selectors through the real fast path -----------------------------------------------


def store_with_inventory(tmp_path: Path) -> str:
    """A real store, with the inventory rows the appliance would have written."""
    path = str(tmp_path / "wardtap.db")
    Store(path).close()
    rows = [(DNS, "Cisco", "DNS server", "[]", None),
            (NTP, "Cisco", "DHCP server", '["DHCP server", "NTP server"]', None),
            (ROGUE, "Cisco", "workstation", "[]", None),
            (PEER, "VMware", "infusion pump", "[]", "Example Medical"),
            (STRANGER, "VMware", "workstation", "[]", None)]
    with sqlite3.connect(path) as db:
        db.executemany("INSERT INTO inventory (mac, vendor, class, roles, make) "
                       "VALUES (?, ?, ?, ?, ?)", rows)
    return path


FLOWS = [  # (initiator mac, ip, responder mac, ip, proto, port, allowed)
    (PUMP, PUMP_IP, DNS, DNS_IP, 17, 53, True),            # role DNS server (its class)
    (PUMP, PUMP_IP, ROGUE, ROGUE_IP, 17, 53, False),       # answers nothing the inventory saw
    (PUMP, PUMP_IP, NTP, NTP_IP, 17, 123, True),           # role NTP server (among its roles)
    (PUMP, PUMP_IP, DNS, DNS_IP, 17, 123, False),          # a DNS server is no NTP server
    (PUMP, PUMP_IP, PEER, PEER_IP, 17, 47001, True),       # maker "Example Medical"
    (PUMP, PUMP_IP, "00:12:21:5e:a0:12", "10.40.104.13", 17, 47002, True),   # same OUI
    (PUMP, PUMP_IP, STRANGER, STRANGER_IP, 17, 47001, False),
    (DNS, CONTROLLER_IP, PUMP, PUMP_IP, 6, 8443, True),     # my-controller, configured
    (ROGUE, ROGUE_IP, PUMP, PUMP_IP, 6, 8443, False),
]


def frame(flow: tuple[str, str, str, str, int, int, bool]) -> bytes:
    smac, sip, dmac, dip, proto, port, _ = flow
    l4 = P.udp(50000, port, b"x" * 12) if proto == 17 else P.tcp(50000, port, "S")
    return P.ether(dmac, smac, 0x0800, P.ipv4(sip, dip, proto, l4))


def test_role_maker_and_controller_groups_decide_flows_in_the_fast_path(
        tmp_path: Path) -> None:
    out, _ = import_mud(tmp_path, ROOT / "tests" / "data" / "infusion-pump.mud.json")
    db = store_with_inventory(tmp_path)
    policy = load_policy(str(out), classes=policy_members(db, str(tmp_path / "wardtap.toml")))
    assert set(policy.groups["dns-servers"].macs) == {bytes.fromhex(DNS.replace(":", ""))}
    assert set(policy.groups["ntp-servers"].macs) == {bytes.fromhex(NTP.replace(":", ""))}
    assert bytes.fromhex(PEER.replace(":", "")) in policy.groups["same-manufacturer"].macs
    got = decide(policy, FLOWS)
    assert got == [f[6] for f in FLOWS]
    # the reference evaluator (diff, drift, test) agrees flow by flow
    ev = Evaluator(policy)
    assert [ev.decide(Endpoint(f[0], f[1]), Endpoint(f[2], f[3]), f[4], f[5]).allowed
            for f in FLOWS] == got
    # without a store, the role and maker groups hold no device: nothing through them
    bare = Evaluator(load_policy(str(out)))
    assert [bare.decide(Endpoint(f[0], f[1]), Endpoint(f[2], f[3]), f[4], f[5]).allowed
            for f in FLOWS] == [False, False, False, False, False, True, False, False, False]


def test_policy_test_check_and_diff_understand_roles(tmp_path: Path) -> None:
    out, _ = import_mud(tmp_path, ROOT / "tests" / "data" / "infusion-pump.mud.json")
    db = store_with_inventory(tmp_path)
    capture = tmp_path / "ward.pcap"
    with capture.open("wb") as fh:
        writer = PcapWriter(fh)
        for i, f in enumerate(FLOWS):
            writer.write(frame(f), (i + 1) * 1_000_000_000)
    result = run_wardtap("policy", "test", str(out), str(capture), "--db", db, "--config",
                         str(tmp_path / "wardtap.toml"), "--json")
    assert result.returncode == 0, result.stderr
    blocked = {(v["dst"], v["dport"]) for v in json.loads(result.stdout)["violations"]}
    assert blocked == {(f[3], f[5]) for f in FLOWS if not f[6]}
    # policy check: a group only the inventory fills is pointed out, with what it holds now
    check = run_wardtap("policy", "check", str(out), "--db", db)
    assert check.returncode == 0, check.stderr
    found = [w for w in check.stderr.splitlines() if "inventory-only" in w]
    assert any("[groups.dns-servers] inventory-only: selects only by role 'DNS server'" in w
               and "(1 now)" in w for w in found), found
    # policy diff: addresses swapped for a role is a group change and named conversations
    old = tmp_path / "old.toml"
    old.write_text(out.read_text().replace('role = ["DNS server"]', f'ip = ["{DNS_IP}"]'))
    d = json.loads(run_wardtap("policy", "diff", str(old), str(out), "--json").stdout)
    change = next(c for c in d["groups"]["changed"] if c["group"] == "dns-servers")
    assert change == {"group": "dns-servers", "added": {"role": ["DNS server"]},
                      "removed": {"ip": [f"{DNS_IP}/32"]}}
    assert [(c["from"], c["to"], c["proto"], c["ports"], c["to_members"])
            for c in d["newly_allowed"]] == [
        ("lvp-7+same-manufacturer", "dns-servers", "udp", "53", ["role DNS server"])]
    assert [(c["from"], c["to"], c["ports"], c["to_members"]) for c in d["newly_denied"]] == [
        ("lvp-7+same-manufacturer", "dns-servers+local-networks", "53", [DNS_IP])]
    assert parse_policy(out.read_text()).groups["dns-servers"].roles == ("DNS server",)


def test_an_unknown_role_or_an_empty_maker_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text('[groups.dns]\nrole = ["DNS sever"]\n[[rules]]\nfrom = "dns"\nto = "any"\n')
    line = run_wardtap("policy", "check", str(path)).stderr.strip()
    assert line.startswith(f"wardtap: error: {path}:2 [groups.dns.role]: 'DNS sever' is not a "
                           "server role (")
    assert "DNS server" in line and "NTP server" in line
    path.write_text('[groups.m]\nmaker = [""]\n[[rules]]\nfrom = "m"\nto = "any"\n')
    line = run_wardtap("policy", "check", str(path)).stderr.strip()
    assert line.startswith(f"wardtap: error: {path}:2 [groups.m.maker]: '' is not a maker's")


# --- real third-party MUD files (tests/data/mud/README.md says where each comes from) -------

REAL_MUD = Path(os.environ.get("WARDTAP_REAL_MUD") or ROOT.parent / "shared" / "mud")
WARD = ROOT / "tests" / "data" / "mud" / "ward.toml"
REAL = sorted(REAL_MUD.glob("*.json")) if REAL_MUD.is_dir() else []
needs_real = pytest.mark.skipif(not REAL, reason=f"no real MUD files in {REAL_MUD} "
                                "(tests/data/mud/README.md: where they come from)")


def import_real(tmp_path: Path, name: str) -> tuple[Path, str]:
    out = tmp_path / f"{name}.toml"
    result = run_wardtap("policy", "import-mud", str(REAL_MUD / name), "--oui", "00:12:21",
                         "--config", str(WARD), "-o", str(out))
    assert result.returncode == 0, result.stderr
    return out, result.stdout + result.stderr


@needs_real
@pytest.mark.parametrize("name", [p.name for p in REAL] or ["none"])
def test_every_real_mud_file_imports_with_no_placeholder_left(tmp_path: Path,
                                                              name: str) -> None:
    out, said = import_real(tmp_path, name)
    text = out.read_text()
    assert [line for line in text.splitlines()
            if line.startswith(("# [groups.", "# [[rules]]"))] == []
    assert "FILL IN" not in text and "placeholder" not in said and "fill in" not in said
    assert load_policy(str(out)).rules
    assert run_wardtap("policy", "check", str(out)).returncode == 0


GATEWAY, GATEWAY_IP = "00:26:cb:4a:00:01", "10.40.104.1"
REAL_FLOWS = {   # file: [(initiator mac, ip, responder mac, ip, proto, port, allowed)]
    # a blood-pressure meter (UNSW): DNS from the ward's DNS server, DHCP by broadcast,
    # the gateway (a controller class the configuration names); nothing else
    "unsw-blipcareBPmeterMud.json": [
        (PUMP, PUMP_IP, DNS, DNS_IP, 17, 53, True),
        (PUMP, PUMP_IP, ROGUE, ROGUE_IP, 17, 53, False),
        (PUMP, "0.0.0.0", "ff:ff:ff:ff:ff:ff", "255.255.255.255", 17, 67, True),
        (PUMP, PUMP_IP, STRANGER, STRANGER_IP, 17, 67, False),
        (PUMP, PUMP_IP, GATEWAY, GATEWAY_IP, 17, 67, True),      # DHCP with the router
        (PUMP, PUMP_IP, GATEWAY, GATEWAY_IP, 17, 53, False),
        (PUMP, PUMP_IP, STRANGER, STRANGER_IP, 6, 8777, False),   # not its cloud's address
    ],
    # NIST's TCP-direction test: the toaster opens tcp/800 on the local network and is
    # opened on tcp/8000; not the other way round
    "nist-mudfile-tcp-direction-test.json": [
        (PUMP, PUMP_IP, STRANGER, STRANGER_IP, 6, 800, True),
        (STRANGER, STRANGER_IP, PUMP, PUMP_IP, 6, 8000, True),
        (PUMP, PUMP_IP, STRANGER, STRANGER_IP, 6, 8000, False),
        (STRANGER, STRANGER_IP, PUMP, PUMP_IP, 6, 800, False),
    ],
    # NIST's sensor: a controller class by URL, another maker by OUI, my-controller, all
    # from the configuration
    "nist-mudfile-sensor.json": [
        (PUMP, PUMP_IP, ROGUE, "10.20.0.30", 6, 8080, True),
        (PUMP, PUMP_IP, ROGUE, ROGUE_IP, 6, 8080, False),
        (PUMP, PUMP_IP, PEER, PEER_IP, 6, 800, True),             # otherman: OUI 00:50:56
        (PUMP, PUMP_IP, DNS, DNS_IP, 6, 800, False),
        (PUMP, PUMP_IP, NTP, CONTROLLER_IP, 17, 4000, True),       # my-controller
        (PUMP, PUMP_IP, NTP, NTP_IP, 17, 4000, False),
    ],
}


def decide(policy: Any, flows: list[tuple[str, str, str, str, int, int, bool]]) -> list[bool]:
    clf = fastpath.Classifier(1024, 64, 1024, seed=3)
    clf.set_policy(compile_policy(policy))
    clf.set_mode("enforce")
    frames = [frame(f) for f in flows]
    n = len(frames)
    lengths = np.array([len(f) for f in frames], np.uint32)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    verdicts, reasons = np.zeros(n, np.uint8), np.zeros(n, np.uint8)
    clf.classify(b"".join(frames), offsets, lengths,
                 (np.arange(n, dtype=np.uint64) + 1) * 1_000_000_000, np.ones(n, np.uint16),
                 verdicts, reasons, np.zeros(n, np.uint16))
    return [fastpath.VERDICT_NAMES[int(v)] == "allow" for v in verdicts]


@needs_real
@pytest.mark.parametrize("name", sorted(REAL_FLOWS))
def test_real_mud_policies_decide_flows_in_the_fast_path(tmp_path: Path, name: str) -> None:
    if not (REAL_MUD / name).exists():
        pytest.skip(f"{name} is not in {REAL_MUD}")
    out, _ = import_real(tmp_path, name)
    policy = load_policy(str(out), classes=policy_members(store_with_inventory(tmp_path),
                                                          str(WARD)))
    flows = REAL_FLOWS[name]
    assert decide(policy, flows) == [f[6] for f in flows]


def test_class_and_maker_groups_hold_the_addresses_the_inventory_saw(tmp_path: Path) -> None:
    """Like `role`: inline, a client's first packet carries only its own MAC, so a server
    selected by class or maker is reached through the addresses the inventory saw it use."""
    db = store_with_inventory(tmp_path)
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO inventory_ips (mac, ip, source) VALUES (?, ?, 'arp')",
                     (PEER, PEER_IP))
    members = class_members(db)
    assert members("maker", "Example Medical") == [PEER, PEER_IP]
    assert members("class", "infusion pump") == [PEER, PEER_IP]
    assert members("class", "workstation") == [ROGUE, STRANGER]   # no address seen: MACs
    out, _ = import_mud(tmp_path, ROOT / "tests" / "data" / "infusion-pump.mud.json")
    policy = load_policy(str(out), classes=members)
    assert f"{PEER_IP}/32" in [str(n) for n in policy.groups["same-manufacturer"].nets]
    # the first packet to the maker's device, as the client sends it: the server's MAC is
    # the destination, but the rule matches on the address as well; another address is not
    flows = [(PUMP, PUMP_IP, "00:00:5e:00:01:01", PEER_IP, 17, 47001, True),
             (PUMP, PUMP_IP, "00:00:5e:00:01:01", STRANGER_IP, 17, 47001, False)]
    assert decide(policy, flows) == [True, False]
