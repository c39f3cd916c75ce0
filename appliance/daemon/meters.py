"""Two small meters of the running daemon: the packet rate the console shows, and the
identify budget that keeps a repeated `identify` from blinking the panel for hours."""

from __future__ import annotations

import collections
import time
from typing import Any

# The console (wardtap status/top): counters sampled once a second for packets/s (the last
# minute kept, the rate averaged over the last few samples).
RATE_INTERVAL = 1.0
RATE_SAMPLES = 61
RATE_WINDOW = 5
# identify: a request blinks at most IDENTIFY_MAX_S (appliance.contract.commands); all of them
# together at most this long per hour.
IDENTIFY_BUDGET_S = 900.0
IDENTIFY_WINDOW_S = 3600.0


class RateMeter:
    """(monotonic time, packets, bytes) once a second; rates from them."""

    def __init__(self) -> None:
        self.samples: collections.deque[tuple[float, int, int]] = collections.deque(
            maxlen=RATE_SAMPLES)

    def sample(self, stats: dict[str, Any]) -> None:
        self.samples.append((time.monotonic(), int(stats["packets"]), int(stats["bytes"])))

    def rate(self, stats: dict[str, Any]) -> dict[str, Any]:
        """Packets and bytes per second from the sample about RATE_WINDOW seconds old to the
        counters now, and packets per second for each second of the last minute."""
        samples = list(self.samples)
        history = [round((b[1] - a[1]) / (b[0] - a[0]), 1)
                   for a, b in zip(samples, samples[1:], strict=False) if b[0] > a[0]]
        now = time.monotonic()
        t0, p0, b0 = samples[-RATE_WINDOW] if len(samples) >= RATE_WINDOW else (
            samples[0] if samples else (now, 0, 0))
        if now - t0 < 0.1:
            return {"packets_per_s": None, "bytes_per_s": None, "window_s": None,
                    "history": history}
        return {"packets_per_s": round((int(stats["packets"]) - p0) / (now - t0), 1),
                "bytes_per_s": round((int(stats["bytes"]) - b0) / (now - t0), 1),
                "window_s": round(now - t0, 1), "history": history}


class IdentifyBudget:
    """At most IDENTIFY_BUDGET_S seconds of identify asked for per IDENTIFY_WINDOW_S."""

    def __init__(self, budget: float = IDENTIFY_BUDGET_S,
                 window: float = IDENTIFY_WINDOW_S) -> None:
        self.budget = budget
        self.window = window
        self.spent: list[tuple[float, float]] = []    # (monotonic start, seconds asked)

    def take(self, seconds: float) -> str | None:
        """Book `seconds` now; or say why not (None: booked)."""
        now = time.monotonic()
        self.spent = [(t, s) for t, s in self.spent if now - t < self.window]
        used = sum(s for _, s in self.spent)       # what was asked for, however it ended
        if used + seconds > self.budget:
            return (f"identify was asked for {used:.0f} s in the last {self.window / 60:g} "
                    f"min; at most {self.budget:g} s")
        self.spent.append((now, seconds))
        return None
