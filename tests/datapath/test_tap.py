"""Tap datapath (AfPacketSource): a real TPACKET_V3 ring in real network namespaces.

The source runs where the daemon would: in the appliance namespace, in its own process
(this file run as a script, `capture` mode), and reports every frame of every batch as a
JSON line; the test injects known frames from the ward namespace (`inject` mode: a raw
packet socket, so the test decides every byte) or lets the ward's kernel send real UDP and
ping, then checks the batches byte for byte and the flows the fast path made of them.

The block walker is also tested alone on blocks built by hand, placed between two
inaccessible pages: a read or write outside the block is a crash, not a silent pass.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import mmap
import os
import queue
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from array import array
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
for _path in (ROOT, ROOT / "tests"):     # when run as a script inside a namespace
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import pytest  # noqa: E402
from netns import Ward, wait_for  # noqa: E402

from appliance.sources import make_source  # noqa: E402
from appliance.sources.afpacket import RING_ERRORS, AfPacketSource  # noqa: E402
from appliance.sources.base import SourceError  # noqa: E402
from demoward.frames import (  # noqa: E402
    ETH_ARP,
    ETH_IPV4,
    ETH_IPV6,
    IPPROTO_TCP,
    IPPROTO_UDP,
    arp,
    ether,
    ipv4,
    ipv6,
    tcp,
    udp,
)
from fastpath.core import EVENT_FIELDS, RING_COUNTER_NAMES, ring_block_batch  # noqa: E402

WARD_MAC = "02:77:00:00:00:10"
PEER_MAC = "02:77:00:00:00:99"
PEER_IP = "10.77.0.99"
PAGE = mmap.PAGESIZE

needs_root = pytest.mark.skipif(os.geteuid() != 0,
                                reason="network namespaces and packet sockets need root")


# --- hand-built TPACKET_V3 blocks --------------------------------------------------------

BD_HDR = 48
MACOFF = 82          # where the kernel puts an Ethernet frame: ALIGN(68 + 16, 16) - 14


def build_block(packets: list[dict[str, Any]], size: int = PAGE) -> bytearray:
    """A block as the kernel writes it: descriptor, then records aligned to 8 bytes.

    Each packet: frame (bytes), and optionally sec, nsec, wire, status, tci, tpid, mac.
    """
    block = bytearray(size)
    off = BD_HDR
    starts = []
    for p in packets:
        mac = p.get("mac", MACOFF)
        frame = p["frame"]
        starts.append(off)
        struct.pack_into("6IHHIIH", block, off, 0, p.get("sec", 1_700_000_000),
                         p.get("nsec", 0), len(frame), p.get("wire", len(frame)),
                         p.get("status", 1), mac, mac + 14, 0, p.get("tci", 0), p.get("tpid", 0))
        block[off + mac:off + mac + len(frame)] = frame
        off += (mac + len(frame) + 7) & ~7
    for a, b in zip(starts, starts[1:], strict=False):
        struct.pack_into("I", block, a, b - a)
    last = off if packets else BD_HDR
    # version, offset_to_priv, block_status, num_pkts, offset_to_first_pkt, blk_len
    struct.pack_into("6I", block, 0, 3, 0, 1, len(packets), BD_HDR, last)
    return block


def frame_udp(i: int, size: int = 0) -> bytes:
    return ether(PEER_MAC, WARD_MAC, ETH_IPV4,
                 ipv4("10.77.0.10", PEER_IP, IPPROTO_UDP,
                      udp(40000 + i, 5000 + i, bytes([i & 0xFF]) * size,
                          src="10.77.0.10", dst=PEER_IP)))


class Arrays:
    def __init__(self, n: int) -> None:
        self.offsets = array("q", bytes(8 * n))
        self.lengths = array("I", bytes(4 * n))
        self.wire = array("I", bytes(4 * n))
        self.ts = array("Q", bytes(8 * n))
        self.links = array("H", bytes(2 * n))
        self.counters = array("Q", bytes(8 * len(RING_COUNTER_NAMES)))

    def walk(self, ring: Any, offset: int, size: int, linktype: int = 1) -> int:
        return ring_block_batch(ring, offset, size, self.offsets, self.lengths, self.wire,
                                self.ts, self.links, self.counters, linktype)

    def counts(self) -> dict[str, int]:
        return dict(zip(RING_COUNTER_NAMES, self.counters, strict=True))


class Guarded:
    """One writable page of `PAGE` bytes between two PROT_NONE pages."""

    def __init__(self) -> None:
        self.map = mmap.mmap(-1, 3 * PAGE)
        anchor = ctypes.c_char.from_buffer(self.map)
        base = ctypes.addressof(anchor)
        del anchor
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
        for page in (0, 2):
            assert libc.mprotect(base + page * PAGE, PAGE, 0) == 0, os.strerror(ctypes.get_errno())
        self.ring = memoryview(self.map)

    def put(self, block: bytes | bytearray) -> None:
        assert len(block) == PAGE
        self.ring[PAGE:2 * PAGE] = block

    def walk(self, arrays: Arrays, size: int = PAGE) -> int:
        return arrays.walk(self.ring, PAGE, size)


@pytest.fixture(scope="module")
def guarded() -> Guarded:
    return Guarded()


def test_walker_reads_every_packet_and_reinserts_vlan_tags(guarded: Guarded) -> None:
    plain = frame_udp(1, 10)
    tagged = ether(PEER_MAC, WARD_MAC, ETH_IPV4, ipv4("10.77.0.10", PEER_IP, IPPROTO_UDP,
                                                       udp(1, 2, b"v")), vlans=[0x2000 | 42])
    qinq = ether(PEER_MAC, WARD_MAC, ETH_IPV4, ipv4("10.77.0.10", PEER_IP, IPPROTO_UDP,
                                                     udp(3, 4, b"q")), vlans=[100, 7], qinq=True)
    untag = lambda f: f[:12] + f[16:]  # noqa: E731  (what the kernel leaves in the ring)
    block = build_block([
        {"frame": plain, "sec": 1_700_000_000, "nsec": 5},
        {"frame": untag(tagged), "sec": 1_700_000_001, "nsec": 6, "status": 1 | 0x10,
         "tci": 0x2000 | 42},
        {"frame": untag(qinq), "sec": 1_700_000_002, "nsec": 7, "status": 1 | 0x10 | 0x40,
         "tci": 100, "tpid": 0x88A8},
        {"frame": plain[:40], "wire": len(plain), "nsec": 8},
    ])
    guarded.put(block)
    arrays = Arrays(16)
    for _ in range(2):        # a second walk of the same block gives the same batch
        assert guarded.walk(arrays) == 4
        frames = [bytes(guarded.ring[o:o + n])
                  for o, n in zip(arrays.offsets[:4], arrays.lengths[:4], strict=True)]
        assert frames == [plain, tagged, qinq, plain[:40]]
        assert list(arrays.wire[:4]) == [len(plain), len(tagged), len(qinq), len(plain)]
        assert list(arrays.ts[:4]) == [1_700_000_000_000_000_005, 1_700_000_001_000_000_006,
                                       1_700_000_002_000_000_007, 1_700_000_000_000_000_008]
        assert list(arrays.links[:4]) == [1, 1, 1, 1]
        assert all(PAGE + BD_HDR <= o < 2 * PAGE for o in arrays.offsets[:4])
    counts = arrays.counts()
    assert counts["vlan_reinserted"] == 2 and counts["vlan_not_reinserted"] == 0
    assert counts["truncated"] == 2          # two walks of one cut packet
    assert counts["wire_bytes"] == 2 * (2 * len(plain) + len(tagged) + len(qinq))


def test_walker_leaves_a_tag_without_headroom_and_counts_it(guarded: Guarded) -> None:
    frame = frame_udp(2)
    guarded.put(build_block([{"frame": frame, "status": 0x11, "tci": 5, "mac": 70}]))
    arrays = Arrays(4)
    assert guarded.walk(arrays) == 1
    assert bytes(guarded.ring[arrays.offsets[0]:arrays.offsets[0] + arrays.lengths[0]]) == frame
    assert arrays.counts()["vlan_not_reinserted"] == 1


def test_walker_accepts_a_packet_ending_on_the_last_byte(guarded: Guarded) -> None:
    size = PAGE - BD_HDR - MACOFF
    frame = frame_udp(3, size - len(frame_udp(3)))
    assert len(frame) == size
    guarded.put(build_block([{"frame": frame}]))
    arrays = Arrays(4)
    assert guarded.walk(arrays) == 1
    assert arrays.offsets[0] + arrays.lengths[0] == 2 * PAGE


def test_walker_empty_block(guarded: Guarded) -> None:
    guarded.put(build_block([]))
    assert guarded.walk(Arrays(4)) == 0


def _corrupt(block: bytearray, fmt: str, at: int, value: int) -> bytearray:
    block = bytearray(block)
    struct.pack_into(fmt, block, at, value)
    return block


P1 = BD_HDR                     # first record in build_block
CORRUPTIONS = {
    "blk_len past the block": (lambda b: _corrupt(b, "I", 20, PAGE + 1), 2),
    "blk_len inside the header": (lambda b: _corrupt(b, "I", 20, 12), 2),
    "first packet past blk_len": (lambda b: _corrupt(b, "I", 16, 0xFFFFFFF0), 3),
    "first packet inside the header": (lambda b: _corrupt(b, "I", 16, 8), 3),
    "num_pkts huge": (lambda b: _corrupt(b, "I", 12, 0xFFFFFFFF), 4),
    "snaplen past the block": (lambda b: _corrupt(b, "I", P1 + 12, 0xFFFFFFFF), 5),
    "snaplen one past blk_len": (lambda b: _corrupt(b, "I", P1 + 12, PAGE), 5),
    "tp_mac inside the header": (lambda b: _corrupt(b, "H", P1 + 24, 10), 5),
    "tp_mac past the block": (lambda b: _corrupt(b, "H", P1 + 24, 0xFFFF), 5),
    "next offset zero": (lambda b: _corrupt(b, "I", P1, 0), 6),
    "next offset past the block": (lambda b: _corrupt(b, "I", P1, 0xFFFFFFF0), 5),
    "one packet more than written": (lambda b: _corrupt(b, "I", 12, 4), 6),   # last next is 0
}


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_walker_rejects_a_corrupted_block(guarded: Guarded, name: str) -> None:
    good = build_block([{"frame": frame_udp(i, 40)} for i in range(3)])
    corrupt, code = CORRUPTIONS[name]
    guarded.put(corrupt(good))
    assert guarded.walk(Arrays(64)) == -code
    assert code in RING_ERRORS


def test_walker_checks_the_block_against_the_ring() -> None:
    ring = bytearray(build_block([{"frame": frame_udp(0)}]))
    arrays = Arrays(4)
    assert arrays.walk(ring, 0, PAGE) == 1
    assert arrays.walk(ring, 8, PAGE) == -1           # runs past the ring
    assert arrays.walk(ring, 0, 40) == -1             # shorter than a block header
    assert arrays.walk(ring, 4, 64) == -1             # misaligned
    assert arrays.walk(ring, 0, 64) == -2             # blk_len larger than the block
    assert arrays.walk(ring, 0, PAGE, linktype=101) == 1 and arrays.links[0] == 101
    assert ring_block_batch(ring, 0, PAGE, array("q"), array("I"), array("I"), array("Q"),
                            array("H")) == -4


def test_walker_fuzzed_blocks_stay_inside(guarded: Guarded) -> None:
    """Random damage to every header field: an error, or packets inside the block."""
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies
    good = build_block([{"frame": frame_udp(i, 7 * i), "status": 1 | (0x10 if i % 2 else 0),
                         "tci": i} for i in range(6)])
    fields = [12, 16, 20] + [r + f for r in range(BD_HDR, 700, 8) for f in (0, 12, 16, 24)]
    outcomes: set[str] = set()

    @hypothesis.settings(max_examples=2000, deadline=None, derandomize=True)
    @hypothesis.given(st.lists(st.tuples(st.sampled_from(fields),
                                         st.sampled_from([0, 1, 47, 48, 68, 72, 82, 4095, 4096,
                                                          0x7FFF, 0xFFFF, 0xFFFFFFFF])
                                         | st.integers(0, 0xFFFFFFFF)),
                               min_size=1, max_size=6))
    def check(damage: list[tuple[int, int]]) -> None:
        block = bytearray(good)
        for at, value in damage:
            block[at:at + 4] = (value & 0xFFFFFFFF).to_bytes(4, sys.byteorder)
        guarded.put(block)
        arrays = Arrays(128)
        n = guarded.walk(arrays)
        if n > 0:
            outcomes.add("accepted")
            for o, length in zip(arrays.offsets[:n], arrays.lengths[:n], strict=True):
                assert PAGE + BD_HDR <= o and o + length <= 2 * PAGE
        else:
            outcomes.add("rejected" if n else "empty")
            assert n == 0 or -n in RING_ERRORS

    check()
    assert {"accepted", "rejected"} <= outcomes


# --- opening the source --------------------------------------------------------------------


def test_missing_interface_is_one_clear_line() -> None:
    source = make_source("tap", interface="wt-nosuch9")
    assert isinstance(source, AfPacketSource) and source.capabilities == ("CAP_NET_RAW",)
    with pytest.raises(SourceError) as err:
        source.open()
    assert str(err.value) == "tap: interface wt-nosuch9 does not exist"
    source.close()
    source.close()


@pytest.mark.parametrize("options,words", [
    ({"block_size": 1000}, "multiple of the page size"),
    ({"block_count": 1}, "at least 2 blocks"),
    ({"frame_size": 100}, "multiple of 16"),
    ({"snaplen": 5}, "snap length"),
    ({"fanout_mode": "fast"}, "fanout mode"),
])
def test_bad_options_are_refused_before_opening(options: dict[str, Any], words: str) -> None:
    with pytest.raises(SourceError, match=words):
        AfPacketSource("lo", **options)


@needs_root
def test_missing_capability_is_one_clear_line() -> None:
    setpriv = shutil.which("setpriv")
    assert setpriv, "setpriv (util-linux) is needed to drop a capability"
    result = subprocess.run(
        [setpriv, "--bounding-set", "-net_raw", "--", sys.executable, __file__, "open", "lo"],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert result.stdout.strip() == ("tap: opening a packet socket on lo needs CAP_NET_RAW "
                                     "(run as root or grant the capability)")


# --- live capture in namespaces ----------------------------------------------------------


class TapProcess:
    """This file in `capture` mode, in a namespace; its JSON lines collected by a thread."""

    def __init__(self, ns: str, iface: str, *options: str) -> None:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, __file__, "capture", iface, *options],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=env)
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.frames: list[dict[str, Any]] = []
        self.stats: list[dict[str, Any]] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            event = json.loads(line)
            if event["event"] == "batch":
                self.frames.extend(event["packets"])
            elif event["event"] == "stats":
                self.stats.append(event["stats"])
            else:
                self.events.put(event)

    def wait(self, kind: str, timeout: float = 20) -> dict[str, Any]:
        try:
            event = self.events.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no {kind!r} from the capture process in {timeout} s: "
                                 f"{self.stderr()}") from None
        assert event["event"] == kind, event
        return event

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def current_stats(self) -> dict[str, Any]:
        seen = len(self.stats)
        self.send("stats")
        wait_for(lambda: len(self.stats) > seen, what="a stats line")
        return self.stats[-1]

    def finish(self) -> dict[str, Any]:
        self.send("stop")
        done = self.wait("done")
        assert self.proc.wait(timeout=20) == 0, self.stderr()
        return done

    def stderr(self) -> str:
        if self.proc.poll() is None:
            return "(still running)"
        assert self.proc.stderr is not None
        return self.proc.stderr.read()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


@pytest.fixture(scope="module")
def ward() -> Any:
    """ward:eth0 -- appliance:ward0, plain veths, IPv6 off so nothing but the test talks."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    with Ward(bridge=False) as w:
        w.exec(w.ward, "sysctl -qw net.ipv6.conf.eth0.disable_ipv6=1")
        for port in ("ward0", "uplink0"):
            w.exec(w.appliance, f"sysctl -qw net.ipv6.conf.{port}.disable_ipv6=1")
        w.exec(w.ward, f"ip link set eth0 address {WARD_MAC}")
        w.exec(w.ward, f"ip neigh replace {PEER_IP} lladdr {PEER_MAC} dev eth0 nud permanent")
        yield w


