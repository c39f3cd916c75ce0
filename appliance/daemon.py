"""`wardtap run`: the appliance daemon.

Start order: policy, store and outputs, classifier, packet source, control socket; stop in
reverse on SIGTERM/SIGINT. SIGHUP reloads the policy. The main loop owns the classifier:
control requests and reloads are applied between batches, never during one.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import threading
import time
from typing import Any

from appliance.config import Config
from appliance.control import ControlServer, Request
from appliance.errors import PolicyError, WardtapError
from appliance.outputs import EventLogOutput, Output, StoreOutput
from appliance.policy import Policy, compile_policy, load_policy
from appliance.records import device_dict, event_dict
from appliance.sources import Source, make_source
from fastpath import Classifier

log = logging.getLogger("wardtap")

SNAPSHOT_INTERVAL = 10.0
EVENT_DRAIN = 8192


class Daemon:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.stop = threading.Event()
        self.reload_requested = threading.Event()
        self.requests: queue.Queue[Request] = queue.Queue(maxsize=64)
        self.policy: Policy | None = None
        self.generation = 0
        self.mode = config.mode
        self.started = time.time()
        self.outputs: list[Output] = []
        self.source: Source | None = None
        self.classifier = Classifier(flow_capacity=config.flows,
                                     device_capacity=config.devices)
        self.batches = 0
        self.last_batch = time.monotonic()

    # -- life cycle ------------------------------------------------------------------------

    def run(self) -> int:
        """Run until stopped; return the exit code."""
        cfg = self.config
        if cfg.policy:
            self._apply_policy(load_policy(cfg.policy))
        self.classifier.set_mode("learn" if self.mode in ("learn", "bypass") else self.mode)
        store = None
        control = None
        try:
            if cfg.store:
                from appliance.store import Store

                store = Store(cfg.store)
                run = store.start_run("daemon", [cfg.path], self.mode, self.policy)
                self.outputs.append(StoreOutput(store, run))
            if cfg.event_log:
                self.outputs.append(EventLogOutput(cfg.event_log))
            self.source = make_source(cfg.datapath, **cfg.datapath_options)
            self.source.open()
            if cfg.control_socket:
                control = ControlServer(cfg.control_socket, self.requests, self.stop)
                control.start()
            self._install_signals()
            self._emit({"type": "started", "mode": self.mode, "datapath": cfg.datapath,
                        "policy": self._policy_info()})
            log.info("running: datapath %s, mode %s, policy %s", cfg.datapath, self.mode,
                     self._policy_info() or "none")
            self._loop()
            return 0
        finally:
            self._emit({"type": "stopping", "mode": self.mode})
            self._flush_events()
            self._snapshot()
            if control is not None:
                control.close()
            if self.source is not None:
                self.source.close()
            for output in reversed(self.outputs):
                output.close()
            if store is not None:
                store.close()
            log.info("stopped")

    def _install_signals(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: self.stop.set())
        signal.signal(signal.SIGINT, lambda *_: self.stop.set())
        signal.signal(signal.SIGHUP, lambda *_: self.reload_requested.set())

    def _loop(self) -> None:
        assert self.source is not None
        clf = self.classifier
        n_max = 1 << 16
        verdicts = memoryview(bytearray(n_max))
        reasons = memoryview(bytearray(n_max))
        rules = memoryview(bytearray(2 * n_max)).cast("H")
        next_snapshot = time.monotonic() + SNAPSHOT_INTERVAL
        for batch in self.source.batches(self.stop):
            n = batch.count
            if n:
                if n > n_max:
                    raise WardtapError(f"datapath batch of {n} packets exceeds {n_max}")
                clf.classify(batch.buf, batch.offsets, batch.lengths, batch.timestamps,
                             batch.linktypes, verdicts, reasons, rules)
                if self.source.inline:
                    self.source.verdict(batch, verdicts[:n], self.mode)
            else:
                clf.sweep(time.time_ns())
            self.batches += 1
            self.last_batch = time.monotonic()
            if clf.pending_events:
                self._flush_events()
            if self.reload_requested.is_set():
                self.reload_requested.clear()
                self.reload()
            self._serve_requests()
            if time.monotonic() >= next_snapshot:
                self._snapshot()
                next_snapshot = time.monotonic() + SNAPSHOT_INTERVAL
            if self.stop.is_set():
                break

    # -- policy and mode -------------------------------------------------------------------

    def _apply_policy(self, policy: Policy) -> list[tuple[Any, ...]]:
        compiled = compile_policy(policy, generation=self.generation + 1)
        self.generation += 1
        self.policy = policy
        self.classifier.set_policy(compiled)
        return self.classifier.reevaluate()

    def reload(self) -> dict[str, Any]:
        """Load the policy file again: all of it applies, or none of it."""
        if not self.config.policy:
            return {"ok": False, "error": "no policy file configured"}
        try:
            policy = load_policy(self.config.policy)
            compile_policy(policy)   # validate fully before touching the running one
        except PolicyError as exc:
            log.error("policy reload rejected, keeping the running policy: %s", exc)
            self._emit({"type": "policy_rejected", "error": str(exc),
                        "running": self._policy_info()})
            return {"ok": False, "error": str(exc)}
        old = self._policy_info()
        changed = self._apply_policy(policy)
        changed_events = [event_dict(rec, self._rule_name) for rec in changed]
        if self.source is not None and hasattr(self.source, "flows_changed"):
            self.source.flows_changed(changed_events)
        self._emit({"type": "policy_loaded", "previous": old, "policy": self._policy_info(),
                    "flows_changed": len(changed_events)})
        log.info("policy reloaded: %s (%d existing flows changed verdict)",
                 self._policy_info(), len(changed_events))
        self._flush_events()
        return {"ok": True, "policy": self._policy_info(), "flows_changed": len(changed)}

    def set_mode(self, mode: str) -> dict[str, Any]:
        if mode not in ("learn", "monitor", "enforce", "bypass"):
            return {"ok": False, "error": f"unknown mode {mode!r}"}
        if mode in ("monitor", "enforce") and self.policy is None:
            return {"ok": False, "error": f"mode {mode} needs a policy"}
        previous, self.mode = self.mode, mode
        self.classifier.set_mode("learn" if mode in ("learn", "bypass") else mode)
        if self.source is not None and hasattr(self.source, "set_bypass"):
            self.source.set_bypass(mode == "bypass")
        self._emit({"type": "mode_changed", "previous": previous, "mode": mode})
        log.info("mode %s -> %s", previous, mode)
        return {"ok": True, "mode": mode, "previous": previous}

    # -- control requests ------------------------------------------------------------------

    def _serve_requests(self) -> None:
        while True:
            try:
                request = self.requests.get_nowait()
            except queue.Empty:
                return
            request.respond(self._handle(request.body))

    def _handle(self, body: dict[str, Any]) -> dict[str, Any]:
        command = body.get("cmd")
        if command == "status":
            return {"ok": True, **self.status()}
        if command == "mode":
            return self.set_mode(str(body.get("mode")))
        if command == "reload":
            return self.reload()
        if command == "stop":
            self.stop.set()
            return {"ok": True}
        return {"ok": False, "error": f"unknown command {command!r}"}

    def status(self) -> dict[str, Any]:
        stats = self.classifier.stats()
        return {
            "pid": os.getpid(), "mode": self.mode, "datapath": self.config.datapath,
            "policy": self._policy_info(), "uptime_s": round(time.time() - self.started, 1),
            "batches": self.batches,
            "last_batch_age_s": round(time.monotonic() - self.last_batch, 3),
            "counters": {k: v for k, v in stats.items() if k != "reasons"},
            "reasons": stats["reasons"],
            "source": self.source.stats() if self.source is not None else {},
            "memory_bytes": self.classifier.memory_bytes,
        }

    # -- events and outputs ------------------------------------------------------------------

    def _rule_name(self, index: int) -> str | None:
        return self.policy.rule_name(index) if self.policy else None

    def _policy_info(self) -> dict[str, Any] | None:
        if self.policy is None:
            return None
        return {"name": self.policy.name, "version": self.policy.version,
                "sha256": self.policy.digest, "generation": self.generation}

    def _flush_events(self) -> None:
        while True:
            records = self.classifier.drain(EVENT_DRAIN)
            if not records:
                return
            self._publish([event_dict(rec, self._rule_name) for rec in records])

    def _emit(self, event: dict[str, Any]) -> None:
        event.setdefault("ts", time.time())
        self._publish([event])

    def _publish(self, events: list[dict[str, Any]]) -> None:
        for output in self.outputs:
            try:
                output.publish(events)
            except WardtapError as exc:
                log.error("output %s failed, events kept by the others: %s", output.name, exc)

    def _snapshot(self) -> None:
        stats = self.classifier.stats()
        devices = [device_dict(rec) for rec in self.classifier.device_list()]
        for output in self.outputs:
            try:
                output.snapshot(stats, devices)
            except WardtapError as exc:
                log.error("output %s failed: %s", output.name, exc)
