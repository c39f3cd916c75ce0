"""The pin map: the committed file is valid, and every kind of mistake is one clear error."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import pytest

from appliance.errors import HardwareError, WardtapError
from appliance.panel.pins import (
    BCM_HEADER,
    GROUND,
    HEADER_GPIO,
    LED_NAMES,
    POWER_3V3,
    POWER_5V,
    choose_backend,
    header_pin_kind,
    led_resistor,
    load_pinmap,
    nearest_e12,
    parse_pinmap,
    probe_gpio,
    watchdog_rc,
)

from .conftest import PINMAP

TEXT = PINMAP.read_text(encoding="utf-8")


def test_committed_pinmap_is_valid(pinmap):
    assert [led.name for led in pinmap.leds] == list(LED_NAMES)
    used = pinmap.used()
    bcms = [bcm for _, bcm, _ in used]
    assert len(bcms) == len(set(bcms)) == 9
    reserved = {r.bcm for r in pinmap.reserved} | {0, 1}
    for func, bcm, header in used:
        assert bcm not in reserved, func
        assert HEADER_GPIO[header] == bcm, func
    assert pinmap.button.pull == "up"
    assert {0, 1} <= {r.bcm for r in pinmap.reserved}
    assert pinmap.total_led_ma() <= pinmap.board.total_limit_ma
    for led in pinmap.leds:
        assert led.resistor.current_ma <= pinmap.board.pin_limit_ma
        assert led.line is not None and TEXT.splitlines()[led.line - 1] == f"[leds.{led.name}]"


def test_header_table_matches_gpiozero():
    """Our 40-pin table against gpiozero's own board data, pin by pin."""
    from gpiozero.pins.mock import MockFactory

    board = MockFactory(revision="c03114").board_info   # a Pi 4 B
    for pin in range(1, 41):
        (_, info), = list(board.find_pin(f"BOARD{pin}"))
        kind = header_pin_kind(pin)
        if kind == "gpio":
            assert info.name == f"GPIO{HEADER_GPIO[pin]}", pin
        else:
            assert info.name == {"3v3": "3V3", "5v": "5V", "gnd": "GND"}[kind], pin
    assert set(HEADER_GPIO) | set(POWER_3V3) | set(POWER_5V) | set(GROUND) == set(range(1, 41))
    assert sorted(BCM_HEADER) == list(range(28))


def test_resistor_arithmetic():
    assert nearest_e12(600) == 560
    assert nearest_e12(650) == 680
    assert nearest_e12(700) == 680
    assert nearest_e12(300) == 330
    assert nearest_e12(275) == 270
    assert nearest_e12(1000) == 1000
    assert nearest_e12(472_813) == 470_000
    r = led_resistor(3.3, 2.1, 2.0)
    assert r.ideal_ohms == pytest.approx(600)
    assert r.ohms == 560
    assert r.current_ma == pytest.approx(1.2 / 560 * 1000)
    with pytest.raises(ValueError):
        led_resistor(3.3, 3.4, 2.0)
    rc = watchdog_rc(1.0)
    assert rc.ohms == 470_000 and rc.timeout_s == pytest.approx(0.994, abs=0.001)


def _line_of(text: str, pattern: str, after: str | None = None) -> int:
    lines = text.splitlines()
    start = 0
    if after is not None:
        start = next(i for i, line in enumerate(lines) if line.split("#")[0].strip() == after)
    for i in range(start, len(lines)):
        if re.match(pattern, lines[i].strip()):
            return i + 1
    raise AssertionError(f"{pattern} not found")


def _sub(old: str, new: str, count: int = 1) -> str:
    assert old in TEXT, old
    return TEXT.replace(old, new, count)


