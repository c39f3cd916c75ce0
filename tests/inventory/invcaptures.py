"""Real capture files for the inventory tests, one protocol (or one device) at a time.

Every payload is what the real protocol puts on the wire, so the real tshark dissects it:
DHCP with host name, vendor class and parameter request list; LLDP and CDP from a switch;
mDNS and SSDP announcements; HL7 v2 over MLLP; DICOM A-ASSOCIATE request and accept;
TLS 1.2 ClientHello with SNI and a server flight with an X.509 certificate (made with the
`cryptography` package); HTTP with User-Agent and Server. `malformed_*` builders write
the same protocols broken (truncated, lengths past the end, binary junk).
"""

from __future__ import annotations

import datetime
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.common.capwriter import PcapWriter
from demoward import frames as p

T0 = 1_732_788_000 * 1_000_000_000
MS = 1_000_000
ROUTER_MAC = "00:26:cb:4a:10:01"


@dataclass
class Host:
    mac: str
    ip: str
    ttl: int = 64
    vlan: int | None = None


@dataclass
class Capture:
    """Frames with timestamps; `write` puts them in a classic pcap."""

    frames: list[tuple[int, bytes]] = field(default_factory=list)
    t: int = T0

    def add(self, frame: bytes, gap_ms: int = 1) -> None:
        self.t += gap_ms * MS
        self.frames.append((self.t, frame))

    def write(self, path: str | Path) -> str:
        with open(path, "wb") as fh:
            w = PcapWriter(fh)
            for ts, frame in sorted(self.frames, key=lambda x: x[0]):
                w.write(frame, ts)
        return str(path)

    # --- L3/L4 helpers ---

    def udp(self, a: Host, b: Host, sport: int, dport: int, payload: bytes,
            dst_mac: str | None = None, dst_ip: str | None = None) -> None:
        dip = dst_ip or b.ip
        seg = p.udp(sport, dport, payload, src=a.ip, dst=dip)
        if ":" in a.ip:
            pkt = p.ipv6(a.ip, dip, p.IPPROTO_UDP, seg, hop_limit=a.ttl)
            et = p.ETH_IPV6
        else:
            pkt = p.ipv4(a.ip, dip, p.IPPROTO_UDP, seg, ttl=a.ttl)
            et = p.ETH_IPV4
        vlans = () if a.vlan is None else (a.vlan,)
        self.add(p.ether(dst_mac or b.mac, a.mac, et, pkt, vlans, pad=True))


class Tcp:
    """One TCP connection; `send` cuts data into MSS segments with correct sequence numbers."""

    def __init__(self, cap: Capture, cli: Host, srv: Host, sport: int, dport: int,
                 cli_mac_seen: str | None = None, srv_mac_seen: str | None = None) -> None:
        self.cap = cap
        self.ends = (cli, srv)
        # the MAC each side's frames carry (a server behind a router: the router's MAC)
        self.macs = (cli_mac_seen or cli.mac, srv_mac_seen or srv.mac)
        self.ports = (sport, dport)
        self.seq = [0x1000_0000 + sport, 0x5000_0000 + dport]

    def frame(self, side: int, flags: str, data: bytes = b"") -> None:
        a, b = self.ends[side], self.ends[1 - side]
        seq, ack = self.seq[side], self.seq[1 - side] if "A" in flags else 0
        seg = p.tcp(self.ports[side], self.ports[1 - side], flags, seq, ack, data,
                    src=a.ip, dst=b.ip)
        self.seq[side] = (seq + len(data) + ("S" in flags) + ("F" in flags)) & 0xFFFFFFFF
        pkt = p.ipv4(a.ip, b.ip, p.IPPROTO_TCP, seg, ttl=a.ttl, flags_df=True)
        vlan = a.vlan if a.vlan is not None else b.vlan
        self.cap.add(p.ether(self.macs[1 - side], self.macs[side], p.ETH_IPV4, pkt,
                             () if vlan is None else (vlan,), pad=True))

    def handshake(self) -> Tcp:
        self.frame(0, "S")
        self.frame(1, "SA")
        self.frame(0, "A")
        return self

    def send(self, side: int, data: bytes, mss: int = 1460) -> Tcp:
        for i in range(0, len(data), mss):
            self.frame(side, "PA", data[i:i + mss])
        self.frame(1 - side, "A")
        return self

    def close(self) -> None:
        self.frame(0, "FA")
        self.frame(1, "FA")
        self.frame(0, "A")


