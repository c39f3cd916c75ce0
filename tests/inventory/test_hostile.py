"""Hostile and malformed HL7, DICOM and DHCP: counted and skipped, never a crash of the
worker loop, never a name with control characters; good messages after them still read."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import invcaptures as caps
from conftest import run_wardtap
from hypothesis import given, settings
from hypothesis import strategies as st
from invcaptures import Capture, Host, Tcp, dhcp, dicom_associate, hl7

from appliance.inventory.clinical import parse_msh, parse_pdu
from appliance.inventory.triage import Triage

CONTROL = {chr(c) for c in range(32)} | {"\x7f"}
SECOND = 1_000_000_000
GOOD_MONITOR = Host("00:09:fb:3c:41:0e", "10.40.1.34")


def _clean(text: str) -> bool:
    return not (set(text) & CONTROL)


def write_hostile(path: Path) -> str:
    cap = Capture()
    mon, st_, us, pacs = caps.MONITOR, caps.CENTRAL, caps.US, Host(caps.PACS.mac, "10.40.1.40")
    hl7_bad = [b"\x0bPID|1||X\r\x1c\r",                                 # HL7 without MSH
               b"\x0bMSH|^~\\&|" + b"A" * (1 << 20) + b"|F|R|F|T||ORU^R01|1|P|2.5\r\x1c\r",
               b"\x0b" + bytes(range(256)) * 8 + b"\x1c\r",              # binary junk
               b"\x0bMSHA^~\\&|APP|F|R|F|T||ORU^R01|1|P|2.5\r\x1c\r",  # field separator "A"
               b"\x0bMSH||~\\&|APP|F|R|F|T||ORU^R01|1|P|2.5\r\x1c\r",  # separators equal
               hl7("EVIL\x1b[31m\x07APP", "F", "R\x00X", "F", "ORU^R01")]  # control chars
    pdata = b"\x04\x00" + struct.pack("!I", 20) + struct.pack("!I", 5000) + b"\x01\x03"
    dicom_bad = [b"\x01\x00\x00\x00\x00\x10" + bytes(16),                  # RQ shorter than 68
                 b"\x01\x00\xff\xff\xff\xf0\x00\x01" + bytes(66),           # a 4 GiB PDU
                 pdata + bytes(14),                                        # PDV past its PDU
                 dicom_associate("BAD\x1b\x00AE", "PACS\x07", True)]      # control chars
    # each on its own connection a second apart, as devices would send them (the fast path
    # samples the first packets of a flow, at most 64 packets a second in all)
    for i, payload in enumerate(hl7_bad):
        Tcp(cap, mon, st_, 42100 + i, 2575).handshake().send(0, payload)
        cap.t += SECOND
    for i, payload in enumerate(dicom_bad):
        Tcp(cap, us, pacs, 42200 + i, 104).handshake().send(0, payload)
        cap.t += SECOND
    zero, bcast = Host(caps.WS.mac, "0.0.0.0"), Host("ff:ff:ff:ff:ff:ff", "255.255.255.255")
    cap.udp(zero, bcast, 68, 67, dhcp(1, 1, 7, caps.WS.mac,
                                      raw_options=b"\x35\x01\x01\x3c\xf0short\xff"))
    # then good messages on fresh connections: they must still be read (the good monitor is
    # another device: the hostile one has spent its sampling budget for the hour)
    cap.t += SECOND
    c = Tcp(cap, GOOD_MONITOR, st_, 42003, 2575).handshake()
    c.send(0, hl7("MX800^Philips", "WARD4B", "PIIC-IX", "WARD4B", "ORU^R01^ORU_R01"))
    c = Tcp(cap, us, pacs, 42004, 104).handshake()
    c.send(0, dicom_associate("GOOD_AE", "PACS", True))
    return cap.write(path)


def test_hostile_input_is_counted_skipped_and_never_named(tmp_path: Path, tshark: str
                                                          ) -> None:
    path = write_hostile(tmp_path / "hostile.pcap")
    db = tmp_path / "wardtap.db"
    r = run_wardtap("replay", path, "--dissect", "--db", str(db), "--json", timeout=120)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    out = json.loads(r.stdout)
    dissect = out["dissect"]
    assert dissect["worker_crashes"] == 0 and dissect["chunks_failed"] == 0
    assert dissect["tshark_errors"] == 0
    dropped = dissect["triage_dropped"]
    for reason in ("hl7_no_msh", "hl7_short_msh", "hl7_bad_encoding", "dicom_bad_length",
                   "dhcp_bad_option_length"):
        assert dropped.get(reason, 0) >= 1, (reason, dropped)
    assert dropped["hl7_bad_encoding"] >= 2 and dropped["dicom_bad_length"] >= 3
    found = {d["mac"]: d for d in out["inventory"]}
    names = [n for d in found.values() for n in d["names"]]
    assert names and all(_clean(n) for n in names), names
    values = run_wardtap("devices", "--db", str(db), "--json").stdout
    assert all(_clean(e["value"]) for d in json.loads(values) for e in d["evidence"])
    assert "EVIL[31mAPP" in found[caps.MONITOR.mac]["names"]
    assert found[GOOD_MONITOR.mac]["names"] == ["MX800"]
    assert {"GOOD_AE", "BADAE"} <= set(found[caps.US.mac]["names"])


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=600))
def test_parsers_never_raise_on_random_bytes(data: bytes) -> None:
    for payload in (b"\x0b" + data, b"\x0bMSH" + data, data,
                    b"\x01\x00" + struct.pack("!I", len(data) + 68) + b"\x00\x01" + data,
                    b"\x04\x00" + struct.pack("!I", len(data)) + data):
        msh, why = parse_msh(payload)
        if msh is not None:
            assert all(_clean(c) for c in msh.sending_app + msh.receiving_app)
        else:
            assert why
        found, why = parse_pdu(payload)
        assert found is not None or why
        for calling in (getattr(found, "calling", ""), getattr(found, "called", "")):
            assert _clean(calling)


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=0, max_size=400))
def test_triage_never_raises_on_random_frames(data: bytes) -> None:
    triage = Triage(ttl_s=0)
    frames = [(1, 1, data), (2, 101, data), (3, 276, data), (4, 1, b"\x00" * 12 + b"\x08\x00"
                                                            + data)]
    assert len(triage.keep_chunk(frames)) == 4
