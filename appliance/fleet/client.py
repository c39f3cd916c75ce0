"""The operator's connection to the fleet: retained state, live events, signed requests."""

from __future__ import annotations

import fcntl
import json
import os
import queue
import secrets
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from appliance.common.bounded import BoundsError, load_json
from appliance.contract.broker import (
    ROOT,
    BrokerSettings,
    connect_and_wait,
    make_client,
    split_topic,
    stop,
    topic,
)
from appliance.errors import WardtapError

DEFAULT_VALIDITY_S = 300.0
MAX_MESSAGE_BYTES = 16 << 20      # far above the largest inventory an appliance sends


class SequenceCounter:
    """Strictly increasing command sequence numbers, kept next to the signing key.

    next = max(last + 1, microseconds since the epoch): several operators' numbers stay
    increasing without coordination as long as their clocks roughly agree; the file (locked
    while read and written) keeps one operator's numbers increasing even if the clock
    steps back.
    """

    def __init__(self, path: str) -> None:
        self.path = path

    def next(self) -> int:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            raw = os.read(fd, 64).strip()
            last = int(raw) if raw.isdigit() else 0
            seq = max(last + 1, time.time_ns() // 1000)
            os.lseek(fd, 0, os.SEEK_SET)
            os.ftruncate(fd, 0)
            os.write(fd, str(seq).encode())
            os.fsync(fd)
            return seq
        finally:
            os.close(fd)


def signed_request(private_key: Any, counter: SequenceCounter, site: str, appliance: str,
                   name: str, args: dict[str, Any], validity: float = DEFAULT_VALIDITY_S,
                   issuer: str | None = None) -> bytes:
    from appliance.contract.signing import sign

    now = time.time()
    body = {"v": 1, "cmd": name, "args": args, "target": f"{site}/{appliance}",
            "seq": counter.next(), "issued": now, "expires": now + validity,
            "id": uuid.uuid4().hex, "issuer": issuer or default_issuer()}
    return sign(private_key, body)


def unsigned_request(name: str, args: dict[str, Any]) -> bytes:
    return json.dumps({"cmd": name, "args": args, "id": uuid.uuid4().hex}).encode()


def default_issuer() -> str:
    return f"{os.environ.get('USER', 'operator')}@{socket.gethostname()}"


@dataclass
class Message:
    topic: str
    payload: bytes
    retain: bool
    properties: Any

    def json(self) -> Any:
        """The payload as JSON (bounded: an appliance's message is outside input), or None."""
        try:
            return load_json(self.payload, max_bytes=MAX_MESSAGE_BYTES)
        except BoundsError:
            return None


class FleetClient:
    """One MQTT connection for a fleet command-line tool. A context manager."""

    def __init__(self, settings: BrokerSettings, client_id: str | None = None) -> None:
        self.settings = settings
        self.token = secrets.token_hex(6)
        self.client = make_client(settings, client_id or f"wardtap-fleet-{self.token}")
        self.messages: queue.Queue[Message] = queue.Queue()
        self.responses: dict[bytes, Message] = {}
        self._response_event = threading.Condition()
        self._subacks: dict[int, list[Any]] = {}
        self._subacks_cv = threading.Condition()
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe

    def __enter__(self) -> FleetClient:
        connect_and_wait(self.client, self.settings)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        stop(self.client)

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, codes: Any,
                      props: Any) -> None:
        with self._subacks_cv:
            self._subacks[mid] = [c for c in codes if getattr(c, "is_failure", False)]
            self._subacks_cv.notify_all()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        message = Message(msg.topic, bytes(msg.payload), bool(msg.retain),
                          getattr(msg, "properties", None))
        corr = getattr(message.properties, "CorrelationData", None)
        if corr is not None and "/response/" in msg.topic:
            with self._response_event:
                self.responses[bytes(corr)] = message
                self._response_event.notify_all()
            return
        self.messages.put(message)

    def subscribe(self, filters: Iterable[str], timeout: float = 10.0) -> None:
        for flt in filters:
            rc, mid = self.client.subscribe(flt, qos=1)
            failed = self._wait_suback(mid, timeout)
            if failed is None:
                raise WardtapError(f"the broker did not confirm the subscription to {flt}")
            if failed:
                raise WardtapError(f"the broker refused the subscription to {flt}: "
                                   f"{failed[0]}")

    def _wait_suback(self, mid: int, timeout: float) -> list[Any] | None:
        with self._subacks_cv:
            if not self._subacks_cv.wait_for(lambda: mid in self._subacks, timeout):
                return None
            return self._subacks.pop(mid)

    def retained(self, filters: list[str], quiet: float = 0.4,
                 timeout: float = 5.0) -> dict[str, Message]:
        """The retained messages on `filters`: collected until `quiet` s pass without one."""
        self.subscribe(filters)
        found: dict[str, Message] = {}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                msg = self.messages.get(timeout=quiet)
            except queue.Empty:
                break
            if msg.payload:
                found[msg.topic] = msg
            else:
                found.pop(msg.topic, None)
        for flt in filters:
            self.client.unsubscribe(flt)
        return found

    def appliances(self, site: str | None = None,
                   appliance: str | None = None) -> dict[tuple[str, str], dict[str, Any]]:
        """{(site, appliance): {"state": {...}, "stats": {...}}} from retained messages."""
        s, a = site or "+", appliance or "+"
        out: dict[tuple[str, str], dict[str, Any]] = {}
        for name, msg in self.retained([topic(s, a, "state"), topic(s, a, "stats")]).items():
            parts = split_topic(name)
            body = msg.json()
            if parts is None or not isinstance(body, dict):
                continue
            out.setdefault((parts[0], parts[1]), {})[parts[2]] = body
        return out

    def request(self, targets: list[tuple[str, str]],
                payload_for: Callable[[str, str], bytes],
                timeout: float = 10.0) -> dict[tuple[str, str], dict[str, Any] | None]:
        """Send one request per target (MQTT 5 response topic + correlation data); wait."""
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        self.subscribe([f"{ROOT}/+/+/response/{self.token}"])
        pending: dict[bytes, tuple[str, str]] = {}
        for site, appliance in targets:
            corr = uuid.uuid4().bytes
            props = Properties(PacketTypes.PUBLISH)
            props.ResponseTopic = f"{topic(site, appliance, 'response')}/{self.token}"
            props.CorrelationData = corr
            pending[corr] = (site, appliance)
            info = self.client.publish(topic(site, appliance, "cmd"),
                                       payload_for(site, appliance), qos=1, properties=props)
            info.wait_for_publish(timeout)
        results: dict[tuple[str, str], dict[str, Any] | None] = dict.fromkeys(targets)
        deadline = time.monotonic() + timeout
        with self._response_event:
            while True:
                for corr in [c for c in pending if c in self.responses]:
                    body = self.responses.pop(corr).json()
                    results[pending.pop(corr)] = body if isinstance(body, dict) else {
                        "ok": False, "error": "unreadable response"}
                remaining = deadline - time.monotonic()
                if not pending or remaining <= 0:
                    break
                self._response_event.wait(remaining)
        return results
