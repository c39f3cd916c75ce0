"""Broker errors said precisely and within --timeout: refused, unreachable, a silent host,
an untrusted certificate, a missing client certificate, a refused login; against a real
mosquitto on loopback and an empty network namespace."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from brokerkit import ROOT, Broker, broker, free_port  # noqa: F401
from netns import sh


def fleet(*args: str, env: dict[str, str] | None = None,
          netns: str | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "appliance.cli", "fleet", *args]
    if netns:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    environment = dict(env or os.environ, PYTHONPATH=str(ROOT))
    environment.pop("WARDTAP_BROKER", None)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env=environment)


def _one_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("wardtap: error: "), result.stderr
    return lines[0]


def test_refused() -> None:
    port = free_port()
    line = _one_error(fleet("watch", "--broker", f"mqtt://127.0.0.1:{port}", "--timeout", "3"))
    assert f"refused the connection: nothing listens on 127.0.0.1 port {port}" in line


def test_a_silent_host_is_given_up_on_at_the_timeout() -> None:
    """Something accepts TCP but never answers MQTT: the wait ends at --timeout, said."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        port = silent.getsockname()[1]
        line = _one_error(fleet("watch", "--broker", f"mqtt://127.0.0.1:{port}",
                                "--timeout", "2"))
    assert "did not answer the MQTT login within" in line


def test_unreachable_from_a_namespace_without_routes() -> None:
    name = f"wt-fleet-{os.getpid()}"
    sh(["ip", "netns", "add", name])
    try:
        sh(["ip", "-n", name, "link", "set", "lo", "up"])
        line = _one_error(fleet("list", "--broker", "mqtt://10.99.0.1:1883", netns=name))
        assert "cannot reach the broker at mqtt://10.99.0.1:1883: unreachable" in line
    finally:
        sh(["ip", "netns", "del", name], check=False)


def test_tls_untrusted_certificate(broker: Broker) -> None:  # noqa: F811
    line = _one_error(fleet("list", "--broker", broker.tls_url))
    assert "has a certificate this side does not trust" in line


def test_tls_without_the_client_certificate(broker: Broker) -> None:  # noqa: F811
    assert broker.ca is not None
    line = _one_error(fleet("list", "--broker", broker.tls_url, "--ca", str(broker.ca.ca_path)))
    assert "the broker wants a client certificate: --tls-cert and --tls-key" in line


def test_login_refused(broker: Broker, tmp_path: Path) -> None:  # noqa: F811
    assert broker.ca is not None
    wrong = tmp_path / "password"
    wrong.write_text("not-the-password\n")
    line = _one_error(fleet("list", "--broker", broker.password_url, "--ca",
                            str(broker.ca.ca_path), "--username", "fleet", "--password-file",
                            str(wrong)))
    assert "refused the login as 'fleet'" in line


@pytest.mark.parametrize("url, message", [
    ("http://broker", "use mqtt://HOST:PORT"), ("mqtt://user:pw@broker", "does not belong"),
])
def test_bad_urls(url: str, message: str) -> None:
    assert message in _one_error(fleet("list", "--broker", url))
