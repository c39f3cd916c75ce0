"""Waiting on conditions (never a bare sleep for correctness) and reading mock pin timing."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any


def wait_for(condition: Callable[[], object], timeout: float = 3.0,
             poll: float = 0.005) -> bool:
    """Poll `condition` until it is true or `timeout` passes; return whether it held."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll)


def durations(pin: Any, skip: int = 2) -> list[tuple[bool, float]]:
    """(state, how long it lasted) for each completed state in a MockPin's record.

    MockPin.states[i].timestamp is the time since the previous change, i.e. how long
    states[i-1] lasted. The first `skip` states are dropped (the first is partial: it
    began before clear_states()).
    """
    states = list(pin.states)
    out = [(states[i - 1].state, states[i].timestamp) for i in range(1, len(states))]
    return out[skip:]


def changes(pin: Any) -> int:
    return len(pin.states) - 1


def absolute_edges(pin: Any, t0: float) -> list[tuple[float, bool]]:
    """(monotonic time, new state) of each change, given the time of clear_states()."""
    t = t0
    out = []
    for s in list(pin.states)[1:]:
        t += s.timestamp
        out.append((t, s.state))
    return out


def assert_timing(measured: Sequence[float], expected: float, tol: float = 0.03,
                  each: float | None = None) -> None:
    """The median of `measured` is within `tol` of `expected`, and every value within `each`
    (default: `expected` + 0.15 s): tight on the pattern's period, tolerant of a late
    wake-up or two on a loaded machine (a wrong pattern still moves the median)."""
    each = expected + 0.15 if each is None else each
    assert measured, "nothing measured"
    median = statistics.median(measured)
    assert abs(median - expected) <= tol, (expected, median, list(measured))
    worst = max(measured, key=lambda v: abs(v - expected))
    assert abs(worst - expected) <= each, (expected, worst, list(measured))
