"""MQTT reporter: the appliance's output to the fleet broker (docs/mqtt.md).

Shape (the Frigate model): one output behind the small Output interface; paho-mqtt 2.x
(callback API v2, MQTT 5) imported only here; a retained `state` topic with a retained last
will; periodic work on intervals. What it adds for a hospital network:

- Store and forward: events and stats go into the SQLite spool (appliance.spool) *before*
  they are published and leave it only on a successful PUBACK. At most `inflight` messages
  are handed to paho at a time, so paho's memory-only queue never holds the backlog; after
  an outage or a restart everything unacknowledged is sent again.
- Few messages: nothing per packet; counters once per `stats_interval`; events batched: the
  first event after a quiet spell leaves after `linger` seconds, later ones share a message
  at most every `min_interval` seconds unless `batch` events are ready; repeated violations
  of one flow (same hosts, protocol and reason) in `summary_window` become one summary.
- Commands (appliance.commands): verified on the network thread, applied by the daemon's
  main loop, answered on the MQTT 5 response topic with the correlation data, audited.

Threads: the daemon's main loop calls publish()/snapshot()/close(); paho's network thread
runs the callbacks; one sender thread moves rows from the spool to paho and deletes them
when acknowledged. The classifier is never touched from here.
"""

from __future__ import annotations

import collections
import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from appliance import __version__
from appliance.commands import AuditLog, Command, CommandProcessor, Rejected
from appliance.errors import WardtapError
from appliance.fleet.contract import (
    PAYLOAD_VERSION,
    BrokerSettings,
    check_id,
    make_client,
    start,
    topic,
)
from appliance.outputs.base import Output
from appliance.spool import KIND_EVENT, KIND_STATS, PRIO_ALERT, PRIO_INFO, PRIO_STATS, Item, Spool

log = logging.getLogger("wardtap.mqtt")

# Flow events are the bulk of the event ring and are covered by the stats counters.
SKIP_TYPES = frozenset({"new_flow", "flow_end"})
# Alerts are never evicted from the spool (see appliance.spool); everything else is "info".
ALERT_TYPES = frozenset({"violation", "new_device", "mode_changed", "policy_loaded",
                         "policy_rejected", "bypass", "spool_overflow",
                         "integrity_alarm", "integrity_restored"})
STATS_COUNTERS = ("packets", "bytes", "allowed", "denied", "malformed", "flows_created",
                  "flows_ended", "flows_evicted", "events_dropped", "device_table_full")
MAX_MESSAGE_BYTES = 256 * 1024
CONTROL_RESERVE = 16          # paho slots kept for state, inventory and command responses
RETRY_BACKOFF = (1.0, 30.0)
NO_MATCHING_SUBSCRIBERS = 0x10
_JSON = json.JSONEncoder(separators=(",", ":"), default=str).encode   # one encoder, reused


@dataclass
class ReporterSettings:
    broker: BrokerSettings
    site: str
    appliance: str
    spool: str
    fleet_key: str | None = None
    stats_interval: float = 300.0
    inventory_interval: float = 300.0
    summary_window: float = 60.0
    per_group: int = 5
    inflight: int = 100
    batch: int = 100
    linger: float = 0.2
    min_interval: float = 10.0
    spool_max_rows: int = 200_000
    spool_max_bytes: int = 64 << 20
    min_free_bytes: int = 8 << 20
    max_command_bytes: int = 256 * 1024
    drain_timeout: float = 5.0
    # PUBACK 0x10 "no matching subscribers" on events: keep them and retry (nobody got them)
    require_subscriber: bool = True

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> ReporterSettings:
        """From a validated [broker] table (appliance.config) or command-line options."""
        broker = BrokerSettings.from_options(
            options["url"], ca=options.get("ca"), cert=options.get("cert"),
            key=options.get("key"), username=options.get("username"),
            password_file=options.get("password_file"),
            keepalive=int(options.get("keepalive", 30)),
            reconnect_max=float(options.get("reconnect_max", 30.0)))
        if not options.get("spool"):
            raise WardtapError("the MQTT reporter needs a spool file ([store] path or "
                               "[broker] spool)")
        known = {f for f in cls.__dataclass_fields__} - {"broker"}
        values = {k: v for k, v in options.items() if k in known}
        settings = cls(broker=broker, **values)
        check_id(settings.site, "site")
        check_id(settings.appliance, "appliance")
        if not 1 <= settings.inflight <= 65000 or not 1 <= settings.batch <= 10000:
            raise WardtapError("inflight must be 1..65000 and batch 1..10000")
        return settings


