"""CaptureFile: classic pcap and pcapng read from real files, packets located exactly.

Every test writes a real file in tmp_path (appliance.common.capwriter, plus hand-built blocks for
what the writer does not make) and reads it back through CaptureFile. Offsets and lengths are
checked by slicing the file's own bytes: they must give exactly the frame that was written.
"""

from __future__ import annotations

import io
import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

import pytest

from appliance.common.capwriter import (
    BLOCK_EPB,
    BLOCK_IDB,
    LINKTYPE_ETHERNET,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_RAW,
    PcapngWriter,
    PcapWriter,
)
from appliance.errors import CaptureError, WardtapError
from appliance.sources.capture import DEFAULT_BATCH, CaptureFile
from demoward.frames import (
    ETH_IPV4,
    ETH_IPV6,
    IPPROTO_UDP,
    ether,
    ipv4,
    ipv6,
    sll,
    sll2,
    udp,
)

MAC_A = "02:00:00:00:00:0a"
MAC_B = "02:00:00:00:00:0b"
BLOCK_PB = 0x00000002          # obsolete Packet Block (pcapng draft), still found in old files


@dataclass(frozen=True)
class Pkt:
    frame: bytes        # the file's bytes at [offset, offset + length)
    offset: int
    wire: int
    ts: int
    linktype: int


def udp_frame(i: int) -> bytes:
    """An Ethernet/IPv4/UDP frame whose length and content depend on i (42..54 bytes)."""
    payload = bytes([i % 251]) * (i % 13)
    return ether(MAC_B, MAC_A, ETH_IPV4,
                 ipv4("10.0.0.1", "10.0.0.2", IPPROTO_UDP, udp(1000 + i, 53, payload)))


def raw4(i: int, size: int = 0) -> bytes:
    return ipv4("10.1.0.1", "10.1.0.2", IPPROTO_UDP, udp(2000 + i, 123, bytes(size)))


def raw6(i: int) -> bytes:
    return ipv6("fd00::1", "fd00::2", IPPROTO_UDP, udp(3000 + i, 547, b"v6" * (i % 5)))


def scan(path: Path, batch_size: int = DEFAULT_BATCH) -> tuple[list[Pkt], CaptureError | None]:
    """Every packet CaptureFile yields, in order, and the error that ended it (if any)."""
    data = path.read_bytes()
    got: list[Pkt] = []
    try:
        with CaptureFile(str(path), batch_size) as capture:
            for batch in capture.batches():
                assert 0 < batch.count <= batch_size
                assert batch.first_index == len(got)
                for j in range(batch.count):   # copy now: the arrays are reused per batch
                    off, length = int(batch.offsets[j]), int(batch.lengths[j])
                    got.append(Pkt(data[off:off + length], off, int(batch.wire_lengths[j]),
                                   int(batch.timestamps[j]), int(batch.linktypes[j])))
    except CaptureError as exc:
        return got, exc
    return got, None


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def pcap_bytes(frames: list[bytes], stamps: list[int] | None = None, **kw: object) -> bytes:
    f = io.BytesIO()
    w = PcapWriter(f, **kw)  # type: ignore[arg-type]
    for i, frame in enumerate(frames):
        w.write(frame, stamps[i] if stamps else 1_700_000_000_000_000_000 + i * 1000)
    return f.getvalue()


def assert_error(err: CaptureError | None, path: Path, offset: int, *words: str) -> None:
    assert err is not None, "expected a CaptureError"
    assert isinstance(err, WardtapError)
    assert err.path == str(path)
    assert err.offset == offset, str(err)
    assert str(err).startswith(f"{path} at byte {offset}: "), str(err)
    for word in words:
        assert word in str(err), str(err)


# --- classic pcap ------------------------------------------------------------------------


