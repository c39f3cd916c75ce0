"""Real capture files for the learn and policy-tool tests.

- :func:`write_small_ward`: a hand-built ward (demoward.frames + appliance.common.capwriter) with
  one of everything the learner must handle: a router with hosts behind it, pumps of two
  vendors on VLAN 20, a printer serving a workstation, DHCP from 0.0.0.0, ICMP echo,
  IPv6 neighbour discovery and MLD, mDNS multicast, SNMP started from both sides, a server
  opening connections to ephemeral ports, a TCP connection caught mid-stream, and LLDP.
- :func:`demo_captures`: the demo ward (demoward.ward) as an attacked capture, plus the
  same capture with the injected flows' packets removed (the clean part to learn from).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

from appliance.common.capwriter import PcapWriter
from appliance.replay.runner import Replayer
from appliance.sources.capture import CaptureFile
from demoward import frames as p
from demoward.ward import UNKNOWN, DemoWard, write_demo_ward

ROUTER = "00:26:cb:00:00:01"
GW, GW20 = "10.1.1.1", "10.1.20.1"
PUMP_SERVER, EMR, DNS, FILES = "10.9.0.10", "10.9.0.30", "10.9.0.53", "10.9.0.40"
PUMPS = [("00:12:21:00:00:01", "10.1.20.11"), ("00:12:21:00:00:02", "10.1.20.12"),
         ("58:42:e4:00:00:03", "10.1.20.13")]
WS = ("18:66:da:00:00:65", "10.1.1.65")
PRINTER = ("a0:d3:c1:00:00:80", "10.1.1.80")
NEWCOMER = ("3c:d9:2b:00:00:99", "10.1.1.99")
MONITOR = ("00:09:fb:00:00:33", "10.1.1.33")
CENTRAL = ("00:09:fb:00:00:10", "10.1.1.10")
SWITCH = "00:1e:f7:00:00:02"
S = 1_000_000_000
T0 = 1_732_788_000 * S


@dataclass
class SmallWard:
    path: str
    start: int
    end: int


class _W:
    def __init__(self) -> None:
        self.frames: list[tuple[int, bytes]] = []
        self.t = T0

    def add(self, frame: bytes, dt_ms: int = 1) -> None:
        self.t += dt_ms * 1_000_000
        self.frames.append((self.t, frame))

    def ip4(self, smac: str, dmac: str, src: str, dst: str, proto: int, l4: bytes,
            vlan: int | None = None) -> None:
        self.add(p.ether(dmac, smac, p.ETH_IPV4, p.ipv4(src, dst, proto, l4),
                         () if vlan is None else (vlan,), pad=True))

    def tcp_conn(self, cmac: str, smac: str, cip: str, sip: str, sport: int, dport: int,
                 vlan: int | None = None, handshake: bool = True) -> None:
        a, b = (cmac, cip, sport), (smac, sip, dport)

        def seg(frm: tuple[str, str, int], to: tuple[str, str, int], flags: str,
                data: bytes = b"") -> None:
            self.ip4(frm[0], to[0], frm[1], to[1], p.IPPROTO_TCP,
                     p.tcp(frm[2], to[2], flags, 1, 1, data, src=frm[1], dst=to[1]), vlan)

        if handshake:
            seg(a, b, "S")
            seg(b, a, "SA")
            seg(a, b, "A")
        seg(a, b, "PA", b"request")
        seg(b, a, "PA", b"response")
        seg(a, b, "FA")
        seg(b, a, "FA")
        seg(a, b, "A")

    def udp_pair(self, cmac: str, smac: str, cip: str, sip: str, sport: int, dport: int,
                 vlan: int | None = None) -> None:
        self.ip4(cmac, smac, cip, sip, p.IPPROTO_UDP,
                 p.udp(sport, dport, b"q", src=cip, dst=sip), vlan)
        self.ip4(smac, cmac, sip, cip, p.IPPROTO_UDP,
                 p.udp(dport, sport, b"r", src=sip, dst=cip), vlan)

    def icmp6(self, smac: str, dmac: str, src: str, dst: str, itype: int, body: bytes) -> None:
        msg = p.icmpv6(itype, 0, body, src=src, dst=dst)
        self.add(p.ether(dmac, smac, p.ETH_IPV6, p.ipv6(src, dst, 58, msg, hop_limit=255),
                         pad=True))


def write_small_ward(path: Path) -> SmallWard:
    w = _W()
    # LLDP from the ward switch
    w.add(p.ether("01:80:c2:00:00:0e", SWITCH, p.ETH_LLDP, b"\x02\x07\x04" + bytes(6),
                  pad=True))
    for round_ in range(3):
        for mac, ip in PUMPS:
            w.tcp_conn(mac, ROUTER, ip, PUMP_SERVER, 40000 + round_ * 10 + int(mac[-1]), 443,
                       vlan=20)
            w.udp_pair(mac, ROUTER, ip, DNS, 50000 + round_, 53, vlan=20)
        w.tcp_conn(WS[0], ROUTER, WS[1], EMR, 50100 + round_, 443)
        w.tcp_conn(WS[0], PRINTER[0], WS[1], PRINTER[1], 50200 + round_, 9100)
        w.udp_pair(WS[0], ROUTER, WS[1], DNS, 50300 + round_, 53)
        # the file server opens data connections to the workstation's ephemeral ports
        w.tcp_conn(ROUTER, WS[0], FILES, WS[1], 20, 50400 + 97 * round_)
        w.add(p.ether(ROUTER, WS[0], p.ETH_IPV4, p.ipv4(WS[1], GW, 1, p.icmp(8, 0, 7, round_)),
                      pad=True))
        w.add(p.ether(WS[0], ROUTER, p.ETH_IPV4, p.ipv4(GW, WS[1], 1, p.icmp(0, 0, 7, round_)),
                      pad=True))
        w.t += 70 * S       # past the UDP timeout: the next round's flows are new flows
    # mDNS from the workstation
    w.ip4(WS[0], "01:00:5e:00:00:fb", WS[1], "224.0.0.251", p.IPPROTO_UDP,
          p.udp(5353, 5353, b"m", src=WS[1], dst="224.0.0.251"))
    # SNMP between the workstation and the printer, started from both sides
    w.udp_pair(WS[0], PRINTER[0], WS[1], PRINTER[1], 50600, 161)
    w.udp_pair(PRINTER[0], WS[0], PRINTER[1], WS[1], 50601, 161)
    # a newcomer boots: DHCP through the gateway's relay
    for src, smac, sport, dport in (("0.0.0.0", NEWCOMER[0], 68, 67), (GW, ROUTER, 67, 68),
                                    ("0.0.0.0", NEWCOMER[0], 68, 67), (GW, ROUTER, 67, 68)):
        w.ip4(smac, p.BROADCAST_MAC, src, "255.255.255.255", p.IPPROTO_UDP,
              p.udp(sport, dport, b"dhcp", src=src, dst="255.255.255.255"))
    w.tcp_conn(NEWCOMER[0], ROUTER, NEWCOMER[1], EMR, 50500, 443)
    # IPv6 on the monitor: MLD from ::, DAD, then neighbour discovery with the station
    ll_mon, ll_cen = p.link_local(MONITOR[0]), p.link_local(CENTRAL[0])
    w.icmp6(MONITOR[0], p.multicast_mac("ff02::16"), "::", "ff02::16", 143, bytes(4))
    target = p.solicited_node(ll_mon)
    w.icmp6(MONITOR[0], p.multicast_mac(target), "::", target, 135, p.nd_solicit(ll_mon))
    target = p.solicited_node(ll_cen)
    w.icmp6(MONITOR[0], p.multicast_mac(target), ll_mon, target, 135,
            p.nd_solicit(ll_cen, MONITOR[0]))
    w.icmp6(CENTRAL[0], MONITOR[0], ll_cen, ll_mon, 136, p.nd_advert(ll_cen, CENTRAL[0]))
    # HL7 from the monitor to the central station, caught mid-connection (no SYN)
    w.tcp_conn(MONITOR[0], CENTRAL[0], MONITOR[1], CENTRAL[1], 41000, 2575, handshake=False)
    path = Path(path)
    with path.open("wb") as f:
        writer = PcapWriter(f)
        for ts, frame in w.frames:
            writer.write(frame, ts)
    return SmallWard(str(path), T0, w.t)


PROTO = {"tcp": 6, "udp": 17}


def demo_captures(directory: Path, packets: int = 12000) -> tuple[str, str, DemoWard]:
    """(clean capture, attacked capture, the DemoWard) for the demo ward.

    The clean capture is the attacked one without the injected flows' packets (and the
    unknown device's frames), found from the demo's own list of violations.
    """
    attacked = str(directory / "ward-attacked.pcap")
    clean = str(directory / "ward-clean.pcap")
    ward = write_demo_ward(attacked, packets=packets)
    lines = io.StringIO()
    Replayer().run([attacked], packets_out=lines)
    rogue_ips = {d.ip for d in UNKNOWN}
    rogue_macs = {d.mac for d in UNKNOWN}

    def injected(pkt: dict[str, object]) -> bool:
        if pkt.get("smac") in rogue_macs or {pkt["src"], pkt["dst"]} & rogue_ips:
            return True
        ports = {pkt.get("sport"), pkt.get("dport")}
        return any({pkt["src"], pkt["dst"]} == {v.initiator, v.responder}
                   and pkt["proto"] == PROTO[v.proto] and v.dport in ports
                   for v in ward.violations)

    drop = {pkt["i"] for pkt in map(json.loads, lines.getvalue().splitlines())
            if injected(pkt)}
    assert drop, "the demo ward has no injected packets"
    with CaptureFile(attacked) as capture, open(clean, "wb") as f:
        writer = PcapWriter(f)
        for batch in capture.batches():
            for i in range(batch.count):
                if batch.first_index + i in drop:
                    continue
                off, n = int(batch.offsets[i]), int(batch.lengths[i])
                writer.write(bytes(batch.buf[off:off + n]), int(batch.timestamps[i]),
                             int(batch.wire_lengths[i]))
    return clean, attacked, ward
