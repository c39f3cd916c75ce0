"""Allow-list policies: validation (every error names line and field), compile limits, and
the verdicts the real classifier gives on generated captures (docs/policy.md semantics).

Behaviour tests write a policy file and a pcap into tmp_path, replay the capture through
appliance.replay.runner.Replayer (the real fast path) and read the per-packet lines that
`--packets-out` writes: verdict, reason and the name of the rule that allowed the flow.
"""

from __future__ import annotations

import io
import json
import re
import textwrap
from itertools import count
from pathlib import Path
from typing import Any

import pytest
from policies import pumps_to_server

from appliance.common.capwriter import PcapWriter
from appliance.errors import PolicyError, WardtapError
from appliance.policy.conditions import Hl7Condition
from appliance.policy.model import compile_policy, load_policy, parse_policy
from appliance.replay.runner import Replayer
from demoward.frames import (
    ARP_REQUEST,
    BROADCAST_MAC,
    ETH_ARP,
    ETH_IPV4,
    ETH_IPV6,
    ETH_LLDP,
    IPPROTO_GRE,
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    IPPROTO_TCP,
    IPPROTO_UDP,
    arp,
    ether,
    gre,
    icmp,
    icmpv6,
    ipv4,
    ipv6,
    tcp,
    udp,
)

ROOT = Path(__file__).resolve().parents[2]

PUMP_MAC, PUMP_IP = "00:1a:2b:00:00:05", "10.4.1.5"
SERVER_MAC, SERVER_IP = "02:00:00:00:20:15", "10.20.0.15"
OTHER_MAC, OTHER_IP = "02:00:00:00:99:99", "10.9.9.9"
SERVER6 = "fd00:20::15"

_names = count()


# --- helpers -------------------------------------------------------------------------------


def write_policy(tmp_path: Path, text: str) -> Path:
    path = tmp_path / f"policy{next(_names)}.toml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def tcp4(smac: str, src: str, sport: int, dmac: str, dst: str, dport: int, flags: str = "S",
         vlans: tuple[int, ...] = (), qinq: bool = False) -> bytes:
    return ether(dmac, smac, ETH_IPV4,
                 ipv4(src, dst, IPPROTO_TCP, tcp(sport, dport, flags, src=src, dst=dst)),
                 vlans=vlans, qinq=qinq)


def udp4(smac: str, src: str, sport: int, dmac: str, dst: str, dport: int) -> bytes:
    return ether(dmac, smac, ETH_IPV4,
                 ipv4(src, dst, IPPROTO_UDP, udp(sport, dport, b"x", src=src, dst=dst)))


def tcp6(smac: str, src: str, sport: int, dmac: str, dst: str, dport: int) -> bytes:
    return ether(dmac, smac, ETH_IPV6,
                 ipv6(src, dst, IPPROTO_TCP, tcp(sport, dport, "S", src=src, dst=dst)))


def icmp4(smac: str, src: str, dmac: str, dst: str, icmp_type: int, ident: int) -> bytes:
    return ether(dmac, smac, ETH_IPV4,
                 ipv4(src, dst, IPPROTO_ICMP, icmp(icmp_type, 0, ident, 1, b"ping")))


def echo6(smac: str, src: str, dmac: str, dst: str, icmp_type: int, ident: int) -> bytes:
    body = ident.to_bytes(2, "big") + b"\x00\x01" + b"ping"
    return ether(dmac, smac, ETH_IPV6,
                 ipv6(src, dst, IPPROTO_ICMPV6, icmpv6(icmp_type, 0, body, src=src, dst=dst)))


def replay(tmp_path: Path, policy_text: str | None, frames: list[bytes],
           mode: str = "monitor") -> tuple[list[tuple[str, str, str | None]], Replayer]:
    """(verdict, reason, rule) of every frame, classified in capture order."""
    capture = tmp_path / f"capture{next(_names)}.pcap"
    with open(capture, "wb") as fh:
        writer = PcapWriter(fh)
        for i, frame in enumerate(frames):
            writer.write(frame, 1_700_000_000_000_000_000 + i * 1_000_000)
    policy = load_policy(str(write_policy(tmp_path, policy_text))) if policy_text else None
    replayer = Replayer(policy, mode, flow_capacity=1024, device_capacity=64, seed=7)
    out = io.StringIO()
    summary = replayer.run([str(capture)], packets_out=out)
    assert summary.errors == []
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["i"] for line in lines] == list(range(len(frames)))
    return [(line["verdict"], line["reason"], line["rule"]) for line in lines], replayer


