"""The hardware around the Pi: the pin map and the GPIO backend.

`hardware/pinmap.toml` is the single source of pin numbers (BCM numbering, the physical
header pin beside each). `load_pinmap` validates all of it before anything uses it: unknown
names, bad types, duplicate pins, reserved pins (power, ground, the HAT ID EEPROM bus GPIO 0/1
and whatever the file reserves), a header pin that is not the BCM pin's, an LED current over
the Pi's per-pin or total limit. Each error is a `HardwareError` naming file, line and entry.

The GPIO backend is a gpiozero pin factory, chosen gpiozero's way: an environment variable
or trying each in turn. `WARDTAP_GPIO=mock|rpigpio|lgpio` forces one (failing with the fix
in the message); `GPIOZERO_PIN_FACTORY` (gpiozero's own) is honoured next; otherwise on a Pi
RPi.GPIO (rpi-lgpio provides that module on a Pi 5) then lgpio are tried, and off a Pi (no
/dev/gpiomem, no permission, no GPIO library) one log line says so and gpiozero's
MockFactory simulates the pins. gpiozero is imported only when a pin factory is needed.
"""

from __future__ import annotations

import glob
import importlib
import logging
import math
import os
import re
import threading
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.common.bounded import BoundsError, load_toml
from appliance.common.tomlfile import TomlLines
from appliance.errors import HardwareError

log = logging.getLogger("wardtap.hardware")

# hardware/pinmap.toml, shipped in the package (appliance/data/pinmap.toml links to it)
PACKAGED_PINMAP = Path(__file__).resolve().parent.parent / "data" / "pinmap.toml"
SITE_PINMAP = Path("/etc/wardtap/pinmap.toml")       # if present: a board wired differently

# ---- the 40-pin header (identical on the Pi 4 and Pi 5) ----------------------------------

POWER_3V3 = (1, 17)
POWER_5V = (2, 4)
GROUND = (6, 9, 14, 20, 25, 30, 34, 39)
# physical pin -> BCM GPIO number, for every GPIO on the header
HEADER_GPIO: dict[int, int] = {
    3: 2, 5: 3, 7: 4, 8: 14, 10: 15, 11: 17, 12: 18, 13: 27, 15: 22, 16: 23, 18: 24,
    19: 10, 21: 9, 22: 25, 23: 11, 24: 8, 26: 7, 27: 0, 28: 1, 29: 5, 31: 6, 32: 12,
    33: 13, 35: 19, 36: 16, 37: 26, 38: 20, 40: 21,
}
BCM_HEADER: dict[int, int] = {bcm: pin for pin, bcm in HEADER_GPIO.items()}
# the alternate function each GPIO is known by, for the drawing
ALT_NAMES: dict[int, str] = {
    0: "ID_SD", 1: "ID_SC", 2: "SDA1", 3: "SCL1", 4: "GPCLK0", 7: "CE1", 8: "CE0",
    9: "MISO", 10: "MOSI", 11: "SCLK", 12: "PWM0", 13: "PWM1", 14: "TXD", 15: "RXD",
    18: "PCM_CLK", 19: "PCM_FS", 20: "PCM_DIN", 21: "PCM_DOUT",
}
# reserved whatever the pin map says: the HAT ID EEPROM bus (also the PoE HATs' fan controller)
BUILTIN_RESERVED: dict[int, str] = {
    0: "ID_SD: HAT ID EEPROM bus (and the PoE/PoE+ HAT fan controller)",
    1: "ID_SC: HAT ID EEPROM bus (and the PoE/PoE+ HAT fan controller)",
}

MAX_PINMAP_BYTES = 256 << 10


def header_pin_kind(pin: int) -> str:
    """'3v3', '5v', 'gnd' or 'gpio' for a physical header pin 1-40."""
    if pin in POWER_3V3:
        return "3v3"
    if pin in POWER_5V:
        return "5v"
    if pin in GROUND:
        return "gnd"
    return "gpio"


# ---- LED resistors ------------------------------------------------------------------------

E12 = (1.0, 1.2, 1.5, 1.8, 2.2, 2.7, 3.3, 3.9, 4.7, 5.6, 6.8, 8.2)