# (what, mutated text, entry named, message fragment, (line regex, table it follows))
CASES = [
    ("duplicate pin",
     _sub("bcm = 27\nheader = 13", "bcm = 17\nheader = 11"),
     "leds.learn", "GPIO 17 is already used by leds.health (line",
     (r"bcm = 17", "[leds.learn]")),
    ("built-in reserved pin (ID EEPROM)",
     _sub("bcm = 5                 # pulled up", "bcm = 0                 # pulled up")
     .replace("header = 29", "header = 27"),
     "button", "GPIO 0 is reserved: ID_SD", (r"bcm = 0", "[button]")),
    ("pin reserved by the file (UART)",
     _sub("bcm = 5                 # pulled up", "bcm = 14                # pulled up")
     .replace("header = 29", "header = 8"),
     "button", "GPIO 14 is reserved: UART TXD", (r"bcm = 14", "[button]")),
    ("power pin as header",
     _sub("bcm = 17\nheader = 11", "bcm = 17\nheader = 2"),
     "leds.health.header", "header pin 2 is 5 V power, not a GPIO",
     (r"header = 2", "[leds.health]")),
    ("ground pin as header",
     _sub("bcm = 17\nheader = 11", "bcm = 17\nheader = 39"),
     "leds.health.header", "header pin 39 is ground", (r"header = 39", "[leds.health]")),
    ("header pin of another GPIO",
     _sub("bcm = 17\nheader = 11", "bcm = 17\nheader = 12"),
     "leds.health.header", "header pin 12 is GPIO 18, not GPIO 17 (GPIO 17 is header pin 11)",
     (r"header = 12", "[leds.health]")),
    ("unknown LED name",
     _sub("[leds.health]", "[leds.heath]"),
     "leds.heath", "unknown LED (known: health, learn, violation, broker, bypass)",
     (r"\[leds\.heath\]", None)),
    ("unknown field",
     _sub("meaning = \"broker connection\"", "meaning = \"broker connection\"\nblink = 2"),
     "leds.broker.blink", "unknown field", (r"blink = 2", "[leds.broker]")),
    ("string where an integer belongs",
     _sub("bcm = 22\n", "bcm = \"22\"\n"),
     "leds.violation.bcm", "must be int, not str '22'", (r'bcm = "22"', "[leds.violation]")),
    ("boolean where an integer belongs",
     _sub("bcm = 20\n", "bcm = true\n"),
     "relay.enable.bcm", "must be int, not bool", (r"bcm = true", "[relay.enable]")),
    ("float where an integer belongs",
     _sub("bcm = 21\n", "bcm = 21.0\n"),
     "relay.heartbeat.bcm", "must be int, not float", (r"bcm = 21.0", "[relay.heartbeat]")),
    ("GPIO out of range",
     _sub("bcm = 26\n", "bcm = 40\n"),
     "relay.sense.bcm", "40 is out of range 0..27", (r"bcm = 40", "[relay.sense]")),
    ("colour not known",
     _sub('colour = "amber"', 'colour = "purple"'),
     "leds.learn.colour", "'purple' is not one of", (r'colour = "purple"', "[leds.learn]")),
    ("LED over the per-pin current limit",
     _sub("vf = 1.9\ncurrent_ma = 2.0", "vf = 1.9\ncurrent_ma = 9.5"),
     "leds.violation.current_ma", "exceeds the 8 mA per-pin limit",
     (r"current_ma = 9.5", "[leds.violation]")),
    ("heartbeat too slow for the watchdog",
     _sub("rate_hz = 5.0", "rate_hz = 2.0"),
     "relay.heartbeat.rate_hz", "at least 3 are needed", (r"rate_hz = 2.0", "[relay.heartbeat]")),
    ("unknown relay line",
     _sub("[relay.sense]", "[relay.sens]"),
     "relay.sens", "unknown relay pin", (r"\[relay\.sens\]", None)),
    ("pull-up on the relay enable line",
     _sub('pull = "down"           # pulled down', 'pull = "up"             # pulled down'),
     "relay.enable.pull", "'up' is not one of down", (r'pull = "up"', "[relay.enable]")),
    ("reserved entry with a wrong header pin",
     _sub("bcm = 14\nheader = 8", "bcm = 14\nheader = 10"),
     "reserved[4].header", "header pin 10 is GPIO 15, not GPIO 14",
     (r"header = 10", "[[reserved]]")),
    ("unknown top-level table",
     TEXT + "\n[display]\nbcm = 12\n",
     "display", "unknown entry", (r"\[display\]", None)),
]


@pytest.mark.parametrize("what,text,entry,fragment,where", CASES, ids=[c[0] for c in CASES])
def test_pinmap_errors_name_entry_and_line(what, text, entry, fragment, where):
    with pytest.raises(HardwareError) as info:
        parse_pinmap(text, "hw/pinmap.toml")
    err = info.value
    assert isinstance(err, WardtapError)
    assert err.entry == entry
    assert fragment in str(err)
    pattern, after = where
    if after == "[[reserved]]":
        # the fifth [[reserved]] table (reserved[4])
        lines = text.splitlines()
        starts = [i for i, line in enumerate(lines) if line.strip() == "[[reserved]]"]
        expected = next(i + 1 for i in range(starts[4], len(lines))
                        if re.match(pattern, lines[i].strip()))
    else:
        expected = _line_of(text, pattern, after)
    assert err.line == expected
    assert str(err).startswith(f"hw/pinmap.toml:{expected} [{entry}]: ")
    assert "\n" not in str(err)


