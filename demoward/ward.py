"""The demo ward: a deterministic capture of one hospital ward, its policy, and a benchmark.

``write_demo_ward`` writes a classic pcap (Ethernet, microseconds) of a few minutes of one
ward: infusion pumps, patient monitors, an ultrasound, workstations and a printer talking to
a data-centre subnet behind a Cisco router, plus the injected violations listed in the
returned :class:`DemoWard`. ``DEMO_POLICY`` allows exactly the legitimate traffic.
``write_imix`` writes a large benchmark capture of the same ward's flows with IMIX sizes.

    python -m demoward.ward ward.pcap --policy ward.toml [--packets N] [--imix]
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import random
import struct
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

from appliance.common.capwriter import PcapWriter
from demoward import frames as p

START_NS = 1_732_788_000 * 1_000_000_000  # 2024-11-28 10:00:00 UTC
MIN_PACKETS = 1000
INTERNET_IP = "93.184.216.34"

Pkt = tuple[int, bytes]  # (timestamp ns, frame)

_MS = 1_000_000
_US = 1_000
_S = 1_000_000_000


@dataclass(frozen=True)
class Device:
    """One endpoint as it appears in the capture.

    For servers, ``mac`` is the router's: every routed frame carries it. ``ttl`` is the
    IPv4 TTL / IPv6 hop limit seen on the ward (servers arrive one hop down).
    """

    name: str
    mac: str
    ip: str
    vlan: int | None
    device_class: str
    vendor: str
    ipv6: str | None = None
    ttl: int = 64


class Violation(NamedTuple):
    """One injected flow the demo policy must deny."""

    description: str
    initiator: str
    responder: str
    proto: str
    dport: int


@dataclass
class DemoWard:
    """What :func:`write_demo_ward` wrote."""

    path: str
    packets: int
    start_ns: int
    end_ns: int
    devices: list[Device]
    servers: list[Device]
    unknown: list[Device]
    violations: list[Violation]


@dataclass
class ImixCapture:
    """What :func:`write_imix` wrote; counts are by the demo policy's verdicts."""

    path: str
    packets: int
    flows: int
    allowed_flows: int
    denied_flows: int
    allowed_packets: int
    denied_packets: int
    total_bytes: int
    denied: list[Violation] = field(default_factory=list)


ROUTER_MAC = "00:26:cb:4a:10:01"

DEVICES: tuple[Device, ...] = (
    Device("core-rtr", ROUTER_MAC, "10.40.1.1", None, "network gear", "Cisco"),
    Device("core-rtr.104", ROUTER_MAC, "10.40.104.1", 104, "network gear", "Cisco"),
    Device("sw-ward4b", "00:1e:f7:5c:88:30", "10.40.1.2", None, "network gear", "Cisco"),
    Device("pump-01", "00:12:21:5e:a0:11", "10.40.104.11", 104, "infusion pump", "B. Braun"),
    Device("pump-02", "00:12:21:5e:a0:12", "10.40.104.12", 104, "infusion pump", "B. Braun"),
    Device("pump-03", "00:12:21:5e:a0:2c", "10.40.104.13", 104, "infusion pump", "B. Braun"),
    Device("pump-04", "58:42:e4:07:31:c4", "10.40.104.21", 104, "infusion pump", "Baxter"),
    Device("pump-05", "58:42:e4:07:31:d9", "10.40.104.22", 104, "infusion pump", "Baxter"),
    Device("pump-06", "00:d0:75:1a:6b:03", "10.40.104.31", 104, "infusion pump",
           "BD Alaris"),
    Device("central", "00:09:fb:3c:40:02", "10.40.1.10", None, "central station",
           "Philips", ipv6="fd00:40:1::10"),
    Device("mon-bed01", "00:09:fb:3c:41:01", "10.40.1.33", None, "patient monitor",
           "Philips", ipv6="fd00:40:1::33"),
    Device("mon-bed02", "00:09:fb:3c:41:0e", "10.40.1.34", None, "patient monitor", "Philips"),
    Device("mon-bed03", "00:09:fb:3c:42:77", "10.40.1.35", None, "patient monitor", "Philips"),
    Device("mon-bed04", "00:09:fb:3c:42:9a", "10.40.1.36", None, "patient monitor", "Philips"),
    Device("mon-bed05", "44:4b:5d:12:08:a1", "10.40.1.37", None, "patient monitor",
           "GE Healthcare"),
    Device("mon-bed06", "44:4b:5d:12:08:c6", "10.40.1.38", None, "patient monitor",
           "GE Healthcare"),
    Device("us-01", "88:4b:39:a2:11:5f", "10.40.1.90", None, "imaging modality",
           "Siemens Healthineers"),
    Device("ws-nurse1", "18:66:da:31:9c:02", "10.40.1.65", None, "workstation", "Dell",
           ttl=128),
    Device("ws-nurse2", "f8:bc:12:6e:04:b7", "10.40.1.66", None, "workstation", "Dell",
           ttl=128),
    Device("ws-doc1", "3c:d9:2b:71:5a:e0", "10.40.1.67", None, "workstation", "HP", ttl=128),
    Device("ws-cart1", "b8:ca:3a:90:11:4d", "10.40.1.68", None, "workstation", "Dell",
           ttl=128),
    Device("prn-ward", "a0:d3:c1:5b:22:80", "10.40.1.80", None, "printer", "HP"),
)

SERVERS: tuple[Device, ...] = (
    Device("pump-server", ROUTER_MAC, "10.20.0.15", None, "server", "", ttl=63),
    Device("emr", ROUTER_MAC, "10.20.0.30", None, "server", "", ttl=127),
    Device("pacs", ROUTER_MAC, "10.20.0.40", None, "server", "", ttl=63),
    Device("dns", ROUTER_MAC, "10.20.0.53", None, "server", "", ttl=63),
    Device("dhcp", ROUTER_MAC, "10.20.0.67", None, "server", "", ttl=63),
    Device("ntp", ROUTER_MAC, "10.20.0.123", None, "server", "", ttl=63),
)

UNKNOWN: tuple[Device, ...] = (
    Device("rogue-pi", "dc:a6:32:7e:5b:19", "10.40.1.213", None, "unknown",
           "Raspberry Pi"),
)

_INTERNET = Device("internet", ROUTER_MAC, INTERNET_IP, None, "internet", "", ttl=52)

DEMO_POLICY = """\
# Demo ward 4B (demoward.ward): allows exactly the ward's legitimate traffic.
[policy]
name = "demo-ward-4b"
version = 1
arp = "allow"
non_ip = "allow"        # LLDP and spanning tree from the ward switch

[groups.pumps]          # infusion pumps: B. Braun, Baxter, BD Alaris, on their own VLAN
oui = ["00:12:21", "58:42:e4", "00:d0:75"]
vlan = [104]

[groups.monitors]       # patient monitors: Philips IntelliVue, GE CARESCAPE
mac = ["00:09:fb:3c:41:01", "00:09:fb:3c:41:0e", "00:09:fb:3c:42:77",
       "00:09:fb:3c:42:9a", "44:4b:5d:12:08:a1", "44:4b:5d:12:08:c6"]

[groups.central-station]
ip = ["10.40.1.10", "fd00:40:1::10"]

[groups.ultrasound]     # Siemens Healthineers ultrasound
mac = ["88:4b:39:a2:11:5f"]

[groups.workstations]
ip = ["10.40.1.64/28"]

[groups.printer]
ip = ["10.40.1.80"]

[groups.ward]           # every known ward device, for DNS, NTP and pinging the gateway
ip = ["10.40.104.0/24", "10.40.1.10", "10.40.1.32/28", "10.40.1.64/28", "10.40.1.80",
      "10.40.1.90"]

# The router's own addresses. Never its MAC: every routed frame carries it, so a MAC
# selector would put every data-centre server in this group.
[groups.gateway]
ip = ["10.40.1.1", "10.40.104.1"]

[groups.pump-server]
ip = ["10.20.0.15"]

[groups.emr]
ip = ["10.20.0.30"]

[groups.pacs]
ip = ["10.20.0.40"]

[groups.dns]
ip = ["10.20.0.53"]

[groups.ntp]
ip = ["10.20.0.123"]

[[rules]]
name = "pumps-to-pump-server"
from = "pumps"
to = "pump-server"
proto = "tcp"
ports = [443]

[[rules]]
name = "monitors-hl7"
from = "monitors"
to = "central-station"
proto = "tcp"
ports = [2575]
[rules.hl7]             # vital signs only, from the monitors' application to the central's
message_types = ["ORU^R01"]
sending = ["MX800", "CARESCAPE B650"]
receiving = ["PIIC-IX"]

[[rules]]
name = "ultrasound-dicom"
from = "ultrasound"
to = "pacs"
proto = "tcp"
ports = [104]
dicom = { calling = ["ACUSON_US01"], called = ["PACS"], services = ["C-STORE"] }

[[rules]]
name = "workstations-emr"
from = "workstations"
to = "emr"
proto = "tcp"
ports = [443]

[[rules]]
name = "workstations-print"
from = "workstations"
to = "printer"
proto = "tcp"
ports = [9100]

[[rules]]
name = "ward-dns"
from = "ward"
to = "dns"
proto = "udp"
ports = [53]

[[rules]]
name = "ward-ntp"
from = "ward"
to = "ntp"
proto = "udp"
ports = [123]

[[rules]]
name = "ward-ping-gateway"
from = "ward"
to = "gateway"
proto = "icmp"
icmp_types = [8]

[[rules]]
name = "dhcp-client"
from = "0.0.0.0"
to = "255.255.255.255"
proto = "udp"
ports = [67]

[[rules]]
name = "dhcp-relay-reply"
from = "gateway"
to = "255.255.255.255"
proto = "udp"
ports = [68]

[[rules]]
name = "nd-dad"                  # duplicate address detection, MLD before an address
from = "::"
to = "ff02::/16"
proto = "icmpv6"
icmp_types = [135, 143]

[[rules]]
name = "nd-link-local-multicast" # RS, RA, NS, MLDv2 reports
from = "fe80::/10"
to = "ff02::/16"
proto = "icmpv6"
icmp_types = [133, 134, 135, 143]

[[rules]]
name = "nd-link-local-unicast"
from = "fe80::/10"
to = "fe80::/10"
proto = "icmpv6"
icmp_types = [135, 136]

[[rules]]
name = "nd-ward-v6-multicast"
from = "fd00:40:1::/64"
to = "ff02::/16"
proto = "icmpv6"
icmp_types = [135]

[[rules]]
name = "nd-ward-v6-unicast"
from = "fd00:40:1::/64"
to = "fd00:40:1::/64"
proto = "icmpv6"
icmp_types = [135, 136]
"""


