"""sd_notify: the daemon tells systemd READY=1 once its datapath is open, pings the
watchdog only while its packet loop makes progress, and says STOPPING=1 at the end.

The test binds the NOTIFY_SOCKET itself (abstract and path names) and runs the real CLI
(`wardtap run`); for the stall, the replay datapath is swapped for one whose batches hang
on request (stallsource.py), so the process keeps running and only the loop stops."""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ROOT

from appliance.system.notify import Notifier, ServiceNotifier

HERE = Path(__file__).resolve().parent
WATCHDOG_USEC = 400_000               # pings every 0.1 s; stale after 0.2 s
DRIVER = """
import sys
sys.path.insert(0, {here!r})
import appliance.sources as sources
sources.SOURCES["replay"] = "stallsource:StallSource"
from appliance.cli import main
sys.exit(main(["run", "--config", sys.argv[1]]))
"""


class Listener:
    """A datagram socket standing in for systemd's notification socket."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)

    def next(self, timeout: float) -> dict[str, str] | None:
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return None
        return dict(line.split("=", 1) for line in data.decode().splitlines())

    def wait_for(self, key: str, timeout: float) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            message = self.next(left)
            if message is not None and key in message:
                return message
        raise AssertionError(f"no {key} within {timeout} s")

    def drain(self) -> list[dict[str, str]]:
        out = []
        while (message := self.next(0.001)) is not None:
            out.append(message)
        return out

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def config(tmp_path: Path) -> Path:
    # a capture with no packets: the daemon replays it, then polls idle (stay = true)
    (tmp_path / "empty.pcap").write_bytes(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0,
                                                      65535, 1))
    path = tmp_path / "wardtap.toml"
    path.write_text('[appliance]\nmode = "learn"\n[datapath]\ntype = "replay"\n'
                    'files = ["empty.pcap"]\nstay = true\n[control]\nsocket = "control.sock"\n'
                    '[panel]\nenabled = false\n')
    return path


def _daemon(args: list[str], address: str, tmp: Path, **env: str) -> subprocess.Popen[str]:
    environ = dict(os.environ, PYTHONPATH=str(ROOT), NOTIFY_SOCKET=address,
                   WATCHDOG_USEC=str(WATCHDOG_USEC), **env)
    environ.pop("WATCHDOG_PID", None)
    return subprocess.Popen([sys.executable, *args], cwd=tmp, env=environ, text=True,
                            stdout=subprocess.DEVNULL, stderr=open(tmp / "daemon.log", "w"))


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[Listener]:
    sock = Listener(f"@wardtap-notify-test-{os.getpid()}-{time.monotonic_ns()}")
    yield sock
    sock.close()


def _stop(proc: subprocess.Popen[str], listener: Listener) -> None:
    proc.send_signal(signal.SIGTERM)
    assert listener.wait_for("STOPPING", 15)["STOPPING"] == "1"
    assert proc.wait(timeout=15) == 0


def test_ready_then_watchdog_then_stopping(config: Path, tmp_path: Path,
                                           listener: Listener) -> None:
    """The real CLI with a replay datapath (stay = true: idle polls after the file)."""
    proc = _daemon(["-m", "appliance.cli", "run", "--config", str(config)], listener.address,
                   tmp_path)
    try:
        ready = listener.wait_for("READY", 30)
        assert ready["READY"] == "1" and ready["MAINPID"] == str(proc.pid)
        assert ready["STATUS"].startswith("learn, replay")
        start = time.monotonic()
        for _ in range(5):
            assert listener.wait_for("WATCHDOG", 2)["WATCHDOG"] == "1"
        # five pings at WatchdogSec/4 (0.1 s) took about 0.5 s, well inside the watchdog
        assert time.monotonic() - start < 2.0
        _stop(proc, listener)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_no_watchdog_while_the_datapath_hangs(config: Path, tmp_path: Path,
                                              listener: Listener) -> None:
    stall = tmp_path / "stall"
    proc = _daemon(["-c", DRIVER.format(here=str(HERE)), str(config)], listener.address,
                   tmp_path, WARDTAP_TEST_STALL=str(stall))
    try:
        listener.wait_for("READY", 30)
        for _ in range(3):
            listener.wait_for("WATCHDOG", 2)
        stall.touch()
        marker = Path(str(stall) + ".stalled")
        deadline = time.monotonic() + 5
        while not marker.exists():
            assert time.monotonic() < deadline, "the datapath never hung"
            time.sleep(0.005)
        listener.drain()            # pings sent before the hang began
        # 2.5 watchdog periods without a single ping: systemd would have killed it by now
        window_end = time.monotonic() + 2.5 * WATCHDOG_USEC / 1e6
        while (left := window_end - time.monotonic()) > 0:
            message = listener.next(left)
            assert message is None or "WATCHDOG" not in message, message
        assert proc.poll() is None          # the process lives; only its loop is stuck
        stall.unlink()
        assert listener.wait_for("WATCHDOG", 3)["WATCHDOG"] == "1"    # progress again
        _stop(proc, listener)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_notifier_path_socket_and_no_socket(tmp_path: Path) -> None:
    sock = Listener(str(tmp_path / "notify"))
    try:
        notifier = Notifier(str(tmp_path / "notify"), watchdog_usec=2_000_000)
        assert notifier.watchdog_interval == 2.0
        assert notifier.send("READY=1", "STATUS=x")
        assert sock.next(2) == {"READY": "1", "STATUS": "x"}
        notifier.close()
    finally:
        sock.close()
    quiet = Notifier(None)
    assert not quiet.enabled and not quiet.send("READY=1")


def test_watchdog_needs_progress_and_live_outputs(listener: Listener) -> None:
    """tick(): a ping only if the last batch is fresh (< WatchdogSec/2) and alive() holds."""
    now = [100.0]
    alive = [True]
    service = ServiceNotifier(Notifier(listener.address, WATCHDOG_USEC),
                              alive=lambda: alive[0], clock=lambda: now[0])
    service.tick(last_batch=100.0, status=lambda: "ok")
    assert listener.next(2) == {"WATCHDOG": "1", "STATUS": "ok"}
    now[0] = 100.15                         # next ping due (0.1 s), batch 0.15 s old: fresh
    service.tick(last_batch=100.0, status=lambda: "ok")
    assert listener.next(2) == {"WATCHDOG": "1"}
    now[0] = 100.30                         # batch 0.3 s old (> 0.2 s): stale, no ping
    service.tick(last_batch=100.0, status=lambda: "ok")
    now[0] = 100.45
    alive[0] = False                        # fresh batch but a dead reporter thread
    service.tick(last_batch=100.44, status=lambda: "ok")
    assert listener.next(0.2) is None
    alive[0] = True
    service.tick(last_batch=100.44, status=lambda: "ok")
    assert listener.next(2) == {"WATCHDOG": "1"}
    assert service.pings == 3
