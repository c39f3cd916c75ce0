"""wardtap replay side by side with tcpdump, dpkt, plain Python, scapy and pyshark.

    .venv/bin/python bench/bench_replay.py [--packets 1000000] [--repeat 3] [--callgrind]
                                           [--out bench/out] [--skip NAME,...]

One run measures every contender on the same IMIX capture of the demo ward (generated once by
demoward.ward.write_imix into --out, reused while its parameters and generator are unchanged)
and the same allow-list (demoward.ward.DEMO_POLICY), prints a table of packets/s and ratios
and the issue's bars, and writes every figure to OUT/results.json. It asserts nothing: a
script, not a test. bench/README.md explains each measurement.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import ipaddress
import json
import os
import platform
import pstats
import re
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# Before numpy: idle OpenBLAS threads spin and steal a CPU from the timed loops (the CLI
# does the same).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

import fastpath  # noqa: E402
from appliance.policy.model import (  # noqa: E402
    ICMP,
    PORTED,
    Group,
    Policy,
    compile_policy,
    load_policy,
)
from appliance.sources.capture import CaptureFile  # noqa: E402

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PY = sys.executable
WARDTAP = str(Path(PY).with_name("wardtap"))
BATCH = 4096                       # packets per classify() call, as in `wardtap replay`
GENERATOR_FILES = ("demoward/ward.py", "demoward/frames.py", "appliance/common/capwriter.py")
SKIPPABLE = ("replay", "classifier", "tcpdump", "dpkt", "struct", "scapy", "pyshark", "memory",
             "profile")
REASON_NAMES = {0: "rule", 2: "no_rule", 3: "wrong_initiator", 4: "proto_not_allowed",
                5: "port_not_allowed"}


# Environment of the timed Python children (set by main): bytecode cached, as in an installed
# wardtap, but under OUT/pycache (PYTHONPYCACHEPREFIX) so nothing is written outside bench/.
CHILD_ENV: dict[str, str] | None = None


def log(message: str) -> None:
    print(f"# {message}", flush=True)


# --- child processes and timings -----------------------------------------------------------


@dataclasses.dataclass
class Child:
    argv: list[str]
    wall_s: float
    returncode: int
    stdout: bytes
    stderr: bytes
    user_s: float
    system_s: float
    started: float         # perf_counter (CLOCK_MONOTONIC) just before spawning
    ended: float           # and just after reaping


def run_child(argv: Sequence[str], stdout: Any = None, env: dict[str, str] | None = None
              ) -> Child:
    """Run one process; wall time by perf_counter around start and reap (as around
    subprocess.run), CPU times by wait4.

    Not its peak RSS: on Linux a child's ru_maxrss starts from the high-water mark of the
    process it was forked from (this one, holding the preloaded capture), so RSS is read
    inside the children from /proc/self/status instead.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(list(argv), stdout=stdout or out, stderr=err,
                                env=env if env is not None else CHILD_ENV)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return Child(list(argv), wall, proc.returncode, out.read(), err.read(),
                     usage.ru_utime, usage.ru_stime, start, start + wall)


def timing(times: Sequence[float], packets: int) -> dict[str, Any]:
    best, median = min(times), statistics.median(times)
    return {"runs_s": [round(t, 6) for t in times], "best_s": best, "median_s": median,
            "packets": packets, "pps_best": packets / best, "pps_median": packets / median,
            "ns_per_packet_best": best * 1e9 / packets}


def check(child: Child, what: str) -> None:
    if child.returncode != 0:
        raise SystemExit(f"{what} failed (exit {child.returncode}): "
                         f"{child.stderr.decode(errors='replace')[-2000:]}")


# --- the capture and the policy ------------------------------------------------------------


def _digest(paths: Sequence[Path]) -> str:
    h = hashlib.sha256()
    for path in paths:
        h.update(path.read_bytes() if path.exists() else b"missing")
    return h.hexdigest()


def ensure_capture(out: Path, packets: int, flows: int, seed: int) -> dict[str, Any]:
    """The IMIX capture in `out`, written by demoward.ward.write_imix unless already there."""
    from demoward import ward as demo
    path = out / f"imix-{packets}p-{flows}f-s{seed}.pcap"
    meta_path = path.with_suffix(".json")
    params = {"packets": packets, "flows": flows, "seed": seed,
              "generator_sha256": _digest([ROOT / f for f in GENERATOR_FILES])}
    if path.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("params") == params and meta.get("size") == path.stat().st_size:
            meta["reused"] = True
            return meta
    tmp = path.with_name(path.name + ".tmp")
    start = time.perf_counter()
    cap = demo.write_imix(tmp, packets, flows=flows, seed=seed)
    seconds = time.perf_counter() - start
    os.replace(tmp, path)
    info: dict[str, Any] = {}
    if dataclasses.is_dataclass(cap) and not isinstance(cap, type):
        info = {k: v for k, v in dataclasses.asdict(cap).items() if k not in ("path", "denied")}
        info["denied_flow_kinds"] = len(getattr(cap, "denied", []))
    meta = {"params": params, "path": str(path), "size": path.stat().st_size,
            "generated_s": round(seconds, 2), "imix": info}
    meta_path.write_text(json.dumps(meta, indent=2))
    meta["reused"] = False
    return meta


def write_policy(out: Path) -> Path:
    from demoward import ward as demo
    path = out / "demo-policy.toml"
    if not path.exists() or path.read_text() != demo.DEMO_POLICY:
        demo.write_demo_policy(path)
    return path


def write_sample(src: Path, dst: Path, n: int) -> int:
    """The first n packets of a classic pcap as a capture of its own (for scapy, pyshark)."""
    with CaptureFile(str(src), n) as cap:
        if cap.format != "pcap":
            raise SystemExit(f"{src}: samples need a classic pcap, not {cap.format}")
        batch = next(cap.batches())
        count = batch.count
        end = int(batch.offsets[count - 1]) + int(batch.lengths[count - 1])
    with open(src, "rb") as fh:
        data = fh.read(end)
    if not dst.exists() or dst.stat().st_size != end:
        dst.write_bytes(data)
    return count


@dataclasses.dataclass
class Preloaded:
    """A whole capture in memory, as classify() takes it."""

    buf: bytes
    offsets: np.ndarray
    lengths: np.ndarray
    timestamps: np.ndarray
    linktypes: np.ndarray

    @property
    def count(self) -> int:
        return len(self.offsets)

    def chunks(self, limit: int | None = None, batch: int = BATCH) -> list[tuple[Any, ...]]:
        n = self.count if limit is None else min(limit, self.count)
        return [(self.offsets[i:j], self.lengths[i:j], self.timestamps[i:j],
                 self.linktypes[i:j])
                for i, j in ((i, min(i + batch, n)) for i in range(0, n, batch))]


def preload(path: Path, expected: int) -> Preloaded:
    """Read the file into bytes; index it with CaptureFile in one huge batch; copy the arrays."""
    buf = path.read_bytes()
    parts: list[tuple[np.ndarray, ...]] = []
    with CaptureFile(str(path), max(expected, 1) + 1) as cap:
        for b in cap.batches():
            n = b.count
            parts.append(tuple(np.array(a[:n]) for a in (b.offsets, b.lengths, b.timestamps,
                                                          b.linktypes)))
    offsets, lengths, stamps, links = (np.ascontiguousarray(np.concatenate(col))
                                       for col in zip(*parts, strict=True))
    return Preloaded(buf, offsets, lengths, stamps, links)


# --- the allow-list in Python (for the dpkt, struct, scapy and pyshark loops) --------------


def icmp_class(proto: int, itype: int, code: int) -> int:
    if proto == 1:
        if itype in (0, 8):
            return 8 << 8
        if itype in (13, 14):
            return 13 << 8
    elif itype in (128, 129):
        return 128 << 8
    return (itype << 8) | code


def icmp_paired(proto: int, itype: int) -> bool:
    return itype in (0, 8, 13, 14) if proto == 1 else itype in (128, 129)


def icmp_is_reply(proto: int, itype: int) -> bool:
    return itype in (0, 14) if proto == 1 else itype == 129


def _mac_bytes(mac: Any) -> bytes | None:
    if mac is None or isinstance(mac, bytes):
        return mac
    return bytes.fromhex(str(mac).replace(":", ""))


