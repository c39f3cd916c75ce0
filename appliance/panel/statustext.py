"""`wardtap status` drawn for a person without rich: the facts of the status document
(appliance.panel.status.view) as label/value lines, coloured with plain ANSI codes on a
terminal (none with NO_COLOR, TERM=dumb or a pipe).

A technician types `wardtap status` and waits for the Python start-up and this module only:
rich costs more to import than the rest of the command (bench/bench_scale.py startup). The
live dashboard (`wardtap top`, appliance.panel.console) draws with rich and takes the small
formatters and the styled pieces (lists of (text, style)) from here, so both say the same.
"""

from __future__ import annotations

import os
import re
import sys
import time
from typing import Any, TextIO

from appliance.common.text import shown
from appliance.common.when import zone_name
from appliance.panel.glyphs import GLYPHS, RICH_COLOURS

STATUS_VIOLATIONS = 5           # violations listed by `wardtap status`
COMPACT_WIDTH = 80              # narrower: the short LED line
LABEL_WIDTH = 12
LED_SHORT = {"violation": "viol"}
PROTOCOLS = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6", 132: "sctp"}
MODE_STYLES = {"enforce": "bold green", "monitor": "bold dark_orange",
               "learn": "bold dark_orange", "bypass": "bold white on red"}
Pieces = list[tuple[str, str]]      # (text, style in rich's words: "bold red", "grey50")

# The styles used here and in the LED line the daemon sends, as ANSI SGR codes.
_SGR = {"bold": "1", "red": "31", "green": "32", "yellow": "33", "dark_orange": "33",
        "orange1": "33", "white": "37", "bright_white": "97", "dodger_blue1": "94",
        "grey50": "90", "grey70": "90", "on_red": "41"}
_MARKUP = re.compile(r"\[([a-z0-9_ ]+)\](.*?)\[/\]")


# -- small formatters (also the dashboard's) -------------------------------------------------

def n(value: int | float | None) -> str:
    return "n/a" if value is None else f"{value:,}"


def size(value: float | None) -> str:
    if value is None:
        return "n/a"
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(value) < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return ""   # not reached


def rate(v: dict[str, Any]) -> str:
    pps = v["rate"]["packets_per_s"]
    if pps is None:
        return "n/a"
    bps = v["rate"]["bytes_per_s"] or 0.0
    return f"{pps:,.1f}/s ({bps * 8 / 1e6:.2f} Mbit/s)"


def uptime(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    s = int(seconds)
    if s < 60:
        return f"{seconds:.0f} s"
    if s < 3600:
        return f"{s // 60} m {s % 60:02d} s"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60:02d} m"
    return f"{s // 86400} d {s % 86400 // 3600:02d} h"


def when(ts: float | None) -> str:
    if ts is None:
        return "?"
    t = time.localtime(ts)
    if t[:3] == time.localtime()[:3]:
        return time.strftime("%H:%M:%S", t)
    return time.strftime("%m-%d %H:%M", t)


def service(e: dict[str, Any]) -> str:
    proto = e.get("proto")
    name = PROTOCOLS.get(proto, str(proto)) if isinstance(proto, int) else str(proto or "?")
    if e.get("dport") is not None:
        return f"{name}/{e['dport']}"
    if e.get("icmp_type") is not None:
        return f"{name} type {e['icmp_type']}"
    return name


# -- styled pieces (also the dashboard's) ----------------------------------------------------

def policy(v: dict[str, Any], short: bool = False) -> Pieces:
    p = v["policy"]
    fault = v.get("policy_fault")
    out = [("none" if not p else shown(
        f"{p['name']} v{p['version']}" if short else
        f"{p['name']} v{p['version']} (generation {p['generation']})"), "")]
    if fault:
        running = ("the last good policy" if fault.get("running") == "last-good"
                   else "none: in bypass")
        out.append((" POLICY FAULT" if short else
                    f"  POLICY FAULT: the policy file was refused, running {running}: "
                    f"{shown(fault.get('error'))}", "bold red"))
    return out


def mode(v: dict[str, Any]) -> Pieces:
    name = str(v["mode"])
    return [(name, MODE_STYLES.get(name, "bold"))]


def health(v: dict[str, Any], short: bool = False) -> Pieces:
    h = v["health"]
    state = h["state"]
    if h.get("integrity_alarm"):
        return [("INTEGRITY ALARM" if short else
                 "INTEGRITY ALARM: a manifest check failed; call the security team",
                 "bold white on red")]
    if state == "ok":
        return [("ok", "bold green")]
    if state == "bypass":
        return [("BYPASS" if short else "BYPASS: ward traffic is not inspected",
                 "bold white on red")]
    if state == "fault":
        failed = h.get("batch_failures", 0)
        return [("FAULT" if short else f"FAULT: {failed} failed batches in the last minute",
                 "bold red")]
    if state == "stalled":
        return [("STALLED" if short else "STALLED: the datapath is not running", "bold red")]
    return [(str(state).upper(), "bold red")]


def broker(v: dict[str, Any], short: bool = False) -> Pieces:
    b = v["broker"]
    if not b["configured"]:
        return [("not configured", "grey50")]
    depth = b["spool_depth"]
    out = [("connected", "bold green") if b["connected"] else ("DISCONNECTED", "bold red")]
    if not short and b["url"]:
        out.append((f" {b['url']}", ""))
    out.append((f", spool {n(depth)}" if short else f", {n(depth)} waiting in the spool", ""))
    if b["spool_overflow"]:
        dropped = sum((b["spool_dropped"] or {}).values())
        out.append((f", OVERFLOW ({dropped:,} dropped)", "bold red"))
    if b.get("spool_disk_full"):
        held = b.get("spool_held_in_memory") or 0
        out.append((f", DISK FULL ({held:,} waiting in memory)", "bold red"))
    return out