def allow(rule: str) -> tuple[str, str, str]:
    return ("allow", "rule", rule)


def deny(reason: str) -> tuple[str, str, None]:
    return ("deny", reason, None)


BASE = pumps_to_server()


# --- the documented example ----------------------------------------------------------------


def test_docs_example_parses_and_compiles(tmp_path: Path) -> None:
    doc = (ROOT / "docs" / "policy.md").read_text(encoding="utf-8")
    match = re.search(r"```toml\n(.*?)```", doc, re.S)
    assert match, "docs/policy.md has no toml example"
    path = tmp_path / "example.toml"
    path.write_text(match.group(1), encoding="utf-8")
    policy = load_policy(str(path))
    assert (policy.name, policy.version, policy.arp, policy.non_ip) == ("ward-4b", 3, True, True)
    assert set(policy.groups) == {"pumps", "pump-server", "drug-library", "monitors",
                                  "central-station"}
    assert policy.groups["drug-library"].names == ("druglib.pumpvendor.example",
                                                   "*.cdn.pumpvendor.example")
    assert (policy.name_ttl, policy.rules[1].hl7) == ((30, 86400), Hl7Condition(
        ("ORU^R01",), ("MX800",), ("CENTRAL",)))
    pumps = policy.groups["pumps"]
    assert pumps.ouis == (bytes.fromhex("001a2b"),)
    assert pumps.macs == (bytes.fromhex("001a2b000001"),)
    assert [str(n) for n in pumps.nets] == ["10.4.1.0/24", "fd00:4::/64"]
    assert pumps.vlans == (104,)
    rule, _ = policy.rules
    assert (rule.name, rule.sources, rule.destinations, rule.proto, rule.ports, rule.either) == (
        "pumps-to-server", ("pumps",), ("pump-server",), 6, ((443, 443), (8000, 8080)), False)
    assert policy.rule_name(0) == "pumps-to-server" and policy.rule_name(2) is None
    assert len(policy.digest) == 64
    compiled = compile_policy(policy)
    assert compiled.source is policy


# --- validation: every error names the line and the field ----------------------------------