def test_missing_led_table():
    start = TEXT.index("[leds.bypass]")
    end = TEXT.index("# ---- front-panel")
    with pytest.raises(HardwareError, match=r"\[leds.bypass\]: missing"):
        parse_pinmap(TEXT[:start] + TEXT[end:], "x.toml")


def test_not_toml_and_missing_file(tmp_path):
    with pytest.raises(HardwareError, match=r"^x.toml:3: not valid TOML"):
        parse_pinmap("schema = 1\n\n[board\n", "x.toml")
    with pytest.raises(HardwareError, match="cannot read the pin map"):
        load_pinmap(tmp_path / "nope.toml")


def test_pinmap_path_from_environment(tmp_path, monkeypatch):
    other = tmp_path / "pins.toml"
    other.write_text(TEXT.replace("bcm = 5 ", "bcm = 6 ").replace("header = 29", "header = 31"))
    monkeypatch.setenv("WARDTAP_PINMAP", str(other))
    assert load_pinmap().button.bcm == 6


# ---- backend choice ---------------------------------------------------------------------

def _libs_present() -> bool:
    import importlib.util

    return any(importlib.util.find_spec(m) for m in ("RPi", "lgpio"))


def test_forced_mock_backend(caplog):
    with caplog.at_level(logging.WARNING, "wardtap.hardware"):
        backend = choose_backend({"WARDTAP_GPIO": "mock"})
    assert backend.name == "mock" and backend.simulated_because is None
    assert type(backend.factory).__name__ == "MockFactory"
    assert not caplog.records


def test_unknown_forced_backend():
    with pytest.raises(HardwareError, match="WARDTAP_GPIO='pigpio' is not a GPIO backend"):
        choose_backend({"WARDTAP_GPIO": "pigpio"})


@pytest.mark.skipif(_libs_present(), reason="a GPIO library is installed here")
@pytest.mark.parametrize("name,fix", [("rpigpio", "rpi-lgpio"), ("lgpio", "python3-lgpio")])
def test_forced_real_backend_fails_with_the_fix(name, fix):
    with pytest.raises(HardwareError) as info:
        choose_backend({"WARDTAP_GPIO": name})
    message = str(info.value)
    assert message.startswith(f"WARDTAP_GPIO={name}: cannot open the GPIO: ")
    assert fix in message and "\n" not in message


def test_gpiozero_variable_is_honoured():
    backend = choose_backend({"GPIOZERO_PIN_FACTORY": "mock"})
    assert type(backend.factory).__name__ == "MockFactory"
    with pytest.raises(HardwareError, match="GPIOZERO_PIN_FACTORY=nonsense"):
        choose_backend({"GPIOZERO_PIN_FACTORY": "nonsense"})


def test_off_a_pi_one_log_line_then_mock(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, "wardtap.hardware"):
        backend = choose_backend({}, dev=str(tmp_path))
    assert backend.name == "mock"
    assert backend.simulated_because == f"no {tmp_path / 'gpiomem'} (not a Raspberry Pi)"
    assert len(caplog.records) == 1
    assert "not a Raspberry Pi" in caplog.records[0].getMessage()
    assert "simulated" in caplog.records[0].getMessage()


def test_no_permission_on_gpiomem(tmp_path, caplog):
    (tmp_path / "gpiomem0").write_bytes(b"")
    assert probe_gpio(str(tmp_path), access=lambda path, mode: True) is None
    with caplog.at_level(logging.WARNING, "wardtap.hardware"):
        backend = choose_backend({}, dev=str(tmp_path), access=lambda path, mode: False)
    assert backend.name == "mock"
    assert "no permission on" in backend.simulated_because
    assert "gpio group" in backend.simulated_because
    assert len(caplog.records) == 1


@pytest.mark.skipif(_libs_present(), reason="a GPIO library is installed here")
def test_gpiomem_but_no_library(tmp_path, caplog):
    (tmp_path / "gpiomem").write_bytes(b"")
    with caplog.at_level(logging.WARNING, "wardtap.hardware"):
        backend = choose_backend({}, dev=str(tmp_path), access=lambda path, mode: True)
    assert backend.name == "mock"
    assert backend.simulated_because.startswith("no GPIO library works (rpigpio: ")
    assert "lgpio: " in backend.simulated_because
    assert len(caplog.records) == 1


def test_dev_probe_on_this_machine():
    """Whatever this machine is, the probe answers without raising."""
    reason = probe_gpio()
    assert reason is None or "gpiomem" in reason
    if not Path("/dev/gpiomem").exists() and not any(
            p.startswith("gpiomem") for p in os.listdir("/dev")):
        assert reason is not None