def inject(w: Any, ns: str, iface: str, frames: list[bytes]) -> None:
    w.exec(ns, [sys.executable, __file__, "inject", iface, *(f.hex() for f in frames)])


def tap(w: Any, *options: str, iface: str = "ward0") -> TapProcess:
    proc = TapProcess(w.appliance, iface, *options)
    ready = proc.wait("ready")
    assert ready["ok"], ready
    return proc


def promiscuity(w: Any, iface: str = "ward0") -> int:
    out = w.exec(w.appliance, f"ip -d link show {iface}").stdout
    return int(out.split("promiscuity ")[1].split()[0])


@needs_root
def test_captures_exactly_the_injected_frames(ward: Any) -> None:
    frames = [frame_udp(i, i * 3) for i in range(12)]
    frames += [
        ether(PEER_MAC, WARD_MAC, ETH_IPV4, ipv4("10.77.0.10", PEER_IP, IPPROTO_UDP,
                                                  udp(4242, 53, b"tagged")), vlans=[42]),
        ether(PEER_MAC, WARD_MAC, ETH_IPV4, ipv4("10.77.0.10", PEER_IP, IPPROTO_UDP,
                                                  udp(4343, 53, b"qinq")), vlans=[300, 42],
              qinq=True),
        ether(PEER_MAC, WARD_MAC, ETH_IPV6, ipv6("fd77::10", "fd77::99", IPPROTO_TCP,
                                                  tcp(33000, 443, "S"))),
        ether("ff:ff:ff:ff:ff:ff", WARD_MAC, ETH_ARP,
              arp(1, WARD_MAC, "10.77.0.10", "00:00:00:00:00:00", PEER_IP)),
        frame_udp(200, 1400),
    ]
    proc = tap(ward, "--classify")
    try:
        assert promiscuity(ward) == 1
        t0 = time.time_ns()
        inject(ward, ward.ward, "eth0", frames)
        t1 = time.time_ns()
        wait_for(lambda: len(proc.frames) >= len(frames), what="every injected frame")
        done = proc.finish()
    finally:
        proc.close()
    got = proc.frames
    assert [bytes.fromhex(p["frame"]) for p in got] == frames
    assert [p["wire"] for p in got] == [len(f) for f in frames]
    assert all(p["linktype"] == 1 for p in got)
    stamps = [p["ts"] for p in got]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
    assert t0 <= stamps[0] and stamps[-1] <= t1
    stats = done["stats"]
    assert stats["kernel_packets"] == len(frames) and stats["kernel_drops"] == 0
    assert stats["packets"] == len(frames) and stats["vlan_reinserted"] == 2
    assert stats["blocks_malformed"] == 0
    flows = {(f["src"], f["sport"], f["dst"], f["dport"], f["vlan"]) for f in done["flows"]}
    assert ("10.77.0.10", 4242, PEER_IP, 53, 42) in flows
    assert ("fd77::10", 33000, "fd77::99", 443, 0) in flows
    assert done["classifier"]["malformed"] == 0
    assert done["classifier"]["packets"] == len(frames)
    assert promiscuity(ward) == 0          # the membership ended with the socket


