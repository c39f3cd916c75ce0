"""`wardtap run`: the appliance daemon.

Start order: the single-instance lock, policy, store and outputs, classifier, packet source,
control socket; stop in reverse on SIGTERM/SIGINT. SIGHUP reloads the policy. The main loop
owns the classifier: control requests and reloads are applied between batches, never during
one; loading and compiling a policy runs on the policy worker (appliance.daemon.policyload)
so that a large one never stalls the datapath.

A policy file that cannot be used at start does not stop the daemon: it runs the last good
policy (`<policy file>.last-good`) or, without one, enters bypass (fail open), and says so
(log, LEDs, `wardtap status`, a `policy_fault` event and the fleet's state message) until a
reload or a push brings a usable policy.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import signal
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from appliance.common.control import ControlServer, Request, RequestQueue
from appliance.common.instance import InstanceLock
from appliance.common.records import device_dict, event_dict
from appliance.common.text import shown
from appliance.daemon.commands import (
    Answer,
    CallbackRequest,
    Pending,
    Result,
    dispatch,
    finish,
    refused,
)
from appliance.daemon.events import EventPump, RecentViolations
from appliance.daemon.meters import RATE_INTERVAL, IdentifyBudget, RateMeter
from appliance.daemon.policyload import (
    MAX_WARNINGS_SHOWN,
    PolicyWorker,
    Refused,
    load_at_start,
    prepare_file,
    prepare_push,
    warn,
    write_atomically,
)
from appliance.errors import PolicyError, WardtapError
from appliance.outputs import EventLogOutput, Output, StoreOutput, make_output
from appliance.policy.model import Policy, check_usable
from appliance.review.baseline import Baseline
from appliance.sources import Source, make_source
from appliance.system.config import Config
from appliance.system.notify import ServiceNotifier
from fastpath import Classifier, CompiledPolicy

if TYPE_CHECKING:
    from appliance.inventory.dissector import DissectConfig
    from appliance.inventory.identify import Identification
    from appliance.outputs.audit import AuditLog
    from appliance.panel.frontpanel import FrontPanel
    from appliance.system.integrity import IntegrityMonitor

log = logging.getLogger("wardtap")

BATCH_MAX = 1 << 16

SNAPSHOT_INTERVAL = 10.0
PANEL_INTERVAL = 1.0
# Repeated failure: this many failed batches within the window put the appliance in bypass.
FAILURES_FOR_BYPASS = 3
FAILURE_WINDOW = 60.0
TCP_IDLE, ICMP_IDLE, OTHER_IDLE, CLOSING_IDLE = 3600.0, 30.0, 120.0, 10.0   # the fast path's


def flow_timeouts(udp: float) -> tuple[float, float, float, float, float]:
    """Idle timeouts for the classifier: the fast path's defaults, UDP's from the config."""
    return (TCP_IDLE, udp, ICMP_IDLE, OTHER_IDLE, CLOSING_IDLE)


class Daemon:
    def __init__(self, config: Config, dissect: DissectConfig | None = None) -> None:
        self.config = config
        # deep dissection and the device inventory (appliance.inventory.devices), when enabled
        self.dissect = dissect
        self.identification: Identification | None = None
        self.stop = threading.Event()
        self.reload_requested = threading.Event()
        self.requests = RequestQueue(64)   # a put wakes the loop (its source polls the fd)
        self.policy: Policy | None = None
        self.generation = 0
        self.mode = config.mode
        self.started = time.time()
        self.outputs: list[Output] = []
        self.source: Source | None = None
        self.classifier = Classifier(flow_capacity=config.flows,
                                     device_capacity=config.devices,
                                     timeouts=flow_timeouts(config.udp_timeout))
        self.violations = RecentViolations()   # for the console: the last ones and a count
        # ring -> outputs and the console's violations (appliance.daemon.events)
        self.events = EventPump(self.classifier, self.violations)
        self.batches = 0
        self.last_batch = time.monotonic()
        self.baseline: Baseline | None = None
        # called with a duration in seconds by the "identify" command (LEDs hook it here)
        self.on_identify: Callable[[float], object] | None = None
        self.panel: FrontPanel | None = None
        self.show_leds = False             # print the (simulated) LEDs: `run` in a terminal
        self.failures: list[float] = []    # monotonic times of recent batch failures
        self.audit: AuditLog | None = None  # local commands' audit log, opened on first use
        # systemd (Type=notify): READY, STATUS, WATCHDOG only while the loop makes progress
        # and the output threads live, STOPPING (appliance.system.notify); a no-op elsewhere
        self.notify = ServiceNotifier(alive=lambda: all(o.alive() for o in self.outputs))
        self.integrity: IntegrityMonitor | None = None   # [integrity] manifests, checked
        self.rates = RateMeter()           # for the console: packets/s, recent violations
        self.worker = PolicyWorker()       # loads and compiles policies off the main loop
        self.pending: list[tuple[Request, Pending]] = []
        # the policy file could not be used: {"error", "running" ("last-good" or None),
        # "since", "bypass" (this fault put the appliance in bypass)}; None when all is well
        self.policy_fault: dict[str, Any] | None = None
        self.identify_budget = IdentifyBudget()

    # -- life cycle ------------------------------------------------------------------------

    def run(self) -> int:
        """Run until stopped; return the exit code."""
        cfg = self.config
        lock = InstanceLock(cfg.path, "wardtap daemon")   # before anything is opened
        if cfg.policy:
            self._start_policy(cfg.policy)
        self.classifier.set_mode("learn" if self.mode in ("learn", "bypass") else self.mode)
        if self.mode == "learn":
            self.baseline = Baseline()
        store = None
        control = None
        try:
            if cfg.store:
                from appliance.outputs.store import Store

                store = Store(cfg.store)
                run = store.start_run("daemon", [cfg.path], self.mode, self.policy)
                self.outputs.append(StoreOutput(store, run))
            if cfg.event_log:
                self.outputs.append(EventLogOutput(cfg.event_log))
            for kind, options in cfg.outputs:          # [syslog], [eve]: the SIEM
                self.outputs.append(make_output(kind, options))
            if cfg.broker:
                from appliance.outputs.mqtt import MqttOutput

                self.outputs.append(MqttOutput.from_config(
                    cfg.broker, mode=self.mode, policy=self.policy_info(),
                    datapath=cfg.datapath, submit=self._submit))
            if self.dissect is not None:
                from appliance.inventory.identify import Identification

                self.identification = Identification(self.dissect, store)
                self.identification.start(self.classifier, BATCH_MAX)
            if cfg.integrity:
                from appliance.system.integrity import IntegrityMonitor

                self.integrity = IntegrityMonitor.from_config(cfg.integrity)
                self.integrity.start()          # first check now, then every interval
            self._route_events()
            options = dict(cfg.datapath_options)
            if cfg.datapath == "inline":
                # the kernel's hints mean something past the classifier's answer window
                options["answer_window"] = cfg.udp_timeout
            self.source = make_source(cfg.datapath, **options)
            self.source.wakeup_fd = self.requests.wakeup_fd
            if cfg.panel:
                from appliance.panel.frontpanel import FrontPanel

                self.panel = FrontPanel(self.requests, inline=self.source.inline,
                                        show=self.show_leds)
                self.on_identify = self.panel.identify
                self.events.on_violation = self.panel.violation
                self._refresh_panel()
            if cfg.control_socket:
                control = ControlServer(cfg.control_socket, self.requests, self.stop)
                control.start()
            # Last before the loop: inline, opening installs the rules that queue new flows
            # to us, and nothing may keep the loop from serving them (a slow start would
            # hold the ward's new flows until the inline watchdog fails open).
            self.source.open()
            self._install_signals()
            self._emit({"type": "started", "mode": self.mode, "datapath": cfg.datapath,
                        "policy": self.policy_info(), "policy_fault": self.policy_fault})
            if self.policy_fault is not None:
                self._emit({"type": "policy_fault", **self.policy_fault})
            policy = self.policy_info()
            log.info("running: datapath %s, mode %s, policy %s", cfg.datapath, self.mode,
                     f"{policy['name']} v{policy['version']} (sha256 {policy['sha256'][:12]})"
                     if policy else "none")
            self.notify.ready(self._status_line())
            self._loop()
            return 0
        finally:
            self.notify.stopping()
            self._emit({"type": "stopping", "mode": self.mode})
            self._flush_events()
            self._snapshot()
            if control is not None:
                control.close()
            if self.integrity is not None:
                self.integrity.close()
            if self.panel is not None:
                self.panel.close()
            if self.source is not None:
                self.source.close()
            if self.identification is not None:
                self.identification.close()
            for output in reversed(self.outputs):
                output.close()
            if store is not None:
                store.close()
            if self.audit is not None:
                self.audit.close()
            self.worker.close()
            self.requests.close()
            lock.close()
            log.info("stopped")

    def _install_signals(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: self.request_stop())
        signal.signal(signal.SIGHUP, lambda *_: self.reload_requested.set())

    def _loop(self) -> None:
        assert self.source is not None
        clf = self.classifier
        n_max = BATCH_MAX
        ident = self.identification
        samples = ident.samples_view if ident is not None else None
        verdicts = memoryview(bytearray(n_max))
        reasons = memoryview(bytearray(n_max))
        rules = memoryview(bytearray(2 * n_max)).cast("H")
        next_snapshot = time.monotonic() + SNAPSHOT_INTERVAL
        interval = self.config.learn_interval
        next_proposal = time.monotonic() + interval if interval else float("inf")
        next_panel = 0.0
        self.rates.sample(self.classifier.stats())
        next_rate = time.monotonic() + RATE_INTERVAL
        for batch in self.source.batches(self.stop):
            n = batch.count
            try:
                if n:
                    if n > n_max:
                        raise WardtapError(f"datapath batch of {n} packets exceeds {n_max}")
                    clf.classify(batch.buf, batch.offsets, batch.lengths, batch.timestamps,
                                 batch.linktypes, verdicts, reasons, rules, samples,
                                 batch.hints)
                    if ident is not None:
                        ident.offer(batch, n)   # copies the marked packets out, never waits
                    if self.source.inline:
                        self.source.verdict(batch, verdicts[:n], self.mode, reasons[:n])
                else:
                    clf.sweep(time.time_ns())
            except Exception as exc:  # noqa: BLE001  (first, do no harm: fail open, go on)
                self._batch_failed(exc)
                continue
            self.batches += 1
            self.last_batch = time.monotonic()
            if self.panel is not None:
                self.panel.feed()
                if self.last_batch >= next_panel:
                    self._refresh_panel()
                    next_panel = self.last_batch + PANEL_INTERVAL
            self.notify.tick(self.last_batch, self._status_line)
            if self.integrity is not None and self.integrity.pending.is_set():
                self.integrity.deliver(self)
            if self.last_batch >= next_rate:
                self.rates.sample(self.classifier.stats())
                next_rate = self.last_batch + RATE_INTERVAL
            if clf.pending_events:
                self._flush_events()
            if ident is not None:
                found = ident.poll()        # dissection results, classes (once a second)
                if found:
                    self._publish(found)
            if self.reload_requested.is_set() and not self.pending:   # one at a time: a
                self.reload_requested.clear()                          # SIGHUP waits its turn
                self._handle(Request({"cmd": "reload", "source": "signal"}))
            self._serve_requests()
            if time.monotonic() >= next_snapshot:
                self._snapshot()
                next_snapshot = time.monotonic() + SNAPSHOT_INTERVAL
            if time.monotonic() >= next_proposal:
                self.propose()
                next_proposal = time.monotonic() + interval
            if self.stop.is_set():
                break

    def _batch_failed(self, exc: Exception) -> None:
        """A batch could not be processed: log it; repeated failures enter bypass."""
        now = time.monotonic()
        self.failures = [t for t in self.failures if now - t < FAILURE_WINDOW] + [now]
        log.error("batch failed (%d in %.0f s): %s: %s", len(self.failures), FAILURE_WINDOW,
                  type(exc).__name__, exc)
        if len(self.failures) >= FAILURES_FOR_BYPASS and self.mode != "bypass":
            log.error("repeated failures: entering bypass, ward traffic is not inspected")
            self.set_mode("bypass")
            self._emit({"type": "bypass_entered", "reason": "repeated failure",
                        "error": f"{type(exc).__name__}: {exc}"})

    def _refresh_panel(self) -> None:
        if self.panel is None:
            return
        mqtt = next((o for o in self.outputs if o.name == "mqtt"), None)
        connected = getattr(mqtt, "connected", None)
        self.panel.refresh(
            mode=self.mode, healthy=self._healthy(), policy_fault=self.policy_fault is not None,
            datapath_running=time.monotonic() - self.last_batch < 2.0,
            broker_configured=mqtt is not None,
            broker_connected=bool(connected is not None and connected.is_set()))

    def _status_line(self) -> str:
        """One line for systemd's STATUS= (systemctl status wardtap)."""
        c = self.classifier.stats()
        policy = self.policy
        fault = " (POLICY FAULT)" if self.policy_fault is not None else ""
        return (f"{self.mode}, {self.config.datapath}, policy "
                f"{f'{shown(policy.name)} v{policy.version}' if policy else 'none'}{fault}: "
                f"{c['packets']} packets, {c['denied']} denied, {c['devices']} devices")

    # -- policy and mode -------------------------------------------------------------------

    def _apply_policy(self, policy: Policy, compiled: CompiledPolicy) -> list[tuple[Any, ...]]:
        self.generation += 1
        self.policy = policy
        self.classifier.set_policy(compiled)
        return self.classifier.reevaluate()

    def _start_policy(self, path: str) -> None:
        """The policy at start; when it cannot be used, the last good one, else bypass."""
        prepared, self.policy_fault = load_at_start(
            path, classes=self._class_members(), mode=self.mode, generation=self.generation + 1)
        if prepared is not None:
            self._apply_policy(prepared.policy, prepared.compiled)
        elif self.policy_fault is not None and self.mode in ("monitor", "enforce"):
            log.error("POLICY FAULT: no usable policy; in bypass (fail open: ward traffic is "
                      "not inspected) until the policy file is fixed and reloaded")
            self.mode = "bypass"
            self.policy_fault["bypass"] = True

    def reload(self, strict: bool = False) -> Result:
        """Load the policy file again, off the main loop: all of it applies, or none of it."""
        path = self.config.policy
        if not path:
            return refused("no_policy_file", "no policy file configured")
        if self.pending or self.worker.busy():
            return refused("busy", "a policy is being loaded already; try again")
        classes, mode, generation = self._class_members(), self.mode, self.generation + 1
        future = self.worker.submit(lambda: prepare_file(
            path, classes=classes, mode=mode, generation=generation, strict=strict,
            keep_as=path))
        return Pending(future, lambda done: self._policy_done(done, "reload"))

    def push_policy(self, text: str, *, allow_rollback: bool, allow_jump: bool,
                    strict: bool) -> Result:
        """A pushed policy: checked and compiled off the main loop, written as the policy
        file only then, applied here."""
        path = self.config.policy
        if not path:
            return refused("no_policy_file", "no policy file configured")
        if self.pending or self.worker.busy():
            return refused("busy", "a policy is being loaded already; try again")
        classes, mode, generation = self._class_members(), self.mode, self.generation + 1
        running = self.policy if self.policy_fault is None else None

        def write(data: bytes) -> None:
            with self.policy_file_change():
                write_atomically(path, data)

        future = self.worker.submit(lambda: prepare_push(
            text, path, running, classes=classes, mode=mode, generation=generation,
            allow_rollback=allow_rollback, allow_jump=allow_jump, strict=strict,
            write=write))
        return Pending(future, lambda done: self._policy_done(done, "push"))

    def _policy_done(self, done: Any, what: str) -> Answer:
        """Main loop: the worker finished; swap the policy in, or say why not."""
        try:
            prepared = done.result()
            if prepared is not None:
                check_usable(prepared.policy, self.mode)    # the mode may have changed since
        except (PolicyError, Refused) as exc:
            log.error("policy %s rejected, keeping the running policy: %s", what, exc)
            self._emit({"type": "policy_rejected", "error": str(exc),
                        "running": self.policy_info()})
            if isinstance(exc, Refused):
                return refused(exc.reason, str(exc))
            return refused("invalid_policy", f"invalid policy, nothing changed: {exc}"
                           if what == "push" else str(exc))
        if prepared is None:
            return {"ok": True, "unchanged": True, "policy": self.policy_info()}
        old = self.policy_info()
        changed = self._apply_policy(prepared.policy, prepared.compiled)
        changed_events = [event_dict(rec, self._rule_name) for rec in changed]
        if self.source is not None:
            self.source.flows_changed(changed_events)
        self._emit({"type": "policy_loaded", "previous": old, "policy": self.policy_info(),
                    "flows_changed": len(changed_events), "warnings": len(prepared.warnings)})
        log.info("policy %s: %s v%s (%d existing flows changed verdict)", what,
                 prepared.policy.name, prepared.policy.version, len(changed_events))
        warn(prepared)
        self._flush_events()
        self._clear_policy_fault()
        answer: Answer = {"ok": True, "policy": self.policy_info(),
                          "flows_changed": len(changed),
                          "warnings": prepared.warnings[:MAX_WARNINGS_SHOWN]}
        if what == "push":
            answer["rolled_back"] = prepared.rolled_back
        return answer

    def _clear_policy_fault(self) -> None:
        fault, self.policy_fault = self.policy_fault, None
        if fault is None:
            return
        log.warning("policy fault cleared: running %s", self.policy_info())
        self._emit({"type": "policy_fault_cleared", "policy": self.policy_info()})
        if fault.get("bypass") and self.mode == "bypass":
            self.set_mode(self.config.mode)
        self._refresh_panel()

    def set_mode(self, mode: str) -> dict[str, Any]:
        if mode not in ("learn", "monitor", "enforce", "bypass"):
            return refused("invalid_args", f"unknown mode {mode!r}")
        if mode in ("monitor", "enforce") and self.policy is None:
            return refused("no_policy", f"mode {mode} needs a policy")
        if self.policy is not None:
            try:
                check_usable(self.policy, mode)
            except PolicyError as exc:
                return refused("invalid_policy", str(exc))
        self._flush_events()           # what is queued goes to the readers it was queued for
        previous, self.mode = self.mode, mode
        if mode == "learn" and self.baseline is None:
            self.baseline = Baseline()
        self._route_events()
        self.classifier.set_mode("learn" if mode in ("learn", "bypass") else mode)
        if self.source is not None:
            self.source.set_bypass(mode == "bypass")
        self._emit({"type": "mode_changed", "previous": previous, "mode": mode})
        self._refresh_panel()
        log.info("mode %s -> %s", previous, mode)
        return {"ok": True, "mode": mode, "previous": previous}

    def propose(self, text_only: bool = False) -> dict[str, Any]:
        """Write the policy learned so far (learn mode) to the configured file; with
        `text_only` (`wardtap propose -o FILE` writes it where the operator is) or no file
        configured, answer with its text instead."""
        from appliance.daemon.proposal import draft_proposal
        from appliance.policy.writer import write_text

        if self.baseline is None:
            return {"ok": False, "error": "not learning: the daemon is not in learn mode"}
        identified = None if self.identification is None else \
            self.identification.inventory.as_list()
        path = None if text_only else self.config.learn_output
        try:
            got = draft_proposal(self.baseline, self.classifier, identified,
                                 path or "<proposal>")
            if path:
                with self.policy_file_change() if path == self.config.policy else \
                        contextlib.nullcontext():
                    write_text(path, got.text)
        except WardtapError as exc:
            log.error("proposed policy not written: %s", exc)
            return {"ok": False, "error": str(exc)}
        self._emit({"type": "policy_proposed", "path": path,
                    "conversations": got.conversations, "rules": got.rules,
                    "left_out": got.left_out})
        log.info("proposed policy %s: %d rules, %d left out for review",
                 f"written to {path}" if path else "handed out", got.rules, got.left_out)
        # the text goes with every answer: the fleet console shows it beside the running one
        return {"ok": True, "path": path, "conversations": got.conversations,
                "rules": got.rules, "left_out": got.left_out, "groups": got.groups,
                "left_out_reasons": got.left_out_reasons, "policy": got.text,
                "current": self.policy.text if self.policy else None}

    # -- control requests ------------------------------------------------------------------

    def _serve_requests(self) -> None:
        self.requests.clear()         # a request put from here on wakes the loop again
        if self.pending:
            self._finish_pending()
        while not self.requests.empty():       # this loop is the only consumer
            self._handle(self.requests.get_nowait())

    def _handle(self, request: Request) -> None:
        """Answer a request now, or once its policy work is done (`Pending`)."""
        result = dispatch(self, request.body)
        if isinstance(result, Pending):           # answered when the worker is done
            self.pending.append((request, result))
            result.future.add_done_callback(lambda _: self.requests.wake())
            return
        self._answer(request, result)

    def _finish_pending(self) -> None:
        waiting = []
        for request, pending in self.pending:
            if pending.future.done():
                self._answer(request, finish(pending))
            else:
                waiting.append((request, pending))
        self.pending = waiting

    def _answer(self, request: Request, answer: Answer) -> None:
        self._audit_local(request.body, answer)
        request.respond(answer)

    def _audit_local(self, body: dict[str, Any], answer: dict[str, Any]) -> None:
        """Local commands that change the appliance (control socket, button) go to the same
        audit log as the fleet's; MQTT commands are audited where they are verified."""
        source = str(body.get("source", "control"))
        if source == "mqtt" or body.get("cmd") == "status" or not self.config.store:
            return
        try:
            if self.audit is None:
                from appliance.outputs.audit import AuditLog

                self.audit = AuditLog(self.config.store)
            detail = json.dumps({k: v for k, v in body.items() if k not in ("cmd", "source")},
                                default=str)[:1024]
            outcome = "ok" if answer.get("ok") else "rejected"
            row = self.audit.record(source, None, outcome, reason=answer.get("error"),
                                    detail=detail, name=str(body.get("cmd"))[:64])
            self.audit.finish(row, outcome, answer)
        except Exception as exc:  # noqa: BLE001  (a failed audit write never stops the loop)
            log.error("audit log: %s: %s", type(exc).__name__, exc)

    def _submit(self, body: dict[str, Any],
                reply: Callable[[dict[str, Any]], None]) -> bool:
        """Queue a request from another thread (MQTT); `reply` runs on this main loop."""
        try:
            self.requests.put_nowait(CallbackRequest(body, reply))
        except queue.Full:
            return False
        return True

    # -- what commands see of the daemon (appliance.daemon.commands.DaemonControl) ----------

    @property
    def configured_mode(self) -> str:
        return self.config.mode

    @property
    def policy_path(self) -> str | None:
        return self.config.policy

    def request_stop(self) -> None:
        self.stop.set()
        self.requests.wake()           # an idle source polls for it: stop now

    def identify(self, seconds: float) -> Answer:
        """Blink the unit for `seconds`, within IDENTIFY_BUDGET_S per hour (the violation
        and bypass LEDs keep showing their state: appliance.panel.leds)."""
        over = self.identify_budget.take(seconds)
        if over is not None:
            return refused("rate_limited", over)
        leds = self.on_identify is not None
        if self.on_identify is not None:
            self.on_identify(seconds)
        log.info("identify for %g s (%s)", seconds, "LEDs" if leds else "no LEDs attached")
        return {"ok": True, "seconds": seconds, "leds": leds}

    def devices(self) -> list[dict[str, Any]]:
        return [device_dict(rec) for rec in self.classifier.device_list()]

    def policy_file_change(self) -> contextlib.AbstractContextManager[object]:
        """A change to the policy file made through wardtap: the integrity manifest that
        lists it follows the change instead of raising an alarm."""
        path = self.config.policy
        if self.integrity is None or not path:
            return contextlib.nullcontext()
        return self.integrity.updating(path)

    def status(self) -> dict[str, Any]:
        stats = self.classifier.stats()
        return {
            "pid": os.getpid(), "mode": self.mode, "datapath": self.config.datapath,
            "policy": self.policy_info(), "policy_fault": self.policy_fault,
            "uptime_s": round(time.time() - self.started, 1),
            "batches": self.batches,
            "last_batch_age_s": round(time.monotonic() - self.last_batch, 3),
            "counters": {k: v for k, v in stats.items() if k != "reasons"},
            "reasons": stats["reasons"],
            "source": self.source.stats() if self.source is not None else {},
            "memory_bytes": self.classifier.memory_bytes,
            "leds": (None if self.panel is None else
                     {"patterns": self.panel.leds.display.as_dict(),
                      "line": self.panel.render(), "backend": self.panel.leds.backend,
                      "colours": {led.name: led.colour for led in self.panel.leds.pinmap.leds}}),
            **({"dissect": self.identification.stats()}
               if self.identification is not None else {}),
            **({"integrity": self.integrity.status()} if self.integrity is not None else {}),
            "health": self._health(), "rate": self.rates.rate(stats),
            "violations": self.violations.status(),
            "broker": self._broker_status(),
        }

    # -- status details for the console (wardtap status / top) -------------------------------

    def _healthy(self) -> bool:
        """No batch failed within the failure window."""
        return not self.failures or time.monotonic() - self.failures[-1] > FAILURE_WINDOW

    def _health(self) -> dict[str, Any]:
        now = time.monotonic()
        healthy = self._healthy()
        running = now - self.last_batch < 2.0
        state = ("bypass" if self.mode == "bypass" else "fault" if not healthy
                 else "stalled" if not running else "ok")
        return {"state": state, "healthy": healthy, "datapath_running": running,
                "batch_failures": sum(now - t < FAILURE_WINDOW for t in self.failures)}

    def _broker_status(self) -> dict[str, Any]:
        mqtt = next((o for o in self.outputs if o.name == "mqtt"), None)
        status = getattr(mqtt, "status", None)
        if mqtt is None or status is None:
            return {"configured": False, "connected": False, "url": None,
                    "spool_depth": None, "spool_overflow": None, "spool_dropped": None}
        return {"configured": True, **status()}

    def _class_members(self) -> Callable[[str, str], list[str]] | None:
        """Policy `class`, `role`, `maker` selectors from the stored inventory, and
        `mud_controller` from [mud.controllers]: read at each policy load and reload."""
        from appliance.daemon.policyload import policy_members

        return policy_members(self.config.store, self.config.path)

    # -- events and outputs ------------------------------------------------------------------

    def _rule_name(self, index: int) -> str | None:
        return self.policy.rule_name(index) if self.policy else None

    def policy_info(self) -> dict[str, Any] | None:
        if self.policy is None:
            return None
        return {"name": self.policy.name, "version": self.policy.version,
                "sha256": self.policy.digest, "generation": self.generation}

    def _route_events(self) -> None:   # queue and build only what someone reads
        self.events.route(self.outputs, self.identification is not None, self.mode == "learn")

    def _flush_events(self) -> None:
        rule_name = self.policy.rule_name if self.policy is not None else None
        for events in self.events.drain(rule_name):
            if self.identification is not None:
                self.identification.on_events(events)
            self._publish(events)

    def _emit(self, event: dict[str, Any]) -> None:
        event.setdefault("ts", time.time())
        self._publish([event])

    def _publish(self, events: list[dict[str, Any]]) -> None:
        if self.baseline is not None and self.mode == "learn":
            self.baseline.observe(events)
        for output in self.outputs:
            try:
                output.publish(events)
            except WardtapError as exc:
                log.error("output %s failed, events kept by the others: %s", output.name, exc)

    def _snapshot(self) -> None:
        stats = self.classifier.stats()
        devices = self.devices()
        if self.identification is not None:
            from appliance.inventory.devices import annotate

            devices = annotate(devices, self.identification.inventory.as_list())
            try:
                found = self.identification.snapshot(devices)   # merges, classifies, saves
            except WardtapError as exc:
                log.error("inventory not saved: %s", exc)
                found = []
            if found:
                self._publish(found)
        for output in self.outputs:
            try:
                output.snapshot(stats, devices)
            except WardtapError as exc:
                log.error("output %s failed: %s", output.name, exc)