# --- DHCP ---------------------------------------------------------------------------------


def dhcp(op: int, kind: int, xid: int, mac: str, *, hostname: str | None = None,
         vendor_class: str | None = None, prl: Iterable[int] = (1, 3, 6, 15),
         yiaddr: str = "0.0.0.0", giaddr: str = "0.0.0.0", raw_options: bytes | None = None
         ) -> bytes:
    hdr = struct.pack("!BBBBIHH4s4s4s4s16s64s128s", op, 1, 6, 1 if op == 2 else 0, xid, 0,
                      0x8000, bytes(4), p.ip_bytes(yiaddr), bytes(4), p.ip_bytes(giaddr),
                      p.mac_bytes(mac), b"", b"")
    if raw_options is not None:
        return hdr + b"\x63\x82\x53\x63" + raw_options
    opts = [(53, bytes((kind,)))]
    if op == 1:
        opts.append((61, b"\x01" + p.mac_bytes(mac)))
        if hostname:
            opts.append((12, hostname.encode()))
        if vendor_class:
            opts.append((60, vendor_class.encode()))
        opts.append((55, bytes(prl)))
    else:
        opts += [(54, p.ip_bytes("10.20.0.67")), (51, struct.pack("!I", 86400)),
                 (1, p.ip_bytes("255.255.255.0")), (3, p.ip_bytes(giaddr))]
    body = b"\x63\x82\x53\x63" + b"".join(bytes((c, len(v))) + v for c, v in opts) + b"\xff"
    return (hdr + body).ljust(300, b"\x00")


def dhcp_exchange(cap: Capture, dev: Host, gw: Host, *, hostname: str, vendor_class: str,
                  prl: Iterable[int]) -> None:
    """DISCOVER, OFFER, REQUEST, ACK through the router's relay."""
    zero = Host(dev.mac, "0.0.0.0", 64, dev.vlan)
    bcast = Host("ff:ff:ff:ff:ff:ff", "255.255.255.255")
    relay = Host(gw.mac, gw.ip, 255, dev.vlan)
    prl = tuple(prl)
    for kind in (1, 3):
        cap.udp(zero, bcast, 68, 67, dhcp(1, kind, 0x1234, dev.mac, hostname=hostname,
                                          vendor_class=vendor_class, prl=prl))
        cap.udp(relay, bcast, 67, 68, dhcp(2, 2 if kind == 1 else 5, 0x1234, dev.mac,
                                           yiaddr=dev.ip, giaddr=gw.ip))


# --- LLDP and CDP -------------------------------------------------------------------------


def lldp(mac: str, name: str, description: str, caps: int = 0x14, enabled: int = 0x04,
         mgmt_ip: str | None = None) -> bytes:
    def tlv(t: int, v: bytes) -> bytes:
        return struct.pack("!H", t << 9 | len(v)) + v
    body = (tlv(1, b"\x04" + p.mac_bytes(mac)) + tlv(2, b"\x05Gi1/0/48")
            + tlv(3, struct.pack("!H", 120)) + tlv(5, name.encode())
            + tlv(6, description.encode()) + tlv(7, struct.pack("!HH", caps, enabled)))
    if mgmt_ip:
        addr = b"\x01" + p.ip_bytes(mgmt_ip)
        body += tlv(8, bytes((len(addr),)) + addr + b"\x02" + struct.pack("!I", 1) + b"\x00")
    return body + tlv(0, b"")


def lldp_frame(mac: str, payload: bytes) -> bytes:
    return p.ether("01:80:c2:00:00:0e", mac, p.ETH_LLDP, payload, pad=True)