@needs_root
def test_kernel_udp_and_ping_become_the_expected_flows(ward: Any) -> None:
    sports = [41001, 41002, 41003, 41004, 41005]
    sender = ("import socket\n"
              f"for i, port in enumerate({sports}):\n"
              "    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
              "    s.bind(('10.77.0.10', port))\n"
              f"    s.sendto(b'hello %d' % i, ('{PEER_IP}', 5000 + i))\n"
              "    s.close()\n")
    proc = tap(ward, "--classify", "--timeout-ms", "20")
    try:
        ward.exec(ward.ward, [sys.executable, "-c", sender])
        ward.exec(ward.ward, f"ping -c 3 -i 0.05 -W 0.2 {PEER_IP}", check=False)
        wait_for(lambda: len(proc.frames) >= 8, what="5 datagrams and 3 echo requests")
        done = proc.finish()
    finally:
        proc.close()
    assert len(proc.frames) == 8
    frames = [bytes.fromhex(p["frame"]) for p in proc.frames]
    assert all(f[:6] == bytes.fromhex(PEER_MAC.replace(":", "")) for f in frames)
    assert [len(f) for f in frames[:5]] == [14 + 20 + 8 + 7] * 5
    udp_flows = sorted((f["sport"], f["dport"], f["pkts"]) for f in done["flows"]
                       if f["proto"] == 17)
    assert udp_flows == [(port, 5000 + i, 1) for i, port in enumerate(sports)]
    icmp = [f for f in done["flows"] if f["proto"] == 1]
    assert len(icmp) == 1 and icmp[0]["pkts"] == 3
    assert icmp[0]["src"] == "10.77.0.10" and icmp[0]["dst"] == PEER_IP
    assert done["classifier"]["devices"] == 1


