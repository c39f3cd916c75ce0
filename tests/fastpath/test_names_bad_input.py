"""Hostile DNS answers, HL7 and DICOM first payloads: counted, bounded, never an allowed flow
by accident (the happy paths run on real daemons in tests/datapath/test_names_clinical.py).

Frames are built here because no real implementation writes a compression loop or a DICOM
PDU with a length past its end; each case names what it breaks.
"""

from __future__ import annotations

import struct

import numpy as np

import fastpath
from appliance.policy.model import compile_policy, parse_policy
from demoward import frames as P

CLIENT, SERVER, OTHER = "10.40.1.33", "10.20.0.53", "10.20.0.80"
CMAC, SMAC = "00:09:fb:3c:41:01", "00:26:cb:4a:10:01"
V4 = lambda a: bytes(10) + b"\xff\xff" + bytes(int(x) for x in a.split("."))  # noqa: E731

POLICY = f"""
[policy]
name = "names"
name_ttl_min = 5
name_ttl_max = 600
[groups.ward]
mac = ["{CMAC}"]
[groups.dns]
ip = ["{SERVER}"]
[groups.vendor]
names = ["pumps.vendor.example", "*.cdn.example"]
[groups.engine]
ip = ["{OTHER}"]
[[rules]]
name = "dns"
from = "ward"
to = "dns"
proto = "udp"
ports = [53]
[[rules]]
name = "vendor"
from = "ward"
to = "vendor"
proto = "tcp"
ports = [443]
[[rules]]
name = "vitals"
from = "ward"
to = "engine"
proto = "tcp"
ports = [2575]
hl7 = {{ message_types = ["ORU^R01"] }}
[[rules]]
name = "images"
from = "ward"
to = "engine"
proto = "tcp"
ports = [104]
dicom = {{ calling = ["US1"], services = ["C-ECHO"] }}
"""


def classifier() -> fastpath.Classifier:
    clf = fastpath.Classifier(1024, 64, 1024, seed=7)
    clf.set_policy(compile_policy(parse_policy(POLICY)))
    clf.set_mode("enforce")
    return clf


def run(clf: fastpath.Classifier, frames: list[bytes], t0: int = 1) -> list[tuple[str, str]]:
    buf = b"".join(frames)
    n = len(frames)
    lengths = np.array([len(f) for f in frames], np.uint32)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    stamps = (np.arange(n, dtype=np.uint64) + t0) * 1_000_000_000
    verdicts, reasons = np.zeros(n, np.uint8), np.zeros(n, np.uint8)
    clf.classify(buf, offsets, lengths, stamps, np.ones(n, np.uint16), verdicts, reasons,
                 np.zeros(n, np.uint16))
    return [(fastpath.VERDICT_NAMES[int(v)], fastpath.REASON_NAMES[int(r)])
            for v, r in zip(verdicts, reasons, strict=True)]


def udp(src: str, dst: str, sport: int, dport: int, payload: bytes, smac: str,
        dmac: str) -> bytes:
    return P.ether(dmac, smac, 0x0800, P.ipv4(src, dst, 17, P.udp(sport, dport, payload)))


def tcp(src: str, dst: str, sport: int, dport: int, flags: str, payload: bytes = b"",
        smac: str = CMAC, dmac: str = SMAC) -> bytes:
    return P.ether(dmac, smac, 0x0800, P.ipv4(src, dst, 6, P.tcp(sport, dport, flags,
                                                                  payload=payload)))


def qname(name: str) -> bytes:
    return b"".join(bytes([len(x)]) + x.encode() for x in name.split(".")) + b"\0"


def answer(body: bytes, an: int, question: str = "pumps.vendor.example") -> bytes:
    return struct.pack("!HHHHHH", 1, 0x8180, 1, an, 0, 0) + qname(question) + b"\0\1\0\1" + body


def rr_a(owner: bytes, addr: str, ttl: int = 60) -> bytes:
    return owner + struct.pack("!HHIH", 1, 1, ttl, 4) + bytes(int(x) for x in addr.split("."))


def lookup(clf: fastpath.Classifier, payload: bytes, sport: int = 40000) -> None:
    q = struct.pack("!HHHHHH", 1, 0x0100, 1, 0, 0, 0) + qname("pumps.vendor.example") + b"\0\1\0\1"
    assert run(clf, [udp(CLIENT, SERVER, sport, 53, q, CMAC, SMAC),
                     udp(SERVER, CLIENT, 53, sport, payload, SMAC, CMAC)]) == [
        ("allow", "watched"), ("allow", "watched")]


def connect(clf: fastpath.Classifier, dst: str, sport: int = 50000, t0: int = 3
            ) -> tuple[str, str]:
    return run(clf, [tcp(CLIENT, dst, sport, 443, "S")], t0)[0]


