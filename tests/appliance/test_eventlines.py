"""The event log's lines built from a drain's structured array are the lines it wrote from
dicts, byte for byte.

Real traffic only: the public captures of tests/data/corpus (tcpdump's, PcapPlusPlus's,
Practical Packet Analysis's: IPv4 and IPv6, ARP, ICMP, tunnels, VLANs, many link types),
tests/data/realward.pcap (real daemons and libraries: HL7, DICOM, DNS, DHCP, NTP, LLDP) and
the same ward cut to a short snaplen by Wireshark's editcap (truncated headers: malformed
packets). Two classifiers with the same seed see the same packets under a policy with
clinical rules (violations name the field that broke them). One hands its events over as
tuples, turned into the dicts and `json.dumps` lines the event log wrote before; the other
as structured arrays, in drains of several sizes, written by `EventLogOutput.publish_array`.
"""

from __future__ import annotations

import collections
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from capturekit import classify_all

import fastpath
from appliance.common import eventarrays as ea
from appliance.common.records import event_dict
from appliance.outputs import EventLogOutput
from appliance.outputs.eventlog import outside
from appliance.policy.model import compile_policy, parse_policy

DATA = Path(__file__).resolve().parents[1] / "data"
UNREADABLE = {"PracticalPacketAnalysis__ppa-capture-files__http-fault-post.pcap",  # damaged
              "tests__unsupported-link-type-160.pcap"}
VITALS = "vitals.hl7-oru_r01"
POLICY = f"""
[policy]
name = "ward-and-corpus"
version = 1
[groups.ward]
ip = ["10.61.0.0/24"]
[groups.pacs]
names = ["pacs.ward61.test"]
[[rules]]
name = "dns"
from = "ward"
to = "ward"
proto = "udp"
ports = [53]
[[rules]]
name = {json.dumps(VITALS)}
from = "ward"
to = "ward"
proto = "tcp"
ports = [2575, 2576]
hl7 = {{ message_types = ["ORU^R01"] }}
[[rules]]
name = "images"
from = "ward"
to = "pacs"
proto = "tcp"
ports = [104]
dicom = {{ services = ["C-ECHO"] }}
[[rules]]
name = "ping"
from = "any"
to = "any"
proto = "icmp"
"""


@pytest.fixture(scope="module")
def captures(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    cut = tmp_path_factory.mktemp("snaplen") / "realward-snaplen-40.pcap"
    subprocess.run(["editcap", "-s", "40", str(DATA / "realward.pcap"), str(cut)],
                   check=True, capture_output=True, timeout=30)
    corpus = [p for p in sorted((DATA / "corpus").iterdir())
              if p.suffix in (".pcap", ".pcapng") and p.name not in UNREADABLE]
    return [*corpus, DATA / "realward.pcap", cut]


def classified(paths: list[Path], rules: Any) -> fastpath.Classifier:
    # 64 flow slots: flows are evicted, so flow ends come out between the others.
    clf = fastpath.Classifier(flow_capacity=64, device_capacity=256, event_capacity=1 << 16,
                              seed=11)
    clf.set_policy(compile_policy(rules))
    clf.set_mode("monitor")
    classify_all(clf, paths)
    return clf


def test_lines_from_arrays_are_the_lines_from_dicts(tmp_path: Path,
                                                   captures: list[Path]) -> None:
    rules = parse_policy(POLICY)
    tuples = classified(captures, rules).drain(1 << 16)
    array = ea.EventBuffer(1 << 16).drain(classified(captures, rules)).copy()
    assert len(array) == len(tuples) > 300
    dicts = [outside(event_dict(t, rules.rule_name)) for t in tuples]
    before = "".join(json.dumps(d, separators=(",", ":"), default=str) + "\n" for d in dicts)

    # What the captures put to the test: every type, every address family, ICMP, MACs
    # absent, one and two, a field that broke a clinical rule, rule names on both sides.
    kinds = collections.Counter(d["type"] for d in dicts)
    assert set(kinds) == {"new_device", "new_flow", "violation", "flow_end", "malformed"}
    assert set(array["l3"].tolist()) >= {0, 1, 4, 6}
    assert {1, 6, 17} <= set(array["proto"].tolist()) and any(array["vlan"])
    assert set(array["has_mac"].tolist()) == {0, 1, 2}
    assert any("field" in d for d in dicts)
    assert {d.get("rule") for d in dicts if d["type"] == "flow_end"} >= {VITALS, "images"}
    assert {d["nearest_rule"] for d in dicts if d["type"] == "violation"} >= {VITALS, "dns"}
    assert any(d.get("ip") is None for d in dicts if d["type"] == "new_device")

    log = tmp_path / "events.jsonl"
    output = EventLogOutput(str(log))
    daemon_event = {"type": "started", "mode": "monitor", "datapath": "replay", "ts": 1.5}
    # The daemon hands the same drain to publish() as dicts when another reader wants
    # them: the event log takes those from the array and writes each once.
    start, sizes = 0, [1, 7, 64, 3, 500, len(array)]
    output.publish([daemon_event])
    for size in sizes:
        drain = array[start:start + size]
        output.publish_array(drain, rules.rule_name)
        output.publish([outside(e) for e in ea.as_dicts(drain, rules.rule_name)])
        start += size
    output.close()
    output.close()
    written = log.read_text(encoding="utf-8")
    assert written == json.dumps(daemon_event, separators=(",", ":")) + "\n" + before
    # the same events, keys in the same order, as a reader parses them
    parsed = [json.loads(line, object_pairs_hook=list) for line in written.splitlines()[1:]]
    assert parsed == [list(d.items()) for d in dicts]


def test_a_type_the_lines_do_not_know_is_written_from_its_dict(tmp_path: Path) -> None:
    clf = classified([DATA / "realward.pcap"], parse_policy(POLICY))
    drain = ea.EventBuffer(1 << 16).drain(clf).copy()
    drain["type"][::7] = 9                  # a type a later fast path might add
    output = EventLogOutput(str(tmp_path / "events.jsonl"))
    output.publish_array(drain)
    output.close()
    lines = (tmp_path / "events.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [outside(d) for d in ea.as_dicts(drain)]
    assert json.loads(lines[0])["type"] == "unknown"