# Each case: the policy text with the offending line marked "# <--", the field, and a word of
# the message. The line is found from the marker, so the cases stay readable.
INVALID = [
    ("""
     [groups.cloud]
     names = ["pumps..vendor.example"]  # <--
     """, "groups.cloud.names", "not a DNS name"),
    ("""
     [groups.cloud]
     names = ["*.example", "a b.example"]  # <--
     """, "groups.cloud.names", "not a DNS name"),
    ("""
     [policy]
     name = "x"
     name_ttl_min = 0  # <--
     """, "policy.name_ttl_min", "whole seconds"),
    ("""
     [policy]
     name = "x"
     name_ttl_min = 600  # <--
     name_ttl_max = 60
     """, "policy.name_ttl_min", "not be above"),
    ("""
     [[rules]]
     name = "r"
     from = "any"
     to = "any"
     proto = "udp"
     hl7 = { message_types = ["ORU^R01"] }  # <--
     """, "rules.r.hl7", "needs proto tcp"),
    ("""
     [[rules]]
     name = "r"
     from = "any"
     to = "any"
     proto = "tcp"
     hl7 = { message_types = ["ORU-R01"] }  # <--
     """, "rules.r.hl7.message_types", "not an HL7 message type"),
    ("""
     [[rules]]
     name = "r"
     from = "any"
     to = "any"
     proto = "tcp"
     hl7 = { types = ["ORU^R01"] }  # <--
     """, "rules.r.hl7.types", "unknown field"),
    ("""
     [[rules]]
     name = "r"
     from = "any"
     to = "any"
     proto = "tcp"
     dicom = { calling = ["A_TITLE_LONGER_THAN_16"] }  # <--
     """, "rules.r.dicom.calling", "not an AE title"),
    ("""
     [[rules]]
     name = "r"
     from = "any"
     to = "any"
     proto = "tcp"
     dicom = { services = ["C-SHOP"] }  # <--
     """, "rules.r.dicom.services", "not a DICOM service"),
    ("""
     [[rules]]
     name = "r"
     from = "any"
     to = "any"
     proto = "tcp"
     dicom = {}  # <--
     """, "rules.r.dicom", "names nothing to check"),
    ("""
     [groups.pumps]
     oui = ["00:1a:2b"]
     colour = "blue"  # <--
     """, "groups.pumps.colour", "unknown field"),
    ("""
     [groups.pumps]
     oui = ["00:1a:2b"]
     [[rules]]
     name = "r"
     from = "pumps"
     to = "any"
     port = 443  # <--
     """, "rules[0].port", "unknown field"),
    ("""
     [policy]
     name = "x"
     mode = "enforce"  # <--
     """, "policy.mode", "unknown field"),
    ("""
     colour = "blue"  # <--
     [policy]
     name = "x"
     """, "colour", "unknown field"),
    ("""
     [policy]
     name = "x"
     [extras]  # <--
     a = 1
     """, "extras", "unknown field"),
    ("""
     policy = "ward-4b"  # <--
     """, "policy", "must be a table"),
    ("""
     [policy]
     name = "x"
     [[rules.extra]]  # <--
     a = 1
     """, "rules", "array of tables"),
    ("""
     [groups.pumps]
     mac = ["00:1a:2b:00:00"]  # <--
     """, "groups.pumps.mac", "not a MAC address"),
    ("""
     [groups.pumps]
     mac = ["00:1a:2b:00:00:0g"]  # <--
     """, "groups.pumps.mac", "not a MAC address"),
    ("""
     [groups.pumps]
     oui = ["00:1a"]  # <--
     """, "groups.pumps.oui", "not a OUI"),
    ("""
     [groups.pumps]
     ip = ["10.0.0.0/33"]  # <--
     """, "groups.pumps.ip", "not an IP address or CIDR"),
    ("""
     [groups.pumps]
     oui = ["00:1a:2b"]
     ip = [  # <--
       "10.4.1.0/24",
       "pump.example",
     ]
     """, "groups.pumps.ip", "not an IP address or CIDR"),
    ("""
     [groups.pumps]
     ip = [5]  # <--
     """, "groups.pumps.ip", "not an IP address or CIDR"),
    ("""
     [groups.pumps]
     vlan = [4096]  # <--
     """, "groups.pumps.vlan", "not a VLAN id"),
    ("""
     [groups.pumps]
     vlan = ["104"]  # <--
     """, "groups.pumps.vlan", "not a VLAN id"),
    ("""
     [groups.pumps]
     oui = ["00:1a:2b"]
     [[rules]]
     name = "r"
     from = "pump"  # <--
     to = "any"
     """, "rules.r.from", "unknown group 'pump'"),
    ("""
     [groups.pumps]
     oui = ["00:1a:2b"]
     [[rules]]
     name = "r"
     from = "pumps"
     to = ["10.0.0.1", "servers"]  # <--
     """, "rules.r.to", "unknown group 'servers'"),
    ("""
     [[rules]]
     name = "r"
     from = []  # <--
     to = "any"
     """, "rules.r.from", "at least one"),
    ("""
     [[rules]]
     name = "r"
     from = "any"
     to = "any"
     proto = "icmp"
     ports = [443]  # <--
     """, "rules.r.ports", "ports need proto tcp, udp or sctp"),
    ("""
     [[rules]]
     name = "r"
     from = "any"
     to = "any"
     ports = [443]  # <--
     """, "rules.r.ports", "ports need proto tcp, udp or sctp"),
    ("""
     [[rules]]
     name = "r"
     from = "any"
     to = "any"
     proto = "tcp"
     icmp_types = [8]  # <--
     """, "rules.r.icmp_types", "icmp_types need proto icmp"),
    ("""
     [[rules]]
     name = "r"
     from = "any"
     to = "any"
     proto = "tcp"
     ports = ["8080-8000"]  # <--
     """, "rules.r.ports", "not a number or range"),
    ("""
     [[rules]]
     name = "r"
     from = "any"
     to = "any"
     proto = "udp"
     ports = [53, 70000]  # <--
     """, "rules.r.ports", "within 0-65535"),
    ("""
     [[rules]]
     name = "r"
     from = "any"
     to = "any"
     proto = "udp"
     ports = ["53-"]  # <--
     """, "rules.r.ports", "not a number or range"),
    ("""
     [[rules]]
     name = "r"
     from = "any"
     to = "any"
     proto = "udp"
     ports = []  # <--
     """, "rules.r.ports", "must not be empty"),
    ("""
     [[rules]]
     name = "r"
     from = "any"
     to = "any"
     proto = "icmp"
     icmp_types = [256]  # <--
     """, "rules.r.icmp_types", "within 0-255"),
    ("""
     [[rules]]
     name = "a"
     from = "any"
     to = "any"

     [[rules]]
     name = "a"  # <--
     from = "any"
     to = "any"
     """, "rules[1].name", "used twice"),
    ("""
     [[rules]]
     name = "has space"  # <--
     from = "any"
     to = "any"
     """, "rules[0].name", "letters, digits"),
    ("""
     [[rules]]  # <--
     name = "r"
     to = "any"
     """, "rules.r.from", "missing"),
    ("""
     [groups.empty]  # <--
     description = "nothing in it"
     """, "groups.empty", "no members"),
    ("""
     [groups.any]  # <--
     ip = ["10.0.0.1"]
     """, "groups.any", "not 'any'"),
    ("""
     [[rules]]
     name = "r"
     from = "any"
     to = "any"
     initiate = "to"  # <--
     """, "rules.r.initiate", '"from" or "either"'),
    ("""
     [[rules]]
     name = "r"
     from = "any"
     to = "any"
     proto = "tcpp"  # <--
     """, "rules.r.proto", "not a protocol"),
    ("""
     [[rules]]
     name = "r"
     from = "any"
     to = "any"
     proto = 256  # <--
     """, "rules.r.proto", "not a protocol"),
    ("""
     [[rules]]
     name = "r"
     from = "any"
     to = "any"
     proto = true  # <--
     """, "rules.r.proto", "not a protocol"),
    ("""
     [policy]
     name = "x"
     arp = "block"  # <--
     """, "policy.arp", '"allow" or "deny"'),
    ("""
     [policy]
     non_ip = true  # <--
     """, "policy.non_ip", '"allow" or "deny"'),
    ("""
     [policy]
     fragment_unmatched = "maybe"  # <--
     """, "policy.fragment_unmatched", '"allow" or "deny"'),
    ("""
     [policy]
     name = "x"
     version = -1  # <--
     """, "policy.version", "whole number"),
    ("""
     [policy]
     name = ""  # <--
     """, "policy.name", "non-empty"),
]


