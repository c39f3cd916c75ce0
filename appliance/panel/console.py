"""The technician's console: `wardtap top` (live dashboard); `wardtap status` (one shot) is
drawn without rich by appliance.panel.statustext, whose formatters this module shares.

Both ask the running daemon for its `status` over the control socket (appliance.common.control)
and show the same facts: mode, health, datapath counters, packets per second, flows,
devices, recent violations, the fleet broker and the LEDs. `view()` turns the daemon's
answer into the stable document that `wardtap status --json` prints (docs/console.md).

`top` is meant for a wiring closet over SSH: it redraws once a second on the alternate
screen, switches to a one-column layout on a terminal narrower than 80 or shorter than 24
lines (every line cut to the width, never wrapped into the next), shows "not running" and
keeps retrying when the daemon goes away, and restores the terminal on q, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from appliance.common.control import request
from appliance.errors import WardtapError
from appliance.panel import statustext as st
from appliance.panel.status import BUSY, REQUEST_TIMEOUT, SCHEMA, view  # noqa: F401

COMPACT_WIDTH, COMPACT_HEIGHT = 80, 24
SPARK = "▁▂▃▄▅▆▇█"
LED_SHORT = {"violation": "viol"}


def _spark(history: list[float], width: int) -> str:
    values = history[-width:] if width > 0 else []
    top = max(values, default=0.0)
    if not values or top <= 0:
        return SPARK[0] * len(values)
    return "".join(SPARK[min(len(SPARK) - 1, int(x / top * (len(SPARK) - 1) + 0.5))]
                   for x in values)


# -- pieces shared with `wardtap status` (appliance.panel.statustext) -----------------------

def _policy(v: dict[str, Any], short: bool = False) -> Text:
    return Text.assemble(*st.policy(v, short))


def _mode(v: dict[str, Any]) -> Text:
    return Text.assemble(*st.mode(v))


def _health(v: dict[str, Any], short: bool = False) -> Text:
    return Text.assemble(*st.health(v, short))


def _broker(v: dict[str, Any], short: bool = False) -> Text:
    return Text.assemble(*st.broker(v, short))


def _violation_line(e: dict[str, Any]) -> Text:
    """One violation on one line, the most telling first (a narrow screen cuts the end)."""
    return Text.assemble(
        str(e.get("src")), "→", str(e.get("dst")), " ", (st.service(e), "bold"), " ",
        (str(e.get("reason") or ""), "red"), (f" vlan {e['vlan']}" if e.get("vlan") else ""),
        " ", (st.when(e.get("ts")), "grey70"))


def _led_markup(v: dict[str, Any], compact: bool) -> str:
    """The LEDs as coloured dots: the panel's own line, or a short one for small screens."""
    leds = v["leds"]
    if leds is None:
        return "[grey50]no front panel ([panel] enabled = false)[/]"
    if not compact:
        return str(leds["line"])
    from appliance.panel.leds import RICH_COLOURS, SYMBOLS, Pattern

    parts = []
    for led, value in leds["patterns"].items():
        try:
            pattern = Pattern.FAST if value == "identify" else Pattern(value)
        except ValueError:
            pattern = Pattern.OFF
        colour = RICH_COLOURS.get(leds["colours"].get(led, ""), "white")
        style = "grey50" if pattern is Pattern.OFF else colour
        parts.append(f"[{style}]{SYMBOLS[pattern]}[/]{LED_SHORT.get(led, led)}")
    return " ".join(parts)


# -- wardtap top ------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)   # compared by identity: a new answer is a new frame
class Snapshot:
    """What the dashboard shows: the state of the last request and the data to show."""

    state: str                            # ok | busy | error | down | starting
    view: dict[str, Any] | None = None    # current (ok) or the last good one (busy)
    problem: str | None = None
    at: float = field(default_factory=time.time)      # when the request finished
    good_at: float | None = None                     # when the data shown was fetched


