"""hardware/wiring.svg and wiring.md are generated from the pin map and committed up to date;
the bill of materials parses, has both builds, and agrees with the computed values."""

from __future__ import annotations

import csv
import importlib.util
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections import Counter

import pytest

from appliance.panel.pins import LED_NAMES, load_pinmap, watchdog_rc

from .conftest import PINMAP, ROOT

HW = ROOT / "hardware"


@pytest.fixture(scope="module")
def make_wiring():
    spec = importlib.util.spec_from_file_location("make_wiring", HW / "make_wiring.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_drawing_and_page_are_regenerated_identically(make_wiring, pinmap):
    assert make_wiring.render_svg(pinmap) == (HW / "wiring.svg").read_text(encoding="utf-8")
    assert make_wiring.render_md(pinmap) == (HW / "wiring.md").read_text(encoding="utf-8")
    assert make_wiring.render_svg(pinmap) == make_wiring.render_svg(load_pinmap(PINMAP))


def test_check_mode_as_a_command():
    result = subprocess.run([sys.executable, str(HW / "make_wiring.py"), "--check"],
                            capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr


def test_svg_names_every_pin_in_the_map(make_wiring, pinmap):
    svg = (HW / "wiring.svg").read_text(encoding="utf-8")
    root = ET.fromstring(svg)                                   # well-formed XML
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    texts = [t.text or "" for t in root.iter("{http://www.w3.org/2000/svg}text")]
    joined = "\n".join(texts)
    # all 40 header pins are drawn and numbered
    numbers = {t for t in texts if re.fullmatch(r"\d{1,2}", t)}
    assert {str(n) for n in range(1, 41)} <= numbers
    for led in pinmap.leds:
        assert f"GPIO{led.bcm} · LED {led.name} ({led.colour})" in texts
        assert f"GPIO{led.bcm} · pin {led.header}" in texts
        assert make_wiring.ohms_text(led.resistor.ohms) in texts
    assert f"GPIO{pinmap.button.bcm} · button" in texts
    r = pinmap.relay
    for func, bcm, header in (("relay.enable", r.enable, r.enable_header),
                              ("relay.heartbeat", r.heartbeat, r.heartbeat_header),
                              ("relay.sense", r.sense, r.sense_header)):
        assert f"GPIO{bcm} · {func}" in texts
        assert f"pin {header}" in joined
    for res in pinmap.reserved:
        assert f"GPIO{res.bcm} (pin {res.header}): {res.why}" in texts
    assert "74HCT123" in texts and "ULN2803A" in texts


def test_drawing_follows_the_pin_map(make_wiring, tmp_path):
    moved = tmp_path / "pinmap.toml"
    moved.write_text(PINMAP.read_text(encoding="utf-8")
                     .replace("bcm = 17\nheader = 11", "bcm = 6\nheader = 31"))
    pm = load_pinmap(moved)
    svg = make_wiring.render_svg(pm)
    assert "GPIO6 · LED health (green)" in svg and "GPIO17 · LED health" not in svg
    assert make_wiring.main(["--check", "--pinmap", str(moved)]) == 1   # stale: says so


# ---- bill of materials --------------------------------------------------------------------

def _bom() -> list[dict[str, str]]:
    with open(HW / "bom.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _ohms(value: str) -> float:
    m = re.fullmatch(r"([\d.]+)\s*(k|M)?\s*ohm", value)
    assert m, value
    return float(m.group(1)) * {None: 1, "k": 1e3, "M": 1e6}[m.group(2)]


def test_bom_parses_and_has_both_builds():
    rows = _bom()
    assert list(rows[0]) == ["build", "category", "ref", "qty", "part", "mpn", "value", "for",
                             "notes"]
    builds = {r["build"] for r in rows}
    assert builds == {"pi4", "pi5"}
    for r in rows:
        assert int(r["qty"]) > 0, r
        assert r["part"], r
    by_build = {b: [r for r in rows if r["build"] == b] for b in builds}
    cats = {b: Counter(r["category"] for r in rs) for b, rs in by_build.items()}
    assert set(cats["pi4"]) == set(cats["pi5"])
    for b, rs in by_build.items():
        for needed in ("computer", "ethernet", "power", "storage", "enclosure", "button",
                       "relay", "driver", "watchdog", "led", "resistor"):
            assert cats[b][needed] >= 1, (b, needed)
        computer = next(r for r in rs if r["category"] == "computer")
        assert computer["part"].startswith({"pi4": "Raspberry Pi 4", "pi5": "Raspberry Pi 5"}[b])
        nic = next(r for r in rs if r["category"] == "ethernet")
        assert "USB 3" in nic["part"] and re.search(r"RTL8153|AX88179", nic["part"])
        relay = next(r for r in rs if r["category"] == "relay")
        assert int(relay["qty"]) == 8 and "DPDT" in relay["part"]   # all 4 pairs, both ports


def test_bom_values_match_the_computed_ones(pinmap):
    rows = _bom()
    for build in ("pi4", "pi5"):
        rs = [r for r in rows if r["build"] == build]
        for name in LED_NAMES:
            led = pinmap.led(name)
            (res,) = [r for r in rs if r["category"] == "resistor" and r["for"] == f"led.{name}"]
            assert _ohms(res["value"]) == led.resistor.ohms, (build, name)
            (light,) = [r for r in rs if r["category"] == "led" and r["for"] == f"led.{name}"]
            assert led.colour in light["notes"]
        (timing,) = [r for r in rs if r["category"] == "resistor" and "Rext" in r["notes"]]
        assert _ohms(timing["value"]) == watchdog_rc(pinmap.relay.watchdog_timeout_s).ohms
