"""wardtap-bypass (image/stage-wardtap/files/wardtap-bypass) in real network namespaces:
a bridge enforcing through the real daemon (inline, NFQUEUE) becomes a plain forwarding
bridge. Proved with traffic: a TCP connect the policy denies fails before and succeeds
after, by each of the script's three ways (appliance.sources.inlinectl, iptables-restore, and taking
the bridge out of netfilter when iptables cannot be run)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT
from inlinekit import InlineAppliance, rules_state, ward_policy
from netns import UPLINK_IP, Ward

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")

SCRIPT = ROOT / "image" / "stage-wardtap" / "files" / "wardtap-bypass"
ALLOWED, DENIED = 8080, 9090
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
    server: subprocess.Popen[str] | None = None
    appliance: InlineAppliance | None = None
    try:
        server = ward.popen(ward.uplink, [sys.executable, "-c", SERVER],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        options: dict[str, Any] = {}
        if unprivileged:
            ward.exec(ward.appliance, ["env", "WARDTAP_PORTS=ward0 uplink0", str(PREPARE)])
            python, pythonpath = system_python()
            options = {"prefix": UNPRIVILEGED, "python": python, "pythonpath": pythonpath}
        appliance = InlineAppliance(
            ward, tmp_path, ward_policy(ward.mac(ward.ward), "bypass-test", tcp=[ALLOWED]),
            extra_config="[panel]\nenabled = false\n", **options).start()
        assert rules_state(ward)["state"] == "enforce"
        yield ward, tmp_path
    finally:
        if appliance is not None:
            appliance.kill(signal.SIGTERM)
        if server is not None and server.poll() is None:
            server.kill()
            server.wait(timeout=10)
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