@pytest.mark.parametrize("big_endian", [False, True], ids=["le", "be"])
@pytest.mark.parametrize("nanosecond", [False, True], ids=["us", "ns"])
def test_pcap_byte_orders_and_resolutions(tmp_path: Path, big_endian: bool,
                                          nanosecond: bool) -> None:
    stamps = [0, 1_000, 999_999_000, 1_700_000_000_123_456_000, (2**32 - 1) * 10**9 + 999_999_000]
    if nanosecond:
        stamps = [s + extra for s, extra in zip(stamps, (0, 1, 999, 789, 999), strict=True)]
    frames = [udp_frame(i) for i in range(len(stamps))]
    path = write(tmp_path / "a.pcap", pcap_bytes(frames, stamps, big_endian=big_endian,
                                                   nanosecond=nanosecond))
    got, err = scan(path)
    assert err is None
    assert [p.frame for p in got] == frames
    assert [p.ts for p in got] == stamps            # exact, in nanoseconds
    assert [p.wire for p in got] == [len(f) for f in frames]
    assert {p.linktype for p in got} == {LINKTYPE_ETHERNET}
    # Records are back to back after the 24-byte header: each frame 16 bytes after its record.
    expected_offsets, pos = [], 24
    for frame in frames:
        expected_offsets.append(pos + 16)
        pos += 16 + len(frame)
    assert [p.offset for p in got] == expected_offsets
    with CaptureFile(str(path)) as capture:
        assert capture.format == "pcap"
        assert capture.size == pos


def test_pcap_snaplen_cut_frames_keep_wire_length(tmp_path: Path) -> None:
    frames = [udp_frame(12), udp_frame(0)]           # 54 and 42 bytes
    path = write(tmp_path / "snap.pcap", pcap_bytes(frames, snaplen=48))
    got, err = scan(path)
    assert err is None
    assert [p.frame for p in got] == [frames[0][:48], frames[1]]
    assert [p.wire for p in got] == [54, 42]


@pytest.mark.parametrize("linktype, frame", [
    (LINKTYPE_RAW, raw4(1)),
    (LINKTYPE_IPV4, raw4(2)),
    (LINKTYPE_IPV6, raw6(3)),
    (LINKTYPE_LINUX_SLL, sll(raw4(4), ETH_IPV4, MAC_A)),
    (LINKTYPE_LINUX_SLL2, sll2(raw6(5), ETH_IPV6, MAC_A)),
])
def test_pcap_supported_link_types(tmp_path: Path, linktype: int, frame: bytes) -> None:
    path = write(tmp_path / "l.pcap", pcap_bytes([frame, frame], linktype=linktype))
    got, err = scan(path)
    assert err is None
    assert [(p.frame, p.linktype) for p in got] == [(frame, linktype)] * 2


# --- pcapng --------------------------------------------------------------------------------


def _opt(order: str, code: int, value: bytes) -> bytes:
    return struct.pack(order + "HH", code, len(value)) + value + bytes(-len(value) % 4)


def _raw_idb(w: PcapngWriter, order: str, linktype: int, options: bytes) -> None:
    """An IDB the writer cannot make (other if_tsresol, if_tsoffset)."""
    w.write_block(BLOCK_IDB, struct.pack(order + "HHI", linktype, 0, 0) + options + bytes(4))


def _raw_epb(w: PcapngWriter, order: str, iface: int, units: int, frame: bytes,
             orig: int | None = None) -> None:
    w.write_block(BLOCK_EPB, struct.pack(order + "IIIII", iface, units >> 32,
                                         units & 0xFFFFFFFF, len(frame),
                                         len(frame) if orig is None else orig)
                  + frame + bytes(-len(frame) % 4))


def _raw_pb(w: PcapngWriter, order: str, iface: int, units: int, frame: bytes) -> None:
    """Obsolete Packet Block: 16-bit interface id, 16-bit drops count."""
    w.write_block(BLOCK_PB, struct.pack(order + "HHIIII", iface, 0, units >> 32,
                                        units & 0xFFFFFFFF, len(frame), len(frame))
                  + frame + bytes(-len(frame) % 4))


