"""Shared fixtures: real capture files written to tmp_path, real tshark, the wardtap CLI."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WARDTAP = [sys.executable, "-m", "appliance.cli"]


@pytest.fixture(scope="session")
def tshark() -> str:
    """Path of the real tshark; the set-up script installs it, so its absence is a failure."""
    path = shutil.which("tshark")
    assert path, "tshark is not installed: run scripts/setup.sh"
    return path


def run_wardtap(*args: str, check: bool = False, timeout: float = 120,
                **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run the real `wardtap` CLI as a process and capture its output."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([*WARDTAP, *args], capture_output=True, text=True, check=check,
                          timeout=timeout, cwd=ROOT, env=env, **kwargs)  # type: ignore[arg-type]
