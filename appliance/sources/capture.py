"""Capture files (pcap, pcapng) as batches of packets, read through mmap without copying.

Each batch is one buffer (the mapped file) plus arrays of offsets, lengths, wire lengths,
timestamps (ns) and link types: the shape the fast path's classify() takes.
"""

from __future__ import annotations

import mmap
import os
from array import array
from collections.abc import Iterator
from dataclasses import dataclass

from appliance.common.userfile import reason
from appliance.errors import CaptureError
from fastpath import CaptureScanner

DEFAULT_BATCH = 4096
RELEASE_EVERY = 16 << 20      # bytes of consumed capture unmapped at a time

# Link types the fast path decodes (fastpath.LINKTYPES), by their tcpdump names.
LINKTYPE_NAMES = {
    0: "BSD loopback (NULL)", 1: "Ethernet", 8: "SLIP", 9: "PPP", 12: "raw IP (BSD)",
    14: "raw IP (OpenBSD)", 50: "PPP in HDLC framing", 51: "PPPoE (PPP_ETHER)", 101: "raw IP",
    104: "Cisco HDLC", 105: "IEEE 802.11", 107: "Frame Relay", 108: "OpenBSD loopback",
    113: "Linux cooked (SLL)", 117: "OpenBSD pflog", 127: "802.11 radiotap",
    228: "raw IPv4", 229: "raw IPv6", 239: "Linux NFLOG", 276: "Linux cooked v2 (SLL2)"}

# Scanner error codes (fastpath/capture.pxi CAPERR_*) and what they mean to a user.
_ERRORS = {
    1: "truncated: a packet record runs past the end of the file",
    2: "corrupt: a packet record has an impossible length",
    3: "not a pcap or pcapng capture (unknown magic number)",
    4: "unsupported link type {linktype}; supported: " + ", ".join(
        f"{t} ({n})" for t, n in LINKTYPE_NAMES.items()),
    5: "corrupt pcapng: block length is not a multiple of 4 or too small",
    6: "corrupt pcapng: block before the section header",
    7: "corrupt pcapng: packet names an interface with no description block",
    8: "pcapng has more than 64 interfaces in one section",
    9: "corrupt pcapng: block trailer length does not match its header",
    10: "file too short for a capture header",
}


@dataclass
class Batch:
    """Packets [0, count) of one batch, as zero-copy memoryviews of exactly `count` items.

    Valid until the next batch is read (the arrays are reused).
    """

    buf: memoryview
    offsets: memoryview         # int64: byte offset of each packet in buf
    lengths: memoryview         # uint32: captured length
    wire_lengths: memoryview    # uint32: length on the wire
    timestamps: memoryview      # uint64: nanoseconds since the epoch
    linktypes: memoryview       # uint16: link type of each packet
    count: int
    first_index: int            # packet number of offsets[0] within the file
    hints: memoryview | None = None   # uint8, inline sources: what conntrack knows (fastpath)


class CaptureFile:
    """One capture file, mapped read-only. Use as a context manager; close() is idempotent."""

    def __init__(self, path: str, batch_size: int = DEFAULT_BATCH) -> None:
        self.path = path
        self.batch_size = batch_size
        try:
            self._file = open(path, "rb")  # noqa: SIM115  (closed in close())
        except OSError as exc:
            raise CaptureError(path, reason(exc, "a capture file")) from None
        try:
            self.size = os.fstat(self._file.fileno()).st_size
            self._map: mmap.mmap | None = None
            self._view: memoryview
            if self.size:
                self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
                self._map.madvise(mmap.MADV_SEQUENTIAL)
                self._view = memoryview(self._map)
            else:
                self._view = memoryview(b"")
            self._scanner: CaptureScanner = CaptureScanner(self._view)
            self._check_error()
        except BaseException:
            self.close()              # a capture that cannot be read keeps no file open
            raise
        self.format = self._scanner.format

    def __enter__(self) -> CaptureFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def offset(self) -> int:
        """Bytes consumed so far (for progress)."""
        return int(self._scanner.offset)

    def batches(self) -> Iterator[Batch]:
        """Yield batches until the end; raise CaptureError at damage, after the good packets."""
        n = self.batch_size
        arrays = [memoryview(array(code, bytes(size * n)))
                  for code, size in (("q", 8), ("I", 4), ("I", 4), ("Q", 8), ("H", 2))]
        index = 0
        released = 0
        while True:
            count = self._scanner.next_batch(*arrays)
            if count == 0:
                break
            offsets, lengths, wire, stamps, links = (a[:count] for a in arrays)
            yield Batch(self._view, offsets, lengths, wire, stamps, links, count, index)
            index += count
            released = self._release(released, int(offsets[0]))
        self._check_error()

    def _release(self, released: int, offset: int) -> int:
        """Unmap the pages before `offset` (classified already) from this process, so replay
        memory does not grow with the capture; they stay in the page cache."""
        end = offset & ~(mmap.PAGESIZE - 1)
        if self._map is not None and end - released >= RELEASE_EVERY:
            self._map.madvise(mmap.MADV_DONTNEED, released, end - released)
            return end
        return released

    def _check_error(self) -> None:
        code = self._scanner.error
        if code:
            message = _ERRORS.get(code, f"unreadable (error {code})").format(
                linktype=self._scanner.bad_linktype)
            if self._scanner.packets:
                message += f" (after {self._scanner.packets} good packets)"
            raise CaptureError(self.path, message, int(self._scanner.error_offset))

    def close(self) -> None:
        # The scanner holds the view's buffer; drop it before releasing the mapping.
        self.__dict__.pop("_scanner", None)
        mapping = self.__dict__.pop("_map", None)
        if mapping is not None:
            self._view.release()
            mapping.close()
        fh = self.__dict__.pop("_file", None)
        if fh is not None:
            fh.close()