def test_a_good_answer_binds_and_a_hostile_one_binds_nothing() -> None:
    clf = classifier()
    lookup(clf, answer(rr_a(b"\xc0\x0c", "10.9.9.1"), 1))
    assert [b[1] for b in clf.bindings()] == ["pumps.vendor.example"]
    assert connect(clf, "10.9.9.1") == ("allow", "watched")        # the SNI is awaited
    hostile = {
        # a pointer to itself, and two pointing at each other
        "loop": answer(b"\xc0\x2a" + struct.pack("!HHIH", 1, 1, 60, 4) + b"\x0a\x09\x09\x02", 1),
        "pointer past the end": answer(b"\xc0\xff" + struct.pack("!HHIH", 1, 1, 60, 4)
                                       + b"\x0a\x09\x09\x03", 1),
        "label over 63": answer(b"\x50" + b"a" * 80 + b"\0" + struct.pack("!HHIH", 1, 1, 60, 4)
                                + b"\x0a\x09\x09\x04", 1),
        "rdata past the end": answer(b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 400)
                                     + b"\x0a\x09\x09\x05", 1),
        "a name nobody asked for": answer(rr_a(qname("pumps.vendor.example.evil"), "10.9.9.6"),
                                          1),
        "a label with a dot in it": answer(rr_a(b"\x0bpumps.vendor\x07example\0", "10.9.9.7"),
                                           1, "pumps.vendor.example"),
    }
    for sport, (what, payload) in enumerate(hostile.items(), 41000):
        lookup(clf, payload, sport)
        assert len(clf.bindings()) == 1, what
    assert clf.stats()["dns_malformed"] >= 4
    for last in range(2, 8):
        assert connect(clf, f"10.9.9.{last}", 50000 + last) == ("deny", "no_rule")


def test_ttl_is_bounded_and_huge_answers_are_read_to_a_limit() -> None:
    clf = classifier()
    absurd = answer(rr_a(b"\xc0\x0c", "10.9.8.1", ttl=0xFFFFFFFF), 1)
    zero = answer(rr_a(b"\xc0\x0c", "10.9.8.2", ttl=0), 1)
    lookup(clf, absurd, 40001)
    lookup(clf, zero, 40002)
    expiry = {bytes(a)[-4:]: e for a, _, e in clf.bindings()}
    now = 2 * 10**9                               # the answers' capture time
    assert expiry[bytes([10, 9, 8, 1])] == now + 600 * 10**9      # name_ttl_max
    assert expiry[bytes([10, 9, 8, 2])] == now + 5 * 10**9        # name_ttl_min
    # 200 records claimed, 40 given: read up to DNS_RECORDS_MAX (32), the rest ignored
    many = answer(b"".join(rr_a(b"\xc0\x0c", f"10.9.7.{i}") for i in range(40)), 200)
    lookup(clf, many, 40003)
    assert len([b for b in clf.bindings() if bytes(b[0])[12:14] == b"\x0a\x09"]) <= 2 + 32
    # a suffix group: names under *.cdn.example, not cdn.example itself
    policy = compile_policy(parse_policy(POLICY))
    assert policy.name_groups(b"a.b.cdn.example") and not policy.name_groups(b"cdn.example")


def test_bindings_table_is_bounded() -> None:
    clf = classifier()
    for i in range(600):                          # 600 answers of 8 addresses each
        body = b"".join(rr_a(b"\xc0\x0c", f"10.{i // 200}.{i % 200}.{j}") for j in range(8))
        lookup(clf, answer(body, 8), 20000 + i)
    assert len(clf.bindings()) <= fastpath.BINDING_SLOTS
    assert clf.stats()["bindings_evicted"] > 0


def first_payload(clf: fastpath.Classifier, port: int, payload: bytes, sport: int
                  ) -> tuple[str, str, list[dict[str, object]]]:
    from appliance.common.records import event_dict

    got = run(clf, [tcp(CLIENT, OTHER, sport, port, "S"),
                    tcp(OTHER, CLIENT, port, sport, "SA", smac=SMAC, dmac=CMAC),
                    tcp(CLIENT, OTHER, sport, port, "A"),
                    tcp(CLIENT, OTHER, sport, port, "PA", payload),
                    tcp(CLIENT, OTHER, sport, port, "PA", b"more")])
    assert got[:3] == [("allow", "watched")] * 3        # nothing decided before the payload
    assert got[3] == got[4]                              # decided for the flow's life
    events = [event_dict(e) for e in clf.drain()]
    return got[3][0], got[3][1], [e for e in events if e["type"] == "violation"]


MSH = "MSH|^~\\&|MX800|WARD|ENGINE|HOSP|20261207||{}|1|P|2.6\r"


def test_hl7_without_msh_or_with_odd_separators_is_denied() -> None:
    clf = classifier()
    ok = first_payload(clf, 2575, b"\x0b" + MSH.format("ORU^R01^ORU_R01").encode(), 30001)
    assert ok[:2] == ("allow", "rule")
    cases = {
        b"\x0bPID|1||X\r": "hl7_msh",                                    # no MSH
        b"\x0bMSHA^~\\&|X|Y|Z|W|1||ORU^R01|1|P|2.6\r": "hl7_msh",        # letter separator
        b"\x0bMSH|^~\\&|X|Y|Z|W|1||ORU": "hl7_msh",                      # cut before MSH-9 ends
        b"\x0b" + MSH.format("ADT^A01").encode(): "hl7_message_type",
        b"\x0b" + MSH.format("OR\x01^R01").encode(): "hl7_message_type",  # control byte
        b"\x0b" + b"\xff" * 2000: "hl7_msh",                             # binary junk
    }
    for sport, (payload, field) in enumerate(cases.items(), 30010):
        verdict, reason, violations = first_payload(clf, 2575, payload, sport)
        assert (verdict, reason) == ("deny", "clinical_mismatch"), payload
        assert [v["field"] for v in violations] == [field], payload


