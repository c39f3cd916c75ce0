"""Deep dissection off the hot path: marked packets -> triage -> pyshark/tshark -> evidence.

The fast path marks a budgeted sample of packets (`Classifier.classify(..., samples=...)`,
`set_sampling`). Three stages take them from there, none of which the fast path waits for:

1. **Hot side** (`Dissector.offer`, in the datapath thread): finds the marked indices with
   `bytearray.find` (a memchr, not a loop over every packet), copies only those packets'
   bytes into the current chunk, and hands a full (or old) chunk to a bounded queue. When
   the queue is full the chunk is dropped and counted; nothing blocks (unless `block=True`,
   which offline replay uses: a file can wait, a ward cannot).
2. **Supervisor thread**: triages each chunk in plain Python (appliance.inventory.triage:
   reads L2-L4 from the fast path's decoder and keeps only packets that can identify a device
   - DHCP, LLDP, CDP, mDNS, SSDP, NetBIOS, the first bytes of TLS handshakes, HTTP, HL7/MLLP
   headers, DICOM associations and command sets - and only those that would be new evidence
   per `dedupe_ttl_s`), writes what is left as a pcapng chunk file
   (appliance.common.capwriter) in a private spool directory (tmpfs when there is one: chunks
   can hold patient data and never reach the SD card), and gives it to the worker.
3. **Worker process** (`python -m appliance.inventory.tshark --worker`): reads each chunk with
   pyshark's FileCapture (real tshark, HL7 and DICOM decode-as), turns what tshark found into
   evidence records (`extract`), answers with one JSON line. It is killed and restarted when a
   chunk takes longer than `timeout_s` (a hung tshark) or the worker and its tshark together
   exceed `rss_limit_mib` (a leak); a tshark that crashes costs that chunk only. The chunk is
   then lost and counted. Repeated failures back off (0.5 s doubling to 10 s).

Evidence records come back through `Dissector.drain_results()`; appliance.inventory.devices merges
them. `stats()` counts every packet that was marked, dropped, triaged away, sent to pyshark.
"""

from __future__ import annotations

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
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from appliance.common.capwriter import PcapngWriter
from appliance.common.child import child_env
from appliance.errors import WardtapError
from appliance.inventory.triage import Triage

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
# message, a DICOM A-ASSOCIATE or the command after it. 32 packets per device per hour: a
# device's first minutes (neighbour discovery, DHCP, NTP and DNS take some, and so do the
# empty segments of each connection) still reach every identifying exchange - a modality
# that verifies, stores and queries in three associations, a monitor with several MLLP
# connections - and afterwards a device costs at most 32 copies an hour. 64 per second in
# all bound what a flood of new flows or devices can make the datapath copy while a ward
# powering up is still seen. The classifier's defaults (8 per flow, 64 per device per
# minute, 256/s) mark 13% of the demo ward's packets; these about 0.3%.
SAMPLING = {"per_flow": 6, "device_budget": 32, "device_window_s": 3600.0,
            "global_budget": 64}
# Review of a capture (learn, drift): every flow's first packets, so each conversation's first
# payload (the HL7 header, the A-ASSOCIATE-RQ, the ClientHello) is read; still 6 a flow.
REVIEW_SAMPLING = {"per_flow": 6, "device_budget": 65535, "device_window_s": 3600.0,
                   "global_budget": 1000000}

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
        self.skipped: dict[str, int] = {}      # malformed HL7/DICOM the worker skipped
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
        """Evidence records dissected since the last call (the inventory merges them)."""
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
        out["worker_skipped"] = dict(self.skipped)
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
        kept = 0
        decisions: list[bool] = []
        for start in range(0, len(chunk), 32):
            if start:
                time.sleep(0)   # hand the GIL back: the datapath thread never waits long
            decisions += self.triage.keep_chunk(chunk[start:start + 32])
        for (ts, link, frame), keep in zip(chunk, decisions, strict=True):
            if keep:
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
            for why, n in (answer.get("skipped") or {}).items():
                self.skipped[str(why)[:40]] = self.skipped.get(str(why)[:40], 0) + int(n)
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
    """One `python -m appliance.inventory.tshark --worker` process in its own process group."""

    def __init__(self, tshark: str, decode_as: dict[str, str], log_path: str) -> None:
        env = child_env()
        cmd = [sys.executable, "-m", "appliance.inventory.tshark", "--worker", "--tshark",
               tshark,
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