class PolicyModel:
    """The parsed policy evaluated in plain Python, with wardtap's semantics.

    Group bitsets from MAC / OUI / CIDR (any of them) and VLAN (all given); rules scanned in
    order on a flow's first packet; the reason of a denial is the most specific miss.
    """

    def __init__(self, policy: Policy) -> None:
        self.arp = policy.arp
        self.non_ip = policy.non_ip
        ids: dict[str, int] = {"any": 0}
        self.groups: list[tuple[int, frozenset[bytes], frozenset[bytes], tuple[Any, ...],
                                frozenset[int] | None]] = []

        def add(key: str, g: Group) -> None:
            ids[key] = len(ids)
            self.groups.append((1 << ids[key], frozenset(g.macs), frozenset(g.ouis), g.nets,
                                frozenset(g.vlans) if g.vlans else None))

        for name, group in policy.groups.items():
            add(name, group)

        def bits(items: Sequence[str]) -> int:
            out = 0
            for item in items:
                if item not in ids:
                    add(item, Group(item, nets=(ipaddress.ip_network(item, strict=False),)))
                out |= 1 << ids[item]
            return out

        entries = []
        for index, rule in enumerate(policy.rules):
            src, dst = bits(rule.sources), bits(rule.destinations)
            top = 255 if rule.proto in ICMP else 65535
            for lo, hi in rule.ports or ((0, top),):
                entries.append((src, dst, rule.proto, lo, hi, rule.either, index))
        self.entries = tuple(entries)

    def groups_of(self, mac: bytes | None, ip: Any, vlan: int) -> int:
        out = 1                                              # "any"
        for bit, macs, ouis, nets, vlans in self.groups:
            if vlans is not None and vlan not in vlans:
                continue
            if not (macs or ouis or nets):                   # a VLAN-only group
                out |= bit
            elif (mac is not None and (mac in macs or mac[:3] in ouis)) or any(
                    ip in net for net in nets):
                out |= bit
        return out

    def evaluate(self, gi: int, gr: int, proto: int, port: int) -> int:
        best = 2                                             # no_rule
        for src, dst, rproto, lo, hi, either, _index in self.entries:
            forward = src & gi and dst & gr
            reverse = src & gr and dst & gi
            if not forward and not (reverse and either):
                if reverse and (rproto == 0 or rproto == proto) and best < 3:
                    best = 3                                 # wrong_initiator
                continue
            if rproto and rproto != proto:
                best = max(best, 4)                          # proto_not_allowed
                continue
            if not lo <= port <= hi:
                best = max(best, 5)                          # port_not_allowed
                continue
            return 0
        return best

    def decide(self, proto: int, sport: int, dport: int, flags: int, icmp_type: int, src: Any,
               dst: Any, smac: Any, dmac: Any, vlan: int) -> tuple[int, bool]:
        """(reason, sender_first) for a flow's first packet; reason 0 is allowed."""
        icmp = proto == 1 or proto == 58
        if proto == 6:
            sender_first = not flags & 0x10 if flags & 0x02 else sport >= dport
        elif icmp:
            sender_first = not icmp_is_reply(proto, icmp_type)
        else:
            sender_first = True
        if icmp:
            port = icmp_type if sender_first else (8 if proto == 1 else 128)
        else:
            port = dport if sender_first else sport
        a = self.groups_of(_mac_bytes(smac), ipaddress.ip_address(src), vlan)
        b = self.groups_of(_mac_bytes(dmac), ipaddress.ip_address(dst), vlan)
        gi, gr = (a, b) if sender_first else (b, a)
        return self.evaluate(gi, gr, proto, port), sender_first


class FlowTable:
    """A dict flow table keyed bidirectionally; the verdict is decided on a flow's first packet.

    A flow is [allowed, reason, initiator_is_a, pkts_a, pkts_b, bytes_a, bytes_b, last_ts].
    """

    def __init__(self, model: PolicyModel) -> None:
        self.model = model
        self.flows: dict[tuple[Any, ...], list[Any]] = {}
        self.packets = self.allowed = self.denied = self.malformed = 0
        self.violations: Counter[str] = Counter()

    def new_flow(self, proto: int, sport: int, dport: int, flags: int, icmp_type: int, src: Any,
                 dst: Any, smac: Any, dmac: Any, vlan: int, a_sent: bool) -> list[Any]:
        reason, sender_first = self.model.decide(proto, sport, dport, flags, icmp_type, src,
                                                 dst, smac, dmac, vlan)
        if reason:
            self.violations[REASON_NAMES[reason]] += 1
        return [reason == 0, reason, a_sent == sender_first, 0, 0, 0, 0, 0]

    def ip(self, proto: int, vlan: int, src: Any, dst: Any, sport: int, dport: int, flags: int,
           icmp_type: int, icmp_code: int, length: int, ts: Any, smac: Any, dmac: Any) -> None:
        """One IP packet (ICMP: sport is the echo identifier, dport unused)."""
        self.packets += 1
        if proto == 1 or proto == 58:
            sport = sport if icmp_paired(proto, icmp_type) else 0
            dport = icmp_class(proto, icmp_type, icmp_code)
            a_sent = src <= dst
            key = (src, dst, sport, dport, proto, vlan) if a_sent else (
                dst, src, sport, dport, proto, vlan)
        elif src < dst or (src == dst and sport <= dport):
            a_sent = True
            key = (src, dst, sport, dport, proto, vlan)
        else:
            a_sent = False
            key = (dst, src, dport, sport, proto, vlan)
        f = self.flows.get(key)
        if f is None:
            f = self.flows[key] = self.new_flow(proto, sport, dport, flags, icmp_type, src, dst,
                                                smac, dmac, vlan, a_sent)
        if a_sent:
            f[3] += 1
            f[5] += length
        else:
            f[4] += 1
            f[6] += length
        f[7] = ts
        if f[0]:
            self.allowed += 1
        else:
            self.denied += 1

    def l2(self, arp: bool) -> None:
        self.packets += 1
        if self.model.arp if arp else self.model.non_ip:
            self.allowed += 1
        else:
            self.denied += 1

    def bad(self) -> None:
        self.packets += 1
        self.malformed += 1

    def counts(self) -> dict[str, Any]:
        by_reason: Counter[str] = Counter()
        for f in self.flows.values():
            by_reason[REASON_NAMES[f[1]]] += f[3] + f[4]
        return {"packets": self.packets, "allowed": self.allowed, "denied": self.denied,
                "malformed": self.malformed, "flows": len(self.flows),
                "violations": sum(self.violations.values()),
                "violations_by_reason": dict(self.violations),
                "ip_packets_by_flow_reason": dict(by_reason)}


# --- the Python contenders -------------------------------------------------------------------


def dpkt_loop(path: Path, model: PolicyModel, limit: int | None = None) -> FlowTable:
    """dpkt.pcap.Reader + dpkt.ethernet.Ethernet (which parses VLAN, IP/IPv6, TCP/UDP/ICMP)."""
    import dpkt

    eth_t, ip_t, ip6_t, arp_t = (dpkt.ethernet.Ethernet, dpkt.ip.IP, dpkt.ip6.IP6,
                                 dpkt.arp.ARP)
    tcp_t, udp_t, icmp_t = dpkt.tcp.TCP, dpkt.udp.UDP, (dpkt.icmp.ICMP, dpkt.icmp6.ICMP6)
    table = FlowTable(model)
    ip = table.ip
    with open(path, "rb") as fh:
        for n, (ts, buf) in enumerate(dpkt.pcap.Reader(fh)):
            if n == limit:
                break
            try:
                eth = eth_t(buf)
            except (dpkt.UnpackError, struct.error):
                table.bad()
                continue
            tags = getattr(eth, "vlan_tags", None)
            vlan = tags[-1].id if tags else 0
            net = eth.data
            if isinstance(net, ip_t | ip6_t):
                l4 = net.data
                if isinstance(l4, tcp_t):
                    ip(6, vlan, net.src, net.dst, l4.sport, l4.dport, l4.flags, 0, 0, len(buf),
                       ts, eth.src, eth.dst)
                elif isinstance(l4, udp_t):
                    ip(17, vlan, net.src, net.dst, l4.sport, l4.dport, 0, 0, 0, len(buf), ts,
                       eth.src, eth.dst)
                elif isinstance(l4, icmp_t):
                    ip(net.p, vlan, net.src, net.dst, getattr(l4.data, "id", 0), 0, 0, l4.type,
                       l4.code, len(buf), ts, eth.src, eth.dst)
                else:
                    ip(net.p, vlan, net.src, net.dst, 0, 0, 0, 0, 0, len(buf), ts, eth.src,
                       eth.dst)
            elif isinstance(net, arp_t):
                table.l2(True)
            else:
                table.l2(False)
    return table


IPV6_EXT = frozenset((0, 43, 44, 51, 60))


