"""The appliance timeline as plain SVG, drawn on the server (no JavaScript).

Two panels over the same time axis: verdicts (allowed and denied, stacked, from the stats)
and events (violations, then the other events such as new devices, stacked).
Every bar is a link that zooms into its own time span, and the page offers wider ranges,
so the range is zoomable without a script. The template escapes every text.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

WIDTH, PANEL, GAP, LEFT = 960, 110, 30, 64
RANGES = (("1 hour", 3600), ("6 hours", 6 * 3600), ("1 day", 86400), ("7 days", 7 * 86400),
          ("30 days", 30 * 86400))


@dataclass
class Bar:
    x: float
    width: float
    y_allowed: float
    h_allowed: float
    y_denied: float
    h_denied: float
    y_viol: float
    h_viol: float
    y_other: float
    h_other: float
    start: int
    end: int
    title: str


@dataclass
class Plot:
    start: int
    end: int
    step: str
    bars: list[Bar] = field(default_factory=list)
    max_verdicts: int = 0
    max_violations: int = 0
    ticks: list[tuple[float, str]] = field(default_factory=list)
    width: int = WIDTH
    panel: int = PANEL
    gap: int = GAP
    left: int = LEFT

    @property
    def height(self) -> int:
        return 2 * self.panel + self.gap + 24

    @property
    def span(self) -> int:
        return self.end - self.start


def choose_step(start: float, end: float) -> str:
    return "minute" if end - start <= 6 * 3600 else "hour"


def _label(ts: float, span: float) -> str:
    fmt = "%H:%M" if span <= 2 * 86400 else "%m-%d %H:%M"
    return time.strftime(fmt, time.gmtime(ts))


def build(rows: list[dict[str, Any]], start: int, end: int, step: str) -> Plot:
    size = 3600 if step == "hour" else 60
    plot = Plot(start, end, step)
    first, last = start // size, end // size
    n = max(1, last - first + 1)
    inner = WIDTH - LEFT - 8
    slot = inner / n
    plot.max_verdicts = max([int(r["allowed"] or 0) + int(r["denied"] or 0) for r in rows] or [0])
    plot.max_violations = max([max(int(r["violations"] or 0), int(r["events"] or 0))
                               for r in rows] or [0])
    top2 = PANEL + GAP
    for r in rows:
        i = int(r["bucket"]) - first
        if not 0 <= i < n:
            continue
        allowed, denied = int(r["allowed"] or 0), int(r["denied"] or 0)
        viol = int(r["violations"] or 0)
        # events counts each violation event once; a summary event counts many violations
        other = max(0, int(r["events"] or 0) - viol)
        scale_v = (PANEL - 4) / plot.max_verdicts if plot.max_verdicts else 0
        scale_x = (PANEL - 4) / plot.max_violations if plot.max_violations else 0
        h_a, h_d, h_x = allowed * scale_v, denied * scale_v, viol * scale_x
        h_o = min(other * scale_x, PANEL - 4 - h_x)
        b_start = int(r["bucket"]) * size
        plot.bars.append(Bar(
            x=LEFT + i * slot, width=max(1.0, slot * 0.85),
            y_allowed=PANEL - h_a, h_allowed=h_a, y_denied=PANEL - h_a - h_d, h_denied=h_d,
            y_viol=top2 + PANEL - h_x, h_viol=h_x, y_other=top2 + PANEL - h_x - h_o,
            h_other=h_o, start=b_start, end=b_start + size - 1,
            title=(f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime(b_start))} UTC: "
                   f"{allowed:,} allowed, {denied:,} denied, {viol:,} violations, "
                   f"{other:,} other events")))
    for k in range(6):
        ts = start + (end - start) * k / 5
        plot.ticks.append((LEFT + inner * k / 5, _label(ts, end - start)))
    return plot


def zoom_links(start: int, end: int, latest: int) -> dict[str, Any]:
    """Ranges for the page: wider, narrower, earlier, later, and fixed spans ending at
    `latest`."""
    span = max(60, end - start)
    mid = (start + end) // 2
    return {
        "in": (mid - span // 4, mid + span // 4),
        "out": (mid - span, mid + span),
        "earlier": (start - span, end - span),
        "later": (start + span, end + span),
        "ranges": [(label, latest - secs, latest) for label, secs in RANGES],
    }
