"""Capture writers (appliance.common.capwriter): read back with dpkt and with the real tshark."""

from __future__ import annotations

import io
import struct
import subprocess
from collections.abc import Callable

import dpkt
import pytest

from appliance.common.capwriter import (
    LINKTYPE_ETHERNET,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_RAW,
    PcapngWriter,
    PcapWriter,
)
from demoward import frames as p

T0 = 1_700_000_000_123_456_789  # ns; the last three digits only survive in ns files
MAC_A, MAC_B = "00:12:21:5e:a0:11", "00:26:cb:4a:10:01"


def ip_packet(i: int, v6: bool = False, size: int = 0) -> bytes:
    if v6:
        src, dst = f"fd00:40:1::{i + 1:x}", "fd00:40:1::10"
        return p.ipv6(src, dst, 17, p.udp(40000 + i, 53, bytes(size), src=src, dst=dst))
    src, dst = f"10.40.104.{i + 1}", "10.20.0.15"
    return p.ipv4(src, dst, 6, p.tcp(40000 + i, 443, "S", i, src=src, dst=dst,
                                     payload=bytes(size)))


def eth_frame(i: int, size: int = 0) -> bytes:
    return p.ether(MAC_B, MAC_A, p.ETH_IPV4, ip_packet(i, size=size), vlans=(104,))


def tshark_rows(tshark: str, data: bytes, *fields: str, resolve: bool = False
                ) -> list[list[str]]:
    args = [tshark, "-r", "-", "-T", "fields", "-E", "separator=|"]
    if resolve:  # network names, including those of a Name Resolution Block
        args += ["-N", "n"]
    for f in fields:
        args += ["-e", f]
    out = subprocess.run(args, input=data, capture_output=True, check=True, timeout=60)
    return [line.split("|") for line in out.stdout.decode().splitlines()]


def epoch(ts_ns: int, nanosecond: bool) -> str:
    """frame.time_epoch as tshark prints it for a file of the given resolution."""
    if not nanosecond:
        ts_ns -= ts_ns % 1000
    return f"{ts_ns // 10**9}.{ts_ns % 10**9:09d}"


# --- classic pcap ---


@pytest.mark.parametrize("big_endian", [False, True])
@pytest.mark.parametrize("nanosecond", [False, True])
def test_pcap_header(nanosecond: bool, big_endian: bool) -> None:
    buf = io.BytesIO()
    PcapWriter(buf, LINKTYPE_LINUX_SLL, nanosecond, big_endian, snaplen=65535)
    order = ">" if big_endian else "<"
    magic = 0xA1B23C4D if nanosecond else 0xA1B2C3D4
    assert buf.getvalue() == struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, 65535, 113)


@pytest.mark.parametrize("big_endian", [False, True])
@pytest.mark.parametrize("nanosecond", [False, True])
def test_pcap_reads_back(nanosecond: bool, big_endian: bool, tshark: str) -> None:
    frames = [eth_frame(i, size=i * 37) for i in range(20)]
    stamps = [T0 + i * 1_000_001_001 for i in range(20)]
    buf = io.BytesIO()
    w = PcapWriter(buf, nanosecond=nanosecond, big_endian=big_endian)
    for frame, ts in zip(frames, stamps, strict=True):
        w.write(frame, ts)
    data = buf.getvalue()

    records = list(dpkt.pcap.Reader(io.BytesIO(data)))
    assert [bytes(r[1]) for r in records] == frames
    for (ts, _), want in zip(records, stamps, strict=True):
        assert abs(float(ts) - want / 1e9) < 2e-6  # dpkt: Decimal for ns files
    assert dpkt.pcap.Reader(io.BytesIO(data)).datalink() == dpkt.pcap.DLT_EN10MB

    rows = tshark_rows(tshark, data, "frame.number", "frame.time_epoch", "frame.len",
                       "vlan.id", "ip.src", "tcp.srcport")
    assert rows == [[str(i + 1), epoch(ts, nanosecond), str(len(f)), "104", f"10.40.104.{i + 1}",
                     str(40000 + i)] for i, (f, ts) in enumerate(zip(frames, stamps,
                                                                         strict=True))]


def test_pcap_snaplen_and_orig_len(tshark: str) -> None:
    buf = io.BytesIO()
    w = PcapWriter(buf, snaplen=64)
    w.write(eth_frame(0, size=100), T0)  # cut to 64, original length kept
    w.write(eth_frame(1), T0, orig_len=1514)  # a frame that was captured short
    data = buf.getvalue()
    _, _, caplen, origlen = struct.unpack("<IIII", data[24:40])
    assert (caplen, origlen) == (64, len(eth_frame(0, size=100)))
    assert data[40:104] == eth_frame(0, size=100)[:64]
    rows = tshark_rows(tshark, data, "frame.cap_len", "frame.len", "ip.src")
    assert rows == [["64", str(len(eth_frame(0, size=100))), "10.40.104.1"],
                    [str(len(eth_frame(1))), "1514", "10.40.104.2"]]