def struct_loop(path: Path, model: PolicyModel, limit: int | None = None) -> FlowTable:
    """Plain Python: the file read into bytes, headers decoded with struct.unpack_from."""
    data = path.read_bytes()
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        e = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        e = ">"
    else:
        raise SystemExit(f"{path}: the struct loop reads classic pcap only")
    if struct.unpack_from(e + "I", data, 20)[0] != 1:
        raise SystemExit(f"{path}: the struct loop reads Ethernet captures only")
    record = struct.Struct(e + "IIII").unpack_from
    u16 = struct.Struct("!H").unpack_from
    pair = struct.Struct("!HH").unpack_from
    ipv4 = struct.Struct("!BxH2xHxB2xII").unpack_from    # ver/ihl, total, frag, proto, src, dst
    table = FlowTable(model)
    flows = table.flows
    get = flows.get
    new_flow = table.new_flow
    allowed = denied = malformed = l2_allowed = l2_denied = n = 0
    off, end = 24, len(data)
    stop = -1 if limit is None else limit
    while off + 16 <= end and n != stop:
        sec, _usec, caplen, _wire = record(data, off)
        p = off + 16
        off = p + caplen
        n += 1
        try:
            if caplen < 14:
                raise IndexError
            et = u16(data, p + 12)[0]
            o = p + 14
            vlan = 0
            while et == 0x8100 or et == 0x88A8 or et == 0x9100:
                tci, et = pair(data, o)
                vlan = tci & 0x0FFF
                o += 4
            if et == 0x0800:
                vihl, _total, frag, proto, src, dst = ipv4(data, o)
                l4 = o + (vihl & 15) * 4
                later = frag & 0x1FFF
            elif et == 0x86DD:
                proto = data[o + 6]
                src = data[o + 8:o + 24]
                dst = data[o + 24:o + 40]
                l4 = o + 40
                later = 0
                while proto in IPV6_EXT:
                    if proto == 44:
                        later = u16(data, l4 + 2)[0] & 0xFFF8
                        proto = data[l4]
                        l4 += 8
                        if later:
                            break
                    else:
                        hl = (data[l4 + 1] + 2) * 4 if proto == 51 else (data[l4 + 1] + 1) * 8
                        proto = data[l4]
                        l4 += hl
            else:
                if (et == 0x0806 and model.arp) or (et != 0x0806 and model.non_ip):
                    l2_allowed += 1
                else:
                    l2_denied += 1
                continue
            flags = icmp_type = 0
            if later:
                sport = dport = 0
            elif proto == 6:
                sport, dport = pair(data, l4)
                flags = data[l4 + 13]
            elif proto == 17 or proto == 132:
                sport, dport = pair(data, l4)
            elif proto == 1 or proto == 58:
                icmp_type = data[l4]
                sport = u16(data, l4 + 4)[0] if icmp_paired(proto, icmp_type) else 0
                dport = icmp_class(proto, icmp_type, data[l4 + 1])
            else:
                sport = dport = 0
        except (struct.error, IndexError):
            malformed += 1
            continue
        if proto == 1 or proto == 58:
            a_sent = src <= dst
            key = (src, dst, sport, dport, proto, vlan) if a_sent else (
                dst, src, sport, dport, proto, vlan)
        elif src < dst or (src == dst and sport <= dport):
            a_sent = True
            key = (src, dst, sport, dport, proto, vlan)
        else:
            a_sent = False
            key = (dst, src, dport, sport, proto, vlan)
        f = get(key)
        if f is None:
            f = flows[key] = new_flow(proto, sport, dport, flags, icmp_type, src, dst,
                                      data[p + 6:p + 12], data[p:p + 6], vlan, a_sent)
        if a_sent:
            f[3] += 1
            f[5] += caplen
        else:
            f[4] += 1
            f[6] += caplen
        f[7] = sec
        if f[0]:
            allowed += 1
        else:
            denied += 1
    table.packets = n
    table.allowed = allowed + l2_allowed
    table.denied = denied + l2_denied
    table.malformed = malformed
    return table


def scapy_loop(path: Path, model: PolicyModel, limit: int | None = None) -> FlowTable:
    """scapy's PcapReader (full dissection) and layer access for the same fields."""
    from scapy.layers.inet import ICMP as S_ICMP
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import ARP, Dot1Q, Ether
    from scapy.utils import PcapReader

    table = FlowTable(model)
    with PcapReader(str(path)) as reader:
        for n, pkt in enumerate(reader):
            if n == limit:
                break
            if Ether not in pkt:
                table.bad()
                continue
            vlan = pkt[Dot1Q].vlan if Dot1Q in pkt else 0
            if IP in pkt:
                net: Any = pkt[IP]
                proto = net.proto
            elif IPv6 in pkt:
                net = pkt[IPv6]
                proto = net.nh
            else:
                table.l2(ARP in pkt)
                continue
            sport = dport = flags = itype = code = 0
            if TCP in pkt:
                t = pkt[TCP]
                sport, dport, flags = t.sport, t.dport, int(t.flags)
            elif UDP in pkt:
                u = pkt[UDP]
                sport, dport = u.sport, u.dport
            elif S_ICMP in pkt:
                c = pkt[S_ICMP]
                sport, itype, code = c.id or 0, c.type, c.code
            ether = pkt[Ether]
            table.ip(proto, vlan, net.src, net.dst, sport, dport, flags, itype, code, len(pkt),
                     pkt.time, ether.src, ether.dst)
    return table


def pyshark_loop(path: Path, model: PolicyModel, limit: int | None = None) -> FlowTable:
    """pyshark.FileCapture (tshark -T pdml underneath), keep_packets=False, field access."""
    import pyshark

    table = FlowTable(model)
    cap = pyshark.FileCapture(str(path), keep_packets=False)
    try:
        for n, pkt in enumerate(cap):
            if n == limit:
                break
            names = {layer.layer_name for layer in pkt.layers}
            vlan = int(pkt.vlan.id) if "vlan" in names else 0
            if "ip" in names:
                net = pkt.ip
                proto = int(net.proto)
            elif "ipv6" in names:
                net = pkt.ipv6
                proto = int(net.nxt)
            else:
                table.l2("arp" in names)
                continue
            sport = dport = flags = itype = code = 0
            if "tcp" in names:
                sport, dport = int(pkt.tcp.srcport), int(pkt.tcp.dstport)
                flags = int(pkt.tcp.flags, 16)
            elif "udp" in names:
                sport, dport = int(pkt.udp.srcport), int(pkt.udp.dstport)
            elif "icmp" in names or "icmpv6" in names:
                c = pkt.icmp if "icmp" in names else pkt.icmpv6
                itype, code = int(c.type), int(c.code)
                sport = int(c.ident) if hasattr(c, "ident") else 0
            table.ip(proto, vlan, net.src, net.dst, sport, dport, flags, itype, code,
                     int(pkt.length), pkt.sniff_timestamp, pkt.eth.src, pkt.eth.dst)
    finally:
        cap.close()
    return table


# --- the allow-list as a BPF filter ----------------------------------------------------------

BPF_NOTES = [
    "stateless: a packet passes when it matches a rule in the rule's direction (from -> to, "
    "responder port as dst port) or the reverse (to -> from, src port), whoever started the "
    "conversation; wardtap decides once per flow and denies replies-first flows "
    "(wrong_initiator), which BPF cannot see",
    "VLAN: untagged rules first, then `vlan and (...)` last, because libpcap's `vlan` keyword "
    "shifts every later offset; group VLANs are checked as ether[14:2] & 0x0fff (the outer "
    "tag; wardtap matches the inner one under QinQ, which this filter does not decode)",
    "MAC and OUI selectors exactly: `ether src/dst MAC`, OUIs as ether[6:4] / ether[0:4] "
    "& 0xffffff00 (link-layer offsets are not shifted by `vlan`)",
    "ICMP types on the request's direction; the reverse direction also passes the matching "
    "echo/timestamp replies (0, 14, 129)",
    "tcp/udp/icmp6 primitives see only the fixed IPv6 header (no extension headers) and only "
    "first fragments; wardtap walks extension headers and attributes later fragments",
    "arp = allow and non_ip = allow become `arp` and `not (ip or ip6 or arp or a VLAN tag)`",
]


def _or(terms: Sequence[str]) -> str:
    return terms[0] if len(terms) == 1 else "(" + " or ".join(terms) + ")"


