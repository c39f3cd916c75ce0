"""Tap datapath: an AF_PACKET TPACKET_V3 receive ring on a mirror port (or any interface).

The kernel writes packets into a ring of blocks shared with this process (mmap). Each block
the kernel hands over (TP_STATUS_USER) becomes ONE batch: offsets into the mapped ring,
lengths, wire lengths and timestamps, filled by the fast path's block walker
(fastpath/ring.pxi) without the GIL and without copying a packet. The block goes back to the
kernel when the consumer asks for the next batch, so a batch's memoryviews are valid exactly
until then (the same contract as a capture file's batches).

VLAN tags: the kernel strips the outermost 802.1Q/802.1ad tag of a received frame into
the packet's aux data (tp_vlan_tci). The walker writes it back into the frame in place, in
headroom the kernel leaves in front of every frame, so the fast path sees the frame as it was
on the wire and keys flows and policies by VLAN exactly as for a capture file.

Capabilities: CAP_NET_RAW, in the network namespace that owns the interface. Promiscuous mode
is a packet-socket membership (PACKET_MR_PROMISC), which needs nothing more and ends when the
socket closes, so a crash never leaves the port promiscuous.

See docs/datapaths.md ("tap") for sizing, drop reporting and measured rates.
"""

from __future__ import annotations

import errno
import mmap
import os
import select
import socket
import struct
import threading
from array import array
from collections.abc import Iterator
from typing import Any

from appliance.sources.base import Source, SourceError
from appliance.sources.capture import Batch
from fastpath.core import (
    RING_COUNTER_NAMES,
    ring_block_batch,
    ring_block_release,
    ring_block_status,
)

# linux/if_packet.h, linux/if_ether.h
SOL_PACKET = 263
ETH_P_ALL = 0x0003
PACKET_ADD_MEMBERSHIP = 1
PACKET_RX_RING = 5
PACKET_STATISTICS = 6
PACKET_VERSION = 10
PACKET_FANOUT = 18
PACKET_MR_PROMISC = 1
TPACKET_V3 = 2
TPACKET3_HDRLEN = 68
TP_STATUS_USER = 1
TP_STATUS_LOSING = 4
SO_ATTACH_FILTER = 26

FANOUT_MODES = {"hash": 0, "lb": 1, "cpu": 2, "rollover": 3, "random": 4, "queue": 5}

# ARPHRD_* of the interface -> link type of its frames in the ring.
LINKTYPES = {
    1: 1,          # ARPHRD_ETHER: Ethernet
    772: 1,        # ARPHRD_LOOPBACK: a zeroed Ethernet header
    65534: 101,    # ARPHRD_NONE (tun, WireGuard): raw IP
}

# Smallest packet record a valid block can hold (tp_next_offset is at least a header), so
# arrays of block_size // this entries never reject a valid block.
MIN_RECORD = 48

# Block walker error codes (fastpath/ring.pxi RING_ERR_*): what is wrong with a block.
RING_ERRORS = {
    1: "block outside the ring or shorter than its header",
    2: "block length past the block or inside its header",
    3: "first packet offset outside the block",
    4: "more packets than the batch arrays hold",
    5: "packet header or data runs past the block",
    6: "next-packet offset too small",
}