def _marked_line(text: str) -> int:
    lines = textwrap.dedent(text).splitlines()
    (line,) = [n for n, t in enumerate(lines, 1) if t.rstrip().endswith("# <--")]
    return line


@pytest.mark.parametrize("text, field, words", INVALID,
                         ids=[f"{i}-{c[1]}" for i, c in enumerate(INVALID)])
def test_validation_error_names_line_and_field(tmp_path: Path, text: str, field: str,
                                               words: str) -> None:
    path = write_policy(tmp_path, text)
    line = _marked_line(text)
    with pytest.raises(PolicyError) as info:
        load_policy(str(path))
    err = info.value
    assert isinstance(err, WardtapError)
    assert (err.path, err.line, err.field) == (str(path), line, field), str(err)
    assert str(err).startswith(f"{path}:{line} [{field}]: "), str(err)
    assert words in str(err)
    assert "\n" not in str(err)


@pytest.mark.parametrize("text, expected", [
    ('name = "unterminated\n', 1),
    ('[policy]\nname = "x"\n\n[groups.a]\nip = ["10.0.0.1",, "10.0.0.2"]\n', 5),
    ('[policy]\nname = "x"\n[policy]\nname = "y"\n', 3),
    ('[policy]\nname = "x"\nname = "y"\n', 3),
])
def test_toml_syntax_error_names_its_line(tmp_path: Path, text: str, expected: int) -> None:
    path = tmp_path / "syntax.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(PolicyError) as info:
        load_policy(str(path))
    assert info.value.line == expected, str(info.value)
    assert str(info.value).startswith(f"{path}:{expected}: TOML syntax: ")
    assert "(at line" not in str(info.value)


def test_non_utf8_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[policy]\nname = "ward"\ndescription = "Station f\xfcr Kinder"\n')
    with pytest.raises(PolicyError) as info:
        load_policy(str(path))
    assert info.value.line == 3
    assert str(info.value) == f"{path}:3: not UTF-8 text"


def test_missing_and_directory_policy_files(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="no such file"):
        load_policy(str(tmp_path / "nope.toml"))
    with pytest.raises(PolicyError, match="is a directory"):
        load_policy(str(tmp_path))


def test_defaults() -> None:
    policy = parse_policy("[policy]\n")
    assert (policy.name, policy.version, policy.arp, policy.non_ip) == ("unnamed", 1, True, True)
    assert policy.fragment_unmatched is False          # deny by default (docs/policy.md)
    assert policy.groups == {} and policy.rules == ()
    rule = parse_policy('[[rules]]\nfrom = "any"\nto = "10.0.0.0/8"\n').rules[0]
    assert (rule.name, rule.proto, rule.ports, rule.either) == ("rule-1", 0, (), False)


# --- compile limits ------------------------------------------------------------------------


