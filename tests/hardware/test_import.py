"""Importing the hardware modules never imports gpiozero; making a device does, and off a Pi
the automatic choice logs one line and simulates instead of crashing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT

PROBE = """
import sys
import appliance.panel.leds, appliance.panel.button, appliance.panel.pins
assert "gpiozero" not in sys.modules, "imported at import time"
from appliance.panel.leds import LedPanel
panel = LedPanel()
assert "gpiozero" in sys.modules
print(panel.backend)
print(panel.render())
panel.close()
panel.close()
"""


def _run(env_extra: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("WARDTAP_GPIO", "GPIOZERO_PIN_FACTORY")}
    env.update(env_extra, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                          timeout=60, cwd=ROOT, env=env)


def test_import_is_lazy_and_forced_mock_works():
    result = _run({"WARDTAP_GPIO": "mock"})
    assert result.returncode == 0, result.stderr
    backend, line = result.stdout.splitlines()
    assert backend == "mock"
    assert "health" in line and "bypass" in line
    assert result.stderr == ""


@pytest.mark.skipif(any(p.name.startswith("gpiomem") for p in Path("/dev").iterdir()),
                    reason="this is a Pi")
def test_off_a_pi_one_line_and_no_crash():
    result = _run({})
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "mock"
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("GPIO: no /dev/gpiomem (not a Raspberry Pi)")
    assert "simulated" in lines[0]
