"""Shared fixtures: real capture files written to tmp_path, real tshark, the wardtap CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
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


@pytest.hookimpl(trylast=True)
def read_events(path: Path) -> list[dict]:
    """The daemon's JSON-lines event log (empty until it exists)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@contextmanager
def small_tmpfs(directory: Path, size: str) -> Iterator[Path]:
    """A real filesystem of `size` (tmpfs) mounted on `directory/disk`, for full-disk tests."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = directory / "disk"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def pytest_itemcollected(item: pytest.Item) -> None:
    """A module's shared fixture (scope="module": a live ward, a learned policy, a store) is
    built once: the module's tests run on one worker, not once per worker that gets one."""
    info = getattr(item, "_fixtureinfo", None)
    if info is None or item.get_closest_marker("xdist_group"):
        return
    if any(defs[-1].scope == "module" for defs in info.name2fixturedefs.values()):
        item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests that share an expensive session fixture (the image build) carry one xdist_group
    and must run on one worker; if pytest-xdist stops grouping them (it marks their node ids
    with @group), say so instead of silently building the image on every worker."""
    if getattr(config.option, "loadgroup", False):
        lost = [i.nodeid for i in items if i.get_closest_marker("xdist_group")
                and "@" not in i.nodeid]
        if lost:
            raise pytest.UsageError(f"pytest-xdist did not group {lost[0]} (and {len(lost) - 1} "
                                    "more): use the pytest version pyproject.toml pins")
