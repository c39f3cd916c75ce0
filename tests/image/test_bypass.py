"""wardtap-bypass (image/stage-wardtap/files/wardtap-bypass) in real network namespaces:
a bridge enforcing through the real daemon (inline, NFQUEUE) becomes a plain forwarding
bridge. Proved with traffic: a TCP connect the policy denies fails before and succeeds
after, by each of the script's three ways (appliance.sources.inlinectl, iptables-restore, and taking
the bridge out of netfilter when iptables cannot be run)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT
from netns import UPLINK_IP, Ward, wait_for

from appliance.common.control import request as control

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")

SCRIPT = ROOT / "image" / "stage-wardtap" / "files" / "wardtap-bypass"
ALLOWED, DENIED = 8080, 9090
POLICY = """
[policy]
name = "bypass-test"
version = 1

[groups.ward]
mac = ["{ward_mac}"]

[groups.uplink]
ip = ["10.77.0.20"]

[[rules]]
name = "ward-web"
from = "ward"
to = "uplink"
proto = "tcp"
ports = [8080]
"""
SERVER = """
import socket, threading
def serve(port):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port)); s.listen(16)
    while True:
        c, _ = s.accept(); c.sendall(b"hello\\n"); c.close()
for port in (8080, 9090):
    threading.Thread(target=serve, args=(port,), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"""
CLIENT = """
import socket, sys
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=0.8) as s:
        s.settimeout(0.8)
        sys.exit(0 if s.recv(16) == b"hello\\n" else 1)
except OSError:
    sys.exit(1)
