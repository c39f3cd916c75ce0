"""`wardtap run` against hostile policy files: it keeps running on the last good policy,
starts again on it, says so, and audits every refusal; one daemon per configuration."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, run_wardtap
from netns import wait_for

from appliance.common.control import request
from demoward.ward import DEMO_POLICY, write_demo_ward

DEEP = "[policy]\nname = 'deep'\nversion = 9\nx = " + "[" * 3000 + "]" * 3000 + "\n"
PACKETS = 3000


class Daemon:
    """`wardtap run` as a process in `directory` (started again by start())."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.sock = str(directory / "control.sock")
        self.proc: subprocess.Popen[str] | None = None
        self.logs: list[str] = []

    def start(self, wait: bool = True) -> None:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "appliance.cli", "run", "--config",
             str(self.dir / "wardtap.toml")], cwd=self.dir, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if wait:
            wait_for(self._replayed, timeout=30, what="the daemon to replay the ward")

    def _replayed(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"daemon exited {self.proc.returncode}: {self.stop()}")
        if not os.path.exists(self.sock):
            return False
        status = request(self.sock, {"cmd": "status"})
        return bool(status.get("ok")) and status["counters"]["packets"] == PACKETS

    def status(self) -> dict[str, Any]:
        return request(self.sock, {"cmd": "status"})

    def stop(self) -> str:
        """SIGTERM (SIGKILL if it hangs); the whole log of this run."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            out, _ = self.proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate(timeout=10)
        self.logs.append(out)
        return out


def _ward(directory: Path, mode: str = "enforce", policy: str = DEMO_POLICY) -> Path:
    if not (directory / "ward.pcap").exists():
        write_demo_ward(str(directory / "ward.pcap"), packets=PACKETS)
    (directory / "policy.toml").write_text(policy)
    (directory / "wardtap.toml").write_text(
        f'[appliance]\nmode = "{mode}"\n'
        '[datapath]\ntype = "replay"\nfiles = ["ward.pcap"]\nstay = true\n'
        '[policy]\nfile = "policy.toml"\n[store]\npath = "wardtap.db"\n'
        '[events]\nlog = "events.jsonl"\n[control]\nsocket = "control.sock"\n')
    return directory


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(_ward(tmp_path))
    try:
        yield d
    finally:
        if d.proc is not None and d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait(timeout=10)


def _events(directory: Path, kind: str) -> list[dict[str, Any]]:
    path = directory / "events.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [e for e in map(json.loads, lines) if e["type"] == kind]


def _audit(directory: Path) -> list[tuple[str, str, str]]:
    conn = sqlite3.connect(directory / "wardtap.db", timeout=10)
    try:
        return [tuple(r) for r in conn.execute(  # type: ignore[misc]
            "SELECT source, command, outcome FROM audit ORDER BY id")]
    finally:
        conn.close()


def test_deep_policy_by_sighup_and_reload_is_refused_and_restart_runs_the_last_good(
        daemon: Daemon) -> None:
    daemon.start()
    good = daemon.status()["policy"]
    assert good["name"] == "demo-ward-4b" and (daemon.dir / "policy.toml.last-good").exists()
    (daemon.dir / "policy.toml").write_text(DEEP)
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: _events(daemon.dir, "policy_rejected"), what="the SIGHUP rejection")
    reload = run_wardtap("reload", "--socket", daemon.sock, "--json")
    assert reload.returncode == 1, reload.stdout + reload.stderr
    answer = json.loads(reload.stdout)
    assert answer["ok"] is False and answer["reason"] == "invalid_policy"
    assert "line 4: nested more than 32 levels deep" in answer["error"]
    status = daemon.status()
    assert status["policy"] == good and status["mode"] == "enforce"
    assert status["policy_fault"] is None            # the running policy is the good one
    assert _audit(daemon.dir)[-2:] == [("signal", "reload", "rejected"),
                                       ("control", "reload", "rejected")]
    log = daemon.stop()
    assert daemon.proc.returncode == 0 and "Traceback" not in log

    # the deep file is still the policy file: the daemon starts on the last good one
    daemon.start()
    status = daemon.status()
    assert status["mode"] == "enforce" and status["policy"]["name"] == "demo-ward-4b"
    fault = status["policy_fault"]
    assert fault["running"] == "last-good" and "nested more than 32" in fault["error"]
    assert status["leds"]["patterns"]["health"] == "fast blink"
    assert status["counters"]["denied"] > 0           # still enforcing
    text = run_wardtap("status", "--socket", daemon.sock).stdout
    assert "POLICY FAULT" in text and "last good policy" in text
    assert _events(daemon.dir, "policy_fault")[-1]["running"] == "last-good"
    # fixed and reloaded: the fault clears
    (daemon.dir / "policy.toml").write_text(DEMO_POLICY.replace("version = 1", "version = 2"))
    assert run_wardtap("reload", "--socket", daemon.sock).returncode == 0
    status = daemon.status()
    assert status["policy_fault"] is None and status["policy"]["version"] == 2
    assert status["leds"]["patterns"]["health"] == "steady"
    assert _events(daemon.dir, "policy_fault_cleared")
    log = daemon.stop()
    assert "Traceback" not in "".join(daemon.logs)
    assert "POLICY FAULT: running the last good policy" in daemon.logs[1]


@pytest.mark.parametrize("policy", ["", "# only a comment\n", "[policy]\nname = 'x'\n", DEEP],
                         ids=["empty", "comment-only", "no-rules", "deep"])
def test_unusable_policy_and_no_last_good_starts_in_bypass_and_says_so(
        tmp_path: Path, policy: str) -> None:
    d = Daemon(_ward(tmp_path, policy=policy))
    try:
        d.start()
        status = d.status()
        assert status["mode"] == "bypass" and status["policy"] is None
        assert status["policy_fault"]["running"] is None and status["policy_fault"]["bypass"]
        assert status["leds"]["patterns"]["bypass"] == "fast blink"   # fail-open after a fault
        assert status["counters"]["denied"] == 0
        # a good policy, reloaded: back to the configured mode
        (tmp_path / "policy.toml").write_text(DEMO_POLICY)
        answer = request(d.sock, {"cmd": "reload"}, timeout=60)
        assert answer["ok"], answer
        status = d.status()
        assert status["mode"] == "enforce" and status["policy_fault"] is None
    finally:
        log = d.stop()
    assert "no usable policy; in bypass" in log and "Traceback" not in log


def test_a_policy_without_rules_is_refused_for_enforce_but_not_learn(daemon: Daemon) -> None:
    daemon.start()
    (daemon.dir / "policy.toml").write_text("[policy]\nname = 'nothing'\nversion = 5\n")
    answer = request(daemon.sock, {"cmd": "reload"}, timeout=60)
    assert answer["ok"] is False and "no [[rules]]" in answer["error"]
    assert request(daemon.sock, {"cmd": "mode", "mode": "learn"})["ok"]
    assert request(daemon.sock, {"cmd": "reload"}, timeout=60)["ok"]
    answer = request(daemon.sock, {"cmd": "mode", "mode": "enforce"})
    assert answer["ok"] is False and "no [[rules]]" in answer["error"]
    assert daemon.status()["mode"] == "learn"
    daemon.stop()


def test_reload_warns_and_strict_refuses(daemon: Daemon) -> None:
    daemon.start()
    wide = DEMO_POLICY.replace("version = 1", "version = 2") + (
        '\n[[rules]]\nname = "anything"\nfrom = "any"\nto = "any"\n')
    (daemon.dir / "policy.toml").write_text(wide)
    strict = run_wardtap("reload", "--strict", "--socket", daemon.sock)
    assert strict.returncode == 1 and "lint warning" in strict.stderr, strict.stderr
    assert strict.stderr.startswith("wardtap: policy not reloaded, the running one stays: ")
    assert daemon.status()["policy"]["version"] == 1
    said = run_wardtap("reload", "--socket", daemon.sock)
    assert said.returncode == 0 and "v2 loaded" in said.stdout, said.stdout + said.stderr
    assert "  warning: " in said.stdout and "[rules.anything] any-any" in said.stdout
    log = daemon.stop()
    assert "policy lint:" in log and "any-any" in log


def test_identify_is_bounded_per_hour(daemon: Daemon) -> None:
    daemon.start()
    assert request(daemon.sock, {"cmd": "identify", "seconds": 600})["ok"]
    assert request(daemon.sock, {"cmd": "identify", "seconds": 3600})["reason"] == \
        "invalid_args"
    assert request(daemon.sock, {"cmd": "identify", "seconds": float("nan")})["ok"] is False
    over = request(daemon.sock, {"cmd": "identify", "seconds": 600})
    assert over["ok"] is False and over["reason"] == "rate_limited"
    leds = daemon.status()["leds"]["patterns"]
    assert leds["health"] == "identify" and leds["violation"] == "fast blink"
    daemon.stop()


def test_one_daemon_per_configuration(daemon: Daemon) -> None:
    daemon.start()
    assert daemon.proc is not None
    second = run_wardtap("run", "--config", str(daemon.dir / "wardtap.toml"), timeout=60)
    assert second.returncode == 2
    assert second.stderr.strip() == (
        f"wardtap: error: another wardtap daemon is already running with "
        f"{daemon.dir / 'wardtap.toml'} (pid {daemon.proc.pid}); stop it first (one daemon "
        "per configuration)")
    assert daemon.status()["ok"]                      # the first one is untouched
    daemon.stop()
    daemon.start()                                    # and the lock died with it
    daemon.stop()
