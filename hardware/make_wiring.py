#!/usr/bin/env python3
"""Draw hardware/wiring.svg and write hardware/wiring.md from hardware/pinmap.toml.

    .venv/bin/python hardware/make_wiring.py           # regenerate both files
    .venv/bin/python hardware/make_wiring.py --check   # exit 1 if either is out of date

The pin map is the single source of pin numbers; these two files are derived from it (and
from the resistor and watchdog arithmetic in appliance/panel/pins.py), so never edit them by
hand. The output is deterministic: the same pin map gives byte-identical files.
"""

from __future__ import annotations

import argparse
import sys
from html import escape
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:          # run from anywhere, installed or not
    sys.path.insert(0, str(HERE.parent))

from appliance.panel.pins import (  # noqa: E402
    ALT_NAMES,
    GROUND,
    HEADER_GPIO,
    PinMap,
    header_pin_kind,
    load_pinmap,
    watchdog_rc,
)

SVG_PATH = HERE / "wiring.svg"
MD_PATH = HERE / "wiring.md"
PINMAP_PATH = HERE / "pinmap.toml"

FILL = {"green": "#2ecc40", "amber": "#ff9f1c", "red": "#e3342f", "blue": "#1f6feb",
        "white": "#ffffff", "yellow": "#ffdc00", "orange": "#ff851b"}
KIND_FILL = {"3v3": "#f6a04d", "5v": "#c0392b", "gnd": "#222222"}
USED_FILL = {"button": "#8e44ad", "relay.enable": "#16a085", "relay.heartbeat": "#16a085",
             "relay.sense": "#16a085"}
RESERVED_FILL = "#c8c8c8"
FREE_FILL = "#ffffff"
FONT = "DejaVu Sans, Arial, Helvetica, sans-serif"

RELAY_5V_PIN = 4           # the relay board's 5 V supply (pin 2 is the other 5 V pin)

# header geometry
HX_ODD, HX_EVEN, HY0, PITCH, R_PIN = 300, 330, 104, 26, 9
WIDTH, HEIGHT = 1260, 900


def _f(x: float) -> str:
    """Fixed formatting, so the output never depends on float repr details."""
    return f"{x:.1f}".rstrip("0").rstrip(".")


def ohms_text(ohms: float) -> str:
    if ohms >= 1e6:
        return f"{_f(ohms / 1e6)} MΩ"
    if ohms >= 1e3:
        return f"{_f(ohms / 1e3)} kΩ"
    return f"{_f(ohms)} Ω"