@needs_root
def test_a_full_ring_counts_kernel_drops(ward: Any) -> None:
    """Two one-page blocks, a consumer that waits: what did not fit is counted, not lost."""
    frames = [frame_udp(i, 900) for i in range(100)]
    proc = tap(ward, "--hold", "--block-size", str(PAGE), "--block-count", "2")
    try:
        inject(ward, ward.ward, "eth0", frames)
        held = proc.current_stats()
        wait_for(lambda: proc.current_stats()["kernel_packets"] >= len(frames),
                 what="the kernel to see every frame")
        held = proc.stats[-1]
        assert held["kernel_packets"] == len(frames)
        assert held["kernel_drops"] > 0 and held["packets"] == 0
        proc.send("go")
        wait_for(lambda: len(proc.frames) == len(frames) - held["kernel_drops"],
                 what="the frames that fit in the ring")
        inject(ward, ward.ward, "eth0", frames[:1])       # the ring takes packets again
        wait_for(lambda: len(proc.frames) == len(frames) - held["kernel_drops"] + 1,
                 what="a frame after the drops")
        done = proc.finish()
    finally:
        proc.close()
    stats = done["stats"]
    assert stats["kernel_packets"] == len(frames) + 1       # accumulated over two reads
    assert stats["kernel_drops"] == held["kernel_drops"]
    assert stats["packets"] + stats["kernel_drops"] == stats["kernel_packets"]
    assert stats["kernel_freezes"] >= 1
    got = [bytes.fromhex(p["frame"]) for p in proc.frames]
    assert got[:-1] == frames[:len(got) - 1]          # the first ones fit, in order
    assert got[-1] == frames[0]