def e12_values(lo: float = 10.0, hi: float = 1e6) -> list[float]:
    """Every E12 resistor value in [lo, hi] ohms, ascending."""
    out = []
    decade = 1.0
    while decade <= hi:
        for mantissa in E12:
            value = round(mantissa * decade, 6)
            if lo <= value <= hi:
                out.append(value)
        decade *= 10
    return out


def nearest_e12(ohms: float) -> float:
    """The E12 value nearest to `ohms` on a log scale; a tie goes to the larger (safer) one."""
    if ohms <= 0:
        raise ValueError("resistance must be positive")
    values = e12_values(1.0, 1e7)
    return min(values, key=lambda v: (abs(math.log(v / ohms)), -v))


@dataclass(frozen=True)
class Resistor:
    ideal_ohms: float     # (V - Vf) / I
    ohms: float           # the nearest E12 value
    current_ma: float     # the current it gives at Vf
    power_mw: float       # dissipated in the resistor


def led_resistor(volts: float, vf: float, current_ma: float) -> Resistor:
    """Series resistor for an LED on a GPIO output: R = (V - Vf) / I, nearest E12."""
    if vf >= volts:
        raise ValueError(f"forward voltage {vf} V leaves no headroom at {volts} V")
    ideal = (volts - vf) / (current_ma / 1000.0)
    ohms = nearest_e12(ideal)
    amps = (volts - vf) / ohms
    return Resistor(ideal, ohms, amps * 1000.0, amps * amps * ohms * 1000.0)


# the bypass relay board's watchdog: a 74HCT123 retriggerable monostable, tW = K * R * C
WATCHDOG_K = 0.45          # the datasheet's K for CEXT > 10 nF at 5 V
WATCHDOG_C_UF = 4.7        # film capacitor (low leakage, no DC-bias loss)


@dataclass(frozen=True)
class WatchdogRC:
    ideal_ohms: float
    ohms: float            # nearest E12
    c_uf: float
    timeout_s: float       # what R and C give


def watchdog_rc(timeout_s: float, c_uf: float = WATCHDOG_C_UF,
                k: float = WATCHDOG_K) -> WatchdogRC:
    """Timing resistor of the watchdog monostable for `timeout_s`: R = t / (K * C)."""
    ideal = timeout_s / (k * c_uf * 1e-6)
    ohms = nearest_e12(ideal)
    return WatchdogRC(ideal, ohms, c_uf, k * ohms * c_uf * 1e-6)


# ---- the pin map ---------------------------------------------------------------------------

LED_NAMES = ("health", "learn", "violation", "broker", "bypass")
LED_COLOURS = ("green", "amber", "red", "blue", "white", "yellow", "orange")
RELAY_NAMES = ("enable", "heartbeat", "sense")
PULLS = ("up", "down", "none")


@dataclass(frozen=True)
class Board:
    gpio_volts: float
    pin_limit_ma: float
    total_limit_ma: float


@dataclass(frozen=True)
class LedPin:
    name: str
    bcm: int
    header: int
    colour: str
    vf: float
    current_ma: float
    meaning: str
    wavelength_nm: int | None
    resistor: Resistor
    line: int | None


@dataclass(frozen=True)
class ButtonPin:
    bcm: int
    header: int
    pull: str
    bounce_ms: float
    line: int | None


@dataclass(frozen=True)
class RelayPins:
    enable: int
    enable_header: int
    heartbeat: int
    heartbeat_header: int
    sense: int
    sense_header: int
    heartbeat_rate_hz: float
    watchdog_timeout_s: float


@dataclass(frozen=True)
class Reserved:
    bcm: int
    header: int
    why: str
    line: int | None


@dataclass(frozen=True)
class PinMap:
    path: str
    board: Board
    leds: tuple[LedPin, ...]
    button: ButtonPin
    relay: RelayPins
    reserved: tuple[Reserved, ...]

    def led(self, name: str) -> LedPin:
        for led in self.leds:
            if led.name == name:
                return led
        raise KeyError(name)

    def used(self) -> list[tuple[str, int, int]]:
        """(function, BCM, header pin) of every pin the appliance drives or reads."""
        r = self.relay
        return ([(f"led.{led.name}", led.bcm, led.header) for led in self.leds]
                + [("button", self.button.bcm, self.button.header),
                   ("relay.enable", r.enable, r.enable_header),
                   ("relay.heartbeat", r.heartbeat, r.heartbeat_header),
                   ("relay.sense", r.sense, r.sense_header)])

    def total_led_ma(self) -> float:
        return sum(led.resistor.current_ma for led in self.leds)


