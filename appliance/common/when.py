"""Times for people: local time with the zone shown, ages against the right clock, and
points in time typed on a command line.

A live appliance's events are measured against the wall clock; a replayed capture's events
carry the capture's own times, so "5 minutes ago" must be measured against the capture's
clock (its last packet), and the output says which clock it used.
"""

from __future__ import annotations

import re
import time
from datetime import datetime, timedelta

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|d|w)$", re.I)
_UNITS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def local(ts: float | None, seconds: bool = True, zone: bool = True) -> str:
    """`2024-11-28 11:00:05 CET`: local time, with the zone's abbreviation."""
    if ts is None:
        return "-"
    dt = datetime.fromtimestamp(ts).astimezone()
    text = dt.strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M")
    return f"{text} {dt.strftime('%Z') or dt.strftime('%z')}" if zone else text


def zone_name() -> str:
    """The local zone's abbreviation now (UTC, CET...), for table headers."""
    dt = datetime.now().astimezone()
    return dt.strftime("%Z") or dt.strftime("%z")


def iso_local(ts: float | None) -> str:
    """ISO 8601 with the local offset (`2024-11-28T11:00:05+01:00`), for CSV and syslog."""
    if ts is None:
        return ""
    return datetime.fromtimestamp(ts).astimezone().isoformat(timespec="seconds")


def age(ts: float | None, now: float) -> str:
    """How long before `now` `ts` was: "42s ago", "5m ago", "3h ago", "2d ago"."""
    if not ts:
        return "-"
    seconds = max(0.0, now - ts)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit} ago"
    return f"{seconds:.0f}s ago"


class Clock:
    """The clock ages are measured against: the wall clock for live data, or a capture's
    clock (its last packet) for a replay; `label` says which in the output."""

    def __init__(self, now: float | None = None, capture: bool = False) -> None:
        self.capture = capture
        self.now = time.time() if now is None else now

    @classmethod
    def for_times(cls, times: list[float | None], replayed: bool) -> Clock:
        """The capture clock at the latest of `times` when the data came from a replay,
        else the wall clock."""
        known = [t for t in times if t]
        if replayed and known:
            return cls(max(known), capture=True)
        return cls()

    @property
    def label(self) -> str:
        if self.capture:
            return f"ages against the capture's clock (its last packet, {local(self.now)})"
        return f"ages against the wall clock ({local(self.now)})"

    def age(self, ts: float | None) -> str:
        return age(ts, self.now)


def parse_time(text: str, now: float | None = None) -> float:
    """A command line's point in time: "15m"/"2h"/"3d" ago, ISO 8601 (local time unless a
    zone or Z is given; a date alone is its midnight), or seconds since the epoch."""
    value = text.strip()
    now = time.time() if now is None else now
    match = _RELATIVE.match(value)
    if match:
        return now - float(match.group(1)) * _UNITS[match.group(2).lower()]
    if re.fullmatch(r"\d{9,11}(\.\d+)?", value):
        return float(value)
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00").replace(" ", "T", 1))
    except ValueError:
        raise ValueError(f"{text!r} is not a time: give ISO 8601 (2024-11-28T10:00, local "
                         "time unless it ends in Z or +01:00), an age (15m, 2h, 3d) or "
                         "seconds since 1970") from None
    if dt.tzinfo is None:
        dt = dt.astimezone()          # local time
    return dt.timestamp()


def span(seconds: float) -> str:
    """A length of time: "42 s", "5 min", "3 h 10 min"."""
    td = timedelta(seconds=int(seconds))
    if td.days:
        return f"{td.days} d {td.seconds // 3600} h"
    if seconds >= 3600:
        return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60)} min"
    if seconds >= 60:
        return f"{int(seconds // 60)} min {int(seconds % 60)} s"
    return f"{seconds:.0f} s"
