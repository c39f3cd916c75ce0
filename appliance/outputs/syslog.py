"""Events to a syslog receiver (the hospital's SIEM): RFC 5424 over UDP (RFC 5426), TCP
(RFC 6587, octet-counted frames) or TLS (RFC 5425), or CEF in the same messages.

    [syslog]
    url = "tls://siem.hosp.example:6514"   # udp://HOST:514, tcp://HOST:601, tls://HOST:6514
    format = "rfc5424"                     # or "cef"
    facility = "local0"
    ca = "siem-ca.pem"                     # tls: the receiver's CA (default: the system's)
    cert = "ward4b.pem"                        # tls: a client certificate, when asked for
    key = "ward4b.key"
    types = ["violation", "new_device"]     # default: every event but flow ends

Sending never holds the datapath: publish() formats and queues (bounded; the oldest are
dropped and counted when the receiver is away too long), a thread sends and reconnects with
backoff. close() sends what is queued, for a few seconds at most.
"""

from __future__ import annotations

import collections
import logging
import socket
import ssl
import threading
import urllib.parse
from typing import Any

from appliance.errors import WardtapError
from appliance.outputs.base import FASTPATH_EVENT_TYPES, Output
from appliance.outputs.siem import SyslogFormatter

log = logging.getLogger("wardtap.syslog")

DEFAULT_PORTS = {"udp": 514, "tcp": 601, "tls": 6514}
QUEUE_MAX = 10_000
UDP_MAX = 8192          # bytes: a longer message is cut (RFC 5426 asks receivers for 2048+)
DEFAULT_TYPES = None    # every event type except flow_end (the volume)
CLOSE_WAIT = 5.0


class SyslogError(WardtapError):
    """A syslog destination that cannot be used."""


def parse_syslog_url(url: str) -> tuple[str, str, int]:
    """udp://HOST[:PORT], tcp://HOST[:PORT] or tls://HOST[:PORT] -> (transport, host, port)."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in DEFAULT_PORTS or not parsed.hostname:
        raise SyslogError(f"syslog URL {url!r}: use udp://HOST:514, tcp://HOST:601 or "
                          "tls://HOST:6514")
    try:
        port = parsed.port or DEFAULT_PORTS[parsed.scheme]
    except ValueError:
        raise SyslogError(f"syslog URL {url!r}: bad port") from None
    return parsed.scheme, parsed.hostname, port


class SyslogOutput(Output):
    name = "syslog"

    def __init__(self, url: str, format: str = "rfc5424", facility: str = "local0",
                 ca: str | None = None, cert: str | None = None, key: str | None = None,
                 types: list[str] | None = None, hostname: str | None = None,
                 connect_timeout: float = 5.0) -> None:
        self.transport, self.host, self.port = parse_syslog_url(url)
        self.url = url
        try:
            self.formatter = SyslogFormatter(format, facility, hostname)
        except ValueError as exc:
            raise SyslogError(str(exc)) from None
        if (cert is None) != (key is None):
            raise SyslogError("a syslog client certificate needs both cert and key")
        if (ca or cert) and self.transport != "tls":
            raise SyslogError(f"{url}: certificates need a tls:// URL")
        self.context: ssl.SSLContext | None = None
        if self.transport == "tls":
            try:
                self.context = ssl.create_default_context(cafile=ca)
                if cert:
                    self.context.load_cert_chain(cert, key)
            except (OSError, ssl.SSLError) as exc:
                raise SyslogError(f"syslog TLS: cannot load the CA or certificate: "
                                  f"{getattr(exc, 'reason', None) or exc}") from None
        self.types = set(types) if types else None
        self.event_types = (FASTPATH_EVENT_TYPES & self.types if self.types
                            else FASTPATH_EVENT_TYPES - {"flow_end"})
        self.connect_timeout = connect_timeout
        self.queue: collections.deque[bytes] = collections.deque()
        self.lock = threading.Condition()
        self.counters = {"sent": 0, "dropped": 0, "send_errors": 0}
        self.sock: socket.socket | None = None
        self._stop = threading.Event()
        self._closing = False
        self.thread = threading.Thread(target=self._run, name="wardtap-syslog", daemon=True)
        self.thread.start()

    # -- Output -----------------------------------------------------------------------------

    def publish(self, events: list[dict[str, Any]]) -> None:
        wanted = [e for e in events if (e.get("type") in self.types if self.types
                                        else e.get("type") != "flow_end")]
        if not wanted:
            return
        messages = [self.formatter.format(e) for e in wanted]
        with self.lock:
            for m in messages:
                if len(self.queue) >= QUEUE_MAX:
                    self.queue.popleft()
                    self.counters["dropped"] += 1
                self.queue.append(m)
            self.lock.notify()

    def alive(self) -> bool:
        return self.thread.is_alive() or self._stop.is_set()

    def close(self) -> None:
        if self._stop.is_set():
            return
        with self.lock:
            self._closing = True
            self.lock.notify()
        self.thread.join(CLOSE_WAIT)
        self._stop.set()
        with self.lock:
            self.lock.notify()
        self.thread.join(1.0)
        self._disconnect()
        if self.queue:
            log.warning("syslog: %d messages not sent to %s", len(self.queue), self.url)

    # -- the sender thread ---------------------------------------------------------------------

    def _run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            with self.lock:
                while not self.queue and not self._closing and not self._stop.is_set():
                    self.lock.wait(1.0)
                if not self.queue:
                    if self._closing or self._stop.is_set():
                        return
                    continue
                message = self.queue[0]
            try:
                self._send(message)
            except OSError as exc:
                self.counters["send_errors"] += 1
                self._disconnect()
                if self.counters["send_errors"] in (1, 10) or \
                        self.counters["send_errors"] % 100 == 0:
                    log.error("syslog: cannot send to %s: %s", self.url, exc)
                if self._closing:
                    return
                self._stop.wait(backoff)
                backoff = min(30.0, backoff * 2)
                continue
            backoff = 0.5
            with self.lock:
                if self.queue and self.queue[0] is message:
                    self.queue.popleft()
                self.counters["sent"] += 1

    def _send(self, message: bytes) -> None:
        if self.transport == "udp":
            if self.sock is None:
                family = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_DGRAM)[0]
                self.sock = socket.socket(family[0], socket.SOCK_DGRAM)
                self.sock.connect(family[4])
            self.sock.send(message[:UDP_MAX])
            return
        if self.sock is None:
            sock = socket.create_connection((self.host, self.port), self.connect_timeout)
            if self.context is not None:
                sock = self.context.wrap_socket(sock, server_hostname=self.host)
            sock.settimeout(10.0)
            self.sock = sock
        self.sock.sendall(b"%d %s" % (len(message), message))     # RFC 6587 octet counting

    def _disconnect(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
            self.sock = None