@needs_root
def test_snaplen_cuts_frames_and_keeps_wire_length(ward: Any) -> None:
    frames = [frame_udp(i, 500) for i in range(3)]
    proc = tap(ward, "--snaplen", "64", "--classify")
    try:
        inject(ward, ward.ward, "eth0", frames)
        wait_for(lambda: len(proc.frames) >= 3, what="three cut frames")
        done = proc.finish()
    finally:
        proc.close()
    assert [bytes.fromhex(p["frame"]) for p in proc.frames] == [f[:64] for f in frames]
    assert [p["wire"] for p in proc.frames] == [len(f) for f in frames]
    assert done["stats"]["truncated"] == 3
    assert done["classifier"]["malformed"] == 0


@needs_root
def test_fanout_group_splits_flows_between_two_sockets(ward: Any) -> None:
    frames = [frame_udp(i % 16, i) for i in range(64)]     # 16 flows, 4 packets each
    a = tap(ward, "--fanout", "77")
    b = tap(ward, "--fanout", "77")
    try:
        inject(ward, ward.ward, "eth0", frames)
        wait_for(lambda: len(a.frames) + len(b.frames) >= len(frames), what="all frames")
        a.finish()
        b.finish()
    finally:
        a.close()
        b.close()
    got_a = [bytes.fromhex(p["frame"]) for p in a.frames]
    got_b = [bytes.fromhex(p["frame"]) for p in b.frames]
    assert sorted(got_a + got_b) == sorted(frames)
    assert got_a and got_b          # 16 flows over two sockets: both get some
    assert not {f[34:38] for f in got_a} & {f[34:38] for f in got_b}   # a flow stays on one


