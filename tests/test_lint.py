"""Lint and type checks run with the tests (STYLE.md: part of the test command)."""

import os
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

# mypy's incremental cache, kept between runs like the image's base system: a cold check
# takes 10-25 s here, a warm one under a second. mypy re-checks any module whose source
# hash changed, so a cache from another checkout or commit gives the same answer.
MYPY_CACHE = Path(os.environ.get("WARDTAP_MYPY_CACHE", "/var/cache/wardtap-test/mypy"))


def test_ruff_clean() -> None:
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "."], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_clean() -> None:
    try:
        MYPY_CACHE.mkdir(parents=True, exist_ok=True)
        cache = ["--cache-dir", str(MYPY_CACHE)] if os.access(MYPY_CACHE, os.W_OK) else []
    except OSError:
        cache = []                     # not root: mypy's own cache in the checkout
    result = subprocess.run([sys.executable, "-m", "mypy", *cache, "appliance", "fastpath"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