def _many_groups(n: int, literals: int = 0) -> str:
    parts = [f'[groups.g{i}]\nip = ["10.{i // 250}.{i % 250}.1"]\n' for i in range(n)]
    ends = [f'"172.16.0.{i + 1}"' for i in range(literals)] or ['"g0"']
    parts.append(f'[[rules]]\nname = "r"\nfrom = "g0"\nto = [{", ".join(ends)}]\n')
    return "\n".join(parts)


def test_255_groups_compile() -> None:
    compile_policy(parse_policy(_many_groups(255)))
    compile_policy(parse_policy(_many_groups(253, literals=2)))


@pytest.mark.parametrize("named, literals", [(256, 0), (254, 2)])
def test_more_than_255_groups_is_an_error(named: int, literals: int) -> None:
    policy = parse_policy(_many_groups(named, literals), "big.toml")
    with pytest.raises(PolicyError) as info:
        compile_policy(policy)
    assert info.value.field == "groups"
    assert "more than 255 groups" in str(info.value)
    assert str(info.value).startswith("big.toml:")


def test_selector_and_rule_entry_limits() -> None:
    members = ", ".join(f'"10.{i // 250}.{i % 250}.9"' for i in range(4097))
    policy = parse_policy(f'[groups.g]\nip = [{members}]\n[[rules]]\nfrom = "g"\nto = "any"\n')
    with pytest.raises(PolicyError, match="more than 4096 group members"):
        compile_policy(policy)
    for n, ok in ((4096, True), (4097, False)):
        ports = ", ".join(str(p) for p in range(1, n + 1))
        policy = parse_policy(f'[[rules]]\nfrom = "any"\nto = "any"\nproto = "tcp"\n'
                              f'ports = [{ports}]\n')
        if ok:
            compile_policy(policy)
        else:
            with pytest.raises(PolicyError, match="more than 4096 rule port ranges"):
                compile_policy(policy)


# --- verdicts through the classifier -------------------------------------------------------


def test_allowed_by_rule_replies_allowed_and_no_rule(tmp_path: Path) -> None:
    frames = [
        tcp4(PUMP_MAC, PUMP_IP, 51000, SERVER_MAC, SERVER_IP, 443, "S"),
        tcp4(SERVER_MAC, SERVER_IP, 443, PUMP_MAC, PUMP_IP, 51000, "SA"),   # reply
        tcp4(PUMP_MAC, PUMP_IP, 51000, SERVER_MAC, SERVER_IP, 443, "A"),
        tcp4(PUMP_MAC, PUMP_IP, 51001, SERVER_MAC, SERVER_IP, 8080, "S"),   # in the range
        tcp4(OTHER_MAC, OTHER_IP, 40000, SERVER_MAC, SERVER_IP, 443, "S"),  # not a pump
    ]
    verdicts, replayer = replay(tmp_path, BASE, frames)
    assert verdicts == [allow("pumps-to-server")] * 4 + [deny("no_rule")]
    (violation,) = replayer.violations
    assert (violation["reason"], violation["src"], violation["dst"], violation["dport"],
            violation["smac"]) == ("no_rule", OTHER_IP, SERVER_IP, 443, OTHER_MAC)


def test_denial_reasons(tmp_path: Path) -> None:
    frames = [
        tcp4(PUMP_MAC, PUMP_IP, 51000, SERVER_MAC, SERVER_IP, 22),          # port
        tcp4(PUMP_MAC, PUMP_IP, 51001, SERVER_MAC, SERVER_IP, 8081),        # just past the range
        udp4(PUMP_MAC, PUMP_IP, 51002, SERVER_MAC, SERVER_IP, 443),         # protocol
        tcp4(SERVER_MAC, SERVER_IP, 51003, PUMP_MAC, PUMP_IP, 443),         # server starts it
        tcp4(PUMP_MAC, PUMP_IP, 51004, OTHER_MAC, OTHER_IP, 443),           # not the server
        tcp4(PUMP_MAC, PUMP_IP, 51000, SERVER_MAC, SERVER_IP, 22, "A"),     # same flow as #0
    ]
    verdicts, replayer = replay(tmp_path, BASE, frames)
    assert verdicts == [deny("port_not_allowed"), deny("port_not_allowed"),
                        deny("proto_not_allowed"), deny("wrong_initiator"), deny("no_rule"),
                        deny("port_not_allowed")]
    assert [v["reason"] for v in replayer.violations] == [
        "port_not_allowed", "port_not_allowed", "proto_not_allowed", "wrong_initiator",
        "no_rule"]