"""


def connects(ward: Ward, port: int) -> bool:
    return ward.exec(ward.ward, [sys.executable, "-c", CLIENT, UPLINK_IP, str(port)],
                     check=False, timeout=10).returncode == 0


def rules_state(ward: Ward) -> dict[str, Any]:
    import json

    out = ward.exec(ward.appliance, [sys.executable, "-m", "appliance.sources.inlinectl", "status"])
    return json.loads(out.stdout)  # type: ignore[no-any-return]


PREPARE = ROOT / "image" / "stage-wardtap" / "files" / "wardtap-prepare"
# As wardtap.service runs it: user nobody, CAP_NET_ADMIN and CAP_NET_RAW only (ambient and
# bounding), no new privileges; root's part done first by wardtap-prepare (ExecStartPre=+).
UNPRIVILEGED = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                "--inh-caps=-all,+net_admin,+net_raw", "--ambient-caps=-all,+net_admin,+net_raw",
                "--bounding-set=-all,+net_admin,+net_raw", "--no-new-privs", "--"]


def system_python() -> tuple[str, str]:
    """An interpreter user nobody may run (this venv's may live under /root), with this
    venv's packages: the same Python version, so the compiled fast path loads."""
    python = f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"
    assert os.access(python, os.X_OK), f"{python} is missing: install python3 (setup.sh)"
    return python, os.pathsep.join([str(ROOT), sysconfig.get_paths()["purelib"]])


@pytest.fixture
def enforcing(request: pytest.FixtureRequest) -> Iterator[tuple[Ward, Path]]:
    """The ward, a server on the uplink, the daemon enforcing on br0 of the appliance
    (as root, or unprivileged as in the image when the parameter says so)."""
    unprivileged = getattr(request, "param", False)
    tmp_path = Path(tempfile.mkdtemp(prefix="wardtap-bypass-", dir="/tmp"))
    tmp_path.chmod(0o777)            # the unprivileged daemon writes its control socket here
    ward = Ward().create()
    procs: list[subprocess.Popen[str]] = []
    try:
        server = ward.popen(ward.uplink, [sys.executable, "-c", SERVER],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        procs.append(server)
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        (tmp_path / "policy.toml").write_text(POLICY.format(ward_mac=ward.mac(ward.ward)))
        (tmp_path / "wardtap.toml").write_text(
            '[appliance]\nmode = "enforce"\n[datapath]\ntype = "inline"\nbridge = "br0"\n'
            'queue = 0\n[policy]\nfile = "policy.toml"\n[control]\nsocket = "control.sock"\n'
            '[panel]\nenabled = false\n')
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        prefix: list[str] = []
        python = sys.executable
        if unprivileged:
            ward.exec(ward.appliance, ["env", "WARDTAP_PORTS=ward0 uplink0", str(PREPARE)])
            prefix = UNPRIVILEGED
            python, env["PYTHONPATH"] = system_python()
        daemon = subprocess.Popen(
            ["ip", "netns", "exec", ward.appliance, *prefix, python, "-m",
             "appliance.cli", "run", "--config", str(tmp_path / "wardtap.toml")],
            cwd=tmp_path, env=env,
            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "daemon.log", "w"), text=True)
        procs.append(daemon)
        sock = str(tmp_path / "control.sock")

        def ready() -> bool:
            if daemon.poll() is not None:
                raise AssertionError((tmp_path / "daemon.log").read_text())
            return os.path.exists(sock) and bool(control(sock, {"cmd": "status"})["ok"])

        wait_for(ready, timeout=30, what="the daemon to enforce")
        assert rules_state(ward)["state"] == "enforce"
        yield ward, tmp_path
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
        ward.close()
        shutil.rmtree(tmp_path, ignore_errors=True)


def run_script(ward: Ward, tmp: Path, how: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
           "PYTHONPATH": str(ROOT), "WARDTAP_PYTHON": sys.executable}
    if how != "appliance.sources.inlinectl":
        env["WARDTAP_PYTHON"] = str(tmp / "no-such-python")     # the venv is broken
    if how == "nf_call":
        # neither Python nor iptables: a PATH with only the tools the script needs besides
        tools = tmp / "tools"
        tools.mkdir()
        for name in ("sed", "head", "timeout"):
            (tools / name).symlink_to(shutil.which(name) or name)
        env["PATH"] = str(tools)
    return subprocess.run(["ip", "netns", "exec", ward.appliance, "env", "-i",
                           *(f"{k}={v}" for k, v in env.items()), "/bin/sh", str(SCRIPT)],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(("enforcing", "how"), [
    pytest.param(True, "appliance.sources.inlinectl", id="unprivileged-daemon-inlinectl"),
    pytest.param(False, "iptables", id="iptables"),
    pytest.param(False, "nf_call", id="nf_call"),
], indirect=["enforcing"])
def test_bypass_turns_enforcement_into_plain_forwarding(enforcing: tuple[Ward, Path],
                                                        how: str) -> None:
    ward, tmp = enforcing
    assert connects(ward, ALLOWED)
    assert not connects(ward, DENIED)         # denied by the policy: the SYN is dropped
    assert not connects(ward, DENIED)         # and stays denied

    result = run_script(ward, tmp, how)
    assert result.returncode == 0, result.stderr
    assert connects(ward, DENIED), result.stderr    # plain forwarding: everything passes
    assert connects(ward, ALLOWED)
    state = rules_state(ward)
    if how == "nf_call":
        assert "taking br0 out of netfilter" in result.stderr
        assert state["bridge_nf_call"] == {"iptables": 0, "ip6tables": 0}
    else:
        assert state["state"] == "bypass", state
        expected = ("(appliance.sources.inlinectl bypass)" if how == "appliance.sources.inlinectl"
                    else "(iptables)")
        assert expected in result.stderr


def test_bypass_without_a_bridge_is_a_no_op() -> None:
    ward = Ward(bridge=False).create()
    try:
        result = subprocess.run(["ip", "netns", "exec", ward.appliance, "/bin/sh",
                                 str(SCRIPT)], capture_output=True, text=True, timeout=30)
        assert result.returncode == 0 and "nothing to bypass" in result.stderr
    finally:
        ward.close()