def fetch(socket_path: str, last: Snapshot | None = None) -> Snapshot:
    """One status request; never raises for a missing or busy daemon."""
    try:
        answer = request(socket_path, {"cmd": "status"}, timeout=REQUEST_TIMEOUT)
    except WardtapError as exc:
        return Snapshot("down", problem=str(exc))
    if answer.get("ok"):
        now = time.time()
        return Snapshot("ok", view(answer), at=now, good_at=now)
    if answer.get("error") == "busy":
        return Snapshot("busy", last.view if last else None, BUSY,
                        good_at=last.good_at if last else None)
    return Snapshot("error", problem=f"the daemon answered: {answer.get('error')}")


class _Poller(threading.Thread):
    """Asks the daemon once per interval, so the screen never waits on the socket; writes a
    byte to `wake` after each answer."""

    def __init__(self, socket_path: str, interval: float, wake: int) -> None:
        super().__init__(name="wardtap-top", daemon=True)
        self.socket_path = socket_path
        self.interval = interval
        self.wake = wake
        self.stop = threading.Event()
        self.snapshot = Snapshot("starting", problem=f"asking the daemon on {socket_path}")

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                started = time.monotonic()
                try:
                    self.snapshot = fetch(self.socket_path, self.snapshot)
                except Exception as exc:  # noqa: BLE001  (the screen must go on, saying why)
                    self.snapshot = Snapshot("error", problem=f"{type(exc).__name__}: {exc}")
                try:
                    os.write(self.wake, b".")
                except OSError:          # full (the screen is behind) or closed (quitting)
                    pass
                self.stop.wait(max(0.0, self.interval - (time.monotonic() - started)))
        finally:
            os.close(self.wake)


def dashboard(snap: Snapshot, console: Console, socket_path: str, interval: float = 1.0,
              live: bool = True) -> RenderableType:
    """One frame for the console's current size: wide (two columns) or compact."""
    width, height = console.size
    if width < COMPACT_WIDTH or height < COMPACT_HEIGHT:
        return _compact(snap, console, width, height, live)
    return _wide(snap, socket_path, interval, width, height, live)


def _line(*parts: str | Text | tuple[str, str], style: str = "") -> Text:
    text = Text.assemble(*parts, style=style)
    text.no_wrap = True
    text.overflow = "ellipsis"
    return text


def _banner(snap: Snapshot, live: bool) -> Text | None:
    if snap.state == "ok":
        return None
    if snap.state == "busy":
        since = f" (data from {time.strftime('%H:%M:%S', time.localtime(snap.good_at))})" \
            if snap.good_at and snap.view else ""
        return Text(f"BUSY: {snap.problem}{since}", style="bold white on red")
    if snap.state == "starting":
        return Text(str(snap.problem), style="grey70")
    return Text(f"{snap.problem}{'; retrying every second' if live else ''}",
                style="bold red")


def _header(snap: Snapshot, short: bool) -> Text:
    v = snap.view
    head = Text(" wardtap ", style="bold reverse")
    if v is None:
        state = {"down": "NOT RUNNING", "error": "ERROR", "busy": "BUSY"}.get(snap.state, "…")
        return _line(head, " ", (state, "bold red"))
    parts: list[str | Text | tuple[str, str]] = [head, " ", _mode(v), "  ", _health(v, short)]
    if snap.state == "busy":
        parts += ["  ", ("BUSY", "bold white on red")]
    if not short:
        parts += [f"  up {st.uptime(v['uptime_s'])}  policy ", _policy(v)]
    return _line(*parts)