def test_learn_mode_enforces_nothing(tmp_path: Path) -> None:
    frames = [tcp4(OTHER_MAC, OTHER_IP, 40000, SERVER_MAC, SERVER_IP, 22),
              ether(BROADCAST_MAC, OTHER_MAC, ETH_ARP,
                    arp(ARP_REQUEST, OTHER_MAC, OTHER_IP, "00:00:00:00:00:00", SERVER_IP))]
    verdicts, replayer = replay(tmp_path, BASE, frames, mode="learn")
    assert verdicts == [("allow", "no_policy", None)] * 2
    assert replayer.violations == []


def test_initiate_either(tmp_path: Path) -> None:
    text = BASE.replace('ports = [443, "8000-8080"]', 'ports = [443]\ninitiate = "either"')
    frames = [
        tcp4(SERVER_MAC, SERVER_IP, 51000, PUMP_MAC, PUMP_IP, 443),   # server starts: allowed
        tcp4(PUMP_MAC, PUMP_IP, 443, SERVER_MAC, SERVER_IP, 51000, "SA"),
        tcp4(PUMP_MAC, PUMP_IP, 51001, SERVER_MAC, SERVER_IP, 443),   # the usual direction
        tcp4(SERVER_MAC, SERVER_IP, 51002, PUMP_MAC, PUMP_IP, 22),    # responder port counts
    ]
    verdicts, _ = replay(tmp_path, text, frames)
    assert verdicts == [allow("pumps-to-server")] * 3 + [deny("port_not_allowed")]


GROUPS = """
[groups.server]
ip = ["10.20.0.15", "fd00:20::15"]
[groups.by-mac]
mac = ["00:1a:2b:00:00:01"]
[groups.by-oui]
oui = ["00-1C-00"]
[groups.net4]
ip = ["10.4.1.0/24"]
[groups.net6]
ip = ["fd00:4::/64"]
[groups.mac-on-104]
mac = ["02:00:00:00:01:04"]
vlan = [104]
[groups.net-on-144]
ip = ["10.44.0.0/16"]
vlan = [144, 145]
[groups.voice]
vlan = [200]
""" + "".join(f"""
[[rules]]
name = "{name}"
from = "{name}"
to = "server"
proto = "tcp"
ports = [{port}]
""" for name, port in (("by-mac", 1001), ("by-oui", 1002), ("net4", 1003), ("net6", 1004),
                       ("mac-on-104", 1005), ("net-on-144", 1006), ("voice", 1007)))


def _to_server(mac: str, ip: str, port: int, vlans: tuple[int, ...] = (),
               qinq: bool = False) -> bytes:
    return tcp4(mac, ip, 40000 + port, SERVER_MAC, SERVER_IP, port, vlans=vlans, qinq=qinq)


@pytest.mark.parametrize("frame, expected", [
    (_to_server("00:1a:2b:00:00:01", "10.7.0.1", 1001), allow("by-mac")),
    (_to_server("00:1a:2b:00:00:02", "10.7.0.1", 1001), deny("no_rule")),
    (_to_server("00:1c:00:aa:bb:cc", "10.7.0.2", 1002), allow("by-oui")),
    (_to_server("00:1c:01:aa:bb:cc", "10.7.0.2", 1002), deny("no_rule")),
    (_to_server(OTHER_MAC, "10.4.1.200", 1003), allow("net4")),
    (_to_server(OTHER_MAC, "10.4.2.1", 1003), deny("no_rule")),
    (tcp6(OTHER_MAC, "fd00:4::99", 41004, SERVER_MAC, SERVER6, 1004), allow("net6")),
    (tcp6(OTHER_MAC, "fd00:5::99", 41004, SERVER_MAC, SERVER6, 1004), deny("no_rule")),
    # A group with an identity and a VLAN: both must match (AND).
    (_to_server("02:00:00:00:01:04", "10.7.0.3", 1005, vlans=(104,)), allow("mac-on-104")),
    (_to_server("02:00:00:00:01:04", "10.7.0.3", 1005, vlans=(0xA000 | 104,)),  # priority 5
     allow("mac-on-104")),
    (_to_server("02:00:00:00:01:04", "10.7.0.3", 1005), deny("no_rule")),
    (_to_server("02:00:00:00:01:04", "10.7.0.3", 1005, vlans=(105,)), deny("no_rule")),
    (_to_server("02:00:00:00:01:05", "10.7.0.3", 1005, vlans=(104,)), deny("no_rule")),
    (_to_server(OTHER_MAC, "10.44.3.3", 1006, vlans=(145,)), allow("net-on-144")),
    (_to_server(OTHER_MAC, "10.44.3.3", 1006, vlans=(146,)), deny("no_rule")),
    (_to_server(OTHER_MAC, "10.45.3.3", 1006, vlans=(144,)), deny("no_rule")),
    # A group with only a VLAN holds every endpoint on it.
    (_to_server(OTHER_MAC, "192.168.9.9", 1007, vlans=(200,)), allow("voice")),
    (_to_server(OTHER_MAC, "192.168.9.9", 1007), deny("no_rule")),
    # QinQ: the inner tag is the one policies match.
    (_to_server(OTHER_MAC, "192.168.9.9", 1007, vlans=(104, 200), qinq=True), allow("voice")),
    (_to_server(OTHER_MAC, "192.168.9.9", 1007, vlans=(200, 104), qinq=True), deny("no_rule")),
    (_to_server("02:00:00:00:01:04", "10.7.0.3", 1005, vlans=(300, 104), qinq=True),
     allow("mac-on-104")),
])
def test_group_membership(tmp_path: Path, frame: bytes, expected: tuple[Any, ...]) -> None:
    verdicts, _ = replay(tmp_path, GROUPS, [frame])
    assert verdicts == [expected]