@dataclass(frozen=True)
class _Field:
    kind: type | tuple[type, ...]
    required: bool = True
    lo: float | None = None
    hi: float | None = None
    choices: tuple[str, ...] | None = None


_NUM = (int, float)
_PIN_FIELDS = {"bcm": _Field(int, lo=0, hi=27), "header": _Field(int, False, lo=1, hi=40)}
_SECTIONS: dict[str, dict[str, _Field]] = {
    "board": {"gpio_volts": _Field(_NUM, lo=1.8, hi=5.0),
              "pin_limit_ma": _Field(_NUM, lo=0.1, hi=16.0),
              "total_limit_ma": _Field(_NUM, lo=0.1, hi=100.0)},
    "led": {**_PIN_FIELDS, "colour": _Field(str, choices=LED_COLOURS),
            "vf": _Field(_NUM, lo=1.0, hi=4.0), "current_ma": _Field(_NUM, lo=0.1, hi=20.0),
            "meaning": _Field(str), "wavelength_nm": _Field(int, False, lo=300, hi=1000)},
    "button": {**_PIN_FIELDS, "pull": _Field(str, choices=("up",)),
               "bounce_ms": _Field(_NUM, lo=0, hi=500)},
    "relay.enable": {**_PIN_FIELDS, "pull": _Field(str, choices=("down",))},
    "relay.heartbeat": {**_PIN_FIELDS, "rate_hz": _Field(_NUM, lo=0.5, hi=100.0),
                        "watchdog_timeout_s": _Field(_NUM, lo=0.05, hi=60.0)},
    "relay.sense": {**_PIN_FIELDS, "pull": _Field(str, choices=PULLS)},
    "reserved": {**_PIN_FIELDS, "why": _Field(str)},
}
_TOP = {"schema", "board", "leds", "button", "relay", "reserved"}


class _Checker:
    """Validation of one pin map file; every error names the file, line and entry."""

    def __init__(self, path: str, text: str) -> None:
        self.path = path
        self.lines = TomlLines(text)

    def fail(self, entry: str, message: str, header: str | None = None,
             key: str | None = None, nth: int = 0) -> HardwareError:
        line = None
        if header is not None:
            line = (self.lines.key(header, key, nth) if key else self.lines.table(header, nth))
        return HardwareError(message, self.path, line, entry)

    def fields(self, table: Any, spec: Mapping[str, _Field], entry: str, header: str,
               nth: int = 0) -> dict[str, Any]:
        if not isinstance(table, dict):
            raise self.fail(entry, "must be a table", header, nth=nth)
        for key in table:
            if key not in spec:
                known = ", ".join(spec)
                raise self.fail(f"{entry}.{key}", f"unknown field (known: {known})", header,
                                key, nth)
        out: dict[str, Any] = {}
        for key, f in spec.items():
            if key not in table:
                if f.required:
                    raise self.fail(f"{entry}.{key}", "missing", header, nth=nth)
                out[key] = None
                continue
            value = table[key]
            kinds = f.kind if isinstance(f.kind, tuple) else (f.kind,)
            if isinstance(value, bool) or not isinstance(value, kinds):
                want = " or ".join(k.__name__ for k in kinds)
                raise self.fail(f"{entry}.{key}",
                                f"must be {want}, not {type(value).__name__} {value!r}",
                                header, key, nth)
            if isinstance(value, (int, float)) and (
                    f.lo is not None and value < f.lo or f.hi is not None and value > f.hi):
                raise self.fail(f"{entry}.{key}", f"{value} is out of range {f.lo}..{f.hi}",
                                header, key, nth)
            if f.choices is not None and value not in f.choices:
                raise self.fail(f"{entry}.{key}",
                                f"{value!r} is not one of {', '.join(f.choices)}",
                                header, key, nth)
            out[key] = value
        return out

    def header_pin(self, fields: dict[str, Any], entry: str, header: str, nth: int = 0) -> int:
        """The physical pin of an entry, checked against its BCM number."""
        bcm = fields["bcm"]
        expected = BCM_HEADER[bcm]
        pin = fields.get("header")
        if pin is None:
            return expected
        kind = header_pin_kind(pin)
        if kind != "gpio":
            name = {"3v3": "3.3 V power", "5v": "5 V power", "gnd": "ground"}[kind]
            raise self.fail(f"{entry}.header", f"header pin {pin} is {name}, not a GPIO",
                            header, "header", nth)
        if pin != expected:
            raise self.fail(f"{entry}.header",
                            f"header pin {pin} is GPIO {HEADER_GPIO[pin]}, not GPIO {bcm} "
                            f"(GPIO {bcm} is header pin {expected})", header, "header", nth)
        return pin