def _compact(snap: Snapshot, console: Console, width: int, height: int,
             live: bool) -> RenderableType:
    """One column, one fact per line, each cut to the width; as many violations as fit."""
    lines: list[Text] = [_header(snap, short=True)]
    banner = _banner(snap, live)
    if banner is not None:
        lines.extend(banner.wrap(console, max(1, width)))
    v = snap.view
    if v is not None:
        c = v["counters"]
        pps = v["rate"]["packets_per_s"]
        lines += [
            _line(("pkts ", "bold"), st.n(c["packets"]),
                  f"  {'n/a' if pps is None else f'{pps:,.1f}'}/s  {st.size(c['bytes'])}"),
            _line(("allow ", "bold"), st.n(c["allowed"]), ("  deny ", "bold"),
                  (st.n(c["denied"]), "red" if c["denied"] else ""), ("  malf ", "bold"),
                  st.n(c["malformed"])),
            _line(("flows ", "bold"), f"{st.n(v['flows']['active'])}/{st.n(v['flows']['created'])}",
                  ("  dev ", "bold"), st.n(v["devices"]), ("  drops ", "bold"),
                  st.n(c["kernel_drops"])),
            _line(("broker ", "bold"), _broker(v, short=True)),
            _line(Text.from_markup(_led_markup(v, compact=True))),
        ]
        seen = v["violations"]["seen"]
        lines.append(_line(("violations ", "bold"), f"{seen:,}"))
        room = height - 1 - len(lines)
        lines += [_line(_violation_line(e)) for e in v["violations"]["recent"][:max(0, room)]]
    lines = lines[:max(1, height - 1)]
    footer = _line(" q quit " if live else " wardtap top --once ", style="reverse")
    return Group(*lines, footer)


def _wide(snap: Snapshot, socket_path: str, interval: float, width: int, height: int,
          live: bool) -> RenderableType:
    # top's wide screen only: `wardtap status` draws without it (rich.layout loads rich.pretty)
    from rich.layout import Layout

    layout = Layout()
    header = Layout(_header(snap, short=False), size=1)
    footer = Layout(_line((" q quit " if live else " wardtap top --once ", "reverse"),
                          (f"  refresh every {interval:g} s · " if live else "  ", "grey50"),
                          (socket_path, "grey50")), size=1)
    banner = _banner(snap, live)
    v = snap.view
    if v is None:
        body = Panel(Text(str(banner or ""), justify="center"), border_style="red",
                     title="wardtap")
        layout.split_column(header, Layout(body), footer)
        return layout
    parts = [header]
    if banner is not None:
        parts.append(Layout(_line(banner), size=1))
    c = v["counters"]
    # labels keep their width (a value is cut, with an ellipsis, never a label)
    left = Table.grid(padding=(0, 1))
    left.add_column(style="bold", no_wrap=True, min_width=len("kernel drops"))
    left.add_column(no_wrap=True, overflow="ellipsis")
    pps = v["rate"]["packets_per_s"]
    left.add_row("packets", st.n(c["packets"]))
    left.add_row("bytes", st.size(c["bytes"]))
    left.add_row("packets/s", Text.assemble("n/a" if pps is None else f"{pps:,.1f} ",
                                            (_spark(v["rate"]["history"], 20), "cyan")))
    left.add_row("allowed", st.n(c["allowed"]))
    left.add_row("denied", Text(st.n(c["denied"]), style="red" if c["denied"] else ""))
    left.add_row("malformed", st.n(c["malformed"]))
    left.add_row("kernel drops", st.n(c["kernel_drops"]))
    left.add_row("flows", f"{st.n(v['flows']['active'])} active / "
                 f"{st.n(v['flows']['created'])} created")
    left.add_row("devices", st.n(v["devices"]))
    right = Table.grid(padding=(0, 1))
    right.add_column(style="bold", no_wrap=True, min_width=len("violations"))
    right.add_column(no_wrap=True, overflow="ellipsis")
    right.add_row("mode", _mode(v))
    right.add_row("health", _health(v))
    right.add_row("policy", _policy(v, short=True))
    right.add_row("datapath", Text(str(v["datapath"])))
    right.add_row("uptime", st.uptime(v["uptime_s"]))
    right.add_row("broker", _broker(v))
    right.add_row("violations", f"{v['violations']['seen']:,} seen")
    top = Layout(size=11)
    top.split_row(Layout(Panel(left, title="datapath", border_style="grey50")),
                  Layout(Panel(right, title="appliance", border_style="grey50")))
    leds = Layout(Panel(_line(Text.from_markup(_led_markup(v, compact=False))), title="LEDs",
                        border_style="grey50"), size=3)
    room = height - sum(p.size or 0 for p in parts) - 11 - 3 - 1 - 3
    table = Table(expand=True, box=None, padding=(0, 1), header_style="bold")
    with_mac = width >= 110         # at 80 columns the addresses matter more than the MAC
    for name, least in (("time", 11), ("from", 15), ("to", 15), ("service", 8),
                        ("reason", 7), ("vlan", 4), ("mac", 17)):
        if name != "mac" or with_mac:
            table.add_column(name, no_wrap=True, overflow="ellipsis", min_width=least)
    for e in v["violations"]["recent"][:max(0, room)]:
        cells: list[str | Text] = [
            st.when(e.get("ts")), Text(str(e.get("src"))), Text(str(e.get("dst"))), st.service(e),
            Text(str(e.get("reason") or ""), style="red"), str(e["vlan"]) if e.get("vlan") else ""]
        table.add_row(*cells, *([str(e.get("smac") or "")] if with_mac else []))
    violations = Layout(Panel(table, title="recent violations", border_style="grey50"))
    layout.split_column(*parts, top, leds, violations, footer)
    return layout