def cdp_frame(mac: str, device_id: str, platform: str, software: str) -> bytes:
    def tlv(t: int, v: bytes) -> bytes:
        return struct.pack("!HH", t, 4 + len(v)) + v
    body = (tlv(1, device_id.encode()) + tlv(3, b"GigabitEthernet1/0/1")
            + tlv(4, struct.pack("!I", 0x28)) + tlv(5, software.encode())
            + tlv(6, platform.encode()))
    pdu = struct.pack("!BBH", 2, 180, 0) + body
    ck = p.checksum(pdu)
    pdu = pdu[:2] + struct.pack("!H", ck) + pdu[4:]
    llc = b"\xaa\xaa\x03\x00\x00\x0c\x20\x00" + pdu
    return p.ether("01:00:0c:cc:cc:cc", mac, len(llc), llc, pad=True)


# --- mDNS, SSDP ---------------------------------------------------------------------------


def _name(name: str) -> bytes:
    return b"".join(bytes((len(x),)) + x.encode() for x in name.split(".") if x) + b"\x00"


def _rr(name: str, rtype: int, rdata: bytes, ttl: int = 120, flush: bool = True) -> bytes:
    return _name(name) + struct.pack("!HHIH", rtype, 0x8001 if flush else 1, ttl,
                                     len(rdata)) + rdata


def mdns_announce(host: str, ip: str, service: str, instance: str,
                  txt: dict[str, str]) -> bytes:
    """An mDNS response announcing a host name, one service instance, its TXT and SRV."""
    full = f"{instance}.{service}.local"
    txt_rdata = b"".join(bytes((len(f"{k}={v}"),)) + f"{k}={v}".encode()
                         for k, v in txt.items())
    answers = [
        _rr(f"{service}.local", 12, _name(full), 4500, flush=False),
        _rr(full, 16, txt_rdata, 4500),
        _rr(full, 33, struct.pack("!HHH", 0, 0, 631) + _name(f"{host}.local")),
        _rr(f"{host}.local", 1, p.ip_bytes(ip)),
    ]
    return struct.pack("!HHHHHH", 0, 0x8400, 0, len(answers), 0, 0) + b"".join(answers)


def ssdp_notify(ip: str, server: str, nt: str, uuid: str) -> bytes:
    return (f"NOTIFY * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\n"
            f"CACHE-CONTROL: max-age=1800\r\nLOCATION: http://{ip}:49152/description.xml\r\n"
            f"NT: {nt}\r\nNTS: ssdp:alive\r\nSERVER: {server}\r\n"
            f"USN: uuid:{uuid}::{nt}\r\n\r\n").encode()


# --- HL7 over MLLP ------------------------------------------------------------------------


def hl7(sending_app: str, sending_facility: str, receiving_app: str,
        receiving_facility: str, msg_type: str, control: str = "MSG00001") -> bytes:
    segs = [f"MSH|^~\\&|{sending_app}|{sending_facility}|{receiving_app}|"
            f"{receiving_facility}|20241128100000||{msg_type}|{control}|P|2.5",
            "PID|1||TEST0001^^^HOSP^MR||TEST^PATIENT||19700101|U",
            "OBX|1|NM|8867-4^Heart rate^LN||72|/min^/min^UCUM|||||F"]
    return b"\x0b" + "\r".join(segs).encode() + b"\r\x1c\r"


# --- DICOM --------------------------------------------------------------------------------


def _item(itype: int, value: bytes) -> bytes:
    return struct.pack("!BBH", itype, 0, len(value)) + value


def dicom_associate(calling: str, called: str, rq: bool,
                    abstract: bytes = b"1.2.840.10008.5.1.4.1.1.6.1",
                    implementation: bytes = b"ACUSON_SEQ_VA30") -> bytes:
    ctx = _item(0x10, b"1.2.840.10008.3.1.1.1")
    xfer = _item(0x40, b"1.2.840.10008.1.2.1")
    if rq:
        pc = _item(0x20, b"\x01\x00\x00\x00" + _item(0x30, abstract) + xfer)
    else:
        pc = _item(0x21, b"\x01\x00\x00\x00" + xfer)
    user = _item(0x50, _item(0x51, struct.pack("!I", 16384))
                 + _item(0x52, b"1.3.12.2.1107.5.99.3") + _item(0x55, implementation))
    body = (struct.pack("!HH", 1, 0) + called.encode().ljust(16) + calling.encode().ljust(16)
            + bytes(32) + ctx + pc + user)
    return struct.pack("!BBI", 1 if rq else 2, 0, len(body)) + body


# --- TLS 1.2 ------------------------------------------------------------------------------