def default_pinmap_path(env: Mapping[str, str] | None = None) -> Path:
    """$WARDTAP_PINMAP, else /etc/wardtap/pinmap.toml if there is one, else the pin map
    shipped with wardtap (hardware/pinmap.toml)."""
    env = os.environ if env is None else env
    if env.get("WARDTAP_PINMAP"):
        return Path(env["WARDTAP_PINMAP"])
    if SITE_PINMAP.exists():
        return SITE_PINMAP
    return PACKAGED_PINMAP


def load_pinmap(path: str | os.PathLike[str] | None = None) -> PinMap:
    """Read and validate a pin map; nothing of an invalid one is used."""
    p = Path(path) if path is not None else default_pinmap_path()
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise HardwareError(f"cannot read the pin map: {e.strerror or e} (set WARDTAP_PINMAP)",
                            str(p)) from None
    return parse_pinmap(text, str(p))


def parse_pinmap(text: str, path: str = "<pinmap>") -> PinMap:
    try:
        doc = load_toml(text, max_bytes=MAX_PINMAP_BYTES)
    except BoundsError as e:
        raise HardwareError(f"not a usable pin map: {e}", path) from None
    except tomllib.TOMLDecodeError as e:
        found = re.search(r"\(at line (\d+), column \d+\)$", str(e))
        line = getattr(e, "lineno", None) or (int(found.group(1)) if found else None)
        message = str(e)[:found.start()].rstrip() if found else str(e)
        raise HardwareError(f"not valid TOML: {message}", path, line) from None
    c = _Checker(path, text)
    for key in doc:
        if key not in _TOP:
            raise c.fail(key, f"unknown entry (known: {', '.join(sorted(_TOP))})",
                         f"[{key}]" if isinstance(doc[key], dict) else None)
    if doc.get("schema") != 1:
        raise c.fail("schema", "must be 1", None)
    if "board" not in doc:
        raise c.fail("board", "missing", None)
    board_f = c.fields(doc["board"], _SECTIONS["board"], "board", "[board]")
    board = Board(float(board_f["gpio_volts"]), float(board_f["pin_limit_ma"]),
                  float(board_f["total_limit_ma"]))

    # reserved pins: the built-in ones, then the file's
    reserved: list[Reserved] = []
    reserved_by_bcm: dict[int, str] = dict(BUILTIN_RESERVED)
    raw_reserved = doc.get("reserved", [])
    if not isinstance(raw_reserved, list):
        raise c.fail("reserved", "must be an array of tables ([[reserved]])", "[reserved]")
    for i, item in enumerate(raw_reserved):
        entry = f"reserved[{i}]"
        f = c.fields(item, _SECTIONS["reserved"], entry, "[[reserved]]", i)
        pin = c.header_pin(f, entry, "[[reserved]]", i)
        line = c.lines.table("[[reserved]]", i)
        reserved.append(Reserved(f["bcm"], pin, f["why"], line))
        reserved_by_bcm.setdefault(f["bcm"], f["why"])

    used: dict[int, tuple[str, int | None]] = {}

    def claim(entry: str, bcm: int, header: str, nth: int = 0) -> None:
        line = c.lines.key(header, "bcm", nth)
        if bcm in reserved_by_bcm:
            raise HardwareError(f"GPIO {bcm} is reserved: {reserved_by_bcm[bcm]}", path, line,
                                entry)
        if bcm in used:
            other, other_line = used[bcm]
            where = f" (line {other_line})" if other_line else ""
            raise HardwareError(f"GPIO {bcm} is already used by {other}{where}", path, line,
                                entry)
        used[bcm] = (entry, line)

    # LEDs: exactly the five known names
    leds_doc = doc.get("leds")
    if not isinstance(leds_doc, dict):
        raise c.fail("leds", "missing: one [leds.NAME] table per LED", None)
    for name in leds_doc:
        if name not in LED_NAMES:
            raise c.fail(f"leds.{name}", f"unknown LED (known: {', '.join(LED_NAMES)})",
                         f"[leds.{name}]")
    leds: list[LedPin] = []
    for name in LED_NAMES:
        header = f"[leds.{name}]"
        entry = f"leds.{name}"
        if name not in leds_doc:
            raise c.fail(entry, "missing", "[leds]" if c.lines.table("[leds]") else None)
        f = c.fields(leds_doc[name], _SECTIONS["led"], entry, header)
        pin = c.header_pin(f, entry, header)
        claim(entry, f["bcm"], header)
        try:
            res = led_resistor(board.gpio_volts, float(f["vf"]), float(f["current_ma"]))
        except ValueError as e:
            raise c.fail(f"{entry}.vf", str(e), header, "vf") from None
        if res.current_ma > board.pin_limit_ma:
            raise c.fail(f"{entry}.current_ma",
                         f"{res.current_ma:.1f} mA through {res.ohms:g} ohm exceeds the "
                         f"{board.pin_limit_ma:g} mA per-pin limit", header, "current_ma")
        leds.append(LedPin(name, f["bcm"], pin, f["colour"], float(f["vf"]),
                           float(f["current_ma"]), f["meaning"], f["wavelength_nm"], res,
                           c.lines.table(header)))
    total = sum(led.resistor.current_ma for led in leds)
    if total > board.total_limit_ma:
        raise c.fail("leds", f"{total:.1f} mA for all LEDs exceeds the "
                     f"{board.total_limit_ma:g} mA total GPIO limit", "[board]",
                     "total_limit_ma")

    if "button" not in doc:
        raise c.fail("button", "missing", None)
    bf = c.fields(doc["button"], _SECTIONS["button"], "button", "[button]")
    bpin = c.header_pin(bf, "button", "[button]")
    claim("button", bf["bcm"], "[button]")
    button = ButtonPin(bf["bcm"], bpin, bf["pull"], float(bf["bounce_ms"]),
                       c.lines.table("[button]"))

    relay_doc = doc.get("relay")
    if not isinstance(relay_doc, dict):
        raise c.fail("relay", "missing: [relay.enable], [relay.heartbeat], [relay.sense]", None)
    for name in relay_doc:
        if name not in RELAY_NAMES:
            raise c.fail(f"relay.{name}", f"unknown relay pin (known: {', '.join(RELAY_NAMES)})",
                         f"[relay.{name}]")
    rf: dict[str, dict[str, Any]] = {}
    rpins: dict[str, int] = {}
    for name in RELAY_NAMES:
        header = f"[relay.{name}]"
        if name not in relay_doc:
            raise c.fail(f"relay.{name}", "missing", None)
        rf[name] = c.fields(relay_doc[name], _SECTIONS[f"relay.{name}"], f"relay.{name}", header)
        rpins[name] = c.header_pin(rf[name], f"relay.{name}", header)
        claim(f"relay.{name}", rf[name]["bcm"], header)
    hb = rf["heartbeat"]
    edges = float(hb["rate_hz"]) * float(hb["watchdog_timeout_s"])
    if edges < 3:
        raise c.fail("relay.heartbeat.rate_hz",
                     f"{hb['rate_hz']} Hz gives {edges:.1f} rising edges per "
                     f"{hb['watchdog_timeout_s']} s watchdog period; at least 3 are needed",
                     "[relay.heartbeat]", "rate_hz")
    relay = RelayPins(rf["enable"]["bcm"], rpins["enable"], hb["bcm"], rpins["heartbeat"],
                      rf["sense"]["bcm"], rpins["sense"], float(hb["rate_hz"]),
                      float(hb["watchdog_timeout_s"]))
    return PinMap(path, board, tuple(leds), button, relay, tuple(reserved))


