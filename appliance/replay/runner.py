"""`wardtap replay`: classify capture files through the fast path and summarise.

Per batch: one classify() call, then a drain of the event ring. Only events become Python
objects; memory stays bounded whatever the capture's size (the mmap aside).
"""

from __future__ import annotations

import time
from array import array
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

from appliance.common.records import device_dict, event_dict
from appliance.errors import CaptureError
from appliance.policy.model import Policy, compile_policy
from appliance.replay.packetlines import PacketLines
from appliance.sources.capture import DEFAULT_BATCH, CaptureFile
from fastpath import MALFORMED_FIRST, REASON_NAMES, Classifier

if TYPE_CHECKING:
    from appliance.inventory.identify import Identification
    from appliance.outputs.store import Store

EVENT_DRAIN = 8192
NO_NEAREST_RULE = "(no rule joins these endpoints)"


@dataclass
class ReplaySummary:
    captures: list[str]
    mode: str
    policy: dict[str, Any] | None
    packets: int = 0
    bytes: int = 0
    allowed: int = 0
    denied: int = 0
    malformed: int = 0
    flows: int = 0
    devices: int = 0
    violations: int = 0
    violations_by_reason: dict[str, int] = field(default_factory=dict)
    violations_by_rule: dict[str, int] = field(default_factory=dict)   # the nearest rule
    violations_by_device: list[dict[str, Any]] = field(default_factory=list)
    malformed_by_reason: dict[str, int] = field(default_factory=dict)
    elapsed_s: float = 0.0
    packets_per_second: float = 0.0
    counters: dict[str, int] = field(default_factory=dict)
    memory_bytes: int = 0
    process_memory_kib: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Replayer:
    """Owns one classifier; feeds it capture files batch by batch."""

    def __init__(self, policy: Policy | None = None, mode: str = "learn",
                 flow_capacity: int = 65536, device_capacity: int = 4096,
                 batch_size: int = DEFAULT_BATCH, seed: int | None = None) -> None:
        self.policy = policy
        self.mode = mode if policy is not None else "learn"
        self.batch_size = batch_size
        self.classifier = Classifier(flow_capacity=flow_capacity,
                                     device_capacity=device_capacity, seed=seed)
        self.classifier.set_mode(self.mode)
        if policy is not None:
            self.classifier.set_policy(compile_policy(policy))
        self._verdicts = memoryview(array("B", bytes(batch_size)))
        self._reasons = memoryview(array("B", bytes(batch_size)))
        self._rules = memoryview(array("H", bytes(2 * batch_size)))
        self.violations: list[dict[str, Any]] = []
        self.on_events: Callable[[list[dict[str, Any]]], None] | None = None
        # Deep dissection and the inventory (appliance.inventory.devices), when enabled: classify
        # marks samples, the marked packets are copied out, events feed the inventory.
        self.identify: Identification | None = None

    def enable_identification(self, identify: Identification) -> None:
        identify.start(self.classifier, self.batch_size)
        self.identify = identify

    def rule_name(self, index: int) -> str | None:
        return self.policy.rule_name(index) if self.policy else None

    def run(self, paths: Sequence[str], store: Store | None = None,
            packets_out: IO[str] | None = None,
            progress: Callable[[int, int], None] | None = None) -> ReplaySummary:
        summary = ReplaySummary(list(paths), self.mode, _policy_info(self.policy))
        run_id = store.start_run("replay", paths, self.mode, self.policy) if store else None
        started = time.perf_counter()
        for path in paths:
            try:
                with CaptureFile(path, self.batch_size) as capture:
                    self._run_file(capture, store, run_id, packets_out, progress)
            except CaptureError as exc:
                summary.errors.append(str(exc))
            self._drain(store, run_id)
        summary.elapsed_s = time.perf_counter() - started
        self._finish(summary, store, run_id)
        return summary

    def _run_file(self, capture: CaptureFile, store: Store | None, run_id: int | None,
                  packets_out: IO[str] | None,
                  progress: Callable[[int, int], None] | None) -> None:
        lines = PacketLines(packets_out, self.rule_name) if packets_out is not None else None
        try:
            self._batches(capture, store, run_id, lines, progress)
        finally:
            if lines is not None:
                lines.close()

    def _batches(self, capture: CaptureFile, store: Store | None, run_id: int | None,
                 lines: PacketLines | None,
                 progress: Callable[[int, int], None] | None) -> None:
        clf = self.classifier
        ident = self.identify
        samples = ident.samples_view if ident is not None else None
        for batch in capture.batches():
            n = batch.count
            clf.classify(batch.buf, batch.offsets, batch.lengths, batch.timestamps,
                         batch.linktypes, self._verdicts, self._reasons, self._rules, samples)
            if ident is not None:
                ident.offer(batch, n)
            if lines is not None:
                lines.write(batch, self._verdicts[:n], self._reasons[:n], self._rules[:n])
            if clf.pending_events >= EVENT_DRAIN // 2:
                self._drain(store, run_id)
            if progress is not None:
                progress(capture.offset, capture.size)

    def _drain(self, store: Store | None, run_id: int | None) -> None:
        while True:
            records = self.classifier.drain(EVENT_DRAIN)
            if not records:
                return
            events = [event_dict(rec, self.rule_name) for rec in records]
            self.violations.extend(e for e in events if e["type"] == "violation")
            if store is not None and run_id is not None:
                store.add_events(run_id, events)
            if self.on_events is not None:
                self.on_events(events)
            if self.identify is not None:
                self.identify.on_events(events)

    def devices(self) -> list[dict[str, Any]]:
        return [device_dict(rec) for rec in self.classifier.device_list()]

    def active_flows(self) -> list[dict[str, Any]]:
        flows = [event_dict(rec, self.rule_name) for rec in self.classifier.flow_list()]
        for f in flows:
            f["end"] = "active"
        return flows

    def _finish(self, summary: ReplaySummary, store: Store | None, run_id: int | None) -> None:
        stats = self.classifier.stats()
        devices = self.devices()
        for key in ("packets", "bytes", "allowed", "denied", "malformed"):
            setattr(summary, key, int(stats[key]))
        summary.flows = int(stats["flows_created"])
        summary.devices = len(devices)
        summary.violations = len(self.violations)
        summary.violations_by_reason = dict(Counter(v["reason"] for v in self.violations))
        summary.violations_by_rule = dict(Counter(
            v.get("nearest_rule") or NO_NEAREST_RULE for v in self.violations))
        summary.violations_by_device = _by_device(self.violations, devices)
        summary.malformed_by_reason = {
            name: count for name, count in stats["reasons"].items()
            if _reason_code(name) >= MALFORMED_FIRST}
        summary.counters = {k: int(v) for k, v in stats.items() if k != "reasons"}
        summary.memory_bytes = int(self.classifier.memory_bytes)
        summary.process_memory_kib = process_memory()
        if summary.elapsed_s > 0:
            summary.packets_per_second = summary.packets / summary.elapsed_s
        if store is not None and run_id is not None:
            store.add_events(run_id, self.active_flows())
            store.merge_devices(devices)
            store.finish_run(run_id, stats)