def associate_rq(calling: bytes, uid: bytes, pdu_len: int | None = None,
                 item_len: int | None = None) -> bytes:
    abstract = b"\x30\0" + struct.pack("!H", len(uid)) + uid
    transfer = b"\x40\0\0\x11" + b"1.2.840.10008.1.2"
    ctx_body = b"\x01\0\0\0" + abstract + transfer
    ctx = b"\x20\0" + struct.pack("!H", item_len if item_len is not None else len(ctx_body)) \
        + ctx_body
    app = b"\x10\0\0\x15" + b"1.2.840.10008.3.1.1.1"
    body = struct.pack("!HH", 1, 0) + b"PACS".ljust(16) + calling.ljust(16) + bytes(32) + app \
        + ctx
    return b"\x01\0" + struct.pack("!I", pdu_len if pdu_len is not None else len(body)) + body


def test_dicom_pdus_with_bad_lengths_are_denied() -> None:
    clf = classifier()
    echo = b"1.2.840.10008.1.1"
    assert first_payload(clf, 104, associate_rq(b"US1", echo), 31001)[:2] == ("allow", "rule")
    cases = {
        associate_rq(b"ROGUE", echo): "dicom_calling_ae",
        associate_rq(b"US1", b"1.2.840.10008.5.1.4.1.2.2.1"): "dicom_service",   # C-FIND
        associate_rq(b"US1", echo, pdu_len=10): "dicom_associate_rq",     # shorter than fixed
        associate_rq(b"US1", echo, pdu_len=0xFFFFFFF0): "dicom_associate_rq",    # huge
        associate_rq(b"US1", echo, pdu_len=5000): "dicom_service",        # past the segment
        associate_rq(b"US1", echo, item_len=4000): "dicom_associate_rq",  # item past the PDU
        b"\x16\x03\x01\x00\x05hello": "dicom_associate_rq",                # TLS, not DICOM
    }
    for sport, (payload, field) in enumerate(cases.items(), 31010):
        verdict, reason, violations = first_payload(clf, 104, payload, sport)
        assert (verdict, reason) == ("deny", "clinical_mismatch"), field
        assert [v["field"] for v in violations] == [field], field
    assert clf.stats()["payloads_unreadable"] >= 4


def test_a_reload_keeps_judged_and_bound_flows() -> None:
    """reevaluate() after a reload: a flow denied on its first payload stays denied (the
    payload is not judged again), a flow allowed through a binding stays allowed although
    the binding has run out since."""
    clf = classifier()
    lookup(clf, answer(rr_a(b"\xc0\x0c", "10.9.9.1", ttl=5), 1))
    assert run(clf, [tcp(CLIENT, "10.9.9.1", 50001, 443, "S")], 3) == [("allow", "watched")]
    judged = first_payload(clf, 2575, b"\x0b" + MSH.format("ADT^A01").encode(), 30001)
    assert judged[:2] == ("deny", "clinical_mismatch")
    clf.sweep(60 * 10**9)                         # the binding (5 s) has run out by now
    clf.set_policy(compile_policy(parse_policy(POLICY)))
    assert clf.reevaluate() == []                 # nothing changed its verdict
    assert connect(clf, "10.9.9.1", 50002, 61) == ("deny", "no_rule")   # a new flow is denied


def test_aaaa_and_cname_chains_bind_every_name_of_the_chain() -> None:
    clf = classifier()
    cname = qname("edge.cdn.example")
    body = (b"\xc0\x0c" + struct.pack("!HHIH", 5, 1, 300, len(cname)) + cname
            + b"\xc0\x32" + struct.pack("!HHIH", 28, 1, 60, 16)   # -> the target (50)
            + bytes.fromhex("fd000000000000000000000000000042"))
    lookup(clf, answer(body, 2))
    names = sorted(n for _, n, _ in clf.bindings())
    assert names == ["edge.cdn.example", "pumps.vendor.example"]   # both listed, one address
    assert {bytes(a) for a, _, _ in clf.bindings()} == {
        bytes.fromhex("fd000000000000000000000000000042")}


def test_a_flow_met_mid_conversation_keeps_its_address_verdict() -> None:
    """No SYN seen (a restart): the next segment is not a first payload; not judged."""
    clf = classifier()
    got = run(clf, [tcp(CLIENT, OTHER, 30500, 2575, "PA", b"OBX|1|NM|8867-4^HR||72\r"),
                    tcp(OTHER, CLIENT, 2575, 30500, "A", smac=SMAC, dmac=CMAC)])
    assert got == [("allow", "rule"), ("allow", "rule")]
    assert clf.stats()["payloads_missed"] == 1