# ---- the GPIO backend ----------------------------------------------------------------------

# backend name -> gpiozero pin factory ("module:class"); adding one is one entry here
BACKENDS: dict[str, str] = {
    "rpigpio": "gpiozero.pins.rpigpio:RPiGPIOFactory",
    "lgpio": "gpiozero.pins.lgpio:LGPIOFactory",
    "mock": "gpiozero.pins.mock:MockFactory",
}
AUTO_ORDER = ("rpigpio", "lgpio")
FIXES: dict[str, str] = {
    "rpigpio": "install RPi.GPIO (Pi 4) or rpi-lgpio (Pi 5) and add the user to the gpio group",
    "lgpio": "install lgpio (apt install python3-lgpio) and add the user to the gpio group",
    "mock": "gpiozero's MockFactory should always load: reinstall gpiozero",
}


def open_backend(name: str) -> Any:
    """Construct the pin factory of a named backend; raises whatever the library raises."""
    module, cls = BACKENDS[name].split(":")
    return getattr(importlib.import_module(module), cls)()


def probe_gpio(dev: str = "/dev",
               access: Callable[[str, int], bool] = os.access) -> str | None:
    """Why this machine cannot drive Raspberry Pi GPIO, or None if it looks as if it can.

    A Pi 4 has /dev/gpiomem, a Pi 5 /dev/gpiomem0..4; without one this is not a Pi (or the
    kernel lacks the driver); without read/write permission the user is not in group gpio.
    """
    nodes = sorted(glob.glob(os.path.join(dev, "gpiomem*")))
    if not nodes:
        return f"no {os.path.join(dev, 'gpiomem')} (not a Raspberry Pi)"
    if not any(access(node, os.R_OK | os.W_OK) for node in nodes):
        return f"no permission on {nodes[0]} (add the user to the gpio group)"
    return None


