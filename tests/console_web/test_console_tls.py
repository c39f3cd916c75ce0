"""HTTPS with the operator's certificate; plain HTTP on loopback only."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
from pathlib import Path

import httpx
from brokerkit import TestCA

from console_web.webkit import ROOT, free_port, wait_for, wardtap


def test_plain_http_is_refused_off_loopback_and_https_serves_with_our_certificate(
        tmp_path: Path) -> None:
    db = str(tmp_path / "fleet.db")
    r = wardtap("fleet", "serve", "--db", db, "--listen", "0.0.0.0:8080")
    assert r.returncode == 2 and "plain HTTP only on loopback" in r.stderr
    assert "Traceback" not in r.stderr
    r = wardtap("fleet", "serve", "--db", db, "--https-cert", str(tmp_path / "nope.pem"),
                "--https-key", str(tmp_path / "nope.key"))
    assert r.returncode == 2 and "no such file" in r.stderr
    ca = TestCA(tmp_path / "pki")
    cert, key = ca.issue("console.hosp.example", server=True)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "appliance.cli", "fleet", "serve", "--db",
                             db, "--listen", f"127.0.0.1:{port}", "--https-cert", cert,
                             "--https-key", key], cwd=ROOT,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    trust = ssl.create_default_context(cafile=str(ca.ca_path))
    try:
        def answers() -> httpx.Response | None:
            try:
                return httpx.get(f"https://127.0.0.1:{port}/login", verify=trust,
                                 timeout=2)
            except httpx.ConnectError:
                return None
        response = wait_for(answers, timeout=30, what="the console over HTTPS")
        assert isinstance(response, httpx.Response) and response.status_code == 200
        cookie = response.headers["set-cookie"]
        assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
        assert "script-src" not in response.headers["content-security-policy"]
        assert "default-src 'none'" in response.headers["content-security-policy"]
    finally:
        proc.terminate()
        proc.wait(timeout=15)