def write_demo_policy(path: str | Path) -> None:
    """Write :data:`DEMO_POLICY` to ``path``."""
    Path(path).write_text(DEMO_POLICY)


# --- application payloads ---------------------------------------------------------------


def _ts_hl7(ts_ns: int) -> str:
    return datetime.fromtimestamp(ts_ns // _S, tz=UTC).strftime("%Y%m%d%H%M%S+0000")


def _tls_record(ctype: int, body: bytes, version: int = 0x0303) -> bytes:
    return struct.pack("!BHH", ctype, version, len(body)) + body


def _tls_ext(etype: int, body: bytes) -> bytes:
    return struct.pack("!HH", etype, len(body)) + body


def _client_hello(rng: random.Random, sni: str | None) -> bytes:
    """A TLS 1.3 ClientHello record (what a modern TLS client sends first)."""
    suites = [0x1301, 0x1302, 0x1303, 0xC02B, 0xC02F, 0xC02C, 0xC030, 0xCCA9, 0xCCA8,
              0xC013, 0xC014, 0x009C, 0x009D, 0x002F, 0x0035]
    exts = b""
    if sni:
        name = sni.encode()
        exts += _tls_ext(0, struct.pack("!HBH", len(name) + 3, 0, len(name)) + name)
    exts += _tls_ext(10, struct.pack("!HHHH", 6, 0x001D, 0x0017, 0x0018))
    exts += _tls_ext(11, b"\x01\x00")
    sigs = [0x0403, 0x0503, 0x0603, 0x0804, 0x0805, 0x0806, 0x0401, 0x0501, 0x0601]
    exts += _tls_ext(13, struct.pack(f"!H{len(sigs)}H", 2 * len(sigs), *sigs))
    exts += _tls_ext(43, b"\x04\x03\x04\x03\x03")
    exts += _tls_ext(45, b"\x01\x01")
    exts += _tls_ext(51, struct.pack("!HHH", 36, 0x001D, 32) + rng.randbytes(32))
    body = (b"\x03\x03" + rng.randbytes(32) + b"\x20" + rng.randbytes(32)
            + struct.pack(f"!H{len(suites)}H", 2 * len(suites), *suites) + b"\x01\x00"
            + struct.pack("!H", len(exts)) + exts)
    hs = b"\x01" + len(body).to_bytes(3, "big") + body
    return _tls_record(22, hs, 0x0301)


def _server_flight(rng: random.Random) -> bytes:
    """ServerHello, ChangeCipherSpec and the encrypted rest of a TLS 1.3 server flight."""
    exts = _tls_ext(43, b"\x03\x04") + _tls_ext(51, struct.pack("!HH", 0x001D, 32)
                                                 + rng.randbytes(32))
    body = (b"\x03\x03" + rng.randbytes(32) + b"\x20" + rng.randbytes(32)
            + b"\x13\x01\x00" + struct.pack("!H", len(exts)) + exts)
    hello = _tls_record(22, b"\x02" + len(body).to_bytes(3, "big") + body)
    return (hello + _tls_record(20, b"\x01")
            + _tls_record(23, rng.randbytes(rng.randint(2400, 3600))))


def _tls_client_finish(rng: random.Random) -> bytes:
    return _tls_record(20, b"\x01") + _tls_record(23, rng.randbytes(53))


def _tls_data(rng: random.Random, n: int) -> bytes:
    """Application data records (at most 16 KiB + overhead each) of about n bytes."""
    out = b""
    while n > 0:
        k = min(n, 16401)
        out += _tls_record(23, rng.randbytes(k))
        n -= k
    return out


def _hl7_app(mon: Device) -> str:
    """MSH-3 as the monitors fill it: application (the model) ^ maker."""
    return "MX800^Philips" if mon.vendor == "Philips" else "CARESCAPE B650^GE"


def _hl7_oru(mon: Device, bed: int, ctrl: str, ts_ns: int, rng: random.Random) -> bytes:
    """An HL7 v2.6 ORU^R01 vital-signs message in MLLP framing."""
    stamp = _ts_hl7(ts_ns)
    app = _hl7_app(mon)
    segs = [
        (f"MSH|^~\\&|{app}|{mon.name.upper()}|PIIC-IX|WARD4B|{stamp}||ORU^R01^ORU_R01|"
         f"{ctrl}|P|2.6|||AL|NE||UNICODE UTF-8"),
        f"PID|1||DEMO{bed:04d}^^^HOSP^MR||DEMO^PATIENT{bed:02d}||19700101|U",
        f"PV1|1|I|WARD4B^^BED{bed:02d}",
        f"OBR|1|{ctrl}||69837-1^Vital signs^LN|||{stamp}",
        f"OBX|1|NM|8867-4^Heart rate^LN||{rng.randint(58, 96)}|/min^/min^UCUM|||||F",
        f"OBX|2|NM|59408-5^SpO2^LN||{rng.randint(93, 100)}|%^%^UCUM|||||F",
        f"OBX|3|NM|9279-1^Respiratory rate^LN||{rng.randint(11, 20)}|/min^/min^UCUM|||||F",
        (f"OBX|4|NM|8480-6^NIBP systolic^LN||{rng.randint(105, 140)}|mm[Hg]^mm[Hg]^UCUM"
         "|||||F"),
        f"OBX|5|NM|8462-4^NIBP diastolic^LN||{rng.randint(62, 90)}|mm[Hg]^mm[Hg]^UCUM|||||F",
    ]
    return b"\x0b" + "\r".join(segs).encode() + b"\r\x1c\r"


def _hl7_ack(mon: Device, ctrl: str, ts_ns: int) -> bytes:
    app = _hl7_app(mon)
    msg = (f"MSH|^~\\&|PIIC-IX|WARD4B|{app}|{mon.name.upper()}|{_ts_hl7(ts_ns)}||"
           f"ACK^R01^ACK|A{ctrl}|P|2.6\rMSA|AA|{ctrl}\r")
    return b"\x0b" + msg.encode() + b"\x1c\r"


def _dicom_item(itype: int, value: bytes) -> bytes:
    return struct.pack("!BBH", itype, 0, len(value)) + value


def _uid(rng: random.Random) -> bytes:
    uid = f"2.25.{rng.getrandbits(126)}".encode()
    return uid + b"\x00" * (len(uid) % 2)


_US_STORAGE = b"1.2.840.10008.5.1.4.1.1.6.1\x00"  # Ultrasound Image Storage
_EXPLICIT_LE = b"1.2.840.10008.1.2.1\x00"
_IMPLICIT_LE = b"1.2.840.10008.1.2\x00"


def _dicom_associate(calling: str, called: str, rq: bool) -> bytes:
    """A-ASSOCIATE-RQ (or the -AC answering it) for ultrasound image storage."""
    ctx = _dicom_item(0x10, b"1.2.840.10008.3.1.1.1")
    if rq:
        pc = _dicom_item(0x20, b"\x01\x00\x00\x00" + _dicom_item(0x30, _US_STORAGE)
                         + _dicom_item(0x40, _EXPLICIT_LE) + _dicom_item(0x40, _IMPLICIT_LE))
    else:
        pc = _dicom_item(0x21, b"\x01\x00\x00\x00" + _dicom_item(0x40, _EXPLICIT_LE))
    user = _dicom_item(0x50, _dicom_item(0x51, struct.pack("!I", 16384))
                       + _dicom_item(0x52, b"1.3.12.2.1107.5.99.3\x00")
                       + _dicom_item(0x55, b"ACUSON_SEQ_VA30"))
    body = (struct.pack("!HH", 1, 0) + called.encode().ljust(16) + calling.encode().ljust(16)
            + bytes(32) + ctx + pc + user)
    return struct.pack("!BBI", 1 if rq else 2, 0, len(body)) + body


def _dicom_el(group: int, elem: int, value: bytes) -> bytes:
    """Implicit VR little endian element (commands)."""
    return struct.pack("<HHI", group, elem, len(value)) + value


def _dicom_ex(group: int, elem: int, vr: bytes, value: bytes) -> bytes:
    """Explicit VR little endian element (data sets)."""
    if len(value) % 2:
        value += b" " if vr in (b"CS", b"PN", b"LO", b"DA") else b"\x00"
    if vr in (b"OB", b"OW"):
        return struct.pack("<HH2sHI", group, elem, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", group, elem, vr, len(value)) + value


def _pdata(pdvs: Sequence[tuple[int, bytes]]) -> bytes:
    body = b"".join(struct.pack("!IBB", 2 + len(d), 1, mch) + d for mch, d in pdvs)
    return struct.pack("!BBI", 4, 0, len(body)) + body


def _c_store(rng: random.Random, msg_id: int, bed: int) -> tuple[bytes, bytes]:
    """P-DATA-TF PDUs of one C-STORE request, and the C-STORE response."""
    inst = _uid(rng)
    cmd = (_dicom_el(0, 0x0002, _US_STORAGE) + _dicom_el(0, 0x0100, b"\x01\x00")
           + _dicom_el(0, 0x0110, struct.pack("<H", msg_id)) + _dicom_el(0, 0x0700, b"\0\0")
           + _dicom_el(0, 0x0800, b"\x00\x00") + _dicom_el(0, 0x1000, inst))
    cmd = _dicom_el(0, 0, struct.pack("<I", len(cmd))) + cmd
    rows, cols = 600, 800
    frames = rng.randint(1, 3) if rng.random() < 0.3 else 1
    pixels = rng.randbytes(rows * cols * frames // rng.choice((4, 6, 8)))  # compressed-ish
    ds = (_dicom_ex(0x0008, 0x0016, b"UI", _US_STORAGE) + _dicom_ex(0x0008, 0x0018, b"UI", inst)
          + _dicom_ex(0x0008, 0x0060, b"CS", b"US")
          + _dicom_ex(0x0010, 0x0010, b"PN", f"DEMO^PATIENT{bed:02d}".encode())
          + _dicom_ex(0x0010, 0x0020, b"LO", f"DEMO{bed:04d}".encode())
          + _dicom_ex(0x0028, 0x0010, b"US", struct.pack("<H", rows))
          + _dicom_ex(0x0028, 0x0011, b"US", struct.pack("<H", cols))
          + _dicom_ex(0x7FE0, 0x0010, b"OB", pixels))
    pdus = [_pdata([(0x03, cmd)])]
    step = 16384 - 6
    for i in range(0, len(ds), step):
        pdus.append(_pdata([(0x02 if i + step >= len(ds) else 0x00, ds[i:i + step])]))
    rsp = (_dicom_el(0, 0x0002, _US_STORAGE) + _dicom_el(0, 0x0100, b"\x01\x80")
           + _dicom_el(0, 0x0120, struct.pack("<H", msg_id)) + _dicom_el(0, 0x0800, b"\x01\x01")
           + _dicom_el(0, 0x0900, b"\x00\x00") + _dicom_el(0, 0x1000, inst))
    rsp = _dicom_el(0, 0, struct.pack("<I", len(rsp))) + rsp
    return b"".join(pdus), _pdata([(0x03, rsp)])


def _dns_name(name: str) -> bytes:
    return b"".join(bytes((len(x),)) + x.encode() for x in name.split(".")) + b"\x00"


def _dns_query(qid: int, name: str) -> bytes:
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + _dns_name(name) + b"\x00\x01\x00\x01"


def _dns_answer(qid: int, name: str, ip: str | None) -> bytes:
    q = _dns_name(name) + b"\x00\x01\x00\x01"
    if ip is None:
        return struct.pack("!HHHHHH", qid, 0x8183, 1, 0, 0, 0) + q
    ans = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 300, 4) + p.ip_bytes(ip)
    return struct.pack("!HHHHHH", qid, 0x8180, 1, 1, 0, 0) + q + ans


def _ntp_time(ts_ns: int) -> int:
    sec, frac = divmod(ts_ns, _S)
    return ((sec + 2_208_988_800) << 32) | (frac << 32) // _S


def _ntp(mode: int, ts_ns: int, orig: int = 0, recv_ns: int = 0) -> bytes:
    if mode == 3:
        return struct.pack("!BBbb", 0x23, 0, 6, -20) + bytes(36) + struct.pack(
            "!Q", _ntp_time(ts_ns))
    return (struct.pack("!BBbbII4s", 0x24, 2, 6, -23, 0x00000120, 0x00000340,
                        p.ip_bytes("10.20.0.1"))
            + struct.pack("!QQQQ", _ntp_time(ts_ns - 17 * _S), orig, _ntp_time(recv_ns),
                          _ntp_time(ts_ns)))


def _dhcp(op: int, kind: int, xid: int, mac: str, *, yiaddr: str = "0.0.0.0",
          giaddr: str = "0.0.0.0", hostname: str | None = None,
          request: str | None = None, offer: tuple[str, str] | None = None,
          vendor_class: str | None = None) -> bytes:
    """A DHCP message; ``offer`` is (router, subnet mask) for OFFER and ACK."""
    hdr = struct.pack("!BBBBIHH4s4s4s4s16s64s128s", op, 1, 6, 1 if op == 2 else 0, xid, 0,
                      0x8000, bytes(4), p.ip_bytes(yiaddr), bytes(4), p.ip_bytes(giaddr),
                      p.mac_bytes(mac), b"", b"")
    opts = [(53, bytes((kind,)))]
    if op == 1:
        opts.append((61, b"\x01" + p.mac_bytes(mac)))
        opts.append((57, struct.pack("!H", 1500)))
    if request is not None:
        opts.append((50, p.ip_bytes(request)))
    if kind == 3 or op == 2:
        opts.append((54, p.ip_bytes("10.20.0.67")))
    if hostname:
        opts.append((12, hostname.encode()))
    if vendor_class and op == 1:
        opts.append((60, vendor_class.encode()))
    if op == 1:
        opts.append((55, bytes((1, 3, 6, 15, 42, 51, 58, 59))))
    if offer is not None:
        opts += [(51, struct.pack("!I", 86400)), (58, struct.pack("!I", 43200)),
                 (1, p.ip_bytes(offer[1])), (3, p.ip_bytes(offer[0])),
                 (6, p.ip_bytes("10.20.0.53")), (15, b"hosp.example"),
                 (42, p.ip_bytes("10.20.0.123"))]
    body = b"\x63\x82\x53\x63" + b"".join(bytes((c, len(v))) + v for c, v in opts) + b"\xff"
    return (hdr + body).ljust(300, b"\x00")


def _smb2(cmd: int, msg_id: int, body: bytes, response: bool = False, status: int = 0,
          session: int = 0) -> bytes:
    hdr = struct.pack("<4sHHIHHIIQIIQ16s", b"\xfeSMB", 64, 1, status, cmd, 31,
                      1 if response else 0, 0, msg_id, 0xFEFF, 0, session, bytes(16))
    msg = hdr + body
    return struct.pack("!I", len(msg)) + msg


def _smb_negotiate(rng: random.Random) -> bytes:
    dialects = [0x0202, 0x0210, 0x0300, 0x0302]
    return _smb2(0, 0, struct.pack("<HHHHI16sQ", 36, len(dialects), 1, 0, 0x7F,
                                   rng.randbytes(16), 0)
                 + struct.pack(f"<{len(dialects)}H", *dialects))


def _smb_negotiate_rsp(rng: random.Random, ts_ns: int) -> bytes:
    ft = ts_ns // 100 + 116_444_736_000_000_000
    body = struct.pack("<HHHH16sIIIIQQHHI", 65, 1, 0x0302, 0, rng.randbytes(16), 0x2F,
                       8388608, 8388608, 8388608, ft, 0, 0, 0, 0)
    return _smb2(0, 0, body, response=True)


def _smb_session_setup(msg_id: int, ntlm: bytes, session: int = 0) -> bytes:
    body = struct.pack("<HBBIIHHQ", 25, 0, 1, 1, 0, 88, len(ntlm), 0) + ntlm
    return _smb2(1, msg_id, body, session=session)


def _smb_session_rsp(msg_id: int, ntlm: bytes, status: int, session: int) -> bytes:
    body = struct.pack("<HHHH", 9, 0, 72, len(ntlm)) + ntlm
    return _smb2(1, msg_id, body, response=True, status=status, session=session)


def _ntlm(kind: int, rng: random.Random, ts_ns: int = 0) -> bytes:
    """NTLMSSP NEGOTIATE (1), CHALLENGE (2) or AUTHENTICATE (3) with an NTLMv2 response."""
    if kind == 1:
        return b"NTLMSSP\x00" + struct.pack("<II", 1, 0xE2088297) + bytes(16)
    if kind == 2:
        return (b"NTLMSSP\x00" + struct.pack("<IHHII", 2, 0, 0, 56, 0xE2898215)
                + rng.randbytes(8) + bytes(8) + bytes(8) + b"\x0a\x00\x63\x45\x00\x00\x00\x0f")
    av = b"".join(struct.pack("<HH", t, len(v)) + v for t, v in (
        (2, "HOSP".encode("utf-16-le")), (1, "WS-NURSE1".encode("utf-16-le")), (0, b"")))
    filetime = ts_ns // 100 + 116_444_736_000_000_000
    nt = (rng.randbytes(16) + b"\x01\x01" + bytes(6) + struct.pack("<Q", filetime)
          + rng.randbytes(8) + bytes(4) + av + bytes(4))
    fields = [bytes(24), nt, "HOSP".encode("utf-16-le"), "svc-backup".encode("utf-16-le"),
              "WS-CART1".encode("utf-16-le"), rng.randbytes(16)]
    offset, heads = 64, b""
    for value in fields:
        heads += struct.pack("<HHI", len(value), len(value), offset)
        offset += len(value)
    return (b"NTLMSSP\x00" + struct.pack("<I", 3) + heads + struct.pack("<I", 0xE2888215)
            + b"".join(fields))


def _lldp(sw: Device) -> bytes:
    def tlv(t: int, v: bytes) -> bytes:
        return struct.pack("!H", t << 9 | len(v)) + v
    return (tlv(1, b"\x04" + p.mac_bytes(sw.mac)) + tlv(2, b"\x05Gi1/0/48")
            + tlv(3, struct.pack("!H", 120)) + tlv(4, b"uplink to core-rtr")
            + tlv(5, sw.name.encode())
            + tlv(6, b"Cisco IOS Software, C2960X Software (C2960X-UNIVERSALK9-M), "
                     b"Version 15.2(7)E8, RELEASE SOFTWARE (fc1)")
            + tlv(7, struct.pack("!HH", 0x14, 0x04)) + tlv(0, b""))


def _stp_bpdu(sw: Device) -> bytes:
    bridge = struct.pack("!H", 0x8000 | 1) + p.mac_bytes(sw.mac)
    root = struct.pack("!H", 0x6000 | 1) + p.mac_bytes(ROUTER_MAC)
    bpdu = (struct.pack("!HBBB", 0, 2, 2, 0x3C) + root + struct.pack("!I", 4) + bridge
            + struct.pack("!HHHHHB", 0x8030, 1 << 8, 20 << 8, 2 << 8, 15 << 8, 0))
    return b"\x42\x42\x03" + bpdu


# --- conversations ----------------------------------------------------------------------


class _Tcp:
    """One TCP connection between a client and a server, as frames seen on the ward."""

    def __init__(self, sim: _Sim, cli: Device, srv: Device, sport: int, dport: int,
                 v6: bool = False) -> None:
        rng = sim.rng
        self.ends = (cli, srv)
        self.ports = (sport, dport)
        self.v6 = v6
        self.ips = (cli.ipv6, srv.ipv6) if v6 else (cli.ip, srv.ip)
        self.vlan = cli.vlan if cli.vlan is not None else srv.vlan
        self.seq = [rng.getrandbits(32), rng.getrandbits(32)]
        self.ident = [rng.getrandbits(16), rng.getrandbits(16)]
        self.window = [64240 if cli.ttl >= 128 else 64256, 65160]
        self.mss = 1440 if v6 else 1460
        # round trip from the tap to each side and back: local ~0.2 ms, data centre ~0.6 ms
        self.rtt = [sim.rtt(cli), sim.rtt(srv)]

    def frame(self, side: int, flags: str, data: bytes = b"", options: bytes = b"") -> bytes:
        """A segment from side 0 (client) or 1 (server); advances the sequence numbers."""
        a, b = self.ends[side], self.ends[1 - side]
        src, dst = self.ips[side], self.ips[1 - side]
        assert src is not None and dst is not None
        seq = self.seq[side]
        ack = self.seq[1 - side] if "A" in flags else 0
        seg = p.tcp(self.ports[side], self.ports[1 - side], flags, seq, ack, data, options,
                    window=self.window[side], src=src, dst=dst)
        self.seq[side] = (seq + len(data) + ("S" in flags) + ("F" in flags)) & 0xFFFFFFFF
        return _ip_frame(a, b, src, dst, p.IPPROTO_TCP, seg, self.vlan, self.ident, side)


def _ip_frame(a: Device, b: Device, src: str, dst: str, proto: int, l4: bytes,
              vlan: int | None, ident: list[int] | None = None, side: int = 0) -> bytes:
    if ":" in src:
        pkt = p.ipv6(src, dst, proto, l4, hop_limit=a.ttl)
        ethertype = p.ETH_IPV6
    else:
        ip_id = 0
        if ident is not None:
            ip_id = ident[side]
            ident[side] = (ip_id + 1) & 0xFFFF
        pkt = p.ipv4(src, dst, proto, l4, ttl=a.ttl, ident=ip_id, flags_df=proto == 6)
        ethertype = p.ETH_IPV4
    return _eth(b.mac, a.mac, ethertype, pkt, vlan)


def _eth(dst: str, src: str, ethertype: int, payload: bytes, vlan: int | None) -> bytes:
    return p.ether(dst, src, ethertype, payload, () if vlan is None else (vlan,), pad=True)


class _Sim:
    """Shared state of one simulated ward: devices, random numbers, ephemeral ports."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.dev = {d.name: d for d in DEVICES + SERVERS + UNKNOWN + (_INTERNET,)}
        self._ports: dict[str, int] = {}
        self._ident = itertools.count(rng.randint(0x100, 0x7000))

    def rtt(self, d: Device) -> int:
        base = 550 * _US if d.mac == ROUTER_MAC else 180 * _US
        return base + self.rng.randint(0, 120) * _US

    def port(self, d: Device) -> int:
        """Next ephemeral source port of a device (Windows counts up, others jump)."""
        lo, hi = (49152, 65535) if d.ttl >= 128 else (32768, 60999)
        cur = self._ports.get(d.name)
        if cur is None:
            cur = self.rng.randint(lo, hi)
        step = 1 if d.ttl >= 128 else self.rng.randint(1, 97)
        cur = lo + (cur - lo + step) % (hi - lo)
        self._ports[d.name] = cur
        return cur

    def gateway(self, d: Device) -> Device:
        return self.dev["core-rtr.104" if d.vlan == 104 else "core-rtr"]

    # --- TCP building blocks: each appends to ``out`` and returns the time it ends ---

    def handshake(self, out: list[Pkt], c: _Tcp, t: int) -> int:
        syn_opts = p.tcp_syn_options(c.mss, 8 if c.ends[0].ttl >= 128 else 7)
        out.append((t, c.frame(0, "S", options=syn_opts)))
        t += c.rtt[1]
        out.append((t, c.frame(1, "SA", options=p.tcp_syn_options(c.mss, 7))))
        t += c.rtt[0]
        out.append((t, c.frame(0, "A")))
        return t

    def send(self, out: list[Pkt], c: _Tcp, side: int, data: bytes, t: int,
             ack_last: bool = True) -> int:
        """``data`` from ``side`` in MSS segments; the peer ACKs every second segment."""
        rng = self.rng
        segs = [data[i:i + c.mss] for i in range(0, len(data), c.mss)]
        end = t
        for i, seg in enumerate(segs):
            last = i == len(segs) - 1
            out.append((t, c.frame(side, "PA" if last else "A", seg)))
            end = max(end, t)
            if i % 2 == 1 or (last and ack_last):
                ta = t + c.rtt[1 - side] + (40 * _MS if i % 2 == 0 else 0)
                out.append((ta, c.frame(1 - side, "A")))
                end = max(end, ta)
            t += (len(seg) + 78) * 8 + rng.randint(0, 40) * _US
        return end

    def close(self, out: list[Pkt], c: _Tcp, t: int, side: int = 0) -> int:
        out.append((t, c.frame(side, "FA")))
        t += c.rtt[1 - side]
        out.append((t, c.frame(1 - side, "FA")))
        t += c.rtt[side]
        out.append((t, c.frame(side, "A")))
        return t

    def tls(self, out: list[Pkt], c: _Tcp, t: int, sni: str | None,
            exchanges: Sequence[tuple[int, int]], think: tuple[int, int]) -> int:
        """A whole TLS 1.3 connection: handshake, request/response pairs, FIN teardown."""
        rng = self.rng
        t = self.handshake(out, c, t) + rng.randint(50, 400) * _US
        t = self.send(out, c, 0, _client_hello(rng, sni), t, ack_last=False)
        t = self.send(out, c, 1, _server_flight(rng), t + c.rtt[1] + rng.randint(1, 4) * _MS)
        t = self.send(out, c, 0, _tls_client_finish(rng), t + rng.randint(1, 3) * _MS,
                      ack_last=False)
        for req, resp in exchanges:
            t = self.send(out, c, 0, _tls_data(rng, req), t + rng.randint(100, 900) * _US,
                          ack_last=False)
            t = self.send(out, c, 1, _tls_data(rng, resp), t + c.rtt[1]
                          + rng.randint(2, 30) * _MS)
            t += rng.randint(*think)
        return self.close(out, c, t)

    # --- small exchanges ---

    def udp_pair(self, out: list[Pkt], a: Device, b: Device, sport: int, dport: int,
                 q: bytes, r: bytes | Callable[[int], bytes], t: int) -> int:
        out.append((t, _ip_frame(a, b, a.ip, b.ip, p.IPPROTO_UDP,
                                 p.udp(sport, dport, q, src=a.ip, dst=b.ip), a.vlan)))
        t += self.rtt(b)
        payload = r(t) if callable(r) else r
        out.append((t, _ip_frame(b, a, b.ip, a.ip, p.IPPROTO_UDP,
                                 p.udp(dport, sport, payload, src=b.ip, dst=a.ip), a.vlan)))
        return t

    def dns(self, out: list[Pkt], d: Device, name: str, ip: str | None, t: int) -> int:
        qid = self.rng.getrandbits(16)
        return self.udp_pair(out, d, self.dev["dns"], self.port(d), 53, _dns_query(qid, name),
                             _dns_answer(qid, name, ip), t)

    def ntp(self, out: list[Pkt], d: Device, t: int) -> int:
        sport = self.port(d) if d.ttl >= 128 else 123
        q = _ntp(3, t)
        orig = struct.unpack("!Q", q[40:48])[0]
        return self.udp_pair(out, d, self.dev["ntp"], sport, 123, q,
                             lambda tr: _ntp(4, tr - 30 * _US, orig, tr - 60 * _US), t)

    def arp(self, out: list[Pkt], asker: Device, target: Device, t: int) -> int:
        vlan = asker.vlan if asker.vlan is not None else target.vlan
        req = p.arp(p.ARP_REQUEST, asker.mac, asker.ip, "00:00:00:00:00:00", target.ip)
        out.append((t, _eth(p.BROADCAST_MAC, asker.mac, p.ETH_ARP, req, vlan)))
        t += self.rng.randint(60, 400) * _US
        rep = p.arp(p.ARP_REPLY, target.mac, target.ip, asker.mac, asker.ip)
        out.append((t, _eth(asker.mac, target.mac, p.ETH_ARP, rep, vlan)))
        return t

    def ping(self, out: list[Pkt], d: Device, ident: int, seq: int, t: int) -> int:
        gw = self.gateway(d)
        pad = struct.pack("!Q", t // _US) + bytes(range(0x10, 0x38))
        out.append((t, _ip_frame(d, gw, d.ip, gw.ip, p.IPPROTO_ICMP,
                                 p.icmp(8, 0, ident, seq, pad), d.vlan, [next(self._ident)])))
        t += self.rng.randint(300, 900) * _US
        reply = replace(gw, ttl=255)
        out.append((t, _ip_frame(reply, d, gw.ip, d.ip, p.IPPROTO_ICMP,
                                 p.icmp(0, 0, ident, seq, pad), d.vlan, [next(self._ident)])))
        return t

    def icmp6(self, out: list[Pkt], a_mac: str, dst_mac: str, src: str, dst: str, itype: int,
              body: bytes, t: int, ext: Sequence[tuple[int, bytes]] = ()) -> None:
        msg = p.icmpv6(itype, 0, body, src=src, dst=dst)
        pkt = p.ipv6(src, dst, p.IPPROTO_ICMPV6, msg, hop_limit=1 if ext else 255,
                     ext_headers=ext)
        out.append((t, _eth(dst_mac, a_mac, p.ETH_IPV6, pkt, None)))


def _flush(out: list[Pkt]) -> Iterator[Pkt]:
    out.sort(key=_ts)
    yield from out
    out.clear()


def _ts(pkt: Pkt) -> int:
    return pkt[0]


# --- legitimate activity: endless, time-ordered streams ----------------------------------


def _pump(sim: _Sim, d: Device, t: int) -> Iterator[Pkt]:
    rng, srv = sim.rng, sim.dev["pump-server"]
    out: list[Pkt] = []
    while True:
        if rng.random() < 0.2:
            t = sim.dns(out, d, "pumpserver.hosp.example", srv.ip, t) + rng.randint(1, 5) * _MS
        c = _Tcp(sim, d, srv, sim.port(d), 443)
        ex = [(rng.randint(300, 1400), rng.randint(200, 900))
              for _ in range(rng.choice((1, 1, 2, 3)))]
        t = sim.tls(out, c, t, "pumpserver.hosp.example", ex, (20 * _MS, 400 * _MS))
        yield from _flush(out)
        t += rng.randint(15, 45) * _S + rng.randint(0, 999) * _MS


def _monitor(sim: _Sim, d: Device, bed: int, t: int, v6: bool, established: bool
             ) -> Iterator[Pkt]:
    rng, station = sim.rng, sim.dev["central"]
    out: list[Pkt] = []
    c = _Tcp(sim, d, station, sim.port(d), 2575, v6=v6)
    if not established:
        t = sim.handshake(out, c, t)
        yield from _flush(out)
    n = rng.randint(1000, 9000)
    while True:
        t += rng.randint(1800, 2200) * _MS
        ctrl = f"{d.name[-2:]}{n:06d}"
        n += 1
        t = sim.send(out, c, 0, _hl7_oru(d, bed, ctrl, t, rng), t, ack_last=False)
        t = sim.send(out, c, 1, _hl7_ack(d, ctrl, t), t + c.rtt[1] + rng.randint(1, 6) * _MS)
        yield from _flush(out)


def _ultrasound(sim: _Sim, d: Device, t: int) -> Iterator[Pkt]:
    rng, pacs = sim.rng, sim.dev["pacs"]
    out: list[Pkt] = []
    while True:
        t += rng.randint(8, 40) * _S
        c = _Tcp(sim, d, pacs, sim.port(d), 104)
        t = sim.handshake(out, c, t)
        t = sim.send(out, c, 0, _dicom_associate("ACUSON_US01", "PACS", True), t + 200 * _US,
                     ack_last=False)
        t = sim.send(out, c, 1, _dicom_associate("ACUSON_US01", "PACS", False),
                     t + c.rtt[1] + 2 * _MS)
        bed = rng.randint(1, 6)
        for msg_id in range(1, rng.randint(1, 4) + 1):
            data, rsp = _c_store(rng, msg_id, bed)
            t = sim.send(out, c, 0, data, t + 300 * _US)
            t = sim.send(out, c, 1, rsp, t + c.rtt[1] + rng.randint(5, 40) * _MS)
        t = sim.send(out, c, 0, b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00", t + 1 * _MS,
                     ack_last=False)
        t = sim.send(out, c, 1, b"\x06\x00\x00\x00\x00\x04\x00\x00\x00\x00",
                     t + c.rtt[1] + 1 * _MS)
        t = sim.close(out, c, t + 200 * _US)
        yield from _flush(out)


_WS_NAMES = [("emr.hosp.example", "10.20.0.30"), ("wpad.hosp.example", None),
             ("pacs.hosp.example", "10.20.0.40")]


def _workstation(sim: _Sim, d: Device, t: int) -> Iterator[Pkt]:
    rng, emr = sim.rng, sim.dev["emr"]
    out: list[Pkt] = []
    while True:
        t += rng.randint(500, 4500) * _MS
        if rng.random() < 0.25:
            name, ip = rng.choice(_WS_NAMES)
            t = sim.dns(out, d, name, ip, t) + rng.randint(1, 20) * _MS
        if rng.random() < 0.06:
            t = _print_job(sim, out, d, t)
        else:
            c = _Tcp(sim, d, emr, sim.port(d), 443)
            ex = [(rng.randint(400, 1800), rng.choice((800, 2500, 6000, 12000, 40000)))
                  for _ in range(rng.randint(1, 4))]
            t = sim.tls(out, c, t, "emr.hosp.example", ex, (200 * _MS, 3 * _S))
        yield from _flush(out)


def _print_job(sim: _Sim, out: list[Pkt], d: Device, t: int) -> int:
    rng, prn = sim.rng, sim.dev["prn-ward"]
    c = _Tcp(sim, d, prn, sim.port(d), 9100)
    t = sim.handshake(out, c, t)
    job = (b"\x1b%-12345X@PJL JOB NAME=\"Medication chart\"\r\n@PJL ENTER LANGUAGE=PCL\r\n"
           + b"\x1bE\x1b&l26A" + rng.randbytes(rng.randint(20_000, 90_000))
           + b"\x1bE\x1b%-12345X@PJL EOJ\r\n\x1b%-12345X")
    t = sim.send(out, c, 0, job, t + 300 * _US)
    return sim.close(out, c, t + 5 * _MS)


def _ntp_loop(sim: _Sim, d: Device, t: int) -> Iterator[Pkt]:
    out: list[Pkt] = []
    t += sim.rng.randint(0, 64_000) * _MS
    while True:
        sim.ntp(out, d, t)
        yield from _flush(out)
        t += sim.rng.randint(63_000, 65_000) * _MS


def _pinger(sim: _Sim, d: Device, t: int) -> Iterator[Pkt]:
    out: list[Pkt] = []
    ident = sim.rng.getrandbits(16)
    for seq in itertools.count(1):
        t += sim.rng.randint(9_900, 10_100) * _MS
        sim.ping(out, d, ident, seq & 0xFFFF, t)
        yield from _flush(out)


def _arp_chatter(sim: _Sim, t: int) -> Iterator[Pkt]:
    rng = sim.rng
    out: list[Pkt] = []
    ward = [d for d in DEVICES if d.device_class not in ("network gear",)]
    while True:
        t += int(rng.expovariate(1 / 6) * _S)
        d = rng.choice(ward)
        if t < START_NS + _JOIN_S.get(d.name, -9) * _S + 3 * _S:
            continue  # not on the network yet
        gw = sim.gateway(d)
        if d.device_class == "patient monitor" and rng.random() < 0.5:
            sim.arp(out, d, sim.dev["central"], t)
        elif rng.random() < 0.5:
            sim.arp(out, d, gw, t)
        else:
            sim.arp(out, gw, d, t)
        yield from _flush(out)


def _switch(sim: _Sim, t: int) -> Iterator[Pkt]:
    sw = sim.dev["sw-ward4b"]
    bpdu = _stp_bpdu(sw)
    for i in itertools.count():
        if i % 15 == 0:
            yield t, _eth("01:80:c2:00:00:0e", sw.mac, p.ETH_LLDP, _lldp(sw), None)
        yield t + 3 * _MS, p.ether("01:80:c2:00:00:00", sw.mac, len(bpdu), bpdu, pad=True)
        t += 2 * _S


def _v6_background(sim: _Sim, t: int) -> Iterator[Pkt]:
    """Router advertisements and neighbour unreachability detection on the monitor LAN."""
    rng = sim.rng
    out: list[Pkt] = []
    rtr, mon, st = sim.dev["core-rtr"], sim.dev["mon-bed01"], sim.dev["central"]
    assert mon.ipv6 is not None and st.ipv6 is not None
    rtr_ll = p.link_local(rtr.mac)
    while True:
        t += rng.randint(25, 40) * _S
        if rng.random() < 0.3:
            sim.icmp6(out, rtr.mac, p.multicast_mac("ff02::1"), rtr_ll, "ff02::1", 134,
                      _router_advert(rtr.mac), t)
        if rng.random() < 0.3:  # the router checks a neighbour's link-local address
            ll = p.link_local(mon.mac)
            sim.icmp6(out, rtr.mac, mon.mac, rtr_ll, ll, 135, p.nd_solicit(ll, rtr.mac), t)
            sim.icmp6(out, mon.mac, rtr.mac, ll, rtr_ll, 136, p.nd_advert(ll, mon.mac),
                      t + rng.randint(80, 300) * _US)
            t += 1 * _MS
        a, b = (mon, st) if rng.random() < 0.5 else (st, mon)
        assert a.ipv6 is not None and b.ipv6 is not None
        sim.icmp6(out, a.mac, b.mac, a.ipv6, b.ipv6, 135, p.nd_solicit(b.ipv6, a.mac), t)
        sim.icmp6(out, b.mac, a.mac, b.ipv6, a.ipv6, 136, p.nd_advert(b.ipv6, b.mac),
                  t + rng.randint(80, 300) * _US)
        yield from _flush(out)


def _router_advert(mac: str) -> bytes:
    prefix = (struct.pack("!BBBBII", 3, 4, 64, 0xC0, 2_592_000, 604_800) + bytes(4)
              + p.ip_bytes("fd00:40:1::"))
    return (struct.pack("!BBHII", 64, 0, 1800, 0, 0) + b"\x01\x01" + p.mac_bytes(mac)
            + struct.pack("!BBHI", 5, 1, 0, 1500) + prefix)


_JOIN_S = {"pump-04": 4, "ws-doc1": 9}  # seconds into the capture: DHCP, then traffic
# pumps confirming their leases (INIT-REBOOT) early in the capture, with their vendor class
_REBOOT_S = {"pump-01": 1.2, "pump-02": 1.6, "pump-03": 2.1, "pump-05": 2.7, "pump-06": 3.3}
# DHCP option 60 as the pumps send it: maker, model and software version
VENDOR_CLASSES = {
    "pump-01": "BBraun SpaceCom L80", "pump-02": "BBraun SpaceCom L80",
    "pump-03": "BBraun SpaceCom", "pump-04": "Baxter Sigma Spectrum 8.01.01",
    "pump-05": "Baxter Sigma Spectrum 8.01.01", "pump-06": "Alaris 8015 9.19.2",
}


def _legit_streams(sim: _Sim, t0: int) -> list[Iterator[Pkt]]:
    dev = sim.dev
    streams: list[Iterator[Pkt]] = []

    def after_join(name: str, t: int) -> int:
        return max(t, t0 + (_JOIN_S[name] + 3) * _S) if name in _JOIN_S else t

    for i, name in enumerate(("pump-01", "pump-02", "pump-03", "pump-04", "pump-05",
                              "pump-06")):
        start = after_join(name, t0 + sim.rng.randint(0, 20_000) * _MS)
        streams.append(_pump(sim, dev[name], start + i * 7 * _MS))
    for bed in range(1, 7):
        name = f"mon-bed{bed:02d}"
        v6 = bed == 1
        start = t0 + (2 * _S if v6 else sim.rng.randint(10, 4000) * _MS)
        streams.append(_monitor(sim, dev[name], bed, start, v6, established=bed in (2, 5)))
    streams.append(_ultrasound(sim, dev["us-01"], t0))
    for name in ("ws-nurse1", "ws-nurse2", "ws-doc1", "ws-cart1"):
        streams.append(_workstation(sim, dev[name], after_join(name, t0)))
    for d in DEVICES:
        if d.device_class in ("infusion pump", "patient monitor", "workstation",
                              "imaging modality", "central station"):
            streams.append(_ntp_loop(sim, d, after_join(d.name, t0)))
    streams.append(_pinger(sim, dev["mon-bed05"], t0))
    streams.append(_pinger(sim, dev["mon-bed06"], t0 + 4 * _S))
    streams.append(_pinger(sim, dev["ws-nurse1"], t0 + 7 * _S))
    streams.append(_arp_chatter(sim, t0))
    streams.append(_switch(sim, t0 + 1 * _S))
    streams.append(_v6_background(sim, t0 + 3 * _S))
    return streams


# --- fixed events: must be in the capture whatever its length ---------------------------


def _v6_bringup(sim: _Sim, out: list[Pkt], t: int) -> None:
    """mon-bed01 comes up: MLD, DAD, RS/RA, then resolves the station's address."""
    mon, st, rtr = sim.dev["mon-bed01"], sim.dev["central"], sim.dev["core-rtr"]
    assert mon.ipv6 is not None and st.ipv6 is not None
    ll, rtr_ll = p.link_local(mon.mac), p.link_local(rtr.mac)
    groups = [p.solicited_node(ll), p.solicited_node(mon.ipv6)]
    report = struct.pack("!HH", 0, len(groups)) + b"".join(
        struct.pack("!BBH", 4, 0, 0) + p.ip_bytes(g) for g in groups)
    hbh = [p.hop_by_hop(p.router_alert(0))]
    sim.icmp6(out, mon.mac, p.multicast_mac("ff02::16"), "::", "ff02::16", 143, report, t,
              ext=hbh)
    t += 2 * _MS
    sim.icmp6(out, mon.mac, p.multicast_mac(groups[0]), "::", groups[0], 135,
              p.nd_solicit(ll), t)
    t += 1000 * _MS
    sim.icmp6(out, mon.mac, p.multicast_mac("ff02::16"), ll, "ff02::16", 143, report, t,
              ext=hbh)
    sim.icmp6(out, mon.mac, p.multicast_mac("ff02::2"), ll, "ff02::2", 133,
              bytes(4) + b"\x01\x01" + p.mac_bytes(mon.mac), t + 1 * _MS)
    t += 3 * _MS
    sim.icmp6(out, rtr.mac, p.multicast_mac("ff02::1"), rtr_ll, "ff02::1", 134,
              _router_advert(rtr.mac), t)
    t += 4 * _MS
    sim.icmp6(out, mon.mac, p.multicast_mac(groups[1]), "::", groups[1], 135,
              p.nd_solicit(mon.ipv6), t)
    t += 900 * _MS  # then ask for the station, just before the HL7 connection at 2 s
    target = p.solicited_node(st.ipv6)
    sim.icmp6(out, mon.mac, p.multicast_mac(target), mon.ipv6, target, 135,
              p.nd_solicit(st.ipv6, mon.mac), t)
    sim.icmp6(out, st.mac, mon.mac, st.ipv6, mon.ipv6, 136, p.nd_advert(st.ipv6, st.mac),
              t + 150 * _US)


def _dhcp_join(sim: _Sim, out: list[Pkt], d: Device, t: int) -> None:
    """A device boots: DISCOVER, OFFER, REQUEST, ACK through the router's relay, then GARP."""
    gw = replace(sim.gateway(d), ttl=255)
    xid = sim.rng.getrandbits(32)
    mask = "255.255.255.0"
    bcast = Device("broadcast", p.BROADCAST_MAC, "255.255.255.255", d.vlan, "", "")
    zero = Device(d.name, d.mac, "0.0.0.0", d.vlan, "", "", ttl=64)
    vendor = VENDOR_CLASSES.get(d.name)
    steps = [
        (zero, 68, 67, _dhcp(1, 1, xid, d.mac, hostname=d.name, vendor_class=vendor)),
        (gw, 67, 68, _dhcp(2, 2, xid, d.mac, yiaddr=d.ip, giaddr=gw.ip, offer=(gw.ip, mask))),
        (zero, 68, 67, _dhcp(1, 3, xid, d.mac, hostname=d.name, request=d.ip,
                             vendor_class=vendor)),
        (gw, 67, 68, _dhcp(2, 5, xid, d.mac, yiaddr=d.ip, giaddr=gw.ip, offer=(gw.ip, mask))),
    ]
    for src, sport, dport, msg in steps:
        l4 = p.udp(sport, dport, msg, src=src.ip, dst=bcast.ip)
        out.append((t, _ip_frame(src, bcast, src.ip, bcast.ip, p.IPPROTO_UDP, l4, d.vlan,
                                 [sim.rng.getrandbits(16)])))
        t += sim.rng.randint(2, 600) * _MS
    garp = p.arp(p.ARP_REQUEST, d.mac, d.ip, "00:00:00:00:00:00", d.ip)
    out.append((t + 50 * _MS, _eth(p.BROADCAST_MAC, d.mac, p.ETH_ARP, garp, d.vlan)))


def _dhcp_reboot(sim: _Sim, out: list[Pkt], d: Device, t: int) -> None:
    """A device that kept its lease confirms it (INIT-REBOOT: a broadcast REQUEST, the ACK)."""
    gw = replace(sim.gateway(d), ttl=255)
    xid = sim.rng.getrandbits(32)
    bcast = Device("broadcast", p.BROADCAST_MAC, "255.255.255.255", d.vlan, "", "")
    zero = Device(d.name, d.mac, "0.0.0.0", d.vlan, "", "", ttl=64)
    steps = [
        (zero, 68, 67, _dhcp(1, 3, xid, d.mac, hostname=d.name, request=d.ip,
                             vendor_class=VENDOR_CLASSES.get(d.name))),
        (gw, 67, 68, _dhcp(2, 5, xid, d.mac, yiaddr=d.ip, giaddr=gw.ip,
                           offer=(gw.ip, "255.255.255.0"))),
    ]
    for src, sport, dport, msg in steps:
        l4 = p.udp(sport, dport, msg, src=src.ip, dst=bcast.ip)
        out.append((t, _ip_frame(src, bcast, src.ip, bcast.ip, p.IPPROTO_UDP, l4, d.vlan,
                                 [sim.rng.getrandbits(16)])))
        t += sim.rng.randint(2, 40) * _MS


def _violations(sim: _Sim, out: list[Pkt], t0: int, span: int) -> list[Violation]:
    rng, dev = sim.rng, sim.dev
    found: list[Violation] = []

    # 1. an infusion pump calls home to an internet address
    pump = dev["pump-03"]
    c = _Tcp(sim, pump, dev["internet"], sim.port(pump), 443)
    c.rtt[1] = 24 * _MS
    sim.tls(out, c, t0 + span * 30 // 100, "telemetry.pumpvendor-cloud.com",
            [(rng.randint(2000, 6000), 400)], (10 * _MS, 50 * _MS))
    found.append(Violation("infusion pump connects to an internet address", pump.ip,
                           INTERNET_IP, "tcp", 443))

    # 2. an unknown device (a Raspberry Pi nobody listed) talks to the EMR
    pi, emr = dev["rogue-pi"], dev["emr"]
    t = sim.arp(out, pi, dev["core-rtr"], t0 + span * 45 // 100) + 2 * _MS
    c = _Tcp(sim, pi, emr, sim.port(pi), 443)
    sim.tls(out, c, t, "emr.hosp.example", [(900, 30000), (700, 12000)],
            (300 * _MS, 900 * _MS))
    found.append(Violation("unknown device talks to the EMR", pi.ip, emr.ip, "tcp", 443))

    # 3. a compromised workstation SYN-scans the PACS; closed ports answer RST
    ws, pacs = dev["ws-cart1"], dev["pacs"]
    ports = [7, 9, 13, 21, 22, 23, 25, 26, 37, 53, 79, 80, 81, 88, 104, 106, 110, 111, 113,
             119, 135, 139, 143, 144, 179, 199, 389, 427, 443, 444, 445, 465, 513, 514, 515,
             543, 544, 548, 554, 587, 631, 646, 873, 990, 993, 995, 1025, 1026, 1027, 1433,
             1720, 1723, 1755, 1900, 2000, 2049, 2121, 2717, 3000, 3128, 3306, 3389, 4899,
             5000, 5060, 5432, 5900, 6000, 8000, 8008, 8080, 8443, 8888, 9100, 9999, 10000,
             11112, 32768, 49152, 49154]
    rng.shuffle(ports)
    open_ports = {104, 443, 11112}
    sport = rng.randint(40000, 60000)
    t = t0 + span * 60 // 100
    for port in ports:
        c = _Tcp(sim, ws, pacs, sport, port)
        out.append((t, c.frame(0, "S", options=p.tcp_syn_options(1460, None, False))))
        ta = t + c.rtt[1]
        if port in open_ports:
            out.append((ta, c.frame(1, "SA", options=p.tcp_syn_options(1460, 7))))
            out.append((ta + c.rtt[0], c.frame(0, "R")))
        else:
            c.seq[1] = 0
            out.append((ta, c.frame(1, "RA")))
        found.append(Violation("port scan of the PACS from a workstation", ws.ip, pacs.ip,
                               "tcp", port))
        t += rng.randint(30, 400) * _US

    # 4. SMB lateral movement: workstation to workstation on 445
    t = t0 + span * 72 // 100
    for target, answers in (("ws-nurse1", True), ("ws-doc1", False)):
        peer = dev[target]
        t = sim.arp(out, ws, peer, t) + 1 * _MS
        c = _Tcp(sim, ws, peer, sim.port(ws), 445)
        if answers:
            t = sim.handshake(out, c, t)
            sess = rng.getrandbits(64)
            msgs = [
                (0, _smb_negotiate(rng)), (1, _smb_negotiate_rsp(rng, t)),
                (0, _smb_session_setup(1, _ntlm(1, rng))),
                (1, _smb_session_rsp(1, _ntlm(2, rng), 0xC0000016, sess)),
                (0, _smb_session_setup(2, _ntlm(3, rng, t), sess)),
                (1, _smb_session_rsp(2, b"", 0, sess)),
            ]
            for side, m in msgs:
                t = sim.send(out, c, side, m, t + rng.randint(200, 2000) * _US,
                             ack_last=False)
            t = sim.close(out, c, t + 10 * _MS)
        else:  # the firewall drops it: SYN and two retransmissions
            syn_opts = p.tcp_syn_options(1460, 8)
            for k, delay in enumerate((0, 1 * _S, 2 * _S)):
                t += delay
                if k:
                    c.seq[0] = (c.seq[0] - 1) & 0xFFFFFFFF
                out.append((t, c.frame(0, "S", options=syn_opts)))
        found.append(Violation("SMB lateral movement between workstations", ws.ip, peer.ip,
                               "tcp", 445))
        t += 3 * _S
    return found


# --- the demo ward ------------------------------------------------------------------------


def write_demo_ward(path: str | Path, packets: int = 20000, seed: int = 1) -> DemoWard:
    """Write ``packets`` frames (exactly) of the demo ward to a classic pcap at ``path``.

    The same ``seed`` gives the same file. About 60 packets/s of ward time: the default
    20000 packets are about five and a half minutes.
    """
    if packets < MIN_PACKETS:
        raise ValueError(f"the demo ward needs at least {MIN_PACKETS} packets")
    sim = _Sim(random.Random(f"wardtap-demo:{seed}"))
    t0 = START_NS
    fixed: list[Pkt] = []
    _v6_bringup(sim, fixed, t0 + 300 * _MS)
    for name, at in _JOIN_S.items():
        _dhcp_join(sim, fixed, sim.dev[name], t0 + at * _S)
    rebooting = _Sim(random.Random(f"wardtap-demo:{seed}:reboot"))  # the ward's own draws
    for name, when in _REBOOT_S.items():                              # stay as they were
        _dhcp_reboot(rebooting, fixed, rebooting.dev[name], t0 + int(when * _S))
    n_fixed_early = len(fixed)
    # the violations' own packets, sized before the legitimate stream is cut to fit
    trial: list[Pkt] = []
    _violations(_Sim(random.Random(f"wardtap-demo:{seed}:v")), trial, t0, 100 * _S)
    n_legit = packets - n_fixed_early - len(trial)
    legit = list(itertools.islice(_checked(heapq.merge(*_legit_streams(sim, t0), key=_ts)),
                                  n_legit))
    span = legit[-1][0] - t0
    violations = _violations(_Sim(random.Random(f"wardtap-demo:{seed}:v")), fixed, t0, span)
    fixed.sort(key=_ts)
    with open(path, "wb") as f:
        w = PcapWriter(f)
        count = 0
        last = t0
        for ts, frame in heapq.merge(legit, fixed, key=_ts):
            w.write(frame, ts)
            count += 1
            last = ts
    assert count == packets, (count, packets)
    return DemoWard(str(path), count, t0, last, list(DEVICES), list(SERVERS), list(UNKNOWN),
                    violations)


def _checked(pkts: Iterable[Pkt]) -> Iterator[Pkt]:
    last = 0
    for pkt in pkts:
        if pkt[0] < last:
            raise AssertionError("demo streams went back in time")
        last = pkt[0]
        yield pkt


# --- IMIX benchmark -------------------------------------------------------------------------

IMIX_SIZES = (64, 576, 1500)
_IMIX_PATTERN = (0,) * 7 + (1,) * 4 + (2,)


@dataclass
class _Flow:
    """A long-lived benchmark flow: templates per (direction, size) patched per packet."""

    allowed: bool
    conv: _Tcp
    templates: list[tuple[bytearray, int, int, int]]  # frame, seq offset, base sum, length
    seq: list[int]
    opened: bool = False
    packets: int = 0


def _imix_kinds() -> tuple[list[tuple[str, str, int, bool]], list[tuple[str, str, int, bool]]]:
    """(client, server, TCP port, IPv6) of the ward's allowed and denied flows."""
    allowed: list[tuple[str, str, int, bool]] = []
    for d in DEVICES:
        c = d.device_class
        if c == "infusion pump":
            allowed.append((d.name, "pump-server", 443, False))
        elif c == "patient monitor":
            allowed.append((d.name, "central", 2575, d.ipv6 is not None))
        elif c == "imaging modality":
            allowed.append((d.name, "pacs", 104, False))
        elif c == "workstation":
            allowed += [(d.name, "emr", 443, False), (d.name, "prn-ward", 9100, False)]
    denied = [("pump-03", "internet", 443, False), ("ws-cart1", "pacs", 445, False),
              ("ws-cart1", "ws-nurse1", 445, False), ("rogue-pi", "emr", 443, False)]
    return allowed, denied


def _imix_flow(sim: _Sim, cli: Device, srv: Device, dport: int, v6: bool, allowed: bool
               ) -> _Flow:
    rng = sim.rng
    conv = _Tcp(sim, cli, srv, sim.port(cli), dport, v6=v6)
    templates: list[tuple[bytearray, int, int, int]] = []
    l3 = 40 if v6 else 20
    for side in (0, 1):
        a, b = conv.ends[side], conv.ends[1 - side]
        src, dst = conv.ips[side], conv.ips[1 - side]
        assert src is not None and dst is not None
        for size in IMIX_SIZES:
            hdr = 14 + (4 if conv.vlan is not None else 0) + l3 + 20
            n = max(0, size - hdr)
            seg = p.tcp(conv.ports[side], conv.ports[1 - side], "PA" if n else "A", 0, 0,
                        rng.randbytes(n), window=conv.window[side])
            base = 0xFFFF ^ p.checksum(p.pseudo_header(src, dst, 6, len(seg)) + seg)
            frame = _ip_frame(a, b, src, dst, 6, seg, conv.vlan, [rng.getrandbits(16)] * 2)
            templates.append((bytearray(frame), hdr - 20 + 4, base, n))
    return _Flow(allowed, conv, templates, [0, 0])


def write_imix(path: str | Path, packets: int, flows: int = 2000, seed: int = 1
               ) -> ImixCapture:
    """Benchmark capture: ``flows`` long-lived ward flows, ``packets`` frames in total.

    Frame lengths as captured (FCS excluded) are 64, 576 and 1500 bytes in the ratio
    7:4:1, except IPv6 frames, which are at least 74 bytes. Flows are TCP connections of
    each ward application (a pure ACK where no payload fits); every tenth flow is one the
    demo policy denies. TCP flows open with a handshake the first time they are picked,
    then carry data with correct sequence numbers and checksums; nothing is closed.
    Timestamps advance at 1 Gbit/s line rate (preamble, FCS and gap included).
    """
    if flows < 1 or packets < 0:
        raise ValueError("write_imix needs at least one flow and a packet count >= 0")
    rng = random.Random(f"wardtap-imix:{seed}")
    sim = _Sim(rng)
    allowed_kinds, denied_kinds = _imix_kinds()
    table: list[_Flow] = []
    denied: list[Violation] = []
    for i in range(flows):
        bad = i % 10 == 9
        cli, srv, dport, v6 = rng.choice(denied_kinds if bad else allowed_kinds)
        fl = _imix_flow(sim, sim.dev[cli], sim.dev[srv], dport, v6, not bad)
        table.append(fl)
        if bad:
            desc = f"{cli} -> {srv} tcp/{dport} from port {fl.conv.ports[0]}"
            denied.append(Violation(desc, fl.conv.ips[0] or "", fl.conv.ips[1] or "", "tcp",
                                    dport))

    pack_rec = struct.Struct("<IIII").pack
    pack_seq = struct.Struct("!II").pack_into
    pack_ck = struct.Struct("!H").pack_into
    rand = rng.random
    pattern = _IMIX_PATTERN
    ts = START_NS
    written = total_bytes = 0
    out = bytearray()
    with open(path, "wb") as f:
        PcapWriter(f)
        while written < packets:
            fl = table[int(rand() * flows)]
            if not fl.opened:  # first pick: the three-way handshake
                hs: list[Pkt] = []
                sim.handshake(hs, fl.conv, 0)
                fl.opened = True
                fl.seq = fl.conv.seq
                for _, frame in hs[:packets - written]:
                    n = len(frame)
                    sec, ns = divmod(ts, 1_000_000_000)
                    out += pack_rec(sec, ns // 1000, n, n)
                    out += frame
                    fl.packets += 1
                    written += 1
                    total_bytes += n
                    ts += (n + 24) * 8
                continue
            side = 1 if rand() < 0.55 else 0
            buf, off, base, plen = fl.templates[side * 3 + pattern[int(rand() * 12)]]
            seq = fl.seq[side]  # patch sequence, acknowledgement and checksum
            ack = fl.seq[1 - side]
            pack_seq(buf, off, seq, ack)
            s = base + (seq >> 16) + (seq & 0xFFFF) + (ack >> 16) + (ack & 0xFFFF)
            s = (s & 0xFFFF) + (s >> 16)
            s = (s & 0xFFFF) + (s >> 16)
            pack_ck(buf, off + 12, ~s & 0xFFFF)
            fl.seq[side] = (seq + plen) & 0xFFFFFFFF
            n = len(buf)
            sec, ns = divmod(ts, 1_000_000_000)
            out += pack_rec(sec, ns // 1000, n, n)
            out += buf
            fl.packets += 1
            written += 1
            total_bytes += n
            ts += (n + 24) * 8
            if len(out) > 1 << 20:
                f.write(out)
                out.clear()
        f.write(out)
    ok = [fl for fl in table if fl.allowed]
    bad_flows = [fl for fl in table if not fl.allowed]
    return ImixCapture(str(path), written, flows, len(ok), len(bad_flows),
                       sum(fl.packets for fl in ok), sum(fl.packets for fl in bad_flows),
                       total_bytes, denied)


# --- command line ---------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m demoward.ward OUT.pcap [--policy OUT.toml] [--packets N] [--imix]``."""
    ap = argparse.ArgumentParser(prog="python -m demoward.ward",
                                 description="Write the demo ward capture (and policy).")
    ap.add_argument("out", help="capture to write (classic pcap, Ethernet)")
    ap.add_argument("--policy", help="also write the demo policy (TOML) here")
    ap.add_argument("--packets", type=int, help="packets (default 20000, IMIX 1000000)")
    ap.add_argument("--imix", action="store_true", help="write the IMIX benchmark instead")
    ap.add_argument("--flows", type=int, default=2000, help="IMIX flows (default 2000)")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    try:
        if args.imix:
            cap = write_imix(args.out, args.packets or 1_000_000, args.flows, args.seed)
            print(f"{cap.path}: {cap.packets} packets, {cap.total_bytes} bytes, {cap.flows} flows "
                  f"({cap.denied_flows} denied, {cap.denied_packets} of their packets)")
        else:
            ward = write_demo_ward(args.out, args.packets or 20000, args.seed)
            secs = (ward.end_ns - ward.start_ns) / 1e9
            print(f"{ward.path}: {ward.packets} packets over {secs:.0f} s, "
                  f"{len(ward.devices)} devices, {len(ward.violations)} violating flows")
        if args.policy:
            write_demo_policy(args.policy)
            print(f"{args.policy}: demo policy")
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