def nearest_ground(pins: list[int]) -> int:
    """The ground pin closest (by header row) to a group of pins."""
    rows = [(p - 1) // 2 for p in pins]
    centre = sum(rows) / len(rows)
    return min(GROUND, key=lambda g: (abs((g - 1) // 2 - centre), g))


def ground_pins(pm: PinMap) -> dict[str, int]:
    return {"leds": nearest_ground([led.header for led in pm.leds]),
            "button": nearest_ground([pm.button.header]),
            "relay": nearest_ground([pm.relay.enable_header, pm.relay.heartbeat_header,
                                     pm.relay.sense_header])}


class Svg:
    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.parts: list[str] = []

    def add(self, element: str) -> None:
        self.parts.append("  " + element)

    def text(self, x: float, y: float, s: str, size: int = 11, anchor: str = "start",
             weight: str = "normal", fill: str = "#222") -> None:
        self.add(f'<text x="{_f(x)}" y="{_f(y)}" font-size="{size}" text-anchor="{anchor}" '
                 f'font-weight="{weight}" fill="{fill}">{escape(s)}</text>')

    def line(self, x1: float, y1: float, x2: float, y2: float, width: float = 1.5,
             colour: str = "#222", dash: str | None = None) -> None:
        d = f' stroke-dasharray="{dash}"' if dash else ""
        self.add(f'<line x1="{_f(x1)}" y1="{_f(y1)}" x2="{_f(x2)}" y2="{_f(y2)}" '
                 f'stroke="{colour}" stroke-width="{_f(width)}"{d}/>')

    def rect(self, x: float, y: float, w: float, h: float, fill: str = "none",
             stroke: str = "#222", rx: float = 0) -> None:
        self.add(f'<rect x="{_f(x)}" y="{_f(y)}" width="{_f(w)}" height="{_f(h)}" '
                 f'rx="{_f(rx)}" fill="{fill}" stroke="{stroke}" stroke-width="1.5"/>')

    def circle(self, x: float, y: float, r: float, fill: str, stroke: str = "#222") -> None:
        self.add(f'<circle cx="{_f(x)}" cy="{_f(y)}" r="{_f(r)}" fill="{fill}" '
                 f'stroke="{stroke}" stroke-width="1.2"/>')

    def poly(self, points: list[tuple[float, float]], fill: str) -> None:
        pts = " ".join(f"{_f(x)},{_f(y)}" for x, y in points)
        self.add(f'<polygon points="{pts}" fill="{fill}" stroke="#222" stroke-width="1.5"/>')

    def ground(self, x: float, y: float) -> None:
        self.line(x, y, x, y + 6)
        for i, half in enumerate((9, 6, 3)):
            self.line(x - half, y + 6 + 3 * i, x + half, y + 6 + 3 * i)

    def arrow(self, x1: float, y1: float, x2: float, y2: float) -> None:
        self.line(x1, y1, x2, y2)
        dx, dy = (1, 0) if abs(x2 - x1) >= abs(y2 - y1) else (0, 1)
        sx = 1 if (x2 - x1) * dx + (y2 - y1) * dy >= 0 else -1
        tip = (x2, y2)
        a = (x2 - sx * 7 * dx - 4 * dy, y2 - sx * 7 * dy - 4 * dx)
        b = (x2 - sx * 7 * dx + 4 * dy, y2 - sx * 7 * dy + 4 * dx)
        self.poly([tip, a, b], "#222")

    def render(self) -> str:
        head = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{self.width}" '
                f'height="{self.height}" viewBox="0 0 {self.width} {self.height}" '
                f'font-family="{FONT}">')
        body = "\n".join(self.parts)
        return f'<?xml version="1.0" encoding="UTF-8"?>\n{head}\n{body}\n</svg>\n'


def pin_xy(pin: int) -> tuple[float, float]:
    row = (pin - 1) // 2
    return (HX_ODD if pin % 2 else HX_EVEN), HY0 + row * PITCH


def header_labels(pm: PinMap) -> dict[int, tuple[str, str, str]]:
    """Physical pin -> (label, circle fill, text colour) for all 40 pins."""
    used = {header: (func, bcm) for func, bcm, header in pm.used()}
    reserved = {r.header: r for r in pm.reserved}
    grounds = ground_pins(pm)
    ground_use = {grounds["leds"]: "LED cathodes", grounds["button"]: "button",
                  grounds["relay"]: "relay board"}
    out: dict[int, tuple[str, str, str]] = {}
    for pin in range(1, 41):
        kind = header_pin_kind(pin)
        if kind == "3v3":
            out[pin] = ("3V3", KIND_FILL[kind], "#999")
        elif kind == "5v":
            label = "5V → relay board" if pin == RELAY_5V_PIN else "5V"
            out[pin] = (label, KIND_FILL[kind], "#222" if pin == RELAY_5V_PIN else "#999")
        elif kind == "gnd":
            use = ground_use.get(pin)
            out[pin] = (f"GND → {use}" if use else "GND", KIND_FILL[kind],
                        "#222" if use else "#999")
        elif pin in used:
            func, bcm = used[pin]
            if func.startswith("led."):
                led = pm.led(func[4:])
                fill = FILL[led.colour]
                label = f"GPIO{bcm} · LED {led.name} ({led.colour})"
            else:
                fill = USED_FILL[func]
                label = f"GPIO{bcm} · {func}"
            out[pin] = (label, fill, "#000")
        else:
            bcm = HEADER_GPIO[pin]
            alt = f" {ALT_NAMES[bcm]}" if bcm in ALT_NAMES else ""
            if pin in reserved:
                out[pin] = (f"GPIO{bcm}{alt} (reserved)", RESERVED_FILL, "#888")
            else:
                out[pin] = (f"GPIO{bcm}{alt}", FREE_FILL, "#aaa")
    return out


def render_svg(pm: PinMap) -> str:
    svg = Svg(WIDTH, HEIGHT)
    svg.add(f'<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="#ffffff"/>')
    svg.text(20, 30, "wardtap wiring: Raspberry Pi 4 / 5 40-pin header", 18, weight="bold")
    svg.text(20, 50, "generated by hardware/make_wiring.py from hardware/pinmap.toml; "
             "BCM GPIO numbers, physical pin in the circle; do not edit by hand", 11,
             fill="#555")

    # the header
    svg.rect(HX_ODD - 16, HY0 - 16, HX_EVEN - HX_ODD + 32, 19 * PITCH + 32, "#1d3b2a",
             "#1d3b2a", 4)
    svg.text((HX_ODD + HX_EVEN) / 2, HY0 - 22,
             "pin 1: square pad, the end away from the USB ports", 10, "middle", fill="#555")
    labels = header_labels(pm)
    for pin in range(1, 41):
        x, y = pin_xy(pin)
        label, fill, colour = labels[pin]
        svg.circle(x, y, R_PIN, fill, "#eeeeee" if fill == "#222222" else "#222")
        number_colour = "#ffffff" if fill in ("#222222", "#c0392b", "#1f6feb",
                                              "#8e44ad", "#16a085", "#e3342f") else "#000"
        svg.text(x, y + 3.5, str(pin), 8, "middle", fill=number_colour)
        if pin % 2:
            svg.text(x - 22, y + 4, label, 11, "end", fill=colour)
        else:
            svg.text(x + 22, y + 4, label, 11, "start", fill=colour)

    # legend
    ly = HY0 + 20 * PITCH + 10
    for i, (name, fill) in enumerate((("3V3", KIND_FILL["3v3"]), ("5V", KIND_FILL["5v"]),
                                      ("GND", KIND_FILL["gnd"]), ("LED", FILL["green"]),
                                      ("button", USED_FILL["button"]),
                                      ("relay board", USED_FILL["relay.enable"]),
                                      ("reserved", RESERVED_FILL), ("free", FREE_FILL))):
        x = 40 + (i % 4) * 120
        y = ly + (i // 4) * 22
        svg.circle(x, y, 7, fill)
        svg.text(x + 12, y + 4, name, 11)
    ry = ly + 56
    svg.text(40, ry, "Reserved (kept free; the loader rejects them):", 11, weight="bold")
    for i, r in enumerate(pm.reserved):
        svg.text(40, ry + 16 + i * 15, f"GPIO{r.bcm} (pin {r.header}): {r.why}", 10,
                 fill="#555")

    # LEDs: GPIO -> resistor -> LED -> GND
    grounds = ground_pins(pm)
    x0, y0 = 680, 110
    svg.text(x0, y0 - 18, f"Status LEDs: GPIO → resistor → LED → GND (pin {grounds['leds']}),"
             f" {pm.board.gpio_volts:g} V, active high", 12, weight="bold")
    for i, led in enumerate(pm.leds):
        y = y0 + 14 + i * 46
        svg.text(x0, y - 3, f"{led.name} ({led.colour})", 11, weight="bold")
        svg.text(x0, y + 11, f"GPIO{led.bcm} · pin {led.header}", 10, fill="#555")
        svg.circle(x0 + 128, y, 3, "#222")
        svg.line(x0 + 131, y, x0 + 160, y)
        svg.rect(x0 + 160, y - 7, 50, 14, "#f3e6c4")
        svg.text(x0 + 185, y - 11, ohms_text(led.resistor.ohms), 10, "middle")
        svg.text(x0 + 185, y + 20, f"{led.resistor.current_ma:.1f} mA", 9, "middle",
                 fill="#555")
        svg.line(x0 + 210, y, x0 + 240, y)
        svg.poly([(x0 + 240, y - 9), (x0 + 240, y + 9), (x0 + 256, y)], FILL[led.colour])
        svg.line(x0 + 256, y - 9, x0 + 256, y + 9, 2)
        svg.line(x0 + 244, y - 12, x0 + 252, y - 19, 1)
        svg.line(x0 + 250, y - 11, x0 + 258, y - 18, 1)
        svg.line(x0 + 256, y, x0 + 290, y)
        svg.ground(x0 + 290, y)
        svg.text(x0 + 306, y - 2, f"Vf {led.vf:g} V", 10, fill="#555")
        svg.text(x0 + 306, y + 11, led.meaning, 10, fill="#555")

    # button: GPIO (internal pull-up) -> switch -> GND
    by = y0 + 5 * 46 + 40
    svg.text(x0, by, f"Push button: GPIO{pm.button.bcm} (pin {pm.button.header}) → "
             f"normally-open switch → GND (pin {grounds['button']})", 12, weight="bold")
    y = by + 30
    svg.text(x0, y + 4, f"GPIO{pm.button.bcm} · pin {pm.button.header}", 10, fill="#555")
    svg.circle(x0 + 128, y, 3, "#222")
    svg.line(x0 + 131, y, x0 + 170, y)
    svg.circle(x0 + 172, y, 3, "#ffffff")
    svg.line(x0 + 175, y - 2, x0 + 212, y - 14)
    svg.line(x0 + 194, y - 8, x0 + 194, y - 20)
    svg.line(x0 + 186, y - 20, x0 + 202, y - 20)
    svg.circle(x0 + 215, y, 3, "#ffffff")
    svg.line(x0 + 218, y, x0 + 290, y)
    svg.ground(x0 + 290, y)
    svg.text(x0 + 306, y - 2, f"internal pull-up · {pm.button.bounce_ms:g} ms debounce", 10,
             fill="#555")
    svg.text(x0 + 306, y + 11, "short: acknowledge · hold 5 s: bypass", 10, fill="#555")

    # relay board: heartbeat -> watchdog -> driver -> relays; sense back
    r = pm.relay
    rc = watchdog_rc(r.watchdog_timeout_s)
    ry0 = by + 80
    svg.text(x0, ry0, f"Bypass relay board (hardware/bypass.md): 5 V from pin {RELAY_5V_PIN}, "
             f"GND pin {grounds['relay']}", 12, weight="bold")
    wx, wy = x0 + 170, ry0 + 24
    svg.rect(wx, wy, 150, 96, "#e8f6f3", rx=4)
    svg.text(wx + 75, wy + 18, "74HCT123", 12, "middle", "bold")
    svg.text(wx + 75, wy + 33, "retriggerable", 10, "middle")
    svg.text(wx + 75, wy + 46, "monostable (watchdog)", 10, "middle")
    svg.text(wx + 84, wy + 66, f"R {ohms_text(rc.ohms)} · C {rc.c_uf:g} µF", 10, "middle")
    svg.text(wx + 84, wy + 80, f"timeout ≈ {rc.timeout_s:.2f} s", 10, "middle")
    svg.text(x0, wy + 24, f"heartbeat GPIO{r.heartbeat}", 10)
    svg.text(x0, wy + 36, f"pin {r.heartbeat_header} · {r.heartbeat_rate_hz:g} Hz", 10,
             fill="#555")
    svg.arrow(x0 + 110, wy + 28, wx, wy + 28)
    svg.text(wx + 5, wy + 31, "B↑", 9, fill="#555")
    svg.text(x0, wy + 66, f"enable GPIO{r.enable}", 10)
    svg.text(x0, wy + 78, f"pin {r.enable_header} · high = hold", 10, fill="#555")
    svg.arrow(x0 + 110, wy + 70, wx, wy + 70)
    svg.text(wx + 5, wy + 73, "/CLR", 9, fill="#555")
    dx = wx + 230
    svg.arrow(wx + 150, wy + 48, dx, wy + 48)
    svg.text(wx + 156, wy + 42, "Q", 10)
    svg.rect(dx, wy + 20, 110, 56, "#fdf2e9", rx=4)
    svg.text(dx + 55, wy + 44, "ULN2803A", 12, "middle", "bold")
    svg.text(dx + 55, wy + 60, "8 drivers + clamps", 10, "middle")
    svg.arrow(dx + 55, wy + 76, dx + 55, wy + 112)
    svg.rect(dx - 20, wy + 112, 190, 44, "#fdecea", rx=4)
    svg.text(dx + 75, wy + 131, "8 × DPDT signal relay (5 V coil)", 10, "middle", "bold")
    svg.text(dx + 75, wy + 146, "energised: inline · released: bypass", 9, "middle")
    svg.line(wx + 175, wy + 48, wx + 175, wy + 106)
    svg.rect(wx + 168, wy + 106, 14, 30, "#f3e6c4")
    svg.text(wx + 160, wy + 126, "10k/15k divider", 9, "end", fill="#555")
    svg.line(wx + 175, wy + 136, wx + 175, wy + 148)
    svg.arrow(wx + 175, wy + 148, x0 + 110, wy + 148)
    svg.text(x0, wy + 144, f"sense GPIO{r.sense}", 10)
    svg.text(x0, wy + 156, f"pin {r.sense_header} · high = held", 10, fill="#555")

    ny = wy + 190
    notes = (
        "Fail-open: the relays are held only while enable is high AND heartbeat edges keep",
        "the watchdog triggered. Power loss, a crash, a hang or a stalled datapath releases",
        "them, and their normally-closed contacts join the WARD and UPLINK ports.",
        f"LED current total {pm.total_led_ma():.1f} mA (limit {pm.board.total_limit_ma:g} mA; "
        f"per pin {pm.board.pin_limit_ma:g} mA).",
    )
    for i, note in enumerate(notes):
        svg.text(x0, ny + i * 15, note, 10, fill="#333")
    return svg.render()


def render_md(pm: PinMap) -> str:
    rc = watchdog_rc(pm.relay.watchdog_timeout_s)
    grounds = ground_pins(pm)
    v = pm.board.gpio_volts
    out = [
        "# Wiring",
        "",
        "<!-- generated by hardware/make_wiring.py from hardware/pinmap.toml: edit those, "
        "then run `.venv/bin/python hardware/make_wiring.py` -->",
        "",
        "![wiring](wiring.svg)",
        "",
        "`hardware/pinmap.toml` is the single source of pin numbers; this page and "
        "`wiring.svg` are generated from it, and a test fails while they disagree. BCM "
        "numbering (what gpiozero, RPi.GPIO and lgpio use), the physical header pin beside "
        "it. The Raspberry Pi 4 and 5 have the same 40-pin header.",
        "",
        "## Pins used",
        "",
        "| function | GPIO (BCM) | header pin | direction | notes |",
        "|---|---|---|---|---|",
    ]
    for led in pm.leds:
        out.append(f"| LED {led.name} ({led.colour}) | {led.bcm} | {led.header} | output | "
                   f"{led.meaning}; {ohms_text(led.resistor.ohms)} to the anode |")
    b = pm.button
    out.append(f"| push button | {b.bcm} | {b.header} | input, pull-up | to GND pin "
               f"{grounds['button']}; {b.bounce_ms:g} ms debounce |")
    r = pm.relay
    out += [
        f"| relay enable | {r.enable} | {r.enable_header} | output | high: hold the relays "
        "(inline); low: bypass now; pulled down from reset |",
        f"| relay heartbeat | {r.heartbeat} | {r.heartbeat_header} | output | "
        f"{r.heartbeat_rate_hz:g} Hz square wave into the watchdog (74HCT123 B input) |",
        f"| relay sense | {r.sense} | {r.sense_header} | input, pull-down | watchdog output "
        "through a 10k/15k divider: high = relays held |",
        f"| 5 V | - | {RELAY_5V_PIN} | power | relay board supply (coils, 74HCT123, "
        "ULN2803A) |",
        f"| GND | - | {grounds['leds']} | ground | LED cathodes |",
        f"| GND | - | {grounds['button']} | ground | push button |",
        f"| GND | - | {grounds['relay']} | ground | relay board |",
        "",
        "## Pins kept free",
        "",
        "The loader rejects any use of these, and of the power and ground pins "
        "(3V3: 1, 17; 5V: 2, 4; GND: " + ", ".join(str(g) for g in GROUND) + ").",
        "",
        "| GPIO (BCM) | header pin | why |",
        "|---|---|---|",
    ]
    for res in pm.reserved:
        out.append(f"| {res.bcm} | {res.header} | {res.why} |")
    out += [
        "",
        "Neither the USB 3 gigabit adapter (second Ethernet) nor the official PoE/PoE+ HAT "
        "needs a header GPIO: the adapter is on USB; the HAT takes power from the 4-pin PoE "
        "header beside the RJ45 jack, and its fan controller sits at I2C address 0x51 on the "
        "ID EEPROM bus (GPIO 0/1, `i2c0`), reached by the firmware or by the `rpi-poe` "
        "overlay's `i2c` option. GPIO 0/1 are therefore reserved whatever the pin map says.",
        "",
        "## LED resistors",
        "",
        f"Each LED is driven straight from its GPIO: {v:g} V → resistor → LED → GND. The "
        "resistor sets the current:",
        "",
        "    R = (V_GPIO - V_f) / I        then the nearest E12 value, and I = (V_GPIO - V_f) / R",
        "",
        "V_f is the forward voltage at the design current, from the datasheet's I-V curve "
        "(about 0.2-0.5 V lower at 2 mA than the 20 mA figure on a datasheet's front page).",
        "",
        "| LED | colour | V_f | design I | R = (V - V_f) / I | E12 | actual I | P(R) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for led in pm.leds:
        res = led.resistor
        out.append(f"| {led.name} | {led.colour} | {led.vf:g} V | {led.current_ma:g} mA | "
                   f"({v:g} - {led.vf:g}) / {led.current_ma / 1000:g} = {res.ideal_ohms:.0f} Ω "
                   f"| {ohms_text(res.ohms)} | {res.current_ma:.2f} mA | "
                   f"{res.power_mw:.1f} mW |")
    out += [
        "",
        f"Each LED stays far below the {pm.board.pin_limit_ma:g} mA per pin (the default drive "
        f"strength; the pads allow 16 mA), and all five on draw {pm.total_led_ma():.1f} mA, "
        f"within the {pm.board.total_limit_ma:g} mA for all GPIO outputs together (the loader "
        "checks both). 2 mA is plenty for a high-efficiency indicator LED behind a panel; a "
        "1/8 W resistor is ample.",
        "",
        *headroom_notes(pm),
        "Use a yellow-green (570 nm) LED for health, not an InGaN 'true green' (V_f about "
        "3 V, which leaves almost no headroom at 3.3 V).",
        "",
        "## Watchdog timing",
        "",
        f"The relay board's watchdog is a 74HCT123 retriggerable monostable: each rising "
        f"edge on B restarts its period t = K × R × C (K ≈ 0.45 for C above 10 nF; check the "
        f"datasheet of the part you buy). For t = {pm.relay.watchdog_timeout_s:g} s with "
        f"C = {rc.c_uf:g} µF: R = t / (K × C) = {rc.ideal_ohms / 1000:.0f} kΩ → "
        f"{ohms_text(rc.ohms)} (E12), t = {rc.timeout_s:.2f} s. The heartbeat gives a rising "
        f"edge every {1 / pm.relay.heartbeat_rate_hz:g} s, "
        f"{pm.relay.heartbeat_rate_hz * pm.relay.watchdog_timeout_s:.0f} per period, so a few "
        "late edges (a busy CPU, a GC pause) never drop the relays; the loader requires at "
        "least 3. Use a film capacitor: an electrolytic leaks and a class-2 ceramic loses "
        "capacitance with DC bias.",
        "",
        "## At boot and at power-off",
        "",
        *boot_notes(pm),
        "",
        "See [bypass.md](bypass.md) for the relay board and [bom.csv](bom.csv) for the parts.",
        "",
    ]
    return "\n".join(out)


def headroom_notes(pm: PinMap) -> list[str]:
    """How the current of a low-headroom LED moves with its part's V_f (+-0.2 V)."""
    v = pm.board.gpio_volts
    tight = [led for led in pm.leds if v - led.vf < 0.8]
    if not tight:
        return []
    parts = []
    for led in tight:
        lo = (v - (led.vf + 0.2)) / led.resistor.ohms * 1000
        hi = (v - (led.vf - 0.2)) / led.resistor.ohms * 1000
        parts.append(f"{led.name} ({led.colour}, {ohms_text(led.resistor.ohms)}): "
                     f"{max(lo, 0):.1f} mA at V_f {led.vf + 0.2:g} V, {hi:.1f} mA at "
                     f"V_f {led.vf - 0.2:g} V")
    return [f"LEDs with less than 0.8 V of headroom at {v:g} V vary with the part's V_f: "
            + "; ".join(parts) + ". Dimmer at the high end, never over the per-pin limit "
            "at the low end.", ""]


def default_pull(bcm: int) -> str:
    """The BCM2711 (Pi 4) pull from reset: GPIO 0-8 up, 9-27 down."""
    return "up" if bcm <= 8 else "down"


def boot_notes(pm: PinMap) -> list[str]:
    r, b = pm.relay, pm.button
    return [
        "- The relays are held only while enable is high and the watchdog is being "
        "triggered, so every pin state at reset, during boot or after a crash means bypass.",
        f"- On a Pi 4 (BCM2711) GPIO 0-8 are pulled up from reset and 9-27 pulled down: "
        f"enable (GPIO {r.enable}) is pulled {default_pull(r.enable)}, the button "
        f"(GPIO {b.bcm}) pulled {default_pull(b.bcm)}, the heartbeat (GPIO {r.heartbeat}) "
        f"pulled {default_pull(r.heartbeat)}. The Pi 5's RP1 has its own reset defaults; "
        "the design does not depend on them (see the line above).",
        "- The LEDs stay dark until the software starts (their GPIOs are inputs until then).",
    ]


def outputs(pm: PinMap) -> dict[Path, str]:
    return {SVG_PATH: render_svg(pm), MD_PATH: render_md(pm)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true",
                    help="exit 1 if wiring.svg or wiring.md is out of date")
    ap.add_argument("--pinmap", default=str(PINMAP_PATH))
    args = ap.parse_args(argv)
    pm = load_pinmap(args.pinmap)
    stale = []
    for path, text in outputs(pm).items():
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == text:
            continue
        if args.check:
            stale.append(path.name)
        else:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}")
    if stale:
        print(f"out of date: {', '.join(stale)}; run hardware/make_wiring.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
