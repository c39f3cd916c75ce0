"""The spool sender: one thread moving spooled rows to the broker, deleting them on PUBACK.

At most `window` messages are handed to paho at a time, so paho's memory-only queue never
holds the backlog. A message the broker refuses (reason >= 0x80), or events nobody is
subscribed to (0x10), stay in the spool: they are sent again after a backoff, and nothing
newer is sent until they get through (no busy loop, no reordering of a backlog). Events are
batched into messages: the first event after a quiet spell leaves after `linger` seconds,
later ones share a message at most every `min_interval` seconds unless `batch` are ready.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from appliance.common.ratelog import RateLimitedLog
from appliance.contract.broker import PAYLOAD_VERSION
from appliance.errors import WardtapError
from appliance.outputs.spool import KIND_EVENT, KIND_STATS, Spool

if TYPE_CHECKING:
    from appliance.outputs.settings import ReporterSettings

log = logging.getLogger("wardtap.mqtt")

MAX_MESSAGE_BYTES = 256 * 1024
RETRY_BACKOFF = (1.0, 30.0)
TEND_INTERVAL = 1.0
NO_MATCHING_SUBSCRIBERS = 0x10


class SpoolSender:
    """Spool -> paho client -> PUBACK -> spool row deleted, on a thread of its own."""

    def __init__(self, settings: ReporterSettings, spool: Spool, client: Any,
                 topics: dict[str, str], counters: collections.Counter[str],
                 connected: threading.Event, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.spool = spool
        self.client = client
        self.topics = topics
        self.counters = counters
        self.connected = connected
        self.clock = clock
        self.window = settings.inflight
        self.inflight: dict[int, tuple[str, list[int]]] = {}
        self.final = False                  # closing: send what is left without lingering
        self.stalled = False                # messages waiting for a retry (refused/no one)
        self._acks: collections.deque[tuple[int, int, str]] = collections.deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._probes: set[int] = set()      # mids of a retry round in flight
        self._last_events = float("-inf")   # when the last events message left
        self.failures = RateLimitedLog(log)
        self._thread = threading.Thread(target=self._loop, name="wardtap-mqtt-sender",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def wake(self) -> None:
        self._wake.set()

    def acknowledged(self, mid: int, code: int, why: str) -> None:
        """A PUBACK (paho's network thread)."""
        self._acks.append((mid, code, why))
        self._wake.set()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=timeout)

    def _delivered(self, kind: str, code: int) -> bool:
        """A PUBACK reason code: did the message reach the broker and someone behind it?"""
        if code >= 0x80:
            return False
        return not (code == NO_MATCHING_SUBSCRIBERS and kind == KIND_EVENT
                    and self.settings.require_subscriber)

    def _loop(self) -> None:
        """Acknowledgements in, rows out, until stopped; it survives any error."""
        cursor = 0
        retry: list[int] = []
        retry_at = 0.0
        backoff = RETRY_BACKOFF[0]
        timeout = 1.0
        next_tend = 0.0
        while True:
            self._wake.wait(timeout)
            self._wake.clear()
            timeout = 1.0
            try:
                if time.monotonic() >= next_tend:
                    next_tend = time.monotonic() + TEND_INTERVAL
                    self.spool.tend()      # retries deletions, writes rows held in memory
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
                self.stalled = bool(retry)
                if self._stop.is_set():
                    return
                if not self.connected.is_set():
                    continue
                room = self.window - len(self.inflight)
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
                sent, last_id, wait_linger = self._send(rows, room, final=self.final)
                cursor = max(cursor, last_id)
                if wait_linger is not None:
                    timeout = wait_linger
            except WardtapError as exc:
                self.failures.error("wardtap", f"mqtt sender: {exc}")
                timeout = 1.0
            except Exception as exc:  # noqa: BLE001  (the sender must survive anything)
                self.failures.error(type(exc).__name__, f"mqtt sender failed; retrying: "
                                    f"{type(exc).__name__}: {exc}")
                log.debug("mqtt sender failed", exc_info=True)
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