def _record(ctype: int, body: bytes, version: int = 0x0303) -> bytes:
    return struct.pack("!BHH", ctype, version, len(body)) + body


def _ext(etype: int, body: bytes) -> bytes:
    return struct.pack("!HH", etype, len(body)) + body


def client_hello(sni: str) -> bytes:
    name = sni.encode()
    exts = (_ext(0, struct.pack("!HBH", len(name) + 3, 0, len(name)) + name)
            + _ext(10, struct.pack("!HHH", 4, 0x0017, 0x0018)) + _ext(11, b"\x01\x00")
            + _ext(13, struct.pack("!HHHH", 6, 0x0401, 0x0403, 0x0501)))
    suites = [0xC02F, 0xC030, 0xC02B, 0x009C, 0x002F]
    body = (b"\x03\x03" + bytes(range(32)) + b"\x00"
            + struct.pack(f"!H{len(suites)}H", 2 * len(suites), *suites) + b"\x01\x00"
            + struct.pack("!H", len(exts)) + exts)
    return _record(22, b"\x01" + len(body).to_bytes(3, "big") + body, 0x0301)


def certificate_der(common_name: str, organization: str) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.derive_private_key(0x5EED, ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
                         x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    issuer = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example Hospital CA"),
                        x509.NameAttribute(NameOID.COMMON_NAME, "Example Hospital Issuing CA")])
    start = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
            .public_key(key.public_key()).serial_number(0x1234)
            .not_valid_before(start).not_valid_after(start + datetime.timedelta(days=730))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(common_name)]), False)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.DER)


def server_flight(cert: bytes, chain_padding: int = 1200) -> bytes:
    """ServerHello, Certificate (the server's plus a filler CA certificate), ServerHelloDone.

    The filler makes the flight longer than one segment, so tshark must reassemble it.
    """
    hello = (b"\x03\x03" + bytes(range(32, 64)) + b"\x00" + b"\xc0\x2f\x00"
             + struct.pack("!H", 5) + _ext(0xFF01, b"\x00"))
    filler = bytes(chain_padding)
    certs = b"".join(len(c).to_bytes(3, "big") + c for c in (cert, filler))
    body = len(certs).to_bytes(3, "big") + certs
    hs = (b"\x02" + len(hello).to_bytes(3, "big") + hello
          + b"\x0b" + len(body).to_bytes(3, "big") + body + b"\x0e\x00\x00\x00")
    return _record(22, hs)


# --- HTTP ---------------------------------------------------------------------------------


def http_request(host: str, user_agent: str, path: str = "/status") -> bytes:
    return (f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {user_agent}\r\n"
            "Accept: */*\r\n\r\n").encode()


