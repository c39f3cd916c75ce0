"""Real network namespaces for datapath tests: a ward, the appliance, an uplink.

    ward 10.77.0.10 --veth-- [ ward0  br0  uplink0 ] --veth-- uplink 10.77.0.20
    (fd77::10)                  appliance namespace              (fd77::20)

Every name carries a per-test suffix so runs never collide, and `close()` (also on test
failure, via the fixture) deletes the namespaces, which removes their veths and bridge.
Only addresses inside these namespaces are ever traffic targets.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

WARD_IP, UPLINK_IP = "10.77.0.10", "10.77.0.20"
WARD_IP6, UPLINK_IP6 = "fd77::10", "fd77::20"
PREFIX, PREFIX6 = 24, 64


def sh(cmd: str | Sequence[str], check: bool = True, timeout: float = 30,
       ) -> subprocess.CompletedProcess[str]:
    args = shlex.split(cmd) if isinstance(cmd, str) else list(cmd)
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({result.returncode}): "
                           f"{result.stdout}{result.stderr}")
    return result


def wait_for(condition: Callable[[], object], timeout: float = 10.0,
             interval: float = 0.05, what: str = "condition") -> object:
    """Poll `condition` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


@dataclass
class Ward:
    """Three namespaces; the appliance bridges `ward0` and `uplink0` on `br0`."""

    suffix: str = field(
        default_factory=lambda: f"{os.getpid() % 10000}{int(time.time() * 1000) % 10000}")
    bridge: bool = True
    created: list[str] = field(default_factory=list)

    @property
    def ward(self) -> str:
        return f"wt-ward-{self.suffix}"

    @property
    def appliance(self) -> str:
        return f"wt-appl-{self.suffix}"

    @property
    def uplink(self) -> str:
        return f"wt-upl-{self.suffix}"

    def exec(self, ns: str, cmd: str | Sequence[str], check: bool = True,
             timeout: float = 30) -> subprocess.CompletedProcess[str]:
        args = shlex.split(cmd) if isinstance(cmd, str) else list(cmd)
        return sh(["ip", "netns", "exec", ns, *args], check=check, timeout=timeout)

    def popen(self, ns: str, cmd: Sequence[str], **kwargs: object) -> subprocess.Popen[str]:
        return subprocess.Popen(["ip", "netns", "exec", ns, *cmd], text=True,
                                **kwargs)  # type: ignore[call-overload]

    def create(self) -> Ward:
        for ns in (self.ward, self.appliance, self.uplink):
            sh(f"ip netns add {ns}")
            self.created.append(ns)
            self.exec(ns, "ip link set lo up")
        # veth pairs: ward:eth0 <-> appliance:ward0, uplink:eth0 <-> appliance:uplink0
        for host, port in ((self.ward, "ward0"), (self.uplink, "uplink0")):
            sh(f"ip link add eth0 netns {host} type veth peer name {port} netns {self.appliance}")
            self.exec(host, "ip link set eth0 up")
            self.exec(self.appliance, f"ip link set {port} up")
        self.exec(self.ward, f"ip addr add {WARD_IP}/{PREFIX} dev eth0")
        self.exec(self.uplink, f"ip addr add {UPLINK_IP}/{PREFIX} dev eth0")
        for host, ip6 in ((self.ward, WARD_IP6), (self.uplink, UPLINK_IP6)):
            self.exec(host, "sysctl -qw net.ipv6.conf.eth0.accept_dad=0")
            self.exec(host, f"ip -6 addr add {ip6}/{PREFIX6} dev eth0 nodad")
        if self.bridge:
            self.exec(self.appliance, "ip link add br0 type bridge")
            self.exec(self.appliance, "ip link set br0 type bridge stp_state 0 forward_delay 0")
            for port in ("ward0", "uplink0"):
                self.exec(self.appliance, f"ip link set {port} master br0")
            self.exec(self.appliance, "ip link set br0 up")
        return self

    def mac(self, ns: str, dev: str = "eth0") -> str:
        out = self.exec(ns, f"cat /sys/class/net/{dev}/address").stdout
        return out.strip()

    def close(self) -> None:
        for ns in reversed(self.created):
            sh(f"ip netns del {ns}", check=False)
        self.created.clear()

    def __enter__(self) -> Ward:
        return self.create()

    def __exit__(self, *exc: object) -> None:
        self.close()