class AfPacketSource(Source):
    """Receive every frame of one interface through a TPACKET_V3 ring (tap deployments)."""

    name = "tap"
    inline = False
    capabilities = ("CAP_NET_RAW",)

    def __init__(self, interface: str, block_size: int = 1 << 20, block_count: int = 64,
                 frame_size: int = 2048, snaplen: int | None = None, timeout_ms: int = 50,
                 fanout: int | None = None, fanout_mode: str = "hash",
                 promiscuous: bool = True, **options: Any) -> None:
        super().__init__(**options)
        page = mmap.PAGESIZE
        if not interface or len(interface) >= 16 or "/" in interface:
            raise SourceError(f"tap: {interface!r} is not an interface name")
        if block_size < page or block_size % page or block_size > 1 << 31:
            raise SourceError(f"tap: block size {block_size} must be a multiple of the page "
                              f"size ({page}) up to 2 GiB")
        if block_count < 2:
            raise SourceError("tap: the ring needs at least 2 blocks")
        if frame_size < TPACKET3_HDRLEN + 16 or frame_size % 16 or frame_size > block_size:
            raise SourceError(f"tap: frame size {frame_size} must be a multiple of 16, at "
                              f"least {TPACKET3_HDRLEN + 14 + 2}, at most the block size")
        if snaplen is not None and not 14 <= snaplen <= 262144:
            raise SourceError(f"tap: snap length {snaplen} must be between 14 and 262144")
        if not 1 <= timeout_ms <= 60000:
            raise SourceError(f"tap: block timeout {timeout_ms} ms must be 1..60000")
        if fanout is not None and not 0 <= fanout <= 0xFFFF:
            raise SourceError(f"tap: fanout group {fanout} must be 0..65535")
        if fanout_mode not in FANOUT_MODES:
            raise SourceError(f"tap: fanout mode {fanout_mode!r} is not one of: "
                              + ", ".join(FANOUT_MODES))
        self.interface = interface
        self.block_size = block_size
        self.block_count = block_count
        self.frame_size = frame_size
        self.snaplen = snaplen
        self.timeout_ms = timeout_ms
        self.fanout = fanout
        self.fanout_mode = fanout_mode
        self.promiscuous = promiscuous
        self.linktype = 1
        self._sock: socket.socket | None = None
        self._ifindex = 0
        self._map: mmap.mmap | None = None
        self._ring: memoryview | None = None
        self._block = 0
        self._lock = threading.Lock()
        self._kernel = {"kernel_packets": 0, "kernel_drops": 0, "kernel_freezes": 0}
        self._counts = {"packets": 0, "batches": 0, "blocks_losing": 0, "blocks_malformed": 0,
                        "link_down": 0}
        self._ring_counters = memoryview(array("Q", bytes(8 * len(RING_COUNTER_NAMES))))
        self.last_ring_error = ""

    @property
    def ring_bytes(self) -> int:
        """Memory the kernel allocates for the ring (locked, not swappable)."""
        return self.block_size * self.block_count

    # -- open / close --------------------------------------------------------------------

    def open(self) -> None:
        if self._sock is not None:
            return
        iface = self.interface
        try:
            ifindex = socket.if_nametoindex(iface)
        except OSError:
            raise SourceError(f"tap: interface {iface} does not exist") from None
        try:
            # Protocol 0: no packet is queued before the ring exists and the socket is bound
            # to this interface; bind() below starts reception with ETH_P_ALL.
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        except PermissionError:
            raise SourceError(f"tap: opening a packet socket on {iface} needs CAP_NET_RAW "
                              "(run as root or grant the capability)") from None
        except OSError as exc:
            raise SourceError(f"tap: cannot open a packet socket: {exc.strerror}") from None
        try:
            self._setup(sock, ifindex)
        except BaseException:
            self._release(sock)
            raise
        self._sock = sock
        self._ifindex = ifindex
        self._block = 0

    def _setup(self, sock: socket.socket, ifindex: int) -> None:
        iface = self.interface
        sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
        if self.snaplen is not None:
            # A one-instruction classic BPF program, "ret #snaplen": the kernel caps each
            # packet's captured length at the filter's return value (libpcap does the same).
            prog = struct.pack("HBBI", 0x06, 0, 0, self.snaplen)     # BPF_RET | BPF_K
            buf = array("B", prog)
            addr, _ = buf.buffer_info()
            sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, struct.pack("HP", 1, addr))
        frames = self.block_size // self.frame_size * self.block_count
        req = struct.pack("7I", self.block_size, self.block_count, self.frame_size, frames,
                          self.timeout_ms, 0, 0)
        try:
            sock.setsockopt(SOL_PACKET, PACKET_RX_RING, req)
        except OSError as exc:
            mib = self.ring_bytes / (1 << 20)
            if exc.errno == errno.ENOMEM:
                raise SourceError(f"tap: cannot allocate a {mib:.0f} MiB receive ring on "
                                  f"{iface} ({self.block_count} blocks of {self.block_size} "
                                  "bytes); use fewer or smaller blocks") from None
            raise SourceError(f"tap: the kernel refused a {mib:.0f} MiB receive ring on "
                              f"{iface}: {exc.strerror}") from None
        self._map = mmap.mmap(sock.fileno(), self.ring_bytes, flags=mmap.MAP_SHARED,
                              prot=mmap.PROT_READ | mmap.PROT_WRITE)
        self._ring = memoryview(self._map)
        try:
            sock.bind((iface, ETH_P_ALL))
        except OSError as exc:
            if exc.errno in (errno.ENODEV, errno.ENXIO):
                raise SourceError(f"tap: interface {iface} does not exist") from None
            raise SourceError(f"tap: cannot bind to {iface}: {exc.strerror}") from None
        hatype = sock.getsockname()[3]
        if hatype not in LINKTYPES:
            raise SourceError(f"tap: interface {iface} has hardware type {hatype} (ARPHRD); "
                              "supported: Ethernet, loopback, raw IP (tun)")
        self.linktype = LINKTYPES[hatype]
        if self.promiscuous:
            mreq = struct.pack("iHH8s", ifindex, PACKET_MR_PROMISC, 0, b"")
            try:
                sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)
            except OSError as exc:
                raise SourceError(f"tap: cannot put {iface} in promiscuous mode: "
                                  f"{exc.strerror}") from None
        if self.fanout is not None:
            arg = self.fanout | FANOUT_MODES[self.fanout_mode] << 16
            try:
                sock.setsockopt(SOL_PACKET, PACKET_FANOUT, arg)
            except OSError as exc:
                raise SourceError(f"tap: cannot join fanout group {self.fanout} on {iface} "
                                  f"(every member needs the same mode): {exc.strerror}") from None

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            self._read_kernel_stats(sock)
            self._release(sock)

    def _release(self, sock: socket.socket) -> None:
        ring, self._ring = self._ring, None
        mapping, self._map = self._map, None
        # A buffer still exported (a consumer holding a batch's buffer, a classify() running
        # in another thread) keeps the mapping: it is unmapped when the last view goes, never
        # under a reader's feet.
        if ring is not None:
            try:
                ring.release()
            except BufferError:
                pass
        if mapping is not None:
            try:
                mapping.close()
            except BufferError:
                pass
        sock.close()

    # -- the acquire loop ----------------------------------------------------------------

    def batches(self, stop: threading.Event) -> Iterator[Batch]:
        if self._sock is None or self._ring is None:
            raise SourceError("tap: batches() before open()")
        sock, ring = self._sock, self._ring
        cap = self.block_size // MIN_RECORD + 1
        offsets, lengths, wire, stamps, links = (
            memoryview(array(code, bytes(size * cap)))
            for code, size in (("q", 8), ("I", 4), ("I", 4), ("Q", 8), ("H", 2)))
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN | select.POLLERR)
        if self.wakeup_fd >= 0:
            poller.register(self.wakeup_fd, select.POLLIN)
        index = 0
        block_size, block_count = self.block_size, self.block_count
        while not stop.is_set() and self._ring is ring:
            offset = self._block * block_size
            status = ring_block_status(ring, offset)
            if not status & TP_STATUS_USER:
                events = dict(poller.poll(self.timeout_ms))
                if events.get(sock.fileno(), 0) & select.POLLERR:
                    self._socket_error(sock)
                elif not events or self.wakeup_fd in events:    # idle, or a request waits
                    self._check_interface()
                    yield Batch(ring, offsets[:0], lengths[:0], wire[:0], stamps[:0],
                                links[:0], 0, index)
                continue
            n = ring_block_batch(ring, offset, block_size, offsets, lengths, wire, stamps,
                                 links, self._ring_counters, self.linktype)
            if status & TP_STATUS_LOSING:
                self._counts["blocks_losing"] += 1
            if n < 0:
                self._counts["blocks_malformed"] += 1
                self.last_ring_error = RING_ERRORS.get(-n, f"error {-n}")
                n = 0
            try:
                if n:
                    self._counts["packets"] += n
                    self._counts["batches"] += 1
                    yield Batch(ring, offsets[:n], lengths[:n], wire[:n], stamps[:n],
                                links[:n], n, index)
                    index += n
            finally:
                # The consumer is done with the batch (it asked for the next one, or closed
                # the generator): the block goes back to the kernel, unless close() came first.
                if self._ring is ring:
                    ring_block_release(ring, offset)
                    self._block = (self._block + 1) % block_count

    def _socket_error(self, sock: socket.socket) -> None:
        code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code == errno.ENETDOWN:
            # Link went down (or the interface is being deleted, which goes down first); the
            # kernel resumes delivery when it comes back up.
            self._counts["link_down"] += 1
            self._check_interface()
            return
        if code in (errno.ENODEV, errno.ENXIO):
            raise SourceError(f"tap: interface {self.interface} went away")
        if code:
            raise SourceError(f"tap: capture on {self.interface} failed: {os.strerror(code)}")

    def _check_interface(self) -> None:
        """Raise when the interface was deleted (or replaced: the socket is bound to the old
        one). Called when idle, so a capture that went quiet because its port is gone says so."""
        try:
            ifindex = socket.if_nametoindex(self.interface)
        except OSError:
            ifindex = 0
        if ifindex != self._ifindex:
            raise SourceError(f"tap: interface {self.interface} went away")

    # -- counters ------------------------------------------------------------------------

    def _read_kernel_stats(self, sock: socket.socket) -> None:
        # tpacket_stats_v3; the kernel resets it on every read, so it is accumulated here.
        # tp_packets counts every packet the socket was offered, dropped ones included.
        raw = sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 12)
        packets, drops, freezes = struct.unpack("3I", raw)
        with self._lock:
            self._kernel["kernel_packets"] += packets
            self._kernel["kernel_drops"] += drops
            self._kernel["kernel_freezes"] += freezes

    def stats(self) -> dict[str, int]:
        """Kernel packets/drops (accumulated), delivered packets, ring walk counters."""
        sock = self._sock
        if sock is not None:
            try:
                self._read_kernel_stats(sock)
            except OSError:
                pass
        with self._lock:
            out = dict(self._kernel)
        out.update(self._counts)
        out.update(zip(RING_COUNTER_NAMES, (int(v) for v in self._ring_counters), strict=True))
        out["ring_bytes"] = self.ring_bytes
        return out
