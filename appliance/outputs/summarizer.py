"""Repeated violations of one flow become one summary per window (the fleet's event volume).
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


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
