"""Capture file writers (classic pcap and pcapng) over any binary file object.

The writers never open, seek, flush or close the file: pass an open ``BinaryIO``
(``open(path, "wb")`` or ``io.BytesIO()``) and close it yourself. Timestamps are integer
nanoseconds since the epoch; they are truncated to the file's resolution.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Sequence
from typing import BinaryIO

LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276

PCAP_MAGIC_US = 0xA1B2C3D4
PCAP_MAGIC_NS = 0xA1B23C4D

BLOCK_SHB = 0x0A0D0D0A
BLOCK_IDB = 0x00000001
BLOCK_SPB = 0x00000003
BLOCK_NRB = 0x00000004
BLOCK_ISB = 0x00000005
BLOCK_EPB = 0x00000006
BYTE_ORDER_MAGIC = 0x1A2B3C4D


class PcapWriter:
    """Classic libpcap file: the global header is written on construction."""

    def __init__(self, f: BinaryIO, linktype: int = LINKTYPE_ETHERNET,
                 nanosecond: bool = False, big_endian: bool = False,
                 snaplen: int = 262144) -> None:
        self.f = f
        self.linktype = linktype
        self.nanosecond = nanosecond
        self.snaplen = snaplen
        self._order = ">" if big_endian else "<"
        self._record = struct.Struct(self._order + "IIII")
        self._div = 1 if nanosecond else 1000
        magic = PCAP_MAGIC_NS if nanosecond else PCAP_MAGIC_US
        f.write(struct.pack(self._order + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype))

    def write(self, frame: bytes, ts_ns: int, orig_len: int | None = None) -> None:
        """One record; frames longer than snaplen are truncated (orig_len kept)."""
        if orig_len is None:
            orig_len = len(frame)
        if len(frame) > self.snaplen:
            frame = frame[:self.snaplen]
        sec, frac = divmod(ts_ns, 1_000_000_000)
        self.f.write(self._record.pack(sec, frac // self._div, len(frame), orig_len))
        self.f.write(frame)


def _pad4(data: bytes) -> bytes:
    return data + bytes(-len(data) % 4)


class PcapngWriter:
    """pcapng file: a Section Header Block is written on construction.

    Interfaces are numbered from 0 in the order of :meth:`add_interface`; a new section
    (:meth:`new_section`) forgets them, as readers must.
    """

    def __init__(self, f: BinaryIO, big_endian: bool = False,
                 application: str | None = "wardtap") -> None:
        self.f = f
        self._interfaces: list[tuple[int, int, int]] = []  # (linktype, snaplen, divisor)
        self.new_section(big_endian, application)

    # --- framing ---

    def _option(self, code: int, value: bytes) -> bytes:
        return struct.pack(self._order + "HH", code, len(value)) + _pad4(value)

    def _options(self, opts: Sequence[tuple[int, bytes]]) -> bytes:
        if not opts:
            return b""
        return b"".join(self._option(c, v) for c, v in opts) + bytes(4)  # opt_endofopt

    def write_block(self, block_type: int, body: bytes) -> None:
        """Any block: type, total length, ``body`` padded to 4 bytes, total length.

        Also how to put an unknown or custom block in a file, which readers must skip.
        """
        body = _pad4(body)
        length = struct.pack(self._order + "I", 12 + len(body))
        self.f.write(struct.pack(self._order + "I", block_type) + length + body + length)

    # --- blocks ---

    def new_section(self, big_endian: bool = False,
                    application: str | None = "wardtap") -> None:
        """Start a section (SHB) in the given byte order; interfaces start again at 0."""
        self._order = ">" if big_endian else "<"
        self._interfaces = []
        opts = [] if application is None else [(4, application.encode())]  # shb_userappl
        self.write_block(BLOCK_SHB, struct.pack(self._order + "IHHq", BYTE_ORDER_MAGIC, 1,
                                                0, -1) + self._options(opts))

    def add_interface(self, linktype: int, snaplen: int = 262144, tsresol_ns: bool = False,
                      name: str | None = None) -> int:
        """Write an IDB and return its interface id (microseconds unless ``tsresol_ns``)."""
        opts: list[tuple[int, bytes]] = []
        if name is not None:
            opts.append((2, name.encode()))  # if_name
        if tsresol_ns:
            opts.append((9, b"\x09"))  # if_tsresol: 10**-9
        self.write_block(BLOCK_IDB, struct.pack(self._order + "HHI", linktype, 0, snaplen)
                         + self._options(opts))
        self._interfaces.append((linktype, snaplen, 1 if tsresol_ns else 1000))
        return len(self._interfaces) - 1

    def _units(self, iface: int, ts_ns: int) -> tuple[int, int]:
        ts = ts_ns // self._interfaces[iface][2]
        return ts >> 32, ts & 0xFFFFFFFF

    def write(self, iface: int, frame: bytes, ts_ns: int, orig_len: int | None = None,
              comment: str | None = None) -> None:
        """Enhanced Packet Block; frames longer than the interface's snaplen are cut."""
        snaplen = self._interfaces[iface][1]
        if orig_len is None:
            orig_len = len(frame)
        if snaplen and len(frame) > snaplen:
            frame = frame[:snaplen]
        high, low = self._units(iface, ts_ns)
        opts = [] if comment is None else [(1, comment.encode())]  # opt_comment
        self.write_block(BLOCK_EPB, struct.pack(self._order + "IIIII", iface, high, low,
                                                len(frame), orig_len)
                         + _pad4(frame) + self._options(opts))

    def write_simple(self, frame: bytes, orig_len: int | None = None) -> None:
        """Simple Packet Block, on interface 0, without a timestamp.

        Readers take the captured length as min(orig_len, snaplen of interface 0), so
        ``frame`` must be exactly that long (ValueError otherwise); it is cut to snaplen.
        """
        if not self._interfaces:
            raise ValueError("a Simple Packet Block needs interface 0 first")
        snaplen = self._interfaces[0][1]
        if orig_len is None:
            orig_len = len(frame)
        if snaplen and len(frame) > snaplen:
            frame = frame[:snaplen]
        if len(frame) != (min(orig_len, snaplen) if snaplen else orig_len):
            raise ValueError("SPB frame length must equal min(orig_len, snaplen)")
        self.write_block(BLOCK_SPB, struct.pack(self._order + "I", orig_len) + frame)

    def write_name_resolution(self, names: Sequence[tuple[str, str]]) -> None:
        """Name Resolution Block from (ip address, host name) pairs."""
        records = b""
        for addr, name in names:
            ip = ipaddress.ip_address(addr)
            value = ip.packed + name.encode() + b"\x00"
            records += self._option(1 if ip.version == 4 else 2, value)  # same TLV layout
        self.write_block(BLOCK_NRB, records + bytes(4))  # nrb_record_end

    def write_interface_stats(self, iface: int, ts_ns: int, received: int | None = None,
                              dropped: int | None = None) -> None:
        """Interface Statistics Block (isb_ifrecv / isb_ifdrop when given)."""
        opts = [(code, struct.pack(self._order + "Q", value)) for code, value in
                ((4, received), (5, dropped)) if value is not None]
        high, low = self._units(iface, ts_ns)
        self.write_block(BLOCK_ISB, struct.pack(self._order + "III", iface, high, low)
                         + self._options(opts))
