"""Commands from the fleet over MQTT: checked, audited, handed to the daemon, answered.

A request on the appliance's `cmd` topic is checked on paho's network thread
(appliance.contract.commands: signature, target, expiry, replay), recorded in the audit log,
and handed to the daemon's main loop through `submit` (the same command table as the local
control socket). The answer goes back on the MQTT 5 response topic with the request's
correlation data, and the audit row gets the outcome. Nothing here may raise into paho: every
failure ends in an audited, answered rejection.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from typing import Any

from appliance.common.bounded import load_json
from appliance.common.ratelog import RateLimitedLog
from appliance.contract.broker import PAYLOAD_VERSION
from appliance.contract.commands import (
    MAX_COMMAND_BYTES,
    MAX_COMMAND_DEPTH,
    Command,
    CommandProcessor,
    Rejected,
)
from appliance.outputs.audit import AuditLog

log = logging.getLogger("wardtap.mqtt")
MAX_TOPIC_BYTES = 1024        # far below MQTT's 65,535; our own response topics are ~60

Submit = Callable[[dict[str, Any], Callable[[dict[str, Any]], None]], bool]


class FleetCommands:
    """The command side of the MQTT output (its `on_message` for the `cmd` topic)."""

    def __init__(self, output: Any, processor: CommandProcessor, audit: AuditLog,
                 submit: Submit | None) -> None:
        self.output = output           # the MqttOutput: client, topics, settings, clock
        self.processor = processor
        self.audit = audit
        self.submit = submit
        self.rejections = RateLimitedLog(log)    # a flood of bad requests: one line a minute

    @property
    def topics(self) -> dict[str, str]:
        return self.output.topics  # type: ignore[no-any-return]

    def _reply_topic(self, requested: Any) -> str | None:
        """The requested response topic when it is one we may publish to: inside our own
        `response` tree, no wildcard, no NUL, at most MAX_TOPIC_BYTES; else None."""
        base = self.topics["response"]
        if requested is None or requested == "":
            return base
        if (not isinstance(requested, str) or len(requested.encode("utf-8", "replace"))
                > MAX_TOPIC_BYTES or any(c in requested for c in "+#\0")):
            return None
        if requested == base or requested.startswith(base + "/"):
            return requested
        return None

    def handle(self, message: Any) -> None:
        """paho's network thread: check, audit, hand over, or reject. Never raises: every
        failure ends in an audited, answered rejection."""
        payload = b""
        try:
            payload = bytes(message.payload or b"")
            self._handle(message, payload)
        except Exception as exc:  # noqa: BLE001  (nothing here may raise into paho)
            log.error("mqtt: command handling failed: %s: %s", type(exc).__name__, exc)
            self._reject(self.topics["response"], None, payload,
                         Rejected("internal_error", f"{type(exc).__name__}: {exc}"))

    def _handle(self, message: Any, payload: bytes) -> None:
        props = getattr(message, "properties", None)
        raw = getattr(props, "CorrelationData", None) if props is not None else None
        correlation = (bytes(raw) if isinstance(raw, bytes | bytearray) and len(raw) <= 65535
                       else None)
        requested = self._reply_topic(getattr(props, "ResponseTopic", None)
                                      if props is not None else None)
        reply_to = requested or self.topics["response"]
        try:
            if requested is None:
                raise Rejected("malformed", "the response topic must be under "
                               f"{self.topics['response']}/, without wildcards (the ACL "
                               "allows nothing else)")
            command = self.processor.check(payload)
        except Rejected as exc:
            self._reject(reply_to, correlation, payload, exc)
            return
        command.audit_id = self.audit.record("mqtt", command, "accepted")
        log.info("mqtt: command %s accepted (seq %s, %s)", command.name, command.seq,
                 "signed" if command.signed else "unsigned")
        if self.submit is None:
            self._finish(command, {"ok": False, "reason": "no_daemon", "error": "this process "
                                   "does not take commands"}, reply_to, correlation)
            return
        if not self.submit(command.body(),
                           lambda result: self._finish(command, result, reply_to, correlation)):
            self._finish(command, {"ok": False, "reason": "busy", "error": "busy"}, reply_to,
                         correlation)

    def _reject(self, reply_to: str, correlation: bytes | None, payload: bytes,
                exc: Rejected) -> None:
        """Audit, log (once per reason and minute), answer and report a rejection; each
        step on its own, so one failing does not keep the others from happening."""
        sha = hashlib.sha256(payload).hexdigest()
        steps: list[tuple[str, Callable[[], Any]]] = [
            ("audit", lambda: self.audit.record("mqtt", None, "rejected", exc.reason,
                                                exc.detail[:1024], sha,
                                                name=_peek_name(payload))),
            ("reply", lambda: self._reply(reply_to, correlation, {
                "ok": False, "error": exc.reason, "detail": exc.detail[:1024]})),
            ("event", lambda: self.output.enqueue_direct({
                "type": "command_rejected", "ts": self.output.clock(), "reason": exc.reason,
                "detail": exc.detail[:1024], "request_sha256": sha})),
        ]
        self.rejections.warning(exc.reason, f"mqtt: command rejected: {exc.reason}: "
                                            f"{exc.detail[:300]}")
        for what, step in steps:
            try:
                step()
            except Exception as err:  # noqa: BLE001  (the other steps still happen)
                log.error("mqtt: rejection %s failed: %s: %s", what, type(err).__name__, err)

    def _finish(self, command: Command, result: dict[str, Any], reply_to: str,
                correlation: bytes | None) -> None:
        """Runs on the daemon's main loop once the command was applied (or refused); the
        audit row gets the real outcome: applied, or rejected with the daemon's reason."""
        result = dict(result)
        try:
            if command.name == "inventory" and result.get("ok"):
                devices = result.pop("devices", [])
                self.output.publish_inventory(devices)
                result["devices"] = len(devices)
                result["topic"] = self.topics["inventory"]
            if command.name == "policy" and result.get("ok") and not result.get("unchanged"):
                self.audit.policy_applied("mqtt", result.get("policy") or {},
                                          command.args.get("policy", ""))
        except Exception as exc:  # noqa: BLE001  (the outcome is still audited and answered)
            log.error("mqtt: after %s: %s: %s", command.name, type(exc).__name__, exc)
        ok = bool(result.get("ok"))
        try:
            if command.audit_id is not None:
                self.audit.finish(command.audit_id, "applied" if ok else "rejected", result,
                                  None if ok else str(result.get("reason") or "refused"),
                                  None if ok else str(result.get("error"))[:1024])
        except Exception as exc:  # noqa: BLE001
            log.error("mqtt: audit of %s failed: %s: %s", command.name, type(exc).__name__, exc)
        try:
            self._reply(reply_to, correlation, result, command)
        except Exception as exc:  # noqa: BLE001
            log.error("mqtt: reply to %s failed: %s: %s", command.name, type(exc).__name__,
                      exc)

    def _reply(self, reply_to: str, correlation: bytes | None, result: dict[str, Any],
               command: Command | None = None) -> None:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        body = {"v": PAYLOAD_VERSION, "site": self.output.settings.site,
                "appliance": self.output.settings.appliance, "ts": self.output.clock(), **result}
        if command is not None:
            body.update(cmd=command.name, seq=command.seq, request_id=command.request_id)
        props = Properties(PacketTypes.PUBLISH)
        if correlation:
            props.CorrelationData = bytes(correlation)
        self.output.client.publish(reply_to, json.dumps(body, separators=(",", ":"), default=str),
                                   qos=1, properties=props)


def _peek_name(payload: bytes) -> str | None:
    """The command name of a request that was rejected, if it can be read at all."""
    try:
        body = load_json(payload, max_bytes=MAX_COMMAND_BYTES, max_depth=MAX_COMMAND_DEPTH)
    except ValueError:
        return None
    name = body.get("cmd") if isinstance(body, dict) else None
    return name[:64] if isinstance(name, str) else None