def _bpf_group(g: Group, side: str, tagged: bool) -> str | None:
    """Membership of the `side` (src or dst) endpoint; None: never (VLAN group, untagged)."""
    terms = [f"ether {side} {m.hex(':')}" for m in g.macs]
    at = 6 if side == "src" else 0
    terms += [f"ether[{at}:4] & 0xffffff00 = 0x{o.hex()}00" for o in g.ouis]
    terms += [f"{side} net {n}" for n in g.nets]
    if not g.vlans:
        return _or(terms)
    if not tagged:
        return None
    vlans = _or([f"ether[14:2] & 0x0fff = {v}" for v in g.vlans])
    return f"({_or(terms)} and {vlans})" if terms else vlans


def _bpf_side(policy: Policy, items: Sequence[str], side: str, tagged: bool) -> str | None:
    """"" when anything matches, None when nothing can."""
    alts = []
    for item in items:
        if item == "any":
            return ""
        g = policy.groups.get(item)
        expr = (_bpf_group(g, side, tagged) if g is not None
                else f"{side} net {ipaddress.ip_network(item, strict=False)}")
        if expr is not None:
            alts.append(expr)
    return _or(alts) if alts else None


_BPF_PROTO = {6: "tcp", 17: "udp", 132: "sctp", 1: "icmp", 58: "icmp6"}
_REPLY_TYPES = {1: {8: 0, 13: 14}, 58: {128: 129}}


def _bpf_l4(proto: int, ranges: Sequence[tuple[int, int]], port_side: str,
            reverse: bool) -> str:
    name = _BPF_PROTO.get(proto, f"(ip proto {proto} or ip6 proto {proto})")
    if proto == 0:
        return ""
    if not ranges:
        return name
    if proto in PORTED:
        return _or([f"{name} {port_side} port {lo}" if lo == hi
                    else f"{name} {port_side} portrange {lo}-{hi}" for lo, hi in ranges])
    if proto in ICMP:
        field = "icmp[icmptype]" if proto == 1 else "icmp6[icmp6type]"
        types = set()
        for lo, hi in ranges:
            types.update(range(lo, hi + 1))
        if reverse:       # replies to echo/timestamp requests; other types as they are
            types = {_REPLY_TYPES[proto].get(t, t) for t in types}
        return f"{name} and " + _or([f"{field} = {t}" for t in sorted(types)])
    return name


def bpf_filter(policy: Policy) -> str:
    """A tcpdump expression passing what the allow-list allows, packet by packet (BPF_NOTES)."""
    branches: dict[bool, list[str]] = {False: [], True: []}
    for tagged, clauses in branches.items():
        for rule in policy.rules:
            directions = [(rule.sources, rule.destinations)]
            if rule.either:
                directions.append((rule.destinations, rule.sources))
            for froms, tos in directions:
                for reverse in (False, True):
                    a, b = (tos, froms) if reverse else (froms, tos)
                    src = _bpf_side(policy, a, "src", tagged)
                    dst = _bpf_side(policy, b, "dst", tagged)
                    if src is None or dst is None:
                        continue
                    l4 = _bpf_l4(rule.proto, rule.ports, "src" if reverse else "dst", reverse)
                    parts = [p for p in (src, dst, l4) if p]
                    clause = "(" + " and ".join(parts) + ")" if parts else ""
                    if clause not in clauses:
                        clauses.append(clause)
        if any(c == "" for c in clauses):
            clauses[:] = ["ether[0] = ether[0]"]             # some rule allows everything
        if policy.arp:
            clauses.append("arp")
        if policy.non_ip:
            clauses.append("not (ip or ip6 or arp)" if tagged else
                           "not (ip or ip6 or arp or ether[12:2] = 0x8100 or "
                           "ether[12:2] = 0x88a8 or ether[12:2] = 0x9100)")
    untagged = " or ".join(branches[False]) or "ether[0] != ether[0]"
    tagged = " or ".join(branches[True]) or "ether[0] != ether[0]"
    return f"({untagged}) or (vlan and ({tagged}))"


# --- measurements ----------------------------------------------------------------------------


def replay_argv(capture: Path, policy: Path) -> list[str]:
    return [WARDTAP, "replay", str(capture), "--policy", str(policy), "--json"]


def m_replay(capture: Path, policy: Path, repeat: int, packets: int,
             env: dict[str, str] | None = None) -> dict[str, Any]:
    argv = replay_argv(capture, policy)
    check(run_child(argv, env=env), "wardtap replay")      # warm-up: page cache, .pyc
    runs = [run_child(argv, env=env) for _ in range(repeat)]
    for child in runs:
        check(child, "wardtap replay")
    summary = json.loads(runs[-1].stdout)
    result = timing([c.wall_s for c in runs], summary["packets"])
    result.update({
        "argv": argv,
        "internal_elapsed_s": [s["elapsed_s"] for s in (json.loads(c.stdout) for c in runs)],
        "peak_rss_kib": [json.loads(c.stdout).get("process_memory_kib", {}).get("peak_rss")
                         for c in runs],
        "user_s": [round(c.user_s, 3) for c in runs], "system_s": [round(c.system_s, 3)
                                                               for c in runs],
        "summary": {k: summary.get(k) for k in (
            "packets", "bytes", "allowed", "denied", "malformed", "flows", "devices",
            "violations", "violations_by_reason", "memory_bytes", "process_memory_kib",
            "packets_per_second")},
    })
    if summary["packets"] != packets:
        result["warning"] = f"replay saw {summary['packets']} packets, expected {packets}"
    return result


def m_inprocess(capture: Path, policy: Policy, repeat: int) -> dict[str, Any]:
    """Replayer.run in this process (no interpreter start-up, no imports), and the capture
    scan alone (CaptureFile: mmap the file, index every packet, classify nothing)."""
    from appliance.replay.runner import Replayer

    runs, scans, packets = [], [], 0
    for i in range(repeat + 1):                              # the first of each: warm-up
        replayer = Replayer(policy, "monitor")
        start = time.perf_counter()
        summary = replayer.run([str(capture)])
        if i:
            runs.append(time.perf_counter() - start)
        del replayer
        start = time.perf_counter()
        packets = 0
        with CaptureFile(str(capture)) as cap:
            for batch in cap.batches():
                packets += batch.count
        if i:
            scans.append(time.perf_counter() - start)
    return {"replayer_run": timing(runs, summary.packets) | {"allowed": summary.allowed},
            "scan": timing(scans, packets)}


def new_classifier(policy: Policy) -> Any:
    clf = fastpath.Classifier(flow_capacity=65536, device_capacity=4096, seed=1)
    clf.set_mode("monitor")
    clf.set_policy(compile_policy(policy))
    return clf


def classify_pass(clf: Any, buf: bytes, chunks: Sequence[tuple[Any, ...]]) -> float:
    verdicts = np.empty(BATCH, np.uint8)
    reasons = np.empty(BATCH, np.uint8)
    rules = np.empty(BATCH, np.uint16)
    events = np.empty(8192 * fastpath.EVENT_BYTES, np.uint8)
    classify, drain = clf.classify, clf.drain_events
    start = time.perf_counter()
    for offsets, lengths, stamps, links in chunks:
        classify(buf, offsets, lengths, stamps, links, verdicts, reasons, rules)
        while drain(events):
            pass
    return time.perf_counter() - start


def reference_counts(pre: Preloaded, policy: Policy, limit: int) -> dict[str, int]:
    """The classifier's verdicts on the first `limit` packets (to check the other loops)."""
    clf = new_classifier(policy)
    classify_pass(clf, pre.buf, pre.chunks(limit))
    st = clf.stats()
    return {k: int(st[k]) for k in ("packets", "allowed", "denied", "malformed")} | {
        "flows": int(st["flows_created"])}


def m_classifier(pre: Preloaded, policy: Policy, repeat: int) -> dict[str, Any]:
    clf = new_classifier(policy)
    chunks = pre.chunks()
    first = classify_pass(clf, pre.buf, chunks)              # warm-up: creates the flows
    after_warmup = clf.stats()
    times, allowed = [], []
    for _ in range(repeat):
        before = clf.stats()
        times.append(classify_pass(clf, pre.buf, chunks))
        allowed.append(int(clf.stats()["allowed"] - before["allowed"]))
    st = clf.stats()
    result = timing(times, pre.count)
    result.update({
        "batch": BATCH, "passes": repeat,
        "first_pass_s": first, "first_pass_pps": pre.count / first,
        "flows_created_warmup": int(after_warmup["flows_created"]),
        "flows_created_in_timed_passes": int(st["flows_created"]
                                             - after_warmup["flows_created"]),
        "flows_evicted": int(st["flows_evicted"]),
        "allowed_per_pass": allowed,
        "memory_bytes": int(clf.memory_bytes), "flow_capacity": int(clf.flow_capacity),
    })
    return result