# -- summaries -------------------------------------------------------------------------------

@dataclass
class _Window:
    template: dict[str, Any]
    start_ts: float
    opened: float
    sent: set[Any] = field(default_factory=set)
    folded: int = 0
    ports: set[Any] = field(default_factory=set)
    first_ts: float | None = None
    last_ts: float | None = None


class Summarizer:
    """Repeated violations of one flow become one summary per window.

    Group: (type, src, dst, proto, vlan, reason) for violations; (type, reason, mac) for
    malformed packets. In each window the first `per_group` distinct ports of a group are
    sent one by one (count 1); everything else in the window is counted and sent as one
    event with "summary": true, "count", first/last time and the ports seen. The number of
    violations is the sum of "count". A window closes `window` seconds after it opened, by
    the events' own clock or by the wall clock, whichever comes first.
    """

    def __init__(self, window: float, per_group: int = 5, max_groups: int = 10_000,
                 clock: Callable[[], float] = time.time) -> None:
        self.window = window
        self.per_group = per_group
        self.max_groups = max_groups
        self.clock = clock
        # opened in order (wall clock), so the oldest windows are always at the front
        self.groups: collections.OrderedDict[tuple[Any, ...], _Window] = (
            collections.OrderedDict())

    @staticmethod
    def _key(event: dict[str, Any]) -> tuple[tuple[Any, ...], Any, int] | None:
        kind = event.get("type")
        if kind == "violation" and not event.get("summary"):
            port = event.get("dport", event.get("icmp_type"))
            return ((kind, event.get("src"), event.get("dst"), event.get("proto"),
                     event.get("vlan"), event.get("reason")), port, 0)
        if kind == "malformed":
            return (kind, event.get("reason"), event.get("mac")), None, 1
        return None

    def add(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        keyed = self._key(event) if self.window > 0 else None
        if keyed is None:
            return [event]
        key, port, limit_override = keyed
        limit = limit_override or self.per_group
        ts = float(event.get("ts") or self.clock())
        out: list[dict[str, Any]] = []
        win = self.groups.get(key)
        if win is not None and ts >= win.start_ts + self.window:
            out.extend(self._close(key))
            win = None
        if win is None:
            if len(self.groups) >= self.max_groups:
                out.extend(self._close(next(iter(self.groups))))
            win = self.groups[key] = _Window(event, ts, self.clock())
        if port not in win.sent and len(win.sent) < limit:
            win.sent.add(port)
            out.append({**event, "count": 1})
        else:
            win.folded += 1
            if port is not None and len(win.ports) < 64:
                win.ports.add(port)
            win.first_ts = ts if win.first_ts is None else min(win.first_ts, ts)
            win.last_ts = ts if win.last_ts is None else max(win.last_ts, ts)
        return out

    def _close(self, key: tuple[Any, ...]) -> list[dict[str, Any]]:
        win = self.groups.pop(key)
        if not win.folded:
            return []
        t = win.template
        keep = ("type", "src", "dst", "proto", "vlan", "reason", "device", "smac", "mac",
                "verdict", "rule")
        summary: dict[str, Any] = {k: t[k] for k in keep if k in t}
        summary.update(summary=True, count=win.folded, first_ts=win.first_ts, ts=win.last_ts,
                       window_s=self.window)
        if win.ports:
            summary["ports"] = sorted(win.ports, key=lambda p: (p is None, p))
        return [summary]

    def expire(self, now: float | None = None) -> list[dict[str, Any]]:
        now = self.clock() if now is None else now
        out: list[dict[str, Any]] = []
        while self.groups:
            key, win = next(iter(self.groups.items()))
            if now < win.opened + self.window:
                break
            out.extend(self._close(key))
        return out

    def flush(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for key in list(self.groups):
            out.extend(self._close(key))
        return out


# -- the output ----------------------------------------------------------------------------

Submit = Callable[[dict[str, Any], Callable[[dict[str, Any]], None]], bool]


class MqttOutput(Output):
    name = "mqtt"

    def __init__(self, settings: ReporterSettings, mode: str = "learn",
                 policy: dict[str, Any] | None = None, datapath: str | None = None,
                 submit: Submit | None = None, clock: Callable[[], float] = time.time) -> None:
        self.settings = s = settings
        self.clock = clock
        self.mode = mode
        self.policy = policy
        self.datapath = datapath
        self.submit = submit
        self.started = clock()
        self.topics = {leaf: topic(s.site, s.appliance, leaf)
                       for leaf in ("state", "events", "inventory", "stats", "cmd", "response")}
        self.spool = Spool(s.spool, max_rows=s.spool_max_rows, max_bytes=s.spool_max_bytes,
                           min_free_bytes=s.min_free_bytes)
        self.audit = AuditLog(s.spool)
        verifier = None
        if s.fleet_key:
            from appliance.signing import Verifier

            verifier = Verifier.from_file(s.fleet_key)
        self.processor = CommandProcessor(s.site, s.appliance, verifier, self.audit,
                                          s.max_command_bytes)
        self.summarizer = Summarizer(s.summary_window, s.per_group)
        status = self.spool.status()
        self._flags: tuple[Any, ...] = (status["overflow"], status["disk_full"],
                                        status["low_disk"])
        self.counters = collections.Counter[str]()
        self._violations: collections.deque[tuple[float, int]] = collections.deque()
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
        self._acks: collections.deque[tuple[int, int, str]] = collections.deque()
        self._wake = threading.Event()
        self._stop_sending = threading.Event()
        self._window = s.inflight
        self.inflight: dict[int, tuple[str, list[int]]] = {}
        self._probes: set[int] = set()      # mids of a retry round in flight
        self._last_events = float("-inf")   # when the last events message left
        self._stalled = False               # messages waiting for a retry (refused/no one)
        self.client = make_client(s.broker, f"wardtap-{s.site}-{s.appliance}")
        self.client.suppress_exceptions = True     # a failing callback must not end the loop
        self.client.max_inflight_messages_set(s.inflight + CONTROL_RESERVE)
        self.client.will_set(self.topics["state"], self._state_payload("offline", "lost"),
                             qos=1, retain=True)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.client.on_message = self._on_message
        self._sender = threading.Thread(target=self._send_loop, name="wardtap-mqtt-sender",
                                        daemon=True)
        self._sender.start()
        start(self.client, s.broker)
        log.info("reporting to %s as %s/%s (spool %s: %d waiting)", s.broker.url, s.site,
                 s.appliance, s.spool, self.spool.depth())

    @classmethod
    def from_config(cls, options: dict[str, Any], **kwargs: Any) -> MqttOutput:
        return cls(ReporterSettings.from_options(options), **kwargs)

    # -- Output interface (daemon main loop) -------------------------------------------------

    def alive(self) -> bool:
        """The sender thread runs (it moves the spool to the broker); True once closed."""
        return self._closed or self._sender.is_alive()

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
            elif kind in ("started", "mode_changed", "policy_loaded"):
                if kind == "mode_changed":     # entering or leaving bypass is called out
                    event = {**event, "bypass": event.get("mode") == "bypass"}
                before = (self.mode, self.policy)
                self.mode = event.get("mode", self.mode)
                self.policy = event.get("policy", self.policy)
                state_changed |= (self.mode, self.policy) != before
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
        identity = frozenset((d.get("mac"), d.get("ipv4"), d.get("ipv6"), d.get("vlan"))
                             for d in devices)
        if identity != self._identity and (
                self._identity is None
                or now - self._inventory_sent >= self.settings.inventory_interval):
            self._identity = identity
            self.publish_inventory(devices)
        if now - self._last_stats >= self.settings.stats_interval:
            self._enqueue_stats(stats, devices, now)

    def send_stats(self, stats: dict[str, Any], devices: list[dict[str, Any]]) -> None:
        """Spool a stats message now (end of a replay), whatever the interval."""
        self._enqueue_stats(stats, devices, self.clock())

    def status(self) -> dict[str, Any]:
        """For `wardtap status`/`top`: the connection and the spool, as the console shows it."""
        spool = self.spool.status()
        return {"connected": self.connected.is_set(), "url": self.settings.broker.url,
                "spool_depth": spool["depth"], "spool_overflow": spool["overflow"],
                "spool_dropped": spool["dropped"], "disk_full": spool["disk_full"],
                "acknowledged": self.counters["acknowledged"]}

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._enqueue(self.summarizer.flush(), closing=True)
        deadline = time.monotonic() + self.settings.drain_timeout
        while (self.connected.is_set() and time.monotonic() < deadline
               and (self.spool.depth() or self.inflight) and not self._stalled):
            self._wake.set()
            time.sleep(0.02)
        if self.connected.is_set():
            info = self.client.publish(self.topics["state"],
                                       self._state_payload("offline", "shutdown"),
                                       qos=1, retain=True)
            try:
                info.wait_for_publish(timeout=2.0)
            except (RuntimeError, ValueError):
                pass
        self._stop_sending.set()
        self._wake.set()
        self._sender.join(timeout=5)
        self.client.disconnect()           # a normal DISCONNECT: the broker drops the will
        self.client.loop_stop()
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
            log.error("mqtt: cannot spool %d events: %s", len(items), exc)
            return
        self.counters["events_spooled"] += len(items)
        self._wake.set()
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
            log.error("mqtt: cannot spool stats: %s", exc)
        self._wake.set()
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
            body.update(mode=self.mode, policy=self.policy, datapath=self.datapath,
                        started=self.started, uptime_s=round(now - self.started, 1),
                        spool={"depth": spool["depth"], "bytes": spool["bytes"],
                               "overflow": spool["overflow"], "dropped": spool["dropped"],
                               "disk_full": spool["disk_full"],
                               "low_disk": spool["low_disk"]},
                        spool_overflow=spool["overflow"],
                        commands={"signed": self.processor.verifier is not None,
                                  "last_seq": self.audit.last_seq()})
        else:
            body["reason"] = reason
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
            from appliance.oui import vendors

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
            for key in ("class", "class_confidence", "names"):   # from identification
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
            self._window = max(1, min(self.settings.inflight, receive_max - reserve))
        self.counters["connections"] += 1
        self.connected.set()
        log.info("mqtt: connected to %s (%d messages waiting in the spool)",
                 self.settings.broker.url, self.spool.depth())
        client.publish(self.topics["state"], self._state_payload("online"), qos=1, retain=True)
        if self._devices is not None:
            self.publish_inventory()
        if self.submit is not None:
            client.subscribe(self.topics["cmd"], qos=1)
        self._wake.set()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any,
                       props: Any) -> None:
        if self.connected.is_set() and not self._closed:
            log.warning("mqtt: disconnected from %s (%s); the spool keeps everything",
                        self.settings.broker.url, reason)
        self.connected.clear()

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: Any,
                    props: Any) -> None:
        self._acks.append((mid, int(getattr(reason, "value", 0)), str(reason)))
        self._wake.set()

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        if message.topic != self.topics["cmd"]:
            return
        try:
            self._command(message)
        except Exception:  # noqa: BLE001  (never let a request kill the network thread)
            log.exception("mqtt: command handling failed")

    # -- commands --------------------------------------------------------------------------

    def _reply_topic(self, requested: str | None) -> str | None:
        base = self.topics["response"]
        if not requested:
            return base
        if requested == base or requested.startswith(base + "/"):
            return requested
        return None

    def _command(self, message: Any) -> None:
        props = getattr(message, "properties", None)
        correlation = getattr(props, "CorrelationData", None) if props is not None else None
        requested = self._reply_topic(getattr(props, "ResponseTopic", None)
                                      if props is not None else None)
        reply_to = requested or self.topics["response"]
        try:
            if requested is None:
                raise Rejected("malformed", "the response topic must be under "
                               f"{self.topics['response']}/ (the ACL allows nothing else)")
            command = self.processor.check(message.payload)
        except Rejected as exc:
            import hashlib

            sha = hashlib.sha256(message.payload).hexdigest()
            self.audit.record("mqtt", None, "rejected", exc.reason, exc.detail, sha,
                              name=_peek_name(message.payload))
            log.warning("mqtt: command rejected: %s: %s", exc.reason, exc.detail)
            self._reply(reply_to, correlation, {"ok": False, "error": exc.reason,
                                                "detail": exc.detail})
            self._enqueue_direct({"type": "command_rejected", "ts": self.clock(),
                                  "reason": exc.reason, "detail": exc.detail,
                                  "request_sha256": sha})
            return
        command.audit_id = self.audit.record("mqtt", command, "accepted")
        log.info("mqtt: command %s accepted (seq %s, %s)", command.name, command.seq,
                 "signed" if command.signed else "unsigned")
        if self.submit is None:
            self._finish(command, {"ok": False, "error": "this process does not take "
                                   "commands"}, reply_to, correlation)
            return
        if not self.submit(command.body(),
                           lambda result: self._finish(command, result, reply_to, correlation)):
            self._finish(command, {"ok": False, "error": "busy"}, reply_to, correlation)

    def _finish(self, command: Command, result: dict[str, Any], reply_to: str,
                correlation: bytes | None) -> None:
        """Runs on the daemon's main loop once the command was applied (or refused)."""
        result = dict(result)
        if command.name == "inventory" and result.get("ok"):
            devices = result.pop("devices", [])
            self.publish_inventory(devices)
            result["devices"] = len(devices)
            result["topic"] = self.topics["inventory"]
        if command.name == "policy" and result.get("ok") and not result.get("unchanged"):
            self.audit.policy_applied("mqtt", result.get("policy") or {},
                                      command.args.get("policy", ""))
        ok = bool(result.get("ok"))
        if command.audit_id is not None:
            self.audit.finish(command.audit_id, "applied" if ok else "failed", result,
                              None if ok else "failed", None if ok else result.get("error"))
        self._reply(reply_to, correlation, result, command)

    def _reply(self, reply_to: str, correlation: bytes | None, result: dict[str, Any],
               command: Command | None = None) -> None:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        body = {"v": PAYLOAD_VERSION, "site": self.settings.site,
                "appliance": self.settings.appliance, "ts": self.clock(), **result}
        if command is not None:
            body.update(cmd=command.name, seq=command.seq, request_id=command.request_id)
        props = Properties(PacketTypes.PUBLISH)
        if correlation:
            props.CorrelationData = correlation
        self.client.publish(reply_to, json.dumps(body, separators=(",", ":"), default=str),
                            qos=1, properties=props)

    def _enqueue_direct(self, event: dict[str, Any]) -> None:
        """An event from the network thread (bypasses the summarizer, main-loop only)."""
        try:
            self.spool.put([Item(KIND_EVENT, PRIO_INFO, _JSON(event))])
        except WardtapError as exc:
            log.error("mqtt: cannot spool an event: %s", exc)
        self._wake.set()

    # -- the sender thread ---------------------------------------------------------------------

    def _delivered(self, kind: str, code: int) -> bool:
        """A PUBACK reason code: did the message reach the broker and someone behind it?"""
        if code >= 0x80:
            return False
        return not (code == NO_MATCHING_SUBSCRIBERS and kind == KIND_EVENT
                    and self.settings.require_subscriber)

    def _send_loop(self) -> None:
        """Spool -> paho, at most `window` messages in flight; delete on a good PUBACK.

        A message the broker refuses (reason >= 0x80), or events nobody is subscribed to
        (0x10), stay in the spool: they are sent again after a backoff, and nothing newer
        is sent until they get through (no busy loop, no reordering of a backlog).
        """
        cursor = 0
        retry: list[int] = []
        retry_at = 0.0
        backoff = RETRY_BACKOFF[0]
        timeout = 1.0
        while True:
            self._wake.wait(timeout)
            self._wake.clear()
            timeout = 1.0
            try:
                done: list[int] = []
                refused: list[str] = []
                while self._acks:
                    mid, code, why = self._acks.popleft()
                    entry = self.inflight.pop(mid, None)
                    if entry is None:
                        continue
                    self._probes.discard(mid)
                    kind, ids = entry
                    if self._delivered(kind, code):
                        done.extend(ids)
                    else:
                        retry.extend(ids)
                        refused.append(why)
                if refused:
                    retry_at = time.monotonic() + backoff
                    self.counters["refused_by_broker"] += len(refused)
                    log.warning("mqtt: %d messages not delivered (%s); kept in the spool, "
                                "sent again in %g s", len(refused), refused[0], backoff)
                    backoff = min(backoff * 2, RETRY_BACKOFF[1])
                if done:
                    self.spool.ack(done)
                    self.counters["acknowledged"] += len(done)
                    if not refused and not retry:
                        backoff = RETRY_BACKOFF[0]
                self._stalled = bool(retry)
                if self._stop_sending.is_set():
                    return
                if not self.connected.is_set():
                    continue
                room = self._window - len(self.inflight)
                if room <= 0:
                    continue
                if retry:
                    wait = retry_at - time.monotonic()
                    if wait > 0 or self._probes:
                        timeout = max(0.01, wait) if wait > 0 else 1.0
                        continue
                    retry.sort()
                    before = set(self.inflight)
                    n, last_retried, _ = self._send(
                        self.spool.take_ids(retry[:room * self.settings.batch]), room,
                        final=True)
                    self._probes |= set(self.inflight) - before
                    retry = [i for i in retry if i > last_retried] if n else []
                    self.counters["resent"] += n
                    continue
                if self._probes:
                    continue
                rows = self.spool.take(cursor, room * self.settings.batch)
                sent, last_id, wait_linger = self._send(rows, room, final=self._closed)
                cursor = max(cursor, last_id)
                if wait_linger is not None:
                    timeout = wait_linger
            except WardtapError as exc:
                log.error("mqtt sender: %s", exc)
                timeout = 1.0
            except Exception:  # noqa: BLE001  (the sender must survive anything)
                log.exception("mqtt sender failed; retrying")
                timeout = 1.0

    def _send(self, rows: list[Any], room: int, final: bool
              ) -> tuple[int, int, float | None]:
        """Publish rows as messages; return (messages, last row id sent, linger wait)."""
        s = self.settings
        now = self.clock()
        sent = 0
        last_id = 0
        batch: list[Any] = []
        size = 0
        prefix = (f'{{"v":{PAYLOAD_VERSION},"site":"{s.site}","appliance":"{s.appliance}",')
        epoch = self.spool.epoch

        def flush_events() -> None:
            nonlocal sent, last_id, batch, size
            body = (prefix + '"events":['
                    + ",".join(f'{{"id":"{epoch}-{r.id}",' + r.payload[1:] for r in batch)
                    + "]}")
            info = self.client.publish(self.topics["events"], body, qos=1)
            self.inflight[info.mid] = (KIND_EVENT, [r.id for r in batch])
            self._last_events = now
            self.counters["messages"] += 1
            sent += 1
            last_id = batch[-1].id
            batch, size = [], 0

        for row in rows:
            if sent >= room:
                break
            if row.kind == KIND_STATS:
                if batch:
                    flush_events()
                    if sent >= room:
                        break
                body = prefix + f'"id":"{epoch}-{row.id}",' + row.payload[1:]
                info = self.client.publish(self.topics["stats"], body, qos=1, retain=True)
                self.inflight[info.mid] = (KIND_STATS, [row.id])
                self.counters["messages"] += 1
                sent += 1
                last_id = row.id
                continue
            if batch and (len(batch) >= s.batch or size + len(row.payload) > MAX_MESSAGE_BYTES):
                flush_events()
                if sent >= room:
                    break
            batch.append(row)
            size += len(row.payload) + 24
        wait = None
        if batch and sent < room:
            due = max(batch[0].created + s.linger, self._last_events + s.min_interval)
            if final or len(batch) >= s.batch or now >= due:
                flush_events()
            else:
                wait = max(0.005, min(due - now, s.min_interval))
        return sent, last_id, wait


def _peek_name(payload: bytes) -> str | None:
    """The command name of a request that was rejected, if it can be read at all."""
    try:
        body = json.loads(payload)
        name = body.get("cmd") if isinstance(body, dict) else None
    except (ValueError, UnicodeDecodeError):
        return None
    return name[:64] if isinstance(name, str) else None
