"""MQTT reporter: the appliance's output to the fleet broker (docs/mqtt.md).

Shape (the Frigate model): one output behind the small Output interface; paho-mqtt 2.x
(callback API v2, MQTT 5) imported only under appliance.outputs; a retained `state` topic
with a retained last will; periodic work on intervals. This module is the transport: the
connection, the state, inventory and stats it reports, and the events it spools. Its parts:

- appliance.outputs.spool: events and stats are committed to SQLite *before* they are
  published, and leave only on a successful PUBACK (store and forward);
- appliance.outputs.sender: the thread that moves spooled rows to the broker, a bounded
  window at a time, batching events into few messages;
- appliance.outputs.summarizer: repeated violations of one flow become one summary;
- appliance.outputs.fleetcommands: commands from the fleet, checked on the network thread,
  applied by the daemon's main loop, answered on the MQTT 5 response topic, audited.

Threads: the daemon's main loop calls publish()/snapshot()/close(); paho's network thread
runs the callbacks; the sender thread moves rows from the spool to paho. The classifier is
never touched from here.
"""

from __future__ import annotations

import collections
import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from appliance import __version__
from appliance.common.ratelog import RateLimitedLog
from appliance.contract.broker import (
    PAYLOAD_VERSION,
    make_client,
    start,
    stop,
    topic,
)
from appliance.contract.commands import CommandProcessor
from appliance.errors import WardtapError
from appliance.outputs.audit import AuditLog
from appliance.outputs.base import FASTPATH_EVENT_TYPES, Output
from appliance.outputs.fleetcommands import FleetCommands, Submit
from appliance.outputs.sender import SpoolSender
from appliance.outputs.settings import ReporterSettings
from appliance.outputs.spool import (
    KIND_EVENT,
    KIND_STATS,
    PRIO_ALERT,
    PRIO_INFO,
    PRIO_STATS,
    Item,
    Spool,
)
from appliance.outputs.summarizer import Summarizer

log = logging.getLogger("wardtap.mqtt")

# Flow events are the bulk of the event ring and are covered by the stats counters.
SKIP_TYPES = frozenset({"new_flow", "flow_end"})
# Alerts are never evicted from the spool (see appliance.outputs.spool); everything else is "info".
ALERT_TYPES = frozenset({"violation", "new_device", "mode_changed", "policy_loaded",
                         "policy_rejected", "policy_fault", "policy_fault_cleared", "bypass",
                         "spool_overflow", "spool_disk_full", "spool_disk_ok",
                         "integrity_alarm", "integrity_restored",
                         "patient_data_unencrypted", "advisory_match"})
STATS_COUNTERS = ("packets", "bytes", "allowed", "denied", "malformed", "flows_created",
                  "flows_ended", "flows_evicted", "events_dropped", "device_table_full")
CONTROL_RESERVE = 16          # paho slots kept for state, inventory and command responses
_JSON = json.JSONEncoder(separators=(",", ":"), default=str).encode   # one encoder, reused


# -- the output ----------------------------------------------------------------------------