@needs_root
def test_link_down_is_counted_and_a_deleted_interface_stops_the_source(ward: Any) -> None:
    ward.exec(ward.appliance, "ip link add wtgone0 type veth peer name wtgone1")
    ward.exec(ward.appliance, "sysctl -qw net.ipv6.conf.wtgone0.disable_ipv6=1")
    ward.exec(ward.appliance, "sysctl -qw net.ipv6.conf.wtgone1.disable_ipv6=1")
    ward.exec(ward.appliance, "ip link set wtgone0 up")
    ward.exec(ward.appliance, "ip link set wtgone1 up")
    proc = tap(ward, "--timeout-ms", "20", iface="wtgone0")
    try:
        ward.exec(ward.appliance, "ip link set wtgone0 down")
        wait_for(lambda: proc.current_stats()["link_down"] >= 1, what="link_down counted")
        ward.exec(ward.appliance, "ip link set wtgone0 up")

        def captured_again() -> bool:    # the peer needs a moment to see carrier again
            inject(ward, ward.appliance, "wtgone1", [frame_udp(9)])
            return bool(proc.frames)

        wait_for(captured_again, what="capture after the link came back")
        ward.exec(ward.appliance, "ip link del wtgone0")
        error = proc.wait("error")
        assert error["message"] == "tap: interface wtgone0 went away"
        assert proc.proc.wait(timeout=20) == 3
    finally:
        proc.close()
        ward.exec(ward.appliance, "ip link del wtgone0", check=False)
    assert bytes.fromhex(proc.frames[0]["frame"]) == frame_udp(9)