def http_response(server: str, body: bytes = b'{"ok": true}') -> bytes:
    return (f"HTTP/1.1 200 OK\r\nServer: {server}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


# --- the captures the tests use ---------------------------------------------------------------

GW = Host(ROUTER_MAC, "10.40.1.1", 255)
WS = Host("18:66:da:31:9c:02", "10.40.1.65", 128)            # Dell, Windows
PUMP = Host("00:12:21:5e:a0:11", "10.40.104.11", 64, 104)    # B. Braun
PUMP_SERVER = Host(ROUTER_MAC, "10.20.0.15", 63)              # behind the router
PRINTER = Host("a0:d3:c1:5b:22:80", "10.40.1.80")             # HP
TV = Host("8c:79:f5:00:00:01", "10.40.1.120", 4)              # a media renderer
MONITOR = Host("00:09:fb:3c:41:01", "10.40.1.33")             # Philips
CENTRAL = Host("00:09:fb:3c:40:02", "10.40.1.10")
US = Host("88:4b:39:a2:11:5f", "10.40.1.90")                  # Siemens ultrasound
PACS = Host(ROUTER_MAC, "10.20.0.40", 63)
SWITCH_MAC = "00:1e:f7:5c:88:30"
SWITCH2_MAC = "00:1e:f7:5c:88:31"
PHONE = Host("da:a1:19:20:30:40", "10.40.1.150")             # locally administered MAC
PUMP_CERT_CN = "pumpserver.hosp.example"


def write_protocols(path: str | Path) -> str:
    """One of each identifying exchange, each from the device it identifies."""
    cap = Capture()
    dhcp_exchange(cap, WS, GW, hostname="WS-NURSE1", vendor_class="MSFT 5.0",
                  prl=(1, 3, 6, 15, 31, 33, 43, 44, 46, 47, 119, 121, 249, 252))
    cap.add(lldp_frame(SWITCH_MAC, lldp(SWITCH_MAC, "sw-ward4b",
                                        "Cisco IOS Software, C2960X Software, Version 15.2(7)E8",
                                        mgmt_ip="10.40.1.2")))
    cap.add(cdp_frame(SWITCH2_MAC, "sw-ward4c.hosp.example", "cisco WS-C2960X-48FPD-L",
                      "Cisco IOS Software, Version 15.2(7)E8"))
    cap.udp(Host(PRINTER.mac, PRINTER.ip, 255), Host("01:00:5e:00:00:fb", "224.0.0.251"),
            5353, 5353, mdns_announce("NPI5B2280", PRINTER.ip, "_ipp._tcp",
                                      "HP LaserJet M507 [5B2280]",
                                      {"ty": "HP LaserJet M507", "product": "(HP LaserJet M507)"}))
    cap.udp(TV, Host("01:00:5e:7f:ff:fa", "239.255.255.250"), 1900, 1900,
            ssdp_notify(TV.ip, "Linux/4.9 UPnP/1.0 Samsung-TV/1.0",
                        "urn:schemas-upnp-org:device:MediaRenderer:1", "abcd-1234"))
    c = Tcp(cap, MONITOR, CENTRAL, 40001, 2575).handshake()
    c.send(0, hl7("IntelliVue", "MON-BED01", "PIIC-IX", "WARD4B", "ORU^R01^ORU_R01"))
    c.send(1, hl7("PIIC-IX", "WARD4B", "IntelliVue", "MON-BED01", "ACK^R01^ACK"))
    c = Tcp(cap, US, PACS, 40002, 104).handshake()
    c.send(0, dicom_associate("ACUSON_US01", "PACS", True))
    c.send(1, dicom_associate("ACUSON_US01", "PACS", False))
    c = Tcp(cap, PUMP, PUMP_SERVER, 40003, 443).handshake()
    c.send(0, client_hello(PUMP_CERT_CN))
    c.send(1, server_flight(certificate_der(PUMP_CERT_CN, "Example Hospital")))
    c = Tcp(cap, WS, PRINTER, 40004, 80).handshake()
    c.send(0, http_request(PRINTER.ip, "Mozilla/5.0 (Windows NT 10.0; Win64; x64)"))
    c.send(1, http_response("HP HTTP Server; HP LaserJet M507"))
    c = Tcp(cap, WS, PRINTER, 40005, 9100).handshake()
    c.send(0, b"\x1b%-12345X@PJL JOB NAME=\"chart\"\r\n" + bytes(200))
    c.close()
    cap.udp(PHONE, Host("ff:ff:ff:ff:ff:ff", "255.255.255.255"), 68, 67,
            dhcp(1, 1, 0x77, PHONE.mac, hostname="Galaxy-S23", vendor_class="android-dhcp-14"))
    return cap.write(path)


def write_malformed(path: str | Path) -> str:
    """Broken DHCP, LLDP, HL7, DICOM and TLS, then one good HL7 message."""
    cap = Capture()
    zero = Host(WS.mac, "0.0.0.0")
    bcast = Host("ff:ff:ff:ff:ff:ff", "255.255.255.255")
    # DHCP: option length past the end; options area cut mid-option; no magic cookie
    cap.udp(zero, bcast, 68, 67, dhcp(1, 1, 1, WS.mac, raw_options=b"\x35\x01\x01\x0c\xff"
                                                                      b"WS"))
    cap.udp(zero, bcast, 68, 67, dhcp(1, 1, 2, WS.mac, raw_options=b"\x37"))
    cap.udp(zero, bcast, 68, 67, b"\x01\x01\x06\x00" + bytes(20))
    # LLDP: a TLV claiming 500 bytes; a truncated system name; no end TLV
    cap.add(p.ether("01:80:c2:00:00:0e", SWITCH_MAC, p.ETH_LLDP,
                    b"\x02\x07\x04" + p.mac_bytes(SWITCH_MAC) + b"\x0b\xf4sw", pad=True))
    cap.add(p.ether("01:80:c2:00:00:0e", SWITCH_MAC, p.ETH_LLDP,
                    b"\x0a\x30sw-ward" + bytes(3), pad=True))
    # HL7: MSH with too few fields; binary junk in MLLP framing; a lone start byte
    c = Tcp(cap, MONITOR, CENTRAL, 41001, 2575).handshake()
    c.send(0, b"\x0bMSH|^~\\&|\r\x1c\r")
    c.send(0, b"\x0b" + bytes(range(256)) * 2 + b"\x1c\r")
    c.send(0, b"\x0b")
    # DICOM: A-ASSOCIATE-RQ whose PDU length runs past the data; an item longer than its PDU
    c = Tcp(cap, US, PACS, 41002, 104).handshake()
    c.send(0, b"\x01\x00\xff\xff\xff\xf0\x00\x01\x00\x00" + b"PACS".ljust(16) + b"US".ljust(16))
    rq = bytearray(dicom_associate("ACUSON_US01", "PACS", True))
    rq[76:78] = b"\xff\xff"
    c.send(0, bytes(rq))
    # TLS: a ClientHello record cut short, a certificate that is not DER
    c = Tcp(cap, PUMP, PUMP_SERVER, 41003, 443).handshake()
    c.send(0, client_hello("x.example")[:40])
    c.send(1, _record(22, b"\x0b\x00\x00\x0a\x00\x00\x07\x00\x00\x04junk"))
    # then a good message on a fresh connection: it must still be dissected
    c = Tcp(cap, MONITOR, CENTRAL, 41004, 2575).handshake()
    c.send(0, hl7("IntelliVue", "MON-BED01", "PIIC-IX", "WARD4B", "ORU^R01^ORU_R01"))
    return cap.write(path)


def write_flood(path: str | Path, devices: int = 400, flows_per_device: int = 100,
                seconds: int = 10, payload: bool = False) -> tuple[str, int]:
    """New flows from many devices, evenly over `seconds` of capture time.

    With `payload`, every flow is one segment carrying an HTTP request (identifying content
    for the triage); otherwise a SYN. Returns (path, packets).
    """
    cap = Capture()
    total = devices * flows_per_device
    step_ns = seconds * 1_000_000_000 // total
    srv = Host(ROUTER_MAC, "10.20.0.30", 63)
    n = 0
    for f in range(flows_per_device):
        for d in range(devices):
            mac = f"02:00:00:{d >> 16 & 255:02x}:{d >> 8 & 255:02x}:{d & 255:02x}"
            dev = Host(mac, f"10.{50 + (d >> 16)}.{d >> 8 & 255}.{d & 255}")
            data = http_request("emr.hosp.example", f"flood/{d}") if payload else b""
            seg = p.tcp(20000 + f, 80 + (f % 50), "PA" if payload else "S", 1, 0, data,
                        src=dev.ip, dst=srv.ip)
            cap.frames.append((T0 + n * step_ns,
                               p.ether(srv.mac, dev.mac, p.ETH_IPV4,
                                       p.ipv4(dev.ip, srv.ip, p.IPPROTO_TCP, seg), pad=True)))
            n += 1
    return cap.write(path), n


# --- helpers for the tests --------------------------------------------------------------------


def feed(dissector: Any, path: str) -> int:
    """Offer every packet of a capture to a Dissector (all marked), as the datapath does."""
    from appliance.sources.capture import CaptureFile

    n = 0
    with CaptureFile(path) as cap:
        for batch in cap.batches():
            marks = bytearray(b"\x01" * batch.count)
            dissector.offer(batch, marks, batch.count)
            n += batch.count
    return n


def evidence(records: list[dict[str, Any]], mac: str) -> dict[str, set[str]]:
    """key -> values the records attribute to `mac` (as sender, receiver or by MAC)."""
    out: dict[str, set[str]] = {}
    for rec in records:
        for target, key, value, _source, _scope in rec["ev"]:
            who = (rec.get("smac") if target == "src" else rec.get("dmac") if target == "dst"
                   else target[4:])
            if who == mac:
                out.setdefault(key, set()).add(value)
    return out