def _count_packets(path: Path) -> int:
    n = 0
    with CaptureFile(str(path), 1 << 16) as cap:
        for b in cap.batches():
            n += b.count
    return n


def m_tcpdump(capture: Path, policy: Policy, repeat: int, out: Path,
              packets: int) -> dict[str, Any]:
    tcpdump = shutil.which("tcpdump") or "/usr/sbin/tcpdump"
    expr = bpf_filter(policy)
    (out / "allow-list.bpf").write_text(expr + "\n")
    prog = run_child([tcpdump, "-r", str(capture), "-d", expr])
    check(prog, "tcpdump -d (compiling the allow-list filter)")
    instructions = sum(1 for line in prog.stdout.decode().splitlines() if line.startswith("("))
    with_filter = [tcpdump, "-r", str(capture), "-w", "/dev/null", expr]
    without = [tcpdump, "-r", str(capture), "-w", "/dev/null"]
    check(run_child(without), "tcpdump")                     # warm-up
    result: dict[str, Any] = {"filter": expr, "filter_chars": len(expr),
                              "bpf_instructions": instructions, "notes": BPF_NOTES}
    for name, argv in (("with_filter", with_filter), ("no_filter", without)):
        runs = [run_child(argv) for _ in range(repeat)]
        for child in runs:
            check(child, "tcpdump")
        result[name] = timing([c.wall_s for c in runs], packets) | {
            "argv": argv[:-1] + ["<filter>"] if name == "with_filter" else argv}
    accepted = out / "bpf-accepted.pcap"
    with open(accepted, "wb") as fh:                         # untimed: count what passes
        check(run_child([tcpdump, "-r", str(capture), "-w", "-", expr], stdout=fh), "tcpdump")
    result["accepted_packets"] = _count_packets(accepted)
    accepted.unlink()
    return result


def m_python_loop(name: str, loop: Callable[..., FlowTable], capture: Path,
                  model: PolicyModel, pre: Preloaded, policy: Policy, packets: int,
                  budget_s: float, sample: int) -> dict[str, Any]:
    """Time on a sample; the whole capture too when that should take under budget_s."""
    loop(capture, model, 10)                                 # imports, outside the timing
    start = time.perf_counter()
    table = loop(capture, model, sample)
    seconds = time.perf_counter() - start
    estimate = seconds * packets / max(table.packets, 1)
    full = estimate < budget_s and table.packets < packets
    if full:
        start = time.perf_counter()
        table = loop(capture, model, None)
        seconds = time.perf_counter() - start
    timed = table.packets
    result = timing([seconds], timed) | {
        "scope": "full capture" if timed >= packets else
                 f"first {timed} packets, extrapolated (full run estimated "
                 f"{estimate:.0f} s > {budget_s:.0f} s budget)",
        "extrapolated": timed < packets,
        "estimated_full_s": seconds * packets / timed,
        "counts": table.counts(),
    }
    ref = reference_counts(pre, policy, timed)
    result["reference"] = ref
    result["verdicts_match_wardtap"] = all(table.counts()[k] == ref[k] for k in ref)
    log(f"{name}: {timed} packets in {seconds:.2f} s = {timed / seconds:,.0f} packets/s "
        f"({'verdicts match wardtap' if result['verdicts_match_wardtap'] else 'VERDICTS DIFFER'})")
    return result


def m_sampled(name: str, loop: Callable[..., FlowTable], capture: Path, out: Path,
              model: PolicyModel, pre: Preloaded, policy: Policy, sample: int) -> dict[str, Any]:
    path = out / f"sample-{sample}.pcap"
    n = write_sample(capture, path, sample)
    loop(path, model, 10)                                    # imports, outside the timing
    start = time.perf_counter()
    table = loop(path, model, None)
    seconds = time.perf_counter() - start
    result = timing([seconds], n) | {
        "scope": f"first {n} packets (a capture of their own), extrapolated",
        "extrapolated": True, "estimated_full_s": seconds * pre.count / n,
        "counts": table.counts(), "reference": reference_counts(pre, policy, n)}
    result["verdicts_match_wardtap"] = all(table.counts()[k] == result["reference"][k]
                                           for k in result["reference"])
    log(f"{name}: {n} packets in {seconds:.2f} s = {n / seconds:,.0f} packets/s "
        f"({'verdicts match wardtap' if result['verdicts_match_wardtap'] else 'VERDICTS DIFFER'})")
    return result


def m_memory(capture: Path, small: Path, policy: Path, out: Path) -> dict[str, Any]:
    clf = fastpath.Classifier()
    result: dict[str, Any] = {
        "flow_slot_bytes": int(fastpath.FLOW_SLOT_BYTES),
        "device_slot_bytes": int(fastpath.DEVICE_SLOT_BYTES),
        "event_bytes": int(fastpath.EVENT_BYTES), "bucket_slots": int(fastpath.BUCKET_SIZE),
        "classifier_default": {"flow_capacity": int(clf.flow_capacity),
                               "device_capacity": int(clf.device_capacity),
                               "memory_bytes": int(clf.memory_bytes)},
        "replays": {}}
    del clf
    for path in (capture, small):
        snap = out / f"rss-{path.stem}.json"
        child = run_child([PY, str(BENCH / "replay_rss.py"), str(snap), "replay", str(path),
                           "--policy", str(policy), "--json"])
        check(child, "replay_rss.py")
        rss = json.loads(snap.read_text())
        summary = json.loads(child.stdout)
        result["replays"][f"{summary['packets']:,} packets"] = {
            "capture": str(path), "capture_bytes": path.stat().st_size,
            "packets": summary["packets"], "wall_s": child.wall_s,
            "peak_rss_kib": rss["exit"]["VmHWM"], "snapshots_kib": rss,
            "replay_json_process_memory_kib": summary.get("process_memory_kib")}
    return result


def _import_tree(stderr: str) -> list[dict[str, Any]]:
    """-X importtime lines (children before their parent) as a tree of top-level imports."""
    pending: dict[int, list[dict[str, Any]]] = {}
    for line in stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \| (\s*)(\S+)", line)
        if not m:
            continue
        level = len(m.group(3)) // 2
        node = {"module": m.group(4), "cumulative_us": int(m.group(2)),
                "children": sorted(pending.pop(level + 1, []),
                                   key=lambda c: -c["cumulative_us"])}
        pending.setdefault(level, []).append(node)
    return sorted(pending.get(0, []), key=lambda c: -c["cumulative_us"])