# --- the processes the tests run in a namespace -----------------------------------------


def _capture(args: argparse.Namespace) -> int:
    from fastpath import Classifier

    out_lock = threading.Lock()

    def emit(**event: Any) -> None:
        with out_lock:
            sys.stdout.write(json.dumps(event) + "\n")
            sys.stdout.flush()

    source = AfPacketSource(args.iface, block_size=args.block_size,
                            block_count=args.block_count, snaplen=args.snaplen,
                            timeout_ms=args.timeout_ms, fanout=args.fanout)
    try:
        source.open()
    except SourceError as exc:
        emit(event="ready", ok=False, message=str(exc))
        return 2
    stop, go = threading.Event(), threading.Event()

    def commands() -> None:
        for line in sys.stdin:
            command = line.strip()
            if command == "go":
                go.set()
            elif command == "stats":
                emit(event="stats", stats=source.stats())
            elif command == "stop":
                break
        go.set()
        stop.set()

    threading.Thread(target=commands, daemon=True).start()
    classifier = Classifier(flow_capacity=4096, device_capacity=64, event_capacity=4096)
    cap = args.block_size // 48 + 1
    verdicts, reasons, rules = (memoryview(array(c, bytes(n * cap)))
                                for c, n in (("B", 1), ("B", 1), ("H", 2)))
    emit(event="ready", ok=True)
    if args.hold:
        go.wait()
    try:
        for batch in source.batches(stop):
            if not batch.count:
                continue
            if args.classify:
                classifier.classify(batch.buf, batch.offsets, batch.lengths, batch.timestamps,
                                    batch.linktypes, verdicts, reasons, rules)
            packets = [{"frame": bytes(batch.buf[o:o + n]).hex(), "wire": w, "ts": t,
                        "linktype": lt, "offset": o}
                       for o, n, w, t, lt in zip(batch.offsets, batch.lengths,
                                                 batch.wire_lengths, batch.timestamps,
                                                 batch.linktypes, strict=True)]
            emit(event="batch", packets=packets)
    except SourceError as exc:
        emit(event="error", message=str(exc))
        source.close()
        return 3
    flows = []
    for f in classifier.flow_list():
        event = dict(zip(EVENT_FIELDS, f, strict=True))
        row = {k: event[k] for k in ("src", "dst", "sport", "dport", "vlan", "proto", "pkts",
                                     "l3")}
        size = 4 if row["l3"] == 4 else 16
        for key in ("src", "dst"):
            raw = row[key][12:] if size == 4 else row[key]
            row[key] = socket.inet_ntop(socket.AF_INET if size == 4 else socket.AF_INET6, raw)
        flows.append(row)
    stats = classifier.stats()
    source.close()
    emit(event="done", stats=source.stats(), flows=flows,
         classifier={k: v for k, v in stats.items() if isinstance(v, int)})
    return 0


def _inject(args: argparse.Namespace) -> int:
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as sock:
        sock.bind((args.iface, 0))
        for frame in args.frames:
            sock.send(bytes.fromhex(frame))
    return 0


def _open(args: argparse.Namespace) -> int:
    try:
        with AfPacketSource(args.iface):
            pass
    except SourceError as exc:
        print(exc)
        return 2
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="mode", required=True)
    cap = sub.add_parser("capture")
    cap.add_argument("iface")
    cap.add_argument("--block-size", type=int, default=1 << 16)
    cap.add_argument("--block-count", type=int, default=8)
    cap.add_argument("--snaplen", type=int)
    cap.add_argument("--timeout-ms", type=int, default=20)
    cap.add_argument("--fanout", type=int)
    cap.add_argument("--hold", action="store_true", help="read nothing until 'go' on stdin")
    cap.add_argument("--classify", action="store_true")
    inj = sub.add_parser("inject")
    inj.add_argument("iface")
    inj.add_argument("frames", nargs="+")
    opn = sub.add_parser("open")
    opn.add_argument("iface")
    args = parser.parse_args()
    return {"capture": _capture, "inject": _inject, "open": _open}[args.mode](args)


if __name__ == "__main__":
    sys.exit(main())
