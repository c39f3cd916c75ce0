"""The inline appliance in real network namespaces, shared by the datapath tests, the image's
bypass test and bench/bench_inline.py: sockets made inside a namespace, the ward -> uplink
allow-list, and `wardtap run` on the appliance's bridge or on its tap (`tap_daemon`).

    ward (10.77.0.10) --veth-- [ ward0 br0 uplink0 ] --veth-- uplink (10.77.0.20)
                                appliance: `wardtap run` (inline, NFQUEUE) + netfilter rules
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from netns import UPLINK_IP, UPLINK_IP6, Ward, wait_for

from appliance.common.control import request

ROOT = Path(__file__).resolve().parent.parent
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


# -- sockets inside namespaces -------------------------------------------------------------

def in_netns(ns: str, fn: Callable[..., Any], *args: Any) -> Any:
    """Call fn in a thread that has entered network namespace `ns` (sockets stay there)."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            fd = os.open(f"/var/run/netns/{ns}", os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns {ns}")
            finally:
                os.close(fd)
            box["value"] = fn(*args)
        except BaseException as exc:  # noqa: BLE001  (re-raised in the caller)
            box["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(10)
    if "error" in box:
        raise box["error"]
    return box.get("value")


def ns_socket(ns: str, family: int = socket.AF_INET,
              kind: int = socket.SOCK_STREAM) -> socket.socket:
    return in_netns(ns, socket.socket, family, kind)  # type: ignore[no-any-return]


# -- the allow-list ------------------------------------------------------------------------

def ward_policy(ward_mac: str, name: str, tcp: Iterable[int] = (), udp: Iterable[int] = (),
                ping: bool = False, ping6: bool = False, version: int = 1) -> str:
    """The ward host (by MAC: the SLL header of a queued packet carries it) may reach the
    uplink host over these TCP and UDP ports, and ping it; nothing else is allowed."""
    lines = [f'[policy]\nname = "{name}"\nversion = {version}\n',
             f'[groups.ward]\nmac = ["{ward_mac}"]\n',
             f'[groups.uplink]\nip = ["{UPLINK_IP}", "{UPLINK_IP6}"]\n']

    def rule(rule_name: str, proto: str, extra: str) -> None:
        lines.append(f'[[rules]]\nname = "{rule_name}"\nfrom = "ward"\nto = "uplink"\n'
                     f'proto = "{proto}"\n{extra}')

    if tcp := list(tcp):
        rule("ward-tcp", "tcp", f"ports = {tcp}\n")
    if udp := list(udp):
        rule("ward-udp", "udp", f"ports = {udp}\n")
    if ping:
        rule("ward-ping", "icmp", "icmp_types = [8]\n")
    if ping6:
        rule("ward-ping6", "icmpv6", "icmp_types = [128]\n")
    return "\n".join(lines)


# -- the appliance -------------------------------------------------------------------------

class InlineAppliance:
    """`wardtap run` in the appliance namespace, inline on br0, with its config, policy and
    event log in `workdir`. `prefix` runs it under a wrapper (setpriv, nice), `python` and
    `pythonpath` choose the interpreter (the image test runs it as user nobody)."""

    def __init__(self, ward: Ward, workdir: Path, policy: str, mode: str = "enforce",
                 extra_config: str = "", prefix: Sequence[str] = (),
                 python: str = sys.executable, pythonpath: str = str(ROOT),
                 run_args: Sequence[str] = ()) -> None:
        self.ward = ward
        self.dir = workdir
        self.sock = str(workdir / "control.sock")
        self.prefix = list(prefix)
        self.python = python
        self.pythonpath = pythonpath
        self.run_args = list(run_args)          # e.g. --dissect (the inventory's evidence)
        (workdir / "policy.toml").write_text(policy)
        (workdir / "wardtap.toml").write_text(
            f'[appliance]\nmode = "{mode}"\n[datapath]\ntype = "inline"\nbridge = "br0"\n'
            'queue = 0\n[policy]\nfile = "policy.toml"\n[events]\nlog = "events.jsonl"\n'
            f'[control]\nsocket = "control.sock"\n{extra_config}')
        self.proc: subprocess.Popen[str] | None = None
        self.log_path = workdir / "daemon.log"

    def start(self, timeout: float = 30) -> InlineAppliance:
        if os.path.exists(self.sock):
            os.unlink(self.sock)
        env = dict(os.environ, PYTHONPATH=self.pythonpath)
        with open(self.log_path, "a") as log:
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", self.ward.appliance, *self.prefix, self.python, "-m",
                 "appliance.cli", "run", "--config", str(self.dir / "wardtap.toml"),
                 *self.run_args],
                cwd=self.dir, env=env, stdout=subprocess.DEVNULL, stderr=log, text=True)

        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited: {self.log_path.read_text()}")
            return os.path.exists(self.sock) and bool(self.status().get("ok"))

        wait_for(ready, timeout=timeout, what="the daemon to start")
        return self

    def status(self) -> dict[str, Any]:
        return request(self.sock, {"cmd": "status"})

    def command(self, **body: Any) -> dict[str, Any]:
        return request(self.sock, body)

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        path = self.dir / "events.jsonl"
        if not path.exists():
            return []
        events = [json.loads(line) for line in path.read_text().splitlines() if line]
        return [e for e in events if kind is None or e["type"] == kind]

    def rules(self) -> dict[str, Any]:
        return rules_state(self.ward)

    def watchdog_pid(self) -> int:
        assert self.proc is not None
        path = f"/proc/{self.proc.pid}/task/{self.proc.pid}/children"
        with open(path) as fh:
            children = [int(pid) for pid in fh.read().split()]
        watchdogs = [pid for pid in children
                     if b"appliance.sources.inlinectl" in Path(f"/proc/{pid}/cmdline").read_bytes()]
        assert len(watchdogs) == 1, children
        return watchdogs[0]

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            if sig in (signal.SIGKILL, signal.SIGTERM):
                os.kill(self.proc.pid, signal.SIGCONT)   # so a stopped one can go
            self.proc.send_signal(sig)
            if sig in (signal.SIGKILL, signal.SIGTERM):
                try:
                    self.proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=10)


@contextmanager
def tap_daemon(ward: Ward, directory: Path, config: str, stop_timeout: float = 15
               ) -> Iterator[subprocess.Popen[str]]:
    """`wardtap run` on the tap (the appliance's ward0) with `config` as directory/wardtap.toml,
    whose `[events] log` must be events.jsonl there; yields it once its log says `started`,
    then SIGTERM (killed if it has not stopped within `stop_timeout` s)."""
    (directory / "wardtap.toml").write_text(config)
    log = directory / "events.jsonl"

    def started() -> bool:
        return log.exists() and any(json.loads(line).get("type") == "started"
                                    for line in log.read_text().splitlines() if line.strip())
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    daemon = ward.popen(ward.appliance, [sys.executable, "-m", "appliance.cli", "run",
                                         "--config", str(directory / "wardtap.toml")],
                        cwd=directory, env=env, stderr=subprocess.PIPE)
    try:
        wait_for(started, timeout=20, what="the daemon to start")
        yield daemon
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=stop_timeout)
        finally:
            if daemon.poll() is None:
                daemon.kill()
                daemon.wait(timeout=10)


def rules_state(ward: Ward) -> dict[str, Any]:
    """The appliance namespace's netfilter rules as `inlinectl status` reports them."""
    out = ward.exec(ward.appliance, [sys.executable, "-m", "appliance.sources.inlinectl",
                                     "status"])
    return json.loads(out.stdout)  # type: ignore[no-any-return]