def m_profile(capture: Path, policy: Path, out: Path, repeat: int) -> dict[str, Any]:
    """Where `wardtap replay`'s wall time goes: start-up, imports, the loop, the rest."""

    def median_wall(argv: list[str]) -> float:
        return statistics.median([run_child(argv).wall_s for _ in range(repeat + 1)][1:])

    startup = median_wall([PY, "-c", "pass"])
    startup_no_site = median_wall([PY, "-S", "-c", "pass"])
    argv = replay_argv(capture, policy)
    # One process, marks on the shared monotonic clock: spawn, script entered, appliance.cli
    # imported, main() start and end (Replayer.run's own elapsed_s inside it), reaped.
    marks_path = out / "timeline.json"
    phases: dict[str, list[float]] = {}
    for i in range(repeat + 1):
        child = run_child([PY, str(BENCH / "replay_timeline.py"), str(marks_path), *argv[1:]])
        check(child, "replay_timeline.py")
        if i == 0:
            continue                                         # warm-up
        m = json.loads(marks_path.read_text())
        run_s = json.loads(child.stdout)["elapsed_s"]
        for key, value in (
                ("wall", child.ended - child.started),
                ("start-up: spawn to the script's first line", m["enter"] - child.started),
                ("import appliance.cli", m["imported"] - m["enter"]),
                ("main() apart from Replayer.run: argparse and the imports it triggers, "
                 "policy, tables, JSON out", m["main_end"] - m["main_start"] - run_s),
                ("Replayer.run (its elapsed_s)", run_s),
                ("exit: interpreter teardown", child.ended - m["marks_written"])):
            phases.setdefault(key, []).append(value)
    # -X importtime: every import's own and cumulative microseconds, on stderr.
    child = run_child([PY, "-X", "importtime", *argv])
    check(child, "replay -X importtime")
    tree = _import_tree(child.stderr.decode())
    # cProfile: the replay process's Python functions. Cython 3 methods (cyfunctions) emit no
    # profiler events: classify() and next_batch() time shows as their callers' own time.
    prof = out / "replay.prof"
    check(run_child([PY, "-m", "cProfile", "-o", str(prof), *argv]), "replay under cProfile")
    st = pstats.Stats(str(prof))
    raw: dict[Any, Any] = st.stats  # type: ignore[attr-defined]

    def find(pattern: str, cumulative: bool = True) -> float:
        total = 0.0
        for (filename, _line, func), (_cc, _nc, tt, ct, _callers) in raw.items():
            if re.search(pattern, f"{filename}:{func}"):
                total += ct if cumulative else tt
        return total

    total = st.total_tt  # type: ignore[attr-defined]
    parts = {
        "imports (importlib, cumulative)": find(r"_find_and_load$"),
        "argparse: building the command line": find(r"cli\.py:build_parser$"),
        "load_policy + compile_policy": find(r"policy\.py:load_policy$")
        + find(r"policy\.py:compile_policy$"),
        "Replayer.__init__ (classifier tables)": find(r"replay\.py:__init__$"),
        "CaptureFile open, mmap, close": find(r"capture\.py:__init__$")
        + find(r"capture\.py:close$"),
        "scan: CaptureFile.batches own time (next_batch)": find(r"capture\.py:batches$", False),
        "classify: Replayer._run_file own time": find(r"replay\.py:_run_file$", False),
        "Replayer._drain: event records -> dicts": find(r"replay\.py:_drain$"),
        "Replayer._finish: stats, devices, summary": find(r"replay\.py:_finish$"),
        "json.dumps + print": find(r"json/__init__\.py:dumps$") + find(r"builtins.print"),
    }
    compiled = find(r"builtins.compile$")
    lines = []
    for (filename, line, func), (_cc, nc, tt, ct, _callers) in sorted(
            raw.items(), key=lambda kv: -kv[1][2])[:15]:
        lines.append({"function": f"{Path(filename).name}:{line}:{func}", "calls": nc,
                      "tottime_s": tt, "cumtime_s": ct})
    result = {
        "python_startup_s": startup, "python_startup_no_site_s": startup_no_site,
        "timeline_median_s": {k: statistics.median(v) for k, v in phases.items()},
        "timeline_runs_s": phases,
        "importtime_tree": tree,
        "importtime_total_us": sum(n["cumulative_us"] for n in tree),
        "cprofile_total_s": total, "cprofile_parts_s": parts,
        "cprofile_source_compiles_s": compiled,
        "cprofile_top_tottime": lines, "profile_file": str(prof)}
    return result


def _callgrind_totals(path: Path) -> int:
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise SystemExit(f"{path}: no summary line")


def _callgrind_top(path: Path, n: int = 10) -> list[dict[str, Any]]:
    annotate = shutil.which("callgrind_annotate")
    if not annotate:
        return []
    text = subprocess.run([annotate, "--auto=no", "--inclusive=no", str(path)],
                          capture_output=True, text=True).stdout
    top = []
    for line in text.splitlines():
        m = re.match(r"\s*([\d,]+)\s+\(\s*([\d.]+)%\)\s+(\S.*)$", line)
        if m and "PROGRAM TOTALS" not in line:
            where = re.sub(r"^.*?:(?=[^:/]+ \[)", "", m.group(3))   # drop the source file
            where = re.sub(r"\[(?:.*/)?([^/\]]+)\]$", r"[\1]", where)  # object's basename
            top.append({"ir": int(m.group(1).replace(",", "")), "percent": float(m.group(2)),
                        "function": where[:110]})
        if len(top) == n:
            break
    return top


def m_callgrind(capture: Path, policy: Path, out: Path, packets: int = 100_000,
                passes: int = 2, general: bool = False) -> dict[str, Any]:
    """Instructions per flow-table hit; `general`: with the compact path turned off."""
    valgrind = shutil.which("valgrind")
    if not valgrind:
        return {"error": "valgrind not found"}
    cg_dir = out / "callgrind"
    cg_dir.mkdir(exist_ok=True)
    for old in cg_dir.glob("*.out*"):
        old.unlink()
    script = str(BENCH / "callgrind_classifier.py")
    base = [valgrind, "--tool=callgrind", "--dump-instr=no"]
    common = [str(capture), str(policy), "--packets", str(packets)]
    if general:
        common.append("--general")
    result: dict[str, Any] = {"packets": packets, "measured_passes": passes,
                              "path": "general" if general else "compact"}
    # 1. Client requests: instrumentation on, counters zeroed, then the measured passes only.
    lib = out / "cgclient.so"
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc and Path("/usr/include/valgrind/callgrind.h").exists():
        built = subprocess.run([cc, "-O2", "-shared", "-fPIC", str(BENCH / "cgclient.c"), "-o",
                                str(lib)], capture_output=True, text=True)
        if built.returncode == 0:
            cg_out = cg_dir / "client.out"
            child = run_child([*base, "--instr-atstart=no", f"--callgrind-out-file={cg_out}",
                               PY, script, *common, "--passes", str(passes), "--client",
                               str(lib)])
            check(child, "callgrind (client requests)")
            dump = cg_dir / "client.out.1"
            ir = _callgrind_totals(dump)
            result["client_requests"] = {
                "ir_measured": ir, "ir_per_packet": ir / (passes * packets),
                "run": json.loads(child.stdout), "wall_s": child.wall_s, "dump": str(dump),
                "top_functions_exclusive": _callgrind_top(dump)}
        else:
            result["client_requests"] = {"error": built.stderr[-500:]}
    # 2. Difference of whole runs: (Ir with 1 + passes measured passes - Ir with 1) / packets.
    totals = {}
    for k in (1, 1 + passes):
        cg_out = cg_dir / f"passes-{k}.out"
        child = run_child([*base, f"--callgrind-out-file={cg_out}", PY, script, *common,
                           "--passes", str(k)])
        check(child, f"callgrind ({k} passes)")
        totals[k] = _callgrind_totals(cg_out)
    result["difference"] = {"ir_total": totals,
                            "ir_per_packet": (totals[1 + passes] - totals[1])
                            / (passes * packets)}
    cr = result.get("client_requests", {})
    result["ir_per_packet"] = cr.get("ir_per_packet", result["difference"]["ir_per_packet"])
    return result


# --- report ----------------------------------------------------------------------------------


def _rate(pps: float) -> str:
    if pps >= 1e6:
        return f"{pps / 1e6:.2f} M"
    if pps >= 1e3:
        return f"{pps / 1e3:.1f} k"
    return f"{pps:.0f} "


def _ratio(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:,.0f}x" if x >= 100 else f"{x:.1f}x" if x >= 10 else f"{x:.2f}x"


def report(r: dict[str, Any]) -> list[str]:
    res = r["results"]
    rows: list[tuple[str, str, dict[str, Any]]] = []
    if "replay" in res:
        rows.append(("wardtap replay --json", "process wall", res["replay"]))
    if "replay_no_pyc" in res:
        rows.append(("  same, no .pyc (env as is)", "process wall", res["replay_no_pyc"]))
    if "inprocess" in res:
        rows.append(("Replayer.run in-process", "run()", res["inprocess"]["replayer_run"]))
        rows.append(("capture scan alone", "mmap+index", res["inprocess"]["scan"]))
    if "classifier" in res:
        rows.append(("classifier alone (hits)", "classify+drain", res["classifier"]))
    if "tcpdump" in res:
        rows.append(("tcpdump -w /dev/null BPF", "process wall", res["tcpdump"]["with_filter"]))
        rows.append(("tcpdump -w /dev/null", "process wall", res["tcpdump"]["no_filter"]))
    for key, label in (("dpkt", "dpkt loop"), ("struct", "struct loop"),
                       ("scapy", "scapy PcapReader"), ("pyshark", "pyshark FileCapture")):
        if key in res:
            rows.append((label, "in-process", res[key]))
    replay_pps = res.get("replay", {}).get("pps_best")
    clf_pps = res.get("classifier", {}).get("pps_best")
    lines = [f"{'contender':<30}{'timed':<15}{'packets':>10}{'best s':>10}{'median s':>10}"
             f"{'pkts/s':>11}{'ns/pkt':>9}{'replay is':>11}{'clf is':>9}", "-" * 115]
    for label, what, t in rows:
        mark = "*" if t.get("extrapolated") else ""
        lines.append(
            f"{label:<30}{what:<15}{t['packets']:>10,}{t['best_s']:>10.3f}{t['median_s']:>10.3f}"
            f"{_rate(t['pps_best']):>11}{t['ns_per_packet_best']:>9,.0f}"
            f"{_ratio(replay_pps / t['pps_best'] if replay_pps else None):>11}"
            f"{_ratio(clf_pps / t['pps_best'] if clf_pps else None):>9}{mark}")
    lines.append("'replay is' / 'clf is': that contender's packets/s divided into wardtap "
                 "replay's / the classifier's (best runs). * sampled, extrapolated.")
    return lines


