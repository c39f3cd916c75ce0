"""sd_notify(3) without libsystemd: one datagram per message to $NOTIFY_SOCKET.

The protocol is newline-separated KEY=VALUE lines in one AF_UNIX datagram. A socket name
starting with "@" is in the abstract namespace (a leading NUL byte). Without NOTIFY_SOCKET
(not under systemd, or Type= is not notify) every call does nothing.

    notifier = Notifier.from_env()
    notifier.send("READY=1", "STATUS=enforcing")
    notifier.watchdog_interval   # WatchdogSec= in seconds (None without a watchdog)
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable


class Notifier:
    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        self.address = address
        self.watchdog_interval = watchdog_usec / 1e6 if watchdog_usec else None
        self._sock: socket.socket | None = None

    @classmethod
    def from_env(cls) -> Notifier:
        usec, pid = os.environ.get("WATCHDOG_USEC", ""), os.environ.get("WATCHDOG_PID", "")
        mine = not pid or pid == str(os.getpid())      # the watchdog is for this process
        return cls(os.environ.get("NOTIFY_SOCKET") or None,
                   int(usec) if usec.isdigit() and mine else None)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *lines: str) -> bool:
        """Send one message; False if there is no socket or it could not be sent."""
        if self.address is None:
            return False
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto("\n".join(lines).encode(), target)
        except OSError:
            return False
        return True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


STATUS_INTERVAL = 5.0


class ServiceNotifier:
    """What the daemon's main loop tells systemd: READY once the datapath is open, STATUS
    every few seconds, WATCHDOG=1 only while the loop is making progress, STOPPING at the end.

    `tick()` runs in the main loop after every batch (idle polls included). It pings the
    watchdog (every WatchdogSec/4) only if the last batch is fresher than WatchdogSec/2 and
    `alive()` (the output threads) holds, so a stalled datapath or a dead reporter thread
    stops the pings and systemd restarts the service (whose ExecStopPost puts the bridge in
    bypass first).
    """

    def __init__(self, notifier: Notifier | None = None,
                 alive: Callable[[], bool] = lambda: True,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.notifier = notifier or Notifier.from_env()
        self.alive = alive
        self.clock = clock
        interval = self.notifier.watchdog_interval
        self.ping_every = interval / 4 if interval else None
        self.fresh_for = interval / 2 if interval else None
        self._next_ping = 0.0
        self._next_status = 0.0
        self.pings = 0

    def ready(self, status: str) -> None:
        self.notifier.send("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def tick(self, last_batch: float, status: Callable[[], str]) -> None:
        if not self.notifier.enabled:
            return
        now = self.clock()
        lines = []
        if (self.ping_every is not None and self.fresh_for is not None
                and now >= self._next_ping and now - last_batch < self.fresh_for
                and self.alive()):
            lines.append("WATCHDOG=1")
            self._next_ping = now + self.ping_every
            self.pings += 1
        if now >= self._next_status:
            lines.append(f"STATUS={status()}")
            self._next_status = now + STATUS_INTERVAL
        if lines:
            self.notifier.send(*lines)

    def stopping(self, status: str = "stopping") -> None:
        self.notifier.send("STOPPING=1", f"STATUS={status}")
        self.notifier.close()