@pytest.mark.parametrize("linktype,frame,field,value", [
    (LINKTYPE_RAW, ip_packet(3), "ip.src", "10.40.104.4"),
    (LINKTYPE_RAW, ip_packet(3, v6=True), "ipv6.src", "fd00:40:1::4"),
    (LINKTYPE_IPV4, ip_packet(5), "ip.src", "10.40.104.6"),
    (LINKTYPE_IPV6, ip_packet(5, v6=True), "ipv6.src", "fd00:40:1::6"),
    (LINKTYPE_LINUX_SLL, p.sll(ip_packet(2), p.ETH_IPV4, MAC_A), "sll.src.eth", MAC_A),
    (LINKTYPE_LINUX_SLL2, p.sll2(ip_packet(2), p.ETH_IPV4, MAC_A, 7), "sll.ifindex", "7"),
])
def test_pcap_link_types(linktype: int, frame: bytes, field: str, value: str,
                         tshark: str) -> None:
    buf = io.BytesIO()
    PcapWriter(buf, linktype=linktype, big_endian=True).write(frame, T0)
    assert tshark_rows(tshark, buf.getvalue(), field) == [[value]]


# --- pcapng ---


def walk_blocks(data: bytes) -> list[tuple[str, int, bytes]]:
    """(byte order, block type, body) of every block; checks lengths and alignment."""
    blocks, off, order = [], 0, "<"
    while off < len(data):
        if data[off:off + 4] == b"\x0a\x0d\x0d\x0a":
            order = "<" if data[off + 8:off + 12] == b"\x4d\x3c\x2b\x1a" else ">"
        btype, length = struct.unpack(order + "II", data[off:off + 8])
        assert length % 4 == 0 and length >= 12
        assert struct.unpack(order + "I", data[off + length - 4:off + length])[0] == length
        blocks.append((order, btype, data[off + 8:off + length - 4]))
        off += length
    assert off == len(data)
    return blocks


def options(order: str, raw: bytes) -> dict[int, bytes]:
    found, off = {}, 0
    while off < len(raw):
        code, length = struct.unpack(order + "HH", raw[off:off + 4])
        if code == 0:
            assert length == 0 and off + 4 == len(raw)
            break
        found[code] = raw[off + 4:off + 4 + length]
        off += 4 + length + (-length % 4)
    return found


def write_mixed(big_endian: bool) -> tuple[bytes, list[tuple[int, bytes, int]]]:
    """A pcapng file with one interface of each link type, and what was written to it."""
    buf = io.BytesIO()
    w = PcapngWriter(buf, big_endian=big_endian)
    ifaces: list[tuple[int, Callable[[int], bytes]]] = [
        (w.add_interface(LINKTYPE_ETHERNET, name="ward0"), eth_frame),
        (w.add_interface(LINKTYPE_RAW, tsresol_ns=True), lambda i: ip_packet(i)),
        (w.add_interface(LINKTYPE_LINUX_SLL), lambda i: p.sll(ip_packet(i), p.ETH_IPV4,
                                                                MAC_A)),
        (w.add_interface(LINKTYPE_LINUX_SLL2, tsresol_ns=True),
         lambda i: p.sll2(ip_packet(i), p.ETH_IPV4, MAC_A)),
        (w.add_interface(LINKTYPE_IPV4), lambda i: ip_packet(i)),
        (w.add_interface(LINKTYPE_IPV6, tsresol_ns=True), lambda i: ip_packet(i, v6=True)),
    ]
    w.write_name_resolution([("10.40.104.1", "pump-01.ward.example"),
                             ("fd00:40:1::1", "mon-01.ward.example")])
    written = []
    for i in range(18):
        iface, make = ifaces[i % len(ifaces)]
        frame, ts = make(i), T0 + i * 333_333_333
        w.write(iface, frame, ts, comment="first" if i == 0 else None)
        written.append((iface, frame, ts))
        if i == 8:
            w.write_interface_stats(0, ts, received=9, dropped=1)
            w.write_block(0x80000001, b"local use: readers skip this")
    return buf.getvalue(), written


@pytest.mark.parametrize("big_endian", [False, True])
def test_pcapng_block_structure(big_endian: bool) -> None:
    data, _ = write_mixed(big_endian)
    blocks = walk_blocks(data)
    order = ">" if big_endian else "<"
    assert {o for o, _, _ in blocks} == {order}
    kinds = [b for _, b, _ in blocks]
    assert kinds[0] == 0x0A0D0D0A and kinds[1:7] == [1] * 6 and kinds[7] == 4
    assert kinds.count(6) == 18 and kinds.count(5) == 1 and 0x80000001 in kinds
    shb = blocks[0][2]
    assert struct.unpack(order + "IHHq", shb[:16]) == (0x1A2B3C4D, 1, 0, -1)
    idb_opts = [options(order, body[8:]) for _, kind, body in blocks if kind == 1]
    assert idb_opts[0] == {2: b"ward0"} and idb_opts[1] == {9: b"\x09"} and idb_opts[2] == {}
    isb = next(body for _, kind, body in blocks if kind == 5)
    stats = options(order, isb[12:])
    assert struct.unpack(order + "Q", stats[4])[0] == 9
    assert struct.unpack(order + "Q", stats[5])[0] == 1