def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def run_top(socket_path: str, once: bool = False, interval: float = 1.0) -> int:
    """`wardtap top`. --once: one frame, exit 0 (answered), 1 (busy) or 2 (not running)."""
    console = Console(highlight=False)
    if once:
        snap = fetch(socket_path)
        console.print(dashboard(snap, console, socket_path, interval, live=False))
        if snap.state != "ok" and not sys.stderr.isatty():   # a terminal shows the frame
            print(f"wardtap: error: {snap.problem}", file=sys.stderr)
        return {"ok": 0, "busy": 1, "error": 1}.get(snap.state, 2)
    if not console.is_terminal:
        raise WardtapError("top needs a terminal; in scripts use `wardtap top --once` or "
                           "`wardtap status --json`")
    from rich.live import Live

    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    poller = _Poller(socket_path, interval, wake_w)
    keys = sys.stdin.fileno() if sys.stdin.isatty() else None
    saved = None
    previous = signal.signal(signal.SIGTERM, _terminate)
    # Ctrl-C quits even when started with SIGINT ignored (e.g. from a background job)
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        if keys is not None:
            import termios
            import tty

            saved = termios.tcgetattr(keys)
            tty.setcbreak(keys, termios.TCSANOW)   # keys one by one, no echo; Ctrl-C stays
        poller.start()
        with Live(console=console, screen=True, auto_refresh=False, redirect_stdout=False,
                  redirect_stderr=False) as live:
            shown: tuple[Snapshot, Any] | None = None
            while True:
                now = (poller.snapshot, console.size)
                if now != shown:     # a new answer or a resized terminal
                    live.update(dashboard(now[0], console, socket_path, interval),
                                refresh=True)
                    shown = now
                ready, _, _ = select.select([wake_r] + ([keys] if keys is not None else []),
                                            [], [], 0.25)
                if wake_r in ready:
                    os.read(wake_r, 4096)
                if keys is not None and keys in ready:
                    typed = os.read(keys, 64)
                    if not typed or b"q" in typed.lower() or b"\x03" in typed:
                        break
    except KeyboardInterrupt:
        pass
    finally:
        poller.stop.set()
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)
        if saved is not None and keys is not None:
            import termios

            termios.tcsetattr(keys, termios.TCSADRAIN, saved)
        os.close(wake_r)
        if poller.ident is None:
            os.close(wake_w)          # never started; otherwise the poller closes it
    return 0