@dataclass(frozen=True)
class Backend:
    factory: Any
    name: str
    simulated_because: str | None = None


def choose_backend(env: Mapping[str, str] | None = None, dev: str = "/dev",
                   access: Callable[[str, int], bool] = os.access) -> Backend:
    """Pick the pin factory: forced by WARDTAP_GPIO or GPIOZERO_PIN_FACTORY, else probe."""
    env = os.environ if env is None else env
    forced = env.get("WARDTAP_GPIO", "").strip().lower()
    if forced and forced != "auto":
        if forced not in BACKENDS:
            raise HardwareError(f"WARDTAP_GPIO={forced!r} is not a GPIO backend; use auto, "
                                f"{', '.join(BACKENDS)}")
        try:
            return Backend(open_backend(forced), forced)
        except Exception as e:  # noqa: BLE001 - any library failure becomes one clear line
            raise HardwareError(f"WARDTAP_GPIO={forced}: cannot open the GPIO: "
                                f"{_one_line(e)}; {FIXES[forced]}") from None
    gz = env.get("GPIOZERO_PIN_FACTORY", "").strip()
    if gz:
        try:
            return Backend(_gpiozero_entry_point(gz), gz.lower())
        except Exception as e:  # noqa: BLE001
            raise HardwareError(f"GPIOZERO_PIN_FACTORY={gz}: cannot open the GPIO: "
                                f"{_one_line(e)}") from None
    reason = probe_gpio(dev, access)
    if reason is None:
        failures = []
        for name in AUTO_ORDER:
            try:
                return Backend(open_backend(name), name)
            except Exception as e:  # noqa: BLE001
                failures.append(f"{name}: {_one_line(e)}")
        reason = "no GPIO library works (" + "; ".join(failures) + ")"
    log.warning("GPIO: %s; LEDs, button and relay heartbeat are simulated (gpiozero "
                "MockFactory)", reason)
    return Backend(open_backend("mock"), "mock", reason)


def _gpiozero_entry_point(name: str) -> Any:
    from importlib.metadata import entry_points

    group = entry_points(group="gpiozero_pin_factories")
    for wanted in (name, name.lower()):
        for ep in group:
            if ep.name == wanted:
                return ep.load()()
    raise LookupError(f"no gpiozero pin factory named {name!r}")


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 200 else text[:197] + "..."


_lock = threading.Lock()
_backend: Backend | None = None


def pin_factory(explicit: Any = None) -> Any:
    """The pin factory devices use: `explicit` if given, else gpiozero's process-wide one,
    choosing (and logging) it on first use like gpiozero does."""
    global _backend
    if explicit is not None:
        return explicit
    from gpiozero import Device

    with _lock:
        if Device.pin_factory is None:
            _backend = choose_backend()
            Device.pin_factory = _backend.factory
        return Device.pin_factory


def backend_name(factory: Any) -> str:
    """Short name of a pin factory's backend: rpigpio, lgpio, mock or its class name."""
    cls = type(factory).__name__
    for name, target in BACKENDS.items():
        if target.endswith(":" + cls):
            return name
    return cls