class MqttOutput(Output):
    name = "mqtt"

    def __init__(self, settings: ReporterSettings, mode: str = "learn",
                 policy: dict[str, Any] | None = None, datapath: str | None = None,
                 submit: Submit | None = None, clock: Callable[[], float] = time.time) -> None:
        self.settings = s = settings
        self.clock = clock
        self.mode = mode
        self.policy = policy
        self.policy_fault: dict[str, Any] | None = None   # the daemon runs a fallback policy
        self.failures = RateLimitedLog(log)
        self.datapath = datapath
        self.started = clock()
        self.topics = {leaf: topic(s.site, s.appliance, leaf)
                       for leaf in ("state", "events", "inventory", "stats", "cmd", "response")}
        self.spool = Spool(s.spool, max_rows=s.spool_max_rows, max_bytes=s.spool_max_bytes,
                           min_free_bytes=s.min_free_bytes, reserve_bytes=s.spool_reserve_bytes)
        self.audit = AuditLog(s.spool)
        verifier = None
        if s.fleet_key:
            from appliance.contract.signing import Verifier

            verifier = Verifier.from_file(s.fleet_key)
        self.processor = CommandProcessor(s.site, s.appliance, verifier, self.audit,
                                          s.max_command_bytes)
        self.commands = FleetCommands(self, self.processor, self.audit, submit)
        self.summarizer = Summarizer(s.summary_window, s.per_group)
        status = self.spool.status()
        self._flags: tuple[Any, ...] = (status["overflow"], status["disk_full"],
                                        status["low_disk"])
        self.counters = collections.Counter[str]()
        # when this appliance saw each violation (its clock, not the packet's: a replayed
        # capture's old timestamps must not make the last hour look empty)
        self._violations: collections.deque[tuple[float, int]] = collections.deque()
        self.stop_reason = "shutdown"       # said in the offline state of a clean stop
        self._interval_violations = 0
        self._last_totals: dict[str, int] = {}
        self._last_stats = clock()
        self._snapshots = 0
        self._devices: list[dict[str, Any]] | None = None
        self._identity: frozenset[tuple[Any, ...]] | None = None
        self._inventory_sent = 0.0
        self._vendors: dict[str, str] = {}
        self._closed = False
        self.spool_left = 0
        self.connected = threading.Event()
        self.client = make_client(s.broker, f"wardtap-{s.site}-{s.appliance}")
        self.client.suppress_exceptions = True     # a failing callback must not end the loop
        self.client.max_inflight_messages_set(s.inflight + CONTROL_RESERVE)
        self.client.will_set(self.topics["state"], self._state_payload("offline", "lost"),
                             qos=1, retain=True)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.client.on_message = self._on_message
        self.sender = SpoolSender(s, self.spool, self.client, self.topics, self.counters,
                                  self.connected, clock)
        self.sender.start()
        start(self.client, s.broker)
        log.info("reporting to %s as %s/%s (spool %s: %d waiting)", s.broker.url, s.site,
                 s.appliance, s.spool, self.spool.depth())

    @classmethod
    def from_config(cls, options: dict[str, Any], **kwargs: Any) -> MqttOutput:
        return cls(ReporterSettings.from_options(options), **kwargs)

    # -- Output interface (daemon main loop) -------------------------------------------------

    # flow events are left to the stats counters (SKIP_TYPES)
    event_types = FASTPATH_EVENT_TYPES - SKIP_TYPES

    def alive(self) -> bool:
        """The sender thread runs (it moves the spool to the broker); True once closed."""
        return self._closed or self.sender.alive()

    def publish(self, events: list[dict[str, Any]]) -> None:
        if self._closed:
            return
        out: list[dict[str, Any]] = []
        state_changed = False
        now = self.clock()
        for event in events:
            kind = event.get("type")
            if kind in SKIP_TYPES:
                continue
            if kind == "violation":
                self._interval_violations += 1
                self._violations.append((now, 1))
            elif kind in ("started", "mode_changed", "policy_loaded", "policy_fault",
                          "policy_fault_cleared"):
                if kind == "mode_changed":     # entering or leaving bypass is called out
                    event = {**event, "bypass": event.get("mode") == "bypass"}
                before = (self.mode, self.policy, self.policy_fault)
                self.mode = event.get("mode", self.mode)
                self.policy = event.get("policy", self.policy)
                if kind in ("started", "policy_fault", "policy_fault_cleared"):
                    self.policy_fault = (event.get("policy_fault") if kind == "started" else
                                         _fault(event) if kind == "policy_fault" else None)
                state_changed |= (self.mode, self.policy, self.policy_fault) != before
            out.extend(self.summarizer.add(event))
        out.extend(self.summarizer.expire(now))
        self._enqueue(out)
        if state_changed:
            self.publish_state()

    def snapshot(self, stats: dict[str, Any], devices: list[dict[str, Any]]) -> None:
        if self._closed:
            return
        now = self.clock()
        self._snapshots += 1
        self._enqueue(self.summarizer.expire(now))
        self._devices = devices
        # what the fleet's inventory shows: a device, its address, and what it was found to be
        identity = frozenset((d.get("mac"), d.get("ipv4"), d.get("ipv6"), d.get("vlan"),
                              d.get("class"), d.get("make"), d.get("model"),
                              d.get("software_version"), bool(d.get("unencrypted_patient_data")),
                              tuple(a.get("id") for a in d.get("advisories") or ()))
                             for d in devices)
        if identity != self._identity and (
                self._identity is None
                or now - self._inventory_sent >= self.settings.inventory_interval):
            self._identity = identity
            self.publish_inventory(devices)
        if now - self._last_stats >= self.settings.stats_interval:
            self._enqueue_stats(stats, devices, now)
        self._check_flags()          # a full disk that cleared by itself shows in the state

    def send_stats(self, stats: dict[str, Any], devices: list[dict[str, Any]]) -> None:
        """Spool a stats message now (end of a replay), whatever the interval."""
        self._enqueue_stats(stats, devices, self.clock())

    def status(self) -> dict[str, Any]:
        """For `wardtap status`/`top`: the connection and the spool, as the console shows it."""
        spool = self.spool.status()
        return {"connected": self.connected.is_set(), "url": self.settings.broker.url,
                "spool_depth": spool["depth"], "spool_overflow": spool["overflow"],
                "spool_dropped": spool["dropped"], "disk_full": spool["disk_full"],
                "held_in_memory": spool["held_in_memory"], "low_disk": spool["low_disk"],
                "acknowledged": self.counters["acknowledged"]}

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.sender.final = True
        self._enqueue(self.summarizer.flush(), closing=True)
        deadline = time.monotonic() + self.settings.drain_timeout
        while (self.connected.is_set() and time.monotonic() < deadline
               and (self.spool.depth() or self.sender.inflight) and not self.sender.stalled):
            self.sender.wake()
            time.sleep(0.02)
        if self.connected.is_set():
            info = self.client.publish(self.topics["state"],
                                       self._state_payload("offline", self.stop_reason),
                                       qos=1, retain=True)
            try:
                info.wait_for_publish(timeout=2.0)
            except (RuntimeError, ValueError):
                pass
        self.sender.stop()
        stop(self.client)                  # a normal DISCONNECT: the broker drops the will
        self.spool_left = left = self.spool.depth()
        if left:
            log.info("mqtt: %d messages stay in the spool for the next start", left)
        self.spool.close()
        self.audit.close()

    # -- what goes out -----------------------------------------------------------------------

    def _enqueue(self, events: list[dict[str, Any]], closing: bool = False) -> None:
        if not events:
            return
        items = [Item(KIND_EVENT, PRIO_ALERT if e.get("type") in ALERT_TYPES else PRIO_INFO,
                      _JSON(e)) for e in events]
        try:
            self.spool.put(items)
        except WardtapError as exc:
            self.failures.error("spool", f"mqtt: cannot spool {len(items)} events: {exc}")
            return
        self.counters["events_spooled"] += len(items)
        self.sender.wake()
        if not closing:
            self._check_flags()

    def _enqueue_stats(self, stats: dict[str, Any], devices: list[dict[str, Any]],
                       now: float) -> None:
        totals = {k: int(stats.get(k, 0)) for k in STATS_COUNTERS}
        deltas = {k: v - self._last_totals.get(k, 0) for k, v in totals.items()}
        while self._violations and self._violations[0][0] < now - 3600:
            self._violations.popleft()
        body = {
            "ts": now, "interval_s": round(now - self._last_stats, 3),
            "counters": deltas, "violations": self._interval_violations,
            "violations_last_hour": sum(n for _, n in self._violations),
            "flows_active": int(stats.get("flows_active", 0)),
            "devices": len(devices), "uptime_s": round(now - self.started, 1),
            "mode": self.mode, "spool": self.spool.status(),
            "mqtt": dict(self.counters),
        }
        self._last_totals = totals
        self._last_stats = now
        self._interval_violations = 0
        try:
            self.spool.put([Item(KIND_STATS, PRIO_STATS,
                                 json.dumps(body, separators=(",", ":"), default=str))])
        except WardtapError as exc:
            self.failures.error("spool", f"mqtt: cannot spool stats: {exc}")
        self.sender.wake()
        self._check_flags()

    def _check_flags(self) -> None:
        status = self.spool.status()
        flags = (status["overflow"], status["disk_full"], status["low_disk"])
        if flags != self._flags:
            self._flags = flags
            self.publish_state()

    def _state_payload(self, status: str, reason: str | None = None) -> str:
        now = self.clock()
        body: dict[str, Any] = {
            "v": PAYLOAD_VERSION, "status": status, "site": self.settings.site,
            "appliance": self.settings.appliance, "ts": now, "version": __version__,
            "host": socket.gethostname(),
        }
        if reason == "lost":
            # the last will is fixed when we connect: it cannot know when the link died
            del body["ts"]
            body["connected_at"] = now
            reason = "connection lost"
        if status == "online":
            spool = self.spool.status()
            body.update(mode=self.mode, policy=self.policy, policy_fault=self.policy_fault,
                        datapath=self.datapath,
                        started=self.started, uptime_s=round(now - self.started, 1),
                        spool={"depth": spool["depth"], "bytes": spool["bytes"],
                               "overflow": spool["overflow"], "dropped": spool["dropped"],
                               "disk_full": spool["disk_full"],
                               "low_disk": spool["low_disk"],
                               "held_in_memory": spool["held_in_memory"]},
                        spool_overflow=spool["overflow"],
                        commands={"signed": self.processor.verifier is not None,
                                  "last_seq": self.audit.last_seq()})
        else:
            body["reason"] = reason
            if reason != "connection lost":      # a clean stop knows what it leaves behind
                spool = self.spool.status()
                body["spool"] = {"depth": spool["depth"], "overflow": spool["overflow"]}
        return json.dumps(body, separators=(",", ":"), default=str)

    def publish_state(self) -> None:
        if self.connected.is_set():
            self.client.publish(self.topics["state"], self._state_payload("online"), qos=1,
                                retain=True)

    def publish_inventory(self, devices: list[dict[str, Any]] | None = None) -> None:
        devices = self._devices if devices is None else devices
        if devices is None:
            return
        self._devices = devices
        if not self.connected.is_set():
            return                       # sent on (re)connection
        self._inventory_sent = self.clock()
        missing = {d["mac"][:8] for d in devices if d.get("mac")} - set(self._vendors)
        if missing:
            from appliance.common.oui import vendors

            found = vendors(m + ":00:00:00" for m in missing)
            self._vendors.update({m: found.get(m, "") for m in missing})
        listed = []
        for d in devices:
            entry = {k: d.get(k) for k in ("mac", "ipv4", "ipv6", "vlan", "multi_ip",
                                           "first_seen", "last_seen", "packets_sent",
                                           "bytes_sent", "packets_received", "bytes_received",
                                           "flows", "violations")}
            entry["vendor"] = (d.get("vendor")
                               or self._vendors.get((d.get("mac") or "")[:8]) or None)
            for key in ("class", "class_confidence", "names", "roles", "make", "model",
                        "software_version", "unencrypted_patient_data", "data_flows",
                        "advisories"):                         # from identification
                if key in d:
                    entry[key] = d[key]
            listed.append(entry)
        body = {"v": PAYLOAD_VERSION, "site": self.settings.site,
                "appliance": self.settings.appliance, "ts": self._inventory_sent,
                "count": len(listed), "devices": listed}
        self.client.publish(self.topics["inventory"],
                            json.dumps(body, separators=(",", ":"), default=str), qos=1,
                            retain=True)
        self.counters["inventory_published"] += 1

    # -- paho callbacks (network thread) -------------------------------------------------------

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any,
                    props: Any) -> None:
        if reason.is_failure:
            log.error("mqtt: the broker refused the connection: %s", reason)
            return
        receive_max = getattr(props, "ReceiveMaximum", None) if props is not None else None
        if receive_max:
            # the broker's Receive Maximum bounds what we may have unacknowledged
            reserve = min(CONTROL_RESERVE, max(1, receive_max // 4))
            self.sender.window = max(1, min(self.settings.inflight, receive_max - reserve))
        self.counters["connections"] += 1
        self.connected.set()
        log.info("mqtt: connected to %s (%d messages waiting in the spool)",
                 self.settings.broker.url, self.spool.depth())
        client.publish(self.topics["state"], self._state_payload("online"), qos=1, retain=True)
        if self._devices is not None:
            self.publish_inventory()
        if self.commands.submit is not None:
            client.subscribe(self.topics["cmd"], qos=1)
        self.sender.wake()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any,
                       props: Any) -> None:
        if self.connected.is_set() and not self._closed:
            log.warning("mqtt: disconnected from %s (%s); the spool keeps everything",
                        self.settings.broker.url, reason)
        self.connected.clear()

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: Any,
                    props: Any) -> None:
        self.sender.acknowledged(mid, int(getattr(reason, "value", 0)), str(reason))

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        if message.topic != self.topics["cmd"]:
            return
        try:
            self.commands.handle(message)      # it answers every failure itself
        except Exception as exc:  # noqa: BLE001  (never let a request kill the network thread)
            log.error("mqtt: command handling failed: %s: %s", type(exc).__name__, exc)

    def enqueue_direct(self, event: dict[str, Any]) -> None:
        """An event from the network thread (bypasses the summarizer, main-loop only)."""
        try:
            self.spool.put([Item(KIND_EVENT, PRIO_INFO, _JSON(event))])
        except WardtapError as exc:
            self.failures.error("spool", f"mqtt: cannot spool an event: {exc}")
        self.sender.wake()


def _fault(event: dict[str, Any]) -> dict[str, Any]:
    """A policy_fault event as the state message's `policy_fault`."""
    return {k: event.get(k) for k in ("error", "running", "since", "bypass")}
