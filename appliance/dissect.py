"""Deep dissection off the hot path: marked packets -> triage -> pyshark/tshark -> evidence.

The fast path marks a budgeted sample of packets (`Classifier.classify(..., samples=...)`,
`set_sampling`). Three stages take them from there, none of which the fast path waits for:

1. **Hot side** (`Dissector.offer`, in the datapath thread): finds the marked indices with
   `bytearray.find` (a memchr, not a loop over every packet), copies only those packets'
   bytes into the current chunk, and hands a full (or old) chunk to a bounded queue. When
   the queue is full the chunk is dropped and counted; nothing blocks (unless `block=True`,
   which offline replay uses: a file can wait, a ward cannot).
2. **Supervisor thread**: triages each chunk in plain Python (`Triage`: keeps only packets
   that can identify a device - DHCP, LLDP, CDP, mDNS, SSDP, NetBIOS, the first bytes of
   TLS handshakes, HTTP, HL7/MLLP, DICOM associations - and only the first one of each kind
   per device per `dedupe_ttl_s`), writes what is left as a pcapng chunk file
   (appliance.capwriter) in a private spool directory (tmpfs when there is one: chunks can
   hold patient data and never reach the SD card), and gives it to the worker.
3. **Worker process** (`python -m appliance.dissect --worker`): reads each chunk with
   pyshark's FileCapture (real tshark, HL7 and DICOM decode-as), turns what tshark found into
   evidence records (`extract`), answers with one JSON line. It is killed and restarted when a
   chunk takes longer than `timeout_s` (a hung tshark) or the worker and its tshark together
   exceed `rss_limit_mib` (a leak); a tshark that crashes costs that chunk only. The chunk is
   then lost and counted. Repeated failures back off (0.5 s doubling to 10 s).

Evidence records come back through `Dissector.drain_results()`; appliance.inventory merges
them. `stats()` counts every packet that was marked, dropped, triaged away, sent to pyshark.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import IO, Any

from appliance.capwriter import PcapngWriter
from appliance.errors import WardtapError

# tshark already decodes 104 as DICOM and 2575 as HL7, and tries both heuristically on TCP;
# the decode-as entries make that explicit and are where a site adds its own ports.
DECODE_AS: dict[str, str] = {
    "tcp.port==2575": "hl7",
    "tcp.port==104": "dicom",
    "tcp.port==11112": "dicom",
}

# Fast-path sampling budgets used when dissection is on (Classifier.set_sampling), tuned on
# the demo ward with bench/bench_dissect.py (docs/inventory.md has the figures). The first 6
# packets of a flow reach a TLS ClientHello (and a TLS 1.2 server certificate), an HL7
# message or a DICOM A-ASSOCIATE after the handshake. 16 packets per device per hour: a
# device's first minutes (neighbour discovery, DHCP, NTP and DNS take some) still reach its
# identifying exchange, and afterwards a device costs at most 16 copies an hour. 64 per
# second in all bound what a flood of new flows or devices can make the datapath copy while a
# ward powering up is still seen. The classifier's defaults (8 per flow, 64 per device per
# minute, 256/s) mark 11.7% of the demo ward's packets; these 0.16%.
SAMPLING = {"per_flow": 6, "device_budget": 16, "device_window_s": 3600.0,
            "global_budget": 64}

LINKTYPE_ETHERNET, LINKTYPE_RAW, LINKTYPE_SLL, LINKTYPE_SLL2 = 1, 101, 113, 276
LINKTYPE_IPV4, LINKTYPE_IPV6 = 228, 229


class DissectError(WardtapError):
    """Dissection cannot start (tshark or pyshark missing, spool directory unusable)."""


@dataclass
class DissectConfig:
    tshark: str = "tshark"            # name on PATH or a path (pyshark runs DIR/tshark)
    spool_dir: str | None = None      # default: a private directory on tmpfs (/dev/shm)
    chunk_packets: int = 256          # marked packets per chunk (hot side)
    chunk_bytes: int = 1 << 20        # ... or this many bytes
    chunk_age_s: float = 2.0          # ... or this old (wall clock; see tick())
    queue_chunks: int = 8             # chunks waiting for triage; more are dropped
    max_pending: int = 4096           # triaged packets waiting for pyshark; more are dropped
    max_batch: int = 1024             # packets per pyshark run
    dispatch_interval_s: float = 5.0  # at most one tshark start per interval (unless full)
    timeout_s: float = 30.0           # a run longer than this: worker killed and restarted
    rss_limit_mib: int = 768          # worker + tshark RSS (tshark alone is ~160 MiB)
    max_runs_per_worker: int = 200    # a fresh worker after this many runs
    block: bool = False               # wait for room instead of dropping (offline replay)
    dedupe_ttl_s: float = 3600.0      # capture time: one packet per evidence key per TTL
    per_key: int = 1
    decode_as: dict[str, str] = field(default_factory=lambda: dict(DECODE_AS))
    sampling: dict[str, Any] = field(default_factory=lambda: dict(SAMPLING))


# --- triage ------------------------------------------------------------------------------

_DISCOVERY_UDP = {67: "dhcp", 68: "dhcp", 546: "dhcpv6", 547: "dhcpv6", 5353: "mdns",
                  1900: "ssdp", 137: "nbns", 138: "nbdgm"}
_HTTP_METHODS = (b"GET ", b"POST ", b"HEAD ", b"PUT ", b"OPTIONS ", b"DELETE ", b"PATCH ")
_CDP_SNAP = b"\xaa\xaa\x03\x00\x00\x0c\x20\x00"
_TLS13 = b"\x00\x2b\x00\x02\x03\x04"        # supported_versions = TLS 1.3 in a ServerHello
_FOLLOW = 3                                  # continuation segments kept after a start


class Triage:
    """Decide, per marked packet, whether pyshark should see it. Plain Python, no tshark.

    Keeps only packets that carry identifying content, and per evidence key (device, kind,
    peer) only `per_key` of them per `ttl_s` of capture time. TCP segments continuing a kept
    TLS server flight (TLS 1.2 and older: the certificate is in clear), HL7 message or DICOM
    association (up to 3 segments) are kept too, so tshark can reassemble them. All state is
    bounded (LRU dictionaries).
    """

    def __init__(self, ttl_s: float = 3600.0, per_key: int = 1, max_keys: int = 65536) -> None:
        self.ttl_ns = int(ttl_s * 1e9)
        self.per_key = per_key
        self.max_keys = max_keys
        self._seen: OrderedDict[tuple[Any, ...], list[int]] = OrderedDict()
        self._follow: OrderedDict[tuple[bytes, int, bytes, int], int] = OrderedDict()
        self.kept: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()

    def keep(self, ts: int, linktype: int, frame: bytes) -> bool:
        try:
            kind, key, follow = self._classify(linktype, frame)
        except (IndexError, ValueError):
            kind, key, follow = "undecodable", None, None
        if key is None:
            self.dropped[kind] += 1
            return False
        if kind != "continuation" and not self._admit(key, ts):
            self.dropped["duplicate"] += 1
            return False
        if follow is not None:
            self._follow[follow] = _FOLLOW
            self._follow.move_to_end(follow)
            if len(self._follow) > 4096:
                self._follow.popitem(last=False)
        self.kept[kind] += 1
        return True

    def _admit(self, key: tuple[Any, ...], ts: int) -> bool:
        seen = self._seen.get(key)
        if seen is None or ts - seen[0] >= self.ttl_ns or ts < seen[0]:
            self._seen[key] = [ts, 1]
            self._seen.move_to_end(key)
            if len(self._seen) > self.max_keys:
                self._seen.popitem(last=False)
            return True
        if seen[1] < self.per_key:
            seen[1] += 1
            return True
        return False

    def _classify(self, linktype: int, f: bytes) -> tuple[str, tuple[Any, ...] | None,
                                                          tuple[bytes, int, bytes, int] | None]:
        """(kind, dedupe key or None to drop, TCP flow whose next segments to keep)."""
        smac = b""
        if linktype == LINKTYPE_ETHERNET:
            smac, off = f[6:12], 14
            et = int.from_bytes(f[12:14], "big")
            for _ in range(2):
                if et not in (0x8100, 0x88A8, 0x9100):
                    break
                et = int.from_bytes(f[off + 2:off + 4], "big")
                off += 4
            if et < 0x0600 and f[off:off + 8] == _CDP_SNAP:      # CDP: content sans TTL
                return "cdp", ("cdp", smac, zlib.crc32(f[off + 12:])), None
        elif linktype == LINKTYPE_SLL:
            smac, et, off = f[6:12], int.from_bytes(f[14:16], "big"), 16
        elif linktype == LINKTYPE_SLL2:
            smac, et, off = f[12:18], int.from_bytes(f[0:2], "big"), 20
        elif linktype in (LINKTYPE_RAW, LINKTYPE_IPV4, LINKTYPE_IPV6):
            et, off = (0x86DD if f[0] >> 4 == 6 else 0x0800), 0
        else:
            return "linktype", None, None
        if et == 0x88CC:
            return "lldp", ("lldp", smac, zlib.crc32(f[off:])), None
        if et == 0x0800:
            ihl = (f[off] & 15) * 4
            if (int.from_bytes(f[off + 6:off + 8], "big") & 0x1FFF) or ihl < 20:
                return "fragment", None, None
            proto = f[off + 9]
            src, dst = f[off + 12:off + 16], f[off + 16:off + 20]
            end = min(len(f), off + int.from_bytes(f[off + 2:off + 4], "big"))
            l4 = off + ihl
        elif et == 0x86DD:
            proto, src, dst = f[off + 6], f[off + 8:off + 24], f[off + 24:off + 40]
            end = min(len(f), off + 40 + int.from_bytes(f[off + 4:off + 6], "big"))
            l4 = off + 40
            for _ in range(4):
                if proto in (0, 43, 60):
                    proto, l4 = f[l4], l4 + (f[l4 + 1] + 1) * 8
                elif proto == 44:
                    if int.from_bytes(f[l4 + 2:l4 + 4], "big") >> 3:
                        return "fragment", None, None
                    proto, l4 = f[l4], l4 + 8
                else:
                    break
        else:
            return "not_ip", None, None
        who = smac or src
        sport = int.from_bytes(f[l4:l4 + 2], "big")
        dport = int.from_bytes(f[l4 + 2:l4 + 4], "big")
        if proto == 17:
            service = _DISCOVERY_UDP.get(dport) or _DISCOVERY_UDP.get(sport)
            if service is None:
                return "udp_other", None, None
            payload = f[l4 + 8:end]
            if service == "dhcp":
                # a client's DISCOVER and REQUEST say the same; of the replies only the ACK
                # (the address given) matters
                if payload[:1] == b"\x02" and _dhcp_type(payload) != 5:
                    return "dhcp_offer", None, None
                return "dhcp", ("dhcp", who, payload[28:34], payload[:1]), None
            if service == "dhcpv6":
                return "dhcpv6", ("dhcpv6", who, payload[:1]), None
            # mDNS, SSDP, NetBIOS: the same announcement again is a duplicate (id ignored)
            return service, (service, who, zlib.crc32(payload[2:])), None
        if proto != 6:
            return "other_proto", None, None
        payload = f[l4 + (f[l4 + 12] >> 4) * 4:end]
        if not payload:
            return "no_payload", None, None
        flow = (src, sport, dst, dport)
        head = payload[:8]
        if head[:2] == b"\x16\x03" and len(payload) > 5 and payload[5] in (1, 2):
            if payload[5] == 1:
                return "tls_client_hello", ("tls_ch", who, dst, dport), None
            if _TLS13 in payload[:400]:
                return "tls13_server_hello", None, None     # the certificate is encrypted
            return "tls_server_hello", ("tls_sh", who, src, sport), flow
        if head.startswith(_HTTP_METHODS):
            return "http_request", ("http_rq", who, dst, dport), None
        if head.startswith(b"HTTP/1."):
            return "http_response", ("http_rs", who, src, sport), None
        if head[:4] == b"\x0bMSH":                               # HL7 v2 over MLLP
            fields = payload[1:400].split(b"|", 9)
            msg_type = fields[8][:20] if len(fields) > 8 else b""
            if msg_type.startswith(b"ACK"):      # says nothing the acknowledged message did not
                return "hl7_ack", None, None
            return "hl7", ("hl7", who, msg_type), None if b"\x1c" in payload else flow
        if (len(payload) >= 74 and payload[0] in (1, 2) and payload[1] == 0
                and payload[6:8] == b"\x00\x01"):                # DICOM A-ASSOCIATE-RQ/AC
            whole = int.from_bytes(payload[2:6], "big") + 6 <= len(payload)
            return "dicom", ("dicom", who, payload[0], payload[10:42]), None if whole else flow
        left = self._follow.get(flow)
        if left:                                                 # continuation segment
            if left > 1:
                self._follow[flow] = left - 1
            else:
                del self._follow[flow]
            return "continuation", ("continuation",), None
        return "tcp_other", None, None


def _dhcp_type(payload: bytes) -> int:
    """DHCP message type (option 53), 0 when absent or unreadable."""
    i = 240
    if payload[236:240] != b"\x63\x82\x53\x63":
        return 0
    while i + 1 < len(payload):
        code = payload[i]
        if code == 255:
            break
        if code == 0:
            i += 1
            continue
        length = payload[i + 1]
        if code == 53 and length >= 1 and i + 2 < len(payload):
            return payload[i + 2]
        i += 2 + length
    return 0


# --- the hot side and the supervisor -------------------------------------------------------

Chunk = list[tuple[int, int, bytes]]          # (timestamp ns, link type, frame)

COUNTERS = (
    "marked", "chunks", "chunks_dropped", "packets_dropped_queue", "packets_dropped_backlog",
    "triaged_kept", "triaged_away", "runs", "packets_to_pyshark", "packets_dissected",
    "records", "unparsed", "chunks_failed", "packets_lost", "worker_starts",
    "worker_timeouts", "worker_rss_kills", "worker_crashes", "worker_recycled",
    "tshark_errors", "results_dropped",
)


class Dissector:
    """Marked packets in, evidence records out; see the module docstring.

    A context manager; `start()` checks tshark and pyshark and starts the supervisor and a
    worker; `close()` (safe twice) stops both and removes the spool directory it made.
    """

    def __init__(self, config: DissectConfig | None = None) -> None:
        self.config = cfg = config or DissectConfig()
        self.counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self.triage = Triage(cfg.dedupe_ttl_s, cfg.per_key)
        self._raw: queue.Queue[Chunk] = queue.Queue(maxsize=max(1, cfg.queue_chunks))
        self._chunk: Chunk = []
        self._chunk_bytes = 0
        self._chunk_started = time.monotonic()
        self._chunks_in = 0
        self._chunks_done = 0
        self._pending: deque[tuple[int, int, bytes]] = deque()
        self._results: deque[list[dict[str, Any]]] = deque()
        self._cv = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._worker: _Worker | None = None
        self._inflight: _Run | None = None
        self._failures = 0
        self._retry_at = 0.0
        self._last_dispatch = time.monotonic()
        self._flush_requested = False
        self._cpu_dead = 0.0
        self._seq = 0
        self._own_spool = False
        self.spool = ""
        self.tshark = ""
        self.last_error: str | None = None

    # -- life cycle --

    def start(self) -> Dissector:
        cfg = self.config
        found = shutil.which(cfg.tshark)
        if not found:
            raise DissectError(f"tshark not found ({cfg.tshark!r}): install it "
                               "(apt install tshark) or give its path")
        if os.path.basename(found) != "tshark":
            raise DissectError(f"{found}: pyshark runs the program named 'tshark' in that "
                               "directory; name it tshark")
        self.tshark = os.path.abspath(found)
        import importlib.util

        if importlib.util.find_spec("pyshark") is None:
            raise DissectError("pyshark is not installed: pip install 'wardtap[dissect]'")
        if cfg.spool_dir:
            try:
                os.makedirs(cfg.spool_dir, mode=0o700, exist_ok=True)
            except OSError as exc:
                raise DissectError(f"{cfg.spool_dir}: cannot use as spool: {exc}") from None
            self.spool = cfg.spool_dir
        else:
            base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
            self.spool = tempfile.mkdtemp(prefix="wardtap-dissect-", dir=base)
            self._own_spool = True
        self._start_worker()
        assert self._worker is not None
        if not self._worker.ready.wait(30) or self._worker.proc.poll() is not None:
            tail = _tail(self._worker.log_path)
            self.close()
            raise DissectError(f"the dissection worker did not start: {tail}")
        self._thread = threading.Thread(target=self._supervise, name="wardtap-dissect",
                                        daemon=True)
        self._thread.start()
        return self

    def __enter__(self) -> Dissector:
        return self.start() if self._thread is None else self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self._kill_worker()
        if self._own_spool and self.spool:
            shutil.rmtree(self.spool, ignore_errors=True)
            self._own_spool = False

    # -- the hot side (datapath thread) --

    def offer(self, batch: Any, samples: bytearray, n: int) -> None:
        """Copy the packets marked in `samples[:n]` out of `batch` into the current chunk."""
        find = samples.find
        i = find(1, 0, n)
        if i < 0:
            return
        buf, offsets, lengths = batch.buf, batch.offsets, batch.lengths
        stamps, links = batch.timestamps, batch.linktypes
        append = self._chunk.append
        size = 0
        while i >= 0:
            start = offsets[i]
            end = start + lengths[i]
            append((stamps[i], links[i], bytes(buf[start:end])))
            size += end - start
            i = find(1, i + 1, n)
        self._chunk_bytes += size
        if (len(self._chunk) >= self.config.chunk_packets
                or self._chunk_bytes >= self.config.chunk_bytes):
            self._rotate()

    def tick(self) -> None:
        """Close the current chunk when it is older than chunk_age_s (call between batches)."""
        if self._chunk and time.monotonic() - self._chunk_started >= self.config.chunk_age_s:
            self._rotate()

    def _rotate(self) -> None:
        chunk, self._chunk = self._chunk, []
        self._chunk_bytes = 0
        self._chunk_started = time.monotonic()
        if not chunk:
            return
        self.counters["marked"] += len(chunk)
        try:
            if self.config.block:
                self._raw.put(chunk, timeout=self.config.timeout_s * 2)
            else:
                self._raw.put_nowait(chunk)
        except queue.Full:
            self.counters["chunks_dropped"] += 1
            self.counters["packets_dropped_queue"] += len(chunk)
            return
        with self._cv:
            self._chunks_in += 1
        self.counters["chunks"] += 1

    def flush(self, timeout: float) -> bool:
        """Close the current chunk and wait (at most `timeout` s) until all is dissected."""
        self._rotate()
        self._flush_requested = True
        with self._cv:
            done = self._cv.wait_for(self._idle, timeout)
        self._flush_requested = False
        return done

    def _idle(self) -> bool:
        return (self._chunks_done == self._chunks_in and not self._pending
                and self._inflight is None)

    def drain_results(self) -> list[dict[str, Any]]:
        """Evidence records dissected since the last call (appliance.inventory merges them)."""
        out: list[dict[str, Any]] = []
        while self._results:
            out.extend(self._results.popleft())
        return out

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.counters)
        out["pending"] = len(self._pending)
        out["queued_chunks"] = self._raw.qsize()
        out["triage_kept"] = dict(self.triage.kept)
        out["triage_dropped"] = dict(self.triage.dropped)
        out["worker_pid"] = self._worker.proc.pid if self._worker is not None else None
        out["worker_cpu_s"] = round(self.worker_cpu_s(), 3)
        out["last_error"] = self.last_error
        return out

    # -- the supervisor thread --

    def _supervise(self) -> None:
        while not self._stop.is_set():
            try:
                self._step()
            except Exception as exc:   # never let the thread die: count, back off, go on
                self.last_error = f"supervisor: {exc!r}"
                self._fail("crashes")
            with self._cv:
                self._cv.notify_all()

    def _step(self) -> None:
        wait = 0.02 if self._inflight is not None or self._pending else 0.1
        try:
            chunk = self._raw.get(timeout=wait)
        except queue.Empty:
            chunk = None
        while chunk is not None:
            self._triage_chunk(chunk)
            try:
                chunk = self._raw.get_nowait()
            except queue.Empty:
                chunk = None
        if self._inflight is not None:
            self._poll_run()
        if self._inflight is None and self._pending and (
                self._flush_requested or len(self._pending) >= self.config.max_batch
                or time.monotonic() - self._last_dispatch >= self.config.dispatch_interval_s):
            self._dispatch()

    def _triage_chunk(self, chunk: Chunk) -> None:
        keep = self.triage.keep
        kept = 0
        for i, (ts, link, frame) in enumerate(chunk):
            if i % 32 == 31:
                time.sleep(0)   # hand the GIL back: the datapath thread never waits long
            if keep(ts, link, frame):
                if len(self._pending) >= self.config.max_pending:
                    self.counters["packets_dropped_backlog"] += 1
                    continue
                self._pending.append((ts, link, frame))
                kept += 1
        self.counters["triaged_kept"] += kept
        self.counters["triaged_away"] += len(chunk) - kept
        with self._cv:
            self._chunks_done += 1

    def _kill_worker(self) -> None:
        if self._worker is not None:
            self._worker.kill()
            self._cpu_dead += self._worker.cpu_at_exit
            self._worker = None

    def worker_cpu_s(self) -> float:
        """CPU seconds the dissection workers and their tshark runs used so far."""
        live = self._worker.cpu_seconds() if self._worker is not None else 0.0
        return self._cpu_dead + live

    def _start_worker(self) -> None:
        self._worker = _Worker(self.tshark, self.config.decode_as,
                               os.path.join(self.spool, "worker.log"))
        self.counters["worker_starts"] += 1

    def _dispatch(self) -> None:
        if self._worker is not None and self._worker.proc.poll() is not None:
            self.last_error = f"worker exited while idle ({self._worker.proc.returncode})"
            self.counters["worker_crashes"] += 1
            self._kill_worker()                  # reap it; a new one takes this chunk
        if self._worker is None:
            if time.monotonic() < self._retry_at:
                return
            self._start_worker()
        assert self._worker is not None
        take = min(len(self._pending), self.config.max_batch)
        packets = [self._pending.popleft() for _ in range(take)]
        self._last_dispatch = time.monotonic()
        self._seq += 1
        path = os.path.join(self.spool, f"chunk-{self._seq:06d}.pcapng")
        _write_chunk(path, packets)
        self.counters["packets_to_pyshark"] += take
        run = _Run(self._seq, path, take, time.monotonic() + self.config.timeout_s)
        self._inflight = run
        if not self._worker.send({"id": run.id, "path": path, "packets": take}):
            self._fail("crashes")

    def _poll_run(self) -> None:
        run, worker = self._inflight, self._worker
        assert run is not None and worker is not None
        try:
            line = worker.lines.get_nowait()
        except queue.Empty:
            now = time.monotonic()
            if now >= run.deadline:
                self.last_error = f"chunk {run.id}: no answer in {self.config.timeout_s} s"
                self._fail("timeouts")
            elif now >= run.next_rss_check:
                run.next_rss_check = now + 0.2
                if worker.rss_kib() > self.config.rss_limit_mib * 1024:
                    self.last_error = f"chunk {run.id}: worker and tshark over " \
                                      f"{self.config.rss_limit_mib} MiB"
                    self._fail("rss_kills")
            return
        if line is None:
            self.last_error = f"chunk {run.id}: worker exited ({worker.proc.poll()})"
            self._fail("crashes")
            return
        try:
            answer = json.loads(line)
        except ValueError:
            self.last_error = f"chunk {run.id}: unreadable answer"
            self._fail("crashes")
            return
        self._inflight = None
        _remove(run.path)
        worker.runs += 1
        if answer.get("error"):
            self.counters["tshark_errors"] += 1
            self.counters["chunks_failed"] += 1
            self.counters["packets_lost"] += run.packets
            self.last_error = f"chunk {run.id}: {answer['error']}"
            self._backoff()
        else:
            self._failures = 0
            self.counters["runs"] += 1
            self.counters["packets_dissected"] += int(answer.get("packets", 0))
            self.counters["unparsed"] += int(answer.get("unparsed", 0))
            records = answer.get("records") or []
            self.counters["records"] += len(records)
            if len(self._results) >= 256:
                self.counters["results_dropped"] += len(self._results.popleft())
            self._results.append(records)
        if (worker.runs >= self.config.max_runs_per_worker
                or worker.rss_kib() > self.config.rss_limit_mib * 1024):
            self._kill_worker()
            self.counters["worker_recycled"] += 1

    def _fail(self, reason: str) -> None:
        """Kill the worker (hung, too big, dead); the chunk in flight is lost."""
        self.counters[f"worker_{reason}"] += 1
        self._kill_worker()
        run, self._inflight = self._inflight, None
        if run is not None:
            _remove(run.path)
            self.counters["chunks_failed"] += 1
            self.counters["packets_lost"] += run.packets
        self._backoff()

    def _backoff(self) -> None:
        self._failures += 1
        self._retry_at = time.monotonic() + min(10.0, 0.25 * 2 ** self._failures)


@dataclass
class _Run:
    id: int
    path: str
    packets: int
    deadline: float
    next_rss_check: float = 0.0


class _Worker:
    """One `python -m appliance.dissect --worker` process in its own process group."""

    def __init__(self, tshark: str, decode_as: dict[str, str], log_path: str) -> None:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ)
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH")
                                    else "")
        cmd = [sys.executable, "-m", "appliance.dissect", "--worker", "--tshark", tshark,
               "--decode-as", json.dumps(decode_as)]
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=log, text=True, bufsize=1, env=env,
                                         start_new_session=True)
        self.runs = 0
        self.cpu_at_exit = 0.0
        self.ready = threading.Event()
        self.log_path = log_path
        self.lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True,
                                        name="wardtap-dissect-reader")
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with contextlib.suppress(OSError, ValueError):
            for line in self.proc.stdout:
                if line.startswith('{"ready"'):
                    self.ready.set()
                    continue
                self.lines.put(line)
        self.lines.put(None)
        self.ready.set()

    def send(self, request: dict[str, Any]) -> bool:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
            return True
        except (OSError, ValueError):
            return False

    def rss_kib(self) -> int:
        return tree_rss_kib(self.proc.pid)

    def cpu_seconds(self) -> float:
        """CPU time of the worker and its reaped children (every tshark it ran)."""
        try:
            with open(f"/proc/{self.proc.pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            return 0.0

    def kill(self) -> None:
        self.cpu_at_exit = self.cpu_seconds()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        for pipe in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError, ValueError):
                if pipe is not None:
                    pipe.close()


def tree_rss_kib(pid: int) -> int:
    """Resident memory (KiB) of a process and all its descendants, from /proc."""
    total = 0
    todo = [pid]
    seen: set[int] = set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            with open(f"/proc/{p}/status") as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        break
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as fh:
                    todo.extend(int(c) for c in fh.read().split())
        except (OSError, ValueError):
            continue
    return total


def _write_chunk(path: str, packets: Iterable[tuple[int, int, bytes]]) -> None:
    """The chunk as pcapng: one interface per link type (a batch may mix them)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        writer = PcapngWriter(fh)
        ifaces: dict[int, int] = {}
        for ts, link, frame in packets:
            iface = ifaces.get(link)
            if iface is None:
                iface = ifaces[link] = writer.add_interface(link, tsresol_ns=True)
            writer.write(iface, frame, ts)