@pytest.mark.parametrize("big_endian", [False, True], ids=["le", "be"])
def test_pcapng_interfaces_blocks_and_sections(tmp_path: Path, big_endian: bool) -> None:
    order = ">" if big_endian else "<"
    f = io.BytesIO()
    w = PcapngWriter(f, big_endian=big_endian)
    expected: list[tuple[bytes, int, int, int]] = []    # frame, wire, ts, linktype

    eth = w.add_interface(LINKTYPE_ETHERNET, name="eth0")              # microseconds
    raw = w.add_interface(LINKTYPE_RAW, snaplen=40, tsresol_ns=True)   # nanoseconds
    # Interface 2: SLL, resolution 2^-10 s, timestamps offset by 100 s (if_tsoffset).
    _raw_idb(w, order, LINKTYPE_LINUX_SLL,
             _opt(order, 9, b"\x8a") + _opt(order, 14, struct.pack(order + "q", 100)))
    # Interface 3: raw IPv4, resolution 10^-3 s.
    _raw_idb(w, order, LINKTYPE_IPV4, _opt(order, 9, b"\x03"))
    w.write_name_resolution([("10.0.0.1", "pump-1"), ("fd00::1", "pump-1-v6")])

    t0 = 1_700_000_000_123_456_000
    w.write(eth, udp_frame(1), t0)
    expected.append((udp_frame(1), len(udp_frame(1)), t0, LINKTYPE_ETHERNET))
    big = raw4(2, size=32)                                  # 60 bytes, cut to 40 by snaplen
    w.write(raw, big, t0 + 789)
    expected.append((big[:40], 60, t0 + 789, LINKTYPE_RAW))
    frame = sll(raw4(3), ETH_IPV4, MAC_A)
    _raw_epb(w, order, 2, 5 * 1024 + 512, frame)            # 5.5 s + 100 s offset
    expected.append((frame, len(frame), 105_500_000_000, LINKTYPE_LINUX_SLL))
    w.write_interface_stats(eth, t0, received=10, dropped=0)
    w.write_block(0x40000BAD, b"custom block, skipped")
    _raw_epb(w, order, 3, 1_700_000_000_250, raw4(4))       # milliseconds
    expected.append((raw4(4), len(raw4(4)), 1_700_000_000_250_000_000, LINKTYPE_IPV4))
    w.write(eth, udp_frame(5), t0 + 1000, comment="with an option")
    expected.append((udp_frame(5), len(udp_frame(5)), t0 + 1000, LINKTYPE_ETHERNET))
    w.write_simple(udp_frame(6))                            # SPB: interface 0, no timestamp
    expected.append((udp_frame(6), len(udp_frame(6)), -1, LINKTYPE_ETHERNET))
    _raw_pb(w, order, raw, t0 + 7, raw4(7))                 # obsolete PB on interface 1
    expected.append((raw4(7), len(raw4(7)), t0 + 7, LINKTYPE_RAW))

    # A second section in the other byte order: interfaces start again from 0.
    w.new_section(big_endian=not big_endian)
    v6 = w.add_interface(LINKTYPE_IPV6, tsresol_ns=True)
    w.write(v6, raw6(8), t0 + 8)
    expected.append((raw6(8), len(raw6(8)), t0 + 8, LINKTYPE_IPV6))
    eth2 = w.add_interface(LINKTYPE_ETHERNET)
    w.write(eth2, udp_frame(9), t0 + 9000)
    expected.append((udp_frame(9), len(udp_frame(9)), t0 + 9000, LINKTYPE_ETHERNET))

    path = write(tmp_path / "multi.pcapng", f.getvalue())
    for batch_size in (1, 3, DEFAULT_BATCH):
        got, err = scan(path, batch_size)
        assert err is None
        assert len(got) == len(expected)
        # An SPB has no timestamp of its own (-1 above: not compared).
        assert [(p.frame, p.wire, p.ts if e[2] >= 0 else -1, p.linktype)
                for p, e in zip(got, expected, strict=True)] == expected
    with CaptureFile(str(path)) as capture:
        assert capture.format == "pcapng"


def test_pcapng_spb_cut_by_unaligned_snaplen_has_exact_length(tmp_path: Path) -> None:
    """An SPB's captured length is min(original length, interface 0's snaplen).

    fastpath/capture.pxi takes min(orig_len, block data area) instead, and the data area
    includes the padding to 4 bytes, so a 62-byte snaplen reports 64 bytes (2 bytes of
    padding counted as frame).
    """
    f = io.BytesIO()
    w = PcapngWriter(f)
    w.add_interface(LINKTYPE_ETHERNET, snaplen=62)
    frame = udp_frame(0) + bytes(60)                       # 102 bytes on the wire
    w.write_simple(frame[:62], orig_len=len(frame))
    path = write(tmp_path / "spb.pcapng", f.getvalue())
    got, err = scan(path)
    assert err is None
    assert [(len(p.frame), p.wire) for p in got] == [(62, 102)]
    assert got[0].frame == frame[:62]