def bars(r: dict[str, Any]) -> list[tuple[str, str, str, bool | None]]:
    res = r["results"]
    out: list[tuple[str, str, str, bool | None]] = []
    if "classifier" in res:
        pps = res["classifier"]["pps_best"]
        out.append(("classifier alone, flow-table hits", ">= 10 Mpps", f"{pps / 1e6:.2f} Mpps",
                    pps >= 10e6))
    if "replay" in res and "tcpdump" in res:
        x = res["replay"]["best_s"] / res["tcpdump"]["with_filter"]["best_s"]
        med = res["replay"]["median_s"] / res["tcpdump"]["with_filter"]["median_s"]
        out.append(("replay wall / tcpdump-with-BPF wall", "<= 1.5x",
                    f"{x:.2f}x (medians {med:.2f}x)", x <= 1.5))
    if "dpkt" in res:
        if "replay" in res:
            x = res["replay"]["pps_best"] / res["dpkt"]["pps_best"]
            out.append(("replay packets/s / dpkt loop's", ">= 50x", f"{x:.1f}x", x >= 50))
        if "classifier" in res:
            x = res["classifier"]["pps_best"] / res["dpkt"]["pps_best"]
            out.append(("classifier packets/s / dpkt loop's", ">= 50x", f"{x:.0f}x", x >= 50))
    if "memory" in res:
        b = res["memory"]["flow_slot_bytes"]
        out.append(("bytes per flow slot", "<= 256", f"{b}", b <= 256))
    if "callgrind" in res and "ir_per_packet" in res["callgrind"]:
        ir = res["callgrind"]["ir_per_packet"]
        out.append(("instructions/packet on hits (callgrind)", "< 300 (goal)", f"{ir:.0f}",
                    ir < 300))
    return out


