"""Inline source: a bridge's undecided packets over NFQUEUE, verdicts back with a flow mark.

The kernel bridge forwards; appliance.sources.netfilter installs the rules that send each
flow's first packet (IPv4 and IPv6) to queue N and remember the verdict in the flow's
conntrack mark, so later packets never reach userspace. This module binds libnetfilter_queue
through ctypes: the PyPI `netfilterqueue` binding cannot set NFQA_CFG_F_FAIL_OPEN, and
fail-open is the point (a security device on a ward must not take the ward down).

Per batch: poll the netlink socket, receive every pending message; the library calls back
once per packet and the callback copies the packet into one preallocated buffer behind a
16-byte Linux cooked (SLL, link type 113) header carrying the source MAC, so MAC and OUI
groups work for the flow's initiator, and fills preallocated offset/length/timestamp/link
type arrays. Only first packets of flows get here, so the per-packet Python of the callback
is per flow, not per packet of the ward's traffic.

Failure cases, and what keeps the ward's traffic flowing in each:
- no listener (daemon not started, killed, crashed): `--queue-bypass` on the NFQUEUE rule
  accepts; flows decided before keep their conntrack mark (allowed pass, denied drop).
- queue full (max_len packets waiting) or the netlink socket full: the queue's
  NFQA_CFG_F_FAIL_OPEN flag accepts the packet instead of dropping it.
- classifier alive but not answering (SIGSTOP, hung in I/O, stuck): the watchdog process
  (appliance.sources.netfilter.watchdog) turns the queue rule into ACCEPT when the packet loop's
  heartbeat (a byte down a pipe, every stall_ms/5 at most) has been silent for `stall_ms`,
  and back when it beats again; without it, fail-open waits for a full queue.
- a batch the daemon never gave verdicts for: accepted (unmarked) before the next batch.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import select
import socket
import struct
import subprocess
import sys
import threading
import time
from array import array
from collections.abc import Iterator
from typing import Any

from appliance.common.child import child_env
from appliance.sources.base import Source, SourceError
from appliance.sources.capture import Batch
from appliance.sources.netfilter import (
    DEFAULT_MASK,
    InlineError,
    InlineRules,
    boottime,
    queue_stats,
)
from fastpath import HINT_KNOWN_CONVERSATION, HINT_NEW_CONVERSATION, REASON_NAMES

log = logging.getLogger("wardtap")

LIBRARY = "libnetfilter_queue.so.1"
LINKTYPE_LINUX_SLL = 113
SLL_HEADER = 16
PACKET_OTHERHOST = 3          # SLL packet type: forwarded, not addressed to us
ARPHRD_ETHER = 1
NF_DROP, NF_ACCEPT, NF_REPEAT = 0, 1, 4
NFQNL_COPY_PACKET = 2
NFQA_CFG_F_FAIL_OPEN = 1 << 0
NFQA_CFG_F_GSO = 1 << 2
CAP_NET_ADMIN = 12
VERDICT_ALLOW = 1             # fastpath VERDICT_NAMES: none, allow, deny, malformed
# Verdicts for this packet only, not for its flow (no mark): an unsolicited answer is dropped
# and a flow whose receiver is not identified yet passes, so either is decided again when its
# other side speaks (docs/fastpath.md, "Who started a flow"); a watched flow (DNS answers to
# read, a first payload to judge, docs/policy.md) passes packet by packet until it is decided.
PACKET_ONLY_REASONS = {code for code, name in REASON_NAMES.items()
                       if name in ("unsolicited_answer", "pending_receiver", "watched")}

SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
WATCHDOG_RESTART = 5.0

_SLL = struct.Struct("!HHH8sH")
_U16 = struct.Struct("!H")


class _PacketHdr(ctypes.BigEndianStructure):
    _pack_ = 1
    _fields_ = [("packet_id", ctypes.c_uint32), ("hw_protocol", ctypes.c_uint16),
                ("hook", ctypes.c_uint8)]


class _Timeval(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                             ctypes.c_void_p)


def _load_library() -> ctypes.CDLL:
    try:
        lib = ctypes.CDLL(LIBRARY, use_errno=True)
    except OSError:
        raise SourceError(f"{LIBRARY} not found: install libnetfilter-queue1 "
                          "(apt install libnetfilter-queue1) for the inline datapath") from None
    vp, u16, u32 = ctypes.c_void_p, ctypes.c_uint16, ctypes.c_uint32
    signatures: dict[str, tuple[Any, list[Any]]] = {
        "nfq_open": (vp, []),
        "nfq_close": (ctypes.c_int, [vp]),
        "nfq_bind_pf": (ctypes.c_int, [vp, u16]),
        "nfq_unbind_pf": (ctypes.c_int, [vp, u16]),
        "nfq_create_queue": (vp, [vp, u16, _CALLBACK, vp]),
        "nfq_destroy_queue": (ctypes.c_int, [vp]),
        "nfq_set_mode": (ctypes.c_int, [vp, ctypes.c_uint8, ctypes.c_uint]),
        "nfq_set_queue_maxlen": (ctypes.c_int, [vp, u32]),
        "nfq_set_queue_flags": (ctypes.c_int, [vp, u32, u32]),
        "nfq_fd": (ctypes.c_int, [vp]),
        "nfq_handle_packet": (ctypes.c_int, [vp, vp, ctypes.c_int]),
        "nfq_get_msg_packet_hdr": (ctypes.POINTER(_PacketHdr), [vp]),
        "nfq_get_payload": (ctypes.c_int, [vp, ctypes.POINTER(vp)]),
        "nfq_get_packet_hw": (vp, [vp]),
        "nfq_get_nfmark": (u32, [vp]),
        "nfq_get_timestamp": (ctypes.c_int, [vp, ctypes.POINTER(_Timeval)]),
        "nfq_set_verdict2": (ctypes.c_int, [vp, u32, u32, u32, u32, vp]),
        "nfq_set_verdict_batch": (ctypes.c_int, [vp, u32, u32]),
        "nfq_set_verdict_batch2": (ctypes.c_int, [vp, u32, u32, u32]),
    }
    for name, (restype, argtypes) in signatures.items():
        func = getattr(lib, name)
        func.restype = restype
        func.argtypes = argtypes
    return lib


def _has_net_admin() -> bool:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> CAP_NET_ADMIN & 1)
    except OSError:
        pass
    return os.geteuid() == 0


def _oserror(what: str) -> str:
    code = ctypes.get_errno()
    return f"{what}: {os.strerror(code)}" if code else what


class NfqueueSource(Source):
    """The first packets of a bridge's flows, from NFQUEUE `queue`; verdicts set the flow."""

    name = "inline"
    inline = True
    capabilities = ("CAP_NET_ADMIN",)

    def __init__(self, bridge: str = "br0", queue: int = 0, max_len: int = 4096,
                 snaplen: int = 1600, batch_size: int = 1024, idle_interval: float = 1.0,
                 mark_mask: int = DEFAULT_MASK, stall_ms: float = 500.0,
                 watchdog: bool = True, keep_rules: bool = False, answer_window: float = 60.0,
                 **options: Any) -> None:
        """`answer_window`: the classifier's UDP idle timeout. "This packet is the first the
        kernel has seen of its conversation" says something only once the kernel has tracked
        longer than that (an answer never waits longer for its request); before (just after
        boot, or out of bypass) no hint is given and the classifier's own window applies."""
        super().__init__(**options)
        self.keep_rules = keep_rules
        if not 0 <= queue <= 65535:
            raise SourceError(f"queue {queue} out of range (0-65535)")
        if batch_size < 1 or max_len < 1 or snaplen < 64:
            raise SourceError("batch_size and max_len must be positive, snaplen at least 64")
        self.bridge = bridge
        self.queue = queue
        self.max_len = max_len
        self.snaplen = snaplen
        self.batch_size = batch_size
        self.idle_interval = idle_interval
        self.stall_ms = stall_ms
        self.use_watchdog = watchdog
        self.answer_window = answer_window
        try:
            self.rules = InlineRules(bridge, queue, mark_mask)
        except InlineError as exc:
            raise SourceError(str(exc)) from None
        self.marks = self.rules.marks
        self.epoch = 0
        self.counters = dict.fromkeys(
            ("packets", "bytes", "batches", "allowed", "denied", "passed",
             "accepted_unverdicted", "requeued", "socket_overflows", "callback_errors",
             "watchdog_restarts", "unmarked"), 0)
        self._tracking_since: int | None = None
        self._lib: ctypes.CDLL | None = None
        self._h: int | None = None
        self._qh: int | None = None
        self._sock: socket.socket | None = None
        self._watchdog: subprocess.Popen[bytes] | None = None
        self._watchdog_started = 0.0
        self._heartbeat = -1          # write end of the watchdog's pipe
        self._mode: str | None = None
        self._rule_state = "absent"
        self._pending = 0
        self._count = 0
        self._used = 0

    # -- opening ---------------------------------------------------------------------------

    def open(self) -> None:
        if self._h is not None:
            return
        if not _has_net_admin():
            raise SourceError("the inline datapath needs CAP_NET_ADMIN: run as root or grant "
                              "it (systemd: AmbientCapabilities=CAP_NET_ADMIN)")
        if not os.path.exists(f"/sys/class/net/{self.bridge}"):
            raise SourceError(f"bridge {self.bridge!r} does not exist: create it (ip link add "
                              f"{self.bridge} type bridge) and enslave the ward and uplink ports")
        if not os.path.isdir(f"/sys/class/net/{self.bridge}/bridge"):
            raise SourceError(f"{self.bridge!r} is an interface but not a bridge: the inline "
                              "datapath needs the bridge joining the ward and uplink ports")
        try:
            self.rules.check_tools()
        except InlineError as exc:
            raise SourceError(str(exc)) from None
        self._lib = _load_library()
        try:
            self._bind()
            self.epoch = self.rules.install(rotate=True)
            self._rule_state = "enforce"
            self._tracking_since = self.rules.tracking_since()
        except InlineError as exc:
            self.close()
            raise SourceError(f"cannot install the enforcement rules on {self.bridge}: "
                              f"{exc}") from None
        except SourceError:
            self.close()
            raise
        if self.use_watchdog:
            self._start_watchdog()
        log.info("inline: bridge %s, queue %d, epoch %d, fail-open queue of %d", self.bridge,
                 self.queue, self.epoch, self.max_len)

    def _bind(self) -> None:
        lib = self._lib
        assert lib is not None
        ctypes.set_errno(0)
        h = lib.nfq_open()
        if not h:
            raise SourceError(_oserror("cannot open a netfilter queue handle (nfq_open)"))
        self._h = h
        for family in (socket.AF_INET, socket.AF_INET6):
            lib.nfq_unbind_pf(h, family)     # no-ops since Linux 3.8, needed before it
            if lib.nfq_bind_pf(h, family) < 0:
                raise SourceError(_oserror(f"nfq_bind_pf({family.name})"))
        self._callback = _CALLBACK(self._on_packet)
        ctypes.set_errno(0)
        qh = lib.nfq_create_queue(h, self.queue, self._callback, None)
        if not qh:
            holder = queue_stats(self.queue)
            raise SourceError(
                f"NFQUEUE {self.queue} is already bound (netlink port "
                f"{holder.portid}): another wardtap or IDS listens; choose another queue"
                if holder else _oserror(f"cannot bind NFQUEUE {self.queue}"))
        self._qh = qh
        if lib.nfq_set_mode(qh, NFQNL_COPY_PACKET, self.snaplen) < 0:
            raise SourceError(_oserror(f"cannot set copy mode on NFQUEUE {self.queue}"))
        if lib.nfq_set_queue_maxlen(qh, self.max_len) < 0:
            raise SourceError(_oserror(f"cannot set max length of NFQUEUE {self.queue}"))
        if lib.nfq_set_queue_flags(qh, NFQA_CFG_F_FAIL_OPEN, NFQA_CFG_F_FAIL_OPEN) < 0:
            raise SourceError(_oserror("the kernel refused NFQA_CFG_F_FAIL_OPEN, so a full "
                                       "queue would drop ward traffic; refusing to run"))
        # GSO packets whole, not segmented in the kernel before queueing (best effort).
        lib.nfq_set_queue_flags(qh, NFQA_CFG_F_GSO, NFQA_CFG_F_GSO)
        self._sock = socket.socket(fileno=os.dup(lib.nfq_fd(h)))
        with contextlib.suppress(OSError):
            # Room for a full queue, so a burst fails open in the queue, not in the socket.
            self._sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE,
                                  self.max_len * (self.snaplen + 1024))
        self._allocate()

    def _allocate(self) -> None:
        n = self.batch_size
        self._slot = SLL_HEADER + self.snaplen
        self._buf = bytearray(n * self._slot)
        self._buf_c = (ctypes.c_char * len(self._buf)).from_buffer(self._buf)
        self._base = ctypes.addressof(self._buf_c)
        self._rbuf = bytearray(self.snaplen + 8192)
        self._rbuf_c = (ctypes.c_char * len(self._rbuf)).from_buffer(self._rbuf)
        self._raddr = ctypes.addressof(self._rbuf_c)
        self._offsets = array("q", bytes(8 * n))
        self._lengths = array("I", bytes(4 * n))
        self._wire = array("I", bytes(4 * n))
        self._stamps = array("Q", bytes(8 * n))
        self._links = array("H", [LINKTYPE_LINUX_SLL] * n)
        self._ids = array("I", bytes(4 * n))
        self._marks = array("I", bytes(4 * n))
        self._hints = array("B", bytes(n))
        self._hintview = memoryview(self._hints)
        self._payload = ctypes.c_void_p()
        self._tv = _Timeval()
        self._views = [memoryview(a) for a in (self._offsets, self._lengths, self._wire,
                                               self._stamps, self._links)]
        self._bufview = memoryview(self._buf)

    def _start_watchdog(self) -> None:
        env = child_env()
        self._close_heartbeat()
        beat_r, beat_w = os.pipe()
        try:
            self._watchdog = subprocess.Popen(
                [sys.executable, "-m", "appliance.sources.inlinectl", "watchdog",
                 "--bridge", self.bridge,
                 "--queue", str(self.queue), "--mask", hex(self.marks.mask),
                 "--heartbeat-fd", str(beat_r), "--stall-ms", str(self.stall_ms)],
                env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, pass_fds=(beat_r,),
                start_new_session=True)   # terminal job control must not stop it with us
        except BaseException:
            os.close(beat_w)
            raise
        finally:
            os.close(beat_r)
        os.set_blocking(beat_w, False)
        self._heartbeat = beat_w
        self._watchdog_started = time.monotonic()

    def _beat(self) -> None:
        """Tell the watchdog the loop turns (a full pipe means it has not read yet: fine)."""
        if self._heartbeat >= 0:
            with contextlib.suppress(BlockingIOError, BrokenPipeError):
                os.write(self._heartbeat, b".")

    def _close_heartbeat(self) -> None:
        if self._heartbeat >= 0:
            os.close(self._heartbeat)
            self._heartbeat = -1

    # -- receiving -------------------------------------------------------------------------

    def _on_packet(self, qh: int, nfmsg: int, nfad: int, data: int) -> int:
        """libnetfilter_queue's callback, once per packet: copy it into the batch."""
        lib = self._lib
        assert lib is not None
        packet_id = None
        try:
            hdr = lib.nfq_get_msg_packet_hdr(nfad).contents
            packet_id = hdr.packet_id
            i, off = self._count, self._used
            if i >= self.batch_size or off + self._slot > len(self._buf):
                raise OverflowError("batch full")
            n = lib.nfq_get_payload(nfad, ctypes.byref(self._payload))
            n = max(0, min(n, self.snaplen))
            hw = lib.nfq_get_packet_hw(nfad)
            if hw:
                raw = ctypes.string_at(hw, 12)
                _SLL.pack_into(self._buf, off, PACKET_OTHERHOST, ARPHRD_ETHER,
                               min(_U16.unpack_from(raw)[0], 8), raw[4:12], hdr.hw_protocol)
            else:
                _SLL.pack_into(self._buf, off, PACKET_OTHERHOST, ARPHRD_ETHER, 0, b"",
                               hdr.hw_protocol)
            if n:
                ctypes.memmove(self._base + off + SLL_HEADER, self._payload, n)
            wire = n
            if n >= 6:
                version = self._buf[off + SLL_HEADER] >> 4
                if version == 4:
                    wire = _U16.unpack_from(self._buf, off + SLL_HEADER + 2)[0]
                elif version == 6:
                    wire = 40 + _U16.unpack_from(self._buf, off + SLL_HEADER + 4)[0]
            if lib.nfq_get_timestamp(nfad, ctypes.byref(self._tv)) == 0 and self._tv.tv_sec:
                self._stamps[i] = self._tv.tv_sec * 1_000_000_000 + self._tv.tv_usec * 1000
            else:
                self._stamps[i] = time.time_ns()
            self._offsets[i] = off
            self._lengths[i] = SLL_HEADER + n
            self._wire[i] = SLL_HEADER + max(wire, n)
            self._ids[i] = packet_id
            self._marks[i] = lib.nfq_get_nfmark(nfad)
            self._hints[i] = self._hint(self._marks[i])
            self._count = i + 1
            self._used = off + SLL_HEADER + n
        except Exception:  # noqa: BLE001  (a callback must not raise into C)
            self.counters["callback_errors"] += 1
            if packet_id is not None and self._qh:
                lib.nfq_set_verdict2(self._qh, packet_id, NF_ACCEPT, 0, 0, None)
        return 0

    def _hint(self, mark: int) -> int:
        """What the kernel knows of a queued packet's conversation, from rule 7's mark."""
        if mark & self.marks.mask == self.marks.known:
            return HINT_KNOWN_CONVERSATION
        since = self._tracking_since
        if since is not None and boottime() - since > self.answer_window:
            return HINT_NEW_CONVERSATION
        return 0

    def _drain(self) -> None:
        """Hand every pending netlink message to the library, up to one batch."""
        lib, sock = self._lib, self._sock
        assert lib is not None and sock is not None
        size = len(self._rbuf)
        while self._count < self.batch_size and self._used + self._slot <= len(self._buf):
            try:
                n = sock.recv_into(self._rbuf, size, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:      # the kernel failed those packets open
                    self.counters["socket_overflows"] += 1
                    continue
                raise SourceError(f"NFQUEUE {self.queue}: receive failed: {exc}") from None
            lib.nfq_handle_packet(self._h, self._raddr, n)

    def batches(self, stop: threading.Event) -> Iterator[Batch]:
        if self._sock is None:
            raise SourceError("inline source used before open()")
        poller = select.poll()
        poller.register(self._sock.fileno(), select.POLLIN)
        if self.wakeup_fd >= 0:
            poller.register(self.wakeup_fd, select.POLLIN)
        timeout_ms = max(1, int(min(self.idle_interval, 0.1) * 1000))
        # the watchdog's heartbeat, a few times per stall time, not per batch
        beat_every = min(0.1, self.stall_ms / 5000)
        last_yield = last_beat = time.monotonic()
        while not stop.is_set():
            self._settle_pending()
            self._check_watchdog()
            self._count = self._used = 0
            ready = dict(poller.poll(timeout_ms))
            if self._sock.fileno() in ready:
                self._drain()
            n = self._count
            now = time.monotonic()
            if now - last_beat >= beat_every:
                self._beat()
                last_beat = now
            if n == 0 and now - last_yield < self.idle_interval and (
                    self.wakeup_fd not in ready):       # a request waits: yield now
                continue
            self._pending = n
            self.counters["batches"] += 1
            self.counters["packets"] += n
            self.counters["bytes"] += self._used
            offsets, lengths, wire, stamps, links = (v[:n] for v in self._views)
            last_yield = now
            yield Batch(self._bufview, offsets, lengths, wire, stamps, links, n, 0,
                        self._hintview[:n])

    # -- verdicts ----------------------------------------------------------------------------

    def verdict(self, batch: Batch, verdicts: memoryview, mode: str,
                reasons: memoryview | None = None) -> None:
        """enforce: allow -> accept and mark the flow allowed; deny/malformed -> drop and mark
        it denied; a verdict for this packet only (PACKET_ONLY_REASONS) is given unmarked.
        learn/monitor: accept and mark allowed (violations are reported by the classifier).
        bypass: accept, unmarked.

        "Accept/drop with a mark" is NF_REPEAT with the mark: the packet goes through the
        chain again, where the mark is saved to the flow's conntrack mark and acted on.
        """
        n = min(batch.count, self._pending)
        if n == 0 or self._qh is None:
            return
        lib = self._lib
        assert lib is not None
        self._sync_mode(mode)
        mask = self.marks.mask
        keep = ~mask & 0xFFFFFFFF
        allow, deny = self.marks.allow(self.epoch), self.marks.deny(self.epoch)
        known = self.marks.known
        ids, marks = self._ids, self._marks
        decided: list[tuple[int, int]] = []
        allowed = denied = unmarked = 0
        for i in range(n):
            old = marks[i]
            if old & mask == known:
                old &= keep                 # rule 7's hint, not a verdict
            if mode == "bypass":
                decided.append((NF_ACCEPT, old))
                continue
            ok = mode != "enforce" or verdicts[i] == VERDICT_ALLOW
            if ok:
                allowed += 1
            else:
                denied += 1
            if old & mask:
                # Queued again although marked: the mark is from an older epoch (a rotation
                # raced this packet). Act once without repeating, so it cannot loop.
                self.counters["requeued"] += 1
                decided.append((NF_ACCEPT if ok else NF_DROP, old))
            elif reasons is not None and reasons[i] in PACKET_ONLY_REASONS:
                unmarked += 1
                decided.append((NF_ACCEPT if ok else NF_DROP, old))
            else:
                decided.append((NF_REPEAT, (old & keep) | (allow if ok else deny)))
        self.counters["allowed"] += allowed
        self.counters["denied"] += denied
        self.counters["unmarked"] += unmarked
        if mode == "bypass":
            self.counters["passed"] += n
        qh = self._qh
        first = decided[0]
        if all(d == first for d in decided):
            lib.nfq_set_verdict_batch2(qh, ids[n - 1], first[0], first[1])
        else:
            for i, (action, mark) in enumerate(decided):
                lib.nfq_set_verdict2(qh, ids[i], action, mark, 0, None)
        self._pending = 0

    def _settle_pending(self) -> None:
        """Packets the caller never gave verdicts for: accept them, unmarked (fail-open)."""
        if self._pending and self._qh is not None and self._lib is not None:
            self._lib.nfq_set_verdict_batch(self._qh, self._ids[self._pending - 1], NF_ACCEPT)
            self.counters["accepted_unverdicted"] += self._pending
        self._pending = 0

    # -- mode, policy and rules ----------------------------------------------------------------

    def _sync_mode(self, mode: str) -> None:
        """Follow the daemon's mode: bypass forwards in the kernel; any other change rotates
        the epoch, so flows decided under the old mode are decided again."""
        if mode == self._mode:
            return
        previous, self._mode = self._mode, mode
        try:
            if mode == "bypass":
                if self._rule_state != "bypass":
                    self.rules.bypass()
                    self._rule_state = "bypass"
                    self._tracking_since = None
            elif previous is not None or self._rule_state != "enforce":
                self.epoch = self.rules.install(rotate=True)
                self._rule_state = "enforce"
                self._tracking_since = self.rules.tracking_since()
        except InlineError as exc:
            log.error("inline: cannot change the rules for mode %s: %s", mode, exc)

    def set_bypass(self, on: bool) -> None:
        """The daemon's mode changed (to bypass, or to learn/monitor/enforce)."""
        self._mode = "bypass" if on else None
        try:
            if on:
                self.rules.bypass()
                self._rule_state = "bypass"
                self._tracking_since = None
            else:
                self.epoch = self.rules.install(rotate=True)
                self._rule_state = "enforce"
                self._tracking_since = self.rules.tracking_since()
        except InlineError as exc:
            log.error("inline: cannot %s: %s", "bypass" if on else "enforce", exc)

    def flows_changed(self, events: list[dict[str, Any]]) -> None:
        """A new policy: every flow's next packet is decided again (a new epoch)."""
        if self._rule_state == "enforce":
            try:
                self.epoch = self.rules.install(rotate=True)
            except InlineError as exc:
                log.error("inline: cannot re-decide flows after the policy change: %s", exc)

    def reclassify(self) -> None:
        self.flows_changed([])

    def status(self) -> dict[str, Any]:
        return self.rules.status()

    def _check_watchdog(self) -> None:
        """Restart a watchdog that died (at most every WATCHDOG_RESTART seconds)."""
        wd = self._watchdog
        if wd is None or wd.poll() is None:
            return
        now = time.monotonic()
        if now - self._watchdog_started < WATCHDOG_RESTART:
            return
        log.error("inline: watchdog exited (%s); restarting it", wd.returncode)
        self.counters["watchdog_restarts"] += 1
        self._start_watchdog()

    def stats(self) -> dict[str, int]:
        out = dict(self.counters, epoch=self.epoch)
        since = self._tracking_since
        # Until the kernel has tracked the bridge for answer_window seconds, a lone answer
        # may belong to a request sent before tracking began, so none is judged unsolicited.
        out["tracked_seconds"] = -1 if since is None else max(0, boottime() - since)
        q = queue_stats(self.queue)
        if q is not None:
            out.update(queue_waiting=q.queued, queue_delivered=q.id_sequence,
                       kernel_dropped=q.dropped + q.user_dropped)
        return out

    # -- closing -----------------------------------------------------------------------------

    def close(self) -> None:
        """Release the queue and, on a clean stop, remove the rules: a stopped appliance
        blocks nothing (denied flows too pass again), and nothing is left in the kernel
        that `wardtap inline status` would have to explain. With `keep_rules` they stay:
        --queue-bypass forwards new flows and decided flows keep their verdicts, so a
        restart is seamless (a crash leaves them too; `wardtap inline remove`)."""
        wd, self._watchdog = self._watchdog, None
        self._close_heartbeat()
        if wd is not None:
            wd.terminate()
            try:
                wd.wait(timeout=5)
            except subprocess.TimeoutExpired:
                wd.kill()
                wd.wait(timeout=5)
        if self._qh is not None:
            self._settle_pending()
            assert self._lib is not None
            self._lib.nfq_destroy_queue(self._qh)
            self._qh = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._h is not None:
            assert self._lib is not None
            self._lib.nfq_close(self._h)
            self._h = None
        if not self.keep_rules and self._rule_state != "absent":
            try:
                self.rules.remove()
                self._rule_state = "absent"
                log.info("inline: rules removed from %s (clean stop)", self.bridge)
            except InlineError as exc:
                log.error("inline: could not remove the rules (`wardtap inline remove`): %s",
                          exc)