# --- batching --------------------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [1, 3, 7, 10, 11])
def test_batches_cover_every_packet_in_order(tmp_path: Path, batch_size: int) -> None:
    frames = [udp_frame(i) for i in range(10)]
    path = write(tmp_path / "b.pcap", pcap_bytes(frames))
    got, err = scan(path, batch_size)
    assert err is None
    assert [p.frame for p in got] == frames
    with CaptureFile(str(path), batch_size) as capture:
        counts = [b.count for b in capture.batches()]
    full, rest = divmod(10, batch_size)
    assert counts == [batch_size] * full + ([rest] if rest else [])


def test_more_packets_than_the_default_batch(tmp_path: Path) -> None:
    n = DEFAULT_BATCH * 2 + 5
    frames = [udp_frame(i) for i in range(n)]
    stamps = [1_000_000_000 * i for i in range(n)]
    path = write(tmp_path / "big.pcap", pcap_bytes(frames, stamps))
    got, err = scan(path)
    assert err is None
    assert len(got) == n
    assert [p.frame for p in got] == frames
    assert [p.ts for p in got] == stamps
    with CaptureFile(str(path)) as capture:
        batches = [(b.first_index, b.count) for b in capture.batches()]
        assert capture.offset == capture.size
    assert batches == [(0, DEFAULT_BATCH), (DEFAULT_BATCH, DEFAULT_BATCH), (2 * DEFAULT_BATCH, 5)]


# --- damage --------------------------------------------------------------------------------


def test_pcap_cut_inside_the_last_record(tmp_path: Path) -> None:
    frames = [udp_frame(i) for i in (3, 4, 12)]
    data = pcap_bytes(frames)
    last = len(data) - 16 - len(frames[2])
    for cut in range(last + 1, len(data)):                 # every byte of the last record
        path = write(tmp_path / f"cut{cut}.pcap", data[:cut])
        got, err = scan(path, batch_size=2)
        assert [p.frame for p in got] == frames[:2], cut
        assert_error(err, path, last, "truncated", "(after 2 good packets)")
    # Cut exactly between records: a shorter, valid capture.
    got, err = scan(write(tmp_path / "boundary.pcap", data[:last]))
    assert err is None and [p.frame for p in got] == frames[:2]


def test_pcap_cut_inside_the_header(tmp_path: Path) -> None:
    data = pcap_bytes([udp_frame(1)])
    for cut in range(0, 24):
        path = write(tmp_path / f"h{cut}.pcap", data[:cut])
        got, err = scan(path)
        assert got == []
        assert_error(err, path, 0, "too short")


def test_empty_file(tmp_path: Path) -> None:
    path = write(tmp_path / "empty.pcap", b"")
    with pytest.raises(CaptureError) as info:
        CaptureFile(str(path))
    assert_error(info.value, path, 0, "too short")


def _pcapng_with_offsets() -> tuple[bytes, list[int], list[bytes]]:
    """SHB, IDB, 3 EPBs; returns the bytes, each block's start offset, the frames."""
    f = io.BytesIO()
    starts = [0]
    w = PcapngWriter(f)
    starts.append(f.tell())
    w.add_interface(LINKTYPE_ETHERNET)
    frames = [udp_frame(i) for i in (1, 2, 7)]
    for i, frame in enumerate(frames):
        starts.append(f.tell())
        w.write(0, frame, 1_000_000 * i)
    starts.append(f.tell())
    return f.getvalue(), starts, frames


def test_pcapng_cut_inside_the_last_block(tmp_path: Path) -> None:
    data, starts, frames = _pcapng_with_offsets()
    last = starts[-2]
    for cut in range(last + 1, len(data)):
        path = write(tmp_path / f"cut{cut}.pcapng", data[:cut])
        got, err = scan(path)
        assert [p.frame for p in got] == frames[:2], cut
        assert_error(err, path, last, "truncated", "(after 2 good packets)")


def test_pcapng_cut_inside_the_headers(tmp_path: Path) -> None:
    data, starts, _ = _pcapng_with_offsets()
    for cut in range(1, starts[2]):                        # inside the SHB or the IDB
        path = write(tmp_path / f"h{cut}.pcapng", data[:cut])
        got, err = scan(path)
        assert got == [], cut
        if cut == starts[1]:                               # just the SHB: a valid, empty file
            assert err is None
            continue
        where = 0 if cut < starts[1] else starts[1]
        assert_error(err, path, where)
        assert "truncated" in str(err) or "too short" in str(err)