def print_details(r: dict[str, Any]) -> None:
    res, ratios = r["results"], r["ratios"]
    print("\nratios")
    for k, v in ratios.items():
        print(f"  {k:<52} {v:,.2f}")
    if "replay" in res:
        s = res["replay"]["summary"]
        print(f"\nwardtap replay verdicts: {s['allowed']:,} allowed, {s['denied']:,} denied, "
              f"{s['malformed']:,} malformed packets; {s['flows']:,} flows, "
              f"{s['violations']} violations {s['violations_by_reason']}")
        print(f"  internal Replayer.run elapsed (s): {res['replay']['internal_elapsed_s']}")
    if "classifier" in res:
        c = res["classifier"]
        print(f"classifier: {c['passes']} timed passes of {c['packets']:,} packets in batches "
              f"of {c['batch']}, {c['ns_per_packet_best']:.1f} ns/packet best; first pass "
              f"(creates {c['flows_created_warmup']:,} flows) {_rate(c['first_pass_pps'])}pps; "
              f"flows created during timed passes: {c['flows_created_in_timed_passes']}")
    if "tcpdump" in res:
        t = res["tcpdump"]
        print(f"\nBPF filter ({t['filter_chars']} chars, {t['bpf_instructions']} BPF "
              f"instructions), {t['accepted_packets']:,} packets accepted:")
        print(f"  {t['filter']}")
        loop = next((res[k] for k in ("struct", "dpkt") if k in res
                     and not res[k]["extrapolated"]), None)
        if loop is not None:
            c = loop["counts"]
            wrong = c["ip_packets_by_flow_reason"].get("wrong_initiator", 0)
            print(f"  cross-check: {c['allowed']:,} allowed by wardtap + {wrong:,} packets of "
                  f"flows it denies as wrong_initiator = {c['allowed'] + wrong:,} "
                  f"({'equal to' if c['allowed'] + wrong == t['accepted_packets'] else 'NOT'} "
                  f"what the filter accepts)")
        print("  approximations:")
        for note in t["notes"]:
            print(f"   - {note}")
    for key in ("dpkt", "struct", "scapy", "pyshark"):
        if key in res:
            x = res[key]
            c = x["counts"]
            print(f"{key}: {x['scope']}; allowed {c['allowed']:,} denied {c['denied']:,} flows "
                  f"{c['flows']:,} violations {c['violations_by_reason']}; same verdicts as "
                  f"the classifier on those packets: {x['verdicts_match_wardtap']}")
    if "callgrind" in res:
        cg = res["callgrind"]
        print(f"\ncallgrind ({cg['packets']:,} preloaded packets, warm-up pass then "
              f"{cg['measured_passes']} measured passes):")
        if "ir_per_packet" in cg.get("client_requests", {}):
            cr = cg["client_requests"]
            print(f"  client requests (zero before, dump after the measured passes): "
                  f"{cr['ir_measured']:,} Ir = {cr['ir_per_packet']:.1f} instructions/packet")
            for f in cr["top_functions_exclusive"][:8]:
                print(f"    {f['ir'] / (cg['packets'] * cg['measured_passes']):7.1f}/pkt "
                      f"{f['percent']:5.1f}%  {f['function']}")
        elif "client_requests" in cg:
            print(f"  client requests unavailable: {cg['client_requests'].get('error')}")
        d = cg["difference"]
        print(f"  difference of whole runs: {d['ir_total']} -> "
              f"{d['ir_per_packet']:.1f} instructions/packet")
    if "memory" in res:
        m = res["memory"]
        cd = m["classifier_default"]
        print(f"\nmemory: flow slot {m['flow_slot_bytes']} B, device slot "
              f"{m['device_slot_bytes']} B, event {m['event_bytes']} B; default classifier "
              f"({cd['flow_capacity']:,} flow slots, {cd['device_capacity']:,} devices) "
              f"memory_bytes = {cd['memory_bytes']:,} ({cd['memory_bytes'] / 2**20:.1f} MiB)")
        for label, x in m["replays"].items():
            before = x["snapshots_kib"].get("before_unmap", {})
            at_exit = x["snapshots_kib"].get("exit", {})
            print(f"  replay {label:>4} ({x['packets']:,} packets, capture "
                  f"{x['capture_bytes'] / 2**20:.0f} MiB): peak RSS {x['peak_rss_kib'] / 1024:.1f} "
                  f"MiB; before unmapping the capture: RssAnon "
                  f"{before.get('RssAnon', 0) / 1024:.1f} MiB, RssFile "
                  f"{before.get('RssFile', 0) / 1024:.1f} MiB (of which the capture mapping "
                  f"{before.get('capture_mapping_rss', 0) / 1024:.1f} MiB); at exit RssAnon "
                  f"{at_exit.get('RssAnon', 0) / 1024:.1f} MiB, RssFile "
                  f"{at_exit.get('RssFile', 0) / 1024:.1f} MiB")
    if "profile" in res:
        p = res["profile"]
        print("\nwhere `wardtap replay` spends its wall time (medians; one process timed by "
              "marks on the shared monotonic clock, no profiler)")
        for label, value in p["timeline_median_s"].items():
            print(f"  {label:<100}{value * 1e3:8.1f} ms")
        start, no_site = p["python_startup_s"], p["python_startup_no_site_s"]
        print(f"    (python -c pass takes {start * 1e3:.1f} ms; site and the .pth files, "
              f"against python -S: {(start - no_site) * 1e3:.1f} ms)")
        if "inprocess" in res:
            scan = res["inprocess"]["scan"]["median_s"]
            clf = res.get("classifier", {}).get("median_s")
            alone = (f", classifier alone on hits over the cold preloaded capture "
                     f"{clf * 1e3:.1f} ms" if clf else "")
            print(f"  for comparison, in-process (not additive: inside run() the classifier "
                  f"reads headers the scan just brought into cache): scan alone "
                  f"{scan * 1e3:.1f} ms{alone}")
        print(f"  cProfile of one replay ({p['cprofile_total_s'] * 1e3:.1f} ms profiled; "
              f"inclusive times that overlap, e.g. argparse includes the imports it triggers; "
              f"the profiler inflates Python-heavy parts such as imports):")
        for k, v in p["cprofile_parts_s"].items():
            print(f"    {k:<60}{v * 1e3:8.1f} ms")
        if p["cprofile_source_compiles_s"] > 0.0005:
            print(f"    (compiling .py sources without a .pyc, inside imports: "
                  f"{p['cprofile_source_compiles_s'] * 1e3:.1f} ms)")
        print(f"  -X importtime (total {p['importtime_total_us'] / 1e3:.1f} ms), top-level "
              f"imports and their largest children:")
        for node in p["importtime_tree"][:7]:
            kids = ", ".join(f"{c['module']} {c['cumulative_us'] / 1e3:.1f}"
                             for c in node["children"][:4] if c["cumulative_us"] >= 1000)
            print(f"    {node['module']:<30}{node['cumulative_us'] / 1e3:7.1f} ms"
                  + (f"  ({kids})" if kids else ""))


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="wardtap replay against tcpdump, dpkt, plain "
                                 "Python, scapy and pyshark (see bench/README.md)")
    ap.add_argument("--packets", type=int, default=1_000_000)
    ap.add_argument("--flows", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3, help="timed runs/passes (best, median)")
    ap.add_argument("--callgrind", action="store_true", help="also count instructions/packet")
    ap.add_argument("--out", default=str(BENCH / "out"))
    ap.add_argument("--skip", default="", help=f"comma-separated: {', '.join(SKIPPABLE)}")
    ap.add_argument("--budget", type=float, default=60.0,
                    help="seconds a dpkt/struct full run may take, else sampled (default 60)")
    ap.add_argument("--sample", type=int, default=50_000,
                    help="packets timed first for dpkt/struct (and used if over budget)")
    ap.add_argument("--scapy-sample", type=int, default=20_000)
    ap.add_argument("--pyshark-sample", type=int, default=2000)
    args = ap.parse_args(argv)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    if skip - set(SKIPPABLE):
        ap.error(f"--skip: unknown {', '.join(sorted(skip - set(SKIPPABLE)))}")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    global CHILD_ENV
    CHILD_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    CHILD_ENV["PYTHONPYCACHEPREFIX"] = str(out / "pycache")

    r: dict[str, Any] = {"meta": {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "host": platform.node(), "machine": platform.machine(), "cpu": _cpu(),
        "cpus": os.cpu_count(), "loadavg_at_start": os.getloadavg(),
        "python": platform.python_version(), "git": _git(),
        "args": vars(args)}, "results": {}}
    res = r["results"]
    log(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs ({_cpu()})")
    cap_meta = ensure_capture(out, args.packets, args.flows, args.seed)
    capture = Path(cap_meta["path"])
    how = "reused" if cap_meta["reused"] else f"generated in {cap_meta['generated_s']:.1f} s"
    log(f"capture {capture} ({cap_meta['size'] / 2**20:.0f} MiB, {how})")
    small_meta = ensure_capture(out, min(100_000, args.packets), args.flows, args.seed)
    small = Path(small_meta["path"])
    policy_path = write_policy(out)
    policy = load_policy(str(policy_path))
    model = PolicyModel(policy)
    r["capture"], r["capture_100k"] = cap_meta, small_meta
    r["policy"] = {"path": str(policy_path), "sha256": policy.digest,
                   "groups": len(policy.groups), "rules": len(policy.rules)}
    pre = preload(capture, args.packets)
    n = pre.count
    log(f"preloaded {n:,} packets ({len(pre.buf) / 2**20:.0f} MiB) for the in-process loops")

    if "replay" not in skip:
        res["replay"] = m_replay(capture, policy_path, args.repeat, n)
        log(f"wardtap replay: best {res['replay']['best_s']:.3f} s = "
            f"{_rate(res['replay']['pps_best'])}packets/s")
        res["replay_100k"] = m_replay(small, policy_path, args.repeat, small_meta
                                      ["params"]["packets"])
        log(f"wardtap replay 100k: best {res['replay_100k']['best_s']:.3f} s")
        if os.environ.get("PYTHONDONTWRITEBYTECODE"):
            res["replay_no_pyc"] = m_replay(capture, policy_path, args.repeat, n,
                                            env=dict(os.environ))
            log(f"wardtap replay with this environment's PYTHONDONTWRITEBYTECODE (no .pyc): "
                f"best {res['replay_no_pyc']['best_s']:.3f} s")
        res["inprocess"] = m_inprocess(capture, policy, args.repeat)
        log(f"in-process Replayer.run: best {res['inprocess']['replayer_run']['best_s']:.3f} s, "
            f"scan alone {res['inprocess']['scan']['best_s']:.3f} s")
    if "classifier" not in skip:
        res["classifier"] = m_classifier(pre, policy, args.repeat)
        log(f"classifier: best {_rate(res['classifier']['pps_best'])}packets/s")
    if "tcpdump" not in skip:
        res["tcpdump"] = m_tcpdump(capture, policy, args.repeat, out, n)
        log(f"tcpdump: BPF {res['tcpdump']['with_filter']['best_s']:.3f} s, no filter "
            f"{res['tcpdump']['no_filter']['best_s']:.3f} s")
    if "struct" not in skip:
        res["struct"] = m_python_loop("struct loop", struct_loop, capture, model, pre, policy, n,
                                      args.budget, args.sample)
    if "dpkt" not in skip:
        res["dpkt"] = m_python_loop("dpkt loop", dpkt_loop, capture, model, pre, policy, n,
                                    args.budget, args.sample)
    if "scapy" not in skip:
        res["scapy"] = m_sampled("scapy", scapy_loop, capture, out, model, pre, policy,
                                 args.scapy_sample)
    if "pyshark" not in skip:
        res["pyshark"] = m_sampled("pyshark", pyshark_loop, capture, out, model, pre, policy,
                                   args.pyshark_sample)
    del pre
    if args.callgrind:
        log("callgrind: three runs under valgrind (a few minutes)")
        res["callgrind"] = m_callgrind(capture, policy_path, out,
                                       packets=min(100_000, args.packets))
    if "memory" not in skip:
        res["memory"] = m_memory(capture, small, policy_path, out)
    if "profile" not in skip:
        res["profile"] = m_profile(capture, policy_path, out, args.repeat)

    r["ratios"] = ratios(res)
    r["bars"] = [{"bar": b, "goal": g, "measured": m, "met": ok} for b, g, m, ok in bars(r)]
    r["meta"]["bench_s"] = round(time.perf_counter() - started, 1)
    r["meta"]["loadavg_at_end"] = os.getloadavg()
    (out / "results.json").write_text(json.dumps(r, indent=2, default=str))

    print(f"\nwardtap bench: {n:,} packets ({cap_meta['size'] / 2**20:.0f} MiB, "
          f"{args.flows} flows, IMIX 64/576/1500 B 7:4:1), policy {policy.name!r} "
          f"({len(policy.rules)} rules), {args.repeat} runs each, {_cpu()}, "
          f"{os.cpu_count()} CPUs, load average {r['meta']['loadavg_at_start'][0]:.2f} at "
          f"start, {r['meta']['loadavg_at_end'][0]:.2f} at end\n")
    if max(r["meta"]["loadavg_at_start"][0], r["meta"]["loadavg_at_end"][0]) > 0.5:
        print("warning: other processes were running; timings are noisy (compare medians, "
              "or run again on a quiet machine)\n")
    print("\n".join(report(r)))
    print_details(r)
    print(f"\n{'bar (from the issue)':<44}{'goal':<16}{'measured':<28}")
    for b in r["bars"]:
        verdict = "met" if b["met"] else "NOT MET"
        print(f"{b['bar']:<44}{b['goal']:<16}{b['measured']:<28}{verdict}")
    print(f"\nall figures: {out / 'results.json'} ({r['meta']['bench_s']:.0f} s)")
    return 0


def ratios(res: dict[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    rep, clf = res.get("replay"), res.get("classifier")
    td = res.get("tcpdump")
    if rep and td:
        out["replay wall / tcpdump BPF wall (best)"] = (rep["best_s"]
                                                        / td["with_filter"]["best_s"])
        out["replay wall / tcpdump BPF wall (median)"] = (rep["median_s"]
                                                          / td["with_filter"]["median_s"])
        out["replay wall / tcpdump no-filter wall (best)"] = (rep["best_s"]
                                                              / td["no_filter"]["best_s"])
    if rep and clf:
        out["classifier pps / replay pps"] = clf["pps_best"] / rep["pps_best"]
    for key in ("dpkt", "struct", "scapy", "pyshark"):
        if key in res:
            if rep:
                out[f"replay pps / {key} pps"] = rep["pps_best"] / res[key]["pps_best"]
            if clf:
                out[f"classifier pps / {key} pps"] = clf["pps_best"] / res[key]["pps_best"]
    if rep and res.get("replay_100k"):
        small = res["replay_100k"]
        scale = rep["packets"] / small["packets"]
        if scale > 1:
            out["replay fixed cost estimate (s)"] = ((scale * small["best_s"] - rep["best_s"])
                                                     / (scale - 1))
    return out


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith(("model name", "Model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _git() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                             capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=ROOT, capture_output=True, text=True).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except OSError:
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