def _tail(path: str, limit: int = 300) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - limit))
            return fh.read().decode("utf-8", "replace").strip() or "(no output)"
    except OSError:
        return "(no log)"


def _remove(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


# --- the worker process: pyshark and evidence extraction ------------------------------------

# Evidence reaching a device over a router says nothing about the router: "link" evidence
# (L2 and link-local multicast protocols, never routed) may describe any device, "ip" evidence
# only a device that is not routing for others (appliance.inventory decides).
Evidence = list[str]          # [target, key, value, source]; target "src" | "dst" | a MAC


def extract(pkt: Any) -> dict[str, Any] | None:
    """One pyshark packet -> a record of addresses and evidence (None: nothing found)."""
    rec: dict[str, Any] = {"ts": float(pkt.sniff_timestamp), "ev": []}
    layers = {layer.layer_name: layer for layer in pkt.layers}
    eth = layers.get("eth") or layers.get("sll")
    if eth is not None:
        rec["smac"] = _first(eth, "eth.src") or _first(eth, "sll.src.eth")
        rec["dmac"] = _first(eth, "eth.dst")
    ip = layers.get("ip") or layers.get("ipv6")
    if ip is not None:
        v6 = ip.layer_name == "ipv6"
        rec["src"] = _first(ip, "ipv6.src" if v6 else "ip.src")
        rec["dst"] = _first(ip, "ipv6.dst" if v6 else "ip.dst")
        ttl = _first(ip, "ipv6.hlim" if v6 else "ip.ttl")
        if ttl in ("32", "64", "128", "255") and not _multicast(rec["dst"]):
            rec["ev"].append(["src", "ip.initial_ttl", ttl, "ip.ttl (unrouted)", "ip"])
    for name in ("tcp", "udp"):
        l4 = layers.get(name)
        if l4 is not None:
            rec["proto"] = name
            rec["sport"] = _int(_first(l4, f"{name}.srcport"))
            rec["dport"] = _int(_first(l4, f"{name}.dstport"))
    bad = 0
    for layer in pkt.layers:
        fn = EXTRACTORS.get(layer.layer_name)
        if fn is None:
            continue
        try:
            fn(layer, rec["ev"])
        except Exception:    # a dissector's odd output must not cost the other layers
            bad += 1
    if bad:
        rec["unparsed"] = bad
    return rec if rec["ev"] or bad else None


def _values(layer: Any, name: str) -> list[str]:
    f = layer.get_field(name)
    if f is None:
        return []
    return [str(x.show) for x in getattr(f, "all_fields", [f]) if x.show is not None]


def _shownames(layer: Any, name: str) -> list[str]:
    f = layer.get_field(name)
    if f is None:
        return []
    return [str(x.showname_value) for x in getattr(f, "all_fields", [f])
            if x.showname_value is not None]


def _first(layer: Any, name: str) -> str | None:
    vals = _values(layer, name)
    return vals[0] if vals else None


def _int(value: str | None) -> int | None:
    try:
        return int(value, 0) if value is not None else None
    except ValueError:
        return None


def _multicast(ip: str | None) -> bool:
    if not ip:
        return False
    if ":" in ip:
        return ip.lower().startswith("ff")
    return 224 <= int(ip.split(".")[0]) <= 239 or ip == "255.255.255.255"


def _clean(value: str, limit: int = 200) -> str:
    value = "".join(c for c in value if c.isprintable()).replace("\\r\\n", "").strip()
    return value[:limit]


def _add(ev: list[Evidence], target: str, key: str, value: str | None, source: str,
         scope: str) -> None:
    if value is None:
        return
    value = _clean(value)
    if value:
        ev.append([target, key, value, source, scope])


def _dhcp(layer: Any, ev: list[Evidence]) -> None:
    op = _first(layer, "dhcp.type")
    msg = _first(layer, "dhcp.option.dhcp")
    chaddr = _first(layer, "dhcp.hw.mac_addr")
    if op == "1":
        _add(ev, "src", "dhcp.hostname", _first(layer, "dhcp.option.hostname"),
             "dhcp option 12 (host name)", "link")
        _add(ev, "src", "dhcp.vendor_class", _first(layer, "dhcp.option.vendor_class_id"),
             "dhcp option 60 (vendor class id)", "link")
        prl = _values(layer, "dhcp.option.request_list_item")
        if prl:
            _add(ev, "src", "dhcp.prl", ",".join(prl), "dhcp option 55 (parameter request list)",
                 "link")
        _add(ev, "src", "dhcp.fqdn", _first(layer, "dhcp.option.client_fqdn.name"),
             "dhcp option 81 (client FQDN)", "link")
    elif op == "2":
        relay = _first(layer, "dhcp.ip.relay")
        role = "relay" if relay and relay != "0.0.0.0" else "server"
        _add(ev, "src", "dhcp.role", role, "dhcp reply (giaddr)", "link")
        yiaddr = _first(layer, "dhcp.ip.your")
        if chaddr and msg == "5" and yiaddr and yiaddr != "0.0.0.0":
            _add(ev, f"mac:{chaddr}", "ip.assigned", yiaddr, "dhcp ACK (yiaddr)", "link")


def _dhcpv6(layer: Any, ev: list[Evidence]) -> None:
    _add(ev, "src", "dhcp.fqdn", _first(layer, "dhcpv6.client_domain"),
         "dhcpv6 client FQDN", "link")
    _add(ev, "src", "dhcp.vendor_class", _first(layer, "dhcpv6.vendorclass.data"),
         "dhcpv6 vendor class", "link")


_LLDP_CAPS = ("other", "repeater", "bridge", "wlan_access_pt", "router", "telephone",
              "docsis_cable_device", "station_only")


def _lldp(layer: Any, ev: list[Evidence]) -> None:
    _add(ev, "src", "lldp.system_name", _first(layer, "lldp.tlv.system.name"),
         "lldp system name", "link")
    _add(ev, "src", "lldp.system_desc", _first(layer, "lldp.tlv.system.desc"),
         "lldp system description", "link")
    _add(ev, "src", "lldp.port", _first(layer, "lldp.port.id"), "lldp port id", "link")
    caps = [c for c in _LLDP_CAPS
            if _first(layer, f"lldp.tlv.enable_system_cap.{c}") in ("1", "True")]
    if not caps:
        caps = [c for c in _LLDP_CAPS
                if _first(layer, f"lldp.tlv.system_cap.{c}") in ("1", "True")]
    for cap in caps:
        _add(ev, "src", "lldp.capability", cap, "lldp system capabilities", "link")
    for addr in _values(layer, "lldp.mgn.addr.ip4") + _values(layer, "lldp.mgn.addr.ip6"):
        _add(ev, "src", "ip.own", addr, "lldp management address", "link")


def _cdp(layer: Any, ev: list[Evidence]) -> None:
    _add(ev, "src", "cdp.device_id", _first(layer, "cdp.deviceid"), "cdp device id", "link")
    _add(ev, "src", "cdp.platform", _first(layer, "cdp.platform"), "cdp platform", "link")
    _add(ev, "src", "cdp.software", _first(layer, "cdp.software_version"),
         "cdp software version", "link")
    for cap in ("router", "switch", "host", "voip_phone"):
        if _first(layer, f"cdp.capabilities.{cap}") in ("1", "True"):
            _add(ev, "src", "cdp.capability", cap, "cdp capabilities", "link")


def _mdns(layer: Any, ev: list[Evidence]) -> None:
    if _first(layer, "dns.flags.response") not in ("1", "True"):
        for name in _values(layer, "dns.qry.name")[:8]:
            if name.startswith("_"):
                _add(ev, "src", "mdns.browses", _service(name), "mdns query", "link")
        return
    # host names: A/AAAA owners and SRV targets (service names contain "._")
    hosts = {n for n in _values(layer, "dns.resp.name") if "._" not in n and
             not n.startswith("_")} if _values(layer, "dns.a") or _values(layer, "dns.aaaa") \
        else set()
    hosts.update(_values(layer, "dns.srv.target"))
    for name in sorted(hosts):
        if name.endswith(".local") and not name.endswith(".arpa"):
            _add(ev, "src", "mdns.name", name[:-6], "mdns host record", "link")
    for target in _values(layer, "dns.ptr.domain_name"):
        service = _service(target)
        if service:
            _add(ev, "src", "mdns.service", service, "mdns PTR record", "link")
            instance = target.split("._", 1)[0]
            if instance and not instance.startswith("_"):
                _add(ev, "src", "mdns.instance", instance, "mdns service instance", "link")
    for txt in _values(layer, "dns.txt"):
        key, _, value = txt.partition("=")
        if key.lower() in ("ty", "md", "model", "product", "usb_mdl", "fn"):
            _add(ev, "src", "mdns.model", value.strip("()"), f"mdns TXT {key}", "link")


def _service(name: str) -> str:
    """'_ipp._tcp.local' or 'X._ipp._tcp.local' -> '_ipp._tcp'."""
    parts = name.split(".")
    for i in range(len(parts) - 1):
        if parts[i].startswith("_") and parts[i + 1] in ("_tcp", "_udp"):
            return f"{parts[i]}.{parts[i + 1]}"
    return ""


def _ssdp(layer: Any, ev: list[Evidence]) -> None:
    _add(ev, "src", "ssdp.server", _first(layer, "http.server"), "ssdp SERVER header", "link")
    _add(ev, "src", "ssdp.user_agent", _first(layer, "http.user_agent"),
         "ssdp USER-AGENT header", "link")
    for header in _values(layer, "http.unknown_header"):
        name, _, value = header.partition(":")
        if name.strip().upper() in ("NT", "ST") and "urn:" in value:
            _add(ev, "src", "ssdp.type", value.replace("\\r\\n", "").strip(),
                 f"ssdp {name.strip().upper()} header", "link")


def _nbns(layer: Any, ev: list[Evidence]) -> None:
    for name in _values(layer, "nbns.name")[:4]:
        _add(ev, "src", "netbios.name", name.split("<")[0], "netbios name", "link")


def _hl7(layer: Any, ev: list[Evidence]) -> None:
    """MSH only: sending/receiving application and facility, message type. Never PID/OBX."""
    for segment in _values(layer, "hl7.segment"):
        if not segment.startswith("MSH"):
            continue
        f = segment.rstrip("\r\n ").split("|")
        if len(f) < 9:
            continue
        msg_type = "^".join(f[8].split("^")[:2])
        _add(ev, "src", "hl7.app", f[2].split("^")[0], "hl7 MSH-3 (sending application)", "ip")
        _add(ev, "src", "hl7.facility", f[3].split("^")[0], "hl7 MSH-4 (sending facility)",
             "ip")
        _add(ev, "src", "hl7.sends", msg_type, "hl7 MSH-9 (message type)", "ip")
        _add(ev, "dst", "hl7.app", f[4].split("^")[0], "hl7 MSH-5 (receiving application)",
             "ip")
        _add(ev, "dst", "hl7.facility", f[5].split("^")[0], "hl7 MSH-6 (receiving facility)",
             "ip")
        _add(ev, "dst", "hl7.receives", msg_type, "hl7 MSH-9 (message type)", "ip")
        if len(f) > 11:
            _add(ev, "src", "hl7.version", f[11], "hl7 MSH-12 (version)", "ip")


def _dicom(layer: Any, ev: list[Evidence]) -> None:
    pdu = _first(layer, "dicom.pdu.type")
    calling = _first(layer, "dicom.assoc.ae.calling")
    called = _first(layer, "dicom.assoc.ae.called")
    if pdu not in ("1", "2", "0x01", "0x02") or calling is None or called is None:
        return
    rq = pdu in ("1", "0x01")
    # A-ASSOCIATE-RQ goes calling -> called; the -AC answers called -> calling
    me, peer = (calling, called) if rq else (called, calling)
    _add(ev, "src", "dicom.ae", me, "dicom A-ASSOCIATE " + ("calling" if rq else "called")
         + " AE title", "ip")
    _add(ev, "dst", "dicom.ae", peer, "dicom A-ASSOCIATE " + ("called" if rq else "calling")
         + " AE title", "ip")
    _add(ev, "src", "dicom.role", "SCU" if rq else "SCP", "dicom A-ASSOCIATE", "ip")
    _add(ev, "dst", "dicom.role", "SCP" if rq else "SCU", "dicom A-ASSOCIATE", "ip")
    if rq:
        for syntax in _shownames(layer, "dicom.pctx.abss.syntax")[:16]:
            _add(ev, "src", "dicom.sop_class", syntax.split(" (")[0],
                 "dicom presentation context (abstract syntax)", "ip")
    _add(ev, "src", "dicom.implementation", _first(layer, "dicom.userinfo.version"),
         "dicom implementation version name", "ip")


def _tls(layer: Any, ev: list[Evidence]) -> None:
    types = _values(layer, "tls.handshake.type")
    if "1" in types:
        _add(ev, "src", "tls.sni", _first(layer, "tls.handshake.extensions_server_name"),
             "tls ClientHello SNI", "ip")
        _add(ev, "src", "tls.ja3", _first(layer, "tls.handshake.ja3"), "tls ClientHello JA3",
             "ip")
    if "11" in types:
        certs = _values(layer, "tls.handshake.certificate")
        subject = cert_subject(certs[0]) if certs else None
        if subject is None:
            names = _shownames(layer, "x509af.rdnSequence")
            subject = _rdn_showname(names[0]) if names else None
        _add(ev, "src", "tls.cert_subject", subject, "tls server certificate subject", "ip")
        _add(ev, "dst", "peer.tls.cert_subject", subject,
             "tls certificate subject of the server it talks to", "ip")


def _http(layer: Any, ev: list[Evidence]) -> None:
    if _first(layer, "http.request.method") is not None:
        _add(ev, "src", "http.user_agent", _first(layer, "http.user_agent"),
             "http User-Agent", "ip")
        _add(ev, "src", "http.host", _first(layer, "http.host"), "http Host (requested)", "ip")
    server = _first(layer, "http.server")
    if server is not None and _first(layer, "http.response.code") is not None:
        _add(ev, "src", "http.server", server, "http Server", "ip")
        _add(ev, "dst", "peer.http.server", server, "http Server of the server it talks to",
             "ip")


EXTRACTORS: dict[str, Callable[[Any, list[Evidence]], None]] = {
    "dhcp": _dhcp, "bootp": _dhcp, "dhcpv6": _dhcpv6, "lldp": _lldp, "cdp": _cdp,
    "mdns": _mdns, "ssdp": _ssdp, "nbns": _nbns, "hl7": _hl7, "dicom": _dicom, "tls": _tls,
    "http": _http,
}


# --- X.509 subject from DER, without a crypto library --------------------------------------

_DN_NAMES = {"2.5.4.3": "CN", "2.5.4.10": "O", "2.5.4.11": "OU", "2.5.4.6": "C",
             "2.5.4.7": "L", "2.5.4.8": "ST", "2.5.4.5": "serialNumber"}


def _der(data: bytes, i: int) -> tuple[int, int, int]:
    """(tag, start of value, end of value) of the DER element at i."""
    tag = data[i]
    length = data[i + 1]
    i += 2
    if length & 0x80:
        n = length & 0x7F
        if n == 0 or n > 4:
            raise ValueError("DER length")
        length = int.from_bytes(data[i:i + n], "big")
        i += n
    if i + length > len(data):
        raise ValueError("DER element past the end")
    return tag, i, i + length


def _oid(raw: bytes) -> str:
    parts = [raw[0] // 40, raw[0] % 40]
    value = 0
    for b in raw[1:]:
        value = value << 7 | (b & 0x7F)
        if not b & 0x80:
            parts.append(value)
            value = 0
    return ".".join(map(str, parts))


def cert_subject(hex_or_der: str | bytes) -> str | None:
    """'CN=...,O=...,C=..' of a DER certificate (hex with or without colons), or None."""
    try:
        der = (bytes.fromhex(hex_or_der.replace(":", "")) if isinstance(hex_or_der, str)
               else hex_or_der)
        _, cert, _ = _der(der, 0)
        _, tbs, tbs_end = _der(der, cert)
        i = tbs
        elements: list[tuple[int, int, int]] = []
        while i < tbs_end and len(elements) < 6:
            tag, start, end = _der(der, i)
            elements.append((tag, start, end))
            i = end
        if elements and elements[0][0] == 0xA0:       # explicit version
            elements = elements[1:]
        _, start, end = elements[4]                    # serial, sig, issuer, validity, subject
        parts = []
        i = start
        while i < end:
            _, rdn, rdn_end = _der(der, i)             # SET
            j = rdn
            while j < rdn_end:
                _, atv, atv_end = _der(der, j)         # SEQUENCE { OID, value }
                _, o, o_end = _der(der, atv)
                _, v, v_end = _der(der, o_end)
                oid = _oid(der[o:o_end])
                parts.append(f"{_DN_NAMES.get(oid, oid)}="
                             f"{der[v:v_end].decode('utf-8', 'replace')}")
                j = atv_end
            i = rdn_end
        # most specific first, the way people read certificate subjects
        return ",".join(reversed(parts)) or None
    except (ValueError, IndexError):
        return None


_RDN_SHORT = {"id-at-commonName": "CN", "id-at-organizationName": "O",
              "id-at-organizationalUnitName": "OU", "id-at-countryName": "C",
              "id-at-localityName": "L", "id-at-stateOrProvinceName": "ST"}


def _rdn_showname(text: str) -> str | None:
    inner = text[text.find("(") + 1:text.rfind(")")] if "(" in text else text
    out = []
    for part in inner.split(","):
        key, _, value = part.partition("=")
        out.append(f"{_RDN_SHORT.get(key, key)}={value}")
    return ",".join(out) or None


def dissect_file(path: str, tshark: str, decode_as: dict[str, str]) -> dict[str, Any]:
    """Run pyshark (real tshark) over one chunk: {'packets', 'records', 'unparsed'}."""
    import pyshark

    capture = pyshark.FileCapture(path, keep_packets=False, decode_as=decode_as,
                                  tshark_path=tshark)
    records: list[dict[str, Any]] = []
    packets = unparsed = 0
    try:
        for pkt in capture:
            packets += 1
            try:
                rec = extract(pkt)
            except Exception:
                unparsed += 1
                continue
            if rec is not None:
                unparsed += rec.pop("unparsed", 0)
                if rec["ev"]:
                    records.append(rec)
    finally:
        with contextlib.suppress(Exception):
            capture.close()
    return {"packets": packets, "records": records, "unparsed": unparsed}


def worker_main(tshark: str, decode_as: dict[str, str], stdin: IO[str] = sys.stdin,
                stdout: IO[str] = sys.stdout) -> int:
    """Answer one JSON line per request line until stdin closes.

    Runs at the lowest priority (nice 19, inherited by tshark): the datapath always wins
    the CPU; when the worker falls behind, chunks are dropped and counted, never waited for.
    """
    with contextlib.suppress(OSError):
        os.nice(19)
    import pyshark  # noqa: F401  (fail here, reported by the supervisor at start)

    stdout.write('{"ready":true}\n')
    stdout.flush()
    for line in stdin:
        try:
            request = json.loads(line)
            answer: dict[str, Any] = {"id": request.get("id")}
        except ValueError:
            continue
        try:
            answer.update(dissect_file(str(request["path"]), tshark, decode_as))
            expected = int(request.get("packets") or 0)
            if answer["packets"] < expected:
                # pyshark does not always notice a tshark killed by a signal: count packets
                answer = {"id": answer["id"], "error": f"tshark returned {answer['packets']} "
                          f"of {expected} packets (crashed?)"}
        except Exception as exc:     # tshark crashed or pyshark failed: report, live on
            answer["error"] = f"{type(exc).__name__}: {exc}"[:500]
        stdout.write(json.dumps(answer, separators=(",", ":")) + "\n")
        stdout.flush()
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m appliance.dissect",
                                 description="wardtap's dissection worker (started by wardtap)")
    ap.add_argument("--worker", action="store_true", required=True)
    ap.add_argument("--tshark", default="tshark")
    ap.add_argument("--decode-as", default=json.dumps(DECODE_AS))
    args = ap.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # the supervisor decides when we stop
    return worker_main(args.tshark, json.loads(args.decode_as))


if __name__ == "__main__":
    sys.exit(main())