def _patch(data: bytes, offset: int, fmt: str, value: int) -> bytes:
    return data[:offset] + struct.pack(fmt, value) + data[offset + struct.calcsize(fmt):]


@pytest.mark.parametrize("caplen", [0xFFFFFFFF, 262145])
def test_pcap_impossible_record_length(tmp_path: Path, caplen: int) -> None:
    frames = [udp_frame(i) for i in range(3)]
    data = pcap_bytes(frames)
    second = 24 + 16 + len(frames[0])
    path = write(tmp_path / "len.pcap", _patch(data, second + 8, "<I", caplen))
    got, err = scan(path)
    assert [p.frame for p in got] == frames[:1]
    assert_error(err, path, second, "impossible length", "(after 1 good packets)")


def test_pcap_record_length_past_the_end(tmp_path: Path) -> None:
    frames = [udp_frame(i) for i in range(3)]
    data = pcap_bytes(frames)
    second = 24 + 16 + len(frames[0])
    path = write(tmp_path / "len.pcap", _patch(data, second + 8, "<I", 5000))
    got, err = scan(path)
    assert [p.frame for p in got] == frames[:1]
    assert_error(err, path, second, "truncated")


def test_pcapng_packet_longer_than_its_block(tmp_path: Path) -> None:
    data, starts, frames = _pcapng_with_offsets()
    path = write(tmp_path / "len.pcapng", _patch(data, starts[3] + 20, "<I", 400))
    got, err = scan(path)
    assert [p.frame for p in got] == frames[:1]
    assert_error(err, path, starts[3], "impossible length")


@pytest.mark.parametrize("total", [8, 0, 70])      # too small, zero, not a multiple of 4
def test_pcapng_bad_block_length(tmp_path: Path, total: int) -> None:
    data, starts, frames = _pcapng_with_offsets()
    path = write(tmp_path / "blk.pcapng", _patch(data, starts[3] + 4, "<I", total))
    got, err = scan(path)
    assert [p.frame for p in got] == frames[:1]
    assert_error(err, path, starts[3], "block length")


def test_pcapng_bad_trailer(tmp_path: Path) -> None:
    data, starts, frames = _pcapng_with_offsets()
    trailer = starts[4] - 4                                # last 4 bytes of the 2nd EPB
    path = write(tmp_path / "trailer.pcapng", _patch(data, trailer, "<I", 1234))
    got, err = scan(path)
    assert [p.frame for p in got] == frames[:1]
    assert_error(err, path, trailer, "trailer")


def test_pcapng_unknown_interface_id(tmp_path: Path) -> None:
    data, starts, frames = _pcapng_with_offsets()
    path = write(tmp_path / "iface.pcapng", _patch(data, starts[4] + 8, "<I", 3))
    got, err = scan(path)
    assert [p.frame for p in got] == frames[:2]
    assert_error(err, path, starts[4], "interface", "(after 2 good packets)")


def test_pcapng_new_section_forgets_interfaces(tmp_path: Path) -> None:
    f = io.BytesIO()
    w = PcapngWriter(f)
    w.add_interface(LINKTYPE_ETHERNET)
    w.write(0, udp_frame(1), 0)
    w.new_section()
    start = f.tell()
    _raw_epb(w, "<", 0, 0, udp_frame(2))                   # interface 0 of the new section?
    path = write(tmp_path / "sections.pcapng", f.getvalue())
    got, err = scan(path)
    assert [p.frame for p in got] == [udp_frame(1)]
    assert_error(err, path, start, "interface")


def test_pcapng_too_many_interfaces(tmp_path: Path) -> None:
    f = io.BytesIO()
    w = PcapngWriter(f)
    for _ in range(64):
        w.add_interface(LINKTYPE_ETHERNET)
    w.write(63, udp_frame(1), 0)
    start = f.tell()
    w.add_interface(LINKTYPE_ETHERNET)
    path = write(tmp_path / "ifaces.pcapng", f.getvalue())
    got, err = scan(path)
    assert [p.frame for p in got] == [udp_frame(1)]
    assert_error(err, path, start, "64 interfaces")


def test_bad_magic(tmp_path: Path) -> None:
    path = write(tmp_path / "text.pcap", b"this is not a capture file at all\n" * 3)
    with pytest.raises(CaptureError) as info:
        CaptureFile(str(path))
    assert_error(info.value, path, 0, "unknown magic")