def test_any_and_address_literals(tmp_path: Path) -> None:
    text = """
    [[rules]]
    name = "ntp"
    from = "any"
    to = "10.20.0.15"
    proto = "udp"
    ports = [123]

    [[rules]]
    name = "v6-literal"
    from = ["fd00:4::/64", "10.4.1.0/24"]
    to = "fd00:20::15"
    proto = "tcp"

    [[rules]]
    name = "to-anyone"
    from = "10.4.1.7"
    to = "any"
    """
    frames = [
        udp4(OTHER_MAC, OTHER_IP, 40000, SERVER_MAC, SERVER_IP, 123),
        udp4(OTHER_MAC, OTHER_IP, 40001, SERVER_MAC, "10.20.0.16", 123),
        tcp6(OTHER_MAC, "fd00:4::7", 40002, SERVER_MAC, SERVER6, 9999),
        tcp6(OTHER_MAC, "fd00:5::7", 40003, SERVER_MAC, SERVER6, 9999),
        udp4(PUMP_MAC, "10.4.1.7", 40004, OTHER_MAC, "8.8.8.8", 53),
        tcp4(PUMP_MAC, "10.4.1.8", 40005, OTHER_MAC, "8.8.8.8", 53),
    ]
    verdicts, _ = replay(tmp_path, text, frames)
    assert verdicts == [allow("ntp"), deny("no_rule"), allow("v6-literal"), deny("no_rule"),
                        allow("to-anyone"), deny("no_rule")]


def _arp_frame() -> bytes:
    return ether(BROADCAST_MAC, PUMP_MAC, ETH_ARP,
                 arp(ARP_REQUEST, PUMP_MAC, PUMP_IP, "00:00:00:00:00:00", SERVER_IP))


def _lldp_frame() -> bytes:
    return ether("01:80:c2:00:00:0e", PUMP_MAC, ETH_LLDP, bytes(20))


@pytest.mark.parametrize("head, arp_verdict, lldp_verdict", [
    ("", "allow", "allow"),                                      # defaults: allow
    ('arp = "deny"\nnon_ip = "deny"', "deny", "deny"),
    ('arp = "allow"\nnon_ip = "deny"', "allow", "deny"),
    ('arp = "deny"\nnon_ip = "allow"', "deny", "allow"),
])
def test_arp_and_non_ip(tmp_path: Path, head: str, arp_verdict: str,
                        lldp_verdict: str) -> None:
    text = f'[policy]\nname = "l2"\n{head}\n'
    verdicts, replayer = replay(tmp_path, text, [_arp_frame(), _lldp_frame(), _arp_frame()])
    assert verdicts == [(arp_verdict, "arp", None), (lldp_verdict, "non_ip", None),
                        (arp_verdict, "arp", None)]
    assert replayer.violations == []             # L2 frames are not flows


ICMP_POLICY = BASE + """
[groups.pumps6]
ip = ["fd00:4::/64"]

[[rules]]
name = "ping"
from = "pumps"
to = "server"
proto = "icmp"
icmp_types = [8]

[[rules]]
name = "ping6"
from = "pumps6"
to = "server"
proto = "icmpv6"
icmp_types = [128]
"""