def process_memory() -> dict[str, int]:
    """This process's memory from /proc (Linux): anonymous, file-backed and peak RSS in KiB.

    File-backed pages are mostly the mapped capture, which the kernel can drop at will.
    """
    out = {}
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key in ("VmHWM", "RssAnon", "RssFile"):
                    out[{"VmHWM": "peak_rss", "RssAnon": "rss_anon",
                         "RssFile": "rss_file"}[key]] = int(value.split()[0])
    except OSError:
        pass
    return out


def _reason_code(name: str) -> int:
    return next(code for code, n in REASON_NAMES.items() if n == name)


def _policy_info(policy: Policy | None) -> dict[str, Any] | None:
    if policy is None:
        return None
    return {"name": policy.name, "version": policy.version, "path": policy.path,
            "sha256": policy.digest}


def _by_device(violations: list[dict[str, Any]],
               devices: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_index = {d["index"]: d for d in devices}
    counts: Counter[tuple[Any, ...]] = Counter()
    reasons: dict[tuple[Any, ...], Counter[str]] = {}
    for v in violations:
        d = by_index.get(v["device"])
        key = (d["mac"] if d else v.get("smac"), v["src"])
        counts[key] += 1
        reasons.setdefault(key, Counter())[v["reason"]] += 1
    return [{"mac": k[0], "ip": k[1], "violations": n, "reasons": dict(reasons[k])}
            for k, n in counts.most_common()]
