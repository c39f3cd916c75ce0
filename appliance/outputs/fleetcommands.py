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

from appliance.contract.broker import PAYLOAD_VERSION
from appliance.contract.commands import Command, CommandProcessor, Rejected
from appliance.outputs.audit import AuditLog

log = logging.getLogger("wardtap.mqtt")

Submit = Callable[[dict[str, Any], Callable[[dict[str, Any]], None]], bool]


class FleetCommands:
    """The command side of the MQTT output (its `on_message` for the `cmd` topic)."""

    def __init__(self, output: Any, processor: CommandProcessor, audit: AuditLog,
                 submit: Submit | None) -> None:
        self.output = output           # the MqttOutput: client, topics, settings, clock
        self.processor = processor
        self.audit = audit
        self.submit = submit

    @property
    def topics(self) -> dict[str, str]:
        return self.output.topics  # type: ignore[no-any-return]

    def _reply_topic(self, requested: str | None) -> str | None:
        base = self.topics["response"]
        if not requested:
            return base
        if requested == base or requested.startswith(base + "/"):
            return requested
        return None

    def handle(self, message: Any) -> None:
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
            sha = hashlib.sha256(message.payload).hexdigest()
            self.audit.record("mqtt", None, "rejected", exc.reason, exc.detail, sha,
                              name=_peek_name(message.payload))
            log.warning("mqtt: command rejected: %s: %s", exc.reason, exc.detail)
            self._reply(reply_to, correlation, {"ok": False, "error": exc.reason,
                                                "detail": exc.detail})
            self.output.enqueue_direct({"type": "command_rejected", "ts": self.output.clock(),
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
            self.output.publish_inventory(devices)
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

        body = {"v": PAYLOAD_VERSION, "site": self.output.settings.site,
                "appliance": self.output.settings.appliance, "ts": self.output.clock(), **result}
        if command is not None:
            body.update(cmd=command.name, seq=command.seq, request_id=command.request_id)
        props = Properties(PacketTypes.PUBLISH)
        if correlation:
            props.CorrelationData = correlation
        self.output.client.publish(reply_to, json.dumps(body, separators=(",", ":"), default=str),
                            qos=1, properties=props)


def _peek_name(payload: bytes) -> str | None:
    """The command name of a request that was rejected, if it can be read at all."""
    try:
        body = json.loads(payload)
        name = body.get("cmd") if isinstance(body, dict) else None
    except (ValueError, UnicodeDecodeError):
        return None
    return name[:64] if isinstance(name, str) else None
