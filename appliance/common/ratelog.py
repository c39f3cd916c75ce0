"""Log lines that can repeat thousands of times (a full disk, a flood of bad requests): the
first of a kind is logged at once, the rest are counted and summed up at most once an
interval, so the log stays readable and the disk is not filled by the log itself."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

DEFAULT_INTERVAL = 60.0


class RateLimitedLog:
    """One line per `key` per interval, plus how many were held back. Thread-safe."""

    def __init__(self, logger: logging.Logger, interval: float = DEFAULT_INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.interval = interval
        self.clock = clock
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def log(self, level: int, key: str, message: str) -> bool:
        """Log `message` unless a line of this `key` went out within the interval (then it
        is counted); True when it was logged."""
        now = self.clock()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.interval:
                self._held[key] = self._held.get(key, 0) + 1
                return False
            held = self._held.pop(key, 0)
            self._last[key] = now
        if held:
            since = now - last if last is not None else 0.0
            message += f" ({held:,} more like this in the last {since:.0f} s)"
        self.logger.log(level, "%s", message)
        return True

    def warning(self, key: str, message: str) -> bool:
        return self.log(logging.WARNING, key, message)

    def error(self, key: str, message: str) -> bool:
        return self.log(logging.ERROR, key, message)

    def held(self, key: str) -> int:
        with self._lock:
            return self._held.get(key, 0)