def test_pcapng_bad_byte_order_magic(tmp_path: Path) -> None:
    data, _, _ = _pcapng_with_offsets()
    path = write(tmp_path / "bom.pcapng", _patch(data, 8, "<I", 0x12345678))
    got, err = scan(path)
    assert got == []
    assert_error(err, path, 8, "unknown magic")


def test_pcap_unsupported_link_type(tmp_path: Path) -> None:
    path = write(tmp_path / "usb.pcap", pcap_bytes([udp_frame(1)], linktype=189))
    with pytest.raises(CaptureError) as info:
        CaptureFile(str(path))
    assert_error(info.value, path, 20, "unsupported link type 189", "1 (Ethernet)")


def test_pcapng_interface_of_unsupported_link_type_is_read(tmp_path: Path) -> None:
    """A pcapng from a machine with an interface the decoder does not know (USB, say) is
    read: that interface's packets are indexed with their link type (the classifier calls
    them unsupported_linktype), the others are classified as usual."""
    f = io.BytesIO()
    w = PcapngWriter(f)
    w.add_interface(LINKTYPE_ETHERNET)
    w.write(0, udp_frame(1), 0)
    w.add_interface(189)                                     # USB (Linux)
    w.write(1, bytes(48), 0)
    w.write(0, udp_frame(2), 0)
    path = write(tmp_path / "usb.pcapng", f.getvalue())
    got, err = scan(path)
    assert err is None
    assert [(p.frame, p.linktype) for p in got] == [
        (udp_frame(1), LINKTYPE_ETHERNET), (bytes(48), 189), (udp_frame(2), LINKTYPE_ETHERNET)]


# --- files that cannot be opened -----------------------------------------------------------


def test_nonexistent_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.pcap"
    with pytest.raises(CaptureError) as info:
        CaptureFile(str(path))
    assert str(info.value) == f"{path}: no such file"
    assert info.value.offset is None


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(CaptureError) as info:
        CaptureFile(str(tmp_path))
    assert str(info.value) == f"{tmp_path}: is a directory, not a capture file"


def test_path_through_a_file(tmp_path: Path) -> None:
    parent = write(tmp_path / "plain.pcap", pcap_bytes([udp_frame(1)]))
    path = parent / "inner.pcap"
    with pytest.raises(CaptureError) as info:
        CaptureFile(str(path))
    assert str(info.value).startswith(f"{path}: ")
    assert "Not a directory" in str(info.value)


def test_unreadable_file(tmp_path: Path) -> None:
    """chmod 000: a permission error for a normal user. The tests run as root, which reads
    the file anyway (DAC is bypassed, as is a non-traversable parent), so as root this checks
    that the file is read normally; the permission-denied message is checked otherwise."""
    frames = [udp_frame(1)]
    path = write(tmp_path / "secret.pcap", pcap_bytes(frames))
    os.chmod(path, 0)
    try:
        if os.geteuid() == 0:
            got, err = scan(path)
            assert err is None and [p.frame for p in got] == frames
        else:
            with pytest.raises(CaptureError) as info:
                CaptureFile(str(path))
            assert str(info.value) == f"{path}: permission denied"
    finally:
        os.chmod(path, stat.S_IRUSR | stat.S_IWUSR)


@pytest.mark.parametrize("data", [b"", b"\xd4\xc3\xb2\xa1" + bytes(10), b"garbage!" * 8,
                                  pcap_bytes([udp_frame(1)], linktype=189)],
                         ids=["empty", "short", "magic", "linktype"])
def test_a_capture_that_cannot_be_read_keeps_no_file_open(tmp_path: Path, data: bytes) -> None:
    path = write(tmp_path / "bad.pcap", data)
    before = sorted(os.listdir("/proc/self/fd"))
    with pytest.raises(CaptureError) as info:
        CaptureFile(str(path))
    # The error (and its traceback, which holds the half-made CaptureFile) is still alive.
    assert info.value.path == str(path)
    assert sorted(os.listdir("/proc/self/fd")) == before


def test_close_is_idempotent(tmp_path: Path) -> None:
    path = write(tmp_path / "a.pcap", pcap_bytes([udp_frame(1)]))
    capture = CaptureFile(str(path))
    assert sum(b.count for b in capture.batches()) == 1
    capture.close()
    capture.close()