@pytest.mark.parametrize("big_endian", [False, True])
def test_pcapng_reads_back_in_tshark(big_endian: bool, tshark: str) -> None:
    data, written = write_mixed(big_endian)
    rows = tshark_rows(tshark, data, "frame.interface_id", "frame.time_epoch", "frame.len",
                       "ip.src", "ipv6.src", "frame.comment")
    assert len(rows) == len(written)
    for i, (row, (iface, frame, ts)) in enumerate(zip(rows, written, strict=True)):
        ns = iface in (1, 3, 5)
        v6 = iface == 5
        assert row[:3] == [str(iface), epoch(ts, ns), str(len(frame))], row
        assert row[3:5] == (["", f"fd00:40:1::{i + 1:x}"] if v6 else [f"10.40.104.{i + 1}", ""])
        assert row[5] == ("first" if i == 0 else "")
    names = tshark_rows(tshark, data, "ip.src_host", resolve=True)
    assert names[0] == ["pump-01.ward.example"]


def test_pcapng_reads_back_in_dpkt() -> None:
    for big_endian in (False, True):
        buf = io.BytesIO()
        w = PcapngWriter(buf, big_endian=big_endian)
        eth = w.add_interface(LINKTYPE_ETHERNET)
        w.write_name_resolution([("10.40.104.1", "pump-01")])
        frames = [eth_frame(i, size=i) for i in range(7)]  # odd lengths: padding
        for i, frame in enumerate(frames):
            w.write(eth, frame, T0 + i * 1000)
        r = dpkt.pcapng.Reader(io.BytesIO(buf.getvalue()))
        assert r.datalink() == dpkt.pcap.DLT_EN10MB
        got = list(r)
        assert [bytes(f) for _, f in got] == frames
        assert all(abs(ts - (T0 + i * 1000) / 1e9) < 2e-6 for i, (ts, _) in enumerate(got))


def test_pcapng_simple_packets_and_sections(tshark: str) -> None:
    buf = io.BytesIO()
    w = PcapngWriter(buf)
    with pytest.raises(ValueError):
        w.write_simple(eth_frame(0))  # no interface 0 yet
    w.add_interface(LINKTYPE_ETHERNET, snaplen=80)
    w.write_simple(eth_frame(0))
    w.write_simple(eth_frame(1, size=200)[:80], orig_len=len(eth_frame(1, size=200)))
    w.write_simple(eth_frame(2, size=100))  # cut to the snaplen by the writer
    with pytest.raises(ValueError):
        w.write_simple(eth_frame(3)[:40], orig_len=1000)  # readers would take 80 bytes
    w.new_section(big_endian=True)  # other byte order, interfaces start again
    v6 = w.add_interface(LINKTYPE_IPV6, tsresol_ns=True)
    assert v6 == 0
    w.write(v6, ip_packet(4, v6=True), T0)
    w.write_simple(ip_packet(5, v6=True))
    data = buf.getvalue()
    spb = [body for _, kind, body in walk_blocks(data) if kind == 3]
    assert len(spb) == 4 and struct.unpack("<I", spb[1][:4])[0] == len(eth_frame(1, size=200))
    rows = tshark_rows(tshark, data, "frame.cap_len", "frame.len", "ip.src", "ipv6.src",
                       "frame.time_epoch")
    assert rows == [
        [str(len(eth_frame(0))), str(len(eth_frame(0))), "10.40.104.1", "", ""],
        ["80", str(len(eth_frame(1, size=200))), "10.40.104.2", "", ""],
        ["80", str(len(eth_frame(2, size=100))), "10.40.104.3", "", ""],
        [str(len(ip_packet(4, v6=True))), str(len(ip_packet(4, v6=True))), "",
         "fd00:40:1::5", epoch(T0, True)],
        [str(len(ip_packet(5, v6=True))), str(len(ip_packet(5, v6=True))), "",
         "fd00:40:1::6", ""],
    ]


def test_pcapng_epb_snaplen_and_timestamp_units() -> None:
    buf = io.BytesIO()
    w = PcapngWriter(buf)
    us = w.add_interface(LINKTYPE_ETHERNET, snaplen=60)
    ns = w.add_interface(LINKTYPE_ETHERNET, tsresol_ns=True)
    big = T0 + (1 << 40)
    w.write(us, eth_frame(0, size=50), big)
    w.write(ns, eth_frame(1), big)
    epbs = [body for _, kind, body in walk_blocks(buf.getvalue()) if kind == 6]
    iface, hi, lo, cap, orig = struct.unpack("<IIIII", epbs[0][:20])
    assert (iface, (hi << 32) | lo, cap, orig) == (0, big // 1000, 60,
                                                   len(eth_frame(0, size=50)))
    iface, hi, lo, cap, orig = struct.unpack("<IIIII", epbs[1][:20])
    assert (iface, (hi << 32) | lo) == (1, big) and cap == orig == len(eth_frame(1))
