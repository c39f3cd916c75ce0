"""Fixtures for the hardware tests: gpiozero's MockFactory as the process-wide pin factory.

Set WARDTAP_PI_RIG=1 on a Pi with the LEDs, button and relay board wired to run the
device tests on real pins instead (the timing tests then read nothing back, so they skip).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.panel.pins import PinMap, load_pinmap

ROOT = Path(__file__).resolve().parents[2]
PINMAP = ROOT / "hardware" / "pinmap.toml"
ON_RIG = os.environ.get("WARDTAP_PI_RIG") == "1"


@pytest.fixture
def factory() -> Iterator[Any]:
    """A fresh MockFactory installed as gpiozero's default; the old one is put back."""
    from gpiozero import Device
    from gpiozero.pins.mock import MockFactory

    old = Device.pin_factory
    mock = MockFactory()
    Device.pin_factory = mock
    try:
        yield mock
    finally:
        Device.pin_factory = old
        mock.reset()
        mock.close()


@pytest.fixture(scope="session")
def pinmap() -> PinMap:
    return load_pinmap(PINMAP)