def test_icmp_types(tmp_path: Path) -> None:
    frames = [
        icmp4(PUMP_MAC, PUMP_IP, SERVER_MAC, SERVER_IP, 8, 1),      # echo request
        icmp4(SERVER_MAC, SERVER_IP, PUMP_MAC, PUMP_IP, 0, 1),      # its reply
        icmp4(PUMP_MAC, PUMP_IP, SERVER_MAC, SERVER_IP, 13, 2),     # timestamp: not allowed
        icmp4(SERVER_MAC, SERVER_IP, PUMP_MAC, PUMP_IP, 8, 3),      # server pings the pump
        icmp4(SERVER_MAC, SERVER_IP, PUMP_MAC, PUMP_IP, 0, 4),      # a reply seen first
        echo6(PUMP_MAC, "fd00:4::5", SERVER_MAC, SERVER6, 128, 5),
        echo6(SERVER_MAC, SERVER6, PUMP_MAC, "fd00:4::5", 129, 5),
        echo6(PUMP_MAC, "fd00:4::5", SERVER_MAC, SERVER6, 1, 0),    # unreachable: type 1
        ether(SERVER_MAC, PUMP_MAC, ETH_IPV4,                       # proto 1 rule, tcp packet
              ipv4(PUMP_IP, SERVER_IP, IPPROTO_TCP, tcp(5000, 7, "S"))),
    ]
    verdicts, _ = replay(tmp_path, ICMP_POLICY, frames)
    assert verdicts == [allow("ping"), allow("ping"), deny("port_not_allowed"),
                        deny("wrong_initiator"), allow("ping"), allow("ping6"), allow("ping6"),
                        deny("port_not_allowed"), deny("port_not_allowed")]


def test_tcp_initiator_from_syn_ack_and_mid_stream(tmp_path: Path) -> None:
    frames = [
        # The capture starts at the SYN-ACK: the initiator is the side that sent the SYN.
        tcp4(SERVER_MAC, SERVER_IP, 443, PUMP_MAC, PUMP_IP, 51000, "SA"),
        tcp4(PUMP_MAC, PUMP_IP, 51000, SERVER_MAC, SERVER_IP, 443, "A"),
        # A SYN-ACK from the pump's port 443: the server sent the SYN, to the pump.
        tcp4(PUMP_MAC, PUMP_IP, 443, SERVER_MAC, SERVER_IP, 51001, "SA"),
        # Mid-stream (no SYN seen): the side with the higher port is the initiator.
        tcp4(SERVER_MAC, SERVER_IP, 443, PUMP_MAC, PUMP_IP, 51002, "A"),
        tcp4(PUMP_MAC, PUMP_IP, 51003, SERVER_MAC, SERVER_IP, 8000, "PA"),
        tcp4(PUMP_MAC, PUMP_IP, 443, SERVER_MAC, SERVER_IP, 51004, "A"),
    ]
    verdicts, replayer = replay(tmp_path, BASE, frames)
    assert verdicts == [allow("pumps-to-server"), allow("pumps-to-server"),
                        deny("wrong_initiator"), allow("pumps-to-server"),
                        allow("pumps-to-server"), deny("wrong_initiator")]
    # The violations name the initiator (the server) as the source.
    assert [(v["src"], v["sport"], v["dst"], v["dport"]) for v in replayer.violations] == [
        (SERVER_IP, 51001, PUMP_IP, 443), (SERVER_IP, 51004, PUMP_IP, 443)]


def test_protocol_by_number(tmp_path: Path) -> None:
    text = BASE.replace('proto = "tcp"\nports = [443, "8000-8080"]', "proto = 47")
    frames = [
        ether(SERVER_MAC, PUMP_MAC, ETH_IPV4,
              ipv4(PUMP_IP, SERVER_IP, IPPROTO_GRE, gre(ETH_IPV4, bytes(20)))),
        udp4(PUMP_MAC, PUMP_IP, 5000, SERVER_MAC, SERVER_IP, 443),
    ]
    verdicts, _ = replay(tmp_path, text, frames)
    assert verdicts == [allow("pumps-to-server"), deny("proto_not_allowed")]


def test_first_matching_rule_is_reported(tmp_path: Path) -> None:
    text = BASE + textwrap.dedent("""
        [[rules]]
        name = "anything-to-server"
        from = "any"
        to = "server"
        """)
    frames = [tcp4(PUMP_MAC, PUMP_IP, 51000, SERVER_MAC, SERVER_IP, 443),
              tcp4(PUMP_MAC, PUMP_IP, 51001, SERVER_MAC, SERVER_IP, 22),
              udp4(OTHER_MAC, OTHER_IP, 51002, SERVER_MAC, SERVER_IP, 53)]
    verdicts, _ = replay(tmp_path, text, frames)
    assert verdicts == [allow("pumps-to-server"), allow("anything-to-server"),
                        allow("anything-to-server")]