# -- wardtap status ----------------------------------------------------------------------------

def colours_wanted(stream: TextIO) -> bool:
    return (stream.isatty() and "NO_COLOR" not in os.environ
            and os.environ.get("TERM") != "dumb")


def _sgr(style: str) -> str:
    return ";".join(_SGR[w] for w in style.replace("on red", "on_red").split() if w in _SGR)


def _styled(pieces: Pieces, colour: bool) -> str:
    """The pieces as one line: their text shown safely (appliance.common.text.shown), each
    style as ANSI codes when `colour`."""
    out = []
    for text, style in pieces:
        sgr = _sgr(style) if colour and style else ""
        out.append(f"\x1b[{sgr}m{shown(text)}\x1b[0m" if sgr else shown(text))
    return "".join(out)


def _markup(line: str) -> Pieces:
    """The daemon's LED line (rich markup: '[green]●[/] health  [grey50]○[/] learn') as
    pieces."""
    pieces: Pieces = []
    at = 0
    for m in _MARKUP.finditer(line):
        pieces += [(line[at:m.start()], ""), (m.group(2), m.group(1))]
        at = m.end()
    return pieces + [(line[at:], "")]


def leds(v: dict[str, Any], compact: bool) -> Pieces:
    """The LEDs as coloured dots: the panel's own line, or a short one for small screens."""
    panel = v["leds"]
    if panel is None:
        return [("no front panel ([panel] enabled = false)", "grey50")]
    if not compact:
        return _markup(str(panel["line"]))
    out: Pieces = []
    for led, value in panel["patterns"].items():
        pattern = "fast blink" if value == "identify" else value if value in GLYPHS else "off"
        colour = RICH_COLOURS.get(panel["colours"].get(led, ""), "white")
        out += [(" " if out else "", ""), (GLYPHS[pattern], "grey50" if pattern == "off"
                                             else colour), (LED_SHORT.get(led, led), "")]
    return out


def _wrap(pieces: Pieces, width: int) -> list[Pieces]:
    """Pieces cut into lines of at most `width` characters, at spaces where it can."""
    words = [(word, style) for text, style in pieces for word in re.split("( )", text) if word]
    lines: list[Pieces] = [[]]
    used = 0
    for word, style in words:
        if used + len(word) > width and used:
            lines.append([])
            used = 0
            if word == " ":
                continue
        while len(word) > width:                  # longer than a line: cut it
            lines[-1].append((word[:width], style))
            lines.append([])
            word = word[width:]
        lines[-1].append((word, style))
        used += len(word)
    return lines


def render(v: dict[str, Any], width: int = 120, colour: bool = False) -> str:
    """The one-shot report: a label/value list, the LEDs and the last violations; every line
    within `width` (values wrapped under their column); on a terminal narrower than 80
    columns the short LED line."""
    c = v["counters"]
    recent = v["violations"]["recent"][:STATUS_VIOLATIONS]
    rows: list[tuple[str, Pieces]] = [
        ("mode", mode(v) + [(f"  datapath {v['datapath']}, up {uptime(v['uptime_s'])}, "
                             f"pid {v['pid']}", "")]),
        ("health", health(v)),
        ("policy", policy(v)),
        ("packets", [(f"{n(c['packets'])} ({size(c['bytes'])}), {rate(v)}"
                      + (f" over {v['rate']['window_s']:g} s" if v["rate"]["window_s"]
                         else ""), "")]),
        ("verdicts", [(f"allowed {n(c['allowed'])}  denied {n(c['denied'])}  "
                       f"malformed {n(c['malformed'])}", "")]),
        ("drops", [(f"kernel {n(c['kernel_drops'])}", "")]),
        ("flows", [(f"{n(v['flows']['active'])} active, {n(v['flows']['created'])} created",
                    "")]),
        ("devices", [(n(v["devices"]), "")]),
        ("broker", broker(v)),
        ("LEDs", leds(v, width < COMPACT_WIDTH)),
        ("violations", [(f"{v['violations']['seen']:,} seen" + (
            f", the latest (times {zone_name()}, the packets' own):" if recent else ""), "")]),
    ]
    lines = []
    value_width = max(8, width - LABEL_WIDTH)
    for label, value in rows:
        for i, part in enumerate(_wrap(value, value_width)):
            head = f"{label:<{LABEL_WIDTH}}" if i == 0 else " " * LABEL_WIDTH
            lines.append(_styled([(head, "bold" if i == 0 else "")] + part, colour))
    for e in recent:
        line = [(when(e.get("ts")), "grey70"), (f" {e.get('src')} → {e.get('dst')} ", ""),
                (service(e), "bold"), (" ", ""), (str(e.get("reason") or ""), "red"),
                (f" vlan {e['vlan']}" if e.get("vlan") else "", "")]
        lines += ["  " + _styled(part, colour) for part in _wrap(line, max(8, width - 2))]
    return "\n".join(lines)


def print_status(v: dict[str, Any], stream: TextIO | None = None) -> None:
    """`wardtap status` for a person: the document drawn (appliance.panel.status), to the
    terminal's width (in a pipe: COLUMNS, or 80)."""
    out = stream or sys.stdout
    columns = os.environ.get("COLUMNS", "")
    try:
        width = os.get_terminal_size(out.fileno()).columns
    except (OSError, ValueError, AttributeError):        # not a terminal
        width = int(columns) if columns.isdigit() else 80
    out.write(render(v, width, colours_wanted(out)) + "\n")
