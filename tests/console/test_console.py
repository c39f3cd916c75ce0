"""`wardtap status` and `wardtap top` against a real daemon, read from a real pseudo-terminal.

The daemon replays the demo ward (`stay = true`, as in tests/appliance/test_daemon.py). The
console commands run on the slave side of a pty whose window size is set with TIOCSWINSZ
(120x40: the wide layout; 40x12: the compact one), as the session leader with the pty as
controlling terminal, so Ctrl-C is a real ^C through the line discipline. Every wait is
bounded; nothing sleeps and hopes.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import ROOT, run_wardtap
from netns import wait_for
from rich.cells import cell_len

from appliance.common.control import request
from demoward.ward import DEMO_POLICY, write_demo_ward

PACKETS = 5000
WIDE, SMALL = (120, 40), (40, 12)
ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[()][0-9A-Za-z]|\x1b[=>]")
HOME = "\x1b[H"
LEAVE_ALT_SCREEN = "\x1b[?1049l"
# the child: become the pty's session leader's controlling terminal owner, then be wardtap
CHILD = ("import fcntl, os, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
         "os.execv(sys.executable, [sys.executable, '-m', 'appliance.cli', *sys.argv[1:]])")


# -- the daemon --------------------------------------------------------------------------------

def _write_ward(path: Path, extra: str = "") -> Path:
    write_demo_ward(str(path / "ward.pcap"), packets=PACKETS)
    (path / "policy.toml").write_text(DEMO_POLICY)
    (path / "wardtap.toml").write_text(
        '[appliance]\nmode = "enforce"\n'
        '[datapath]\ntype = "replay"\nfiles = ["ward.pcap"]\nstay = true\n'
        '[policy]\nfile = "policy.toml"\n[store]\npath = "wardtap.db"\n'
        '[events]\nlog = "events.jsonl"\n[control]\nsocket = "control.sock"\n' + extra)
    return path


def _start_daemon(ward: Path) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), WARDTAP_GPIO="mock")
    proc = subprocess.Popen([sys.executable, "-m", "appliance.cli", "run", "--config",
                             str(ward / "wardtap.toml")], cwd=ward, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    sock = str(ward / "control.sock")

    def replayed() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"daemon exited: {proc.communicate()[1]}")
        if not os.path.exists(sock):
            return False
        status = request(sock, {"cmd": "status"})
        # ... and its rate meter has a first sample (taken a second after start): the
        # consoles show a rate, not "n/a"
        return (bool(status["ok"]) and status["counters"]["packets"] == PACKETS
                and status["rate"]["packets_per_s"] is not None)

    wait_for(replayed, timeout=20, what="the daemon to replay the ward and measure a rate")
    return proc


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def ward(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    path = _write_ward(tmp_path_factory.mktemp("ward"))
    proc = _start_daemon(path)
    try:
        yield str(path / "control.sock"), path
    finally:
        _stop(proc)


def _last_violation(ward_dir: Path) -> dict:
    events = [json.loads(line) for line in (ward_dir / "events.jsonl").read_text().splitlines()]
    return [e for e in events if e["type"] == "violation"][-1]


# -- the terminal ------------------------------------------------------------------------------

class Terminal:
    """A wardtap command on a pty of the given size; the output is kept as text."""

    def __init__(self, *args: str, size: tuple[int, int]) -> None:
        self.cols, self.rows = size
        self.master, self.slave = pty.openpty()
        fcntl.ioctl(self.slave, termios.TIOCSWINSZ, struct.pack("HHHH", self.rows, self.cols,
                                                                0, 0))
        self.modes = termios.tcgetattr(self.slave)
        env = {k: v for k, v in os.environ.items()
               if k not in ("COLUMNS", "LINES", "NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE",
                            "TTY_INTERACTIVE")}
        env.update(PYTHONPATH=str(ROOT), TERM="xterm-256color")
        self.proc = subprocess.Popen([sys.executable, "-c", CHILD, *args], stdin=self.slave,
                                     stdout=self.slave, stderr=self.slave, cwd=ROOT, env=env,
                                     start_new_session=True)
        self.raw = b""

    @property
    def text(self) -> str:
        return self.raw.decode("utf-8", "replace")

    def _read(self, timeout: float) -> None:
        ready, _, _ = select.select([self.master], [], [], timeout)
        if ready:
            try:
                self.raw += os.read(self.master, 65536)
            except OSError:
                pass

    def wait_until(self, condition: Callable[[Terminal], bool], timeout: float = 10.0,
                   what: str = "the screen") -> None:
        deadline = time.monotonic() + timeout
        while not condition(self):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}; "
                                     f"last screen:\n" + "\n".join(self.screen()))
            self._read(0.05)

    def finish(self, timeout: float = 10.0) -> int:
        """Wait for the command to exit (bounded) and read what it wrote."""
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"still running after {timeout} s:\n{self.text[-2000:]}")
            self._read(0.05)
        self._read(0.05)
        while select.select([self.master], [], [], 0)[0]:
            before = len(self.raw)
            self._read(0)
            if len(self.raw) == before:
                break
        return self.proc.returncode

    def screen(self) -> list[str]:
        """The last frame drawn (a live screen redraws from the home position), plain."""
        text = self.text.split(LEAVE_ALT_SCREEN)[0]
        frame = text.rsplit(HOME, 1)[-1]
        lines = ANSI.sub("", frame).replace("\r", "").split("\n")
        while lines and not lines[-1].strip():
            lines.pop()
        return lines

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        os.close(self.master)
        os.close(self.slave)


@pytest.fixture
def terminal() -> Iterator[Callable[..., Terminal]]:
    opened: list[Terminal] = []

    def start(*args: str, size: tuple[int, int] = WIDE) -> Terminal:
        opened.append(Terminal(*args, size=size))
        return opened[-1]

    yield start
    for term in opened:
        term.close()


def _fits(lines: list[str], cols: int) -> None:
    too_long = [line for line in lines if cell_len(line) > cols]
    assert not too_long, f"lines wider than {cols}: {too_long}"


def _line_with(lines: list[str], *words: str) -> str:
    found = [line for line in lines if all(w in line for w in words)]
    assert found, f"no line with {words} in:\n" + "\n".join(lines)
    return found[0]


# -- wardtap status ----------------------------------------------------------------------------

def test_status_shows_the_key_facts(ward, terminal) -> None:  # type: ignore[no-untyped-def]
    sock, ward_dir = ward
    term = terminal("status", "--socket", sock, size=WIDE)
    assert term.finish() == 0
    lines = term.screen()
    _fits(lines, WIDE[0])
    assert "enforce" in _line_with(lines, "mode")
    assert "ok" in _line_with(lines, "health")
    assert f"{PACKETS:,}" in _line_with(lines, "packets")
    assert re.search(r"[\d,.]+/s", _line_with(lines, "packets"))
    _line_with(lines, "verdicts", "allowed", "denied", "malformed")
    _line_with(lines, "drops", "kernel")
    _line_with(lines, "flows", "active", "created")
    assert "not configured" in _line_with(lines, "broker")
    leds = _line_with(lines, "LEDs")
    assert "● health" in leds and "violation" in leds and "○ bypass" in leds
    last = _last_violation(ward_dir)
    _line_with(lines, last["src"], last["dst"], f"tcp/{last['dport']}", "no_rule")
    assert "\x1b[" in term.text           # coloured on a terminal (the LED dots above all)


def test_status_json_has_stable_keys(ward) -> None:  # type: ignore[no-untyped-def]
    sock, ward_dir = ward
    result = run_wardtap("status", "--json", "--socket", sock, timeout=30)
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert set(doc) == {"v", "ok", "pid", "mode", "datapath", "uptime_s", "policy",
                        "policy_fault", "health", "counters", "rate", "flows", "devices",
                        "violations", "broker", "leds", "details"}
    assert doc["policy_fault"] is None
    assert doc["v"] == 1 and doc["ok"] is True and doc["mode"] == "enforce"
    assert doc["health"]["state"] == "ok"
    assert set(doc["counters"]) == {"packets", "bytes", "allowed", "denied", "malformed",
                                    "kernel_drops"}
    c = doc["counters"]
    assert c["packets"] == PACKETS == c["allowed"] + c["denied"] + c["malformed"]
    assert c["kernel_drops"] is None                 # a replay has no kernel to drop packets
    assert set(doc["rate"]) == {"packets_per_s", "bytes_per_s", "window_s", "history"}
    assert set(doc["flows"]) == {"active", "created"} and doc["flows"]["created"] > 0
    assert doc["devices"] > 0
    assert doc["broker"] == {"configured": False, "connected": False, "url": None,
                             "spool_depth": None, "spool_overflow": None,
                             "spool_dropped": None, "spool_disk_full": None,
                             "spool_held_in_memory": None}
    assert set(doc["leds"]["patterns"]) == {"health", "learn", "violation", "broker", "bypass"}
    assert doc["leds"]["patterns"]["violation"] != "off"
    recent = doc["violations"]["recent"]
    assert doc["violations"]["seen"] >= len(recent) > 0
    last = _last_violation(ward_dir)
    assert {k: recent[0][k] for k in ("src", "dst", "dport", "reason")} == {
        k: last[k] for k in ("src", "dst", "dport", "reason")}


def test_status_on_a_small_terminal(ward, terminal) -> None:  # type: ignore[no-untyped-def]
    sock, _ = ward
    term = terminal("status", "--socket", sock, size=SMALL)
    assert term.finish() == 0
    lines = term.screen()
    _fits(lines, SMALL[0])
    assert "enforce" in _line_with(lines, "mode")
    assert "●health" in _line_with(lines, "LEDs")       # the short LED line
    assert "not configured" in _line_with(lines, "broker")


# -- wardtap top -------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [WIDE, SMALL], ids=["120x40", "40x12"])
def test_top_once_fits_the_terminal(ward, terminal, size) -> None:  # type: ignore[no-untyped-def]
    sock, ward_dir = ward
    cols, rows = size
    term = terminal("top", "--once", "--socket", sock, size=size)
    assert term.finish() == 0
    lines = term.screen()
    _fits(lines, cols)
    assert len(lines) <= rows
    assert "enforce" in lines[0] and "ok" in lines[0]
    last = _last_violation(ward_dir)
    if size == WIDE:
        assert any("datapath" in line and "appliance" in line for line in lines)  # 2 columns
        assert f"{PACKETS:,}" in _line_with(lines, "packets")
        assert "not configured" in _line_with(lines, "broker")
        assert "● health" in _line_with(lines, "health", "learn", "bypass")
        _line_with(lines, "recent violations")
        _line_with(lines, last["src"], last["dst"], f"tcp/{last['dport']}")
    else:
        assert not any(set(line) & set("╭│╰") for line in lines)   # one column, no boxes
        assert f"{PACKETS:,}" in _line_with(lines, "pkts")
        assert "not configured" in _line_with(lines, "broker")
        assert "●health" in _line_with(lines, "learn", "bypass")
        assert _line_with(lines, f"{last['src']}→{last['dst']}")
    assert lines[-1].strip().startswith("wardtap top --once")


def _frame_shows(*words: str) -> Callable[[Terminal], bool]:
    return lambda term: all(w in "\n".join(term.screen()) for w in words)


@pytest.mark.parametrize("how", ["q", "ctrl-c", "SIGINT", "SIGTERM"])
def test_top_quits_and_restores_the_terminal(ward, terminal, how) -> None:  # type: ignore[no-untyped-def]
    sock, _ = ward
    size = SMALL if how == "q" else WIDE
    term = terminal("top", "--socket", sock, size=size)
    term.wait_until(_frame_shows("enforce", f"{PACKETS:,}"), what="the dashboard")
    lines = term.screen()
    _fits(lines, size[0])
    assert len(lines) <= size[1]
    assert termios.tcgetattr(term.slave) != term.modes      # keys one by one, no echo
    started = time.monotonic()
    if how == "q":
        os.write(term.master, b"q")
    elif how == "ctrl-c":
        os.write(term.master, b"\x03")                      # ^C through the line discipline
    else:
        term.proc.send_signal(getattr(signal, how))
    assert term.finish(timeout=5) == 0
    assert time.monotonic() - started < 5
    assert term.text.rstrip().endswith(LEAVE_ALT_SCREEN)    # back to the normal screen
    assert "\x1b[?25h" in term.text                          # cursor shown again
    assert termios.tcgetattr(term.slave) == term.modes      # line modes restored
    assert "Traceback" not in term.text


def test_top_follows_a_resized_terminal(ward, terminal) -> None:  # type: ignore[no-untyped-def]
    sock, _ = ward
    term = terminal("top", "--socket", sock, size=WIDE)
    term.wait_until(_frame_shows("recent violations"), what="the wide dashboard")
    cols, rows = SMALL
    fcntl.ioctl(term.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    term.wait_until(lambda t: "pkts" in "\n".join(t.screen()), what="the compact dashboard")
    lines = term.screen()
    _fits(lines, cols)
    assert len(lines) <= rows and not any(set(line) & set("╭│╰") for line in lines)
    os.write(term.master, b"q")
    assert term.finish(timeout=5) == 0


def test_top_survives_the_daemon_going_away(tmp_path, terminal) -> None:  # type: ignore[no-untyped-def]
    ward_dir = _write_ward(tmp_path)
    sock = str(ward_dir / "control.sock")
    proc = _start_daemon(ward_dir)
    try:
        term = terminal("top", "--socket", sock, size=(80, 24))
        term.wait_until(_frame_shows("enforce"), what="the dashboard")
        _stop(proc)
        term.wait_until(_frame_shows("NOT RUNNING", "wardtap is not running", "retrying"),
                        what="'not running' on the dashboard")
        assert term.proc.poll() is None
        proc = _start_daemon(ward_dir)                       # it comes back: so does the data
        term.wait_until(_frame_shows("enforce", f"{PACKETS:,}"), what="the dashboard again")
        os.write(term.master, b"q")
        assert term.finish(timeout=5) == 0
    finally:
        _stop(proc)


def test_broker_unreachable(tmp_path, terminal) -> None:  # type: ignore[no-untyped-def]
    """A configured broker nobody answers: disconnected, the events wait in the spool."""
    with socket.socket() as probe:          # a local port with nothing listening on it
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ward_dir = _write_ward(tmp_path, f'[broker]\nurl = "mqtt://127.0.0.1:{port}"\n'
                                     f'site = "ward4"\nappliance = "wt-1"\n')
    sock = str(ward_dir / "control.sock")
    proc = _start_daemon(ward_dir)
    try:
        broker = json.loads(run_wardtap("status", "--json", "--socket", sock,
                                        timeout=30).stdout)["broker"]
        assert broker["configured"] is True and broker["connected"] is False
        assert broker["url"] == f"mqtt://127.0.0.1:{port}" and broker["spool_depth"] > 0
        assert broker["spool_overflow"] is False
        term = terminal("top", "--once", "--socket", sock, size=SMALL)
        assert term.finish() == 0
        assert "DISCONNECTED, spool" in _line_with(term.screen(), "broker")
    finally:
        _stop(proc)


# -- no daemon, busy daemon --------------------------------------------------------------------

def test_no_daemon_is_said_clearly(tmp_path, terminal) -> None:  # type: ignore[no-untyped-def]
    sock = str(tmp_path / "none.sock")
    result = run_wardtap("status", "--socket", sock, timeout=30)
    assert result.returncode == 2 and not result.stdout
    assert result.stderr.strip() == (f"wardtap: error: wardtap is not running "
                                     f"(no control socket at {sock})")
    once = terminal("top", "--once", "--socket", sock, size=SMALL)
    assert once.finish() == 2
    lines = once.screen()
    _fits(lines, SMALL[0])
    assert "NOT RUNNING" in lines[0] and "not running" in "\n".join(lines)
    live = terminal("top", "--socket", sock, size=SMALL)
    live.wait_until(_frame_shows("NOT RUNNING", "retrying"), what="'not running'")
    os.write(live.master, b"q")
    assert live.finish(timeout=5) == 0


@pytest.fixture
def busy_socket(tmp_path: Path) -> Iterator[str]:
    """A control socket that answers like a daemon whose main loop hangs."""
    path = str(tmp_path / "busy.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(8)
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                conn.makefile("rb").readline()
                conn.sendall(b'{"ok": false, "error": "busy"}\n')

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield path
    finally:
        stop.set()
        thread.join(timeout=5)
        server.close()


def test_busy_daemon_is_said_clearly(busy_socket, terminal) -> None:  # type: ignore[no-untyped-def]
    result = run_wardtap("status", "--socket", busy_socket, timeout=30)
    assert result.returncode == 1 and not result.stdout
    assert result.stderr.count("\n") == 1 and "busy" in result.stderr
    assert "did not answer" in result.stderr
    result = run_wardtap("status", "--json", "--socket", busy_socket, timeout=30)
    assert result.returncode == 1
    assert json.loads(result.stdout) == {"v": 1, "ok": False, "busy": True, "error": "busy"}
    term = terminal("top", "--once", "--socket", busy_socket, size=SMALL)
    assert term.finish() == 1
    lines = term.screen()
    _fits(lines, SMALL[0])
    assert "BUSY" in "\n".join(lines)
